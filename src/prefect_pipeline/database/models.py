"""Peewee models: the input ledger (queue), batches and their records.

They define the schema that every backend creates (``Store.ensure_schema``). Models are
unbound (``database=None``); ``Store.bind_models()`` binds them to a store's database for a
block. Column names are part of the public contract (users query them with ``sqlite3`` or
``psql``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from peewee import (
    SQL,
    BigAutoField,
    BigIntegerField,
    CharField,
    DateTimeField,
    DoubleField,
    ForeignKeyField,
    IntegerField,
    Model,
    NodeList,
    SqliteDatabase,
    TextField,
)

from prefect_pipeline.clock import iso
from prefect_pipeline.database.statuses import DONE, FAILED, FINALIZED, PENDING, PROCESSING

__all__ = [
    "DONE",
    "FAILED",
    "FINALIZED",
    "MODELS",
    "PENDING",
    "PROCESSING",
    "PipelineInput",
    "ProcessedRecord",
    "ProcessingBatch",
    "utcnow",
]


def utcnow() -> str:
    """The current time as UTC ISO-8601 text (what every timestamp column holds)."""
    return iso(datetime.now(UTC))


class IsoDateTimeField(DateTimeField):
    """A timestamp stored as UTC ISO-8601 text, e.g. ``2026-01-31T12:00:00.000000+00:00``."""

    field_type = "TEXT"

    def db_value(self, value: object) -> object:
        if isinstance(value, datetime):
            return iso(value)
        return value

    def python_value(self, value: object) -> object:
        return value


class NeverReusedId(BigAutoField):
    """An id never given twice, even after its row was deleted: SQLite's AUTOINCREMENT
    (a plain SQLite rowid reuses the largest id once it is deleted); a server database's
    sequence never reuses one."""

    def ddl(self, ctx: Any) -> Any:
        node = super().ddl(ctx)
        if isinstance(self.model._meta.database, SqliteDatabase):
            return NodeList((node, SQL("AUTOINCREMENT")))
        return node


class BaseModel(Model):
    class Meta:
        database = None
        legacy_table_names = False


class PipelineInput(BaseModel):
    """One input file known to the pipeline: the per-input ledger and the work queue."""

    # 64-bit ids, sizes and times (nanoseconds since 1970 overflow 32 bits; a server
    # database's INTEGER is 32 bits, SQLite's always 64).
    id = BigAutoField()
    path = TextField(unique=True)
    status = CharField(default=PENDING, index=True)
    #: Where job A writes this input's JSON.
    output_path = TextField(null=True)
    #: The first and last job of the range its last run used (None until claimed).
    start_job = CharField(null=True)
    stop_job = CharField(null=True)
    size = BigIntegerField(null=True)
    mtime_ns = BigIntegerField(null=True)
    sha256 = CharField(null=True)
    batch_id = BigIntegerField(null=True)
    records_written = BigIntegerField(null=True)
    #: "processed" or "unchanged" (content already stored) once done.
    outcome = CharField(null=True)
    attempts = IntegerField(default=0)
    last_job = CharField(null=True)
    last_error = TextField(null=True)
    claim_token = CharField(null=True, index=True)
    #: Who holds (or last held) the claim: host name, the process namespace its process id
    #: belongs to (boot id and pid namespace), the process id, and the process's start time
    #: (epoch seconds), so that a process id reused by another program is not taken for
    #: the owner (``database/owners.py``).
    owner_host = TextField(null=True)
    owner_namespace = TextField(null=True)
    owner_pid = IntegerField(null=True)
    # Double precision: a server database's FLOAT may be single precision (not to the second).
    owner_started_at = DoubleField(null=True)
    #: The command run that last claimed this input (kept after it finishes, for its summary).
    run_id = CharField(null=True, index=True)
    lease_expires_at = IsoDateTimeField(null=True)
    #: The Prefect flow run of the run that last claimed this input, and its page in the
    #: Prefect UI (when the API has one).
    flow_run_id = CharField(null=True)
    flow_run_url = TextField(null=True)
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
    id = NeverReusedId()
    source_path = TextField()
    sha256 = CharField()
    record_count = BigIntegerField()
    status = CharField(default=PENDING)
    created_at = IsoDateTimeField(default=utcnow)
    finalized_at = IsoDateTimeField(null=True)
    output_path = TextField(null=True)

    class Meta:
        table_name = "processing_batches"
        indexes = ((("source_path", "sha256"), True),)


class ProcessedRecord(BaseModel):
    """One non-empty line of an input file."""

    id = BigAutoField()
    batch = ForeignKeyField(
        ProcessingBatch, column_name="batch_id", on_delete="CASCADE", index=True
    )
    record_index = BigIntegerField()
    line_number = BigIntegerField()
    content = TextField()
    status = CharField(default=PENDING)

    class Meta:
        table_name = "processed_records"


MODELS = (PipelineInput, ProcessingBatch, ProcessedRecord)
