"""Queue administration: enqueue inputs, report status, requeue failed or stale ones.

Claims and outcomes live in ``ledger.py``; these are the commands a person runs. The rules
are here, the statements are the store's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefect_pipeline.clock import SYSTEM_CLOCK, Clock, iso
from prefect_pipeline.database.ledger import (
    FoundInput,
    dead_owners,
    rejected_unchanged,
    take_over_dead_owners,
    unfinished_paths,
)
from prefect_pipeline.database.models import DONE, PENDING, PROCESSING
from prefect_pipeline.database.owners import this_process
from prefect_pipeline.database.store import InputRow, Store


@dataclass
class EnqueueResult:
    """How many inputs became pending, how many were already there, and which were not
    queued because their own content failed them and their file is unchanged."""

    queued: int = 0
    already: int = 0
    #: (path, outcome) of each input not queued: its content failed its last run
    #: (``rejected_outcome``) and its file is unchanged.
    rejected: list[tuple[str, str]] = field(default_factory=list)


def _sha256(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def enqueue(
    store: Store,
    found: Iterable[FoundInput],
    *,
    force: bool = False,
    chunk: int = 500,
    clock: Clock = SYSTEM_CLOCK,
    max_line_bytes: int | None = None,
    job_range: tuple[str, str] | None = None,
) -> EnqueueResult:
    """Make found files pending. A path already pending or processing is not queued
    twice; a done path is queued again only if its content changed (or with ``force``).
    One its content failed, as run by ``job_range`` (first and last job: the range the
    queue will be drained with), is queued again only if its file changed, with ``force``,
    or if it was only too large for a ``max_line_bytes`` smaller than this one
    (``still_rejected``), as ``run-parallel`` registers them."""

    def rejected_again(row: InputRow, entry: FoundInput) -> bool:
        return not force and rejected_unchanged(row, entry, job_range, max_line_bytes)

    result = EnqueueResult()
    seen: set[str] = set()
    batch: list[FoundInput] = []
    for entry in found:
        batch.append(entry)
        if len(batch) >= chunk:
            _enqueue_chunk(store, batch, force, result, seen, clock, rejected_again)
            batch = []
    if batch:
        _enqueue_chunk(store, batch, force, result, seen, clock, rejected_again)
    return result


def _enqueue_chunk(
    store: Store,
    entries: Sequence[FoundInput],
    force: bool,
    result: EnqueueResult,
    seen: set[str],
    clock: Clock,
    rejected_again: Callable[[InputRow, FoundInput], bool],
) -> None:
    now = iso(clock.now())
    with store.transaction():
        rows = store.inputs_by_path([e.path for e in entries])
        unfinished = unfinished_paths(store, rows.values())  # as registration decides
        for entry in entries:
            if entry.path in seen:
                # Named twice in one command (a file twice, a folder and its sub-folder):
                # one input, counted once, in whichever chunk it came first.
                continue
            seen.add(entry.path)
            row = rows.get(entry.path)
            if row is not None:
                if row.status in (PENDING, PROCESSING):
                    result.already += 1
                    continue
                if (
                    row.status == DONE
                    and not force
                    and row.path not in unfinished
                    and (
                        (row.size == entry.size and row.mtime_ns == entry.mtime_ns)
                        or (row.sha256 is not None and _sha256(entry.path) == row.sha256)
                    )
                ):
                    result.already += 1
                    continue
                if rejected_again(row, entry):
                    result.rejected.append((entry.path, row.outcome or ""))
                    continue
            store.queue(
                path=entry.path,
                output_path=entry.output_path,
                size=entry.size,
                mtime_ns=entry.mtime_ns,
                now=now,
            )
            result.queued += 1


def status(store: Store, *, errors: int = 5, clock: Clock = SYSTEM_CLOCK) -> dict[str, Any]:
    """Inputs and batches by status, record count, the oldest pending input, last errors.

    ``inputs.stale`` counts the claims whose lease expired and the unexpired ones of a
    command of this host that is gone: both are what ``requeue --stale`` puts back. Nothing
    is written."""

    def look() -> dict[str, Any]:
        now = iso(clock.now())
        report = store.status(now, errors=errors)
        report["inputs"]["stale"] += _held_by_the_gone(store, now)
        return report

    return store.read(look)


def queued(store: Store, *, clock: Clock = SYSTEM_CLOCK) -> int:
    """What a drain would take now: the inputs ``status`` counts pending or stale, without
    the rest of ``status`` (its record count alone reads the whole records table)."""
    now = iso(clock.now())
    return store.count_pending_or_expired(now) + _held_by_the_gone(store, now)


def _held_by_the_gone(store: Store, now: str) -> int:
    """Inputs under a lease that has not run out, held by a command of this host that is
    gone: stale too (``requeue --stale`` puts them back, a drain takes them over)."""
    gone = dead_owners(store, this_process(), now)
    return sum(store.count_live_claims_of(owner, now) for owner in gone)


@dataclass(frozen=True)
class Left:
    """What the queue holds that a drain does not take: failed inputs (run again only once
    requeued) and those live commands hold."""

    failed: int
    #: (who, how many, until when) for each command holding inputs under a live lease.
    held: list[tuple[str, int, str]]


def left_in_queue(store: Store, *, clock: Clock = SYSTEM_CLOCK) -> Left:
    """``Left`` of the queue now: two statements on indexed columns, for a drain's summary.
    A command of this host that is gone holds nothing (a drain takes its inputs over)."""
    now = iso(clock.now())
    gone = set(dead_owners(store, this_process(), now))
    held = [
        (owner.describe() if owner is not None else "another command", count, until)
        for owner, count, until in store.live_holders(now)
        if owner not in gone
    ]
    return Left(store.count_failed(), held)


@dataclass
class RequeueResult:
    requeued: int = 0
    #: (id, reason) of the requested inputs left as they were.
    refused: list[tuple[int, str]] = field(default_factory=list)


def requeue(
    store: Store,
    *,
    failed: bool = False,
    stale: bool = False,
    ids: Sequence[int] = (),
    force: bool = False,
    clock: Clock = SYSTEM_CLOCK,
) -> RequeueResult:
    """Put inputs back to pending with attempts reset: failed ones, stale ones (their lease
    expired, or their command is a process of this host that is gone), or the
    given ids (a done one only with ``force``)."""
    result = RequeueResult()
    now = iso(clock.now())
    with store.transaction():
        if failed:
            result.requeued += store.requeue_failed(now)
        if stale or ids:
            take_over_dead_owners(store, this_process(), now)
        if stale:
            result.requeued += store.requeue_stale(now)
        for input_id in ids:
            state = store.input_state(input_id)
            if state is None:
                result.refused.append((input_id, "no such input"))
                continue
            status_, lease = state
            if status_ == PROCESSING and (lease or "") >= now:
                result.refused.append((input_id, "being processed (its lease has not expired)"))
                continue
            if status_ == DONE and not force:
                result.refused.append((input_id, "done (use --force to run it again)"))
                continue
            if status_ == PENDING:
                result.refused.append((input_id, "already pending"))
                continue
            result.requeued += store.requeue_one(input_id, now)
    return result
