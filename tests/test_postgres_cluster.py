"""The PostgreSQL test infrastructure itself: the throw-away cluster, the per-test database,
peewee on psycopg 3, and clients on stand-in machines (network namespaces).

The PostgreSQL tests of the pipeline lean on these fixtures; if one of these fails, look
here first.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import peewee
import psycopg
import pytest
from playhouse.db_url import connect as connect_url

from tests import netns
from tests.conftest import PostgresHost
from tests.postgres_cluster import (
    DEBIAN_PACKAGE,
    PostgresCluster,
    PostgresNotInstalled,
    ShutdownMode,
    find_bindir,
)

pytestmark = pytest.mark.slow


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


# The cluster ---------------------------------------------------------------------------


def test_url_reaches_a_fresh_database_over_tcp(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    with psycopg.connect(postgres_url) as connection:
        row = connection.execute(
            "SELECT current_database(), host(inet_server_addr()), current_setting('fsync'),"
            " current_setting('max_connections')::int,"
            " (SELECT count(*) FROM pg_tables WHERE schemaname = 'public')"
        ).fetchone()
    assert row is not None
    database, server, fsync, max_connections, tables = row
    assert database == urlsplit(postgres_url).path.lstrip("/")
    assert server == "127.0.0.1"  # TCP, not the unix socket
    assert (fsync, max_connections, tables) == ("off", 200, 0)
    assert postgres_cluster.url(database) == postgres_url


def test_wrong_or_missing_password_is_refused(
    postgres_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # No password from the environment or a ~/.pgpass may rescue the attempts below.
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    url = postgres_cluster.url()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(_with_password(url, "not-the-password"))
    no_password = url.replace(f":{postgres_cluster.password}@", "@")
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(no_password)


def test_create_and_drop_database(postgres_cluster: PostgresCluster) -> None:
    url = postgres_cluster.create_database("t_create_and_drop")
    assert "t_create_and_drop" in postgres_cluster.databases()
    with pytest.raises(psycopg.errors.DuplicateDatabase):
        postgres_cluster.create_database("t_create_and_drop")
    leftover = psycopg.connect(url)
    try:
        leftover.execute("CREATE TABLE t (x int)")
        leftover.commit()
        # A connection a test forgot to close does not keep the database alive.
        postgres_cluster.drop_database("t_create_and_drop")
        with pytest.raises(psycopg.OperationalError):
            leftover.execute("SELECT 1")
    finally:
        leftover.close()
    assert "t_create_and_drop" not in postgres_cluster.databases()
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(url)
    postgres_cluster.drop_database("t_create_and_drop")  # absent: no error


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_keeps_committed_data(
    postgres_cluster: PostgresCluster, postgres_url: str, mode: ShutdownMode
) -> None:
    """``immediate`` is a crash: no checkpoint, recovery from the WAL at the next start.
    Every commit made before it must survive (synchronous_commit is on for that)."""
    port = postgres_cluster.port
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE t (x int)")
        for x in range(50):
            connection.execute("INSERT INTO t VALUES (%s)", (x,))
    held = psycopg.connect(postgres_url)
    try:
        postgres_cluster.stop(mode)
        assert not postgres_cluster.is_running()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(postgres_url, connect_timeout=5)
        postgres_cluster.start()
        assert postgres_cluster.is_running()
        # Connections do not survive a restart; the server's address does.
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
    finally:
        held.close()
    assert postgres_cluster.port == port
    postgres_cluster.restart()
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT count(*), sum(x) FROM t").fetchone() == (50, 1225)


# Peewee on psycopg 3 --------------------------------------------------------------------


def test_peewee_uses_psycopg3_and_skip_locked_splits_the_queue(postgres_url: str) -> None:
    """Two connections (two drainers) claiming queue rows with FOR UPDATE SKIP LOCKED get
    disjoint rows while both transactions are open."""
    first = connect_url(postgres_url)
    second = connect_url(postgres_url)
    assert isinstance(first, peewee.PostgresqlDatabase)
    # psycopg 3, not psycopg2 (peewee prefers psycopg2 when both are installed).
    assert isinstance(first.connection(), psycopg.Connection)

    class Row(peewee.Model):
        id = peewee.AutoField()
        state = peewee.TextField(default="pending")

        class Meta:
            database = first
            table_name = "queue"

    def claim() -> list[int]:
        query = Row.select(Row.id).order_by(Row.id).limit(3).for_update(skip_locked=True)
        return [row.id for row in query]

    try:
        first.create_tables([Row])
        Row.insert_many([{}] * 8).execute()
        with first.atomic():
            mine = claim()
            with second.bind_ctx([Row]), second.atomic():
                theirs = claim()
        assert mine == [1, 2, 3]
        assert theirs == [4, 5, 6]
    finally:
        first.close()
        second.close()


# Finding the binaries -------------------------------------------------------------------


def _fake_server(bindir: Path) -> None:
    bindir.mkdir(parents=True)
    for name in ("initdb", "postgres"):
        (bindir / name).write_text("")


def test_find_bindir_prefers_the_newest_debian_version(tmp_path: Path) -> None:
    for version in ("9.6", "13", "15"):
        _fake_server(tmp_path / version / "bin")
    (tmp_path / "16" / "bin").mkdir(parents=True)  # client only: no initdb
    found = find_bindir(pg_config=None, search=str(tmp_path / "*" / "bin"))
    assert found == tmp_path / "15" / "bin"


def test_missing_binaries_name_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no pg_config, no initdb
    with pytest.raises(PostgresNotInstalled, match=f"Debian package '{DEBIAN_PACKAGE}'"):
        find_bindir(search=str(tmp_path / "*" / "bin"))


# Stand-in machines ----------------------------------------------------------------------

_CLIENT = textwrap.dedent(
    """
    import sys, psycopg
    with psycopg.connect(sys.argv[1], connect_timeout=5) as connection:
        row = connection.execute(
            "SELECT host(inet_client_addr()), host(inet_server_addr())"
        ).fetchone()
    print(*row)
    try:
        psycopg.connect(sys.argv[2], connect_timeout=2)
    except psycopg.OperationalError:
        print("loopback refused")
    else:
        print("loopback reached")
    """
)


def test_client_in_a_namespace_connects_over_the_veth(
    postgres_cluster: PostgresCluster, postgres_url: str, postgres_host: PostgresHost
) -> None:
    if not postgres_host.isolated:
        pytest.skip(f"no network namespaces here: {postgres_host.reason}")
    database = urlsplit(postgres_url).path.lstrip("/")
    url = postgres_cluster.url(database, host=postgres_host.server_address)
    completed = postgres_host.run(
        [sys.executable, "-c", _CLIENT, url, postgres_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    addresses, loopback = completed.stdout.strip().splitlines()
    # The server saw the namespace's address, on its side of the veth.
    assert addresses.split() == [postgres_host.client_address, postgres_host.server_address]
    # The namespace's own 127.0.0.1 has no server: it really is another machine.
    assert loopback == "loopback refused"
    # The host still reaches the server on 127.0.0.1 too.
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_namespace_is_removed_even_when_the_test_fails() -> None:
    support = netns.netns_support()
    if not support.available:
        pytest.skip(f"no network namespaces here: {support.reason}")
    with pytest.raises(RuntimeError, match="test failed"), netns.NetworkNamespace() as namespace:
        sleeper = namespace.popen(["sleep", "60"])
        raise RuntimeError("test failed")
    assert sleeper.wait(timeout=10) != 0  # killed, not left running in a dead namespace
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert namespace.name not in names
    assert f"{namespace.host_interface}@" not in links


def test_without_namespaces_the_host_is_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    unavailable = netns.NetnsSupport(False, "not allowed here")
    monkeypatch.setattr(netns, "netns_support", lambda: unavailable)
    with netns.remote_host() as host:
        assert not host.isolated
        assert host.reason == "not allowed here"
        assert host.server_address == "127.0.0.1"
        assert host.command(["pipeline", "drain-db"]) == ["pipeline", "drain-db"]


def test_several_hosts_share_one_server(
    postgres_cluster: PostgresCluster,
    postgres_url: str,
    make_postgres_host: Callable[[], PostgresHost],
) -> None:
    first, second = make_postgres_host(), make_postgres_host()
    if not first.isolated:
        pytest.skip(f"no network namespaces here: {first.reason}")
    assert first.server_address != second.server_address
    assert {first.server_address, second.server_address} <= set(postgres_cluster.addresses)
    database = urlsplit(postgres_url).path.lstrip("/")
    for host in (first, second):
        url = postgres_cluster.url(database, host=host.server_address)
        completed = host.run(
            [sys.executable, "-c", _CLIENT, url, postgres_url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.split()[0] == host.client_address
