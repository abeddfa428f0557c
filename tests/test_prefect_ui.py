"""What Prefect and Dask users see and steer, against the session's real Prefect server and
real clusters: names, states and artifacts of a run with failures, Cancel from the API, a
dead or silent PREFECT_API_URL, and the Dask dashboard."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterName
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelling

from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.jobs import JobA, JobB, JobC
from prefect_pipeline.pipeline.definition import PipelineDefinition, default_pipeline
from prefect_pipeline.pipeline.flows import run_pipeline, single_run_parameters
from prefect_pipeline.pipeline.observe import artifact_key
from tests.conftest import CliInvoke, api_env, query

PIPELINE = Path(sys.executable).with_name("pipeline")


def base(config: PipelineConfig) -> list[str]:
    return ["--log-level", "OFF", "--db-path", str(config.db_path), "--output-dir",
            str(config.output_dir)]


def task_runs(flow_run_id: str, expected: int, timeout: float = 30) -> list[Any]:
    """The flow run's task runs once ``expected`` of them are final (the server records
    them from events, a moment after they happen)."""
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)]))
            )
        final = [r for r in runs if r.state is not None and r.state.is_final()]
        if len(final) >= expected or time.monotonic() > deadline:
            return sorted(runs, key=lambda r: r.expected_start_time or r.created)
        time.sleep(0.2)


def test_a_parallel_run_with_failures_reads_well_in_prefect(
    cli_runner: CliInvoke, config: PipelineConfig, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (folder / name).write_text(f"{name} line\n")
    (folder / "bad.bin").write_bytes(b"x\x00y")

    result = cli_runner(*base(config), "run-parallel", folder, "--workers", "0", "--json")

    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    flow_run_id = summary["flow_run_id"]
    assert summary["flow_run_url"].endswith(f"/runs/flow-run/{flow_run_id}")
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(uuid.UUID(flow_run_id))
        summary_artifact = client.read_latest_artifacts()
    # Named after the command and the folder; parameters a person can read.
    assert flow_run.name == f"run-parallel {folder}"
    assert flow_run.state_type == StateType.FAILED
    assert flow_run.state.message == "1 of 4 input(s) failed"
    assert flow_run.parameters["database"] == str(config.db_path)
    assert flow_run.parameters["options"]["jobs"] == ["A", "B", "C"]
    assert flow_run.parameters["run_id"] == summary["run_id"]
    # One group of four: its job A task run says what it held, and that one input failed.
    runs = task_runs(flow_run_id, expected=3)
    job_a = runs[0]
    assert job_a.name == "job A: a.txt … c.txt (4)"
    assert job_a.state_type == StateType.FAILED
    assert job_a.state.message.startswith("1 of 4 input(s) failed in job A; first: ")
    assert [r.name.split(":")[0] for r in runs[1:]] == ["job B", "job C"]
    assert [r.state_type for r in runs[1:]] == [StateType.COMPLETED] * 2
    # Artifacts keyed by the database: the summary and the failures, latest first.
    keys = {a.key for a in summary_artifact if a.key}
    database = str(config.db_path)
    assert {artifact_key("summary", database), artifact_key("failures", database),
            artifact_key("progress", database)} <= keys
    assert progress_of(database, flow_run_id) == 100.0
    # The ledger rows know their flow run.
    rows = query(config.db_path, "SELECT DISTINCT flow_run_id, flow_run_url FROM pipeline_inputs")
    assert [tuple(r) for r in rows] == [(flow_run_id, summary["flow_run_url"])]


def flow_runs_named(name: str) -> list[Any]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )


def test_a_single_input_runs_parameters_are_json_without_secrets_or_content(
    config: PipelineConfig, sample_file: Path
) -> None:
    jobs = default_pipeline().jobs

    state = run_pipeline(str(sample_file), jobs, config, return_state=True)

    assert state.is_completed()
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
    parameters = flow_run.parameters
    assert flow_run.name == f"pipeline A-B-C: {sample_file}"
    assert parameters == {
        "jobs": ["A", "B", "C"],
        "input": str(sample_file),
        "database": str(config.db_path),
        "options": {"force": False, "output_dir": str(config.output_dir),
                    "max_line_bytes": config.max_line_bytes},
        "run_key": parameters["run_key"],
    }
    assert json.loads(json.dumps(parameters)) == parameters
    assert "<" not in json.dumps(parameters)  # no "<PipelineConfig>"-like placeholder

    # A document handed to job B is named by its source path, not uploaded.
    document = dict(state.result().result_of("A").output)
    later = run_pipeline(document, default_pipeline().job_range("B", "B"), config,
                         force=True, return_state=True)
    assert later.is_completed()
    with get_client(sync_client=True) as client:
        shown = client.read_flow_run(later.state_details.flow_run_id).parameters
    assert shown["input"] == document["source_path"]
    assert shown["jobs"] == ["B"]
    assert shown["options"]["force"] is True
    assert "second line" not in json.dumps(shown)  # a record's content


def test_single_run_parameters_show_a_database_url_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = PipelineConfig(output_dir=tmp_path / "out",
                            db_url="postgresql://u:secret@host/db", log_level="OFF")

    parameters = single_run_parameters(
        {"source_path": "/in/a.txt", "records": [{"content": "private text"}]},
        default_pipeline().job_range("B", None), config, run_key="k",
    )

    assert parameters["database"] == "postgresql://u:***@host/db"
    assert parameters["input"] == "/in/a.txt"
    assert parameters["jobs"] == ["B", "C"]
    text = json.dumps(parameters)
    assert "secret" not in text
    assert "private text" not in text
    # A file as an absolute path, wherever the run was started; a batch id as it is.
    monkeypatch.chdir(tmp_path)
    Path("rel.txt").write_text("x\n")
    pipeline = default_pipeline()
    assert single_run_parameters("rel.txt", pipeline.jobs, config)["input"] == str(
        tmp_path / "rel.txt")
    assert single_run_parameters("7", pipeline.job_range("C", None), config)["input"] == "7"


def test_run_all_on_a_binary_file_fails_in_prefect_with_the_one_line_error(
    config: PipelineConfig, tmp_path: Path
) -> None:
    """Its NUL byte past the first 64 KiB, which the run looks at before it starts: found
    by job A in the flow run."""
    binary = tmp_path / "bad.bin"
    binary.write_bytes(b"text\n" * 14_000 + b"\x00more\n")
    missing = tmp_path / "missing.txt"
    args = [str(PIPELINE), "--db-path", str(config.db_path), "--output-dir",
            str(config.output_dir)]

    done = subprocess.run([*args, "run-all", str(binary)], env=api_env(), text=True,
                          capture_output=True, timeout=120)
    rejected = subprocess.run([*args, "run-all", str(missing)], env=api_env(), text=True,
                              capture_output=True, timeout=120)

    error = f"job A: {binary}: binary file (NUL byte at offset 70000)"
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"Error: {error}\n")
    # Nothing left behind: no JSON, and no empty database (job B would have made it).
    assert not config.output_dir.exists() and not config.db_path.parent.exists()
    [flow_run] = flow_runs_named(f"pipeline A-B-C: {binary}")
    assert flow_run.state_type == StateType.FAILED
    assert flow_run.state.message == error
    [job_a] = task_runs(str(flow_run.id), expected=1)
    assert (job_a.state_type, job_a.state.message) == (StateType.FAILED, error)
    # An input its first job rejects fails before anything starts: no flow run.
    assert (rejected.returncode, rejected.stderr) == (1, f"Error: job A: {missing}: no such file\n")
    assert flow_runs_named(f"pipeline A-B-C: {missing}") == []


def progress_of(database: str, flow_run_id: str) -> float | None:
    """The value of the progress artifact of ``database`` made by the flow run, as the
    server has it now."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[artifact_key("progress", database)]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(flow_run_id)]),
            )
        )
    return float(found[0].data) if found else None


class StepClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_progress_artifact_follows_the_run_at_most_every_poll_and_ends_full(
    tmp_path: Path,
) -> None:
    from prefect import flow

    from prefect_pipeline.pipeline.observe import POLL_SECONDS, PrefectObserver

    database = str(tmp_path / "progress.db")
    clock = StepClock()
    seen: dict[str, Any] = {}

    def shown() -> float | None:
        return progress_of(database, seen["flow_run_id"])

    @flow(persist_result=False)
    def watched(stopped: bool) -> None:
        observer = PrefectObserver(database, None, clock=clock)
        seen["flow_run_id"] = observer.flow_run_id
        seen["created"] = shown()
        observer.progress(1, 4)  # the first figures are shown at once
        seen["first"] = shown()
        observer.progress(2, 4)  # within POLL_SECONDS of the last update: not sent
        seen["throttled"] = shown()
        clock.now += POLL_SECONDS
        observer.progress(3, 8)
        seen["later"] = shown()
        observer.progress(5, 8)
        observer.finish(stopped=stopped, found=10)
        seen["end"] = shown()

    watched(False)
    assert [seen[k] for k in ("created", "first", "throttled", "later", "end")] == [
        0.0, 25.0, 25.0, 37.5, 100.0]
    # Cancelled: the bar ends at the share done of all found (10: a group was taken after
    # the last figures, and given back), not full.
    watched(True)
    assert seen["end"] == 50.0


