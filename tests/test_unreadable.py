"""An unreadable input, for real: a chmod 000 file read by a process that file permissions
apply to. Root ignores them, so as root the command runs without the capabilities that let
it (``setpriv`` drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prefect_pipeline.database.sqlite import ReadOnlyOpening, unchanged_while
from tests.conftest import api_env, db_counts, files_under, queued_output_refused

pytestmark = pytest.mark.slow


def _command(*args: str | os.PathLike[str]) -> list[str]:
    pipeline = [str(Path(sys.executable).parent / "pipeline"), *map(str, args)]
    if os.geteuid() != 0:
        return pipeline
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    drop = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}", "--", *pipeline]


def test_unreadable_file_is_one_line_error_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("you cannot read me\n")
    path.chmod(0)
    db, out = tmp_path / "p.db", tmp_path / "out"
    result = subprocess.run(
        _command("--log-level", "OFF", "--db-path", db, "--output-dir", out, "run-all", path),
        env=api_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"Error: job A: {path}: permission denied (not readable)\n"
    assert result.stdout == ""
    assert db_counts(db)["processing_batches"] == 0
    assert files_under(out) == []


def test_unreadable_file_fails_alone_in_a_parallel_run(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.txt").write_text("one\ntwo\n")
    (root / "b.txt").write_text("three\n")
    secret = root / "secret.txt"
    secret.write_text("hidden\n")
    secret.chmod(0)
    db, out = tmp_path / "p.db", tmp_path / "out"
    args = ["--log-level", "OFF", "--db-path", db, "--output-dir", out, "run-parallel", root,
            "--workers", "0", "--json"]  # fmt: skip
    result = subprocess.run(
        _command(*args), env=api_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["succeeded"], summary["failed"], summary["records"]) == (2, 1, 3)
    assert summary["failures"] == [
        {"input": str(secret), "job": "A", "error": f"{secret}: permission denied (not readable)"}
    ]
    assert db_counts(db)["processed_records"] == 3
    assert files_under(out) == ["a_processed.json", "b_processed.json"]

    # Made readable (its size and time unchanged): not its content's failure, so the next
    # run reads it, where a rejected content would be skipped.
    secret.chmod(0o644)
    again = subprocess.run(
        _command(*args), env=api_env(), capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["succeeded"] == 1


def test_a_folder_that_cannot_be_listed_is_reported_and_the_run_exits_1(tmp_path: Path) -> None:
    """Its inputs were not found, so the run did not do all it was asked: exit 1 with one
    line naming the folder, by run-parallel (a run with work and one without) and enqueue;
    the rest runs. Listed again later, its inputs run."""
    root = tmp_path / "in"
    locked = root / "locked"
    locked.mkdir(parents=True)
    (root / "a.txt").write_text("one\ntwo\n")
    (locked / "b.txt").write_text("three\n")
    (root / "dangling.txt").symlink_to(root / "gone.txt")  # ignored: it hides no input
    db, out = tmp_path / "p.db", tmp_path / "out"
    base = ["--log-level", "OFF", "--db-path", db, "--output-dir", out]
    parallel = [*base, "run-parallel", root, "--workers", "0"]
    reason = "cannot list folder (Permission denied)"
    locked.chmod(0)
    try:
        first = subprocess.run(
            _command(*parallel, "--json"), env=api_env(), capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        again = subprocess.run(
            _command(*parallel), env=api_env(), capture_output=True, text=True, timeout=120
        )
        queued = subprocess.run(
            _command(*base, "enqueue", root), env=api_env(), capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
    finally:
        locked.chmod(0o755)
    assert first.returncode == 1, first.stderr
    summary = json.loads(first.stdout)
    assert (summary["succeeded"], summary["failed"], summary["unreadable"]) == (1, 0, 1)
    assert summary["unreadable_paths"] == [{"path": str(locked), "reason": reason}]
    assert summary["ignored_paths"] == [
        {"path": str(root / "dangling.txt"), "reason": "cannot stat (No such file or directory)"}
    ]
    # It had work (a.txt): its flow run is Failed, as for a failed input.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(summary["flow_run_id"]).state
    assert (state.type.value, state.message) == ("FAILED", "1 path(s) could not be read")
    assert again.returncode == 1, again.stderr
    assert "0 succeeded, 0 failed, 1 skipped" in again.stdout  # nothing to do, and said so
    assert f"cannot read {locked}: {reason}\n" in again.stdout
    assert "Prefect flow run" not in again.stdout
    assert queued.returncode == 1, queued.stderr
    assert queued.stdout == "0 input(s) queued, 1 already there, 1 ignored, 1 could not be read\n"
    assert queued.stderr.endswith(f"cannot read {locked}: {reason}\n")
    assert files_under(out) == ["a_processed.json"]

    listed = subprocess.run(
        _command(*parallel, "--json"), env=api_env(), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["succeeded"] == 1
    assert files_under(out) == ["a_processed.json", "locked/b_processed.json"]


def test_an_output_folder_that_is_not_writable_is_one_line_before_anything_starts(
    tmp_path: Path,
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.txt").write_text("one\n")
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    db = tmp_path / "p.db"
    try:
        result = subprocess.run(
            _command("--db-path", db, "--output-dir", out, "run-parallel", root),
            env=api_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        out.chmod(0o755)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"Error: {out}: not writable (permission denied) (check --output-dir)\n"
    assert result.stdout == ""
    assert not db.exists()
    assert files_under(out) == []


def _in_a_read_only_mount(folder: Path, *args: str | os.PathLike[str]) -> list[str]:
    """``pipeline ARGS`` in a mount namespace of its own where ``folder`` is an empty,
    read-only file system (a tmpfs): the host's mounts are not touched."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare: cannot mount a read-only file system")
    namespace = [unshare, "--mount"] if os.geteuid() == 0 else [
        unshare, "--user", "--map-root-user", "--mount"]  # fmt: skip
    mount = 'mount -t tmpfs -o ro pipeline-test "$0" && exec "$@"'
    tried = subprocess.run([*namespace, "sh", "-c", mount, folder, "true"], capture_output=True)
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a read-only file system here: {tried.stderr!r}")
    pipeline = Path(sys.executable).parent / "pipeline"
    return [*namespace, "sh", "-c", mount, str(folder), str(pipeline), *map(str, args)]


