"""Runs over many inputs: the entry points of ``run-parallel`` and ``drain-db``.

Each entry point checks its request (before anything starts), builds the run's plan (a
source of claimed inputs, the ledger, the job chain), starts the run's environment (the
Prefect API and the Dask cluster) and runs the ``run_parallel`` flow, whose body is the
driver. How the parts fit, and why, is in the README's "How it works".
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prefect_pipeline.config import DEFAULT_MAX_ATTEMPTS, PipelineConfig
from prefect_pipeline.database.backends import open_store
from prefect_pipeline.database.ledger import Ledger
from prefect_pipeline.database.queue import queued
from prefect_pipeline.exceptions import (
    DatabaseUnavailable,
    Interrupted,
    OutputFolderError,
    RunError,
)
from prefect_pipeline.interrupts import caused_by_interrupt, received
from prefect_pipeline.jobs.base import Kind
from prefect_pipeline.jobs.output_file import output_folder_problem
from prefect_pipeline.logs import get_logger
from prefect_pipeline.pipeline.cluster import silence_teardown
from prefect_pipeline.pipeline.definition import PipelineDefinition, default_pipeline
from prefect_pipeline.pipeline.discovery import Found, Ignored, given_files, iter_inputs
from prefect_pipeline.pipeline.driver import Plan, read_summary
from prefect_pipeline.pipeline.environment import describe_environment, run_environment
from prefect_pipeline.pipeline.options import ParallelOptions
from prefect_pipeline.pipeline.progress import Progress
from prefect_pipeline.pipeline.sources import FileSource, QueueSource
from prefect_pipeline.pipeline.summary import RunSummary

logger = get_logger("parallel")


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

    ``pattern`` is matched against file names like ``find -name`` (default: what the first
    job takes, e.g. ``*`` for job A, ``*_processed.json`` for job B). Returns the
    ``RunSummary``.
    """
    options = (options or ParallelOptions()).with_overrides(option_overrides)
    options.check()
    if options.max_attempts is None:
        options = options.with_overrides({"max_attempts": 1})  # a folder run never retries
    chain = (definition or default_pipeline()).path_range(start_from, stop_after)
    first = chain[0]
    if pattern is None:
        pattern = first.input_pattern
    started = options.started_at or time.time()
    if isinstance(paths, str | os.PathLike):
        # A job that takes files writes its output under the output directory, which must
        # not become its input; a job that takes documents reads them from there.
        outputs_are_inputs = first.takes is not Kind.FILE
        excluded = [*config.database.local_files()]
        if not outputs_are_inputs:
            excluded.append(config.output_dir)
        found: Iterator[Found | Ignored] = iter_inputs(
            paths, config.output_dir, pattern=pattern, recursive=recursive, exclude=excluded
        )
        source_name = os.path.abspath(paths)
    else:
        paths = list(paths)  # walked again to count what an interrupted run did not reach
        found = given_files(paths, config.output_dir)
        source_name = "given files"
    found = _peek(found)  # a missing directory is a usage error before anything starts
    ledger = _ledger(config, options)
    progress = Progress(options.progress, started_at=started)

    def inputs() -> Iterator[Found]:
        """The same walk as discovery's, over the inputs only."""
        if isinstance(paths, str | os.PathLike):
            entries = iter_inputs(
                paths, config.output_dir, pattern=pattern, recursive=recursive, exclude=excluded
            )
        else:
            entries = given_files(paths, config.output_dir)
        return (entry for entry in entries if isinstance(entry, Found))

    if isinstance(paths, str | os.PathLike):
        # Counted in a thread while the run starts: the display's total is then fixed
        # instead of growing as groups are taken.
        progress.count(inputs)

    def not_reached(summary: RunSummary) -> int | None:
        # Every input found reached the ledger (run, skipped or held), or is pending again;
        # the rest were never looked at. Counted by the display's own walk if it has one,
        # else again: the run's own walk may have been stopped inside, and cannot go on.
        if progress.counting:
            counted = progress.total_within(RECOUNT_SECONDS)
        else:
            counted = _count_within(inputs)
        if counted is None:
            return None
        return max(0, counted - summary.total - summary.pending)

    source = FileSource(found, ledger, chain, options, progress)
    plan = Plan(chain, config, options, ledger, source, progress, started)
    shown = _shown_options(chain, options, pattern=pattern, recursive=recursive)
    return _execute(plan, "run-parallel", source_name, shown, not_reached)


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
    options = (options or ParallelOptions()).with_overrides(option_overrides)
    options.check()
    if options.max_attempts is None:
        options = options.with_overrides({"max_attempts": DEFAULT_MAX_ATTEMPTS})
    chain = (definition or default_pipeline()).path_range(start_from, stop_after)
    started = options.started_at or time.time()
    ledger = _ledger(config, options)
    progress = Progress(options.progress, started_at=started)
    if progress.enabled:
        # The display's total: what is queued now (pending, or held by a command that
        # died), up to --limit. Retries that fall due during the run add to it.
        waiting = queued(ledger.store, clock=options.clock)
        progress.set_total(waiting if limit is None else min(waiting, limit))
    source = QueueSource(ledger, chain, options, limit, progress)
    plan = Plan(chain, config, options, ledger, source, progress, started)

    def not_reached(summary: RunSummary) -> int:
        # Still queued once the claims are back, but for this run's own (pending again, or
        # waiting for a retry): in the summary already. Within what --limit left to take.
        waiting = max(0, queued(ledger.store, clock=options.clock) - summary.pending)
        if limit is None:
            return waiting
        return max(0, min(waiting, limit - summary.total - summary.pending))

    shown = _shown_options(chain, options, limit=limit)
    return _execute(plan, "drain-db", config.database.display, shown, not_reached)


