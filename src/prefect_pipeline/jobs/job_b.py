"""Job B: store a document's records in the database, idempotently."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prefect_pipeline.clock import SYSTEM_CLOCK, iso
from prefect_pipeline.exceptions import ContentError
from prefect_pipeline.jobs.base import BaseJob, Facts, Kind, Outcome
from prefect_pipeline.jobs.document import (
    OUTPUT_SUFFIX,
    DocumentReader,
    NotInLayout,
    ProcessedDocument,
)
from prefect_pipeline.validators import (
    decode_text,
    format_bytes,
    open_input,
    validate_document,
    validate_file_path,
)


@dataclass(frozen=True)
class StoredInput:
    """What job B stores, wherever it came from: the batch's fields and where its records
    are (a JSON text, or a JSON file in job A's layout to read in chunks)."""

    source_path: str
    sha256: str
    record_count: int
    output_path: str | None
    #: A JSON text holding the records at ``json_path``.
    text: str | None = None
    json_path: str = "$"
    #: Or a JSON file in job A's layout, whose first bytes must be ``header``.
    file: str | None = None
    header: bytes = b""
    #: Check each record's layout as it is read (a file not made in this run).
    check_layout: bool = False
    #: The JSON file read, when the input was one: its size and mtime, for the ledger.
    size: int | None = None
    mtime_ns: int | None = None


class JobB(BaseJob):
    """JSON (a path or the same structure as a dict) -> one batch row and its record rows.

    One batch per path: storing the current content of a ``source_path`` replaces the
    batches of its earlier contents, in the same transaction. ``(source_path, sha256)`` is
    unique: content that is already stored returns the existing batch and writes nothing,
    unless ``force`` replaces it. Output: the batch id.

    Records go to the database in one statement for a small document, and a chunk at a
    time for a large one (read from its JSON file), always in one transaction: all the
    rows of an input or none.
    """

    name = "B"
    description = "Write the records to the database (one batch per input)"
    uses_database = True
    takes = Kind.DOCUMENT
    produces = Kind.BATCH
    input_pattern = f"*{OUTPUT_SUFFIX}"

    def validate_input(self, input_data: Any) -> StoredInput:
        if isinstance(input_data, ProcessedDocument):
            # Made by job A in this pipeline: its shape holds by construction.
            output_path = input_data.get("output_path")
            if input_data.text is not None:
                return StoredInput(
                    input_data["source_path"],
                    input_data["sha256"],
                    input_data["record_count"],
                    output_path,
                    text=input_data.text,
                    json_path="$.records",
                )
            return StoredInput(
                input_data["source_path"],
                input_data["sha256"],
                input_data["record_count"],
                output_path,
                file=output_path,
                header=input_data.header(),
            )
        if isinstance(input_data, Mapping):
            doc = validate_document("<document>", input_data)
            return _from_dict(doc, doc.get("output_path"))
        return self._from_file(validate_file_path(input_data))

    def _from_file(self, path: Path) -> StoredInput:
        with open_input(path) as handle:
            version = os.fstat(handle.fileno())
            if version.st_size > self.config.stream_threshold:
                reader = DocumentReader(
                    handle,
                    path,
                    chunk_bytes=self.config.chunk_bytes,
                    max_record_bytes=_max_record_bytes(self.config.max_line_bytes),
                    max_line_bytes=self.config.max_line_bytes,
                )
                try:
                    source_path, sha256, count = reader.read_header()
                except NotInLayout:
                    if version.st_size > self.config.max_line_bytes:
                        raise ContentError(
                            path,
                            "not in the layout job A writes, and larger than "
                            f"{format_bytes(self.config.max_line_bytes)} (--max-line-bytes) "
                            "to be read whole",
                            max_line_bytes=self.config.max_line_bytes,
                        ) from None
                else:
                    return StoredInput(
                        source_path,
                        sha256,
                        count,
                        str(path),
                        file=str(path),
                        header=reader.header,
                        check_layout=True,
                        size=version.st_size,
                        mtime_ns=version.st_mtime_ns,
                    )
                handle.seek(0)
            # Decoded like job A's inputs (BOM, NUL bytes, offsets), not by json's guessing.
            text = decode_text(path, handle.read())
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContentError(
                path, f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        stored = _from_dict(validate_document(path, doc), str(path))
        return replace(stored, size=version.st_size, mtime_ns=version.st_mtime_ns)

    def single_job(self, validated: StoredInput) -> Outcome:
        # The current content of a path replaces its earlier contents' batches (records go
        # by ON DELETE CASCADE); --force replaces this content's batch too. One input is a
        # group of one.
        [outcome] = self.group_job([validated])
        return outcome

    def group_job(self, validated: Sequence[StoredInput]) -> list[Outcome]:
        """``single_job`` on a group, with a few statements for all: one read of the
        files' stored batches, one delete of those replaced, one insert of the new
        batches and one of the small documents' records (a larger document's records go
        in with a statement of their own, a large one's from its file a chunk at a
        time)."""
        if len({stored.source_path for stored in validated}) < len(validated):
            # Two contents of one file in a group: the later replaces the earlier, in order.
            return [self.single_job(stored) for stored in validated]
        store = self.store
        stored_of = {stored.source_path: stored for stored in validated}
        existing: dict[str, tuple[int, str]] = {}
        replaced: dict[str, int] = {}
        doomed = []
        for batch_id, source_path, sha256, status in store.batches_of(list(stored_of)):
            if sha256 == stored_of[source_path].sha256:
                existing[source_path] = (batch_id, status)
                if not self.force:
                    continue
            doomed.append(batch_id)
            replaced[source_path] = replaced.get(source_path, 0) + 1
        if doomed:
            store.delete_batches(doomed)
        new_ids = store.insert_batches(
            [
                (s.source_path, s.sha256, s.record_count, s.output_path)
                for s in validated
                if self.force or s.source_path not in existing
            ],
            created_at=iso(SYSTEM_CLOCK.now()),
        )
        outcomes = []
        # The records of small documents in one statement per path to them (a statement
        # per document cost more than its few records); a larger one's in a statement of
        # its own (joined, its text would be copied once more), and a large one's from its
        # file a chunk at a time.
        texts: dict[str, list[tuple[int, str]]] = {}
        for stored in validated:
            path = stored.source_path
            if path not in new_ids:
                outcomes.append(self._unchanged(stored, *existing[path], replaced.get(path, 0)))
                continue
            if stored.text is not None and len(stored.text) <= _SMALL_DOCUMENT:
                texts.setdefault(stored.json_path, []).append((new_ids[path], stored.text))
            else:
                self._insert_records(new_ids[path], stored)
            outcomes.append(
                self._stored(
                    stored, new_ids[path], replaced.get(path, 0), replacing=path in existing
                )
            )
        for json_path, documents in texts.items():
            store.insert_records_of(documents, json_path)
        return outcomes

    def _unchanged(self, stored: StoredInput, batch_id: int, status: str, replaced: int) -> Outcome:
        """The outcome of content that is already stored as ``batch_id``."""
        return Outcome(
            batch_id,
            note=f"already stored as batch {batch_id}; "
            + (_replaced(replaced) if replaced else "nothing written"),
            details={
                "batch_id": batch_id,
                "records_written": 0,
                "unchanged": True,
                "sha256": stored.sha256,
                "batch_status": status,
                "replaced_batches": replaced,
            },
            facts=Facts(
                sha256=stored.sha256,
                batch_id=batch_id,
                records_written=0,
                unchanged=True,
                size=stored.size,
                mtime_ns=stored.mtime_ns,
            ),
        )

    def _stored(
        self, stored: StoredInput, batch_id: int, replaced: int, *, replacing: bool
    ) -> Outcome:
        """The outcome of content stored as the new batch ``batch_id``."""
        note = None
        if replacing:
            note = "replaced the stored batch"
        elif replaced:
            note = _replaced(replaced)
        return Outcome(
            batch_id,
            note=note,
            details={
                "batch_id": batch_id,
                "records_written": stored.record_count,
                "sha256": stored.sha256,
                "unchanged": False,
                "batch_status": "pending",
                "replaced_batches": replaced,
            },
            facts=Facts(
                sha256=stored.sha256,
                batch_id=batch_id,
                records_written=stored.record_count,
                unchanged=False,
                size=stored.size,
                mtime_ns=stored.mtime_ns,
            ),
        )

    def _insert_records(self, batch_id: int, stored: StoredInput) -> None:
        if stored.file is None:
            assert stored.text is not None
            self.store.insert_records(batch_id, stored.text, stored.json_path)
        else:
            self._insert_from_file(batch_id, stored)

    def _insert_from_file(self, batch_id: int, stored: StoredInput) -> None:
        """The records of a large document, a chunk at a time (in the caller's transaction:
        a failure part-way rolls back every chunk)."""
        assert stored.file is not None
        path = Path(stored.file)
        with open_input(path) as handle:
            reader = DocumentReader(
                handle,
                path,
                chunk_bytes=self.config.chunk_bytes,
                max_record_bytes=_max_record_bytes(self.config.max_line_bytes),
                max_line_bytes=self.config.max_line_bytes,
            )
            reader.check_header(stored.header, stored.record_count)
            for records_json, _count in reader.record_arrays(check_layout=stored.check_layout):
                self.store.insert_records(batch_id, records_json)

    def describe(self, outcome: Outcome) -> str:
        details = outcome.details
        return f"batch {details['batch_id']}, {details['records_written']} record(s) written"


#: Characters of JSON text up to which a document's records go in with the rest of its group's
#: (W2's 10-record documents: about 1,000; W1's 190-record ones: about 20,000, which went in
#: no faster joined and took the writer's peak from 150 to 200 MB).
_SMALL_DOCUMENT = 4096


def _from_dict(doc: Mapping[str, Any], output_path: str | None) -> StoredInput:
    # Checked by validate_document: serialize the records as they were checked.
    return StoredInput(
        doc["source_path"],
        doc["sha256"],
        doc["record_count"],
        output_path,
        text=json.dumps(doc["records"], ensure_ascii=False),
    )


def _max_record_bytes(max_line_bytes: int) -> int:
    # A record is its line's content, JSON-escaped (at most 6 bytes per byte: \u0000),
    # and its index and line number.
    return 6 * max_line_bytes + 256


def _replaced(count: int) -> str:
    return f"replaced {count} earlier batch(es) of this file"
