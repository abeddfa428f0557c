"""Prefect tasks made from job classes: the only place jobs meet Prefect.

A task runs one job over a *group* of inputs: Prefect costs milliseconds per task run and a
small file costs microseconds of work, so orchestration is paid per group while each input
keeps its own ``JobResult`` (and, in parallel runs, its own row in the input ledger).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.jobs.base import JobResult, Outcome
from prefect_pipeline.pipeline.definition import JobSpec

if TYPE_CHECKING:
    from prefect import Task


@dataclass(frozen=True)
class WorkItem:
    """One input on its way through the chain: ``data`` is the current job's input."""

    data: Any
    #: The input's row in ``pipeline_inputs`` (parallel runs; the run's ledger holds the
    #: claim token); None for single-input runs, which keep no ledger.
    input_id: int | None = None
    path: str | None = None
    attempts: int = 0
    #: What earlier jobs reported (``JobResult.details``), e.g. sha256 and records written.
    facts: dict[str, Any] = field(default_factory=dict)

    def advance(self, data: Any, details: dict[str, Any] | None = None) -> WorkItem:
        """The item as the next job's input."""
        # Not dataclasses.replace, which costs several times more: this runs twice per input.
        facts = {**self.facts, **details} if details else self.facts
        return WorkItem(data, self.input_id, self.path, self.attempts, facts)


class Group:
    """The inputs of one task run, opaque to Prefect.

    Prefect walks task parameters looking for futures to resolve, and Dask's task runner does
    it again on each worker; a group's documents hold thousands of records, so the walk would
    cost more than the work. (``prefect.utilities.annotations.quote`` is not unwrapped on
    Dask workers.)
    """

    __slots__ = ("_token", "items")

    def __init__(self, items: Sequence[WorkItem]) -> None:
        self.items = list(items)
        self._token = uuid.uuid4().hex

    def __dask_tokenize__(self) -> str:
        # Dask names a submitted task by hashing its arguments, pickling whatever it has no
        # rule for: a whole group, once more, in the flow's thread. Every group is new, so
        # a random token names it as well.
        return self._token

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"<{len(self.items)} input(s)>"


#: Called inside the job's transaction when it succeeds (the ledger's status change).
FinishHook = Callable[[WorkItem, str, Outcome], None]


def run_job_on_items(
    spec: JobSpec,
    items: Sequence[WorkItem],
    config: PipelineConfig,
    force: bool = False,
    finish: FinishHook | None = None,
) -> list[JobResult]:
    """Run ``spec``'s job on each item; one result per item, in order."""
    job = spec.job_class(config, force=force)
    results = []
    for item in items:
        hook = None
        if finish is not None and item.input_id is not None:
            hook = _bind_hook(finish, item, spec.name)
        results.append(job.execute(item.data, on_commit=hook))
    return results


def _bind_hook(finish: FinishHook, item: WorkItem, job_name: str) -> Callable[[Outcome], None]:
    return lambda outcome: finish(item, job_name, outcome)


def make_job_task(
    spec: JobSpec, *, retries: int = 0, retry_delay_seconds: float = 0.0
) -> Task[..., list[JobResult]]:
    """A Prefect task running ``spec``'s job on a group of ``WorkItem``s.

    ``NO_CACHE``: the jobs have side effects and deduplication is the database's job (a
    cached result would skip a write). Results are not persisted for the same reason.
    ``retries`` apply when the task itself raises; an input's failure is a ``JobResult``.
    """
    # Imported here so that work items and groups can be built before Prefect is loaded.
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    def run_job(
        items: Group | Sequence[WorkItem],
        config: PipelineConfig,
        force: bool = False,
        finish: FinishHook | None = None,
    ) -> list[JobResult]:
        if isinstance(items, Group):
            items = items.items
        return run_job_on_items(spec, items, config, force, finish)

    run_job.__name__ = run_job.__qualname__ = f"job_{spec.name}"
    return task(  # type: ignore[call-overload, no-any-return]
        run_job,
        name=f"job-{spec.name}",
        cache_policy=NO_CACHE,
        persist_result=False,
        retries=retries,
        retry_delay_seconds=retry_delay_seconds,
        log_prints=False,
    )
