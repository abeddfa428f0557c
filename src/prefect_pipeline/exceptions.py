"""The project's exception types. Library code raises these; only ``cli.py`` turns them
into messages and exit codes."""

from __future__ import annotations

from typing import Any


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class InputValidationError(PipelineError):
    """An input is unusable (missing, binary, malformed...); retrying will not help."""

    def __init__(self, input_ref: object, problem: str) -> None:
        self.input_ref = str(input_ref)
        self.problem = problem
        super().__init__(f"{self.input_ref}: {problem}")


class ContentError(InputValidationError):
    """An input whose own content is unusable (binary, not UTF-8, a line too long, JSON that
    is malformed or not a document): the same bytes fail the same way, so a run skips the
    file while it is unchanged. Not a file that could not be read (its permissions, its
    absence), which a later run may find readable.

    ``max_line_bytes``: the limit (--max-line-bytes) when the content failed only for being
    larger than it; a run with a larger limit reads the file again."""

    def __init__(
        self, input_ref: object, problem: str, *, max_line_bytes: int | None = None
    ) -> None:
        super().__init__(input_ref, problem)
        self.max_line_bytes = max_line_bytes


class UsageError(PipelineError):
    """The request itself is wrong (unknown job name, impossible job range...)."""


class OutputFolderError(PipelineError):
    """The folder job A would write its JSON files in cannot take them (a file, under a
    file, not writable): found before a run starts, which would fail every input with it."""


class RunError(PipelineError):
    """The run could not proceed (Prefect server or Dask cluster unavailable...)."""


class DatabaseUnavailable(RunError):
    """The database cannot serve (unreachable, full, locked too long, gone mid-run); the
    message names it (never with a password) and the cause."""


class DatabaseConflict(DatabaseUnavailable):
    """The database rolled a transaction back to end a deadlock or a serialization conflict
    with another command's transaction: the same transaction, run again, can succeed."""


class DatabaseMismatch(PipelineError):
    """The database holds tables named like the pipeline's that are not its own (or of a
    newer version): refused before anything in it changes."""


class MissingDatabase(PipelineError):
    """A command that only reads was pointed at a database without the pipeline's tables
    (a mistyped location must not look like an empty queue)."""


class ClaimLostError(PipelineError):
    """A queue claim expired and another process took the input; our result is discarded."""


class Interrupted(KeyboardInterrupt):
    """A run stopped before its end: Ctrl-C or SIGTERM (``how == "interrupted"``), or a
    Cancel in Prefect (``how == "cancelled"``). ``summary`` holds what it did: a run over
    many inputs' ``RunSummary`` (its claims were given back), a single-input run's
    ``PipelineResult`` of the jobs that ended. A ``KeyboardInterrupt``, so that code that stops
    on Ctrl-C still does. ``how == "after its end"``: the run had ended (``summary`` is its
    result, ``summary.stopped`` None), the signal came while its cluster and server
    stopped."""

    def __init__(self, summary: Any, how: str = "interrupted") -> None:
        super().__init__(how)
        self.summary = summary
        self.how = how

