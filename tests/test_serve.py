"""``pipeline serve``: the drain as a Prefect deployment, its runs triggered through the
session's real Prefect server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType

from prefect_pipeline.config import PipelineConfig
from tests.conftest import CliInvoke, api_env, query, queued_output_refused, sqlite_store

pytestmark = pytest.mark.slow

PIPELINE = Path(sys.executable).with_name("pipeline")


def test_a_served_drain_runs_when_triggered_and_fails_with_its_inputs(
    cli_runner: CliInvoke, config: PipelineConfig, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text("a1\na2\n")
    (inputs / "b.txt").write_text("b\n")
    (inputs / "bad.bin").write_bytes(b"\x00")
    base = ["--log-level", "OFF", "--db-path", str(config.db_path), "--output-dir",
            str(config.output_dir)]
    assert cli_runner(*base, "enqueue", inputs).exit_code == 0
    name = f"test-{uuid.uuid4().hex[:8]}"
    env = {**api_env(), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    server = subprocess.Popen(
        [str(PIPELINE), *base, "serve", "--name", name, "--interval", "3600",
         "--workers", "0", "--workers-after", "2.5"],
        env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while True:
                assert server.poll() is None, server.communicate()
                try:
                    deployment = client.read_deployment_by_name(f"drain-db/{name}")
                    break
                except Exception:
                    assert time.monotonic() < deadline, "the deployment never appeared"
                    time.sleep(0.5)
            assert deployment.parameters["workers"] == 0
            assert deployment.parameters["workers_after"] == 2.5
            assert "database" not in deployment.parameters  # no URL, no password in Prefect
            flow_run = client.create_flow_run_from_deployment(deployment.id)
            while True:
                state = client.read_flow_run(flow_run.id).state
                if state is not None and state.is_final():
                    break
                assert server.poll() is None, server.communicate()
                assert time.monotonic() < deadline, f"the run never ended: {state}"
                time.sleep(0.5)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.communicate()
    assert state.type == StateType.FAILED
    assert state.message == "1 failed, 0 left pending, of 3 input(s)"
    statuses = {r[0]: r[1] for r in query(
        config.db_path, "SELECT status, count(*) FROM pipeline_inputs GROUP BY status")}
    assert statuses == {"done": 2, "failed": 1}


def test_a_served_drain_that_cannot_start_fails_with_its_one_line_reason(
    cli_runner: CliInvoke, config: PipelineConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduled run whose queued inputs' output folder has become a file ends Failed
    with the line drain-db prints, not a traceback; its inputs stay pending for the run
    after the folder is fixed. (The flow as the served process runs it, here in-process.)"""
    from prefect_pipeline.pipeline.deployment import drain_queue

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "a.txt").write_text("a\n")
    assert cli_runner(
        "--log-level", "OFF", "--db-path", config.db_path, "--output-dir", out, "enqueue", inputs
    ).exit_code == 0
    out.write_text("a file in the way\n")
    monkeypatch.setenv("PIPELINE_DB_PATH", str(config.db_path))
    monkeypatch.delenv("PIPELINE_DATABASE_URL", raising=False)

    state = drain_queue(workers=0, return_state=True)

    assert state.type == StateType.FAILED
    assert state.message == queued_output_refused(
        out / inputs.relative_to(inputs.anchor), f"cannot be created: {out} is not a directory", 1
    )
    assert [tuple(r) for r in query(config.db_path, "SELECT status FROM pipeline_inputs")] == [
        ("pending",)
    ]


def test_serve_needs_a_server_that_outlives_it(
    cli_runner: CliInvoke, config: PipelineConfig, tmp_path: Path
) -> None:
    sqlite_store(config.db_path)  # serve drains an existing queue
    result = cli_runner(
        "--db-path", config.db_path, "serve", "--interval", "60",
        env={"PREFECT_API_URL": "", "PREFECT_HOME": str(tmp_path / "home")},
    )
    assert result.exit_code == 3
    assert result.stderr == (
        "Error: pipeline serve needs a Prefect server that outlives it: set PREFECT_API_URL, "
        "or run `pipeline server start`\n"
    )


def test_serve_checks_the_prefect_api_its_profile_names(
    cli_runner: CliInvoke, config: PipelineConfig, tmp_path: Path
) -> None:
    """An API set with `prefect config set PREFECT_API_URL=...` is the one served to, and
    checked first: dead, it is one line naming it and where it is set, exit 3."""
    sqlite_store(config.db_path)
    home = tmp_path / "home"
    home.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/api"
    (home / "profiles.toml").write_text(
        f'active = "team"\n[profiles.team]\nPREFECT_API_URL = "{url}"\n'
    )

    result = cli_runner(
        "--db-path", config.db_path, "serve", "--interval", "60",
        env={"PREFECT_API_URL": "", "PREFECT_HOME": str(home)},
    )

    assert result.exit_code == 3
    assert result.stderr.startswith(
        f"Error: PREFECT_API_URL={url} (set in the Prefect profile 'team'): the Prefect API "
        "is not reachable"
    )
    assert result.stderr.count("\n") == 1
