"""The processed document: what job A makes of a file and job B stores.

A document is ``source_path``, ``sha256``, ``record_count`` and ``records``; on disk it is
the JSON file ``<stem>_processed.json``, written whole or not at all, exactly as
``json.dumps(document, ensure_ascii=False)`` writes it (job A's layout).

Small documents are made and written whole, and their JSON text travels with them to job
B. Large ones never exist whole in memory: ``DocumentWriter`` writes the records a chunk
at a time, and ``DocumentReader`` reads them back a chunk at a time, as JSON arrays that
job B hands to the database one by one. Both give the same bytes and the same rows.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO

from prefect_pipeline.exceptions import ContentError, InputValidationError
from prefect_pipeline.jobs.output_file import atomic_output, scratch_file, write_atomically
from prefect_pipeline.validators import binary_file, invalid_utf8
from prefect_pipeline.validators.input_validators import BOM

#: The file-name ending of a document's JSON file.
OUTPUT_SUFFIX = "_processed.json"

#: What separates two records in job A's layout, and what starts every record but the
#: first: ``}, {"index": ``. A JSON string holds a double quote only escaped (``\\"``), so
#: this byte sequence occurs nowhere else in the file.
RECORD_BOUNDARY = b'}, {"index": '
#: What follows the records.
TRAILER = b"]}"

# Job A's layout, for JSON files that job B is given by path (json.dumps with the default
# separators and ensure_ascii=False: control characters escaped, anything else as UTF-8).
_STRING = rb'"(?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+"'
_INT = rb"-?(?:0|[1-9][0-9]*+)"
_HEADER = re.compile(
    rb'\{"source_path": (' + _STRING + rb'), "sha256": "([0-9a-f]{64})", '
    rb'"record_count": (' + _INT + rb'), "records": \['
)
_RECORD = rb'\{"index": ' + _INT + rb', "line_number": ' + _INT + rb', "content": ' + _STRING
_RECORDS = re.compile(_RECORD + rb"\}(?:, " + _RECORD + rb"\})*+")
#: The longest header read while looking for the records (a path is at most a few KiB).
_MAX_HEADER = 1 << 20
#: Text encoded at once when writing a chunk (bounds the copy that encoding makes).
_WRITE_SLICE = 1 << 20


def header_text(source_path: str, sha256: str, record_count: int) -> str:
    """The document's JSON up to and including the records' opening bracket."""
    empty = json.dumps(
        {"source_path": source_path, "sha256": sha256, "record_count": record_count, "records": []},
        ensure_ascii=False,
    )
    return empty[: -len(TRAILER)]


class ProcessedDocument(Mapping[str, Any]):
    """A document made by job A: ``source_path``, ``sha256``, ``record_count``, ``records``
    and ``output_path``, read-only.

    A small document holds the JSON text that job A wrote to its file rather than the
    records as Python objects, and parses ``records`` from it only if someone asks. That
    text is what crosses from a Dask worker to the writer (one string pickles in
    microseconds, thousands of small dicts do not, and take several times the memory) and
    what job B hands to the database, which reads the records out of it in one statement.

    A large document (``text`` is None) holds no records at all: job B reads them from
    ``output_path`` in chunks, and ``doc["records"]`` reads the whole file (avoid it on
    large documents).

    Job B trusts its shape instead of checking every record again (a dict from anywhere
    else is checked). ``dict(doc)`` gives a plain dict.
    """

    __slots__ = ("_fields", "_records", "text")

    def __init__(
        self,
        text: str | None,
        *,
        source_path: str,
        sha256: str,
        record_count: int,
        output_path: str | None = None,
    ) -> None:
        #: The document as JSON: exactly what job A wrote to ``output_path``; None for a
        #: large document, which is read from that file.
        self.text = text
        if text is None and output_path is None:
            raise ValueError("a document without its text needs its output_path")
        self._fields: dict[str, Any] = {
            "source_path": source_path,
            "sha256": sha256,
            "record_count": record_count,
        }
        if output_path is not None:
            self._fields["output_path"] = output_path
        self._records: list[dict[str, Any]] | None = None

    def __getitem__(self, key: str) -> Any:
        if key == "records":
            if self._records is None:
                if self.text is not None:
                    self._records = json.loads(self.text)["records"]
                else:
                    with open(self._fields["output_path"], encoding="utf-8") as handle:
                        self._records = json.load(handle)["records"]
            return self._records
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        yield from ("source_path", "sha256", "record_count", "records")
        if "output_path" in self._fields:
            yield "output_path"

    def __len__(self) -> int:
        return len(self._fields) + 1

    def __reduce__(self) -> tuple[Any, ...]:
        # The text (if any) and the small fields only: parsed records stay behind.
        return (_restore_document, (self.text, self._fields))

    def __repr__(self) -> str:
        return (
            f"ProcessedDocument(source_path={self._fields['source_path']!r}, "
            f"record_count={self._fields['record_count']})"
        )

    def header(self) -> bytes:
        """The JSON file's first bytes, up to the records, as job A wrote them."""
        fields = self._fields
        return header_text(fields["source_path"], fields["sha256"], fields["record_count"]).encode()


