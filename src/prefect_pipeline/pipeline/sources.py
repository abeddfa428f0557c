"""Where a run's inputs come from: groups of inputs, each input claimed in the ledger
before its work starts.

Two sources: ``FileSource`` (files found under a folder, or given one by one: registered
in the ledger as they are found) and ``QueueSource`` (inputs queued by ``pipeline enqueue``).
Groups start small, so that the first input commits quickly, and double up to a cap in
files and in bytes, so that per-group orchestration is paid rarely and memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, Protocol

from prefect_pipeline.database.ledger import Claimed, Ledger
from prefect_pipeline.jobs.base import Kind
from prefect_pipeline.logs import get_logger
from prefect_pipeline.pipeline.definition import JobSpec
from prefect_pipeline.pipeline.discovery import Found, Ignored
from prefect_pipeline.pipeline.options import ParallelOptions
from prefect_pipeline.pipeline.wrappers import WorkItem

logger = get_logger("sources")


class ProgressSink(Protocol):
    """What a source tells the progress display."""

    def found(self, count: int = 1) -> None: ...

    def advance(self, count: int = 1) -> None: ...


class Source(Protocol):
    """A stream of groups of claimed inputs for one run."""

    #: True once the source will give no more groups.
    exhausted: bool
    #: (path, reason) of inputs not run because they need nothing (unchanged).
    skipped_inputs: list[dict[str, str]]
    #: Inputs not run because another live command holds them: input, owner, until.
    held_inputs: list[dict[str, str]]
    #: Paths that are not inputs (a FIFO, a symlink out of the folder...), with the reason.
    ignored_paths: list[dict[str, str]]
    #: Paths that could not be looked at (a folder that cannot be listed), with the reason:
    #: inputs under them may have been missed, so the run did not do all it was asked.
    unreadable_paths: list[dict[str, str]]

    def next_group(self) -> list[WorkItem] | None:
        """The next group (possibly empty: everything found was skipped), or None when
        nothing can be claimed now."""
        ...

    def next_due(self) -> datetime | None:
        """When inputs not claimable now may become so (a retry falling due), or None."""
        ...


class GroupSizer:
    """Group sizes that start small and double up to a cap (files and bytes)."""

    def __init__(self, options: ParallelOptions) -> None:
        self.files = options.first_group_files
        self.max_files = options.max_group_files
        self.max_bytes = options.max_group_bytes

    def next_limit(self) -> int:
        current = self.files
        self.files = min(self.files * 2, self.max_files)
        return current


def first_item(first_job: JobSpec, claimed: Claimed) -> WorkItem:
    """An input as its chain's first job takes it: a job that takes files is told where its
    output goes; any other gets the path itself (e.g. a document's JSON file)."""
    data: Any = claimed.path
    if first_job.takes is Kind.FILE:
        data = {"path": claimed.path, "output_path": claimed.output_path}
    return WorkItem(data, input_id=claimed.input_id, path=claimed.path, attempts=claimed.attempts)


class FileSource:
    """Groups of claimed inputs from a stream of found files."""

    def __init__(
        self,
        found: Iterator[Found | Ignored],
        ledger: Ledger,
        chain: list[JobSpec],
        options: ParallelOptions,
        progress: ProgressSink,
    ) -> None:
        self._found = found
        self._ledger = ledger
        self._chain = chain
        self._force = options.force
        self._sizer = GroupSizer(options)
        self._progress = progress
        self.exhausted = False
        self.skipped_inputs: list[dict[str, str]] = []
        self.held_inputs: list[dict[str, str]] = []
        self.ignored_paths: list[dict[str, str]] = []
        self.unreadable_paths: list[dict[str, str]] = []

    def next_group(self) -> list[WorkItem] | None:
        if self.exhausted:
            return None
        limit = self._sizer.next_limit()
        group: list[Found] = []
        size = 0
        for entry in self._found:
            if isinstance(entry, Ignored):
                if entry.unreadable:
                    self.unreadable_paths.append({"path": entry.path, "reason": entry.reason})
                    logger.error("cannot read %s: %s", entry.path, entry.reason)
                else:
                    self.ignored_paths.append({"path": entry.path, "reason": entry.reason})
                    logger.info("ignored %s: %s", entry.path, entry.reason)
                continue
            group.append(entry)
            size += entry.size
            self._progress.found()
            if len(group) >= limit or size >= self._sizer.max_bytes:
                break
        else:
            self.exhausted = True
        registration = self._ledger.register_and_claim(
            group,
            start_job=self._chain[0].name,
            stop_job=self._chain[-1].name,
            force=self._force,
        )
        for path, reason in registration.skipped:
            self.skipped_inputs.append({"input": path, "reason": reason})
        for held in registration.held:
            self.held_inputs.append({"input": held.path, "owner": held.owner, "until": held.until})
        self._progress.advance(len(registration.skipped) + len(registration.held))
        return [first_item(self._chain[0], claimed) for claimed in registration.claimed]

    def next_due(self) -> datetime | None:
        return None  # a folder run never retries


class QueueSource:
    """Groups of inputs claimed from the queue, until ``limit`` were taken."""

    def __init__(
        self,
        ledger: Ledger,
        chain: list[JobSpec],
        options: ParallelOptions,
        limit: int | None,
        progress: ProgressSink,
    ) -> None:
        assert options.max_attempts is not None
        self._ledger = ledger
        self._chain = chain
        self._max_attempts = options.max_attempts
        self._sizer = GroupSizer(options)
        self._left = limit
        self._progress = progress
        self.exhausted = False
        self.skipped_inputs: list[dict[str, str]] = []
        # Other drainers' claims are theirs to run: a drain never reports them.
        self.held_inputs: list[dict[str, str]] = []
        self.ignored_paths: list[dict[str, str]] = []
        self.unreadable_paths: list[dict[str, str]] = []

    def next_group(self) -> list[WorkItem] | None:
        if self._left is not None and self._left <= 0:
            self.exhausted = True
            return None
        size = self._sizer.next_limit()
        if self._left is not None:
            size = min(size, self._left)
        claimed = self._ledger.claim_pending(
            size,
            max_attempts=self._max_attempts,
            start_job=self._chain[0].name,
            stop_job=self._chain[-1].name,
            max_bytes=self._sizer.max_bytes,
        )
        if not claimed:
            return None
        if self._left is not None:
            self._left -= len(claimed)
        self._progress.found(len(claimed))
        return [first_item(self._chain[0], c) for c in claimed]

    def next_due(self) -> datetime | None:
        if self._left is not None and self._left <= 0:
            return None
        return self._ledger.next_due()
