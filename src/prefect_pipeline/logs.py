"""Logging for the pipeline, Prefect, its server and Dask from one level.

The level is the terminal's: what the user sees. Prefect's own API is another audience:
its handler gets Prefect's records from INFO up whatever the terminal shows, so a run
with ``--log-level WARNING`` or ``OFF`` still leaves its logs (and every failed input) in
the Prefect UI. On the terminal, Prefect's per-flow-run and per-task-run lines show only
at DEBUG: they report run states, which the pipeline reports itself (a line per failed
input, the command's error for a broken run), a run over many inputs makes a few per
group, and a group with failed inputs is a Failed task run whose state Prefect prints
whole; they are all in the UI.

Prefect, its temporary server and Dask worker processes read their levels from the
environment when they start, so the levels are exported as environment variables as
well as applied to this process's loggers; Prefect's console handler in every process of
the run is ``prefect_console.TerminalConsoleHandler``, which applies ``shown_on_terminal``.
This is the one place that touches global logging state: ``configure_logging`` is for the
``pipeline`` command, which owns its process; ``log_level_scope`` is for library callers
(``PipelineRunner``), whose logging is theirs: it applies a level for one run and gives
everything back afterwards.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "OFF")

LOGGER_NAME = "prefect_pipeline"

# Loggers that print on their own and must follow --log-level ("prefect" is handled apart:
# its API handler needs INFO whatever the terminal shows).
_THIRD_PARTY = ("distributed", "dask", "uvicorn", "httpx", "asyncio", "peewee")

# Prefect's loggers for the lines of one flow run or one task run.
_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")

# Prefect's task runners: their INFO lines (connecting to the Dask cluster, its dashboard)
# repeat what the pipeline said when it started the cluster, in another format.
_TASK_RUNNER_LOGGER = "prefect.task_runner"

# Prefect's engine, for a flow run a Ctrl-C or SIGTERM stopped before its own logger
# existed: "Crash detected! Execution was aborted by an interrupt signal." at ERROR, and the
# Crashed state it ends in.
_ENGINE_LOGGER = "prefect.engine"
#: Its state messages for a KeyboardInterrupt (SIGINT) and a TerminationSignal (SIGTERM).
INTERRUPTED_STATES = (
    "Execution was aborted by an interrupt signal.",
    "Execution was aborted by a termination signal.",
)

# Prefect logs the end of a task run in any state but Completed at ERROR ("Finished in
# state ..."). A job's task run ends Cancelled when its run stopped with the group on a
# thread of the command, and RolledBack when the database undid its write to end a
# deadlock (the writer then writes the group again): neither is an error.
_UNDONE_ENDINGS = ("Finished in state Cancelled(", "Finished in state RolledBack(")
_TASK_RUNS_LOGGER = "prefect.task_runs"
_FLOW_RUNS_LOGGER = "prefect.flow_runs"
# Nor is a run a Ctrl-C or SIGTERM stopped ("Crash detected! Execution was aborted by an
# interrupt signal.", then "Finished in state Crashed(...)"): the user stopped it, and the
# pipeline marks its flow run Cancelled (``flows.end_interrupted``).
_CRASH_DETECTED = "Crash detected! "

#: ``extra`` for a record sent to Prefect's API only: the terminal already shows the
#: project's own line for the same event (see ``log_to_flow_run``).
NOT_ON_TERMINAL = {"pipeline_terminal": False}

#: Prefect's console handler in the run's processes (see prefect_console.py).
_CONSOLE_HANDLER = "prefect_pipeline.prefect_console.TerminalConsoleHandler"

# The terminal's level in this process: set by configure_logging (or log_level_scope),
# inherited by child processes through PIPELINE_LOG_LEVEL.
_terminal_level: str = os.environ.get("PIPELINE_LOG_LEVEL", "INFO").upper()


def get_logger(name: str | None = None) -> logging.Logger:
    """The project's logger, or a child of it."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def _prefect_level(level: str) -> str:
    """The level of Prefect's loggers: INFO at least, for its API handler (the terminal's
    level is applied by the console handler's filter)."""
    return "DEBUG" if level == "DEBUG" else "INFO"


def _terminal_threshold(level: str) -> int:
    return logging.CRITICAL + 1 if level == "OFF" else logging.getLevelName(level)


def terminal_level() -> str:
    """The terminal's level in this process (``OFF`` prints nothing)."""
    return _terminal_level


# Prefect's lines about a run an interrupt stopped, exactly (a real error that merely
# mentions a signal stays one): its crash report, and a task run's end.
_INTERRUPT_LINES = frozenset(
    line
    for state in INTERRUPTED_STATES
    for line in (f"{_CRASH_DETECTED}{state}", f"Finished in state Crashed({state!r})")
)


