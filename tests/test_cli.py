"""The ``pipeline`` command, run in this process with click's ``CliRunner``.

Flows report to the session's Prefect server (the CLI sees its URL through Prefect's
settings context, so it starts no server of its own). Bad input must give the exit code
and one ``Error: ...`` line on stderr, no traceback, and leave the database and the output
directory exactly as they were.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from prefect_pipeline import __version__
from prefect_pipeline.cli import cli
from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.jobs import JobA, JobB, JobC
from tests.conftest import CliInvoke, db_counts, files_under, query

Invoke = Callable[..., Result]

BOM = b"\xef\xbb\xbf"


@pytest.fixture
def pipeline(cli_runner: CliInvoke, config: PipelineConfig) -> Invoke:
    """``pipeline(*args)``: the command with the test's database and output directory."""

    def invoke(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> Result:
        return cli_runner(
            "--log-level", "OFF",
            "--db-path", config.db_path,
            "--output-dir", config.output_dir,
            *args,
            env=env,
        )

    return invoke


@pytest.fixture
def existing(config: PipelineConfig, tmp_path: Path) -> int:
    """A database and output directory that already hold one finalized batch (stored
    directly with the jobs), so that "nothing new was written" means something."""
    path = tmp_path / "inputs" / "existing.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_text("old one\nold two\n")
    doc = JobA(config).execute(path).output
    batch_id = JobB(config).execute(doc).output
    assert JobC(config).execute(batch_id).success
    return batch_id


def snapshot(config: PipelineConfig) -> tuple[dict[str, int], list[str], list[tuple[object, ...]]]:
    batches = query(config.db_path, "SELECT * FROM processing_batches ORDER BY id")
    return db_counts(config.db_path), files_under(config.output_dir), [tuple(b) for b in batches]


def assert_one_line_error(result: Result, exit_code: int, message: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert result.stderr == f"Error: {message}\n"
    assert result.stdout == ""
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def make(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# Bad input: exit 1, one line, nothing written ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "problem"),
    [
        ("missing.txt", None, "no such file"),
        ("a-directory", "dir", "is a directory, expected a file"),
        ("nul.txt", b"abc\ndef\x00ghi", "binary file (NUL byte at offset 7)"),
        ("latin1.txt", b"ok\n\xe9t\xe9\n", "invalid UTF-8 at byte offset 3"),
        ("bom-latin1.txt", BOM + b"ok\n\xe9t\xe9\n", "invalid UTF-8 at byte offset 6"),
    ],
)
def test_bad_text_input(
    pipeline: Invoke,
    config: PipelineConfig,
    existing: int,
    tmp_path: Path,
    name: str,
    data: bytes | str | None,
    problem: str,
) -> None:
    path = tmp_path / "bad" / name
    if data == "dir":
        path.mkdir(parents=True)
    elif isinstance(data, bytes):
        make(path, data)
    before = snapshot(config)

    result = pipeline("run-all", path)

    assert_one_line_error(result, 1, f"job A: {path}: {problem}")
    assert snapshot(config) == before


@pytest.mark.parametrize(
    ("limit", "env"), [("32", None), (None, {"PIPELINE_MAX_LINE_BYTES": "32b"})]
)
def test_a_line_over_the_limit(
    pipeline: Invoke,
    config: PipelineConfig,
    existing: int,
    tmp_path: Path,
    limit: str | None,
    env: dict[str, str] | None,
) -> None:
    path = make(tmp_path / "bad" / "export.jsonl", b'{"a": 1}\n' * 3 + b"x" * 33 + b"\n")
    before = snapshot(config)

    result = pipeline(*(["--max-line-bytes", limit] if limit else []), "run-all", path, env=env)

    assert_one_line_error(
        result, 1, f"job A: {path}: line 4 is longer than 32 bytes (--max-line-bytes)"
    )
    assert snapshot(config) == before


def test_the_line_limit_can_be_raised(
    pipeline: Invoke, config: PipelineConfig, tmp_path: Path
) -> None:
    path = make(tmp_path / "long.txt", b"x" * 2048 + b"\n")

    refused = pipeline("--max-line-bytes", "1KiB", "run-all", path)
    raised = pipeline("--max-line-bytes", "2K", "run-all", path)

    assert_one_line_error(
        refused, 1, f"job A: {path}: line 1 is longer than 1 KiB (--max-line-bytes)"
    )
    assert raised.exit_code == 0, raised.output
    assert db_counts(config.db_path)["processed_records"] == 1


@pytest.mark.parametrize("value", ["0", "-1", "64 parsecs", ""])
def test_a_bad_line_limit_is_a_usage_error(cli_runner: CliInvoke, value: str) -> None:
    result = cli_runner("--max-line-bytes", value, "list-jobs")

    assert result.exit_code == 2
    assert "Invalid value for '--max-line-bytes'" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("locked", "problem"),
    [("file", "permission denied (not readable)"), ("parent", "permission denied")],
)
def test_unreadable_file(
    pipeline: Invoke,
    config: PipelineConfig,
    existing: int,
    tmp_path: Path,
    locked: str,
    problem: str,
) -> None:
    if os.geteuid() == 0:
        pytest.skip(
            "running as root: neither a chmod 000 file nor a chmod 000 parent directory "
            "stops root from reading"
        )
    path = make(tmp_path / "locked" / "secret.txt", b"secret\n")
    target = path if locked == "file" else path.parent
    target.chmod(0)
    before = snapshot(config)
    try:
        result = pipeline("run-all", path)
    finally:
        target.chmod(0o755)

    assert_one_line_error(result, 1, f"job A: {path}: {problem}")
    assert snapshot(config) == before


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{oops}", "malformed JSON at line 1 column 2: "
                    "Expecting property name enclosed in double quotes"),
        (b'{"records": []}', "missing key(s): source_path, sha256, record_count"),
        (b'["a", "b"]', "expected a JSON object, got list"),
        (
            json.dumps({"source_path": "/x", "sha256": "a" * 64, "record_count": 1,
                        "records": []}).encode(),
            "record_count is 1 but records has 0 item(s)",
        ),
    ],
)
def test_bad_json_input(
    pipeline: Invoke,
    config: PipelineConfig,
    existing: int,
    tmp_path: Path,
    data: bytes,
    problem: str,
) -> None:
    path = make(tmp_path / "bad.json", data)
    before = snapshot(config)

    result = pipeline("run", path, "--start-from", "B")

    assert_one_line_error(result, 1, f"job B: {path}: {problem}")
    assert snapshot(config) == before


