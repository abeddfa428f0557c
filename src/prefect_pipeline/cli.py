"""The ``pipeline`` command. The only module that prints, picks exit codes, or turns the
project's exceptions into one-line messages.

Exit codes: 0 success; 1 an input failed; 2 usage error; 3 the run itself broke (Prefect
server, Dask cluster, a bug); 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from prefect_pipeline.config import DEFAULT_DB_PATH, DEFAULT_OUTPUT_DIR, PipelineConfig
from prefect_pipeline.exceptions import InputValidationError, PipelineError, RunError, UsageError
from prefect_pipeline.logs import LEVELS, configure_logging, get_logger

logger = get_logger("cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BROKEN, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

F = TypeVar("F", bound=Callable[..., Any])


class RunBroken(click.ClickException):
    """The run could not proceed: exit 3."""

    exit_code = EXIT_BROKEN


def _interrupt_on_sigterm() -> None:
    # SIGTERM takes the same clean-up path as Ctrl-C: context managers stop the cluster and
    # the Prefect server, claimed inputs go back to pending.
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if hasattr(signal, "SIGTERM"):
        try:
            signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread (e.g. called from a test runner thread)
            pass


def handle_errors(func: F) -> F:
    """Map the project's exceptions to one-line messages and exit codes."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except UsageError as exc:
            raise click.UsageError(str(exc)) from None
        except InputValidationError as exc:
            raise click.ClickException(str(exc)) from None
        except RunError as exc:
            raise RunBroken(str(exc)) from None
        except PipelineError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            logger.exception("the run broke")
            raise RunBroken(f"the run broke: {type(exc).__name__}: {exc}") from None

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--log-level",
    type=click.Choice(LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
    envvar="PIPELINE_LOG_LEVEL",
    help="Log level for the pipeline, Prefect, its server and Dask. OFF prints no log lines.",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUTPUT_DIR,
    show_default=True,
    envvar="PIPELINE_OUTPUT_DIR",
    help="Where job A writes its JSON files.",
)
@click.option(
    "--db-path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_DB_PATH,
    show_default=True,
    envvar="PIPELINE_DB_PATH",
    help="The SQLite database (created if missing).",
)
@click.version_option(package_name="prefect-pipeline")
@click.pass_context
def cli(ctx: click.Context, log_level: str, output_dir: Path, db_path: Path) -> None:
    """Read input files, split them into records, store and finalize them.

    Jobs: A (file -> records -> JSON), B (JSON -> SQLite), C (finalize a batch).

    \b
    Examples:
      pipeline run-all demo_data/sample.txt
      pipeline run-parallel samples/ --json
      pipeline --log-level OFF --db-path my.db run notes.txt --stop-after B
    """
    configure_logging(log_level)
    _interrupt_on_sigterm()
    try:
        ctx.obj = PipelineConfig.from_env(
            output_dir=output_dir, db_path=db_path, log_level=log_level
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _definition() -> Any:
    from prefect_pipeline.pipeline.definition import default_pipeline

    return default_pipeline()


@cli.command("list-jobs")
@click.pass_obj
def list_jobs(config: PipelineConfig) -> None:
    """List all available jobs in the pipeline, in the order they run.

    \b
    Example:
      pipeline list-jobs
    """
    click.echo("Available jobs:")
    for number, spec in enumerate(_definition(), start=1):
        click.echo(f"  {number}. {spec.name}  {spec.description}")


def _describe(result: Any) -> str:
    details = result.details or {}
    if not result.success:
        return f"failed: {result.error}"
    if "output_path" in details:
        return f"{details['record_count']} record(s) -> {details['output_path']}"
    if "records_written" in details:
        text = f"batch {details['batch_id']}, {details['records_written']} record(s) written"
    elif "batch_id" in details:
        text = f"batch {details['batch_id']} finalized"
    else:
        text = f"output {str(result.output)[:80]}"
    return f"{text} ({result.note})" if result.note else text


def _run_single(
    config: PipelineConfig,
    input_data: str,
    start_from: str | None,
    stop_after: str | None,
    force: bool,
    as_json: bool,
) -> None:
    from prefect_pipeline.pipeline.flows import run_jobs
    from prefect_pipeline.pipeline.server import prefect_api

    definition = _definition()
    definition.job_range(start_from, stop_after)  # usage errors before any start-up
    with prefect_api():
        outcome = run_jobs(
            input_data, definition, config,
            start_from=start_from, stop_after=stop_after, force=force,
        )
    if as_json:
        click.echo(json.dumps({
            "success": outcome.success,
            "input": input_data,
            "output": outcome.output if not isinstance(outcome.output, dict) else None,
            "error": outcome.error,
            "duration_s": round(outcome.duration, 4),
            "jobs": [
                {"job": r.job_name, "success": r.success, "error": r.error, "note": r.note,
                 "details": r.details, "duration_s": round(r.duration, 4)}
                for r in outcome.results
            ],
        }))
    else:
        for result in outcome.results:
            if result.success:
                click.echo(f"{result.job_name}: {_describe(result)}")
    if not outcome.success:
        failed = outcome.failed
        if as_json:
            sys.exit(EXIT_FAILED)
        raise click.ClickException(f"job {failed.job_name}: {failed.error}")


@cli.command()
@click.argument("input_data")
@click.option("--start-from", metavar="JOB", help="Job to start from (default: the first).")
@click.option("--stop-after", metavar="JOB", help="Job to stop after (default: the last).")
@click.option("--force", is_flag=True, help="Replace a batch already stored for this content.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.pass_obj
@handle_errors
def run(
    config: PipelineConfig,
    input_data: str,
    start_from: str | None,
    stop_after: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Run the pipeline on one input, with flexible start/stop points.

    INPUT_DATA is the starting job's input: a text file for A, a *_processed.json file
    for B, a batch id for C.

    \b
    Examples:
      pipeline run demo_data/sample.txt --stop-after A
      pipeline run data/output/sample_processed.json --start-from B
      pipeline run 1 --start-from C --stop-after C
    """
    _run_single(config, input_data, start_from, stop_after, force, as_json)


@cli.command("run-all")
@click.argument("input_file")
@click.option("--force", is_flag=True, help="Replace a batch already stored for this content.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.pass_obj
@handle_errors
def run_all(config: PipelineConfig, input_file: str, force: bool, as_json: bool) -> None:
    """Run the complete pipeline (A -> B -> C) on one input file.

    \b
    Example:
      pipeline run-all demo_data/sample.txt
    """
    _run_single(config, input_file, None, None, force, as_json)


def main() -> None:
    """Entry point of the ``pipeline`` script."""
    cli(prog_name="pipeline")