def _interrupted(message: str) -> bool:
    return message in _INTERRUPT_LINES


def shown_on_terminal(record: logging.LogRecord, level: str | None = None) -> bool:
    """Whether ``record`` belongs on the terminal at ``level`` (default: this process's)."""
    level = (level or _terminal_level).upper()
    if record.levelno < _terminal_threshold(level):
        return False
    if getattr(record, "pipeline_terminal", True) is False:
        return False
    if record.levelno < logging.WARNING and record.name.startswith(_TASK_RUNNER_LOGGER):
        return level == "DEBUG"
    if record.name == _ENGINE_LOGGER and _interrupted(record.getMessage()):
        return level == "DEBUG"  # the command says "Interrupted." itself, with its summary
    # One flow run's or task run's lines: run states, in Prefect's UI (see the docstring).
    return level == "DEBUG" or not record.name.startswith(_RUN_LOGGERS)


class _UndoneRunsAsWarnings(logging.Filter):
    """Prefect's ERROR line for a job's task run that was undone, not failed, and for a
    run an interrupt stopped, as a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.ERROR:
            return True
        message = record.getMessage()
        if _interrupted(message):
            if message.startswith(_CRASH_DETECTED):
                # "Crash detected!" says the run broke; the user stopped it.
                cause = message[len(_CRASH_DETECTED) :]
                record.msg, record.args = f"Interrupted: {cause[:1].lower()}{cause[1:]}", ()
            undone = True
        else:
            undone = str(getattr(record, "task_name", "")).startswith(
                "job-"
            ) and message.startswith(_UNDONE_ENDINGS)
        if undone:
            # On the logger, before any handler: the API's and the terminal's alike.
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_UNDONE_AS_WARNINGS = _UndoneRunsAsWarnings()


def undone_runs_as_warnings() -> None:
    """Log the end of a job's task run that was cancelled or rolled back, and the crash
    Prefect reports for a run an interrupt stopped, as warnings, not as Prefect's errors,
    in this process (idempotent: the filter is one object)."""
    for name in (_TASK_RUNS_LOGGER, _FLOW_RUNS_LOGGER):
        logging.getLogger(name).addFilter(_UNDONE_AS_WARNINGS)


def _not_a_cancelled_instruction(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith("Async instruction for ") and "CancelledError" in message)


def quiet_worker_close() -> None:
    """Drop, in a Dask worker's process, distributed's warning "Async instruction for
    <Task ...> ended with CancelledError": a task's execution cut short as its worker
    closes, which happens only when the command stops its cluster in the middle of a run
    (an interrupt, a Cancel, an error the command reports itself). Idempotent."""
    logging.getLogger("distributed.worker.state_machine").addFilter(_not_a_cancelled_instruction)


class TerminalFilter(logging.Filter):
    """``shown_on_terminal`` as a filter, for handlers that print (Prefect's console
    handler); ``level`` None follows this process's terminal level."""

    def __init__(self, level: str | None = None) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return shown_on_terminal(record, self.level)


def _dask_level(level: str) -> str:
    # Dask prints a dozen lines per worker at INFO when a cluster starts: it follows the
    # user's level from WARNING up, and below that only for DEBUG.
    if level == "OFF":
        return "CRITICAL"
    if level == "DEBUG":
        return "DEBUG"
    return level if level in ("ERROR", "CRITICAL") else "WARNING"