@pytest.mark.parametrize(
    ("under", "problem"),
    [("", "not writable"), ("new", "cannot be created in {ro}")],
    ids=["the-folder", "a-folder-to-make"],
)
@pytest.mark.parametrize("command", ["run-all", "run-parallel"])
def test_an_output_folder_on_a_read_only_file_system_is_one_line_before_anything_starts(
    tmp_path: Path, sample_file: Path, command: str, under: str, problem: str
) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    out = ro / under if under else ro
    given = sample_file.parent if command == "run-parallel" else sample_file
    db = tmp_path / "p.db"
    result = subprocess.run(
        _in_a_read_only_mount(ro, "--db-path", db, "--output-dir", out, command, given),
        env=api_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"Error: {out}: {problem.format(ro=ro)} (read-only file system) (check --output-dir)\n"
    )
    assert result.stdout == ""
    assert not db.exists()


def _one_finalized_batch(db: Path, tmp_path: Path) -> None:
    """What ``run-all`` of a 2-line file leaves in ``db``, made by the jobs in this process
    (no Prefect start-up), the database closed as a command leaves it."""
    from prefect_pipeline.config import PipelineConfig
    from prefect_pipeline.database import close_all
    from prefect_pipeline.jobs import JobA, JobB, JobC

    first = tmp_path / "first.txt"
    first.write_text("one\ntwo\n")
    config = PipelineConfig(db_path=db, output_dir=tmp_path / "out")
    data: object = str(first)
    for job in (JobA, JobB, JobC):
        result = job(config).execute(data)
        assert result.success, result.error
        data = result.output
    close_all()
    assert sorted(p.name for p in db.parent.iterdir()) == [db.name]


def _run_with_mode(
    target: Path, mode: int, *commands: list[str | Path]
) -> list[subprocess.CompletedProcess[str]]:
    """The pipeline ``commands``, one after the other, while ``target`` has ``mode``."""
    target.chmod(mode)
    try:
        return [
            subprocess.run(
                _command(*args), env=api_env(), capture_output=True, text=True, timeout=120
            )
            for args in commands
        ]
    finally:
        target.chmod(0o755)


# A writer that died (or was killed) leaves its last transactions in the -wal file, which
# a read must not miss: here, two more records, committed and never checkpointed.
_DIE_WITH_TWO_RECORDS_IN_THE_WAL = """
import os, sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("PRAGMA wal_autocheckpoint = 0")
connection.execute(
    "INSERT INTO processed_records (batch_id, record_index, line_number, content, status)"
    " SELECT batch_id, record_index + 2, line_number + 2, content, status"
    " FROM processed_records"
)
os._exit(0)
"""


