"""prefect-pipeline: read many input files, split them into records, store and finalize them.

The public API is re-exported here lazily so that ``import prefect_pipeline`` stays cheap
(Prefect and Dask are imported only when a run needs them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "JobResult",
    "PipelineConfig",
    "PipelineDefinition",
    "PipelineRunner",
    "__version__",
]

if TYPE_CHECKING:
    from prefect_pipeline.config import PipelineConfig
    from prefect_pipeline.jobs.base import JobResult
    from prefect_pipeline.pipeline.definition import PipelineDefinition
    from prefect_pipeline.pipeline.runner import PipelineRunner

_LAZY = {
    "PipelineConfig": "prefect_pipeline.config",
    "JobResult": "prefect_pipeline.jobs.base",
    "PipelineDefinition": "prefect_pipeline.pipeline.definition",
    "PipelineRunner": "prefect_pipeline.pipeline.runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
