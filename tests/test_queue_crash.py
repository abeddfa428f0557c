"""The queue against real processes: two drainers on one database, a drainer killed with
SIGKILL and picked up after its lease expired, and a run stopped with SIGTERM.

Each test starts the ``pipeline`` script installed next to this interpreter. With
``PREFECT_API_URL`` they report to the session's Prefect server; the arrangement without it
(each command starts its own temporary server, sharing ``PREFECT_HOME``) is tested too.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from prefect_pipeline.clock import iso
from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.database import close_all
from prefect_pipeline.database.queue import enqueue as enqueue_inputs
from prefect_pipeline.pipeline.discovery import iter_inputs
from tests.conftest import (
    api_env,
    db_counts,
    files_under,
    query,
    seeded_prefect_home,
    sqlite_store,
)

pytestmark = pytest.mark.slow

PIPELINE = Path(sys.executable).with_name("pipeline")

#: How long a command may take before the test gives up on it.
TIMEOUT = 150


def command(config: PipelineConfig, *args: str | os.PathLike[str]) -> list[str]:
    return [
        str(PIPELINE),
        "--log-level",
        "OFF",
        "--db-path",
        str(config.db_path),
        "--output-dir",
        str(config.output_dir),
        *(os.fspath(a) for a in args),
    ]


def make_inputs(root: Path, files: int, lines: int) -> int:
    """``files`` text files of ``lines`` lines (some blank or whitespace-only) in a few
    folders; returns the number of records, counted independently of the pipeline."""
    records = 0
    for number in range(files):
        folder = root / f"part{number % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        body = []
        for line in range(lines):
            if line % 7 == 3:
                body.append("   " if line % 2 else "")
            else:
                body.append(f"file {number} line {line} some words to store")
        text = "\n".join(body) + "\n"
        (folder / f"input{number:04d}.txt").write_text(text, encoding="utf-8")
        records += sum(1 for item in text.split("\n") if item.strip())
    return records


def enqueue_tree(config: PipelineConfig, root: Path) -> int:
    result = enqueue_inputs(
        sqlite_store(config.db_path), iter_inputs(root, config.output_dir / "mirror")
    )
    close_all()  # the commands under test are the only ones holding the database
    assert result.already == 0
    return result.queued


def scalar(config: PipelineConfig, sql: str, params: tuple[Any, ...] = ()) -> Any:
    return query(config.db_path, sql, params)[0][0]


def statuses(config: PipelineConfig) -> dict[str, int]:
    rows = query(config.db_path, "SELECT status, count(*) FROM pipeline_inputs GROUP BY status")
    return {status: count for status, count in rows}


def wait_for_done(config: PipelineConfig, process: subprocess.Popen[str], at_least: int) -> int:
    """Poll the database until ``at_least`` inputs are done; the process must still run."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the command ended early: {process.communicate()}"
        if config.db_path.exists():
            try:
                done = scalar(config, "SELECT count(*) FROM pipeline_inputs WHERE status = 'done'")
            except sqlite3.OperationalError:  # schema not created yet
                done = 0
            if done >= at_least:
                return int(done)
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} inputs done after {TIMEOUT} s")


def assert_nothing_half_written(config: PipelineConfig) -> None:
    """Every batch holds all its records; every done input has a finalized batch."""
    short = query(
        config.db_path,
        "SELECT b.id, b.record_count, count(r.id) FROM processing_batches b"
        " LEFT JOIN processed_records r ON r.batch_id = b.id GROUP BY b.id"
        " HAVING count(r.id) != b.record_count",
    )
    assert [tuple(row) for row in short] == []
    unfinished = query(
        config.db_path,
        "SELECT i.id FROM pipeline_inputs i LEFT JOIN processing_batches b ON b.id = i.batch_id"
        " WHERE i.status = 'done' AND (b.id IS NULL OR b.status != 'finalized'"
        " OR b.source_path != i.path)",
    )
    assert [tuple(row) for row in unfinished] == []
    assert (
        scalar(
            config,
            "SELECT count(*) FROM processed_records r JOIN processing_batches b"
            " ON r.batch_id = b.id WHERE b.status = 'finalized'"
            " AND r.status != 'finalized'",
        )
        == 0
    )


