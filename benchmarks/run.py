"""Benchmark harness: the ``pipeline`` CLI against the single-process raw baseline.

One command runs every workload in every mode, interleaved per repeat (each workload in
turn: raw, then each pipeline mode; then the next repeat ...) so slow drift of the machine
spreads evenly over all modes and workloads instead of biasing whichever ran last::

    python benchmarks/run.py [--scale 1] [--repeats 3] [--workloads W1,W2,W3]
        [--workers 1,2] [--modes raw,sequential,parallel,drain,run-all,fixed-costs]
        [--drainers 1,2,4] [--drainer-workers 1]
        [--address tcp://...] [--api-server | --api-url URL] [--results-dir DIR]

Workload modes (``MODES``; raw always runs: it is the reference for ratios and row counts):

* ``raw`` - ``raw_baseline.py`` in a subprocess: stdlib only, one process, the fair floor.
* ``sequential`` - ``pipeline run-parallel DIR --workers 0`` (in-process, no Dask).
* ``parallel-N`` - ``pipeline run-parallel DIR --workers N`` for each N of ``--workers``.
* ``drain-N`` - ``pipeline enqueue DIR`` then ``pipeline drain-db --workers N``, N the
  largest of ``--workers``. Its start-up counts from the start of ``enqueue``.
* ``run-all`` - ``pipeline run-all FILE`` for each file of the workload, one after
  another (not a default mode). Skipped, with the reason in the reports, on workloads of
  more than ``RUN_ALL_MAX_FILES`` files: it is for the big ones (W4, W5, W6).
* ``address`` - with ``--address``, ``run-parallel`` against that existing Dask cluster
  (whose memory is outside the measured process tree).
* ``drain-sqlite-N``, ``drain-pg-N`` - ``pipeline enqueue DIR`` once, then N ``drain-db
  --workers W`` commands started together on one database (N of ``--drainers``, default
  1,2,4; W ``--drainer-workers``, default 1): a SQLite file, or a new database per run on
  one throw-away PostgreSQL server for the invocation (``tests/postgres_cluster.py``).
  Timed from the drainers' start to the last one's exit; every drainer reports to one
  shared Prefect server (the ``--api-server`` one, else one started for them). Not
  default modes. Reported also in their own section, "Drainers on one database", with
  each run's writer share: the drainers' ``writer_s`` over N x wall.

Suites (``SUITES``), run once per invocation rather than per workload:

* ``fixed-costs`` - what a command costs before it does any work: an error, a no-op
  re-run, draining an empty queue, ``run-all`` on a 3-line file, start-up with 2 workers
  and a first command ever; each with a temporary Prefect server and with a running one.

Every run gets a fresh database and output folder. Without ``--api-server`` each pipeline
command starts its own temporary Prefect server; all of them share one ``PREFECT_HOME``
so its migrations run once, during an uncounted warm-up. With ``--api-server`` one
``prefect server start`` serves every run and its memory is added to each pipeline run's.

Per run: wall seconds (measured here), start-up seconds (from the command's JSON summary:
process start to first input committed), processing = wall - start-up, files/s, records/s
and MB/s of input, the peak memory of the whole process tree (RSS of the command and all
its descendants, sampled every 50 ms, summed) broken down by process role, the share of
the wall time spent in write transactions (``writer_s`` of the JSON summary), and counts
read back from the database. Counts or record contents that differ from the raw run's are
errors: they are printed loudly and the harness exits non-zero. When a big workload and its
lines cut into small files both ran (W4 and W4s, W5 and W5s), the report shows, per mode,
the big one's MB/s over the small ones'. A command that fails is recorded with its exit
code and last stderr line, and the harness goes on. Results go to ``latest.json``,
``latest.md`` and ``latest.png`` in the results folder; scratch data goes to its ``tmp/``
sub-folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
from measure import (
    MB,
    ROLES,
    SETTLE_MAX_S,
    ProcResult,
    describe_failure,
    parse_summary,
    reap_leftovers,
    run_process,
    run_processes,
    settle,
)
from raw_baseline import discover
from workloads import DEFAULT_WORKLOADS, WORKLOADS, Workload, generate, parse_names

BENCH_DIR = Path(__file__).resolve().parent
RAW_SCRIPT = BENCH_DIR / "raw_baseline.py"
SAMPLES_DIR = BENCH_DIR.parent / "samples"
PACKAGES = ("prefect", "prefect-dask", "dask", "distributed", "peewee", "psutil", "matplotlib")
# Counts every implementation must agree on; "outputs" is the number of JSON files written.
COUNT_KEYS = ("batches", "records", "finalized_batches", "finalized_records", "outputs")
STDERR_TAIL_CHARS = 2_000
WARMUP_FILES = 3


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class RunSpec:
    """One kind of run within a repeat: a mode and, where they apply, a worker count (per
    command) and a number of commands run together (drainers on one database)."""

    mode: str
    workers: int | None = None
    drainers: int | None = None

    @property
    def label(self) -> str:
        """Row label in reports, e.g. ``parallel-2`` or ``drain-pg-4`` (4 drainers)."""
        if self.drainers is not None:
            return f"{self.mode}-{self.drainers}"
        if MODES[self.mode].label_with_workers:
            return f"{self.mode}-{self.workers}"
        return self.mode


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
    #: Drainers run together on one database (drainer modes; None otherwise).
    drainers: int | None = None
    #: Seconds the command (all drainers together) spent in write transactions, from
    #: the JSON summary's ``writer_s``, and that over (drainers x the command's wall).
    writer_s: float | None = None
    writer_share: float | None = None
    #: Per drainer: exit, wall (from the drainers' common start to its exit), its
    #: summary's writer_s, succeeded and records, and writer_s over its own wall.
    drainer_runs: list[dict[str, object]] = field(default_factory=list)
    files_per_s: float | None = None
    records_per_s: float | None = None
    mb_per_s: float | None = None
    peak_mem_mb: float | None = None
    peak_by_role: dict[str, dict[str, float]] = field(default_factory=dict)
    summary: dict[str, object] | None = None
    counts: dict[str, object] = field(default_factory=dict)
    settle_s: float | None = None
    #: Why the command failed, in one line: exit code (or signal) and last stderr line.
    failure: str | None = None
    stderr_tail: str | None = None
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
    settle_max_s: float = SETTLE_MAX_S
    #: Kill a command whose process tree's RSS reaches this many bytes (0: no limit).
    memory_limit: int = 0
    pipeline_exe: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    extra_pids: tuple[int, ...] = ()
    address: str | None = None
    #: A running Prefect API server (``--api-server`` or ``--api-url``), and its pid if
    #: the harness started it (its memory is then measured too).
    api_url: str | None = None
    api_pid: int | None = None
    #: Finished runs' folders, deleted when the invocation ends (see ``run_dirs``).
    leftovers: list[Path] = field(default_factory=list)
    #: The PostgreSQL server of the ``drain-pg`` runs (a ``postgres_cluster``
    #: ``PostgresCluster``), and its postmaster's pid (its processes are measured).
    postgres: Any = None
    postgres_pid: int | None = None


# ----------------------------------------------------------------------- result checks


def content_digest(rows: Iterable[tuple[str, int, int, str]]) -> str:
    """A digest of (file sha256, record index, line number, content) rows, in any order.

    The sum of the rows' hashes, so the database needs no ORDER BY: for W4/W5's tens of
    millions of rows that sort alone would take minutes and gigabytes of temp space.
    Python's own hash, not a cryptographic one: fetching the rows is then most of the
    cost (blake2b per row was 2-3x slower in all). String hashes are salted per process,
    so a digest is comparable only within one invocation of the harness - which is where
    it is compared. It does not depend on insertion order or on how paths are spelled.
    """
    return f"{sum(map(hash, rows)) % 2**64:016x}"


#: The counts every implementation must agree on, as SQL (both backends' tables are alike).
COUNT_QUERIES = {
    "batches": "SELECT count(*) FROM processing_batches",
    "records": "SELECT count(*) FROM processed_records",
    "finalized_batches": "SELECT count(*) FROM processing_batches WHERE status = 'finalized'",
    "finalized_records": "SELECT count(*) FROM processed_records WHERE status = 'finalized'",
}
#: The rows of ``content_digest``: (file sha256, record index, line number, content).
DIGEST_QUERY = (
    "SELECT b.sha256, r.record_index, r.line_number, r.content"
    " FROM processed_records r JOIN processing_batches b ON b.id = r.batch_id"
)


def count_outputs(out_dir: Path) -> int:
    """The JSON documents written under ``out_dir``."""
    return sum(1 for _ in out_dir.rglob("*_processed.json")) if out_dir.is_dir() else 0


def read_counts(db_path: Path, out_dir: Path) -> dict[str, object]:
    """Row counts, finalized counts, a digest of all record contents and the JSON count."""
    outputs = count_outputs(out_dir)
    if not db_path.is_file():
        return {"outputs": outputs, "error": "database file was not created"}
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        counts: dict[str, object] = {
            key: conn.execute(sql).fetchone()[0] for key, sql in COUNT_QUERIES.items()
        }
        counts["outputs"] = outputs
        counts["content_digest"] = content_digest(conn.execute(DIGEST_QUERY))
        return counts
    except sqlite3.Error as exc:
        return {"outputs": outputs, "error": f"cannot read the database: {exc}"}
    finally:
        conn.close()


def read_postgres_counts(url: str, out_dir: Path) -> dict[str, object]:
    """``read_counts`` for a PostgreSQL database (``url``): the same counts and digest.

    psycopg returns the same Python types as sqlite3 here (text, and bigint as int), so
    the digest compares with the raw baseline's. The rows are read through a server-side
    cursor: W4/W5 have tens of millions.
    """
    import psycopg

    outputs = count_outputs(out_dir)
    try:
        with psycopg.connect(url) as conn:
            counts: dict[str, object] = {}
            for key, sql in COUNT_QUERIES.items():
                row = conn.execute(sql).fetchone()
                counts[key] = row[0] if row else None
            counts["outputs"] = outputs
            with conn.cursor(name="digest_rows") as cursor:
                cursor.itersize = 10_000
                cursor.execute(DIGEST_QUERY)
                counts["content_digest"] = content_digest(cursor)
            return counts
    except psycopg.Error as exc:
        return {"outputs": outputs, "error": f"cannot read the database: {exc}"}


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
        for key in (*COUNT_KEYS, "content_digest")
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
    if failure := describe_failure(result):
        errors.append(f"{what} failed: {failure}")
    if result.leftovers:
        warnings.append(f"{what} left processes running (killed): {result.leftovers}")
    return errors, warnings


def note_process(record: RunRecord | FixedRecord, result: ProcResult, what: str) -> None:
    """Add a finished command's errors, warnings and failure reason to ``record``."""
    errors, warnings = check_process(result, what)
    record.errors += errors
    record.warnings += warnings
    if record.failure is None and (failure := describe_failure(result)):
        record.failure = f"{what}: {failure}"
        record.stderr_tail = result.stderr.strip()[-STDERR_TAIL_CHARS:]