def _restore_document(text: str | None, fields: dict[str, Any]) -> ProcessedDocument:
    return ProcessedDocument(text, **fields)


def write_json_atomically(path: Path, document: Mapping[str, Any] | str) -> None:
    """Write ``document`` (or its JSON text) to ``path`` through a temporary file and a
    rename, so a reader (or a crash) never sees half a file."""
    # dumps, not dump: json.dump streams through the pure-Python encoder, several times
    # slower than the C one that dumps uses.
    text = document if isinstance(document, str) else json.dumps(document, ensure_ascii=False)
    write_atomically(path, text.encode("utf-8"))


class DocumentWriter:
    """Writes a document's JSON file a chunk of records at a time.

    >>> with DocumentWriter(path) as writer:
    ...     writer.add(records)              # as many times as needed
    ...     writer.finish(source_path, sha256)

    The header holds the record count and the hash, which are known only at the end, so
    the records go to a scratch file first; ``finish`` writes the header, copies the
    records after it (inside the kernel where it can) and renames the result over ``path``.
    If the block raises, neither the scratch file nor a half-written JSON file is left.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        #: Records written so far.
        self.count = 0
        self._stack = ExitStack()
        self._body: BinaryIO | None = None

    def __enter__(self) -> DocumentWriter:
        self._body = self._stack.enter_context(scratch_file(self.path))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def add(self, records: list[dict[str, Any]]) -> None:
        """Append records (``index`` must go on from ``count``)."""
        if not records:
            return
        assert self._body is not None, "use DocumentWriter as a context manager"
        text = json.dumps(records, ensure_ascii=False)
        body = self._body
        if self.count:
            body.write(b", ")
        # Without the list's brackets; in slices, so that a chunk holding a very long line
        # is not copied whole once more to be encoded.
        end = len(text) - 1
        for start in range(1, end, _WRITE_SLICE):
            body.write(text[start : min(start + _WRITE_SLICE, end)].encode("utf-8"))
        self.count += len(records)

    def finish(self, source_path: str, sha256: str) -> None:
        """Write the JSON file (header, records, trailer) and rename it into place."""
        assert self._body is not None, "use DocumentWriter as a context manager"
        body = self._body
        body.flush()
        size = body.tell()
        with atomic_output(self.path) as out:
            out.write(header_text(source_path, sha256, self.count).encode("utf-8"))
            out.flush()
            _copy(body, out, size)
            out.write(TRAILER)


def _copy(source: BinaryIO, target: BinaryIO, size: int) -> None:
    """Append ``size`` bytes of ``source`` (from its start) to ``target``, whose buffer is
    flushed; ``target``'s position ends after them."""
    copied = 0
    try:
        while copied < size:
            count = os.copy_file_range(
                source.fileno(), target.fileno(), size - copied, offset_src=copied
            )
            if count == 0:
                break
            copied += count
    except OSError:  # not on this filesystem or kernel: copy through this process
        pass
    target.seek(0, os.SEEK_END)  # the buffered object learns where the file ends
    if copied < size:
        source.seek(copied)
        remaining = size - copied
        while remaining:
            block = source.read(min(remaining, 1 << 20))
            if not block:
                raise OSError(f"{target.name}: scratch file ended early")
            target.write(block)
            remaining -= len(block)


