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

import fcntl
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

    def __init__(self) -> None:
        self.url: str | None = None
        self.temporary = False
        self._stack = ExitStack()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._server: _TemporaryServer | None = None

    def __enter__(self) -> PrefectApi:
        configured = os.environ.get("PREFECT_API_URL")
        if configured:
            self.url = configured
            return self
        self.temporary = True
        self._isolate_database_if_shared()
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        # Dask worker processes inherit the environment (the task context carries it too).
        self._export("PREFECT_API_URL", self.url)
        self._server = _TemporaryServer(port)
        self._server.spawn()
        self._thread = threading.Thread(target=self._wait_healthy, daemon=True)
        self._thread.start()
        return self

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
        self._export(
            "PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{private}/prefect.db"
        )
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
        try:
            if self._server is not None:
                _flush_api_logs()
            self._stop_server()
        finally:
            self._stack.close()


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

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def spawn(self) -> None:
        """Start the server's process (returns at once)."""
        import importlib.util

        spec = importlib.util.find_spec("prefect")
        assert spec is not None and spec.submodule_search_locations
        app_dir = Path(next(iter(spec.submodule_search_locations))).parent
        logger.info("starting a temporary Prefect server on %s", self.api_url)
        env = {
            **os.environ,
            # What Prefect sets for its own temporary server: no UI, ephemeral services.
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
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
                "prefect.server.api.server:create_app",
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
        )

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Block until the server answers its health check."""
        import httpx

        deadline = time.monotonic() + timeout
        with httpx.Client() as client:
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
        if process.stdin is not None:
            process.stdin.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _flush_api_logs() -> None:
    # Log records are shipped to the API in the background; send them before the server
    # goes away, or the log handler prints "Error logging to API" at exit.
    try:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)
    except Exception:  # pragma: no cover - best effort at shutdown
        logger.debug("could not flush logs to the Prefect API", exc_info=True)


@contextmanager
def prefect_api() -> Iterator[str]:
    """Shorthand: the API URL, with a temporary server running for the block if needed."""
    with PrefectApi() as api:
        yield api.wait()
