"""Shared fixtures: one Prefect test server for the session, a PostgreSQL server for the
tests that ask for one (``postgres_url``, ``postgres_host``), configs, the CLI, helpers.

Prefect reads ``PREFECT_HOME`` when it is first imported, so it is pointed at a private
directory here, at import time, before any test module imports Prefect. Every flow in
the session then reports to ONE ``prefect_test_harness`` server (entered once, never
nested); the CLI and ``PipelineRunner`` see its URL through Prefect's settings context
and so never start a temporary server of their own.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shutil
import signal
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
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
from prefect_pipeline.database import DatabaseUrl, Store, close_all, open_store  # noqa: E402
from tests.netns import LoopbackHost, NetworkNamespace, remote_host  # noqa: E402
from tests.postgres_cluster import (  # noqa: E402
    PostgresCluster,
    PostgresNotInstalled,
    check_installed,
)

#: The tables of the database, in the order ``db_counts`` reports them.
TABLES = ("pipeline_inputs", "processing_batches", "processed_records")

SAMPLE_TEXT = "first line\n\n  second line  \nthird line\n"


# Order ----------------------------------------------------------------------------------

#: The longest tests (over 45 s each on two cores), started first: a long test picked up
#: last would keep one test process running alone at the end of the suite.
LONGEST_FIRST = (
    "tests/test_readme.py::test_the_readme_runs_as_written",
    "tests/test_scale_out.py::",
    "tests/test_benchmarks.py::test_harness_end_to_end",
    "tests/test_queue_crash.py::test_two_drainers_share_the_queue_without_overlap",
    "tests/test_fault_injection.py::",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests first, then the others that start processes (``slow``), then the
    rest; each part in its file order."""

    def rank(item: pytest.Item) -> int:
        if item.nodeid.startswith(LONGEST_FIRST):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)


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
        from prefect.settings import PREFECT_API_URL, get_current_settings

        # Also in the environment, as a user's shell would have it: commands find it there
        # before Prefect is imported, and child processes inherit it.
        os.environ["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
        # Its database, migrated and still without a flow run: the seed of the Prefect homes
        # of tests whose commands start a server of their own (``seeded_prefect_home``).
        url = get_current_settings().server.database.connection_url
        assert url is not None
        _copy_sqlite(Path(url.get_secret_value().split(":///", 1)[1]), _PREFECT_DB_SEED)
        yield


#: A Prefect database with every migration applied and nothing in it, copied from the
#: session server's as it starts.
_PREFECT_DB_SEED = Path(_PREFECT_HOME) / "seed" / "prefect.db"


def _copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database that a live server may be writing to."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with (
        contextlib.closing(sqlite3.connect(source)) as reading,
        contextlib.closing(sqlite3.connect(target)) as writing,
    ):
        reading.backup(writing)


def seeded_prefect_home(home: Path) -> Path:
    """``home`` as a ``PREFECT_HOME`` that Prefect has used before: its database is migrated.

    A server started on a fresh home spends 10-30 s (two cores) creating Prefect's schema
    before it answers; a test whose point is not that first use starts from a used home,
    as most of a user's commands do. ``test_prefect_server`` keeps the first use covered.
    """
    home.mkdir(parents=True, exist_ok=True)
    _copy_sqlite(_PREFECT_DB_SEED, home / "prefect.db")
    return home


