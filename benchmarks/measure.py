"""Running a command and measuring it from outside: wall time, the memory of its whole
process tree by role, how it ended - for the benchmark harness (``run.py``).

Only the standard library and psutil, so the tests can load it on its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field

import psutil

SAMPLE_INTERVAL_S = 0.05
MB = 1024 * 1024
#: Process roles of the memory breakdown, in report order. "postgres" is a PostgreSQL
#: server's postmaster and its children (background processes and one backend per
#: connection), measured when the harness started the server.
ROLES = ("command", "dask-workers", "prefect-server", "postgres", "other")
# Before each timed run, wait (up to a limit) for system CPU to drop below this: a Prefect
# server still digesting the previous run's events would otherwise be charged to the next
# run.
SETTLE_CPU_PERCENT = 10.0
SETTLE_MAX_S = 15.0


@dataclass
class ProcResult:
    """What one subprocess did, as seen from outside."""

    returncode: int | None
    wall_s: float
    peak_rss: int
    stdout: str
    stderr: str
    timed_out: bool = False
    leftovers: list[str] = field(default_factory=list)
    #: role -> {"peak_mb": the role's own peak, "at_tree_peak_mb": its RSS when the
    #: whole tree peaked}; see ``TreeSampler``.
    roles: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Set when the harness killed the command for using too much memory.
    over_limit: str | None = None


def classify_role(cmdline: Sequence[str], *, is_root: bool, in_server_tree: bool) -> str:
    """Which ``ROLES`` entry a process of a measured tree belongs to.

    Decided from the command line, as ``ps`` shows it: the temporary Prefect server is a
    uvicorn process (the pipeline's ``server_child`` or Prefect's own), a local Dask
    cluster's workers are ``multiprocessing`` spawn children (their nannies run inside
    the command's own process, so they count as ``command``). Anything else - such as
    multiprocessing's resource tracker - is ``other``.
    """
    if in_server_tree:
        return "prefect-server"
    if is_root:
        return "command"
    text = " ".join(cmdline)
    if any(mark in text for mark in ("server_child", "uvicorn", "prefect.server", "server start")):
        return "prefect-server"
    if any(mark in text for mark in ("spawn_main", "distributed", "dask")):
        return "dask-workers"
    return "other"


class TreeSampler:
    """Samples the RSS of process trees in a background thread, by process role.

    The trees are those of the command (or of several commands run together: ``pid`` may
    be a list) with all their descendants (Dask workers, the temporary Prefect server,
    ...), plus the trees of services the commands use: ``server_pids`` (a shared Prefect
    API server) and ``services`` (root pid -> the role of its whole tree, e.g. a
    PostgreSQL server's postmaster -> "postgres"). Keeps the sum's peak, each role's own
    peak and each role's RSS at the sum's peak. With ``limit`` > 0, calls ``on_limit`` once
    when the sum reaches that many bytes.
    """

    def __init__(
        self,
        pid: int | Sequence[int],
        server_pids: Sequence[int] = (),
        interval: float = SAMPLE_INTERVAL_S,
        limit: int = 0,
        on_limit: Callable[[int], None] | None = None,
        services: Mapping[int, str] | None = None,
    ):
        self.interval = interval
        self.peak = 0
        self.role_peaks: dict[str, int] = {}
        self.roles_at_peak: dict[str, int] = {}
        self.seen: dict[int, psutil.Process] = {}
        commands = [pid] if isinstance(pid, int) else list(pid)
        self._commands = set(commands)
        self._services = {**dict.fromkeys(server_pids, "prefect-server"), **(services or {})}
        self._roots = [*commands, *self._services]
        self._limit = limit
        self._on_limit = on_limit
        # (pid, start time) -> role: a command line is read once per process, not per sample.
        self._roles: dict[tuple[int, float], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _processes(self) -> Iterator[tuple[psutil.Process, str | None]]:
        """(process, the role of the service tree it belongs to, or None for a command's
        tree) for every current member of the trees."""
        for pid in self._roots:
            service = self._services.get(pid) if pid not in self._commands else None
            try:
                root = psutil.Process(pid)
                yield root, service
                for child in root.children(recursive=True):
                    yield child, service
            except psutil.Error:
                continue  # the process ended between listing and reading

    def _role(self, proc: psutil.Process, service: str | None) -> str:
        key = (proc.pid, proc.create_time())
        if key in self._roles:
            return self._roles[key]
        if service is not None:
            role = service
        else:
            role = classify_role(
                proc.cmdline(), is_root=proc.pid in self._commands, in_server_tree=False
            )
        # "other" is not remembered: a child caught between fork and exec still shows its
        # parent's command line, and is asked again at the next sample.
        if role != "other":
            self._roles[key] = role
        return role

    def sample(self) -> int:
        """Take one sample now, update the peaks and return the tree's sum in bytes."""
        by_role = dict.fromkeys(ROLES, 0)
        for proc, service in self._processes():
            try:
                rss = proc.memory_info().rss
                role = self._role(proc, service)
            except psutil.Error:
                continue
            by_role[role] += rss
            # Only the commands' own processes may later be reaped as leftovers; a
            # service's are not.
            if service is None:
                self.seen.setdefault(proc.pid, proc)
        return self.record(by_role)

    def record(self, by_role: dict[str, int]) -> int:
        """Fold one sample (bytes per role) into the peaks; return its total."""
        total = sum(by_role.values())
        for role, rss in by_role.items():
            self.role_peaks[role] = max(self.role_peaks.get(role, 0), rss)
        if total > self.peak:
            self.peak = total
            self.roles_at_peak = dict(by_role)
        if self._limit and total >= self._limit and self._on_limit is not None:
            on_limit, self._on_limit = self._on_limit, None
            on_limit(total)
        return total

    def breakdown(self) -> dict[str, dict[str, float]]:
        """role -> {"peak_mb", "at_tree_peak_mb"} for every role that was ever present."""
        return {
            role: {
                "peak_mb": round(self.role_peaks[role] / MB, 1),
                "at_tree_peak_mb": round(self.roles_at_peak.get(role, 0) / MB, 1),
            }
            for role in ROLES
            if self.role_peaks.get(role)
        }

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> None:
        """Start sampling in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop.set()
        self._thread.join()


def _session_members(sids: Collection[int]) -> list[psutil.Process]:
    """Processes still alive in the sessions ``sids`` (each command was started as the
    leader of its own)."""
    members = []
    for proc in psutil.process_iter():
        with suppress(OSError, psutil.Error):
            if os.getsid(proc.pid) in sids:
                members.append(proc)
    return members


def reap_leftovers(
    sid: int | Collection[int], seen: dict[int, psutil.Process], grace_s: float = 3.0
) -> list[str]:
    """Kill whatever the command (or commands: one session each) left running; return
    descriptions of those processes.

    Leftovers would keep eating CPU and memory during later runs, so they are never left
    alone - but a command that leaves processes behind is worth reporting.
    """
    sids = {sid} if isinstance(sid, int) else set(sid)
    candidates = {p.pid: p for p in _session_members(sids)}
    for pid, proc in seen.items():
        with suppress(psutil.Error):
            if proc.is_running():
                candidates.setdefault(pid, proc)
    if not candidates:
        return []
    # Give children a moment to finish their own shutdown before calling them leftovers.
    _, alive = psutil.wait_procs(list(candidates.values()), timeout=grace_s)
    described = []
    for proc in alive:
        with suppress(psutil.Error):
            described.append(f"{proc.pid}:{' '.join(proc.cmdline()[:4])}")
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return described


def run_process(
    cmd: Sequence[str],
    env: dict[str, str] | None,
    timeout_s: float,
    extra_pids: Sequence[int] = (),
    memory_limit: int = 0,
) -> ProcResult:
    """Run ``cmd`` to completion, timing it and sampling its tree's memory (and that of the
    Prefect servers ``extra_pids``).

    Output goes to temp files, not pipes: a child that outlives the command (say a server
    subprocess) would otherwise hold the pipe open and stretch the measured wall time.
    A tree that reaches ``memory_limit`` bytes is killed (the whole session) rather than
    left to push the machine into swapping or the OOM killer.
    """
    services = dict.fromkeys(extra_pids, "prefect-server")
    return run_processes([cmd], env, timeout_s, services, memory_limit)[0]


def run_processes(
    cmds: Sequence[Sequence[str]],
    env: dict[str, str] | None,
    timeout_s: float,
    services: Mapping[int, str] | None = None,
    memory_limit: int = 0,
) -> list[ProcResult]:
    """Start ``cmds`` together, each in a session of its own, and wait for all of them.

    One result per command, in order: its exit, its output and its wall time, from the
    common start to its own exit (the slowest one's is the group's wall time). Memory is
    the group's: ``peak_rss``, ``roles`` and ``over_limit`` are those of every command's
    tree plus the ``services`` trees (root pid -> role, such as a shared Prefect server
    or a PostgreSQL server), summed, and the same in every result. ``timeout_s`` and
    ``memory_limit`` apply to the group: reaching either kills every command. Processes
    the commands leave behind are killed and listed in the first result's ``leftovers``.
    """
    with ExitStack() as stack:
        files = [
            (stack.enter_context(tempfile.TemporaryFile("w+")),
             stack.enter_context(tempfile.TemporaryFile("w+")))
            for _ in cmds
        ]  # fmt: skip
        procs: list[subprocess.Popen[str]] = []

        def kill_all() -> None:
            for proc in procs:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

        started = time.perf_counter()
        try:
            for cmd, (out, err) in zip(cmds, files, strict=True):
                proc = subprocess.Popen(
                    list(cmd), env=env, stdout=out, stderr=err, start_new_session=True, text=True
                )
                procs.append(proc)
        except BaseException:
            kill_all()
            for proc in procs:
                proc.wait()
            raise
        ended: list[float | None] = [None] * len(procs)
        over_limit: list[str] = []

        def kill_over_limit(total: int) -> None:
            over_limit.append(
                f"killed by the harness: its processes reached {total / MB:.0f} MB "
                f"(limit {memory_limit / MB:.0f} MB)"
            )
            kill_all()

        def wait_for(number: int) -> None:
            procs[number].wait()
            ended[number] = time.perf_counter()

        sampler = TreeSampler(
            [proc.pid for proc in procs],
            limit=memory_limit,
            on_limit=kill_over_limit,
            services=services,
        )
        sampler.start()
        # One thread per command, so that each one's exit is timed as it happens.
        waiters = [
            threading.Thread(target=wait_for, args=(n,), daemon=True) for n in range(len(procs))
        ]
        for waiter in waiters:
            waiter.start()
        deadline = started + timeout_s
        for waiter in waiters:
            waiter.join(max(0.0, deadline - time.perf_counter()))
        timed_out = [ended[n] is None for n in range(len(procs))]
        if any(timed_out):
            kill_all()
            for waiter in waiters:
                waiter.join()
        sampler.stop()
        leftovers = reap_leftovers([proc.pid for proc in procs], sampler.seen)
        results = []
        for number, (proc, (out, err)) in enumerate(zip(procs, files, strict=True)):
            out.seek(0)
            err.seek(0)
            finished = ended[number]
            assert finished is not None  # every waiter has been joined
            results.append(
                ProcResult(
                    returncode=proc.returncode,
                    wall_s=finished - started,
                    peak_rss=sampler.peak,
                    stdout=out.read(),
                    stderr=err.read(),
                    timed_out=timed_out[number],
                    leftovers=leftovers if number == 0 else [],
                    roles=sampler.breakdown(),
                    over_limit=over_limit[0] if over_limit else None,
                )
            )
        return results


def parse_summary(stdout: str) -> dict[str, object] | None:
    """The JSON summary object on stdout, tolerating stray lines printed around it."""
    text = stdout.strip()
    candidates = [text] if text else []
    lines = text.splitlines()
    # A pretty-printed object starts on a line beginning with "{"; try the last one first.
    candidates += ["\n".join(lines[i:]) for i in reversed(range(len(lines)))]
    candidates += [line for line in reversed(lines) if line.startswith("{")]
    for candidate in candidates:
        if not candidate.startswith("{"):
            continue
        with suppress(ValueError):
            value = json.loads(candidate)
            if isinstance(value, dict):
                return value
    return None


def last_line(text: str) -> str:
    """The last non-blank line of ``text`` ("" if none), trimmed to a readable length."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def describe_failure(result: ProcResult) -> str | None:
    """Why a command failed, in one line (None if it exited 0)."""
    if result.over_limit:
        return result.over_limit
    if result.timed_out:
        return f"timed out after {result.wall_s:.0f} s"
    code = result.returncode
    if code == 0:
        return None
    how = f"exit {code}"
    if code is not None and code < 0:
        with suppress(ValueError):
            how = f"killed by {signal.Signals(-code).name}"
    return f"{how}: {last_line(result.stderr) or '(no stderr)'}"


def settle(threshold: float = SETTLE_CPU_PERCENT, max_wait_s: float = SETTLE_MAX_S) -> float:
    """Wait until the machine is nearly idle; return the seconds waited.

    Gives up after ``max_wait_s``: a machine busy with something else should slow the
    benchmark down, not stop it.
    """
    started = time.monotonic()
    while time.monotonic() - started < max_wait_s:
        if psutil.cpu_percent(interval=0.5) < threshold:
            break
    return time.monotonic() - started
