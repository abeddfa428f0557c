"""The driver: moves groups of inputs through the chain of jobs.

Jobs that do not touch the database (A) are submitted to the flow's task runner (Dask
workers, or a thread), or to the local lane until the run's own workers have joined; jobs
that do (B, C) go to the writer, in this thread. At most
``in_flight_per_worker`` groups per worker are in flight, and groups are taken from the
source only as others finish, so memory stays flat however many inputs there are. The
driver renews the run's leases while it works and, when the queue has nothing claimable,
waits for the next retry to fall due.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prefect_pipeline.compat import break_future_cycle, cancel_future, forget_task_results
from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.database.ledger import Ledger
from prefect_pipeline.interrupts import check as check_interrupt
from prefect_pipeline.interrupts import run_scope
from prefect_pipeline.jobs.base import UNEXPECTED_ERROR, JobResult
from prefect_pipeline.logs import get_logger
from prefect_pipeline.pipeline.definition import JobSpec
from prefect_pipeline.pipeline.environment import Environment
from prefect_pipeline.pipeline.observe import POLL_SECONDS, NullObserver, RunObserver
from prefect_pipeline.pipeline.options import ParallelOptions
from prefect_pipeline.pipeline.progress import Progress
from prefect_pipeline.pipeline.sources import Source
from prefect_pipeline.pipeline.summary import RunSummary
from prefect_pipeline.pipeline.wrappers import (
    FinishHook,
    Group,
    WorkItem,
    make_job_task,
    run_task,
)
from prefect_pipeline.pipeline.writer import Writer

logger = get_logger("driver")

#: Longest sleep while waiting for a retry to fall due (then the queue is looked at again).
MAX_RETRY_WAIT = 5.0
#: Groups on the local lane at once: one running, one ready. More would wait on its one
#: thread, holding their documents once done, and when the workers join they would stay
#: there; claimed early, they would also make the source look exhausted, and the workers
#: are asked for only while it is not.
LANE_IN_FLIGHT = 2


@dataclass
class Plan:
    """Everything one run needs: handed to the ``run_parallel`` flow, kept in this process."""

    chain: list[JobSpec]
    config: PipelineConfig
    options: ParallelOptions
    ledger: Ledger
    source: Source
    progress: Progress
    started_at: float
    #: The first group, claimed before anything started (it proved there is work).
    primed: list[WorkItem] = field(default_factory=list)
    first_commit_at: float | None = None
    summary: RunSummary = field(default_factory=RunSummary)
    #: What the flow runs on (set once it has started): its task runner, its task slots,
    #: the Prefect UI, and the workers, which start when the run needs them.
    environment: Environment = field(default_factory=Environment)
    #: Where the run is watched (the flow sets a PrefectObserver).
    observer: RunObserver = field(default_factory=NullObserver)


@dataclass
class _InFlight:
    items: list[WorkItem]
    stage: int


class Driver:
    """Runs a ``Plan`` inside the ``run_parallel`` flow."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.chain = plan.chain
        self.clock = plan.options.clock
        self.tasks = [make_job_task(spec) for spec in self.chain]
        self.writer = Writer(
            self.chain,
            plan.ledger,
            self._run_inline,
            max_attempts=plan.options.max_attempts or 1,
            retry_base_seconds=plan.options.retry_base_seconds,
            on_settled=self._settled,
            on_failed=plan.progress.failed,
            before_commit=self._renew_if_due,
            on_rolled_back=self._renew_at_next_commit,
        )
        self.in_flight: dict[Any, _InFlight] = {}
        self.max_in_flight = max(2, plan.options.in_flight_per_worker * plan.environment.slots)
        # Filled by the futures' done callbacks (in Dask's or the pool's thread).
        self._done: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._renew_every = plan.options.lease_seconds / 3
        self._settled_count = 0
        # The leases' clock: the one that decides when they run out.
        self._last_renewal = self.clock.now()
        # Until the run's own workers join, the jobs they will take run on one thread of
        # this process (``_lane``), beside the writer. ``_waited_s``: how long this thread
        # waited for that lane's groups, with nothing to write (what workers could save).
        self._lane: Any = None
        self._waited_s = 0.0
        self._stack = ExitStack()

    def run(self) -> None:
        # Leaving waits for the lane's group in progress, if it has one. When the run stops
        # (a Cancel, an error, a signal), that group ends at job A's next look, between its
        # files and a large file's chunks, instead of running to its end.
        with run_scope() as stopping, self._stack:
            try:
                self._run()
            finally:
                stopping.set()

    def _room(self) -> int:
        """How many groups may be in flight: fewer on the local lane (one thread)."""
        if self.plan.environment.workers_ready():
            return self.max_in_flight
        return LANE_IN_FLIGHT

    def _lane_runner(self) -> Any:
        """The local lane's task runner (started when first needed)."""
        if self._lane is None:
            from prefect.task_runners import ThreadPoolTaskRunner

            self._lane = self._stack.enter_context(ThreadPoolTaskRunner(max_workers=1))
        return self._lane

    def _run(self) -> None:
        source = self.plan.source
        primed, self.plan.primed = self.plan.primed, []
        if primed:
            self._advance(primed, 0)
        while True:
            check_interrupt()
            if self.plan.observer.should_stop():
                self._stop()
                break
            # A Cancel is looked for between groups here too: a run whose groups are all
            # written here (no job that does not write) never waits in between.
            while (
                len(self.in_flight) < self._room()
                and not source.exhausted
                and not self.plan.observer.should_stop()
            ):
                check_interrupt()
                group = source.next_group()
                if group is None:
                    break
                if group:
                    self._advance(group, 0)
            if self.in_flight:
                for future in self._wait_for_done():
                    self._next_stage(future)
            elif source.exhausted or not self._wait_for_retries():
                break
            self._renew_if_due()
            forget_task_results()

    def _stop(self) -> None:
        """A Cancel: take no more groups and drop those in flight (their claims are given
        back when the run ends; a job that does not write leaves nothing to undo)."""
        for future in list(self.in_flight):
            cancel_future(future)
        self.in_flight.clear()
        self.plan.summary.stopped = "cancelled"

    def _run_inline(
        self, stage: int, items: Sequence[WorkItem], finish: FinishHook | None
    ) -> list[JobResult]:
        """A writer stage, run here as its Prefect task (so it shows in Prefect)."""
        options = self.plan.options
        return run_task(self.tasks[stage], Group(items), self.plan.config, options.force, finish)

    def _advance(self, items: list[WorkItem], stage: int) -> None:
        """Write what the writer writes, then submit the next job that does not write, or
        finish the inputs at the end of the chain."""
        if self.writer.is_writer_stage(stage):
            # Inputs that reach the end of the chain here were marked done as they wrote.
            items, stage = self.writer.write(items, stage)
            if stage == len(self.chain):
                return
        if not items:
            return
        if stage < len(self.chain):
            task = self.tasks[stage]
            parameters = {
                "items": Group(items),
                "config": self.plan.config,
                "force": self.plan.options.force,
            }
            if self.plan.environment.workers_ready():
                future = task.submit(**parameters)
            else:
                self._start_workers_if_due()
                future = self._lane_runner().submit(task, parameters)
            self.in_flight[future] = _InFlight(items, stage)
            future.add_done_callback(self._done.put)
        else:  # the chain's last job writes no rows: the writer records the end
            self.writer.finish(items)

    def _start_workers_if_due(self) -> None:
        """Ask for the workers once this process has waited ``workers_after_s`` for the
        local lane's groups and has inputs left to give them: a run that ends sooner (or is
        at its last group) never starts one.

        Only that wait counts. The lane runs the jobs the workers would take on a thread
        beside the writer, so while the writer has work, workers would shorten nothing:
        not the writing, which is not theirs, nor job A, which keeps ahead of it. A run
        whose time goes to its database (a few files of many records) never starts them;
        one whose writer keeps waiting for job A starts them once that wait has cost as
        much as starting them. Waiting for a retry to fall due is not counted either.

        Looked at before each group goes to the lane: a group that takes long (one large
        file) is finished there before the workers are asked for."""
        if self._waited_s >= self.plan.options.workers_after_s and not self.plan.source.exhausted:
            self.plan.environment.start_workers()

    def _next_stage(self, future: Any) -> None:
        # The future (which keeps its result), and the results, are released on return,
        # before the next group's arrive: each can be thousands of documents.
        state = self.in_flight.pop(future)
        results = self._collect(future, state)
        break_future_cycle(future)
        forget_task_results()
        if results is None:  # cancelled with the run: its claims go back with the others
            return
        survivors = self.writer.record(state.items, state.stage, results)
        self._advance(survivors, state.stage + 1)

    def _collect(self, future: Any, state: _InFlight) -> list[JobResult] | None:
        """The group's results; a task that died (e.g. its worker was killed more often than
        Dask allows) fails each of its inputs, with the reason. None for a task that ended
        Cancelled because the run stopped (``make_job_task``): its inputs did not fail."""
        try:
            results = future.result(raise_on_failure=False)
            # The final state, kept by the future once its result is read (no API call).
            if future.state.is_cancelled():
                return None
            if isinstance(results, BaseException):
                raise results
            return list(results)
        except Exception as exc:
            spec = self.chain[state.stage]
            logger.error(
                "job %s lost a group of %d input(s)", spec.name, len(state.items), exc_info=exc
            )
            return [
                JobResult(
                    spec.name,
                    False,
                    error=f"{item.path}: {type(exc).__name__}: {exc}",
                    error_kind=UNEXPECTED_ERROR,
                )
                for item in state.items
            ]

    def _wait_for_done(self) -> list[Any]:
        """The in-flight futures that are done, waiting (at most until leases need renewing,
        or the next look for a Cancel) for at least one."""
        waiting_for_lane = not self.plan.environment.workers_ready()
        started = time.monotonic()
        try:
            done = [self._done.get(timeout=min(max(1.0, self._renew_every), POLL_SECONDS))]
        except queue.Empty:
            return []
        finally:
            if waiting_for_lane:
                self._waited_s += time.monotonic() - started
        while True:
            try:
                done.append(self._done.get_nowait())
            except queue.Empty:
                return [future for future in done if future in self.in_flight]

    def _wait_for_retries(self) -> bool:
        """Nothing in flight and nothing claimable now: sleep until the next waiting retry
        falls due (at most ``MAX_RETRY_WAIT``, then look again). False when none waits."""
        due = self.plan.source.next_due()
        if due is None:
            return False
        delay = min(max((due - self.clock.now()).total_seconds(), 0.05), MAX_RETRY_WAIT)
        self.clock.sleep(delay)
        return True

    def _renew_if_due(self) -> None:
        now = self.clock.now()
        if (now - self._last_renewal).total_seconds() >= self._renew_every:
            self.plan.ledger.renew()
            self._last_renewal = now

    def _renew_at_next_commit(self) -> None:
        # A renewal written in a transaction the database rolled back is gone with it.
        self._last_renewal = self.clock.now() - timedelta(seconds=self._renew_every)

    def _settled(self, count: int) -> None:
        plan = self.plan
        if plan.first_commit_at is None:
            plan.first_commit_at = time.time()
        plan.progress.advance(count)
        self._settled_count += count
        plan.observer.progress(self._settled_count, plan.progress.total)


