"""The ``pipeline`` command. The only module that prints, picks exit codes, or turns the
project's exceptions into one-line messages.

Exit codes: 0 success; 1 an input failed; 2 usage error; 3 the run itself broke (Prefect
server, Dask cluster, a bug); 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import click

from prefect_pipeline import interrupts
from prefect_pipeline.clock import local_time
from prefect_pipeline.config import (
    DEFAULT_DB_PATH,
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_OUTPUT_DIR,
    DEFAULT_RETRY_DELAY,
    DEFAULT_WORKERS_AFTER,
    PipelineConfig,
    parse_size,
)
from prefect_pipeline.exceptions import (
    DatabaseMismatch,
    InputValidationError,
    MissingDatabase,
    OutputFolderError,
    PipelineError,
    RunError,
    UsageError,
)
from prefect_pipeline.folders import nearest_folder
from prefect_pipeline.interrupts import caused_by_interrupt
from prefect_pipeline.logs import LEVELS, configure_logging, get_logger, silence_other_output
from prefect_pipeline.pipeline.definition import default_pipeline

logger = get_logger("cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BROKEN, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: Standard output closed before all was written (a pipe to ``head``): 128 + SIGPIPE.
EXIT_CLOSED_PIPE = 141


class ByteSize(click.ParamType):
    """A size in bytes: ``67108864``, ``64MiB``, ``64M``, ``1G``."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            size = parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if size < 1:
            self.fail("must be at least 1 byte", param, ctx)
        return size


class RunBroken(click.ClickException):
    """The run could not proceed: exit 3."""

    exit_code = EXIT_BROKEN


def _say_interrupted(then: str | None = None) -> None:
    # With --log-level OFF the command prints only its result: nothing, when there is none.
    if click.get_current_context().find_root().params.get("log_level", "INFO").upper() != "OFF":
        click.echo("Interrupted." + (f" ({then})" if then else ""), err=True)


class NoSuchDatabase(click.ClickException):
    """A command that only reads was pointed at a database that does not exist: exit 2,
    in one line (a mistyped --db-path must not look like an empty queue)."""

    exit_code = EXIT_USAGE


def _default_job_names() -> str:
    """The default pipeline's job names, for the JOB options' help: "A, B or C"."""
    names = default_pipeline().names
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


#: What a JOB option accepts, said once for every command's --help.
_JOBS_HELP = f"{_default_job_names()} (with --definition, see list-jobs)"


class UnusableDatabase(click.ClickException):
    """The database's location cannot hold a SQLite database (a folder, a path under a
    file, a file that is not a database): exit 2, in one line, before anything starts."""

    exit_code = EXIT_USAGE


def _require_database(config: PipelineConfig, *, writes: bool = True) -> None:
    """Refuse a database that does not exist, creating nothing: the command only works on
    what it holds, so a missing file is a mistyped --db-path, not an empty queue. A server
    database without the pipeline's tables is refused the same way (connecting tells)."""
    path = config.database.path
    if path is None:
        _store(config, create=False, read_only=not writes)
        return
    if not path.exists():
        raise NoSuchDatabase(
            f"{path}: no such database (check {_db_option(config)}; enqueue, run, run-all and "
            "run-parallel create it)"
        )
    _check_database_location(config, writes=writes)
    # A file that is not the pipeline's (an empty one, another program's database) is
    # refused as a missing one is, before the command would create its tables there.
    _sqlite_store(config, path, create=False, read_only=not writes)


def _db_option(config: PipelineConfig) -> str:
    """The option that named the database, for a message that tells which to check."""
    return "--db-url" if config.db_url is not None else "--db-path"


def _not_writable(path: Path) -> str | None:
    """Why this process may not write ``path`` (a file, or a folder to make files in), or
    None when it may."""
    if os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0)):
        return None
    return "read-only file system" if os.statvfs(path).f_flag & os.ST_RDONLY else (
        "permission denied"
    )


def _check_database_location(config: PipelineConfig, *, writes: bool = True) -> None:
    """Refuse, creating nothing, a SQLite location where no database can be created: a
    folder, or a path under a file; and, for a command that ``writes``, one it may not
    write (the file, or its folder, where SQLite keeps its journal). (A server database is
    checked when it is connected to.)"""
    path = config.database.path
    if path is None:
        return
    if path.is_dir():
        raise UnusableDatabase(
            f"{path}: a directory, not a database file (check {_db_option(config)})"
        )
    folder = nearest_folder(path.parent)  # which the store creates in
    if not folder.is_dir():
        raise UnusableDatabase(
            f"{path}: cannot be created: {folder} is not a directory "
            f"(check {_db_option(config)})"
        )
    if not writes:
        return
    if path.exists():
        real = path.resolve()  # a symlink's target, whose folder holds SQLite's journal
        problems = [
            ("not writable", _not_writable(real)),
            (f"its folder {real.parent} is not writable", _not_writable(real.parent)),
        ]
    else:
        problems = [(f"cannot be created in {folder}", _not_writable(folder))]
    for problem, why in problems:
        if why is not None:
            raise UnusableDatabase(f"{path}: {problem} ({why}) (check {_db_option(config)})")


class UnusableOutput(click.ClickException):
    """Job A could not write its JSON files under --output-dir (a file, a path under a
    file, a folder this process may not write in or that takes no file): exit 2, in one
    line, before anything starts. Found later, every input would fail with it, one by one."""

    exit_code = EXIT_USAGE


