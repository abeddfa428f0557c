"""Faults that must end in a clear state: file names that are not UTF-8, impossible or
unanswering clusters."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.exceptions import RunError
from prefect_pipeline.pipeline.parallel import run_parallel_from_files
from tests.conftest import CliInvoke, db_counts, query

BAD_NAME = os.fsdecode(b"caf\xe9.txt")  # Latin-1 bytes: not UTF-8


def base(config: PipelineConfig) -> list[str]:
    return ["--log-level", "OFF", "--db-path", str(config.db_path), "--output-dir",
            str(config.output_dir)]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a1\na2\n")
    (root / "sub" / "b.txt").write_text("b1\n")
    (root / BAD_NAME).write_text("never read\n")
    (root / os.fsdecode(b"dir\xff")).mkdir()
    (root / os.fsdecode(b"dir\xff") / "c.txt").write_text("c\n")
    return root


def test_a_name_that_is_not_utf8_is_skipped_alone(
    cli_runner: CliInvoke, config: PipelineConfig, tree: Path
) -> None:
    result = cli_runner(*base(config), "run-parallel", tree, "--workers", "0", "--json")

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["succeeded"], summary["failed"], summary["records"]) == (2, 0, 3)
    reason = "file name is not valid UTF-8 (rename it; paths are stored as text)"
    assert summary["ignored_paths"] == [
        {"path": f"{tree}/caf\\xe9.txt", "reason": reason},
        {"path": f"{tree}/dir\\xff", "reason": reason},
    ]
    paths = [row["path"] for row in query(config.db_path, "SELECT path FROM pipeline_inputs")]
    assert sorted(paths) == [str(tree / "a.txt"), str(tree / "sub" / "b.txt")]

    again = cli_runner(*base(config), "run-parallel", tree, "--workers", "0")
    assert again.exit_code == 0, again.output
    assert f"ignored {tree}/caf\\xe9.txt: {reason}" in again.stdout


def test_enqueue_and_run_report_such_a_name_in_one_line(
    cli_runner: CliInvoke, config: PipelineConfig, tree: Path
) -> None:
    queued = cli_runner(*base(config), "enqueue", tree, tree / BAD_NAME)
    assert queued.exit_code == 0, queued.output
    assert queued.stdout == "2 input(s) queued, 0 already there, 3 ignored\n"
    assert queued.stderr.count("file name is not valid UTF-8") == 3

    single = cli_runner(*base(config), "run-all", tree / BAD_NAME)
    assert single.exit_code == 1
    assert single.stderr == (
        f"Error: job A: {tree}/caf\\xe9.txt: file name is not valid UTF-8 "
        "(rename it; paths are stored as text)\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "1000"], "--workers 1000: this machine can hold at most"),
        (["--address", "garbage"], "--address 'garbage': expected tcp://HOST:PORT"),
        (["--address", "tcp://127.0.0.1:0"], "expected tcp://HOST:PORT"),
    ],
)
def test_an_impossible_cluster_is_a_usage_error_before_anything_starts(
    cli_runner: CliInvoke, config: PipelineConfig, tree: Path, args: list[str], message: str
) -> None:
    for command in (["run-parallel", str(tree)], ["drain-db"]):
        result = cli_runner(*base(config), *command, *args)
        assert result.exit_code == 2, result.output
        assert message in result.stderr
        assert not config.db_path.exists()  # nothing was started, nothing created


@pytest.fixture
def silent_scheduler(silent_address: tuple[str, int]) -> str:
    return f"tcp://{silent_address[0]}:{silent_address[1]}"


def test_a_scheduler_that_never_answers_fails_within_the_timeout(
    config: PipelineConfig, tree: Path, silent_scheduler: str
) -> None:
    started = time.monotonic()
    with pytest.raises(RunError, match=f"Dask scheduler {silent_scheduler} did not answer"):
        run_parallel_from_files(tree, config, address=silent_scheduler, connect_timeout=2)
    assert time.monotonic() - started < 60  # a guard against hanging, not a speed figure
    # The claims made before the cluster was asked for are given back.
    assert {r["status"] for r in query(config.db_path, "SELECT status FROM pipeline_inputs")} \
        == {"pending"}
    assert db_counts(config.db_path)["processing_batches"] == 0
