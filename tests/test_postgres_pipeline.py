"""Every command on a real PostgreSQL database: the same tables, rows, ledger and exit codes
as on SQLite, a password that never shows, and one line for a database that cannot serve."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from prefect.client.orchestration import get_client

from prefect_pipeline.config import PipelineConfig
from tests.conftest import CliInvoke

FILES = {
    "a.txt": "alpha\n\n  beta  \n",
    "b.txt": "gamma\n",
    "deep/c.txt": "delta\nepsilon\nzeta\n",
    "bad.bin": b"x\x00y",
}


def make_tree(root: Path) -> Path:
    for relative, content in FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def password_of(url: str) -> str:
    password = urlsplit(url).password
    assert password
    return password


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, *parts[2:]))


def redacted(url: str) -> str:
    return with_password(url, "***")


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        return [tuple(row) for row in connection.execute(sql).fetchall()]


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as connection:
        return [tuple(row) for row in connection.execute(sql).fetchall()]


#: What the runs stored, comparable across backends (no ids or times).
CONTENT = (
    "SELECT b.source_path, b.record_count, b.status, r.record_index, r.line_number,"
    " r.content, r.status FROM processed_records r JOIN processing_batches b"
    " ON b.id = r.batch_id ORDER BY b.source_path, r.record_index"
)
LEDGER = (
    "SELECT path, status, attempts, records_written, outcome, last_job FROM pipeline_inputs"
    " ORDER BY path"
)


def test_every_command_works_on_postgresql_as_on_sqlite(
    cli_runner: CliInvoke, postgres_url: str, config: PipelineConfig, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "tree")
    password = password_of(postgres_url)
    on_pg = ["--log-level", "DEBUG", "--db-url", postgres_url, "--output-dir",
             str(tmp_path / "pg-out")]
    on_sqlite = ["--log-level", "OFF", "--db-path", str(config.db_path), "--output-dir",
                 str(tmp_path / "sqlite-out")]
    outputs: list[str] = []

    def both(*args: Any) -> tuple[Any, Any]:
        pg = cli_runner(*on_pg, *args)
        lite = cli_runner(*on_sqlite, *args)
        outputs.extend((pg.stdout, pg.stderr))
        assert pg.exit_code == lite.exit_code, (args, pg.output, lite.output)
        return pg, lite

    # Commands that only read refuse a database without the pipeline's tables.
    pg = cli_runner(*on_pg, "status")
    assert pg.exit_code == 2
    assert pg.stderr.splitlines()[-1] == (
        f"Error: {redacted(postgres_url)}: holds no pipeline tables (check the database "
        "location; enqueue, run, run-all and run-parallel create them)"
    )
    outputs.append(pg.output)

    run_all, _ = both("run-all", tree / "a.txt")
    assert run_all.exit_code == 0
    pg, _ = both("run", tree / "b.txt", "--stop-after", "B", "--json")
    assert json.loads(pg.stdout)["output"] == 2  # the batch id
    assert both("run", "2", "--start-from", "C")[0].exit_code == 0
    assert both("run-all", tree / "bad.bin")[0].exit_code == 1

    parallel, _ = both("run-parallel", tree, "--workers", "0", "--json", "--force")
    assert parallel.exit_code == 1
    summary = json.loads(parallel.stdout)
    assert (summary["succeeded"], summary["failed"], summary["records"]) == (3, 1, 6)
    again, _ = both("run-parallel", tree, "--workers", "0", "--json")
    assert again.exit_code == 0  # bad.bin, rejected and unchanged since, is skipped
    assert json.loads(again.stdout)["skipped"] == 4

    queue = tmp_path / "queue"
    (queue / "x.txt").parent.mkdir()
    (queue / "x.txt").write_text("one\ntwo\n")
    (queue / "y.txt").write_text("three\n")
    enqueued, _ = both("enqueue", queue, "--json")
    assert json.loads(enqueued.stdout)["queued"] == 2
    drained, _ = both("drain-db", "--workers", "0", "--json")
    assert json.loads(drained.stdout)["succeeded"] == 2
    status, lite_status = both("status", "--json")
    assert json.loads(status.stdout)["inputs"]["failed"] == 1
    # Batches counted alike, those of no queued input too (its query is a join).
    batches = json.loads(status.stdout)["batches"]
    assert batches == json.loads(lite_status.stdout)["batches"]
    assert 0 <= batches["outside_queue"] < batches["total"]
    requeued, _ = both("requeue", "--failed")
    assert requeued.stdout == "1 input(s) requeued\n"
    assert both("drain-db", "--workers", "0")[0].exit_code == 1  # bad.bin fails again

    # The same tables, rows and ledger on both (paths differ only by their output folder).
    assert rows(postgres_url, CONTENT) == sqlite_rows(config.db_path, CONTENT)
    assert rows(postgres_url, LEDGER) == sqlite_rows(config.db_path, LEDGER)
    # The password never shows: not in output, logs (DEBUG) or errors.
    assert outputs and not [text for text in outputs if password in text]
    # Nor in Prefect: the flow runs' names and parameters show the database without it.
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(summary["flow_run_id"]))
    assert run.parameters["database"] == redacted(postgres_url)
    assert password not in json.dumps(run.parameters) + (run.name or "")


@pytest.mark.parametrize("problem", ["closed port", "wrong password", "no such database"])
def test_a_database_that_cannot_be_reached_is_one_line_and_exit_3(
    cli_runner: CliInvoke, postgres_url: str, tmp_path: Path, problem: str
) -> None:
    parts = urlsplit(postgres_url)
    if problem == "closed port":
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        url = urlunsplit((parts.scheme, parts.netloc.replace(f":{parts.port}", f":{port}"),
                          *parts[2:]))
        cause = "Connection refused"
    elif problem == "wrong password":
        url = with_password(postgres_url, "not-the-password")
        cause = 'password authentication failed for user "postgres"'
    else:
        url = urlunsplit((*parts[:2], "/no_such_database", *parts[3:]))
        cause = 'database "no_such_database" does not exist'
    (tmp_path / "in.txt").write_text("a line\n")

    for args in (["enqueue", tmp_path / "in.txt"], ["drain-db", "--workers", "0"], ["status"]):
        result = cli_runner("--db-url", url, "--output-dir", tmp_path / "out", *args)
        assert result.exit_code == 3, (args, result.output)
        [line] = result.stderr.splitlines()
        assert line.startswith(f"Error: {redacted(url)}: "), line
        assert cause in line
        assert "not-the-password" not in result.output


def test_a_table_that_is_not_the_pipelines_is_refused_untouched(
    cli_runner: CliInvoke, postgres_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE processed_records (id serial PRIMARY KEY, customer text, amount numeric)"
        )
        connection.execute("INSERT INTO processed_records (customer, amount) VALUES ('x', 1)")
    (tmp_path / "in.txt").write_text("a line\n")

    result = cli_runner("--db-url", postgres_url, "--output-dir", tmp_path / "out",
                        "run-all", tmp_path / "in.txt")

    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"Error: {redacted(postgres_url)}: table processed_records (amount, customer, id) is "
        "not the pipeline's; use another database (nothing was changed)"
    ]
    tables = rows(
        postgres_url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
    )
    assert tables == [("processed_records",)]
    assert rows(postgres_url, "SELECT customer FROM processed_records") == [("x",)]


def test_drainers_starting_together_create_the_schema_once(postgres_url: str) -> None:
    """Many commands open a new database at the same moment: the advisory lock lets one
    create the tables; the others find them."""
    import threading

    from prefect_pipeline.database.postgres import PostgresStore
    from prefect_pipeline.database.url import DatabaseUrl

    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            store = PostgresStore(DatabaseUrl.parse(postgres_url), timeout=30)
            store.ensure_schema()
            store.close()
        except BaseException as exc:  # re-raised by the test
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert rows(postgres_url, "SELECT version FROM pipeline_schema") == [(2,)]


def test_a_lock_held_too_long_fails_in_bounded_time(postgres_url: str, tmp_path: Path) -> None:
    """A command waiting for a row another session keeps locked gives up after the store's
    timeout, naming the database, instead of waiting for ever."""
    from prefect_pipeline.database.postgres import PostgresStore
    from prefect_pipeline.database.url import DatabaseUrl
    from prefect_pipeline.exceptions import DatabaseUnavailable

    store = PostgresStore(DatabaseUrl.parse(postgres_url), timeout=1)
    store.ensure_schema()
    with psycopg.connect(postgres_url) as holder:
        holder.execute("LOCK TABLE pipeline_inputs IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="lock timeout"):
            store.status("2026-01-01T00:00:00.000000+00:00")
        assert time.monotonic() - started < 10
    store.close()
