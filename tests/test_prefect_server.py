"""The ``pipeline`` command as a user runs it: a separate process, reporting either to the
local Prefect server ``pipeline server start`` keeps, or to the temporary server it starts
itself.

These start real processes (15-30 s each) and are marked slow.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SAMPLE_TEXT, db_counts, seeded_prefect_home

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SERVER_STARTUP_TIMEOUT = 120
COMMAND_TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(script: str, fallback: list[str]) -> list[str]:
    """The venv's console script next to this interpreter, or ``python -c`` if absent."""
    path = BIN / script
    return [str(path)] if path.exists() else [sys.executable, *fallback]


PIPELINE = _command("pipeline", ["-c", "from prefect_pipeline.cli import main; main()"])


def clean_environment(prefect_home: Path) -> dict[str, str]:
    """This process's environment without any Prefect API, log level or pipeline setting
    (earlier tests and the session's harness may have set some), with its own
    ``PREFECT_HOME``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PREFECT_", "PIPELINE_", "DASK_"))
    }
    env["PREFECT_HOME"] = str(prefect_home)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return env


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "sample.txt"
    path.write_text(SAMPLE_TEXT)
    return path


def run_pipeline_command(
    args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PIPELINE, *args], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=COMMAND_TIMEOUT, check=False,
    )


def expected_stdout(output_dir: Path, batch_id: int) -> str:
    return (
        f"A: 3 record(s) -> {output_dir / 'sample_processed.json'}\n"
        f"B: batch {batch_id}, 3 record(s) written\n"
        f"C: batch {batch_id} finalized\n"
    )


def post(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = httpx.post(url, json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def completed_task_runs(api: str, flow_run_id: str, expected: int) -> list[dict[str, Any]]:
    """The flow run's task runs once ``expected`` are final (the server records task runs
    from events, a moment after they happen)."""
    deadline = time.monotonic() + 30
    while True:
        runs = post(f"{api}/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
        final = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")]
        if len(final) >= expected or time.monotonic() > deadline:
            return sorted(runs, key=lambda r: r["expected_start_time"] or r["created"])
        time.sleep(0.5)


def test_a_local_server_kept_between_commands_is_found_and_used(
    sample: Path, tmp_path: Path
) -> None:
    """``pipeline server start`` runs Prefect's own server (with its UI) in the background;
    a later command without PREFECT_API_URL finds it, reports there, and starts no server
    of its own; ``stop`` ends it."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    # A home Prefect has used before (a first use is the test below).
    env = clean_environment(seeded_prefect_home(tmp_path / "home"))
    started = run_pipeline_command(["server", "start", "--port", str(port)], env, tmp_path)
    assert started.returncode == 0, started.stderr
    assert started.stdout == (
        f"Prefect server started at http://127.0.0.1:{port} (API {api})\n"
    )
    try:
        again = run_pipeline_command(["server", "start", "--port", str(port)], env, tmp_path)
        assert again.stdout.startswith("Prefect server already running at ")
        elsewhere = run_pipeline_command(["server", "start", "--port", "1"], env, tmp_path)
        assert (elsewhere.returncode, elsewhere.stdout) == (0, (
            f"Prefect server already running at http://127.0.0.1:{port} (API {api}); --port 1 "
            "not used (pipeline server stop, then start, moves it)\n"
        ))
        status = run_pipeline_command(["server", "status"], env, tmp_path)
        assert (status.returncode, status.stdout) == (
            0, f"Prefect server at http://127.0.0.1:{port} (API {api}), answering\n"
        )
        db_path, output_dir = tmp_path / "pipeline.db", tmp_path / "output"

        done = run_pipeline_command(
            ["--log-level", "OFF", "--db-path", str(db_path), "--output-dir", str(output_dir),
             "run-all", str(sample)],
            env, tmp_path,
        )

        assert done.returncode == 0, done.stderr
        assert done.stdout == expected_stdout(output_dir, 1)
        assert done.stderr == ""
        assert db_counts(db_path)["processed_records"] == 3
        [flow_run] = post(f"{api}/flow_runs/filter", {})
        assert flow_run["name"] == f"pipeline A-B-C: {sample}"
        assert flow_run["state_type"] == "COMPLETED"
        task_runs = completed_task_runs(api, flow_run["id"], expected=3)
        # Each task run is named after its job and what it held.
        assert [t["name"] for t in task_runs] == [
            f"job A: {sample.name}", f"job B: {sample.name}", "job C: 1",
        ]
        assert [t["state_type"] for t in task_runs] == ["COMPLETED"] * 3
        # The UI is served too, and asks its API at the port the server was started on.
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
        ui = httpx.get(f"http://127.0.0.1:{port}/ui-settings", timeout=10).json()
        assert ui["api_url"] == api
    finally:
        stopped = run_pipeline_command(["server", "stop"], env, tmp_path)
    assert stopped.stdout == f"stopped the Prefect server at http://127.0.0.1:{port}\n"
    gone = run_pipeline_command(["server", "status"], env, tmp_path)
    assert gone.returncode == 1
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/health", timeout=2)


