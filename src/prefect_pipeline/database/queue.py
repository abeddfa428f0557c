"""Queue administration: enqueue inputs, report status, requeue failed or stale ones.

Claims and outcomes live in ``ledger.py``; these are the commands a person runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from peewee import SqliteDatabase

from prefect_pipeline.database.models import DONE, FAILED, PENDING, PROCESSING, utcnow


@dataclass
class EnqueueResult:
    """How many inputs became pending, and how many were already there."""

    queued: int = 0
    already: int = 0
    #: (path, reason) of inputs not queued again.
    kept: list[tuple[str, str]] = field(default_factory=list)


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
    db: SqliteDatabase, found: Iterable[Any], *, force: bool = False, chunk: int = 500
) -> EnqueueResult:
    """Make ``Found`` entries pending. A path already pending or processing is not queued
    twice; a done path is queued again only if its content changed (or with ``force``)."""
    result = EnqueueResult()
    seen: set[str] = set()
    batch: list[Any] = []
    for entry in found:
        batch.append(entry)
        if len(batch) >= chunk:
            _enqueue_chunk(db, batch, force, result, seen)
            batch = []
    if batch:
        _enqueue_chunk(db, batch, force, result, seen)
    return result


def _enqueue_chunk(
    db: SqliteDatabase,
    entries: Sequence[Any],
    force: bool,
    result: EnqueueResult,
    seen: set[str],
) -> None:
    now = utcnow()
    placeholders = ", ".join("?" * len(entries))
    with db.atomic("IMMEDIATE"):
        rows = {
            row[0]: row[1:]
            for row in db.execute_sql(
                "SELECT path, status, size, mtime_ns, sha256 FROM pipeline_inputs"
                f" WHERE path IN ({placeholders})",
                [e.path for e in entries],
            ).fetchall()
        }
        for entry in entries:
            if entry.path in seen:  # found twice in one command (a folder and its sub-folder)
                result.already += 1
                result.kept.append((entry.path, "already pending"))
                continue
            seen.add(entry.path)
            row = rows.get(entry.path)
            if row is not None:
                status, size, mtime_ns, sha256 = row
                if status in (PENDING, PROCESSING):
                    result.already += 1
                    result.kept.append((entry.path, f"already {status}"))
                    continue
                if (
                    status == DONE
                    and not force
                    and (
                        (size == entry.size and mtime_ns == entry.mtime_ns)
                        or (sha256 is not None and _sha256(entry.path) == sha256)
                    )
                ):
                    result.already += 1
                    result.kept.append((entry.path, "done and unchanged"))
                    continue
            db.execute_sql(
                "INSERT INTO pipeline_inputs (path, status, output_path, start_job, size,"
                " mtime_ns, attempts, created_at, updated_at)"
                " VALUES (?, 'pending', ?, 'A', ?, ?, 0, ?, ?)"
                " ON CONFLICT(path) DO UPDATE SET status = 'pending',"
                " output_path = excluded.output_path, size = excluded.size,"
                " mtime_ns = excluded.mtime_ns, attempts = 0, not_before = NULL,"
                " claim_token = NULL, lease_expires_at = NULL, finished_at = NULL,"
                " updated_at = excluded.updated_at",
                (entry.path, entry.output_path, entry.size, entry.mtime_ns, now, now),
            )
            result.queued += 1


def status(db: SqliteDatabase, *, errors: int = 5) -> dict[str, Any]:
    """Inputs and batches by status, record count, the oldest pending input, last errors."""
    inputs = {s: 0 for s in (PENDING, PROCESSING, DONE, FAILED)}
    for state, count in db.execute_sql(
        "SELECT status, count(*) FROM pipeline_inputs GROUP BY status"
    ).fetchall():
        inputs[state] = count
    now = utcnow()
    stale = db.execute_sql(
        "SELECT count(*) FROM pipeline_inputs WHERE status = 'processing' AND lease_expires_at < ?",
        (now,),
    ).fetchone()[0]
    batches = dict(
        db.execute_sql("SELECT status, count(*) FROM processing_batches GROUP BY status").fetchall()
    )
    records = db.execute_sql("SELECT count(*) FROM processed_records").fetchone()[0]
    oldest = db.execute_sql(
        "SELECT id, path, created_at FROM pipeline_inputs WHERE status = 'pending'"
        " ORDER BY created_at, id LIMIT 1"
    ).fetchone()
    last_errors = db.execute_sql(
        "SELECT id, path, status, last_job, last_error, updated_at FROM pipeline_inputs"
        " WHERE last_error IS NOT NULL ORDER BY updated_at DESC, id DESC LIMIT ?",
        (errors,),
    ).fetchall()
    return {
        "inputs": {**inputs, "total": sum(inputs.values()), "stale": stale},
        "batches": {
            "pending": batches.get("pending", 0),
            "finalized": batches.get("finalized", 0),
            "total": sum(batches.values()),
        },
        "records": records,
        "oldest_pending": (
            {"id": oldest[0], "path": oldest[1], "queued_at": oldest[2]} if oldest else None
        ),
        "last_errors": [
            {"id": r[0], "path": r[1], "status": r[2], "job": r[3], "error": r[4], "at": r[5]}
            for r in last_errors
        ],
    }


@dataclass
class RequeueResult:
    requeued: int = 0
    #: (id, reason) of the requested inputs left as they were.
    refused: list[tuple[int, str]] = field(default_factory=list)


def requeue(
    db: SqliteDatabase,
    *,
    failed: bool = False,
    stale: bool = False,
    ids: Sequence[int] = (),
    force: bool = False,
) -> RequeueResult:
    """Put inputs back to pending with attempts reset: failed ones, ones whose lease
    expired (their command died), or the given ids (a done one only with ``force``)."""
    result = RequeueResult()
    now = utcnow()
    reset = (
        "UPDATE pipeline_inputs SET status = 'pending', attempts = 0, not_before = NULL,"
        " claim_token = NULL, lease_expires_at = NULL, finished_at = NULL, updated_at = ?"
    )
    with db.atomic("IMMEDIATE"):
        if failed:
            result.requeued += db.execute_sql(f"{reset} WHERE status = 'failed'", (now,)).rowcount
        if stale:
            result.requeued += db.execute_sql(
                f"{reset} WHERE status = 'processing' AND lease_expires_at < ?", (now, now)
            ).rowcount
        for input_id in ids:
            row = db.execute_sql(
                "SELECT status, lease_expires_at FROM pipeline_inputs WHERE id = ?", (input_id,)
            ).fetchone()
            if row is None:
                result.refused.append((input_id, "no such input"))
                continue
            state, lease = row
            if state == PROCESSING and (lease or "") >= now:
                result.refused.append((input_id, "being processed (its lease has not expired)"))
                continue
            if state == DONE and not force:
                result.refused.append((input_id, "done (use --force to run it again)"))
                continue
            if state == PENDING:
                result.refused.append((input_id, "already pending"))
                continue
            result.requeued += db.execute_sql(f"{reset} WHERE id = ?", (now, input_id)).rowcount
    return result
