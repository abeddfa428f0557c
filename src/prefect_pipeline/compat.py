"""Every private internal of Prefect, Dask and CPython that the pipeline relies on, in one
place, each with the reason no public API does the job.

An upgrade that removes or renames one of them should fail a test that names it
(``tests/test_compat.py`` exercises each one), not show up later as a crash or as a memory
figure. ``check_all()`` reports the missing ones by name.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect_pipeline.exceptions import RunError


class CompatError(RunError):
    """An internal the pipeline relies on is gone from an installed library."""


# Prefect ---------------------------------------------------------------------------------


def forget_task_results() -> None:
    """Let Prefect drop the results of the current flow run's finished task runs.

    Internal: ``FlowRunContext.run_results``. A flow run keeps every task result it has seen
    (to link a value passed to a later task back to the task that made it). Here each result
    is a group's documents, consumed at once and never passed on as such: kept, they would
    make memory grow with the size of the whole run. Prefect has no public way to forget.
    """
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is not None:
        context.run_results.clear()


def wrapped_future(future: Any) -> Any:
    """The executor's own future inside a Prefect task-run future: a
    ``concurrent.futures.Future`` (thread pool) or a ``distributed.Future`` (Dask).

    Internal: ``PrefectWrappedFuture.wrapped_future``. ``PrefectFuture`` has no ``cancel()``,
    and the cycle ``break_future_cycle`` cuts runs through the wrapped future. Raises
    ``CompatError`` when the future has none (Prefect renamed it, or a task runner whose
    futures wrap nothing): doing nothing instead would leave groups running after a Cancel,
    and memory growing, with no word.
    """
    try:
        return future.wrapped_future
    except AttributeError:
        raise CompatError(
            f"{type(future).__module__}.{type(future).__qualname__}.wrapped_future is gone"
        ) from None


def cancel_future(future: Any) -> None:
    """Cancel a task-run future's work on its executor (a Dask task not yet finished, or a
    thread-pool task not yet started): Prefect's futures cannot be cancelled themselves."""
    wrapped_future(future).cancel()


def break_future_cycle(future: Any) -> None:
    """Let a finished thread-pool task's result go when its future does.

    Internal: ``concurrent.futures.Future._done_callbacks`` (and ``wrapped_future``). A
    ``PrefectConcurrentFuture`` and the ``concurrent.futures.Future`` it wraps refer to each
    other (the latter's done callbacks hold a bound method of the former), and the pair holds
    the task's final state with its result. Only Python's cyclic collector frees a cycle, and
    a task that returns a few big strings allocates too few objects to set it off: an
    in-process run (``workers=0``) kept every group's documents to the end, 1 GB on the W3
    benchmark. The callbacks have all run once the future is done. Dask futures form no such
    cycle. Raises ``CompatError`` when either internal is gone.
    """
    wrapped = wrapped_future(future)
    if isinstance(wrapped, concurrent.futures.Future) and wrapped.done():
        callbacks = getattr(wrapped, "_done_callbacks", None)
        if not isinstance(callbacks, list):
            raise CompatError("concurrent.futures.Future._done_callbacks is gone")
        callbacks.clear()


#: What Prefect sets for the temporary server it starts itself
#: (``prefect.server.api.server.SubprocessASGIServer``): no UI, the services a short-lived
#: server needs. Internal: the ``PREFECT__SERVER_*`` variables are read by Prefect's server
#: only; starting that class instead would import the whole server application (~2 s of
#: CPU) into the command's process. See ``server.py``.
TEMPORARY_SERVER_ENV = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
    # Nor does it register the block types of every installed collection at its start:
    # loading them imported prefect-dask, Dask and numpy into it (30 MB of its 225 MB).
    # The runs use no block; a server that keeps the database (pipeline server start,
    # prefect server start) registers them.
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
    "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
}
#: The application factory uvicorn runs for that server.
SERVER_APP_FACTORY = "prefect.server.api.server:create_app"