# ------------------------------------------------------------------------ running modes


#: Finished runs' folders are deleted at once after all unless, once they are kept, this
#: much space is still free beyond the size of the folder (room for a run like it).
KEEP_LEFTOVERS_MIN_FREE = 4 * 1024**3
#: Runs over fewer files than this are deleted at once: the slowdown ``run_dirs``
#: avoids comes from deleting tens of thousands of files, and W4/W5's few huge outputs
#: would otherwise fill the disk.
KEEP_LEFTOVERS_MIN_FILES = 1_000


def _size(folder: Path) -> int:
    """Bytes of the files under ``folder``."""
    return sum(entry.stat().st_size for entry in folder.rglob("*") if entry.is_file())


@contextmanager
def run_dirs(ctx: Context, files: int = KEEP_LEFTOVERS_MIN_FILES) -> Iterator[tuple[Path, Path]]:
    """A fresh (database file, output folder) pair, deleted when the invocation ends.

    Not right after the run: on ext4 without a journal, the inode allocator skips inodes
    freed in the last minutes one by one, so the run after a deletion of tens of
    thousands of files spent most of its time creating files (measured: 1.3 ms instead
    of 0.1 ms per file, in whichever command came next, raw baseline included). A run
    over fewer than ``KEEP_LEFTOVERS_MIN_FILES`` input files is deleted at once, and so
    is one that would leave less than ``KEEP_LEFTOVERS_MIN_FREE`` plus its own size free
    (W4s's 30,000 files carry as many gigabytes as W4's one).
    """
    base = Path(tempfile.mkdtemp(prefix="run-", dir=ctx.scratch))
    try:
        yield base / "bench.db", base / "out"
    finally:
        few_files = files < KEEP_LEFTOVERS_MIN_FILES
        if few_files or shutil.disk_usage(base).free < KEEP_LEFTOVERS_MIN_FREE + _size(base):
            shutil.rmtree(base, ignore_errors=True)
        else:
            ctx.leftovers.append(base)


#: A run's database: the path of a SQLite file, or the URL of a server's database.
Database = Path | str


def database_options(db: Database) -> list[str]:
    """``--db-path FILE`` for a SQLite file, ``--db-url URL`` for a database URL."""
    if isinstance(db, str) and "://" in db:
        return ["--db-url", db]
    return ["--db-path", str(db)]


def pipeline_cmd(ctx: Context, db: Database, out: Path, *args: str) -> list[str]:
    """A ``pipeline`` command line with the harness's global options."""
    assert ctx.pipeline_exe is not None
    return [
        str(ctx.pipeline_exe), "--log-level", "OFF",
        *database_options(db), "--output-dir", str(out), *args,
    ]  # fmt: skip


PIPELINE_TEMPLATE = "pipeline --log-level OFF --db-path DB --output-dir OUT"


def run_pipeline(ctx: Context, db: Database, out: Path, *args: str) -> ProcResult:
    """One measured ``pipeline`` command with the invocation's environment."""
    return run_process(
        pipeline_cmd(ctx, db, out, *args), ctx.env, ctx.timeout_s, ctx.extra_pids,
        ctx.memory_limit,
    )  # fmt: skip


def merge_results(first: ProcResult, second: ProcResult) -> ProcResult:
    """Two commands of one run (drain's enqueue then drain-db) as one: times add up,
    memory is that of whichever peaked higher."""
    peaked = first if first.peak_rss > second.peak_rss else second
    second.wall_s += first.wall_s
    second.peak_rss = peaked.peak_rss
    second.roles = peaked.roles
    return second


# A mode's ``run``: (spec, ctx, workload, db, out, record) -> (result, seconds spent in
# this run before the command whose summary counts, e.g. drain's enqueue).
RunFn = Callable[[RunSpec, Context, Workload, Database, Path, RunRecord], tuple[ProcResult, float]]


@dataclass(frozen=True)
class Mode:
    """A kind of workload run: how to plan it, show its command and run it once.

    The extension point for new modes: ``register_mode(Mode(...))`` makes a name valid in
    ``--modes``. A mode that needs a service for the whole invocation - the PostgreSQL
    server of ``drain-pg``, the shared Prefect server of the drainer modes - gives
    ``session``, entered once before the first run (it may put settings on the context);
    a mode whose results do not live in a SQLite file gives its own ``database`` (a fresh
    one per run: it yields the location its commands are given) and ``counts`` (read from
    that location).
    """

    name: str
    #: Its runs in one repeat, as worker counts (None for a mode without workers), from
    #: the command-line options.
    workers: Callable[[argparse.Namespace], list[int | None]]
    run: RunFn
    #: The command with placeholders instead of this machine's paths, for the reports.
    template: Callable[[RunSpec, Context], str]
    needs_pipeline: bool = True
    label_with_workers: bool = False
    #: Its runs in one repeat as numbers of commands run together on one database (each
    #: worker count with each number), or [None] for a mode of one command at a time.
    drainers: Callable[[argparse.Namespace], list[int | None]] = lambda args: [None]
    #: The database the pipeline stores to: "sqlite" or "postgresql", for the reports.
    backend: str = "sqlite"
    #: A fresh database for one run, given the run's SQLite path; yields what the run's
    #: commands get (the path itself, or a URL for ``--db-url``), removed at the end.
    database: Callable[[Context, Path], AbstractContextManager[Database]] = lambda ctx, path: (
        nullcontext(path)
    )
    counts: Callable[[Any, Path], dict[str, object]] = read_counts
    session: Callable[[argparse.Namespace, Context], AbstractContextManager[None]] | None = None
    #: The run's summary (the keys of ``pipeline ... --json``) from its command's stdout.
    summary: Callable[[str], dict[str, object] | None] = parse_summary
    #: Why the mode does not run on a workload (None: it does); such a pair is skipped
    #: with that reason in the reports.
    refuse: Callable[[Workload], str | None] = lambda workload: None


def run_raw(
    spec: RunSpec, ctx: Context, workload: Workload, db: Database, out: Path, record: RunRecord
) -> tuple[ProcResult, float]:
    """The raw baseline, in a process of its own like the pipeline's commands."""
    cmd = [sys.executable, str(RAW_SCRIPT), str(workload.path), "--db", str(db), "--out", str(out)]
    return run_process(cmd, None, ctx.timeout_s, memory_limit=ctx.memory_limit), 0.0


def parallel_where(spec: RunSpec, ctx: Context | None) -> list[str]:
    """Where a ``run-parallel`` mode runs: a worker count (0: in-process; ``eager``: the
    workers started with the run) or ``--address``."""
    if spec.mode == "address":
        return ["--address", str(ctx.address if ctx else None)]
    where = ["--workers", str(spec.workers)]
    if spec.mode == "eager":
        where += ["--workers-after", "0"]
    return where


def parallel_template(spec: RunSpec, ctx: Context | None) -> str:
    """A ``run-parallel`` mode's command, for the reports."""
    return f"{PIPELINE_TEMPLATE} run-parallel DIR {' '.join(parallel_where(spec, ctx))} --json"


def run_parallel(
    spec: RunSpec, ctx: Context, workload: Workload, db: Database, out: Path, record: RunRecord
) -> tuple[ProcResult, float]:
    """``run-parallel`` where ``parallel_where`` says."""
    assert spec.mode != "address" or ctx.address is not None
    where = parallel_where(spec, ctx)
    return run_pipeline(ctx, db, out, "run-parallel", str(workload.path), *where, "--json"), 0.0


def run_drain(
    spec: RunSpec, ctx: Context, workload: Workload, db: Database, out: Path, record: RunRecord
) -> tuple[ProcResult, float]:
    """``enqueue`` then ``drain-db``; start-up counts from the start of ``enqueue``."""
    enqueue = run_pipeline(ctx, db, out, "enqueue", str(workload.path))
    note_process(record, enqueue, "enqueue")
    record.enqueue_s = enqueue.wall_s
    drain = run_pipeline(ctx, db, out, "drain-db", "--workers", str(spec.workers), "--json")
    return merge_results(enqueue, drain), enqueue.wall_s


