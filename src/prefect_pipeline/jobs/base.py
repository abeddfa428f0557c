"""``BaseJob``: the template every job follows (validate -> run -> ``JobResult``), and the
vocabulary jobs use to say what they take and produce."""

from __future__ import annotations

import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.exceptions import (
    ClaimLostError,
    ContentError,
    DatabaseUnavailable,
    InputValidationError,
)
from prefect_pipeline.logs import get_logger

if TYPE_CHECKING:
    from peewee import Database

    from prefect_pipeline.database.store import Store

logger = get_logger("jobs")

#: error_kind values
INPUT_ERROR = "input"
UNEXPECTED_ERROR = "unexpected"
CLAIM_LOST = "claim-lost"


class Kind(StrEnum):
    """What a job takes or produces. Runs over many inputs decide from it, never from a
    job's name: which job can start a run over files, what the first job is handed, and
    which files a folder run picks by default."""

    #: The path of an input file. The first job of a folder run that takes files is told
    #: where its output goes: ``{"path": ..., "output_path": ...}``.
    FILE = "file"
    #: A processed document (job A's output), or the path of its JSON file.
    DOCUMENT = "document"
    #: The id of a stored batch.
    BATCH = "batch"
    #: Whatever the previous job produced.
    ANY = "any"

    @property
    def from_path(self) -> bool:
        """Whether a file path found on disk (or queued) can be this kind of input."""
        return self is not Kind.BATCH


@dataclass(frozen=True)
class Facts:
    """What jobs learned about an input that the ledger records once its chain is done.

    Any job may report any of them; a later job's value wins over an earlier one's.
    """

    sha256: str | None = None
    batch_id: int | None = None
    records_written: int | None = None
    #: The content was already stored: nothing was written.
    unchanged: bool | None = None
    #: The size and modification time of the version of the input file that was read (it
    #: may have changed since it was found): what the next run compares to skip it.
    size: int | None = None
    mtime_ns: int | None = None

    def merge(self, newer: Facts | None) -> Facts:
        # Runs for every input and job, twice: a new Facts (a frozen dataclass's __init__,
        # 1.2 us) only when the newer facts change something.
        if newer is None or newer is self or newer is NO_FACTS:
            return self
        if self is NO_FACTS:
            return newer
        if (
            (newer.sha256 is None or newer.sha256 == self.sha256)
            and (newer.batch_id is None or newer.batch_id == self.batch_id)
            and (newer.records_written is None or newer.records_written == self.records_written)
            and (newer.unchanged is None or newer.unchanged == self.unchanged)
            and (newer.size is None or newer.size == self.size)
            and (newer.mtime_ns is None or newer.mtime_ns == self.mtime_ns)
        ):
            return self
        return Facts(
            sha256=newer.sha256 if newer.sha256 is not None else self.sha256,
            batch_id=newer.batch_id if newer.batch_id is not None else self.batch_id,
            records_written=(
                newer.records_written if newer.records_written is not None else self.records_written
            ),
            unchanged=newer.unchanged if newer.unchanged is not None else self.unchanged,
            size=newer.size if newer.size is not None else self.size,
            mtime_ns=newer.mtime_ns if newer.mtime_ns is not None else self.mtime_ns,
        )


NO_FACTS = Facts()


@dataclass
class Outcome:
    """What ``single_job`` may return when it has more to say than its output."""

    output: Any
    note: str | None = None
    #: Free-form figures for people and ``--json`` (e.g. the records written).
    details: dict[str, Any] = field(default_factory=dict)
    #: What the ledger should record of the input (see ``Facts``).
    facts: Facts | None = None


@dataclass
class JobResult:
    """The result of one job on one input. Never raises; failures are data."""

    job_name: str
    success: bool
    output: Any = None
    error: str | None = None
    #: ``"input"`` (bad input, retrying will not help), ``"unexpected"`` (a bug, an I/O
    #: error...) or ``"claim-lost"`` (another command took the input). None on success.
    error_kind: str | None = None
    duration: float = 0.0
    note: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    facts: Facts | None = None
    #: One line saying what the job did, for people (``BaseJob.describe``).
    summary: str = ""
    #: The formatted traceback of an unexpected error (input errors have none).
    traceback: str | None = None
    #: An input error of its own content (``ContentError``): the same bytes fail the same
    #: way, and a run skips the file while it is unchanged.
    rejected: bool = False
    #: With ``rejected``, the --max-line-bytes the content was too large for, when only
    #: that limit refused it (a run with a larger one reads the file again).
    rejected_under: int | None = None


#: Called inside the job's transaction when it succeeds (the ledger's status change).
CommitHook = Callable[[Outcome], None]
#: Called inside the transaction of a group's writes with the positions (in the inputs
#: given) of the inputs that succeeded and their outcomes.
GroupCommitHook = Callable[[Sequence[int], Sequence[Outcome]], None]


