"""The Dask cluster a run fans out on: a LocalCluster it owns, or an existing scheduler."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect_pipeline.compat import QUIET_DASK, quiet_gc_diagnosis_race, worker_processes
from prefect_pipeline.exceptions import RunError, UsageError
from prefect_pipeline.logs import get_logger

logger = get_logger("cluster")


#: What a local worker process takes: ~150 MB measured with Prefect's task engine loaded,
#: plus room for the groups in flight (up to ``max_group_bytes`` of input, several times
#: that while a document is built).
WORKER_MEMORY = 400 * 1024 * 1024

_ADDRESS = re.compile(r"^(?:(tcp|tls|ws|wss|ucx|inproc)://)?(\[[0-9a-fA-F:.]+\]|[^:/\s]+):(\d+)$")


def default_workers() -> int:
    """One worker process per core (the writer runs in the command's own process)."""
    return max(1, os.cpu_count() or 1)


def max_workers() -> int:
    """The most local worker processes this machine can hold: four per core, and no more
    than its available memory allows."""
    import psutil

    by_memory = psutil.virtual_memory().available // WORKER_MEMORY
    return max(1, min(4 * (os.cpu_count() or 1), by_memory))


def check_workers(workers: int) -> None:
    """Refuse a local cluster larger than the machine can hold (``UsageError``)."""
    cap = max_workers()
    if workers > cap:
        import psutil

        available = psutil.virtual_memory().available / 1e9
        raise UsageError(
            f"--workers {workers}: this machine can hold at most {cap} worker processes "
            f"({os.cpu_count()} cores, {available:.1f} GB available); ask for fewer"
        )


def check_address(address: str) -> str:
    """A scheduler address as Dask takes it (``tcp://HOST:PORT``, or ``HOST:PORT``), or a
    ``UsageError`` naming what was given."""
    match = _ADDRESS.match(address.strip())
    if match is None or not 0 < int(match.group(3)) < 65536:
        raise UsageError(f"--address {address!r}: expected tcp://HOST:PORT")
    return address.strip()


def _not_dask_echo(record: logging.LogRecord) -> bool:
    """Drops distributed's own "Cluster closed without starting up": the failure is
    reported once, by the run, with its cause."""
    return record.getMessage() != "Cluster closed without starting up"


@contextmanager
def _without_dask_echo() -> Iterator[None]:
    spec_logger = logging.getLogger("distributed.deploy.spec")
    spec_logger.addFilter(_not_dask_echo)
    try:
        yield
    finally:
        spec_logger.removeFilter(_not_dask_echo)


#: What the resource tracker is told to keep quiet about: the semaphores of worker
#: processes killed as they started (an interrupt during the cluster's start), which it
#: then removes as it should. Its warning, printed as it exits, came after the command's
#: last line ("Interrupted.") and said nothing a user could act on.
_TRACKER_WARNINGS = "ignore::UserWarning:multiprocessing.resource_tracker"


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (the process that removes what worker
    processes leave behind) if it is not running, with its leak warning silenced. Only it
    sees the setting: the environment is put back before anything else starts."""
    from multiprocessing import resource_tracker

    previous = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [previous, _TRACKER_WARNINGS]))
    try:
        resource_tracker.ensure_running()
    finally:
        if previous is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = previous


@contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM blocked in this thread for the block, and so in the threads it
    starts (the cluster's event loop, which starts the workers) and in the processes those
    start: a worker begins life deaf to a terminal's Ctrl-C and a supervisor's SIGTERM,
    which reach the command's whole process group, until its preload ignores them for good
    (``worker_preload``). Without it, one that is still importing when they come dies with
    a traceback. This thread's own signals arrive again at the block's end; the command's
    handler runs in the main thread whichever thread the kernel chose."""
    # Started later by a thread with them blocked, multiprocessing's resource tracker
    # would unblock them in that thread once it had spawned itself (its own way of being
    # deaf to them); started first, it is not started again.
    start_resource_tracker()
    stops = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# Dask's own logging settings give "tornado.application" a level of its own.
_TEARDOWN_LOGGERS = ("distributed", "tornado", "tornado.application")


def silence_teardown() -> None:
    """No more of Dask's and tornado's lines in this process, which is ending: a cluster
    whose close a signal cut short reports the workers it was still starting as failed
    starts."""
    for name in _TEARDOWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


@contextmanager
def _quiet_teardown() -> Iterator[None]:
    """Dask's and tornado's error lines while the run's own cluster closes: its end is
    decided, and a worker killed as it started (``_kill_starting_workers``) makes its
    nanny report a failed start that says nothing to the user."""
    loggers = [logging.getLogger(name) for name in _TEARDOWN_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _joined_workers_plugin(names: set[str]) -> Any:
    """A scheduler plugin adding each joining worker's name to ``names`` (distributed is
    imported only by a run that starts a cluster)."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class JoinedWorkers(SchedulerPlugin):
        name = "prefect-pipeline-joined-workers"

        def add_worker(self, scheduler: Any, worker: str) -> None:
            state = scheduler.workers.get(worker)
            names.add(str(state.name if state is not None else worker))

    return JoinedWorkers()


class DaskCluster:
    """Context manager: starts a process-based LocalCluster (or connects nowhere when an
    ``address`` is given) and closes it on exit, even on error or Ctrl-C."""

    def __init__(
        self,
        *,
        workers: int | None = None,
        threads_per_worker: int = 1,
        address: str | None = None,
        connect_timeout: float = 10.0,
        workers_now: bool = True,
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
        #: Seconds an existing scheduler has to answer before the run gives up on it.
        self.connect_timeout = connect_timeout
        #: Whether a local cluster starts with the run; if not, ``start_workers()``.
        self.workers_now = workers_now
        #: The local cluster's dashboard (None for an existing cluster: it is its owner's).
        self.dashboard_url: str | None = None
        #: Whether this (local) cluster was asked for its workers: not until
        #: ``start_workers()``, which starts the cluster itself, unless ``workers_now``.
        self._asked = False
        #: The names of the local cluster's workers that joined it (a worker its nanny
        #: restarts joins again under the same name).
        self._joined: set[str] = set()
        #: Whether this is a cluster of the run's own (not an existing scheduler).
        self._local = not address
        self._cluster: Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._settings: Any = None

    def start_in_background(self) -> DaskCluster:
        """Start (or check) the cluster in a thread; ``wait()`` joins it. Meanwhile the
        caller can import Prefect and wait for its server."""
        thread = threading.Thread(target=self._start_catching, daemon=True)
        thread.start()
        self._thread = thread  # once started: __exit__ joins only a started thread
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
        """Start the cluster, unless ``start_in_background`` is starting it: then the body
        goes on meanwhile (Prefect's import, say) and calls ``wait()`` when it needs it."""
        if self._thread is None:
            self._start()
        return self

    def _start(self) -> None:
        if self.address:
            self._quiet_dask()  # for the client this process makes (the scheduler's are its own)
            try:
                self._check_reachable(self.address, self.connect_timeout)
            except BaseException:
                self._restore_settings()  # __exit__ does not run when __enter__ raises
                raise
        elif self.workers_now:
            self._asked = True
            self._start_local()
        # Otherwise nothing starts yet, not even an import of Dask: ``start_workers()``
        # starts the cluster when the run has shown it needs workers, and a run that ends
        # sooner pays for neither the scheduler (most of a second of CPU) nor its memory.

    def _start_local(self) -> None:
        """Start a LocalCluster, ask it for the workers, and keep it (for ``__exit__``)."""
        try:
            # Inside: a Dask setting distributed refuses (its log level, say) fails its
            # import, and that is a cluster that cannot start like any other.
            self._quiet_dask()
            from distributed import LocalCluster

            # The scheduler (most of a second), then the workers, asked for without waiting:
            # each is a process that spends seconds of CPU importing Prefect's task engine,
            # and meanwhile the run goes on in this process (``workers_ready``).
            cluster = None
            quiet_gc_diagnosis_race()  # its scheduler's (the workers': worker_preload)
            try:
                with _without_dask_echo(), _stop_signals_blocked():
                    cluster = LocalCluster(
                        n_workers=0,
                        threads_per_worker=self.threads_per_worker,
                        processes=True,
                        # Port 0 picks a free port, so two runs (or a user's own dashboard)
                        # never clash; on the loopback, like the scheduler and the workers.
                        dashboard_address="127.0.0.1:0",
                        scheduler_port=0,
                        host="127.0.0.1",
                        silence_logs=os.environ.get(
                            "DASK_LOGGING__DISTRIBUTED", "warning"
                        ).upper(),
                        preload=["prefect_pipeline.pipeline.worker_preload"],
                    )
                    # Before the workers are asked for: each is counted as it joins. (A
                    # LocalCluster's scheduler runs in this process.)
                    if cluster.scheduler is not None:
                        cluster.scheduler.add_plugin(_joined_workers_plugin(self._joined))
                    cluster.scale(self.workers)  # started by the loop's thread
            except BaseException:
                # A Ctrl-C held back by the blocked signals lands as they are unblocked:
                # the cluster made by then is closed here, not left running.
                if cluster is not None:
                    cluster.close()
                raise
        except Exception as exc:
            self._restore_settings()  # __exit__ does not run when __enter__ raises
            raise RunError(
                f"could not start a local Dask cluster: {type(exc).__name__}: {exc}"
            ) from exc
        except BaseException:
            self._restore_settings()
            raise
        self.address = cluster.scheduler_address
        self.dashboard_url = cluster.dashboard_link or None
        self._cluster = cluster  # last: workers_ready() looks at it from the run's thread
        logger.info(
            "started a Dask LocalCluster at %s for %d worker(s); dashboard %s",
            self.address,
            self.workers,
            self.dashboard_url or "unavailable",
        )

    def _quiet_dask(self) -> None:
        """Dask's settings for the run (``QUIET_DASK``), until ``__exit__``: the cluster's
        and the client's, made later by the task runner."""
        import dask
        import distributed  # noqa: F401 - before the set below

        # Importing distributed adds its defaults to Dask's config: imported inside the
        # set, they would be taken for the set's own insertion and removed with it on exit,
        # and the process's next cluster would fail ("'comm'").
        self._settings = dask.config.set(QUIET_DASK)

    def _restore_settings(self) -> None:
        if self._settings is not None:
            self._settings.__exit__(None, None, None)
            self._settings = None

    def start_workers(self) -> None:
        """Start the local cluster and its workers, in the background (once; they join as
        each is ready, and the run goes on here meanwhile). An existing cluster's workers
        are its owner's: nothing to start."""
        if not self._local or self._asked:  # asked for once only
            return
        self._asked = True
        logger.info("starting a Dask cluster of %d worker(s)", self.workers)
        thread = threading.Thread(target=self._start_late, daemon=True, name="dask-cluster-start")
        thread.start()
        self._thread = thread  # once started: __exit__ joins only a started thread

    def _start_late(self) -> None:
        try:
            self._start_local()
        except Exception as exc:
            # The run loses its workers, not its inputs: it goes on in this process.
            logger.warning("%s; the run goes on in this process", exc)

    def _kill_starting_workers(self) -> None:
        """Kill the worker processes still starting (not joined yet) at once.

        Closed in the middle of their start (a run that stopped seconds after asking for
        them: Ctrl-C, a Cancel), Dask's workers and nannies fail it with a traceback each
        in every process, a hundred lines over the run's summary, and the close waits for
        them. A worker that has not joined holds nothing of the run: killed, it says
        nothing, and its nanny's failure is the teardown's (``_quiet_teardown``)."""
        assert self._cluster is not None
        joined = {state.pid for state in list(self._cluster.scheduler.workers.values())}
        for pid in set(worker_processes(self._cluster)) - joined:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            logger.debug("killed a worker still starting (pid %d)", pid)

    @staticmethod
    def _check_reachable(address: str, timeout: float) -> None:
        """Connect once, within ``timeout``. Dask's own timeout covers the connection, not
        a peer that accepts it and never answers; a thread with a deadline covers both."""
        from distributed import Client

        outcome: list[BaseException | None] = []

        def connect() -> None:
            try:
                with Client(address, timeout=f"{timeout}s"):
                    pass
                outcome.append(None)
            except BaseException as exc:  # reported below, in the caller's thread
                outcome.append(exc)

        thread = threading.Thread(target=connect, daemon=True, name="dask-address-check")
        thread.start()
        thread.join(timeout + 1)
        if not outcome:
            raise RunError(f"Dask scheduler {address} did not answer within {timeout:.0f} s")
        if outcome[0] is not None:
            raise RunError(f"Dask scheduler {address} is not reachable: {outcome[0]}")

    @property
    def workers_started(self) -> int:
        """How many of the local cluster's worker processes started and joined it (a
        worker asked for that never joined is not one; an existing cluster's are its
        owner's: 0)."""
        return len(self._joined)

    def workers_ready(self) -> bool:
        """Whether a worker has joined (always, for an existing cluster: it is its owner's)."""
        if not self._local:
            return True
        cluster = self._cluster
        return cluster is not None and len(cluster.scheduler.workers) > 0

    def task_runner(self) -> Any:
        """The run's task runner: it connects to this cluster when the first group is
        submitted, which is after ``workers_ready()``."""
        from prefect_pipeline.pipeline.task_runner import LateDaskTaskRunner

        def address() -> str:
            assert self.address is not None, "no group is submitted before a worker joins"
            return self.address

        return LateDaskTaskRunner(address)

    def __exit__(self, *exc_info: object) -> None:
        interrupted: BaseException | None = None
        while self._thread is not None:  # still starting: let it finish, then close it
            try:
                self._thread.join()
                self._thread = None
            except KeyboardInterrupt as exc:
                # Ctrl-C or SIGTERM during the wait (a late start takes about a second):
                # the cluster it is making must still be closed, and the settings restored.
                interrupted = exc
        try:
            if self._cluster is not None:
                started = time.perf_counter()
                with _quiet_teardown():
                    self._kill_starting_workers()
                    self._cluster.close()
                self._cluster = None
                logger.debug("closed the Dask cluster in %.2f s", time.perf_counter() - started)
        finally:
            self._restore_settings()
        if interrupted is not None:
            raise interrupted
