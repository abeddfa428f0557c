"""Configuration: one validated, immutable object built once (by the CLI or
``PipelineRunner``) and passed down. Environment variables ``PIPELINE_*`` and explicit
arguments feed the same object; explicit arguments win."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from prefect_pipeline.logs import LEVELS

DEFAULT_OUTPUT_DIR = Path("data/output")
DEFAULT_DB_PATH = Path("data/pipeline.db")

# Environment variable -> field. Flags given on the command line override these.
ENV_VARS = {
    "PIPELINE_OUTPUT_DIR": "output_dir",
    "PIPELINE_DB_PATH": "db_path",
    "PIPELINE_LOG_LEVEL": "log_level",
    "PIPELINE_DASK_ADDRESS": "dask_address",
}


class PipelineConfig(BaseModel):
    """Where results go and how runs behave. Immutable: make a new one with
    ``config.model_copy(update={...})``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    output_dir: Path = DEFAULT_OUTPUT_DIR
    db_path: Path = DEFAULT_DB_PATH
    log_level: str = "INFO"
    #: Prefect retries for a job's task (exceptions that are not input errors).
    retries: int = Field(default=0, ge=0)
    retry_delay_seconds: float = Field(default=0.0, ge=0)
    #: An existing Dask scheduler (``tcp://host:port``); None starts a LocalCluster.
    dask_address: str | None = None
    #: SQLite busy timeout, seconds: how long a writer waits for another process's lock.
    db_timeout: float = Field(default=60.0, gt=0)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        value = value.upper()
        if value not in LEVELS:
            raise ValueError(f"must be one of {', '.join(LEVELS)}")
        return value

    @field_validator("output_dir", "db_path")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Absolute so that Dask workers started elsewhere resolve the same files.
        return Path(os.path.abspath(os.path.expanduser(value)))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> PipelineConfig:
        """Build from ``PIPELINE_*`` variables, then ``overrides`` (None values are ignored)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {
            field: environ[var] for var, field in ENV_VARS.items() if environ.get(var)
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
