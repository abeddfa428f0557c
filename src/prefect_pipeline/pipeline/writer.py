"""The writer: the one place where a run over many inputs writes results.

It runs the chain's database jobs (B, C) on a group of inputs and records each input's
outcome in the ledger: done (in the same transaction as its last job's rows, and only while
the run's claim holds), failed, or waiting for a retry. On SQLite it runs in the command's
own thread, one group at a time, while the Dask workers go on with the next groups: SQLite
has one writer, and a single writing thread never meets "database is locked".

Every database job of a group shares one write transaction: one commit per group instead of
one per input. Jobs B and C write a whole group with a few set-based statements, in a
savepoint; when one input breaks them, the group rolls back to it and each input runs in a
savepoint of its own, so a failing input rolls back alone.

Where writers run side by side (PostgreSQL), two commands' transactions can wait on each
other's rows (two documents naming the same source and content, in opposite orders); the
database ends that deadlock by rolling one back. The writer then runs that transaction
again, jobs and all, after a short random pause: what it tells the driver and the logs
(inputs settled, failed) waits for the commit, so a group rolled back is not counted twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from prefect_pipeline.database.ledger import Ledger
from prefect_pipeline.database.statuses import rejected_outcome
from prefect_pipeline.database.store import Finished
from prefect_pipeline.exceptions import DatabaseConflict
from prefect_pipeline.jobs.base import CLAIM_LOST, INPUT_ERROR, JobResult, Outcome
from prefect_pipeline.logs import get_logger, log_to_flow_run
from prefect_pipeline.pipeline.definition import JobSpec
from prefect_pipeline.pipeline.summary import problem
from prefect_pipeline.pipeline.wrappers import FinishHook, WorkItem

logger = get_logger("writer")

T = TypeVar("T")


class RunStage(Protocol):
    """Runs the job of chain stage ``stage`` on ``items`` and returns one result per item,
    calling ``finish`` inside the transaction of the successful inputs' writes (the driver
    passes the Prefect task of the stage; tests may pass ``run_job_on_items``)."""

    def __call__(
        self, stage: int, items: Sequence[WorkItem], finish: FinishHook | None
    ) -> list[JobResult]: ...


class Writer:
    """Runs database jobs and records outcomes for one run."""

    def __init__(
        self,
        chain: Sequence[JobSpec],
        ledger: Ledger,
        run_stage: RunStage,
        *,
        max_attempts: int,
        retry_base_seconds: float,
        on_settled: Callable[[int], None] = lambda count: None,
        on_failed: Callable[[int], None] = lambda count: None,
        before_commit: Callable[[], None] = lambda: None,
        on_rolled_back: Callable[[], None] = lambda: None,
    ) -> None:
        self.chain = list(chain)
        self.ledger = ledger
        self.store = ledger.store
        self._run_stage = run_stage
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
        #: Told how many inputs reached their end (done, failed, or waiting for a retry).
        self._on_settled = on_settled
        #: Told how many inputs failed for good (no retry left).
        self._on_failed = on_failed
        #: Called at the end of each write transaction, inside it (the driver renews the
        #: run's leases there when they are due: a large input's rows can take minutes to
        #: write, and a renewal committed with them leaves no moment in which the run's
        #: other inputs look abandoned).
        self._before_commit = before_commit
        #: Called when the database rolled a write transaction back to end a deadlock,
        #: before it runs again (what ``before_commit`` wrote is gone with it).
        self._on_rolled_back = on_rolled_back
        #: Inside a write transaction: what to tell once it commits (None: tell at once).
        self._told: list[Callable[[], object]] | None = None
        #: Seconds spent in write transactions (jobs B and C and the ledger's outcomes):
        #: the share of a run that more workers cannot shorten, only more writers.
        self.busy_s = 0.0

    def is_writer_stage(self, stage: int) -> bool:
        return stage < len(self.chain) and self.chain[stage].uses_database

    def write(self, items: list[WorkItem], stage: int) -> tuple[list[WorkItem], int]:
        """Run the consecutive database jobs from ``stage`` on ``items``, in one transaction.

        Returns the inputs that go on and the stage they go on to (a job that does not write,
        or the end of the chain, where they are already done).
        """
        if not items or not self.is_writer_stage(stage):
            return items, stage

        def body() -> tuple[list[WorkItem], int]:
            held, at = self._still_held(items), stage
            while held and self.is_writer_stage(at):
                last = at == len(self.chain) - 1
                results = self._run_stage(at, held, self._finish if last else None)
                held = self.record(held, at, results)
                at += 1
            return held, at

        return self._in_transaction(body, len(items))

    def record(
        self, items: Sequence[WorkItem], stage: int, results: Sequence[JobResult]
    ) -> list[WorkItem]:
        """Record the failures of one stage; return the inputs that go on, advanced."""
        survivors = []
        for item, result in zip(items, results, strict=True):
            if result.success:
                survivors.append(item.advance(result.output, result.facts))
            else:
                self._fail(item, result)
        settled = len(items) - len(survivors)
        if stage == len(self.chain) - 1 and self.chain[stage].uses_database:
            settled += len(survivors)  # marked done by ``_finish``, in the same transaction
        if settled:
            self._tell(self._on_settled, settled)
        return survivors

    def finish(self, items: Sequence[WorkItem]) -> None:
        """Mark done the inputs of a chain whose last job writes no rows."""
        if not items:
            return
        last = self.chain[-1].name

        def body() -> None:
            held = self._still_held(items)
            self._finish(held, last, [Outcome(item.data) for item in held])
            if held:
                self._tell(self._on_settled, len(held))

        self._in_transaction(body, len(items))

    def _in_transaction(self, body: Callable[[], T], count: int) -> T:
        """``body`` in one write transaction that renews the run's leases when due; what it
        tells is told once it commits. Rolled back to end a deadlock with another command,
        it runs again (``Ledger.retried``)."""

        def rolled_back(exc: DatabaseConflict) -> None:
            args = (
                "a write of %d input(s) was rolled back to end a deadlock with another command"
                " (%s); writing them again",
                count,
                exc,
            )
            logger.info(*args)
            # In Prefect, beside the job's task run that it ended.
            log_to_flow_run(logging.INFO, *args)
            self._on_rolled_back()

        result, told = self.ledger.retried(
            lambda: self._commit(body), what="a group's write", on_conflict=rolled_back
        )
        for call in told:
            call()
        return result

    def _commit(self, body: Callable[[], T]) -> tuple[T, list[Callable[[], object]]]:
        """``body`` in a write transaction, committed; and what it told, still to tell."""
        started = time.perf_counter()
        told: list[Callable[[], object]] = []
        self._told = told
        try:
            with self.store.transaction():
                result = body()
                self._before_commit()
        finally:
            self._told = None
            self.busy_s += time.perf_counter() - started
        return result, told

    def _tell(self, call: Callable[..., object], *args: object) -> None:
        """``call(*args)`` once the write transaction under way commits; at once outside one."""
        if self._told is None:
            call(*args)
        else:
            self._told.append(lambda: call(*args))

    def _still_held(self, items: Sequence[WorkItem]) -> list[WorkItem]:
        """The inputs whose claim this run still holds. Checked before the first write of
        a group, inside its transaction: an input another command took over (this run's
        lease ran out) gets none of this run's rows, not even those of its first jobs."""
        held = self.ledger.held([item.input_id for item in items if item.input_id is not None])
        kept = [item for item in items if item.input_id in held]
        for item in items:
            if item.input_id not in held:
                self._tell(
                    logger.warning,
                    "%s: its lease ran out and another command took it; this run's result "
                    "was discarded",
                    item.path,
                )
        if len(kept) < len(items):
            self._tell(self._on_settled, len(items) - len(kept))
        return kept

    def _finish(
        self, items: Sequence[WorkItem], job_name: str, outcomes: Sequence[Outcome]
    ) -> None:
        done = []
        for item, outcome in zip(items, outcomes, strict=True):
            facts = item.facts.merge(outcome.facts)
            assert item.input_id is not None
            done.append(
                (
                    item.input_id,
                    Finished(
                        last_job=job_name,
                        batch_id=facts.batch_id,
                        sha256=facts.sha256,
                        records_written=facts.records_written or 0,
                        unchanged=bool(facts.unchanged),
                        size=facts.size,
                        mtime_ns=facts.mtime_ns,
                    ),
                )
            )
        self.ledger.mark_done(done)

    def _fail(self, item: WorkItem, result: JobResult) -> None:
        assert item.input_id is not None
        if result.error_kind == CLAIM_LOST:
            self._tell(
                logger.warning, "%s: %s; this run's result was discarded", item.path, result.error
            )
            return
        retry_in = None
        if result.error_kind != INPUT_ERROR and item.attempts < self.max_attempts:
            retry_in = self.retry_base_seconds * 2 ** (item.attempts - 1)
        args = (
            item.path,
            result.job_name,
            problem(result.error or "", item.path or ""),
            f" (retry in {retry_in:.0f} s)" if retry_in is not None else "",
        )
        self._tell(logger.warning, "%s failed in job %s: %s%s", *args)
        # And in the flow run's logs in Prefect, whatever the terminal shows.
        self._tell(
            log_to_flow_run,
            logging.WARNING if retry_in is not None else logging.ERROR,
            "%s failed in job %s: %s%s",
            *args,
        )
        if retry_in is None:
            self._tell(self._on_failed, 1)
        self.ledger.mark_failed(
            item.input_id,
            job=result.job_name,
            error=result.error or "",
            retry_in=retry_in,
            rejected=rejected_outcome(result.rejected_under) if result.rejected else None,
        )
