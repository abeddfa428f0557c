"""The fair floor: the pipeline's work done by one process with the standard library only.

For each input file: read it, hash its bytes, refuse it if it holds a NUL byte, decode it
as UTF-8 (a leading BOM dropped), make one record per non-blank line (universal newlines:
``\\r\\n``, ``\\r``, ``\\n``), write ``<out>/<folder>/<stem>_processed.json`` atomically,
and store one batch row and its record rows, finalized - one SQLite transaction per file,
in WAL mode. No framework, no workers, no retries: whatever the pipeline costs on top of
this is its overhead.

Files larger than ``stream_threshold`` bytes are streamed in chunks instead of read
whole, so memory stays bounded (by the chunk size and the longest line) however big a
file is; the JSON and the rows are the same either way.

Usage: ``python benchmarks/raw_baseline.py DIR --db X --out Y`` prints a JSON summary with
the same keys as ``pipeline ... --json``; ``process_directory`` is the same as a function.
"""

from __future__ import annotations

import argparse
import codecs
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

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

# Every file, as `pipeline run-parallel` takes by default (STDLIB's are .py files).
DEFAULT_PATTERN = "*"
MIB = 1024 * 1024
# Measured on 20 MB files (W4 and W5 shapes): streaming is no slower than reading whole,
# and reading whole peaks at ~10x the file size for 80-character lines and ~45x for
# 10-character ones (872 MB for 20 MB: a tuple, a dict and three objects per record).
#: Files above this many bytes are streamed (see ``stream_file``).
STREAM_THRESHOLD = 16 * MIB
# One chunk of 10-character lines is ~24,000 records: their tuples, dicts and JSON text
# are what bounds the streaming path's memory. Measured peak RSS of the whole process
# streaming 10-character lines: 39 MB with 256 KiB chunks, 53 MB with 512 KiB, 75 MB
# with 1 MiB, for the same speed.
#: Bytes read per step when streaming.
CHUNK_SIZE = 256 * 1024

# Measured on 5 files x 20,000 lines (2 cores shared with other work, medians of 9):
# json.dump + rows inserted 'pending' then UPDATEd to 'finalized' (this file's earlier
# version) 1.2-1.5 s; json.dumps (C encoder) 0.7-1.0 s; json.dumps + rows inserted
# already finalized 0.5-0.9 s. For inserting the records, executemany with 4-tuples,
# 3-tuples with the batch id written into the SQL, named parameters taken from the
# records' dicts and one INSERT ... SELECT FROM json_each(document) were all within
# noise of each other (45-85 ms per 19,000 rows), so the plainest one, 4-tuples, stays.
# Rows are inserted finalized because the whole file is one transaction: nobody can ever
# see a 'pending' row, so inserting then updating would only rewrite every row.
INSERT_BATCH = (
    "INSERT INTO processing_batches"
    " (source_path, sha256, record_count, status, created_at, finalized_at, output_path)"
    " VALUES (?, ?, ?, 'finalized', ?, ?, ?)"
)
INSERT_RECORD = (
    "INSERT INTO processed_records (batch_id, record_index, line_number, content, status)"
    " VALUES (?, ?, ?, ?, 'finalized')"
)

Record = tuple[int, int, str]  # (index, line_number, content)


class BinaryInputError(ValueError):
    """The input holds a NUL byte: it is not a text file."""


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


# ------------------------------------------------------------------------------ parsing


def split_lines(text: str) -> list[str]:
    """Split on ``\\r\\n``, ``\\r`` and ``\\n`` only.

    Not ``str.splitlines()``: it also splits on form feeds, ``\\x85``, ``\\u2028`` and
    others, which the pipeline keeps inside records.
    """
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def number_records(lines: Iterable[str], first_line: int = 1, first_index: int = 0) -> list[Record]:
    """(index, line_number, content) for every line whose ``strip()`` is not empty.

    Line numbers count all lines from ``first_line``; indexes count records only, from
    ``first_index`` - so a file cut into pieces numbers the same as the whole.
    """
    records: list[Record] = []
    index = first_index
    for line_number, line in enumerate(lines, start=first_line):
        content = line.strip()
        if content:
            records.append((index, line_number, content))
            index += 1
    return records


def parse_records(text: str) -> list[Record]:
    """Records of a whole decoded text: line numbers 1-based, indexes 0-based."""
    return number_records(split_lines(text))


def check_text_bytes(data: bytes, offset: int = 0) -> None:
    """Raise ``BinaryInputError`` if ``data`` (found at ``offset`` in its file) has a NUL."""
    nul = data.find(b"\x00")
    if nul != -1:
        raise BinaryInputError(f"binary file (NUL byte at offset {offset + nul})")


