"""The SQLite database: models, connections and the input ledger."""

from prefect_pipeline.database.connection import SCHEMA_VERSION, close_all, get_database, session
from prefect_pipeline.database.models import (
    MODELS,
    PipelineInput,
    ProcessedRecord,
    ProcessingBatch,
)

__all__ = [
    "MODELS",
    "SCHEMA_VERSION",
    "PipelineInput",
    "ProcessedRecord",
    "ProcessingBatch",
    "close_all",
    "get_database",
    "session",
]
