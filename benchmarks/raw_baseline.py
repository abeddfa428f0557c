"""The fair floor: the pipeline's work done by one process with the standard library only.

For each input file: read it, hash its bytes, parse one record per non-blank line, write
``<out>/<folder>/<stem>_processed.json`` atomically, insert one batch row and its record
rows, then finalize both - one SQLite transaction per file, in WAL mode, records inserted
with ``executemany``. No framework, no workers, no retries: whatever the pipeline costs on
top of this is its overhead.

Usage: ``python benchmarks/raw_baseline.py DIR --db X --out Y`` prints a JSON summary with
the same keys as ``pipeline ... --json``; ``process_directory`` is the same as a function.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

# Taken at import so the fallback startup clock starts as early as this module can see.
_IMPORT_PERF = time.perf_counter()

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS processing_batches (
        id INTEGER PRIMARY KEY,
        source_path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        record_count INTEGER NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        finalized_at TEXT,
        output_path TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS processed_records (
        id INTEGER PRIMARY KEY,
        batch_id INTEGER NOT NULL REFERENCES processing_batches(id),
        record_index INTEGER NOT NULL,
        line_number INTEGER NOT NULL,
        content TEXT NOT NULL,
        status TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS idx_processed_records_batch_id ON processed_records(batch_id)",
)

DEFAULT_PATTERN = "*.txt"


def process_age_s() -> float:
    """Seconds since this process started (interpreter start-up included where possible).

    Linux exposes the start time in ``/proc/self/stat`` as clock ticks since boot; elsewhere
    fall back to the time since this module was imported.
    """
    try:
        stat = Path("/proc/self/stat").read_text()
        # Field 22 (starttime); the command name in field 2 may contain spaces, so split
        # after its closing parenthesis, where field 3 becomes index 0.
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        started = start_ticks / os.sysconf("SC_CLK_TCK")
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - _IMPORT_PERF


def parse_records(text: str) -> list[tuple[int, int, str]]:
    """Return (index, line_number, content) for every non-blank line of ``text``.

    Universal newlines: CRLF and lone CR count as line ends; line numbers are 1-based over
    all lines, indexes are 0-based over records only.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    records: list[tuple[int, int, str]] = []
    for line_number, line in enumerate(lines, start=1):
        content = line.strip()
        if content:
            records.append((len(records), line_number, content))
    return records


def output_path_for(source: Path, input_dir: Path, output_dir: Path) -> Path:
    """``<out>/<folder of source relative to input_dir>/<stem>_processed.json``."""
    relative_folder = source.parent.relative_to(input_dir)
    return output_dir / relative_folder / f"{source.stem}_processed.json"


def write_json_atomic(path: Path, payload: dict[str, object]) -> None:
    """Write ``payload`` to ``path`` via a temp file in the same folder and ``os.replace``.

    Readers never see a half-written file, and a crash leaves at most a stray temp file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, ensure_ascii=False)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def connect(db_path: Path) -> sqlite3.Connection:
    """Open the database in WAL mode with the schema in place.

    ``isolation_level=None`` leaves transactions to explicit BEGIN/COMMIT so each file is
    exactly one transaction.
    """
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL is the usual WAL pairing: durable at checkpoints, no fsync per commit.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    for statement in SCHEMA:
        conn.execute(statement)
    return conn


def _now() -> str:
    """UTC timestamp in ISO 8601, as stored in created_at/finalized_at."""
    return datetime.now(UTC).isoformat()


def store_file(
    conn: sqlite3.Connection,
    source: Path,
    digest: str,
    records: list[tuple[int, int, str]],
    output: Path,
) -> None:
    """Insert the batch and its records, then finalize both, in one transaction."""
    conn.execute("BEGIN")
    try:
        cursor = conn.execute(
            "INSERT INTO processing_batches"
            " (source_path, sha256, record_count, status, created_at, output_path)"
            " VALUES (?, ?, ?, 'pending', ?, ?)",
            (str(source), digest, len(records), _now(), str(output)),
        )
        batch_id = cursor.lastrowid
        conn.executemany(
            "INSERT INTO processed_records"
            " (batch_id, record_index, line_number, content, status)"
            " VALUES (?, ?, ?, ?, 'pending')",
            [(batch_id, index, line, content) for index, line, content in records],
        )
        conn.execute(
            "UPDATE processed_records SET status = 'finalized' WHERE batch_id = ?", (batch_id,)
        )
        conn.execute(
            "UPDATE processing_batches SET status = 'finalized', finalized_at = ? WHERE id = ?",
            (_now(), batch_id),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def process_file(conn: sqlite3.Connection, source: Path, input_dir: Path, out: Path) -> int:
    """Do the whole job for one file; return its record count."""
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    text = data.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    records = parse_records(text)
    output = output_path_for(source, input_dir, out)
    payload = {
        "source_path": str(source),
        "sha256": digest,
        "record_count": len(records),
        "records": [
            {"index": index, "line_number": line, "content": content}
            for index, line, content in records
        ],
    }
    write_json_atomic(output, payload)
    store_file(conn, source, digest, records, output)
    return len(records)


def discover(input_dir: Path, pattern: str = DEFAULT_PATTERN) -> list[Path]:
    """Input files under ``input_dir`` matching ``pattern``, recursively, in a stable order."""
    return sorted(p for p in input_dir.rglob(pattern) if p.is_file())


def process_directory(
    input_dir: Path | str,
    db_path: Path | str,
    output_dir: Path | str,
    pattern: str = DEFAULT_PATTERN,
) -> dict[str, object]:
    """Process every matching file under ``input_dir``; return the pipeline-style summary.

    ``startup_s`` is the process age when the first file was committed, so it includes
    interpreter start-up just as the pipeline's does. A file that fails is reported in
    ``failures`` and the loop goes on, as the pipeline does.
    """
    started = time.perf_counter()
    input_dir = Path(input_dir).resolve()
    output_dir = Path(output_dir).resolve()
    files = discover(input_dir, pattern)
    summary: dict[str, object] = {"total": len(files), "skipped": 0, "ignored": 0}
    succeeded = records = 0
    startup_s: float | None = None
    failures: list[dict[str, str]] = []
    conn = connect(Path(db_path))
    try:
        for source in files:
            try:
                records += process_file(conn, source, input_dir, output_dir)
            except (OSError, UnicodeDecodeError, sqlite3.Error) as exc:
                failures.append({"path": str(source), "error": f"{type(exc).__name__}: {exc}"})
                continue
            succeeded += 1
            if startup_s is None:
                startup_s = process_age_s()
    finally:
        conn.close()
    summary.update(
        succeeded=succeeded,
        failed=len(failures),
        records=records,
        elapsed_s=round(time.perf_counter() - started, 6),
        startup_s=None if startup_s is None else round(startup_s, 6),
        failures=failures,
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; exits 1 if any file failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input_dir", type=Path, help="folder of input text files")
    parser.add_argument("--db", type=Path, required=True, help="SQLite database file")
    parser.add_argument("--out", type=Path, required=True, help="output folder for JSON")
    parser.add_argument("--pattern", default=DEFAULT_PATTERN, help="file glob, recursive")
    args = parser.parse_args(argv)
    if not args.input_dir.is_dir():
        parser.error(f"not a directory: {args.input_dir}")
    summary = process_directory(args.input_dir, args.db, args.out, args.pattern)
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
