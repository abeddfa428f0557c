"""Peewee models: the input ledger (queue), batches and their records.

Models are unbound (``database=None``); ``database.connection.session()`` binds them
to the database of the run. Column names are part of the public contract (users query
them with ``sqlite3``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from peewee import (
    AutoField,
    CharField,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)
from playhouse.sqlite_ext import AutoIncrementField

# Statuses, as stored.
PENDING = "pending"
FINALIZED = "finalized"
PROCESSING = "processing"
DONE = "done"
FAILED = "failed"


def utcnow() -> str:
    """The current time as UTC ISO-8601 text (what every timestamp column holds)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


class IsoDateTimeField(DateTimeField):
    """A timestamp stored as UTC ISO-8601 text, e.g. ``2026-01-31T12:00:00.000000+00:00``."""

    field_type = "TEXT"

    def db_value(self, value: object) -> object:
        if isinstance(value, datetime):
            return value.astimezone(UTC).isoformat(timespec="microseconds")
        return value

    def python_value(self, value: object) -> object:
        return value


class BaseModel(Model):
    class Meta:
        database = None
        legacy_table_names = False


class PipelineInput(BaseModel):
    """One input file known to the pipeline: the per-input ledger and the work queue."""

    id = AutoField()
    path = TextField(unique=True)
    status = CharField(default=PENDING, index=True)
    #: Where job A writes this input's JSON.
    output_path = TextField(null=True)
    #: First job to run for this input ("A", or "B" for a JSON input) and the last one.
    start_job = CharField(default="A")
    stop_job = CharField(null=True)
    size = IntegerField(null=True)
    mtime_ns = IntegerField(null=True)
    sha256 = CharField(null=True)
    batch_id = IntegerField(null=True)
    records_written = IntegerField(null=True)
    #: "processed" or "unchanged" (content already stored) once done.
    outcome = CharField(null=True)
    attempts = IntegerField(default=0)
    last_job = CharField(null=True)
    last_error = TextField(null=True)
    claim_token = CharField(null=True, index=True)
    #: The command run that last claimed this input (kept after it finishes, for its summary).
    run_id = CharField(null=True, index=True)
    lease_expires_at = IsoDateTimeField(null=True)
    not_before = IsoDateTimeField(null=True)
    created_at = IsoDateTimeField(default=utcnow)
    updated_at = IsoDateTimeField(default=utcnow)
    finished_at = IsoDateTimeField(null=True)

    class Meta:
        table_name = "pipeline_inputs"


class ProcessingBatch(BaseModel):
    """The records of one input file's content, written together by job B."""

    # AUTOINCREMENT: a replaced batch (--force) never gets the id of the one it replaced,
    # which other rows and users may still hold.
    id = AutoIncrementField()
    source_path = TextField()
    sha256 = CharField()
    record_count = IntegerField()
    status = CharField(default=PENDING)
    created_at = IsoDateTimeField(default=utcnow)
    finalized_at = IsoDateTimeField(null=True)
    output_path = TextField(null=True)

    class Meta:
        table_name = "processing_batches"
        indexes = ((("source_path", "sha256"), True),)


class ProcessedRecord(BaseModel):
    """One non-empty line of an input file."""

    id = AutoField()
    batch = ForeignKeyField(
        ProcessingBatch, column_name="batch_id", on_delete="CASCADE", index=True
    )
    record_index = IntegerField()
    line_number = IntegerField()
    content = TextField()
    status = CharField(default=PENDING)

    class Meta:
        table_name = "processed_records"


MODELS = (PipelineInput, ProcessingBatch, ProcessedRecord)
