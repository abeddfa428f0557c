"""Job B: store a document's records in SQLite, idempotently."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from prefect_pipeline.database.connection import get_database
from prefect_pipeline.database.models import ProcessingBatch, utcnow
from prefect_pipeline.exceptions import InputValidationError
from prefect_pipeline.jobs.base import BaseJob, Outcome
from prefect_pipeline.validators import (
    decode_text,
    read_bytes,
    validate_document,
    validate_file_path,
)

_INSERT_RECORDS = (
    "INSERT INTO processed_records (batch_id, record_index, line_number, content, status) "
    "VALUES (?, ?, ?, ?, 'pending')"
)


class JobB(BaseJob):
    """JSON (a path or the same structure as a dict) -> one batch row and its record rows.

    ``(source_path, sha256)`` is unique: content that is already stored returns the
    existing batch and writes nothing, unless ``force`` replaces it. Output: the batch id.
    """

    name = "B"
    description = "Write the records to SQLite (one batch per input)"
    uses_database = True

    def validate_input(self, input_data: Any) -> tuple[Mapping[str, Any], str | None]:
        if isinstance(input_data, Mapping):
            doc = validate_document("<document>", input_data)
            return doc, doc.get("output_path")
        path = validate_file_path(input_data)
        # Decoded like job A's inputs (BOM, NUL bytes, offsets), not by json's own guessing.
        text = decode_text(path, read_bytes(path))
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputValidationError(
                path, f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        return validate_document(path, doc), str(path)

    def single_job(self, validated: tuple[Mapping[str, Any], str | None]) -> Outcome:
        doc, output_path = validated
        existing = ProcessingBatch.get_or_none(
            (ProcessingBatch.source_path == doc["source_path"])
            & (ProcessingBatch.sha256 == doc["sha256"])
        )
        if existing is not None and not self.force:
            return Outcome(
                existing.id,
                note=f"already stored as batch {existing.id}; nothing written",
                details={
                    "batch_id": existing.id,
                    "records_written": 0,
                    "unchanged": True,
                    "sha256": doc["sha256"],
                    "batch_status": existing.status,
                },
            )
        if existing is not None:
            # --force: replace in this same transaction (records go by ON DELETE CASCADE).
            existing.delete_instance()
        batch = ProcessingBatch.create(
            source_path=doc["source_path"],
            sha256=doc["sha256"],
            record_count=doc["record_count"],
            status="pending",
            created_at=utcnow(),
            output_path=output_path,
        )
        # executemany on the raw connection: Peewee's insert_many builds the statement in
        # Python for every chunk and measured 2.3x slower on many small records.
        connection = get_database(self.config.db_path, self.config.db_timeout).connection()
        connection.executemany(
            _INSERT_RECORDS,
            ((batch.id, r["index"], r["line_number"], r["content"]) for r in doc["records"]),
        )
        return Outcome(
            batch.id,
            note="replaced the stored batch" if existing is not None else None,
            details={
                "batch_id": batch.id,
                "records_written": doc["record_count"],
                "sha256": doc["sha256"],
                "unchanged": False,
                "batch_status": "pending",
            },
        )
