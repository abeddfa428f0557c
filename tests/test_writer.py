"""The writer: the one place where a run over many inputs writes, checked on its own with a
real SQLite store and ledger, the real jobs, and no Prefect or Dask."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from prefect_pipeline.clock import iso
from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.database.backends import open_store
from prefect_pipeline.database.ledger import CONFLICT_ATTEMPTS, Ledger
from prefect_pipeline.exceptions import InputValidationError
from prefect_pipeline.jobs import BaseJob, JobA, JobB, JobC, JobResult
from prefect_pipeline.pipeline.definition import PipelineDefinition, default_pipeline
from prefect_pipeline.pipeline.discovery import given_files
from prefect_pipeline.pipeline.sources import first_item
from prefect_pipeline.pipeline.wrappers import (
    FinishHook,
    Group,
    WorkItem,
    make_job_task,
    run_job_on_items,
    task_results,
)
from prefect_pipeline.pipeline.writer import Writer
from tests.conftest import ManualClock, db_counts, query
from tests.test_prefect_ui import task_runs
from tests.test_store import deadlock_with


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


#: A batch of the test's own, for a psycopg connection: it holds that batch's key.
_INSERT_BATCH = (
    "INSERT INTO processing_batches (source_path, sha256, record_count, status, created_at)"
    " VALUES (%s, %s, 0, 'pending', '2026-01-01T00:00:00.000000+00:00')"
)


class PeeweeBatches(BaseJob):
    """A database job of a user's own: one batch per document, inserted through Peewee."""

    name = "P"
    uses_database = True

    def validate_input(self, input_data: Any) -> Any:
        return input_data

    def single_job(self, validated: Any) -> Any:
        from prefect_pipeline.database.models import ProcessingBatch

        with self.store.bind_models():
            ProcessingBatch.insert(
                source_path=validated["source_path"],
                sha256=validated["sha256"],
                record_count=validated["record_count"],
            ).execute()
        return validated


class Harness:
    """A run's ledger and writer over some files, with every settled count recorded."""

    def __init__(
        self,
        config: PipelineConfig,
        definition: PipelineDefinition,
        files: Sequence[Path],
        *,
        prefect_tasks: bool = False,
    ) -> None:
        self.config = config
        #: Run the writer's stages as Prefect tasks, and record their states' names.
        self.prefect_tasks = prefect_tasks
        self.states: list[str] = []
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
        if not self.prefect_tasks:
            return run_job_on_items(self.chain[stage], items, self.config, False, finish)
        # As the run's driver runs a writer stage: its Prefect task, here.
        job_task = make_job_task(self.chain[stage])
        state = job_task(Group(items), self.config, False, finish, return_state=True)
        self.states.append(f"{self.chain[stage].name}: {state.name}")
        return task_results(state)

    def after_job_a(self) -> list[WorkItem]:
        """What job A (a job that does not write) hands the writer."""
        results = run_job_on_items(self.chain[0], self.items, self.config)
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