class BaseJob(ABC):
    """A job: ``validate_input()`` checks and normalizes, ``single_job()`` does the work.

    Subclasses set ``name``, say what they take and produce (``Kind``), and, if they write
    to the database, ``uses_database = True``: such jobs run inside a write transaction (a
    savepoint when the caller already holds one), so their writes commit whole or not at
    all, together with the caller's ``on_commit`` hook (the input ledger's status change).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    uses_database: ClassVar[bool] = False
    #: Whether it writes files under ``--output-dir`` (job A's JSON): a command that runs
    #: it refuses an output folder it cannot write in before anything starts.
    writes_output: ClassVar[bool] = False
    takes: ClassVar[Kind] = Kind.ANY
    produces: ClassVar[Kind] = Kind.ANY
    #: File names a folder run picks when this job comes first and no pattern is given.
    input_pattern: ClassVar[str] = "*"

    def __init__(self, config: PipelineConfig, *, force: bool = False) -> None:
        self.config = config
        self.force = force
        #: The name this job has in its pipeline (a definition may name a class's job
        #: otherwise; ``JobSpec.make`` sets it).
        self.job_name = self.name
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        """The configured database's store, opened in this process on first use."""
        if self._store is None:
            # Imported here: a job that never touches the database (or a run refused
            # before it starts) does not load Peewee and its drivers.
            from prefect_pipeline.database.backends import open_store

            self._store = open_store(self.config.database, timeout=self.config.db_timeout)
        return self._store

    @property
    def db(self) -> Database:
        """The store's Peewee database, for a job of your own that queries through Peewee
        (``with self.store.bind_models(): ...``) or runs SQL on ``db.connection()``."""
        return self.store.db

    @abstractmethod
    def validate_input(self, input_data: Any) -> Any:
        """Check ``input_data``; return it normalized, or raise ``InputValidationError``."""

    @abstractmethod
    def single_job(self, validated: Any) -> Any:
        """Do the work on validated input; return the output (or an ``Outcome``)."""

    def group_job(self, validated: Sequence[Any]) -> Sequence[Any]:
        """Optional: ``single_job`` on many validated inputs at once; one output (or
        ``Outcome``) per input, in order.

        A database job implements it to write a group of inputs with a few set-based
        statements instead of each input's own (a small input's writes cost less than the
        statements around them). It runs inside one transaction (a savepoint of the
        caller's): if it raises, the group's writes roll back and each input runs alone
        through ``execute`` (validated again, then ``single_job``), so an input's failure
        stays its own. Only for work that a rollback undoes whole. Not implemented (the
        default), ``execute_all`` runs the inputs one by one.
        """
        raise NotImplementedError

    @property
    def runs_groups(self) -> bool:
        """Whether this job implements ``group_job``."""
        return type(self).group_job is not BaseJob.group_job

    def check(self, input_data: Any) -> JobResult | None:
        """The failed result of ``validate_input`` and ``check_content`` on ``input_data``
        (None when both pass): a run over one input can be refused before anything
        starts."""
        started = time.perf_counter()
        try:
            self.check_content(self.validate_input(input_data))
        except InputValidationError as exc:
            return self._rejected(exc, started)
        return None

    def check_content(self, validated: Any) -> None:
        """Before a run over this one input starts (``check``): raise an
        ``InputValidationError`` for what a quick look at the validated input shows that
        the job would fail on anyway (job A: a binary file). Never called for the inputs
        of a run over many, where a second look at each would cost more than it saves.
        The default looks at nothing."""
        return None

    def describe(self, outcome: Outcome) -> str:
        """One line for people saying what the job did (the CLI prints it)."""
        return f"output {str(outcome.output)[:80]}"

    def execute(self, input_data: Any, *, on_commit: CommitHook | None = None) -> JobResult:
        """Validate, run and wrap the outcome in a ``JobResult``; never raises for an input."""
        started = time.perf_counter()
        try:
            validated = self.validate_input(input_data)
            if self.uses_database:
                with self.store.transaction():
                    outcome = _as_outcome(self.single_job(validated))
                    if on_commit is not None:
                        on_commit(outcome)
            else:
                outcome = _as_outcome(self.single_job(validated))
                if on_commit is not None:
                    on_commit(outcome)
        except InputValidationError as exc:
            logger.debug("job %s: %s", self.job_name, exc)
            return self._rejected(exc, started)
        except DatabaseUnavailable:
            # Not the input's fault: the run cannot go on (the command says why, once).
            raise
        except ClaimLostError as exc:
            # Not a bug: the input's lease ran out and another command has it now.
            return self._failed(f"{_describe(input_data)}: {exc}", CLAIM_LOST, started)
        except Exception as exc:  # a bug or an environment failure: keep the traceback
            self._raise_if_database_failure(exc)
            return self._unexpected(exc, input_data, started)
        return JobResult(
            self.job_name,
            True,
            output=outcome.output,
            duration=time.perf_counter() - started,
            note=outcome.note,
            details=outcome.details,
            facts=outcome.facts,
            summary=self.describe(outcome),
        )

    def execute_all(
        self,
        inputs: Sequence[Any],
        *,
        on_commit: GroupCommitHook | None = None,
    ) -> list[JobResult]:
        """``execute`` on each input, in order; ``on_commit`` is told of the inputs that
        succeeded inside the transaction of their writes.

        A job with ``group_job`` validates each input, then runs the valid ones together in
        one savepoint; when the group fails (one input's data breaks a statement, a claim
        was lost), it rolls back and each input runs alone, with its own savepoint and its
        own result.
        """
        if not (self.runs_groups and self.uses_database and len(inputs) > 1):
            return [
                self.execute(data, on_commit=_one(on_commit, i)) for i, data in enumerate(inputs)
            ]
        started = time.perf_counter()
        results: list[JobResult | None] = [None] * len(inputs)
        positions: list[int] = []
        validated: list[Any] = []
        for i, data in enumerate(inputs):
            try:
                validated.append(self.validate_input(data))
            except InputValidationError as exc:
                logger.debug("job %s: %s", self.job_name, exc)
                results[i] = self._rejected(exc, started)
            except DatabaseUnavailable:
                raise
            except Exception as exc:  # a bug or an environment failure, as ``execute`` has it
                # Failed here, not run again: a second try that worked would write rows that
                # nobody marks done.
                results[i] = self._unexpected(exc, data, started)
            else:
                positions.append(i)
        if positions:
            try:
                with self.store.transaction():
                    outcomes = [_as_outcome(value) for value in self.group_job(validated)]
                    if len(outcomes) != len(positions):
                        raise RuntimeError(
                            f"job {self.job_name}: group_job returned {len(outcomes)} "
                            f"output(s) for {len(positions)} input(s)"
                        )
                    if on_commit is not None:
                        on_commit(positions, outcomes)
            except DatabaseUnavailable:
                raise
            except Exception as exc:
                self._raise_if_database_failure(exc)
                logger.debug(
                    "job %s: a group of %d input(s) failed together (%s); each runs alone",
                    self.job_name,
                    len(positions),
                    exc,
                )
                for i in positions:
                    results[i] = self.execute(inputs[i], on_commit=_one(on_commit, i))
            else:
                # Each input's share of the group's time.
                share = (time.perf_counter() - started) / len(inputs)
                for i, outcome in zip(positions, outcomes, strict=True):
                    results[i] = JobResult(
                        self.job_name,
                        True,
                        output=outcome.output,
                        duration=share,
                        note=outcome.note,
                        details=outcome.details,
                        facts=outcome.facts,
                        summary=self.describe(outcome),
                    )
        done = [result for result in results if result is not None]
        assert len(done) == len(inputs)
        return done

    def _raise_if_database_failure(self, exc: Exception) -> None:
        """Raise ``DatabaseUnavailable`` (or ``DatabaseConflict``) when ``exc`` says the
        database cannot serve, rather than that a statement failed on its data. The store's
        own statements raise these already; a job of your own that queries through Peewee
        meets the database's errors untranslated."""
        store = self._store
        if store is not None and isinstance(exc, store.unavailable_errors):
            meaning = store.meaning(exc)
            if meaning is not None:
                raise meaning from exc

    def _unexpected(self, exc: Exception, input_data: Any, started: float) -> JobResult:
        """The result of an unexpected error (call in its ``except`` block), logged with its
        traceback; an error of the system's (a folder not writable, a full disk) in one
        line, its traceback for --log-level DEBUG (the run's line about the failed input
        says the rest)."""
        if isinstance(exc, OSError) and exc.strerror:
            logger.debug("job %s failed on %s", self.job_name, _describe(input_data),
                         exc_info=True)  # fmt: skip
            # A rename's target (filename2), not the temporary file it was renaming.
            path = exc.filename2 or exc.filename
            where = f": {path}" if path else ""
            error = f"{_describe(input_data)}: {exc.strerror.lower()}{where}"
        else:
            logger.exception("job %s failed on %s", self.job_name, _describe(input_data))
            error = f"{_describe(input_data)}: {type(exc).__name__}: {exc}"
        result = self._failed(error, UNEXPECTED_ERROR, started)
        result.traceback = traceback.format_exc()
        return result

    def _rejected(self, exc: InputValidationError, started: float) -> JobResult:
        result = self._failed(str(exc), INPUT_ERROR, started)
        if isinstance(exc, ContentError):
            result.rejected, result.rejected_under = True, exc.max_line_bytes
        return result

    def _failed(self, error: str, kind: str, started: float) -> JobResult:
        return JobResult(
            self.job_name,
            False,
            error=error,
            error_kind=kind,
            duration=time.perf_counter() - started,
        )


def _one(on_commit: GroupCommitHook | None, position: int) -> CommitHook | None:
    """``on_commit`` told of one input, at ``position``."""
    if on_commit is None:
        return None
    return lambda outcome: on_commit([position], [outcome])


def _as_outcome(value: Any) -> Outcome:
    return value if isinstance(value, Outcome) else Outcome(value)


def _describe(input_data: Any) -> str:
    if isinstance(input_data, Mapping):
        for key in ("path", "source_path"):
            if key in input_data:
                return str(input_data[key])
        return "<document>"
    return str(input_data)
