"""A fourth job, added by a user with one ``add_job()`` call, runs from the CLI
(``--definition MODULE:NAME``) with no new flow code."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.conftest import query

USER_MODULE = '''
from prefect_pipeline.jobs import BaseJob
from prefect_pipeline.pipeline import default_pipeline


class JobD(BaseJob):
    """Report how many records a finalized batch holds (reads, writes nothing)."""

    name = "D"
    description = "Count a batch's records"

    def validate_input(self, input_data):
        return int(input_data)

    def single_job(self, batch_id):
        row = self.db.connection().execute(
            "SELECT count(*) FROM processed_records WHERE batch_id = ? AND status = 'finalized'",
            (batch_id,),
        ).fetchone()
        return {"batch_id": batch_id, "finalized_records": row[0]}


pipeline = default_pipeline().add_job("D", JobD)
not_a_pipeline = 42

# The same jobs under names of the user's own: nothing may depend on "A", "B" or "C".
from prefect_pipeline.jobs import JobA, JobB, JobC
from prefect_pipeline.pipeline import PipelineDefinition

renamed = (
    PipelineDefinition().add_job("read", JobA).add_job("store", JobB).add_job("seal", JobC)
)
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    folder = tmp_path / "usercode"
    folder.mkdir()
    (folder / "my_pipeline.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(folder))
    return "my_pipeline"


def _base(config) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        "--log-level",
        "OFF",
        "--db-path",
        str(config.db_path),
        "--output-dir",
        str(config.output_dir),
    ]


def test_list_jobs_shows_the_added_job(cli_runner, config, user_module):  # type: ignore[no-untyped-def]
    result = cli_runner(*_base(config), "--definition", f"{user_module}:pipeline", "list-jobs")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "  4. D  Count a batch's records"


def test_run_and_run_parallel_go_through_the_fourth_job(  # type: ignore[no-untyped-def]
    cli_runner, config, user_module, sample_file
):
    definition = ["--definition", f"{user_module}:pipeline"]
    single = cli_runner(*_base(config), *definition, "run", sample_file, "--json")
    assert single.exit_code == 0, single.output
    outcome = json.loads(single.stdout)
    assert [job["job"] for job in outcome["jobs"]] == ["A", "B", "C", "D"]
    assert outcome["jobs"][-1]["success"] is True

    parallel = cli_runner(
        *_base(config),
        *definition,
        "run-parallel",
        sample_file.parent,
        "--workers",
        "0",
        "--json",
        "--force",
    )
    assert parallel.exit_code == 0, parallel.output
    assert json.loads(parallel.stdout)["succeeded"] == 1
    [row] = query(config.db_path, "SELECT status, last_job FROM pipeline_inputs")
    assert (row["status"], row["last_job"]) == ("done", "D")


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("no_such_module:pipeline", "cannot import no_such_module"),
        ("my_pipeline:missing", "my_pipeline has no missing"),
        ("my_pipeline:not_a_pipeline", "expected a PipelineDefinition, got int"),
        ("my_pipeline", "expected MODULE:NAME"),
    ],
)
def test_bad_definition_is_a_usage_error(  # type: ignore[no-untyped-def]
    cli_runner, config, user_module, reference, message
):
    result = cli_runner(*_base(config), "--definition", reference, "list-jobs")
    assert result.exit_code == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("raise RuntimeError('boom')\n", "importing {name} failed: RuntimeError: boom"),
        ("def pipeline(:\n",
         "importing {name} failed: SyntaxError: invalid syntax ({name}.py, line 1)"),
        ("def pipeline():\n    raise ValueError('no jobs today')\n",
         "calling pipeline failed: ValueError: no jobs today"),
    ],
    ids=["raises", "syntax", "factory-raises"],
)
@pytest.mark.parametrize("command", ["list-jobs", "run"])
def test_a_definition_whose_own_code_fails_is_one_usage_error(  # type: ignore[no-untyped-def]
    cli_runner, config, sample_file, tmp_path, monkeypatch, source, message, command
):
    name = f"broken_{tmp_path.name}"  # a module of its own: one that imports stays imported
    folder = tmp_path / "usercode"
    folder.mkdir()
    (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    args = [command] if command == "list-jobs" else [command, sample_file]

    result = cli_runner(*_base(config), "--definition", f"{name}:pipeline", *args)

    assert result.exit_code == 2, result.output
    line = f"Error: --definition '{name}:pipeline': {message.format(name=name)}\n"
    assert line in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


COUNTING_MODULE = """
from prefect_pipeline.jobs import BaseJob
from prefect_pipeline.jobs.base import Kind
from prefect_pipeline.pipeline.definition import PipelineDefinition