def _shown_options(chain: list[Any], options: ParallelOptions, **more: Any) -> dict[str, Any]:
    """What the flow run's parameters show of the request (JSON, no secrets)."""
    return {
        "jobs": [spec.name for spec in chain],
        "workers": options.workers,
        "threads_per_worker": options.threads_per_worker,
        "workers_after": options.workers_after_s,
        "address": options.address,
        "force": options.force,
        "lease_seconds": options.lease_seconds,
        "max_attempts": options.max_attempts,
        "retry_delay": options.retry_base_seconds,
        **more,
    }


def _ledger(config: PipelineConfig, options: ParallelOptions) -> Ledger:
    store = open_store(config.database, timeout=config.db_timeout)
    return Ledger(
        store,
        lease_seconds=options.lease_seconds,
        clock=options.clock,
        max_line_bytes=config.max_line_bytes,
    )


def _execute(
    plan: Plan,
    command: str,
    source: str,
    shown: dict[str, Any],
    not_reached: Callable[[RunSummary], int | None],
) -> RunSummary:
    """Claim the first group; if there is work, check the Prefect API, start the run's
    environment and run the flow. Claimed inputs are given back if the run does not end
    normally, and its summary then says how many inputs it did not reach (``not_reached``,
    asked once the claims are back).

    Discovery and the ledger decide whether anything needs running before the Prefect API
    and the cluster start: a run with nothing to do (every input unchanged, an empty queue)
    reads its summary without starting either, or importing Prefect.
    """
    reported: RunSummary | None = None  # the run's end, once said
    plan.summary.command = command
    try:
        plan.primed = _first_group(plan)
        if not plan.primed and plan.source.next_due() is None:
            return _reported(plan, read_summary(plan))
        if command == "drain-db":
            _check_queued_outputs(plan)
        _check_api(plan)
        # What starts, said before the display's first frame (which then shows it), and
        # the display before anything starts: processes inherit its capture of stderr.
        plan.progress.starting(describe_environment(plan.options))
        # Prefect is imported in run_environment, once the temporary server's process has
        # started (its start-up is the longest): not before, with the flows module, which
        # is imported there too, while the server and the cluster start.
        with plan.progress, run_environment(plan.options, meanwhile=_import_flows) as environment:
            from prefect_pipeline.pipeline.flows import end_interrupted, start_parallel

            plan.progress.ready()
            plan.environment = environment
            try:
                state = start_parallel(plan, command, source, shown)
                summary = state.result(raise_on_failure=False)
                if not isinstance(summary, RunSummary):  # the flow itself crashed
                    raise summary if isinstance(summary, BaseException) else RuntimeError(summary)
            except BaseException as exc:
                if not caused_by_interrupt(exc):
                    raise
                # Ctrl-C or SIGTERM: the claims go back and the summary is printed
                # before the cluster and the server stop (seconds a supervisor may not
                # wait: it sends SIGKILL 10-30 s after its SIGTERM).
                stopped = _stopped(plan, read_summary(plan), "interrupted", not_reached)
                end_interrupted(stopped.summary.flow_run_id, stopped.summary.total)
                raise stopped from None
            if summary.stopped:  # cancelled in Prefect
                raise _stopped(plan, summary, summary.stopped, not_reached)
            if received():  # its KeyboardInterrupt was lost in a finalizer
                raise _stopped(plan, summary, "interrupted", not_reached)
            if summary.pending:
                # Claims the run ended with (a group its job dropped, not failed):
                # pending again now, not when their lease runs out.
                _give_back(plan)
            # The last frame shows the summary's figures, and the display ends before
            # the summary is printed (while the cluster and the server stop).
            plan.progress.finish(summary)
            # Before it is printed: a signal that lands as the line goes out (a
            # reader that stops the command once it has the summary) finds it ended.
            reported = summary
            _reported(plan, summary)
        return summary
    except Interrupted:
        raise
    except BaseException as exc:
        if reported is not None and caused_by_interrupt(exc):
            # Ctrl-C or SIGTERM while the cluster and the server stopped, the run ended and
            # its summary shown: the result stands (the command exits with its code), and
            # what the teardown cut short says nothing more.
            silence_teardown()
            raise Interrupted(reported, "after its end") from None
        _give_back(plan)
        if not caused_by_interrupt(exc):
            raise
        summary = read_summary(plan)
        summary.stopped = "interrupted"
        summary.not_reached = _not_reached(not_reached, summary)
        raise Interrupted(summary) from None


