"""The writer: the one place where a run over many inputs writes, checked on its own with a
real SQLite store and ledger, the real jobs, and no Prefect or Dask."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from prefect_pipeline.clock import iso
from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.database.backends import open_store
from prefect_pipeline.database.ledger import Ledger
from prefect_pipeline.exceptions import InputValidationError
from prefect_pipeline.jobs import BaseJob, JobA, JobB, JobC, JobResult
from prefect_pipeline.pipeline.definition import PipelineDefinition, default_pipeline
from prefect_pipeline.pipeline.discovery import given_files
from prefect_pipeline.pipeline.sources import first_item
from prefect_pipeline.pipeline.wrappers import FinishHook, WorkItem, run_job_on_items
from prefect_pipeline.pipeline.writer import Writer
from tests.conftest import ManualClock, db_counts, query
from tests.test_store import _waiting_on_a_lock


class Flaky(BaseJob):
    """A database job that fails with an error a retry may cure."""

    name = "F"
    uses_database = True

    def validate_input(self, input_data: Any) -> Any:
        return input_data

    def single_job(self, validated: Any) -> Any:
        raise OSError("disk hiccup")


class RefusesBad(BaseJob):
    """A database job that refuses a document of a file named bad.txt and hands the
    others on as they are."""

    name = "R"
    uses_database = True

    def validate_input(self, input_data: Any) -> Any:
        if input_data["source_path"].endswith("bad.txt"):
            raise InputValidationError(input_data["source_path"], "refused")
        return input_data

    def single_job(self, validated: Any) -> Any:
        return validated


class Harness:
    """A run's ledger and writer over some files, with every settled count recorded."""

    def __init__(
        self, config: PipelineConfig, definition: PipelineDefinition, files: Sequence[Path]
    ) -> None:
        self.config = config
        self.chain = definition.jobs
        self.clock = ManualClock()
        store = open_store(config.database, timeout=config.db_timeout)  # the jobs' store too
        self.ledger = Ledger(store, lease_seconds=60, clock=self.clock)
        self.settled: list[int] = []
        self.failed: list[int] = []
        self.hooks: list[str] = []
        self.writer = Writer(
            self.chain,
            self.ledger,
            self.run_stage,
            max_attempts=2,
            retry_base_seconds=10,
            on_settled=self.settled.append,
            on_failed=self.failed.append,
            before_commit=lambda: self.hooks.append("before commit"),
            on_rolled_back=lambda: self.hooks.append("rolled back"),
        )
        found = list(given_files(files, config.output_dir))
        registration = self.ledger.register_and_claim(
            found, start_job=self.chain[0].name, stop_job=self.chain[-1].name
        )
        self.items = [first_item(self.chain[0], c) for c in registration.claimed]

    def run_stage(
        self, stage: int, items: Sequence[WorkItem], finish: FinishHook | None
    ) -> list[JobResult]:
        return run_job_on_items(self.chain[stage], items, self.config, False, finish)

    def after_job_a(self) -> list[WorkItem]:
        """What job A (a job that does not write) hands the writer."""
        results = self.run_stage(0, self.items, None)
        return self.writer.record(self.items, 0, results)

    def status(self) -> dict[str, str]:
        rows = self.ledger.store.execute("SELECT path, status FROM pipeline_inputs")
        return {Path(path).name: status for path, status in rows.fetchall()}


