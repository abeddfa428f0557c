"""Draining the queue on a schedule, as a Prefect deployment (``pipeline serve``).

``drain_queue`` is a flow a Prefect user would write by hand: it runs ``drain-db`` (whose
own ``run-parallel`` flow run appears as its child) and ends Failed when inputs failed, so
the deployment's runs are green only when the drain was. ``serve`` serves it with an
interval or a cron schedule through Prefect's ``Flow.serve``: the process stays up, picks
up scheduled runs and runs triggered from the UI or the API, each in a process of its own.

The database is not a parameter: parameters are stored in Prefect and shown in its UI, and a
PostgreSQL URL holds a password. Each flow run reads it from the serving process's
environment (``PIPELINE_DB_PATH`` / ``PIPELINE_DATABASE_URL``, set by ``pipeline serve``
from its options), as it does the pipeline definition. The queued inputs' JSON goes where
``pipeline enqueue`` put it.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.states import Cancelled, Failed

from prefect_pipeline.config import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETRY_DELAY,
    DEFAULT_WORKERS_AFTER,
    PipelineConfig,
)
from prefect_pipeline.exceptions import Interrupted, PipelineError

#: The deployment's flow name, as Prefect shows it.
FLOW_NAME = "drain-db"


@flow(name=FLOW_NAME, persist_result=False, log_prints=False, validate_parameters=True)
def drain_queue(
    workers: int | None = None,
    limit: int | None = None,
    start_from: str | None = None,
    stop_after: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    retry_delay: float = DEFAULT_RETRY_DELAY,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    address: str | None = None,
    workers_after: float = DEFAULT_WORKERS_AFTER,
) -> Any:
    """Run the queued inputs (``pipeline drain-db``) with these options; the database and
    the pipeline come from the serving process's environment. A drain that cannot start
    (the database unreachable, its inputs' output folder unusable) ends Failed with its
    one-line reason, as the command prints it, not a traceback."""
    import os

    from prefect_pipeline.pipeline.definition import default_pipeline, load_definition
    from prefect_pipeline.pipeline.parallel import run_parallel_from_database

    config = PipelineConfig.from_env()
    reference = os.environ.get("PIPELINE_DEFINITION")
    definition = load_definition(reference) if reference else default_pipeline()
    try:
        summary = run_parallel_from_database(
            config,
            definition=definition,
            start_from=start_from,
            stop_after=stop_after,
            limit=limit,
            workers=workers,
            workers_after_s=workers_after,
            address=address,
            max_attempts=max_attempts,
            retry_base_seconds=retry_delay,
            lease_seconds=lease_seconds,
        )
    except Interrupted as stopped:
        return Cancelled(message="the drain was cancelled", data=stopped.summary.to_dict())
    except PipelineError as exc:
        return Failed(message=str(exc))
    report = summary.to_dict()
    if summary.failed or summary.pending:
        return Failed(
            message=f"{summary.failed} failed, {summary.pending} left pending, of "
            f"{summary.total + summary.pending} input(s)",
            data=report,
        )
    return report


def serve(
    name: str,
    *,
    interval: float | None,
    cron: str | None,
    parameters: dict[str, Any],
) -> None:
    """Serve ``drain_queue`` as the deployment ``drain-db/<name>`` until stopped."""
    schedule: dict[str, Any] = {"interval": interval} if interval else {"cron": cron}
    drain_queue.serve(
        name=name,
        parameters={key: value for key, value in parameters.items() if value is not None},
        description="Drain the pipeline's queue (pipeline drain-db) on a schedule.",
        tags=["prefect-pipeline"],
        print_starting_message=False,
        **schedule,
    )
