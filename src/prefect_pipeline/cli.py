"""The ``pipeline`` command. The only module that prints, picks exit codes, or turns the
project's exceptions into one-line messages.

Exit codes: 0 success; 1 an input failed; 2 usage error; 3 the run itself broke (Prefect
server, Dask cluster, a bug); 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from prefect_pipeline.config import DEFAULT_DB_PATH, DEFAULT_OUTPUT_DIR, PipelineConfig
from prefect_pipeline.exceptions import InputValidationError, PipelineError, RunError, UsageError
from prefect_pipeline.logs import LEVELS, configure_logging, get_logger

logger = get_logger("cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BROKEN, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class RunBroken(click.ClickException):
    """The run could not proceed: exit 3."""

    exit_code = EXIT_BROKEN


def _interrupt_on_sigterm() -> None:
    # SIGTERM takes the same clean-up path as Ctrl-C: context managers stop the cluster and
    # the Prefect server, claimed inputs go back to pending.
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # ValueError: not the main thread (e.g. called from a test runner thread).
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGTERM, handler)


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` was caused, directly or not, by a KeyboardInterrupt."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def handle_errors[F: Callable[..., Any]](func: F) -> F:
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
            if _interrupted(exc):
                # Prefect turns an interrupt that lands inside its task engine into another
                # error; the user still pressed Ctrl-C (or sent SIGTERM).
                click.echo("Interrupted.", err=True)
                sys.exit(EXIT_INTERRUPTED)
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
@click.option(
    "--definition",
    metavar="MODULE:NAME",
    envvar="PIPELINE_DEFINITION",
    help="Your own pipeline: a PipelineDefinition (or a function returning one) in an "
    "importable module. Default: A -> B -> C.",
)
@click.version_option(package_name="prefect-pipeline")
@click.pass_context
def cli(
    ctx: click.Context, log_level: str, output_dir: Path, db_path: Path, definition: str | None
) -> None:
    """Read input files, split them into records, store and finalize them.

    Jobs: A (file -> records -> JSON), B (JSON -> SQLite), C (finalize a batch).

    \b
    Examples:
      pipeline run-all demo_data/sample.txt
      pipeline run-parallel samples/ --json
      pipeline --log-level OFF --db-path my.db run notes.txt --stop-after B
      pipeline --definition mypkg.jobs:pipeline run notes.txt --stop-after D
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
    """The pipeline to run: ``--definition MODULE:NAME``, or A -> B -> C."""
    from prefect_pipeline.pipeline.definition import default_pipeline, load_definition

    reference = click.get_current_context().find_root().params.get("definition")
    return load_definition(reference) if reference else default_pipeline()


@cli.command("list-jobs")
@click.pass_obj
def list_jobs(config: PipelineConfig) -> None:
    """List all available jobs in the pipeline, in the order they run.

    \b
    Example:
      pipeline list-jobs
    """
    click.echo("Available jobs:")
    try:
        definition = _definition()
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    for number, spec in enumerate(definition, start=1):
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
            input_data,
            definition,
            config,
            start_from=start_from,
            stop_after=stop_after,
            force=force,
        )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "success": outcome.success,
                    "input": input_data,
                    "output": outcome.output if not isinstance(outcome.output, Mapping) else None,
                    "error": outcome.error,
                    "duration_s": round(outcome.duration, 4),
                    "jobs": [
                        {
                            "job": r.job_name,
                            "success": r.success,
                            "error": r.error,
                            "note": r.note,
                            "details": r.details,
                            "duration_s": round(r.duration, 4),
                        }
                        for r in outcome.results
                    ],
                }
            )
        )
    else:
        for result in outcome.results:
            if result.success:
                click.echo(f"{result.job_name}: {_describe(result)}")
    if not outcome.success:
        failed = outcome.failed
        assert failed is not None
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


# Many inputs ---------------------------------------------------------------------------


def _process_start() -> float:
    """When this command's process started (elapsed and start-up are measured from it)."""
    import psutil

    return float(psutil.Process().create_time())


