"""Prefect tasks made from job classes: the only place jobs meet Prefect.

A task runs one job over a *group* of inputs: Prefect costs milliseconds per task run and a
small file costs microseconds of work, so orchestration is paid per group while each input
keeps its own ``JobResult`` (and, in runs over many inputs, its own row in the ledger).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefect_pipeline.compat import plain_http_clients
from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.exceptions import DatabaseConflict
from prefect_pipeline.interrupts import Abandoned
from prefect_pipeline.jobs.base import NO_FACTS, Facts, JobResult, Outcome
from prefect_pipeline.logs import undone_runs_as_warnings
from prefect_pipeline.pipeline.definition import JobSpec

if TYPE_CHECKING:
    from prefect import Task

# Every process that runs a job's task run imports this module first (a Dask worker, an
# existing cluster's too, when it unpickles the task): its Cancelled and RolledBack ends, and
# the crash Prefect reports for an interrupt, are warnings there, where Prefect logs them.
undone_runs_as_warnings()


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One input on its way through the chain: ``data`` is the current job's input."""

    data: Any
    #: The input's row in ``pipeline_inputs`` (runs over many inputs; the run's ledger holds
    #: the claim token); None for single-input runs, which keep no ledger.
    input_id: int | None = None
    path: str | None = None
    attempts: int = 0
    #: What earlier jobs learned about the input, for the ledger.
    facts: Facts = NO_FACTS

    def advance(self, data: Any, facts: Facts | None = None) -> WorkItem:
        """The item as the next job's input."""
        # Not dataclasses.replace, which costs several times more: this runs for every
        # input and job.
        merged = self.facts.merge(facts) if facts is not None else self.facts
        return WorkItem(data, self.input_id, self.path, self.attempts, merged)


class Group:
    """The inputs of one task run, opaque to Prefect.

    Prefect walks task parameters looking for futures to resolve, and Dask's task runner does
    it again on each worker; a group's documents hold thousands of records, so the walk would
    cost more than the work. (``prefect.utilities.annotations.quote`` is not unwrapped on
    Dask workers.)
    """

    __slots__ = ("_token", "items", "label")

    def __init__(self, items: Sequence[WorkItem]) -> None:
        self.items = list(items)
        self._token = uuid.uuid4().hex
        #: What the group holds, for people: it names the group's task runs in Prefect and
        #: its tasks in Dask's dashboard.
        self.label = _label(self.items)

    def __dask_tokenize__(self) -> str:
        # Dask names a submitted task by hashing its arguments, pickling whatever it has no
        # rule for: a whole group, once more, in the flow's thread. Every group is new, so
        # a random token names it as well.
        return self._token

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"<{len(self.items)} input(s)>"

    def __str__(self) -> str:
        return self.label


def _label(items: Sequence[WorkItem]) -> str:
    """``a.txt``, or ``a.txt … z.txt (2000)``: the first and last input's file names."""
    if not items:
        return "nothing"
    names = [_name(item) for item in (items[0], items[-1])]
    if len(items) == 1:
        return names[0]
    return f"{names[0]} … {names[1]} ({len(items)})"


def _name(item: WorkItem) -> str:
    where = item.path if item.path is not None else item.data
    if isinstance(where, Mapping):
        where = where.get("path") or where.get("source_path") or "document"
    text = str(where)
    return text.rsplit("/", 1)[-1][:60] or text[:60]