class CountLines(BaseJob):
    name = "count"
    takes = Kind.FILE

    def validate_input(self, input_data):
        return input_data["path"] if isinstance(input_data, dict) else input_data

    def single_job(self, path):
        with open(path, "rb") as handle:
            return sum(1 for _ in handle)


pipeline = PipelineDefinition().add_job("count", CountLines)
"""


def test_a_definition_that_writes_no_files_is_not_refused_an_unusable_output_folder(  # type: ignore[no-untyped-def]
    cli_runner, config, sample_file, tmp_path, monkeypatch
):
    """The output folder is checked before the start only for a job that writes there
    (``writes_output``, job A's): a pipeline of your own that takes files and writes none
    runs whatever --output-dir says."""
    name = f"counting_{tmp_path.name}"
    folder = tmp_path / "usercode"
    folder.mkdir()
    (folder / f"{name}.py").write_text(COUNTING_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    (tmp_path / "afile").write_text("a file, not a folder\n")

    result = cli_runner("--log-level", "OFF", "--db-path", config.db_path, "--output-dir",
                        tmp_path / "afile" / "out", "--definition", f"{name}:pipeline", "run",
                        sample_file, "--json")  # fmt: skip

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["output"] == 4  # the sample's lines


def test_a_definition_with_jobs_of_other_names_runs_everywhere(  # type: ignore[no-untyped-def]
    cli_runner, config, user_module, sample_file, tmp_path
):
    """Runs over many inputs decide from what jobs take, never from their names: a
    definition whose writing job is not called "B" works from the CLI and the API."""
    definition = ["--definition", f"{user_module}:renamed"]
    single = cli_runner(*_base(config), *definition, "run", sample_file, "--stop-after", "store")
    assert single.exit_code == 0, single.output
    assert single.stdout.startswith("read: 3 record(s) -> ")

    parallel = cli_runner(
        *_base(config), *definition, "run-parallel", sample_file.parent, "--workers", "0",
        "--json", "--force",
    )
    assert parallel.exit_code == 0, parallel.output
    assert json.loads(parallel.stdout)["records"] == 3

    from_documents = cli_runner(
        *_base(config), *definition, "run-parallel", config.output_dir, "--start-from",
        "store", "--workers", "0", "--json", "--force",
    )
    assert from_documents.exit_code == 0, from_documents.output
    assert json.loads(from_documents.stdout)["succeeded"] >= 1

    batches = cli_runner(
        *_base(config), *definition, "run-parallel", sample_file.parent, "--start-from", "seal"
    )
    assert batches.exit_code == 2
    assert "job seal takes batch ids, not files" in batches.stderr

    second = tmp_path / "second.txt"
    second.write_text("x\ny\n")
    assert cli_runner(*_base(config), "enqueue", second).exit_code == 0
    drained = cli_runner(*_base(config), *definition, "drain-db", "--workers", "0", "--json")
    assert drained.exit_code == 0, drained.output
    rows = query(config.db_path, "SELECT status, start_job, stop_job FROM pipeline_inputs"
                 " WHERE path = ?", (str(second),))
    assert [tuple(r) for r in rows] == [("done", "read", "seal")]

    from prefect_pipeline.pipeline import PipelineRunner

    module = __import__(user_module)
    with PipelineRunner(config=config, definition=module.renamed) as runner:
        result = runner.run(sample_file, force=True)
        assert result.success, result.error
        assert result.jobs_run == ["read", "store", "seal"]
        summary = runner.run_parallel(sample_file.parent, workers=0, force=True)
        assert (summary.succeeded, summary.failed) == (1, 0)
