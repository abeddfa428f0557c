"""Job A: read a text file, split it into records, write them as JSON."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prefect_pipeline.exceptions import InputValidationError
from prefect_pipeline.jobs.base import BaseJob, Outcome
from prefect_pipeline.validators import decode_text, read_bytes, validate_file_path

OUTPUT_SUFFIX = "_processed.json"


def split_records(text: str) -> list[dict[str, Any]]:
    """One record per line whose ``strip()`` is non-empty, split on ``\\r\\n``, ``\\r``, ``\\n``."""
    # str.splitlines() also splits on \x0b, \x0c, \x1c-\x1e, \x85, \u2028 and \u2029;
    # the contract is universal newlines only.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        content = line.strip()
        if content:
            records.append({"index": len(records), "line_number": number, "content": content})
    return records


class ProcessedDocument(Mapping[str, Any]):
    """A document made by job A: ``source_path``, ``sha256``, ``record_count``, ``records``
    and ``output_path``, read-only.

    It holds the JSON text that job A wrote to its file rather than the records as Python
    objects, and parses ``records`` from it only if someone asks. That text is what crosses
    from a Dask worker to the writer (one string pickles in microseconds, thousands of small
    dicts do not, and take several times the memory) and what job B hands to SQLite, which
    reads the records out of it in one statement. Job B trusts its shape instead of checking
    every record again (a dict from anywhere else is checked). ``dict(doc)`` gives a plain
    dict.
    """

    __slots__ = ("_fields", "_records", "text")

    def __init__(
        self,
        text: str,
        *,
        source_path: str,
        sha256: str,
        record_count: int,
        output_path: str | None = None,
    ) -> None:
        #: The document as JSON: exactly what job A wrote to ``output_path``.
        self.text = text
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
                self._records = json.loads(self.text)["records"]
            return self._records
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        yield from ("source_path", "sha256", "record_count", "records")
        if "output_path" in self._fields:
            yield "output_path"

    def __len__(self) -> int:
        return len(self._fields) + 1

    def __reduce__(self) -> tuple[Any, ...]:
        # The text and the small fields only: parsed records stay behind.
        return (_restore_document, (self.text, self._fields))

    def __repr__(self) -> str:
        return (
            f"ProcessedDocument(source_path={self._fields['source_path']!r}, "
            f"record_count={self._fields['record_count']})"
        )


def _restore_document(text: str, fields: dict[str, Any]) -> ProcessedDocument:
    return ProcessedDocument(text, **fields)


def write_json_atomically(path: Path, document: Mapping[str, Any] | str) -> None:
    """Write ``document`` (or its JSON text) to ``path`` through a temporary file and a
    rename, so a reader (or a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # dumps, not dump: json.dump streams through the pure-Python encoder, several times
    # slower than the C one that dumps uses.
    text = document if isinstance(document, str) else json.dumps(document, ensure_ascii=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class JobA(BaseJob):
    """File -> records -> ``<output_dir>/<stem>_processed.json``.

    Input: a path, or ``{"path": ..., "output_path": ...}`` to choose where the JSON goes.
    Output: the document as a read-only mapping (``ProcessedDocument``: ``source_path``,
    ``sha256``, ``record_count``, ``records``, ``output_path``); job B accepts it as it is.
    """

    name = "A"
    description = "Read a text file, split it into records, write them as JSON"

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

    def default_output_path(self, path: Path) -> Path:
        """``<output_dir>/<stem>_processed.json``: the name single-file runs use."""
        return self.config.output_dir / f"{path.stem}{OUTPUT_SUFFIX}"

    def single_job(self, validated: tuple[Path, Path]) -> Outcome:
        path, output_path = validated
        data = read_bytes(path)
        records = split_records(decode_text(path, data))
        count = len(records)
        source_path = str(path.resolve())
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
        document = ProcessedDocument(
            text,
            source_path=source_path,
            sha256=sha256,
            record_count=count,
            output_path=str(output_path),
        )
        return Outcome(
            document,
            details={
                "output_path": str(output_path),
                "record_count": count,
                "sha256": sha256,
            },
        )
