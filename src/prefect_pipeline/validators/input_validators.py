"""Checks shared by the jobs. Each raises ``InputValidationError`` naming the input."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from prefect_pipeline.exceptions import ContentError, InputValidationError

BOM = b"\xef\xbb\xbf"

#: SQLite's largest integer key.
MAX_ID = 2**63 - 1


def validate_file_path(value: object) -> Path:
    """A path to an existing, readable regular file, made absolute."""
    if not isinstance(value, str | os.PathLike) or not str(value).strip():
        raise InputValidationError(value, "expected a file path")
    path = Path(os.path.abspath(os.fspath(value)))
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise InputValidationError(
            shown, "file name is not valid UTF-8 (rename it; paths are stored as text)"
        ) from None
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputValidationError(path, "no such file") from None
    except PermissionError:
        raise InputValidationError(path, "permission denied") from None
    except OSError as exc:
        raise InputValidationError(path, f"cannot access ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputValidationError(path, "is a directory, expected a file")
    if not stat.S_ISREG(st.st_mode):
        raise InputValidationError(path, "not a regular file")
    if not os.access(path, os.R_OK):
        raise InputValidationError(path, "permission denied (not readable)")
    return path


def read_bytes(path: Path) -> bytes:
    """Read a whole file, turning OS errors into input errors."""
    with open_input(path) as handle:
        return handle.read()


def open_input(path: Path) -> BinaryIO:
    """Open a file for reading (binary), turning OS errors into input errors."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputValidationError(path, "no such file (vanished while reading)") from None
    except PermissionError:
        raise InputValidationError(path, "permission denied") from None
    except IsADirectoryError:
        raise InputValidationError(path, "is a directory, expected a file") from None


def decode_text(path: Path, data: bytes) -> str:
    """UTF-8 text of ``data``: a leading BOM is dropped; NUL bytes and invalid UTF-8 are errors."""
    nul = data.find(b"\x00")
    if nul != -1:
        raise binary_file(path, nul)
    start = len(BOM) if data.startswith(BOM) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid_utf8(path, exc.start + start) from None


def binary_file(path: Path, offset: int) -> InputValidationError:
    """The error for a file with a NUL byte at ``offset`` (the file's first)."""
    return ContentError(path, f"binary file (NUL byte at offset {offset})")


def invalid_utf8(path: Path, offset: int) -> InputValidationError:
    """The error for a file whose bytes from ``offset`` are not UTF-8."""
    return ContentError(path, f"invalid UTF-8 at byte offset {offset}")


def line_too_long(path: Path, line_number: int, limit: int) -> InputValidationError:
    """The error for a line of more than ``limit`` bytes."""
    return ContentError(
        path,
        f"line {line_number} is longer than {format_bytes(limit)} (--max-line-bytes)",
        max_line_bytes=limit,
    )


def format_bytes(count: int) -> str:
    """``67108864`` -> ``"64 MiB"``; a count that is not a whole number of KiB, MiB or GiB
    is given in bytes."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size} {unit}"
    return f"{count} byte" + ("" if count == 1 else "s")


def validate_batch_id(value: object) -> int:
    """A positive integer batch id (``7`` or ``"7"``)."""
    if isinstance(value, bool):
        raise InputValidationError(value, "batch id must be a positive integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    else:
        raise InputValidationError(value, "batch id must be a positive integer")
    if number <= 0 or number > MAX_ID:
        raise InputValidationError(value, "batch id must be a positive integer")
    return number


def validate_document(ref: object, doc: Any) -> Mapping[str, Any]:
    """The structure job A writes: source_path, sha256, record_count, records."""
    if not isinstance(doc, Mapping):
        raise ContentError(ref, f"expected a JSON object, got {type(doc).__name__}")
    missing = [k for k in ("source_path", "sha256", "record_count", "records") if k not in doc]
    if missing:
        raise ContentError(ref, f"missing key(s): {', '.join(missing)}")
    if not isinstance(doc["source_path"], str) or not doc["source_path"]:
        raise ContentError(ref, "source_path must be a non-empty string")
    sha = doc["sha256"]
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise ContentError(ref, "sha256 must be 64 lowercase hex digits")
    count = doc["record_count"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ContentError(ref, "record_count must be a non-negative integer")
    records = doc["records"]
    if not isinstance(records, list):
        raise ContentError(ref, "records must be a list")
    if len(records) != count:
        raise ContentError(
            ref, f"record_count is {count} but records has {len(records)} item(s)"
        )
    for position, record in enumerate(records):
        if not (
            isinstance(record, dict)
            and type(record.get("index")) is int
            and type(record.get("line_number")) is int
            and isinstance(record.get("content"), str)
        ):
            raise ContentError(
                ref,
                f"records[{position}] must have integer index and line_number and string content",
            )
    return doc
