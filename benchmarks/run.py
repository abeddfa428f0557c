"""Benchmark harness: the ``pipeline`` CLI against the single-process raw baseline.

One command runs every workload in every mode, interleaved per repeat (raw, then each
pipeline mode, then raw again on the next repeat ...) so slow drift of the machine spreads
evenly over all modes instead of biasing whichever ran last::

    python benchmarks/run.py [--scale 1] [--repeats 3] [--workloads W1,W2,W3]
        [--workers 1,2] [--modes raw,sequential,parallel,drain] [--address tcp://...]
        [--api-server] [--results-dir benchmarks/results]

Modes (raw always runs: it is the reference for timing ratios and row counts):

* ``raw`` - ``raw_baseline.py`` in a subprocess: stdlib only, one process, the fair floor.
* ``sequential`` - ``pipeline run-parallel DIR --workers 0`` (in-process, no Dask).
* ``parallel-N`` - ``pipeline run-parallel DIR --workers N`` for each N of ``--workers``.
* ``drain-N`` - ``pipeline enqueue DIR`` then ``pipeline drain-db --workers N``, N the
  largest of ``--workers``. Its start-up counts from the start of ``enqueue``.
* ``address`` - with ``--address``, ``run-parallel`` against that existing Dask cluster
  (whose memory is outside the measured process tree).

Every run gets a fresh database and output folder. Without ``--api-server`` each pipeline
command starts its own temporary Prefect server; all of them share one ``PREFECT_HOME``
so its migrations run once, during an uncounted warm-up. With ``--api-server`` one
``prefect server start`` serves every run and its memory is added to each pipeline run's.

Per run: wall seconds (measured here), start-up seconds (from the command's JSON summary:
process start to first input committed), processing = wall - start-up, files/s and
records/s, peak memory of the whole process tree (RSS of the command and all its
descendants, sampled every 50 ms, summed), and counts read back from the database. Counts
or record contents that differ from the raw run's are errors: they are printed loudly and
the harness exits non-zero. Results go to ``latest.json``, ``latest.md`` and
``latest.png`` in the results folder; scratch data goes to its ``tmp/`` sub-folder.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil
from workloads import Workload, generate, parse_names

BENCH_DIR = Path(__file__).resolve().parent
RAW_SCRIPT = BENCH_DIR / "raw_baseline.py"
SAMPLE_INTERVAL_S = 0.05
MODES = ("raw", "sequential", "parallel", "drain")
PACKAGES = ("prefect", "prefect-dask", "dask", "distributed", "peewee", "psutil", "matplotlib")
# Counts every implementation must agree on; "outputs" is the number of JSON files written.
COUNT_KEYS = ("batches", "records", "finalized_batches", "finalized_records", "outputs")
STDERR_TAIL_CHARS = 2_000
# Before each timed run, wait (up to SETTLE_MAX_S) for system CPU to drop below this:
# a Prefect server still digesting the previous run's events would otherwise be charged
# to the next run.
SETTLE_CPU_PERCENT = 10.0
SETTLE_MAX_S = 15.0
WARMUP_FILES = 3
MB = 1024 * 1024


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class RunSpec:
    """One kind of run within a repeat: a mode and, where it applies, a worker count."""

    mode: str
    workers: int | None = None

    @property
    def label(self) -> str:
        """Row label in reports, e.g. ``parallel-2``."""
        if self.mode in ("parallel", "drain"):
            return f"{self.mode}-{self.workers}"
        return self.mode


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


@dataclass
class RunRecord:
    """Everything recorded about one timed run."""

    workload: str
    label: str
    mode: str
    workers: int | None
    repeat: int
    command: str
    returncode: int | None = None
    wall_s: float | None = None
    startup_s: float | None = None
    processing_s: float | None = None
    enqueue_s: float | None = None
    files_per_s: float | None = None
    records_per_s: float | None = None
    peak_mem_mb: float | None = None
    summary: dict[str, object] | None = None
    counts: dict[str, object] = field(default_factory=dict)
    settle_s: float | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """A run with any error is kept in the log but left out of the timing statistics."""
        return not self.errors


@dataclass
class Context:
    """Settings shared by every run of one invocation."""

    scratch: Path
    timeout_s: float
    pipeline_exe: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    extra_pids: tuple[int, ...] = ()
    address: str | None = None
    #: Finished runs' folders, deleted when the invocation ends (see ``run_dirs``).
    leftovers: list[Path] = field(default_factory=list)


# ------------------------------------------------------------------- process measurement


class TreeSampler:
    """Samples the summed RSS of a process tree in a background thread; keeps the peak.

    The tree is the root process and all its descendants (Dask workers, the temporary
    Prefect server, ...) plus any ``extra_pids`` trees, such as a shared API server.
    """

    def __init__(self, pid: int, extra_pids: Sequence[int] = (), interval: float = 0.05):
        self.interval = interval
        self.peak = 0
        self.seen: dict[int, psutil.Process] = {}
        self._roots = [pid, *extra_pids]
        self._extra = set(extra_pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _processes(self) -> Iterator[tuple[psutil.Process, bool]]:
        """(process, belongs to the command's own tree) for every current tree member."""
        for pid in self._roots:
            own = pid not in self._extra
            try:
                root = psutil.Process(pid)
                yield root, own
                for child in root.children(recursive=True):
                    yield child, own
            except psutil.Error:
                continue  # the process ended between listing and reading

    def sample(self) -> int:
        """Take one sample now, update the peak and return the sum in bytes."""
        total = 0
        for proc, own in self._processes():
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
            # Only the command's own processes may later be reaped as leftovers; a shared
            # server's children are not.
            if own:
                self.seen.setdefault(proc.pid, proc)
        self.peak = max(self.peak, total)
        return total

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


def _session_members(sid: int) -> list[psutil.Process]:
    """Processes still alive in session ``sid`` (the command was started as its leader)."""
    members = []
    for proc in psutil.process_iter():
        with suppress(OSError, psutil.Error):
            if os.getsid(proc.pid) == sid:
                members.append(proc)
    return members


def reap_leftovers(sid: int, seen: dict[int, psutil.Process], grace_s: float = 3.0) -> list[str]:
    """Kill whatever the command left running; return descriptions of those processes.

    Leftovers would keep eating CPU and memory during later runs, so they are never left
    alone - but a command that leaves processes behind is worth reporting.
    """
    candidates = {p.pid: p for p in _session_members(sid)}
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
) -> ProcResult:
    """Run ``cmd`` to completion, timing it and sampling its tree's memory.

    Output goes to temp files, not pipes: a child that outlives the command (say a server
    subprocess) would otherwise hold the pipe open and stretch the measured wall time.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd), env=env, stdout=out, stderr=err, start_new_session=True, text=True
        )
        sampler = TreeSampler(proc.pid, extra_pids, SAMPLE_INTERVAL_S)
        sampler.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        wall = time.perf_counter() - started
        sampler.stop()
        leftovers = reap_leftovers(proc.pid, sampler.seen)
        out.seek(0)
        err.seek(0)
        return ProcResult(
            proc.returncode, wall, sampler.peak, out.read(), err.read(), timed_out, leftovers
        )


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


# ----------------------------------------------------------------------- result checks


def read_counts(db_path: Path, out_dir: Path) -> dict[str, object]:
    """Row counts, finalized counts, a digest of all record contents and the JSON count.

    The digest orders records by their file's sha256 and record index, so it does not
    depend on insertion order or on how an implementation spells source paths.
    """
    outputs = sum(1 for _ in out_dir.rglob("*_processed.json")) if out_dir.is_dir() else 0
    if not db_path.is_file():
        return {"outputs": outputs, "error": "database file was not created"}
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:

        def one(sql: str) -> object:
            return conn.execute(sql).fetchone()[0]

        counts: dict[str, object] = {
            "batches": one("SELECT count(*) FROM processing_batches"),
            "records": one("SELECT count(*) FROM processed_records"),
            "finalized_batches": one(
                "SELECT count(*) FROM processing_batches WHERE status = 'finalized'"
            ),
            "finalized_records": one(
                "SELECT count(*) FROM processed_records WHERE status = 'finalized'"
            ),
            "outputs": outputs,
        }
        digest = hashlib.sha256()
        rows = conn.execute(
            "SELECT b.sha256, r.record_index, r.line_number, r.content"
            " FROM processed_records r JOIN processing_batches b ON b.id = r.batch_id"
            " ORDER BY b.sha256, r.record_index"
        )
        for row in rows:
            digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8"))
        counts["content_sha256"] = digest.hexdigest()
        return counts
    except sqlite3.Error as exc:
        return {"outputs": outputs, "error": f"cannot read the database: {exc}"}
    finally:
        conn.close()


def expected_counts(workload: Workload) -> dict[str, object]:
    """What the generator says any correct implementation must produce."""
    return {
        "batches": workload.files,
        "records": workload.records,
        "finalized_batches": workload.files,
        "finalized_records": workload.records,
        "outputs": workload.files,
    }


def check_counts(
    counts: dict[str, object], reference: dict[str, object], against: str
) -> list[str]:
    """Errors for every count (and the content digest) that differs from ``reference``."""
    if "error" in counts:
        return [str(counts["error"])]
    diffs = [
        f"{key} {counts.get(key)} != {against} {reference[key]}"
        for key in (*COUNT_KEYS, "content_sha256")
        if key in reference and counts.get(key) != reference[key]
    ]
    return [f"mismatch vs {against}: " + "; ".join(diffs)] if diffs else []


def check_summary(summary: dict[str, object] | None, workload: Workload) -> list[str]:
    """Errors for a missing summary or one that reports failures or a short count."""
    if summary is None:
        return ["no JSON summary on stdout"]
    errors = []
    if summary.get("failed"):
        failures = summary.get("failures")
        sample = failures[:3] if isinstance(failures, list) else failures
        errors.append(f"summary reports {summary['failed']} failed: {sample}")
    if summary.get("succeeded") != workload.files:
        errors.append(f"summary succeeded {summary.get('succeeded')} != {workload.files} files")
    if summary.get("records") != workload.records:
        errors.append(f"summary records {summary.get('records')} != {workload.records}")
    return errors


def check_process(result: ProcResult, what: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) about how a subprocess ended."""
    errors, warnings = [], []
    if result.timed_out:
        errors.append(f"{what} timed out after {result.wall_s:.0f} s")
    elif result.returncode != 0:
        tail = result.stderr.strip()[-STDERR_TAIL_CHARS:]
        errors.append(f"{what} exited with {result.returncode}: {tail}")
    if result.leftovers:
        warnings.append(f"{what} left processes running (killed): {result.leftovers}")
    return errors, warnings


