"""The SQLite backend: one file, WAL mode, one writer at a time.

The right default for one machine: no server to run, readers never block the writer, and
the command's own process is the only writer of a run (see the README for why). What SQLite
does differently from the statements in ``store.py``: write transactions start with
``BEGIN IMMEDIATE`` (a transaction that reads, then writes, could otherwise fail with
"database is locked" that no busy timeout cures); records go in through ``json_each``; the
schema version lives in ``PRAGMA user_version``; and a claim is one ``UPDATE ... RETURNING``
(``BEGIN IMMEDIATE`` already keeps every other writer out).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import quote

import peewee
from peewee import SqliteDatabase

from prefect_pipeline.database.models import MODELS
from prefect_pipeline.database.store import (
    OWNER_COLUMNS,
    REGISTER_UPDATE,
    SCHEMA_VERSION,
    Claim,
    ClaimedRow,
    Finished,
    Store,
    check_tables,
    documents_array,
    done_values,
    refuse_missing,
    schema_columns,
)
from prefect_pipeline.database.url import SQLITE
from prefect_pipeline.exceptions import DatabaseMismatch

T = TypeVar("T")

PRAGMAS = {
    # Readers never block the writer; one writer at a time (all on one host).
    "journal_mode": "wal",
    # In WAL mode NORMAL is durable across application crashes; only an OS crash or
    # power loss can drop the last transactions.
    "synchronous": "normal",
    "foreign_keys": 1,
    # SQLite's default 2 MB page cache per connection. The writer mostly appends; a 16 MB
    # cache filled up as the database grew (memory grew with the file count) and was not
    # measurably faster on 20,000 files (single runs, within their spread).
    "cache_size": -2000,
}

# The records are read by SQLite out of the document's JSON text, in one statement. Not
# executemany: the sqlite3 module lets go of the GIL for every row, and in the writer's
# process other threads (Dask's client, Prefect's event workers) are busy receiving results,
# so each row waited for its turn; measured with one busy thread beside it, 100 documents
# took 54 s through executemany and 0.7 s through json_each (0.9 s each when alone).
_INSERT_RECORDS = (
    "INSERT INTO processed_records (batch_id, record_index, line_number, content, status)"
    " SELECT ?, json_extract(value, '$.index'), json_extract(value, '$.line_number'),"
    " json_extract(value, '$.content'), 'pending' FROM json_each(?, ?)"
)

# Many documents' records in one statement: the documents as one JSON array of
# ``[batch_id, document]``, the records at a path in each document. Each element is split
# once, in a materialized table: read in the select list instead, ``d.value`` (a whole
# document) was parsed again for every record, which took 6-8 times longer on documents of
# 190 records.
_INSERT_RECORDS_OF = (
    "WITH d(batch_id, document) AS MATERIALIZED ("
    "   SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))"
    " INSERT INTO processed_records (batch_id, record_index, line_number, content, status)"
    " SELECT d.batch_id, json_extract(r.value, '$.index'),"
    " json_extract(r.value, '$.line_number'), json_extract(r.value, '$.content'), 'pending'"
    " FROM d, json_each(d.document, ?) AS r"
)

# Found files registered and claimed in one statement, read out of a JSON array of
# ``[path, output_path, size, mtime_ns]`` (``WHERE true``: SQLite's parser would take the
# ``ON`` of ``ON CONFLICT`` for a join's).
_REGISTER_ALL = (
    "INSERT INTO pipeline_inputs (path, status, output_path, start_job, stop_job, size,"
    " mtime_ns, attempts, claim_token, run_id, lease_expires_at, created_at, updated_at,"
    f" {OWNER_COLUMNS})"
    " SELECT json_extract(value, '$[0]'), 'processing', json_extract(value, '$[1]'), ?, ?,"
    " json_extract(value, '$[2]'), json_extract(value, '$[3]'), 1, ?, ?, ?, ?, ?,"
    " ?, ?, ?, ?, ?, ? FROM json_each(?) WHERE true"
    + REGISTER_UPDATE
    + " RETURNING id, path, output_path"
)

_CLAIM_DUE = (
    "UPDATE pipeline_inputs SET status = 'processing', claim_token = ?, run_id = ?,"
    " lease_expires_at = ?, attempts = attempts + 1, finished_at = NULL, updated_at = ?,"
    " start_job = coalesce(?, start_job), stop_job = coalesce(?, stop_job),"
    f" ({OWNER_COLUMNS}) = (?, ?, ?, ?, ?, ?)"
    " WHERE id IN (SELECT id FROM ("
    "   SELECT id, size, sum(size) OVER (ORDER BY id) AS upto FROM ("
    "     SELECT id, coalesce(size, 0) AS size FROM pipeline_inputs"
    "     WHERE (status = 'pending' AND (not_before IS NULL OR not_before <= ?))"
    "        OR (status = 'processing' AND lease_expires_at < ?)"
    "     ORDER BY id LIMIT ?))"
    "  WHERE upto - size < ?)"  # those that start below the byte cap
    " RETURNING id, path, output_path, attempts"
)


# A group's inputs marked done in one statement, their values read out of a JSON array of
# ``[id, done_values...]`` (as the records are: no executemany, see above). ``+claim_token``
# keeps SQLite from walking the run's claims by their index and scanning the array for each
# (quadratic: 10,000 inputs took 47 s in the writer instead of 3): it looks each input up by
# its id instead.
_MARK_DONE_ALL = (
    "UPDATE pipeline_inputs SET status = 'done', batch_id = json_extract(v.value, '$[1]'),"
    " sha256 = json_extract(v.value, '$[2]'),"
    " records_written = json_extract(v.value, '$[3]'),"
    " outcome = json_extract(v.value, '$[4]'), last_job = json_extract(v.value, '$[5]'),"
    " last_error = NULL, size = coalesce(json_extract(v.value, '$[6]'), size),"
    " mtime_ns = coalesce(json_extract(v.value, '$[7]'), mtime_ns),"
    " claim_token = NULL, lease_expires_at = NULL, not_before = NULL,"
    " finished_at = ?, updated_at = ?"
    " FROM json_each(?) AS v"
    " WHERE pipeline_inputs.id = json_extract(v.value, '$[0]') AND +claim_token = ?"
)


def _add_owner_and_flow_run(db: SqliteDatabase) -> None:
    """Version 2: who holds a claim, the Prefect flow run of a claim, and ``start_job`` may
    be NULL (a queued input's job range is the drain's to choose)."""
    from playhouse.migrate import SqliteMigrator, migrate

    migrate(SqliteMigrator(db).drop_not_null("pipeline_inputs", "start_job"))
    for column, kind in (
        ("owner_host", "TEXT"),
        ("owner_namespace", "TEXT"),
        ("owner_pid", "INTEGER"),
        ("owner_started_at", "REAL"),
        ("flow_run_id", "VARCHAR(255)"),
        ("flow_run_url", "TEXT"),
    ):
        db.execute_sql(f"ALTER TABLE pipeline_inputs ADD COLUMN {column} {kind}")


#: version -> function that upgrades a database at version-1 to this version.
_MIGRATIONS: dict[int, Callable[[SqliteDatabase], None]] = {
    2: _add_owner_and_flow_run,
}


# SQLite's own locks on a database file (os_unix.c): a connection's SHARED lock is a read
# lock on these bytes, held for as long as a WAL-mode connection is open; the EXCLUSIVE lock
# a WAL connection needs to remove its -wal file when it closes is a write lock on them.
_SHARED_FIRST = 0x40000000 + 2
_SHARED_SIZE = 510


#: Reads of a database file read alone before giving up, when each saw a writer come.
_READ_ATTEMPTS = 3


def _kept_changing() -> peewee.OperationalError:
    return peewee.OperationalError(
        f"writers came and went during each of {_READ_ATTEMPTS} reads; try again"
    )


def _writable(real: Path) -> bool:
    """Whether this process may write the database file ``real`` and make files beside it:
    then SQLite removes the -wal and -shm files it makes when its last connection closes."""
    return os.access(real, os.W_OK) and os.access(real.parent, os.W_OK | os.X_OK)


def _wal_state(real: Path) -> tuple[int, int, int] | None:
    """The -wal file of the database file ``real``: (inode, size, mtime), None when none."""
    try:
        found = os.stat(real.parent / f"{real.name}-wal")
    except FileNotFoundError:
        return None
    return found.st_ino, found.st_size, found.st_mtime_ns


@dataclass(frozen=True)
class ReadOnlyOpening:
    """How a database file is opened for reading only: the URI, and whether the file is
    read alone (``immutable``: SQLite makes no -wal or -shm file and takes no lock), which
    ``unchanged_while`` must then vouch for."""

    #: The database file (where a symlink leads).
    real: Path
    uri: str
    alone: bool
    #: The -wal file as it was when the choice was made (``_wal_state``).
    wal: tuple[int, int, int] | None


def read_only_opening(path: Path) -> ReadOnlyOpening:
    """How to open the SQLite file at ``path`` (a symlink: where it leads) for reading only.

    A read-only connection to a WAL database reads through its -shm file (the WAL's index)
    and -wal file, and makes them if they are missing; a connection that may not write the
    database cannot remove them at its close as the last writer does, so they would stay
    (made with the database file's mode: a later writer that may not open them for writing
    fails). Where this process may write both the file and its folder, SQLite cleans up
    after itself. Elsewhere, without a -wal file, the database file is all there is to
    read: it is read alone, ``immutable``, which ``unchanged_while`` vouches for (a writer
    that comes meanwhile makes a -wal file, which is then read through). A -wal file is read
    through as SQLite does, with its -shm file; a -wal file that holds transactions without
    its -shm file, in a folder where none can be made, cannot be read: refused in one line
    (``peewee.OperationalError``), rather than read without its last transactions."""
    real = path.resolve()
    uri = f"file:{quote(str(real))}?mode=ro"
    wal = _wal_state(real)
    if _writable(real):
        return ReadOnlyOpening(real, uri, alone=False, wal=wal)
    folder = real.parent
    if wal is None:
        return ReadOnlyOpening(real, f"{uri}&immutable=1", alone=True, wal=None)
    if (folder / f"{real.name}-shm").exists():
        return ReadOnlyOpening(real, uri, alone=False, wal=wal)
    if wal[1] == 0:  # an empty -wal file: nothing in it to miss
        return ReadOnlyOpening(real, f"{uri}&immutable=1", alone=True, wal=wal)
    if os.access(folder, os.W_OK | os.X_OK):
        # SQLite would make the -shm file, and leave it (with the file's mode) for the next
        # writer to trip on.
        raise peewee.OperationalError(
            "its -wal file holds transactions and its -shm file is missing, which a reader "
            "that may not write the database would make and leave behind: read it as a "
            "user who may write it, or copy both files"
        )
    raise peewee.OperationalError(
        f"its -wal file holds transactions and its -shm file is missing, which a reader "
        f"cannot make in {folder} (not writable): copy both files, or read it where the "
        "folder is writable"
    )


def _lock_shared(handle: BinaryIO, timeout: float) -> None:
    """Take SQLite's SHARED lock on the open database file ``handle``, waiting up to
    ``timeout`` seconds for a connection that holds it EXCLUSIVE (one removing its -wal
    file) to let go."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.lockf(handle, fcntl.LOCK_SH | fcntl.LOCK_NB, _SHARED_SIZE, _SHARED_FIRST)
            return
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN) or time.monotonic() > deadline:
                raise peewee.OperationalError("database is locked") from exc
            time.sleep(0.01)