def environment_for(level: str) -> dict[str, str]:
    """Environment variables that make Prefect, its server and Dask log at ``level``."""
    level = level.upper()
    prefect, dask = _prefect_level(level), _dask_level(level)
    env = {
        "PIPELINE_LOG_LEVEL": level,
        "PREFECT_LOGGING_LEVEL": prefect,
        "PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS": _CONSOLE_HANDLER,
        "PREFECT_LOGGING_ROOT_LEVEL": dask,
        "PREFECT_SERVER_LOGGING_LEVEL": dask,
        "PREFECT_INTERNAL_LOGGING_LEVEL": dask,
        "PREFECT_LOGGING_LOG_PRINTS": "false",
        # The server otherwise tries to send telemetry and logs errors when offline.
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DASK_LOGGING__DISTRIBUTED": dask.lower(),
        # Dask workers sample their own stacks every 10 ms for the dashboard's profile
        # page; a batch run pays for it in CPU and never looks at it.
        "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
    }
    if level == "OFF":
        # Prefect prints a notice about its usage statistics on its first import at a
        # terminal; OFF prints nothing, and that notice would be the one line.
        env["DO_NOT_TRACK"] = "1"
    return env


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler that writes to ``sys.stderr`` as it is when a record is emitted, not as it
    was when the handler was made (a test runner or a display may have replaced it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging(level: str = "INFO") -> None:
    """Apply ``level`` to this process and export it for child processes."""
    global _terminal_level
    level = level.upper()
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    os.environ.update(environment_for(level))
    _terminal_level = level

    ours = get_logger()
    for old in list(ours.handlers):
        if getattr(old, "_pipeline_handler", False):
            ours.removeHandler(old)
    handler: logging.Handler
    if level == "OFF":
        ours.setLevel(logging.CRITICAL + 1)
        handler = logging.NullHandler()
    else:
        handler = _StderrHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
        )
        ours.setLevel(level)
    setattr(handler, "_pipeline_handler", True)  # noqa: B010 - marks the handler as ours
    ours.addHandler(handler)
    ours.propagate = False

    for name, value in _third_party_levels(level).items():
        logging.getLogger(name).setLevel(value)
    prefect = logging.getLogger("prefect")
    prefect.setLevel(_prefect_level(level))
    # Prefect's records that reach no handler (before Prefect configured its logging) must
    # not fall to Python's last-resort handler, which prints warnings whatever the level.
    if not any(isinstance(h, logging.NullHandler) for h in prefect.handlers):
        prefect.addHandler(logging.NullHandler())
    # Prefect configured its logging before this (it was imported first): its console
    # handlers get the terminal's rules here; otherwise they are made with them.
    for console in _prefect_consoles():
        if not any(isinstance(f, TerminalFilter) for f in console.filters):
            console.addFilter(TerminalFilter())


def silence_other_output() -> None:
    """``--log-level OFF`` for a whole process tree: what the command's children write to
    the standard error they inherit (a Dask worker killed by a terminal's Ctrl-C while it
    starts prints a traceback, before it could be told to ignore the signal) goes nowhere,
    while this process's own lines (``sys.stderr``: the result's error line) still reach
    the terminal. Only for the real standard error of a command's process (not a test's
    captured one)."""
    import io

    try:
        if sys.stderr.fileno() != 2:
            return
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return
    sys.stderr.flush()
    own = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(own, "w", buffering=1, encoding=sys.stderr.encoding)


def _prefect_consoles() -> list[logging.Handler]:
    """Prefect's console handlers in this process (its logging.yml names them "console")."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in ("uvicorn", "fastapi"))]
    return [h for lg in loggers for h in lg.handlers if h.get_name() == "console"]


def _third_party_levels(level: str) -> dict[str, int]:
    """The level of each library logger that prints on its own, for the user's ``level``."""
    if level == "OFF":
        return dict.fromkeys(_THIRD_PARTY, logging.CRITICAL + 1)
    return {name: logging.getLevelName(_dask_level(level)) for name in _THIRD_PARTY}


def log_to_flow_run(level: int, message: str, *args: object) -> bool:
    """Log to the current Prefect flow run's logger, so that the line is in the Prefect UI
    whatever the terminal's level; not printed (the caller logs its own line for the
    terminal). False when there is no flow run here (a job run outside any flow)."""
    from prefect.context import FlowRunContext
    from prefect.logging.loggers import flow_run_logger

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return False
    flow_run_logger(context.flow_run, context.flow).log(
        level, message, *args, extra=NOT_ON_TERMINAL
    )
    return True


@contextmanager
def log_level_scope(level: str) -> Iterator[None]:
    """Apply ``level`` to the pipeline's, Prefect's and Dask's loggers and to the child
    processes started in the block, then restore the caller's levels and environment.

    Adds no handler: where the records go is the caller's choice (Python's last-resort
    handler prints warnings and errors to stderr when the caller chose nothing).
    """
    global _terminal_level
    level = level.upper()
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    levels = _third_party_levels(level)
    levels[LOGGER_NAME] = logging.CRITICAL + 1 if level == "OFF" else logging.getLevelName(level)
    levels["prefect"] = logging.getLevelName(_prefect_level(level))
    saved_levels = {name: logging.getLogger(name).level for name in levels}
    exported = environment_for(level)
    saved_env = {name: os.environ.get(name) for name in exported}
    saved_terminal = _terminal_level
    os.environ.update(exported)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)
    # Prefect's loggers pass INFO on to its API: its console handlers get the terminal's
    # rules for the block, so that the caller's terminal shows only ``level``.
    console_filter = TerminalFilter(level)
    consoles = _prefect_consoles()
    for console in consoles:
        console.addFilter(console_filter)
    _terminal_level = level
    try:
        yield
    finally:
        _terminal_level = saved_terminal
        for console in consoles:
            console.removeFilter(console_filter)
        for name, saved in saved_levels.items():
            logging.getLogger(name).setLevel(saved)
        for name, previous in saved_env.items():
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous
