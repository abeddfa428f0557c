"""Reading an input file in chunks, with the data contract's checks, in bounded memory.

``text_blocks`` reads a file a chunk at a time and yields its text as blocks of whole lines,
each with the number of its first line, while it hashes every byte. What it holds at once
is one chunk and the line in progress, so memory does not grow with the file, only with
its longest line, which ``max_line_bytes`` bounds.

Lines are split at the byte level before decoding: the line endings (``\\r\\n``, ``\\r``,
``\\n``) are ASCII bytes, which never occur inside a multi-byte UTF-8 character, so a block
that ends after a line ending also ends between characters, and decoding it alone reports
an invalid byte at the same offset as decoding the whole file would. A ``\\r`` that ends
a chunk may be the first half of ``\\r\\n``: the ``\\n`` that may start the next chunk is
then skipped, not taken for a line ending of its own.

The checks give the same answers as job A's whole-file path (``decode_text``), whatever the
chunk size:

- a NUL byte anywhere makes the file binary, and wins over any other problem: every byte
  is looked at as it is read, and when another problem stops the reading early the rest of
  the file is still scanned (without keeping it) for a NUL byte;
- otherwise the first problem in the file's order is reported: invalid UTF-8 at its byte
  offset, or a line longer than the limit (counted at the line's start, in bytes, without
  its line ending or the BOM).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from prefect_pipeline.exceptions import InputValidationError
from prefect_pipeline.validators import binary_file, invalid_utf8, line_too_long
from prefect_pipeline.validators.input_validators import BOM

if TYPE_CHECKING:
    from hashlib import _Hash


def text_blocks(
    handle: BinaryIO,
    path: Path,
    *,
    chunk_bytes: int,
    max_line_bytes: int,
    digest: _Hash,
) -> Iterator[tuple[str, int]]:
    """Yield ``(text, first line number)`` blocks of whole lines of ``handle`` (read from
    its current position, the file's start); every byte read goes into ``digest``.

    Each block but the last ends with a line ending; the last one is what follows the last
    line ending (it may be empty, and then is not yielded). Raises ``InputValidationError``
    as described in the module's docstring.
    """
    reader = _Reader(handle, path, chunk_bytes, digest)
    try:
        yield from _blocks(reader, max_line_bytes)
    except InputValidationError:
        if reader.binary:
            raise
        # A NUL byte anywhere makes the file binary, whatever was found first.
        nul = reader.find_nul_in_rest()
        if nul is not None:
            raise binary_file(path, nul) from None
        raise


class _Reader:
    """Chunks of a file, hashed and checked for NUL bytes as they are read."""

    def __init__(self, handle: BinaryIO, path: Path, chunk_bytes: int, digest: _Hash) -> None:
        self.handle = handle
        self.path = path
        self.chunk_bytes = chunk_bytes
        self.digest = digest
        #: Bytes read so far.
        self.offset = 0
        #: A NUL byte was found (and reported).
        self.binary = False

    def read(self) -> bytes:
        chunk = self.handle.read(self.chunk_bytes)
        if chunk:
            self.digest.update(chunk)
            nul = chunk.find(b"\x00")
            if nul != -1:
                self.binary = True
                raise binary_file(self.path, self.offset + nul)
            self.offset += len(chunk)
        return chunk

    def find_nul_in_rest(self) -> int | None:
        """The offset of the first NUL byte in what has not been read yet, or None."""
        while True:
            try:
                chunk = self.handle.read(self.chunk_bytes)
            except OSError:
                return None
            if not chunk:
                return None
            nul = chunk.find(b"\x00")
            if nul != -1:
                return self.offset + nul
            self.offset += len(chunk)


def _blocks(reader: _Reader, max_line_bytes: int) -> Iterator[tuple[str, int]]:
    path = reader.path
    data = reader.read()
    while len(data) < len(BOM):  # a BOM may be split across tiny chunks
        more = reader.read()
        if not more:
            break
        data += more
    #: The file's offset of ``data[0]``.
    position = len(BOM) if data.startswith(BOM) else 0
    data = data[position:] or reader.read()
    #: The number of the line that starts at ``pending``'s first byte.
    line = 1
    #: The bytes of the line in progress (no line ending yet), as read.
    pending: list[bytes] = []
    pending_size = 0
    #: The last block ended with ``\r``: a ``\n`` starting the next chunk belongs to it.
    after_cr = False
    while data:
        if after_cr:
            after_cr = False
            if data[:1] == b"\n":
                data = data[1:]
                position += 1
                if not data:
                    data = reader.read()
                    continue
        end = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        if end == 0:  # no line ending: the line goes on
            pending.append(data)
            pending_size += len(data)
            if pending_size > max_line_bytes:
                raise line_too_long(path, line, max_line_bytes)
        else:
            start = position - pending_size  # the file's offset of the block
            block = b"".join((*pending, data[:end])) if pending else data[:end]
            if len(block) > max_line_bytes:
                _check_line_lengths(path, block, start, line, max_line_bytes)
            yield _decode(path, block, start), line
            line += _line_endings(block)
            rest = data[end:]
            # A "\r" that ends the chunk: the next chunk may start with its "\n".
            after_cr = not rest and block[-1:] == b"\r"
            pending = [rest] if rest else []
            pending_size = len(rest)
            if pending_size > max_line_bytes:
                raise line_too_long(path, line, max_line_bytes)
        position += len(data)
        data = reader.read()
    if pending:
        yield _decode(path, b"".join(pending), position - pending_size), line


def _decode(path: Path, block: bytes, start: int) -> str:
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid_utf8(path, start + exc.start) from None


def _line_endings(block: bytes) -> int:
    count = block.count(b"\n")
    if b"\r" in block:  # rare outside Windows and old Mac files: one scan more, then two
        count += block.count(b"\r") - block.count(b"\r\n")
    return count


def _check_line_lengths(path: Path, block: bytes, start: int, line: int, limit: int) -> None:
    """Raise for the first line of ``block`` longer than ``limit`` (an invalid byte before
    that line's start is reported instead, as it comes first in the file)."""
    offset = 0
    for number, content in enumerate(
        block.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"), start=line
    ):
        if len(content) > limit:
            _decode(path, block[:offset], start)
            raise line_too_long(path, number, limit)
        offset = _next_line_start(block, offset + len(content))


def _next_line_start(block: bytes, ending: int) -> int:
    """The offset after the line ending at ``ending``."""
    if block[ending : ending + 2] == b"\r\n":
        return ending + 2
    return ending + 1
