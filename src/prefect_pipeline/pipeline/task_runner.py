"""The task runner of a run on Dask: it connects to the cluster at its first submit.

A run's own cluster starts only when the run has shown it needs workers (``--workers-after``);
until then the driver runs every group in the command's process and submits nothing. The
flow's task runner must exist before that, when the flow starts, so this one takes a way to
find the scheduler's address instead of the address, and imports Dask, connects and names
its tasks (``compat.dask_task_runner``) only when the first group is submitted. A run that
never submits one never imports ``distributed``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect.task_runners import TaskRunner

from prefect_pipeline.compat import dask_task_runner


class LateDaskTaskRunner(TaskRunner[Any]):
    """A ``DaskTaskRunner`` made at the first ``submit``, on ``address_of()``'s scheduler."""

    def __init__(self, address_of: Callable[[], str]) -> None:
        super().__init__()
        self._address_of = address_of
        self._runner: Any = None

    @property
    def name(self) -> str:
        return "dask"

    def duplicate(self) -> LateDaskTaskRunner:
        return type(self)(self._address_of)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled with the flow that each submitted task carries to its worker (which never
        # uses it): as a runner on the scheduler the group went to, not on ``address_of``,
        # which holds the command's cluster (threads, a running scheduler).
        return type(self), (_Address(self._address_of()),)

    def submit(  # type: ignore[override]
        self,
        task: Any,
        parameters: dict[str, Any],
        wait_for: Any = None,
        dependencies: Any = None,
    ) -> Any:
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        if self._runner is None:
            runner = dask_task_runner(self._address_of())
            self._runner = runner.__enter__()
        return self._runner.submit(task, parameters, wait_for, dependencies)

    def __exit__(self, *exc_info: Any) -> None:
        runner, self._runner = self._runner, None
        try:
            if runner is not None:
                runner.__exit__(*exc_info)
        finally:
            super().__exit__(*exc_info)


@dataclass(frozen=True)
class _Address:
    """A scheduler's address, as ``LateDaskTaskRunner`` takes it (picklable)."""

    address: str

    def __call__(self) -> str:
        return self.address
