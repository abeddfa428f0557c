"""Parallel runs: many inputs fanned out over Dask, one serialized writer.

How a run is put together (each choice answers a measured problem, see the README):

* Inputs travel in *groups*: one Prefect task run per group and job, not per file, so
  orchestration (~100 ms a task run) is paid per group. Groups start small (the first
  input commits quickly) and grow to ``max_group_files`` / ``max_group_bytes``.
* Jobs that do not touch the database (A) run on the Dask workers. Jobs that do (B, C)
  run in this process, one group at a time, while the workers go on with the next groups:
  this thread is the only writer, so SQLite never reports "database is locked" and each
  input's rows and its ledger status commit in one transaction.
* Every input is claimed in ``pipeline_inputs`` before its work starts; the ledger, not
  Prefect's task states, is the record of what was done, and the summary is read from it.
  Dask may run a task again when a worker dies; job A's output is a pure function of the
  file and the writer runs each group once, so a re-run changes nothing.
* At most ``in_flight_per_worker`` groups per worker are in flight, and the file list is
  streamed, so memory stays flat however many inputs there are.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.database.connection import get_database
from prefect_pipeline.database.ledger import Claimed, Ledger
from prefect_pipeline.exceptions import UsageError
from prefect_pipeline.jobs.base import INPUT_ERROR, UNEXPECTED_ERROR, JobResult, Outcome
from prefect_pipeline.jobs.job_a import OUTPUT_SUFFIX
from prefect_pipeline.logs import get_logger
from prefect_pipeline.pipeline.definition import JobSpec, PipelineDefinition, default_pipeline
from prefect_pipeline.pipeline.discovery import (
    Found,
    Ignored,
    folder_output_names,
    iter_inputs,
    output_names,
)
from prefect_pipeline.pipeline.progress import Progress
from prefect_pipeline.pipeline.summary import RunSummary
from prefect_pipeline.pipeline.wrappers import Group, WorkItem, make_job_task

logger = get_logger("parallel")


@dataclass(frozen=True)
class ParallelOptions:
    """How a parallel run fans out. ``workers=0`` runs in this process without Dask."""

    workers: int | None = None
    threads_per_worker: int = 1
    address: str | None = None
    force: bool = False
    #: A claimed input whose lease expires (its command died) may be taken by another one.
    lease_seconds: float = 300.0
    #: Attempts per input before it fails for good (drain-db; run-parallel never retries).
    max_attempts: int = 1
    #: Delay before the first retry; doubles with every attempt.
    retry_base_seconds: float = 5.0
    first_group_files: int = 8
    #: Each group costs a few Prefect task runs (~0.1 s of CPU each, here and in Prefect's
    #: server): on 20,000 small files 2,000 per group took 12 s where 500 took 17-21 s.
    max_group_files: int = 2000
    max_group_bytes: int = 8 * 1024 * 1024
    in_flight_per_worker: int = 2
    progress: bool = False
    #: Epoch seconds the command started (for elapsed and start-up); default: the call.
    started_at: float | None = None


class _GroupSizer:
    """Group sizes that start small and double up to a cap (files and bytes)."""

    def __init__(self, options: ParallelOptions) -> None:
        self.files = options.first_group_files
        self.max_files = options.max_group_files
        self.max_bytes = options.max_group_bytes

    def next_limit(self) -> int:
        current = self.files
        self.files = min(self.files * 2, self.max_files)
        return current


# Sources ---------------------------------------------------------------------------------


class _FileSource:
    """Groups of claimed inputs from a stream of found files."""

    def __init__(
        self,
        found: Iterator[Found | Ignored],
        ledger: Ledger,
        chain: list[JobSpec],
        options: ParallelOptions,
        summary: RunSummary,
        progress: Progress,
    ) -> None:
        self._found = found
        self._ledger = ledger
        self._chain = chain
        self._options = options
        self._sizer = _GroupSizer(options)
        self._summary = summary
        self._progress = progress
        self.exhausted = False

    def next_group(self) -> list[WorkItem] | None:
        if self.exhausted:
            return None
        limit = self._sizer.next_limit()
        group: list[Found] = []
        size = 0
        for entry in self._found:
            if isinstance(entry, Ignored):
                self._summary.ignored_paths.append({"path": entry.path, "reason": entry.reason})
                logger.info("ignored %s: %s", entry.path, entry.reason)
                continue
            group.append(entry)
            size += entry.size
            self._progress.found()
            if len(group) >= limit or size >= self._sizer.max_bytes:
                break
        else:
            self.exhausted = True
        registration = self._ledger.register_and_claim(
            group,
            start_job=self._chain[0].name,
            stop_job=self._chain[-1].name,
            force=self._options.force,
        )
        for path, reason in registration.skipped:
            self._summary.skipped_inputs.append({"input": path, "reason": reason})
        self._progress.advance(len(registration.skipped))
        return [_first_item(self._chain[0], claimed) for claimed in registration.claimed]


class _QueueSource:
    """Groups of inputs claimed from the queue, until ``limit`` were taken."""

    def __init__(
        self,
        ledger: Ledger,
        chain: list[JobSpec],
        options: ParallelOptions,
        limit: int | None,
        progress: Progress,
    ) -> None:
        self._ledger = ledger
        self._chain = chain
        self._options = options
        self._sizer = _GroupSizer(options)
        self._left = limit
        self._progress = progress
        self.exhausted = False

    def next_group(self) -> list[WorkItem] | None:
        if self._left is not None and self._left <= 0:
            self.exhausted = True
            return None
        size = self._sizer.next_limit()
        if self._left is not None:
            size = min(size, self._left)
        claimed = self._ledger.claim_pending(
            size,
            max_attempts=self._options.max_attempts,
            start_job=self._chain[0].name,
            stop_job=self._chain[-1].name,
            max_bytes=self._sizer.max_bytes,
        )
        if not claimed:
            return None
        if self._left is not None:
            self._left -= len(claimed)
        self._progress.found(len(claimed))
        return [_first_item(self._chain[0], c) for c in claimed]


def _first_item(first_job: JobSpec, claimed: Claimed) -> WorkItem:
    # File jobs (A) are told where their JSON goes; database jobs (B) read the file given.
    data: Any = claimed.path
    if not first_job.uses_database:
        data = {"path": claimed.path, "output_path": claimed.output_path}
    return WorkItem(data, input_id=claimed.input_id, path=claimed.path, attempts=claimed.attempts)


# The driver --------------------------------------------------------------------------------


@dataclass
class _InFlight:
    items: list[WorkItem]
    stage: int


@dataclass
class _Plan:
    """Everything a run needs; handed to the flow as one opaque parameter."""

    chain: list[JobSpec]
    config: PipelineConfig
    options: ParallelOptions
    ledger: Ledger
    source: Any
    progress: Progress
    summary: RunSummary
    started_at: float
    first_commit_at: float | None = None
    workers: int = 1


class _Local:
    """Holds the plan for the flow without letting it travel: Prefect sends the flow run's
    context (its parameters included) to every Dask worker, and the plan holds this
    process's database connection, which must not cross a process boundary."""

    def __init__(self, plan: _Plan | None) -> None:
        self.plan = plan

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Local, (None,))

    def __repr__(self) -> str:
        return "<plan>"