@contextmanager
def unchanged_while(opening: ReadOnlyOpening, timeout: float) -> Iterator[Callable[[], bool]]:
    """Around a read of the file ``opening`` names (its connection open for the whole
    block): yields a function that says whether the read saw the database as it is, to be
    called at the read's end, before its connection closes.

    A read through the WAL is SQLite's to keep consistent: always True. A read of the file
    alone is held under SHARED, as a WAL connection holds it: no connection can then take
    the EXCLUSIVE lock that removing a -wal file needs, so a writer that came during the
    read cannot remove its -wal file (it stays until a later last connection removes it).
    The -wal file as it was when the file was chosen to be read alone (none), found again at
    the end, shows that no writer was there, nor wrote the file (in WAL mode only a WAL
    connection's checkpoint does).

    The lock is a POSIX one: any close of the file in this process ends it, and its own
    close ends those of every other connection of this process to the file. So the check
    comes before the read's connection closes, and the file read alone has no other
    connection in this process (the ``immutable`` one takes no lock): it is read so only by
    a process that may not write it, whose other connections to it are read alone too."""
    if not opening.alone:
        yield lambda: True
        return
    real = opening.real
    with open(real, "rb") as handle:
        _lock_shared(handle, timeout)
        if _wal_state(real) != opening.wal:  # a writer came before the lock
            yield lambda: False
            return
        yield lambda: _wal_state(real) == opening.wal


