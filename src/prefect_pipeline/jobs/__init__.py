"""The jobs: plain classes with ``validate_input()`` and ``single_job()``."""

from prefect_pipeline.jobs.base import BaseJob, Facts, JobResult, Kind, Outcome
from prefect_pipeline.jobs.document import ProcessedDocument
from prefect_pipeline.jobs.job_a import JobA
from prefect_pipeline.jobs.job_b import JobB
from prefect_pipeline.jobs.job_c import JobC

__all__ = [
    "BaseJob",
    "Facts",
    "JobA",
    "JobB",
    "JobC",
    "JobResult",
    "Kind",
    "Outcome",
    "ProcessedDocument",
]
