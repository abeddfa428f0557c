"""``run_pipeline``: the one Prefect flow for single-input runs, whatever the job range.

``PipelineDefinition`` lives in ``definition.py`` (importable without Prefect) and is
re-exported here, where the design documents place it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect import flow
from prefect.states import Failed

from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.jobs.base import JobResult
from prefect_pipeline.logs import get_logger
from prefect_pipeline.pipeline.definition import JobSpec, PipelineDefinition, default_pipeline
from prefect_pipeline.pipeline.summary import RunSummary
from prefect_pipeline.pipeline.wrappers import Group, WorkItem, make_job_task

logger = get_logger("flows")

__all__ = [
    "PipelineDefinition",
    "PipelineResult",
    "default_pipeline",
    "run_parallel",
    "run_pipeline",
]


@dataclass
class PipelineResult:
    """The outcome of a pipeline run on one input: every job's result, in order."""

    results: list[JobResult] = field(default_factory=list)
    duration: float = 0.0

    @property
    def success(self) -> bool:
        return bool(self.results) and all(r.success for r in self.results)

    @property
    def output(self) -> Any:
        """The last job's output (None if a job failed)."""
        return self.results[-1].output if self.success else None

    @property
    def error(self) -> str | None:
        failed = self.failed
        return failed.error if failed else None

    @property
    def failed(self) -> JobResult | None:
        return next((r for r in self.results if not r.success), None)

    @property
    def jobs_run(self) -> list[str]:
        return [r.job_name for r in self.results]

    def result_of(self, job_name: str) -> JobResult | None:
        return next((r for r in self.results if r.job_name == job_name), None)


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    jobs = params.get("job_names") or []
    return f"pipeline {'-'.join(jobs)}: {params.get('input_label', '')}"[:120]


@flow(
    name="run-pipeline",
    flow_run_name=_flow_run_name,
    validate_parameters=False,
    persist_result=False,
    log_prints=False,
)
def run_pipeline(
    input_data: Any,
    jobs: list[JobSpec],
    config: PipelineConfig,
    force: bool = False,
    job_names: list[str] | None = None,
    input_label: str = "",
) -> PipelineResult:
    """Run ``jobs`` in order on one input, each job's output feeding the next.

    Stops at the first failure; the failing job's result carries the error.
    ``job_names`` and ``input_label`` only name the flow run in the Prefect UI.
    """
    started = time.perf_counter()
    outcome = PipelineResult()
    data = input_data
    for spec in jobs:
        job_task = make_job_task(
            spec, retries=config.retries, retry_delay_seconds=config.retry_delay_seconds
        )
        [result] = job_task(Group([WorkItem(data)]), config, force)
        outcome.results.append(result)
        if not result.success:
            break
        data = result.output
    outcome.duration = time.perf_counter() - started
    return outcome


def run_jobs(
    input_data: Any,
    definition: PipelineDefinition,
    config: PipelineConfig,
    *,
    start_from: str | None = None,
    stop_after: str | None = None,
    force: bool = False,
) -> PipelineResult:
    """Resolve the job range, then run the flow (the API and CLI both come through here)."""
    jobs = definition.job_range(start_from, stop_after)
    return run_pipeline(
        input_data,
        jobs,
        config,
        force=force,
        job_names=[spec.name for spec in jobs],
        input_label=_label(input_data),
    )


def _label(input_data: Any) -> str:
    if isinstance(input_data, Mapping):
        return str(input_data.get("source_path") or input_data.get("path") or "<document>")
    return str(input_data)


def _parallel_run_name() -> str:
    from prefect.runtime import flow_run

    return f"parallel: {flow_run.parameters.get('description', '')}"[:120]


@flow(
    name="run-parallel",
    flow_run_name=_parallel_run_name,
    validate_parameters=False,
    persist_result=False,
    log_prints=False,
)
def run_parallel(description: str, local: Any) -> Any:
    """Run a chain of jobs over many inputs (see ``parallel.py``): file jobs fan out on the
    task runner, database jobs run here, one group at a time. ``local`` holds the run's
    plan; ``description`` names the run in the Prefect UI.

    Returns the ``RunSummary``, in a Failed state when any input failed.
    """
    from prefect_pipeline.pipeline.parallel import drive

    summary = drive(local.plan)
    _publish(summary, description)
    if summary.failed:
        # The run did its job, but the Prefect UI should not show it green.
        return Failed(message=f"{summary.failed} of {summary.total} input(s) failed", data=summary)
    return summary


def _publish(summary: RunSummary, description: str) -> None:
    """The summary as Prefect artifacts, so the UI shows what the run did."""
    try:
        from prefect.artifacts import create_table_artifact

        create_table_artifact(
            summary.table_rows(),
            key="pipeline-run-summary",
            description=f"Summary of {description}",
        )
        if summary.failures:
            create_table_artifact(
                summary.failures[:500],
                key="pipeline-run-failures",
                description="Inputs that failed, with their job and error",
            )
    except Exception:  # the run's result does not depend on the UI
        logger.warning("could not publish the summary to Prefect", exc_info=True)
