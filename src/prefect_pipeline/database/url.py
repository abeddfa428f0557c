"""Database locations: a SQLite file or a PostgreSQL URL, parsed once and shown safely.

What travels between processes (to Dask workers, into Prefect parameters) is this text,
never a connection. Anything printed, logged or sent to Prefect uses ``display``, which
never contains a password.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from prefect_pipeline.exceptions import UsageError

SQLITE = "sqlite"
POSTGRESQL = "postgresql"


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed database location. ``url`` may hold a password; ``display`` never does."""

    backend: str
    #: The full URL; ``repr`` leaves it out, since it may hold a password.
    url: str = field(repr=False)
    #: The SQLite file (absolute); None for a server database.
    path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> DatabaseUrl:
        """``sqlite:///path``, ``postgresql://user:pass@host:port/db`` (also
        ``postgres://``), or a plain file path (SQLite)."""
        text = str(text).strip()
        if not text:
            raise UsageError("the database location is empty")
        scheme, sep, _ = text.partition("://")
        if not sep:
            return cls.sqlite(Path(text))
        scheme = scheme.lower()
        if scheme == SQLITE:
            # As SQLAlchemy reads them: sqlite:///rel.db is relative to the current folder,
            # sqlite:////abs/p.db absolute (the path is what follows the third slash).
            path = text[len("sqlite://") :]
            path = path[1:] if path.startswith("/") else path
            if not path or path == "/":
                raise UsageError(f"{text}: expected sqlite:///PATH")
            return cls.sqlite(Path(path))
        if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
            parts = urlsplit(text)
            if not parts.hostname and not parts.path.strip("/"):
                raise UsageError(f"{_redact(text)}: expected postgresql://USER:PASS@HOST:PORT/DB")
            return cls(POSTGRESQL, urlunsplit(("postgresql", *parts[1:])))
        raise UsageError(
            f"{_redact(text)}: unknown database scheme {scheme!r} "
            "(expected sqlite:///PATH or postgresql://...)"
        )

    @classmethod
    def sqlite(cls, path: Path | str) -> DatabaseUrl:
        absolute = Path(os.path.abspath(os.path.expanduser(path)))
        return cls(SQLITE, f"sqlite:///{absolute}", absolute)

    @property
    def display(self) -> str:
        """How the database is named in messages, logs and Prefect: the file's path, or
        the URL without its password."""
        return str(self.path) if self.path is not None else _redact(self.url)

    def local_files(self) -> list[Path]:
        """Files of this database on this machine (never taken as pipeline inputs)."""
        if self.path is None:
            return []
        companions = (Path(f"{self.path}{suffix}") for suffix in ("-wal", "-shm", "-journal"))
        return [self.path, *companions]

    def __str__(self) -> str:
        return self.display


def without_password(url: str) -> str:
    """``url`` with its password left out (not masked): a command that names it still runs
    where libpq finds the password itself (``PGPASSWORD``, ``~/.pgpass``)."""
    return _password_as(url, "")


def _redact(url: str) -> str:
    return _password_as(url, ":***")


def _password_as(url: str, shown: str) -> str:
    """``url`` with its password (and the colon before it) replaced by ``shown``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{parts.username or ''}{shown}@{netloc}", *parts[2:]))
