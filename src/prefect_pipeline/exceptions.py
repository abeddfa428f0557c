"""The project's exception types. Library code raises these; only ``cli.py`` turns them
into messages and exit codes."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class InputValidationError(PipelineError):
    """An input is unusable (missing, binary, malformed...); retrying will not help."""

    def __init__(self, input_ref: object, problem: str) -> None:
        self.input_ref = str(input_ref)
        self.problem = problem
        super().__init__(f"{self.input_ref}: {problem}")


class UsageError(PipelineError):
    """The request itself is wrong (unknown job name, impossible job range...)."""


class RunError(PipelineError):
    """The run could not proceed (Prefect server or Dask cluster unavailable...)."""


class ClaimLostError(PipelineError):
    """A queue claim expired and another process took the input; our result is discarded."""
