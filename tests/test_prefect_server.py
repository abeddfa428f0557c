"""The ``pipeline`` command as a user runs it: a separate process, reporting either to a
real ``prefect server start`` or to the temporary server it starts itself.

These start real processes (15-30 s each) and are marked slow.
"""

from __future__ import annotations

import os
import signal
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

from tests.conftest import SAMPLE_TEXT, db_counts

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


PREFECT = _command("prefect", ["-m", "prefect"])
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


def wait_for_health(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"prefect server exited with {server.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server did not answer within {SERVER_STARTUP_TIMEOUT} s:\n"
                f"{log.read_text()}")


def stop(server: subprocess.Popen[bytes]) -> None:
    """Stop the server and whatever it started (it leads its own process group)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


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


def test_run_all_reports_to_a_real_prefect_server(sample: Path, tmp_path: Path) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    server_env = clean_environment(tmp_path / "server-home")
    log = tmp_path / "server.log"
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
            env=server_env, cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_health(api, server, log)
        env = clean_environment(tmp_path / "client-home")
        env["PREFECT_API_URL"] = api
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
        assert [t["name"].rsplit("-", 1)[0] for t in task_runs] == ["job-A", "job-B", "job-C"]
        assert [t["state_type"] for t in task_runs] == ["COMPLETED"] * 3
        # The command used the configured server: it started none of its own.
        assert not (tmp_path / "client-home" / "prefect.db").exists()
    finally:
        stop(server)


def test_without_an_api_url_the_command_starts_its_own_server_and_prints_no_logs(
    sample: Path, tmp_path: Path
) -> None:
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
