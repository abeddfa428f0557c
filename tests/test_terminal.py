"""What a person sees: the real ``pipeline`` command at a terminal (a pseudo-terminal,
rendered by the ``pyte`` terminal emulator), without one, and with ``--log-level OFF``;
and what reaches Prefect's API whatever the terminal shows.

Runs use the session's Prefect server (``PREFECT_API_URL``) and, but for one that starts a
real Dask worker, ``--workers 0``, so each takes a few seconds.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyte
import pytest

from prefect_pipeline.logs import shown_on_terminal
from prefect_pipeline.pipeline.progress import Progress
from prefect_pipeline.pipeline.summary import RunSummary

PIPELINE = str(Path(sys.executable).parent / "pipeline")
COLUMNS, LINES = 240, 60

BAR = re.compile(
    r"inputs ━+ (?P<done>\d+)/(?P<total>\d+) 100% · (?P<rate>[\d.]+) files/s · "
    r"(?P<failed>\d+) failed · (?P<elapsed>[\d.]+) s"
)
COUNTS = re.compile(
    r"(?P<succeeded>\d+) succeeded, (?P<failed>\d+) failed, (?P<skipped>\d+) skipped "
    r"\(of (?P<total>\d+) input\(s\)\); \d+ record\(s\) written"
)
TIMES = re.compile(
    r"(?P<elapsed>[\d.]+) s elapsed \(first input stored after [\d.]+ s\); "
    r"(?P<rate>[\d.]+) files/s, "
    r"[\d.]+ records/s"
)
#: SGR sequences that set a colour (30-37, 38;..., 90-97, and their backgrounds).
COLOUR = re.compile(rb"\x1b\[[0-9;]*(?:3[0-8]|4[0-8]|9[0-7]|10[0-7])[0-9;]*m")


@dataclass
class Terminal:
    """What a command left on a terminal."""

    exit_code: int
    #: The screen's lines, trailing blanks removed.
    screen: list[str]
    #: Every byte written to the terminal.
    raw: bytes
    #: The lines scrolled off the top of the screen, oldest first (a terminal's scrollback).
    scrollback: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.screen)


def run_in_terminal(
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 240,
    lines: int = LINES,
) -> Terminal:
    """Run ``pipeline ARGS`` with a pseudo-terminal as stdin, stdout and stderr, and render
    what it wrote as a terminal of ``COLUMNS`` x ``lines`` would, keeping what scrolls off
    its top."""
    import pty

    environment = {name: value for name, value in os.environ.items() if name != "NO_COLOR"}
    environment.update({"TERM": "xterm-256color", **(env or {})})
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal's size first, as a terminal window sets it
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", lines, COLUMNS, 0, 0))
            os.chdir(cwd)
            os.execve(PIPELINE, [PIPELINE, *args], environment)
        finally:
            os._exit(127)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the command and its children closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        else:
            os.killpg(pid, 9)
            pytest.fail(f"pipeline {' '.join(args)} did not end within {timeout} s")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    raw = b"".join(chunks)
    screen = pyte.HistoryScreen(COLUMNS, lines, history=100_000)
    pyte.ByteStream(screen).feed(raw)
    shown = [line.rstrip() for line in screen.display]
    while shown and not shown[-1]:
        shown.pop()
    scrollback = [
        "".join(line[column].data for column in range(COLUMNS)).rstrip()
        for line in screen.history.top
    ]
    return Terminal(os.waitstatus_to_exitcode(status), shown, raw, scrollback)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """20 small text files and one binary file (which fails in job A)."""
    root = tmp_path / "in"
    root.mkdir()
    for number in range(20):
        (root / f"f{number:02d}.txt").write_text(f"line {number}\nsecond line\n")
    (root / "zbad.txt").write_bytes(b"bad\x00binary")
    return root


def _base(tmp_path: Path, level: str) -> list[str]:
    return [
        "--log-level",
        level,
        "--db-path",
        str(tmp_path / "db" / "p.db"),
        "--output-dir",
        str(tmp_path / "out"),
    ]


# At a terminal ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_at_a_terminal_shows_one_bar_below_the_log_lines(tmp_path: Path, tree: Path) -> None:
    terminal = run_in_terminal(
        [*_base(tmp_path, "INFO"), "run-parallel", str(tree), "--workers", "0"], tmp_path
    )

    assert terminal.exit_code == 1, terminal.text
    bars = [line for line in terminal.screen if "━" in line]
    assert len(bars) == 1, terminal.text
    # Nothing but the bar on its line: no log text glued to it.
    bar = BAR.fullmatch(bars[0])
    assert bar, bars[0]
    below = terminal.screen[terminal.screen.index(bars[0]) + 1 :]
    counts, times = COUNTS.fullmatch(below[0]), TIMES.fullmatch(below[1])
    assert counts and times, below
    # The bar's last figures are the summary's.
    assert bar["done"] == bar["total"] == counts["total"] == "21"
    assert bar["failed"] == counts["failed"] == "1"
    assert (bar["elapsed"], bar["rate"]) == (times["elapsed"], times["rate"])
    # The failure's path once, and once as a log line above the bar.
    assert below[2].startswith("Prefect flow run: ")
    assert below[3:] == [f"FAILED {tree}/zbad.txt (job A): binary file (NUL byte at offset 3)"]
    above = terminal.screen[: terminal.screen.index(bars[0])]
    assert any(
        line.endswith(
            f"WARNING {tree}/zbad.txt failed in job A: binary file (NUL byte at offset 3)"
        )
        for line in above
    ), terminal.text
    # What is started, and when it is ready.
    assert any(
        re.search(
            r"INFO    using the Prefect API at http\S+ \(jobs run in this process, "
            r"without Dask\)$",
            line,
        )
        for line in above
    ), terminal.text
    assert any(re.search(r"INFO    ready after [\d.]+ s$", line) for line in above)
    # The display's first frame, after the log line, says what starts: no empty bar first.
    first, second = [m.start() for m in re.finditer(rb"using the Prefect API", terminal.raw)][:2]
    assert b"inputs" not in terminal.raw[first:second], terminal.raw[first:second]
    # Prefect's per-run INFO lines stay in Prefect.
    assert "Task run" not in terminal.text
    assert "Finished in state" not in terminal.text
    # Colour, on a terminal.
    assert COLOUR.search(terminal.raw)


@pytest.mark.slow
def test_with_a_dask_worker_one_bar_below_the_log_lines_and_the_json_summarys_figures(
    tmp_path: Path, tree: Path
) -> None:
    """A real local Dask cluster (one worker process, whose log lines come through the
    command): one bar on the whole terminal, none left behind as the bar was redrawn while
    log lines scrolled above it (a short terminal: its scrollback is searched too); its
    figures those of an identical run's ``--json`` summary."""
    run = ["run-parallel", str(tree), "--workers", "1", "--workers-after", "0"]
    terminal = run_in_terminal([*_base(tmp_path / "terminal", "INFO"), *run], tmp_path, lines=8)
    plain = subprocess.run(
        [PIPELINE, *_base(tmp_path / "json", "OFF"), *run, "--json"],
        capture_output=True,
        cwd=tmp_path,
        timeout=240,
    )

    assert terminal.exit_code == 1, terminal.text
    assert terminal.scrollback, "the log lines should have scrolled"
    lines = [*terminal.scrollback, *terminal.screen]
    bars = [line for line in lines if "━" in line]
    assert len(bars) == 1, "\n".join(bars)
    bar = BAR.fullmatch(bars[0])
    assert bar, bars[0]
    # Every bar frame drawn was drawn over the last one: the raw bytes hold many frames,
    # the terminal one.
    assert terminal.raw.count("━".encode()) > len(bars[0].split("━")) - 1
    at = lines.index(bars[0])
    above, below = lines[:at], lines[at + 1 :]
    assert any(
        re.search(r"INFO    using the Prefect API at http\S+; starting a Dask cluster", line)
        for line in above
    ), "\n".join(above)
    assert any(
        line.endswith(
            f"WARNING {tree}/zbad.txt failed in job A: binary file (NUL byte at offset 3)"
        )
        for line in above
    ), "\n".join(above)
    # Nothing but the summary below the bar: no log line drawn after it, none inside it.
    counts, times = COUNTS.fullmatch(below[0]), TIMES.fullmatch(below[1])
    assert counts and times, below
    assert (bar["elapsed"], bar["rate"]) == (times["elapsed"], times["rate"])
    # The identical run's --json summary has the same figures.
    assert plain.returncode == 1, plain.stderr
    summary = json.loads(plain.stdout)
    assert (int(bar["done"]), int(bar["total"]), int(bar["failed"])) == (
        summary["total"],
        summary["total"],
        summary["failed"],
    )
    assert {name: int(value) for name, value in counts.groupdict().items()} == {
        name: summary[name] for name in ("succeeded", "failed", "skipped", "total")
    }
    assert f"{summary['records']} record(s) written" in below[0]
    assert (summary["total"], summary["failed"]) == (21, 1)


