"""Every private internal in ``compat.py``, exercised for real: an upgrade of Prefect, Dask
or Python that removes or renames one fails here, by name."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from prefect_pipeline import compat


@pytest.mark.parametrize("name", list(compat.CHECKS))
def test_each_internal_is_there(name: str) -> None:
    compat.CHECKS[name]()  # raises CompatError naming the internal when it is gone


def test_check_all_reports_nothing_missing() -> None:
    assert compat.check_all() == []


class Payload:
    """A task result whose life the tests watch."""


def test_forget_task_results_empties_the_flow_runs_results() -> None:
    from prefect import flow, task

    @task(persist_result=False)
    def make() -> Payload:
        return Payload()

    @flow(persist_result=False)
    def body() -> tuple[int, int]:
        from prefect.context import FlowRunContext

        make()
        context = FlowRunContext.get()
        assert context is not None
        before = len(context.run_results)
        compat.forget_task_results()
        return before, len(context.run_results)

    assert body() == (1, 0)


def test_break_future_cycle_cuts_the_thread_pool_futures_link() -> None:
    """The link the cycle runs through: the wrapped future's done callbacks hold the
    Prefect future. (Its effect on memory is tested on a whole run in test_parallel.py.)

    The task waits until it has been submitted: a future already done when Prefect wraps it
    runs the callback at once and keeps no link (nor cycle), which is not what is tested."""
    import threading

    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    submitted = threading.Event()

    @task(persist_result=False)
    def make() -> Payload:
        submitted.wait(timeout=30)
        return Payload()

    @flow(persist_result=False, task_runner=ThreadPoolTaskRunner(max_workers=1))
    def body() -> tuple[bool, list[Any]]:
        future: Any = make.submit()
        submitted.set()
        future.result()
        callbacks = future.wrapped_future._done_callbacks
        links = any(getattr(c, "__self__", None) is future for c in callbacks)
        compat.break_future_cycle(future)
        return links, future.wrapped_future._done_callbacks

    assert body() == (True, [])


def test_cancel_future_cancels_the_work_on_its_executor() -> None:
    """A group queued behind another in the thread pool is cancelled before it starts."""
    import threading

    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    release = threading.Event()

    @task(persist_result=False)
    def hold() -> None:
        release.wait(timeout=30)

    @task(persist_result=False)
    def make() -> Payload:
        return Payload()

    @flow(persist_result=False, task_runner=ThreadPoolTaskRunner(max_workers=1))
    def body() -> tuple[bool, bool]:
        running: Any = hold.submit()
        queued: Any = make.submit()
        compat.cancel_future(queued)
        release.set()
        running.result()
        return queued.wrapped_future.cancelled(), running.wrapped_future.cancelled()

    assert body() == (True, False)


@pytest.mark.parametrize("helper", [compat.cancel_future, compat.break_future_cycle])
def test_a_future_without_wrapped_future_fails_by_name(helper: Any) -> None:
    """Were Prefect to rename ``wrapped_future``, the helpers would say so, not silently
    leave a group running or a cycle holding its results. A Prefect future that wraps
    nothing stands in for the renamed one."""
    import uuid

    from prefect.futures import PrefectDistributedFuture

    future = PrefectDistributedFuture(task_run_id=uuid.uuid4())

    with pytest.raises(compat.CompatError) as raised:
        helper(future)

    assert str(raised.value) == "prefect.futures.PrefectDistributedFuture.wrapped_future is gone"


def test_flush_api_logs_sends_what_prefect_holds() -> None:
    from prefect import flow, get_run_logger

    @flow(persist_result=False)
    def body() -> None:
        get_run_logger().warning("a line for the API")
        compat.flush_api_logs(timeout=5)

    body()


def test_quiet_dask_settings_are_dask_settings() -> None:
    import dask

    with dask.config.set(compat.QUIET_DASK):
        assert [dask.config.get(key) for key in compat.QUIET_DASK] == list(
            compat.QUIET_DASK.values()
        )


def test_seed_prefect_database_copies_the_schema_and_registry_but_no_run(
    tmp_path: Path,
) -> None:
    """From the session server's database, migrated and then used by the suite's runs."""
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    assert url is not None
    source = Path(url.get_secret_value().split(":///", 1)[1])
    target = tmp_path / "prefect.db"

    compat.seed_prefect_database(source, target)

    def read(path: Path, sql: str) -> list[Any]:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute(sql).fetchall()

    schema = "SELECT type, name, sql FROM sqlite_master ORDER BY name"
    assert read(target, schema) == read(source, schema)
    for table in compat.PREFECT_DATABASE_REGISTRY:
        rows = f"SELECT * FROM {table} ORDER BY 1"
        assert read(target, rows) == read(source, rows) != []
    assert read(target, "SELECT count(*) FROM flow_run") == [(0,)]


def test_a_client_of_a_local_plain_http_api_loads_no_ca_bundle_and_any_other_still_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``plain_http_clients``: Prefect's clients of an ``http://`` API on the loopback get a
    TLS context that loads nothing (building one per client loaded the CA bundle each
    time); a client of any other API still builds and verifies its own."""
    import ssl

    from prefect.client.orchestration import PrefectClient, SyncPrefectClient

    built: list[Any] = []
    real = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        context = real(*args, **kwargs)
        built.append(context)
        return context

    monkeypatch.setattr(ssl, "create_default_context", counting)
    compat.plain_http_clients()  # the command and every worker have called it already

    for kind in (SyncPrefectClient, PrefectClient):
        plain = kind("http://127.0.0.1:4200/api")
        assert built == [], kind
        given = plain._client._transport._pool._ssl_context  # httpx's, then httpcore's
        assert given.verify_mode == ssl.CERT_REQUIRED and given.cert_store_stats()["x509"] == 0

        # Not for a server elsewhere (plain HTTP may redirect to https, which Prefect's
        # clients follow), nor where the caller says how to verify.
        kind("https://prefect.example.com/api")
        kind("http://prefect.example.com:4200/api")
        assert len(built) == 2, kind
        assert all(c.verify_mode == ssl.CERT_REQUIRED for c in built)
        assert all(c.cert_store_stats()["x509_ca"] > 0 for c in built)  # a CA bundle
        built.clear()
        own = ssl.create_default_context()
        built.clear()
        mine = kind("http://127.0.0.1:4200/api", httpx_settings={"verify": own})
        assert mine._client._transport._pool._ssl_context is own