def _check_output_dir(
    config: PipelineConfig, jobs: Iterable[Any], *, probe: bool = True
) -> None:
    """Refuse an output folder that the ``jobs`` (``JobSpec``s) to run would write in (job
    A's JSON files) and cannot (``output_folder_problem``; without ``probe``, only one that
    is a file or lies under one). No folder is made; a file is made and removed at once in
    the nearest existing one."""
    from prefect_pipeline.jobs.output_file import output_folder_problem

    if not any(spec.job_class.writes_output for spec in jobs):
        return
    problem = output_folder_problem(config.output_dir, probe=probe)
    if problem is not None:
        raise UnusableOutput(f"{config.output_dir}: {problem} (check --output-dir)")


def _open_database(config: PipelineConfig) -> Any:
    """The configured database's store, created if missing, for a command that stores what
    it reads. A SQLite location that cannot serve is refused in one line, before a Prefect
    server, a cluster or an import of Prefect starts (the first job that writes would
    otherwise find out, after all of them)."""
    path = config.database.path
    if path is None:  # a server database: checked when it is connected to
        return _store(config)
    _check_database_location(config)
    return _sqlite_store(config, path)


def _check_database_for_a_run(config: PipelineConfig) -> None:
    """``_open_database`` for a run over one input, but a SQLite file that does not exist
    yet is only checked where it would be made: the run's first job that writes creates
    it, and a run that fails before (job A on a file whose problem lies past what was
    checked) leaves no empty database behind."""
    path = config.database.path
    if path is not None and not path.exists() and not path.is_symlink():
        _check_database_location(config)
    else:  # a symlink that leads nowhere is opened too: its target may not be creatable
        _open_database(config)