#: The tables of a Prefect database that hold no run: its migration version and the block
#: types its server registers at every start. Internal: Prefect's schema. See
#: ``seed_prefect_database``.
PREFECT_DATABASE_REGISTRY = ("alembic_version", "block_type", "block_schema",
                             "block_schema_reference")  # fmt: skip


def seed_prefect_database(source: Path, target: Path) -> None:
    """Make ``target`` a Prefect database with ``source``'s schema and registry and no runs.

    A temporary server on a new database file migrates it first: 10-30 s on two cores, the
    most of a command's start-up. A database whose schema is already at the migrations'
    head, stamped so, is taken as it is (alembic finds nothing to do). ``source`` may be in
    use by another server: it is read in one read transaction, never written."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(target, uri=True)) as db:
        db.execute("ATTACH DATABASE ? AS source", (f"{source.resolve().as_uri()}?mode=ro",))
        with db:  # one transaction: a partial copy would look migrated
            schema = db.execute(
                "SELECT sql FROM source.sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE"
                " 'sqlite_%' ORDER BY type != 'table'"  # tables before their indexes
            ).fetchall()
            for (sql,) in schema:
                db.execute(sql)
            for table in PREFECT_DATABASE_REGISTRY:
                db.execute(f'INSERT INTO main."{table}" SELECT * FROM source."{table}"')


#: Prefect's services that hold what a process sends its API (their loggers are named
#: after the class), and the warning each logs when it is drained with items left.
_DRAINED_SERVICES = ("EventsWorker", "APILogWorker")
_DRAIN_PROGRESS = "Still processing items"


def _not_drain_progress(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_DRAIN_PROGRESS)


def quiet_drain_progress() -> None:
    """Drop Prefect's "Still processing items: N items remaining..." warning. Idempotent.

    Internal: ``prefect._internal.concurrency.services.QueueService._main_loop`` logs it, on
    the logger named after the service's class, whenever a service is drained (at the
    end of a command, or of the process) with items still queued: the last task-run events
    and log lines of a run that ended a moment before, which the drain then sends. It says
    nothing wrong, and it printed a WARNING line after the run's result.
    """
    for name in _DRAINED_SERVICES:
        logging.getLogger(name).addFilter(_not_drain_progress)  # added once, however asked


#: The module of distributed's GC diagnosis (``GCDiagnosis``).
_GC_DIAGNOSIS_MODULE = "distributed.gc"


def _gc_diagnosis_race(unraisable: Any) -> bool:
    owner = getattr(unraisable.object, "__self__", None)
    return isinstance(unraisable.exc_value, AssertionError) and (
        type(owner).__module__ == _GC_DIAGNOSIS_MODULE
    )


def quiet_gc_diagnosis_race() -> None:
    """Drop the traceback distributed's GC diagnosis can print as a cluster starts.
    Idempotent; any other unraisable exception goes to the hook there was.

    Internal: the scheduler and each worker add ``GCDiagnosis._gc_callback`` to
    ``gc.callbacks`` from their event loop's thread, which asserts that a collection it
    sees stop was seen starting. Added while another thread is inside a collection, it
    sees only the stop, and Python prints "Exception ignored in ... Traceback ...
    AssertionError", now and then, between a run's start-up lines. The diagnosis goes on
    with the next collection; nothing is wrong but the traceback.
    """
    import sys

    previous = sys.unraisablehook
    if getattr(previous, "_drops_gc_diagnosis_race", False):
        return

    def hook(unraisable: Any) -> None:
        if not _gc_diagnosis_race(unraisable):
            previous(unraisable)

    hook._drops_gc_diagnosis_race = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def flush_prefect(timeout: float = 5.0) -> None:
    """Send the events and log records a process still holds to Prefect's API, if the
    process loaded Prefect at all (a command that exits without Python's usual shutdown
    would otherwise drop its last task-run states and logs).

    Internal: ``prefect.events.worker.EventsWorker.drain_all``, as ``flush_api_logs``.
    """
    import sys

    quiet_drain_progress()
    if "prefect.events.worker" in sys.modules:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=timeout)
    if "prefect.logging.handlers" in sys.modules:
        flush_api_logs(timeout)


def flush_api_logs(timeout: float = 5.0) -> None:
    """Send the log records Prefect still holds to its API.

    Internal: ``prefect.logging.handlers.APILogWorker.drain_all``. Records are shipped in
    the background; sent after the temporary server has gone, each one prints "Error
    logging to API" at exit.
    """
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout)


# Dask ------------------------------------------------------------------------------------

#: Dask settings for a run's own cluster, in this process and (through the nannies) its
#: workers. Internal: ``distributed.admin.low-level-log-length`` is a debugging setting.
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


def dask_task_runner(address: str) -> Any:
    """A ``DaskTaskRunner`` on ``address`` whose Dask tasks are named after what they hold.

    Dask names a task after its function and a hash of its arguments (``job_A-3f2c…``), and
    ``DaskTaskRunner.submit`` passes no name of its own, so the dashboard could not tell one
    group from another or lead to its Prefect task run. This runner submits as prefect-dask
    does, with a key made of the task run's name (job, first and last input, count).

    Internal: ``DaskTaskRunner._started`` and ``._optimize_futures``, and the keyword
    arguments ``PrefectDaskClient.submit`` takes for a task (the body of prefect-dask's own
    ``submit``, which has no way to pass a key).
    """
    import uuid

    from prefect_dask import DaskTaskRunner
    from prefect_dask.task_runners import PrefectDaskFuture

    class NamedDaskTaskRunner(DaskTaskRunner):  # type: ignore[misc]
        def submit(  # type: ignore[override]
            self,
            task: Any,
            parameters: dict[str, Any],
            wait_for: Any = None,
            dependencies: Any = None,
        ) -> Any:
            if not self._started:
                raise RuntimeError("The task runner must be started before submitting work.")
            group = parameters.get("items")
            name = f"{task.name}: {group}" if group is not None else task.name
            parameters = self._optimize_futures(parameters)
            wait_for = self._optimize_futures(wait_for) if wait_for else None
            future = self.client.submit(
                task,
                key=f"{name}-{uuid.uuid4().hex[:8]}",
                parameters=parameters,
                wait_for=wait_for,
                dependencies=dependencies,
                return_type="state",
            )
            return PrefectDaskFuture(wrapped_future=future, task_run_id=future.task_run_id)

    return NamedDaskTaskRunner(address=address)


#: The TLS context Prefect's clients of a plain-HTTP API are given (``plain_http_clients``).
_PLAIN_HTTP_TLS: Any = None
#: Whether ``plain_http_clients`` has run: it runs before every job task, so it returns at
#: once after the first time.
_PLAIN_HTTP_INSTALLED = False


def _loopback_http(api: Any) -> bool:
    """Whether ``api`` is a plain-HTTP URL on this machine's loopback."""
    from urllib.parse import urlsplit

    if not isinstance(api, str):
        return False
    parts = urlsplit(api)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")


def plain_http_clients() -> None:
    """Spare Prefect's API clients of a plain-HTTP API on this machine (``http://`` on the
    loopback: ``pipeline server start``'s, the temporary one) the TLS context each builds.
    Once per process; idempotent.

    Internal: ``PrefectClient.__init__`` and ``SyncPrefectClient.__init__`` build, for every
    client, a TLS context that loads a CA bundle (60 ms of CPU on a 2-core machine) unless
    ``httpx_settings["verify"]`` holds one already, and Prefect's task engine makes a client
    for every task run in a Dask worker (and the run's log and event workers one each). Such
    an API never uses TLS. The context given instead loads no CA at all and still requires
    verified certificates: were TLS ever used with it, it would refuse, not trust. Any other
    API (an ``https://`` one, or an ``http://`` server elsewhere, which may redirect to
    https, where Prefect's clients follow), or a caller's own ``verify``, is left as
    Prefect has it.
    """
    global _PLAIN_HTTP_TLS, _PLAIN_HTTP_INSTALLED
    if _PLAIN_HTTP_INSTALLED:
        return
    import ssl

    from prefect.client.orchestration import PrefectClient, SyncPrefectClient

    if _PLAIN_HTTP_TLS is None:
        _PLAIN_HTTP_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for kind in (PrefectClient, SyncPrefectClient):
        original = kind.__init__
        if hasattr(original, "__wrapped_original__"):
            continue

        @functools.wraps(original)
        def init(self: Any, api: Any, *args: Any, _original: Any = original, **kwargs: Any) -> None:
            settings = kwargs.get("httpx_settings") or {}
            if _loopback_http(api) and "verify" not in settings:
                kwargs["httpx_settings"] = {**settings, "verify": _PLAIN_HTTP_TLS}
            _original(self, api, *args, **kwargs)

        init.__wrapped_original__ = original  # type: ignore[attr-defined]
        kind.__init__ = init  # type: ignore[method-assign]
    _PLAIN_HTTP_INSTALLED = True