def make_inputs(folder: Path, files: int, lines: int) -> None:
    folder.mkdir(parents=True)
    text = "".join(f"line {n} with some words to store\n" for n in range(lines))
    for number in range(files):
        (folder / f"f{number:03d}.txt").write_text(text)


def wait_for(predicate: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_cancel_in_prefect_stops_the_run_between_groups(
    config: PipelineConfig, tmp_path: Path
) -> None:
    # Groups grow from 8 files to the 8 MB cap (57 of these files): 300 files make groups
    # enough that the run cannot end before the Cancel is acted on, however fast the machine.
    make_inputs(tmp_path / "in", files=300, lines=4000)
    args = [str(PIPELINE), *base(config), "run-parallel", str(tmp_path / "in"),
            "--workers", "0", "--json"]
    process = subprocess.Popen(args, env=api_env(), text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        def running_flow() -> str | None:
            if not config.db_path.exists():
                return None
            try:
                rows = query(config.db_path, "SELECT flow_run_id FROM pipeline_inputs WHERE"
                             " status = 'done' AND flow_run_id IS NOT NULL LIMIT 1")
            except Exception:
                return None
            return rows[0][0] if rows else None

        flow_run_id = wait_for(running_flow)
        # The progress bar moves while the run goes on.
        during = wait_for(lambda: progress_of(str(config.db_path), flow_run_id), timeout=30)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(uuid.UUID(flow_run_id), Cancelling(), force=True)
        cancelled = time.monotonic()
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    took = time.monotonic() - cancelled
    assert process.returncode == 130, stderr
    summary = json.loads(stdout)
    assert summary["stopped"] == "cancelled"
    assert took < 60, took  # a guard against ignoring the Cancel, not a speed figure
    statuses = {r[0]: r[1] for r in query(
        config.db_path, "SELECT status, count(*) FROM pipeline_inputs GROUP BY status")}
    assert statuses.get("processing", 0) == 0
    assert 1 <= statuses["done"] < 300
    assert summary["succeeded"] == statuses["done"]
    with get_client(sync_client=True) as client:
        state = wait_for(
            lambda: (s := client.read_flow_run(uuid.UUID(flow_run_id)).state)
            and s.is_final() and s, timeout=30)
    assert state.type == StateType.CANCELLED
    # Done of found so far: it moved during the run, and a cancelled run's bar is not full.
    assert 0 < during < 100
    assert 0 < progress_of(str(config.db_path), flow_run_id) < 100


class CancelledWhileEnding(JobA):
    """Job A, and then the user presses Cancel: the flow run is set Cancelling as its last
    group ends, maybe after the driver last looked."""

    def single_job(self, validated: Any) -> Any:
        from prefect.runtime import flow_run

        outcome = super().single_job(validated)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(uuid.UUID(flow_run.get_id()), Cancelling(), force=True)
        return outcome


LATE_CANCEL = (
    PipelineDefinition()
    .add_job("A", CancelledWhileEnding)
    .add_job("B", JobB)
    .add_job("C", JobC)
)


def test_a_cancel_after_the_last_group_still_ends_the_run_cancelled(
    cli_runner: CliInvoke, config: PipelineConfig, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    make_inputs(folder, files=1, lines=2)

    result = cli_runner(
        *base(config), "--definition", f"{__name__}:LATE_CANCEL", "run-parallel", folder,
        "--workers", "0", "--json",
    )

    # Not "UnfinishedRun: Run is in CANCELLING state" (exit 3) and a run Cancelling for good.
    assert result.exit_code == 130, result.output
    summary = json.loads(result.stdout)
    assert (summary["stopped"], summary["succeeded"]) == ("cancelled", 1)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(uuid.UUID(summary["flow_run_id"])).state
    assert (state.type, state.message) == (StateType.CANCELLED, "cancelled after 1 input(s)")
    rows = query(config.db_path, "SELECT status FROM pipeline_inputs")
    assert [r[0] for r in rows] == ["done"]  # finished work stays done


class _SlowChunks:
    """A file handle whose every read takes 0.5 s."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def read(self, size: int = -1) -> bytes:
        time.sleep(0.5)
        return bytes(self._handle.read(size))


class SlowLargeA(JobA):
    """Job A reading a large file one slow chunk at a time (an 8 MiB file: 16 s)."""

    def _streamed(self, path: Path, handle: Any, source_path: str, output_path: Path) -> Any:
        return super()._streamed(path, _SlowChunks(handle), source_path, output_path)


SLOW_LARGE = (
    PipelineDefinition().add_job("A", SlowLargeA).add_job("B", JobB).add_job("C", JobC)
)


def test_a_cancel_stops_a_large_file_on_the_local_lane_and_its_task_run_ends_cancelled(
    cli_runner: CliInvoke, config: PipelineConfig, tmp_path: Path
) -> None:
    """Until its workers join, a run's job A runs on a thread of the command (the local
    lane), which a Cancel reaches through the run's stop: job A looks between a large file's
    chunks, so the run stops in the middle of the file instead of writing it whole first,
    and its task run ends Cancelled, as the flow run does (not Crashed, as Prefect shows
    what a job raises past it)."""
    folder = tmp_path / "in"
    folder.mkdir()
    line = "a line of a large file, read in chunks\n"
    (folder / "large.txt").write_text(line * (8 * 1024 * 1024 // len(line)))
    cancelled_at: list[float] = []

    def cancel_once_writing() -> None:
        # Job A has begun the file (its scratch file exists) and the flow run is stamped.
        def flow_run_id() -> str | None:
            if not any(config.output_dir.rglob("*.tmp")):
                return None
            rows = query(config.db_path, "SELECT flow_run_id FROM pipeline_inputs"
                         " WHERE flow_run_id IS NOT NULL")
            return rows[0][0] if rows else None

        found = wait_for(flow_run_id, timeout=60)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(uuid.UUID(found), Cancelling(), force=True)
        cancelled_at.append(time.monotonic())

    canceller = threading.Thread(target=cancel_once_writing, daemon=True)
    canceller.start()
    # --workers 1 with workers that would start only after 10 minutes: job A on the lane.
    result = cli_runner(
        *base(config), "--definition", f"{__name__}:SLOW_LARGE", "run-parallel", folder,
        "--workers", "1", "--workers-after", "600", "--json",
    )
    ended = time.monotonic()
    canceller.join(timeout=5)

    assert result.exit_code == 130, result.output
    summary = json.loads(result.stdout)
    assert (summary["stopped"], summary["workers_started"]) == ("cancelled", 0)
    # Stopped between chunks: the file alone takes 16 s, the Cancel is read every second.
    assert cancelled_at and ended - cancelled_at[0] < 12, ended - cancelled_at[0]
    assert not (config.output_dir / "large_processed.json").exists()
    assert list(config.output_dir.rglob("*.tmp")) == []
    assert [r[0] for r in query(config.db_path, "SELECT status FROM pipeline_inputs")] == [
        "pending"
    ]
    (job_a,) = task_runs(summary["flow_run_id"], expected=1)
    assert job_a.state is not None
    assert (job_a.state.type, job_a.state.message) == (
        StateType.CANCELLED,
        "job A stopped with its run before the group's 1 input(s) were done",
    )


@pytest.fixture
def silent_api(silent_address: tuple[str, int]) -> str:
    return f"http://{silent_address[0]}:{silent_address[1]}/api"


def dead_api() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/api"


@pytest.mark.parametrize("kind", ["dead", "silent"])
def test_an_unanswering_prefect_api_is_one_line_and_exit_3(
    config: PipelineConfig, tmp_path: Path, silent_api: str, kind: str
) -> None:
    url = dead_api() if kind == "dead" else silent_api
    sample = tmp_path / "a.txt"
    sample.write_text("a\n")
    started = time.monotonic()
    done = subprocess.run(
        [str(PIPELINE), *base(config), "run-all", str(sample)],
        env={**api_env(), "PREFECT_API_URL": url}, text=True, capture_output=True, timeout=120,
    )
    took = time.monotonic() - started
    assert done.returncode == 3
    [line] = done.stderr.splitlines()
    assert line.startswith(f"Error: PREFECT_API_URL={url}: the Prefect API ")
    assert took < 30, took  # bounded (5 s for a silent one), not minutes of retries


def profile_env(tmp_path: Path, url: str, *, active: str = "team") -> dict[str, str]:
    """This process's environment with no PREFECT_API_URL, and a PREFECT_HOME whose Prefect
    profiles file makes ``active`` the profile in use, naming ``url`` as its API (what
    ``prefect profile create team`` and ``prefect config set PREFECT_API_URL=...`` write)."""
    home = tmp_path / "prefect-home"
    home.mkdir(exist_ok=True)
    (home / "profiles.toml").write_text(
        f'active = "{active}"\n\n'
        f'[profiles.{active}]\nPREFECT_API_URL = "{url}"\n\n'
        '[profiles.other]\nPREFECT_API_URL = "http://127.0.0.1:9/other/api"\n'
    )
    env = {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"}
    return {**env, "PREFECT_HOME": str(home)}


@pytest.mark.parametrize(
    ("command", "kind"),
    [("run-parallel", "dead"), ("run-parallel", "silent"), ("drain-db", "dead"),
     ("drain-db", "silent"), ("drain-db", "profile")],
)
def test_a_parallel_run_checks_the_prefect_api_before_it_starts_and_gives_its_claims_back(
    cli_runner: CliInvoke, config: PipelineConfig, tmp_path: Path, silent_api: str,
    command: str, kind: str,
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (folder / name).write_text(f"{name}\n")
    url = silent_api if kind == "silent" else dead_api()
    env = {**api_env(), "PREFECT_API_URL": url}
    named = f"PREFECT_API_URL={url}"
    if kind == "profile":  # set with `prefect config set`, not in the environment
        env = profile_env(tmp_path, url)
        named += " (set in the Prefect profile 'team')"
    args = ["--db-path", str(config.db_path), "--output-dir", str(config.output_dir)]
    if command == "drain-db":
        assert cli_runner(*args, "enqueue", folder).exit_code == 0
        where: list[str] = []
    else:
        where = [str(folder)]

    started = time.monotonic()
    done = subprocess.run(
        [str(PIPELINE), *args, command, *where, "--workers", "1"],
        env=env, text=True, capture_output=True, timeout=120,
    )
    took = time.monotonic() - started

    # At the default log level: the error line alone (no start-up line, no give-back).
    assert done.returncode == 3, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"Error: {named}: the Prefect API "), line
    # run-parallel registered them: the line says where they are now.
    assert line.endswith("; the 3 input(s) this run took are pending in the database"), line
    assert took < 20, took  # a hang guard; the figures are measured elsewhere
    # The first group was claimed (it proved there is work), then given back untouched.
    rows = query(config.db_path, "SELECT status, attempts FROM pipeline_inputs")
    assert [tuple(r) for r in rows] == [("pending", 0)] * 3
    assert not config.output_dir.exists()


def test_a_run_with_nothing_to_do_does_not_need_the_prefect_api(
    cli_runner: CliInvoke, config: PipelineConfig, tmp_path: Path
) -> None:
    args = ["--db-path", str(config.db_path), "--output-dir", str(config.output_dir)]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_runner(*args, "enqueue", empty).exit_code == 0  # creates the database

    drained = cli_runner(*args, "drain-db", "--json", env={"PREFECT_API_URL": dead_api()})

    assert drained.exit_code == 0, drained.output
    assert json.loads(drained.stdout)["total"] == 0


def test_the_profiles_prefect_api_url_is_read_as_prefect_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_pipeline.pipeline.server import configured_api

    env = profile_env(tmp_path, "http://127.0.0.1:8/team/api")
    # Prefect's settings, built anew after PREFECT_PROFILE changes.
    ask = (
        "import os; from prefect.settings import Settings; print(Settings().api.url); "
        "os.environ['PREFECT_PROFILE'] = 'other'; print(Settings().api.url)"
    )
    asked = subprocess.run([sys.executable, "-c", ask], env=env, text=True,
                           capture_output=True, timeout=120)
    prefect_says = asked.stdout.split()

    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setenv("PREFECT_HOME", env["PREFECT_HOME"])
    ours = [configured_api()]
    monkeypatch.setenv("PREFECT_PROFILE", "other")
    ours.append(configured_api())
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:7/env/api")
    ours.append(configured_api())  # the environment wins, as in Prefect

    assert prefect_says == ["http://127.0.0.1:8/team/api", "http://127.0.0.1:9/other/api"]
    assert ours == [
        ("http://127.0.0.1:8/team/api", "Prefect profile 'team'"),
        ("http://127.0.0.1:9/other/api", "Prefect profile 'other'"),
        ("http://127.0.0.1:7/env/api", ""),
    ]


def test_the_local_clusters_dashboard_works_on_the_loopback() -> None:
    from distributed import Client

    from prefect_pipeline.pipeline.cluster import DaskCluster

    with DaskCluster(workers=1) as cluster, Client(cluster.address):
        assert cluster.dashboard_url is not None
        assert cluster.dashboard_url.startswith("http://127.0.0.1:")
        page = httpx.get(cluster.dashboard_url, follow_redirects=True, timeout=30)
        assert page.status_code == 200
        assert "Dask needs bokeh" not in page.text
        assert "<title>Dask: Status</title>" in page.text or "status" in page.url.path
        # Dask tasks are named after their job and what they hold.
        from prefect import flow

        from prefect_pipeline.pipeline.definition import default_pipeline
        from prefect_pipeline.pipeline.wrappers import Group, WorkItem, make_job_task

        seen: list[str] = []

        @flow(task_runner=cluster.task_runner(), persist_result=False)
        def one_group() -> None:
            future: Any = make_job_task(default_pipeline().get("C")).submit(
                Group([WorkItem("12345")]), PipelineConfig(log_level="OFF"), False
            )
            seen.append(str(future.wrapped_future.key))
            future.wait()

        import logging

        from prefect_pipeline.logs import shown_on_terminal

        records: list[logging.LogRecord] = []
        catcher = logging.Handler()
        catcher.emit = records.append  # type: ignore[method-assign]
        runner_logger = logging.getLogger("prefect.task_runner")
        level = runner_logger.level
        runner_logger.addHandler(catcher)
        runner_logger.setLevel(logging.INFO)
        try:
            one_group()
        finally:
            runner_logger.removeHandler(catcher)
            runner_logger.setLevel(level)
        assert seen[0].startswith("job-C: 12345-")
        # Prefect's task runner says at INFO that it connects to the cluster, and (outside a
        # Dask client) where its dashboard is: the pipeline said so when it started the
        # cluster, so on the terminal they show only at DEBUG.
        infos = [r for r in records if r.levelno == logging.INFO]
        assert any("Connecting to an existing Dask cluster" in r.getMessage() for r in infos)
        assert not any(shown_on_terminal(r, "INFO") for r in infos)
        assert all(shown_on_terminal(r, "DEBUG") for r in infos)


def test_a_local_clusters_dashboard_is_printed_once_and_kept_with_the_run(
    config: PipelineConfig, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    make_inputs(folder, files=3, lines=2)
    args = ["--db-path", str(config.db_path), "--output-dir", str(config.output_dir)]

    done = subprocess.run(
        [str(PIPELINE), *args, "run-parallel", str(folder), "--workers", "1", "--json",
         "--workers-after", "0"],  # the cluster (and its dashboard) start with the run
        env=api_env(), text=True, capture_output=True, timeout=240,
    )

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    url = summary["dashboard_url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/status")
    # Once, at INFO, on stderr.
    [line] = [line for line in done.stderr.splitlines() if url in line]
    assert " INFO " in f" {line} " and "dashboard" in line
    # In the summary artifact of the run.
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[artifact_key("summary", str(config.db_path))]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(summary["flow_run_id"])]),
            )
        )
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert {"figure": "dask_dashboard", "value": url} in rows