def running_in_ci() -> bool:
    """CI sets ``CI=true``; there, a test that cannot run must fail, not skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throw-away PostgreSQL server for the session (started on first use, about 1.5 s),
    stopped and deleted at the end of the session, Ctrl-C included.

    Skipped where the server binaries are not installed, except in CI, where that fails:
    CI must not pass by skipping the PostgreSQL tests.
    """
    try:
        check_installed()
    except PostgresNotInstalled as error:
        if running_in_ci():
            pytest.fail(f"{error} (CI=true: the PostgreSQL tests must run)", pytrace=False)
        pytest.skip(str(error))
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(
    postgres_cluster: PostgresCluster, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A fresh, empty database for this test; its ``postgresql://`` URL (TCP, password).

    Dropped afterwards, connections and all. A test that stopped the server gets it
    started again here, so the tests after it still have one.
    """
    # Named after the test to tell databases apart in the server's log; 63 bytes at most.
    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    name = f"t_{stem}_{secrets.token_hex(4)}"
    url = postgres_cluster.create_database(name)
    yield url
    postgres_cluster.start()
    postgres_cluster.drop_database(name)


PostgresHost = NetworkNamespace | LoopbackHost


@pytest.fixture
def make_postgres_host(
    postgres_cluster: PostgresCluster,
) -> Iterator[Callable[[], PostgresHost]]:
    """``make_postgres_host()``: a stand-in for another machine that reaches the session's
    PostgreSQL server over a network interface; call it once per machine.

    Each is a network namespace with a veth pair (``host.command(argv)`` runs a program in
    it; the server is at ``host.server_address``, so ``postgres_cluster.url(db,
    host=host.server_address)``). The server must listen on that address, which means a
    restart: make the hosts before opening connections. Where namespaces cannot be made,
    each is this machine over 127.0.0.1 instead, ``host.isolated`` is False and
    ``host.reason`` says why. Namespaces, veths and processes left inside are removed after
    the test, failed or not.
    """
    with contextlib.ExitStack() as stack:

        def make() -> PostgresHost:
            host = stack.enter_context(remote_host())
            if host.isolated:
                postgres_cluster.add_listen_address(host.server_address)
                stack.callback(postgres_cluster.remove_listen_address, host.server_address)
            return host

        yield make


@pytest.fixture
def postgres_host(make_postgres_host: Callable[[], PostgresHost]) -> PostgresHost:
    """One stand-in machine (see ``make_postgres_host``)."""
    return make_postgres_host()


# Per test -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _close_databases() -> Iterator[None]:
    """Each test opens its own database files; forget them (and close them) afterwards."""
    yield
    close_all()


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    """Undo what a run changes in this process: the environment (``configure_logging``
    and ``PrefectApi`` export variables for child processes) and the SIGINT and SIGTERM
    handlers the CLI installs."""
    from prefect_pipeline import interrupts

    environ = dict(os.environ)
    handlers = {name: signal.getsignal(name) for name in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        interrupts.reset()
        for name, handler in handlers.items():
            signal.signal(name, handler)
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
def silent_address() -> Iterator[tuple[str, int]]:
    """A local address that accepts connections and never answers (a hung service)."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield "127.0.0.1", server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


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


def queued_output_refused(folder: Path, problem: str, taken: int) -> str:
    """drain-db's one line (after "Error: ") when its first inputs' output folder, where
    enqueue put their JSON, takes no file: ``folder``, its ``problem``, the inputs given
    back."""
    return (
        f"{folder}: {problem} (where enqueue's --output-dir put the queued inputs' JSON); the"
        f" {taken} input(s) this run took are pending in the database"
    )


def api_env() -> dict[str, str]:
    """This process's environment with the session's Prefect API URL, for a command run as
    a child process (the harness sets it through Prefect's settings context too, which a
    child does not see)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the session's Prefect server is not configured"
    return {**os.environ, "PREFECT_API_URL": str(url)}


class ManualClock:
    """A ``Clock`` whose time moves only when told (``advance``) or when something sleeps
    on it: lease and retry tests run instantly."""

    def __init__(self, start: datetime | None = None) -> None:
        self.moment = start or datetime.now(UTC)
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self.moment

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


def sqlite_store(db_path: Path | str, timeout: float = 60.0) -> Store:
    """The pipeline's store for a SQLite file (created with its schema if missing)."""
    return open_store(DatabaseUrl.sqlite(db_path), timeout=timeout)


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