# ------------------------------------------------------------------------ running modes


#: Below this much free space, finished runs' folders are deleted at once after all.
KEEP_LEFTOVERS_MIN_FREE = 4 * 1024**3


@contextmanager
def run_dirs(ctx: Context) -> Iterator[tuple[Path, Path]]:
    """A fresh (database file, output folder) pair, deleted when the invocation ends.

    Not right after the run: on ext4 without a journal, the inode allocator skips inodes
    freed in the last minutes one by one, so the run after a deletion of tens of
    thousands of files spent most of its time creating files (measured: 1.3 ms instead
    of 0.1 ms per file, in whichever command came next, raw baseline included).
    """
    base = Path(tempfile.mkdtemp(prefix="run-", dir=ctx.scratch))
    try:
        yield base / "bench.db", base / "out"
    finally:
        if shutil.disk_usage(base).free < KEEP_LEFTOVERS_MIN_FREE:
            shutil.rmtree(base, ignore_errors=True)
        else:
            ctx.leftovers.append(base)


def pipeline_cmd(ctx: Context, db: Path, out: Path, *args: str) -> list[str]:
    """A ``pipeline`` command line with the harness's global options."""
    assert ctx.pipeline_exe is not None
    return [
        str(ctx.pipeline_exe), "--log-level", "OFF",
        "--db-path", str(db), "--output-dir", str(out), *args,
    ]  # fmt: skip


