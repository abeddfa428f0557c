"""One Prefect API for the whole run.

With ``PREFECT_API_URL`` set (``prefect server start``, Prefect Cloud, or a test harness),
that server is used. Without it, Prefect would start a temporary server lazily in every
process that talks to it: each Dask worker process would start its own (10-14 s each, all
on one SQLite file). Instead the command starts one temporary server and exports its URL
before any worker starts, so every process of the run reports to it.

Two pipeline commands on one machine must not run two temporary servers on the same
Prefect database file: the first command takes an exclusive lock on
``$PREFECT_HOME/prefect_pipeline-server.lock`` and uses the usual database; a second one
that finds the lock taken gets a private database for its own lifetime (its runs are not
kept). Set ``PREFECT_API_URL`` to a running server to keep the history of concurrent runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import prefect_pipeline.pipeline.local_server as local_server
from prefect_pipeline.compat import (
    SERVER_APP_FACTORY,
    TEMPORARY_SERVER_ENV,
    flush_prefect,
    seed_prefect_database,
)
from prefect_pipeline.exceptions import RunError
from prefect_pipeline.logs import get_logger

logger = get_logger("server")

STARTUP_TIMEOUT = 90


def configured_api_url() -> str | None:
    """The API URL configured in Prefect's settings (environment, profile or settings
    context), if any."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def _profile_api_url() -> str | None:
    """The API URL of the active Prefect profile (``prefect config set PREFECT_API_URL``)."""
    try:
        from prefect.settings import PREFECT_API_URL, load_current_profile

        value = load_current_profile().settings.get(PREFECT_API_URL)
    except Exception:  # an unreadable profile: Prefect itself will say so
        return None
    return str(value) if value else None


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing or unreadable: Prefect then ignores it too
        return {}


def profile_api_url() -> tuple[str, str] | None:
    """``(url, profile name)`` when the active Prefect profile sets ``PREFECT_API_URL``
    (``prefect config set PREFECT_API_URL=...``), read without importing Prefect (seconds).

    As Prefect's settings read it: the profiles file is ``PREFECT_PROFILES_PATH``, else
    ``$PREFECT_HOME/profiles.toml``; the active profile is ``PREFECT_PROFILE``, else the
    file's ``active``. (Prefect's ``.env``, ``prefect.toml`` and ``pyproject.toml`` sources
    are read later, with Prefect: ``PrefectApi.wait``.)
    """
    if os.environ.get("PREFECT_TEST_MODE", "").lower() in ("1", "true"):
        return None  # Prefect then reads only the profiles it ships, which name no API
    path = os.environ.get("PREFECT_PROFILES_PATH")
    profiles = _read_toml(
        Path(path).expanduser() if path else local_server.prefect_home() / "profiles.toml"
    )
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active")
    settings = profiles.get("profiles", {}).get(active) if isinstance(active, str) else None
    url = settings.get("PREFECT_API_URL") if isinstance(settings, dict) else None
    return (str(url), str(active)) if url else None


