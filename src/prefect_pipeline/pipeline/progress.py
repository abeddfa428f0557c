"""The live display at the bottom of a terminal while a run goes over many inputs.

Only when a person is watching: stderr is a terminal and the log level is not OFF.
Otherwise nothing is drawn, and ``starting()`` / ``ready()`` are plain log lines.

One line at the bottom: a spinner and what is being started, then the bar: done/total,
rate, failures so far, elapsed time and ETA. On a narrow terminal the line gives up the
bar's width, the description, the rate, the bar and the percentage, in that order, before
anything else: the counts and the times stay. Every log line is printed above it, never
inside it. Log handlers keep the stream they saw when they were made (Prefect's console
handler, Dask's), and the Dask workers and the temporary Prefect server are other
processes that write to the terminal themselves; so while the display is on, file
descriptor 2 itself is a pipe, and a thread prints each line that comes out of it above
the display. The display is entered before any child process starts, so that they all
inherit the pipe.

The figures follow the summary's rules (``RunSummary``): elapsed time from the command's
start, rate = inputs done / elapsed; ``finish(summary)`` shows the summary's own figures,
so the last bar and the summary agree. The total never moves backwards: a counting walk
(``count()``, the same walk as discovery) runs in a thread while the run starts, the
display shows "N found" with a spinner until it ends, and the total is then fixed (or
grows, if discovery later finds more).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prefect_pipeline.logs import get_logger
from prefect_pipeline.pipeline.summary import rate

logger = get_logger("progress")

#: Frames per second of the display.
REFRESH_PER_SECOND = 4
#: The bar's width when the terminal has room, and the narrowest it is drawn.
BAR_WIDTH, MIN_BAR_WIDTH = 30, 10


@dataclass(frozen=True)
class Figures:
    """What the display shows at one moment."""

    done: int
    total: int
    #: The total is final (counting ended, or the summary gave it).
    total_known: bool
    failed: int
    elapsed_s: float
    files_per_s: float
    eta_s: float | None


class Progress:
    """The run's display. A no-op (apart from start-up log lines) when ``enabled`` is False.

    Hooks, in the order a run calls them: ``with progress:`` before anything starts;
    ``starting(what)`` and ``ready()`` around start-up; ``count(entries)`` while starting,
    or ``set_total(n)``; ``found(n)``, ``advance(n)`` and ``failed(n)`` as inputs are found,
    settled and failed; ``finish(summary)`` once the summary is read.
    """

    def __init__(
        self,
        enabled: bool,
        description: str = "inputs",
        *,
        started_at: float | None = None,
    ) -> None:
        self.enabled = enabled
        self.description = description
        #: Epoch seconds the command started: the summary's clock.
        self.started_at = time.time() if started_at is None else started_at
        self.total = 0
        self.total_known = False
        self.done = 0
        self.failures = 0
        self.found_count = 0
        self.counted = 0
        self._counting: threading.Thread | None = None
        self._what: str | None = None
        self._first_done_at: float | None = None
        self._final: Figures | None = None
        self._display: _Display | None = None
        self._spinner: Any = None

    @staticmethod
    def wanted(log_level: str) -> bool:
        """Whether to draw: stderr is a terminal and logs are not OFF."""
        return log_level.upper() != "OFF" and sys.stderr.isatty()

    # Life cycle -----------------------------------------------------------------------

    def __enter__(self) -> Progress:
        if self.enabled and self._display is None:
            self._display = _Display(self._render)
            self._display.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        display, self._display = self._display, None
        if display is not None:
            display.stop()

    # Hooks ----------------------------------------------------------------------------

    def starting(self, what: str) -> None:
        """Say what is being started or used ("starting a temporary Prefect server and a
        Dask cluster of 2 worker(s)"); the display shows it with a spinner until
        ``ready()``."""
        self._what = what
        logger.info("%s", what)

    def ready(self) -> None:
        """What ``starting()`` named is up: say so, with the time since the command began."""
        if self._what is not None:
            logger.info("ready after %.1f s", time.time() - self.started_at)
        self._what = None

    def count(self, entries: Callable[[], Iterable[object]]) -> None:
        """Count the run's inputs in a thread: ``entries()`` yields one item per input, by
        the same rules as discovery. Until it ends the display shows how many were found;
        then the total is fixed. Nothing is counted when nothing is drawn."""
        if not self.enabled or self._counting is not None:
            return

        def walk() -> None:
            try:
                for _ in entries():
                    self.counted += 1
                    if self.counted > self.total:
                        self.total = self.counted
            except Exception:  # the run's own discovery reports what is wrong
                logger.debug("counting the inputs failed", exc_info=True)
                return
            self.total_known = True

        self._counting = threading.Thread(target=walk, name="count-inputs", daemon=True)
        self._counting.start()

    @property
    def counting(self) -> bool:
        """Whether ``count`` walks (or walked) the run's inputs."""
        return self._counting is not None

    def total_within(self, seconds: float) -> int | None:
        """The total ``count`` arrives at, waiting at most ``seconds`` for its walk to end;
        None when it has not by then (or never started)."""
        if self._counting is not None:
            self._counting.join(seconds)
        return self.total if self.total_known else None

    def set_total(self, total: int) -> None:
        """The run's total is known (it only grows from here)."""
        self.total = max(self.total, total)
        self.total_known = True

    def found(self, count: int = 1) -> None:
        """Discovery handed ``count`` more inputs to the run."""
        self.found_count += count
        if self.found_count > self.total:
            self.total = self.found_count

    def advance(self, count: int = 1) -> None:
        """Inputs reached their end (succeeded, failed, skipped, or waiting for a retry)."""
        if count and self._first_done_at is None:
            self._first_done_at = time.time()
        self.done += count

    def failed(self, count: int = 1) -> None:
        """Inputs failed for good."""
        self.failures += count

    def finish(self, summary: Any) -> None:
        """Show the summary's figures (a ``RunSummary``) in a last frame and end the
        display, so that the summary printed next is below it: they agree."""
        total = summary.total + summary.pending + (summary.not_reached or 0)
        if summary.stopped and self.total_known:
            # Stopped early, the run's own count of its inputs stands where the summary's
            # could not count those not reached: the bar stays where it was.
            total = max(total, self.total)
        self._final = Figures(
            done=summary.total,
            total=total,
            total_known=True,
            failed=summary.failed,
            elapsed_s=summary.elapsed_s,
            files_per_s=summary.files_per_s,
            eta_s=None,
        )
        self.__exit__(None, None, None)

    # Figures and drawing --------------------------------------------------------------

    def figures(self, now: float | None = None) -> Figures:
        """The figures at ``now`` (the summary's, once ``finish`` was called)."""
        if self._final is not None:
            return self._final
        now = time.time() if now is None else now
        elapsed = max(0.0, now - self.started_at)
        total = max(self.total, self.done)
        eta = None
        if self.total_known and self._first_done_at is not None and self.done:
            # From the pace since the first input settled: start-up is over by then.
            pace = (now - self._first_done_at) / self.done
            eta = max(0.0, (total - self.done) * pace)
        return Figures(
            done=self.done,
            total=total,
            total_known=self.total_known,
            failed=self.failures,
            elapsed_s=elapsed,
            files_per_s=rate(self.done, elapsed),
            eta_s=eta,
        )

    def _render(self) -> Any:
        """The display's renderable: its line is laid out for the width it is drawn at."""
        return _Fitted(self._line)

    def _line(self, console: Any, options: Any) -> Any:
        """The one line, at most ``options.max_width`` cells. What does not fit is given up
        least useful first: the bar's width (down to ``MIN_BAR_WIDTH``), the description,
        the rate, the bar, the percentage; the counts, failures, elapsed time and ETA stay.
        Only a terminal too narrow for those is the line cut (…)."""
        from rich.spinner import Spinner
        from rich.text import Text

        width = options.max_width
        figures = self.figures()
        head = Text()
        if self._final is None and (self._what is not None or not figures.total_known):
            if self._spinner is None:  # one spinner, so that it turns from frame to frame
                self._spinner = Spinner("dots", style="cyan")
            head.append_text(self._spinner.render(console.get_time()))
            head.append(" ")
        if self._what is not None:
            # What is being started may be cut; the time it has taken so far stays.
            kept = Text(f" · {figures.elapsed_s:.1f} s", style="dim")
            if self.counted:
                kept.append(f" · {self.counted} input(s) found", style="dim")
            room = width - head.cell_len - kept.cell_len
            what = Text(self._what, style="bold")
            # Cut to what fits, to a bare ellipsis where nothing of it would be readable.
            what.truncate(max(room, 1), overflow="ellipsis")
            return _cut(Text.assemble(head, what, kept), width)
        full = _figures_text(figures, rate=True)
        short = _figures_text(figures, rate=False)
        shortest = _figures_text(figures, rate=False, percent=False)
        # The bar is sized for the widest figures the run will show, not for this frame's:
        # it does not change as the count, the rate and the time gain digits, nor when the
        # ETA (one under ten minutes) comes or goes with the last frame.
        extra = max(0, len(_RATE_ROOM) - len(f"{figures.files_per_s:.1f}"))
        extra += max(0, len(_ELAPSED_ROOM) - len(f"{figures.elapsed_s:.1f}"))
        if figures.total_known:
            widest = len(_count(figures.total, figures.total))
            extra += max(0, widest - len(_count(figures.done, figures.total)))
            if figures.eta_s is None:
                extra += len(" · ETA 0:00")
        description = Text(f"{self.description} ")
        for text, with_description, with_bar in (
            (full, True, True),
            (full, False, True),
            (short, False, True),
            (short, False, False),
            (shortest, False, False),
        ):
            used = head.cell_len + text.cell_len
            if with_description:
                used += description.cell_len
            if not with_bar:
                if used <= width:
                    return Text.assemble(head, text)
                continue
            bar_width = min(BAR_WIDTH, width - used - extra - 1)
            if bar_width >= MIN_BAR_WIDTH:
                bar = _bar(console, options, figures, bar_width)
                shown = description if with_description else Text()
                return Text.assemble(head, shown, bar, " ", text)
        return _cut(Text.assemble(head, shortest), width)


class _Fitted:
    """A renderable whose one line is made for the width it is given (rich's Live redraws
    it every frame, with the terminal's width of the moment)."""

    def __init__(self, line: Callable[[Any, Any], Any]) -> None:
        self._line = line

    def __rich_console__(self, console: Any, options: Any) -> Iterable[Any]:
        yield self._line(console, options)


def _count(done: int, total: int, *, percent: bool = True) -> str:
    return f"{done}/{total} {100 * done // total}%" if total and percent else f"{done}/{total}"


#: The widest rate and elapsed time the bar leaves room for (files/s, seconds).
_RATE_ROOM = "9999.9"
_ELAPSED_ROOM = "999.9"


def _figures_text(figures: Figures, *, rate: bool, percent: bool = True) -> Any:
    """Counts (with the percentage if ``percent``), rate (if ``rate``), failures, elapsed
    time and ETA."""
    from rich.text import Text

    if figures.total_known:
        count = _count(figures.done, figures.total, percent=percent)
    else:
        count = f"{figures.done} done, {figures.total} found so far"
    text = Text()
    text.append(count, style="bold")  # the count only: a Text's own style is all of it
    if rate:
        text.append(f" · {figures.files_per_s:.1f} files/s")
    text.append(" · ")
    text.append(f"{figures.failed} failed", style="bold red" if figures.failed else "")
    text.append(f" · {figures.elapsed_s:.1f} s", style="dim")
    if figures.eta_s is not None:
        text.append(f" · ETA {_clock(figures.eta_s)}", style="dim")
    return text


def _bar(console: Any, options: Any, figures: Figures, width: int) -> Any:
    """The progress bar, ``width`` cells (an unknown total: a pulse)."""
    from rich.progress_bar import ProgressBar
    from rich.text import Text

    if figures.total_known:
        bar = ProgressBar(total=figures.total or 1, completed=figures.done, width=width)
    else:
        bar = ProgressBar(total=None, width=width)
    text = Text()
    for segment in console.render(bar, options.update(width=width)):
        text.append(segment.text, segment.style)
    # Without colour rich leaves the part still to do undrawn: blank, the line stays put.
    text.pad_right(width - text.cell_len)
    return text


def _cut(text: Any, width: int) -> Any:
    """One line, whatever the terminal's width: cut (…), never wrapped onto a second line
    that each refresh would leave behind."""
    text.no_wrap = True
    text.truncate(width, overflow="ellipsis")
    return text


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class _Display:
    """The live display and the capture of file descriptor 2 that keeps lines above it."""

    def __init__(self, render: Callable[[], Any]) -> None:
        self._render = render
        self._live: Any = None
        self._capture: _StderrCapture | None = None

    def start(self) -> None:
        from rich.live import Live

        sys.stderr.flush()
        # The terminal, kept apart before descriptor 2 becomes the pipe.
        terminal = os.fdopen(
            os.dup(sys.stderr.fileno()), "w", encoding="utf-8", errors="replace", buffering=1
        )
        console = _terminal_console(terminal)
        self._capture = _StderrCapture(console)
        self._capture.start()
        self._live = Live(
            get_renderable=self._render,
            console=console,
            refresh_per_second=REFRESH_PER_SECOND,
            transient=False,
            # Descriptor 2 is captured: rich need not swap sys.stderr, and stdout is the
            # command's results (it may be a file: --json > summary.json).
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()

    def stop(self) -> None:
        try:
            if self._capture is not None:
                self._capture.stop()  # every line written so far, above the display
        finally:
            if self._live is not None:
                self._live.stop()  # the last frame stays, below those lines


def _terminal_console(terminal: Any) -> Any:
    """A rich console on ``terminal``; sized from it (descriptor 2 is a pipe meanwhile).
    Rich honours ``NO_COLOR`` and draws colour only on a terminal."""
    from rich.console import Console, ConsoleDimensions

    class TerminalConsole(Console):
        @property  # type: ignore[override, misc]
        def size(self) -> ConsoleDimensions:
            try:
                columns, lines = os.get_terminal_size(terminal.fileno())
            except (OSError, ValueError):
                return super().size
            return ConsoleDimensions(columns or 80, lines or 25)

    return TerminalConsole(file=terminal, highlight=False)


class _StderrCapture:
    """While on, file descriptor 2 (this process's and its new children's) is a pipe whose
    lines ``console`` prints: above the live display while there is one."""

    def __init__(self, console: Any) -> None:
        self._console = console
        self._saved: int | None = None
        self._write: int | None = None
        self._marker = f"\x00end-of-capture-{os.getpid()}-{id(self)}".encode()
        self._drained = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        read, self._write = os.pipe()
        self._saved = os.dup(2)
        os.dup2(self._write, 2)
        self._thread = threading.Thread(
            target=self._pump, args=(read,), name="terminal-lines", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Give descriptor 2 back, once every line this process wrote has been printed.
        Children still running keep writing to the pipe; their lines are still printed."""
        sys.stderr.flush()
        assert self._saved is not None and self._write is not None
        os.dup2(self._saved, 2)
        os.close(self._saved)
        os.write(self._write, self._marker + b"\n")
        os.close(self._write)
        self._drained.wait(timeout=5)

    def _pump(self, read: int) -> None:
        from rich.text import Text

        pending = b""
        with os.fdopen(read, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if self._marker in line:
                        line = line.replace(self._marker, b"")
                        if line:
                            self._print(Text, line)
                        self._drained.set()
                    else:
                        self._print(Text, line)
            if pending:
                self._print(Text, pending)
        self._drained.set()

    def _print(self, text_type: Any, line: bytes) -> None:
        # The terminal went away (closed, hung up): there is nothing left to show lines on.
        with contextlib.suppress(OSError, ValueError):
            self._console.print(
                text_type.from_ansi(line.decode("utf-8", errors="replace")), soft_wrap=True
            )