#: ``run-all`` runs one command - and, without ``--api-server``, one temporary Prefect
#: server - per file: meant for workloads of a few big files (W4, W5, W6), not thousands.
RUN_ALL_MAX_FILES = 10


def run_run_all(
    spec: RunSpec, ctx: Context, workload: Workload, db: Database, out: Path, record: RunRecord
) -> tuple[ProcResult, float]:
    """``pipeline run-all FILE --json`` for each file of the workload, one after another,
    on one database: times add up, memory is that of the command that peaked highest.

    The last command's result is checked by the caller; the others' failures are noted
    here, naming the file. stdout keeps every command's JSON line, for ``run_all_summary``.
    """
    merged: ProcResult | None = None
    outputs = []
    files = discover(workload.path)
    for number, path in enumerate(files, start=1):
        result = run_pipeline(ctx, db, out, "run-all", str(path), "--json")
        outputs.append(result.stdout.strip())
        if number < len(files):
            note_process(record, result, f"run-all {path.relative_to(workload.path)}")
        merged = result if merged is None else merge_results(merged, result)
    assert merged is not None, f"{workload.name} has no files"
    merged.stdout = "\n".join(outputs) + "\n"
    return merged, 0.0


def run_all_summary(stdout: str) -> dict[str, object] | None:
    """One summary, in ``run-parallel``'s keys, of the ``run-all --json`` lines on stdout.

    Records are job A's ``record_count``; there is no ``startup_s`` (run-all reports none),
    so the report shows wall time only.
    """
    results = []
    for line in stdout.splitlines():
        with suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                results.append(value)
    if not results:
        return None
    succeeded = [r for r in results if r.get("success") is True]
    records = 0
    for result in succeeded:
        jobs = result.get("jobs") or []
        details = next((j.get("details") or {} for j in jobs if j.get("job") == "A"), {})
        records += int(details.get("record_count") or 0)
    return {
        "total": len(results),
        "succeeded": len(succeeded),
        "failed": len(results) - len(succeeded),
        "records": records,
        "failures": [
            {"path": r.get("input"), "error": r.get("error")} for r in results if r not in succeeded
        ],
    }


def refuse_many_files(workload: Workload) -> str | None:
    """run-all's refusal of a workload of more than ``RUN_ALL_MAX_FILES`` files."""
    if workload.files <= RUN_ALL_MAX_FILES:
        return None
    return (
        f"{workload.files:,} files: run-all runs one command (with its own Prefect server) "
        f"per file; the harness runs it on workloads of at most {RUN_ALL_MAX_FILES} files"
    )


# ------------------------------------------------------------ drainers on one database