def _sqlite_store(
    config: PipelineConfig, path: Path, *, create: bool = True, read_only: bool = False
) -> Any:
    """``_store`` of a SQLite file, or one line saying why it cannot be used (a file that is
    not a database, a folder it cannot be created in)."""
    from peewee import DatabaseError

    try:
        return _store(config, create=create, read_only=read_only)
    except (OSError, DatabaseError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UnusableDatabase(
            f"{path}: cannot be used: {reason} (check {_db_option(config)})"
        ) from None


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
        except DatabaseMismatch as exc:
            raise UnusableDatabase(str(exc)) from None
        except MissingDatabase as exc:
            raise NoSuchDatabase(str(exc)) from None
        except OutputFolderError as exc:
            raise UnusableOutput(str(exc)) from None
        except RunError as exc:
            raise RunBroken(str(exc)) from None
        except PipelineError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            _say_interrupted()
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            _stdout_closed()
            sys.exit(EXIT_CLOSED_PIPE)
        except Exception as exc:
            if caused_by_interrupt(exc):
                # Prefect turns an interrupt that lands inside its task engine into another
                # error; the user still pressed Ctrl-C (or sent SIGTERM).
                _say_interrupted()
                sys.exit(EXIT_INTERRUPTED)
            logger.exception("the run broke")
            raise RunBroken(f"the run broke: {type(exc).__name__}: {exc}") from None

    return wrapper  # type: ignore[return-value]


class _Command(click.Command):
    """A command that, given an option of ``pipeline`` itself (``drain-db --log-level OFF``),
    says where that option goes instead of only that the command has none."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            name = exc.option_name
            root = ctx.find_root().command
            if any(name in p.opts for p in root.params if isinstance(p, click.Option)):
                program, command = ctx.command_path.split(" ", 1)
                raise click.NoSuchOption(
                    name,
                    f"No such option: {name} ({name} is an option of {program} itself: put it "
                    f"before the command, as in {program} {name} ... {command})",
                    ctx=ctx,
                ) from None
            raise


class _Group(click.Group):
    command_class = _Command


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
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
    # An existing file is refused by the commands that write there, in one line
    # (_check_output_dir), not by Click's usage block: status or requeue do not care.
    type=click.Path(path_type=Path),
    default=DEFAULT_OUTPUT_DIR,
    show_default=True,
    envvar="PIPELINE_OUTPUT_DIR",
    help="Where job A writes its JSON files. For enqueue: where the queued inputs' JSON "
    "will go (drain-db and serve write where enqueue put it; theirs is not used).",
)
@click.option(
    "--db-path",
    type=click.Path(path_type=Path),
    default=DEFAULT_DB_PATH,
    show_default=True,
    envvar="PIPELINE_DB_PATH",
    help="The SQLite database file. Created by enqueue, run-parallel, and run or run-all "
    "when they run a job that writes, such as B (run --stop-after A does not open it); "
    "status, drain-db, requeue, serve and run N --start-from C refuse a missing one. A "
    "folder, or a path under a file, is refused before anything starts.",
)
@click.option(
    "--db-url",
    metavar="URL",
    envvar="PIPELINE_DATABASE_URL",
    help="The database as a URL, instead of --db-path: postgresql://USER:PASS@HOST:PORT/DB "
    "(a database shared by drainers on many machines), or sqlite:///PATH. Its password is "
    "never printed, logged or sent to Prefect. Env: PIPELINE_DATABASE_URL.",
)
@click.option(
    "--max-line-bytes",
    type=ByteSize(),
    default=DEFAULT_MAX_LINE_BYTES,
    envvar="PIPELINE_MAX_LINE_BYTES",
    help="A line longer than this (bytes; K, M, G suffixes, e.g. 128MiB) fails its input "
    "with an error naming the line: a line is the one thing held whole in memory. "
    "Default: 64MiB.",
)
@click.option(
    "--definition",
    metavar="MODULE:NAME",
    envvar="PIPELINE_DEFINITION",
    help="Your own pipeline: a PipelineDefinition (or a function returning one) in a "
    "module of the current directory or an installed one. Default: A -> B -> C.",
)
@click.version_option(package_name="prefect-pipeline")
@click.pass_context
def cli(
    ctx: click.Context,
    log_level: str,
    output_dir: Path,
    db_path: Path,
    db_url: str | None,
    max_line_bytes: int,
    definition: str | None,
) -> None:
    """Read input files, split them into records, store and finalize them.

    Jobs: A (file -> records -> JSON), B (JSON -> SQLite), C (finalize a batch).

    \b
    Examples:
      pipeline run-all demo_data/sample.txt
      pipeline run-parallel samples/ --json
      pipeline --log-level OFF --db-path my.db run notes.txt --stop-after B
      pipeline --db-url postgresql://ingest:PASS@db:5432/queue drain-db
      pipeline --max-line-bytes 256MiB run-all export.jsonl
      pipeline --definition my_jobs:pipeline run notes.txt --stop-after D

    --definition my_jobs:pipeline imports my_jobs.py from the current directory (or an
    installed module of that name) and runs its `pipeline`.
    """
    configure_logging(log_level)
    if log_level.upper() == "OFF":
        silence_other_output()
    interrupts.install()
    source = ctx.get_parameter_source
    given = click.core.ParameterSource.COMMANDLINE
    if db_url and source("db_path") is given and source("db_url") is given:
        raise click.UsageError("give --db-path or --db-url, not both")
    try:
        ctx.obj = PipelineConfig.from_env(
            output_dir=output_dir,
            db_path=db_path,
            db_url=db_url,
            log_level=log_level,
            max_line_bytes=max_line_bytes,
        )
    except (ValueError, UsageError) as exc:
        raise click.UsageError(str(exc)) from None


def _definition() -> Any:
    """The pipeline to run: ``--definition MODULE:NAME``, or A -> B -> C."""
    from prefect_pipeline.pipeline.definition import default_pipeline, load_definition

    reference = click.get_current_context().find_root().params.get("definition")
    return load_definition(reference) if reference else default_pipeline()


@cli.command("list-jobs", short_help="List the pipeline's jobs, in the order they run.")
@click.pass_obj
@handle_errors
def list_jobs(config: PipelineConfig) -> None:
    """List all available jobs in the pipeline, in the order they run.

    \b
    Example:
      pipeline list-jobs
    """
    definition = _definition()
    click.echo("Available jobs:")
    for number, spec in enumerate(definition, start=1):
        click.echo(f"  {number}. {spec.name}  {spec.description}")


def _describe(result: Any) -> str:
    if not result.success:
        return f"failed: {result.error}"
    return f"{result.summary} ({result.note})" if result.note else result.summary


def _run_single(
    config: PipelineConfig,
    input_data: str,
    start_from: str | None,
    stop_after: str | None,
    force: bool,
    as_json: bool,
) -> None:
    from prefect_pipeline.jobs.base import Kind
    from prefect_pipeline.pipeline.single import precheck

    definition = _definition()
    jobs = definition.job_range(start_from, stop_after)  # usage errors before any start-up
    if jobs[0].takes is Kind.BATCH:  # it only reads stored batches
        _require_database(config)
    # A rejected input before any start-up (Prefect, its server).
    outcome = precheck(jobs, input_data, config)
    if outcome is None:
        _check_output_dir(config, jobs)
        if any(spec.uses_database for spec in jobs):
            _check_database_for_a_run(config)
        from prefect_pipeline.exceptions import Interrupted
        from prefect_pipeline.pipeline.server import prefect_api

        def say_stopped(done: Any) -> NoReturn:
            # What the jobs that ended did (none, if it stopped while Prefect started), then
            # how to go on from there.
            go_on = _how_to_go_on(done, jobs, stop_after, force)
            _report_single(done, input_data, as_json, stopped="interrupted", go_on=go_on)
            _say_interrupted(go_on and f"to go on from there: {go_on}")
            sys.stdout.flush()
            sys.exit(EXIT_INTERRUPTED)

        try:
            # The API first: a configured one that does not answer is one line before the
            # seconds of importing Prefect (and a temporary server starts meanwhile).
            with prefect_api():
                from prefect_pipeline.pipeline.flows import run_jobs

                try:
                    outcome = run_jobs(
                        input_data,
                        definition,
                        config,
                        start_from=start_from,
                        stop_after=stop_after,
                        force=force,
                    )
                except Interrupted as stopped:
                    # Said before a temporary server stops (its logs flushed, its process
                    # ended: a supervisor's SIGKILL may come first), as a run over many
                    # says its summary; the exit goes through that teardown. The flow run
                    # is Cancelled already (its on_crashed hook ran before the flow's call
                    # returned), and a second signal is ignored (``interrupts.install``).
                    say_stopped(stopped.summary)
        except KeyboardInterrupt as stopped:
            from prefect_pipeline.pipeline.single import PipelineResult

            say_stopped(stopped.summary if isinstance(stopped, Interrupted) else PipelineResult())
    _report_single(outcome, input_data, as_json)
    if not outcome.success:
        failed = outcome.failed
        assert failed is not None
        if as_json:
            sys.exit(EXIT_FAILED)
        raise click.ClickException(f"job {failed.job_name}: {failed.error}")


def _how_to_go_on(
    done: Any, jobs: list[Any], stop_after: str | None = None, force: bool = False
) -> str | None:
    """After an interrupt: the command that takes the run (``jobs``, the range it ran) on
    from the job it stopped in, when the jobs before it ended well and the next one takes
    what the last one made: a batch id (job B's batch, stored, not finalized: job C), or a
    file it wrote (job A's JSON: job B). Global options given on the command line are
    repeated, a database URL without its password."""
    if not done.success:  # no job ended, or the last one failed
        return None
    names = [spec.name for spec in jobs]
    last = done.results[-1]
    at = names.index(last.job_name) + 1 if last.job_name in names else len(names)
    if at >= len(names):
        return None  # the range's last job ended
    following = names[at]
    made = last.output
    if isinstance(made, bool) or not isinstance(made, int):
        made = (last.details or {}).get("output_path")
        if not isinstance(made, str) or not os.path.isfile(made):
            return None
    words = ["run", str(made), "--start-from", following]
    if stop_after:
        words += ["--stop-after", stop_after]
    if force:
        words.append("--force")
    return _suggested(*words)


def _suggested(*words: str) -> str:
    """A ``pipeline`` command line to suggest: ``words`` after the options ``pipeline``
    itself was given, every word quoted for a shell."""
    return " ".join(shlex.quote(word) for word in ["pipeline", *_given_root_options(), *words])


def _given_root_options() -> list[str]:
    """``pipeline``'s own options as the command line gave them (not from the environment:
    a command run from the same shell gets those again), a database URL without its
    password."""
    from click.core import ParameterSource

    context = click.get_current_context(silent=True)
    if context is None:
        return []
    root = context.find_root()
    given: list[str] = []
    for param in root.command.params:
        if not isinstance(param, click.Option) or param.is_flag or param.name not in root.params:
            continue
        if root.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
            continue
        value = str(root.params[param.name])
        if param.name == "db_url":
            from prefect_pipeline.database.url import without_password

            value = without_password(value)  # never printed
        given += [param.opts[0], value]
    return given


def _report_single(
    outcome: Any,
    input_data: str,
    as_json: bool,
    stopped: str | None = None,
    go_on: str | None = None,
) -> None:
    """A single-input run's result: a line per job that ended well, or one JSON object
    (``stopped``: how a run that did not reach its end stopped; ``go_on``: then, the command
    that takes it on from there, for scripts too)."""
    if as_json:
        click.echo(
            json.dumps(
                {
                    "success": outcome.success and stopped is None,
                    "input": input_data,
                    "output": outcome.output if not isinstance(outcome.output, Mapping) else None,
                    "error": outcome.error,
                    "duration_s": round(outcome.duration, 4),
                    "stopped": stopped,
                    "go_on": go_on,
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


@cli.command(short_help="Run a range of jobs on one input.")
@click.argument("input_data", metavar="INPUT_DATA")
@click.option(
    "--start-from", metavar="JOB", help=f"Job to start from: {_JOBS_HELP}. Default: the first."
)
@click.option(
    "--stop-after", metavar="JOB", help=f"Job to stop after: {_JOBS_HELP}. Default: the last."
)
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


@cli.command("run-all", short_help="Run every job on one input file.")
@click.argument("input_file", metavar="INPUT_FILE")
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


def _report(
    run: Callable[..., Any],
    as_json: bool,
    more: Callable[[Any], tuple[dict[str, Any], list[str]]] | None = None,
) -> None:
    """Run, print the summary (also of a run stopped early), and exit with its code.

    The summary is printed as soon as the run knows it, while its cluster and Prefect
    server stop: nothing in it waits for them. ``more(summary)`` gives the command's own
    keys for ``--json`` and lines after the summary's.
    """
    from prefect_pipeline.exceptions import Interrupted

    printed: list[Any] = []

    def show(summary: Any) -> None:
        printed.append(summary)  # first: an interrupt while it prints must not print it twice
        keys, lines = more(summary) if more is not None else ({}, [])
        if as_json:
            click.echo(json.dumps({**summary.to_dict(), **keys}))
        elif sys.stdout.isatty():
            from rich.console import Console
            from rich.text import Text

            # Colour on a terminal only; rich honours NO_COLOR.
            text = Text("\n").join([summary.to_rich(), *(Text(line, "yellow") for line in lines)])
            Console(file=sys.stdout, highlight=False, soft_wrap=True).print(text)
        else:
            click.echo("\n".join([summary.to_text(), *lines]))
        sys.stdout.flush()

    try:
        summary = run(report=show)
    except Interrupted as stopped:
        summary = stopped.summary
    if not printed:
        show(summary)
    if summary.stopped:
        _say_interrupted()
        sys.exit(EXIT_INTERRUPTED)
    # Inputs left pending (a retry not yet due when --limit was reached), or held by another
    # command, are not done; nor are those of a folder that could not be listed.
    if summary.failed or summary.pending or summary.held or summary.unreadable_paths:
        sys.exit(EXIT_FAILED)


def _dask_options[F: Callable[..., Any]](func: F) -> F:
    options = [
        click.option(
            "--workers",
            type=click.IntRange(min=0),
            default=None,
            envvar="PIPELINE_WORKERS",
            help="Dask worker processes (default: one per core). 0 runs in this "
            "process without Dask. Env: PIPELINE_WORKERS.",
        ),
        click.option(
            "--threads-per-worker",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Threads in each worker process.",
        ),
        click.option(
            "--workers-after",
            type=click.FloatRange(min=0),
            default=DEFAULT_WORKERS_AFTER,
            show_default=True,
            envvar="PIPELINE_WORKERS_AFTER",
            metavar="SECONDS",
            help="Start the local cluster's workers once the writer has waited this long "
            "for the jobs they would take (run on a thread of this process meanwhile) "
            "and inputs are left: a short run, or one whose time goes to its database, "
            "never pays for them. 0 starts them with the run. Env: PIPELINE_WORKERS_AFTER.",
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


def _check_cluster(workers: int | None, threads: int, address: str | None) -> None:
    """Impossible cluster options are usage errors before anything else is looked at."""
    from prefect_pipeline.pipeline.options import ParallelOptions

    ParallelOptions(workers=workers, threads_per_worker=threads, address=address).check()


def _workers(workers: int | None, address: str | None) -> int | None:
    """--workers as given, except that PIPELINE_WORKERS yields to an --address flag (a
    default in a profile must not stop a run on an existing cluster). Both given on the
    command line are refused by the run's options."""
    if address and workers is not None:
        context = click.get_current_context()
        from_env = click.core.ParameterSource.ENVIRONMENT
        if context.get_parameter_source("workers") is from_env and (
            context.get_parameter_source("address") is not from_env
        ):
            return None
    return workers


@cli.command("run-parallel", short_help="Run every job on each file under DIRECTORY, on Dask.")
@click.argument("directory", metavar="DIRECTORY", type=click.Path(path_type=Path))
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
@click.option(
    "--start-from",
    metavar="JOB",
    help=f"Job to start from: {_JOBS_HELP}; one that takes files (A: text files, the "
    "default; B: JSON files).",
)
@click.option(
    "--stop-after", metavar="JOB", help=f"Job to stop after: {_JOBS_HELP}. Default: the last."
)
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
    workers_after: float,
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

    workers = _workers(workers, address)
    if not directory.exists():
        raise click.BadParameter(f"{directory}: no such directory", param_hint="'DIRECTORY'")
    if not directory.is_dir():
        raise click.BadParameter(f"{directory}: not a directory", param_hint="'DIRECTORY'")
    definition = _definition()
    _check_output_dir(config, definition.job_range(start_from, stop_after))
    _check_database_location(config)  # the run opens it, after its own usage checks
    run = functools.partial(
        run_parallel_from_files,
        directory,
        config,
        definition=definition,
        start_from=start_from,
        stop_after=stop_after,
        pattern=pattern,
        recursive=recursive,
        workers=workers,
        threads_per_worker=threads_per_worker,
        workers_after_s=workers_after,
        address=address,
        force=force,
        progress=Progress.wanted(config.log_level),
        started_at=_process_start(),
    )
    _report(run, as_json)


@cli.command(short_help="Queue files and folders for drain-db.")
@click.argument(
    "paths", metavar="PATH...", nargs=-1, required=True, type=click.Path(path_type=Path)
)
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
@click.option(
    "--force",
    is_flag=True,
    help="Queue done inputs again even if unchanged (drain-db --force then replaces their "
    "stored batches; without it, content already stored is skipped).",
)
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
    from prefect_pipeline.database.queue import enqueue as enqueue_inputs
    from prefect_pipeline.database.statuses import rejected_reason

    for path in paths:
        if not path.exists():
            raise click.BadParameter(f"{path}: no such file or directory", param_hint="'PATH...'")
    # The queued inputs' JSON paths are fixed here, under --output-dir: one that is a file
    # would fail every one of them in drain-db. Whether files can be made there is for
    # drain-db to find (the machines that drain may be others than this one).
    chain = _definition().jobs
    _check_output_dir(config, chain, probe=False)
    ignored: list[dict[str, str]] = []
    unreadable: list[dict[str, str]] = []
    result = enqueue_inputs(
        _open_database(config),
        _queued_inputs(config, paths, pattern, recursive, ignored, unreadable),
        force=force,
        max_line_bytes=config.max_line_bytes,
        # The range drain-db runs by default, which a rejected input's last run must match.
        job_range=(chain[0].name, chain[-1].name),
    )
    rejected = [
        {"path": path, "reason": rejected_reason(outcome, "queues it again")}
        for path, outcome in result.rejected
    ]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "queued": result.queued,
                    "already": result.already,
                    "ignored": len(ignored),
                    "ignored_paths": ignored,
                    "unreadable": len(unreadable),
                    "unreadable_paths": unreadable,
                    "rejected": len(rejected),
                    "rejected_paths": rejected,
                }
            )
        )
    else:
        line = f"{result.queued} input(s) queued, {result.already} already there"
        line += f", {len(rejected)} rejected before" if rejected else ""
        line += f", {len(ignored)} ignored" if ignored else ""
        click.echo(line + (f", {len(unreadable)} could not be read" if unreadable else ""))
        for entry in rejected:
            click.echo(f"skipped {entry['path']}: {entry['reason']}", err=True)
        for entry in ignored:
            click.echo(f"ignored {entry['path']}: {entry['reason']}", err=True)
        for entry in unreadable:
            click.echo(f"cannot read {entry['path']}: {entry['reason']}", err=True)
    if unreadable:  # what is under them was not queued
        sys.exit(EXIT_FAILED)


