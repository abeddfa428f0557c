"""Errors first, and no work, no cluster: the real ``pipeline`` command, in a process of its
own, answers a bad database location, a missing input, a missing database and a run with
nothing to do without importing Prefect or Dask and without starting any process.

What the command loaded and started is recorded from inside it, not guessed from how long
it took: ``sitecustomize.py`` (on ``PYTHONPATH``) installs an audit hook that writes, as it
happens, every module the process loads (the ``import`` audit event, raised when a module
enters ``sys.modules``) and every process it starts (``subprocess.Popen``, ``os.fork``,
``os.posix_spawn``, ``os.exec*``...). A child that is a Python process inherits the hook
and writes its own lines under its own pid, so a process started any other way shows too.
The log is written with ``os.write`` at once: the command leaves through ``os._exit``, and
an ``atexit`` check would never run.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from prefect_pipeline.clock import local_time
from tests.conftest import CliInvoke, files_under, query, queued_output_refused, sqlite_store

PIPELINE = str(Path(sys.executable).parent / "pipeline")

#: A lease that another machine's drainer holds, far from running out.
LEASE_END = "2999-01-01T00:00:00+00:00"

#: Packages a command must not load when it has nothing to run.
HEAVY = ("prefect", "prefect_dask", "distributed", "dask")

SITECUSTOMIZE = textwrap.dedent(
    """
    import os
    import sys

    _log = os.open(os.environ["PIPELINE_TEST_AUDIT_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    _STARTS = ("subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.exec",
               "os.spawn", "os.system", "pty.spawn")


    def _hook(event, args):
        if event == "import":
            os.write(_log, f"{os.getpid()} import {args[0]}\\n".encode())
        elif event in _STARTS:
            os.write(_log, f"{os.getpid()} start {event}\\n".encode())


    sys.addaudithook(_hook)
    """
)


@dataclass
class Watched:
    """A command's outcome, and what its process loaded and started."""

    returncode: int
    stdout: str
    stderr: str
    #: Modules loaded by the command's own process.
    imported: set[str]
    #: Process starts (audit events) of the command's process.
    started: list[str]
    #: Every process that wrote to the log: the command's own, and any Python child.
    pids: set[int]
    #: The command's own events in order: ("import", module) and ("start", event).
    events: list[tuple[str, str]]

    def heavy_imports(self) -> list[str]:
        return sorted(name for name in self.imported if name.partition(".")[0] in HEAVY)


WatchedRun = Callable[..., Watched]


@pytest.fixture
def watched(tmp_path: Path) -> WatchedRun:
    """``watched(*args, cwd=...)``: run ``pipeline ARGS`` in a process of its own, watched."""
    site = tmp_path / "watch-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    runs = iter(range(1000))

    def run(
        *args: str | os.PathLike[str], cwd: Path = tmp_path, env: dict[str, str] | None = None
    ) -> Watched:
        log = tmp_path / f"audit-{next(runs)}.log"
        base = os.environ if env is None else env
        path = [str(site), *filter(None, [base.get("PYTHONPATH")])]
        env = {
            **base,
            "PYTHONPATH": os.pathsep.join(path),
            "PIPELINE_TEST_AUDIT_LOG": str(log),
        }
        result = subprocess.run(
            [PIPELINE, *(os.fspath(arg) for arg in args)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = [line.split(" ", 2) for line in log.read_text().splitlines()]
        pids = {int(pid) for pid, _, _ in lines}
        own = int(lines[0][0])  # the first line is the command's own (its first import)
        return Watched(
            result.returncode,
            result.stdout,
            result.stderr,
            imported={name for pid, kind, name in lines if int(pid) == own and kind == "import"},
            started=[name for pid, kind, name in lines if int(pid) == own and kind == "start"],
            pids=pids,
            events=[(kind, name) for pid, kind, name in lines if int(pid) == own],
        )

    return run


def assert_started_nothing(result: Watched) -> None:
    # The hook works: the command's own modules are in the log.
    assert "prefect_pipeline.cli" in result.imported
    assert result.heavy_imports() == []
    assert result.started == []
    assert len(result.pids) == 1


# A database location that cannot serve (run, run-all) -----------------------------------


def _under_a_file(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "afile").write_text("a regular file\n")
    db = tmp_path / "afile" / "pipeline.db"
    return db, f"{db}: cannot be created: {tmp_path / 'afile'} is not a directory"


def _a_directory(tmp_path: Path) -> tuple[Path, str]:
    db = tmp_path / "a-folder"
    db.mkdir()
    return db, f"{db}: a directory, not a database file"


def _not_a_database(tmp_path: Path) -> tuple[Path, str]:
    db = tmp_path / "notes.db"
    db.write_text("these are notes, not a SQLite database\n")
    return db, f"{db}: cannot be used: file is not a database"


def _a_link_to_nowhere(tmp_path: Path) -> tuple[Path, str]:
    db = tmp_path / "link.db"
    db.symlink_to(tmp_path / "no-such-folder" / "pipeline.db")  # SQLite makes no folder
    return db, f"{db}: cannot be used: unable to open database file"


@pytest.mark.parametrize(
    ("command", "location"),
    [
        ("run", _under_a_file),
        ("run", _a_directory),
        ("run", _not_a_database),
        ("run-all", _under_a_file),
        ("run-all", _a_link_to_nowhere),
    ],
)
def test_an_unusable_database_is_one_line_before_prefect(
    watched: WatchedRun,
    tmp_path: Path,
    sample_file: Path,
    command: str,
    location: Callable[[Path], tuple[Path, str]],
) -> None:
    db, problem = location(tmp_path)
    before = db.read_bytes() if db.is_file() else None

    result = watched("--db-path", db, "--output-dir", tmp_path / "out", command, sample_file)

    assert result.returncode == 2, result.stderr
    assert result.stderr == f"Error: {problem} (check --db-path)\n"
    assert result.stdout == ""
    assert_started_nothing(result)
    # Nothing was written: not job A's JSON, not the file that is not a database.
    assert files_under(tmp_path / "out") == []
    assert (db.read_bytes() if db.is_file() else None) == before


def test_a_database_named_by_url_is_checked_by_that_option(
    watched: WatchedRun, tmp_path: Path, sample_file: Path
) -> None:
    db, problem = _a_directory(tmp_path)
    result = watched("--db-url", f"sqlite:///{db}", "run-all", sample_file)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"Error: {problem} (check --db-url)\n"
    assert_started_nothing(result)


# An output folder job A cannot write in (run, run-all, run-parallel) ------------------


_NO_FILE_THERE = "its file system makes no file there: no such file or directory"


@pytest.mark.parametrize(
    "case", ["a file", "under a file", "/proc/self", "/proc/nonexistent-dir"]
)
@pytest.mark.parametrize("command", ["run", "run-all", "run-parallel"])
def test_an_output_folder_job_a_cannot_write_in_is_one_line_before_prefect(
    watched: WatchedRun, tmp_path: Path, sample_file: Path, command: str, case: str
) -> None:
    """Found by job A, every input would fail with it, one by one, after the start-up. Under
    /proc root is told it may
    write (``os.access``) and no file can be made: the check makes one."""
    afile = tmp_path / "afile"
    afile.write_text("a regular file\n")
    if case == "a file":
        out = afile
        problem = "a file, not a directory"
    elif case == "under a file":
        out = afile / "out"
        problem = f"cannot be created: {afile} is not a directory"
    elif not Path("/proc/self").is_dir():
        pytest.skip("no /proc (Linux only)")
    else:
        out = Path(case)
        problem = (
            f"not writable ({_NO_FILE_THERE})"
            if out.exists()
            else f"cannot be created in /proc ({_NO_FILE_THERE})"
        )
    given = sample_file.parent if command == "run-parallel" else sample_file
    db = tmp_path / "db" / "pipeline.db"

    result = watched("--db-path", db, "--output-dir", out, command, given)

    assert result.returncode == 2, result.stderr
    assert result.stderr == f"Error: {out}: {problem} (check --output-dir)\n"
    assert result.stdout == ""
    assert_started_nothing(result)
    assert not db.exists()
    assert afile.read_text() == "a regular file\n"


def test_the_output_folder_check_leaves_nothing_behind(
    watched: WatchedRun, tmp_path: Path
) -> None:
    """A run with nothing to do makes no output folder, and leaves no trace of the file the
    check made (in the nearest folder that exists) and removed."""
    empty = tmp_path / "empty"
    empty.mkdir()
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "kept.txt").write_text("kept\n")
    out = parent / "new" / "out"

    result = watched("--db-path", tmp_path / "p.db", "--output-dir", out, "run-parallel", empty,
                     "--json")  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total"] == 0
    assert sorted(os.listdir(parent)) == ["kept.txt"]
    assert_started_nothing(result)


def test_an_output_folder_is_not_checked_by_a_run_that_writes_none(
    watched: WatchedRun, tmp_path: Path
) -> None:
    """Job B on to C reads JSON files and writes rows: --output-dir is not theirs."""
    afile = tmp_path / "afile"
    afile.write_text("a regular file\n")
    folder = tmp_path / "json"
    folder.mkdir()

    result = watched("--db-path", tmp_path / "p.db", "--output-dir", afile / "out", "run-parallel",
                     folder, "--start-from", "B", "--json")  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total"] == 0


def test_the_other_commands_refuse_a_directory_in_one_line(
    cli_runner: CliInvoke, tmp_path: Path, sample_file: Path
) -> None:
    db = tmp_path / "a-folder"
    db.mkdir()
    line = f"Error: {db}: a directory, not a database file (check --db-path)\n"

    for command in (
        ["status"],
        ["drain-db", "--workers", "0"],
        ["requeue", "--failed"],
        ["enqueue", sample_file],
        ["run-parallel", sample_file.parent, "--workers", "0"],
    ):
        result = cli_runner("--log-level", "OFF", "--db-path", db, *command)

        assert (result.exit_code, result.stderr) == (2, line), command
    assert list(db.iterdir()) == []


def test_a_run_that_does_not_write_does_not_look_at_the_database(
    cli_runner: CliInvoke, tmp_path: Path, sample_file: Path
) -> None:
    """Job A alone never opens the database, so its location is not checked either."""
    db, _ = _under_a_file(tmp_path)
    result = cli_runner(
        "--log-level",
        "OFF",
        "--db-path",
        db,
        "--output-dir",
        tmp_path / "out",
        "run",
        sample_file,
        "--stop-after",
        "A",
    )

    assert result.exit_code == 0, result.output
    assert files_under(tmp_path / "out") == ["sample_processed.json"]


# Nothing to do: no Prefect, no Dask, no process ---------------------------------------------


def test_a_missing_input_starts_nothing(watched: WatchedRun, tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent.txt"

    result = watched("--db-path", tmp_path / "p.db", "run", missing)

    assert result.returncode == 1
    assert result.stderr == f"Error: job A: {missing}: no such file\n"
    assert_started_nothing(result)
    assert not (tmp_path / "p.db").exists()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"text\n\x00more\n", "binary file (NUL byte at offset 5)"),
        (b"ok\n\xe9t\xe9\n", "invalid UTF-8 at byte offset 3"),
        # Larger than 64 KiB, with a NUL byte in them: the first, as the job reports it (a
        # NUL byte wins over invalid UTF-8 before it).
        (b"line\n" * 10_000 + b"\x00" + b"ok\n" * 10_000, "binary file (NUL byte at offset 50000)"),
        (b"\xff" + b"line\n" * 10_000 + b"\x00" * 20_000, "binary file (NUL byte at offset 50001)"),
    ],
    ids=["binary", "not-utf8", "large-binary", "large-binary-not-utf8"],
)
def test_a_file_that_is_not_text_starts_nothing(
    watched: WatchedRun, tmp_path: Path, data: bytes, problem: str
) -> None:
    """Run over one file, job A looks at its first 64 KiB before anything starts (the whole
    file if no larger): a NUL byte there, or a small file that is not UTF-8, is the line the
    job would fail with, without a Prefect server's start-up and a Failed flow run."""
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)

    result = watched("--db-path", tmp_path / "p.db", "run-all", path)

    assert result.returncode == 1, result.stderr
    assert result.stderr == f"Error: job A: {path}: {problem}\n"
    assert_started_nothing(result)
    assert not (tmp_path / "p.db").exists()