def assert_all_done_once(config: PipelineConfig, inputs: int, records: int) -> None:
    assert statuses(config) == {"done": inputs}
    assert db_counts(config.db_path) == {
        "pipeline_inputs": inputs,
        "processing_batches": inputs,
        "processed_records": records,
    }
    assert scalar(config, "SELECT count(DISTINCT source_path) FROM processing_batches") == inputs
    assert_nothing_half_written(config)


def children_of(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def assert_gone(processes: list[psutil.Process]) -> None:
    """The processes end within 10 s; any left running is killed, then reported."""
    _, alive = psutil.wait_procs(processes, timeout=10)
    left = []
    for process in alive:
        try:
            left.append(" ".join(process.cmdline()[:6]))
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=15)
    assert left == [], f"left running: {left}"


def own_server_env(tmp_path: Path) -> dict[str, str]:
    """No PREFECT_API_URL: the command starts a temporary server (its child process), in a
    PREFECT_HOME used before (its database migrated: a first use is tested elsewhere)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(seeded_prefect_home(tmp_path / "prefect-home"))
    return env


def temporary_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.tmp")) if directory.exists() else []


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Started commands. One still running at the end of the test is stopped (SIGTERM, then
    SIGKILL), and so are the child processes it had."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            children = children_of(process.pid)
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
            for child in psutil.wait_procs(children, timeout=10)[1]:
                child.kill()
            process.communicate()


def start(
    processes: list[subprocess.Popen[str]],
    args: list[str],
    env: dict[str, str],
    *,
    new_group: bool = False,
) -> subprocess.Popen[str]:
    """Start a command; with ``new_group``, in a process group of its own (as a terminal or
    a supervisor starts one), so that a test can signal the whole group."""
    process = subprocess.Popen(
        args,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=new_group,
    )
    processes.append(process)
    return process


# Two drainers, one database -----------------------------------------------------------------


def tree_cpu(process: psutil.Process) -> float:
    """CPU seconds used so far by a process and its children."""
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def start_line(config: PipelineConfig, commands: list[subprocess.Popen[str]]) -> None:
    """Hold the database's write lock while the commands start up, and let them go together.

    A command writes only when it claims (after its Prefect API and Dask cluster are up),
    so with the lock held each one stops at its first claim. The lock is taken once every
    command has opened the database (its schema check is a write too) and released when
    they are all idle, waiting for it (their busy timeout is 60 s).
    """
    target = str(config.db_path)
    processes = [psutil.Process(c.pid) for c in commands]
    deadline = time.monotonic() + 60
    while not all(any(f.path == target for f in p.open_files()) for p in processes):
        assert all(c.poll() is None for c in commands), [c.communicate() for c in commands]
        assert time.monotonic() < deadline, "the commands never opened the database"
        time.sleep(0.05)
    time.sleep(0.5)
    connection = sqlite3.connect(target, timeout=60, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        # Idle: each command's whole tree used under a quarter of a core for two seconds
        # (measured: under 0.1 while it waits, a full core while it starts).
        deadline = time.monotonic() + 50
        quiet = 0
        before = [tree_cpu(p) for p in processes]
        while quiet < 2 and time.monotonic() < deadline:
            assert all(c.poll() is None for c in commands), [c.communicate() for c in commands]
            time.sleep(1.0)
            after = [tree_cpu(p) for p in processes]
            busy = any(b - a > 0.25 for a, b in zip(before, after, strict=True))
            quiet = 0 if busy else quiet + 1
            before = after
        connection.execute("ROLLBACK")
    finally:
        connection.close()


@pytest.mark.parametrize("with_api", [True, False], ids=["PREFECT_API_URL", "temporary-servers"])
def test_two_drainers_share_the_queue_without_overlap(
    config: PipelineConfig,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
    with_api: bool,
) -> None:
    records = make_inputs(tmp_path / "inputs", files=300, lines=5)
    assert enqueue_tree(config, tmp_path / "inputs") == 300
    temp = tmp_path / "tmp"
    temp.mkdir()
    home = tmp_path / "prefect-home"
    # Without PREFECT_API_URL, the documented sound arrangement: both commands share one
    # PREFECT_HOME; the second finds the lock taken and uses a private database.
    env = api_env() if with_api else own_server_env(tmp_path)
    env["TMPDIR"] = str(temp)

    # Each with a Dask cluster of its own, as drainers on several machines would have; with
    # temporary servers (their PREFECT_HOME is the point), in process: a command claims and
    # writes in its own process either way.
    workers = ("--workers", "1", "--workers-after", "0") if with_api else ("--workers", "0")
    args = command(config, "drain-db", *workers, "--json")
    drainers = [start(processes, args, env), start(processes, args, env)]
    start_line(config, drainers)
    outputs = [d.communicate(timeout=TIMEOUT) for d in drainers]
    for drainer, (_, stderr) in zip(drainers, outputs, strict=True):
        assert drainer.returncode == 0, stderr
    summaries = [json.loads(stdout) for stdout, _ in outputs]

    assert_all_done_once(config, 300, records)
    for summary in summaries:
        assert (summary["failed"], summary["pending"], summary["skipped"]) == (0, 0, 0)
        assert summary["total"] == summary["succeeded"]
    assert sum(s["succeeded"] for s in summaries) == 300
    assert sum(s["records"] for s in summaries) == records
    # Both took part, and each input was run by exactly one of them: the one whose
    # summary counts it.
    by_run = dict(
        query(config.db_path, "SELECT run_id, count(*) FROM pipeline_inputs GROUP BY run_id")
    )
    assert sorted(by_run) == sorted(s["run_id"] for s in summaries)
    assert [by_run[s["run_id"]] for s in summaries] == [s["succeeded"] for s in summaries]
    assert all(s["succeeded"] > 0 for s in summaries)
    assert scalar(config, "SELECT max(attempts) FROM pipeline_inputs") == 1

    # No private Prefect database is left behind.
    assert sorted(p.name for p in temp.glob("prefect-pipeline-api-*")) == []
    if not with_api:
        # One command kept its run in PREFECT_HOME's database; the other used a private one.
        with closing(sqlite3.connect(f"file:{home / 'prefect.db'}?mode=ro", uri=True)) as db:
            names = [row[0] for row in db.execute("SELECT name FROM flow_run")]
        assert names == [f"drain-db {config.db_path}"]


# SIGKILL, then another drain takes over at once (the owner is gone) ------------------------


def test_a_killed_drainer_leaves_nothing_half_written_and_is_taken_over(
    config: PipelineConfig, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    # Long enough a run to be killed in its middle (two groups are in flight at any time,
    # so inputs are held whenever it is killed); the rerun does the rest of it.
    records = make_inputs(tmp_path / "inputs", files=400, lines=500)
    assert enqueue_tree(config, tmp_path / "inputs") == 400
    env = api_env()

    drainer = start(
        processes,
        command(config, "drain-db", "--workers", "0", "--json"),
        env,
    )
    wait_for_done(config, drainer, at_least=10)
    children = children_of(drainer.pid)
    os.kill(drainer.pid, signal.SIGKILL)
    drainer.communicate(timeout=TIMEOUT)
    assert drainer.returncode == -signal.SIGKILL
    assert_gone(children)

    left = statuses(config)
    held = [
        row[0]
        for row in query(
            config.db_path, "SELECT id FROM pipeline_inputs WHERE status = 'processing' ORDER BY id"
        )
    ]
    assert 10 <= left["done"] < 400, left
    assert held, f"nothing was being processed when the command was killed: {left}"
    assert left.get("failed", 0) == 0
    assert_nothing_half_written(config)
    done_before = left["done"]

    # Its process is gone: the next drain on this host takes its inputs over at once, long
    # before their leases run out (their owner is recorded on each claim).
    lease = scalar(
        config, "SELECT min(lease_expires_at) FROM pipeline_inputs WHERE status = 'processing'"
    )
    owner = query(
        config.db_path,
        "SELECT DISTINCT owner_pid FROM pipeline_inputs WHERE status = 'processing'",
    )
    assert [row[0] for row in owner] == [drainer.pid]
    started = iso(datetime.now(UTC))
    rerun = subprocess.run(
        command(config, "drain-db", "--workers", "0", "--json"),
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert (summary["total"], summary["failed"], summary["pending"]) == (400 - done_before, 0, 0)
    assert started < lease  # taken over before the dead drainer's lease (300 s) ran out

    assert_all_done_once(config, 400, records)
    attempts = dict(query(config.db_path, "SELECT id, attempts FROM pipeline_inputs"))
    assert {i: attempts[i] for i in held} == dict.fromkeys(held, 2)
    assert {i for i, n in attempts.items() if n != 1} == set(held)
    # Every input's JSON is complete.
    for (path,) in query(config.db_path, "SELECT output_path FROM pipeline_inputs"):
        assert json.loads(Path(path).read_text(encoding="utf-8"))["record_count"] > 0


def test_a_killed_command_leaves_no_temporary_server_running(
    config: PipelineConfig, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """Without PREFECT_API_URL the command runs a Prefect server as its child process;
    when the command is killed the server must not outlive it."""
    make_inputs(tmp_path / "inputs", files=60, lines=2000)
    assert enqueue_tree(config, tmp_path / "inputs") == 60
    drainer = start(
        processes, command(config, "drain-db", "--workers", "0"), own_server_env(tmp_path)
    )
    wait_for_done(config, drainer, at_least=5)
    children = children_of(drainer.pid)
    assert len(children) >= 1
    os.kill(drainer.pid, signal.SIGKILL)
    drainer.wait(timeout=TIMEOUT)
    assert_gone(children)
    drainer.communicate(timeout=TIMEOUT)  # the pipes close once no child holds them


# Signals to the process group: the claimed inputs are given back, quickly and quietly ---------


@pytest.mark.parametrize(
    ("subcommand", "signum", "workers"),
    [
        ("run-parallel", signal.SIGINT, "1"),
        ("drain-db", signal.SIGTERM, "0"),
    ],
    ids=["run-parallel-SIGINT-dask-PREFECT_API_URL", "drain-db-SIGTERM-temporary-server"],
)
def test_a_signal_to_the_group_gives_claimed_inputs_back(
    config: PipelineConfig,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
    subcommand: str,
    signum: signal.Signals,
    workers: str,
) -> None:
    """Ctrl-C at a terminal and a supervisor's stop signal the command's whole process group
    (its Dask workers and temporary Prefect server included), as here: the command exits
    130 with its summary, having given back its claims, prints nothing at --log-level OFF
    but its result, and leaves no process behind."""
    inputs = tmp_path / "inputs"
    make_inputs(inputs, files=120, lines=2000)
    if subcommand == "drain-db":
        # Without PREFECT_API_URL: its temporary server must stop with it.
        assert enqueue_tree(config, inputs) == 120
        args = command(config, "drain-db", "--workers", workers, "--json")  # 0: in process
        env = own_server_env(tmp_path)
    else:
        # Its Dask worker started with it, so that the signal reaches one too.
        args = command(
            config, "run-parallel", inputs, "--workers", workers, "--workers-after", "0", "--json"
        )
        env = api_env()

    runner = start(processes, args, env, new_group=True)
    wait_for_done(config, runner, at_least=5)
    children = children_of(runner.pid)
    signalled = time.monotonic()
    os.killpg(runner.pid, signum)
    stdout, stderr = runner.communicate(timeout=TIMEOUT)
    took = time.monotonic() - signalled
    assert runner.returncode == 130, stderr
    assert stderr == ""
    summary = json.loads(stdout)
    assert summary["stopped"] == "interrupted"
    # A guard against the clean-up hanging on what the signal killed (it took over a minute
    # once); how fast it is belongs to the benchmarks.
    assert took < 30, took
    assert_gone(children)

    left = statuses(config)
    assert left.get("processing", 0) == 0, left
    assert left.get("failed", 0) == 0, left
    assert 5 <= left["done"] < 120, left
    assert summary["succeeded"] + summary["skipped"] == left["done"]
    # What it held when the signal came is pending again (it may have held nothing, if the
    # signal fell between a group's commit and the next claim), and the summary says so; a
    # drain's queue holds other pending inputs too.
    if subcommand == "run-parallel":
        assert summary["pending"] == left.get("pending", 0), (summary, left)
        # The files it never looked at are not in the ledger; the summary counts them.
        assert summary["not_reached"] == 120 - sum(left.values()), (summary, left)
        # In Prefect the flow run ends Cancelled, as a Cancel ends it, not Crashed (the
        # engine's state for an interrupt, which says the run broke).
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            state = client.read_flow_run(summary["flow_run_id"]).state
        assert (state.type.value, state.message) == (
            "CANCELLED", f"interrupted (Ctrl-C or SIGTERM) after {summary['total']} input(s)"
        )
    else:
        assert summary["pending"] <= left["pending"], (summary, left)
        # The queued inputs it never claimed: all that is pending but its own.
        assert summary["not_reached"] == left["pending"] - summary["pending"], (summary, left)
        # The temporary server kept the flow run in PREFECT_HOME's database: Cancelled too.
        home = Path(env["PREFECT_HOME"])
        with closing(sqlite3.connect(f"file:{home / 'prefect.db'}?mode=ro", uri=True)) as db:
            ended = db.execute(
                "SELECT state_type FROM flow_run WHERE id = ?", (summary["flow_run_id"],)
            ).fetchall()
            errors = db.execute(
                "SELECT message FROM log WHERE flow_run_id = ? AND level >= 40",
                (summary["flow_run_id"],),
            ).fetchall()
        assert ended == [("CANCELLED",)]
        assert errors == []  # Prefect's "Crash detected!" is a warning that it was interrupted
    # Given back without counting the attempt.
    assert (
        scalar(
            config,
            "SELECT count(*) FROM pipeline_inputs WHERE status = 'pending'"
            " AND (attempts != 0 OR claim_token IS NOT NULL)",
        )
        == 0
    )
    assert temporary_files(config.output_dir) == []
    assert_nothing_half_written(config)



@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_large_file_on_the_local_lane_between_its_chunks(
    config: PipelineConfig,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
    signum: signal.Signals,
) -> None:
    """Until its workers join, a run's job A runs on a thread of the command (the local
    lane), which a signal does not reach. A large file's job A looks between its chunks for
    the signal (SIGINT) or for its run's stop (SIGTERM, which Prefect's handler catches
    first while a flow runs): the command stops in the middle of the file instead of
    writing it whole first, exits 130 having given its claim back, and leaves no JSON nor
    temporary file."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    line = "a line of a large file, streamed in chunks\n"
    (inputs / "large.txt").write_text(line * (96 * 1024 * 1024 // len(line)))
    # --workers 1 with the default --workers-after: the file starts on the lane.
    args = command(config, "run-parallel", inputs, "--workers", "1", "--json")
    runner = start(processes, args, api_env(), new_group=True)
    deadline = time.monotonic() + TIMEOUT
    while not temporary_files(config.output_dir):  # job A has begun writing the file
        assert runner.poll() is None and time.monotonic() < deadline, runner.poll()
        time.sleep(0.02)

    os.killpg(runner.pid, signum)
    stdout, stderr = runner.communicate(timeout=TIMEOUT)

    assert runner.returncode == 130, stderr
    assert stderr == ""
    assert json.loads(stdout)["stopped"] == "interrupted"
    assert not (config.output_dir / "large_processed.json").exists()  # not finished first
    assert temporary_files(config.output_dir) == []
    assert statuses(config) == {"pending": 1}


def test_a_signal_stops_a_single_input_run_and_its_flow_run_ends_cancelled(
    config: PipelineConfig, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """``run-all`` on one large file, stopped by a supervisor's SIGTERM in job A: the
    command exits 130, says no job ended (its --json result) and leaves no output file
    (job A's JSON, half written, is removed); in Prefect the flow run ends Cancelled, as a run
    over many inputs does, and its log has Prefect's crash report of the signal as a
    warning that says it was interrupted, not as an error that says it crashed."""
    large = tmp_path / "large.txt"
    line = "a line of a large file, streamed in chunks\n"
    large.write_text(line * (96 * 1024 * 1024 // len(line)))
    env = own_server_env(tmp_path)
    runner = start(processes, command(config, "run-all", large, "--json"), env, new_group=True)
    deadline = time.monotonic() + TIMEOUT
    while not temporary_files(config.output_dir):  # job A has begun writing the file
        assert runner.poll() is None and time.monotonic() < deadline, runner.poll()
        time.sleep(0.02)

    os.killpg(runner.pid, signal.SIGTERM)
    stdout, stderr = runner.communicate(timeout=TIMEOUT)

    assert runner.returncode == 130, stderr
    # What it did: no job ended.
    result = json.loads(stdout)
    assert (result["success"], result["stopped"], result["jobs"]) == (False, "interrupted", [])
    assert result["go_on"] is None  # no job ended: the same command again
    assert files_under(config.output_dir) == []
    home = Path(env["PREFECT_HOME"])
    with closing(sqlite3.connect(f"file:{home / 'prefect.db'}?mode=ro", uri=True)) as db:
        [(run_id, state, message)] = db.execute(
            "SELECT flow_run.id, state_type, flow_run_state.message FROM flow_run"
            " JOIN flow_run_state ON flow_run_state.id = flow_run.state_id"
        ).fetchall()
        logged = db.execute(
            "SELECT level, message FROM log WHERE flow_run_id = ? AND level >= 30"
            " AND message LIKE '%signal%' ORDER BY timestamp",
            (run_id,),
        ).fetchall()
    assert (state, message) == ("CANCELLED", "interrupted (Ctrl-C or SIGTERM)")
    # The flow run's and its task run's (job A's) reports.
    interrupted = (30, "Interrupted: execution was aborted by a termination signal.")
    assert logged.count(interrupted) == 2, logged
    assert {level for level, _ in logged} == {30}, logged


#: A library a Dask worker maps at a stage of its start: numpy while distributed is being
#: imported (before the worker's preload), pydantic's core once the preload imports Prefect
#: (the worker then goes on to join the scheduler).
_STAGES = {"importing": "numpy", "preloading": "pydantic_core"}


def _starting(process: psutil.Process, stage: str) -> bool:
    """Whether ``process`` is a Dask worker that has reached ``stage`` of its start."""
    try:
        if "multiprocessing.spawn" not in " ".join(process.cmdline()):
            return False
        return _STAGES[stage] in Path(f"/proc/{process.pid}/maps").read_text()
    except (psutil.Error, OSError):
        return False


@pytest.mark.parametrize(
    ("stage", "signum"),
    [("importing", signal.SIGINT), ("importing", signal.SIGTERM),
     ("preloading", signal.SIGINT)],
    ids=["importing-SIGINT", "importing-SIGTERM", "preloading-SIGINT"],
)  # fmt: skip
def test_a_signal_while_the_workers_start_prints_no_traceback(
    config: PipelineConfig,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
    stage: str,
    signum: signal.Signals,
) -> None:
    """At the default log level, a Ctrl-C (or a supervisor's SIGTERM) while the run's Dask
    workers are still importing reached them too, and closing them mid-start made Dask
    print a traceback per worker and per nanny: a hundred lines above "Interrupted.". They
    start deaf to it now, and those still starting are killed quietly."""
    inputs = tmp_path / "inputs"
    make_inputs(inputs, files=400, lines=20)
    # At the default log level: --log-level OFF sends what the workers print nowhere.
    args = [str(PIPELINE), *command(config, "run-parallel", inputs, "--workers", "2",
                                    "--workers-after", "0")[3:]]  # fmt: skip
    runner = start(processes, args, api_env(), new_group=True)
    lines: list[str] = []
    cluster_started = threading.Event()

    def read() -> None:
        assert runner.stderr is not None
        for line in runner.stderr:
            lines.append(line)
            if "started a Dask LocalCluster" in line:
                cluster_started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert cluster_started.wait(TIMEOUT), lines
    # The workers were asked for as the cluster started, and take seconds to start: the
    # signal comes once one has reached the stage.
    deadline = time.monotonic() + TIMEOUT
    while not any(_starting(child, stage) for child in children_of(runner.pid)):
        assert runner.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.01)
    children = children_of(runner.pid)
    os.killpg(runner.pid, signum)
    runner.wait(TIMEOUT)
    reader.join(10)

    assert runner.returncode == 130, "".join(lines)
    text = "".join(lines)
    assert "Traceback" not in text and "Error" not in text, text
    assert lines[-1] == "Interrupted.\n", text
    assert_gone(children)
    assert statuses(config).get("processing", 0) == 0


def test_a_signal_after_the_summary_keeps_the_runs_result(
    config: PipelineConfig, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """A run that ended before its workers joined (they were asked for with the run) has
    shown its summary; the cluster still starting and the server stop. Ctrl-C then cut that
    short: it said "Interrupted.", exited 130 and printed Dask's tracebacks, for a run that
    had done all it was asked. Its result stands: exit 0, nothing more said."""
    inputs = tmp_path / "inputs"
    make_inputs(inputs, files=30, lines=5)
    args = [str(PIPELINE), *command(config, "run-parallel", inputs, "--workers", "1",
                                    "--workers-after", "0", "--json")[3:]]  # fmt: skip
    runner = start(processes, args, api_env(), new_group=True)
    assert runner.stdout is not None
    summary = json.loads(runner.stdout.readline())  # printed before the teardown
    children = children_of(runner.pid)
    os.killpg(runner.pid, signal.SIGINT)
    _, stderr = runner.communicate(timeout=TIMEOUT)

    assert summary["succeeded"] == 30 and summary["stopped"] is None
    assert runner.returncode == 0, stderr
    assert "Traceback" not in stderr and "Interrupted." not in stderr, stderr
    assert_gone(children)


def test_a_sigterm_that_prefect_caught_mid_task_run_counts_as_the_interrupt() -> None:
    """Prefect's engine puts its own SIGTERM handler in front of the command's while a flow
    runs; landing while a task run is created, its ``TerminationSignal`` comes out as
    another error (seen once under load: exit 3 with "Task run is not set" instead of 130).
    The error is recognised by its context, and the signal is recorded as received."""
    from prefect.exceptions import TerminationSignal

    from prefect_pipeline import interrupts

    try:
        try:
            raise TerminationSignal(signal.SIGTERM)
        except TerminationSignal:
            raise ValueError("Task run is not set")  # noqa: B904 - as Prefect raises it
    except ValueError as exc:
        prefects = exc

    assert not interrupts.caused_by_interrupt(ValueError("an error of its own"))
    assert not interrupts.received()
    assert interrupts.caused_by_interrupt(prefects)
    assert interrupts.received()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # a second one waits for us


def test_an_interrupt_lost_in_a_gc_callback_is_kept_quiet_and_still_stops(tmp_path: Path) -> None:
    """A signal that arrives while the garbage collector runs a callback (distributed's
    ``GCDiagnosis`` registers one in every process with a cluster) raises the handler's
    ``KeyboardInterrupt`` where Python cannot raise it: Python prints "Exception ignored
    in" with a traceback (seen once in CI under ``--log-level OFF``). The report is dropped
    and the stop still comes, from the next ``check()``."""
    script = tmp_path / "lost.py"
    script.write_text(
        textwrap.dedent(
            """
            import gc, os, signal, sys
            from prefect_pipeline import interrupts

            interrupts.install()
            fired = []

            def callback(phase, info):
                if phase == "start" and not fired:
                    fired.append(True)
                    os.kill(os.getpid(), signal.SIGINT)
                    sum(range(1000))  # the handler runs here, inside the callback

            gc.callbacks.append(callback)
            gc.collect()
            gc.callbacks.remove(callback)
            print("received", interrupts.received(), flush=True)
            try:
                interrupts.check()
            except KeyboardInterrupt:
                print("stopped", flush=True)
                sys.exit(130)
            """
        ),
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        130,
        "received True\nstopped\n",
        "",
    )


@pytest.mark.parametrize("started_by", ["the cluster's start", "multiprocessing"])
def test_the_resource_tracker_keeps_quiet_about_what_it_cleans_up(started_by: str) -> None:
    """Workers killed as they start (an interrupt during the cluster's start) leave their
    semaphores to multiprocessing's resource tracker, which removes them when the command
    exits, with a warning printed after the command's last line. The tracker the cluster
    starts removes them without it. A process that leaves a semaphore behind, for real;
    as multiprocessing starts the tracker itself, the warning comes (the case is real)."""
    start = (
        "from prefect_pipeline.pipeline.cluster import start_resource_tracker as start"
        if started_by == "the cluster's start"
        else "from multiprocessing.resource_tracker import ensure_running as start"
    )
    code = (
        f"{start}\n"
        "import multiprocessing, os\n"
        "start()\n"
        "semaphore = multiprocessing.get_context('spawn').Semaphore()\n"
        "os._exit(0)\n"  # as a process killed before it cleaned up
    )

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    if started_by == "multiprocessing":
        assert "leaked semaphore objects to clean up" in result.stderr
    else:
        assert result.stderr == ""
