"""The SQLite database: pragmas, schema version, indexes, constraints, and the public
contract that users can query it with the ``sqlite3`` module."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import peewee
import pytest

from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.database import SCHEMA_VERSION, close_all, get_database, session
from prefect_pipeline.jobs import JobA, JobB, JobC
from tests.conftest import db_counts


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "pipeline.db"


@pytest.fixture
def stored(config: PipelineConfig, sample_file: Path) -> int:
    """A finalized batch of the sample file; returns its id."""
    doc = JobA(config).execute(sample_file).output
    batch_id = JobB(config).execute(doc).output
    assert JobC(config).execute(batch_id).success
    close_all()
    return batch_id


@contextmanager
def stdlib(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain ``sqlite3`` connection, as a user would open one; closed on exit."""
    connection = sqlite3.connect(path)
    try:
        yield connection
    finally:
        connection.close()


def test_database_file_and_parent_directories_are_created(db_path: Path) -> None:
    assert not db_path.parent.exists()

    get_database(db_path)

    assert db_path.is_file()


def test_wal_mode(db_path: Path) -> None:
    get_database(db_path)

    # journal_mode=wal is stored in the file: any new connection sees it.
    with stdlib(db_path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_foreign_keys_and_busy_timeout_are_on_for_our_connections(db_path: Path) -> None:
    db = get_database(db_path, timeout=7.5)

    assert db.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute_sql("PRAGMA busy_timeout").fetchone()[0] == 7500
    assert db.execute_sql("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_schema_version(db_path: Path) -> None:
    get_database(db_path)

    with stdlib(db_path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert SCHEMA_VERSION >= 1


def test_tables(db_path: Path) -> None:
    get_database(db_path)

    with stdlib(db_path) as connection:
        tables = {
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
    assert {"pipeline_inputs", "processing_batches", "processed_records"} <= tables


def _indexes(connection: sqlite3.Connection, table: str) -> dict[tuple[str, ...], bool]:
    """Columns of each index of ``table`` -> whether it is unique."""
    found = {}
    for _seq, name, unique, *_ in connection.execute(f"PRAGMA index_list('{table}')"):
        columns = tuple(row[2] for row in connection.execute(f"PRAGMA index_info('{name}')"))
        found[columns] = bool(unique)
    return found


def test_index_on_records_batch_id(db_path: Path) -> None:
    get_database(db_path)

    with stdlib(db_path) as connection:
        assert ("batch_id",) in _indexes(connection, "processed_records")
        plan = connection.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM processed_records WHERE batch_id = 1"
        ).fetchall()
    assert any("USING INDEX" in row[-1] for row in plan), plan


def test_source_path_and_sha256_are_unique_together(db_path: Path) -> None:
    get_database(db_path)
    insert = "INSERT INTO processing_batches (source_path, sha256, record_count, status, " \
        "created_at) VALUES (?, ?, 0, 'pending', '2026-01-01T00:00:00.000000+00:00')"

    with stdlib(db_path) as connection:
        assert _indexes(connection, "processing_batches")[("source_path", "sha256")] is True
        connection.execute(insert, ("/a", "1" * 64))
        connection.execute(insert, ("/a", "2" * 64))  # same path, other content
        connection.execute(insert, ("/b", "1" * 64))  # same content, other path
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            connection.execute(insert, ("/a", "1" * 64))


def test_records_need_an_existing_batch(db_path: Path) -> None:
    db = get_database(db_path)

    with pytest.raises(peewee.IntegrityError, match="FOREIGN KEY"):
        db.execute_sql(
            "INSERT INTO processed_records (batch_id, record_index, line_number, content, status) "
            "VALUES (12345, 0, 1, 'x', 'pending')"
        )


def test_deleting_a_batch_deletes_its_records(config: PipelineConfig, stored: int) -> None:
    db = get_database(config.db_path)

    db.execute_sql("DELETE FROM processing_batches WHERE id = ?", (stored,))

    assert db_counts(config.db_path)["processed_records"] == 0


def test_spec_queries_work_with_the_sqlite3_module(config: PipelineConfig, stored: int) -> None:
    with stdlib(config.db_path) as connection:
        batches = connection.execute("SELECT * FROM processing_batches;")
        batch_columns = [d[0] for d in batches.description]
        batch_rows = batches.fetchall()
        records = connection.execute("SELECT * FROM processed_records;")
        record_columns = [d[0] for d in records.description]
        record_rows = records.fetchall()

    assert batch_columns == [
        "id", "source_path", "sha256", "record_count", "status", "created_at",
        "finalized_at", "output_path",
    ]
    assert record_columns == [
        "id", "batch_id", "record_index", "line_number", "content", "status",
    ]
    [batch] = batch_rows
    assert batch[0] == stored
    assert batch[3:5] == (3, "finalized")
    assert [row[1:] for row in record_rows] == [
        (stored, 0, 1, "first line", "finalized"),
        (stored, 1, 3, "second line", "finalized"),
        (stored, 2, 4, "third line", "finalized"),
    ]


def test_reopening_keeps_data_and_version(config: PipelineConfig, stored: int) -> None:
    # ``stored`` closed every connection; open the existing file afresh.
    db = get_database(config.db_path)

    assert db.execute_sql("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db_counts(config.db_path)["processed_records"] == 3


def test_one_database_object_per_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    first = get_database("p.db")
    assert get_database(tmp_path / "p.db") is first
    assert get_database(tmp_path / "other.db") is not first

    close_all()

    assert first.is_closed()
    assert get_database("p.db") is not first


def test_session_binds_the_models(db_path: Path) -> None:
    from prefect_pipeline.database import ProcessingBatch

    with session(db_path):
        ProcessingBatch.create(source_path="/x", sha256="f" * 64, record_count=0)
        assert ProcessingBatch.select().count() == 1

    assert db_counts(db_path)["processing_batches"] == 1