class GroupResults:
    """A group's results as a task state's data, opaque to Prefect, like ``Group``.

    Prefect links each element of a task's result to the task's state (to track a value a
    later task is given back to the task that made it): a walk of thousands of results per
    task run (2.7 ms for 1,200 results; 3-4% of the CPU of a run of 20,000 small files).
    Nothing passes these results on.
    Shown short: Prefect prints a final state whole (in logs and in its UI), and thousands
    of results would fill pages.
    """

    __slots__ = ("results",)

    def __init__(self, results: Sequence[JobResult]) -> None:
        self.results = list(results)

    def __iter__(self) -> Iterator[JobResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __repr__(self) -> str:
        return f"<{len(self.results)} job result(s)>"


#: Called inside the job's transaction with the inputs it succeeded on (the writer marks
#: them done there): ``(items, job name, their outcomes)``.
FinishHook = Callable[[Sequence[WorkItem], str, Sequence[Outcome]], None]


def run_job_on_items(
    spec: JobSpec,
    items: Sequence[WorkItem],
    config: PipelineConfig,
    force: bool = False,
    finish: FinishHook | None = None,
) -> list[JobResult]:
    """Run ``spec``'s job on each item; one result per item, in order."""
    job = spec.make(config, force=force)
    on_commit = None
    if finish is not None:

        def on_commit(positions: Sequence[int], outcomes: Sequence[Outcome]) -> None:
            finish([items[i] for i in positions], spec.name, outcomes)

    return job.execute_all([item.data for item in items], on_commit=on_commit)


def make_job_task(spec: JobSpec) -> Task[..., Any]:
    """A Prefect task running ``spec``'s job on a group of ``WorkItem``s.

    ``NO_CACHE``: the jobs have side effects and deduplication is the database's job (a
    cached result would skip a write). Results are not persisted for the same reason. No
    Prefect retries: a failure is an input's, not a group's (``JobResult``), and the one
    retry mechanism is the ledger's, per input (``drain-db --max-attempts``).
    """
    # Imported here so that work items and groups can be built before Prefect is loaded.
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    def run_job(
        items: Group | Sequence[WorkItem],
        config: PipelineConfig,
        force: bool = False,
        finish: FinishHook | None = None,
    ) -> Any:
        # In a Dask worker (one of a cluster the pipeline did not start, too), the clients
        # of the task runs after this one: see ``plain_http_clients``.
        plain_http_clients()
        if isinstance(items, Group):
            items = items.items
        try:
            results = run_job_on_items(spec, items, config, force, finish)
        except Abandoned:
            # The run stopped (a Cancel, an error, a signal Prefect's handler caught) while
            # this group was on a thread of the command: Cancelled, as the flow run ends,
            # not Crashed (Prefect's state for a BaseException), which would say the job
            # broke. The driver drops the group; its inputs go back with the run's claims.
            from prefect.states import Cancelled

            return Cancelled(
                message=f"job {spec.name} stopped with its run before the group's "
                f"{len(items)} input(s) were done"
            )
        except DatabaseConflict as exc:
            # The database rolled the group's transaction back to end a deadlock with
            # another command, and the writer runs it again: not a failure of the job
            # (Failed, with a traceback, in red) but a write undone. The exception travels
            # as the state's data, for the writer (``task_results`` raises it).
            from prefect.states import Cancelled

            return Cancelled(
                name="RolledBack",
                message=f"job {spec.name}: the database rolled this write of {len(items)}"
                f" input(s) back to end a deadlock with another command ({exc})",
                data=exc,
            )
        failed = [r for r in results if not r.success]
        if not failed:
            from prefect.states import Completed

            return Completed(
                message=f"0 of {len(results)} input(s) failed in job {spec.name}",
                data=GroupResults(results) if len(results) > 1 else results,
            )
        # Prefect has no "partly failed" state: a group with any failed input is Failed
        # (red where a person looks for trouble), its message says how many; the results
        # travel as the state's data, and the ledger, not this state, records each input.
        from prefect.states import Failed

        if len(results) == 1:
            message = f"job {spec.name}: {failed[0].error}"
        else:
            message = (
                f"{len(failed)} of {len(results)} input(s) failed in job {spec.name};"
                f" first: {failed[0].error}"
            )
        return Failed(message=message, data=GroupResults(results))

    run_job.__name__ = run_job.__qualname__ = f"job_{spec.name}"
    return task(  # type: ignore[call-overload, no-any-return]
        run_job,
        name=f"job-{spec.name}",
        # "job A: a.txt … z.txt (2000)": what the run holds, in the Prefect UI.
        task_run_name=f"job {spec.name}: {{items}}",
        cache_policy=NO_CACHE,
        persist_result=False,
        retries=0,
        log_prints=False,
    )


def task_results(state: Any) -> list[JobResult]:
    """The ``JobResult``s a job task's final state holds, Completed or Failed; raises what
    the task raised when it broke before producing any, and the ``DatabaseConflict`` of a
    write rolled back (RolledBack)."""
    results = state.result(raise_on_failure=False)
    if isinstance(results, BaseException):
        raise results
    return list(results)


def run_task(
    job_task: Task[..., Any],
    items: Group,
    config: PipelineConfig,
    force: bool = False,
    finish: FinishHook | None = None,
) -> list[JobResult]:
    """Run a job task here (a task run in this thread) and return its results."""
    return task_results(job_task(items, config, force, finish, return_state=True))


__all__ = [
    "FinishHook",
    "Group",
    "WorkItem",
    "make_job_task",
    "run_job_on_items",
    "run_task",
    "task_results",
]