def command_template(spec: RunSpec, address: str | None) -> str:
    """The command a run uses, with placeholders instead of this machine's paths."""
    if spec.mode == "raw":
        return "python benchmarks/raw_baseline.py DIR --db DB --out OUT"
    base = "pipeline --log-level OFF --db-path DB --output-dir OUT"
    if spec.mode == "drain":
        return f"{base} enqueue DIR && {base} drain-db --workers {spec.workers} --json"
    if spec.mode == "address":
        return f"{base} run-parallel DIR --address {address} --json"
    return f"{base} run-parallel DIR --workers {spec.workers} --json"


def _run_args(spec: RunSpec, ctx: Context, workload: Workload) -> list[str]:
    """Sub-command arguments of a single-command pipeline run."""
    if spec.mode == "address":
        assert ctx.address is not None
        return ["run-parallel", str(workload.path), "--address", ctx.address, "--json"]
    return ["run-parallel", str(workload.path), "--workers", str(spec.workers), "--json"]


def execute(spec: RunSpec, ctx: Context, workload: Workload, repeat: int = 0) -> RunRecord:
    """Run one spec in fresh dirs; return its filled record (counts included)."""
    record = RunRecord(
        workload.name, spec.label, spec.mode, spec.workers, repeat,
        command_template(spec, ctx.address),
    )  # fmt: skip
    with run_dirs(ctx) as (db, out):
        offset = 0.0
        if spec.mode == "raw":
            cmd = [sys.executable, str(RAW_SCRIPT), str(workload.path), "--db", str(db)]
            result = run_process([*cmd, "--out", str(out)], None, ctx.timeout_s)
        elif spec.mode == "drain":
            enqueue = run_process(
                pipeline_cmd(ctx, db, out, "enqueue", str(workload.path)),
                ctx.env, ctx.timeout_s, ctx.extra_pids,
            )  # fmt: skip
            errors, warnings = check_process(enqueue, "enqueue")
            record.errors += errors
            record.warnings += warnings
            record.enqueue_s = offset = enqueue.wall_s
            drain_args = ["drain-db", "--workers", str(spec.workers), "--json"]
            result = run_process(
                pipeline_cmd(ctx, db, out, *drain_args), ctx.env, ctx.timeout_s, ctx.extra_pids
            )
            result.wall_s += offset
            result.peak_rss = max(result.peak_rss, enqueue.peak_rss)
        else:
            result = run_process(
                pipeline_cmd(ctx, db, out, *_run_args(spec, ctx, workload)),
                ctx.env, ctx.timeout_s, ctx.extra_pids,
            )  # fmt: skip
        fill_record(record, result, workload, offset)
        record.counts = read_counts(db, out)
    return record


