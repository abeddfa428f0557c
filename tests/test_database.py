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
from prefect_pipeline.database import SCHEMA_VERSION, close_all
from prefect_pipeline.jobs import JobA, JobB, JobC
from tests.conftest import db_counts, sqlite_store


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

    sqlite_store(db_path)

    assert db_path.is_file()


def test_wal_mode(db_path: Path) -> None:
    sqlite_store(db_path)

    # journal_mode=wal is stored in the file: any new connection sees it.
    with stdlib(db_path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_foreign_keys_and_busy_timeout_are_on_for_our_connections(db_path: Path) -> None:
    db = sqlite_store(db_path, timeout=7.5).db

    assert db.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute_sql("PRAGMA busy_timeout").fetchone()[0] == 7500
    assert db.execute_sql("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_schema_version(db_path: Path) -> None:
    sqlite_store(db_path)

    with stdlib(db_path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert SCHEMA_VERSION >= 1


def test_tables(db_path: Path) -> None:
    sqlite_store(db_path)

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
    sqlite_store(db_path)

    with stdlib(db_path) as connection:
        assert ("batch_id",) in _indexes(connection, "processed_records")
        plan = connection.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM processed_records WHERE batch_id = 1"
        ).fetchall()
    assert any("USING INDEX" in row[-1] for row in plan), plan


def test_source_path_and_sha256_are_unique_together(db_path: Path) -> None:
    sqlite_store(db_path)
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
    db = sqlite_store(db_path).db

    with pytest.raises(peewee.IntegrityError, match="FOREIGN KEY"):
        db.execute_sql(
            "INSERT INTO processed_records (batch_id, record_index, line_number, content, status) "
            "VALUES (12345, 0, 1, 'x', 'pending')"
        )


def test_deleting_a_batch_deletes_its_records(config: PipelineConfig, stored: int) -> None:
    db = sqlite_store(config.db_path).db

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
    db = sqlite_store(config.db_path).db

    assert db.execute_sql("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db_counts(config.db_path)["processed_records"] == 3


def test_one_database_object_per_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    first = sqlite_store("p.db")
    assert sqlite_store(tmp_path / "p.db") is first
    assert sqlite_store(tmp_path / "other.db") is not first

    close_all()

    assert first.db.is_closed()
    assert sqlite_store("p.db") is not first


def test_bind_models_lets_peewee_queries_use_the_store(db_path: Path) -> None:
    from prefect_pipeline.database import ProcessingBatch

    with sqlite_store(db_path).bind_models():
        ProcessingBatch.create(source_path="/x", sha256="f" * 64, record_count=0)
        assert ProcessingBatch.select().count() == 1

    assert db_counts(db_path)["processing_batches"] == 1


#: The schema of version 1, as the first release created it.
VERSION_1 = (
    'CREATE TABLE "pipeline_inputs" ("id" INTEGER NOT NULL PRIMARY KEY, "path" TEXT NOT NULL,'
    ' "status" VARCHAR(255) NOT NULL, "output_path" TEXT, "start_job" VARCHAR(255) NOT NULL,'
    ' "stop_job" VARCHAR(255), "size" INTEGER, "mtime_ns" INTEGER, "sha256" VARCHAR(255),'
    ' "batch_id" INTEGER, "records_written" INTEGER, "outcome" VARCHAR(255),'
    ' "attempts" INTEGER NOT NULL, "last_job" VARCHAR(255), "last_error" TEXT,'
    ' "claim_token" VARCHAR(255), "run_id" VARCHAR(255), "lease_expires_at" TEXT,'
    ' "not_before" TEXT, "created_at" TEXT NOT NULL, "updated_at" TEXT NOT NULL,'
    ' "finished_at" TEXT)',
    'CREATE UNIQUE INDEX "pipeline_inputs_path" ON "pipeline_inputs" ("path")',
    'CREATE INDEX "pipeline_inputs_status" ON "pipeline_inputs" ("status")',
    'CREATE INDEX "pipeline_inputs_claim_token" ON "pipeline_inputs" ("claim_token")',
    'CREATE INDEX "pipeline_inputs_run_id" ON "pipeline_inputs" ("run_id")',
    'CREATE TABLE "processing_batches" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,'
    ' "source_path" TEXT NOT NULL, "sha256" VARCHAR(255) NOT NULL,'
    ' "record_count" INTEGER NOT NULL, "status" VARCHAR(255) NOT NULL,'
    ' "created_at" TEXT NOT NULL, "finalized_at" TEXT, "output_path" TEXT)',
    'CREATE UNIQUE INDEX "processing_batches_source_path_sha256" ON "processing_batches"'
    ' ("source_path", "sha256")',
    'CREATE TABLE "processed_records" ("id" INTEGER NOT NULL PRIMARY KEY,'
    ' "batch_id" INTEGER NOT NULL, "record_index" INTEGER NOT NULL,'
    ' "line_number" INTEGER NOT NULL, "content" TEXT NOT NULL, "status" VARCHAR(255) NOT NULL,'
    ' FOREIGN KEY ("batch_id") REFERENCES "processing_batches" ("id") ON DELETE CASCADE)',
    'CREATE INDEX "processed_records_batch_id" ON "processed_records" ("batch_id")',
    "PRAGMA user_version = 1",
)


def test_a_version_1_database_is_upgraded_in_place(db_path: Path, tmp_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with stdlib(db_path) as connection:
        for statement in VERSION_1:
            connection.execute(statement)
        connection.execute(
            "INSERT INTO pipeline_inputs (path, status, start_job, attempts, created_at,"
            " updated_at) VALUES ('/in/a.txt', 'done', 'A', 1, 't', 't')"
        )
        connection.commit()

    store = sqlite_store(db_path)
    store.queue(path="/in/b.txt", output_path="/out/b.json", size=1, mtime_ns=1, now="t")

    with stdlib(db_path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        columns = {row[1]: row for row in connection.execute("PRAGMA table_info(pipeline_inputs)")}
        rows = connection.execute(
            "SELECT path, status, start_job FROM pipeline_inputs ORDER BY id"
        ).fetchall()
        indexes = {row[1] for row in connection.execute("PRAGMA index_list(pipeline_inputs)")}
    assert {"owner_host", "owner_pid", "owner_started_at", "flow_run_id", "flow_run_url"} <= set(
        columns
    )
    assert columns["start_job"][3] == 0  # NULL allowed now
    assert rows == [("/in/a.txt", "done", "A"), ("/in/b.txt", "pending", None)]
    assert "pipeline_inputs_path" in indexes
