"""The input ledger and queue (``pipeline_inputs``): claims, leases, outcomes.

Every statement that changes a row runs in the writer (the command's own process), inside
``BEGIN IMMEDIATE``, and checks the claim token, so two commands on one database never run
one input twice and a command whose lease expired cannot overwrite another's result.

All claim SQL is in this module so that a PostgreSQL variant (``FOR UPDATE SKIP LOCKED``)
has one place to go.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from peewee import SqliteDatabase

from prefect_pipeline.database.models import DONE, FAILED, PENDING, PROCESSING, utcnow
from prefect_pipeline.exceptions import ClaimLostError


def new_token() -> str:
    """A claim token / run id."""
    return uuid.uuid4().hex


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def later(seconds: float, now: datetime | None = None) -> str:
    """UTC ISO-8601 text ``seconds`` from ``now``."""
    return _iso((now or datetime.now(UTC)) + timedelta(seconds=seconds))


@dataclass(frozen=True)
class Claimed:
    """A ledger row this command now holds."""

    input_id: int
    path: str
    output_path: str | None
    attempts: int


@dataclass
class Registration:
    """What ``register_and_claim`` did with a group of found files."""

    claimed: list[Claimed] = field(default_factory=list)
    #: (path, reason) of inputs not run: unchanged since their last run, or held by
    #: another command.
    skipped: list[tuple[str, str]] = field(default_factory=list)


class Ledger:
    """Ledger operations for one command run (one ``run_id`` and claim token)."""

    def __init__(
        self,
        db: SqliteDatabase,
        *,
        lease_seconds: float = 300.0,
        run_id: str | None = None,
    ) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        self.run_id = run_id or new_token()
        # One token for the whole command: renewing its leases is one statement.
        self.token = self.run_id

    # Claiming ------------------------------------------------------------------------

    def register_and_claim(
        self,
        found: Sequence[Any],
        *,
        start_job: str,
        stop_job: str,
        force: bool = False,
    ) -> Registration:
        """Record found files (``Found`` objects) and claim those that need running.

        Skipped: a file whose last run ended done with the same size, mtime and job range
        (unless ``force``), and a file another live command holds.
        """
        result = Registration()
        if not found:
            return result
        now = utcnow()
        lease = later(self.lease_seconds)
        with self.db.atomic("IMMEDIATE"):
            existing = self._rows_by_path([f.path for f in found])
            for entry in found:
                row = existing.get(entry.path)
                if row is not None:
                    if row["status"] == PROCESSING and (row["lease_expires_at"] or "") > now:
                        result.skipped.append((entry.path, "being processed by another command"))
                        continue
                    if (
                        not force
                        and row["status"] == DONE
                        and row["size"] == entry.size
                        and row["mtime_ns"] == entry.mtime_ns
                        and row["start_job"] == start_job
                        and row["stop_job"] == stop_job
                    ):
                        result.skipped.append((entry.path, "unchanged since its last run"))
                        continue
                cursor = self.db.execute_sql(
                    "INSERT INTO pipeline_inputs (path, status, output_path, start_job, stop_job,"
                    " size, mtime_ns, attempts, claim_token, run_id, lease_expires_at,"
                    " created_at, updated_at)"
                    " VALUES (?, 'processing', ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(path) DO UPDATE SET status = 'processing',"
                    " output_path = excluded.output_path, start_job = excluded.start_job,"
                    " stop_job = excluded.stop_job, size = excluded.size,"
                    " mtime_ns = excluded.mtime_ns, attempts = 1, last_error = NULL,"
                    " last_job = NULL, not_before = NULL, finished_at = NULL,"
                    " claim_token = excluded.claim_token, run_id = excluded.run_id,"
                    " lease_expires_at = excluded.lease_expires_at,"
                    " updated_at = excluded.updated_at"
                    " RETURNING id",
                    (
                        entry.path,
                        entry.output_path,
                        start_job,
                        stop_job,
                        entry.size,
                        entry.mtime_ns,
                        self.token,
                        self.run_id,
                        lease,
                        now,
                        now,
                    ),
                )
                input_id = cursor.fetchone()[0]
                result.claimed.append(Claimed(input_id, entry.path, entry.output_path, 1))
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
        size when queued (always at least one). One ``BEGIN IMMEDIATE`` transaction."""
        if limit <= 0:
            return []
        now = utcnow()
        with self.db.atomic("IMMEDIATE"):
            # A lease that expired on its last allowed attempt: give up on the input.
            self.db.execute_sql(
                "UPDATE pipeline_inputs SET status = 'failed', claim_token = NULL,"
                " lease_expires_at = NULL, finished_at = ?, updated_at = ?,"
                " last_error = 'lease expired on its last attempt (the command running it"
                " stopped or died)'"
                " WHERE status = 'processing' AND lease_expires_at < ? AND attempts >= ?",
                (now, now, now, max_attempts),
            )
            cursor = self.db.execute_sql(
                "UPDATE pipeline_inputs SET status = 'processing', claim_token = ?, run_id = ?,"
                " lease_expires_at = ?, attempts = attempts + 1, updated_at = ?,"
                " start_job = coalesce(?, start_job), stop_job = coalesce(?, stop_job)"
                " WHERE id IN (SELECT id FROM ("
                "   SELECT id, size, sum(size) OVER (ORDER BY id) AS upto FROM ("
                "     SELECT id, coalesce(size, 0) AS size FROM pipeline_inputs"
                "     WHERE (status = 'pending' AND (not_before IS NULL OR not_before <= ?))"
                "        OR (status = 'processing' AND lease_expires_at < ?)"
                "     ORDER BY id LIMIT ?))"
                "  WHERE upto - size < ?)"  # those that start below the byte cap
                " RETURNING id, path, output_path, attempts",
                (
                    self.token,
                    self.run_id,
                    later(self.lease_seconds),
                    now,
                    start_job,
                    stop_job,
                    now,
                    now,
                    limit,
                    max_bytes if max_bytes is not None else 2**62,
                ),
            )
            rows = cursor.fetchall()
        return sorted((Claimed(*row) for row in rows), key=lambda c: c.input_id)

    def next_due(self) -> str | None:
        """When the earliest waiting retry falls due (None if none is waiting), whichever
        run scheduled it."""
        row = self.db.execute_sql(
            "SELECT min(not_before) FROM pipeline_inputs WHERE status = 'pending'"
            " AND not_before IS NOT NULL"
        ).fetchone()
        return row[0] if row else None

    # Outcomes ------------------------------------------------------------------------

    def mark_done(
        self,
        input_id: int,
        *,
        last_job: str,
        batch_id: int | None,
        sha256: str | None,
        records_written: int,
        unchanged: bool,
    ) -> None:
        """Mark a claimed input done. Call inside the transaction of its last job's writes;
        raises ``ClaimLostError`` (rolling them back) if the claim no longer holds."""
        now = utcnow()
        cursor = self.db.execute_sql(
            "UPDATE pipeline_inputs SET status = 'done', batch_id = ?, sha256 = ?,"
            " records_written = ?, outcome = ?, last_job = ?, last_error = NULL,"
            " claim_token = NULL, lease_expires_at = NULL, not_before = NULL,"
            " finished_at = ?, updated_at = ?"
            " WHERE id = ? AND claim_token = ?",
            (
                batch_id,
                sha256,
                records_written,
                "unchanged" if unchanged else "processed",
                last_job,
                now,
                now,
                input_id,
                self.token,
            ),
        )
        if cursor.rowcount != 1:
            raise ClaimLostError(f"input {input_id}: claim lost (lease expired)")

    def mark_failed(
        self,
        input_id: int,
        *,
        job: str,
        error: str,
        retry_in: float | None = None,
    ) -> bool:
        """Record a failure: back to pending after ``retry_in`` seconds, or failed for good.
        Returns False if the claim no longer holds (another command has the input)."""
        now = utcnow()
        with self.db.atomic("IMMEDIATE"):
            if retry_in is None:
                cursor = self.db.execute_sql(
                    "UPDATE pipeline_inputs SET status = 'failed', last_job = ?, last_error = ?,"
                    " claim_token = NULL, lease_expires_at = NULL, finished_at = ?,"
                    " updated_at = ? WHERE id = ? AND claim_token = ?",
                    (job, error, now, now, input_id, self.token),
                )
            else:
                cursor = self.db.execute_sql(
                    "UPDATE pipeline_inputs SET status = 'pending', last_job = ?, last_error = ?,"
                    " claim_token = NULL, lease_expires_at = NULL, not_before = ?,"
                    " updated_at = ? WHERE id = ? AND claim_token = ?",
                    (job, error, later(retry_in), now, input_id, self.token),
                )
        return cursor.rowcount == 1

    def renew(self) -> None:
        """Extend the leases of every input this command holds."""
        with self.db.atomic("IMMEDIATE"):
            self.db.execute_sql(
                "UPDATE pipeline_inputs SET lease_expires_at = ? WHERE claim_token = ?"
                " AND status = 'processing'",
                (later(self.lease_seconds), self.token),
            )

    def release(self) -> int:
        """Give back every input this command still holds (interrupted): pending again,
        the attempt not counted."""
        with self.db.atomic("IMMEDIATE"):
            cursor = self.db.execute_sql(
                "UPDATE pipeline_inputs SET status = 'pending', claim_token = NULL,"
                " lease_expires_at = NULL, attempts = max(attempts - 1, 0), updated_at = ?"
                " WHERE claim_token = ? AND status = 'processing'",
                (utcnow(), self.token),
            )
        return cursor.rowcount

    # Reading -------------------------------------------------------------------------

    def _rows_by_path(self, paths: Iterable[str]) -> dict[str, dict[str, Any]]:
        paths = list(paths)
        rows: dict[str, dict[str, Any]] = {}
        columns = (
            "path",
            "status",
            "size",
            "mtime_ns",
            "start_job",
            "stop_job",
            "lease_expires_at",
        )
        for start in range(0, len(paths), 900):
            chunk = paths[start : start + 900]
            cursor = self.db.execute_sql(
                f"SELECT {', '.join(columns)} FROM pipeline_inputs"
                f" WHERE path IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            for values in cursor.fetchall():
                rows[values[0]] = dict(zip(columns, values, strict=True))
        return rows

    def run_counts(self) -> dict[str, Any]:
        """This run's inputs by status, records written, and unchanged inputs."""
        cursor = self.db.execute_sql(
            "SELECT status, count(*), coalesce(sum(records_written), 0),"
            " coalesce(sum(outcome = 'unchanged'), 0)"
            " FROM pipeline_inputs WHERE run_id = ? GROUP BY status",
            (self.run_id,),
        )
        counts: dict[str, Any] = {
            PENDING: 0,
            PROCESSING: 0,
            DONE: 0,
            FAILED: 0,
            "records": 0,
            "unchanged": 0,
        }
        for status, count, records, unchanged in cursor.fetchall():
            counts[status] = count
            counts["records"] += records
            counts["unchanged"] += unchanged
        return counts

    def run_failures(self) -> list[dict[str, str]]:
        """This run's failed inputs with their job and error, by path."""
        cursor = self.db.execute_sql(
            "SELECT path, last_job, last_error FROM pipeline_inputs"
            " WHERE run_id = ? AND status = 'failed' ORDER BY path",
            (self.run_id,),
        )
        return [{"input": p, "job": j or "", "error": e or ""} for p, j, e in cursor.fetchall()]
