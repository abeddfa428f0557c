"""Database locations: parsing, and names that never show a password."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prefect_pipeline.database.url import POSTGRESQL, SQLITE, DatabaseUrl
from prefect_pipeline.exceptions import UsageError


@pytest.mark.parametrize(
    "text", ["data/p.db", "sqlite:///data/p.db", "sqlite:////abs/p.db", "sqlite:///~/p.db"]
)
def test_sqlite_locations(text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    location = DatabaseUrl.parse(text)
    assert location.backend == SQLITE
    assert location.path is not None and location.path.is_absolute()
    assert location.url == f"sqlite:///{location.path}"
    assert location.display == str(location.path)
    assert location.local_files()[1:] == [
        Path(f"{location.path}-wal"), Path(f"{location.path}-shm"),
        Path(f"{location.path}-journal"),
    ]


def test_a_sqlite_url_is_read_as_sqlalchemy_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert DatabaseUrl.parse("sqlite:///rel.db").path == tmp_path / "rel.db"
    assert DatabaseUrl.parse("sqlite:///data/p.db").path == tmp_path / "data" / "p.db"
    assert DatabaseUrl.parse("sqlite:////abs/p.db").path == Path("/abs/p.db")
    # Its own URL reads back as the same file.
    location = DatabaseUrl.parse("sqlite:///rel.db")
    assert DatabaseUrl.parse(location.url) == location


def test_a_postgresql_password_is_never_shown() -> None:
    location = DatabaseUrl.parse("postgres://ingest:s3cret@db.example:5433/queue")
    assert location.backend == POSTGRESQL
    assert location.url == "postgresql://ingest:s3cret@db.example:5433/queue"
    assert location.display == "postgresql://ingest:***@db.example:5433/queue"
    assert "s3cret" not in repr(location) and "s3cret" not in str(location)
    assert location.local_files() == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the database location is empty"),
        ("mysql://u:pw@h/db", "mysql://u:***@h/db: unknown database scheme 'mysql'"),
        ("sqlite://", "expected sqlite:///PATH"),
    ],
)
def test_bad_locations(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        DatabaseUrl.parse(text)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://me:s3cret@db.example:5432/q", "postgresql://me@db.example:5432/q"),
        ("postgresql://me@db.example/q", "postgresql://me@db.example/q"),
        ("sqlite:////var/q.db", "sqlite:////var/q.db"),
    ],
)
def test_a_url_in_a_command_to_run_leaves_its_password_out(url: str, shown: str) -> None:
    """Left out, not masked: the command still runs where libpq finds the password."""
    from prefect_pipeline.database.url import without_password

    assert without_password(url) == shown