_PROMPT_HEARTBEATS_INSTALLED = False
#: The source of the Prefect function ``_send_heartbeats`` replaces (prefect 3.8.8), by its
#: SHA-256: a release that changes it keeps its own (``prompt_heartbeat_stop``).
_HEARTBEATS_SOURCE_SHA256 = "83e152cb73a04e977ca181188e99b3d583c894892b5456043b2eb51e45dbe996"
#: Prefect's own function, once replaced.
_prefect_send_heartbeats: Any = None


def _heartbeats_source_matches(function: Any) -> bool:
    import hashlib
    import inspect

    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    return hashlib.sha256(source.encode()).hexdigest() == _HEARTBEATS_SOURCE_SHA256


def prompt_heartbeat_stop() -> None:
    """Make a flow run's end wait for nothing from its heartbeat thread. Once per process;
    idempotent.

    Internal: ``prefect.flow_engine._send_heartbeats`` runs a thread that sends a heartbeat
    event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds and sleeps between them in
    one-second ``time.sleep`` steps; at the flow run's end it sets a stop event and joins
    the thread, so every flow run ended up to 1 s later than its work (0.9 s measured on a
    3-line ``run-all``, a fifth of it). This is the same context manager with the sleep
    made a wait on the stop event: heartbeats are sent as often, and the end is at once.
    Only in place of the function it copies (the source's digest): a release that changed
    it keeps its own, and ``_check_heartbeats`` fails until this copy is brought up to it.
    """
    global _PROMPT_HEARTBEATS_INSTALLED, _prefect_send_heartbeats
    if _PROMPT_HEARTBEATS_INSTALLED:
        return
    import prefect.flow_engine as flow_engine

    _PROMPT_HEARTBEATS_INSTALLED = True
    original = flow_engine._send_heartbeats
    if not _heartbeats_source_matches(original):
        return
    _prefect_send_heartbeats = original
    flow_engine._send_heartbeats = _send_heartbeats  # type: ignore[assignment]


@contextlib.contextmanager
def _send_heartbeats(engine: Any, join_on_exit: bool = True) -> Any:
    import contextvars
    import threading

    from prefect.flow_engine import MINIMUM_HEARTBEAT_INTERVAL

    seconds = engine.heartbeat_seconds
    if seconds is None:
        yield
        return
    seconds = max(seconds, MINIMUM_HEARTBEAT_INTERVAL)
    resource, related = engine._build_heartbeat_event_template()
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            state = engine.flow_run.state if engine.flow_run else None
            if state is not None and state.is_final():
                return
            try:
                engine._emit_flow_run_heartbeat(resource, related)
            except Exception:
                engine.logger.debug("Failed to emit heartbeat", exc_info=True)
            stop.wait(seconds)

    # Prefect's own reason: the thread sees the caller's settings (its API URL) only if it
    # runs in a copy of the caller's context.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(beat,), daemon=True)
    thread.start()
    engine.logger.debug("Started flow run heartbeat context")
    try:
        yield
    finally:
        stop.set()
        if join_on_exit:
            thread.join(timeout=2)
        engine.logger.debug("Stopped flow run heartbeat context")


# Checks ----------------------------------------------------------------------------------


def _check_run_results() -> None:
    from prefect.context import FlowRunContext

    if "run_results" not in FlowRunContext.model_fields:
        raise CompatError("prefect.context.FlowRunContext.run_results is gone")


def _check_done_callbacks() -> None:
    if not isinstance(getattr(concurrent.futures.Future(), "_done_callbacks", None), list):
        raise CompatError("concurrent.futures.Future._done_callbacks is gone")


def _check_wrapped_future() -> None:
    from prefect.futures import PrefectConcurrentFuture, PrefectWrappedFuture
    from prefect_dask.task_runners import PrefectDaskFuture

    for kind in (PrefectConcurrentFuture, PrefectDaskFuture):
        if not issubclass(kind, PrefectWrappedFuture) or not isinstance(
            getattr(kind, "wrapped_future", None), property
        ):
            raise CompatError(f"{kind.__module__}.{kind.__qualname__}.wrapped_future is gone")


def _check_server_app() -> None:
    import importlib
    import inspect

    module_name, _, name = SERVER_APP_FACTORY.partition(":")
    module = importlib.import_module(module_name)
    if not callable(getattr(module, name, None)):
        raise CompatError(f"{SERVER_APP_FACTORY} is gone")
    source = inspect.getsource(module)
    for variable in TEMPORARY_SERVER_ENV:
        if variable.startswith("PREFECT__") and variable not in source:
            raise CompatError(f"Prefect's server no longer reads {variable}")


def _check_drain_all() -> None:
    from prefect.logging.handlers import APILogWorker

    if not callable(getattr(APILogWorker, "drain_all", None)):
        raise CompatError("prefect.logging.handlers.APILogWorker.drain_all is gone")


def _check_events_drain_all() -> None:
    from prefect.events.worker import EventsWorker

    if not callable(getattr(EventsWorker, "drain_all", None)):
        raise CompatError("prefect.events.worker.EventsWorker.drain_all is gone")


def _check_dask_task_runner() -> None:
    import inspect

    from prefect_dask import DaskTaskRunner
    from prefect_dask.client import PrefectDaskClient

    if not callable(getattr(DaskTaskRunner, "_optimize_futures", None)):
        raise CompatError("prefect_dask.DaskTaskRunner._optimize_futures is gone")
    accepted = inspect.signature(PrefectDaskClient.submit).parameters
    if "key" not in accepted:
        raise CompatError("prefect_dask.client.PrefectDaskClient.submit takes no key")
    if "_started" not in inspect.getsource(DaskTaskRunner.submit):
        raise CompatError("prefect_dask.DaskTaskRunner.submit no longer checks _started")


def _check_dask_settings() -> None:
    import dask
    import distributed  # noqa: F401 - registers distributed's defaults

    for key in QUIET_DASK:
        try:
            dask.config.get(key)
        except KeyError:
            raise CompatError(f"Dask setting {key} is gone") from None


def _check_client_tls() -> None:
    import inspect

    from prefect.client.orchestration import PrefectClient, SyncPrefectClient

    for kind in (PrefectClient, SyncPrefectClient):
        init = getattr(kind.__init__, "__wrapped_original__", kind.__init__)
        try:
            source = inspect.getsource(init)
        except (OSError, TypeError) as exc:
            raise CompatError(f"prefect {kind.__name__}.__init__ has no source: {exc}") from None
        if "isinstance(tls_verify, ssl.SSLContext)" not in source or "httpx_settings" not in source:
            raise CompatError(f"prefect {kind.__name__} no longer takes a TLS context given")


def worker_processes(cluster: Any) -> list[int]:
    """The process ids of a local Dask cluster's worker processes, those still starting
    included: a ``SpecCluster`` lists its nannies in ``workers`` only once all have
    started, in ``_created`` from the moment each is made. Internal: distributed's."""
    pids = [getattr(nanny, "pid", None) for nanny in list(getattr(cluster, "_created", ()))]
    return [pid for pid in pids if pid]