def test_a_batch_that_is_not_there_starts_nothing(watched: WatchedRun, tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    sqlite_store(db).close()

    result = watched("--db-path", db, "run", "999", "--start-from", "C")

    assert result.returncode == 1, result.stderr
    assert result.stderr == "Error: job C: batch 999: no such batch\n"
    assert_started_nothing(result)


def test_drain_db_on_a_missing_database_starts_nothing(watched: WatchedRun, tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"

    result = watched("--db-path", missing, "drain-db")

    assert result.returncode == 2
    assert result.stderr == (
        f"Error: {missing}: no such database (check --db-path; enqueue, run, run-all and "
        "run-parallel create it)\n"
    )
    assert_started_nothing(result)
    assert not missing.exists()


def _another_programs_database(path: Path) -> None:
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE users (id INTEGER)")


@pytest.mark.parametrize("command", [["status"], ["drain-db"], ["requeue", "--failed"]])
@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda path: path.write_bytes(b""), "holds no pipeline tables (check the database "
         "location; enqueue, run, run-all and run-parallel create them)"),
        (_another_programs_database, "holds no pipeline tables (check the database "
         "location; enqueue, run, run-all and run-parallel create them)"),
        (lambda path: path.write_text("notes\n"), "cannot be used: file is not a database "
         "(check --db-path)"),
    ],
    ids=["empty", "another-programs", "not-a-database"],
)
def test_a_command_that_reads_refuses_a_file_that_is_not_the_pipelines_database(
    watched: WatchedRun,
    tmp_path: Path,
    command: list[str],
    make: Callable[[Path], object],
    problem: str,
) -> None:
    """A mistyped --db-path that names some other file must neither look like an empty
    queue nor get the pipeline's tables added to it."""
    db = tmp_path / "other.db"
    make(db)
    before = db.read_bytes()

    result = watched("--db-path", db, *command)

    assert result.returncode == 2, result.stderr
    assert result.stderr == f"Error: {db}: {problem}\n"
    assert_started_nothing(result)
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("other")) == [
        "other.db"
    ]  # no -wal, -shm or -journal file either


