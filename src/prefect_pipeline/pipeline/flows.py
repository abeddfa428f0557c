"""``run_pipeline``: single-input runs, whatever the job range, as the Prefect flow
``run-pipeline``; ``run_parallel``: runs over many inputs.

``PipelineDefinition`` lives in ``definition.py`` (importable without Prefect) and is
re-exported here, where the design documents place it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefect import flow
from prefect.states import Cancelled, Failed

from prefect_pipeline.compat import (
    plain_http_clients,
    prompt_heartbeat_stop,
    quiet_drain_progress,
)
from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.exceptions import Interrupted
from prefect_pipeline.interrupts import caused_by_interrupt
from prefect_pipeline.logs import INTERRUPTED_STATES, get_logger
from prefect_pipeline.pipeline.definition import JobSpec, PipelineDefinition, default_pipeline
from prefect_pipeline.pipeline.observe import PrefectObserver
from prefect_pipeline.pipeline.single import PipelineResult, precheck
from prefect_pipeline.pipeline.summary import RunSummary
from prefect_pipeline.pipeline.wrappers import Group, WorkItem, make_job_task, run_task

if TYPE_CHECKING:
    # The driver (the ledger, Peewee and its PostgreSQL driver: 12-15 MB) runs in the
    # command only; a Dask worker imports this module to unpickle its flow, not to drive.
    from prefect_pipeline.pipeline.driver import Plan

logger = get_logger("flows")

# Before this process makes its first Prefect client (its flow runs' own, their log and
# event workers'): see ``plain_http_clients``.
plain_http_clients()
# Every flow run of this module ends when its work does, not up to 1 s later; what it
# sent last is still queued then, and its drain at exit is no warning.
prompt_heartbeat_stop()
quiet_drain_progress()

__all__ = [
    "PipelineDefinition",
    "PipelineResult",
    "default_pipeline",
    "run_parallel",
    "run_pipeline",
    "run_pipeline_flow",
    "single_run_parameters",
    "start_parallel",
]


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    jobs = params.get("jobs") or []
    return f"pipeline {'-'.join(jobs)}: {params.get('input', '')}"[:120]


@dataclass(frozen=True)
class _SingleRun:
    """What one single-input run works on, kept in this process."""

    input_data: Any
    jobs: list[JobSpec]
    config: PipelineConfig
    force: bool


#: The single-input runs this process is about to run, by run key. Prefect stores a flow
#: run's parameters and shows them in its UI: the configuration's database URL may hold a
#: password, an input may be a whole document, and job classes are no JSON. So the flow's
#: parameters only name them (``single_run_parameters``), and the flow finds them here.
_SINGLE_RUNS: dict[str, _SingleRun] = {}
#: What each of them has done so far (the jobs that ended), by run key: an interrupted
#: run's ``Interrupted`` carries it.
_SINGLE_OUTCOMES: dict[str, PipelineResult] = {}


def cancel_if_interrupted(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_crashed`` of ``run-pipeline``: Prefect calls it as it marks the flow run Crashed
    (wherever the interrupt landed, before the flow's body too); a crash that a Ctrl-C or
    SIGTERM caused ends Cancelled instead (``end_interrupted``)."""
    if getattr(state, "message", None) in INTERRUPTED_STATES:
        end_interrupted(flow_run.id)


def single_run_parameters(
    input_data: Any,
    jobs: list[JobSpec],
    config: PipelineConfig,
    *,
    force: bool = False,
    run_key: str = "",
    job_names: list[str] | None = None,
    input_label: str = "",
) -> dict[str, Any]:
    """The parameters of a ``run-pipeline`` flow run, as Prefect stores and shows them:
    JSON a person can read, never a password (the database in its display form) nor an
    input's content (a document is named by its source path)."""
    return {
        "jobs": list(job_names) if job_names else [spec.name for spec in jobs],
        "input": input_label or _label(input_data, jobs),
        "database": config.database.display,
        "options": {
            "force": force,
            "output_dir": str(config.output_dir),
            "max_line_bytes": config.max_line_bytes,
        },
        "run_key": run_key,
    }


