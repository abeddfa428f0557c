"""Fault injection for the writer: the command is killed (SIGKILL, to its process group, as a
supervisor's last word) at random points of runs over a few hundred inputs, each kill
followed by a rerun. After every rerun each input is done exactly once, its rows equal the
file's lines, and SQLite's integrity check passes."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from prefect_pipeline.clock import iso
from prefect_pipeline.config import PipelineConfig
from tests.conftest import CliInvoke, db_counts, query
from tests.test_queue_crash import (
    api_env,
    assert_nothing_half_written,
    command,
    make_inputs,
    statuses,
)

pytestmark = pytest.mark.slow

#: Kill points of one run of this test: a few in the suite, where every second counts; set
#: PIPELINE_KILL_POINTS for a longer hunt (the README's reliability section gives the
#: figures of the last one).
KILL_POINTS = int(os.environ.get("PIPELINE_KILL_POINTS", "4"))
FILES = 300


def expected_rows(root: Path) -> dict[str, list[tuple[int, str]]]:
    """An independent reading of every file: (line_number, stripped line) of its records."""
    rows = {}
    for path in root.rglob("*.txt"):
        lines = path.read_text(encoding="utf-8").split("\n")
        rows[str(path)] = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
    return rows


def finished_since(config: PipelineConfig, moment: str) -> int:
    """Inputs marked done since ``moment`` (a run's progress)."""
    try:
        return int(
            query(
                config.db_path,
                "SELECT count(*) FROM pipeline_inputs WHERE finished_at > ?",
                (moment,),
            )[0][0]
        )
    except sqlite3.OperationalError:  # locked for a moment by the writer
        return 0


def stored_rows(config: PipelineConfig) -> dict[str, list[tuple[int, str]]]:
    rows: dict[str, list[tuple[int, str]]] = {}
    for row in query(
        config.db_path,
        "SELECT b.source_path, r.line_number, r.content FROM processed_records r"
        " JOIN processing_batches b ON b.id = r.batch_id ORDER BY b.source_path, r.record_index",
    ):
        rows.setdefault(row[0], []).append((row[1], row[2]))
    return rows


def test_kills_at_random_points_lose_and_duplicate_nothing(
    config: PipelineConfig, tmp_path: Path, cli_runner: CliInvoke
) -> None:
    root = tmp_path / "inputs"
    records = make_inputs(root, files=FILES, lines=40)
    expected = expected_rows(root)
    env = api_env()
    chooser = random.Random(20261125)
    # The killed commands are processes of their own; the runs around them need not be (a
    # process start costs seconds): they run the same command in this process.
    run_in_process = command(config, "run-parallel", root, "--workers", "0")[1:]
    first = cli_runner(*run_in_process)
    assert first.exit_code == 0, first.output
    killed_with_work_done = 0
    for point in range(KILL_POINTS):
        runner = subprocess.Popen(
            command(config, "run-parallel", root, "--workers", "0", "--force"),
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        # Spread over the run: the first point in the start-up, the others after a random
        # number of inputs committed by this run (anywhere in a group's claims and writes).
        started = iso(datetime.now(UTC))
        target = 0 if point == 0 else chooser.randrange(1, FILES)
        while finished_since(config, started) < target and runner.poll() is None:
            time.sleep(0.005)
        os.killpg(runner.pid, signal.SIGKILL)
        runner.communicate(timeout=60)
        if runner.returncode == -signal.SIGKILL:
            killed_with_work_done += 1
        rerun = cli_runner(*run_in_process)
        # The killed command's claims are taken over at once (its process is gone), not
        # after its lease.
        assert rerun.exit_code == 0, (point, rerun.output)
        assert statuses(config) == {"done": FILES}, point
        counts = db_counts(config.db_path)
        assert counts == {
            "pipeline_inputs": FILES, "processing_batches": FILES, "processed_records": records,
        }, point
        assert stored_rows(config) == expected, point
        assert_nothing_half_written(config)
        with closing(sqlite3.connect(config.db_path)) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # Most kill points landed while the command ran (a few may find it already finished).
    assert killed_with_work_done >= KILL_POINTS // 2, killed_with_work_done