def test_drain_db_on_an_empty_queue_starts_nothing(watched: WatchedRun, tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    sqlite_store(db)  # a database with its schema and an empty queue

    result = watched("--log-level", "OFF", "--db-path", db, "drain-db", "--json")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["total"], summary["flow_run_id"], summary["dashboard_url"]) == (0, None, None)
    assert (summary["failed_waiting"], summary["held_by_others"]) == (0, 0)
    assert_started_nothing(result)


def test_drain_db_refuses_a_queue_whose_output_folder_takes_no_file(
    watched: WatchedRun, cli_runner: CliInvoke, tmp_path: Path
) -> None:
    """Queued inputs write their JSON where enqueue put it. When that folder has become a
    file, drain-db says so in one line before anything starts, instead of failing every
    input after the start-up; the inputs stay pending, untouched, for the drain after the
    folder is fixed."""
    db, folder, out = tmp_path / "queue.db", tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for name in ("a.txt", "b.txt"):
        (folder / name).write_text(f"{name}\n")
    base: list[str | Path] = ["--log-level", "OFF", "--db-path", db]
    assert cli_runner(*base, "--output-dir", out, "enqueue", folder).exit_code == 0
    out.write_text("a file where the output folder was to be\n")
    before = query(db, "SELECT id, status, attempts, claim_token FROM pipeline_inputs")
    json_folder = out / folder.relative_to(folder.anchor)

    result = watched(*base, "drain-db", "--workers", "0")

    assert result.returncode == 2, result.stderr
    problem = f"cannot be created: {out} is not a directory"
    assert result.stderr == f"Error: {queued_output_refused(json_folder, problem, 2)}\n"
    assert result.stdout == ""
    assert_started_nothing(result)
    after = query(db, "SELECT id, status, attempts, claim_token FROM pipeline_inputs")
    assert [tuple(row) for row in after] == [tuple(row) for row in before]
    assert [row["status"] for row in after] == ["pending", "pending"]

    out.unlink()  # fixed: the next drain takes them
    assert cli_runner(*base, "drain-db", "--workers", "0").exit_code == 0
    assert sorted(os.listdir(json_folder)) == ["a_processed.json", "b_processed.json"]