@flow(
    name="run-pipeline",
    flow_run_name=_flow_run_name,
    validate_parameters=False,
    persist_result=False,
    log_prints=False,
    on_crashed=[cancel_if_interrupted],
)
def run_pipeline_flow(
    jobs: list[str], input: str, database: str, options: dict[str, Any], run_key: str
) -> Any:
    """Run a range of jobs on one input, each job's output feeding the next.

    The parameters say what the run is, for the Prefect UI (see ``single_run_parameters``);
    ``run_key`` finds the input, the jobs and the configuration ``run_pipeline`` keeps in
    this process. Stops at the first failure; the failing job's result carries the error,
    and the flow run ends Failed with that one line as its message (its data is still the
    ``PipelineResult``).
    """
    run = _SINGLE_RUNS.pop(run_key, None)
    if run is None:
        raise RuntimeError(
            f"run-pipeline: no run {run_key!r} in this process (start it with run_pipeline())"
        )
    started = time.perf_counter()
    outcome = _SINGLE_OUTCOMES[run_key] = PipelineResult()
    data = run.input_data
    for spec in run.jobs:
        [result] = run_task(make_job_task(spec), Group([WorkItem(data)]), run.config, run.force)
        outcome.results.append(result)
        outcome.duration = time.perf_counter() - started  # so far, if the run stops here
        if not result.success:
            break
        data = result.output
    outcome.duration = time.perf_counter() - started
    failure = outcome.describe_failure()
    if failure is not None:
        return Failed(message=failure, data=outcome)
    return outcome


def run_pipeline(
    input_data: Any,
    jobs: list[JobSpec],
    config: PipelineConfig,
    force: bool = False,
    job_names: list[str] | None = None,
    input_label: str = "",
    *,
    return_state: bool = False,
) -> Any:
    """Run ``jobs`` in order on one input, as the Prefect flow ``run-pipeline``.

    Returns the ``PipelineResult`` (the flow run's final state with ``return_state=True``).
    ``job_names`` and ``input_label`` name the flow run in the Prefect UI (default: the
    jobs' names, and the input's path or a document's source path).
    """
    run_key = uuid.uuid4().hex
    _SINGLE_RUNS[run_key] = _SingleRun(input_data, list(jobs), config, force)
    parameters = single_run_parameters(
        input_data,
        jobs,
        config,
        force=force,
        run_key=run_key,
        job_names=job_names,
        input_label=input_label,
    )
    try:
        state = run_pipeline_flow(**parameters, return_state=True)
    except BaseException as exc:
        if caused_by_interrupt(exc):
            # What the jobs that ended did (a batch stored, not yet finalized...; none, if
            # the flow had not begun), for the caller to say: the interrupt's own
            # traceback says nothing more.
            raise Interrupted(_SINGLE_OUTCOMES.get(run_key) or PipelineResult()) from None
        raise
    finally:
        _SINGLE_RUNS.pop(run_key, None)
        _SINGLE_OUTCOMES.pop(run_key, None)
    return state if return_state else state.result()  # type: ignore[union-attr, attr-defined]


def run_jobs(
    input_data: Any,
    definition: PipelineDefinition,
    config: PipelineConfig,
    *,
    start_from: str | None = None,
    stop_after: str | None = None,
    force: bool = False,
) -> PipelineResult:
    """Resolve the job range, then run the flow (the API and CLI both come through here).

    An input the first job rejects fails here, before any flow run (see ``precheck``).
    """
    jobs = definition.job_range(start_from, stop_after)
    early = precheck(jobs, input_data, config)
    if early is not None:
        return early
    state = run_pipeline(input_data, jobs, config, force=force, return_state=True)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BaseException):  # the flow itself broke (a bug, an API error)
        raise outcome
    return outcome  # type: ignore[no-any-return]


def _label(input_data: Any, jobs: list[JobSpec]) -> str:
    """The input as a person finds it: a document by its source path, a file's path made
    absolute (a run may be started from any folder), anything else (a batch id) as it is."""
    if isinstance(input_data, Mapping):
        return str(input_data.get("source_path") or input_data.get("path") or "<document>")
    if (
        jobs
        and jobs[0].takes.from_path
        and isinstance(input_data, str | os.PathLike)
        and os.path.exists(input_data)
    ):
        return os.path.abspath(os.fspath(input_data))
    return str(input_data)


#: Plans of the runs this process is about to run, by run id: the plan holds this process's
#: database connection, which must not travel (Prefect sends a flow run's context, its
#: parameters included, to every Dask worker), so the flow's parameters name it instead.
_PLANS: dict[str, Plan] = {}


def _parallel_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"{params.get('command', 'run')} {params.get('source', '')}"[:120]