def configured_api() -> tuple[str, str] | None:
    """``(url, where it is set)`` of the Prefect API the user configured: the environment's
    ``PREFECT_API_URL`` (where: ""), else the active Prefect profile's. Read without
    importing Prefect."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url, ""
    found = profile_api_url()
    if found is not None:
        return found[0], f"Prefect profile {found[1]!r}"
    return None


#: How long a configured Prefect API has to answer its health check: a dead address fails
#: at once; a server that answers nothing is given up within 10 s of the command's start
#: (its own start-up takes 1-2 s); a busy but working one (many runs reporting to it on a
#: loaded machine) was seen to take over 5 s.
API_CHECK_TIMEOUT = 7.0


def check_api(url: str, timeout: float = API_CHECK_TIMEOUT, *, where: str = "") -> None:
    """Raise ``RunError`` naming ``PREFECT_API_URL`` (and ``where`` it is set, e.g. a
    profile) unless the API answers within ``timeout``: a dead address fails at once, a
    server that accepts and never answers within the timeout, instead of Prefect's own
    retries (minutes) deep inside a run."""
    import httpx

    name = f"PREFECT_API_URL={url}" + (f" (set in the {where})" if where else "")
    try:
        response = httpx.get(
            f"{url.rstrip('/')}/health",
            timeout=httpx.Timeout(timeout, connect=min(timeout, 3)),
            # TLS verified for an https API; a plain http one has no TLS, and its client no
            # CA bundle to load (60 ms of CPU). Redirects are not followed.
            verify=url.lower().startswith("https:"),
        )
    except httpx.TimeoutException:
        raise RunError(f"{name}: the Prefect API did not answer within {timeout:.0f} s") from None
    except httpx.HTTPError as exc:
        raise RunError(
            f"{name}: the Prefect API is not reachable ({exc}); start it "
            "(prefect server start, or pipeline server start) or unset the variable"
        ) from None
    if response.status_code >= 500:
        raise RunError(f"{name}: the Prefect API answered {response.status_code}")


def check_configured_api(timeout: float = API_CHECK_TIMEOUT) -> str | None:
    """Check the Prefect API the user configured (``configured_api``), if any, and return
    its URL; ``RunError``, one line naming ``PREFECT_API_URL``, when it does not answer.
    Imports no Prefect: a run calls it once it knows it has work, before it starts anything.
    """
    found = configured_api()
    if found is None:
        return None
    check_api(found[0], timeout, where=found[1])
    return found[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrefectApi:
    """Context manager for the run's Prefect API; ``wait()`` returns its URL.

    Entering it is cheap and does not import Prefect: with no ``PREFECT_API_URL`` in the
    environment it starts the temporary server's process at once, so that the server (the
    slowest part of start-up) starts while this process imports Prefect and starts the
    Dask cluster. ``wait()`` then reads Prefect's settings: if they name a server after all
    (a profile, or a settings context such as a test harness), the temporary one is stopped
    and that one is used.
    """

    def __init__(self, *, announced: bool = False) -> None:
        #: The caller has said already that a temporary server starts (a run's start-up
        #: line): its address, dead once the command ends, is then logged at DEBUG only.
        self.announced = announced
        self.url: str | None = None
        self.temporary = False
        self._stack = ExitStack()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._server: _TemporaryServer | None = None
        self._local: local_server.LocalServer | None = None

    def __enter__(self) -> PrefectApi:
        configured = configured_api()
        if configured is not None:
            url, where = configured
            check_api(url, where=where)
            self.url = url
            if where:  # a profile's: named in the environment too, as the run describes it
                self._export("PREFECT_API_URL", url)
            return self
        local = local_server.find()
        if local is not None and local.healthy():
            # ``pipeline server start``: used as if PREFECT_API_URL named it (children too).
            self.url = local.api_url
            self._local = local
            self._export("PREFECT_API_URL", local.api_url)
            self._export("PREFECT_UI_URL", local.ui_url)
            return self
        self.temporary = True
        self._isolate_database_if_shared()
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        # Dask worker processes inherit the environment (the task context carries it too).
        self._export("PREFECT_API_URL", self.url)
        self._server = _TemporaryServer(port)
        self._server.spawn(announce=not self.announced)
        self._thread = threading.Thread(target=self._wait_healthy, daemon=True)
        self._thread.start()
        return self

    def ui_url(self) -> str | None:
        """The Prefect UI of this API, when it has one that outlives the run (a temporary
        server has no UI and is gone when the command ends)."""
        if self.temporary:
            return None
        from prefect.settings import PREFECT_UI_URL

        return str(PREFECT_UI_URL.value() or "") or None

    def _export(self, name: str, value: str) -> None:
        """Set an environment variable for child processes until ``__exit__``."""
        previous = os.environ.get(name)
        os.environ[name] = value
        if previous is None:
            self._stack.callback(os.environ.pop, name, None)
        else:
            self._stack.callback(os.environ.__setitem__, name, previous)

    def _isolate_database_if_shared(self) -> None:
        # Prefect's own default; read without importing Prefect (see the class docstring).
        home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
        home.mkdir(parents=True, exist_ok=True)
        handle = open(home / "prefect_pipeline-server.lock", "w")  # noqa: SIM115 - held open
        self._stack.callback(handle.close)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        private = tempfile.mkdtemp(prefix="prefect-pipeline-api-")
        self._stack.callback(shutil.rmtree, private, True)
        database = Path(private) / "prefect.db"
        if (home / "prefect.db").is_file():
            # The shared database's schema, so that the server need not migrate a new
            # file first (a second command then starts as fast as the first).
            try:
                seed_prefect_database(home / "prefect.db", database)
            except Exception:
                logger.debug("could not copy the Prefect database's schema", exc_info=True)
                database.unlink(missing_ok=True)  # a new file, migrated by the server
        self._export("PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{database}")
        logger.warning(
            "another pipeline command is using the temporary Prefect server's database; "
            "this run reports to a private one that is removed at exit "
            "(set PREFECT_API_URL to a running server to keep both runs)"
        )

    def _wait_healthy(self) -> None:
        try:
            assert self._server is not None
            self._server.wait_healthy()
        except BaseException as exc:  # re-raised in the caller's thread by wait()
            self._error = exc

    def wait(self) -> str:
        """The API URL, once it answers; raise ``RunError`` if the server did not start."""
        if self.temporary:
            self._use_configured_server_if_any()
        elif self._local is not None:
            # Prefect may have been imported before the variables were exported (a caller of
            # PipelineRunner): its settings are told too, for the block.
            from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

            self._stack.enter_context(
                temporary_settings(
                    {PREFECT_API_URL: self._local.api_url, PREFECT_UI_URL: self._local.ui_url}
                )
            )
            self._local = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self._error is not None:
                raise RunError(f"the temporary Prefect server did not start: {self._error}")
        assert self.url is not None
        return self.url

    def _use_configured_server_if_any(self) -> None:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        current = configured_api_url()
        other = current if current and current != self.url else _profile_api_url()
        if other:
            logger.debug("Prefect's settings name %s; stopping the temporary server", other)
            try:
                check_api(other, where="Prefect settings")
            except RunError:
                self._stop_server()
                raise
            self._stop_server()
            self.temporary = False
            self.url = other
            os.environ["PREFECT_API_URL"] = other
            return
        self._stack.enter_context(temporary_settings({PREFECT_API_URL: self.url}))

    def _stop_server(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __exit__(self, *exc_info: object) -> None:
        started = time.perf_counter()
        try:
            if self._server is not None:
                _flush_api_logs()
                logger.debug("flushed to the Prefect API in %.2f s", time.perf_counter() - started)
            self._stop_server()
        finally:
            self._stack.close()
        logger.debug("left the Prefect API in %.2f s", time.perf_counter() - started)


class _TemporaryServer:
    """Prefect's API server in a subprocess, for the lifetime of one command.

    Prefect's own ``SubprocessASGIServer`` does the same, but importing it imports the
    whole server application (FastAPI routes, database models: ~2 s of CPU) into the
    command's process, where it competes with the Dask cluster starting meanwhile. This
    runs the same uvicorn command without that import.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._forwarder: threading.Thread | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def spawn(self, *, announce: bool = True) -> None:
        """Start the server's process (returns at once); ``announce``: say so at INFO."""
        import importlib.util

        spec = importlib.util.find_spec("prefect")
        assert spec is not None and spec.submodule_search_locations
        app_dir = Path(next(iter(spec.submodule_search_locations))).parent
        level = logging.INFO if announce else logging.DEBUG
        logger.log(level, "starting a temporary Prefect server on %s", self.api_url)
        env = {
            **os.environ,
            **TEMPORARY_SERVER_ENV,
            # Offline, telemetry only logs errors.
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        env.pop("PREFECT_API_URL", None)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect_pipeline.pipeline.server_child",
                "--app-dir",
                str(app_dir),
                "--factory",
                SERVER_APP_FACTORY,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            env=env,
            # Its end of this pipe tells it when this command is gone (server_child.py);
            # stdout stays clean for --json.
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            # Passed on to this command's stderr while the server serves (its errors are
            # the run's), not once it is told to stop: Prefect's services, cancelled in
            # the middle of a flush, print tracebacks about it that say nothing to a user.
            stderr=subprocess.PIPE,
            # A session of its own: Ctrl-C at a terminal and a supervisor's SIGTERM reach
            # the command's process group, and a server that died with it would leave the
            # command retrying a dead API while it records the interruption. The command
            # stops it; if the command dies, the pipe's EOF does.
            start_new_session=True,
        )
        self._forwarder = threading.Thread(
            target=self._forward, args=(self.process,), name="prefect-server-stderr", daemon=True
        )
        self._forwarder.start()

    def _forward(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        for line in process.stderr:  # read to the end, so the server never blocks on it
            if not self._stopping.is_set():
                with contextlib.suppress(OSError):
                    os.write(2, line)

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Block until the server answers its health check."""
        import httpx

        deadline = time.monotonic() + timeout
        with httpx.Client(verify=False) as client:  # plain HTTP on the loopback
            while time.monotonic() < deadline:
                process = self.process
                if process is None:
                    raise RunError("the temporary Prefect server was stopped")
                if process.poll() is not None:
                    raise RunError(
                        f"the temporary Prefect server exited with code {process.returncode}"
                    )
                try:
                    if client.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise RunError(f"the temporary Prefect server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        self._stopping.set()
        if process.stdin is not None:
            process.stdin.close()
        # uvicorn stops gracefully on a first SIGTERM, waiting for its connections to
        # close (after an interrupt, ones this process will never close: it waited 10 s),
        # and at once on a second one; its database is SQLite, safe whatever happens.
        for wait in (1.0, 2.0):
            process.terminate()
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            process.kill()
            process.wait()
        if self._forwarder is not None:
            self._forwarder.join(timeout=5)


def _flush_api_logs() -> None:
    # Send the events (task-run states) and log records still queued before the server goes
    # away: sent later, each would be retried against a dead address.
    try:
        flush_prefect()
    except Exception:  # pragma: no cover - best effort at shutdown
        logger.debug("could not flush to the Prefect API", exc_info=True)


@contextmanager
def prefect_api() -> Iterator[str]:
    """Shorthand: the API URL, with a temporary server running for the block if needed."""
    with PrefectApi() as api:
        yield api.wait()
