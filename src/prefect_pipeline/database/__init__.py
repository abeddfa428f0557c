"""Storage: the schema (Peewee models), the store interface and its backends, the input
ledger and the queue.

``open_store(location, timeout=...)`` gives this process's ``Store`` for a database; the
rest of the pipeline talks to the database only through it. The names below are loaded on
first use: importing this package (e.g. for ``database.url``) must not import Peewee and
its drivers, which a command that fails early never needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_pipeline.database.backends import close_all, open_store
    from prefect_pipeline.database.models import (
        MODELS,
        PipelineInput,
        ProcessedRecord,
        ProcessingBatch,
    )
    from prefect_pipeline.database.store import SCHEMA_VERSION, Store
    from prefect_pipeline.database.url import DatabaseUrl

_LAZY = {
    "MODELS": "models",
    "PipelineInput": "models",
    "ProcessedRecord": "models",
    "ProcessingBatch": "models",
    "SCHEMA_VERSION": "store",
    "Store": "store",
    "close_all": "backends",
    "open_store": "backends",
    "DatabaseUrl": "url",
}

__all__ = [
    "MODELS",
    "SCHEMA_VERSION",
    "DatabaseUrl",
    "PipelineInput",
    "ProcessedRecord",
    "ProcessingBatch",
    "Store",
    "close_all",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)