def test_a_local_server_that_runs_and_does_not_answer_is_not_ok(tmp_path: Path) -> None:
    """Its process alive (here: a process that is no server at all, on a port nobody
    serves), its API silent: ``server status`` and ``server start`` say so and exit non-zero,
    so that a script does not take it for a server it can use."""
    import json
    import subprocess

    import psutil

    home = seeded_prefect_home(tmp_path / "home")
    env = clean_environment(home)
    process = subprocess.Popen(["sleep", "60"])
    try:
        port = _free_port()
        (home / "prefect_pipeline-server.json").write_text(json.dumps({
            "pid": process.pid, "port": port,
            "started_at": psutil.Process(process.pid).create_time(),
        }))  # fmt: skip
        status = run_pipeline_command(["server", "status"], env, tmp_path)
        start = run_pipeline_command(["server", "start", "--port", str(port)], env, tmp_path)
    finally:
        process.kill()
        process.wait()
    api = f"http://127.0.0.1:{port}/api"
    assert (status.returncode, status.stdout) == (1, (
        f"Prefect server at http://127.0.0.1:{port} (API {api}), not answering (pipeline "
        "server stop, then start)\n"
    ))  # fmt: skip
    assert start.returncode == 3
    assert start.stderr == (
        f"Error: the Prefect server at {api} runs but does not answer (pipeline server stop, "
        "then start, restarts it)\n"
    )


def test_a_local_server_on_a_port_that_is_taken_is_one_line_at_once(tmp_path: Path) -> None:
    import socket

    env = clean_environment(seeded_prefect_home(tmp_path / "home"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = run_pipeline_command(["server", "start", "--port", str(port)], env, tmp_path)
    assert start.returncode == 3
    assert start.stderr == (
        f"Error: port {port} on 127.0.0.1 is not free (Address already in use): another "
        "server listens there; choose another with --port\n"
    )
    assert not (tmp_path / "home" / "prefect_pipeline-server.json").exists()


def test_without_an_api_url_the_command_starts_its_own_server_and_prints_no_logs(
    sample: Path, tmp_path: Path
) -> None:
    """A user's first command: a fresh PREFECT_HOME, whose database the command's temporary
    server creates."""
    home = tmp_path / "prefect-home"
    env = clean_environment(home)
    db_path, output_dir = tmp_path / "pipeline.db", tmp_path / "output"

    done = run_pipeline_command(
        ["--log-level", "OFF", "--db-path", str(db_path), "--output-dir", str(output_dir),
         "run-all", str(sample)],
        env, tmp_path,
    )

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout == expected_stdout(output_dir, 1)
    assert db_counts(db_path)["processed_records"] == 3
    # The temporary server kept the run in the usual Prefect database of PREFECT_HOME.
    with closing(sqlite3.connect(home / "prefect.db")) as prefect_db:
        flow_runs = prefect_db.execute("SELECT name, state_type FROM flow_run").fetchall()
    assert flow_runs == [(f"pipeline A-B-C: {sample}", "COMPLETED")]
