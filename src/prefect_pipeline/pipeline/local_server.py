"""A local Prefect server that outlives commands: ``pipeline server start|stop|status``.

Without ``PREFECT_API_URL`` each command would start a temporary Prefect server (seconds of
start-up, no UI, gone when the command ends, so its "View at" link is dead). A server
started once with ``pipeline server start`` is Prefect's own ``prefect server start`` (with
its UI), run in the background on ``$PREFECT_HOME``'s database; later commands find it
through a small state file and use it as if ``PREFECT_API_URL`` named it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from prefect_pipeline.exceptions import RunError
from prefect_pipeline.logs import get_logger

logger = get_logger("local_server")

DEFAULT_PORT = 4200
STARTUP_TIMEOUT = 120.0


def prefect_home() -> Path:
    """Prefect's home folder, read without importing Prefect (its own default)."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def _state_file() -> Path:
    return prefect_home() / "prefect_pipeline-server.json"


@dataclass(frozen=True)
class LocalServer:
    """A running local server: its process and addresses."""

    pid: int
    port: int
    #: The process's start time (epoch seconds), so that a reused pid is not taken for it.
    started_at: float

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        """Whether the recorded process still runs (and is the same process)."""
        import psutil

        try:
            return abs(psutil.Process(self.pid).create_time() - self.started_at) < 1.0
        except psutil.Error:
            return False

    def healthy(self, timeout: float = 2.0) -> bool:
        import httpx

        try:
            # Plain HTTP on the loopback: verify=False only spares loading a CA bundle for
            # TLS that is never used (60 ms of CPU, in the run's start-up).
            response = httpx.get(f"{self.api_url}/health", timeout=timeout, verify=False)
            return response.status_code == 200
        except httpx.HTTPError:
            return False


def find() -> LocalServer | None:
    """The local server started by ``pipeline server start``, if it still runs."""
    try:
        recorded = LocalServer(**json.loads(_state_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return recorded if recorded.alive() else None


def start(port: int = DEFAULT_PORT, timeout: float = STARTUP_TIMEOUT) -> tuple[LocalServer, bool]:
    """Start the local server, or find the one running; returns it and whether it was
    started now. Raises ``RunError`` if it does not answer within ``timeout``."""
    import psutil

    running = find()
    if running is not None:
        return running, False
    _check_port_free(port)
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    log = home / "prefect_pipeline-server.log"
    env = {
        **os.environ,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The UI asks its API at the address these name (by default port 4200, whatever
        # port the server was started on).
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
    }
    env.pop("PREFECT_API_URL", None)
    with log.open("ab") as output:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("prefect")),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            # Not a child of this command's session: it outlives the command, and a Ctrl-C
            # in the terminal that started it does not stop it.
            start_new_session=True,
        )
    server = LocalServer(process.pid, port, psutil.Process(process.pid).create_time())
    deadline = time.monotonic() + timeout
    while not server.healthy():
        if process.poll() is not None:
            raise RunError(
                f"the Prefect server exited with code {process.returncode}; see {log}"
            )
        if time.monotonic() > deadline:
            process.terminate()
            raise RunError(f"the Prefect server did not answer within {timeout:.0f} s; see {log}")
        time.sleep(0.2)
    _state_file().write_text(json.dumps(asdict(server)))
    return server, True


def _check_port_free(port: int) -> None:
    """Refuse, in a second rather than after the server's seconds of start-up (its reason
    then only in its log), a port that something else already listens on."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the server binds (uvicorn): a port a stopped server left in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise RunError(
                f"port {port} on 127.0.0.1 is not free ({exc.strerror}): another server "
                "listens there; choose another with --port"
            ) from None


def stop(timeout: float = 20.0) -> LocalServer | None:
    """Stop the local server; returns the one stopped (None if none was running)."""
    import psutil

    server = find()
    _state_file().unlink(missing_ok=True)
    if server is None:
        return None
    try:
        process = psutil.Process(server.pid)
        # The server leads a process group of its own (uvicorn and its workers with it).
        os.killpg(server.pid, signal.SIGTERM)
        process.wait(timeout)
    except psutil.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
    except (psutil.NoSuchProcess, ProcessLookupError):
        pass
    return server
