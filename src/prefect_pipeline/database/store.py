"""The storage seam: everything the pipeline asks of a database, in one interface.

Jobs B and C, the ledger, the queue commands and the CLI write no SQL of their own: they
call a ``Store``. This class holds the statements that every SQL backend understands,
written with ``?`` placeholders; a backend (``sqlite.py``; a server database in a module of
its own) opens the connection, creates and checks the schema, and supplies what its
database does differently: how a write transaction starts, how a document's records go
in, and how a claim takes rows that no other command holds.

A store belongs to one process (``backends.open_store`` keeps one per location and
process; Peewee gives each thread its own connection). What crosses a process boundary is
the location, never a store.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn, TypeVar

from peewee import Database

from prefect_pipeline.database.models import (
    DONE,
    FAILED,
    FINALIZED,
    MODELS,
    PENDING,
    PROCESSING,
)
from prefect_pipeline.database.owners import Owner
from prefect_pipeline.database.url import DatabaseUrl
from prefect_pipeline.exceptions import (
    DatabaseConflict,
    DatabaseMismatch,
    DatabaseUnavailable,
    MissingDatabase,
)

T = TypeVar("T")

#: Bump when the schema changes, add what it adds to ``ADDED_COLUMNS`` and the step that
#: upgrades the previous version to each backend's migrations.
SCHEMA_VERSION = 2

#: Columns each schema version added to existing tables (version 1 has the models' columns
#: without every later addition).
ADDED_COLUMNS: Mapping[int, Mapping[str, tuple[str, ...]]] = {
    2: {
        "pipeline_inputs": (
            "owner_host",
            "owner_namespace",
            "owner_pid",
            "owner_started_at",
            "flow_run_id",
            "flow_run_url",
        )
    },
}


def schema_columns(version: int = SCHEMA_VERSION) -> dict[str, set[str]]:
    """The pipeline's tables and their columns at a schema version."""
    tables = {
        model._meta.table_name: {field.column_name for field in model._meta.sorted_fields}
        for model in MODELS
    }
    for later, added in ADDED_COLUMNS.items():
        if later > version:
            for table, columns in added.items():
                tables[table] -= set(columns)
    return tables


def _owner_key(owner: Owner) -> tuple[str, str, int, float]:
    """The owner columns' values, in the order the statements list them."""
    return (owner.host, owner.namespace, owner.pid, owner.started_at)


def refuse_missing(display: str) -> MissingDatabase:
    """The error of a command that only reads, pointed at a database without our tables."""
    return MissingDatabase(
        f"{display}: holds no pipeline tables (check the database location; enqueue, run, "
        "run-all and run-parallel create them)"
    )


def check_tables(display: str, found: Mapping[str, set[str]], version: int | None) -> None:
    """Refuse a database whose tables named like the pipeline's are not its own: ``found``
    maps each such table that exists to its columns; ``version`` is the schema version the
    database records (None: it records none, so any such table belongs to someone else).
    Raises ``DatabaseMismatch`` naming the database and the table; changes nothing."""
    if version is not None and version > SCHEMA_VERSION:
        raise DatabaseMismatch(
            f"{display}: database schema version {version} is newer than this version of "
            f"the pipeline supports ({SCHEMA_VERSION}); upgrade the pipeline"
        )
    expected = schema_columns(version or SCHEMA_VERSION)
    for table, columns in sorted(found.items()):
        if version is None or columns != expected[table]:
            raise DatabaseMismatch(
                f"{display}: table {table} ({', '.join(sorted(columns))}) is not the "
                "pipeline's; use another database (nothing was changed)"
            )


@dataclass(frozen=True)
class Claim:
    """What a claim stamps on the inputs it takes: whose they are and until when."""

    token: str
    run_id: str
    #: ISO-8601 UTC: when the lease runs out unless renewed.
    lease_until: str
    #: ISO-8601 UTC: the time of the claim.
    now: str
    #: The job range the claimer will run (None: keep what the row says).
    start_job: str | None
    stop_job: str | None
    #: The process that claims.
    owner: Owner
    #: The claimer's Prefect flow run (and its page), once it has one.
    flow_run_id: str | None = None
    flow_run_url: str | None = None

    def owner_values(self) -> tuple[Any, ...]:
        """The owner and flow run columns, in the order the claim statements list them."""
        return (*_owner_key(self.owner), self.flow_run_id, self.flow_run_url)

    def registration_values(self) -> tuple[Any, ...]:
        """What a backend's statement registering a group of found files takes besides the
        files: the job range, the claim, its times and its owner, in that order."""
        return (
            self.start_job,
            self.stop_job,
            self.token,
            self.run_id,
            self.lease_until,
            self.now,
            self.now,
            *self.owner_values(),
        )


