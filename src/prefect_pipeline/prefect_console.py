"""Prefect's console handler as the pipeline's processes use it.

``logs.environment_for`` names this class in ``PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS``,
Prefect's documented way to override one key of its logging.yml from the environment, so
the command's process, its Dask workers and its temporary Prefect server all print
Prefect's lines through it. It is Prefect's own handler (same format, same colours) with
the terminal's rules (``logs.shown_on_terminal``): Prefect's loggers stay at INFO for its
API handler, and the terminal shows only the user's level.
"""

from __future__ import annotations

from typing import Any

from prefect.logging.handlers import PrefectConsoleHandler
from rich.console import Console

from prefect_pipeline.logs import TerminalFilter


class _QuietOnBrokenPipe(Console):
    """Rich's console, but a closed stream (``pipeline ... 2>&1 | head``) only silences it.

    Rich's default raises ``SystemExit`` in whichever thread printed and points standard
    output (the ``--json`` summary) at /dev/null. Raised in one of Prefect's event-loop
    threads as it starts, it killed the thread before the thread said it was ready, and the
    run waited for it forever. Losing the log lines is the least a closed pipe can cost.
    """

    def on_broken_pipe(self) -> None:  # rich's documented hook for this
        self.quiet = True


class TerminalConsoleHandler(PrefectConsoleHandler):
    """``PrefectConsoleHandler`` that prints only what ``logs.shown_on_terminal`` allows."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Prefect builds the console itself; only its broken-pipe hook changes.
        self.console.__class__ = _QuietOnBrokenPipe
        self.addFilter(TerminalFilter())
