"""``PipelineDefinition``: the ordered jobs of a pipeline, and ranges of them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prefect_pipeline.exceptions import UsageError
from prefect_pipeline.jobs import BaseJob, JobA, JobB, JobC


@dataclass(frozen=True)
class JobSpec:
    """A job in a pipeline: its name and class."""

    name: str
    job_class: type[BaseJob]
    description: str = ""

    @property
    def uses_database(self) -> bool:
        return self.job_class.uses_database


class PipelineDefinition:
    """An ordered list of jobs; each job's output is the next job's input.

    >>> PipelineDefinition().add_job("A", JobA).add_job("B", JobB).names
    ['A', 'B']
    """

    def __init__(self) -> None:
        self._jobs: list[JobSpec] = []

    def add_job(
        self, name: str, job_class: type[BaseJob], description: str | None = None
    ) -> PipelineDefinition:
        """Append a job; returns the definition so calls can be chained."""
        if not name or name in self.names:
            raise ValueError(f"job name {name!r} is empty or already used")
        if not (isinstance(job_class, type) and issubclass(job_class, BaseJob)):
            raise TypeError(f"{job_class!r} is not a BaseJob subclass")
        self._jobs.append(JobSpec(name, job_class, description or job_class.description))
        return self

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self._jobs]

    @property
    def jobs(self) -> list[JobSpec]:
        return list(self._jobs)

    def __iter__(self) -> Iterator[JobSpec]:
        return iter(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)

    def get(self, name: str) -> JobSpec:
        for spec in self._jobs:
            if spec.name == name:
                return spec
        raise UsageError(f"unknown job {name!r}; available jobs: {', '.join(self.names)}")

    def job_range(
        self, start_from: str | None = None, stop_after: str | None = None
    ) -> list[JobSpec]:
        """The jobs from ``start_from`` through ``stop_after`` (both included)."""
        if not self._jobs:
            raise UsageError("the pipeline has no jobs")
        names = self.names
        first = names.index(self.get(start_from).name) if start_from else 0
        last = names.index(self.get(stop_after).name) if stop_after else len(names) - 1
        if first > last:
            raise UsageError(
                f"--start-from {names[first]} comes after --stop-after {names[last]}; "
                f"jobs run in the order {' -> '.join(names)}"
            )
        return self._jobs[first : last + 1]


def default_pipeline() -> PipelineDefinition:
    """A -> B -> C."""
    return PipelineDefinition().add_job("A", JobA).add_job("B", JobB).add_job("C", JobC)


def load_definition(reference: str) -> PipelineDefinition:
    """``"package.module:name"`` -> the ``PipelineDefinition`` it names (or that calling it
    returns). The module must be importable on every Dask worker too."""
    import importlib

    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"--definition {reference!r}: expected MODULE:NAME")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"--definition {reference!r}: cannot import {module_name} ({exc})"
        ) from None
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise UsageError(f"--definition {reference!r}: {module_name} has no {attribute}") from None
    if callable(value) and not isinstance(value, PipelineDefinition):
        value = value()
    if not isinstance(value, PipelineDefinition):
        raise UsageError(
            f"--definition {reference!r}: expected a PipelineDefinition, got {type(value).__name__}"
        )
    return value
