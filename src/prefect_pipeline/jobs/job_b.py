"""Job B: store a document's records in SQLite, idempotently."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from prefect_pipeline.database.models import PENDING, utcnow
from prefect_pipeline.exceptions import InputValidationError
from prefect_pipeline.jobs.base import BaseJob, Outcome
from prefect_pipeline.jobs.job_a import ProcessedDocument
from prefect_pipeline.validators import (
    decode_text,
    read_bytes,
    validate_document,
    validate_file_path,
)

# The writer runs these once per input, tens of thousands of times in a large run. They are
# prepared SQL on Peewee's connection rather than Peewee query objects, whose SQL is built
# in Python for every call (about 0.3 ms each: most of the writer's time on small files).
_FIND_BATCH = "SELECT id, status FROM processing_batches WHERE source_path = ? AND sha256 = ?"
_DELETE_BATCH = "DELETE FROM processing_batches WHERE id = ?"
_INSERT_BATCH = (
    "INSERT INTO processing_batches (source_path, sha256, record_count, status, created_at,"
    " output_path) VALUES (?, ?, ?, ?, ?, ?)"
)
# The records are read by SQLite out of the document's JSON text, in one statement. Not
# executemany: the sqlite3 module lets go of the GIL for every row, and in the writer's
# process other threads (Dask's client, Prefect's event workers) are busy receiving results,
# so each row waited for its turn; measured with one busy thread beside it, 100 documents
# took 54 s through executemany and 0.7 s through json_each (0.9 s each when alone).
_INSERT_RECORDS = (
    "INSERT INTO processed_records (batch_id, record_index, line_number, content, status)"
    " SELECT ?, json_extract(value, '$.index'), json_extract(value, '$.line_number'),"
    " json_extract(value, '$.content'), 'pending' FROM json_each(?, ?)"
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
        if isinstance(input_data, ProcessedDocument):
            # Made by job A in this pipeline: its shape holds by construction.
            return input_data, input_data.get("output_path")
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
        connection = self.db.connection()
        existing = connection.execute(_FIND_BATCH, (doc["source_path"], doc["sha256"])).fetchone()
        if existing is not None and not self.force:
            batch_id, status = existing
            return Outcome(
                batch_id,
                note=f"already stored as batch {batch_id}; nothing written",
                details={
                    "batch_id": batch_id,
                    "records_written": 0,
                    "unchanged": True,
                    "sha256": doc["sha256"],
                    "batch_status": status,
                },
            )
        if existing is not None:
            # --force: replace in this same transaction (records go by ON DELETE CASCADE).
            connection.execute(_DELETE_BATCH, (existing[0],))
        cursor = connection.execute(
            _INSERT_BATCH,
            (
                doc["source_path"],
                doc["sha256"],
                doc["record_count"],
                PENDING,
                utcnow(),
                output_path,
            ),
        )
        batch_id = cursor.lastrowid
        if isinstance(doc, ProcessedDocument):
            text, where = doc.text, "$.records"  # the very text job A wrote
        else:  # checked by validate_document: serialize the records as they were checked
            text, where = json.dumps(doc["records"], ensure_ascii=False), "$"
        connection.execute(_INSERT_RECORDS, (batch_id, text, where))
        return Outcome(
            batch_id,
            note="replaced the stored batch" if existing is not None else None,
            details={
                "batch_id": batch_id,
                "records_written": doc["record_count"],
                "sha256": doc["sha256"],
                "unchanged": False,
                "batch_status": PENDING,
            },
        )