@dataclass(frozen=True)
class InputRow:
    """The ledger's view of one input, as registration needs it."""

    id: int
    path: str
    status: str
    size: int | None
    mtime_ns: int | None
    sha256: str | None
    start_job: str | None
    stop_job: str | None
    lease_expires_at: str | None
    #: How its last run ended: "processed", "unchanged" (done) or REJECTED (failed on its
    #: content); stale while it runs again.
    outcome: str | None = None
    owner_host: str | None = None
    owner_namespace: str | None = None
    owner_pid: int | None = None
    owner_started_at: float | None = None
    #: The batch its last run stored (None: none, or a range without job B), and whether
    #: that batch is still there (read with the row: a later run may have replaced it).
    batch_id: int | None = None
    batch_stored: bool = False

    @property
    def owner(self) -> Owner | None:
        """Who holds (or last held) its claim, when that was recorded."""
        if self.owner_host is None or self.owner_pid is None or self.owner_started_at is None:
            return None
        return Owner(
            self.owner_host, self.owner_namespace or "", self.owner_pid, self.owner_started_at
        )


@dataclass(frozen=True)
class ClaimedRow:
    """An input a claim took."""

    input_id: int
    path: str
    output_path: str | None
    attempts: int


@dataclass(frozen=True)
class Finished:
    """What the ledger records of an input whose chain is done."""

    last_job: str
    batch_id: int | None
    sha256: str | None
    records_written: int
    unchanged: bool
    #: The size and mtime of the version of the input that was read (None: keep the ones
    #: recorded when it was found or queued).
    size: int | None = None
    mtime_ns: int | None = None


def done_values(finished: Finished) -> tuple[Any, ...]:
    """What marking an input done stores, in the order of the backends' ``mark_done``
    statements."""
    return (
        finished.batch_id,
        finished.sha256,
        finished.records_written,
        "unchanged" if finished.unchanged else "processed",
        finished.last_job,
        finished.size,
        finished.mtime_ns,
    )


#: Bound parameters per statement, below every backend's limit (SQLite: 32,766).
_IN_CHUNK = 900


def _chunks(values: Sequence[Any], size: int = 0) -> Iterator[list[Any]]:
    """``values`` in pieces small enough for one statement's parameters."""
    size = size or _IN_CHUNK
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


def documents_array(documents: Sequence[tuple[int, str]]) -> str:
    """``(batch_id, JSON text)`` pairs as one JSON array of ``[batch_id, document]``, for a
    backend that inserts many documents' records in one statement."""
    return "[" + ",".join(f"[{batch_id},{text}]" for batch_id, text in documents) + "]"