@pytest.mark.parametrize(
    ("batch_id", "problem"),
    [
        ("abc", "abc: batch id must be a positive integer"),
        ("0", "0: batch id must be a positive integer"),
        ("-3", "-3: batch id must be a positive integer"),
        ("99", "batch 99: no such batch"),
    ],
)
def test_bad_batch_id(
    pipeline: Invoke, config: PipelineConfig, existing: int, batch_id: str, problem: str
) -> None:
    before = snapshot(config)

    # "--" so that "-3" is the argument, not an option.
    result = pipeline("run", "--start-from", "C", "--stop-after", "C", "--", batch_id)

    assert_one_line_error(result, 1, f"job C: {problem}")
    assert snapshot(config) == before


def test_bad_input_with_json_output(
    pipeline: Invoke, config: PipelineConfig, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.txt"

    result = pipeline("run-all", missing, "--json")

    assert result.exit_code == 1
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert report["success"] is False
    assert report["output"] is None
    assert report["error"] == f"{missing}: no such file"
    assert [(j["job"], j["success"]) for j in report["jobs"]] == [("A", False)]
    assert db_counts(config.db_path)["processing_batches"] == 0


# Usage errors: exit 2 with the usage message ----------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--start-from", "Z"], "unknown job 'Z'; available jobs: A, B, C"),
        (["--stop-after", "D"], "unknown job 'D'; available jobs: A, B, C"),
        (
            ["--start-from", "C", "--stop-after", "A"],
            "--start-from C comes after --stop-after A; jobs run in the order A -> B -> C",
        ),
    ],
)
def test_usage_errors(
    pipeline: Invoke, config: PipelineConfig, sample_file: Path, options: list[str], message: str
) -> None:
    result = pipeline("run", sample_file, *options)

    assert result.exit_code == 2
    assert result.stderr == (
        "Usage: pipeline run [OPTIONS] INPUT_DATA\n"
        "Try 'pipeline run --help' for help.\n"
        "\n"
        f"Error: {message}\n"
    )
    assert result.stdout == ""
    assert not config.db_path.exists()
    assert files_under(config.output_dir) == []


