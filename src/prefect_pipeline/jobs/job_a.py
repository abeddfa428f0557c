"""Job A: read a text file, split it into records, write them as JSON."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.exceptions import InputValidationError
from prefect_pipeline.interrupts import check as check_interrupt
from prefect_pipeline.jobs.base import BaseJob, Facts, Kind, Outcome
from prefect_pipeline.jobs.document import (
    OUTPUT_SUFFIX,
    DocumentWriter,
    ProcessedDocument,
    write_json_atomically,
)
from prefect_pipeline.jobs.reader import text_blocks
from prefect_pipeline.validators import binary_file, decode_text, open_input, validate_file_path

__all__ = ["JobA", "split_records", "write_json_atomically"]

#: How much of a file ``JobA.check_content`` reads. A file this small is judged whole, as
#: the job would; of a larger one only a NUL byte counts, the first of the file being the
#: one the job reports (a NUL byte anywhere makes a file binary, whatever else is wrong).
CHECK_BYTES = 64 * 1024


def split_records(text: str, first_line: int = 1, first_index: int = 0) -> list[dict[str, Any]]:
    """One record per line whose ``strip()`` is non-empty, split on ``\\r\\n``, ``\\r``, ``\\n``.

    ``first_line`` and ``first_index`` number a block of a file's lines that does not start
    at its beginning (``reader.text_blocks``).
    """
    # str.splitlines() also splits on \x0b, \x0c, \x1c-\x1e, \x85, \u2028 and \u2029;
    # the contract is universal newlines only.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    records: list[dict[str, Any]] = []
    index = first_index
    for number, line in enumerate(lines, start=first_line):
        content = line.strip()
        if content:
            records.append({"index": index, "line_number": number, "content": content})
            index += 1
    return records


class JobA(BaseJob):
    """File -> records -> ``<output_dir>/<stem>_processed.json``.

    Input: a path, or ``{"path": ..., "output_path": ...}`` to choose where the JSON goes.
    Output: the document as a read-only mapping (``ProcessedDocument``: ``source_path``,
    ``sha256``, ``record_count``, ``records``, ``output_path``); job B accepts it as it is.

    A file up to ``config.stream_threshold`` bytes is read and written whole; a larger one
    in chunks of ``config.chunk_bytes``, its document then carrying no records (job B reads
    them from the JSON file). Both give the same JSON file, byte for byte. A small file's
    document carries its JSON text while the group's ``config.group_text_bytes`` last.
    """

    name = "A"
    description = "Read a text file, split it into records, write them as JSON"
    takes = Kind.FILE
    produces = Kind.DOCUMENT
    writes_output = True

    def __init__(self, config: PipelineConfig, *, force: bool = False) -> None:
        super().__init__(config, force=force)
        # A job is made per group, and a group's documents cross to the writer together.
        # Group sizes are bounded by input bytes, but a file of short lines makes about six
        # times its size in JSON (and W5s's 8 MiB groups of 10-character lines took 200 MB
        # more per worker and in the writer): past this budget a document goes on as its
        # file's path only, like a large one, and job B reads it back in chunks.
        self._text_budget = config.group_text_bytes
        # The real path of each folder this job's inputs are in (see ``_real_path``).
        self._real_folders: dict[str, str] = {}

    def validate_input(self, input_data: Any) -> tuple[Path, Path]:
        if isinstance(input_data, Mapping):
            if "path" not in input_data:
                raise InputValidationError("<input>", "expected a file path")
            path = validate_file_path(input_data["path"])
            output = input_data.get("output_path")
            output_path = Path(output) if output else self.default_output_path(path)
        else:
            path = validate_file_path(input_data)
            output_path = self.default_output_path(path)
        return path, output_path

    @property
    def _whole_up_to(self) -> int:
        """The size up to which a file is read whole, above which it is streamed: a file
        no larger than the line limit cannot hold a line above it."""
        return min(self.config.stream_threshold, self.config.max_line_bytes)

    def check_content(self, validated: tuple[Path, Path]) -> None:
        # `pipeline run-all photo.jpg`: one line in a fraction of a second, not a Prefect
        # server's start-up and a Failed flow run to say the same.
        path, _ = validated
        with open_input(path) as handle:
            data = handle.read(CHECK_BYTES + 1)
        # Judged whole only where the job reads it whole (``single_job``): a file it streams
        # may fail on a line too long before an invalid byte further on.
        if len(data) <= min(CHECK_BYTES, self._whole_up_to):
            decode_text(path, data)
            return
        nul = data.find(b"\x00")
        if nul != -1:
            raise binary_file(path, nul)

    def default_output_path(self, path: Path) -> Path:
        """``<output_dir>/<stem>_processed.json``: the name single-file runs use."""
        return self.config.output_dir / f"{path.stem}{OUTPUT_SUFFIX}"

    def single_job(self, validated: tuple[Path, Path]) -> Outcome:
        # A stop signal reaches the main thread only, and a run's Cancel none: a job on a
        # thread of the command (its local lane) looks here, between files, and between a
        # large file's chunks, so that the run does not wait for its whole group.
        check_interrupt()
        path, output_path = validated
        with open_input(path) as handle:
            # The version read: a change after this moment changes the size or mtime that
            # the next run compares, so it is never taken for this one.
            version = os.fstat(handle.fileno())
            source_path = self._real_path(path, version)
            whole = self._whole_up_to
            # read(n) allocates n bytes before it reads: ask for the size, not the threshold.
            data = handle.read(version.st_size + 1) if version.st_size <= whole else b""
            if version.st_size <= whole and len(data) <= version.st_size:
                document = self._whole(path, data, source_path, output_path)
                streamed = False
            else:  # large, or it grew since fstat (a log being written): read it in chunks
                handle.seek(0)
                del data
                document = self._streamed(path, handle, source_path, output_path)
                streamed = True
        count = document["record_count"]
        sha256 = document["sha256"]
        return Outcome(
            document,
            details={
                "output_path": str(output_path),
                "record_count": count,
                "sha256": sha256,
                "streamed": streamed,
            },
            facts=Facts(sha256=sha256, size=version.st_size, mtime_ns=version.st_mtime_ns),
        )

    def _real_path(self, path: Path, opened: os.stat_result) -> str:
        """``str(path.resolve())`` of the file opened as ``opened`` (``path`` is absolute and
        normalized): its folder's real path, resolved once per group, joined to its name,
        if one ``lstat`` finds there that very file and not a link; else resolved whole
        (a link, or a folder moved or re-pointed since it was resolved).

        ``resolve`` costs an ``lstat`` of every component of the path and as many steps of
        Python; on 20,000 small files that was about a twentieth of job A's time."""
        name = os.fspath(path)
        folder, base = os.path.split(name)
        real_folder = self._real_folders.get(folder)
        if real_folder is None:
            real_folder = self._real_folders[folder] = os.path.realpath(folder)
        candidate = os.path.join(real_folder, base)
        try:
            found = os.lstat(candidate)
        except OSError:
            found = None
        if (
            found is not None
            and stat.S_ISREG(found.st_mode)
            and (found.st_dev, found.st_ino) == (opened.st_dev, opened.st_ino)
        ):
            return candidate
        self._real_folders.pop(folder, None)
        return os.path.realpath(name)

    def _whole(
        self, path: Path, data: bytes, source_path: str, output_path: Path
    ) -> ProcessedDocument:
        records = split_records(decode_text(path, data))
        count = len(records)
        sha256 = hashlib.sha256(data).hexdigest()
        text = json.dumps(
            {
                "source_path": source_path,
                "sha256": sha256,
                "record_count": count,
                "records": records,
            },
            ensure_ascii=False,
        )
        del records  # from here on the text is the document: see ProcessedDocument
        write_json_atomically(output_path, text)
        carried: str | None = None
        if len(text) <= self._text_budget:
            carried = text
            self._text_budget -= len(text)
        return ProcessedDocument(
            carried,
            source_path=source_path,
            sha256=sha256,
            record_count=count,
            output_path=str(output_path),
        )

    def _streamed(
        self, path: Path, handle: BinaryIO, source_path: str, output_path: Path
    ) -> ProcessedDocument:
        digest = hashlib.sha256()
        with DocumentWriter(output_path) as writer:
            for text, first_line in text_blocks(
                handle,
                path,
                chunk_bytes=self.config.chunk_bytes,
                max_line_bytes=self.config.max_line_bytes,
                digest=digest,
            ):
                check_interrupt()  # see single_job
                writer.add(split_records(text, first_line, writer.count))
            sha256 = digest.hexdigest()
            writer.finish(source_path, sha256)
        return ProcessedDocument(
            None,
            source_path=source_path,
            sha256=sha256,
            record_count=writer.count,
            output_path=str(output_path),
        )

    def describe(self, outcome: Outcome) -> str:
        details = outcome.details
        return f"{details['record_count']} record(s) -> {details['output_path']}"