def _import_flows() -> None:
    # The rest of the flows module, 0.15-0.3 s of CPU once Prefect is imported. Given to
    # run_environment, which cannot import it itself: flows imports the driver, which
    # imports the environment.
    import prefect_pipeline.pipeline.flows  # noqa: F401


def _stopped(
    plan: Plan, summary: RunSummary, how: str, not_reached: Callable[[RunSummary], int | None]
) -> Interrupted:
    """A run that stops before its end: its claims given back, its summary shown (the
    display's last frame, then the summary) - the ``Interrupted`` to raise."""
    _give_back(plan)
    summary.stopped = how
    summary.not_reached = _not_reached(not_reached, summary)
    if summary.flow_run_id is None:  # the flow run's, if it started
        summary.flow_run_id = getattr(plan.observer, "flow_run_id", None)
        summary.flow_run_url = getattr(plan.observer, "url", None)
    plan.progress.finish(summary)
    _reported(plan, summary)
    return Interrupted(summary, how)


#: How long an interrupted run may walk its folder again to count what it did not reach:
#: a few hundred thousand files. A supervisor's SIGKILL follows its SIGTERM in 10-30 s,
#: and the summary, then the cluster's and the server's stop, come after the count.
RECOUNT_SECONDS = 1.0


def _count_within(
    items: Callable[[], Iterable[object]], seconds: float = RECOUNT_SECONDS
) -> int | None:
    """How many ``items()`` there are, or None when counting them takes over ``seconds``
    (or fails). Counted in a thread, waited for at most that long: a walk spends its time
    between the items it yields too (folders of files the pattern does not take, a slow
    network file system)."""
    counted: list[int] = []

    def count() -> None:
        counted.append(sum(1 for _ in items()))

    thread = threading.Thread(target=count, name="count-not-reached", daemon=True)
    thread.start()
    thread.join(seconds)
    return counted[0] if counted else None


