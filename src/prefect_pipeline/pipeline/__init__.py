"""Orchestration: job ranges, Prefect tasks and flows, parallel runs, the Python API.

The names below are loaded on first use, as in ``prefect_pipeline.database``: importing a
module of this package (``pipeline.server``, ``pipeline.definition``) runs this file first,
and an eager import of ``runner`` here would pull the runner, and through it the rest of the
orchestration, into every one of them (a circle: pipeline -> runner -> server -> pipeline).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_pipeline.pipeline.definition import JobSpec, PipelineDefinition, default_pipeline
    from prefect_pipeline.pipeline.runner import PipelineRunner

_LAZY = {
    "JobSpec": "definition",
    "PipelineDefinition": "definition",
    "default_pipeline": "definition",
    "PipelineRunner": "runner",
}

__all__ = ["JobSpec", "PipelineDefinition", "PipelineRunner", "default_pipeline"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)
