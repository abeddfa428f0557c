"""Shared fixtures: one Prefect test server for the session, configs, the CLI, helpers.

Prefect reads ``PREFECT_HOME`` when it is first imported, so it is pointed at a private
directory here, at import time, before any test module imports Prefect. Every flow in
the session then reports to ONE ``prefect_test_harness`` server (entered once, never
nested); the CLI and ``PipelineRunner`` see its URL through Prefect's settings context
and so never start a temporary server of their own.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

_PREFECT_HOME = tempfile.mkdtemp(prefix="prefect-pipeline-tests-")
atexit.register(shutil.rmtree, _PREFECT_HOME, True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# The session's server comes from the harness, whatever the developer's shell points at;
# the PIPELINE_* settings come from each test.
for _name in (
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_PROFILE",
    "PIPELINE_OUTPUT_DIR",
    "PIPELINE_DB_PATH",
    "PIPELINE_LOG_LEVEL",
    "PIPELINE_DASK_ADDRESS",
):
    os.environ.pop(_name, None)

import pytest  # noqa: E402
from click.testing import CliRunner, Result  # noqa: E402

from prefect_pipeline.config import PipelineConfig  # noqa: E402
from prefect_pipeline.database import close_all  # noqa: E402

#: The tables of the database, in the order ``db_counts`` reports them.
TABLES = ("pipeline_inputs", "processing_batches", "processed_records")

SAMPLE_TEXT = "first line\n\n  second line  \nthird line\n"


# Session ------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def prefect_server() -> Iterator[None]:
    """One Prefect API server (and its SQLite database) for the whole session."""
    # Importing ``prefect.main`` applies Prefect's logging configuration, as it is applied
    # in any process that imported Prefect before running the pipeline. Left to the first
    # flow run instead, it would reset the "prefect" logger to the settings captured
    # here, after a test's ``--log-level OFF`` had silenced it.
    import prefect.main  # noqa: F401
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        from prefect.settings import PREFECT_API_URL

        # Also in the environment, as a user's shell would have it: commands find it there
        # before Prefect is imported, and child processes inherit it.
        os.environ["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
        yield


# Per test -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _close_databases() -> Iterator[None]:
    """Each test opens its own database files; forget them (and close them) afterwards."""
    yield
    close_all()


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    """Undo what a run changes in this process: the environment (``configure_logging``
    and ``PrefectApi`` export variables for child processes) and the SIGTERM handler the
    CLI installs."""
    environ = dict(os.environ)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        for name in set(os.environ) - set(environ):
            del os.environ[name]
        os.environ.update(environ)


@pytest.fixture
def config(tmp_path: Path) -> PipelineConfig:
    """A configuration whose output directory and database live in ``tmp_path``."""
    return PipelineConfig(
        output_dir=tmp_path / "output",
        db_path=tmp_path / "db" / "pipeline.db",
        log_level="OFF",
    )


@pytest.fixture
def sample_file(tmp_path: Path) -> Path:
    """A small text file: three records on lines 1, 3 and 4."""
    path = tmp_path / "inputs" / "sample.txt"
    path.parent.mkdir()
    path.write_text(SAMPLE_TEXT, encoding="utf-8")
    return path


CliInvoke = Callable[..., Result]


@pytest.fixture
def cli_runner() -> CliInvoke:
    """``cli_runner(*args, env=None)``: run ``pipeline ARGS`` in this process.

    ``result.stdout`` and ``result.stderr`` are captured separately.
    """
    from prefect_pipeline.cli import cli

    def invoke(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> Result:
        runner = CliRunner(env=env)
        return runner.invoke(cli, [os.fspath(a) for a in args], prog_name="pipeline")

    return invoke


# Helpers ------------------------------------------------------------------------------


def db_counts(db_path: Path) -> dict[str, int]:
    """Rows in each table, read with the standard library; zeros if there is no database.

    Never creates the file (a missing database is part of what some tests check).
    """
    if not Path(db_path).exists():
        return dict.fromkeys(TABLES, 0)
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        present = {row[0] for row in tables}
        return {
            table: connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            if table in present
            else 0
            for table in TABLES
        }
    finally:
        connection.close()


def query(db_path: Path, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
    """Rows of ``sql`` on ``db_path``, read with the standard library ``sqlite3``."""
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def files_under(directory: Path) -> list[str]:
    """Every file below ``directory`` (hidden ones included), relative and sorted; [] if the
    directory does not exist."""
    directory = Path(directory)
    if not directory.exists():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if not p.is_dir())