def _check_spec_cluster_created() -> None:
    import inspect

    from distributed import Nanny, SpecCluster

    if "self._created.add(worker)" not in inspect.getsource(SpecCluster):
        raise CompatError("distributed.SpecCluster no longer records its workers in _created")
    if not isinstance(inspect.getattr_static(Nanny, "pid", None), property):
        raise CompatError("distributed.Nanny.pid is gone")


def _check_database_registry() -> None:
    from prefect.server.database.orm_models import Base

    tables = set(Base.metadata.tables) | {"alembic_version"}
    for table in PREFECT_DATABASE_REGISTRY:
        if table not in tables:
            raise CompatError(f"Prefect's database has no table {table}")


def _check_heartbeats() -> None:
    import inspect

    import prefect.flow_engine as flow_engine

    original = inspect.getsource(flow_engine)
    if "with _send_heartbeats(self" not in original:
        raise CompatError("prefect.flow_engine no longer sends heartbeats via _send_heartbeats")
    prefects = _prefect_send_heartbeats or flow_engine._send_heartbeats
    if not _heartbeats_source_matches(prefects):
        raise CompatError(
            "prefect.flow_engine._send_heartbeats changed: compat._send_heartbeats, a copy "
            "of it, is not used until it is brought up to it (and its digest updated)"
        )
    engine = flow_engine.FlowRunEngine
    needed = ("heartbeat_seconds", "_build_heartbeat_event_template", "_emit_flow_run_heartbeat")
    for name in needed:
        if not hasattr(engine, name):
            raise CompatError(f"prefect.flow_engine.FlowRunEngine.{name} is gone")
    if not isinstance(getattr(flow_engine, "MINIMUM_HEARTBEAT_INTERVAL", None), int):
        raise CompatError("prefect.flow_engine.MINIMUM_HEARTBEAT_INTERVAL is gone")


def _check_drain_progress() -> None:
    import inspect

    from prefect._internal.concurrency import services
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    source = inspect.getsource(services)
    if _DRAIN_PROGRESS not in source or 'getLogger(f"{type(self).__name__}")' not in source:
        raise CompatError("prefect's QueueService no longer logs its drain as it did")
    if (EventsWorker.__name__, APILogWorker.__name__) != _DRAINED_SERVICES:
        raise CompatError("prefect's events and log workers were renamed")


def _check_gc_diagnosis() -> None:
    import inspect

    import distributed.gc as gc_module

    if gc_module.__name__ != _GC_DIAGNOSIS_MODULE:
        raise CompatError("distributed.gc moved")
    callback = getattr(getattr(gc_module, "GCDiagnosis", None), "_gc_callback", None)
    if not callable(callback) or "stop_timing" not in inspect.getsource(callback):
        raise CompatError("distributed's GCDiagnosis no longer times collections as it did")


#: Internal -> its check.
CHECKS: dict[str, Callable[[], None]] = {
    "prefect FlowRunContext.run_results": _check_run_results,
    "CPython Future._done_callbacks": _check_done_callbacks,
    "prefect PrefectWrappedFuture.wrapped_future": _check_wrapped_future,
    "prefect temporary server recipe": _check_server_app,
    "prefect APILogWorker.drain_all": _check_drain_all,
    "prefect EventsWorker.drain_all": _check_events_drain_all,
    "dask low-level-log-length and profile settings": _check_dask_settings,
    "prefect-dask DaskTaskRunner.submit internals": _check_dask_task_runner,
    "prefect database registry tables": _check_database_registry,
    "prefect API clients take a TLS context given": _check_client_tls,
    "distributed SpecCluster._created and Nanny.pid": _check_spec_cluster_created,
    "prefect flow run heartbeats": _check_heartbeats,
    "prefect QueueService drain warning": _check_drain_progress,
    "distributed GCDiagnosis callback": _check_gc_diagnosis,
}


def check_all() -> list[str]:
    """The internals that are missing, each with what is wrong; [] when all are there."""
    missing = []
    for name, check in CHECKS.items():
        try:
            check()
        except CompatError as exc:
            missing.append(f"{name}: {exc}")
    return missing