@pytest.mark.parametrize("option", ["--db-path", "--db-url"])
def test_drain_db_with_nothing_to_run_says_what_waits_in_the_queue(
    watched: WatchedRun, cli_runner: CliInvoke, tmp_path: Path, option: str
) -> None:
    """Failed inputs wait for a requeue and inputs another live command holds are left to
    it: a drain that finds only those says so (a drain run from cron would otherwise say
    all is well), with the command that requeues the failed ones, and starts nothing."""
    db, folder = tmp_path / "queue.db", tmp_path / "in"
    folder.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (folder / name).write_text(f"{name}\n")
    where = str(db) if option == "--db-path" else f"sqlite:///{db}"
    base: list[str | Path] = ["--log-level", "OFF", option, where]
    assert cli_runner(*base, "enqueue", folder).stdout == "3 input(s) queued, 0 already there\n"
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute(
            "UPDATE pipeline_inputs SET status = 'failed', last_job = 'A',"
            " last_error = path || ': no such file' WHERE path != ?",
            (str(folder / "c.txt"),),
        )
        connection.execute(  # claimed by a drainer on another machine, its lease running
            "UPDATE pipeline_inputs SET status = 'processing', claim_token = 't',"
            f" lease_expires_at = '{LEASE_END}', owner_host = 'elsewhere',"
            " owner_namespace = 'ns', owner_pid = 4242, owner_started_at = 1.0 WHERE path = ?",
            (str(folder / "c.txt"),),
        )

    text = watched(*base, "drain-db")
    as_json = watched(*base, "drain-db", "--json")

    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "0 succeeded, 0 failed, 0 skipped (of 0 input(s)); 0 record(s) written"
    requeue = f"pipeline --log-level OFF {option} {where} requeue --failed"
    assert lines[2:] == [
        f"2 failed input(s) wait in the queue, not run again until requeued: {requeue}",
        f"1 input(s) held by pid 4242 on elsewhere until {local_time(LEASE_END)} (its lease,"
        " renewed while it runs): left to it",
    ]
    assert_started_nothing(text)
    assert as_json.returncode == 0, as_json.stderr
    summary = json.loads(as_json.stdout)
    assert (summary["total"], summary["held"], summary["failed"]) == (0, 0, 0)
    assert (summary["failed_waiting"], summary["held_by_others"]) == (2, 1)
    assert_started_nothing(as_json)
    # The command it names is the one to run.
    requeued = cli_runner(*requeue.split()[1:])
    assert (requeued.exit_code, requeued.stdout) == (0, "2 input(s) requeued\n")


