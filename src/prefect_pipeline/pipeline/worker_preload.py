"""Imported by every Dask worker of a local cluster as it starts (Dask's ``preload``).

A worker otherwise imports Prefect's task engine when its first task arrives: about two
seconds on the critical path to the first committed input. Preloading moves that into the
cluster's start-up, which overlaps the Prefect server's.

It also makes the worker deaf to SIGINT and SIGTERM. A terminal's Ctrl-C and a
supervisor's stop (systemd, Kubernetes, ``timeout``) signal the command's whole process
group: workers that died of it would each print a traceback and, dying before the command
gave back its claims, make its clean-up wait on dead peers. The command stops its workers
itself, and a worker exits at once when its command's process is gone (Dask's parent pipe),
so no signal is needed to end one.
"""

import signal
import threading

import prefect.task_engine  # noqa: F401

import prefect_pipeline.jobs
import prefect_pipeline.pipeline.wrappers  # noqa: F401
from prefect_pipeline.compat import (
    plain_http_clients,
    quiet_drain_progress,
    quiet_gc_diagnosis_race,
)
from prefect_pipeline.logs import quiet_worker_close

plain_http_clients()  # before the worker's first Prefect client

quiet_worker_close()  # its teardown in the middle of a run is the command's doing
quiet_drain_progress()  # nor is the drain of its last events as it closes a warning
quiet_gc_diagnosis_race()  # nor a race of Dask's GC diagnosis as the worker starts

if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Started with them blocked (``cluster._stop_signals_blocked``): any that came while it
    # started is dropped now, ignored.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