@pytest.mark.parametrize(
    "args",
    [
        ["--log-level", "LOUD", "list-jobs"],
        ["run"],
        ["run-all", "a.txt", "--no-such-option"],
        ["no-such-command"],
    ],
)
def test_click_usage_errors(cli_runner: CliInvoke, args: list[str]) -> None:
    result = cli_runner(*args)

    assert result.exit_code == 2
    assert result.stderr.startswith("Usage: pipeline")
    assert result.stderr.splitlines()[-1].startswith("Error: ")
    assert "Traceback" not in result.output


# Successful runs --------------------------------------------------------------------------


def test_run_all(pipeline: Invoke, config: PipelineConfig, sample_file: Path) -> None:
    result = pipeline("run-all", sample_file)

    assert result.exit_code == 0, result.output
    output = config.output_dir / "sample_processed.json"
    [batch] = query(config.db_path, "SELECT id, status FROM processing_batches")
    assert batch["status"] == "finalized"
    assert result.stdout == (
        f"A: 3 record(s) -> {output}\n"
        f"B: batch {batch['id']}, 3 record(s) written\n"
        f"C: batch {batch['id']} finalized\n"
    )
    assert result.stderr == ""
    assert json.loads(output.read_text())["record_count"] == 3
    assert db_counts(config.db_path) == {
        "pipeline_inputs": 0, "processing_batches": 1, "processed_records": 3,
    }

    again = pipeline("run-all", sample_file)

    assert again.exit_code == 0
    assert again.stdout.splitlines()[1] == (
        f"B: batch {batch['id']}, 0 record(s) written "
        f"(already stored as batch {batch['id']}; nothing written)"
    )
    assert db_counts(config.db_path)["processed_records"] == 3

    forced = pipeline("run-all", sample_file, "--force")

    assert forced.exit_code == 0
    assert forced.stdout.splitlines()[1].endswith("3 record(s) written (replaced the stored batch)")
    assert db_counts(config.db_path) == {
        "pipeline_inputs": 0, "processing_batches": 1, "processed_records": 3,
    }

    sample_file.write_text("the file changed\n")
    changed = pipeline("run-all", sample_file)

    # The current content of a path replaces its earlier batch: one batch per path.
    assert changed.exit_code == 0, changed.output
    assert changed.stdout.splitlines()[1].endswith(
        "1 record(s) written (replaced 1 earlier batch(es) of this file)"
    )
    [current] = query(config.db_path, "SELECT id, status FROM processing_batches")
    assert current["status"] == "finalized"
    records = query(config.db_path, "SELECT content FROM processed_records")
    assert [r["content"] for r in records] == ["the file changed"]


def test_run_empty_file(pipeline: Invoke, config: PipelineConfig, tmp_path: Path) -> None:
    empty = make(tmp_path / "empty.txt", b"")

    result = pipeline("run-all", empty)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        f"A: 0 record(s) -> {config.output_dir / 'empty_processed.json'}"
    )
    [batch] = query(config.db_path, "SELECT record_count, status FROM processing_batches")
    assert tuple(batch) == (0, "finalized")


def test_stop_after_a_writes_only_the_json(
    pipeline: Invoke, config: PipelineConfig, sample_file: Path
) -> None:
    result = pipeline("run", sample_file, "--stop-after", "A")

    assert result.exit_code == 0, result.output
    output = config.output_dir / "sample_processed.json"
    assert result.stdout == f"A: 3 record(s) -> {output}\n"
    assert result.stderr == ""
    assert files_under(config.output_dir) == ["sample_processed.json"]
    assert not config.db_path.exists()