def _a_second_run(
    watched: WatchedRun, cli_runner: CliInvoke, tmp_path: Path, folder: Path
) -> tuple[Any, Watched, list[str | Path]]:
    """``run-parallel folder`` run once in the test's process, then again, watched, with the
    default workers (a cluster would start if anything had to run): both results, and the
    options both used."""
    base: list[str | Path] = ["--log-level", "OFF", "--db-path", tmp_path / "p.db",
                              "--output-dir", tmp_path / "o"]  # fmt: skip
    first = cli_runner(*base, "run-parallel", folder, "--workers", "0", "--json")
    return first, watched(*base, "run-parallel", folder, "--json"), base


def test_run_parallel_with_every_input_unchanged_starts_nothing(
    watched: WatchedRun, cli_runner: CliInvoke, tmp_path: Path, sample_file: Path
) -> None:
    (sample_file.parent / "second.txt").write_text("one\ntwo\n")
    first, result, _ = _a_second_run(watched, cli_runner, tmp_path, sample_file.parent)
    assert (first.exit_code, json.loads(first.stdout)["succeeded"]) == (0, 2)

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["total"], summary["skipped"], summary["succeeded"]) == (2, 2, 0)
    assert summary["flow_run_id"] is None
    assert_started_nothing(result)


def test_a_run_with_work_starts_the_temporary_server_before_it_imports_prefect(
    watched: WatchedRun, tmp_path: Path, sample_file: Path
) -> None:
    """The temporary server's start-up is the longest of a run's: its process starts first,
    and this process imports Prefect (a second of CPU) while it starts, not before."""
    from tests.conftest import seeded_prefect_home
    from tests.test_prefect_server import clean_environment

    env = clean_environment(seeded_prefect_home(tmp_path / "home"))
    result = watched(
        "--log-level", "OFF", "--db-path", tmp_path / "p.db", "--output-dir", tmp_path / "o",
        "run-parallel", sample_file.parent, "--workers", "0", "--json", env=env,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["succeeded"] == 1
    spawned = result.events.index(("start", "subprocess.Popen"))
    assert ("import", "prefect") in result.events[spawned:]
    assert ("import", "prefect") not in result.events[:spawned]


def test_an_input_its_content_failed_is_not_run_again_until_it_changes(
    watched: WatchedRun, cli_runner: CliInvoke, tmp_path: Path, sample_file: Path
) -> None:
    """A folder that rarely changes, with one file its content fails (binary): run again,
    it costs a Prefect server and a cluster to fail the same file the same way. Skipped
    instead, and said so, while the file is unchanged; run again once it changes, and on
    request (requeue --failed)."""
    bad = sample_file.parent / "bad.bin"
    bad.write_bytes(b"x\x00y")
    first, again, base = _a_second_run(watched, cli_runner, tmp_path, sample_file.parent)
    assert (first.exit_code, json.loads(first.stdout)["failed"]) == (1, 1)

    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["total"], summary["skipped"], summary["failed"]) == (2, 2, 0)
    assert {s["input"]: s["reason"] for s in summary["skipped_inputs"]}[str(bad)] == (
        "rejected by its last run and unchanged since (requeue --failed or --force runs it "
        "again)"
    )
    assert_started_nothing(again)
    # The terminal's summary names it too.
    shown = cli_runner(*base[2:], "run-parallel", sample_file.parent, "--workers", "0")
    assert f"skipped {bad}: rejected by its last run" in shown.stdout

    assert cli_runner(*base, "requeue", "--failed").exit_code == 0
    requeued = cli_runner(*base, "run-parallel", sample_file.parent, "--workers", "0", "--json")
    assert (requeued.exit_code, json.loads(requeued.stdout)["failed"]) == (1, 1)

    bad.write_bytes(b"now it is text\n")
    changed = cli_runner(*base, "run-parallel", sample_file.parent, "--workers", "0", "--json")
    assert changed.exit_code == 0, changed.output
    assert json.loads(changed.stdout)["succeeded"] == 1


