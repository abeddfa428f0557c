"""Job C: finalize a batch and its records."""

from __future__ import annotations

from typing import Any

from prefect_pipeline.clock import SYSTEM_CLOCK, iso
from prefect_pipeline.database.statuses import FINALIZED
from prefect_pipeline.exceptions import InputValidationError
from prefect_pipeline.jobs.base import BaseJob, Facts, Kind, Outcome
from prefect_pipeline.validators import validate_batch_id


class JobC(BaseJob):
    """Batch id -> the batch and its records marked ``finalized`` with a timestamp.

    Running it twice is harmless: the first finalization time is kept. Output: the batch id.
    """

    name = "C"
    description = "Finalize a batch and its records"
    uses_database = True
    takes = Kind.BATCH
    produces = Kind.BATCH

    def validate_input(self, input_data: Any) -> int:
        return validate_batch_id(input_data)

    def single_job(self, validated: int) -> Outcome:
        batch = self.store.batch(validated)
        if batch is None:
            raise InputValidationError(f"batch {validated}", "no such batch")
        status, record_count = batch
        details = {"batch_id": validated, "record_count": record_count}
        facts = Facts(batch_id=validated)
        if status == FINALIZED:
            return Outcome(
                validated,
                note=f"batch {validated} was already finalized",
                details=details,
                facts=facts,
            )
        self.store.finalize_batch(validated, iso(SYSTEM_CLOCK.now()))
        return Outcome(validated, details=details, facts=facts)

    def describe(self, outcome: Outcome) -> str:
        return f"batch {outcome.details['batch_id']} finalized"
