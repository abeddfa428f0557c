"""A progress bar on stderr, only when a person is watching (a terminal, logs not OFF)."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """Files done / total, rate and ETA. A no-op when ``enabled`` is False."""

    def __init__(self, enabled: bool, description: str = "inputs") -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        self._description = description
        self.total = 0

    @staticmethod
    def wanted(log_level: str) -> bool:
        return log_level != "OFF" and sys.stderr.isatty()

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=sys.stderr),
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self._description, total=None, rate="")
        return self

    def found(self, count: int = 1) -> None:
        """More inputs were discovered."""
        self.total += count
        if self._bar is not None:
            self._bar.update(self._task, total=self.total)

    def advance(self, count: int = 1) -> None:
        """Inputs finished (succeeded, failed or skipped)."""
        if self._bar is not None and count:
            self._bar.advance(self._task, count)
            task = self._bar.tasks[0]
            speed = task.speed
            self._bar.update(self._task, rate=f"{speed:.1f}/s" if speed else "")

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc_info)
            self._bar = None
