"""Orchestration: job ranges, Prefect tasks and flows, parallel runs, the Python API."""

from prefect_pipeline.pipeline.definition import JobSpec, PipelineDefinition, default_pipeline
from prefect_pipeline.pipeline.runner import PipelineRunner

__all__ = ["JobSpec", "PipelineDefinition", "PipelineRunner", "default_pipeline"]
