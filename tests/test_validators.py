"""The shared input checks: each either returns the normalized input or raises
``InputValidationError`` with a message that names the input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prefect_pipeline.exceptions import InputValidationError
from prefect_pipeline.validators import (
    decode_text,
    read_bytes,
    validate_batch_id,
    validate_document,
    validate_file_path,
)
from prefect_pipeline.validators.input_validators import BOM

SHA = "0" * 64


def problem(excinfo: pytest.ExceptionInfo[InputValidationError]) -> str:
    return excinfo.value.problem


# validate_file_path ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "   ", 3, b"bytes.txt", ["a.txt"]])
def test_file_path_must_be_a_path(value: object) -> None:
    with pytest.raises(InputValidationError) as excinfo:
        validate_file_path(value)
    assert problem(excinfo) == "expected a file path"


def test_file_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "notes.txt").write_text("x\n")
    monkeypatch.chdir(tmp_path)

    path = validate_file_path("notes.txt")

    assert path.is_absolute()
    assert path == Path(os.path.abspath("notes.txt"))


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(InputValidationError) as excinfo:
        validate_file_path(missing)
    assert str(excinfo.value) == f"{missing}: no such file"
    assert excinfo.value.input_ref == str(missing)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(InputValidationError) as excinfo:
        validate_file_path(tmp_path)
    assert str(excinfo.value) == f"{tmp_path}: is a directory, expected a file"


def test_fifo_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(InputValidationError) as excinfo:
        validate_file_path(fifo)
    assert str(excinfo.value) == f"{fifo}: not a regular file"


def test_unreadable_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: file permissions do not stop root from reading")
    path = tmp_path / "secret.txt"
    path.write_text("x\n")
    path.chmod(0)
    try:
        with pytest.raises(InputValidationError) as excinfo:
            validate_file_path(path)
        assert problem(excinfo) == "permission denied (not readable)"
    finally:
        path.chmod(0o644)


def test_read_bytes_of_a_vanished_file(tmp_path: Path) -> None:
    with pytest.raises(InputValidationError) as excinfo:
        read_bytes(tmp_path / "gone.txt")
    assert problem(excinfo) == "no such file (vanished while reading)"


# decode_text ------------------------------------------------------------------------


def test_decode_plain_utf8(tmp_path: Path) -> None:
    assert decode_text(tmp_path, "héllo wörld €\n".encode()) == "héllo wörld €\n"


def test_decode_drops_one_leading_bom(tmp_path: Path) -> None:
    assert decode_text(tmp_path, BOM + b"abc") == "abc"
    # Only the leading one is a byte-order mark; a second one is content.
    assert decode_text(tmp_path, BOM + BOM + b"abc") == "\ufeffabc"
    # A BOM in the middle of the text is content as well.
    assert decode_text(tmp_path, b"a" + BOM + b"b") == "a\ufeffb"


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b"\x00", 0),
        (b"abc\x00def", 3),
        (BOM + b"ab\x00", 5),
        (b"line\n" * 3 + b"\x00\x00", 15),
    ],
)
def test_decode_rejects_nul_bytes(tmp_path: Path, data: bytes, offset: int) -> None:
    with pytest.raises(InputValidationError) as excinfo:
        decode_text(tmp_path / "f", data)
    assert problem(excinfo) == f"binary file (NUL byte at offset {offset})"


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b"\xff", 0),
        (b"ok\n\xffok", 3),
        # Offsets count the file's bytes, the BOM included.
        (BOM + b"ok\n\xff", 6),
        (BOM + b"\xc3", 3),
        # A truncated multi-byte character: the offset of its first byte.
        ("é".encode() + b"x\xe2\x82", 3),
        # An encoded surrogate is not valid UTF-8.
        (b"ab\xed\xa0\x80", 2),
    ],
)
def test_decode_rejects_invalid_utf8(tmp_path: Path, data: bytes, offset: int) -> None:
    with pytest.raises(InputValidationError) as excinfo:
        decode_text(tmp_path / "f", data)
    assert problem(excinfo) == f"invalid UTF-8 at byte offset {offset}"
    # The offset points at the bytes that do not decode.
    with pytest.raises(UnicodeDecodeError):
        data[offset:].decode("utf-8")
    data[:offset].decode("utf-8-sig")


# validate_batch_id --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [(1, 1), (7, 7), ("7", 7), (" 42 ", 42), ("007", 7)]
)
def test_batch_id_accepted(value: object, expected: int) -> None:
    assert validate_batch_id(value) == expected


@pytest.mark.parametrize(
    "value", ["abc", "0", "-3", 0, -3, "", " ", "1.5", 1.0, "+3", "3a", True, False, None, "1 2"]
)
def test_batch_id_rejected(value: object) -> None:
    with pytest.raises(InputValidationError) as excinfo:
        validate_batch_id(value)
    assert str(excinfo.value) == f"{value}: batch id must be a positive integer"


@pytest.mark.parametrize("value", ["²", "٣"])
def test_batch_id_non_ascii_digits_rejected(value: str) -> None:
    with pytest.raises(InputValidationError) as excinfo:
        validate_batch_id(value)
    assert problem(excinfo) == "batch id must be a positive integer"


# validate_document --------------------------------------------------------------------


def document(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "source_path": "/data/in.txt",
        "sha256": SHA,
        "record_count": 1,
        "records": [{"index": 0, "line_number": 1, "content": "x"}],
    }
    doc.update(changes)
    return doc


def test_valid_document_is_returned_as_is() -> None:
    doc = document()
    assert validate_document("ref", doc) is doc
    empty = document(record_count=0, records=[])
    assert validate_document("ref", empty) is empty


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "expected a JSON object, got list"),
        ("text", "expected a JSON object, got str"),
        (None, "expected a JSON object, got NoneType"),
        ({}, "missing key(s): source_path, sha256, record_count, records"),
        ({"source_path": "/x", "sha256": SHA}, "missing key(s): record_count, records"),
        (document(source_path=""), "source_path must be a non-empty string"),
        (document(source_path=3), "source_path must be a non-empty string"),
        (document(sha256="ABC"), "sha256 must be 64 lowercase hex digits"),
        (document(sha256="A" * 64), "sha256 must be 64 lowercase hex digits"),
        (document(sha256="g" * 64), "sha256 must be 64 lowercase hex digits"),
        (document(record_count=-1), "record_count must be a non-negative integer"),
        (document(record_count="1"), "record_count must be a non-negative integer"),
        (document(record_count=True), "record_count must be a non-negative integer"),
        (document(record_count=1.0), "record_count must be a non-negative integer"),
        (document(records={"0": {}}), "records must be a list"),
        (document(record_count=2), "record_count is 2 but records has 1 item(s)"),
        (
            document(records=[{"index": 0, "line_number": 1}]),
            "records[0] must have integer index and line_number and string content",
        ),
        (
            document(records=[{"index": "0", "line_number": 1, "content": "x"}]),
            "records[0] must have integer index and line_number and string content",
        ),
        (
            document(records=[{"index": 0, "line_number": True, "content": "x"}]),
            "records[0] must have integer index and line_number and string content",
        ),
        (
            document(record_count=2, records=[{"index": 0, "line_number": 1, "content": "x"}, 5]),
            "records[1] must have integer index and line_number and string content",
        ),
    ],
)
def test_invalid_document(doc: object, message: str) -> None:
    with pytest.raises(InputValidationError) as excinfo:
        validate_document("doc.json", doc)
    assert str(excinfo.value) == f"doc.json: {message}"
