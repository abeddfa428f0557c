"""The jobs: plain classes with ``validate_input()`` and ``single_job()``."""

from prefect_pipeline.jobs.base import BaseJob, JobResult, Outcome
from prefect_pipeline.jobs.job_a import JobA
from prefect_pipeline.jobs.job_b import JobB
from prefect_pipeline.jobs.job_c import JobC

__all__ = ["BaseJob", "JobA", "JobB", "JobC", "JobResult", "Outcome"]