_SELECT_INPUTS = (
    "SELECT id, path, status, size, mtime_ns, sha256, start_job, stop_job, lease_expires_at,"
    " outcome, owner_host, owner_namespace, owner_pid, owner_started_at, batch_id,"
    " EXISTS (SELECT 1 FROM processing_batches b WHERE b.id = pipeline_inputs.batch_id)"
    " FROM pipeline_inputs WHERE path IN ({marks})"
)
#: The columns a claim stamps besides its token and lease (``Claim.owner_values``).
OWNER_COLUMNS = (
    "owner_host, owner_namespace, owner_pid, owner_started_at, flow_run_id, flow_run_url"
)
_OWNERS = (
    "SELECT DISTINCT owner_host, owner_namespace, owner_pid, owner_started_at"
    " FROM pipeline_inputs WHERE status = 'processing' AND lease_expires_at >= ?"
    " AND owner_host = ? AND owner_namespace = ?"
)
#: One owner's claims; parameters: ``_owner_key``.
_OF_OWNER = (
    " status = 'processing' AND owner_host = ? AND owner_namespace = ? AND owner_pid = ?"
    " AND owner_started_at = ?"
)
_COUNT_OWNER = f"SELECT count(*) FROM pipeline_inputs WHERE lease_expires_at >= ? AND{_OF_OWNER}"
_EXPIRE_OWNER = f"UPDATE pipeline_inputs SET lease_expires_at = ? WHERE{_OF_OWNER}"
_LIVE_HOLDERS = (
    "SELECT owner_host, owner_namespace, owner_pid, owner_started_at, count(*),"
    " max(lease_expires_at) FROM pipeline_inputs"
    " WHERE status = 'processing' AND lease_expires_at >= ?"
    " GROUP BY owner_host, owner_namespace, owner_pid, owner_started_at ORDER BY min(id)"
)
#: What registering a found path does to the row it already has (a backend appends its
#: ``register_guard``): shared by the backends' ``register_all_claimed`` statements.
REGISTER_UPDATE = (
    " ON CONFLICT (path) DO UPDATE SET status = 'processing',"
    " output_path = excluded.output_path, start_job = excluded.start_job,"
    " stop_job = excluded.stop_job, size = excluded.size, mtime_ns = excluded.mtime_ns,"
    " attempts = 1, last_error = NULL, last_job = NULL, not_before = NULL,"
    " finished_at = NULL, claim_token = excluded.claim_token, run_id = excluded.run_id,"
    " lease_expires_at = excluded.lease_expires_at, updated_at = excluded.updated_at,"
    " owner_host = excluded.owner_host, owner_namespace = excluded.owner_namespace,"
    " owner_pid = excluded.owner_pid, owner_started_at = excluded.owner_started_at,"
    " flow_run_id = excluded.flow_run_id, flow_run_url = excluded.flow_run_url"
)
_HELD = "SELECT id FROM pipeline_inputs WHERE claim_token = ? AND id IN ({marks})"
_EXPIRE_EXHAUSTED = (
    "UPDATE pipeline_inputs SET status = 'failed', claim_token = NULL,"
    " lease_expires_at = NULL, finished_at = ?, updated_at = ?,"
    " last_error = 'lease expired on its last attempt (the command running it stopped or died)'"
    " WHERE status = 'processing' AND lease_expires_at < ? AND attempts >= ?"
)
_NEXT_DUE = (
    "SELECT min(not_before) FROM pipeline_inputs WHERE status = 'pending'"
    " AND not_before IS NOT NULL"
)
_MARK_FAILED = (
    "UPDATE pipeline_inputs SET status = 'failed', last_job = ?, last_error = ?, outcome = ?,"
    " claim_token = NULL, lease_expires_at = NULL, finished_at = ?,"
    " updated_at = ? WHERE id = ? AND claim_token = ?"
)
_MARK_RETRY = (
    "UPDATE pipeline_inputs SET status = 'pending', last_job = ?, last_error = ?,"
    " outcome = NULL, claim_token = NULL, lease_expires_at = NULL, not_before = ?,"
    " updated_at = ? WHERE id = ? AND claim_token = ?"
)
_RENEW = (
    "UPDATE pipeline_inputs SET lease_expires_at = ? WHERE claim_token = ?"
    " AND status = 'processing'"
)
_RELEASE = (
    "UPDATE pipeline_inputs SET status = 'pending', claim_token = NULL,"
    " lease_expires_at = NULL,"
    " attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, updated_at = ?"
    " WHERE claim_token = ? AND status = 'processing'"
)
#: Records and outcomes of done inputs only: a row registered or claimed again keeps those
#: of its last run until this one marks it done (given back, or failed, it never does).
_RUN_COUNTS = (
    "SELECT status, count(*),"
    " CAST(coalesce(sum(CASE WHEN status = 'done' THEN records_written ELSE 0 END), 0)"
    " AS BIGINT),"
    " coalesce(sum(CASE WHEN status = 'done' AND outcome = 'unchanged' THEN 1 ELSE 0 END), 0)"
    " FROM pipeline_inputs WHERE run_id = ? GROUP BY status"
)
_RUN_UNCHANGED = (
    "SELECT path, batch_id FROM pipeline_inputs"
    " WHERE run_id = ? AND status = 'done' AND outcome = 'unchanged' ORDER BY path"
)
_RUN_FAILURES = (
    "SELECT path, last_job, last_error FROM pipeline_inputs"
    " WHERE run_id = ? AND status = 'failed' ORDER BY path"
)
_QUEUE = (
    "INSERT INTO pipeline_inputs (path, status, output_path, size, mtime_ns, attempts,"
    " created_at, updated_at) VALUES (?, 'pending', ?, ?, ?, 0, ?, ?)"
    " ON CONFLICT (path) DO UPDATE SET status = 'pending',"
    " output_path = excluded.output_path, size = excluded.size,"
    " mtime_ns = excluded.mtime_ns, attempts = 0, not_before = NULL,"
    " claim_token = NULL, lease_expires_at = NULL, updated_at = excluded.updated_at"
)
# Queued or requeued, an input keeps its last run (``run_id``) and when that run settled it
# (``finished_at``), which ``status`` dates the run by: a claim clears them.
_REQUEUE = (
    "UPDATE pipeline_inputs SET status = 'pending', attempts = 0, not_before = NULL,"
    " claim_token = NULL, lease_expires_at = NULL, updated_at = ?"
)

# Jobs B and C run these on a whole group of inputs (``group_job``), a few statements per
# group, and on one input as a group of one: plain statements on the driver's connection,
# not Peewee query objects, whose SQL is built in Python for every call (about 0.3 ms each:
# most of the writer's time on small files when it ran them per input).
_BATCHES_OF = (
    "SELECT id, source_path, sha256, status FROM processing_batches"
    " WHERE source_path IN ({marks})"
)
_GET_BATCHES = "SELECT id, status, record_count FROM processing_batches WHERE id IN ({marks})"
_PENDING_CONTENTS = (
    "SELECT DISTINCT sha256 FROM processing_batches WHERE status = 'pending'"
    " AND sha256 IN ({marks})"
)
_DELETE_BATCHES = "DELETE FROM processing_batches WHERE id IN ({marks})"
_INSERT_BATCHES = (
    "INSERT INTO processing_batches (source_path, sha256, record_count, status, created_at,"
    " output_path) VALUES {rows} RETURNING id, source_path"
)
_FINALIZE_BATCHES = (
    "UPDATE processing_batches SET status = 'finalized', finalized_at = ? WHERE id IN ({marks})"
)
_FINALIZE_RECORDS_OF = (
    "UPDATE processed_records SET status = 'finalized'"
    " WHERE batch_id IN ({marks}) AND status != 'finalized'"
)