def fill_record(record: RunRecord, result: ProcResult, workload: Workload, offset: float) -> None:
    """Derive timings, throughput and process checks from one finished command.

    ``offset`` is time spent before this command within the same run (drain's enqueue);
    start-up is counted from the start of the run, so it includes that time.
    """
    errors, warnings = check_process(result, record.mode)
    record.errors += errors
    record.warnings += warnings
    record.returncode = result.returncode
    record.wall_s = result.wall_s
    record.peak_mem_mb = result.peak_rss / MB
    record.summary = parse_summary(result.stdout)
    record.errors += check_summary(record.summary, workload)
    startup = record.summary.get("startup_s") if record.summary else None
    if isinstance(startup, int | float):
        record.startup_s = offset + startup
        record.processing_s = result.wall_s - record.startup_s
    if result.wall_s > 0:
        record.files_per_s = workload.files / result.wall_s
        record.records_per_s = workload.records / result.wall_s


# ---------------------------------------------------------------------- Prefect set-up


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(prefect_home: Path) -> dict[str, str]:
    """The environment for pipeline commands and the API server.

    Inherited ``PREFECT_*`` settings are dropped so a developer's profile cannot change
    what is measured.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
        # A loaded machine can take longer than the default 20 s to start a temporary
        # server; a longer limit changes nothing when it starts quickly.
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    )
    return env


def wait_for_health(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; raise if the server exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        with (
            suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(url, timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"prefect server did not become healthy within {timeout_s:.0f} s")


@contextmanager
def api_server(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, int]]:
    """Run one ``prefect server start`` for the whole invocation; yield (api url, pid)."""
    port = free_port()
    exe = Path(sys.executable).with_name("prefect")
    server_env = {**env, "PREFECT_UI_ENABLED": "false"}
    cmd = [str(exe), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        try:
            wait_for_health(f"http://127.0.0.1:{port}/api/health", proc, timeout_s=180)
        except RuntimeError as exc:
            tail = log_path.read_text(errors="replace")[-STDERR_TAIL_CHARS:]
            raise RuntimeError(f"{exc}\n{tail}") from exc
        yield f"http://127.0.0.1:{port}/api", proc.pid
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM a session we started, then SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            continue
    reap_leftovers(proc.pid, {}, grace_s=1.0)


def warm_up(ctx: Context, source: Workload, specs: Sequence[RunSpec]) -> list[str]:
    """Uncounted runs on a few files: Prefect migrations, imports and caches happen here.

    Runs the sequential mode and, if Dask modes follow, one single-worker Dask run.
    Returns errors; a failed warm-up usually means the CLI itself is broken.
    """
    folder = ctx.scratch / "warmup"
    shutil.rmtree(folder, ignore_errors=True)
    files = sorted(source.path.rglob("*.txt"))[:WARMUP_FILES]
    for src in files:
        dest = folder / src.relative_to(source.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    # Universal-newline reading is an independent way to count the non-blank lines.
    records = sum(
        1 for f in files for line in f.read_text(encoding="utf-8-sig").splitlines() if line.strip()
    )
    tiny = Workload("warmup", folder, len(files), 0, records, 0)
    modes = {s.mode for s in specs}
    warm_specs = [RunSpec("sequential", 0)] if "sequential" in modes else []
    if modes & {"parallel", "drain"}:
        warm_specs.append(RunSpec("parallel", 1))
    errors = []
    for spec in warm_specs:
        record = execute(spec, ctx, tiny)
        errors += [f"warm-up {spec.label}: {e}" for e in record.errors]
    shutil.rmtree(folder, ignore_errors=True)
    return errors


# -------------------------------------------------------------------------- statistics


def _median(values: Sequence[float | None]) -> float | None:
    """Median of the present values, or None."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, or None when either is missing or the reference is not positive."""
    if value is None or reference is None or reference <= 0:
        return None
    return value / reference


