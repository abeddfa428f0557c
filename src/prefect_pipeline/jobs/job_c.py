"""Job C: finalize a batch and its records."""

from __future__ import annotations

from typing import Any

from prefect_pipeline.database.models import FINALIZED, utcnow
from prefect_pipeline.exceptions import InputValidationError
from prefect_pipeline.jobs.base import BaseJob, Outcome
from prefect_pipeline.validators import validate_batch_id

# Prepared SQL, for the same reason as in job B: the writer runs it once per input.
_FIND_BATCH = "SELECT status, record_count FROM processing_batches WHERE id = ?"
_FINALIZE_BATCH = "UPDATE processing_batches SET status = ?, finalized_at = ? WHERE id = ?"
_FINALIZE_RECORDS = "UPDATE processed_records SET status = ? WHERE batch_id = ? AND status != ?"


class JobC(BaseJob):
    """Batch id -> the batch and its records marked ``finalized`` with a timestamp.

    Running it twice is harmless: the first finalization time is kept. Output: the batch id.
    """

    name = "C"
    description = "Finalize a batch and its records"
    uses_database = True

    def validate_input(self, input_data: Any) -> int:
        return validate_batch_id(input_data)

    def single_job(self, validated: int) -> Outcome:
        connection = self.db.connection()
        row = connection.execute(_FIND_BATCH, (validated,)).fetchone()
        if row is None:
            raise InputValidationError(f"batch {validated}", "no such batch")
        status, record_count = row
        details = {"batch_id": validated, "record_count": record_count}
        if status == FINALIZED:
            return Outcome(
                validated, note=f"batch {validated} was already finalized", details=details
            )
        connection.execute(_FINALIZE_BATCH, (FINALIZED, utcnow(), validated))
        connection.execute(_FINALIZE_RECORDS, (FINALIZED, validated, FINALIZED))
        return Outcome(validated, details=details)