def write(folder: Path, files: dict[str, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]


def test_each_input_commits_with_its_status_and_a_bad_one_fails_alone(
    config: PipelineConfig, tmp_path: Path
) -> None:
    files = write(tmp_path / "in", {"a.txt": b"a1\na2\n", "bad.txt": b"x\x00", "c.txt": b"c\n"})
    run = Harness(config, default_pipeline(), files)

    survivors = run.after_job_a()
    assert run.status() == {"a.txt": "processing", "bad.txt": "failed", "c.txt": "processing"}
    left, stage = run.writer.write(survivors, 1)

    assert (len(left), stage) == (2, 3)
    assert run.status() == {"a.txt": "done", "bad.txt": "failed", "c.txt": "done"}
    assert run.settled == [1, 2]  # the failure after job A, then two done after B and C
    assert db_counts(config.db_path) == {
        "pipeline_inputs": 3, "processing_batches": 2, "processed_records": 3,
    }
    done = query(
        config.db_path,
        "SELECT records_written, batch_id, sha256, outcome, last_job FROM pipeline_inputs"
        " WHERE status = 'done' ORDER BY path",
    )
    assert [(r["records_written"], r["outcome"], r["last_job"]) for r in done] == [
        (2, "processed", "C"),
        (1, "processed", "C"),
    ]
    assert all(r["batch_id"] and len(r["sha256"]) == 64 for r in done)


def test_an_error_a_retry_may_cure_waits_then_fails_for_good(
    config: PipelineConfig, tmp_path: Path
) -> None:
    files = write(tmp_path / "in", {"a.txt": b"a\n"})
    definition = PipelineDefinition().add_job("A", JobA).add_job("F", Flaky)
    run = Harness(config, definition, files)

    run.writer.write(run.after_job_a(), 1)

    [row] = query(config.db_path, "SELECT status, attempts, not_before, last_error FROM"
                  " pipeline_inputs")
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert row["last_error"].endswith("OSError: disk hiccup")
    due = run.ledger.next_due()
    assert due is not None and (due - run.clock.now()).total_seconds() == pytest.approx(10)

    run.clock.advance(10)
    [claimed] = run.ledger.claim_pending(1, max_attempts=2)
    item = WorkItem(
        claimed.path, input_id=claimed.input_id, path=claimed.path, attempts=claimed.attempts
    )
    run.writer.write([item], 1)
    assert run.status() == {"a.txt": "failed"}


def test_a_lost_claim_discards_the_result_without_failing_the_input(
    config: PipelineConfig, tmp_path: Path
) -> None:
    files = write(tmp_path / "in", {"a.txt": b"a\n"})
    run = Harness(config, default_pipeline(), files)
    survivors = run.after_job_a()
    # The run stalls past its lease; another command takes the input over.
    run.clock.advance(61)
    other = Ledger(run.ledger.store, lease_seconds=60, clock=run.clock)
    with run.ledger.store.transaction():
        run.ledger.store.requeue_stale(iso(run.clock.now()))
    assert len(other.claim_pending(1, max_attempts=3)) == 1

    left, _ = run.writer.write(survivors, 1)

    assert left == []
    [row] = query(config.db_path, "SELECT status, claim_token FROM pipeline_inputs")
    assert (row["status"], row["claim_token"]) == ("processing", other.token)
    assert db_counts(config.db_path)["processing_batches"] == 0


def test_a_chain_whose_last_job_writes_nothing_is_finished_by_the_writer(
    config: PipelineConfig, tmp_path: Path
) -> None:
    files = write(tmp_path / "in", {"a.txt": b"a\nb\n"})
    run = Harness(config, PipelineDefinition().add_job("A", JobA), files)

    run.writer.finish(run.after_job_a())

    [row] = query(config.db_path, "SELECT status, last_job, sha256, batch_id FROM pipeline_inputs")
    assert (row["status"], row["last_job"], row["batch_id"]) == ("done", "A", None)
    assert len(row["sha256"]) == 64  # job A's facts reach the ledger
    assert run.settled == [1]


def test_a_definition_may_name_its_jobs_as_it_likes(
    config: PipelineConfig, tmp_path: Path
) -> None:
    files = write(tmp_path / "in", {"a.txt": b"a\n"})
    definition = (
        PipelineDefinition().add_job("read", JobA).add_job("store", JobB).add_job("seal", JobC)
    )
    run = Harness(config, definition, files)

    run.writer.write(run.after_job_a(), 1)

    [row] = query(config.db_path, "SELECT status, last_job, start_job, stop_job FROM"
                  " pipeline_inputs")
    assert tuple(row) == ("done", "seal", "read", "seal")


def test_a_write_rolled_back_to_end_a_deadlock_runs_again_on_postgresql(
    postgres_url: str, tmp_path: Path
) -> None:
    """Writers of two commands can wait on each other's rows (documents naming the same
    source and content, stored in opposite orders); PostgreSQL ends the circle by rolling
    one transaction back. Played with a connection of the test's that holds one batch's
    key while the writer waits for it, then asks for the key the writer holds. The writer's
    transaction runs again, jobs and all, once the other has ended: every input ends as it
    would have, and what was told before the rollback (a refused input) is told once."""
    import psycopg
    import psycopg.sql

    # The writer's connection looks for a circle 3 s into a lock wait, the test's own after
    # a minute: the writer is the one rolled back (see the registration's test).
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(
            f"ALTER DATABASE {psycopg.sql.Identifier(admin.info.dbname).as_string(admin)}"
            " SET deadlock_timeout = '3s'"
        )
    config = PipelineConfig(output_dir=tmp_path / "output", db_url=postgres_url, log_level="OFF")
    files = write(tmp_path / "in", {"a.txt": b"a1\na2\n", "b.txt": b"b\n", "bad.txt": b"x\n"})
    definition = (
        PipelineDefinition()
        .add_job("A", JobA)
        .add_job("R", RefusesBad)
        .add_job("B", JobB)
        .add_job("C", JobC)
    )
    run = Harness(config, definition, files)
    survivors = run.after_job_a()
    keys = [(item.data["source_path"], item.data["sha256"]) for item in survivors]
    keys = [key for key in keys if not key[0].endswith("bad.txt")]
    assert [Path(source).name for source, _ in keys] == ["a.txt", "b.txt"]  # B's insert order
    outcome: dict[str, Any] = {}

    def write_group() -> None:
        try:
            outcome["left"] = run.writer.write(survivors, 1)
        except BaseException as exc:  # reported by the assertions below
            outcome["error"] = exc

    insert = (
        "INSERT INTO processing_batches (source_path, sha256, record_count, status, created_at)"
        " VALUES (%s, %s, 0, 'pending', '2026-01-01T00:00:00.000000+00:00')"
    )
    with psycopg.connect(postgres_url) as other, psycopg.connect(
        postgres_url, autocommit=True
    ) as watcher:
        other.execute("SET deadlock_timeout = '60s'")
        other.execute(insert, keys[1])
        writer = threading.Thread(target=write_group)
        writer.start()
        deadline = time.monotonic() + 30
        while not _waiting_on_a_lock(watcher):  # it holds a's key and waits for b's
            assert writer.is_alive() and time.monotonic() < deadline
            time.sleep(0.02)
        # Waits for a's key: a circle, which the writer's backend ends by rolling back.
        other.execute(insert, keys[0])
        assert writer.is_alive(), outcome  # rolled back, and waiting behind this one
        other.rollback()
        writer.join(30)

    assert not writer.is_alive()
    assert "error" not in outcome, outcome
    assert len(run.clock.slept) >= 1  # a pause before each attempt after the first
    left, stage = outcome["left"]
    assert (len(left), stage) == (2, 4)
    assert run.status() == {"a.txt": "done", "b.txt": "done", "bad.txt": "failed"}
    # The driver renews its leases before a commit; told of the rollback, it renews again.
    assert run.hooks == ["rolled back", "before commit"]
    # Told once: R's refusal, then the two done; told twice, the progress would pass 3.
    assert (run.settled, run.failed) == ([1, 2], [1])
    counts = run.ledger.store.execute(
        "SELECT (SELECT count(*) FROM processing_batches), (SELECT count(*) FROM"
        " processed_records)"
    ).fetchone()
    assert tuple(counts) == (2, 3)