def _not_reached(count: Callable[[RunSummary], int | None], summary: RunSummary) -> int | None:
    try:
        return count(summary)
    except Exception as exc:
        # The summary of what was done matters more than this one figure, which is then
        # unknown (not 0: that would say nothing was left).
        logger.warning("could not count the inputs this run did not reach: %s", exc)
        return None


def _reported(plan: Plan, summary: RunSummary) -> RunSummary:
    if plan.options.report is not None:
        plan.options.report(summary)
    return summary


def _give_back(plan: Plan) -> None:
    try:
        released = plan.ledger.release()
    except DatabaseUnavailable as exc:
        # The error that stopped the run is the one to report; the claims are taken over
        # at once by the next command on this host (this process is gone by then), or by
        # any command when their leases run out.
        logger.warning("could not give back this run's claims: %s", exc)
        return
    if released:
        logger.warning("gave back %d claimed input(s); they are pending again", released)


def _check_api(plan: Plan) -> None:
    """A configured Prefect API (``PREFECT_API_URL``, or the Prefect profile's) answers, or
    the run stops here, before anything starts: one line, and the inputs just claimed are
    pending again (nothing ran: no warning about them)."""
    from prefect_pipeline.pipeline.server import check_configured_api

    try:
        check_configured_api()
    except RunError as exc:
        # Found and registered before the API was asked (a run with nothing to do needs
        # none): they stay in the ledger, where a later run, or drain-db, takes them.
        raise RunError(_given_back_before_start(plan, str(exc))) from None


def _check_queued_outputs(plan: Plan) -> None:
    """The folders the first inputs claimed write their JSON in (chosen when they were
    queued, under enqueue's --output-dir: not this command's), or the run stops here,
    before anything starts, when none of them can take a file: one line, exit 2, the
    claims given back (pending again, their attempts not counted), for the drain after
    the folder is fixed. When only some cannot, their inputs fail one by one, each with
    its own line, and the others run."""
    if not plan.chain[0].job_class.writes_output:
        return
    folders = {
        Path(item.data["output_path"]).parent
        for item in plan.primed
        if isinstance(item.data, dict) and item.data.get("output_path")
    }
    first: str | None = None
    for folder in sorted(folders):
        problem = output_folder_problem(folder)
        if problem is None:
            return  # one that can: the run goes on
        first = first or f"{folder}: {problem}"
    if first is not None:
        where = "where enqueue's --output-dir put the queued inputs' JSON"
        raise OutputFolderError(_given_back_before_start(plan, f"{first} ({where})"))


def _given_back_before_start(plan: Plan, message: str) -> str:
    """``message`` of a run refused before anything started, once the inputs it claimed
    are given back (pending again, their attempts not counted), saying so if there were."""
    released = plan.ledger.release()
    if not released:
        return message
    return f"{message}; the {released} input(s) this run took are pending in the database"


def _first_group(plan: Plan) -> list[Any]:
    """The first group with inputs to run, claimed ([] when there is none now)."""
    while True:
        group = plan.source.next_group()
        if group is None:
            return []
        if group or plan.source.exhausted:
            return group


def _peek(found: Iterator[Found | Ignored]) -> Iterator[Found | Ignored]:
    """Start the generator now so that its argument checks raise before any start-up."""
    first = next(found, None)

    def chained() -> Iterator[Found | Ignored]:
        if first is not None:
            yield first
        yield from found

    return chained()


__all__ = ["ParallelOptions", "RunSummary", "run_parallel_from_database", "run_parallel_from_files"]
