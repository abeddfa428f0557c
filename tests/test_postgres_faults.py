"""A PostgreSQL server that stops mid-run: the drain ends in one line naming the database
(exit 3), nothing is half written, and once the server is back the next drain takes the
unfinished inputs over at once and finishes them exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.postgres_cluster import PostgresCluster
from tests.test_queue_crash import api_env, make_inputs

pytestmark = pytest.mark.slow

PIPELINE = Path(sys.executable).with_name("pipeline")


def redacted(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, f"{parts.username}:***@{parts.hostname}:{parts.port}",
                       *parts[2:]))


def pipeline(url: str, output: Path, *args: Any) -> list[str]:
    return [str(PIPELINE), "--db-url", url, "--output-dir", str(output), *map(str, args)]


def scalar(url: str, sql: str) -> Any:
    with psycopg.connect(url) as connection:
        return connection.execute(sql).fetchone()[0]


def wait_until_done(url: str, process: subprocess.Popen[str], at_least: int) -> None:
    deadline = time.monotonic() + 120
    while scalar(url, "SELECT count(*) FROM pipeline_inputs WHERE status = 'done'") < at_least:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_server_that_stops_mid_run(
    postgres_cluster: PostgresCluster, postgres_url: str, tmp_path: Path
) -> None:
    records = make_inputs(tmp_path / "in", files=300, lines=200)
    output = tmp_path / "out"
    env = {**api_env(), "PIPELINE_DB_TIMEOUT": "10"}
    queued = subprocess.run(pipeline(postgres_url, output, "enqueue", tmp_path / "in"),
                            env=env, capture_output=True, text=True, timeout=120)
    assert queued.returncode == 0, queued.stderr

    drainer = subprocess.Popen(
        pipeline(postgres_url, output, "--log-level", "WARNING", "drain-db", "--workers", "0"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_until_done(postgres_url, drainer, at_least=20)
    stopped = time.monotonic()
    postgres_cluster.stop("fast")  # rolls back open transactions, closes every connection
    try:
        _, stderr = drainer.communicate(timeout=120)
        took = time.monotonic() - stopped
    finally:
        postgres_cluster.start()

    assert drainer.returncode == 3, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: {redacted(postgres_url)}: "), stderr
    assert urlsplit(postgres_url).password not in stderr
    assert took < 60, took  # a guard against hanging; the real figure is in the README

    # Nothing half written: every batch has all its records, every done input its batch.
    assert scalar(
        postgres_url,
        "SELECT count(*) FROM processing_batches b WHERE b.record_count <>"
        " (SELECT count(*) FROM processed_records r WHERE r.batch_id = b.id)",
    ) == 0
    done_before = scalar(postgres_url, "SELECT count(*) FROM pipeline_inputs WHERE status = 'done'")
    assert 20 <= done_before < 300

    # The server is back: the next drain takes over what the dead drainer held, at once.
    rerun = subprocess.run(
        pipeline(postgres_url, output, "--log-level", "OFF", "drain-db", "--workers", "0",
                 "--json"),
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert (summary["failed"], summary["pending"]) == (0, 0)
    assert scalar(postgres_url, "SELECT count(*) FROM pipeline_inputs WHERE status = 'done'") == 300
    assert scalar(postgres_url, "SELECT count(*) FROM processing_batches") == 300
    assert scalar(postgres_url, "SELECT count(*) FROM processed_records") == records
    assert os.listdir(output)  # the JSON files are there