class DocumentReader:
    """A JSON file in job A's layout, read a chunk at a time in bounded memory.

    ``read_header()`` parses the document's fields (or checks them against the document
    job A reported); ``record_arrays()`` then yields the records as JSON array texts of
    about ``chunk_bytes`` each, with how many records each holds. A file not in job A's
    layout raises ``NotInLayout`` from ``read_header()`` (before anything else is read) and
    ``InputValidationError`` later on.
    """

    def __init__(
        self,
        handle: BinaryIO,
        path: Path,
        *,
        chunk_bytes: int,
        max_record_bytes: int,
        max_line_bytes: int | None = None,
    ):
        self.handle = handle
        self.path = path
        self.chunk_bytes = chunk_bytes
        self.max_record_bytes = max_record_bytes
        #: The --max-line-bytes that ``max_record_bytes`` follows from, if one does: a record
        #: above it is rejected only under that limit (``ContentError.max_line_bytes``).
        self.max_line_bytes = max_line_bytes
        #: The file's offset of ``_rest[0]``.
        self._offset = 0
        self._rest = b""
        self._read_bytes = 0
        self.record_count = 0
        self.header = b""

    def _read(self) -> bytes:
        chunk = self.handle.read(self.chunk_bytes)
        nul = chunk.find(b"\x00")
        if nul != -1:
            raise binary_file(self.path, self._read_bytes + nul)
        self._read_bytes += len(chunk)
        return chunk

    def read_header(self) -> tuple[str, str, int]:
        """``(source_path, sha256, record_count)`` from the file's header."""
        data = b""
        while b'"records": [' not in data and len(data) < _MAX_HEADER:
            chunk = self._read()
            if not chunk:
                break
            data += chunk
        start = len(BOM) if data.startswith(BOM) else 0
        match = _HEADER.match(data, start)
        if match is None:
            raise NotInLayout(self.path)
        try:
            source_path = json.loads(match.group(1).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise invalid_utf8(self.path, match.start(1) + exc.start) from None
        if not source_path:
            raise ContentError(self.path, "source_path must be a non-empty string")
        #: The header's bytes, as read (``check_header`` takes them).
        self.header = data[: match.end()]
        self._offset = match.end()
        self._rest = data[match.end() :]
        self.record_count = int(match.group(3))
        if self.record_count < 0:
            raise ContentError(self.path, "record_count must be a non-negative integer")
        return source_path, match.group(2).decode(), self.record_count

    def check_header(self, expected: bytes, record_count: int) -> None:
        """Check that the file starts with ``expected``: the header job A reported (or
        ``read_header`` read), of a document of ``record_count`` records."""
        data = b""
        while len(data) < len(expected):
            chunk = self._read()
            if not chunk:
                break
            data += chunk
        if not data.startswith(expected):
            raise RuntimeError(
                f"{self.path}: the JSON file is not the one job A reported (it was replaced "
                "or changed since)"
            )
        self._offset = len(expected)
        self._rest = data[len(expected) :]
        self.header = expected
        self.record_count = record_count

    def record_arrays(self, *, check_layout: bool) -> Iterator[tuple[str, int]]:
        """The records, as ``(JSON array text, number of records)`` chunks, in order.

        ``check_layout`` checks that each record is ``{"index": int, "line_number": int,
        "content": string}`` as job A writes it (a file from elsewhere); without it, the
        header's check is trusted (the file job A just wrote).
        """
        pending = [self._rest] if self._rest else []
        pending_size = len(self._rest)
        #: Whether ``pending`` holds a record boundary.
        boundary = RECORD_BOUNDARY in self._rest
        tail = self._rest[-len(RECORD_BOUNDARY) :]
        seen = 0
        while True:
            chunk = self._read()
            if not chunk:
                break
            # A boundary may straddle the previous chunk and this one.
            boundary = (
                boundary
                or RECORD_BOUNDARY in chunk
                or RECORD_BOUNDARY in tail + chunk[: len(RECORD_BOUNDARY) - 1]
            )
            tail = (tail + chunk[-len(RECORD_BOUNDARY) :])[-len(RECORD_BOUNDARY) :]
            pending.append(chunk)
            pending_size += len(chunk)
            if not boundary:
                if pending_size > self.max_record_bytes:
                    raise ContentError(
                        self.path,
                        f"records[{seen}] is longer than any record job A writes "
                        f"({pending_size} bytes and counting)",
                        max_line_bytes=self.max_line_bytes,
                    )
                continue
            if pending_size < self.chunk_bytes:
                continue
            data = b"".join(pending)
            cut = data.rfind(RECORD_BOUNDARY)
            text, count = self._array(data[: cut + 1], seen, check_layout)
            yield text, count
            seen += count
            self._offset += cut + 3
            rest = data[cut + 3 :]
            pending, pending_size, boundary = [rest], len(rest), False
            tail = rest[-len(RECORD_BOUNDARY) :]
        data = b"".join(pending).rstrip(b" \t\r\n")
        if not data.endswith(TRAILER):
            raise ContentError(self.path, "the JSON file ends before its records do")
        body = data[: -len(TRAILER)]
        if body:
            text, count = self._array(body, seen, check_layout)
            yield text, count
            seen += count
        if seen != self.record_count:
            raise ContentError(
                self.path, f"record_count is {self.record_count} but records has {seen} item(s)"
            )

    def _array(self, records: bytes, seen: int, check_layout: bool) -> tuple[str, int]:
        if check_layout and _RECORDS.fullmatch(records) is None:
            raise ContentError(
                self.path,
                f"records[{seen}] and after are not in the layout job A writes "
                '({"index": int, "line_number": int, "content": string})',
            )
        try:
            text = records.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise invalid_utf8(self.path, self._offset + exc.start) from None
        return f"[{text}]", records.count(RECORD_BOUNDARY) + 1


class NotInLayout(InputValidationError):
    """A JSON file's header is not the one job A writes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "not in the layout job A writes")


__all__ = [
    "OUTPUT_SUFFIX",
    "DocumentReader",
    "DocumentWriter",
    "NotInLayout",
    "ProcessedDocument",
    "header_text",
    "write_json_atomically",
]
