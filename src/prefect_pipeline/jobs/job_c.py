"""Job C: finalize a batch and its records."""

from __future__ import annotations

from typing import Any

from prefect_pipeline.database.models import FINALIZED, ProcessedRecord, ProcessingBatch, utcnow
from prefect_pipeline.exceptions import InputValidationError
from prefect_pipeline.jobs.base import BaseJob, Outcome
from prefect_pipeline.validators import validate_batch_id


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
        batch = ProcessingBatch.get_or_none(ProcessingBatch.id == validated)
        if batch is None:
            raise InputValidationError(f"batch {validated}", "no such batch")
        if batch.status == FINALIZED:
            return Outcome(
                batch.id,
                note=f"batch {batch.id} was already finalized",
                details={"batch_id": batch.id, "record_count": batch.record_count},
            )
        now = utcnow()
        ProcessingBatch.update(status=FINALIZED, finalized_at=now).where(
            ProcessingBatch.id == batch.id
        ).execute()
        ProcessedRecord.update(status=FINALIZED).where(
            (ProcessedRecord.batch == batch.id) & (ProcessedRecord.status != FINALIZED)
        ).execute()
        return Outcome(batch.id, details={"batch_id": batch.id, "record_count": batch.record_count})