@flow(
    name="run-parallel",
    flow_run_name=_parallel_run_name,
    validate_parameters=False,
    persist_result=False,
    log_prints=False,
)
def run_parallel(
    command: str, source: str, database: str, options: dict[str, Any], run_id: str
) -> Any:
    """Run a chain of jobs over many inputs (see ``driver.py``): jobs that do not write fan
    out on the task runner, the writer's run here, one group at a time.

    The parameters say what the run is, for the Prefect UI: the command, the folder (or
    ``queue``), the database (never with its password) and the command's options;
    ``run_id`` is the ledger's id of the run, whose plan ``start_parallel`` registered.

    Returns the ``RunSummary``: in a Failed state when any input failed (or a folder could
    not be listed), Cancelled when a Cancel stopped it.
    """
    plan = _PLANS.pop(run_id)
    observer = PrefectObserver(database, plan.environment.ui_url)
    plan.observer = observer
    plan.ledger.stamp_flow_run(observer.flow_run_id, observer.url)
    try:
        from prefect_pipeline.pipeline.driver import drive

        summary = drive(plan)
    finally:
        observer.close()
    if not summary.stopped and observer.cancel_requested():
        summary.stopped = "cancelled"
    summary.flow_run_id, summary.flow_run_url = observer.flow_run_id, observer.url
    plan.ledger.stamp_flow_run(observer.flow_run_id, observer.url)
    observer.finish(stopped=bool(summary.stopped), found=plan.progress.total)
    title = f"{command} {source}"
    observer.publish(summary, title)
    _SUMMARIES[run_id] = summary
    if summary.stopped == "cancelled":
        return Cancelled(message=f"cancelled after {summary.total} input(s)", data=summary)
    if summary.failed or summary.unreadable_paths:
        # The run did its job, but the Prefect UI should not show it green.
        problems = []
        if summary.failed:
            problems.append(f"{summary.failed} of {summary.total} input(s) failed")
        if summary.unreadable_paths:
            problems.append(f"{len(summary.unreadable_paths)} path(s) could not be read")
        return Failed(message="; ".join(problems), data=summary)
    return summary


#: The summaries the flow returned, by run id, in case Prefect could not end the flow run
#: with them (see ``start_parallel``).
_SUMMARIES: dict[str, RunSummary] = {}


def start_parallel(plan: Plan, command: str, source: str, options: dict[str, Any]) -> Any:
    """Run ``run_parallel`` for ``plan`` on its task runner; returns its final state."""
    run_id = plan.ledger.run_id
    _PLANS[run_id] = plan
    try:
        state: Any = run_parallel.with_options(task_runner=plan.environment.task_runner)(
            command,
            source,
            plan.config.database.display,
            options,
            run_id,
            return_state=True,
        )
    finally:
        _PLANS.pop(run_id, None)
        summary = _SUMMARIES.pop(run_id, None)
    if summary is not None and not state.is_final():
        # A Cancel that came while the flow was ending: Prefect refused its Completed or
        # Failed state and keeps the flow run Cancelling, which only Cancelled may follow.
        summary.stopped = "cancelled"
        return _end_cancelled(state, summary)
    return state


def _end_cancelled(state: Any, summary: RunSummary) -> Any:
    message = f"cancelled after {summary.total} input(s)"
    _set_cancelled(state.state_details.flow_run_id, message)
    return Cancelled(message=message, data=summary)


def end_interrupted(flow_run_id: Any, inputs: int | None = None) -> None:
    """End the flow run of a run that a Ctrl-C or SIGTERM stopped (its claims given back)
    Cancelled, as a Cancel in Prefect ends it: Prefect's engine marks it Crashed, its state
    for an interrupt, which says the run broke and sets off whatever watches for crashes.
    Only a Crashed flow run changes: an interrupt that came after it ended leaves it be.
    ``inputs``: how many inputs the run had found, for a run over many."""
    if flow_run_id is None:  # the flow run had not started
        return
    after = f" after {inputs} input(s)" if inputs is not None else ""
    _set_cancelled(flow_run_id, f"interrupted (Ctrl-C or SIGTERM){after}", only_if_crashed=True)


def _set_cancelled(flow_run_id: Any, message: str, *, only_if_crashed: bool = False) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    # Seconds at most (two requests of 3 s, not retried): after a SIGTERM, a supervisor
    # sends SIGKILL 10-30 s later, and the cluster and the server are still to stop.
    try:
        with (
            temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}),
            get_client(sync_client=True, httpx_settings={"timeout": 3}) as client,
        ):
            if only_if_crashed:
                state = client.read_flow_run(flow_run_id).state
                if state is None or not state.is_crashed():
                    return
            client.set_flow_run_state(flow_run_id, Cancelled(message=message), force=True)
    except Exception as exc:
        logger.warning("could not mark the flow run Cancelled in Prefect: %s", exc)
        logger.debug("why", exc_info=True)
