"""Which backend serves a database location, and this process's open stores.

A backend is a ``Store`` subclass in a module of its own, imported only when a location
needs it (so a process that only uses SQLite never loads a server database's driver).
"""

from __future__ import annotations

import threading

from prefect_pipeline.database.store import Store
from prefect_pipeline.database.url import POSTGRESQL, SQLITE, DatabaseUrl
from prefect_pipeline.exceptions import RunError

_lock = threading.Lock()
_stores: dict[tuple[str, float, bool], Store] = {}


def _backend(name: str) -> type[Store]:
    # Imported on demand: a backend's driver is loaded only by the processes that use it.
    if name == SQLITE:
        from prefect_pipeline.database.sqlite import SqliteStore

        return SqliteStore
    if name == POSTGRESQL:
        from prefect_pipeline.database.postgres import PostgresStore

        return PostgresStore
    raise RunError(f"no storage backend for {name!r} databases")


def open_store(
    location: DatabaseUrl | str, *, timeout: float, create: bool = True, read_only: bool = False
) -> Store:
    """This process's store for ``location``, created (with its schema) on first use; with
    ``create=False``, a database without the pipeline's tables is refused
    (``MissingDatabase``) and nothing is created. A ``read_only`` store is for a command
    that only reads (it creates nothing either)."""
    if isinstance(location, str):
        location = DatabaseUrl.parse(location)
    key = (location.url, timeout, read_only)
    store = _stores.get(key)
    if store is not None:
        return store
    with _lock:
        store = _stores.get(key)
        if store is None:
            store = _backend(location.backend)(location, timeout=timeout, read_only=read_only)
            store.ensure_schema(create=create and not read_only)
            _stores[key] = store
        return store


def close_all() -> None:
    """Close this thread's connections and forget the stores (tests, process exit)."""
    with _lock:
        for store in _stores.values():
            store.close()
        _stores.clear()