def summarize(records: Sequence[RunRecord], workloads: Sequence[Workload]) -> list[dict]:
    """One row per (workload, mode): medians over successful repeats, ratios to raw."""
    by_name = {w.name: w for w in workloads}
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for record in records:
        groups.setdefault((record.workload, record.label), []).append(record)
    rows = []
    for (name, label), group in groups.items():
        good = [r for r in group if r.ok]
        walls = [r.wall_s for r in good if r.wall_s is not None]
        rows.append(
            {
                "workload": name,
                "mode": group[0].mode,
                "label": label,
                "workers": group[0].workers,
                "runs": len(group),
                "ok_runs": len(good),
                "wall_median_s": _median(walls),
                "wall_min_s": min(walls) if walls else None,
                "wall_max_s": max(walls) if walls else None,
                "startup_median_s": _median([r.startup_s for r in good]),
                "processing_median_s": _median([r.processing_s for r in good]),
                "peak_mem_mb": max((r.peak_mem_mb or 0.0 for r in good), default=None),
                "counts": group[-1].counts,
                "errors": sum(len(r.errors) for r in group),
            }
        )
    for row in rows:
        raw = next(r for r in rows if r["workload"] == row["workload"] and r["mode"] == "raw")
        workload = by_name[row["workload"]]
        wall = row["wall_median_s"]
        row["wall_vs_raw"] = _ratio(wall, raw["wall_median_s"])
        row["processing_vs_raw"] = _ratio(row["processing_median_s"], raw["processing_median_s"])
        row["files_per_s"] = workload.files / wall if wall else None
        row["records_per_s"] = workload.records / wall if wall else None
    return rows


# ----------------------------------------------------------------------------- reports


