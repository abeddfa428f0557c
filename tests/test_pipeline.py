"""The orchestration layer: job ranges, Prefect tasks made from jobs, the ``run_pipeline``
flow and the ``PipelineRunner`` API, all against the session's Prefect server."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import pytest
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType, TaskRun

from prefect_pipeline import PipelineConfig, PipelineDefinition, PipelineRunner
from prefect_pipeline.exceptions import UsageError
from prefect_pipeline.jobs import BaseJob, JobA, JobB, JobC
from prefect_pipeline.pipeline import default_pipeline
from prefect_pipeline.pipeline.flows import PipelineResult, run_pipeline
from prefect_pipeline.pipeline.wrappers import make_job_task
from prefect_pipeline.validators import validate_batch_id
from tests.conftest import db_counts, files_under

# A user's own jobs ----------------------------------------------------------------------


class JobD(BaseJob):
    """A fourth job, as a user would add it: counts the stored records of a batch."""

    name = "D"
    description = "Count the records of a batch"
    uses_database = False

    def validate_input(self, input_data: Any) -> int:
        return validate_batch_id(input_data)

    def single_job(self, validated: int) -> int:
        with closing(sqlite3.connect(self.config.db_path)) as connection:
            query = "SELECT COUNT(*) FROM processed_records WHERE batch_id = ?"
            return connection.execute(query, (validated,)).fetchone()[0]


class Buggy(BaseJob):
    name = "X"

    def validate_input(self, input_data: Any) -> Any:
        return input_data

    def single_job(self, validated: Any) -> Any:
        raise RuntimeError("a bug in a job")


class FlakyStart(BaseJob):
    """Its construction (in the task, outside ``execute``) fails the first time: the task
    itself raises. Prefect does not retry it: the one retry mechanism is the ledger's, per
    input (``drain-db --max-attempts``)."""

    name = "F"
    constructed: ClassVar[int] = 0

    def __init__(self, config: PipelineConfig, *, force: bool = False) -> None:
        type(self).constructed += 1
        if type(self).constructed == 1:
            raise ConnectionError("transient failure")
        super().__init__(config, force=force)

    def validate_input(self, input_data: Any) -> Any:
        return input_data

    def single_job(self, validated: Any) -> Any:
        return f"done {validated}"


# Reading the Prefect server -------------------------------------------------------------


def flow_runs_named(name: str) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )


def task_runs_of(flow_run_id: UUID, expected: int, timeout: float = 30.0) -> list[TaskRun]:
    """The flow run's task runs, oldest first, once ``expected`` of them are in a final
    state (the server records task runs from events, a moment after they happen)."""
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        final = [r for r in runs if r.state is not None and r.state.is_final()]
        if len(final) >= expected or time.monotonic() > deadline:
            return sorted(runs, key=lambda r: r.expected_start_time or r.created)
        time.sleep(0.2)


def job_of(task_run: TaskRun) -> str:
    """``job-A`` of a task run named ``job A: sample.txt`` (the job, then what it held)."""
    return task_run.name.split(":", 1)[0].replace(" ", "-")


# PipelineDefinition ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start_from", "stop_after", "expected"),
    [
        (None, None, ["A", "B", "C"]),
        ("A", None, ["A", "B", "C"]),
        ("B", None, ["B", "C"]),
        (None, "B", ["A", "B"]),
        ("B", "B", ["B"]),
        ("C", "C", ["C"]),
        (None, "A", ["A"]),
    ],
)
def test_job_range(start_from: str | None, stop_after: str | None, expected: list[str]) -> None:
    jobs = default_pipeline().job_range(start_from, stop_after)

    assert [spec.name for spec in jobs] == expected
    assert [spec.job_class for spec in jobs] == [
        {"A": JobA, "B": JobB, "C": JobC}[name] for name in expected
    ]


def test_job_range_in_the_wrong_order() -> None:
    with pytest.raises(UsageError) as excinfo:
        default_pipeline().job_range("C", "A")
    assert str(excinfo.value) == (
        "--start-from C comes after --stop-after A; jobs run in the order A -> B -> C"
    )


@pytest.mark.parametrize(("start_from", "stop_after"), [("Z", None), (None, "Z"), ("a", None)])
def test_job_range_with_an_unknown_job(start_from: str | None, stop_after: str | None) -> None:
    name = start_from or stop_after
    with pytest.raises(UsageError) as excinfo:
        default_pipeline().job_range(start_from, stop_after)
    assert str(excinfo.value) == f"unknown job {name!r}; available jobs: A, B, C"


def test_empty_pipeline() -> None:
    with pytest.raises(UsageError, match=r"^the pipeline has no jobs$"):
        PipelineDefinition().job_range()


def test_add_job() -> None:
    definition = default_pipeline()

    assert definition.add_job("D", JobD) is definition
    assert definition.names == ["A", "B", "C", "D"]
    assert len(definition) == 4
    assert definition.get("D").description == "Count the records of a batch"
    assert definition.get("D").uses_database is False
    assert definition.get("B").uses_database is True
    assert [spec.name for spec in definition.job_range("C")] == ["C", "D"]
    assert PipelineDefinition().add_job("D", JobD, "mine").get("D").description == "mine"


@pytest.mark.parametrize(
    ("name", "job_class", "error"),
    [("A", JobD, ValueError), ("", JobD, ValueError), ("D", object, TypeError),
     ("D", JobD(PipelineConfig()), TypeError)],
)
def test_add_job_rejects(name: str, job_class: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        default_pipeline().add_job(name, job_class)


# make_job_task ---------------------------------------------------------------------------


def test_job_task_never_caches() -> None:
    job_task = make_job_task(default_pipeline().get("B"))

    assert job_task.cache_policy is NO_CACHE
    assert job_task.name == "job-B"
    assert job_task.retries == 0
    assert job_task.persist_result is False


def test_a_groups_results_are_one_value_to_prefects_result_tracking(
    config: PipelineConfig, tmp_path: Path
) -> None:
    """Prefect links each element of a task's result to the task's state, for results a
    later task is given; a group's results are one opaque value, not thousands of links."""
    from prefect import flow
    from prefect.context import FlowRunContext

    from prefect_pipeline.pipeline.wrappers import Group, WorkItem, run_task

    paths = []
    for i in range(20):
        path = tmp_path / f"in-{i}.txt"
        path.write_text(f"line {i}\n")
        paths.append(str(path))

    @flow(persist_result=False)
    def body() -> tuple[int, int]:
        job_task = make_job_task(default_pipeline().get("A"))
        results = run_task(job_task, Group([WorkItem(p) for p in paths]), config)
        context = FlowRunContext.get()
        assert context is not None
        return sum(r.success for r in results), len(context.run_results)

    assert body() == (20, 1)


