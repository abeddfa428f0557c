"""Output files: their mode follows the umask, and the temporary file of a writer that died
(killed with a real signal, in a real process) is removed by the next run that writes into
its folder, while a live writer's is left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.jobs import JobA
from prefect_pipeline.jobs.output_file import (
    EMPTY_GRACE_SECONDS,
    atomic_output,
    forget_swept,
    is_temp_name,
    sweep,
    try_a_file_in,
    write_atomically,
)
from tests.conftest import files_under


@pytest.fixture(autouse=True)
def _fresh_sweeps() -> Iterator[None]:
    """Each test's folders are new, but a process sweeps a folder once: start clean."""
    forget_swept()
    yield
    forget_swept()


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process's umask after the test."""
    saved = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(saved)


def temp_files(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(name for name in os.listdir(folder) if is_temp_name(name))


# Mode ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.usefixtures("umask")
def test_output_json_gets_the_mode_a_normal_write_gets(
    config: PipelineConfig, sample_file: Path, mask: int, streamed: bool
) -> None:
    if streamed:
        config = config.model_copy(update={"stream_threshold": 0, "chunk_bytes": 4})
    os.umask(mask)
    reference = config.output_dir / "reference.txt"
    reference.parent.mkdir(parents=True)
    with open(reference, "w") as handle:  # what any program of this user would get
        handle.write("x")

    result = JobA(config).execute(sample_file)

    assert result.success, result.error
    assert result.output.text is None if streamed else result.output.text is not None
    mode = Path(result.output["output_path"]).stat().st_mode & 0o777
    assert mode == 0o666 & ~mask == reference.stat().st_mode & 0o777


# Dead writers' temporary files --------------------------------------------------------

# A writer that creates its temporary file next to TARGET, writes some bytes, says so on
# stdout, and waits to be killed.
_WRITER = """
import sys, time
from pathlib import Path
from prefect_pipeline.jobs.output_file import create_locked
handle, path = create_locked(Path(sys.argv[1]))
handle.write(b"x" * int(sys.argv[2]))
handle.flush()
print(path, flush=True)
time.sleep(120)
"""


def start_writer(target: Path, size: int = 1000) -> tuple[subprocess.Popen[str], Path]:
    """A real process holding a temporary file next to ``target``; returns it and the file."""
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target), str(size)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, signalled as a supervisor would
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line, "the writer did not start"
    return process, Path(line)


def kill(process: subprocess.Popen[str], signum: int = signal.SIGKILL) -> None:
    os.killpg(process.pid, signum)
    process.wait(timeout=30)


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(
    config: PipelineConfig, sample_file: Path
) -> None:
    folder = config.output_dir
    target = folder / "sample_processed.json"
    dead, dead_tmp = start_writer(folder / "big_processed.json")
    live, live_tmp = start_writer(folder / "other_processed.json")
    try:
        kill(dead)
        assert dead.returncode == -signal.SIGKILL
        assert sorted(temp_files(folder)) == sorted([dead_tmp.name, live_tmp.name])

        result = JobA(config).execute(sample_file)  # the next run writing into that folder

        assert result.success, result.error
        assert temp_files(folder) == [live_tmp.name]  # the live writer's is left alone
        assert target.exists()
    finally:
        kill(live)
    # Once its writer is gone, a sweep removes it too.
    assert sweep(folder) == [live_tmp]
    assert files_under(folder) == ["sample_processed.json"]


def test_an_empty_temporary_file_is_removed_only_when_old(tmp_path: Path) -> None:
    # An empty, unlocked file may be one a writer has created and not yet locked.
    dead, tmp = start_writer(tmp_path / "x_processed.json", size=0)
    kill(dead)

    assert sweep(tmp_path) == []
    assert sweep(tmp_path, now=time.time() + EMPTY_GRACE_SECONDS + 1) == [tmp]
    assert os.listdir(tmp_path) == []


def test_only_the_pipelines_temporary_files_are_touched(tmp_path: Path) -> None:
    names = [
        ".notes.tmp",  # someone else's
        "a_processed.json.abcdefgh.tmp",  # not hidden: not ours
        ".a.json.abcdefgh.tmp",  # the shape of mkstemp, but not a name the pipeline used
        ".a.txt.pipeline-0123456789",  # no .tmp
        ".a.txt.pipeline-xyz.tmp",  # not a name the pipeline makes
        "b_processed.json",
    ]
    for name in names:
        (tmp_path / name).write_text("data")
    ours = [".a_processed.json.pipeline-0123456789.tmp", ".a_processed.json.k3j_8x0q.tmp"]
    for name in ours:
        (tmp_path / name).write_text("left by a dead writer")

    removed = sweep(tmp_path)

    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(os.listdir(tmp_path)) == sorted(names)


def test_a_failed_write_leaves_neither_file_nor_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("previous")

    with pytest.raises(RuntimeError), atomic_output(target) as handle:
        handle.write(b"half")
        raise RuntimeError("disk full")

    assert target.read_text() == "previous"
    assert os.listdir(tmp_path) == ["out.json"]


def _write_with_atomic_output(target: Path, data: bytes) -> None:
    with atomic_output(target) as handle:
        handle.write(data)


