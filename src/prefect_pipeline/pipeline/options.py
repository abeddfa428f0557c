"""``ParallelOptions``: how one run over many inputs fans out, groups and retries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from prefect_pipeline.clock import SYSTEM_CLOCK, Clock
from prefect_pipeline.config import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_RETRY_DELAY,
    DEFAULT_WORKERS_AFTER,
)


@dataclass(frozen=True)
class ParallelOptions:
    """How a parallel run fans out. ``workers=0`` runs in this process without Dask."""

    workers: int | None = None
    threads_per_worker: int = 1
    #: A local cluster's workers start once the writer has waited this long for the jobs
    #: they would take (run on a thread of the command meanwhile) and inputs are left (0:
    #: with the cluster). Each worker spends seconds of CPU importing Prefect's task
    #: engine; a run that never waits that long is faster without them (the ski-rental
    #: rule: pay for them once their absence has cost as much as they do).
    workers_after_s: float = DEFAULT_WORKERS_AFTER
    address: str | None = None
    force: bool = False
    #: A claimed input whose lease expires (its command died) may be taken by another one.
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    #: Attempts per input for errors a retry may cure. None: the entry point's default
    #: (``run-parallel`` tries once; ``drain-db`` ``DEFAULT_MAX_ATTEMPTS`` times).
    max_attempts: int | None = None
    #: Delay before the first retry; doubles with every attempt.
    retry_base_seconds: float = DEFAULT_RETRY_DELAY
    first_group_files: int = 8
    #: Each group costs a few Prefect task runs (~0.1 s of CPU each, here and in Prefect's
    #: server): on 20,000 small files 2,000 per group took 12 s where 500 took 17-21 s.
    max_group_files: int = 2000
    max_group_bytes: int = 8 * 1024 * 1024
    in_flight_per_worker: int = 2
    progress: bool = False
    #: Epoch seconds the command started (for elapsed and start-up); default: the call.
    started_at: float | None = None
    #: Where the run reads the time and waits (leases, retry delays).
    clock: Clock = SYSTEM_CLOCK
    #: Seconds an existing scheduler (``address``) has to answer.
    connect_timeout: float = 10.0
    #: Called with the run's summary as soon as it is known, before the cluster and the
    #: Prefect server stop (the CLI prints it there: nothing in it waits for them).
    report: Callable[[Any], None] | None = None

    def check(self) -> None:
        """Refuse impossible requests (``UsageError``) before anything starts."""
        from prefect_pipeline.exceptions import UsageError
        from prefect_pipeline.pipeline.cluster import check_address, check_workers

        if self.address is not None:
            if self.workers is not None:
                raise UsageError(
                    "--address and --workers do not go together: "
                    "the existing cluster decides its workers"
                )
            check_address(self.address)
        elif self.workers:
            check_workers(self.workers)
        if self.threads_per_worker < 1:
            raise UsageError("--threads-per-worker must be at least 1")
        if not self.workers_after_s >= 0:  # also refuses NaN
            raise UsageError("--workers-after must be 0 or more seconds")

    def with_overrides(self, overrides: dict[str, Any]) -> ParallelOptions:
        """A copy with the non-None ``overrides`` applied."""
        given = {key: value for key, value in overrides.items() if value is not None}
        return replace(self, **given) if given else self
