"""What a new user meets first: ``--help``, a mistyped ``--db-path``, and ``--definition``
naming a module of the current directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from prefect_pipeline.cli import cli
from prefect_pipeline.config import PipelineConfig
from tests.conftest import CliInvoke, db_counts, query

# --help -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "group", [[], *([name] for name, c in cli.commands.items() if hasattr(c, "commands"))]
)
def test_help_cuts_no_command_description(cli_runner: CliInvoke, group: list[str]) -> None:
    result = cli_runner(*group, "--help")

    assert result.exit_code == 0
    commands = result.stdout.split("Commands:\n", 1)[1].splitlines()
    assert commands
    for line in commands:
        assert not line.rstrip().endswith(("...", "…")), line


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["drain-db", "--log-level", "OFF"], "pipeline --log-level ... drain-db"),
        (["server", "status", "--db-path", "x"], "pipeline --db-path ... server status"),
    ],
)
def test_an_option_of_pipeline_after_the_command_says_where_it_goes(
    cli_runner: CliInvoke, args: list[str], hint: str
) -> None:
    result = cli_runner(*args)
    assert result.exit_code == 2
    option = args[-2]
    assert result.stderr.splitlines()[-1] == (
        f"Error: No such option: {option} ({option} is an option of pipeline itself: put it "
        f"before the command, as in {hint})"
    )
    # An option nobody has is Click's usual line.
    other = cli_runner("drain-db", "--bogus")
    assert other.stderr.splitlines()[-1] == "Error: No such option '--bogus'."


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ("run", "run [OPTIONS] INPUT_DATA"),
        ("run-all", "run-all [OPTIONS] INPUT_FILE"),
        ("run-parallel", "run-parallel [OPTIONS] DIRECTORY"),
        ("enqueue", "enqueue [OPTIONS] PATH..."),
        ("requeue", "requeue [OPTIONS] [ID]..."),
    ],
)
def test_arguments_are_named_as_in_the_readme(
    cli_runner: CliInvoke, command: str, usage: str
) -> None:
    result = cli_runner(command, "--help")

    assert result.stdout.startswith(f"Usage: pipeline {usage}\n")
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"`{usage.replace('[OPTIONS] ', '')}" in readme


@pytest.mark.parametrize("command", ["run", "run-parallel", "serve"])
def test_job_options_list_the_job_names(cli_runner: CliInvoke, command: str) -> None:
    result = cli_runner(command, "--help")

    # Click wraps the help text, also after hyphens ("list-" / "jobs").
    text = " ".join(result.stdout.split()).replace("list- jobs", "list-jobs")
    assert "--start-from JOB Job to start from: A, B or C (with --definition, see list-jobs)" in (
        text
    )
    assert "--stop-after JOB Job to stop after: A, B or C (with --definition, see list-jobs)" in (
        text
    )


def test_definition_help_says_the_current_directory_is_searched(cli_runner: CliInvoke) -> None:
    text = " ".join(cli_runner("--help").stdout.split())

    assert "in a module of the current directory or an installed one" in text


# Database paths -----------------------------------------------------------------------


#: The commands that only use a database that exists (the first word is the command).
READ_ONLY = [
    ["status"],
    ["status", "--json"],
    ["drain-db", "--workers", "0"],
    ["requeue", "--failed"],
    ["run", "1", "--start-from", "C"],
    ["serve", "--interval", "60"],
]


def test_the_db_path_help_says_which_commands_create_it_and_which_refuse(
    cli_runner: CliInvoke,
) -> None:
    text = " ".join(cli_runner("--help").stdout.split())
    help_ = text.split("--db-path PATH ", 1)[1].split(" [default:", 1)[0]

    creating, _, refusing = help_.partition(";")
    assert creating.startswith("The SQLite database file. Created by enqueue, run-parallel, ")
    assert "run --stop-after A does not open it" in creating
    for command in {words[0] for words in READ_ONLY} - {"run"}:
        assert command in refusing, (command, refusing)
    assert "run N --start-from C refuse a missing one" in refusing


@pytest.mark.parametrize("command", READ_ONLY)
def test_read_only_commands_refuse_a_missing_database(
    cli_runner: CliInvoke, tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "typo" / "mistyped.db"

    result = cli_runner("--log-level", "OFF", "--db-path", missing, *command)

    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"Error: {missing}: no such database (check --db-path; enqueue, run, run-all and "
        "run-parallel create it)\n"
    )
    assert result.stdout == ""
    assert not missing.parent.exists()


def test_enqueue_creates_the_database(
    cli_runner: CliInvoke, tmp_path: Path, sample_file: Path
) -> None:
    db = tmp_path / "new" / "queue.db"

    result = cli_runner("--log-level", "OFF", "--db-path", db, "enqueue", sample_file)

    assert result.exit_code == 0, result.output
    assert db_counts(db)["pipeline_inputs"] == 1
    status = cli_runner("--log-level", "OFF", "--db-path", db, "status", "--json")
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["inputs"]["pending"] == 1


def test_a_postgresql_url_is_not_taken_for_a_missing_file(
    cli_runner: CliInvoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check is for SQLite files: a server database is not a path on this machine."""
    monkeypatch.chdir(tmp_path)
    result = cli_runner(
        "--log-level", "OFF", "status",
        env={"PIPELINE_DATABASE_URL": "postgresql://nobody:secret@127.0.0.1:1/none"},
    )

    assert "no such database" not in result.output
    assert list(tmp_path.iterdir()) == []