@pytest.mark.parametrize(
    "write", [write_atomically, _write_with_atomic_output], ids=["bytes", "file-object"]
)
def test_both_writers_replace_the_target_whole_or_leave_it(
    tmp_path: Path, write: Callable[[Path, bytes], None]
) -> None:
    """The one way both write: the target is replaced whole, and a rename that fails (here
    onto a folder that is not empty) leaves the target as it was and no temporary file."""
    target = tmp_path / "out.json"
    target.write_text("previous")
    write(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert os.listdir(tmp_path) == ["out.json"]

    taken = tmp_path / "taken.json"
    (taken / "inside").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        write(taken, b"lost")
    assert sorted(os.listdir(tmp_path)) == ["out.json", "taken.json"]
    assert os.listdir(taken) == ["inside"]


def test_a_file_in_the_making_is_locked_against_sweeps(tmp_path: Path) -> None:
    """A sweep by another writer (here, one in this process after forgetting it swept)
    leaves the temporary file of a writer still at work alone."""
    with atomic_output(tmp_path / "out.json") as handle:
        handle.write(b"data")
        handle.flush()
        assert len(temp_files(tmp_path)) == 1
        forget_swept()
        assert sweep(tmp_path) == []
    assert os.listdir(tmp_path) == ["out.json"]
    assert (tmp_path / "out.json").read_bytes() == b"data"


def test_trying_a_file_in_a_folder_leaves_nothing_there(tmp_path: Path) -> None:
    (tmp_path / "kept.txt").write_text("kept\n")
    try_a_file_in(tmp_path)
    assert os.listdir(tmp_path) == ["kept.txt"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc (Linux only)")
@pytest.mark.parametrize("folder", ["/proc", "/proc/self"])
def test_trying_a_file_in_a_folder_that_takes_none_raises_what_a_writer_meets(
    folder: str,
) -> None:
    """Whatever ``os.access`` tells root of these (yes, of /proc), no file can be made."""
    with pytest.raises(FileNotFoundError):
        try_a_file_in(Path(folder))


def test_a_folder_removed_after_its_first_write_is_made_again(tmp_path: Path) -> None:
    """A process makes (and sweeps) a folder at its first write there, not at every write:
    one removed in between is made again, not taken for a failure of the next file."""
    folder = tmp_path / "out" / "nested"
    with atomic_output(folder / "first.json") as handle:
        handle.write(b"1")
    for path in sorted(tmp_path.joinpath("out").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    tmp_path.joinpath("out").rmdir()

    with atomic_output(folder / "second.json") as handle:
        handle.write(b"2")

    assert (folder / "second.json").read_bytes() == b"2"
    assert os.listdir(folder) == ["second.json"]


def test_a_folder_job_a_cannot_write_in_fails_its_input_in_one_line(
    config: PipelineConfig, sample_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An error of the system's (here a path under a file; a folder not writable, a full
    disk) is one line naming the path, and logs no traceback at the default level: the
    run's line about the failed input says it all. (A folder that exists and takes no
    file, named instead of the temporary file: ``test_unreadable.py``.)"""
    (tmp_path / "afile").write_text("a regular file\n")
    out = tmp_path / "afile" / "out"
    config = config.model_copy(update={"output_dir": out})

    with caplog.at_level("INFO"):
        result = JobA(config).execute(sample_file)

    assert not result.success
    assert result.error == f"{sample_file}: not a directory: {out}"
    assert [r for r in caplog.records if r.levelno >= 30] == []
    assert "NotADirectoryError" in (result.traceback or "")  # kept for --log-level DEBUG


# Job A killed or interrupted while streaming a large input ---------------------------------

# Job A on a large input, one byte at a time so that it is still writing when signalled.
_JOB_A = """
import signal, sys
from pathlib import Path
from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.jobs import JobA
config = PipelineConfig(output_dir=sys.argv[2], db_path=sys.argv[3], log_level="OFF",
                        stream_threshold=0, chunk_bytes=1)
def stop(signum, frame):  # as the CLI does: SIGTERM takes Ctrl-C's way out
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, stop)
# A background job of a non-interactive shell starts with SIGINT ignored, and Python then
# leaves it ignored: Ctrl-C's way out must not depend on how the suite was started.
signal.signal(signal.SIGINT, signal.default_int_handler)
JobA(config).execute(sys.argv[1])
"""


def start_job_a(config: PipelineConfig, path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _JOB_A, str(path), str(config.output_dir), str(config.db_path)],
        start_new_session=True,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_temp_file(folder: Path, process: subprocess.Popen[str]) -> None:
    """Until ``folder`` holds a temporary file with data in it (job A's scratch file), or
    fail if the process ends first."""
    deadline = time.monotonic() + 60
    while not any(_size(folder / name) for name in temp_files(folder)):
        assert process.poll() is None, "job A ended before it was signalled"
        assert time.monotonic() < deadline, "job A never started writing"
        time.sleep(0.02)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # renamed or removed meanwhile
        return 0


@pytest.fixture
def large_input(tmp_path: Path) -> Path:
    path = tmp_path / "inputs" / "large.txt"
    path.parent.mkdir()
    path.write_bytes(b"a line of a large input\n" * 40_000)  # ~1 MB: seconds at 1 byte a read
    return path


@pytest.mark.slow
def test_job_a_killed_mid_stream_leaves_debris_the_next_run_removes(
    config: PipelineConfig, large_input: Path
) -> None:
    process = start_job_a(config, large_input)
    wait_for_temp_file(config.output_dir, process)

    kill(process)

    assert len(temp_files(config.output_dir)) == 1  # SIGKILL: nothing could clean up
    assert not (config.output_dir / "large_processed.json").exists()
    result = JobA(config.model_copy(update={"stream_threshold": 0})).execute(large_input)
    assert result.success, result.error
    assert files_under(config.output_dir) == ["large_processed.json"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_job_a_interrupted_mid_stream_leaves_nothing(
    config: PipelineConfig, large_input: Path, signum: int
) -> None:
    process = start_job_a(config, large_input)
    wait_for_temp_file(config.output_dir, process)

    os.killpg(process.pid, signum)
    process.wait(timeout=30)

    assert process.returncode != 0
    assert process.stderr is not None and "KeyboardInterrupt" in process.stderr.read()
    assert files_under(config.output_dir) == []