def test_start_from_b_then_c_alone(
    pipeline: Invoke, config: PipelineConfig, sample_file: Path
) -> None:
    doc = JobA(config).execute(sample_file).output

    stored = pipeline("run", doc["output_path"], "--start-from", "B", "--stop-after", "B")

    assert stored.exit_code == 0, stored.output
    [batch] = query(config.db_path, "SELECT id, status FROM processing_batches")
    assert stored.stdout == f"B: batch {batch['id']}, 3 record(s) written\n"
    assert batch["status"] == "pending"

    finalized = pipeline("run", str(batch["id"]), "--start-from", "C", "--stop-after", "C")

    assert finalized.exit_code == 0, finalized.output
    assert finalized.stdout == f"C: batch {batch['id']} finalized\n"
    [status] = query(config.db_path, "SELECT status FROM processing_batches")
    assert status[0] == "finalized"


def test_json_output(pipeline: Invoke, config: PipelineConfig, sample_file: Path) -> None:
    result = pipeline("run-all", sample_file, "--json")

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    report = json.loads(result.stdout)
    [batch] = query(config.db_path, "SELECT id FROM processing_batches")
    assert report["success"] is True
    assert report["input"] == str(sample_file)
    assert report["output"] == batch["id"]
    assert report["error"] is None
    assert report["duration_s"] >= 0
    assert [(j["job"], j["success"], j["error"]) for j in report["jobs"]] == [
        ("A", True, None), ("B", True, None), ("C", True, None),
    ]
    jobs = {j["job"]: j for j in report["jobs"]}
    assert jobs["A"]["details"]["output_path"] == str(config.output_dir / "sample_processed.json")
    assert jobs["A"]["details"]["record_count"] == 3
    assert jobs["B"]["details"]["records_written"] == 3


def test_environment_variables(cli_runner: CliInvoke, sample_file: Path, tmp_path: Path) -> None:
    db_path = tmp_path / "from-env" / "env.db"
    output_dir = tmp_path / "from-env" / "json"
    env = {"PIPELINE_DB_PATH": str(db_path), "PIPELINE_OUTPUT_DIR": str(output_dir),
           "PIPELINE_LOG_LEVEL": "OFF"}

    result = cli_runner("run-all", sample_file, env=env)

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert files_under(output_dir) == ["sample_processed.json"]
    assert db_counts(db_path)["processed_records"] == 3


def test_flags_win_over_environment_variables(tmp_path: Path) -> None:
    environ = {"PIPELINE_DB_PATH": str(tmp_path / "env.db"),
               "PIPELINE_OUTPUT_DIR": str(tmp_path / "env-out"), "PIPELINE_LOG_LEVEL": "debug"}

    from_env = PipelineConfig.from_env(environ)
    flagged = PipelineConfig.from_env(environ, db_path=tmp_path / "flag.db", log_level=None)

    assert (from_env.db_path, from_env.output_dir, from_env.log_level) == (
        tmp_path / "env.db", tmp_path / "env-out", "DEBUG",
    )
    assert flagged.db_path == tmp_path / "flag.db"
    assert flagged.output_dir == tmp_path / "env-out"
    assert flagged.log_level == "DEBUG"


# Help and information ---------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_help_of_every_command(cli_runner: CliInvoke, command: str) -> None:
    result = cli_runner(command, "--help")

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: pipeline {command} ")
    assert "Example" in result.stdout
    assert result.stderr == ""


def test_main_help(cli_runner: CliInvoke) -> None:
    result = cli_runner("-h")

    assert result.exit_code == 0
    assert "Examples:" in result.stdout
    for command in cli.commands:
        assert command in result.stdout


def test_list_jobs(cli_runner: CliInvoke) -> None:
    result = cli_runner("--log-level", "OFF", "list-jobs")

    assert result.exit_code == 0
    assert result.stdout == (
        "Available jobs:\n"
        "  1. A  Read a text file, split it into records, write them as JSON\n"
        "  2. B  Write the records to the database (one batch per input)\n"
        "  3. C  Finalize a batch and its records\n"
    )


def test_version(cli_runner: CliInvoke) -> None:
    result = cli_runner("--version")

    assert result.exit_code == 0
    assert result.stdout == f"pipeline, version {__version__}\n"