def ending_levels(flow_run_id: UUID, expected: int, timeout: float = 30) -> list[tuple[str, int]]:
    """(state name, level) of each "Finished in state" line of the flow run's task runs, as
    the Prefect API holds them, once ``expected`` are there (they are shipped in the
    background)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    from prefect_pipeline.compat import flush_api_logs

    flush_api_logs()
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            endings = [
                (log.message.removeprefix("Finished in state ").split("(")[0], log.level)
                for log in client.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                    sort=LogSort.TIMESTAMP_ASC,
                )
                if log.task_run_id is not None and log.message.startswith("Finished in state ")
            ]
            if len(endings) >= expected or time.monotonic() > deadline:
                return endings
            time.sleep(0.2)


def test_a_write_rolled_back_to_end_a_deadlock_runs_again_on_postgresql(
    postgres_url: str, tmp_path: Path
) -> None:
    """Writers of two commands can wait on each other's rows (documents naming the same
    source and content, stored in opposite orders); PostgreSQL ends the circle by rolling
    one transaction back. Played with a connection of the test's that holds one batch's
    key while the writer waits for it, then asks for the key the writer holds. The writer's
    transaction runs again, jobs and all, once the other has ended: every input ends as it
    would have, and what was told before the rollback (a refused input) is told once."""
    config = PipelineConfig(output_dir=tmp_path / "output", db_url=postgres_url, log_level="OFF")
    files = write(tmp_path / "in", {"a.txt": b"a1\na2\n", "b.txt": b"b\n", "bad.txt": b"x\n"})
    definition = (
        PipelineDefinition()
        .add_job("A", JobA)
        .add_job("R", RefusesBad)
        .add_job("B", JobB)
        .add_job("C", JobC)
    )
    run = Harness(config, definition, files, prefect_tasks=True)
    survivors = run.after_job_a()
    keys = [(item.data["source_path"], item.data["sha256"]) for item in survivors]
    keys = [key for key in keys if not key[0].endswith("bad.txt")]
    assert [Path(source).name for source, _ in keys] == ["a.txt", "b.txt"]  # B's insert order

    from prefect import flow

    @flow(name="writer-rolled-back")
    def write_in_a_flow_run() -> tuple[list[WorkItem], int]:  # as the driver writes
        return run.writer.write(survivors, 1)

    # The writer holds a's batch key and waits for b's; then the test asks for a's.
    outcome = deadlock_with(
        postgres_url,
        lambda: write_in_a_flow_run(return_state=True),
        ((_INSERT_BATCH, keys[1]), (_INSERT_BATCH, keys[0])),
    )

    assert "error" not in outcome, outcome
    rollbacks = len(run.clock.slept)  # a pause after each (see deadlock_with)
    assert 1 <= rollbacks < CONFLICT_ATTEMPTS
    flow_state = outcome["result"]
    assert flow_state.is_completed(), flow_state
    left, stage = flow_state.result()
    assert (len(left), stage) == (2, 4)
    assert run.status() == {"a.txt": "done", "b.txt": "done", "bad.txt": "failed"}
    # In Prefect, the job whose write was undone ends RolledBack, not Failed (R is Failed:
    # it refused an input).
    assert run.states == ["R: Failed", "B: RolledBack"] * rollbacks + [
        "R: Failed", "B: Completed", "C: Completed",
    ]
    recorded = task_runs(str(flow_state.state_details.flow_run_id), expected=3 + 2 * rollbacks)
    assert [(r.state_name, r.state_type.value) for r in recorded][:2] == [
        ("Failed", "FAILED"), ("RolledBack", "CANCELLED"),
    ]
    # And in the flow run's log, its end is a warning (Prefect's own level is ERROR); R's
    # Failed stays an error.
    endings = ending_levels(flow_state.state_details.flow_run_id, expected=3 + 2 * rollbacks)
    assert endings[:2] == [("Failed", logging.ERROR), ("RolledBack", logging.WARNING)]
    # The driver renews its leases before a commit; told of the rollback, it renews again.
    assert run.hooks == ["rolled back"] * rollbacks + ["before commit"]
    # Told once: R's refusal, then the two done; told twice, the progress would pass 3.
    assert (run.settled, run.failed) == ([1, 2], [1])
    counts = run.ledger.store.execute(
        "SELECT (SELECT count(*) FROM processing_batches), (SELECT count(*) FROM"
        " processed_records)"
    ).fetchone()
    assert tuple(counts) == (2, 3)


def test_a_job_of_your_own_rolled_back_through_peewee_runs_again_on_postgresql(
    postgres_url: str, tmp_path: Path
) -> None:
    """A job that writes through Peewee meets the database's own errors, not the store's
    translation: a deadlock must still roll the group back and run it again, not fail one
    input and commit the rest."""
    config = PipelineConfig(output_dir=tmp_path / "output", db_url=postgres_url, log_level="OFF")
    files = write(tmp_path / "in", {"a.txt": b"a\n", "b.txt": b"b\n"})
    run = Harness(config, PipelineDefinition().add_job("A", JobA).add_job("P", PeeweeBatches),
                  files)  # fmt: skip
    survivors = run.after_job_a()
    keys = [(item.data["source_path"], item.data["sha256"]) for item in survivors]

    # The job holds a's batch key and waits for b's; then the test asks for a's.
    outcome = deadlock_with(
        postgres_url,
        lambda: run.writer.write(survivors, 1),
        ((_INSERT_BATCH, keys[1]), (_INSERT_BATCH, keys[0])),
    )

    assert "error" not in outcome, outcome
    assert 1 <= len(run.clock.slept) < CONFLICT_ATTEMPTS
    assert run.status() == {"a.txt": "done", "b.txt": "done"}
    assert (run.settled, run.failed) == ([2], [])