class _Driver:
    """Moves groups through the chain: fan-out jobs on the task runner, writer jobs here."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.chain = plan.chain
        self.tasks = [
            make_job_task(
                spec,
                retries=plan.config.retries,
                retry_delay_seconds=plan.config.retry_delay_seconds,
            )
            for spec in self.chain
        ]
        self.in_flight: dict[Any, _InFlight] = {}
        self.max_in_flight = max(2, plan.options.in_flight_per_worker * plan.workers)
        self._renew_every = plan.options.lease_seconds / 3
        self._last_renewal = time.monotonic()
        self._done_event = threading.Event()

    def run(self) -> None:
        source = self.plan.source
        while True:
            while len(self.in_flight) < self.max_in_flight and not source.exhausted:
                group = source.next_group()
                if group is None:
                    break
                if group:
                    self._advance(group, 0)
            if self.in_flight:
                done = self._wait_first()
                while done:
                    self._next_stage(done.pop())
            elif source.exhausted or not self._wait_for_retries():
                break
            self._renew_if_due()
            _forget_task_results()

    def _next_stage(self, future: Any) -> None:
        # The future (which keeps its result), and the results, are released on return,
        # before the next group's arrive: each can be thousands of documents.
        state = self.in_flight.pop(future)
        results = self._collect(future, state)
        _break_future_cycle(future)
        _forget_task_results()
        survivors = self._handle(state.items, state.stage, results)
        self._advance(survivors, state.stage + 1)

    def _wait_for_retries(self) -> bool:
        """Nothing in flight and nothing claimable now: sleep until the next waiting retry
        falls due (at most 5 s, then look again). False when none is waiting."""
        due = self.plan.ledger.next_due()
        if due is None:
            return False
        from datetime import UTC, datetime

        delay = (datetime.fromisoformat(due) - datetime.now(UTC)).total_seconds()
        time.sleep(min(max(delay, 0.05), 5.0))
        return True

    def _advance(self, items: list[WorkItem], stage: int) -> None:
        """Run writer jobs inline until a fan-out job (submitted) or the end of the chain.

        The writer jobs of a group share one ``IMMEDIATE`` transaction (each input's writes
        a savepoint of it): one commit per group instead of two per input.
        """
        if stage < len(self.chain) and self.chain[stage].uses_database:
            with self.plan.ledger.db.atomic("IMMEDIATE"):
                items, stage = self._write(items, stage)
        self._submit_or_finish(items, stage)

    def _write(self, items: list[WorkItem], stage: int) -> tuple[list[WorkItem], int]:
        """Run the consecutive database jobs from ``stage`` on ``items``, here."""
        while items and stage < len(self.chain) and self.chain[stage].uses_database:
            last = stage == len(self.chain) - 1
            results = self.tasks[stage](
                Group(items),
                self.plan.config,
                self.plan.options.force,
                self._finish if last else None,
            )
            items = self._handle(items, stage, results)
            stage += 1
        return items, stage

    def _submit_or_finish(self, items: list[WorkItem], stage: int) -> None:
        """Send a group to its next file job, or record the end of a chain whose last job
        wrote no rows (``_write`` leaves ``stage`` at a file job or at the end)."""
        if not items:
            return
        if stage < len(self.chain):
            future = self.tasks[stage].submit(
                Group(items), self.plan.config, self.plan.options.force
            )
            self.in_flight[future] = _InFlight(items, stage)
            wrapped = future.wrapped_future  # type: ignore[attr-defined]
            wrapped.add_done_callback(lambda _: self._done_event.set())
        elif not self.chain[-1].uses_database:
            with self.plan.ledger.db.atomic("IMMEDIATE"):
                for item in items:
                    self._finish(item, self.chain[-1].name, Outcome(item.data))
            self._finished(len(items))

    def _finish(self, item: WorkItem, job_name: str, outcome: Outcome) -> None:
        facts = {**item.facts, **outcome.details}
        assert item.input_id is not None
        self.plan.ledger.mark_done(
            item.input_id,
            last_job=job_name,
            batch_id=facts.get("batch_id"),
            sha256=facts.get("sha256"),
            records_written=int(facts.get("records_written", 0)),
            unchanged=bool(facts.get("unchanged", False)),
        )

    def _handle(
        self, items: list[WorkItem], stage: int, results: list[JobResult]
    ) -> list[WorkItem]:
        """Record failures; return the items that go on to the next job."""
        survivors = []
        failed = 0
        last = stage == len(self.chain) - 1
        for item, result in zip(items, results, strict=True):
            if result.success:
                survivors.append(item.advance(result.output, result.details))
                continue
            failed += 1
            self._fail(item, result)
        if last and self.chain[stage].uses_database:
            self._finished(len(survivors))
        self._finished(failed)
        return survivors

    def _fail(self, item: WorkItem, result: JobResult) -> None:
        options = self.plan.options
        retry_in = None
        if result.error_kind != INPUT_ERROR and item.attempts < options.max_attempts:
            retry_in = options.retry_base_seconds * 2 ** (item.attempts - 1)
        assert item.input_id is not None
        logger.warning(
            "%s failed in job %s: %s%s",
            item.path,
            result.job_name,
            result.error,
            f" (retry in {retry_in:.0f} s)" if retry_in is not None else "",
        )
        self.plan.ledger.mark_failed(
            item.input_id, job=result.job_name, error=result.error or "", retry_in=retry_in
        )

    def _finished(self, count: int) -> None:
        if count:
            if self.plan.first_commit_at is None:
                self.plan.first_commit_at = time.time()
            self.plan.progress.advance(count)

    def _collect(self, future: Any, state: _InFlight) -> list[JobResult]:
        """The group's results; a task that died (e.g. its worker was killed more often than
        Dask allows) fails each of its inputs, with the reason."""
        try:
            return list(future.result())
        except Exception as exc:
            spec = self.chain[state.stage]
            logger.warning(
                "job %s lost a group of %d input(s): %s", spec.name, len(state.items), exc
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

    def _wait_first(self) -> list[Any]:
        """The in-flight futures that are done, waiting (at most until leases need renewing)
        for at least one. Works for Dask and thread-pool futures alike."""
        while True:
            done = [future for future in self.in_flight if future.wrapped_future.done()]
            if done:
                return done
            self._done_event.clear()
            if not self._done_event.wait(timeout=max(1.0, self._renew_every)):
                return []

    def _renew_if_due(self) -> None:
        if time.monotonic() - self._last_renewal >= self._renew_every:
            self.plan.ledger.renew()
            self._last_renewal = time.monotonic()


def _break_future_cycle(future: Any) -> None:
    """Let a finished thread-pool task's result go when its future does.

    A ``PrefectConcurrentFuture`` and the ``concurrent.futures.Future`` it wraps refer to each
    other (the latter's done callbacks hold a bound method of the former), and the pair holds
    the task's final state with its result. Only Python's cyclic collector frees a cycle, and
    a task that returns a few big strings allocates too few objects to set it off: an
    in-process run (``workers=0``) kept every group's documents to the end, 1 GB on the W3
    benchmark. The callbacks have all run once the future is done. Dask futures do not form
    this cycle and are left as they are.
    """
    wrapped = getattr(future, "wrapped_future", None)
    if isinstance(wrapped, concurrent.futures.Future) and wrapped.done():
        callbacks = getattr(wrapped, "_done_callbacks", None)  # private, hence the care
        if isinstance(callbacks, list):
            callbacks.clear()


def _forget_task_results() -> None:
    """Let Prefect drop the results of finished task runs.

    A flow run keeps every task result it has seen (``FlowRunContext.run_results``, used to
    link a value passed to a later task back to the task that made it). Here each result is
    a group's documents, consumed at once and never passed on as such: kept, they would make
    memory grow with the size of the whole run.
    """
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is not None:
        context.run_results.clear()


def drive(plan: _Plan) -> RunSummary:
    """Run the plan to the end and read its summary from the database (the body of the
    ``run_parallel`` flow)."""
    _Driver(plan).run()
    return _read_summary(plan)


def _read_summary(plan: _Plan) -> RunSummary:
    """Counts from the database (not from what the tasks returned)."""
    summary = plan.summary
    counts = plan.ledger.run_counts()
    summary.run_id = plan.ledger.run_id
    summary.succeeded = counts["done"] - counts["unchanged"]
    summary.failed = counts["failed"]
    summary.pending = counts["pending"] + counts["processing"]
    summary.skipped = len(summary.skipped_inputs) + counts["unchanged"]
    summary.total = summary.succeeded + summary.failed + summary.skipped
    summary.records = counts["records"]
    summary.failures = plan.ledger.run_failures()
    if plan.first_commit_at is not None:
        summary.startup_s = plan.first_commit_at - plan.started_at
    summary.elapsed_s = time.time() - plan.started_at
    return summary


# Entry points -----------------------------------------------------------------------------


def _chain(
    definition: PipelineDefinition | None, start_from: str | None, stop_after: str | None
) -> list[JobSpec]:
    chain = (definition or default_pipeline()).job_range(start_from, stop_after)
    if chain[0].name == "C" or (chain[0].uses_database and chain[0].name != "B"):
        raise UsageError(
            f"job {chain[0].name} takes batch ids, not files: it has no directory form "
            "(use `pipeline run ID --start-from C`)"
        )
    return chain


def _execute(plan: _Plan, description: str) -> RunSummary:
    """Start the Prefect API and the cluster, run the flow, and give back claimed inputs if
    the run is interrupted.

    Start-up is ordered for overlap, each part taking seconds on its own: the temporary
    Prefect server's process starts first, then the Dask cluster (in a thread), and only
    then does this process import Prefect.
    """
    from prefect_pipeline.pipeline.cluster import DaskCluster
    from prefect_pipeline.pipeline.server import PrefectApi

    options = plan.options
    try:
        with PrefectApi() as api:
            if options.workers == 0:
                from prefect.task_runners import ThreadPoolTaskRunner

                api.wait()
                plan.workers = 1
                return _call_flow(plan, description, ThreadPoolTaskRunner(max_workers=1))
            with DaskCluster(
                workers=options.workers if not options.address else None,
                threads_per_worker=options.threads_per_worker,
                address=options.address,
            ).start_in_background() as cluster:
                from prefect_pipeline.pipeline import flows  # noqa: F401 - Prefect, meanwhile

                api.wait()
                cluster.wait()
                plan.workers = cluster.workers * cluster.threads_per_worker
                return _call_flow(plan, description, cluster.task_runner())
    except BaseException:
        released = plan.ledger.release()
        if released:
            logger.warning("gave back %d claimed input(s); they are pending again", released)
        raise


def _call_flow(plan: _Plan, description: str, task_runner: Any) -> RunSummary:
    from prefect_pipeline.pipeline.flows import run_parallel

    with plan.progress:
        state = run_parallel.with_options(task_runner=task_runner)(
            description, _Local(plan), return_state=True
        )
    summary = state.result(raise_on_failure=False)  # type: ignore[union-attr, attr-defined]
    if not isinstance(summary, RunSummary):  # the flow itself crashed
        raise summary if isinstance(summary, BaseException) else RuntimeError(str(summary))
    return summary


def run_parallel_from_files(
    paths: Path | str | Iterable[Path | str],
    config: PipelineConfig,
    *,
    definition: PipelineDefinition | None = None,
    start_from: str | None = None,
    stop_after: str | None = None,
    pattern: str | None = None,
    recursive: bool = True,
    options: ParallelOptions | None = None,
    **option_overrides: Any,
) -> RunSummary:
    """Run the chain over every matching file under a directory (or over given files).

    ``pattern`` is matched against file names like ``find -name`` (default ``*``, or
    ``*_processed.json`` when starting from B). Returns the ``RunSummary``.
    """
    options = _options(options, option_overrides)
    chain = _chain(definition, start_from, stop_after)
    if pattern is None:
        pattern = "*" if chain[0].name == "A" or not chain[0].uses_database else f"*{OUTPUT_SUFFIX}"
    started = options.started_at or time.time()
    if isinstance(paths, str | os.PathLike):
        # Job A's own output is never its input; starting from B, it is exactly the input.
        writes_json = not chain[0].uses_database
        found: Iterator[Found | Ignored] = iter_inputs(
            paths,
            config.output_dir,
            pattern=pattern,
            recursive=recursive,
            exclude=[*([config.output_dir] if writes_json else []), *database_files(config)],
        )
        description = f"{Path(paths)} ({pattern})"
    else:
        found = given_files(paths, config)
        description = "given files"
    found = _peek(found)  # a missing directory is a usage error before anything starts
    ledger = Ledger(
        get_database(config.db_path, config.db_timeout), lease_seconds=options.lease_seconds
    )
    summary = RunSummary()
    progress = Progress(options.progress)
    source = _FileSource(found, ledger, chain, options, summary, progress)
    plan = _Plan(chain, config, options, ledger, source, progress, summary, started)
    return _execute(plan, description)


def run_parallel_from_database(
    config: PipelineConfig,
    *,
    definition: PipelineDefinition | None = None,
    start_from: str | None = None,
    stop_after: str | None = None,
    limit: int | None = None,
    options: ParallelOptions | None = None,
    **option_overrides: Any,
) -> RunSummary:
    """Claim queued inputs (``pipeline enqueue``) and run the chain on them until nothing
    is left that may run (retries falling due meanwhile are waited for) or ``limit`` were
    taken. Returns the ``RunSummary``."""
    option_overrides.setdefault("max_attempts", 3)
    options = _options(options, option_overrides)
    chain = _chain(definition, start_from, stop_after)
    started = options.started_at or time.time()
    ledger = Ledger(
        get_database(config.db_path, config.db_timeout), lease_seconds=options.lease_seconds
    )
    progress = Progress(options.progress)
    source = _QueueSource(ledger, chain, options, limit, progress)
    plan = _Plan(chain, config, options, ledger, source, progress, RunSummary(), started)
    return _execute(plan, "queued inputs")


def _options(options: ParallelOptions | None, overrides: dict[str, Any]) -> ParallelOptions:
    from dataclasses import replace

    base = options or ParallelOptions()
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def database_files(config: PipelineConfig) -> list[Path]:
    """The database and its companion files: never inputs, even inside the input folder."""
    db = Path(config.db_path)
    return [db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}-journal")]


def given_files(paths: Iterable[Path | str], config: PipelineConfig) -> Iterator[Found | Ignored]:
    """Found entries for explicit files; their JSON mirrors each file's absolute folder and
    is named as discovery names it (the stems of the folder's other files count)."""
    names_in: dict[Path, dict[str, str]] = {}
    for raw in paths:
        path = Path(os.path.abspath(raw))
        try:
            st = path.stat()
        except OSError:
            st = None
        folder = config.output_dir / path.parent.relative_to(path.anchor)
        if path.parent not in names_in:
            names_in[path.parent] = folder_output_names(path.parent)
        name = names_in[path.parent].get(path.name) or output_names([path.name])[path.name]
        yield Found(
            str(path), str(folder / name), st.st_size if st else 0, st.st_mtime_ns if st else 0
        )


def _peek(found: Iterator[Found | Ignored]) -> Iterator[Found | Ignored]:
    """Start the generator now so that its argument checks raise before any start-up."""
    first = next(found, None)

    def chained() -> Iterator[Found | Ignored]:
        if first is not None:
            yield first
        yield from found

    return chained()


__all__ = [
    "ParallelOptions",
    "RunSummary",
    "drive",
    "run_parallel_from_database",
    "run_parallel_from_files",
]
