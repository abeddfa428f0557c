"""Opening the SQLite database: pragmas, schema creation and in-place upgrades.

Connections are opened lazily in the process that uses them and never cross a process
boundary: what travels to Dask workers is the path. Each process keeps one
``SqliteDatabase`` per path (peewee gives each thread its own connection).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from peewee import SqliteDatabase

from prefect_pipeline.database.models import MODELS
from prefect_pipeline.exceptions import RunError

#: Bump when the schema changes, and add the step that upgrades the previous version.
SCHEMA_VERSION = 1

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

_MIGRATIONS: dict[int, Callable[[SqliteDatabase], None]] = {
    # version -> function that upgrades a database at version-1 to this version.
}

_lock = threading.Lock()
_databases: dict[tuple[str, float], SqliteDatabase] = {}


def _create_or_upgrade(db: SqliteDatabase) -> None:
    with db.bind_ctx(MODELS), db.atomic("IMMEDIATE"):
        version = db.execute_sql("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RunError(
                f"{db.database}: database schema version {version} is newer than this "
                f"version of the pipeline supports ({SCHEMA_VERSION}); upgrade the pipeline"
            )
        has_tables = db.table_exists("processing_batches")
        if not has_tables:
            db.create_tables(MODELS, safe=True)
        else:
            for target in range(version + 1, SCHEMA_VERSION + 1):
                _MIGRATIONS[target](db)
            # Tables added by later versions that a migration did not create.
            db.create_tables(MODELS, safe=True)
        if version != SCHEMA_VERSION:
            db.execute_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")


def get_database(path: str | Path, timeout: float = 60.0) -> SqliteDatabase:
    """The process's database object for ``path``, created (with its schema) on first use."""
    # Looked up for every input a writer handles: try the path as given before resolving it.
    db = _databases.get((str(path), timeout))
    if db is not None:
        return db
    key = (str(Path(path).resolve()), timeout)
    with _lock:
        db = _databases.get(key)
        if db is None:
            Path(key[0]).parent.mkdir(parents=True, exist_ok=True)
            db = SqliteDatabase(key[0], pragmas=PRAGMAS, timeout=timeout, autoconnect=True)
            _create_or_upgrade(db)
            _databases[key] = db
        _databases[(str(path), timeout)] = db
        return db


def close_all() -> None:
    """Close this thread's connections and forget the databases (tests, process exit)."""
    with _lock:
        for db in _databases.values():
            if not db.is_closed():
                db.close()
        _databases.clear()


@contextmanager
def session(path: str | Path, timeout: float = 60.0) -> Iterator[SqliteDatabase]:
    """Bind the models to the database at ``path`` for the duration of the block."""
    db = get_database(path, timeout)
    with db.bind_ctx(MODELS):
        yield db