@pytest.mark.parametrize(
    "locked", ["file", "file, -wal file left", "folder", "folder, -wal file left"]
)
def test_a_database_that_is_not_writable_is_one_line_before_anything_starts(
    tmp_path: Path, locked: str
) -> None:
    """Found by the first write, it would cost a Prefect server's start-up and end the run
    (exit 3). A command that only reads it (status) still works, and changes nothing: it
    may not remove the -wal and -shm files SQLite would make for a read (a file it may not
    write), or SQLite could not make them (a folder it may not write), so without a -wal
    file it reads the database file alone."""
    folder = tmp_path / "db"
    folder.mkdir()
    db, out = folder / "p.db", tmp_path / "out"
    first, sample = tmp_path / "first.txt", tmp_path / "a.txt"
    first.write_text("one\ntwo\n")
    sample.write_text("one\n")
    done = subprocess.run(
        _command("--log-level", "OFF", "--db-path", db, "--output-dir", out, "run-all", first),
        env=api_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["p.db"]  # as a command leaves it
    records = 2
    if locked.endswith("-wal file left"):
        subprocess.run([sys.executable, "-c", _DIE_WITH_TWO_RECORDS_IN_THE_WAL, db], check=True)
        records = 4
    left = sorted(p.name for p in folder.iterdir())
    before = db.read_bytes()
    on_file = locked.startswith("file")
    target = db if on_file else folder
    problem = "not writable" if on_file else f"its folder {folder} is not writable"
    written, read = _run_with_mode(
        target, 0o444 if on_file else 0o555,
        ["--db-path", db, "--output-dir", out, "run-all", sample],
        ["--db-path", db, "status", "--json"],
    )  # fmt: skip
    assert written.returncode == 2, written.stderr
    assert written.stderr == f"Error: {db}: {problem} (permission denied) (check --db-path)\n"
    assert sorted(p.name for p in out.iterdir()) == ["first_processed.json"]
    assert read.returncode == 0, read.stderr
    report = json.loads(read.stdout)
    assert (report["batches"]["finalized"], report["records"]) == (1, records)
    assert db.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == left


def _commit_one_record_and_close(db: Path) -> None:
    """Another command's writer (a process of its own: POSIX locks do not keep a process
    from itself): opens ``db``, commits a record (to its -wal file) and closes, as the last
    connection, which checkpoints and removes its -wal file if no other connection holds
    the database."""
    code = (
        "import sqlite3, sys\n"
        "connection = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "connection.execute('INSERT INTO processed_records (batch_id, record_index,"
        " line_number, content, status) SELECT batch_id, 99, 99, \"late\", status"
        " FROM processed_records LIMIT 1')\n"
        "connection.close()\n"
    )
    subprocess.run([sys.executable, "-c", code, db], check=True, timeout=60)


#: A connection that has made its -wal file (its first read does), open until its standard
#: input closes.
_CONNECT_AND_WAIT = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1])
connection.execute("SELECT count(*) FROM processed_records").fetchone()
print("open", flush=True)
sys.stdin.read()
connection.close()
"""


def _read_alone(db: Path) -> ReadOnlyOpening:
    """How a process that may not write ``db`` opens it while it has no -wal file."""
    return ReadOnlyOpening(db, f"file:{db}?mode=ro&immutable=1", alone=True, wal=None)


def test_a_read_of_the_database_file_alone_is_vouched_for_only_if_no_writer_came(
    tmp_path: Path,
) -> None:
    """Read alone (no -wal file, so no writer at work), the file is held under SQLite's
    SHARED lock: a writer that comes and goes meanwhile cannot remove the -wal file it made,
    which tells the read it may have missed a transaction (and it did)."""
    folder = tmp_path / "db"
    db = folder / "p.db"
    _one_finalized_batch(db, tmp_path)
    opening = _read_alone(db)
    with unchanged_while(opening, timeout=5) as saw_it_as_it_is:
        assert saw_it_as_it_is()
        _commit_one_record_and_close(db)
        assert (folder / "p.db-wal").exists()  # kept for the read's sake
        assert not saw_it_as_it_is()
    _commit_one_record_and_close(db)  # no reader now: the last close removes it
    assert sorted(p.name for p in folder.iterdir()) == ["p.db"]
    with unchanged_while(_read_alone(db), timeout=5) as saw_it_as_it_is:
        assert saw_it_as_it_is()  # no writer came
    # A writer that came between the choice and the read's start is seen too.
    _commit_one_record_and_close(db)
    late = _read_alone(db)
    # In a process of its own: the read's close of its file would end this process's locks
    # on it, a connection's of this process included.
    writer = subprocess.Popen(
        [sys.executable, "-c", _CONNECT_AND_WAIT, db],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "open\n"
        with unchanged_while(late, timeout=5) as saw_it_as_it_is:
            assert not saw_it_as_it_is()
    finally:
        writer.communicate(timeout=60)  # EOF on its stdin: it closes
    assert sorted(p.name for p in folder.iterdir()) == ["p.db"]
    assert db_counts(db)["processed_records"] == 5


@pytest.mark.parametrize("case", ["-wal file without -shm", "link into it", "link from it"])
def test_status_on_a_database_in_a_read_only_folder_reads_all_it_holds_or_says_why_not(
    tmp_path: Path, case: str
) -> None:
    """A dead writer's transactions in a -wal file whose -shm file is gone (copied without
    it) cannot be read without making one: one line, exit 2, not a count without them. A
    --db-path that is a symlink is judged where its database lives: a link into a
    read-only folder is read there; a link from one, to a database whose writer left its
    -wal file, reads that file too."""
    store_folder, link_folder = tmp_path / "db", tmp_path / "links"
    store_folder.mkdir()
    link_folder.mkdir()
    db = store_folder / "p.db"
    _one_finalized_batch(db, tmp_path)
    subprocess.run([sys.executable, "-c", _DIE_WITH_TWO_RECORDS_IN_THE_WAL, db], check=True)
    assert sorted(p.name for p in store_folder.iterdir()) == ["p.db", "p.db-shm", "p.db-wal"]
    shown, locked = db, store_folder
    if case == "-wal file without -shm":
        (store_folder / "p.db-shm").unlink()
    elif case == "link into it":
        shown = link_folder / "p.db"
        shown.symlink_to(db)
    else:
        shown, locked = link_folder / "p.db", link_folder
        shown.symlink_to(db)
    [read] = _run_with_mode(locked, 0o555, ["--db-path", shown, "status", "--json"])
    if case == "-wal file without -shm":
        assert read.returncode == 2
        assert read.stderr == (
            f"Error: {shown}: cannot be used: its -wal file holds transactions and its -shm "
            f"file is missing, which a reader cannot make in {store_folder} (not writable): "
            "copy both files, or read it where the folder is writable (check --db-path)\n"
        )
    else:
        assert read.returncode == 0, read.stderr
        assert json.loads(read.stdout)["records"] == 4  # the -wal file's two included


def test_a_sub_folder_of_the_output_that_is_not_writable_fails_its_inputs_in_one_line(
    tmp_path: Path,
) -> None:
    """The output folder passes the check before the start, one of its sub-folders does
    not take files: the inputs whose JSON goes there fail, each in one line naming that
    folder (not the temporary file it was about to make), without a traceback; the others
    are done."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("one\n")
    (root / "sub" / "b.txt").write_text("two\n")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub").chmod(0o555)
    db = tmp_path / "p.db"
    try:
        result = subprocess.run(
            _command("--db-path", db, "--output-dir", out, "run-parallel", root, "--workers",
                     "0", "--json"),
            env=api_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        (out / "sub").chmod(0o755)
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["succeeded"], summary["failed"]) == (1, 1)
    failing = root / "sub" / "b.txt"
    assert summary["failures"] == [
        {"input": str(failing), "job": "A", "error": f"{failing}: permission denied: {out / 'sub'}"}
    ]
    assert "Traceback" not in result.stderr
    assert files_under(out) == ["a_processed.json"]


