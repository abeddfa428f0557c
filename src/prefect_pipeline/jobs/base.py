"""``BaseJob``: the template every job follows (validate -> run -> ``JobResult``)."""

from __future__ import annotations

import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from peewee import SqliteDatabase

from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.database.connection import get_database
from prefect_pipeline.exceptions import InputValidationError
from prefect_pipeline.logs import get_logger

logger = get_logger("jobs")

#: error_kind values
INPUT_ERROR = "input"
UNEXPECTED_ERROR = "unexpected"


@dataclass
class Outcome:
    """What ``single_job`` may return when it has more to say than its output."""

    output: Any
    note: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobResult:
    """The result of one job on one input. Never raises; failures are data."""

    job_name: str
    success: bool
    output: Any = None
    error: str | None = None
    #: ``"input"`` (bad input, retrying will not help) or ``"unexpected"`` (a bug, an I/O
    #: error, a lost claim...). None on success.
    error_kind: str | None = None
    duration: float = 0.0
    note: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    #: The formatted traceback of an unexpected error (input errors have none).
    traceback: str | None = None


CommitHook = Callable[[Outcome], None]


class BaseJob(ABC):
    """A job: ``validate_input()`` checks and normalizes, ``single_job()`` does the work.

    Subclasses set ``name`` and, if they write to the database, ``uses_database = True``:
    such jobs run inside one ``IMMEDIATE`` transaction (a savepoint when the caller already
    holds one), so their writes commit whole or not at all, together with the caller's
    ``on_commit`` hook (the input ledger's status change).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    uses_database: ClassVar[bool] = False

    def __init__(self, config: PipelineConfig, *, force: bool = False) -> None:
        self.config = config
        self.force = force

    @property
    def db(self) -> SqliteDatabase:
        """The database of ``config.db_path``, opened in this process on first use."""
        return get_database(self.config.db_path, self.config.db_timeout)

    @abstractmethod
    def validate_input(self, input_data: Any) -> Any:
        """Check ``input_data``; return it normalized, or raise ``InputValidationError``."""

    @abstractmethod
    def single_job(self, validated: Any) -> Any:
        """Do the work on validated input; return the output (or an ``Outcome``)."""

    def execute(self, input_data: Any, *, on_commit: CommitHook | None = None) -> JobResult:
        """Validate, run and wrap the outcome in a ``JobResult``; never raises for an input."""
        started = time.perf_counter()
        try:
            validated = self.validate_input(input_data)
            if self.uses_database:
                with _atomic(self.db):
                    outcome = _as_outcome(self.single_job(validated))
                    if on_commit is not None:
                        on_commit(outcome)
            else:
                outcome = _as_outcome(self.single_job(validated))
                if on_commit is not None:
                    on_commit(outcome)
        except InputValidationError as exc:
            logger.debug("job %s: %s", self.name, exc)
            return JobResult(
                self.name,
                False,
                error=str(exc),
                error_kind=INPUT_ERROR,
                duration=time.perf_counter() - started,
            )
        except Exception as exc:  # a bug or an environment failure: keep the traceback
            logger.exception("job %s failed on %s", self.name, _describe(input_data))
            return JobResult(
                self.name,
                False,
                error=f"{_describe(input_data)}: {type(exc).__name__}: {exc}",
                error_kind=UNEXPECTED_ERROR,
                duration=time.perf_counter() - started,
                traceback=traceback.format_exc(),
            )
        return JobResult(
            self.name,
            True,
            output=outcome.output,
            duration=time.perf_counter() - started,
            note=outcome.note,
            details=outcome.details,
        )


@contextmanager
def _atomic(db: SqliteDatabase) -> Iterator[None]:
    """``db.atomic("IMMEDIATE")``, with a leaner savepoint when a transaction is open.

    The parallel writer runs every job of a group inside one transaction, so each input
    gets a savepoint; Peewee's (a uuid name, its own bookkeeping) cost more than the job's
    own statements on small files. SQLite matches a savepoint name to the latest one, so a
    fixed name nests.
    """
    if not db.in_transaction():
        with db.atomic("IMMEDIATE"):
            yield
        return
    connection = db.connection()
    connection.execute("SAVEPOINT pipeline_job")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK TO SAVEPOINT pipeline_job")
        connection.execute("RELEASE SAVEPOINT pipeline_job")
        raise
    connection.execute("RELEASE SAVEPOINT pipeline_job")


def _as_outcome(value: Any) -> Outcome:
    return value if isinstance(value, Outcome) else Outcome(value)


def _describe(input_data: Any) -> str:
    if isinstance(input_data, Mapping):
        for key in ("path", "source_path"):
            if key in input_data:
                return str(input_data[key])
        return "<document>"
    return str(input_data)