def drive(plan: Plan) -> RunSummary:
    """Run the plan to the end and read its summary from the database (the body of the
    ``run_parallel`` flow)."""
    driver = Driver(plan)
    try:
        driver.run()
    finally:
        plan.summary.writer_s = driver.writer.busy_s
    return read_summary(plan)


def read_summary(plan: Plan) -> RunSummary:
    """Counts from the database (not from what the tasks returned)."""
    summary = plan.summary
    ledger = plan.ledger
    counts = ledger.run_counts()
    summary.run_id = ledger.run_id
    summary.failed = counts["failed"]
    summary.pending = counts["pending"] + counts["processing"]
    # Those registration skipped, and those that ran and found their content stored.
    unchanged = ledger.run_unchanged()
    # (Read after the counts: an input settled in between is in neither total twice.)
    summary.succeeded = counts["done"] - len(unchanged)
    summary.skipped_inputs = [*plan.source.skipped_inputs, *unchanged]
    summary.ignored_paths = list(plan.source.ignored_paths)
    summary.unreadable_paths = list(plan.source.unreadable_paths)
    summary.skipped = len(summary.skipped_inputs)
    summary.held_inputs = list(plan.source.held_inputs)
    summary.held = len(summary.held_inputs)
    summary.total = summary.succeeded + summary.failed + summary.skipped + summary.held
    summary.records = counts["records"]
    summary.workers_started = plan.environment.workers_started
    summary.dashboard_url = plan.environment.dashboard_url
    summary.failures = ledger.run_failures()
    if plan.first_commit_at is not None:
        summary.startup_s = plan.first_commit_at - plan.started_at
    summary.elapsed_s = time.time() - plan.started_at
    return summary
