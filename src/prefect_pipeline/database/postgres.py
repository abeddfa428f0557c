"""The PostgreSQL backend: one database shared by commands on many machines.

What it does differently from the statements in ``store.py``, and why:

- **Claims** take rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` (the idiom of
  procrastinate, Oban and solid_queue): drainers claiming at the same moment each lock
  different rows instead of waiting for each other, and none takes a row twice.
- **Writes run in parallel.** There is no single writer: each command writes its own
  groups, in one transaction per group as on SQLite, and the claim check before the first
  write locks the rows it confirms (``FOR UPDATE``), so no other command can take them over
  until the group commits.
- **Registration** (``run-parallel``) locks the rows it reads, and a path that another
  command registered a moment earlier is not overwritten: the upsert only takes a row that
  no live claim holds.
- **Records** go in from the document's JSON text through ``json_array_elements``.
- **The schema version** lives in a table of its own, ``pipeline_schema``; the schema is
  created (or upgraded) under an advisory lock, so drainers starting together do not race.
- **A lost server never hangs a command**: connections have a connect timeout and TCP
  keepalives, and lock waits and unacknowledged writes are bounded by the store's timeout
  (``PIPELINE_DB_TIMEOUT``), as SQLite's busy timeout bounds its lock waits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import peewee
import psycopg
from peewee import PostgresqlDatabase

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
from prefect_pipeline.database.url import POSTGRESQL
from prefect_pipeline.exceptions import UsageError

#: Seconds a connection attempt may take before the database counts as unreachable.
CONNECT_TIMEOUT = 10
#: A dead peer is noticed after about idle + interval x count seconds of silence.
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
#: The advisory lock key that serializes schema creation and upgrades (any constant).
_SCHEMA_LOCK = 0x70697065  # "pipe"

_INSERT_RECORDS = (
    "INSERT INTO processed_records (batch_id, record_index, line_number, content, status)"
    " SELECT %s, (r.value->>'index')::bigint, (r.value->>'line_number')::bigint,"
    " r.value->>'content', 'pending'"
    " FROM json_array_elements((%s::json) #> %s::text[]) WITH ORDINALITY AS r(value, n)"
    " ORDER BY r.n"
)

# Many documents' records in one statement (as SQLite does, see there: each element of the
# array is split once, not again for every record).
_INSERT_RECORDS_OF = (
    "WITH d AS MATERIALIZED ("
    "   SELECT (e.value->>0)::bigint AS batch_id, e.value->1 AS document, e.n"
    "   FROM json_array_elements(%s::json) WITH ORDINALITY AS e(value, n))"
    " INSERT INTO processed_records (batch_id, record_index, line_number, content, status)"
    " SELECT d.batch_id, (r.value->>'index')::bigint, (r.value->>'line_number')::bigint,"
    " r.value->>'content', 'pending'"
    " FROM d, json_array_elements(d.document #> %s::text[]) WITH ORDINALITY AS r(value, m)"
    " ORDER BY d.n, r.m"
)

# A group's inputs marked done in one round trip: a column of values per array.
_MARK_DONE_ALL = (
    "UPDATE pipeline_inputs p SET status = 'done', batch_id = v.batch_id, sha256 = v.sha256,"
    " records_written = v.records_written, outcome = v.outcome, last_job = v.last_job,"
    " last_error = NULL, size = coalesce(v.size, p.size),"
    " mtime_ns = coalesce(v.mtime_ns, p.mtime_ns), claim_token = NULL,"
    " lease_expires_at = NULL, not_before = NULL, finished_at = %s, updated_at = %s"
    " FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::bigint[], %s::text[],"
    " %s::text[], %s::bigint[], %s::bigint[])"
    " AS v(id, batch_id, sha256, records_written, outcome, last_job, size, mtime_ns)"
    # The ids again: with only the join, the plan may read every row the token holds.
    " WHERE p.id = ANY(%s::bigint[]) AND p.id = v.id AND p.claim_token = %s"
)

# Found files registered and claimed in one statement, a column of values per array, in
# path order (so that two commands inserting the same new paths wait on each other's rows
# in one order; rows that existed were locked earlier, by the ledger's read, in the same
# order: code points, "C", whatever the database's collation). The guard leaves out a row
# another command holds: no row comes back for it.
_REGISTER_ALL = (
    "INSERT INTO pipeline_inputs (path, status, output_path, start_job, stop_job, size,"
    " mtime_ns, attempts, claim_token, run_id, lease_expires_at, created_at, updated_at,"
    f" {OWNER_COLUMNS})"
    " SELECT f.path, 'processing', f.output_path, %s, %s, f.size, f.mtime_ns, 1, %s, %s,"
    " %s, %s, %s, %s, %s, %s, %s, %s, %s"
    " FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[])"
    " AS f(path, output_path, size, mtime_ns) ORDER BY f.path COLLATE \"C\""
    + REGISTER_UPDATE
    + "{guard} RETURNING id, path, output_path"
)

_CLAIM_DUE = (
    "WITH due AS ("
    "   SELECT id, coalesce(size, 0) AS size FROM pipeline_inputs"
    "   WHERE (status = 'pending' AND (not_before IS NULL OR not_before <= %s))"
    "      OR (status = 'processing' AND lease_expires_at < %s)"
    "   ORDER BY id LIMIT %s"
    "   FOR UPDATE SKIP LOCKED"
    "), capped AS ("
    "   SELECT id FROM (SELECT id, size, sum(size) OVER (ORDER BY id) AS upto FROM due) d"
    "   WHERE upto - size < %s"  # those that start below the byte cap
    ")"
    " UPDATE pipeline_inputs p SET status = 'processing', claim_token = %s, run_id = %s,"
    " lease_expires_at = %s, attempts = p.attempts + 1, finished_at = NULL,"
    " updated_at = %s,"
    " start_job = coalesce(%s, p.start_job), stop_job = coalesce(%s, p.stop_job),"
    f" ({OWNER_COLUMNS}) = (%s, %s, %s, %s, %s, %s)"
    " FROM capped WHERE p.id = capped.id"
    " RETURNING p.id, p.path, p.output_path, p.attempts"
)

#: ``?`` placeholders (the store's statements) to psycopg's ``%s``; no statement holds a
#: ``?`` or a ``%`` of its own (this module's own statements use ``%s`` already).
_PLACEHOLDER = re.compile(r"\?")


def _path_parts(json_path: str) -> list[str]:
    """``$.a.b`` as the ``#>`` operator's path: ``["a", "b"]``."""
    return [part for part in json_path.removeprefix("$").split(".") if part]


