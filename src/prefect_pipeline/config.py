"""Configuration: one validated, immutable object built once (by the CLI or
``PipelineRunner``) and passed down. Environment variables ``PIPELINE_*`` and explicit
arguments feed the same object; explicit arguments win.

The defaults of every tunable live here, once; the CLI's options and the API's keyword
arguments read them from this module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from prefect_pipeline.database.url import DatabaseUrl
from prefect_pipeline.logs import LEVELS

DEFAULT_OUTPUT_DIR = Path("data/output")
DEFAULT_DB_PATH = Path("data/pipeline.db")
#: How long a claimed input stays reserved for its command without a renewal.
DEFAULT_LEASE_SECONDS = 300.0
#: Attempts per queued input (drain-db) for errors a retry may cure.
DEFAULT_MAX_ATTEMPTS = 3
#: Seconds before the first retry of a queued input; doubles with each attempt.
DEFAULT_RETRY_DELAY = 5.0
#: Seconds the writer waits for the workers' jobs (A, on a thread of the command
#: meanwhile) before a local cluster's workers start: about what starting two of them
#: takes on two cores (each spends ~4 s of CPU importing Python, Dask and Prefect's task
#: engine; ``benchmarks/results/cluster-start``).
DEFAULT_WORKERS_AFTER = 5.0
#: Seconds the database may keep a command waiting: SQLite's busy timeout (another
#: process's lock); a server database's lock waits and unacknowledged writes.
DEFAULT_DB_TIMEOUT = 60.0
#: A line longer than this fails its input: a line is the one thing held whole in memory.
DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024
#: Inputs (and JSON files) up to this size are read and stored whole, larger ones in chunks.
DEFAULT_STREAM_THRESHOLD = 1024 * 1024
#: The chunk size of streamed reads and writes.
DEFAULT_CHUNK_BYTES = 256 * 1024
#: Document text one group of inputs hands on to the writer at most; the rest of its
#: documents go as their files' paths (see ``JobA``).
DEFAULT_GROUP_TEXT_BYTES = 8 * 1024 * 1024

# Environment variable -> field. Flags given on the command line override these.
ENV_VARS = {
    "PIPELINE_OUTPUT_DIR": "output_dir",
    "PIPELINE_DB_PATH": "db_path",
    "PIPELINE_DATABASE_URL": "db_url",
    "PIPELINE_LOG_LEVEL": "log_level",
    "PIPELINE_MAX_LINE_BYTES": "max_line_bytes",
    "PIPELINE_DB_TIMEOUT": "db_timeout",
}


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """``"64MiB"``, ``"64M"``, ``"64 mib"`` or ``"67108864"`` -> 67108864 (binary units: K,
    M, G, optionally followed by ``iB`` or ``B``). Raises ``ValueError``."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:([kmg])(?:i?b)?|b)?\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"{text!r} is not a size (examples: 67108864, 64MiB, 1G)")
    return int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


class PipelineConfig(BaseModel):
    """Where results go and how runs behave. Immutable: make a new one with
    ``config.model_copy(update={...})``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    output_dir: Path = DEFAULT_OUTPUT_DIR
    db_path: Path = DEFAULT_DB_PATH
    #: A database URL (``sqlite:///PATH`` or ``postgresql://...``); when set, it is the
    #: database and ``db_path`` is not used.
    db_url: str | None = None
    log_level: str = "INFO"
    db_timeout: float = Field(default=DEFAULT_DB_TIMEOUT, gt=0)
    #: A line of more bytes than this (without its line ending) fails its input.
    max_line_bytes: int = Field(default=DEFAULT_MAX_LINE_BYTES, ge=1)
    #: Inputs up to this many bytes are read, written and stored whole (the fastest way
    #: for small files; their JSON text travels to the writer); larger ones in chunks of
    #: ``chunk_bytes``, in memory that does not grow with their size.
    stream_threshold: int = Field(default=DEFAULT_STREAM_THRESHOLD, ge=0)
    chunk_bytes: int = Field(default=DEFAULT_CHUNK_BYTES, ge=1)
    #: Document text a group of inputs carries to the writer at most (in characters);
    #: past it, documents go as their JSON files' paths and job B reads them in chunks.
    group_text_bytes: int = Field(default=DEFAULT_GROUP_TEXT_BYTES, ge=0)

    @field_validator("max_line_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

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

    @field_validator("db_url")
    @classmethod
    def _parsable(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return DatabaseUrl.parse(value).url  # raises UsageError on a bad URL

    @property
    def database(self) -> DatabaseUrl:
        """The database this configuration names."""
        if self.db_url is not None:
            return DatabaseUrl.parse(self.db_url)
        return DatabaseUrl.sqlite(self.db_path)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> PipelineConfig:
        """Build from ``PIPELINE_*`` variables, then ``overrides`` (None values are ignored)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {
            field: environ[var] for var, field in ENV_VARS.items() if environ.get(var)
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
