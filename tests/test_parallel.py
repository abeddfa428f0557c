"""run-parallel end to end: a real Dask cluster, a real SQLite file, the real CLI.

Most tests share one process-based ``LocalCluster`` (``--address``) so that the suite pays
for one cluster start; one test starts real ``dask scheduler`` / ``dask worker`` processes,
one kills a worker with SIGKILL in the middle of a run.
"""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.jobs import JobA, JobB, JobC
from prefect_pipeline.jobs.job_a import ProcessedDocument
from prefect_pipeline.pipeline.definition import PipelineDefinition
from prefect_pipeline.pipeline.parallel import run_parallel_from_files
from tests.conftest import api_env, db_counts, files_under, query

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def dask_address() -> Iterator[str]:
    """A process-based LocalCluster with two single-threaded workers, for the session."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        host="127.0.0.1",
        silence_logs="ERROR",
    ) as cluster:
        yield cluster.scheduler_address


def expected_records(path: Path) -> list[tuple[int, str]]:
    """An independent reading of a file: (line_number, stripped) of each non-empty line."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    text = data.decode("utf-8")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]


def make_tree(root: Path) -> dict[str, list[Path]]:
    """A tree a user might have: shared names in many folders, clashing stems, hidden files,
    a FIFO, a symlink out of the tree, bad files."""
    good: list[Path] = []
    for package in ("alpha", "beta", "gamma"):
        path = root / "pkgs" / package / "copyright"
        path.parent.mkdir(parents=True)
        path.write_text(f"Copyright {package}\n\nAll rights reserved.\n")
        good.append(path)
    (root / "stems").mkdir()
    for name in ("a.txt", "a.md", "a.txt.md"):
        (root / "stems" / name).write_text(f"file {name}\r\nsecond\rthird\n")
        good.append(root / "stems" / name)
    (root / "bom.txt").write_bytes(b"\xef\xbb\xbfwith bom\n")
    good.append(root / "bom.txt")
    (root / "empty.txt").write_text("")
    good.append(root / "empty.txt")
    (root / ".hidden.txt").write_text("never read\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("never read\n")
    (root / "binary.dat").write_bytes(b"abc\x00def")
    (root / "latin1.txt").write_bytes(b"caf\xe9\n")
    os.mkfifo(root / "pipe")
    (root / "escape").symlink_to("/etc/hostname")
    return {"good": good, "bad": [root / "binary.dat", root / "latin1.txt"]}


@pytest.mark.parametrize(
    "name",
    ["a", "a.txt", "a.b.c", "a.", "a..", ".a", "..a", "a..b", "x.tar.gz", "é.ü", "a .b",
     "a.b ", "...", "a.\n", "日本.txt", "a.b."],
)
def test_discovery_names_outputs_by_the_stem_pathlib_gives(name: str) -> None:
    """Output names are stored in the ledger and on disk: discovery's own stem (no path
    object per file) must be pathlib's, or a later version would name the same input's
    JSON differently."""
    from pathlib import PurePath

    from prefect_pipeline.pipeline.discovery import stem_of

    assert stem_of(name) == PurePath(name).stem


def run_cli(cli_runner, config: PipelineConfig, *args: str):  # type: ignore[no-untyped-def]
    result = cli_runner(
        "--log-level",
        "OFF",
        "--db-path",
        config.db_path,
        "--output-dir",
        config.output_dir,
        "run-parallel",
        *args,
    )
    return result


def test_run_parallel_tree(cli_runner, config, tmp_path, dask_address):  # type: ignore[no-untyped-def]
    root = tmp_path / "tree"
    tree = make_tree(root)

    result = run_cli(cli_runner, config, str(root), "--address", dask_address, "--json")

    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["succeeded"] == len(tree["good"])
    assert summary["failed"] == 2
    assert summary["skipped"] == 0
    assert summary["total"] == len(tree["good"]) + 2
    assert summary["ignored"] == 2
    assert {f["input"]: (f["job"], f["error"]) for f in summary["failures"]} == {
        str(root / "binary.dat"): (
            "A",
            f"{root / 'binary.dat'}: binary file (NUL byte at offset 3)",
        ),
        str(root / "latin1.txt"): ("A", f"{root / 'latin1.txt'}: invalid UTF-8 at byte offset 3"),
    }
    expected = {str(p.resolve()): expected_records(p) for p in tree["good"]}
    assert summary["records"] == sum(len(v) for v in expected.values())

    # The database, row by row, against an independent reading of the files.
    batches = query(config.db_path, "SELECT * FROM processing_batches")
    assert {b["source_path"] for b in batches} == set(expected)
    for batch in batches:
        rows = query(
            config.db_path,
            "SELECT line_number, content, status, record_index"
            " FROM processed_records WHERE batch_id = ? ORDER BY record_index",
            (batch["id"],),
        )
        assert [(r["line_number"], r["content"]) for r in rows] == expected[batch["source_path"]]
        assert [r["record_index"] for r in rows] == list(range(len(rows)))
        assert {r["status"] for r in rows} <= {"finalized"}
        assert batch["status"] == "finalized" and batch["finalized_at"]
        assert Path(batch["output_path"]).name.endswith("_processed.json")
    # One JSON per input; shared names keep their folder; clashing stems keep full names.
    outputs = files_under(config.output_dir)
    assert len(outputs) == len(tree["good"])
    assert "pkgs/alpha/copyright_processed.json" in outputs
    assert {
        "stems/a.txt_processed.json",
        "stems/a.md_processed.json",
        "stems/a.txt-2_processed.json",
    } <= set(outputs)
    inputs = {r["path"]: r for r in query(config.db_path, "SELECT * FROM pipeline_inputs")}
    assert {p for p, r in inputs.items() if r["status"] == "done"} == {str(p) for p in tree["good"]}
    assert inputs[str(root / "binary.dat")]["status"] == "failed"

    # A second run over the unchanged tree adds nothing; the files their content failed
    # are skipped too while they are unchanged (and stay failed in the ledger).
    before = db_counts(config.db_path)
    again = run_cli(cli_runner, config, str(root), "--address", dask_address, "--json")
    assert again.exit_code == 0
    second = json.loads(again.stdout)
    assert (second["succeeded"], second["failed"], second["skipped"], second["records"]) == (
        0,
        0,
        len(tree["good"]) + 2,
        0,
    )
    [row] = query(config.db_path, "SELECT status FROM pipeline_inputs WHERE path = ?",
                  (str(root / "binary.dat"),))  # fmt: skip
    assert row["status"] == "failed"
    assert db_counts(config.db_path)["processed_records"] == before["processed_records"]
    assert db_counts(config.db_path)["processing_batches"] == before["processing_batches"]

    # A touched file whose content did not change is read again but stores nothing new.
    os.utime(tree["good"][0], ns=(time.time_ns(), time.time_ns()))
    third = json.loads(
        run_cli(
            cli_runner,
            config,
            str(root),
            "--address",
            dask_address,
            "--json",
            "--pattern",
            "copyright",
        ).stdout
    )
    assert (third["succeeded"], third["skipped"], third["records"]) == (0, 3, 0)
    # Each skipped input is listed, the touched one with the batch that holds its content.
    reasons = {s["input"]: s["reason"] for s in third["skipped_inputs"]}
    [batch] = query(config.db_path, "SELECT id FROM processing_batches WHERE source_path = ?",
                    (str(tree["good"][0]),))  # fmt: skip
    assert len(reasons) == 3
    assert reasons[str(tree["good"][0])] == f"content already stored (batch {batch['id']})"

    # --force reprocesses and replaces: same counts, new batch ids.
    forced = json.loads(
        run_cli(
            cli_runner, config, str(root / "pkgs"), "--address", dask_address, "--json", "--force"
        ).stdout
    )
    assert (forced["succeeded"], forced["skipped"]) == (3, 0)
    assert db_counts(config.db_path)["processing_batches"] == before["processing_batches"]


def test_streamed_documents_give_the_same_files_and_rows(config, tmp_path, dask_address):  # type: ignore[no-untyped-def]
    """Every input above a zero threshold, read in chunks of 7 bytes on the Dask workers,
    its document crossing to the writer without its records: the same JSON files, byte for
    byte, and the same rows as the whole-file path."""
    root = tmp_path / "tree"
    tree = make_tree(root)
    (root / "long.txt").write_text("".join(f"line {n} with \"quotes\" é\r\n" for n in range(3000)))
    whole = config.model_copy(
        update={"output_dir": tmp_path / "whole-out", "db_path": tmp_path / "whole.db"}
    )
    streamed = config.model_copy(update={"stream_threshold": 0, "chunk_bytes": 7})

    summaries = [
        run_parallel_from_files(root, cfg, address=dask_address) for cfg in (whole, streamed)
    ]

    assert [(s.succeeded, s.failed) for s in summaries] == [(len(tree["good"]) + 1, 2)] * 2
    outputs = files_under(whole.output_dir)
    assert files_under(streamed.output_dir) == outputs
    for name in outputs:
        assert (streamed.output_dir / name).read_bytes() == (whole.output_dir / name).read_bytes()
    sql = (
        "SELECT b.source_path, b.sha256, b.record_count, b.status, r.record_index,"
        " r.line_number, r.content, r.status FROM processed_records r"
        " JOIN processing_batches b ON b.id = r.batch_id ORDER BY b.source_path, r.record_index"
    )
    stored = [[tuple(r) for r in query(cfg.db_path, sql)] for cfg in (whole, streamed)]
    assert stored[0] == stored[1]
    assert len(stored[0]) > 3000


def test_sequential_matches_dask(cli_runner, config, tmp_path):  # type: ignore[no-untyped-def]
    root = tmp_path / "tree"
    tree = make_tree(root)
    result = run_cli(cli_runner, config, str(root), "--workers", "0", "--json")
    summary = json.loads(result.stdout)
    assert result.exit_code == 1
    assert (summary["succeeded"], summary["failed"]) == (len(tree["good"]), 2)
    assert result.stderr == ""  # --log-level OFF: no log lines, no progress bar


def test_stop_after_and_start_from_b(cli_runner, config, tmp_path, dask_address):  # type: ignore[no-untyped-def]
    root = tmp_path / "in"
    root.mkdir()
    for i in range(5):
        (root / f"f{i}.txt").write_text(f"line {i}\nmore\n")
    first = run_cli(
        cli_runner, config, str(root), "--address", dask_address, "--json", "--stop-after", "A"
    )
    assert first.exit_code == 0, first.output
    assert db_counts(config.db_path)["processing_batches"] == 0
    assert len(files_under(config.output_dir)) == 5

    json_config = config.model_copy(update={"db_path": tmp_path / "b.db"})
    second = run_cli(
        cli_runner,
        json_config,
        str(config.output_dir),
        "--address",
        dask_address,
        "--json",
        "--start-from",
        "B",
    )
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)["records"] == 10
    batches = query(json_config.db_path, "SELECT status FROM processing_batches")
    assert [b["status"] for b in batches] == ["finalized"] * 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start-from", "C"], "job C takes batch ids, not files"),
        (["--start-from", "Z"], "unknown job 'Z'"),
        (["--start-from", "C", "--stop-after", "A"], "--start-from C comes after"),
    ],
)
def test_usage_errors(cli_runner, config, tmp_path, args, message):  # type: ignore[no-untyped-def]
    (tmp_path / "in").mkdir()
    result = run_cli(cli_runner, config, str(tmp_path / "in"), *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert not config.db_path.exists() or db_counts(config.db_path)["pipeline_inputs"] == 0


def test_missing_directory_and_empty_match(cli_runner, config, tmp_path):  # type: ignore[no-untyped-def]
    missing = run_cli(cli_runner, config, str(tmp_path / "nope"))
    assert missing.exit_code == 2
    assert f"{tmp_path / 'nope'}: no such directory" in missing.stderr
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.txt").write_text("x\n")
    empty = run_cli(
        cli_runner, config, str(tmp_path / "in"), "--pattern", "*.csv", "--workers", "0", "--json"
    )
    assert empty.exit_code == 0
    assert json.loads(empty.stdout)["total"] == 0


def test_a_symlink_to_an_input_in_the_folder_is_not_run_twice(cli_runner, config, tmp_path):  # type: ignore[no-untyped-def]
    """Both would write the one batch of their source file: with --force each replaced the
    other's, and job C of the first found its batch gone. The link is reported instead;
    one to a file the walk does not take (another pattern, a hidden one) is still run."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "real.txt").write_text("one\ntwo\n")
    (root / ".hidden.txt").write_text("three\n")
    (root / "data.csv").write_text("four\n")
    (root / "alias.txt").symlink_to("real.txt")
    (root / "sub" / "up.txt").symlink_to("../real.txt")
    (root / "shown.txt").symlink_to(".hidden.txt")
    (root / "csv.txt").symlink_to("data.csv")
    for force in ([], ["--force"]):
        result = run_cli(
            cli_runner, config, str(root), "--pattern", "*.txt", "--workers", "0", "--json",
            *force,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert (summary["succeeded"], summary["failed"]) == (3, 0)
        assert summary["ignored_paths"] == [
            {"path": str(root / name), "reason": f"symlink to {target}, which is an input itself"}
            for name, target in (("alias.txt", "real.txt"), ("sub/up.txt", "real.txt"))
        ]
    rows = query(config.db_path, "SELECT source_path, status FROM processing_batches")
    assert sorted(tuple(row) for row in rows) == [
        (str(root / name), "finalized") for name in (".hidden.txt", "data.csv", "real.txt")
    ]


def test_unreachable_address_exits_3(cli_runner, config, tmp_path):  # type: ignore[no-untyped-def]
    import dask
    import distributed  # noqa: F401  (loads the distributed.* defaults)

    log_length = dask.config.get("distributed.admin.low-level-log-length")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.txt").write_text("x\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_cli(
        cli_runner, config, str(tmp_path / "in"), "--address", f"tcp://127.0.0.1:{port}"
    )
    assert result.exit_code == 3
    assert f"Dask scheduler tcp://127.0.0.1:{port} is not reachable" in result.stderr
    # Nothing was claimed and left behind.
    rows = (
        query(config.db_path, "SELECT status FROM pipeline_inputs")
        if config.db_path.exists()
        else []
    )
    assert all(r["status"] != "processing" for r in rows)
    # The run's Dask settings are not left behind in the caller's process.
    assert dask.config.get("distributed.admin.low-level-log-length") == log_length


def _write_workload(root: Path, files: int, lines: int, seed: int = 1) -> int:
    rng = random.Random(seed)
    words = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit"]
    total = 0
    for i in range(files):
        folder = root / f"d{i // 50}"
        folder.mkdir(parents=True, exist_ok=True)
        body = "\n".join(" ".join(rng.choices(words, k=8)) for _ in range(lines))
        (folder / f"f{i:04d}.txt").write_text(body + "\n")
        total += lines
    return total


def test_worker_killed_mid_run_loses_nothing(config, tmp_path, dask_address):  # type: ignore[no-untyped-def]
    from distributed import Client

    root = tmp_path / "big"
    # Enough lines that the run goes on well after its first inputs are committed.
    expected = _write_workload(root, files=240, lines=600)
    with Client(dask_address) as client:
        pids = client.run(os.getpid)
    killed: list[int] = []

    def killer() -> None:
        # Kill one worker once the run has committed its first inputs.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                rows = query(
                    config.db_path,
                    "SELECT count(*) AS n FROM pipeline_inputs WHERE status = 'done'",
                )
            except sqlite3.OperationalError:  # not created yet
                rows = []
            if rows and rows[0]["n"] > 0:
                pid = next(iter(pids.values()))
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer)
    thread.start()
    summary = run_parallel_from_files(
        root, config, address=dask_address, first_group_files=4, max_group_files=16
    )
    thread.join()

    assert killed, "the run finished before a worker could be killed"
    assert (summary.succeeded, summary.failed, summary.total) == (240, 0, 240)
    assert summary.records == expected
    assert db_counts(config.db_path)["processed_records"] == expected
    per_input = query(
        config.db_path,
        "SELECT source_path, count(*) AS n FROM processing_batches"
        " GROUP BY source_path HAVING n > 1",
    )
    assert per_input == []
    assert db_counts(config.db_path)["processing_batches"] == 240


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_existing_cluster_of_real_processes(cli_runner, config, tmp_path):  # type: ignore[no-untyped-def]
    """`dask scheduler` and two `dask worker` processes, as a user would start them."""
    from prefect.settings import PREFECT_API_URL

    bindir = Path(sys.executable).parent
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "DASK_LOGGING__DISTRIBUTED": "error",
    }
    procs = [
        subprocess.Popen(
            [
                bindir / "dask",
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dashboard-address",
                ":0",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        bindir / "dask",
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--dashboard-address",
                        ":0",
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=60)
        root = tmp_path / "in"
        expected = _write_workload(root, files=30, lines=20)
        # The command runs in this process: the cluster's processes are the point here.
        result = run_cli(cli_runner, config, str(root), "--address", address, "--json")
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert (summary["succeeded"], summary["records"]) == (30, expected)
        assert db_counts(config.db_path)["processed_records"] == expected
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.parametrize("late", [False, True], ids=["with-the-run", "late"])
def test_local_cluster_keeps_no_message_logs(late: bool) -> None:
    """Dask's per-connection message logs would keep every group sent alive (memory that
    grows with the file count): the run's own cluster turns them off, in this process and
    in its workers, and gives the process its settings back afterwards - whether it starts
    with the run or later, from its own thread, when the run needs workers."""
    import dask
    from distributed import Client

    from prefect_pipeline.compat import QUIET_DASK
    from prefect_pipeline.pipeline.cluster import DaskCluster

    keys = list(QUIET_DASK)
    before = [dask.config.get(key) for key in keys]
    with DaskCluster(workers=1, workers_now=not late) as cluster:
        if late:
            assert cluster.address is None  # nothing started with the run
            cluster.start_workers()
        deadline = time.monotonic() + 120
        while not cluster.workers_ready():  # they start in the background
            assert time.monotonic() < deadline, "no worker joined"
            time.sleep(0.1)
        with Client(cluster.address) as client:
            in_workers = client.run(lambda: [dask.config.get(key) for key in keys])
            assert list(in_workers.values()) == [list(QUIET_DASK.values())]
            log = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_log)
            assert log.maxlen == 0
    assert [dask.config.get(key) for key in keys] == before


class _CountingWriter(JobB):
    """Job B that notes, for each input, how many of job A's documents are still alive."""

    alive: ClassVar[list[int]] = []

    def validate_input(self, input_data: Any) -> Any:
        self.alive.append(sum(isinstance(o, ProcessedDocument) for o in gc.get_objects()))
        return super().validate_input(input_data)


