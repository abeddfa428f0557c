"""A run's environment: the Prefect API it reports to and the task runner it fans out on,
started together.

Each takes seconds on its own, so start-up is ordered for overlap: the temporary Prefect
server's process starts first (``PrefectApi``, without importing Prefect), then the Dask
cluster (in a thread), and only then does this process import Prefect.
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
    """What a run's flow runs on."""

    task_runner: Any
    #: Tasks that can run at once (workers x threads).
    slots: int
    #: The local cluster's Dask dashboard, if there is one.
    dashboard_url: str | None = None
    #: The Prefect UI, when the API has one that outlives the run (not a temporary server).
    ui_url: str | None = None
    #: Whether the task runner has a worker yet (until then the run works in this process).
    workers_ready: Callable[[], bool] = lambda: True
    #: Start the local cluster's workers, if they wait for the run to need them.
    start_workers: Callable[[], None] = lambda: None
    #: How many worker processes the run started (a local cluster's; 0 otherwise).
    workers_started: Callable[[], int] = lambda: 0


@contextmanager
def run_environment(options: ParallelOptions) -> Iterator[Environment]:
    """Start the Prefect API and the task runner, and yield what the flow runs on.

    ``options.workers == 0`` runs the jobs in a thread of this process, without Dask.
    Everything started is stopped on exit, on error and on Ctrl-C.
    """
    with PrefectApi() as api:
        if options.workers == 0:
            from prefect.task_runners import ThreadPoolTaskRunner

            api.wait()
            yield Environment(ThreadPoolTaskRunner(max_workers=1), 1, ui_url=api.ui_url())
            return
        with DaskCluster(
            workers=options.workers if not options.address else None,
            threads_per_worker=options.threads_per_worker,
            address=options.address,
            connect_timeout=options.connect_timeout,
            workers_now=options.workers_after_s <= 0,
        ).start_in_background() as cluster:
            import prefect.flows  # noqa: F401 - the slow import, while the cluster starts

            api.wait()
            cluster.wait()
            yield Environment(
                cluster.task_runner(),
                cluster.workers * cluster.threads_per_worker,
                cluster.dashboard_url,
                api.ui_url(),
                cluster.workers_ready,
                cluster.start_workers,
                lambda: cluster.workers_started,
            )


def describe_environment(options: ParallelOptions) -> str:
    """What ``run_environment(options)`` starts, for the start-up line: "a temporary
    Prefect server and a Dask cluster of 2 workers"."""
    import prefect_pipeline.pipeline.local_server as local_server
    from prefect_pipeline.pipeline.cluster import default_workers
    from prefect_pipeline.pipeline.server import configured_api

    configured = configured_api()  # the environment's PREFECT_API_URL, or the profile's
    local = None if configured else local_server.find()  # pipeline server start
    if configured:
        api = f"the Prefect API at {configured[0]}"
    elif local is not None:
        api = f"the local Prefect server at {local.api_url}"
    else:
        api = "a temporary Prefect server"
    if options.workers == 0:
        return f"{api} (jobs run in this process, without Dask)"
    if options.address:
        return f"{api} and the Dask scheduler at {options.address}"
    workers = options.workers or default_workers()
    threads = options.threads_per_worker
    each = f", {threads} threads each" if threads > 1 else ""
    when = ""
    if options.workers_after_s > 0:
        when = f" (started if the work outlasts {options.workers_after_s:g} s in this process)"
    return f"{api} and a Dask cluster of {workers} worker(s){each}{when}"
