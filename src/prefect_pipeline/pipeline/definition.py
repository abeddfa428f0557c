"""``PipelineDefinition``: the ordered jobs of a pipeline, and ranges of them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.exceptions import UsageError
from prefect_pipeline.jobs import BaseJob, JobA, JobB, JobC
from prefect_pipeline.jobs.base import Kind


@dataclass(frozen=True)
class JobSpec:
    """A job in a pipeline: its name and class."""

    name: str
    job_class: type[BaseJob]
    description: str = ""

    @property
    def uses_database(self) -> bool:
        return self.job_class.uses_database

    @property
    def takes(self) -> Kind:
        return self.job_class.takes

    @property
    def input_pattern(self) -> str:
        return self.job_class.input_pattern

    def make(self, config: PipelineConfig, *, force: bool = False) -> BaseJob:
        """An instance of the job, named as in this pipeline."""
        job = self.job_class(config, force=force)
        job.job_name = self.name  # set after: a subclass's __init__ need not pass it on
        return job


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

    def path_range(
        self, start_from: str | None = None, stop_after: str | None = None
    ) -> list[JobSpec]:
        """``job_range`` for runs over many input files (a folder or the queue): its first
        job must take something a file path can be."""
        chain = self.job_range(start_from, stop_after)
        first = chain[0]
        if not first.takes.from_path:
            raise UsageError(
                f"job {first.name} takes {first.takes.value} ids, not files: it cannot start "
                f"a run over many inputs (use `pipeline run ID --start-from {first.name}`)"
            )
        return chain


def default_pipeline() -> PipelineDefinition:
    """A -> B -> C."""
    return PipelineDefinition().add_job("A", JobA).add_job("B", JobB).add_job("C", JobC)


def load_definition(reference: str) -> PipelineDefinition:
    """``"package.module:name"`` -> the ``PipelineDefinition`` it names (or that calling it
    returns).

    Modules in the current directory are found, as ``python -m``, uvicorn and celery find
    them: the directory is added to ``sys.path``, which Dask's local worker processes
    inherit (they are spawned with the parent's ``sys.path``). Workers of an existing
    cluster (``--address``) must be able to import the module themselves.
    """
    import importlib
    import os
    import sys

    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"--definition {reference!r}: expected MODULE:NAME")
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        # Appended, not prepended: a file in the current directory named like a library
        # (prefect.py, dask.py) must not replace the library for the whole run.
        sys.path.append(here)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"--definition {reference!r}: cannot import {module_name} ({exc})"
        ) from None
    except Exception as exc:  # the module's own code failed (or is not Python)
        raise UsageError(
            f"--definition {reference!r}: importing {module_name} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise UsageError(f"--definition {reference!r}: {module_name} has no {attribute}") from None
    if callable(value) and not isinstance(value, PipelineDefinition):
        try:
            value = value()
        except Exception as exc:
            raise UsageError(
                f"--definition {reference!r}: calling {attribute} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from None
    if not isinstance(value, PipelineDefinition):
        raise UsageError(
            f"--definition {reference!r}: expected a PipelineDefinition, got {type(value).__name__}"
        )
    return value