# The flow ------------------------------------------------------------------------------


def test_flow_run_and_task_runs_are_recorded(config: PipelineConfig, sample_file: Path) -> None:
    jobs = default_pipeline().jobs

    state = run_pipeline(
        str(sample_file), jobs, config,
        job_names=["A", "B", "C"], input_label=str(sample_file), return_state=True,
    )

    assert state.is_completed()
    result = state.result()
    assert isinstance(result, PipelineResult)
    assert result.success
    assert result.jobs_run == ["A", "B", "C"]
    assert db_counts(config.db_path)["processed_records"] == 3

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    assert flow_run.state_type == StateType.COMPLETED
    assert flow_run.name == f"pipeline A-B-C: {sample_file}"
    task_runs = task_runs_of(flow_run_id, expected=3)
    assert [job_of(t) for t in task_runs] == ["job-A", "job-B", "job-C"]
    assert [t.state_type for t in task_runs] == [StateType.COMPLETED] * 3
    assert [t.state_name for t in task_runs] == ["Completed"] * 3


def test_fourth_job_through_run_pipeline(config: PipelineConfig, sample_file: Path) -> None:
    definition = default_pipeline().add_job("D", JobD)

    state = run_pipeline(sample_file, definition.jobs, config, return_state=True)

    assert state.is_completed()
    result = state.result()
    assert result.jobs_run == ["A", "B", "C", "D"]
    assert result.output == 3
    assert result.result_of("D").output == 3
    task_runs = task_runs_of(state.state_details.flow_run_id, expected=4)
    assert [job_of(t) for t in task_runs] == ["job-A", "job-B", "job-C", "job-D"]
    assert all(t.state_type == StateType.COMPLETED for t in task_runs)


def test_a_raising_task_fails_the_flow_without_prefect_retries(config: PipelineConfig) -> None:
    FlakyStart.constructed = 0
    jobs = PipelineDefinition().add_job("F", FlakyStart).jobs

    state = run_pipeline("item", jobs, config, return_state=True)

    assert state.is_failed()
    with pytest.raises(ConnectionError, match="transient failure"):
        state.result()
    assert FlakyStart.constructed == 1


# PipelineRunner ------------------------------------------------------------------------


@pytest.fixture
def runner(config: PipelineConfig) -> Iterator[PipelineRunner]:
    with PipelineRunner(config=config) as pipeline_runner:
        yield pipeline_runner


def test_runner_available_jobs(runner: PipelineRunner) -> None:
    assert runner.available_jobs == ["A", "B", "C"]


def test_runner_run_is_the_full_chain(
    runner: PipelineRunner, config: PipelineConfig, sample_file: Path
) -> None:
    result = runner.run(sample_file)

    assert result.success
    assert result.error is None
    assert result.jobs_run == ["A", "B", "C"]
    batch_id = result.output
    assert result.result_of("A").details["output_path"] == str(
        config.output_dir / "sample_processed.json"
    )
    assert result.result_of("B").output == batch_id
    assert db_counts(config.db_path)["processed_records"] == 3
    assert files_under(config.output_dir) == ["sample_processed.json"]
    [flow_run] = flow_runs_named(f"pipeline A-B-C: {sample_file}")
    assert flow_run.state_type == StateType.COMPLETED