@pytest.mark.slow
def test_no_color_is_honoured(tmp_path: Path, tree: Path) -> None:
    terminal = run_in_terminal(
        [*_base(tmp_path, "INFO"), "run-parallel", str(tree), "--workers", "0"],
        tmp_path,
        env={"NO_COLOR": "1"},
    )

    assert terminal.exit_code == 1, terminal.text
    assert len([line for line in terminal.screen if "━" in line]) == 1
    assert not COLOUR.search(terminal.raw), COLOUR.findall(terminal.raw)[:5]


@pytest.mark.slow
def test_log_level_off_prints_nothing_but_the_summary_and_prefect_keeps_the_logs(
    tmp_path: Path, tree: Path
) -> None:
    terminal = run_in_terminal(
        [*_base(tmp_path, "OFF"), "run-parallel", str(tree), "--workers", "0"], tmp_path
    )

    assert terminal.exit_code == 1, terminal.text
    assert COUNTS.fullmatch(terminal.screen[0]), terminal.text
    assert TIMES.fullmatch(terminal.screen[1]), terminal.text
    assert terminal.screen[2].startswith("Prefect flow run: ")
    assert terminal.screen[3:] == [
        f"FAILED {tree}/zbad.txt (job A): binary file (NUL byte at offset 3)"
    ]
    logs = flow_run_logs(str(tree))
    assert (
        logging.ERROR,
        f"{tree}/zbad.txt failed in job A: binary file (NUL byte at offset 3)",
    ) in (logs)
    assert any(level == logging.INFO for level, _ in logs), logs


