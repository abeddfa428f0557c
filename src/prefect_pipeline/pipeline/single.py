"""One input through a range of jobs: its result type, and the check made before anything
starts.

Importable without Prefect: a missing file or a bad batch id is reported before a Prefect
server or an import of Prefect costs seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.jobs.base import JobResult
from prefect_pipeline.pipeline.definition import JobSpec


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


    def describe_failure(self) -> str | None:
        """``job X: <input>: <problem>``: the one line that names a failed run."""
        failed = self.failed
        return f"job {failed.job_name}: {failed.error}" if failed else None


def precheck(jobs: list[JobSpec], input_data: Any, config: PipelineConfig) -> PipelineResult | None:
    """The failed result of a run whose input its first job rejects (``validate_input``);
    None when the input passes and the run should start."""
    failure = jobs[0].make(config).check(input_data)
    return PipelineResult([failure]) if failure is not None else None