def test_runner_partial_runs(
    runner: PipelineRunner, config: PipelineConfig, sample_file: Path
) -> None:
    until_a = runner.run_until("A", sample_file)
    assert until_a.jobs_run == ["A"]
    assert until_a.output["record_count"] == 3
    assert not config.db_path.exists()

    json_path = until_a.output["output_path"]
    from_b = runner.run_from("B", json_path)
    assert from_b.jobs_run == ["B", "C"]
    batch_id = from_b.output

    single_c = runner.run_single("C", str(batch_id))
    assert single_c.jobs_run == ["C"]
    assert single_c.output == batch_id
    assert single_c.results[0].note == f"batch {batch_id} was already finalized"

    full = runner.run_full(sample_file)
    assert full.jobs_run == ["A", "B", "C"]
    assert full.output == batch_id
    assert full.result_of("B").note == f"already stored as batch {batch_id}; nothing written"

    forced = runner.run_until("B", sample_file, force=True)
    assert forced.jobs_run == ["A", "B"]
    assert forced.result_of("B").note == "replaced the stored batch"
    assert db_counts(config.db_path) == {
        "pipeline_inputs": 0, "processing_batches": 1, "processed_records": 3,
    }


def test_runner_stops_at_the_first_failure(
    runner: PipelineRunner, config: PipelineConfig, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.txt"

    result = runner.run(missing)

    assert not result.success
    assert result.output is None
    assert result.jobs_run == ["A"]
    assert result.failed.error_kind == "input"
    assert result.error == f"{missing}: no such file"
    assert db_counts(config.db_path)["processing_batches"] == 0
    assert files_under(config.output_dir) == []


def test_runner_usage_error_before_any_run(
    runner: PipelineRunner, config: PipelineConfig, sample_file: Path
) -> None:
    with pytest.raises(UsageError, match="comes after"):
        runner.run(sample_file, start_from="C", stop_after="A")
    with pytest.raises(UsageError, match="unknown job 'D'"):
        runner.run_single("D", sample_file)

    assert files_under(config.output_dir) == []


def test_fourth_job_through_the_runner(config: PipelineConfig, sample_file: Path) -> None:
    definition = default_pipeline().add_job("D", JobD)

    with PipelineRunner(config=config, definition=definition) as runner:
        assert runner.available_jobs == ["A", "B", "C", "D"]
        result = runner.run(sample_file)
        only_d = runner.run_single("D", str(result.result_of("C").output))

    assert result.success
    assert result.jobs_run == ["A", "B", "C", "D"]
    assert result.output == 3
    assert only_d.jobs_run == ["D"]
    assert only_d.output == 3
    [flow_run] = flow_runs_named(f"pipeline A-B-C-D: {sample_file}")
    assert flow_run.state_type == StateType.COMPLETED
    assert len(task_runs_of(flow_run.id, expected=4)) == 4


def test_a_bug_in_a_job_comes_back_as_a_result(config: PipelineConfig, sample_file: Path) -> None:
    definition = PipelineDefinition().add_job("A", JobA).add_job("X", Buggy).add_job("C", JobC)

    with PipelineRunner(config=config, definition=definition) as runner:
        result = runner.run(sample_file)

    assert not result.success
    assert result.jobs_run == ["A", "X"]
    failed = result.failed
    assert failed.job_name == "X"
    assert failed.error_kind == "unexpected"
    assert failed.error.endswith(": RuntimeError: a bug in a job")
    assert isinstance(failed.traceback, str)
    assert failed.traceback.startswith("Traceback (most recent call last):")
    assert "RuntimeError: a bug in a job" in failed.traceback
    # A job's failure is data for the API, and red in Prefect: the flow run and the job's
    # task run end Failed, the one-line error as their message.
    [flow_run] = flow_runs_named(f"pipeline A-X-C: {sample_file}")
    assert flow_run.state_type == StateType.FAILED
    assert flow_run.state.message == f"job X: {failed.error}"
    task_runs = task_runs_of(flow_run.id, expected=2)
    assert [t.state_type for t in task_runs] == [StateType.COMPLETED, StateType.FAILED]
    assert task_runs[1].state.message == f"job X: {failed.error}"


def test_runner_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_DB_PATH", str(tmp_path / "env.db"))
    monkeypatch.setenv("PIPELINE_OUTPUT_DIR", str(tmp_path / "env-out"))

    from_env = PipelineRunner(log_level="off")
    explicit = PipelineRunner(output_dir=tmp_path / "out", db_path="rel.db", log_level="OFF")
    copied = PipelineRunner(config=explicit.config, log_level="DEBUG")

    assert from_env.config.db_path == tmp_path / "env.db"
    assert from_env.config.output_dir == tmp_path / "env-out"
    assert from_env.config.log_level == "OFF"
    assert explicit.config.output_dir == tmp_path / "out"
    assert explicit.config.db_path.is_absolute()
    assert explicit.config.db_path.name == "rel.db"
    assert copied.config.log_level == "DEBUG"
    assert copied.config.output_dir == explicit.config.output_dir
    with pytest.raises(ValueError, match="log_level"):
        PipelineRunner(log_level="LOUD")


def test_pipeline_result_without_results() -> None:
    empty = PipelineResult()

    assert empty.success is False
    assert empty.output is None
    assert empty.error is None
    assert empty.failed is None
    assert empty.jobs_run == []
