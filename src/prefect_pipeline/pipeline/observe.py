"""What a run over many inputs shows in Prefect, and what it takes from it: the flow run's
page, a progress bar as groups finish, the summary and failures as artifacts, and a Cancel
pressed in the UI (or ``prefect flow-run cancel``).

The driver talks to a ``RunObserver``; ``PrefectObserver`` is the one used inside the
``run_parallel`` flow, ``NullObserver`` the one tests of the driver alone may use.
"""

from __future__ import annotations

import contextvars
import hashlib
import threading
import time
import uuid
from typing import Any, Protocol

from prefect_pipeline.logs import get_logger
from prefect_pipeline.pipeline.summary import RunSummary

logger = get_logger("observe")

#: How often the flow run's state is read (a Cancel is seen within this, and acted on at
#: the driver's next look, between groups), and at most how often the progress artifact is
#: updated.
POLL_SECONDS = 1.0


class RunObserver(Protocol):
    """The driver's view of where its run is watched."""

    def progress(self, done: int, total: int) -> None:
        """Inputs finished so far, of those known."""
        ...

    def should_stop(self) -> bool:
        """Whether someone asked the run to stop (a Cancel)."""
        ...


class NullObserver:
    """Watched by no one."""

    def progress(self, done: int, total: int) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def artifact_key(kind: str, database: str) -> str:
    """An artifact key of one database's runs: ``pipeline-summary-1a2b3c4d5e``. Prefect
    keeps every version under a key and shows the latest, so each database's latest summary
    stays one click away, and two databases never overwrite each other's."""
    digest = hashlib.sha256(database.encode("utf-8")).hexdigest()[:10]
    return f"pipeline-{kind}-{digest}"


def flow_run_url(flow_run_id: str, ui_url: str | None) -> str | None:
    """The flow run's page in the Prefect UI, when the API has one."""
    return f"{ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui_url else None


class PrefectObserver:
    """The current flow run, seen from inside it."""

    def __init__(self, database: str, ui_url: str | None, *, clock: Any = time.monotonic):
        from prefect.runtime import flow_run

        self.flow_run_id: str = str(flow_run.get_id())
        self.url = flow_run_url(self.flow_run_id, ui_url)
        self.database = database
        self._clock = clock
        self._last_progress = -POLL_SECONDS
        self._stopping = False
        #: The watcher (a thread reading the flow run's state) saw a Cancel; it stops when
        #: the run closes the observer.
        self._cancel_seen = threading.Event()
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        self._progress_id: Any = None
        #: The last figures the driver reported, shown or not yet.
        self._done = 0
        self._total = 0
        try:
            from prefect.artifacts import create_progress_artifact

            self._progress_id = create_progress_artifact(
                0.0,
                key=artifact_key("progress", database),
                description=f"Inputs finished, of those found so far ({database})",
            )
        except Exception:  # the run does not depend on the UI
            logger.debug("could not create the progress artifact", exc_info=True)

    def progress(self, done: int, total: int) -> None:
        """Update the bar, at most once every ``POLL_SECONDS`` (each update is a request)."""
        self._done, self._total = done, total
        now = self._clock()
        if self._progress_id is None or now - self._last_progress < POLL_SECONDS:
            return
        self._last_progress = now
        self._set_progress(self._percent())

    def finish(self, *, stopped: bool = False, found: int = 0) -> None:
        """The bar at its end: full, or, for a run stopped early (a Cancel), at the share
        it finished of the ``found`` inputs (those taken after the last figures, and given
        back, included)."""
        self._total = max(self._total, found)
        if self._progress_id is not None:
            self._set_progress(self._percent() if stopped else 100.0)

    def _percent(self) -> float:
        return 100.0 * self._done / self._total if self._total else 0.0

    def _set_progress(self, percent: float) -> None:
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self._progress_id, min(percent, 100.0))
        except Exception:
            logger.debug("could not update the progress artifact", exc_info=True)

    def should_stop(self) -> bool:
        """Whether the flow run was cancelled. The state is read by a watcher thread every
        ``POLL_SECONDS`` (started at the first call), so the driver's look between groups
        costs no request and a Cancel between two looks is not missed."""
        if self._stopping:
            return True
        if self._watcher is None:
            self._watch()
        if self._cancel_seen.is_set():
            logger.warning("the flow run was cancelled in Prefect: stopping between groups")
            self._stopping = True
        return self._stopping

    def _watch(self) -> None:
        def watch() -> None:
            while not self._closed.wait(POLL_SECONDS):
                if self._cancelling():
                    self._cancel_seen.set()
                    return

        # In the flow's context (its Prefect settings: the API to ask).
        context = contextvars.copy_context()
        self._watcher = threading.Thread(
            target=context.run, args=(watch,), name="watch-cancel", daemon=True
        )
        self._watcher.start()

    def close(self) -> None:
        """Stop watching for a Cancel (the run has ended)."""
        self._closed.set()

    def cancel_requested(self) -> bool:
        """Whether the flow run was cancelled, read now: a Cancel that came after the
        driver's last look still ends the run Cancelled (Prefect lets a cancelling flow run
        end in no other state)."""
        if self._stopping:
            return True
        if self._cancelling():
            logger.warning("the flow run was cancelled in Prefect after its last group")
            self._stopping = True
        return self._stopping

    def _cancelling(self) -> bool:
        try:
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                state = client.read_flow_run(uuid.UUID(self.flow_run_id)).state
        except Exception:  # an API that hiccups is not a Cancel
            logger.debug("could not read the flow run's state", exc_info=True)
            return False
        return state is not None and (state.is_cancelling() or state.is_cancelled())

    def publish(self, summary: RunSummary, title: str) -> None:
        """The summary and the failures as table artifacts."""
        try:
            from prefect.artifacts import create_table_artifact

            create_table_artifact(
                summary.table_rows(),
                key=artifact_key("summary", self.database),
                description=f"Summary of {title}",
            )
            if summary.failures:
                create_table_artifact(
                    summary.failures[:500],
                    key=artifact_key("failures", self.database),
                    description=f"Inputs that failed in {title}, with their job and error",
                )
        except Exception:  # the run's result does not depend on the UI
            logger.warning("could not publish the summary to Prefect", exc_info=True)