def read_schema(path: Path, timeout: float) -> tuple[dict[str, set[str]], int]:
    """The pipeline's tables that exist in the SQLite file at ``path`` (with their columns)
    and its ``user_version``, read without changing the file: opened read-only, so no WAL
    mode is set and no -wal or -shm file is made before the tables are known to be ours. A
    missing or empty file has none."""
    if not path.exists() or path.stat().st_size == 0:
        return {}, 0
    try:
        for _ in range(_READ_ATTEMPTS):
            opening = read_only_opening(path)
            with (
                unchanged_while(opening, timeout) as saw_it_as_it_is,
                closing(sqlite3.connect(opening.uri, uri=True, timeout=timeout)) as connection,
            ):
                version = int(connection.execute("PRAGMA user_version").fetchone()[0])
                found = {}
                for table in schema_columns():
                    columns = {
                        row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')
                    }
                    if columns:
                        found[table] = columns
                if saw_it_as_it_is():
                    return found, version
        raise _kept_changing()
    except sqlite3.DatabaseError as exc:  # e.g. "file is not a database"
        raise peewee.DatabaseError(str(exc)) from exc


class SqliteStore(Store):
    """A SQLite file (created with its folder on first use)."""

    backend = SQLITE
    unavailable_errors = (sqlite3.OperationalError, peewee.OperationalError)
    #: Opened with ``read_only_opening``: nothing can be created or upgraded.
    opened_read_only = False
    _opening: ReadOnlyOpening | None = None

    def cannot_serve(self, exc: BaseException) -> bool:
        # SQLite reports a statement's own failure ("malformed JSON" in an input's records,
        # caught by json_each) as an OperationalError too, with the generic SQLITE_ERROR
        # code; a locked, full, read-only or broken file has codes of its own. The whole
        # chain counts: a full disk's rollback fails in turn with a generic "cannot
        # rollback - no transaction is active", the full disk in its context.
        codes = []
        current: BaseException | None = exc
        while current is not None:
            code = getattr(current, "sqlite_errorcode", None)
            if code is not None:
                codes.append(code & 0xFF)
            current = current.__cause__ or current.__context__
        return not codes or any(code != sqlite3.SQLITE_ERROR for code in codes)

    def _open_database(self) -> SqliteDatabase:
        path = self.location.path
        assert path is not None
        if self.read_only and not _writable(path.resolve()):
            # ``status`` of a database it may not write (a file kept read-only, another
            # user's, in a folder it may not write): opened as a writer, SQLite would make
            # -wal and -shm files that it could not remove, or need them where it cannot.
            self.opened_read_only = True
            self._opening = read_only_opening(path)
            pragmas = {k: v for k, v in PRAGMAS.items() if k != "journal_mode"}
            return SqliteDatabase(
                self._opening.uri, uri=True, pragmas=pragmas, timeout=self.timeout,
                autoconnect=True,
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteDatabase(str(path), pragmas=PRAGMAS, timeout=self.timeout, autoconnect=True)

    def read(self, reader: Callable[[], T]) -> T:
        try:
            if self._opening is None or not self._opening.alone:
                return reader()
            for _ in range(_READ_ATTEMPTS):
                # An immutable connection takes the file for unchanging and keeps its page
                # cache from one read to the next: each read of the file alone is on a new
                # connection, its opening chosen again (a writer may have left a -wal file).
                self.db.close()
                self.db = self._open_database()
                opening = self._opening
                if not opening.alone:
                    return reader()
                with unchanged_while(opening, self.timeout) as saw_it_as_it_is:
                    result = reader()
                    if saw_it_as_it_is():
                        return result
                # A writer came: read again, through the -wal file it made.
            raise _kept_changing()
        except self.unavailable_errors as exc:
            self.fail(exc)

    def _begin(self) -> Any:
        return self.db.atomic("IMMEDIATE")

    def ensure_schema(self, *, create: bool = True) -> None:
        db = self.db
        assert isinstance(db, SqliteDatabase) and self.location.path is not None
        found, version = read_schema(self.location.path, self.timeout)
        # user_version 0 is a database this pipeline never wrote: any table of ours in it
        # is someone else's.
        check_tables(self.location.display, found, version or None)
        if version == SCHEMA_VERSION and len(found) == len(schema_columns()):
            if not self.opened_read_only:
                # The read above left -wal and -shm files that a read-only connection may
                # not remove. A connection of this thread's that may, closed last (at the
                # command's exit, ``close_all``), removes them, even if the command then
                # never writes (a run whose input failed in job A).
                db.connect(reuse_if_open=True)
            return  # the usual case: nothing to create or upgrade
        if not create and not found:
            raise refuse_missing(self.location.display)
        if self.opened_read_only:
            raise DatabaseMismatch(
                f"{self.location.display}: written by an older version of the pipeline "
                f"(schema version {version}), and not writable here, so it cannot be "
                "upgraded; run a command that writes it where it and its folder are writable"
            )
        with db.bind_ctx(MODELS), db.atomic("IMMEDIATE"):
            # Read again under the write lock: another command may have just created them.
            version = db.execute_sql("PRAGMA user_version").fetchone()[0]
            if version and db.table_exists("processing_batches"):
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    _MIGRATIONS[target](db)
            # Tables added by later versions that a migration did not create.
            db.create_tables(MODELS, safe=True)
            if version != SCHEMA_VERSION:
                db.execute_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def insert_records(self, batch_id: int, records_json: str, json_path: str = "$") -> None:
        self.execute(_INSERT_RECORDS, (batch_id, records_json, json_path))

    def register_all_claimed(
        self, found: Sequence[tuple[str, str, int, int]], claim: Claim
    ) -> dict[str, ClaimedRow]:
        if not found:
            return {}
        rows = self.execute(
            _REGISTER_ALL, (*claim.registration_values(), json.dumps(found))
        ).fetchall()
        return {path: ClaimedRow(int(i), path, output, 1) for i, path, output in rows}

    def insert_records_of(self, documents: Sequence[tuple[int, str]], json_path: str) -> None:
        if not documents:
            return
        self.execute(_INSERT_RECORDS_OF, (documents_array(documents), json_path))

    def mark_done(self, done: Sequence[tuple[int, Finished]], token: str, now: str) -> int:
        if not done:
            return 0
        values = json.dumps([[input_id, *done_values(finished)] for input_id, finished in done])
        return int(self.execute(_MARK_DONE_ALL, (now, now, values, token)).rowcount)

    def claim_due(self, claim: Claim, *, limit: int, max_bytes: int) -> list[ClaimedRow]:
        # One statement inside BEGIN IMMEDIATE: no other writer runs between the choice of
        # rows and their update.
        rows = self.execute(
            _CLAIM_DUE,
            (
                claim.token,
                claim.run_id,
                claim.lease_until,
                claim.now,
                claim.start_job,
                claim.stop_job,
                *claim.owner_values(),
                claim.now,
                claim.now,
                limit,
                max_bytes,
            ),
        ).fetchall()
        return sorted((ClaimedRow(*row) for row in rows), key=lambda c: c.input_id)
