"""A throw-away PostgreSQL server for tests and benchmarks.

``PostgresCluster`` runs ``initdb`` in a fresh temporary directory and starts ``postgres``
on 127.0.0.1 (plus any extra addresses asked for) on a free port, with its unix socket in
that directory, password (SCRAM) authentication over TCP for one superuser, and durability
switched off for speed. Leaving the ``with`` block stops the server and deletes everything.

    with PostgresCluster() as cluster:
        url = cluster.create_database("queue")   # postgresql://postgres:...@127.0.0.1:PORT/queue
        ...
        cluster.restart()                        # the data survives; connections do not

The module has no imports from the project or from pytest, so benchmarks can use it with
``sys.path.insert(0, "<repo>/tests")`` and ``import postgres_cluster``. psycopg is imported
only by the methods that talk to the server.

PostgreSQL refuses to run as root. As root, ``initdb`` and ``postgres`` run as the
``postgres`` account (which Debian's ``postgresql`` package creates) on a directory owned by
it; as anyone else, they run as the caller.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import quote

if TYPE_CHECKING:
    import psycopg

#: The Debian package with the server binaries (``initdb``, ``postgres``).
DEBIAN_PACKAGE = "postgresql"

#: The account the server runs as when the caller is root.
SERVER_ACCOUNT = "postgres"

#: Prefix of the temporary directories; also how stale ones from killed runs are recognized.
DIR_PREFIX = "pipeline-pg-"

#: Settings for a disposable test server. Nothing waits for the disk: a crash of the
#: *machine* may lose commits, a crash of the server (``stop("immediate")``, what tests
#: simulate) does not, since every commit is still written to the OS before it returns.
#: ``synchronous_commit`` stays on for that reason: with fsync off it saved nothing
#: (5,900-7,400 single-row commits/s either way, measured on 2 cores), while off it lost
#: 15 of 200 commits made just before an immediate stop. ``max_connections`` leaves room
#: for several drainers with a few connections each.
TEST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",  # torn pages need an OS crash too
    "synchronous_commit": "on",
    "max_connections": "200",
    # Logs go to the server's stderr, which is redirected to server.log in the directory.
    "logging_collector": "off",
    "log_min_messages": "warning",
}

ShutdownMode = Literal["smart", "fast", "immediate"]

#: How ``postgres`` is asked to shut down (see "Shutting Down the Server" in its docs).
_SHUTDOWN_SIGNALS: Mapping[str, signal.Signals] = {
    "smart": signal.SIGTERM,  # waits for every client to disconnect
    "fast": signal.SIGINT,  # rolls back open transactions, disconnects clients, checkpoints
    "immediate": signal.SIGQUIT,  # like a crash: no checkpoint, recovery at the next start
}


class PostgresNotInstalled(RuntimeError):
    """The PostgreSQL server binaries (or, as root, the account to run them) are missing."""


class PostgresStartError(RuntimeError):
    """``initdb`` or ``postgres`` failed; the message ends with the tail of its log."""


# Finding the server -------------------------------------------------------------------


def _has_server(bindir: Path) -> bool:
    return all((bindir / name).is_file() for name in ("initdb", "postgres"))


def _version_key(bindir: str) -> tuple[int, ...]:
    match = re.search(r"/(\d+(?:\.\d+)*)/bin$", bindir)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def find_bindir(
    *,
    pg_config: str | None = "pg_config",
    search: str = "/usr/lib/postgresql/*/bin",
) -> Path:
    """The folder holding ``initdb`` and ``postgres``.

    ``pg_config --bindir`` first (Debian's wrapper names the newest installed server; a
    ``pg_config`` from the client library alone names a folder without ``initdb``, hence the
    check), then Debian's layout ``/usr/lib/postgresql/VERSION/bin``, newest first, then
    ``initdb`` on PATH (other distributions). Raises ``PostgresNotInstalled`` naming the
    package to install.
    """
    executable = shutil.which(pg_config) if pg_config else None
    if executable:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            completed = subprocess.run(
                [executable, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            )
            bindir = Path(completed.stdout.strip())
            if completed.stdout.strip() and _has_server(bindir):
                return bindir
    for candidate in sorted(glob.glob(search), key=_version_key, reverse=True):
        if _has_server(Path(candidate)):
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb and _has_server(Path(initdb).parent):
        return Path(initdb).parent
    raise PostgresNotInstalled(
        "PostgreSQL server binaries (initdb, postgres) not found: `pg_config --bindir` names "
        f"no folder with them and there is no {search}. Install the Debian package "
        f"'{DEBIAN_PACKAGE}' (apt-get install -y {DEBIAN_PACKAGE}; scripts/setup.sh does it "
        "when run as root)."
    )


def _server_account() -> pwd.struct_passwd | None:
    """The account to run the server as: ``postgres`` when we are root, else None (us)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        raise PostgresNotInstalled(
            f"PostgreSQL refuses to run as root and there is no '{SERVER_ACCOUNT}' account to "
            f"run it as; the Debian package '{DEBIAN_PACKAGE}' creates one "
            f"(apt-get install -y {DEBIAN_PACKAGE})."
        ) from None