def test_a_flow_runs_heartbeat_beats_and_its_thread_is_gone_when_the_run_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``prompt_heartbeat_stop`` (installed by the flows module): a flow run still sends
    its heartbeat, and the thread sending it has ended by the time the run returns (it
    waits on the stop event, where Prefect's slept in one-second steps)."""
    import threading

    import prefect.flow_engine as flow_engine
    from prefect import flow
    from prefect.context import FlowRunContext

    import prefect_pipeline.pipeline.flows  # noqa: F401 - installs it, as in every command

    assert flow_engine._send_heartbeats is compat._send_heartbeats
    beats: list[str] = []
    monkeypatch.setattr(
        flow_engine.FlowRunEngine,
        "_emit_flow_run_heartbeat",
        lambda self, resource, related: beats.append(resource["prefect.resource.id"]),
    )
    before = set(threading.enumerate())

    @flow(persist_result=False)
    def body() -> tuple[str, list[threading.Thread]]:
        context = FlowRunContext.get()
        assert context is not None and context.flow_run is not None
        # Thread(target=context.run, args=(beat,)): its function is its first argument
        # (a thread forgets its arguments when it ends, so they are read here).
        beating = [
            thread
            for thread in threading.enumerate()
            if thread not in before
            and getattr(next(iter(getattr(thread, "_args", ())), None), "__name__", "") == "beat"
        ]
        return str(context.flow_run.id), beating

    run_id, beating = body()

    assert beats == [f"prefect.flow-run.{run_id}"]
    assert len(beating) == 1 and not beating[0].is_alive()


def test_prefects_warning_about_a_drain_with_items_left_is_dropped() -> None:
    """``quiet_drain_progress`` (the flows module and every local worker install it): the
    drain at a command's end sends what a run queued last, and says nothing about it."""
    import logging

    compat.quiet_drain_progress()
    compat.quiet_drain_progress()  # idempotent
    for name in ("EventsWorker", "APILogWorker"):
        target = logging.getLogger(name)
        assert target.filters.count(compat._not_drain_progress) == 1

        def kept(message: str, target: logging.Logger = target) -> bool:
            record = logging.LogRecord(target.name, logging.WARNING, __file__, 1, message, (), None)
            return target.filter(record)

        assert not kept("Still processing items: 4 items remaining...")
        assert kept("Service 'EventsWorker' failed with 3 pending items.")


@pytest.mark.parametrize("quieted", [True, False])
def test_the_gc_diagnosis_race_prints_no_traceback_and_other_errors_still_do(
    quieted: bool,
) -> None:
    """distributed's GC diagnosis added while a collection runs sees only its stop: the
    race, made happen for real by adding the callback from inside the collection's start
    (where another thread's registration lands). Quieted, it prints nothing; another
    unraisable exception still prints; not quieted, the traceback shows (the case is
    real)."""
    code = textwrap.dedent(
        f"""
        import gc
        from distributed.gc import GCDiagnosis
        from prefect_pipeline.compat import quiet_gc_diagnosis_race

        if {quieted}:
            quiet_gc_diagnosis_race()
            quiet_gc_diagnosis_race()  # idempotent: one hook
        diagnosis = GCDiagnosis()

        def enable_midway(phase, info):
            if phase == "start" and info["generation"] == 2:
                gc.callbacks.remove(enable_midway)
                diagnosis.enable()  # as enable_gc_diagnosis does, from another thread

        gc.callbacks.append(enable_midway)
        gc.collect()
        diagnosis.disable()

        class Other:
            def __del__(self):
                raise ValueError("another problem")

        Other()
        """
    )

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert ("GCDiagnosis._gc_callback" in result.stderr) is not quieted, result.stderr
    assert "ValueError: another problem" in result.stderr