class Store(ABC):
    """What the pipeline asks of a database: batches and records (jobs B and C), the input
    ledger (claims, leases, outcomes) and the queue (``enqueue``, ``status``, ``requeue``).

    Methods that write must be called inside ``transaction()`` unless they say otherwise;
    times are ISO-8601 UTC text made by the caller's clock.
    """

    #: The backend's name, as in ``DatabaseUrl.backend``.
    backend: ClassVar[str]
    #: The driver's errors that mean the database cannot serve (rather than a statement
    #: or an input being wrong): they become ``DatabaseUnavailable``.
    unavailable_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    #: Appended to the statements that read the rows a transaction is about to decide on
    #: (the ledger rows of found paths, a group's claims): a backend whose writers run
    #: side by side locks them (``FOR UPDATE``); SQLite's one writer needs nothing.
    lock_rows: ClassVar[str] = ""
    #: With ``lock_rows``, the order rows are locked in: paths in code-point order, as
    #: Python's ``sorted`` and the backend's registration statement have them.
    path_order: ClassVar[str] = ""
    #: Where registering a found path may overwrite its row: a backend whose writers run
    #: side by side must not take a row that another command claimed a moment earlier.
    register_guard: ClassVar[str] = ""

    def __init__(self, location: DatabaseUrl, *, timeout: float, read_only: bool = False) -> None:
        self.location = location
        self.timeout = timeout
        #: Only read through this store (``status``): a backend may then open its database
        #: in a way that writes nothing, where writing is impossible.
        self.read_only = read_only
        self.db: Database = self._open_database()

    def cannot_serve(self, exc: BaseException) -> bool:
        """Whether ``exc`` (one of ``unavailable_errors``) means the database cannot serve,
        rather than that one statement failed on its data (a backend may narrow it)."""
        return True

    def unavailable(
        self, exc: BaseException, kind: type[DatabaseUnavailable] = DatabaseUnavailable
    ) -> DatabaseUnavailable:
        """``exc`` as one line naming the database and the first cause in its chain: a
        failed statement's rollback can fail in turn ("cannot rollback - no transaction is
        active" after SQLite rolled back a full disk's transaction itself), which must not
        hide why."""
        cause = exc
        current: BaseException | None = exc
        while current is not None:
            if isinstance(current, self.unavailable_errors):
                cause = current
            current = current.__context__
        # A server's error without its CONTEXT and DETAIL lines (psycopg's ``diag``).
        primary = getattr(getattr(cause, "diag", None), "message_primary", None)
        text = re.sub(r"\s+", " ", primary or str(cause)).strip() or type(cause).__name__
        return kind(f"{self.location.display}: {text}")

    def fail(self, exc: BaseException) -> NoReturn:
        """Raise what ``exc`` (one of ``unavailable_errors``) means: ``DatabaseUnavailable``
        when the database cannot serve, else ``exc`` itself (one statement's failure)."""
        meaning = self.meaning(exc)
        if meaning is not None:
            raise meaning from exc
        raise exc

    def meaning(self, exc: BaseException) -> DatabaseUnavailable | None:
        """``exc`` (one of ``unavailable_errors``) as ``DatabaseConflict`` (rolled back to
        end a deadlock) or ``DatabaseUnavailable`` (the database cannot serve); None for one
        statement's failure on its data."""
        if self.conflict(exc):
            return self.unavailable(exc, DatabaseConflict)
        if self.cannot_serve(exc):
            return self.unavailable(exc)
        return None

    def conflict(self, exc: BaseException) -> bool:
        """Whether ``exc`` (one of ``unavailable_errors``) is the database ending this
        transaction to let another command's go on (a deadlock between them): the same
        transaction, run again, can succeed (``DatabaseConflict``). Never, with one writer."""
        return False

    # Lifecycle -------------------------------------------------------------------------

    @abstractmethod
    def _open_database(self) -> Database:
        """The Peewee database object (connections open lazily, one per thread)."""

    @abstractmethod
    def ensure_schema(self, *, create: bool = True) -> None:
        """Create the tables on first use, upgrade an older schema in place, and refuse
        (untouched) a database whose tables are not ours or are newer than this code. With
        ``create=False`` (a command that only reads), a database without the pipeline's
        tables is refused (``MissingDatabase``) instead of set up."""

    def read(self, reader: Callable[[], T]) -> T:
        """``reader()``, which only reads through this store, as one look at the database:
        a backend that cannot otherwise vouch for what a read-only store saw runs it again
        where it saw the database change meanwhile."""
        return reader()

    def close(self) -> None:
        """Close this thread's connection."""
        if not self.db.is_closed():
            self.db.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location.display}>"

    @contextmanager
    def bind_models(self) -> Iterator[Database]:
        """Bind the Peewee models to this store's database for the block (for code that
        queries through Peewee, such as a user's own job)."""
        with self.db.bind_ctx(MODELS):
            yield self.db

    # Statements ------------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement (``?`` placeholders) on this thread's connection; returns the
        DB-API cursor. A database that cannot serve raises ``DatabaseUnavailable``."""
        try:
            return self.db.connection().execute(sql, params)
        except self.unavailable_errors as exc:
            self.fail(exc)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction; inside one already open, a savepoint of it.

        The writer runs every job of a group in one transaction, a group's writes in a
        savepoint, and (when the group fails) each input's writes in a savepoint of their
        own, so a failing input rolls back alone. Peewee's own savepoints (a uuid
        name, its own bookkeeping) cost more than a small input's statements; the backends
        used here match a savepoint name to the latest one, so a fixed name nests.
        """
        if not self.db.in_transaction():
            try:
                with self._begin():
                    yield
            except DatabaseUnavailable:
                raise
            except self.unavailable_errors as exc:  # the begin, commit or rollback failed
                self.fail(exc)
            return
        self.execute("SAVEPOINT pipeline_step")
        try:
            yield
        except BaseException:
            self.execute("ROLLBACK TO SAVEPOINT pipeline_step")
            self.execute("RELEASE SAVEPOINT pipeline_step")
            raise
        self.execute("RELEASE SAVEPOINT pipeline_step")

    def abandon_transaction(self) -> None:
        """Roll back whatever transaction is open on this thread's connection, and forget
        it: a Ctrl-C or SIGTERM can land between a transaction's BEGIN and Peewee's record
        of it (or between its end and that record), leaving the two out of step, and the
        next BEGIN would fail with "cannot start a transaction within a transaction". For
        the clean-up after an interrupt; a no-op when nothing is open."""
        if self.db.is_closed():
            return
        while self.db.transaction_depth():
            self.db.pop_transaction()
        try:
            self.db.connection().rollback()
        except self.unavailable_errors as exc:
            self.fail(exc)

    def _begin(self) -> Any:
        """The context manager of an outermost write transaction."""
        return self.db.atomic()

    def in_transaction(self) -> bool:
        return bool(self.db.in_transaction())

    # Batches and records (jobs B and C) --------------------------------------------------

    def find_batch(self, source_path: str, sha256: str) -> tuple[int, str] | None:
        """The stored batch of this content of this file: ``(id, status)``, or None."""
        for batch_id, _, stored, status in self.batches_of([source_path]):
            if stored == sha256:
                return batch_id, status
        return None

    def delete_batch(self, batch_id: int) -> None:
        """Delete a batch and (through the foreign key) its records."""
        self.delete_batches([batch_id])

    def delete_batches_of(self, source_path: str, *, keep_sha256: str | None) -> int:
        """Delete the batches of ``source_path`` (and their records) but the one of the
        content ``keep_sha256`` (None: all of them); returns how many went."""
        doomed = [b for b, _, sha256, _ in self.batches_of([source_path]) if sha256 != keep_sha256]
        self.delete_batches(doomed)
        return len(doomed)

    def insert_batch(
        self,
        *,
        source_path: str,
        sha256: str,
        record_count: int,
        created_at: str,
        output_path: str | None,
    ) -> int:
        """A new pending batch; returns its id."""
        batch = (source_path, sha256, record_count, output_path)
        return self.insert_batches([batch], created_at=created_at)[source_path]

    @abstractmethod
    def insert_records(self, batch_id: int, records_json: str, json_path: str = "$") -> None:
        """Insert the records held at ``json_path`` of a JSON text (an array of
        ``{"index", "line_number", "content"}``) as pending rows of ``batch_id``."""

    @abstractmethod
    def insert_records_of(self, documents: Sequence[tuple[int, str]], json_path: str) -> None:
        """``insert_records`` for many batches, ``(batch_id, JSON text)``, whose records are
        all at ``json_path``, in one statement: every statement the writer runs lets go of
        the GIL and waits to get it back from the threads beside it."""

    def batch(self, batch_id: int) -> tuple[str, int] | None:
        """A batch's ``(status, record_count)``, or None if there is no such batch."""
        return self.batches([batch_id]).get(batch_id)

    def finalize_batch(self, batch_id: int, at: str) -> None:
        """Mark a batch and its records finalized."""
        self.finalize_batches([batch_id], at)

    # The same for a group of inputs (``group_job``) ---------------------------------------

    def batches_of(self, source_paths: Sequence[str]) -> list[tuple[int, str, str, str]]:
        """Every stored batch of these files: ``(id, source_path, sha256, status)``."""
        rows: list[tuple[int, str, str, str]] = []
        for chunk in _chunks(source_paths):
            sql = _BATCHES_OF.format(marks=_marks(chunk))
            rows.extend(tuple(row) for row in self.execute(sql, chunk))  # type: ignore[misc]
        return rows

    def delete_batches(self, batch_ids: Sequence[int]) -> None:
        """Delete these batches and (through the foreign key) their records."""
        for chunk in _chunks(batch_ids):
            self.execute(_DELETE_BATCHES.format(marks=_marks(chunk)), chunk)

    def insert_batches(
        self, batches: Sequence[tuple[str, str, int, str | None]], *, created_at: str
    ) -> dict[str, int]:
        """New pending batches of distinct files, ``(source_path, sha256, record_count,
        output_path)``; returns each file's new batch id."""
        ids: dict[str, int] = {}
        for chunk in _chunks(batches, _IN_CHUNK // 5):
            rows = ", ".join(["(?, ?, ?, 'pending', ?, ?)"] * len(chunk))
            values = [
                value
                for source_path, sha256, count, output_path in chunk
                for value in (source_path, sha256, count, created_at, output_path)
            ]
            cursor = self.execute(_INSERT_BATCHES.format(rows=rows), values)
            ids.update((path, int(batch_id)) for batch_id, path in cursor)
        return ids

    def batches(self, batch_ids: Sequence[int]) -> dict[int, tuple[str, int]]:
        """The batches of these ids that exist: ``{id: (status, record_count)}``."""
        found: dict[int, tuple[str, int]] = {}
        for chunk in _chunks(batch_ids):
            sql = _GET_BATCHES.format(marks=_marks(chunk))
            found.update((row[0], (row[1], row[2])) for row in self.execute(sql, chunk))
        return found

    def pending_contents(self, sha256s: Sequence[str]) -> set[str]:
        """Which of these contents (SHA-256) a batch not yet finalized holds."""
        found: set[str] = set()
        for chunk in _chunks(sha256s):
            sql = _PENDING_CONTENTS.format(marks=_marks(chunk))
            found.update(row[0] for row in self.execute(sql, chunk))
        return found

    def finalize_batches(self, batch_ids: Sequence[int], at: str) -> None:
        """Mark these batches and their records finalized."""
        for chunk in _chunks(batch_ids, _IN_CHUNK - 1):
            self.execute(_FINALIZE_BATCHES.format(marks=_marks(chunk)), [at, *chunk])
            self.execute(_FINALIZE_RECORDS_OF.format(marks=_marks(chunk)), chunk)

    # The ledger --------------------------------------------------------------------------

    def inputs_by_path(self, paths: Sequence[str]) -> dict[str, InputRow]:
        """The ledger rows of these paths (those that have one). Inside a transaction, a
        backend with row locks holds them until it ends."""
        rows: dict[str, InputRow] = {}
        # In path order, as registration inserts: two commands locking the same rows take
        # them in one order, so neither holds one the other needs first.
        for chunk in _chunks(sorted(paths)):
            sql = _SELECT_INPUTS.format(marks=_marks(chunk)) + self.path_order + self.lock_rows
            for values in self.execute(sql, chunk).fetchall():
                row = InputRow(*values)
                rows[row.path] = row
        return rows

    def register_claimed(
        self, *, path: str, output_path: str, size: int, mtime_ns: int, claim: Claim
    ) -> ClaimedRow | None:
        """Record a found input as claimed by ``claim`` (a new row, or the path's row
        reset); its first attempt. None if another command holds it."""
        return self.register_all_claimed([(path, output_path, size, mtime_ns)], claim).get(path)

    @abstractmethod
    def register_all_claimed(
        self, found: Sequence[tuple[str, str, int, int]], claim: Claim
    ) -> dict[str, ClaimedRow]:
        """``register_claimed`` for many found inputs, ``(path, output_path, size,
        mtime_ns)`` of distinct paths, in one statement; returns the rows claimed, by path
        (a path another command holds is missing)."""

    def held_claims(self, input_ids: Sequence[int], token: str) -> set[int]:
        """Which of these inputs ``token`` still holds. Inside a transaction the answer
        stands until it ends: no other command can take them meanwhile (SQLite's writer
        lock; a server backend locks the rows)."""
        held: set[int] = set()
        for chunk in _chunks(input_ids):
            sql = _HELD.format(marks=_marks(chunk)) + self.lock_rows
            held.update(row[0] for row in self.execute(sql, [token, *chunk]))
        return held

    def live_owners(self, host: str, namespace: str, now: str) -> list[Owner]:
        """The owners, on this host and process namespace, of claims whose lease has not
        run out."""
        return [
            Owner(*row) for row in self.execute(_OWNERS, (now, host, namespace)).fetchall()
        ]

    def count_pending_or_expired(self, now: str) -> int:
        """Inputs pending, and claims whose lease ran out before ``now`` (``status``'s
        pending and stale, but for the live claims of commands that are gone)."""
        sql = (
            "SELECT count(*) FROM pipeline_inputs WHERE status = 'pending'"
            " OR (status = 'processing' AND lease_expires_at < ?)"
        )
        return int(self.execute(sql, (now,)).fetchone()[0])

    def count_failed(self) -> int:
        """How many inputs failed for good (run again only once requeued)."""
        sql = "SELECT count(*) FROM pipeline_inputs WHERE status = 'failed'"
        return int(self.execute(sql).fetchone()[0])

    def live_holders(self, now: str) -> list[tuple[Owner | None, int, str]]:
        """Each command holding inputs under a lease that has not run out at ``now``: its
        owner (None for a claim that records none), how many inputs, and its last lease's
        end, the first to claim first."""
        rows = self.execute(_LIVE_HOLDERS, (now,)).fetchall()
        return [
            (Owner(host, namespace, pid, started) if host is not None else None, count, until)
            for host, namespace, pid, started, count, until in rows
        ]

    def count_live_claims_of(self, owner: Owner, now: str) -> int:
        """How many inputs ``owner`` holds under a lease that has not expired at ``now``
        (the expired ones are stale whoever held them)."""
        return int(self.execute(_COUNT_OWNER, (now, *_owner_key(owner))).fetchone()[0])

    def expire_claims_of(self, owner: Owner, at: str) -> int:
        """End the leases of ``owner``'s claims at ``at`` (its process is gone): other
        commands may take them over as if the lease had run out."""
        return int(self.execute(_EXPIRE_OWNER, (at, *_owner_key(owner))).rowcount)

    def fail_exhausted_leases(self, now: str, max_attempts: int) -> int:
        """Fail the inputs whose lease expired on their last allowed attempt."""
        return int(self.execute(_EXPIRE_EXHAUSTED, (now, now, now, max_attempts)).rowcount)

    @abstractmethod
    def claim_due(self, claim: Claim, *, limit: int, max_bytes: int) -> list[ClaimedRow]:
        """Claim, in id order, up to ``limit`` inputs that are due (pending and not waiting
        for a retry, or processing with an expired lease), taking no more than
        ``max_bytes`` by their queued size (always at least one). Rows another command is
        claiming at the same moment are never taken twice."""

    def next_due(self) -> str | None:
        """When the earliest waiting retry falls due (None if none is waiting)."""
        row = self.execute(_NEXT_DUE).fetchone()
        return row[0] if row else None

    @abstractmethod
    def mark_done(self, done: Sequence[tuple[int, Finished]], token: str, now: str) -> int:
        """Mark claimed inputs done: ``(input id, what it finished with)``, in one
        statement. Returns how many ``token`` still held (the others are left as they
        are)."""

    def mark_failed(
        self,
        input_id: int,
        token: str,
        *,
        job: str,
        error: str,
        now: str,
        retry_at: str | None,
        rejected: str | None = None,
    ) -> bool:
        """Record a failure: pending again from ``retry_at``, or failed for good (None),
        with the outcome ``rejected`` (``rejected_outcome``) when its own content failed it.
        False if ``token`` no longer holds the claim."""
        if retry_at is None:
            cursor = self.execute(_MARK_FAILED, (job, error, rejected, now, now, input_id, token))
        else:
            cursor = self.execute(_MARK_RETRY, (job, error, retry_at, now, input_id, token))
        return bool(cursor.rowcount == 1)

    def stamp_flow_run(self, run_id: str, flow_run_id: str, url: str | None) -> int:
        """Record the Prefect flow run (and its page) of a run on the rows it touched."""
        return int(
            self.execute(
                "UPDATE pipeline_inputs SET flow_run_id = ?, flow_run_url = ? WHERE run_id = ?",
                (flow_run_id, url, run_id),
            ).rowcount
        )

    def renew(self, token: str, lease_until: str) -> int:
        """Extend the lease of every input ``token`` holds."""
        return int(self.execute(_RENEW, (lease_until, token)).rowcount)

    def release(self, token: str, now: str) -> int:
        """Give back every input ``token`` still holds: pending again, the attempt not
        counted. Returns how many."""
        return int(self.execute(_RELEASE, (now, token)).rowcount)

    def run_counts(self, run_id: str) -> dict[str, int]:
        """One run's inputs by status, the records it wrote, and how many of its done
        inputs were already stored (``unchanged``). No transaction needed."""
        counts = dict.fromkeys((PENDING, PROCESSING, DONE, FAILED, "records", "unchanged"), 0)
        for status, count, records, unchanged in self.execute(_RUN_COUNTS, (run_id,)):
            counts[status] = count
            counts["records"] += records
            counts["unchanged"] += unchanged
        return counts

    def run_unchanged(self, run_id: str) -> list[dict[str, str]]:
        """One run's inputs that ran and found their content stored already (a touched
        file, its content the same), as skipped inputs: by path, the reason naming the
        batch."""
        return [
            {"input": path, "reason": f"content already stored (batch {batch_id})"}
            for path, batch_id in self.execute(_RUN_UNCHANGED, (run_id,))
        ]

    def run_failures(self, run_id: str) -> list[dict[str, str]]:
        """One run's failed inputs with their job and error, by path."""
        return [
            {"input": path, "job": job or "", "error": error or ""}
            for path, job, error in self.execute(_RUN_FAILURES, (run_id,))
        ]

    # The queue -----------------------------------------------------------------------------

    def queue(self, *, path: str, output_path: str, size: int, mtime_ns: int, now: str) -> None:
        """Make ``path`` pending (a new row, or its row reset with attempts at zero)."""
        self.execute(_QUEUE, (path, output_path, size, mtime_ns, now, now))

    def requeue_failed(self, now: str) -> int:
        return int(self.execute(f"{_REQUEUE} WHERE status = 'failed'", (now,)).rowcount)

    def requeue_stale(self, now: str) -> int:
        """Inputs whose lease expired: their command died."""
        sql = f"{_REQUEUE} WHERE status = 'processing' AND lease_expires_at < ?"
        return int(self.execute(sql, (now, now)).rowcount)

    def requeue_one(self, input_id: int, now: str) -> int:
        return int(self.execute(f"{_REQUEUE} WHERE id = ?", (now, input_id)).rowcount)

    def input_state(self, input_id: int) -> tuple[str, str | None] | None:
        """An input's ``(status, lease_expires_at)``, or None if there is no such input."""
        row = self.execute(
            "SELECT status, lease_expires_at FROM pipeline_inputs WHERE id = ?", (input_id,)
        ).fetchone()
        return (row[0], row[1]) if row is not None else None

    def status(self, now: str, *, errors: int = 5) -> dict[str, Any]:
        """Inputs and batches by status, record count, the oldest pending input, and the
        last errors."""
        inputs = dict.fromkeys((PENDING, PROCESSING, DONE, FAILED), 0)
        for state, count in self.execute(
            "SELECT status, count(*) FROM pipeline_inputs GROUP BY status"
        ):
            inputs[state] = count
        stale = self.execute(
            "SELECT count(*) FROM pipeline_inputs WHERE status = 'processing'"
            " AND lease_expires_at < ?",
            (now,),
        ).fetchone()[0]
        batches = dict(
            self.execute("SELECT status, count(*) FROM processing_batches GROUP BY status")
        )
        # Batches no queued input names: stored by run or run-all, which keep no input
        # row. By the input's batch, not its path: a batch's source path is the file's
        # real path, an input's the path as given (a symbolic link's). A join, not NOT
        # EXISTS: SQLite makes itself a transient index on batch_id for a join only (the
        # correlated subquery scanned the inputs once per batch), PostgreSQL an anti-join.
        outside = self.execute(
            "SELECT count(*) FROM processing_batches b LEFT JOIN pipeline_inputs i"
            " ON i.batch_id = b.id WHERE i.id IS NULL"
        ).fetchone()[0]
        records = self.execute("SELECT count(*) FROM processed_records").fetchone()[0]
        oldest = self.execute(
            "SELECT id, path, created_at FROM pipeline_inputs WHERE status = 'pending'"
            " ORDER BY created_at, id LIMIT 1"
        ).fetchone()
        # A run's time: when it last settled an input (a requeue keeps that); when it
        # settled none (interrupted, its claims given back), when it last changed one.
        last_run = self.execute(
            "SELECT run_id, flow_run_id, flow_run_url,"
            " coalesce(max(finished_at), max(updated_at)) AS at FROM pipeline_inputs"
            " WHERE run_id IS NOT NULL GROUP BY run_id, flow_run_id, flow_run_url"
            " ORDER BY at DESC LIMIT 1"
        ).fetchone()
        last_errors = self.execute(
            "SELECT id, path, status, last_job, last_error, updated_at FROM pipeline_inputs"
            " WHERE last_error IS NOT NULL ORDER BY updated_at DESC, id DESC LIMIT ?",
            (errors,),
        ).fetchall()
        return {
            "inputs": {**inputs, "total": sum(inputs.values()), "stale": stale},
            "batches": {
                PENDING: batches.get(PENDING, 0),
                FINALIZED: batches.get(FINALIZED, 0),
                "total": sum(batches.values()),
                "outside_queue": outside,
            },
            "records": records,
            "last_run": (
                {
                    "run_id": last_run[0],
                    "flow_run_id": last_run[1],
                    "flow_run_url": last_run[2],
                    "at": last_run[3],
                }
                if last_run
                else None
            ),
            "oldest_pending": (
                {"id": oldest[0], "path": oldest[1], "queued_at": oldest[2]} if oldest else None
            ),
            "last_errors": [
                {"id": r[0], "path": r[1], "status": r[2], "job": r[3], "error": r[4], "at": r[5]}
                for r in last_errors
            ],
        }