def machine_info() -> dict[str, object]:
    """What the numbers were measured on."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    memory = psutil.virtual_memory().total
    return {
        "cpu_count_logical": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_total_gb": round(memory / 1024**3, 2),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "packages": versions,
    }


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    """Format a number for the table; a dash when missing."""
    return "-" if value is None else f"{value:{spec}}{suffix}"


def markdown_report(result: dict) -> str:
    """The summary table plus context lines, as Markdown."""
    machine = result["machine"]
    config = result["config"]
    lines = [
        "# Benchmark results",
        "",
        f"{result['date']} - {machine['cpu_count_logical']} CPUs, "
        f"{machine['memory_total_gb']} GB, {machine['platform']}, Python {machine['python']}, "
        f"prefect {machine['packages'].get('prefect')}, "
        f"distributed {machine['packages'].get('distributed')}",
        "",
        f"scale {config['scale']}, repeats {config['repeats']}, "
        f"Prefect API: {'shared server' if config['api_server'] else 'temporary per command'}. "
        "Times are medians over successful repeats; throughput uses the median wall time; "
        "ratios are to the raw baseline's medians.",
        "",
        "| workload | mode | ok/runs | wall s (min-max) | startup s | processing s "
        "| wall x raw | proc x raw | files/s | records/s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["summary"]:
        wall_range = (
            f"{_fmt(row['wall_median_s'])} ({_fmt(row['wall_min_s'])}-{_fmt(row['wall_max_s'])})"
        )
        lines.append(
            f"| {row['workload']} | {row['label']} | {row['ok_runs']}/{row['runs']} "
            f"| {wall_range} | {_fmt(row['startup_median_s'])} "
            f"| {_fmt(row['processing_median_s'])} | {_fmt(row['wall_vs_raw'], '.1f', 'x')} "
            f"| {_fmt(row['processing_vs_raw'], '.1f', 'x')} | {_fmt(row['files_per_s'], '.1f')} "
            f"| {_fmt(row['records_per_s'], ',.0f')} | {_fmt(row['peak_mem_mb'], '.0f')} |"
        )
    for title, items in (("Errors", result["errors"]), ("Warnings", result["warnings"])):
        if items:
            lines += ["", f"## {title}", "", *[f"- {item}" for item in items]]
    return "\n".join(lines) + "\n"


def plot_throughput(rows: Sequence[dict], workers: Sequence[int], path: Path) -> None:
    """Files/s against Dask workers, one panel per workload, raw and sequential as lines."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot's import
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(row["workload"] for row in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        mine = [r for r in rows if r["workload"] == name and r["files_per_s"]]
        parallel = sorted((r["workers"], r["files_per_s"]) for r in mine if r["mode"] == "parallel")
        if parallel:
            ax.plot(*zip(*parallel, strict=True), marker="o", label="run-parallel")
        for row in mine:
            if row["mode"] == "drain":
                ax.scatter(
                    [row["workers"]], [row["files_per_s"]],
                    marker="s", color="tab:purple", label=row["label"],
                )  # fmt: skip
        styles = {
            "raw": ("k", "--"),
            "sequential": ("tab:red", ":"),
            "address": ("tab:green", "-."),
        }
        for row in mine:
            if row["mode"] in styles:
                color, style = styles[row["mode"]]
                ax.axhline(row["files_per_s"], color=color, linestyle=style, label=row["label"])
        ax.set_title(name)
        ax.set_xlabel("Dask workers")
        ax.set_ylabel("files/s (median wall)")
        ax.set_xticks(list(workers))
        ax.set_xlim(min(workers) - 0.5, max(workers) + 0.5)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Throughput vs workers")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(result: dict, workers: Sequence[int], results_dir: Path) -> str:
    """Write latest.json, latest.md and latest.png; return the Markdown."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "latest.json").write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    markdown = markdown_report(result)
    (results_dir / "latest.md").write_text(markdown, "utf-8")
    plot_throughput(result["summary"], workers, results_dir / "latest.png")
    return markdown


# ------------------------------------------------------------------------------ driver


def _int_list(text: str) -> list[int]:
    """Parse "1,2,4" into sorted unique positive ints."""
    values = sorted({int(part) for part in text.split(",") if part.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("workers must be positive integers, e.g. 1,2")
    return values


def _mode_list(text: str) -> list[str]:
    """Parse and validate the comma-separated mode list."""
    modes = [part.strip() for part in text.split(",") if part.strip()]
    if unknown := [m for m in modes if m not in MODES]:
        raise argparse.ArgumentTypeError(f"unknown modes {unknown}; choose from {MODES}")
    return modes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies file counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workloads", type=parse_names, default=["W1", "W2", "W3"])
    parser.add_argument("--workers", type=_int_list, default=[1, 2])
    parser.add_argument("--modes", type=_mode_list, default=list(MODES))
    parser.add_argument("--address", help="scheduler of an existing Dask cluster to also test")
    parser.add_argument("--api-server", action="store_true", help="one shared Prefect server")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per command")
    parser.add_argument("--pipeline", type=Path, help="CLI to test (default: beside python)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.scale <= 0:
        parser.error("--repeats must be >= 1 and --scale > 0")
    return args


def build_plan(args: argparse.Namespace) -> list[RunSpec]:
    """The runs of one repeat, raw first; raw always runs as the reference."""
    plan = [RunSpec("raw")]
    if "sequential" in args.modes:
        plan.append(RunSpec("sequential", 0))
    if "parallel" in args.modes:
        plan += [RunSpec("parallel", n) for n in args.workers]
    if "drain" in args.modes:
        plan.append(RunSpec("drain", max(args.workers)))
    if args.address:
        plan.append(RunSpec("address"))
    return plan


def check_against_raw(record: RunRecord, raw: RunRecord | None, workload: Workload) -> None:
    """Compare a run's counts to this repeat's raw run (raw itself: to the generator)."""
    if record.mode == "raw" or raw is None or "error" in raw.counts:
        record.errors += check_counts(record.counts, expected_counts(workload), "generator")
    else:
        record.errors += check_counts(record.counts, raw.counts, "raw")


def _progress(record: RunRecord, repeats: int) -> None:
    """One line per run on stderr, so long invocations show they are alive."""
    status = "ok" if record.ok else f"ERROR ({len(record.errors)})"
    print(
        f"[{record.workload} {record.repeat + 1}/{repeats}] {record.label:<12} "
        f"wall {_fmt(record.wall_s)} s  startup {_fmt(record.startup_s)} s  "
        f"(settled {_fmt(record.settle_s, '.1f')} s)  {status}",
        file=sys.stderr,
        flush=True,
    )


def run_all(
    args: argparse.Namespace, ctx: Context, workloads: Sequence[Workload]
) -> list[RunRecord]:
    """Every workload x repeat x spec, interleaved per repeat."""
    plan = build_plan(args)
    records = []
    for workload in workloads:
        for repeat in range(args.repeats):
            raw: RunRecord | None = None
            for spec in plan:
                waited = settle()
                record = execute(spec, ctx, workload, repeat)
                record.settle_s = waited
                raw = record if spec.mode == "raw" else raw
                check_against_raw(record, raw, workload)
                records.append(record)
                _progress(record, args.repeats)
    return records


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


def find_pipeline(explicit: Path | None) -> Path:
    """The CLI to benchmark: ``explicit`` or the console script beside this interpreter."""
    exe = explicit or Path(sys.executable).with_name("pipeline")
    if not exe.exists():
        raise SystemExit(f"pipeline executable not found: {exe}")
    return exe.resolve() if explicit else exe


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 1 if any run failed or disagreed with raw."""
    args = parse_args(argv)
    results_dir = args.results_dir.resolve()
    scratch = results_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    workloads = [generate(name, scratch / "workloads", args.scale) for name in args.workloads]
    ctx = Context(scratch=scratch, timeout_s=args.timeout, address=args.address)
    plan = build_plan(args)
    needs_pipeline = any(spec.mode != "raw" for spec in plan)
    prefect_home = Path(tempfile.mkdtemp(prefix="prefect-home-", dir=scratch))
    setup_errors: list[str] = []
    try:
        with _prefect(args, ctx, prefect_home, needs_pipeline):
            if needs_pipeline:
                setup_errors = warm_up(ctx, workloads[0], plan)
            records = run_all(args, ctx, workloads)
    finally:
        for folder in [*ctx.leftovers, prefect_home]:
            shutil.rmtree(folder, ignore_errors=True)

    errors = setup_errors + [
        f"{r.workload} {r.label} repeat {r.repeat + 1}: {e}" for r in records for e in r.errors
    ]
    warnings = [
        f"{r.workload} {r.label} repeat {r.repeat + 1}: {w}" for r in records for w in r.warnings
    ]
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {
            "scale": args.scale,
            "repeats": args.repeats,
            "workloads": args.workloads,
            "workers": args.workers,
            "modes": [spec.label for spec in plan],
            "address": args.address,
            "api_server": args.api_server,
        },
        "workloads": [{k: v for k, v in asdict(w).items() if k != "path"} for w in workloads],
        "summary": summarize(records, workloads),
        "runs": [asdict(r) for r in records],
        "errors": errors,
        "warnings": warnings,
    }
    print(write_reports(result, args.workers, results_dir))
    if errors:
        banner = "!" * 78
        print(f"{banner}\n{len(errors)} ERROR(S):", file=sys.stderr)
        for error in errors:
            print(f"  - {error}", file=sys.stderr)
        print(banner, file=sys.stderr)
        return 1
    return 0


@contextmanager
def _prefect(
    args: argparse.Namespace, ctx: Context, prefect_home: Path, needed: bool
) -> Iterator[None]:
    """Set up the Prefect side of ``ctx``: the pipeline path, env and optional server."""
    if not needed:
        yield
        return
    ctx.pipeline_exe = find_pipeline(args.pipeline)
    ctx.env = base_env(prefect_home)
    if not args.api_server:
        ctx.env["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "true"
        yield
        return
    with api_server(ctx.env, ctx.scratch / "prefect-server.log") as (url, pid):
        ctx.env["PREFECT_API_URL"] = url
        ctx.extra_pids = (pid,)
        yield


if __name__ == "__main__":
    raise SystemExit(main())
