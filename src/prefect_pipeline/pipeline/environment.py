"""A run's environment: the Prefect API it reports to and the task runner it fans out on,
started together.

Each takes seconds on its own, so start-up is ordered for overlap: the temporary Prefect
server's process starts first (``PrefectApi``, without importing Prefect), then the Dask
cluster (in a thread), and only then does this process import Prefect. A run's own cluster
starts there only with ``--workers-after 0``; otherwise once the run has waited that long
for the jobs the workers would take (``Environment.start_workers``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prefect_pipeline.pipeline.cluster import DaskCluster
from prefect_pipeline.pipeline.options import ParallelOptions
from prefect_pipeline.pipeline.server import PrefectApi


@dataclass(frozen=True)
class Environment:
    """What a run's flow runs on (before it starts: nothing, one slot)."""

    task_runner: Any = None
    #: Tasks that can run at once (workers x threads).
    slots: int = 1
    #: The Prefect UI, when the API has one that outlives the run (not a temporary server).
    ui_url: str | None = None
    #: The Dask cluster the task runner submits to (None: a thread of this process).
    cluster: DaskCluster | None = None

    def workers_ready(self) -> bool:
        """Whether the task runner has a worker yet (until then the run works here)."""
        return self.cluster is None or self.cluster.workers_ready()

    def start_workers(self) -> None:
        """Start the run's own cluster and its workers, if they wait for the run to need
        them."""
        if self.cluster is not None:
            self.cluster.start_workers()

    @property
    def workers_started(self) -> int:
        """How many worker processes of the run's own cluster joined it (0 otherwise)."""
        return self.cluster.workers_started if self.cluster is not None else 0

    @property
    def dashboard_url(self) -> str | None:
        """The run's own cluster's Dask dashboard, once that cluster has started."""
        return self.cluster.dashboard_url if self.cluster is not None else None


@contextmanager
def run_environment(
    options: ParallelOptions, *, meanwhile: Callable[[], object] | None = None
) -> Iterator[Environment]:
    """Start the Prefect API and the task runner, and yield what the flow runs on.

    ``options.workers == 0`` runs the jobs in a thread of this process, without Dask.
    ``meanwhile`` is called once Prefect is imported, while the server and the cluster
    still start: the caller's own slow imports (its flows), which would otherwise come
    after them. Everything started is stopped on exit, on error and on Ctrl-C.
    """
    with PrefectApi(announced=True) as api:  # by the run's start-up line
        if options.workers == 0:
            from prefect.task_runners import ThreadPoolTaskRunner

            if meanwhile is not None:
                meanwhile()
            api.wait()
            yield Environment(ThreadPoolTaskRunner(max_workers=1), 1, api.ui_url())
            return
        with DaskCluster(
            workers=options.workers if not options.address else None,
            threads_per_worker=options.threads_per_worker,
            address=options.address,
            connect_timeout=options.connect_timeout,
            workers_now=options.workers_after_s <= 0,
        ).start_in_background() as cluster:
            import prefect.flows  # noqa: F401 - the slow import, while the cluster starts

            if meanwhile is not None:
                meanwhile()
            api.wait()
            cluster.wait()
            slots = cluster.workers * cluster.threads_per_worker
            yield Environment(cluster.task_runner(), slots, api.ui_url(), cluster)


def describe_environment(options: ParallelOptions) -> str:
    """What ``run_environment(options)`` starts or uses, for the start-up line: "starting a
    temporary Prefect server and a Dask cluster of 2 worker(s)", "using the Prefect API at
    URL; starting a Dask cluster of 2 worker(s)"."""
    import prefect_pipeline.pipeline.local_server as local_server
    from prefect_pipeline.pipeline.cluster import default_workers
    from prefect_pipeline.pipeline.server import configured_api

    configured = configured_api()  # the environment's PREFECT_API_URL, or the profile's
    local = None if configured else local_server.find()  # pipeline server start
    if configured:
        api, starts = f"the Prefect API at {configured[0]}", False
    elif local is not None:
        api, starts = f"the local Prefect server at {local.api_url}", False
    else:
        api, starts = "a temporary Prefect server", True
    if options.workers == 0:
        return f"{'starting' if starts else 'using'} {api} (jobs run in this process, without Dask)"
    if options.address:
        scheduler = f"the Dask scheduler at {options.address}"
        return f"starting {api}; using {scheduler}" if starts else f"using {api} and {scheduler}"
    workers = options.workers or default_workers()
    threads = options.threads_per_worker
    each = f", {threads} threads each" if threads > 1 else ""
    when = ""
    if options.workers_after_s > 0:
        when = f" (started if the run waits {options.workers_after_s:g} s for their jobs)"
    cluster = f"a Dask cluster of {workers} worker(s){each}{when}"
    return f"starting {api} and {cluster}" if starts else f"using {api}; starting {cluster}"