def postgres_pid(cluster: Any) -> int | None:
    """The postmaster's pid of a running ``PostgresCluster`` (from its ``postmaster.pid``
    file), or None if it cannot be read."""
    if cluster.directory is None:
        return None
    try:
        return int((cluster.directory / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def load_postgres_cluster() -> ModuleType:
    """The tests' throw-away PostgreSQL server module (``tests/postgres_cluster.py``: no
    imports from the project or pytest)."""
    tests = str(BENCH_DIR.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import postgres_cluster

    return postgres_cluster


@contextmanager
def drainer_session(args: argparse.Namespace, ctx: Context) -> Iterator[None]:
    """What the drainer modes need for the invocation: one Prefect server that every
    drainer reports to (the ``--api-server``/``--api-url`` one, else one started here:
    N temporary servers starting at once on a small machine would measure Prefect, not
    the queue)."""
    with shared_server(ctx):
        yield


@contextmanager
def postgres_session(args: argparse.Namespace, ctx: Context) -> Iterator[None]:
    """``drainer_session`` plus one throw-away PostgreSQL server for the invocation (unless
    ``ctx.postgres`` names one already), in which every run gets a database of its own."""
    module = load_postgres_cluster() if ctx.postgres is None else None
    if module is not None:
        try:  # before the Prefect server starts: a missing server is one line at once
            module.check_installed()
        except module.PostgresNotInstalled as exc:
            raise SystemExit(f"drain-pg: {exc}") from None
    with ExitStack() as stack:
        stack.enter_context(drainer_session(args, ctx))
        if module is not None:
            ctx.postgres = stack.enter_context(module.PostgresCluster())
            stack.callback(setattr, ctx, "postgres", None)
        ctx.postgres_pid = postgres_pid(ctx.postgres)
        stack.callback(setattr, ctx, "postgres_pid", None)
        yield


@contextmanager
def postgres_database(ctx: Context, path: Path) -> Iterator[Database]:
    """A new database on ``ctx.postgres`` for one run, named after the run's folder;
    yields its URL and drops it (connections and all) afterwards."""
    assert ctx.postgres is not None, "drain-pg runs inside postgres_session"
    name = "bench_" + re.sub(r"[^a-z0-9]+", "_", path.parent.name.lower())
    url = ctx.postgres.create_database(name)
    try:
        yield url
    finally:
        ctx.postgres.drop_database(name)


def drainer_env(ctx: Context) -> dict[str, str]:
    """The drainers' environment: the invocation's, reporting to the shared server."""
    assert ctx.api_url is not None, "drainer runs inside drainer_session"
    return api_server_env(Path(ctx.env["PREFECT_HOME"]), ctx.api_url)


def combine_summaries(summaries: Sequence[dict[str, object]]) -> dict[str, object]:
    """One summary, in ``drain-db --json``'s keys, of several drainers' summaries: counts
    and writer_s added up, failures joined, start-up the earliest first commit."""

    def numbers(key: str) -> list[float]:
        return [v for s in summaries if isinstance(v := s.get(key), int | float)]

    combined: dict[str, object] = {
        key: int(sum(numbers(key)))
        for key in ("total", "succeeded", "failed", "skipped", "held", "pending", "records")
    }
    combined["writer_s"] = sum(numbers("writer_s"))
    combined["startup_s"] = min(numbers("startup_s"), default=None)
    combined["failures"] = [
        failure
        for s in summaries
        if isinstance(failures := s.get("failures"), list)
        for failure in failures
    ]
    return combined


def run_drainers(
    spec: RunSpec, ctx: Context, workload: Workload, db: Database, out: Path, record: RunRecord
) -> tuple[ProcResult, float]:
    """``enqueue`` once, then ``spec.drainers`` ``drain-db`` commands started together on
    the same database, each with ``--workers spec.workers``.

    The run's wall time is from the drainers' start to the last one's exit (the enqueue
    before it is timed apart, in ``enqueue_s``); its memory that of every drainer's tree
    with the shared Prefect server's and, on PostgreSQL, the server's processes. The
    result returned is the first failed drainer's (else the last to finish), with the
    group's wall time and a combined summary on stdout; the other drainers' failures are
    noted here.
    """
    env = drainer_env(ctx)
    enqueue = run_process(
        pipeline_cmd(ctx, db, out, "enqueue", str(workload.path)), env, ctx.timeout_s,
        memory_limit=ctx.memory_limit,
    )  # fmt: skip
    note_process(record, enqueue, "enqueue")
    record.enqueue_s = enqueue.wall_s
    services = {ctx.api_pid: "prefect-server"} if ctx.api_pid else {}
    if MODES[spec.mode].backend == "postgresql" and ctx.postgres_pid:
        services[ctx.postgres_pid] = "postgres"
    assert spec.drainers is not None and spec.drainers >= 1
    cmd = pipeline_cmd(ctx, db, out, "drain-db", "--workers", str(spec.workers), "--json")
    results = run_processes([cmd] * spec.drainers, env, ctx.timeout_s, services, ctx.memory_limit)
    summaries = []
    for number, result in enumerate(results, start=1):
        summary = parse_summary(result.stdout)
        writer = summary.get("writer_s") if summary else None
        writer = float(writer) if isinstance(writer, int | float) else None
        record.drainer_runs.append(
            {
                "drainer": number,
                "returncode": result.returncode,
                "wall_s": result.wall_s,
                "writer_s": writer,
                "writer_share": _ratio(writer, result.wall_s),
                "succeeded": summary.get("succeeded") if summary else None,
                "records": summary.get("records") if summary else None,
            }
        )
        if summary is None:
            record.errors.append(f"drain-db {number}: no JSON summary on stdout")
        else:
            summaries.append(summary)
    failed = [r for r in results if describe_failure(r)]
    main = failed[0] if failed else max(results, key=lambda r: r.wall_s)
    for number, result in enumerate(results, start=1):
        if result is not main:
            note_process(record, result, f"drain-db {number} of {spec.drainers}")
    return (
        dataclasses.replace(
            main,
            wall_s=max(r.wall_s for r in results),
            stdout=json.dumps(combine_summaries(summaries)) if summaries else "",
        ),
        0.0,
    )


def drainer_template(spec: RunSpec, ctx: Context) -> str:
    """The drainer modes' command, for the reports."""
    options = PIPELINE_TEMPLATE
    if MODES[spec.mode].backend == "postgresql":
        options = options.replace("--db-path DB", "--db-url postgresql://.../DB")
    return (
        f"{options} enqueue DIR && {spec.drainers} x {options} drain-db --workers "
        f"{spec.workers} --json, started together"
    )


#: Workload modes by name, in the order a repeat runs them. See ``Mode``.
MODES: dict[str, Mode] = {}


def register_mode(mode: Mode) -> Mode:
    """Make ``mode`` known to ``--modes`` (appended to the run order)."""
    MODES[mode.name] = mode
    return mode


register_mode(
    Mode(
        "raw",
        workers=lambda args: [None],
        run=run_raw,
        template=lambda spec, ctx: "python benchmarks/raw_baseline.py DIR --db DB --out OUT",
        needs_pipeline=False,
    )
)
register_mode(
    Mode(
        "sequential", workers=lambda args: [0], run=run_parallel, template=parallel_template
    )
)
PARALLEL = register_mode(
    Mode(
        "parallel",
        workers=lambda args: list(args.workers),
        run=run_parallel,
        template=parallel_template,
        label_with_workers=True,
    )
)
# The same with the workers started with the run, not once it has worked --workers-after
# seconds in its own process: what the workers' start costs, in one invocation.
register_mode(dataclasses.replace(PARALLEL, name="eager"))
register_mode(
    Mode(
        "drain",
        workers=lambda args: [max(args.workers)],
        run=run_drain,
        template=lambda spec, ctx: (
            f"{PIPELINE_TEMPLATE} enqueue DIR && "
            f"{PIPELINE_TEMPLATE} drain-db --workers {spec.workers} --json"
        ),
        label_with_workers=True,
    )
)
register_mode(
    Mode(
        "run-all",
        workers=lambda args: [None],
        run=run_run_all,
        template=lambda spec, ctx: f"{PIPELINE_TEMPLATE} run-all FILE --json, for each FILE",
        summary=run_all_summary,
        refuse=refuse_many_files,
    )
)
register_mode(
    Mode(
        "drain-sqlite",
        workers=lambda args: [args.drainer_workers],
        drainers=lambda args: list(args.drainers),
        run=run_drainers,
        template=drainer_template,
        session=drainer_session,
    )
)
register_mode(
    Mode(
        "drain-pg",
        workers=lambda args: [args.drainer_workers],
        drainers=lambda args: list(args.drainers),
        run=run_drainers,
        template=drainer_template,
        backend="postgresql",
        database=postgres_database,
        counts=read_postgres_counts,
        session=postgres_session,
    )
)
# Chosen by --address rather than by name in --modes.
register_mode(
    Mode(
        "address",
        workers=lambda args: [None] if args.address else [],
        run=run_parallel,
        template=parallel_template,
    )
)
#: Modes that ``--modes`` selects by default.
DEFAULT_MODES = ("raw", "sequential", "parallel", "drain")


def execute(spec: RunSpec, ctx: Context, workload: Workload, repeat: int = 0) -> RunRecord:
    """Run one spec in fresh dirs; return its filled record (counts included)."""
    mode = MODES[spec.mode]
    record = RunRecord(
        workload.name, spec.label, spec.mode, spec.workers, repeat, mode.template(spec, ctx),
        drainers=spec.drainers,
    )  # fmt: skip
    with run_dirs(ctx, workload.files) as (path, out), mode.database(ctx, path) as db:
        result, offset = mode.run(spec, ctx, workload, db, out, record)
        fill_record(record, result, workload, offset)
        record.counts = mode.counts(db, out)
    return record


def fill_record(record: RunRecord, result: ProcResult, workload: Workload, offset: float) -> None:
    """Derive timings, throughput and process checks from one finished command.

    ``offset`` is time spent before this command within the same run (drain's enqueue);
    start-up is counted from the start of the run, so it includes that time.
    """
    note_process(record, result, record.mode)
    record.returncode = result.returncode
    record.wall_s = result.wall_s
    record.peak_mem_mb = result.peak_rss / MB
    record.peak_by_role = result.roles
    record.summary = MODES[record.mode].summary(result.stdout)
    record.errors += check_summary(record.summary, workload)
    startup = record.summary.get("startup_s") if record.summary else None
    if isinstance(startup, int | float):
        record.startup_s = offset + startup
        record.processing_s = result.wall_s - record.startup_s
    # The share of the command's time spent writing: with N drainers, of N times the
    # wall time (their sum over the time they had together).
    writer = record.summary.get("writer_s") if record.summary else None
    if isinstance(writer, int | float):
        record.writer_s = float(writer)
        record.writer_share = _ratio(writer, (record.drainers or 1) * (result.wall_s - offset))
    if result.wall_s > 0:
        record.files_per_s = workload.files / result.wall_s
        record.records_per_s = workload.records / result.wall_s
        record.mb_per_s = workload.bytes / MB / result.wall_s


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


def temporary_server_env(prefect_home: Path) -> dict[str, str]:
    """Environment for commands that start their own temporary Prefect server."""
    return {**base_env(prefect_home), "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true"}


def api_server_env(prefect_home: Path, url: str) -> dict[str, str]:
    """Environment for commands that report to the running server at ``url``."""
    return {**base_env(prefect_home), "PREFECT_API_URL": url}


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


def warm_up(ctx: Context, specs: Sequence[RunSpec]) -> list[str]:
    """Uncounted runs on a few small files: Prefect migrations, imports and caches happen
    here.

    Runs the sequential mode (also for run-all) and, if Dask modes follow, one
    single-worker Dask run, on ``WARMUP_FILES`` files of W1 whatever the workloads (W4's
    one file would be 2 GB); and one drainer of each drainer mode (the shared Prefect
    server's first flow runs, the PostgreSQL server's first database).
    Returns errors; a failed warm-up usually means the CLI itself is broken.
    """
    tiny = generate("W1", ctx.scratch / "workloads", WARMUP_FILES / WORKLOADS["W1"].files)
    modes = {s.mode for s in specs}
    warm_specs = [RunSpec("sequential", 0)] if modes & {"sequential", "run-all"} else []
    if modes & {"parallel", "drain", "address"}:
        warm_specs.append(RunSpec("parallel", 1))
    drainer_modes = {s.mode: s.workers for s in specs if s.drainers is not None}
    warm_specs += [RunSpec(mode, workers, 1) for mode, workers in drainer_modes.items()]
    errors = []
    for spec in warm_specs:
        record = execute(spec, ctx, tiny)
        errors += [f"warm-up {spec.label}: {e}" for e in record.errors]
    return errors


# ------------------------------------------------------------------------- fixed costs


@dataclass(frozen=True)
class FixedInputs:
    """One fixed-cost measurement's private inputs (made fresh for every measurement)."""

    samples: Path  # a copy of the repository's samples/ folder
    tiny: Path  # a file of three lines
    empty: Path  # an empty folder
    missing: Path  # a file that does not exist

    @classmethod
    def make(cls, base: Path) -> FixedInputs:
        inputs = cls(
            base / "samples", base / "tiny" / "three.txt", base / "empty", base / "nope.txt"
        )
        shutil.copytree(SAMPLES_DIR, inputs.samples)
        inputs.tiny.parent.mkdir()
        inputs.tiny.write_text("first line\nsecond line\nthird line\n", encoding="utf-8")
        inputs.empty.mkdir()
        return inputs


def _no_failures(summary: dict[str, object] | None) -> list[str]:
    if summary is None:
        return ["no JSON summary on stdout"]
    return [f"summary reports {summary['failed']} failed"] if summary.get("failed") else []


def _all_skipped(summary: dict[str, object] | None) -> list[str]:
    errors = _no_failures(summary)
    if summary is not None and not (summary.get("skipped") == summary.get("total") != 0):
        errors.append(f"not a no-op: {summary.get('skipped')} of {summary.get('total')} skipped")
    return errors


def _nothing_queued(summary: dict[str, object] | None) -> list[str]:
    errors = _no_failures(summary)
    if summary is not None and summary.get("total"):
        errors.append(f"the queue was not empty: {summary.get('total')} input(s)")
    return errors


def _succeeded(summary: dict[str, object] | None) -> list[str]:
    if summary is None:
        return ["no JSON summary on stdout"]
    return [] if summary.get("success") is True else [f"not a success: {summary.get('error')}"]


def _has_startup(summary: dict[str, object] | None) -> list[str]:
    errors = _no_failures(summary)
    if summary is not None and not isinstance(summary.get("startup_s"), int | float):
        errors.append("the summary has no startup_s")
    return errors


@dataclass(frozen=True)
class FixedCost:
    """One fixed-cost measurement: a command timed on (almost) no work."""

    key: str
    title: str
    #: The timed command as reports show it (each also gets the harness's global options).
    command: str
    #: Arguments of the timed command, after the global options.
    args: Callable[[FixedInputs], list[str]]
    #: Errors in the timed command's JSON summary (None: it prints none, or none is read).
    check: Callable[[dict[str, object] | None], list[str]] | None = None
    #: An uncounted command run first with the same PREFECT_HOME, database and output.
    prepare: Callable[[FixedInputs], list[str]] | None = None
    #: The command is meant to fail: a non-zero exit is the expected outcome.
    expect_failure: bool = False
    #: "wall" or "startup" (the ``startup_s`` of the command's JSON summary).
    figure: str = "wall"
    #: Starts from an empty PREFECT_HOME; temporary server only (with a running server
    #: there is no local Prefect database to create).
    first_use: bool = False


FIXED_COSTS = (
    FixedCost(
        "error", "an error: the input does not exist", "pipeline run nonexistent.txt",
        args=lambda i: ["run", str(i.missing)], expect_failure=True,
    ),
    FixedCost(
        "no-op", "no-op: run-parallel a second time, every input unchanged",
        "pipeline run-parallel SAMPLES --json",
        args=lambda i: ["run-parallel", str(i.samples), "--json"],
        prepare=lambda i: ["run-parallel", str(i.samples), "--json"],
        check=_all_skipped,
    ),
    # The database is created by enqueueing an empty folder: what a user setting up a
    # queue does first, and it leaves no inputs and no Prefect runs behind.
    FixedCost(
        "drain-empty", "drain-db on an empty queue", "pipeline drain-db --json",
        args=lambda i: ["drain-db", "--json"],
        prepare=lambda i: ["enqueue", str(i.empty)],
        check=_nothing_queued,
    ),
    FixedCost(
        "run-all", "run-all on a 3-line file", "pipeline run-all THREE_LINES.txt --json",
        args=lambda i: ["run-all", str(i.tiny), "--json"], check=_succeeded,
    ),
    FixedCost(
        "startup-2", "start-up to the first input committed, 2 workers (startup_s)",
        "pipeline run-parallel SAMPLES --workers 2 --json",
        args=lambda i: ["run-parallel", str(i.samples), "--workers", "2", "--json"],
        check=_has_startup, figure="startup",
    ),
    FixedCost(
        "startup-2-eager",
        "the same, the workers started with the run (--workers-after 0) (startup_s)",
        "pipeline run-parallel SAMPLES --workers 2 --workers-after 0 --json",
        args=lambda i: [
            "run-parallel", str(i.samples), "--workers", "2", "--workers-after", "0", "--json"
        ],
        check=_has_startup, figure="startup",
    ),
    FixedCost(
        "first-use", "first use: run-all on a 3-line file, empty PREFECT_HOME",
        "pipeline run-all THREE_LINES.txt --json",
        args=lambda i: ["run-all", str(i.tiny), "--json"], check=_succeeded, first_use=True,
    ),
)  # fmt: skip
#: Where the Prefect API comes from: a temporary server per command, or a running one.
COLUMNS = ("temporary", "api")


@dataclass
class FixedRecord:
    """One fixed-cost measurement."""

    key: str
    column: str
    repeat: int
    command: str
    returncode: int | None = None
    wall_s: float | None = None
    startup_s: float | None = None
    peak_mem_mb: float | None = None
    peak_by_role: dict[str, dict[str, float]] = field(default_factory=dict)
    settle_s: float | None = None
    failure: str | None = None
    stderr_tail: str | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def label(self) -> str:
        return f"{self.key} ({self.column})"


def _fixed_env(ctx: Context, column: str, home: Path) -> tuple[dict[str, str], tuple[int, ...]]:
    """(environment, server pids to measure) for one column."""
    if column == "temporary":
        return temporary_server_env(home), ()
    assert ctx.api_url is not None
    return api_server_env(home, ctx.api_url), (ctx.api_pid,) if ctx.api_pid else ()


def make_template_home(ctx: Context) -> tuple[Path, list[str]]:
    """A PREFECT_HOME in which the pipeline ran once: every measurement starts from a copy.

    A first command in an empty PREFECT_HOME creates and migrates Prefect's database
    (measured on 2 busy cores: ``prefect server database upgrade`` alone took 16 s; a
    first ``run-parallel`` of samples/ 33 s, the next one 19 s), which only the
    ``first-use`` row is meant to show. The copy gives every other row a home like a
    returning user's, without the history of the measurements before it.
    """
    base = Path(tempfile.mkdtemp(prefix="fixed-template-", dir=ctx.scratch))
    home = base / "prefect-home"
    home.mkdir()
    inputs = FixedInputs.make(base)
    result = run_process(
        pipeline_cmd(ctx, base / "pipeline.db", base / "out", "run-all", str(inputs.tiny)),
        temporary_server_env(home), ctx.timeout_s,
    )  # fmt: skip
    errors, _ = check_process(result, "fixed-costs set-up (pipeline run-all)")
    return home, errors


def measure_fixed(
    cost: FixedCost, column: str, ctx: Context, template_home: Path, repeat: int
) -> FixedRecord:
    """Time one fixed cost in a fresh PREFECT_HOME, database and output folder."""
    record = FixedRecord(cost.key, column, repeat, cost.command)
    base = Path(tempfile.mkdtemp(prefix="fixed-", dir=ctx.scratch))
    try:
        inputs = FixedInputs.make(base)
        home = base / "prefect-home"
        if column == "temporary" and not cost.first_use:
            shutil.copytree(template_home, home)
        else:
            home.mkdir()
        env, server_pids = _fixed_env(ctx, column, home)
        db, out = base / "pipeline.db", base / "out"
        if cost.prepare is not None:
            prep = run_process(
                pipeline_cmd(ctx, db, out, *cost.prepare(inputs)), env, ctx.timeout_s
            )
            note_process(record, prep, "preparation")
        record.settle_s = settle(max_wait_s=ctx.settle_max_s)
        result = run_process(
            pipeline_cmd(ctx, db, out, *cost.args(inputs)), env, ctx.timeout_s, server_pids,
            ctx.memory_limit,
        )  # fmt: skip
        fill_fixed_record(record, cost, result)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return record


def fill_fixed_record(record: FixedRecord, cost: FixedCost, result: ProcResult) -> None:
    """Timings, memory and checks of one fixed-cost command."""
    record.returncode = result.returncode
    record.wall_s = result.wall_s
    record.peak_mem_mb = result.peak_rss / MB
    record.peak_by_role = result.roles
    if cost.expect_failure:
        if result.returncode == 0:
            record.errors.append("expected a failure, but it exited 0")
        elif result.timed_out or result.over_limit:
            note_process(record, result, "command")
        else:
            record.failure = describe_failure(result)  # the expected outcome, for the log
    else:
        note_process(record, result, "command")
    summary = parse_summary(result.stdout)
    if cost.check is not None and result.returncode == 0:
        record.errors += cost.check(summary)
    if summary is not None and isinstance(summary.get("startup_s"), int | float):
        record.startup_s = float(summary["startup_s"])  # type: ignore[arg-type]


def summarize_fixed(records: Sequence[FixedRecord]) -> list[dict]:
    """One row per fixed cost: per column, the median (min, max) of its figure."""
    rows = []
    for cost in FIXED_COSTS:
        row: dict[str, object] = {
            "key": cost.key, "title": cost.title, "command": cost.command, "figure": cost.figure
        }  # fmt: skip
        for column in COLUMNS:
            group = [r for r in records if r.key == cost.key and r.column == column]
            good = [r for r in group if r.ok]
            values = [r.startup_s if cost.figure == "startup" else r.wall_s for r in good]
            present = [v for v in values if v is not None]
            # The memory of the run that peaked highest, so its roles add up to the peak.
            peaked = max(good, key=lambda r: r.peak_mem_mb or 0.0, default=None)
            row[column] = {
                "runs": len(group),
                "ok_runs": len(good),
                "median_s": _median(present),
                "min_s": min(present, default=None),
                "max_s": max(present, default=None),
                "wall_median_s": _median([r.wall_s for r in good]),
                "peak_mem_mb": peaked.peak_mem_mb if peaked else None,
                "peak_by_role": peaked.peak_by_role if peaked else {},
            }
        rows.append(row)
    return rows


def fixed_costs_markdown(rows: Sequence[dict], repeats: int) -> str:
    """The fixed-costs table."""
    lines = [
        "## Fixed costs",
        "",
        f"Seconds: median (min-max) of {repeats} repeat(s); wall time unless the row says "
        "startup_s. Every command runs with its own new database, output folder and "
        "PREFECT_HOME - a copy of one in which the pipeline ran once, except for first use "
        "(empty) - and the harness's global options (`--log-level OFF --db-path DB "
        "--output-dir OUT`). Temporary server: no PREFECT_API_URL, the command starts its "
        "own; API server: PREFECT_API_URL names a running `prefect server start`.",
        "",
        "| measurement | command | temporary server | API server |",
        "|---|---|---|---|",
    ]
    for row in rows:
        cells = []
        for column in COLUMNS:
            cell = row[column]
            if not cell["runs"]:
                cells.append("n/a")
                continue
            text = (
                f"{_fmt(cell['median_s'])} ({_fmt(cell['min_s'])}-{_fmt(cell['max_s'])})"
                if cell["ok_runs"]
                else "failed"
            )
            if cell["ok_runs"] < cell["runs"]:
                text += f", {cell['ok_runs']}/{cell['runs']} ok"
            if row["figure"] == "startup" and cell["ok_runs"]:
                text += f"; wall {_fmt(cell['wall_median_s'])}"
            cells.append(text)
        lines.append(f"| {row['title']} | `{row['command']}` | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        "### Fixed costs: peak memory by process role",
        "",
        f"{ROLES_EXPLAINED} From the repeat that peaked highest; only the timed command "
        "(not its preparation).",
        "",
        f"| measurement | Prefect API | tree peak MB | {ROLE_HEADERS} |",
        role_separator(3),
    ]
    for row in rows:
        for column, title in zip(COLUMNS, ("temporary server", "API server"), strict=True):
            cell = row[column]
            if cell["ok_runs"]:
                lines.append(
                    f"| {row['title']} | {title} | {_fmt(cell['peak_mem_mb'], '.0f')} "
                    f"| {role_cells(cell['peak_by_role'])} |"
                )
    return "\n".join(lines) + "\n"


@dataclass
class SuiteResult:
    """What a suite hands back: its rows and runs for the JSON, its Markdown, problems."""

    summary: list[dict]
    runs: list[dict]
    markdown: str
    errors: list[str]
    warnings: list[str]


@contextmanager
def paused_server(ctx: Context) -> Iterator[None]:
    """The shared Prefect server this invocation started, stopped (SIGSTOP to its process
    group) for the block: it uses no CPU meanwhile, and answers again after. A server the
    harness was given (``--api-url``) is not its to pause."""
    if not ctx.api_pid:
        yield
        return
    with suppress(ProcessLookupError):  # gone: the measurements say so, not this
        os.killpg(ctx.api_pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with suppress(ProcessLookupError):
            os.killpg(ctx.api_pid, signal.SIGCONT)


def run_fixed_costs(args: argparse.Namespace, ctx: Context) -> SuiteResult:
    """Every fixed cost in both columns, interleaved per repeat."""
    template_home, errors = make_template_home(ctx)
    records = []
    with shared_server(ctx):
        for repeat in range(args.repeats):
            for column in COLUMNS:
                # The shared server's periodic services would load the machine while the
                # temporary column is measured: it is paused meanwhile.
                with paused_server(ctx) if column == "temporary" else nullcontext():
                    for cost in FIXED_COSTS:
                        if cost.first_use and column != "temporary":
                            continue
                        record = measure_fixed(cost, column, ctx, template_home, repeat)
                        records.append(record)
                        _progress("fixed-costs", record, args.repeats)
    shutil.rmtree(template_home.parent, ignore_errors=True)
    rows = summarize_fixed(records)
    return SuiteResult(
        summary=rows,
        runs=[asdict(r) for r in records],
        markdown=fixed_costs_markdown(rows, args.repeats),
        errors=errors
        + [f"fixed-costs {r.label} repeat {r.repeat + 1}: {e}" for r in records for e in r.errors],
        warnings=[
            f"fixed-costs {r.label} repeat {r.repeat + 1}: {w}" for r in records for w in r.warnings
        ],
    )


#: Suites by name: run once per invocation when named in ``--modes``.
SUITES: dict[str, Callable[[argparse.Namespace, Context], SuiteResult]] = {
    "fixed-costs": run_fixed_costs,
}


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
        # The memory breakdown of the run that peaked highest, so it adds up to peak_mem_mb.
        peaked = max(good, key=lambda r: r.peak_mem_mb or 0.0, default=None)
        # Per-drainer figures from one run (the one of median wall time): medians of each
        # drainer would mix runs.
        by_wall = sorted((r for r in good if r.wall_s is not None), key=lambda r: r.wall_s or 0)
        middle = by_wall[(len(by_wall) - 1) // 2] if by_wall else None
        rows.append(
            {
                "workload": name,
                "mode": group[0].mode,
                "label": label,
                "workers": group[0].workers,
                "drainers": group[0].drainers,
                "backend": MODES[group[0].mode].backend if group[0].mode != "raw" else None,
                "writer_median_s": _median([r.writer_s for r in good]),
                "writer_share_median": _median([r.writer_share for r in good]),
                "enqueue_median_s": _median([r.enqueue_s for r in good]),
                "drainer_runs": middle.drainer_runs if middle else [],
                "runs": len(group),
                "ok_runs": len(good),
                "wall_median_s": _median(walls),
                "wall_min_s": min(walls) if walls else None,
                "wall_max_s": max(walls) if walls else None,
                "startup_median_s": _median([r.startup_s for r in good]),
                "processing_median_s": _median([r.processing_s for r in good]),
                "peak_mem_mb": peaked.peak_mem_mb if peaked else None,
                "peak_by_role": peaked.peak_by_role if peaked else {},
                "counts": group[-1].counts,
                "errors": sum(len(r.errors) for r in group),
                "failures": sorted({r.failure for r in group if r.failure}),
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
        row["mb_per_s"] = workload.bytes / MB / wall if wall else None
    return rows


#: What issue 13 asks of a large file: at least this share of the MB/s of small files of
#: the same lines, in the same run.
LARGE_VS_SMALL_TARGET = 0.8


def large_vs_small(rows: Sequence[dict]) -> list[dict]:
    """Per mode, a big workload's MB/s against that of its lines cut into small files
    (W4 / W4s, W5 / W5s), from the medians of this invocation; for each pair of workloads
    that both ran."""
    pairs = []
    by_key = {(row["workload"], row["label"]): row for row in rows}
    for small, spec in WORKLOADS.items():
        big = spec.split_of
        for row in rows:
            if not big or row["workload"] != big:
                continue
            other = by_key.get((small, row["label"]))
            if other is None:
                continue
            pairs.append(
                {
                    "large": big,
                    "small": small,
                    "label": row["label"],
                    "large_mb_per_s": row["mb_per_s"],
                    "small_mb_per_s": other["mb_per_s"],
                    "ratio": _ratio(row["mb_per_s"], other["mb_per_s"]),
                }
            )
    return pairs


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


def _workload_line(workload: dict) -> str:
    """One workload's size (and where it came from, if said) for the report header."""
    line = (
        f"{workload['name']}: {workload['files']:,} file(s), {workload['records']:,} records, "
        f"{workload['bytes'] / MB:,.1f} MB"
    )
    return f"{line}: {workload['note']}" if workload.get("note") else line


def throughput_markdown(rows: Sequence[dict]) -> list[str]:
    """The main table: time, throughput and peak memory per workload and mode."""
    lines = [
        "| workload | mode | ok/runs | wall s (min-max) | startup s | processing s "
        "| wall x raw | proc x raw | files/s | records/s | MB/s | peak MB | writer share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        wall_range = (
            f"{_fmt(row['wall_median_s'])} ({_fmt(row['wall_min_s'])}-{_fmt(row['wall_max_s'])})"
        )
        lines.append(
            f"| {row['workload']} | {row['label']} | {row['ok_runs']}/{row['runs']} "
            f"| {wall_range} | {_fmt(row['startup_median_s'])} "
            f"| {_fmt(row['processing_median_s'])} | {_fmt(row['wall_vs_raw'], '.1f', 'x')} "
            f"| {_fmt(row['processing_vs_raw'], '.1f', 'x')} | {_fmt(row['files_per_s'], '.1f')} "
            f"| {_fmt(row['records_per_s'], ',.0f')} | {_fmt(row['mb_per_s'], '.2f')} "
            f"| {_fmt(row['peak_mem_mb'], '.0f')} | {_fmt(row.get('writer_share_median'))} |"
        )
    return lines


#: What the writer share is, for the reports.
WRITER_SHARE_EXPLAINED = (
    "Writer share: the seconds the command spent in write transactions (jobs B and C and "
    "the ledger: `writer_s` of its JSON summary) over its wall time; for N drainers, the "
    "sum of their `writer_s` over N x the wall time. On SQLite it includes the wait for "
    "the file's one write lock."
)


def drainers_markdown(rows: Sequence[dict], config: dict) -> list[str]:
    """The "Drainers on one database" section: per workload, the drainer modes' rows
    beside the raw baseline's."""
    drainer_rows = [row for row in rows if row.get("drainers") is not None]
    if not drainer_rows:
        return []
    workers = config.get("drainer_workers")
    api = (
        "the shared server of `--api-server`/`--api-url`"
        if config.get("api_server")
        else "one `prefect server start` the harness started for them"
    )
    lines = [
        "## Drainers on one database",
        "",
        "Each run: one `pipeline enqueue DIR` (not timed), then N `pipeline drain-db "
        f"--workers {workers} --json` started together on the same database; wall time from "
        "their start to the last one's exit. Every drainer reports to the same Prefect "
        f"API: {api}. SQLite: one database file; PostgreSQL: a new database per run on "
        "one throw-away server for the invocation. Peak MB: all the drainers' process "
        "trees (their Dask workers included), the shared Prefect server when the harness "
        "started it, and for PostgreSQL the server's processes (RSS: each process counts "
        "the shared buffers it touched, so this is an upper bound). "
        f"{WRITER_SHARE_EXPLAINED} Per drainer: its `writer_s` over its own wall time, "
        "from the run of median wall time. Rows are checked against the raw baseline "
        "like every other mode's.",
    ]
    for name in dict.fromkeys(row["workload"] for row in drainer_rows):
        lines += [
            "",
            f"### {name}",
            "",
            "| backend | drainers | ok/runs | wall s (min-max) | files/s | records/s "
            "| wall x raw | writer share | per drainer | peak MB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        mine = [r for r in rows if r["workload"] == name]
        chosen = [r for r in mine if r["mode"] == "raw"] + [
            r for r in mine if r.get("drainers") is not None
        ]
        for row in chosen:
            backend = "raw baseline (SQLite)" if row["mode"] == "raw" else row["backend"]
            drainers = "-" if row["mode"] == "raw" else row["drainers"]
            per_drainer = " / ".join(
                _fmt(run.get("writer_share")) for run in row.get("drainer_runs") or []
            )
            lines.append(
                f"| {backend} | {drainers} | {row['ok_runs']}/{row['runs']} "
                f"| {_fmt(row['wall_median_s'])} "
                f"({_fmt(row['wall_min_s'])}-{_fmt(row['wall_max_s'])}) "
                f"| {_fmt(row['files_per_s'], '.1f')} | {_fmt(row['records_per_s'], ',.0f')} "
                f"| {_fmt(row['wall_vs_raw'], '.2f', 'x')} "
                f"| {_fmt(row.get('writer_share_median'))} | {per_drainer or '-'} "
                f"| {_fmt(row['peak_mem_mb'], '.0f')} |"
            )
    return lines


#: The memory tables' columns after the tree's peak, one per ``ROLES`` entry.
ROLE_HEADERS = "command (writer) | Dask workers | Prefect server | PostgreSQL | other"


def role_separator(columns: int) -> str:
    """The separator row of a memory table with ``columns`` columns before the roles'."""
    return "|---" * (columns + len(ROLES)) + "|"


#: What the roles are, for the memory tables.
ROLES_EXPLAINED = (
    "MB at the moment the whole process tree peaked / the role's own peak (roles can "
    "peak at different moments). command (writer): the command's own process, which "
    "writes the database (a local cluster's nannies run in it); Dask workers: the worker "
    "processes; Prefect server: the temporary server, or the running one with "
    "`--api-server` or of the drainer modes (not with `--api-url`: the harness does not "
    "know its processes); PostgreSQL: the drain-pg runs' server, its postmaster and every "
    "child (one backend per connection; RSS counts the shared buffers each touched); "
    "other: anything else (multiprocessing's resource tracker). With N drainers, command "
    "is all of them."
)


def role_cells(roles: dict[str, dict[str, float]]) -> str:
    """The memory tables' role cells: "at tree peak / own peak" MB, "-" for an absent role."""
    return " | ".join(
        f"{roles[role]['at_tree_peak_mb']:.0f} / {roles[role]['peak_mb']:.0f}"
        if role in roles
        else "-"
        for role in ROLES
    )


def memory_markdown(rows: Sequence[dict]) -> list[str]:
    """Peak memory by process role: at the tree's peak / the role's own peak, in MB."""
    lines = [
        "## Peak memory by process role",
        "",
        f"{ROLES_EXPLAINED} From the run that peaked highest.",
        "",
        f"| workload | mode | tree peak MB | {ROLE_HEADERS} |",
        role_separator(3),
    ]
    for row in rows:
        lines.append(
            f"| {row['workload']} | {row['label']} | {_fmt(row['peak_mem_mb'], '.0f')} "
            f"| {role_cells(row.get('peak_by_role') or {})} |"
        )
    return lines


def large_vs_small_markdown(pairs: Sequence[dict]) -> list[str]:
    """The large-file rate over the small-files rate of the same lines, per mode."""
    lines = [
        "## Large file against small files of the same lines",
        "",
        "MB/s of the big workload over MB/s of the same lines cut into 64 KiB files (W4s is "
        "W4's lines, W5s W5's), each from its median wall time in this invocation. Wanted: "
        f"at least {LARGE_VS_SMALL_TARGET:.2f}.",
        "",
        "| mode | large | MB/s | small | MB/s | large / small |",
        "|---|---|---|---|---|---|",
    ]
    for pair in pairs:
        lines.append(
            f"| {pair['label']} | {pair['large']} | {_fmt(pair['large_mb_per_s'])} "
            f"| {pair['small']} | {_fmt(pair['small_mb_per_s'])} | {_fmt(pair['ratio'])} |"
        )
    return lines


def _workers_after_text(seconds: float | None) -> str:
    """When a local cluster's workers started (``--workers-after``)."""
    if seconds is None:
        return "local workers started as the pipeline's default says (--workers-after)"
    if seconds == 0:
        return "local workers started with each run (--workers-after 0)"
    return f"local workers started after {seconds:g} s of work (--workers-after {seconds:g})"


def markdown_report(result: dict) -> str:
    """The summary tables plus context lines, as Markdown."""
    machine = result["machine"]
    config = result["config"]
    lines = [
        "# Benchmark results",
        "",
        f"{result['date']} - {machine['cpu_count_logical']} CPUs, "
        f"{machine['memory_total_gb']} GB, {machine['platform']}, Python {machine['python']}, "
        f"prefect {machine['packages'].get('prefect')}, "
        f"distributed {machine['packages'].get('distributed')}",
    ]
    if result["summary"]:
        api = "shared server" if config["api_server"] else "temporary per command"
        if not config["api_server"] and any(r.get("drainers") for r in result["summary"]):
            api += " (drainer modes: one shared server)"
        lines += [
            "",
            f"scale {config['scale']}, repeats {config['repeats']}, Prefect API: {api}, "
            f"{_workers_after_text(config.get('workers_after'))}. "
            "Times are medians over successful repeats; throughput uses the median wall time "
            "(MB/s: input bytes, 1 MB = 2^20 bytes); ratios are to the raw baseline's medians.",
            "",
            *[f"- {_workload_line(w)}" for w in result["workloads"]],
            "",
        ]
        lines += throughput_markdown(result["summary"])
        lines += ["", WRITER_SHARE_EXPLAINED]
        if drainers := drainers_markdown(result["summary"], config):
            lines += ["", *drainers]
        if result.get("large_vs_small"):
            lines += ["", *large_vs_small_markdown(result["large_vs_small"])]
        lines += ["", *memory_markdown(result["summary"])]
    for suite in result.get("suites", {}).values():
        lines += ["", suite["markdown"].rstrip("\n")]
    failures = [
        f"{row['workload']} {row['label']}: {failure}"
        for row in result["summary"]
        for failure in row.get("failures", [])
    ]
    for title, items in (
        ("Skipped", result.get("skipped", [])),
        ("Failures", failures),
        ("Errors", result["errors"]),
        ("Warnings", result["warnings"]),
    ):
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
            "run-all": ("tab:orange", (0, (1, 3))),
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


def scrub_paths(value: object, replacements: dict[str, str]) -> object:
    """``value`` with every string's machine-specific paths replaced by placeholders.

    Commands' summaries and error messages name the scratch folders they ran in; results
    that get committed should not carry this machine's layout.
    """
    if isinstance(value, str):
        for path, placeholder in replacements.items():
            value = value.replace(path, placeholder)
        return value
    if isinstance(value, dict):
        return {key: scrub_paths(item, replacements) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_paths(item, replacements) for item in value]
    return value


def write_reports(result: dict, workers: Sequence[int], results_dir: Path) -> str:
    """Write latest.json, latest.md and (with workload rows) latest.png; return the Markdown.

    A run without workload rows removes an older latest.png rather than leave a plot that
    belongs to another run beside its results.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "latest.json").write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    markdown = markdown_report(result)
    (results_dir / "latest.md").write_text(markdown, "utf-8")
    if result["summary"]:
        plot_throughput(result["summary"], workers, results_dir / "latest.png")
    else:
        (results_dir / "latest.png").unlink(missing_ok=True)
    return markdown


# ------------------------------------------------------------------------------ driver


def _int_list(text: str) -> list[int]:
    """Parse "1,2,4" into sorted unique positive ints."""
    values = sorted({int(part) for part in text.split(",") if part.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("expected positive integers, e.g. 1,2")
    return values


def _mode_list(text: str) -> list[str]:
    """Parse and validate the comma-separated list of modes and suites."""
    known = [name for name in MODES if name != "address"] + list(SUITES)
    modes = [part.strip() for part in text.split(",") if part.strip()]
    if unknown := [m for m in modes if m not in known]:
        raise argparse.ArgumentTypeError(f"unknown modes {unknown}; choose from {known}")
    return modes


def _workload_list(text: str) -> list[str]:
    try:
        return parse_names(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale", type=float, default=1.0,
        help="multiplies W1-W3's file counts, W4-W6's file sizes, W4s/W5s's total size and "
        "takes that share of STDLIB's files (up to all)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workloads", type=_workload_list, default=list(DEFAULT_WORKLOADS),
        help=f"of {','.join(WORKLOADS)} (default: {','.join(DEFAULT_WORKLOADS)})",
    )  # fmt: skip
    parser.add_argument("--workers", type=_int_list, default=[1, 2])
    parser.add_argument(
        "--modes", type=_mode_list, default=list(DEFAULT_MODES),
        help=f"default: {','.join(DEFAULT_MODES)}; also: eager, run-all, drain-sqlite, "
        "drain-pg, fixed-costs",
    )  # fmt: skip
    parser.add_argument(
        "--drainers", type=_int_list, default=[1, 2, 4],
        help="drain-sqlite/drain-pg: drain-db commands run together on one database, "
        "e.g. 1,2,4 (default)",
    )  # fmt: skip
    parser.add_argument(
        "--drainer-workers", type=int, default=1, metavar="N",
        help="drain-sqlite/drain-pg: --workers of each drain-db (default 1; 0: in-process)",
    )  # fmt: skip
    parser.add_argument(
        "--workers-after", type=float, metavar="SECONDS",
        help="the commands' --workers-after (PIPELINE_WORKERS_AFTER): a local cluster's "
        "workers start once a run has worked this long in its own process (0: at once; "
        "default: the pipeline's default)",
    )  # fmt: skip
    parser.add_argument("--address", help="scheduler of an existing Dask cluster to also test")
    parser.add_argument("--api-server", action="store_true", help="one shared Prefect server")
    parser.add_argument(
        "--api-url", help="a running Prefect API to use as the shared server (implies --api-server)"
    )
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per command")
    parser.add_argument(
        "--settle-max", type=float, default=SETTLE_MAX_S,
        help="longest wait for an idle CPU before each run, seconds (0: no wait)",
    )  # fmt: skip
    parser.add_argument(
        "--max-memory-gb", type=float,
        default=round(0.8 * psutil.virtual_memory().total / 1024**3, 1),
        help="kill a command whose processes reach this RSS (default: 80%% of RAM; 0: never)",
    )  # fmt: skip
    parser.add_argument("--pipeline", type=Path, help="CLI to test (default: beside python)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.scale <= 0:
        parser.error("--repeats must be >= 1 and --scale > 0")
    if args.drainer_workers < 0:
        parser.error("--drainer-workers must be >= 0")
    if args.workers_after is not None and not args.workers_after >= 0:
        parser.error("--workers-after must be >= 0")
    args.api_server = args.api_server or bool(args.api_url)
    return args


def build_plan(args: argparse.Namespace) -> list[RunSpec]:
    """The runs of one repeat, in registry order; raw always runs as the reference.

    Empty when only suites were asked for (and no --address).
    """
    chosen = {m for m in args.modes if m in MODES}
    if not chosen and not args.address:
        return []
    chosen |= {"raw", "address"}  # address plans nothing without --address
    return [
        RunSpec(name, workers, drainers)
        for name, mode in MODES.items()
        if name in chosen
        for workers in mode.workers(args)
        for drainers in mode.drainers(args)
    ]


def check_against_raw(record: RunRecord, raw: RunRecord | None, workload: Workload) -> None:
    """Compare a run's counts to this repeat's raw run (raw itself: to the generator)."""
    if record.mode == "raw" or raw is None or "error" in raw.counts:
        record.errors += check_counts(record.counts, expected_counts(workload), "generator")
    else:
        record.errors += check_counts(record.counts, raw.counts, "raw")


def _progress(where: str, record: RunRecord | FixedRecord, repeats: int) -> None:
    """One line per run on stderr, so long invocations show they are alive."""
    status = "ok" if record.ok else f"ERROR ({len(record.errors)})"
    if record.failure and record.ok:
        status += f" (as expected: {record.failure})"
    elif record.failure:
        status += f": {record.failure}"
    startup = getattr(record, "startup_s", None)
    print(
        f"[{where} {record.repeat + 1}/{repeats}] {record.label:<12} "
        f"wall {_fmt(record.wall_s)} s  startup {_fmt(startup)} s  "
        f"(settled {_fmt(record.settle_s, '.1f')} s)  {status}",
        file=sys.stderr,
        flush=True,
    )


def run_all(
    args: argparse.Namespace, ctx: Context, workloads: Sequence[Workload], plan: Sequence[RunSpec]
) -> tuple[list[RunRecord], list[str]]:
    """Every repeat x workload x spec, interleaved: each repeat runs every workload in every
    mode, so drift of the machine spreads over workloads too (W4 against W4s is a ratio of
    two workloads). Returns the records and the (workload, mode) pairs skipped, with why.
    """
    records = []
    skipped = {
        (workload.name, spec.label): reason
        for workload in workloads
        for spec in plan
        if (reason := MODES[spec.mode].refuse(workload))
    }
    for (name, label), reason in skipped.items():
        print(f"[{name}] {label}: skipped: {reason}", file=sys.stderr, flush=True)
    for repeat in range(args.repeats):
        for workload in workloads:
            raw: RunRecord | None = None
            for spec in plan:
                if (workload.name, spec.label) in skipped:
                    continue
                waited = settle(max_wait_s=ctx.settle_max_s)
                record = execute(spec, ctx, workload, repeat)
                record.settle_s = waited
                raw = record if spec.mode == "raw" else raw
                check_against_raw(record, raw, workload)
                records.append(record)
                _progress(workload.name, record, args.repeats)
    return records, [f"{name} {label}: {reason}" for (name, label), reason in skipped.items()]


def find_pipeline(explicit: Path | None) -> Path:
    """The CLI to benchmark: ``explicit`` or the console script beside this interpreter."""
    exe = explicit or Path(sys.executable).with_name("pipeline")
    if not exe.exists():
        raise SystemExit(f"pipeline executable not found: {exe}")
    return exe.resolve() if explicit else exe


@contextmanager
def shared_server(ctx: Context) -> Iterator[None]:
    """Make sure ``ctx.api_url`` names a running Prefect server for the block.

    Starts ``prefect server start`` (stopped at the end of the block) unless one is
    already known. It gets a PREFECT_HOME of its own: the temporary servers of other runs
    use the harness's, and two servers must not share one SQLite file.
    """
    if ctx.api_url:
        yield
        return
    home = Path(tempfile.mkdtemp(prefix="prefect-server-home-", dir=ctx.scratch))
    try:
        with api_server(base_env(home), ctx.scratch / "prefect-server.log") as (url, pid):
            ctx.api_url, ctx.api_pid = url, pid
            try:
                yield
            finally:
                ctx.api_url = ctx.api_pid = None
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def _prefect(args: argparse.Namespace, ctx: Context, home: Path) -> Iterator[None]:
    """Set up the Prefect side of ``ctx``: the pipeline path, env and, with
    ``--api-server``, the server every run reports to (``--api-url``: one already running).
    """
    ctx.pipeline_exe = find_pipeline(args.pipeline)
    ctx.env = temporary_server_env(home)
    ctx.api_url = args.api_url
    if not args.api_server:
        yield
        return
    with shared_server(ctx):
        assert ctx.api_url is not None
        ctx.env = api_server_env(home, ctx.api_url)
        ctx.extra_pids = (ctx.api_pid,) if ctx.api_pid else ()
        yield


def exit_on_stop_signals() -> None:
    """Turn SIGTERM and SIGHUP into ``SystemExit``: Python's default for them ends the
    process at once, skipping the ``finally`` blocks that stop what the harness started (the
    shared ``prefect server start``, a running command's process group) and remove its
    scratch folders, so a harness stopped by a supervisor or a closed terminal left them
    running. (SIGINT already raises ``KeyboardInterrupt``.)"""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 1 if any run failed or disagreed with raw."""
    args = parse_args(argv)
    exit_on_stop_signals()
    # Every command inherits it (``base_env``); one of the developer's own must not change
    # what is measured.
    os.environ.pop("PIPELINE_WORKERS_AFTER", None)
    if args.workers_after is not None:
        os.environ["PIPELINE_WORKERS_AFTER"] = f"{args.workers_after:g}"
    results_dir = args.results_dir.resolve()
    scratch = results_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    plan = build_plan(args)
    suites = [name for name in args.modes if name in SUITES]
    workloads = (
        [generate(n, scratch / "workloads", args.scale) for n in args.workloads] if plan else []
    )
    ctx = Context(
        scratch=scratch, timeout_s=args.timeout, settle_max_s=args.settle_max,
        memory_limit=int(args.max_memory_gb * 1024**3), address=args.address,
    )  # fmt: skip
    needs_pipeline = bool(suites) or any(MODES[spec.mode].needs_pipeline for spec in plan)
    prefect_home = Path(tempfile.mkdtemp(prefix="prefect-home-", dir=scratch))
    setup_errors: list[str] = []
    records: list[RunRecord] = []
    skipped: list[str] = []
    suite_results: dict[str, SuiteResult] = {}
    try:
        with ExitStack() as stack:
            if needs_pipeline:
                stack.enter_context(_prefect(args, ctx, prefect_home))
            for name in dict.fromkeys(spec.mode for spec in plan):
                if (session := MODES[name].session) is not None:
                    stack.enter_context(session(args, ctx))
            if any(MODES[spec.mode].needs_pipeline for spec in plan):
                setup_errors = warm_up(ctx, plan)
            records, skipped = run_all(args, ctx, workloads, plan)
            for name in suites:
                suite_results[name] = SUITES[name](args, ctx)
    finally:
        for folder in [*ctx.leftovers, prefect_home]:
            shutil.rmtree(folder, ignore_errors=True)

    errors = setup_errors + [
        f"{r.workload} {r.label} repeat {r.repeat + 1}: {e}" for r in records for e in r.errors
    ]
    warnings = [
        f"{r.workload} {r.label} repeat {r.repeat + 1}: {w}" for r in records for w in r.warnings
    ]
    for suite in suite_results.values():
        errors += suite.errors
        warnings += suite.warnings
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {
            "scale": args.scale,
            "repeats": args.repeats,
            "workloads": args.workloads if plan else [],
            "workers": args.workers,
            "drainers": args.drainers,
            "drainer_workers": args.drainer_workers,
            "modes": [spec.label for spec in plan] + suites,
            "address": args.address,
            "api_server": args.api_server,
            "workers_after": args.workers_after,
        },
        "workloads": [{k: v for k, v in asdict(w).items() if k != "path"} for w in workloads],
        "summary": (summary := summarize(records, workloads)),
        "large_vs_small": large_vs_small(summary),
        "skipped": skipped,
        "runs": [asdict(r) for r in records],
        "suites": {
            name: {"summary": suite.summary, "runs": suite.runs, "markdown": suite.markdown}
            for name, suite in suite_results.items()
        },
        "errors": errors,
        "warnings": warnings,
    }
    # Longest first: the scratch folder lies inside the repository.
    places = {str(scratch): "SCRATCH", str(BENCH_DIR.parent): "REPO", str(Path.home()): "~"}
    places = {path: name for path, name in places.items() if len(path) > 1}
    result = scrub_paths(result, dict(sorted(places.items(), key=lambda p: -len(p[0]))))
    print(write_reports(result, args.workers, results_dir))
    if errors:
        banner = "!" * 78
        print(f"{banner}\n{len(errors)} ERROR(S):", file=sys.stderr)
        for error in errors:
            print(f"  - {error}", file=sys.stderr)
        print(banner, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
