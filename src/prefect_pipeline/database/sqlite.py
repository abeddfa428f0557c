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

import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any
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


def read_only_uri(path: Path) -> str:
    """A URI that opens the SQLite file at ``path`` (a symlink: where it leads) for reading
    only.

    A read-only connection to a WAL database still needs its -shm file (the WAL's index),
    and makes one if there is none. Where none can be made (a folder this process may not
    write) and there is none, SQLite refuses ("attempt to write a readonly database"),
    unless told the file is ``immutable``: then it reads the file alone. That is all there
    is to read when there is no -wal file, or an empty one: no writer can be at work in a
    folder where it could not make its -wal and -shm files. (One that starts between this
    look and the read is not seen: a ``status`` is a moment's picture.) A -wal file that
    holds transactions without its -shm file cannot be read there: refused in one line
    (``peewee.OperationalError``), rather than read without its last transactions."""
    real = path.resolve()
    uri = f"file:{quote(str(real))}?mode=ro"
    folder = real.parent
    if os.access(folder, os.W_OK | os.X_OK):
        return uri
    wal, shm = (folder / f"{real.name}{suffix}" for suffix in ("-wal", "-shm"))
    if shm.exists():
        return uri
    try:
        wal_bytes = wal.stat().st_size
    except FileNotFoundError:
        wal_bytes = 0
    if wal_bytes == 0:
        return f"{uri}&immutable=1"
    raise peewee.OperationalError(
        f"its -wal file holds transactions and its -shm file is missing, which a reader "
        f"cannot make in {folder} (not writable): copy both files, or read it where the "
        "folder is writable"
    )


def read_schema(path: Path, timeout: float) -> tuple[dict[str, set[str]], int]:
    """The pipeline's tables that exist in the SQLite file at ``path`` (with their columns)
    and its ``user_version``, read without changing the file: opened read-only, so no WAL
    mode is set and no -wal or -shm file is made before the tables are known to be ours. A
    missing or empty file has none."""
    if not path.exists() or path.stat().st_size == 0:
        return {}, 0
    try:
        uri = read_only_uri(path)
        with closing(sqlite3.connect(uri, uri=True, timeout=timeout)) as connection:
            version = int(connection.execute("PRAGMA user_version").fetchone()[0])
            found = {}
            for table in schema_columns():
                columns = {row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')}
                if columns:
                    found[table] = columns
    except sqlite3.DatabaseError as exc:  # e.g. "file is not a database"
        raise peewee.DatabaseError(str(exc)) from exc
    return found, version


class SqliteStore(Store):
    """A SQLite file (created with its folder on first use)."""

    backend = SQLITE
    unavailable_errors = (sqlite3.OperationalError, peewee.OperationalError)
    #: Opened with ``read_only_uri``: nothing can be created or upgraded.
    opened_read_only = False

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
        if self.read_only and not os.access(path.resolve().parent, os.W_OK | os.X_OK):
            # ``status`` of a database in a folder it may not write (a copy kept read-only,
            # another user's): opened as a writer, SQLite would need to make its -shm file.
            self.opened_read_only = True
            pragmas = {k: v for k, v in PRAGMAS.items() if k != "journal_mode"}
            return SqliteDatabase(
                read_only_uri(path), uri=True, pragmas=pragmas, timeout=self.timeout,
                autoconnect=True,
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteDatabase(str(path), pragmas=PRAGMAS, timeout=self.timeout, autoconnect=True)

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
                f"(schema version {version}), and its folder is not writable, so it cannot "
                "be upgraded; run a command that writes it where its folder is writable"
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