class LineSplitter:
    """Universal-newline lines of a text that arrives in pieces.

    ``feed`` returns the lines completed by a piece and keeps the unfinished last one; a
    ``\\r`` at the very end of a piece is held back too, since the next piece may start
    with the ``\\n`` of the same CRLF. ``close`` returns what is left, split the same way,
    so the lines of all pieces are exactly ``split_lines`` of the whole text.
    """

    def __init__(self) -> None:
        self._tail = ""

    def feed(self, piece: str) -> list[str]:
        """Complete lines of everything fed so far that were not returned yet."""
        text = self._tail + piece
        held_cr = text.endswith("\r")
        if held_cr:
            text = text[:-1]
        lines = split_lines(text)
        self._tail = lines.pop() + ("\r" if held_cr else "")
        return lines

    def close(self) -> list[str]:
        """The remaining line(s); an empty last line if the text ended with a newline."""
        text, self._tail = self._tail, ""
        return split_lines(text)


# ------------------------------------------------------------------------------ output


def output_path_for(source: Path, input_dir: Path, output_dir: Path) -> Path:
    """``<out>/<folder of source relative to input_dir>/<stem>_processed.json``."""
    relative_folder = source.parent.relative_to(input_dir)
    return output_dir / relative_folder / f"{source.stem}_processed.json"


def record_dicts(records: Iterable[Record]) -> list[dict[str, object]]:
    """Records as the JSON document lists them."""
    return [
        {"index": index, "line_number": line, "content": content}
        for index, line, content in records
    ]


def document_json(source: Path, digest: str, records: list[Record]) -> str:
    """The whole JSON document, as the pipeline's job A writes it.

    ``json.dumps``, not ``json.dump(obj, file)``: the latter streams through the
    pure-Python encoder, 1.4-2x slower for a whole run.
    """
    document = {
        "source_path": str(source),
        "sha256": digest,
        "record_count": len(records),
        "records": record_dicts(records),
    }
    return json.dumps(document, ensure_ascii=False)


def document_head(source: Path, digest: str, record_count: int) -> str:
    """The document's text up to and including ``"records": [``.

    Cut from ``json.dumps`` of the document with no records (whose text ends ``[]}``), so
    head + records joined by ``", "`` + ``"]}"`` is byte for byte ``document_json``.
    """
    empty = {"source_path": str(source), "sha256": digest, "record_count": record_count}
    return json.dumps({**empty, "records": []}, ensure_ascii=False)[:-2]


DOCUMENT_TAIL = "]}"


@contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` (``os.replace``) when the block succeeds.

    Written beside ``path`` so the rename stays on one filesystem: readers never see a
    half-written file, and a failure leaves no temp file behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, text: str) -> None:
    """Write the JSON ``text`` to ``path`` atomically."""
    with atomic_output(path) as handle:
        handle.write(text.encode("utf-8"))


# ------------------------------------------------------------------------------ database


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


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN ... COMMIT, or ROLLBACK if the block raises."""
    conn.execute("BEGIN")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def insert_records(conn: sqlite3.Connection, batch_id: int, records: list[Record]) -> None:
    """Insert ``records`` of batch ``batch_id``, already finalized."""
    conn.executemany(
        INSERT_RECORD, [(batch_id, index, line, content) for index, line, content in records]
    )


def store_file(
    conn: sqlite3.Connection,
    source: Path,
    digest: str,
    records: list[Record],
    output: Path,
) -> None:
    """Insert the finalized batch and its records in one transaction."""
    stamp = _now()
    with transaction(conn):
        cursor = conn.execute(
            INSERT_BATCH, (str(source), digest, len(records), stamp, stamp, str(output))
        )
        assert cursor.lastrowid is not None
        insert_records(conn, cursor.lastrowid, records)


# ------------------------------------------------------------------------------ one file


def process_file(conn: sqlite3.Connection, source: Path, input_dir: Path, out: Path) -> int:
    """Do the whole job for one file read whole; return its record count."""
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    check_text_bytes(data)
    text = data.decode("utf-8")
    del data  # the text is all that is needed from here on
    if text.startswith("\ufeff"):
        text = text[1:]
    records = parse_records(text)
    del text
    output = output_path_for(source, input_dir, out)
    write_json_atomic(output, document_json(source, digest, records))
    store_file(conn, source, digest, records, output)
    return len(records)


class _RecordSink:
    """Numbers the lines of a streamed file and passes each batch of records on: their
    JSON to the scratch file, their rows to SQLite."""

    def __init__(self, conn: sqlite3.Connection, batch_id: int, records_json: BinaryIO):
        self.conn = conn
        self.batch_id = batch_id
        self.records_json = records_json
        self.count = 0  # records so far: the next record's index
        self.lines = 0  # lines so far: the next line is number lines + 1

    def add(self, lines: list[str]) -> None:
        """Turn ``lines`` (the next lines of the file, in order) into stored records."""
        records = number_records(lines, self.lines + 1, self.count)
        self.lines += len(lines)
        if not records:
            return
        # json.dumps of the list, brackets cut: the same text the whole document has.
        body = json.dumps(record_dicts(records), ensure_ascii=False)[1:-1]
        self.records_json.write(((", " if self.count else "") + body).encode("utf-8"))
        insert_records(self.conn, self.batch_id, records)
        self.count += len(records)


def stream_file(
    conn: sqlite3.Connection,
    source: Path,
    input_dir: Path,
    out: Path,
    chunk_size: int = CHUNK_SIZE,
) -> int:
    """``process_file`` for a file of any size, ``chunk_size`` bytes at a time.

    Hashing, decoding (BOM dropped, NUL refused) and line splitting go chunk by chunk; each
    chunk's records are inserted with ``executemany`` and their JSON appended to a scratch
    file, all inside one transaction. The document's head (hash and record count) is known
    only at the end, and it comes before the records, so the finished file is the head, the
    scratch file copied after it, and the tail - one extra sequential copy of the JSON,
    the price of writing exactly the document the in-memory path writes.
    """
    output = output_path_for(source, input_dir, out)
    output.parent.mkdir(parents=True, exist_ok=True)
    hasher = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8-sig")()  # drops a leading BOM only
    splitter = LineSplitter()
    with (
        tempfile.TemporaryFile(dir=output.parent) as records_json,
        source.open("rb") as reader,
        transaction(conn),
    ):
        # Hash and count are not known yet; the row is completed once they are.
        stamp = _now()
        cursor = conn.execute(INSERT_BATCH, (str(source), "", 0, stamp, stamp, str(output)))
        assert cursor.lastrowid is not None
        sink = _RecordSink(conn, cursor.lastrowid, records_json)
        offset = 0
        while chunk := reader.read(chunk_size):
            hasher.update(chunk)
            check_text_bytes(chunk, offset)
            offset += len(chunk)
            sink.add(splitter.feed(decoder.decode(chunk)))
        sink.add(splitter.feed(decoder.decode(b"", final=True)) + splitter.close())

        digest = hasher.hexdigest()
        with atomic_output(output) as handle:
            handle.write(document_head(source, digest, sink.count).encode("utf-8"))
            records_json.seek(0)
            shutil.copyfileobj(records_json, handle, chunk_size)
            handle.write(DOCUMENT_TAIL.encode("utf-8"))
        conn.execute(
            "UPDATE processing_batches SET sha256 = ?, record_count = ?, finalized_at = ?"
            " WHERE id = ?",
            (digest, sink.count, _now(), sink.batch_id),
        )
    return sink.count


# ------------------------------------------------------------------------------ folder


def discover(input_dir: Path, pattern: str = DEFAULT_PATTERN) -> list[Path]:
    """Input files under ``input_dir`` matching ``pattern``, recursively, in a stable order.

    Hidden files and folders (``.name``) are skipped, as the pipeline skips them.
    """
    return sorted(
        path
        for path in input_dir.rglob(pattern)
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(input_dir).parts)
    )


def process_directory(
    input_dir: Path | str,
    db_path: Path | str,
    output_dir: Path | str,
    pattern: str = DEFAULT_PATTERN,
    *,
    stream_threshold: int = STREAM_THRESHOLD,
    chunk_size: int = CHUNK_SIZE,
) -> dict[str, object]:
    """Process every matching file under ``input_dir``; return the pipeline-style summary.

    Files above ``stream_threshold`` bytes are streamed ``chunk_size`` bytes at a time.
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
                if source.stat().st_size > stream_threshold:
                    records += stream_file(conn, source, input_dir, output_dir, chunk_size)
                else:
                    records += process_file(conn, source, input_dir, output_dir)
            except (OSError, UnicodeDecodeError, BinaryInputError, sqlite3.Error) as exc:
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
    parser.add_argument(
        "--stream-threshold", type=int, default=STREAM_THRESHOLD, metavar="BYTES",
        help="stream files larger than this (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--chunk-size", type=int, default=CHUNK_SIZE, metavar="BYTES",
        help="bytes read per step when streaming (default: %(default)s)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not args.input_dir.is_dir():
        parser.error(f"not a directory: {args.input_dir}")
    if args.chunk_size < 1 or args.stream_threshold < 0:
        parser.error("--chunk-size must be >= 1 and --stream-threshold >= 0")
    summary = process_directory(
        args.input_dir, args.db, args.out, args.pattern,
        stream_threshold=args.stream_threshold, chunk_size=args.chunk_size,
    )  # fmt: skip
    sys.stdout.write(json.dumps(summary) + "\n")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