def _queued_inputs(
    config: PipelineConfig,
    paths: tuple[Path, ...],
    pattern: str,
    recursive: bool,
    ignored: list[dict[str, str]],
    unreadable: list[dict[str, str]],
) -> Any:
    """The files to queue; what is not an input goes to ``ignored`` with the reason, what
    could not be looked at (a folder that cannot be listed) to ``unreadable``."""
    import itertools
    import os

    from prefect_pipeline.pipeline.discovery import Found, given_files, iter_inputs

    files = []
    found = []
    for path in paths:
        absolute = Path(os.path.abspath(path))
        if absolute.is_dir():
            mirror = config.output_dir / absolute.relative_to(absolute.anchor)
            found.append(
                iter_inputs(
                    absolute,
                    mirror,
                    pattern=pattern,
                    recursive=recursive,
                    exclude=[config.output_dir, *config.database.local_files()],
                )
            )
        else:
            files.append(absolute)
    for entry in itertools.chain(*found, given_files(files, config.output_dir)):
        if isinstance(entry, Found):
            yield entry
        else:
            (unreadable if entry.unreadable else ignored).append(
                {"path": entry.path, "reason": entry.reason}
            )


@cli.command("drain-db", short_help="Run the queued inputs, in parallel on Dask.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Take at most N inputs from the queue.",
)
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=1),
    default=DEFAULT_LEASE_SECONDS,
    show_default=True,
    help="A claimed input whose command stops renewing it for this long (it "
    "died) may be taken by another drain-db.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_ATTEMPTS,
    show_default=True,
    help="Attempts per input for errors that a retry may cure.",
)
@click.option(
    "--retry-delay",
    type=click.FloatRange(min=0),
    default=DEFAULT_RETRY_DELAY,
    show_default=True,
    help="Seconds before the first retry; doubles with each attempt.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace the batches already stored for the content of the inputs it runs (after "
    "enqueue --force, say).",
)
@_dask_options
@click.pass_obj
@handle_errors
def drain_db(
    config: PipelineConfig,
    limit: int | None,
    force: bool,
    lease_seconds: float,
    max_attempts: int,
    retry_delay: float,
    workers: int | None,
    threads_per_worker: int,
    workers_after: float,
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
      pipeline enqueue --force notes/ && pipeline drain-db --force
    """
    from prefect_pipeline.pipeline.parallel import run_parallel_from_database
    from prefect_pipeline.pipeline.progress import Progress

    workers = _workers(workers, address)
    _check_cluster(workers, threads_per_worker, address)
    _require_database(config)
    definition = _definition()
    # No check of --output-dir: queued inputs write where enqueue put them. The folders of
    # the first inputs claimed are checked once they are (``run_parallel_from_database``).
    run = functools.partial(
        run_parallel_from_database,
        config,
        definition=definition,
        limit=limit,
        lease_seconds=lease_seconds,
        max_attempts=max_attempts,
        retry_base_seconds=retry_delay,
        force=force,
        workers=workers,
        threads_per_worker=threads_per_worker,
        workers_after_s=workers_after,
        address=address,
        progress=Progress.wanted(config.log_level),
        started_at=_process_start(),
    )
    _report(run, as_json, more=functools.partial(_left_in_queue, config))


def _left_in_queue(config: PipelineConfig, summary: Any) -> tuple[dict[str, Any], list[str]]:
    """What drain-db's summary adds: the failed inputs that wait in the queue (a drain
    runs them again only once they are requeued) and the inputs live commands hold, in
    ``--json`` always; said in lines when the run had nothing to do, which a drain run from
    cron would otherwise report as all well."""
    from prefect_pipeline.database.queue import left_in_queue

    try:
        left = left_in_queue(_store(config))
    except Exception as exc:  # the summary of what was done comes first
        logger.warning("could not count the inputs left in the queue: %s", exc)
        return {"failed_waiting": None, "held_by_others": None}, []
    data = {"failed_waiting": left.failed, "held_by_others": sum(n for _, n, _ in left.held)}
    if summary.total or summary.pending or summary.stopped:
        return data, []  # its own lines say what it did
    lines = []
    if left.failed:
        lines.append(
            f"{left.failed} failed input(s) wait in the queue, not run again until requeued: "
            + _suggested("requeue", "--failed")
        )
    lines.extend(
        f"{count} input(s) held by {who} until {local_time(until)} (its lease, renewed while"
        " it runs): left to it"
        for who, count, until in left.held
    )
    return data, lines


@cli.command(short_help="Show the queue: inputs and batches by status, last errors.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object.")
@click.pass_obj
@handle_errors
def status(config: PipelineConfig, as_json: bool) -> None:
    """Show the queue: inputs and batches by status, records, oldest pending, last errors.

    \b
    Example:
      pipeline status --json
    """
    from prefect_pipeline.database.queue import status as queue_status

    _require_database(config, writes=False)
    report = queue_status(_store(config, read_only=True))
    if as_json:
        click.echo(json.dumps(report))
        return
    inputs, batches = report["inputs"], report["batches"]
    click.echo(
        f"inputs:  {inputs['pending']} pending, {inputs['processing']} processing "
        f"({inputs['stale']} stale: lease expired or command gone), {inputs['done']} done, "
        f"{inputs['failed']} failed"
    )
    click.echo(
        f"batches: {batches['pending']} pending, {batches['finalized']} finalized; "
        f"{report['records']} record(s)"
    )
    if batches["outside_queue"]:
        # run and run-all keep no input row: said, or their batches and records would
        # look unaccounted for beside the inputs' "0 done".
        click.echo(
            f"outside the queue: {batches['outside_queue']} batch(es) stored by run or "
            "run-all (the inputs above are the queue's)"
        )
    if report["oldest_pending"]:
        oldest = report["oldest_pending"]
        click.echo(
            f"oldest pending: #{oldest['id']} {oldest['path']}"
            f" (queued {local_time(oldest['queued_at'])})"
        )
    if report["last_run"]:
        last = report["last_run"]
        shown = last["flow_run_url"] or last["flow_run_id"] or f"run {last['run_id']}"
        click.echo(f"last run: {shown} ({local_time(last['at'])})")
    from prefect_pipeline.pipeline.summary import problem

    for error in report["last_errors"]:
        click.echo(
            f"error: #{error['id']} {error['path']} ({error['status']}, job "
            f"{error['job']}): {problem(error['error'] or '', error['path'])}"
        )


@cli.command(short_help="Put failed, stale or given inputs back to pending.")
@click.argument("ids", metavar="[ID]...", nargs=-1, type=click.IntRange(min=1))
@click.option("--failed", is_flag=True, help="Requeue every failed input.")
@click.option(
    "--stale",
    is_flag=True,
    help="Requeue inputs whose command died: their lease expired, or their command was a "
    "process of this machine that is gone.",
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
    from prefect_pipeline.database.queue import requeue as requeue_inputs

    if not (ids or failed or stale):
        raise click.UsageError("say what to requeue: --failed, --stale or input IDs")
    _require_database(config)
    result = requeue_inputs(
        _store(config),
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


@cli.group(cls=_Group)
def server() -> None:
    """A local Prefect server, with its UI, kept between commands.

    Without PREFECT_API_URL every command starts a temporary Prefect server (seconds of
    start-up, no UI, gone when the command ends). Started once, this one is found by later
    commands and used instead; its UI keeps the history of every run.

    \b
    Examples:
      pipeline server start
      pipeline server status
      pipeline server stop
    """


@server.command("start", short_help="Start the local Prefect server (or find it running).")
@click.option("--port", type=click.IntRange(1, 65535), default=4200, show_default=True)
@handle_errors
def server_start(port: int) -> None:
    """Start the local Prefect server in the background (or find the one running).

    \b
    Example:
      pipeline server start --port 4200
    """
    from prefect_pipeline.pipeline import local_server

    running, started = local_server.start(port)
    verb = "started" if started else "already running"
    line = f"Prefect server {verb} at {running.ui_url} (API {running.api_url})"
    if not started and running.port != port:
        line += f"; --port {port} not used (pipeline server stop, then start, moves it)"
    click.echo(line)
    if not started and not running.healthy():
        raise RunBroken(
            f"the Prefect server at {running.api_url} runs but does not answer "
            "(pipeline server stop, then start, restarts it)"
        )


@server.command("stop")
@handle_errors
def server_stop() -> None:
    """Stop the local Prefect server.

    \b
    Example:
      pipeline server stop
    """
    from prefect_pipeline.pipeline import local_server

    stopped = local_server.stop()
    click.echo(f"stopped the Prefect server at {stopped.ui_url}" if stopped else "no server")


@server.command("status", short_help="Say whether the local Prefect server runs, and where.")
@handle_errors
def server_status() -> None:
    """Say whether the local Prefect server runs, and where (exit 1 when it does not, or
    does not answer).

    \b
    Example:
      pipeline server status
    """
    from prefect_pipeline.pipeline import local_server

    running = local_server.find()
    if running is None:
        click.echo("no server (start one with: pipeline server start)")
        sys.exit(EXIT_FAILED)
    healthy = running.healthy()
    health = "answering" if healthy else "not answering (pipeline server stop, then start)"
    click.echo(f"Prefect server at {running.ui_url} (API {running.api_url}), {health}")
    if not healthy:
        sys.exit(EXIT_FAILED)


@cli.command(short_help="Drain the queue on a schedule, as a Prefect deployment.")
@click.option("--name", default="queue", show_default=True, help="The deployment's name.")
@click.option("--interval", type=click.FloatRange(min=1), help="Seconds between drains.")
@click.option("--cron", metavar="EXPR", help="A cron schedule, e.g. '*/5 * * * *'.")
@click.option("--limit", type=click.IntRange(min=1), help="Take at most N inputs per drain.")
@click.option(
    "--start-from", metavar="JOB", help=f"Job to start from: {_JOBS_HELP}. Default: the first."
)
@click.option(
    "--stop-after", metavar="JOB", help=f"Job to stop after: {_JOBS_HELP}. Default: the last."
)
@click.option("--workers", type=click.IntRange(min=0), help="Dask workers per drain.")
@click.option(
    "--workers-after",
    type=click.FloatRange(min=0),
    default=DEFAULT_WORKERS_AFTER,
    show_default=True,
    metavar="SECONDS",
    help="Start a drain's workers once its writer has waited this long for the jobs "
    "they would take; 0 starts them with the drain.",
)
@click.option("--address", metavar="tcp://HOST:PORT", help="An existing Dask scheduler.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=DEFAULT_MAX_ATTEMPTS,
              show_default=True, help="Attempts per input for errors a retry may cure.")
@click.option("--retry-delay", type=click.FloatRange(min=0), default=DEFAULT_RETRY_DELAY,
              show_default=True, help="Seconds before the first retry; doubles each time.")
@click.option("--lease-seconds", type=click.FloatRange(min=1), default=DEFAULT_LEASE_SECONDS,
              show_default=True, help="How long a claim holds without renewal.")
@click.pass_obj
@handle_errors
def serve(
    config: PipelineConfig,
    name: str,
    interval: float | None,
    cron: str | None,
    limit: int | None,
    start_from: str | None,
    stop_after: str | None,
    workers: int | None,
    workers_after: float,
    address: str | None,
    max_attempts: int,
    retry_delay: float,
    lease_seconds: float,
) -> None:
    """Drain the queue on a schedule, as a Prefect deployment (runs until stopped).

    Serves the flow "drain-db" as the deployment "drain-db/NAME" with an interval or a cron
    schedule; runs can also be triggered from the Prefect UI or with `prefect deployment
    run`, with other parameters (JSON). Each run is a drain-db that ends Failed when inputs
    failed. Needs a Prefect server that outlives it: PREFECT_API_URL, or `pipeline server
    start`.

    \b
    Examples:
      pipeline server start && pipeline serve --interval 60
      pipeline --db-path /data/queue.db serve --name nightly --cron '0 2 * * *' --workers 4
    """
    from prefect_pipeline.pipeline import local_server
    from prefect_pipeline.pipeline.options import ParallelOptions
    from prefect_pipeline.pipeline.server import check_api, configured_api

    if (interval is None) == (cron is None):
        raise click.UsageError("give --interval or --cron (one of them)")
    ParallelOptions(workers=workers, address=address).check()
    _definition().path_range(start_from, stop_after)  # a bad range: refused here, not per run
    _require_database(config)
    # Its runs drain the queue: each checks the output folders of the first inputs it
    # claims (where enqueue put their JSON), not --output-dir.
    # PREFECT_API_URL in the environment or the active Prefect profile, else the local
    # server; the scheduled runs' processes inherit where it is.
    api = configured_api()
    if api is None:
        local = local_server.find()
        if local is None:
            raise RunBroken(
                "pipeline serve needs a Prefect server that outlives it: set "
                "PREFECT_API_URL, or run `pipeline server start`"
            )
        os.environ["PREFECT_API_URL"], os.environ["PREFECT_UI_URL"] = (
            local.api_url,
            local.ui_url,
        )
        api = (local.api_url, "")
    check_api(api[0], where=api[1])
    # Each scheduled run reads where its data is from the environment it inherits (its
    # inputs' JSON goes where enqueue put it: no output folder is passed on).
    if config.db_url is not None:
        os.environ["PIPELINE_DATABASE_URL"] = config.db_url
    else:
        os.environ["PIPELINE_DB_PATH"] = str(config.db_path)
    reference = click.get_current_context().find_root().params.get("definition")
    if reference:
        os.environ["PIPELINE_DEFINITION"] = reference
    from prefect_pipeline.pipeline.deployment import FLOW_NAME
    from prefect_pipeline.pipeline.deployment import serve as serve_deployment

    click.echo(
        f"serving {FLOW_NAME}/{name} on {config.database.display} "
        f"({f'every {interval:g} s' if interval else f'cron {cron}'}); Ctrl-C stops it",
        err=True,
    )
    serve_deployment(
        name,
        interval=interval,
        cron=cron,
        parameters={
            "workers": workers,
            "workers_after": workers_after,
            "limit": limit,
            "start_from": start_from,
            "stop_after": stop_after,
            "max_attempts": max_attempts,
            "retry_delay": retry_delay,
            "lease_seconds": lease_seconds,
            "address": address,
        },
    )


def _store(config: PipelineConfig, *, create: bool = True, read_only: bool = False) -> Any:
    """The configured database's store (created with its schema if missing, unless
    ``create`` is False; for reading only if ``read_only``)."""
    from prefect_pipeline.database.backends import open_store

    return open_store(
        config.database, timeout=config.db_timeout, create=create, read_only=read_only
    )


def _stdout_closed() -> None:
    """Standard output was closed before all was written (``pipeline status | head -1``):
    the reader has what it wanted. Nothing more is written there (Python's last flush would
    fail again), nothing is said, and the exit is a closed pipe's (``EXIT_CLOSED_PIPE``)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main() -> None:
    """Entry point of the ``pipeline`` script."""
    code = 0
    try:
        cli(prog_name="pipeline")
    except BrokenPipeError:  # from a command that ``handle_errors`` does not wrap
        _stdout_closed()
        code = EXIT_CLOSED_PIPE
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    _exit_now(code)


def _exit_now(code: int) -> None:
    """Send Prefect what it still holds, flush our streams, and leave without Python's
    shutdown.

    Everything the command started is already stopped by then (context managers); what
    Python's shutdown would add is waiting: atexit handlers of Dask and Prefect that retry
    what is already gone, and daemon threads that write to stderr while the interpreter
    finalizes ("Fatal Python error: _enter_buffered_busy").
    """
    from prefect_pipeline.compat import flush_prefect

    with contextlib.suppress(Exception):
        flush_prefect(timeout=5)
    # Closed, a SQLite database's last connection moves what its -wal file holds into the
    # file itself and removes the -wal and -shm files: the file alone is then the whole
    # database (to copy, or to read from a folder that is read-only later).
    backends = sys.modules.get("prefect_pipeline.database.backends")
    if backends is not None:
        with contextlib.suppress(Exception):
            backends.close_all()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
