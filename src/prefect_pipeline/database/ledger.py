"""The input ledger (``pipeline_inputs``) seen from one command run: its claims, leases and
outcomes.

Every input is claimed before its work starts, with this run's token and a lease the run
renews while it works. An input is marked done only while the claim holds, in the same
transaction as its last job's writes, so ``done`` always means the rows exist and are final;
a run whose lease was taken over (it stalled, another command took the input) cannot
overwrite the other's result. The statements are the store's; the rules are here.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from prefect_pipeline.clock import SYSTEM_CLOCK, Clock, iso, iso_in
from prefect_pipeline.database.models import DONE, FAILED, PROCESSING
from prefect_pipeline.database.owners import Owner, is_gone, this_process
from prefect_pipeline.database.statuses import rejected_reason, still_rejected
from prefect_pipeline.database.store import Claim, ClaimedRow, Finished, InputRow, Store
from prefect_pipeline.exceptions import ClaimLostError, DatabaseConflict
from prefect_pipeline.logs import get_logger

logger = get_logger("ledger")

T = TypeVar("T")

#: How many times a transaction (a registration, a lease renewal, a group's writes) runs
#: before a conflict with other commands' (a deadlock the database ended by rolling it
#: back) ends the run.
CONFLICT_ATTEMPTS = 5

#: Why registration skips a done input whose file is as its last run found it.
_UNCHANGED = "unchanged since its last run"

def unchanged(row: InputRow, entry: FoundInput, job_range: tuple[str, str] | None) -> bool:
    """Whether ``entry``'s file is as the last run of its input ``row`` found it, and that
    run ran ``job_range`` (first and last job; None: any)."""
    return (row.size, row.mtime_ns) == (entry.size, entry.mtime_ns) and (
        job_range is None or (row.start_job, row.stop_job) == job_range
    )


def unfinished_paths(store: Store, rows: Iterable[InputRow]) -> set[str]:
    """The paths of done inputs (``rows``) that run again, changed or not: their batch is
    gone and their content waits in a batch not finalized. A run of that path alone
    (``run``, ``run-all``) replaced the batch, then stopped before job C; run again, job B
    finds that content stored and job C finalizes it. (A batch gone because other content
    replaced it on purpose is left so: the input is skipped as before.)"""
    gone = {
        r.path: r.sha256
        for r in rows
        if r.status == DONE and r.batch_id and not r.batch_stored and r.sha256
    }
    if not gone:
        return set()
    waiting = store.pending_contents(list(gone.values()))
    return {path for path, sha256 in gone.items() if sha256 in waiting}


def rejected_unchanged(
    row: InputRow, entry: FoundInput, job_range: tuple[str, str] | None, max_line_bytes: int | None
) -> bool:
    """Whether the input ``row`` failed on its own content (binary, not UTF-8, a line too
    long) in a run of ``job_range`` and would again: its file unchanged, and its limit no
    larger than ``max_line_bytes`` (``still_rejected``)."""
    return (
        row.status == FAILED
        and still_rejected(row.outcome, max_line_bytes)
        and unchanged(row, entry, job_range)
    )


#: An input this run holds.
Claimed = ClaimedRow


def new_token() -> str:
    """A claim token / run id."""
    return uuid.uuid4().hex


class FoundInput(Protocol):
    """A file found for a run (``discovery.Found``)."""

    @property
    def path(self) -> str: ...

    @property
    def output_path(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def mtime_ns(self) -> int: ...


@dataclass(frozen=True)
class Held:
    """A found input that another live command holds: not run, and not skipped either (it
    may still fail there)."""

    path: str
    #: Who holds it ("pid 123 on host"; "another command" when unrecorded).
    owner: str
    #: When its lease runs out unless its holder renews it (ISO-8601 UTC).
    until: str


@dataclass
class Registration:
    """What ``register_and_claim`` did with a group of found files."""

    claimed: list[Claimed] = field(default_factory=list)
    #: (path, reason) of inputs not run because they need nothing: unchanged since their
    #: last run.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: Inputs another live command holds.
    held: list[Held] = field(default_factory=list)


def dead_owners(store: Store, me: Owner, now: str) -> list[Owner]:
    """The holders of unexpired leases that are processes of ``me``'s host and process
    namespace and are gone (killed, crashed). Owners elsewhere are never judged."""
    if not me.namespace:
        return []
    return [
        owner
        for owner in store.live_owners(me.host, me.namespace, now)
        if owner != me and me.same_namespace(owner) and is_gone(owner)
    ]


def take_over_dead_owners(store: Store, me: Owner, now: str) -> int:
    """End the leases of ``dead_owners``' claims a moment before ``now``: their inputs
    become claimable now instead of when their leases run out, by the statements that take
    expired leases (a claim, ``requeue --stale``). Call inside the transaction of those
    statements. Returns how many inputs were freed."""
    ended = iso(datetime.fromisoformat(now) - timedelta(microseconds=1))
    return sum(store.expire_claims_of(owner, ended) for owner in dead_owners(store, me, now))


class Ledger:
    """The ledger operations of one command run (one ``run_id`` and claim token)."""

    def __init__(
        self,
        store: Store,
        *,
        lease_seconds: float,
        run_id: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        owner: Owner | None = None,
        max_line_bytes: int | None = None,
    ) -> None:
        self.store = store
        #: The run's --max-line-bytes: an input rejected as too large for a smaller one runs
        #: again (None: whatever it was rejected for, it stays skipped while unchanged).
        self.max_line_bytes = max_line_bytes
        self.lease_seconds = lease_seconds
        self.run_id = run_id or new_token()
        # One token for the whole command: renewing its leases is one statement.
        self.token = self.run_id
        self.clock = clock
        #: The process whose claims these are (stamped on every claimed row).
        self.owner = owner or this_process()
        #: This run's Prefect flow run and its page, once it has one (``stamp_flow_run``).
        self.flow_run_id: str | None = None
        self.flow_run_url: str | None = None

    def _claim(self, start_job: str | None, stop_job: str | None) -> Claim:
        return Claim(
            token=self.token,
            run_id=self.run_id,
            lease_until=iso_in(self.clock, self.lease_seconds),
            now=iso(self.clock.now()),
            start_job=start_job,
            stop_job=stop_job,
            owner=self.owner,
            flow_run_id=self.flow_run_id,
            flow_run_url=self.flow_run_url,
        )

    # Claiming --------------------------------------------------------------------------

    def register_and_claim(
        self,
        found: Sequence[FoundInput],
        *,
        start_job: str,
        stop_job: str,
        force: bool = False,
    ) -> Registration:
        """Record found files and claim those that need running, in one transaction.

        Skipped: a file whose last run ended done with the same size, mtime and job range
        (unless ``force``). Held: a file another live command holds (one of this host
        whose process is gone holds nothing: its inputs are taken over).

        Commands registering overlapping files on PostgreSQL lock the same rows, each in
        path order, but three of them can still wait on one another in a circle; the
        database then rolls one transaction back. That one runs again, after a pause that
        grows and differs between commands, instead of ending its run.
        """
        if not found:
            return Registration()
        return self.retried(
            lambda: self._register_and_claim(found, start_job, stop_job, force),
            what="registration",
        )

    def retried(
        self,
        transaction: Callable[[], T],
        *,
        what: str,
        on_conflict: Callable[[DatabaseConflict], None] | None = None,
    ) -> T:
        """``transaction()`` (which runs one transaction); run again when the database rolls
        it back to end a deadlock with another command (``on_conflict`` is told first), after
        a pause that grows and differs between commands (``CONFLICT_ATTEMPTS`` in all)."""
        # Inside a caller's transaction, which keeps the locks it took before this, this
        # part run again alone would meet the same circle: only the caller can rerun.
        retries = 0 if self.store.in_transaction() else CONFLICT_ATTEMPTS - 1
        for attempt in range(1, retries + 1):
            try:
                return transaction()
            except DatabaseConflict as exc:
                logger.debug("%s rolled back (%s); again, attempt %d", what, exc, attempt + 1)
                if on_conflict is not None:
                    on_conflict(exc)
                self.clock.sleep(random.uniform(0.05, 0.2) * attempt)
        return transaction()

    def _register_and_claim(
        self, found: Sequence[FoundInput], start_job: str, stop_job: str, force: bool
    ) -> Registration:
        result = Registration()
        claim = self._claim(start_job, stop_job)
        with self.store.transaction():
            take_over_dead_owners(self.store, self.owner, claim.now)
            existing = self.store.inputs_by_path([f.path for f in found])
            unfinished = unfinished_paths(self.store, existing.values())
            wanted: dict[str, FoundInput] = {}
            for entry in found:
                row = existing.get(entry.path)
                if row is not None:
                    until = row.lease_expires_at or ""
                    if row.status == PROCESSING and until > claim.now:
                        owner = row.owner
                        who = owner.describe() if owner is not None else "another command"
                        result.held.append(Held(entry.path, who, until))
                        continue
                    job_range = (start_job, stop_job)
                    if not force and (
                        (
                            row.status == DONE
                            and unchanged(row, entry, job_range)
                            and row.path not in unfinished
                        )
                        or rejected_unchanged(row, entry, job_range, self.max_line_bytes)
                    ):
                        why = _UNCHANGED if row.status == DONE else rejected_reason(row.outcome)
                        result.skipped.append((entry.path, why))
                        continue
                wanted[entry.path] = entry
            claimed = self.store.register_all_claimed(
                [(f.path, f.output_path, f.size, f.mtime_ns) for f in wanted.values()], claim
            )
            result.claimed.extend(claimed[path] for path in wanted if path in claimed)
            # Registered by another command between this one's read and its write (only
            # where writers run side by side): read again, all at once.
            taken = [path for path in wanted if path not in claimed]
            others = self.store.inputs_by_path(taken) if taken else {}
            for path in taken:
                other = others[path]
                owner = other.owner
                result.held.append(
                    Held(
                        path,
                        owner.describe() if owner is not None else "another command",
                        other.lease_expires_at or "",
                    )
                )
        return result

    def claim_pending(
        self,
        limit: int,
        *,
        max_attempts: int,
        start_job: str | None = None,
        stop_job: str | None = None,
        max_bytes: int | None = None,
    ) -> list[Claimed]:
        """Claim up to ``limit`` queued inputs that are due (pending, or processing with an
        expired lease: their command died), and no more than ``max_bytes`` of them by their
        size when queued (always at least one). An input whose lease expired on its last
        allowed attempt fails instead."""
        if limit <= 0:
            return []
        claim = self._claim(start_job, stop_job)
        with self.store.transaction():
            take_over_dead_owners(self.store, self.owner, claim.now)
            self.store.fail_exhausted_leases(claim.now, max_attempts)
            return self.store.claim_due(
                claim, limit=limit, max_bytes=max_bytes if max_bytes is not None else 2**62
            )

    def next_due(self) -> datetime | None:
        """When the earliest waiting retry falls due (None if none is waiting), whichever
        run scheduled it."""
        due = self.store.next_due()
        return datetime.fromisoformat(due) if due else None

    def held(self, input_ids: Sequence[int]) -> set[int]:
        """Which of these inputs this run still holds; call inside the transaction that is
        about to write their results (the answer stands until it ends)."""
        return self.store.held_claims(input_ids, self.token)

    # Outcomes --------------------------------------------------------------------------

    def mark_done(self, done: Sequence[tuple[int, Finished]]) -> None:
        """Mark claimed inputs done: ``(input id, what it finished with)``. Call inside the
        transaction of their last job's writes; raises ``ClaimLostError`` (rolling them
        back) if the claim of any no longer holds."""
        marked = self.store.mark_done(done, self.token, iso(self.clock.now()))
        if marked != len(done):
            which = f"input {done[0][0]}" if len(done) == 1 else f"{len(done) - marked} input(s)"
            raise ClaimLostError(f"{which}: claim lost (lease expired)")

    def mark_failed(
        self,
        input_id: int,
        *,
        job: str,
        error: str,
        retry_in: float | None = None,
        rejected: str | None = None,
    ) -> bool:
        """Record a failure: back to pending after ``retry_in`` seconds, or failed for good
        (``rejected``: by its own content, this outcome from ``rejected_outcome``; a later run
        skips it while the file is unchanged). Returns False if the claim no longer holds
        (another command has it)."""
        retry_at = None if retry_in is None else iso_in(self.clock, retry_in)
        with self.store.transaction():
            return self.store.mark_failed(
                input_id,
                self.token,
                job=job,
                error=error,
                now=iso(self.clock.now()),
                retry_at=retry_at,
                rejected=rejected,
            )

    def stamp_flow_run(self, flow_run_id: str, url: str | None) -> None:
        """Record this run's Prefect flow run on every input it claimed, and on every input
        it claims from now on."""
        self.flow_run_id, self.flow_run_url = flow_run_id, url
        with self.store.transaction():
            self.store.stamp_flow_run(self.run_id, flow_run_id, url)

    def renew(self) -> None:
        """Extend the leases of every input this command holds."""

        def renew() -> None:
            with self.store.transaction():
                self.store.renew(self.token, iso_in(self.clock, self.lease_seconds))

        # Its rows, locked as the table has them, can close a circle with a registration
        # that locks the same rows in path order.
        self.retried(renew, what="lease renewal")

    def release(self) -> int:
        """Give back every input this command still holds (interrupted): pending again,
        the attempt not counted."""
        # Called after an interrupt, which may have left a transaction half begun or half
        # ended: whatever it was, it had not committed.
        self.store.abandon_transaction()

        def release() -> int:
            with self.store.transaction():
                return self.store.release(self.token, iso(self.clock.now()))

        return self.retried(release, what="giving back")

    # Reading -------------------------------------------------------------------------

    def run_counts(self) -> dict[str, int]:
        """This run's inputs by status, records written, and unchanged inputs."""
        return self.store.run_counts(self.run_id)

    def run_unchanged(self) -> list[dict[str, str]]:
        """This run's inputs whose content was stored already, with the batch, by path."""
        return self.store.run_unchanged(self.run_id)

    def run_failures(self) -> list[dict[str, str]]:
        """This run's failed inputs with their job and error, by path."""
        return self.store.run_failures(self.run_id)