def check_installed() -> Path:
    """The server's bindir, after checking that it can be run here at all."""
    bindir = find_bindir()
    _server_account()
    return bindir


# Helpers ------------------------------------------------------------------------------


def _free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the server may still lose a race for it; the
    start retries with another one then)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _traversable_by(path: Path, account: pwd.struct_passwd) -> bool:
    """Whether ``account`` can reach ``path`` (the server's directory must be reachable by
    the account it runs as, and a TMPDIR under a private home directory is not)."""
    for parent in path.resolve().parents:
        info = parent.stat()
        if info.st_uid == account.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == account.pw_gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


def sweep_stale_directories(base: Path | None = None) -> list[Path]:
    """Delete the directories of clusters whose owning process died without cleaning up
    (killed with SIGKILL, say; its server then died too, see ``_launch``). Returns them."""
    removed = []
    for directory in Path(base or tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        try:
            owner = int((directory / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue
        server = _postmaster_pid(directory / "data")
        if server is not None and _pid_alive(server):
            continue
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# The cluster --------------------------------------------------------------------------


class PostgresCluster:
    """A disposable PostgreSQL server; a context manager (``start()`` / ``close()``).

    Attributes once started: ``host`` (127.0.0.1), ``port``, ``user``, ``password``,
    ``directory`` (the temporary directory: ``data/``, ``server.log``, the unix socket),
    ``bindir``, ``version`` and ``timings`` (seconds spent in initdb and in each start).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        user: str = "postgres",
        password: str | None = None,
        extra_addresses: Iterable[str] = (),
        settings: Mapping[str, str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.user = user
        # Random by default: the server listens on TCP, and other users of the machine
        # should not be able to guess their way in.
        self.password = password or secrets.token_urlsafe(18)
        self.settings = {**TEST_SETTINGS, **(settings or {})}
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.port = 0
        self.bindir: Path | None = None
        self.version = ""
        self.directory: Path | None = None
        self.timings: dict[str, list[float]] = {"initdb": [], "start": []}
        self._addresses = [self.host, *(a for a in extra_addresses if a != self.host)]
        self._account: pwd.struct_passwd | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()

    # Life cycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Create the cluster on the first call; start the server if it is not running."""
        with self._lock:
            if self.is_running():
                return
            if self.directory is None:
                self._create()
            self._launch()

    def stop(self, mode: ShutdownMode = "fast", timeout: float = 30.0) -> None:
        """Stop the server, keeping its data. ``mode="immediate"`` is a crash as far as the
        data is concerned (no checkpoint; the next start recovers from the WAL)."""
        with self._lock:
            process = self._process
            if process is None:
                return
            if process.poll() is None:
                process.send_signal(_SHUTDOWN_SIGNALS[mode])
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    # A smart shutdown waits for clients forever; don't.
                    process.kill()
                    process.wait()
            self._process = None

    def restart(self, mode: ShutdownMode = "fast") -> None:
        """Stop and start again on the same port; open connections are lost."""
        with self._lock:
            self.stop(mode)
            self._launch()

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def close(self) -> None:
        """Stop the server (fast) and delete the directory. Safe to call twice."""
        with self._lock:
            try:
                self.stop()
            finally:
                atexit.unregister(self.close)
                if self.directory is not None:
                    shutil.rmtree(self.directory, ignore_errors=True)
                    self.directory = None

    # Addresses and URLs

    @property
    def addresses(self) -> tuple[str, ...]:
        """The addresses the server listens on (127.0.0.1 first)."""
        return tuple(self._addresses)

    def add_listen_address(self, address: str) -> None:
        """Listen on ``address`` too (e.g. the host side of a veth pair). It is bound at
        start-up, so a running server is restarted: open connections are lost."""
        with self._lock:
            if address in self._addresses:
                return
            self._addresses.append(address)
            if self.is_running():
                self.restart()

    def remove_listen_address(self, address: str) -> None:
        """Stop listing ``address`` for the next start. No restart: a socket bound to an
        address that has since vanished is harmless, and restarting would cost a test its
        connections for nothing."""
        with self._lock:
            if address != self.host and address in self._addresses:
                self._addresses.remove(address)

    def url(self, dbname: str = "postgres", *, host: str | None = None) -> str:
        """``postgresql://USER:PASSWORD@HOST:PORT/DBNAME`` (``host`` defaults to 127.0.0.1;
        give a veth address to reach the server from a network namespace)."""
        host = host or self.host
        netloc_host = f"[{host}]" if ":" in host else host
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{netloc_host}:{self.port}/{quote(dbname, safe='')}"
        )

    @property
    def socket_dir(self) -> Path:
        if self.directory is None:
            raise RuntimeError("the cluster has not been started")
        return self.directory

    # Databases

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        """A psycopg connection as the superuser over TCP."""
        import psycopg

        return psycopg.connect(self.url(dbname), **kwargs)

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        from psycopg import sql

        with self.connect(autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, terminating its connections first (``WITH
        (FORCE)`` does both in one statement: a test's leftover connection must not keep a
        database alive)."""
        from psycopg import sql

        with self.connect(autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def databases(self) -> list[str]:
        """Names of the databases that accept connections (templates excluded)."""
        with self.connect() as connection:
            rows = connection.execute(
                "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname"
            ).fetchall()
        return [row[0] for row in rows]

    # Internals

    def _run_as_server(self, **kwargs: Any) -> dict[str, Any]:
        """Popen keyword arguments that run a command as the server's account, without the
        caller's libpq variables (PGPORT, PGDATA, ...)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        options: dict[str, Any] = {"env": env, "cwd": self.directory, "stdin": subprocess.DEVNULL}
        if self._account is not None:
            options.update(user=self._account.pw_uid, group=self._account.pw_gid, extra_groups=[])
        options.update(kwargs)
        return options

    def _chown(self, path: Path) -> None:
        if self._account is not None:
            os.chown(path, self._account.pw_uid, self._account.pw_gid)

    def _create(self) -> None:
        self.bindir = find_bindir()
        self._account = _server_account()
        base = self.base_dir or Path(tempfile.gettempdir())
        sweep_stale_directories(base)
        self.directory = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=base))
        atexit.register(self.close)
        (self.directory / "owner.pid").write_text(str(os.getpid()))
        self._chown(self.directory)
        if self._account is not None and not _traversable_by(self.directory, self._account):
            raise PostgresStartError(
                f"the '{self._account.pw_name}' account cannot reach {self.directory}; "
                "point TMPDIR (or base_dir) at a directory every user can traverse"
            )
        # initdb reads the password from a file (not a pipe: as another user it cannot
        # open the caller's /dev/fd entries), removed as soon as initdb is done.
        password_file = self.directory / "password"
        password_file.write_text(self.password + "\n")
        password_file.chmod(0o600)
        self._chown(password_file)
        data = self.directory / "data"
        log = self.directory / "initdb.log"
        began = time.monotonic()
        with log.open("wb") as output:
            completed = subprocess.run(
                [
                    str(self.bindir / "initdb"),
                    "--pgdata", str(data),
                    "--username", self.user,
                    f"--pwfile={password_file}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",  # throw-away data: don't wait for the disk
                    "--no-instructions",
                ],
                **self._run_as_server(stdout=output, stderr=subprocess.STDOUT),
                check=False,
            )  # fmt: skip
        password_file.unlink()
        self.timings["initdb"].append(time.monotonic() - began)
        if completed.returncode != 0:
            raise PostgresStartError(f"initdb failed ({completed.returncode}):\n{_tail(log)}")
        # Password authentication for every TCP client (loopback and veth addresses alike);
        # the unix socket lives in our private directory, so trust there is ours alone.
        (data / "pg_hba.conf").write_text(
            "# written by tests/postgres_cluster.py\n"
            "local all all trust\n"
            "host all all all scram-sha-256\n"
        )
        version = subprocess.run(
            [str(self.bindir / "postgres"), "--version"], capture_output=True, text=True
        )
        self.version = version.stdout.strip()

    def _server_argv(self) -> list[str]:
        assert self.bindir is not None and self.directory is not None
        settings = {
            **self.settings,
            "listen_addresses": ",".join(self._addresses),
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
        }
        argv = [str(self.bindir / "postgres"), "-D", str(self.directory / "data")]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        # If this process dies without stopping the server (SIGKILL, a timeout's os._exit),
        # the kernel sends the server SIGQUIT, so no orphan keeps its port and memory.
        # The signal follows the *thread* that started the server, so only the main
        # thread asks for it: a server restarted from a short-lived thread must live on.
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            argv = [setpriv, "--pdeathsig", "QUIT", "--", *argv]
        return argv

    def _launch(self) -> None:
        assert self.directory is not None
        fixed_port = self.port != 0
        for _attempt in range(5):
            if not fixed_port:
                self.port = _free_port()
            if self._launch_once():
                return
            if fixed_port:
                break
        raise PostgresStartError(
            f"postgres did not start on port {self.port}:\n{_tail(self.directory / 'server.log')}"
        )

    def _launch_once(self) -> bool:
        """Start the server and wait until it accepts connections on every address.
        False if the port was taken (the caller may try another), else raise on failure."""
        assert self.directory is not None
        data = self.directory / "data"
        log = self.directory / "server.log"
        began = time.monotonic()
        offset = log.stat().st_size if log.exists() else 0
        with log.open("ab") as output:
            process = subprocess.Popen(
                self._server_argv(),
                # Its own session: Ctrl-C at a terminal signals our process group, and the
                # server must outlive that long enough for the fixture to stop it in order.
                **self._run_as_server(
                    stdout=output, stderr=subprocess.STDOUT, start_new_session=True
                ),
            )
        deadline = began + 60
        while True:
            if process.poll() is not None:
                with log.open("rb") as output:
                    output.seek(offset)
                    text = output.read().decode(errors="replace")
                if "could not create any TCP/IP sockets" in text:
                    return False
                text = "\n".join(text.splitlines()[-25:])
                raise PostgresStartError(f"postgres exited ({process.returncode}):\n{text}")
            if self._ready(data, process.pid):
                break
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise PostgresStartError(f"postgres not ready after 60 s:\n{_tail(log)}")
            time.sleep(0.02)
        self._process = process
        # The server only warns when it cannot bind one of several addresses; a client in
        # a namespace would then see "connection refused". Check each address.
        for address in self._addresses:
            try:
                socket.create_connection((address, self.port), timeout=5).close()
            except OSError as error:
                self.stop("immediate")
                raise PostgresStartError(
                    f"postgres is not reachable on {address}:{self.port} ({error}):\n{_tail(log)}"
                ) from error
        self.timings["start"].append(time.monotonic() - began)
        return True

    @staticmethod
    def _ready(data: Path, pid: int) -> bool:
        """The server wrote "ready" in postmaster.pid (what ``pg_ctl -w`` waits for)."""
        try:
            lines = (data / "postmaster.pid").read_text().splitlines()
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.EACCES):
                return False
            raise
        return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"
