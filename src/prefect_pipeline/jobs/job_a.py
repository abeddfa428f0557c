"""Job A: read a text file, split it into records, write them as JSON."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
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


class ProcessedDocument(dict[str, Any]):
    """A document made by job A. Job B trusts its shape instead of checking every record
    again (a dict from anywhere else is checked)."""


def write_json_atomically(path: Path, document: Mapping[str, Any]) -> None:
    """Write ``document`` to ``path`` through a temporary file and a rename, so a reader
    (or a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # dumps, not dump: json.dump streams through the pure-Python encoder, several
        # times slower than the C one that dumps uses.
        text = json.dumps(document, ensure_ascii=False)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class JobA(BaseJob):
    """File -> records -> ``<output_dir>/<stem>_processed.json``.

    Input: a path, or ``{"path": ..., "output_path": ...}`` to choose where the JSON goes.
    Output: the document (``source_path``, ``sha256``, ``record_count``, ``records``) plus
    ``output_path``; job B accepts it as it is.
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
        text = decode_text(path, data)
        records = split_records(text)
        document = {
            "source_path": str(path.resolve()),
            "sha256": hashlib.sha256(data).hexdigest(),
            "record_count": len(records),
            "records": records,
        }
        write_json_atomically(output_path, document)
        return Outcome(
            ProcessedDocument(document, output_path=str(output_path)),
            details={
                "output_path": str(output_path),
                "record_count": len(records),
                "sha256": document["sha256"],
            },
        )