# Without a terminal ---------------------------------------------------------------------


@pytest.mark.slow
def test_without_a_terminal_plain_lines_and_prefect_keeps_info_at_warning(
    tmp_path: Path, tree: Path
) -> None:
    result = subprocess.run(
        [PIPELINE, *_base(tmp_path, "WARNING"), "run-parallel", str(tree), "--workers", "0"],
        capture_output=True,
        cwd=tmp_path,
        timeout=240,
    )

    assert result.returncode == 1, result.stderr
    stderr = result.stderr.decode()
    assert "━" not in stderr and "\x1b" not in stderr
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d WARNING {tree}/zbad.txt failed in job A: binary file \(NUL byte at "
        r"offset 3\)\n",
        stderr,
    ), stderr
    assert b"\x1b" not in result.stdout
    assert COUNTS.fullmatch(result.stdout.decode().splitlines()[0])
    logs = flow_run_logs(str(tree))
    assert (
        logging.ERROR,
        f"{tree}/zbad.txt failed in job A: binary file (NUL byte at offset 3)",
    ) in (logs)
    # Below the terminal's level, still in Prefect: the flow run's and task runs' INFO lines.
    assert any(level == logging.INFO for level, _ in logs), logs


def flow_run_logs(folder: str, timeout: float = 30) -> list[tuple[int, str]]:
    """(level, message) of the logs of the latest flow run whose name names ``folder``, read
    through Prefect's client from the session's server (waiting for them to be written)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort, LogSort

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = [
                run
                for run in client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=50)
                if folder in run.name
            ]
            logs = []
            if runs:
                logs = [
                    (log.level, log.message)
                    for log in client.read_logs(
                        LogFilter(flow_run_id=LogFilterFlowRunId(any_=[runs[0].id])),
                        sort=LogSort.TIMESTAMP_ASC,
                    )
                ]
            if any(level >= logging.ERROR for level, _ in logs) or time.monotonic() > deadline:
                return logs
            time.sleep(0.5)


# The rules, without processes -----------------------------------------------------------


def _record(name: str, level: int, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, "message", None, None)
    record.__dict__.update(extra)
    return record


@pytest.mark.parametrize(
    ("name", "level", "terminal", "shown"),
    [
        ("prefect.task_runs", logging.INFO, "INFO", False),
        ("prefect.flow_runs", logging.INFO, "INFO", False),
        ("prefect.task_runs", logging.INFO, "DEBUG", True),
        ("prefect.task_runs", logging.ERROR, "INFO", False),
        ("prefect.flow_runs", logging.ERROR, "DEBUG", True),
        # The task runner's INFO lines (connecting, the dashboard) repeat the pipeline's own.
        ("prefect.task_runner.dask", logging.INFO, "INFO", False),
        ("prefect.task_runner.dask", logging.INFO, "DEBUG", True),
        ("prefect.task_runner.dask", logging.WARNING, "INFO", True),
        ("prefect_pipeline.writer", logging.WARNING, "ERROR", False),
        ("prefect_pipeline.writer", logging.CRITICAL, "OFF", False),
        ("distributed.nanny", logging.ERROR, "ERROR", True),
    ],
)
def test_what_reaches_the_terminal(name: str, level: int, terminal: str, shown: bool) -> None:
    assert shown_on_terminal(_record(name, level), terminal) is shown


def test_prefects_crash_report_of_an_interrupt_stays_off_the_terminal() -> None:
    """A Ctrl-C that lands before the flow run's own logger exists makes Prefect's engine
    log the crash at ERROR; the command says "Interrupted." itself, with its summary."""
    record = logging.LogRecord("prefect.engine", logging.ERROR, __file__, 1,
                               "Crash detected! Execution was aborted by an interrupt signal.",
                               None, None)  # fmt: skip
    other = logging.LogRecord("prefect.engine", logging.ERROR, __file__, 1,
                              "Engine execution exited with unexpected exception", None,
                              None)  # fmt: skip

    assert not shown_on_terminal(record, "INFO")
    assert shown_on_terminal(record, "DEBUG")
    assert shown_on_terminal(other, "INFO")


@pytest.mark.parametrize(
    ("logger", "message", "level", "logged"),
    [
        ("prefect.flow_runs", "Crash detected! Execution was aborted by an interrupt signal.",
         logging.WARNING, "Interrupted: execution was aborted by an interrupt signal."),
        ("prefect.task_runs", "Crash detected! Execution was aborted by a termination signal.",
         logging.WARNING, "Interrupted: execution was aborted by a termination signal."),
        ("prefect.task_runs",
         "Finished in state Crashed('Execution was aborted by an interrupt signal.')",
         logging.WARNING, None),
        # A crash of another cause is one.
        ("prefect.flow_runs",
         "Crash detected! Execution was interrupted by an unexpected exception: OSError",
         logging.ERROR, None),
        ("prefect.flow_runs", "Finished in state Failed('1 of 2 input(s) failed')",
         logging.ERROR, None),
        # Nor is an error that only mentions a signal.
        ("prefect.flow_runs", "Crash detected! Execution was interrupted by an unexpected "
         "exception: RuntimeError('ffmpeg aborted by a termination signal')",
         logging.ERROR, None),
        ("prefect.task_runs",
         "Finished in state Failed('job A: a.txt: converter aborted by an interrupt signal')",
         logging.ERROR, None),
    ],
)  # fmt: skip
def test_prefects_report_of_a_run_a_signal_stopped_is_a_warning_that_says_interrupted(
    logger: str, message: str, level: int, logged: str | None
) -> None:
    """In every process that runs a job (``wrappers.py`` installs the filter), on the
    logger, before any handler: the Prefect API's log of the run and the terminal get the
    same record."""
    import prefect_pipeline.pipeline.wrappers  # noqa: F401 - installs it

    record = logging.LogRecord(logger, logging.ERROR, __file__, 1, message, None, None)
    assert logging.getLogger(logger).filter(record)  # the logger's filters, as it logs

    assert (record.levelno, record.getMessage()) == (level, logged or message)


def test_a_dask_workers_warning_about_its_own_close_is_dropped() -> None:
    """``quiet_worker_close`` (every local worker's preload calls it)."""
    from prefect_pipeline.logs import quiet_worker_close

    quiet_worker_close()
    target = logging.getLogger("distributed.worker.state_machine")

    def kept(message: str) -> bool:
        return target.filter(
            logging.LogRecord(target.name, logging.WARNING, __file__, 1, message, None, None)
        )

    assert not kept(
        "Async instruction for <Task cancelled name=\"execute('job-A: a.txt-9e1')\" "
        "coro=<Worker.execute() done>> ended with CancelledError"
    )
    assert kept("Compute Failed")


def test_lines_sent_to_prefect_only_stay_off_the_terminal() -> None:
    record = _record("prefect.flow_runs", logging.ERROR, pipeline_terminal=False)

    assert not shown_on_terminal(record, "DEBUG")


def test_the_total_never_moves_backwards_and_the_last_figures_are_the_summarys() -> None:
    progress = Progress(enabled=False, started_at=1000.0)
    progress.set_total(10)
    progress.found(4)
    assert progress.figures(now=1001.0).total == 10
    progress.found(8)  # discovery found more than counted
    progress.set_total(5)
    assert progress.figures(now=1001.0).total == 12
    progress.advance(3)
    progress.failed(1)
    running = progress.figures(now=1002.0)
    assert (running.done, running.failed, running.elapsed_s) == (3, 1, 2.0)
    assert running.files_per_s == 1.5  # the summary's formula: done / elapsed

    summary = RunSummary(total=12, succeeded=10, failed=2, elapsed_s=4.0)
    progress.finish(summary)
    final = progress.figures(now=5000.0)
    assert (final.done, final.total, final.failed) == (12, 12, 2)
    assert (final.elapsed_s, final.files_per_s) == (summary.elapsed_s, summary.files_per_s)


def test_the_summary_gives_rates_people_can_read() -> None:
    """None when nothing ran (no "0.0 files/s"); a tenth below ten ("0.4 records/s", not
    "0 records/s"); whole numbers above."""
    assert RunSummary(elapsed_s=0.3).to_text().splitlines()[1] == "0.3 s elapsed"
    slow = RunSummary(total=3, succeeded=3, records=3, elapsed_s=7.0)
    assert slow.to_text().splitlines()[1] == "7.0 s elapsed; 0.4 files/s, 0.4 records/s"
    fast = RunSummary(total=300, succeeded=300, records=9000, elapsed_s=2.0)
    assert fast.to_text().splitlines()[1] == "2.0 s elapsed; 150.0 files/s, 4500 records/s"


def test_the_displays_count_of_the_inputs_is_waited_for_a_while_not_walked_again() -> None:
    """An interrupted run asks the display's walk for its total (``total_within``): None
    while the walk goes on past the wait, the total once it has ended."""
    import threading

    walked_on = threading.Event()

    def entries() -> Iterator[int]:
        yield from (1, 2)
        walked_on.wait()
        yield 3

    progress = Progress(True, started_at=time.time())
    assert not progress.counting
    progress.count(entries)
    assert progress.counting
    assert progress.total_within(0.05) is None
    walked_on.set()
    assert progress.total_within(10) == 3


@pytest.mark.parametrize("not_reached", [21960, None])
def test_the_last_frame_of_a_stopped_run_keeps_its_total(not_reached: int | None) -> None:
    """14040 settled, 4000 pending again, the rest not reached: the bar stays at 14040 of
    the 40000 inputs, not at 14040 of the 18040 the run took; also when what it did not
    reach could not be counted again."""
    progress = Progress(enabled=False, started_at=1000.0)
    progress.set_total(40000)
    progress.advance(14040)
    summary = RunSummary(
        total=14040, succeeded=14040, pending=4000, not_reached=not_reached,
        elapsed_s=6.1, stopped="interrupted",
    )  # fmt: skip
    progress.finish(summary)
    final = progress.figures(now=5000.0)
    assert (final.done, final.total) == (14040, 40000)


@pytest.mark.slow
def test_a_closed_stderr_costs_the_log_lines_not_the_run(tmp_path: Path, tree: Path) -> None:
    # `pipeline ... 2>&1 | head`: the reader of stderr goes away while the run logs. Rich's
    # console used to raise SystemExit in whichever thread printed next; in a Prefect thread
    # starting its event loop, the run then failed or waited for that thread forever.
    reader, writer = os.pipe()
    os.close(reader)
    try:
        result = subprocess.run(
            [PIPELINE, *_base(tmp_path, "DEBUG"), "run-parallel", str(tree), "--workers", "0",
             "--json"],
            stdout=subprocess.PIPE, stderr=writer, cwd=tmp_path, timeout=120,
        )  # fmt: skip
    finally:
        os.close(writer)

    assert result.returncode == 1  # zbad.txt fails; every other input is done
    summary = json.loads(result.stdout)
    assert (summary["succeeded"], summary["failed"]) == (20, 1)


#: The figures' part of the line: counts, rate, failures, elapsed time, ETA.
_RATE, _TIMES = r" · \d+\.\d files/s", r" · 5\.\d s · ETA \d:\d\d"


def test_the_bar_keeps_its_width_from_the_first_frame_to_the_last() -> None:
    """Sized for the widest figures the run will show: the count, the rate and the time
    gaining digits, the ETA coming and going, do not move the figures along the line."""
    from rich.console import Console

    starts = []
    for done, elapsed in ((0, 2.8), (1016, 3.7), (6040, 45.0), (40000, 120.5)):
        progress = Progress(False, started_at=time.time() - elapsed)
        progress.set_total(40000)
        if done == 40000:
            progress.finish(RunSummary(total=done, succeeded=done, elapsed_s=elapsed))
        elif done:
            progress.advance(done)
        console = Console(width=80, file=io.StringIO(), force_terminal=True, color_system=None)
        console.print(progress._render())
        [line] = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
        starts.append(line.index(f"{done}/40000"))
    assert len(set(starts)) == 1, starts


@pytest.mark.parametrize(
    ("columns", "line"),
    [
        (240, rf"inputs ━{{6}} {{24}} 2400/12000 20%{_RATE} · 3 failed{_TIMES}"),
        # The bar narrows first, then the description goes, then the rate.
        (100, rf"inputs ━+ +2400/12000 20%{_RATE} · 3 failed{_TIMES}"),
        (80, rf"━+[╸ ]+2400/12000 20%{_RATE} · 3 failed{_TIMES}"),
        (60, rf"━+[╸ ]+2400/12000 20% · 3 failed{_TIMES}"),
        # Then the bar, then the percentage; only then is the line cut.
        (44, rf"2400/12000 20% · 3 failed{_TIMES}"),
        (40, rf"2400/12000 · 3 failed{_TIMES}"),
        (30, r"2400/12000 · 3 failed · 5\.\d s…"),
    ],
)
def test_on_a_narrow_terminal_the_bar_gives_up_its_width_not_the_counts_and_times(
    columns: int, line: str
) -> None:
    """The display's line drawn on a terminal (``pyte``) of ``columns``: one line that
    fits, never wrapped (each refresh would leave a line behind)."""
    from rich.console import Console

    progress = Progress(False, started_at=time.time() - 5.0)
    progress.set_total(12000)
    progress.advance(2400)
    progress.failed(3)
    console = Console(width=columns, file=io.StringIO(), force_terminal=True, color_system=None)
    console.print(progress._render())
    screen = pyte.Screen(columns, 3)
    drawn = console.file.getvalue()  # type: ignore[attr-defined]
    pyte.ByteStream(screen).feed(drawn.replace("\n", "\r\n").encode())

    shown = [row.rstrip() for row in screen.display if row.strip()]
    assert len(shown) == 1, shown
    assert re.fullmatch(line, shown[0]), shown[0]


def test_what_is_starting_is_cut_before_the_time_it_has_taken() -> None:
    from rich.console import Console

    progress = Progress(False, started_at=time.time() - 7.3)
    progress.starting("starting a temporary Prefect server and a Dask cluster of 2 worker(s)")
    console = Console(width=60, file=io.StringIO(), color_system=None)
    console.print(progress._render())

    [line] = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert re.fullmatch(
        r". starting a temporary Prefect server and a Dask cl… · 7\.\d s", line
    ), line
    # Narrower: what fits of it, down to an ellipsis, and still the time.
    for width, shown in ((14, "sta…"), (11, "…")):
        narrow = Console(width=width, file=io.StringIO(), color_system=None)
        narrow.print(progress._render())
        [line] = narrow.file.getvalue().splitlines()  # type: ignore[attr-defined]
        assert re.fullmatch(rf". {shown} · 7\.\d s", line), line
