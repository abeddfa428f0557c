"""The Dask cluster a run fans out on: a LocalCluster it owns, or an existing scheduler."""

from __future__ import annotations

import os
import threading
from typing import Any

from prefect_pipeline.exceptions import RunError, UsageError
from prefect_pipeline.logs import get_logger

logger = get_logger("cluster")

#: Dask settings for the run, in this process and (through the nannies) its local workers.
QUIET_DASK = {
    # Debugging logs of the last 1,000 messages per connection. A message that sends a
    # group to a worker holds the whole group, so these logs kept every group of a run
    # alive and this process grew with the number of files (on 20,000 files: 28,000 work
    # items still held near the end, 183 MB against 170 MB without the logs).
    "distributed.admin.low-level-log-length": 0,
    # The statistical profiler samples every worker thread's stack each 10 ms and keeps
    # the history; nothing reads it here, and the sampling takes CPU from the jobs.
    "distributed.worker.profile.enabled": False,
}


def default_workers() -> int:
    """One worker process per core (the writer runs in the command's own process)."""
    return max(1, os.cpu_count() or 1)


class DaskCluster:
    """Context manager: starts a process-based LocalCluster (or connects nowhere when an
    ``address`` is given) and closes it on exit, even on error or Ctrl-C."""

    def __init__(
        self,
        *,
        workers: int | None = None,
        threads_per_worker: int = 1,
        address: str | None = None,
    ) -> None:
        if address and workers is not None:
            raise UsageError(
                "--address and --workers do not go together: "
                "the existing cluster decides its workers"
            )
        if workers is not None and workers < 1:
            raise UsageError("--workers must be at least 1 for a Dask cluster")
        if threads_per_worker < 1:
            raise UsageError("--threads-per-worker must be at least 1")
        self.workers = workers or default_workers()
        self.threads_per_worker = threads_per_worker
        self.address = address
        self._cluster: Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._settings: Any = None

    def start_in_background(self) -> DaskCluster:
        """Start (or check) the cluster in a thread; ``wait()`` joins it. Meanwhile the
        caller can import Prefect and wait for its server."""
        self._thread = threading.Thread(target=self._start_catching, daemon=True)
        self._thread.start()
        return self

    def _start_catching(self) -> None:
        try:
            self._start()
        except BaseException as exc:  # re-raised by wait() in the caller's thread
            self._error = exc

    def wait(self) -> DaskCluster:
        """Join ``start_in_background``; raise what the start raised."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error
        return self

    def __enter__(self) -> DaskCluster:
        """Start the cluster, or finish starting it if ``start_in_background`` began."""
        if self._thread is not None:
            return self.wait()
        self._start()
        return self

    def _start(self) -> None:
        import dask

        # Set until __exit__, so that the client made later (DaskTaskRunner) has them too;
        # an existing cluster's scheduler and workers keep their own settings.
        self._settings = dask.config.set(QUIET_DASK)
        try:
            self._start_cluster()
        except BaseException:
            self._restore_settings()  # __exit__ does not run when __enter__ raises
            raise

    def _restore_settings(self) -> None:
        if self._settings is not None:
            self._settings.__exit__(None, None, None)
            self._settings = None

    def _start_cluster(self) -> None:
        if self.address:
            self._check_reachable(self.address)
            return
        from distributed import LocalCluster

        try:
            self._cluster = LocalCluster(
                n_workers=self.workers,
                threads_per_worker=self.threads_per_worker,
                processes=True,
                # ":0" picks a free port, so two runs (or a user's own dashboard) never clash.
                dashboard_address=":0",
                scheduler_port=0,
                host="127.0.0.1",
                silence_logs=os.environ.get("DASK_LOGGING__DISTRIBUTED", "warning").upper(),
                preload=["prefect_pipeline.pipeline.worker_preload"],
            )
        except Exception as exc:
            raise RunError(f"could not start a local Dask cluster: {exc}") from exc
        self.address = self._cluster.scheduler_address
        logger.info(
            "started a Dask LocalCluster with %d worker(s) at %s", self.workers, self.address
        )

    @staticmethod
    def _check_reachable(address: str) -> None:
        from distributed import Client

        try:
            with Client(address, timeout="5s"):
                pass
        except Exception as exc:
            raise RunError(f"Dask scheduler {address} is not reachable: {exc}") from None

    def task_runner(self) -> Any:
        """A ``DaskTaskRunner`` connected to this cluster."""
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=self.address)

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is not None:  # still starting: let it finish, then close it
            self._thread.join()
            self._thread = None
        try:
            if self._cluster is not None:
                self._cluster.close()
                self._cluster = None
        finally:
            self._restore_settings()
