"""Several drainers on several machines share one PostgreSQL queue.

Two drainers run as other machines: each in a network namespace of its own, reaching the
database over a veth interface, under a host name of its own (a UTS namespace). A third
runs here, through an existing Dask cluster of real ``dask scheduler`` / ``dask worker``
processes (``--address``). One of the other machines' drainers is killed with SIGKILL
mid-run. Afterwards every input is done exactly once, with no second batch, the rows equal
the files, and the killed drainer's inputs were taken over once its lease ran out (a
process on another machine cannot be seen to be dead)."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.postgres_cluster import PostgresCluster
from tests.test_queue_crash import api_env

pytestmark = pytest.mark.slow

INPUTS = 10_000
BIN = Path(sys.executable).parent
#: The lease of the drainer that is killed: how long its inputs wait for another one.
SHORT_LEASE = 6


def make_inputs(root: Path) -> dict[str, list[str]]:
    """``INPUTS`` small files in 20 folders; returns each path's records (non-empty lines,
    stripped), read back independently of the pipeline."""
    expected = {}
    for number in range(INPUTS):
        folder = root / f"f{number % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"input {number} line {line}" for line in range(1 + number % 3)]
        path = folder / f"in{number:05d}.txt"
        path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
        expected[str(path)] = lines
    return expected


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


@contextmanager
def relay(listen: str, target: tuple[str, int]) -> Iterator[int]:
    """Forward TCP connections from ``listen`` (an address of this host, on a free port)
    to ``target``: how a machine of the test's reaches the session's Prefect server, which
    listens on this host's loopback only."""
    server = socket.create_server((listen, 0))
    server.setblocking(False)
    stop = threading.Event()

    def pump() -> None:
        selector = selectors.DefaultSelector()
        selector.register(server, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        while not stop.is_set():
            for key, _ in selector.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is server:
                    client, _ = server.accept()
                    upstream = socket.create_connection(target)
                    for one, other in ((client, upstream), (upstream, client)):
                        peers[one] = other
                        selector.register(one, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                other = peers.get(sock)
                if data and other is not None:
                    other.sendall(data)
                    continue
                for end in (sock, other):
                    if end is not None and end in peers:
                        selector.unregister(end)
                        peers.pop(end)
                        end.close()
        for end in peers:
            end.close()
        selector.close()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        server.close()


@contextmanager
def dask_cluster(env: dict[str, str]) -> Iterator[str]:
    """A scheduler and one worker, real processes, as a user starts them."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    processes = [
        subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port",
                          str(port), "--dashboard-address", ":0"], **quiet),  # type: ignore[call-overload]
    ]
    try:
        processes.append(
            subprocess.Popen([BIN / "dask", "worker", address, "--nthreads", "1",
                              "--dashboard-address", ":0"], **quiet)  # type: ignore[call-overload]
        )
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def as_machine(name: str, argv: list[str]) -> list[str]:
    """``argv`` under a host name of its own (a UTS namespace): its claims name that host."""
    return ["unshare", "--uts", "sh", "-c", f'hostname {name} && exec "$@"', "sh", *argv]


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        return [tuple(row) for row in connection.execute(sql, params).fetchall()]


def test_drainers_on_several_machines_work_one_queue(
    postgres_cluster: PostgresCluster,
    postgres_url: str,
    make_postgres_host: Any,
    tmp_path: Path,
) -> None:
    # Machines first: the server restarts to listen on their links.
    machines = [make_postgres_host(), make_postgres_host()]
    database = urlsplit(postgres_url).path.lstrip("/")
    expected = make_inputs(tmp_path / "in")
    output = tmp_path / "out"
    env = {**api_env(), "DASK_LOGGING__DISTRIBUTED": "error"}

    def pipeline(url: str, *args: Any) -> list[str]:
        return [str(BIN / "pipeline"), "--log-level", "OFF", "--db-url", url, "--output-dir",
                str(output), *map(str, args)]

    queued = subprocess.run(pipeline(postgres_url, "enqueue", tmp_path / "in", "--json"),
                            env=env, capture_output=True, text=True, timeout=300)
    assert queued.returncode == 0, queued.stderr
    assert json.loads(queued.stdout)["queued"] == INPUTS

    api = urlsplit(env["PREFECT_API_URL"])
    with (
        relay(machines[0].server_address, (api.hostname, api.port)) as port0,  # type: ignore[arg-type]
        relay(machines[1].server_address, (api.hostname, api.port)) as port1,  # type: ignore[arg-type]
        dask_cluster(env) as address,
    ):
        def drainer(number: int, port: int, *args: Any) -> subprocess.Popen[str]:
            url = postgres_cluster.url(database, host=machines[number].server_address)
            there = {**env, "PREFECT_API_URL": f"http://{machines[number].server_address}:{port}/api"}
            argv = as_machine(f"drainer-{number}", pipeline(url, "drain-db", *args, "--json"))
            return machines[number].popen(argv, env=there, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True,
                                          start_new_session=True)

        # The second machine's drainer dies mid-run, holding claims. It runs first, alone:
        # started beside the others, it could find the queue already drained.
        victim = drainer(1, port1, "--workers", "0", "--lease-seconds", SHORT_LEASE)
        deadline = time.monotonic() + 300
        while query(postgres_url, "SELECT count(*) FROM pipeline_inputs WHERE status = 'done'"
                    " AND owner_host = 'drainer-1'")[0][0] < 100:
            assert victim.poll() is None, victim.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=60)
        held = [row[0] for row in query(
            postgres_url,
            "SELECT id FROM pipeline_inputs WHERE status = 'processing'"
            " AND owner_host = 'drainer-1'",
        )]
        assert held, "the killed drainer held nothing"

        # Two machines at once on what is left: each takes a share of its own (--limit), so
        # both work whichever starts first, and what they leave goes to a last drain.
        survivors = [
            drainer(0, port0, "--workers", "0", "--limit", INPUTS // 3),
            subprocess.Popen(pipeline(postgres_url, "drain-db", "--address", address,
                                      "--limit", INPUTS // 3, "--json"),
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        ]
        summaries = []
        for survivor in survivors:
            stdout, stderr = survivor.communicate(timeout=600)
            assert survivor.returncode == 0, stderr
            summaries.append(json.loads(stdout))

    # What the killed drainer held waits for its lease to run out; then a last drain takes
    # it over, with the rest of the queue.
    lease = query(postgres_url, "SELECT max(lease_expires_at) FROM pipeline_inputs"
                  " WHERE status = 'processing'")[0][0]
    if lease is not None:
        time.sleep(max(0.0, (_parse(lease) - time.time())) + 0.5)
    final = subprocess.run(pipeline(postgres_url, "drain-db", "--workers", "0", "--json"),
                           env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    summaries.append(json.loads(final.stdout))

    # Every input done exactly once, one batch each, rows equal to the files.
    assert query(postgres_url, "SELECT status, count(*) FROM pipeline_inputs GROUP BY status") == [
        ("done", INPUTS)
    ]
    assert query(postgres_url, "SELECT count(*), count(DISTINCT source_path) FROM"
                 " processing_batches") == [(INPUTS, INPUTS)]
    stored: dict[str, list[str]] = {}
    for path, content in query(
        postgres_url,
        "SELECT b.source_path, r.content FROM processed_records r JOIN processing_batches b"
        " ON b.id = r.batch_id ORDER BY b.source_path, r.record_index",
    ):
        stored.setdefault(path, []).append(content)
    assert stored == expected
    # The killed drainer's claims were taken over (a second attempt, by another machine).
    taken = query(postgres_url, "SELECT attempts, owner_host FROM pipeline_inputs"
                  " WHERE id = ANY(%s)", (held,))
    assert {attempts for attempts, _ in taken} == {2}
    assert "drainer-1" not in {owner for _, owner in taken}
    # Each machine did part of the work.
    owners = dict(query(postgres_url, "SELECT owner_host, count(*) FROM pipeline_inputs"
                        " GROUP BY owner_host"))
    assert owners.get("drainer-0", 0) > 0 and owners.get(socket.gethostname(), 0) > 0
    assert sum(s["succeeded"] for s in summaries) == INPUTS - owners.get("drainer-1", 0)


def _parse(iso_text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso_text).timestamp()