def test_in_process_run_lets_each_groups_documents_go(config, tmp_path):  # type: ignore[no-untyped-def]
    """Without Dask (``workers=0``), a finished task's future and its result sit in a
    reference cycle that only the cyclic collector would free. Documents must go when their
    group is written, not at the end of the run: with the collector off, at most the groups
    in flight are alive at any time."""
    for n in range(16):
        (tmp_path / "in" / f"f{n:02d}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "in" / f"f{n:02d}.txt").write_text(f"line {n}\n" * 50)
    definition = (
        PipelineDefinition().add_job("A", JobA).add_job("B", _CountingWriter).add_job("C", JobC)
    )
    _CountingWriter.alive.clear()
    gc.disable()
    try:
        summary = run_parallel_from_files(
            tmp_path / "in",
            config,
            definition=definition,
            workers=0,
            first_group_files=2,
            max_group_files=2,
        )
    finally:
        gc.enable()
    assert summary.succeeded == 16
    assert len(_CountingWriter.alive) == 16
    # Two groups of two in flight, plus the one being written: never the whole run (kept
    # to its end, the documents would number 7 at the seventh input already).
    assert max(_CountingWriter.alive) <= 6, _CountingWriter.alive


# Workers on demand: they start once the writer has waited --workers-after for job A -


class _WhereJobA(JobA):
    """Job A that notes which process ran it (a file named after the pid). In the command's
    own process it is slow (0.2 s an input) until a worker has run one, so that the run
    lasts until its worker joins however long that takes on a loaded machine."""

    def single_job(self, validated: Any) -> Any:
        marks = Path(os.environ["PIPELINE_TEST_MARKS"])
        (marks / str(os.getpid())).touch()
        command = os.environ["PIPELINE_TEST_COMMAND_PID"]
        if str(os.getpid()) == command and {p.name for p in marks.iterdir()} == {command}:
            time.sleep(0.2)
        return super().single_job(validated)


def _where_definition() -> PipelineDefinition:
    return PipelineDefinition().add_job("A", _WhereJobA).add_job("B", JobB).add_job("C", JobC)


def _where_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    marks = tmp_path / "ran-in"
    marks.mkdir()
    monkeypatch.setenv("PIPELINE_TEST_MARKS", str(marks))
    monkeypatch.setenv("PIPELINE_TEST_COMMAND_PID", str(os.getpid()))
    return marks


def _small_files(folder: Path, count: int) -> None:
    folder.mkdir()
    for n in range(count):
        (folder / f"f{n:03d}.txt").write_text(f"line one of {n}\nline two\n")


def test_a_run_shorter_than_workers_after_starts_no_worker(config, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """Ten small files take well under the default 5 s here: the run ends in the command's
    own process, and neither its cluster nor any of its two workers (seconds of CPU each)
    is started."""
    marks = _where_env(monkeypatch, tmp_path)
    _small_files(tmp_path / "in", 10)

    summary = run_parallel_from_files(
        tmp_path / "in", config, definition=_where_definition(), workers=2
    )

    assert (summary.succeeded, summary.failed, summary.workers_started) == (10, 0, 0)
    assert summary.dashboard_url is None  # no scheduler either
    assert {p.name for p in marks.iterdir()} == {str(os.getpid())}
    assert db_counts(config.db_path)["processed_records"] == 20


def test_a_run_that_outlasts_workers_after_hands_its_groups_to_the_workers(  # type: ignore[no-untyped-def]
    config, tmp_path, monkeypatch
):
    """Once the writer has waited --workers-after seconds for job A (slow in the command's
    process) and inputs are left, the workers start, and the groups go to them as soon as
    one has joined."""
    marks = _where_env(monkeypatch, tmp_path)
    _small_files(tmp_path / "in", 200)

    summary = run_parallel_from_files(
        tmp_path / "in",
        config,
        definition=_where_definition(),
        workers=1,
        workers_after_s=0.3,
        first_group_files=1,
        max_group_files=1,
    )

    assert (summary.succeeded, summary.failed, summary.workers_started) == (200, 0, 1)
    assert summary.dashboard_url is not None  # the cluster started with its worker
    ran_in = {int(p.name) for p in marks.iterdir()}
    assert os.getpid() in ran_in and len(ran_in) == 2, ran_in
    assert db_counts(config.db_path)["processed_records"] == 400


class _SlowWriteJobB(JobB):
    """Job B that takes 0.3 s a group: a run whose time goes to its database."""

    def group_job(self, validated: Any) -> Any:
        time.sleep(0.3)
        return super().group_job(validated)


def test_time_spent_writing_does_not_start_workers(config, tmp_path):  # type: ignore[no-untyped-def]
    """Workers would take job A, never the writing: ten groups that each spend 0.3 s in
    job B and next to nothing in job A (on the local lane, beside the writer) leave the
    writer nothing to wait for, and have not earned the workers by --workers-after 2,
    though the run lasts longer than that."""
    _small_files(tmp_path / "in", 10)
    definition = PipelineDefinition().add_job("A", JobA).add_job("B", _SlowWriteJobB)
    began = time.monotonic()

    summary = run_parallel_from_files(
        tmp_path / "in",
        config,
        definition=definition.add_job("C", JobC),
        workers=1,
        workers_after_s=2,
        first_group_files=1,
        max_group_files=1,
    )

    assert time.monotonic() - began >= 3  # ten groups of writing
    assert (summary.succeeded, summary.failed, summary.workers_started) == (10, 0, 0)
    assert db_counts(config.db_path)["processed_records"] == 20


class _AbandonedJobA(JobA):
    """Job A that finds its run stopped at one file (what ``interrupts.check`` raises on a
    thread of the command once a Cancel, an error or a SIGTERM has stopped the run)."""

    def single_job(self, validated: Any) -> Any:
        if validated[0].name == "f001.txt":
            from prefect_pipeline.interrupts import Abandoned

            raise Abandoned
        return super().single_job(validated)


def test_a_group_abandoned_with_its_run_fails_none_of_its_inputs(config, tmp_path):  # type: ignore[no-untyped-def]
    """A group whose job A was abandoned (its task run ends Cancelled) did not fail: should
    the driver still read its result, its inputs are dropped like the groups a Cancel
    drops, and given back pending with the run's other claims, not recorded as failed."""
    _small_files(tmp_path / "in", 3)
    chain = PipelineDefinition().add_job("A", _AbandonedJobA).add_job("B", JobB).add_job("C", JobC)

    # One file a group: the abandoned group holds only f001.txt.
    one_each = {"first_group_files": 1, "max_group_files": 1}
    summary = run_parallel_from_files(
        tmp_path / "in", config, definition=chain, workers=0, **one_each
    )

    assert (summary.succeeded, summary.failed, summary.pending) == (2, 0, 1)
    statuses = dict(query(config.db_path, "SELECT path, status FROM pipeline_inputs"))
    assert {Path(path).name: status for path, status in statuses.items()} == {
        "f000.txt": "done", "f001.txt": "pending", "f002.txt": "done"
    }


def test_a_run_that_needs_no_workers_does_not_import_dask(tmp_path: Path) -> None:
    """A short run with --workers 2 (in a fresh interpreter: pytest's has Dask already)
    ends without importing distributed: no scheduler, no workers, none of their CPU."""
    _small_files(tmp_path / "in", 5)
    script = f"""
import sys
from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.pipeline.parallel import run_parallel_from_files
config = PipelineConfig(output_dir={str(tmp_path / "out")!r}, db_path={str(tmp_path / "p.db")!r},
                        log_level="OFF")
summary = run_parallel_from_files({str(tmp_path / "in")!r}, config, workers=2)
print(summary.succeeded, summary.workers_started, "distributed" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=api_env()
    )
    assert (result.returncode, result.stdout) == (0, "5 0 False\n"), result.stderr


#: The ``pipeline`` command, its job A 20 ms slower an input (in the command's process; a
#: worker would import the real one).
_SLOW_JOB_A_CLI = """
import time
from prefect_pipeline.jobs.job_a import JobA
from prefect_pipeline.cli import main

real = JobA.single_job
def slow(self, validated):
    time.sleep(0.02)
    return real(self, validated)
JobA.single_job = slow
main()
"""


def test_a_cluster_that_cannot_start_late_leaves_the_run_to_this_process(
    config: PipelineConfig, tmp_path: Path
) -> None:
    """The workers are asked for in the middle of the run; if their cluster cannot start
    (here Dask is told to preload a module that is not there into its scheduler), the run
    loses its workers, not its inputs: a warning says why, and every input is done in the
    command's process. Job A is slowed (20 ms an input), so that the writer waits for the
    first group while later ones are still to come (100 files: groups of 8, 16, 32, 44)."""
    _small_files(tmp_path / "in", 100)
    env = {**api_env(), "DASK_DISTRIBUTED__SCHEDULER__PRELOAD": '["no_such_module_here"]'}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _SLOW_JOB_A_CLI,
            "--db-path",
            str(config.db_path),
            "--output-dir",
            str(config.output_dir),
            "run-parallel",
            str(tmp_path / "in"),
            "--workers",
            "1",
            "--workers-after",
            "0.01",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    # The worker it asked for never joined: none started.
    assert (summary["succeeded"], summary["failed"], summary["workers_started"]) == (100, 0, 0)
    assert summary["dashboard_url"] is None
    [warning] = [line for line in done.stderr.splitlines() if "could not start" in line]
    assert "WARNING could not start a local Dask cluster: " in warning, warning
    assert "No module named 'no_such_module_here'" in warning, warning
    assert warning.endswith("; the run goes on in this process"), warning
    assert "Cluster closed without starting up" not in done.stderr  # Dask's echo of it
    assert db_counts(config.db_path)["processed_records"] == 200


def test_a_process_can_start_one_local_cluster_after_another() -> None:
    """The first cluster of a process (``distributed`` not imported yet) leaves Dask's
    config whole: a second run in the same Python process (the API, a notebook) starts
    its own cluster too. Once, the first cluster's exit took distributed's defaults with
    it and the second failed with "could not start a local Dask cluster: 'comm'"."""
    script = """
from prefect_pipeline.pipeline.cluster import DaskCluster
for _ in range(2):
    with DaskCluster(workers=1, workers_now=True) as cluster:
        assert cluster.address.startswith("tcp://127.0.0.1:"), cluster.address
print("two clusters")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert (result.returncode, result.stdout) == (0, "two clusters\n"), result.stderr


def test_an_interrupted_summary_says_how_many_inputs_it_did_not_reach() -> None:
    """Not in its total (which counts what settled): a line of their own, and a key of
    their own in --json."""
    from prefect_pipeline.pipeline.summary import RunSummary

    summary = RunSummary(
        total=5, succeeded=5, pending=2, not_reached=113, records=10, stopped="interrupted"
    )

    lines = summary.to_text().splitlines()
    assert lines[0] == "5 succeeded, 0 failed, 0 skipped (of 5 input(s)); 10 record(s) written"
    assert lines[2:] == [
        "interrupted: the run stopped before its end",
        "2 input(s) left pending (run the command again, or drain-db, to finish them)",
        "113 input(s) not reached (the next run of this command takes them)",
    ]
    assert (summary.to_dict()["total"], summary.to_dict()["not_reached"]) == (5, 113)
    summary.command = "drain-db"  # which the line then names alone
    assert "2 input(s) left pending (drain-db again finishes them)" in summary.to_text()
    assert "not reached" not in RunSummary(total=5, succeeded=5).to_text()


def test_a_folder_too_large_to_count_again_in_time_is_said_so_not_counted() -> None:
    """An interrupted run walks its folder again to count what it did not reach, for at
    most RECOUNT_SECONDS (the summary comes after it, and a supervisor's SIGKILL follows its
    SIGTERM within seconds): past that, the summary says some may not have been reached,
    and --json has null."""
    from prefect_pipeline.pipeline.parallel import _count_within
    from prefect_pipeline.pipeline.summary import RunSummary

    never = threading.Event()

    def stuck() -> Iterator[int]:
        yield 1
        never.wait()  # a walk that takes its time between two items
        yield 2

    assert _count_within(lambda: range(5000), seconds=60) == 5000
    assert _count_within(stuck, seconds=0.05) is None
    never.set()

    summary = RunSummary(total=5, succeeded=5, not_reached=None, stopped="interrupted")
    assert summary.to_text().splitlines()[3:] == [
        "more input(s) may not have been reached, not counted "
        "(the next run of this command takes them)"
    ]
    assert summary.to_dict()["not_reached"] is None
