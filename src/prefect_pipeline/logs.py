"""Logging for the pipeline, Prefect, its server and Dask from one level.

Prefect, its temporary server and Dask worker processes read their levels from the
environment when they start, so the levels are exported as environment variables as
well as applied to this process's loggers. This is the one place that touches global
logging state; ``configure_logging`` may be called again to change it.
"""

from __future__ import annotations

import logging
import os
import sys

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "OFF")

LOGGER_NAME = "prefect_pipeline"

# Loggers that print on their own and must follow --log-level.
_THIRD_PARTY = ("prefect", "distributed", "dask", "uvicorn", "httpx", "asyncio", "peewee")


def get_logger(name: str | None = None) -> logging.Logger:
    """The project's logger, or a child of it."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def _prefect_level(level: str) -> str:
    return "CRITICAL" if level == "OFF" else level


def _dask_level(level: str) -> str:
    # Dask prints a dozen lines per worker at INFO when a cluster starts: it follows the
    # user's level from WARNING up, and below that only for DEBUG.
    if level == "OFF":
        return "CRITICAL"
    if level == "DEBUG":
        return "DEBUG"
    return level if level in ("ERROR", "CRITICAL") else "WARNING"


def environment_for(level: str) -> dict[str, str]:
    """Environment variables that make Prefect, its server and Dask log at ``level``."""
    level = level.upper()
    prefect, dask = _prefect_level(level), _dask_level(level)
    env = {
        "PREFECT_LOGGING_LEVEL": prefect,
        "PREFECT_LOGGING_ROOT_LEVEL": dask,
        "PREFECT_SERVER_LOGGING_LEVEL": dask,
        "PREFECT_INTERNAL_LOGGING_LEVEL": dask,
        "PREFECT_LOGGING_LOG_PRINTS": "false",
        # The server otherwise tries to send telemetry and logs errors when offline.
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DASK_LOGGING__DISTRIBUTED": dask.lower(),
        # Dask workers sample their own stacks every 10 ms for the dashboard's profile
        # page; a batch run pays for it in CPU and never looks at it.
        "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
    }
    return env


def configure_logging(level: str = "INFO") -> None:
    """Apply ``level`` to this process and export it for child processes."""
    level = level.upper()
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    os.environ.update(environment_for(level))
    os.environ["PIPELINE_LOG_LEVEL"] = level

    ours = get_logger()
    for handler in list(ours.handlers):
        if getattr(handler, "_pipeline_handler", False):
            ours.removeHandler(handler)
    if level == "OFF":
        ours.setLevel(logging.CRITICAL + 1)
        ours.addHandler(logging.NullHandler())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler._pipeline_handler = True  # type: ignore[attr-defined]
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
        )
        ours.addHandler(handler)
        ours.setLevel(level)
    ours.propagate = False

    for name in _THIRD_PARTY:
        chosen = _prefect_level(level) if name == "prefect" else _dask_level(level)
        logging.getLogger(name).setLevel(
            logging.CRITICAL + 1 if level == "OFF" else logging.getLevelName(chosen)
        )