def test_an_input_rejected_for_a_line_too_long_runs_again_under_a_larger_limit(
    watched: WatchedRun, cli_runner: CliInvoke, tmp_path: Path, sample_file: Path
) -> None:
    """Its content failed only for being larger than --max-line-bytes: skipped (by
    run-parallel and enqueue) while the file and the limit are as they were, run again
    under a larger limit, since that one may take it."""
    long_line = sample_file.parent / "long.txt"
    long_line.write_text("short\n" + "x" * 2000 + "\n")
    small = ["--max-line-bytes", "1K"]
    base: list[str | Path] = ["--log-level", "OFF", "--db-path", tmp_path / "p.db",
                              "--output-dir", tmp_path / "o"]  # fmt: skip
    first = cli_runner(*base, *small, "run-parallel", sample_file.parent, "--workers", "0",
                       "--json")  # fmt: skip
    assert (first.exit_code, json.loads(first.stdout)["failed"]) == (1, 1)
    assert "line 2 is longer than 1 KiB (--max-line-bytes)" in first.stdout

    again = watched(*base, *small, "run-parallel", sample_file.parent, "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["skipped"], summary["failed"]) == (2, 0)
    assert_started_nothing(again)
    queued = cli_runner(*base, *small, "enqueue", sample_file.parent)
    assert queued.exit_code == 0, queued.output
    assert queued.stdout == "0 input(s) queued, 1 already there, 1 rejected before\n"
    assert queued.stderr == (
        f"skipped {long_line}: rejected by its last run and unchanged since (requeue --failed, "
        "--force or a --max-line-bytes above 1024 bytes queues it again)\n"
    )

    larger = ["--max-line-bytes", "4K"]
    queued = cli_runner(*base, *larger, "enqueue", long_line, "--json")
    assert (queued.exit_code, json.loads(queued.stdout)["queued"]) == (0, 1), queued.output
    drained = cli_runner(*base, *larger, "drain-db", "--workers", "0", "--json")
    assert drained.exit_code == 0, drained.output
    assert json.loads(drained.stdout)["succeeded"] == 1
    rows = query(tmp_path / "p.db", "SELECT status, outcome FROM pipeline_inputs"
                 " WHERE path = ?", (str(long_line),))  # fmt: skip
    assert [tuple(row) for row in rows] == [("done", "processed")]


def test_an_input_rejected_for_a_line_too_long_runs_again_in_a_run_with_a_larger_limit(
    cli_runner: CliInvoke, tmp_path: Path, sample_file: Path
) -> None:
    long_line = sample_file.parent / "long.txt"
    long_line.write_text("x" * 2000 + "\n")
    base: list[str | Path] = ["--log-level", "OFF", "--db-path", tmp_path / "p.db",
                              "--output-dir", tmp_path / "o"]  # fmt: skip
    run = [*base, "run-parallel", sample_file.parent, "--workers", "0", "--json"]
    first = cli_runner("--max-line-bytes", "1K", *run)
    assert (first.exit_code, json.loads(first.stdout)["failed"]) == (1, 1)
    larger = cli_runner("--max-line-bytes", "4K", *run)
    assert larger.exit_code == 0, larger.output
    assert (json.loads(larger.stdout)["succeeded"], json.loads(larger.stdout)["skipped"]) == (1, 1)


def test_drain_db_keeps_its_summary_when_the_queue_cannot_be_counted() -> None:
    """What waits in the queue is counted after the run, in the summary's own moment: a
    database that cannot serve then gives unknown counts and a warning, not a lost summary."""
    import logging

    from prefect_pipeline.cli import _left_in_queue, logger
    from prefect_pipeline.config import PipelineConfig
    from prefect_pipeline.pipeline.summary import RunSummary

    config = PipelineConfig(db_url="postgresql://nobody:secret@127.0.0.1:1/none", db_timeout=1)
    said: list[logging.LogRecord] = []
    heard = logging.Handler(logging.WARNING)
    heard.emit = said.append  # type: ignore[method-assign]
    # The project's loggers are the CLI's to set up (other tests ran it with --log-level
    # OFF, say): heard here, whatever they were left at.
    level, disabled = logger.level, logger.disabled
    logger.setLevel(logging.WARNING)
    logger.disabled = False
    logger.addHandler(heard)
    try:
        keys, lines = _left_in_queue(config, RunSummary())
    finally:
        logger.removeHandler(heard)
        logger.setLevel(level)
        logger.disabled = disabled

    assert (keys, lines) == ({"failed_waiting": None, "held_by_others": None}, [])
    assert [r.getMessage().split(":")[0] for r in said] == [
        "could not count the inputs left in the queue"
    ]