def test_a_run_whose_input_fails_leaves_the_database_file_alone(tmp_path: Path) -> None:
    """Its only connections read (the schema, read-only, which may not remove the -wal and
    -shm files it makes); the store's own, closed last at the exit, removes them."""
    folder = tmp_path / "db"
    db, good, long_line = folder / "p.db", tmp_path / "good.txt", tmp_path / "long.txt"
    good.write_text("one\n")
    long_line.write_text("x" * 2000 + "\n")
    base = ["--log-level", "OFF", "--db-path", db, "--output-dir", tmp_path / "out"]
    for path, code in ((good, 0), (long_line, 1)):
        result = subprocess.run(
            _command(*base, "--max-line-bytes", "1K", "run-all", path),
            env=api_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == code, result.stderr
        assert sorted(p.name for p in folder.iterdir()) == ["p.db"]


def test_status_on_a_read_only_file_whose_wal_has_no_shm_is_one_line_and_makes_none(
    tmp_path: Path,
) -> None:
    """Its folder is writable, so SQLite would make the -shm file the -wal file needs, and
    leave it, with the file's mode, for the next writer to trip on: refused instead."""
    folder = tmp_path / "db"
    db = folder / "p.db"
    _one_finalized_batch(db, tmp_path)
    subprocess.run([sys.executable, "-c", _DIE_WITH_TWO_RECORDS_IN_THE_WAL, db], check=True)
    (folder / "p.db-shm").unlink()

    [read] = _run_with_mode(db, 0o444, ["--db-path", db, "status", "--json"])

    assert read.returncode == 2
    assert read.stderr == (
        f"Error: {db}: cannot be used: its -wal file holds transactions and its -shm file is "
        "missing, which a reader that may not write the database would make and leave "
        "behind: read it as a user who may write it, or copy both files (check --db-path)\n"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["p.db", "p.db-wal"]


# Run by a process that may not write the database file: a status read of it, alone, during
# which a writer (another process, run by the test once told) commits a record and closes.
_READ_WHILE_A_WRITER_COMES = """
import json, sys
from prefect_pipeline.database.backends import open_store

store = open_store(sys.argv[1], timeout=5, create=False, read_only=True)
reads = []

def look():
    reads.append(store.status("9999-01-01T00:00:00+00:00", errors=0)["records"])
    if len(reads) == 1:
        print("read once", flush=True)
        sys.stdin.readline()  # the writer came and went
    return reads[-1]

print(json.dumps({"records": store.read(look), "reads": reads, "alone": store._opening.alone}))
"""


def test_a_read_of_the_file_alone_that_a_writer_overtook_is_read_again_through_its_wal(
    tmp_path: Path,
) -> None:
    """The first read saw the file alone, then a writer came and committed: the writer may
    not remove its -wal file while the read holds SHARED, so the read is done again, on a
    new connection, through that -wal file, and counts the writer's record."""
    folder = tmp_path / "db"
    db = folder / "p.db"
    _one_finalized_batch(db, tmp_path)
    reader = [sys.executable, "-c", _READ_WHILE_A_WRITER_COMES, str(db)]
    if os.geteuid() == 0:  # the capabilities dropped, as for a pipeline command
        reader = [*_command()[:-1], *reader]
    db.chmod(0o444)
    try:
        read = subprocess.Popen(reader, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert read.stdout is not None and read.stdout.readline() == "read once\n"
        _commit_one_record_and_close(db)
        out, _ = read.communicate("go on\n", timeout=120)
    finally:
        db.chmod(0o644)
    assert read.returncode == 0
    assert json.loads(out) == {"records": 3, "reads": [2, 3], "alone": False}
    # The writer could not remove its -wal file while the read held SHARED, nor can the
    # reader, which may not write: left for the next writer's close.
    assert sorted(p.name for p in folder.iterdir()) == ["p.db", "p.db-shm", "p.db-wal"]


def test_a_queue_whose_output_folder_cannot_be_searched_is_one_line(tmp_path: Path) -> None:
    """The queued inputs' JSON folders lie under one this process may not search: the
    drain's check walks up to it (a path it cannot look into is not there to it) and says
    it cannot make files in it, in one line, exit 2, the inputs pending (``Path.exists``
    would have raised, ending in a traceback)."""
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    (root / "a.txt").write_text("one\n")
    db = tmp_path / "p.db"
    base = ["--log-level", "OFF", "--db-path", db]
    queued = subprocess.run(
        _command(*base, "--output-dir", out, "enqueue", root),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert queued.returncode == 0, queued.stderr
    (out / "made-by-another").mkdir(parents=True)
    out.chmod(0o600)  # not searchable: what is in it is hidden, and nothing can be made
    try:
        result = subprocess.run(
            _command(*base, "drain-db", "--workers", "0"),
            env=api_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        out.chmod(0o755)
    assert result.returncode == 2, result.stderr
    problem = f"cannot be created in {out} (permission denied)"
    refused = queued_output_refused(out / root.relative_to(root.anchor), problem, 1)
    assert result.stderr == f"Error: {refused}\n"
    assert result.stdout == ""
    assert sorted(os.listdir(out)) == ["made-by-another"]
