"""A SQLite database that is someone else's, or on a full disk: one line naming it and the
cause, the right exit code, nothing of ours left in a file that is not ours, and claims
that end up with the next run, not stuck for a lease."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from prefect_pipeline.config import PipelineConfig
from tests.conftest import CliInvoke
from tests.test_queue_crash import api_env, make_inputs

PIPELINE = Path(sys.executable).with_name("pipeline")


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.mark.parametrize(
    "args",
    [
        ["run-all", "{input}"],
        ["run-parallel", "{folder}", "--workers", "0"],
        ["enqueue", "{folder}"],
        ["status"],
        ["drain-db", "--workers", "0"],
    ],
    ids=["run-all", "run-parallel", "enqueue", "status", "drain-db"],
)
def test_a_database_with_a_foreign_table_is_refused_untouched(
    cli_runner: CliInvoke, tmp_path: Path, args: list[str]
) -> None:
    database = tmp_path / "theirs.db"
    with closing(sqlite3.connect(database)) as connection:
        connection.execute(
            "CREATE TABLE processed_records (id INTEGER PRIMARY KEY, customer TEXT, amount REAL)"
        )
        connection.execute("INSERT INTO processed_records (customer, amount) VALUES ('x', 1.5)")
        connection.commit()
    before = fingerprint(database)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("a line\n")
    filled = [a.format(input=folder / "a.txt", folder=folder) for a in args]

    result = cli_runner("--db-path", database, "--output-dir", tmp_path / "out", *filled)

    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"Error: {database}: table processed_records (amount, customer, id) is not the "
        "pipeline's; use another database (nothing was changed)"
    ]
    assert fingerprint(database) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "theirs.db"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system of its own (tmpfs), made bigger with ``resize``."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_the_next_run_finishes(
    config: PipelineConfig, tmp_path: Path, small_disk: Path
) -> None:
    records = make_inputs(tmp_path / "in", files=120, lines=200)
    database = small_disk / "pipeline.db"
    base = [str(PIPELINE), "--log-level", "WARNING", "--db-path", str(database),
            "--output-dir", str(config.output_dir)]
    env = api_env()

    full = subprocess.run([*base, "run-parallel", str(tmp_path / "in"), "--workers", "0"],
                          env=env, capture_output=True, text=True, timeout=300)

    assert full.returncode == 3, full.stderr
    assert full.stderr.splitlines()[-1] == f"Error: {database}: database or disk is full"
    assert "Traceback" not in full.stderr
    with closing(sqlite3.connect(database)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        done = connection.execute(
            "SELECT count(*) FROM pipeline_inputs WHERE status = 'done'"
        ).fetchone()[0]
        processing = connection.execute(
            "SELECT count(*) FROM pipeline_inputs WHERE status = 'processing'"
        ).fetchone()[0]
        short = connection.execute(
            "SELECT count(*) FROM processing_batches b WHERE b.record_count <>"
            " (SELECT count(*) FROM processed_records r WHERE r.batch_id = b.id)"
        ).fetchone()[0]
    assert 0 < done < 120 and short == 0
    assert processing == 0  # its claims were given back: the rollback freed room for that

    # Room again: the next run takes over what the stopped one held, at once.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    rerun = subprocess.run(
        [*base, "--log-level", "OFF", "run-parallel", str(tmp_path / "in"), "--workers", "0",
         "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["succeeded"] + summary["skipped"] == 120
    with closing(sqlite3.connect(database)) as connection:
        assert connection.execute(
            "SELECT status, count(*) FROM pipeline_inputs GROUP BY status"
        ).fetchall() == [("done", 120)]
        assert connection.execute("SELECT count(*) FROM processed_records").fetchone()[0] == (
            records
        )
    assert os.path.isdir(config.output_dir)

