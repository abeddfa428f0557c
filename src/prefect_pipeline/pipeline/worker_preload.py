"""Imported by every Dask worker of a local cluster as it starts (Dask's ``preload``).

A worker otherwise imports Prefect's task engine when its first task arrives: about two
seconds on the critical path to the first committed input. Preloading moves that into the
cluster's start-up, which overlaps the Prefect server's.
"""

import prefect.task_engine  # noqa: F401

import prefect_pipeline.jobs
import prefect_pipeline.pipeline.wrappers  # noqa: F401