# --definition from the current directory -----------------------------------------------

USER_MODULE = """
from prefect_pipeline.jobs import JobA, JobB
from prefect_pipeline.pipeline import PipelineDefinition


class Split(JobA):
    description = "JobA, from a module of the user's current directory"


pipeline = PipelineDefinition().add_job("split", Split).add_job("store", JobB)
"""


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """A folder holding ``here_jobs.py`` (not on ``sys.path``) and one input."""
    folder = tmp_path / "work"
    (folder / "inputs").mkdir(parents=True)
    (folder / "here_jobs.py").write_text(textwrap.dedent(USER_MODULE))
    (folder / "inputs" / "notes.txt").write_text("one\ntwo\n")
    return folder


def test_definition_module_in_the_current_directory(
    cli_runner: CliInvoke, user_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(user_folder)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])

    result = cli_runner("--log-level", "OFF", "--definition", "here_jobs:pipeline", "list-jobs")

    assert result.exit_code == 0, result.output
    assert "1. split  JobA, from a module of the user's current directory" in result.stdout


@pytest.mark.slow
def test_dask_workers_import_a_definition_from_the_current_directory(
    user_folder: Path, tmp_path: Path
) -> None:
    """The job class travels to the Dask worker processes by reference: a local cluster's
    workers import ``here_jobs`` because they inherit the command's ``sys.path``."""
    config = PipelineConfig(output_dir=tmp_path / "out", db_path=tmp_path / "p.db")
    result = subprocess.run(
        [
            Path(sys.executable).parent / "pipeline", "--log-level", "OFF",
            "--definition", "here_jobs:pipeline",
            "--db-path", config.db_path, "--output-dir", config.output_dir,
            "run-parallel", "inputs", "--workers", "1", "--workers-after", "0", "--json",
        ],
        cwd=user_folder,
        env={**os.environ, "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["succeeded"] == 1
    rows = query(config.db_path, "SELECT status, last_job FROM pipeline_inputs")
    assert [tuple(row) for row in rows] == [("done", "store")]


# Environment variables for command options ----------------------------------------------


def test_pipeline_workers_variable(
    cli_runner: CliInvoke, tmp_path: Path, sample_file: Path
) -> None:
    base = ["--log-level", "OFF", "--db-path", tmp_path / "p.db", "--output-dir", tmp_path / "o"]

    result = cli_runner(
        *base, "run-parallel", sample_file.parent, "--json", env={"PIPELINE_WORKERS": "0"}
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["succeeded"] == 1

    bad = cli_runner(*base, "run-parallel", sample_file.parent, env={"PIPELINE_WORKERS": "x"})
    assert bad.exit_code == 2
    assert "Invalid value for '--workers': 'x' is not a valid integer" in bad.stderr


def test_workers_and_address_flags_together_are_refused(
    cli_runner: CliInvoke, sample_file: Path
) -> None:
    result = cli_runner(
        "run-parallel", sample_file.parent, "--workers", "1", "--address", "tcp://127.0.0.1:1"
    )

    assert result.exit_code == 2
    assert "--address and --workers do not go together" in result.stderr
