"""Job C: finalize a batch and its records."""

from __future__ import annotations

from collections.abc import Sequence
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

    def check_content(self, validated: int) -> None:
        # `pipeline run 999 --start-from C`: one line at once, not after a Prefect server's
        # start-up and a Failed flow run.
        if not self.store.batches([validated]):
            raise InputValidationError(f"batch {validated}", "no such batch")

    def single_job(self, validated: int) -> Outcome:
        [outcome] = self.group_job([validated])  # one batch is a group of one
        return outcome

    def group_job(self, validated: Sequence[int]) -> list[Outcome]:
        """``single_job`` on a group: one read of the batches and one update of the batches
        and one of their records for all."""
        if len(set(validated)) < len(validated):
            # One batch twice: the second finds it finalized by the first, in order.
            return [self.single_job(batch_id) for batch_id in validated]
        found = self.store.batches(validated)
        if len(found) < len(validated):
            missing = next(batch_id for batch_id in validated if batch_id not in found)
            # The group rolls back and each batch runs alone: this one fails by itself.
            raise InputValidationError(f"batch {missing}", "no such batch")
        pending = [batch_id for batch_id in validated if found[batch_id][0] != FINALIZED]
        if pending:
            self.store.finalize_batches(pending, iso(SYSTEM_CLOCK.now()))
        return [self._outcome(b, *found[b]) for b in validated]

    @staticmethod
    def _outcome(batch_id: int, status: str, record_count: int) -> Outcome:
        return Outcome(
            batch_id,
            note=f"batch {batch_id} was already finalized" if status == FINALIZED else None,
            details={"batch_id": batch_id, "record_count": record_count},
            facts=Facts(batch_id=batch_id),
        )

    def describe(self, outcome: Outcome) -> str:
        return f"batch {outcome.details['batch_id']} finalized"