def _report(summary: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
    else:
        click.echo(summary.to_text())
    # Inputs left pending (a retry not yet due when --limit was reached) are not done.
    if summary.failed or summary.pending:
        sys.exit(EXIT_FAILED)


def _dask_options[F: Callable[..., Any]](func: F) -> F:
    options = [
        click.option(
            "--workers",
            type=click.IntRange(min=0),
            default=None,
            help="Dask worker processes (default: one per core). 0 runs in this "
            "process without Dask.",
        ),
        click.option(
            "--threads-per-worker",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Threads in each worker process.",
        ),
        click.option(
            "--address",
            envvar="PIPELINE_DASK_ADDRESS",
            metavar="tcp://HOST:PORT",
            help="Use an existing Dask scheduler instead of a local cluster. Inputs "
            "and the output directory must be at the same paths on every "
            "worker.",
        ),
        click.option(
            "--json",
            "as_json",
            is_flag=True,
            help="Print the summary as one JSON object on stdout.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _check_dask(workers: int | None, address: str | None) -> None:
    if address and workers is not None:
        raise click.BadParameter(
            "give --workers or --address, not both (the existing cluster decides its workers)",
            param_hint="'--workers'",
        )


@cli.command("run-parallel")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--pattern",
    default=None,
    metavar="GLOB",
    help="Only files whose name matches, like find -name (default '*'; "
    "'*_processed.json' with --start-from B).",
)
@click.option(
    "--recursive/--no-recursive", default=True, show_default=True, help="Descend into sub-folders."
)
@click.option("--start-from", metavar="JOB", help="A (text files, default) or B (JSON files).")
@click.option("--stop-after", metavar="JOB", help="Last job to run (default: the last).")
@click.option(
    "--force", is_flag=True, help="Reprocess inputs already done, and replace their stored batches."
)
@_dask_options
@click.pass_obj
@handle_errors
def run_parallel(
    config: PipelineConfig,
    directory: Path,
    pattern: str | None,
    recursive: bool,
    start_from: str | None,
    stop_after: str | None,
    force: bool,
    workers: int | None,
    threads_per_worker: int,
    address: str | None,
    as_json: bool,
) -> None:
    """Run the pipeline on every matching file under DIRECTORY, in parallel on Dask.

    Hidden files are skipped, symlinks leading out of DIRECTORY are ignored, FIFOs and
    devices are never opened. Each input's JSON keeps its folder under the output
    directory. Inputs already done with unchanged content are skipped (--force redoes
    them). Exit code 0 when every input succeeded or was skipped, 1 when any failed.

    \b
    Examples:
      pipeline run-parallel samples/
      pipeline run-parallel ~/notes --pattern '*.txt' --workers 4 --json
      pipeline run-parallel data/output --start-from B
      pipeline run-parallel /shared/in --address tcp://10.0.0.5:8786
    """
    from prefect_pipeline.pipeline.parallel import run_parallel_from_files
    from prefect_pipeline.pipeline.progress import Progress

    _check_dask(workers, address)
    if not directory.exists():
        raise click.BadParameter(f"{directory}: no such directory", param_hint="'DIRECTORY'")
    if not directory.is_dir():
        raise click.BadParameter(f"{directory}: not a directory", param_hint="'DIRECTORY'")
    summary = run_parallel_from_files(
        directory,
        config,
        definition=_definition(),
        start_from=start_from,
        stop_after=stop_after,
        pattern=pattern,
        recursive=recursive,
        workers=workers,
        threads_per_worker=threads_per_worker,
        address=address,
        force=force,
        progress=Progress.wanted(config.log_level),
        started_at=_process_start(),
    )
    _report(summary, as_json)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--pattern",
    default="*",
    show_default=True,
    metavar="GLOB",
    help="Under directories, only files whose name matches.",
)
@click.option(
    "--recursive/--no-recursive", default=True, show_default=True, help="Descend into sub-folders."
)
@click.option("--force", is_flag=True, help="Queue done inputs again even if unchanged.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_obj
@handle_errors
def enqueue(
    config: PipelineConfig,
    paths: tuple[Path, ...],
    pattern: str,
    recursive: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Queue files (and the files under directories) for drain-db.

    A path already pending or processing is not queued twice; a done one is queued again
    only if its content changed, or with --force. Each input's JSON goes under the output
    directory at its absolute folder, so inputs from different roots never clash.

    \b
    Examples:
      pipeline enqueue ~/corpus
      pipeline enqueue a.txt b.txt notes/ --pattern '*.md'
    """
    from prefect_pipeline.database.connection import get_database
    from prefect_pipeline.database.queue import enqueue as enqueue_inputs

    for path in paths:
        if not path.exists():
            raise click.BadParameter(f"{path}: no such file or directory", param_hint="'PATHS'")
    result = enqueue_inputs(
        get_database(config.db_path, config.db_timeout),
        _queued_inputs(config, paths, pattern, recursive),
        force=force,
    )
    if as_json:
        click.echo(json.dumps({"queued": result.queued, "already": result.already}))
    else:
        click.echo(f"{result.queued} input(s) queued, {result.already} already there")


def _queued_inputs(
    config: PipelineConfig, paths: tuple[Path, ...], pattern: str, recursive: bool
) -> Any:
    import os

    from prefect_pipeline.pipeline.discovery import Found, iter_inputs
    from prefect_pipeline.pipeline.parallel import database_files, given_files

    files = []
    for path in paths:
        absolute = Path(os.path.abspath(path))
        if absolute.is_dir():
            mirror = config.output_dir / absolute.relative_to(absolute.anchor)
            for entry in iter_inputs(
                absolute,
                mirror,
                pattern=pattern,
                recursive=recursive,
                exclude=[config.output_dir, *database_files(config)],
            ):
                if isinstance(entry, Found):
                    yield entry
                else:
                    logger.info("ignored %s: %s", entry.path, entry.reason)
        else:
            files.append(absolute)
    yield from given_files(files, config)


@cli.command("drain-db")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Take at most N inputs from the queue.",
)
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="A claimed input whose command stops renewing it for this long (it "
    "died) may be taken by another drain-db.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Attempts per input for errors that a retry may cure.",
)
@click.option(
    "--retry-delay",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds before the first retry; doubles with each attempt.",
)
@_dask_options
@click.pass_obj
@handle_errors
def drain_db(
    config: PipelineConfig,
    limit: int | None,
    lease_seconds: float,
    max_attempts: int,
    retry_delay: float,
    workers: int | None,
    threads_per_worker: int,
    address: str | None,
    as_json: bool,
) -> None:
    """Run the pipeline on the inputs queued in the database, in parallel on Dask.

    Claims pending inputs (atomically, with a lease, so drainers never share an input)
    until none that may run is left or --limit were taken. Bad inputs fail at once;
    other errors are retried with a growing delay, up to --max-attempts.

    \b
    Examples:
      pipeline enqueue ~/corpus && pipeline drain-db
      pipeline drain-db --limit 100 --workers 2 --json
    """
    from prefect_pipeline.pipeline.parallel import run_parallel_from_database
    from prefect_pipeline.pipeline.progress import Progress

    _check_dask(workers, address)
    summary = run_parallel_from_database(
        config,
        definition=_definition(),
        limit=limit,
        lease_seconds=lease_seconds,
        max_attempts=max_attempts,
        retry_base_seconds=retry_delay,
        workers=workers,
        threads_per_worker=threads_per_worker,
        address=address,
        progress=Progress.wanted(config.log_level),
        started_at=_process_start(),
    )
    _report(summary, as_json)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object.")
@click.pass_obj
@handle_errors
def status(config: PipelineConfig, as_json: bool) -> None:
    """Show the queue: inputs and batches by status, records, oldest pending, last errors.

    \b
    Example:
      pipeline status --json
    """
    from prefect_pipeline.database.connection import get_database
    from prefect_pipeline.database.queue import status as queue_status

    report = queue_status(get_database(config.db_path, config.db_timeout))
    if as_json:
        click.echo(json.dumps(report))
        return
    inputs, batches = report["inputs"], report["batches"]
    click.echo(
        f"inputs:  {inputs['pending']} pending, {inputs['processing']} processing "
        f"({inputs['stale']} with an expired lease), {inputs['done']} done, "
        f"{inputs['failed']} failed"
    )
    click.echo(
        f"batches: {batches['pending']} pending, {batches['finalized']} finalized; "
        f"{report['records']} record(s)"
    )
    if report["oldest_pending"]:
        oldest = report["oldest_pending"]
        click.echo(
            f"oldest pending: #{oldest['id']} {oldest['path']} (queued {oldest['queued_at']})"
        )
    for error in report["last_errors"]:
        click.echo(
            f"error: #{error['id']} {error['path']} ({error['status']}, job "
            f"{error['job']}): {error['error']}"
        )


@cli.command()
@click.argument("ids", nargs=-1, type=click.IntRange(min=1))
@click.option("--failed", is_flag=True, help="Requeue every failed input.")
@click.option(
    "--stale", is_flag=True, help="Requeue inputs whose lease expired (their command died)."
)
@click.option("--force", is_flag=True, help="With IDs: requeue done inputs too.")
@click.pass_obj
@handle_errors
def requeue(
    config: PipelineConfig, ids: tuple[int, ...], failed: bool, stale: bool, force: bool
) -> None:
    """Put inputs back to pending, attempts reset.

    \b
    Examples:
      pipeline requeue --failed
      pipeline requeue --stale
      pipeline requeue 12 13 --force
    """
    from prefect_pipeline.database.connection import get_database
    from prefect_pipeline.database.queue import requeue as requeue_inputs

    if not (ids or failed or stale):
        raise click.UsageError("say what to requeue: --failed, --stale or input IDs")
    result = requeue_inputs(
        get_database(config.db_path, config.db_timeout),
        failed=failed,
        stale=stale,
        ids=ids,
        force=force,
    )
    click.echo(f"{result.requeued} input(s) requeued")
    for input_id, reason in result.refused:
        click.echo(f"not requeued: #{input_id}: {reason}", err=True)
    if result.refused:
        sys.exit(EXIT_FAILED)


def main() -> None:
    """Entry point of the ``pipeline`` script."""
    cli(prog_name="pipeline")