def _connect_params(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise UsageError(f"{url}: the URL names no database (postgresql://USER:PASS@HOST/DB)")
    params: dict[str, Any] = {"database": database}
    if parts.hostname:
        params["host"] = parts.hostname
    if parts.port:
        params["port"] = parts.port
    if parts.username:
        params["user"] = unquote(parts.username)
    if parts.password is not None:
        params["password"] = unquote(parts.password)
    for pair in filter(None, parts.query.split("&")):  # e.g. ?sslmode=require
        key, _, value = pair.partition("=")
        params[unquote(key)] = unquote(value)
    return params


#: SQLSTATEs of a transaction the server rolled back to let another go on.
_CONFLICTS = frozenset({"40001", "40P01"})


class PostgresStore(Store):
    """A PostgreSQL database (``postgresql://USER:PASS@HOST:PORT/DB``)."""

    backend = POSTGRESQL
    unavailable_errors = (
        psycopg.OperationalError,
        psycopg.InterfaceError,
        peewee.OperationalError,
        peewee.InterfaceError,
    )

    # The rows a transaction decides on stay its own until it ends (registration, and the
    # claim check before a group's first write); a registered path another command holds
    # is left to it.
    lock_rows = " FOR UPDATE"
    path_order = ' ORDER BY path COLLATE "C"'
    register_guard = (
        " WHERE pipeline_inputs.status <> 'processing'"
        " OR pipeline_inputs.lease_expires_at < excluded.updated_at"
        " OR pipeline_inputs.claim_token = excluded.claim_token"
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._translated: dict[str, str] = {}

    def conflict(self, exc: BaseException) -> bool:
        # A deadlock (40P01) or a serialization failure (40001), by code: psycopg's classes
        # for them share no base of their own. Not the rest of class 40: a constraint
        # checked at commit (40002) fails again, and after 40003 (completion unknown) the
        # transaction may have committed. Through the database's own errors only (Peewee
        # wraps psycopg's), so that a failure while handling a conflict is not one.
        seen: set[int] = set()
        current: BaseException | None = exc
        while isinstance(current, self.unavailable_errors) and id(current) not in seen:
            seen.add(id(current))
            if getattr(current, "sqlstate", None) in _CONFLICTS:
                return True
            current = current.__cause__ or current.__context__
        return False

    def _open_database(self) -> PostgresqlDatabase:
        params = _connect_params(self.location.url)
        lock_ms = int(self.timeout * 1000)
        return PostgresqlDatabase(
            params.pop("database"),
            autoconnect=True,
            connect_timeout=CONNECT_TIMEOUT,
            application_name="prefect-pipeline",
            # Unacknowledged data waits no longer than a lock would (a server gone without
            # a word: a cut network, a machine switched off).
            tcp_user_timeout=lock_ms,
            # Bounded lock waits, like SQLite's busy timeout; a statement is otherwise free
            # to run as long as it needs.
            options=f"-c lock_timeout={lock_ms}",
            **KEEPALIVES,
            **params,
        )

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        translated = self._translated.get(sql)
        if translated is None:
            translated = self._translated[sql] = _PLACEHOLDER.sub("%s", sql)
        try:
            return self.db.connection().execute(translated, params)
        except self.unavailable_errors as exc:
            self.fail(exc)

    # Schema --------------------------------------------------------------------------------

    def _read_schema(self) -> tuple[dict[str, set[str]], int | None]:
        tables = schema_columns()
        found: dict[str, set[str]] = {}
        for table, column in self.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ANY(?)",
            (list(tables),),
        ):
            found.setdefault(table, set()).add(column)
        version = None
        if self.execute("SELECT to_regclass('pipeline_schema')").fetchone()[0] is not None:
            row = self.execute("SELECT max(version) FROM pipeline_schema").fetchone()
            version = row[0] if row else None
        return found, version

    def ensure_schema(self, *, create: bool = True) -> None:
        with self.transaction():
            found, version = self._read_schema()
            if version == SCHEMA_VERSION and len(found) == len(schema_columns()):
                return  # the usual case: read only, no lock taken
            check_tables(self.location.display, found, version)
            if not create and not found:
                raise refuse_missing(self.location.display)
        with self.transaction():
            # One command at a time creates or upgrades; the others then find it done.
            self.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
            found, version = self._read_schema()
            check_tables(self.location.display, found, version)
            # Version 2 is the first PostgreSQL schema: there is nothing to upgrade yet.
            with self.db.bind_ctx(MODELS):
                self.db.create_tables(MODELS, safe=True)
            self.execute("CREATE TABLE IF NOT EXISTS pipeline_schema (version integer NOT NULL)")
            self.execute("DELETE FROM pipeline_schema")
            self.execute("INSERT INTO pipeline_schema (version) VALUES (?)", (SCHEMA_VERSION,))

    # What PostgreSQL does differently ------------------------------------------------------

    def insert_records(self, batch_id: int, records_json: str, json_path: str = "$") -> None:
        self.execute(_INSERT_RECORDS, (batch_id, records_json, _path_parts(json_path)))

    def insert_records_of(self, documents: Sequence[tuple[int, str]], json_path: str) -> None:
        if not documents:
            return
        self.execute(_INSERT_RECORDS_OF, (documents_array(documents), _path_parts(json_path)))

    def mark_done(self, done: Sequence[tuple[int, Finished]], token: str, now: str) -> int:
        if not done:
            return 0
        rows = [(input_id, *done_values(finished)) for input_id, finished in done]
        columns = [list(column) for column in zip(*rows, strict=True)]
        return int(
            self.execute(_MARK_DONE_ALL, (now, now, *columns, columns[0], token)).rowcount
        )

    def register_all_claimed(
        self, found: Sequence[tuple[str, str, int, int]], claim: Claim
    ) -> dict[str, ClaimedRow]:
        if not found:
            return {}
        columns = [list(column) for column in zip(*found, strict=True)]
        rows = self.execute(
            _REGISTER_ALL.format(guard=self.register_guard),
            (*claim.registration_values(), *columns),
        ).fetchall()
        return {path: ClaimedRow(int(i), path, output, 1) for i, path, output in rows}

    def claim_due(self, claim: Claim, *, limit: int, max_bytes: int) -> list[ClaimedRow]:
        rows = self.execute(
            _CLAIM_DUE,
            (
                claim.now,
                claim.now,
                limit,
                max_bytes,
                claim.token,
                claim.run_id,
                claim.lease_until,
                claim.now,
                claim.start_job,
                claim.stop_job,
                *claim.owner_values(),
            ),
        ).fetchall()
        return sorted((ClaimedRow(*row) for row in rows), key=lambda c: c.input_id)