@pytest.mark.parametrize("command", [["status"], ["list-jobs"]])
def test_a_reader_that_closed_the_pipe_gets_no_traceback(
    tmp_path: Path, command: list[str]
) -> None:
    """``pipeline status | head -1``: head leaves after its line, the command's next write
    meets a closed pipe. Played with a pipe closed before the first write."""
    import subprocess
    import sys

    from tests.conftest import sqlite_store

    db = tmp_path / "p.db"
    sqlite_store(db).close()
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "pipeline"), "--db-path", str(db), *command],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


def test_an_interrupted_single_run_says_how_to_go_on_from_the_job_it_stopped_in(
    config: PipelineConfig, tmp_path: Path
) -> None:
    """Job A ended (its JSON written), the run stopped in job B: the command to go on runs B
    on that JSON, within the run's range, forced if the run was, its path quoted."""
    from prefect_pipeline.cli import _how_to_go_on
    from prefect_pipeline.jobs import JobA
    from prefect_pipeline.pipeline.definition import default_pipeline
    from prefect_pipeline.pipeline.single import PipelineResult

    source = tmp_path / "my data" / "sample.txt"
    source.parent.mkdir()
    source.write_text("one\ntwo\n")
    config = config.model_copy(update={"output_dir": tmp_path / "my out"})
    job_a = JobA(config).execute(source)
    assert job_a.success, job_a.error
    output = f"'{config.output_dir / 'sample_processed.json'}'"  # quoted: a space in it
    every = default_pipeline().job_range()

    assert _how_to_go_on(PipelineResult([job_a]), every) == (
        f"pipeline run {output} --start-from B"
    )
    assert _how_to_go_on(PipelineResult([job_a]), every[:2], "B", force=True) == (
        f"pipeline run {output} --start-from B --stop-after B --force"
    )
    # Nothing to go on with: the range ended with A, or no job ended.
    assert _how_to_go_on(PipelineResult([job_a]), every[:1], "A") is None
    assert _how_to_go_on(PipelineResult([]), every) is None


def test_an_interrupted_single_runs_json_carries_the_command_to_go_on(
    config: PipelineConfig, sample_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """For scripts, which read stdout: the same command the terminal is told."""
    from prefect_pipeline.cli import _report_single
    from prefect_pipeline.jobs import JobA
    from prefect_pipeline.pipeline.single import PipelineResult

    job_a = JobA(config).execute(sample_file)
    go_on = "pipeline run out.json --start-from B"

    _report_single(PipelineResult([job_a]), str(sample_file), True, "interrupted", go_on)

    result = json.loads(capsys.readouterr().out)
    assert (result["success"], result["stopped"], result["go_on"]) == (False, "interrupted", go_on)
    assert [job["job"] for job in result["jobs"]] == ["A"]


def test_status_names_the_batches_of_run_and_run_all(
    pipeline: Invoke, config: PipelineConfig, tmp_path: Path
) -> None:
    """run and run-all keep no input row: status's "0 done" beside their batches and
    records says where those came from, apart from the queue's. A queued input reached
    through a symbolic link (its batch names the real path) is the queue's."""
    alone = tmp_path / "alone.txt"
    alone.write_text("one\ntwo\n")
    real = tmp_path / "real"
    real.mkdir()
    (real / "q.txt").write_text("three\n")
    linked = tmp_path / "linked"
    linked.symlink_to(real, target_is_directory=True)
    assert pipeline("run-all", alone).exit_code == 0
    assert pipeline("enqueue", linked).exit_code == 0
    assert pipeline("drain-db", "--workers", "0").exit_code == 0
    batches = query(config.db_path, "SELECT source_path FROM processing_batches ORDER BY id")
    assert [tuple(row) for row in batches] == [(str(alone),), (str(real / "q.txt"),)]

    text = pipeline("status")
    report = json.loads(pipeline("status", "--json").stdout)

    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines()[:3] == [
        "inputs:  0 pending, 0 processing (0 stale: lease expired or command gone), 1 done,"
        " 0 failed",
        "batches: 0 pending, 2 finalized; 3 record(s)",
        "outside the queue: 1 batch(es) stored by run or run-all (the inputs above are the"
        " queue's)",
    ]
    assert report["batches"] == {"pending": 0, "finalized": 2, "total": 2, "outside_queue": 1}
    assert report["inputs"]["done"] == 1
