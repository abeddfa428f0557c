"""The jobs called directly (no Prefect): A's data contract, B's storage, C's finalization.

Every job is run through ``execute()``, the method the Prefect tasks call, against a real
SQLite file in ``tmp_path``; the database is read back with the standard library.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.jobs import BaseJob, JobA, JobB, JobC, JobResult, Outcome
from prefect_pipeline.jobs.job_a import write_json_atomically
from tests.conftest import db_counts, files_under, query, sqlite_store

NOTHING = {"pipeline_inputs": 0, "processing_batches": 0, "processed_records": 0}


def run_a(config: PipelineConfig, input_data: Any) -> dict[str, Any]:
    result = JobA(config).execute(input_data)
    assert result.success, result.error
    return result.output


def run_b(config: PipelineConfig, input_data: Any, *, force: bool = False) -> JobResult:
    result = JobB(config, force=force).execute(input_data)
    assert result.success, result.error
    return result


def assert_utc_iso(text: str, earliest: datetime, latest: datetime) -> None:
    stamp = datetime.fromisoformat(text)
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0
    assert text.endswith("+00:00")
    assert earliest <= stamp <= latest


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# Job A: the data contract ---------------------------------------------------------------


def test_records_are_the_non_empty_stripped_lines(config: PipelineConfig, tmp_path: Path) -> None:
    path = write(tmp_path / "in.txt", b"  alpha  \n\n\t\nbeta\n   gamma\t\n")

    doc = run_a(config, path)

    assert doc["records"] == [
        {"index": 0, "line_number": 1, "content": "alpha"},
        {"index": 1, "line_number": 4, "content": "beta"},
        {"index": 2, "line_number": 5, "content": "gamma"},
    ]
    assert doc["record_count"] == 3


def test_universal_newlines_only(config: PipelineConfig, tmp_path: Path) -> None:
    # \r\n, \r and \n end lines; \x0c, \x0b, \x1c-\x1e, \x85, \u2028 and \u2029 do not
    # (str.splitlines() would split on all of them).
    text = (
        "one\x0ctwo\u2028three\r\nfour\rfive\n\n  \nsix\r\r\n"
        "seven\x85eight\x0bnine\x1c\x1d\x1e\u2029ten"
    )
    path = write(tmp_path / "in.txt", text.encode())

    doc = run_a(config, path)

    assert doc["records"] == [
        {"index": 0, "line_number": 1, "content": "one\x0ctwo\u2028three"},
        {"index": 1, "line_number": 2, "content": "four"},
        {"index": 2, "line_number": 3, "content": "five"},
        {"index": 3, "line_number": 6, "content": "six"},
        {"index": 4, "line_number": 8, "content": "seven\x85eight\x0bnine\x1c\x1d\x1e\u2029ten"},
    ]
    # The same lines as Python's own universal-newlines reader gives.
    lines = io.StringIO(text, newline=None).read().split("\n")
    expected = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
    assert [(r["line_number"], r["content"]) for r in doc["records"]] == expected


def test_a_line_that_strips_to_nothing_is_no_record(config: PipelineConfig, tmp_path: Path) -> None:
    # str.strip() removes \x0c and \u2028 at the ends of a line, so such a line is empty.
    path = write(tmp_path / "in.txt", "\x0c\n\u2028\nx\n".encode())

    assert run_a(config, path)["records"] == [{"index": 0, "line_number": 3, "content": "x"}]


def test_leading_bom_is_dropped_and_hash_covers_the_bytes(
    config: PipelineConfig, tmp_path: Path
) -> None:
    data = b"\xef\xbb\xbfhello\nw\xc3\xb6rld\n"
    path = write(tmp_path / "bom.txt", data)

    doc = run_a(config, path)

    assert doc["records"] == [
        {"index": 0, "line_number": 1, "content": "hello"},
        {"index": 1, "line_number": 2, "content": "wörld"},
    ]
    assert doc["sha256"] == hashlib.sha256(data).hexdigest()


def test_json_document(config: PipelineConfig, sample_file: Path) -> None:
    doc = run_a(config, sample_file)

    output_path = config.output_dir / "sample_processed.json"
    assert doc["output_path"] == str(output_path)
    written = json.loads(output_path.read_text(encoding="utf-8"))
    assert written == {
        "source_path": str(sample_file.resolve()),
        "sha256": hashlib.sha256(sample_file.read_bytes()).hexdigest(),
        "record_count": 3,
        "records": [
            {"index": 0, "line_number": 1, "content": "first line"},
            {"index": 1, "line_number": 3, "content": "second line"},
            {"index": 2, "line_number": 4, "content": "third line"},
        ],
    }
    assert {k: v for k, v in doc.items() if k != "output_path"} == written
    assert files_under(config.output_dir) == ["sample_processed.json"]


def test_json_keeps_non_ascii_text_as_utf8(config: PipelineConfig, tmp_path: Path) -> None:
    path = write(tmp_path / "u.txt", "Zürich – 東京 🚀\n".encode())

    run_a(config, path)

    raw = (config.output_dir / "u_processed.json").read_bytes()
    assert "Zürich – 東京 🚀".encode() in raw
    assert json.loads(raw)["records"][0]["content"] == "Zürich – 東京 🚀"


def test_source_path_is_absolute_with_symlinks_resolved(
    config: PipelineConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = write(tmp_path / "real" / "data.txt", b"x\n")
    links = tmp_path / "links"
    links.mkdir()
    (links / "alias.txt").symlink_to(real)
    (tmp_path / "linked-dir").symlink_to(real.parent, target_is_directory=True)
    (links / "alias-of-alias.txt").symlink_to(links / "alias.txt")
    plain = write(links / "plain.txt", b"y\n")
    monkeypatch.chdir(tmp_path)

    via_file_link = run_a(config, "links/alias.txt")
    via_dir_link = run_a(config, "linked-dir/data.txt")
    # One job, one group: a chain of links and a plain file in one folder, a file reached
    # through a linked folder and the same file by its own path.
    group = JobA(config).execute_all(
        [str(links / "alias-of-alias.txt"), str(plain), "linked-dir/data.txt", str(real)]
    )

    assert via_file_link["source_path"] == str(real.resolve())
    assert via_dir_link["source_path"] == str(real.resolve())
    assert [result.output["source_path"] for result in group] == [
        str(real.resolve()),
        str(plain.resolve()),
        str(real.resolve()),
        str(real.resolve()),
    ]
    assert Path(via_file_link["source_path"]).is_absolute()
    # The JSON is named after the path the user gave.
    assert via_file_link["output_path"] == str(config.output_dir / "alias_processed.json")


def test_a_folder_re_pointed_between_two_files_of_a_group_is_resolved_again(
    config: PipelineConfig, tmp_path: Path
) -> None:
    """Job A keeps each folder's real path for its group: a link to a folder re-pointed
    in between (a release switched by its link) gives the next file its new real path, not
    the one the folder had."""
    first = write(tmp_path / "v1" / "data.txt", b"one\n")
    second = write(tmp_path / "v2" / "data.txt", b"two\n")
    current = tmp_path / "current"
    current.symlink_to(first.parent, target_is_directory=True)
    job = JobA(config)

    [before] = job.execute_all([str(current / "data.txt")])
    current.unlink()
    current.symlink_to(second.parent, target_is_directory=True)
    [after] = job.execute_all([str(current / "data.txt")])

    assert before.output["source_path"] == str(first.resolve())
    assert after.output["source_path"] == str(second.resolve())
    assert after.output["record_count"] == 1


def test_output_path_can_be_chosen(
    config: PipelineConfig, sample_file: Path, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere" / "nested" / "custom.json"

    doc = run_a(config, {"path": str(sample_file), "output_path": str(target)})

    assert doc["output_path"] == str(target)
    assert json.loads(target.read_text())["record_count"] == 3
    assert files_under(config.output_dir) == []


def test_rerun_overwrites_the_json(config: PipelineConfig, tmp_path: Path) -> None:
    path = write(tmp_path / "in.txt", b"one\n")
    run_a(config, path)
    path.write_bytes(b"one\ntwo\n")

    doc = run_a(config, path)

    assert json.loads(Path(doc["output_path"]).read_text())["record_count"] == 2
    assert files_under(config.output_dir) == ["in_processed.json"]


def test_no_temporary_file_is_left_after_a_failed_write(
    config: PipelineConfig, sample_file: Path
) -> None:
    # The target is a directory: the final rename fails after the temporary file is written.
    blocked = config.output_dir / "blocked.json"
    blocked.mkdir(parents=True)

    result = JobA(config).execute({"path": str(sample_file), "output_path": str(blocked)})

    assert not result.success
    assert result.error_kind == "unexpected"
    assert result.error == f"{sample_file}: is a directory: {blocked}"
    assert files_under(config.output_dir) == []
    assert [p.name for p in config.output_dir.iterdir()] == ["blocked.json"]


def test_atomic_write_keeps_the_previous_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json_atomically(target, {"version": 1})

    with pytest.raises(TypeError):
        write_json_atomically(target, {"version": 2, "bad": object()})

    assert json.loads(target.read_text()) == {"version": 1}
    assert files_under(tmp_path) == ["out.json"]


@pytest.mark.parametrize("content", [b"", b"\n\n", b"  \t \r\n \r", b"\xef\xbb\xbf"])
def test_a_file_without_records_is_a_batch_of_zero(
    config: PipelineConfig, tmp_path: Path, content: bytes
) -> None:
    path = write(tmp_path / "empty.txt", content)

    doc = run_a(config, path)
    assert doc["record_count"] == 0
    assert doc["records"] == []
    assert doc["sha256"] == hashlib.sha256(content).hexdigest()

    batch_id = run_b(config, doc).output
    finalized = JobC(config).execute(batch_id)

    assert finalized.success, finalized.error
    assert finalized.output == batch_id
    [batch] = query(config.db_path, "SELECT * FROM processing_batches")
    assert (batch["id"], batch["record_count"], batch["status"]) == (batch_id, 0, "finalized")
    assert db_counts(config.db_path)["processed_records"] == 0


@pytest.mark.parametrize(
    ("input_data", "message"),
    [
        (None, "None: expected a file path"),
        ({"output_path": "x.json"}, "<input>: expected a file path"),
    ],
)
def test_job_a_rejects_non_paths(config: PipelineConfig, input_data: Any, message: str) -> None:
    result = JobA(config).execute(input_data)

    assert (result.success, result.error_kind, result.error) == (False, "input", message)
    assert result.traceback is None


def test_job_a_on_bad_input_writes_nothing(config: PipelineConfig, tmp_path: Path) -> None:
    path = write(tmp_path / "bin.dat", b"text\x00more")

    result = JobA(config).execute(path)

    assert result.error == f"{path}: binary file (NUL byte at offset 4)"
    assert result.error_kind == "input"
    assert files_under(config.output_dir) == []
    assert not config.db_path.exists()


# Job B ---------------------------------------------------------------------------------


def test_b_writes_one_batch_and_its_records(config: PipelineConfig, sample_file: Path) -> None:
    started = datetime.now(UTC)
    doc = run_a(config, sample_file)

    result = run_b(config, doc)

    batch_id = result.output
    assert isinstance(batch_id, int) and batch_id > 0
    assert result.note is None
    assert result.details["records_written"] == 3
    assert result.details["unchanged"] is False
    assert db_counts(config.db_path) == {
        "pipeline_inputs": 0, "processing_batches": 1, "processed_records": 3,
    }
    [batch] = query(config.db_path, "SELECT * FROM processing_batches")
    assert batch["id"] == batch_id
    assert batch["source_path"] == str(sample_file.resolve())
    assert batch["sha256"] == doc["sha256"]
    assert batch["record_count"] == 3
    assert batch["status"] == "pending"
    assert batch["finalized_at"] is None
    assert batch["output_path"] == doc["output_path"]
    assert_utc_iso(batch["created_at"], started, datetime.now(UTC))
    records = query(
        config.db_path,
        "SELECT batch_id, record_index, line_number, content, status FROM processed_records "
        "ORDER BY record_index",
    )
    assert [tuple(r) for r in records] == [
        (batch_id, 0, 1, "first line", "pending"),
        (batch_id, 1, 3, "second line", "pending"),
        (batch_id, 2, 4, "third line", "pending"),
    ]


# Text that JSON escapes, or that a careless reader would split or mangle.
AWKWARD_LINES = [
    'say "hi" \\ back\\slash',
    "tab\tinside",
    "Zürich – 東京 🚀",
    "line\u2028separator and \x85 next-line",
    "{\"looks\": [\"like json\"]}",
    "'; DROP TABLE processed_records; --",
]


@pytest.mark.parametrize("via", ["job A's document", "a plain dict", "the JSON file"])
def test_b_stores_every_character_as_read(
    config: PipelineConfig, tmp_path: Path, via: str
) -> None:
    path = write(tmp_path / "awkward.txt", "\n".join(AWKWARD_LINES).encode())
    doc = run_a(config, path)
    expected = [(r["index"], r["line_number"], r["content"]) for r in doc["records"]]
    assert [content for _, _, content in expected] == AWKWARD_LINES
    given: Any = {
        "job A's document": doc,
        "a plain dict": dict(doc),
        "the JSON file": doc["output_path"],
    }[via]

    run_b(config, given)

    rows = query(
        config.db_path,
        "SELECT record_index, line_number, content FROM processed_records ORDER BY id",
    )
    assert [tuple(r) for r in rows] == expected
    types = query(
        config.db_path,
        "SELECT DISTINCT typeof(record_index), typeof(line_number), typeof(content) "
        "FROM processed_records",
    )
    assert [tuple(r) for r in types] == [("integer", "integer", "text")]


def test_a_document_travels_as_its_json_text(config: PipelineConfig, sample_file: Path) -> None:
    doc = run_a(config, sample_file)
    written = Path(doc["output_path"]).read_text(encoding="utf-8")

    assert doc.text == written
    copy = pickle.loads(pickle.dumps(doc))  # as a Dask worker sends it to the writer
    assert dict(copy) == dict(doc)
    assert copy.text == written
    assert len(pickle.dumps(doc)) < len(written) + 400


def test_b_reads_the_json_file(config: PipelineConfig, sample_file: Path) -> None:
    doc = run_a(config, sample_file)

    batch_id = run_b(config, doc["output_path"]).output

    [batch] = query(config.db_path, "SELECT * FROM processing_batches")
    assert batch["id"] == batch_id
    assert batch["output_path"] == doc["output_path"]
    assert batch["source_path"] == doc["source_path"]
    assert db_counts(config.db_path)["processed_records"] == 3


def test_b_accepts_a_json_file_with_a_bom(config: PipelineConfig, sample_file: Path) -> None:
    doc = run_a(config, sample_file)
    path = Path(doc["output_path"])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())

    run_b(config, path)

    assert db_counts(config.db_path)["processed_records"] == 3


def test_b_is_idempotent(config: PipelineConfig, sample_file: Path) -> None:
    doc = run_a(config, sample_file)
    first = run_b(config, doc)
    before = query(config.db_path, "SELECT * FROM processed_records ORDER BY id")

    again = run_b(config, doc)
    from_file = run_b(config, doc["output_path"])

    for result in (again, from_file):
        assert result.output == first.output
        assert result.note == f"already stored as batch {first.output}; nothing written"
        assert result.details["records_written"] == 0
        assert result.details["unchanged"] is True
    assert db_counts(config.db_path) == {
        "pipeline_inputs": 0, "processing_batches": 1, "processed_records": 3,
    }
    after = query(config.db_path, "SELECT * FROM processed_records ORDER BY id")
    assert [tuple(r) for r in after] == [tuple(r) for r in before]


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_b_a_changed_file_replaces_its_earlier_batch(
    config: PipelineConfig, sample_file: Path, tmp_path: Path, streamed: bool
) -> None:
    if streamed:
        config = config.model_copy(update={"stream_threshold": 0, "chunk_bytes": 8})
    first = run_b(config, run_a(config, sample_file)).output
    assert JobC(config).execute(first).success  # finalized: replaced all the same
    other = run_b(config, run_a(config, write(tmp_path / "other.txt", b"o\n"))).output
    sample_file.write_text("changed\n")

    result = run_b(config, run_a(config, sample_file))

    second = result.output
    assert second not in (first, other)
    assert result.note == "replaced 1 earlier batch(es) of this file"
    assert result.details["replaced_batches"] == 1
    batches = query(config.db_path, "SELECT id, source_path, sha256 FROM processing_batches")
    assert sorted(b["id"] for b in batches) == sorted([other, second])
    records = query(
        config.db_path, "SELECT batch_id, line_number, content FROM processed_records ORDER BY id"
    )
    assert [tuple(r) for r in records] == [(other, 1, "o"), (second, 1, "changed")]


def test_b_replacing_an_earlier_batch_is_one_transaction(
    config: PipelineConfig, sample_file: Path
) -> None:
    first = run_b(config, run_a(config, sample_file)).output
    before = [tuple(r) for r in query(config.db_path, "SELECT * FROM processed_records")]
    sample_file.write_text("changed\n")

    # The new content's records cannot be stored: the earlier batch must stay.
    result = JobB(config).execute(_unstorable(run_a(config, sample_file)))

    assert (result.success, result.error_kind) == (False, "unexpected")
    assert [b["id"] for b in query(config.db_path, "SELECT id FROM processing_batches")] == [first]
    assert [tuple(r) for r in query(config.db_path, "SELECT * FROM processed_records")] == before


def test_b_storing_content_again_drops_the_batches_of_other_contents(
    config: PipelineConfig, sample_file: Path
) -> None:
    # A database written before this rule (or by hand) may hold several contents of a path;
    # whichever content is current when the path is stored again is the one kept.
    doc = run_a(config, sample_file)
    kept = run_b(config, doc).output
    store = sqlite_store(config.db_path)
    with store.transaction():
        stale = store.insert_batch(
            source_path=doc["source_path"],
            sha256="f" * 64,
            record_count=1,
            created_at="2020-01-01T00:00:00.000000+00:00",
            output_path=None,
        )
        store.insert_records(stale, '[{"index": 0, "line_number": 1, "content": "old"}]')

    result = run_b(config, doc)

    assert result.output == kept
    assert result.note == (
        f"already stored as batch {kept}; replaced 1 earlier batch(es) of this file"
    )
    assert result.details["records_written"] == 0
    assert [b["id"] for b in query(config.db_path, "SELECT id FROM processing_batches")] == [kept]
    assert db_counts(config.db_path)["processed_records"] == 3


def test_b_force_replaces_the_batch(
    config: PipelineConfig, sample_file: Path, tmp_path: Path
) -> None:
    doc = run_a(config, sample_file)
    old = run_b(config, doc).output
    other = run_b(config, run_a(config, write(tmp_path / "other.txt", b"o\n"))).output
    assert JobC(config).execute(old).success

    result = run_b(config, doc, force=True)

    new = result.output
    assert new not in (old, other)
    assert result.note == "replaced the stored batch"
    assert result.details["records_written"] == 3
    assert db_counts(config.db_path) == {
        "pipeline_inputs": 0, "processing_batches": 2, "processed_records": 4,
    }
    batches = query(config.db_path, "SELECT id, status, finalized_at FROM processing_batches")
    assert sorted(tuple(b) for b in batches) == [(other, "pending", None), (new, "pending", None)]
    records = query(
        config.db_path,
        "SELECT batch_id, record_index, status FROM processed_records ORDER BY batch_id, id",
    )
    assert [tuple(r) for r in records] == [
        (other, 0, "pending"), (new, 0, "pending"), (new, 1, "pending"), (new, 2, "pending"),
    ]


def test_b_force_gives_a_new_batch_id(config: PipelineConfig, sample_file: Path) -> None:
    doc = run_a(config, sample_file)
    old = run_b(config, doc).output

    new = run_b(config, doc, force=True).output

    assert new != old


def test_b_force_without_a_stored_batch_is_a_plain_write(
    config: PipelineConfig, sample_file: Path
) -> None:
    result = run_b(config, run_a(config, sample_file), force=True)

    assert result.note is None
    assert db_counts(config.db_path)["processed_records"] == 3


def _unstorable(doc: dict[str, Any]) -> dict[str, Any]:
    # A lone surrogate passes validation but cannot be encoded for SQLite: the record
    # insert fails after the batch row (and, with force, the delete) ran.
    records = [*doc["records"], {"index": 3, "line_number": 9, "content": "bad \ud800"}]
    return {**doc, "record_count": len(records), "records": records}


def test_b_force_is_one_transaction(config: PipelineConfig, sample_file: Path) -> None:
    doc = run_a(config, sample_file)
    old = run_b(config, doc).output
    before = [tuple(r) for r in query(config.db_path, "SELECT * FROM processed_records")]

    result = JobB(config, force=True).execute(_unstorable(doc))

    assert not result.success
    assert result.error_kind == "unexpected"
    assert "UnicodeEncodeError" in result.error
    [batch] = query(config.db_path, "SELECT id FROM processing_batches")
    assert batch["id"] == old
    assert [tuple(r) for r in query(config.db_path, "SELECT * FROM processed_records")] == before


def test_b_failure_leaves_no_half_batch(config: PipelineConfig, sample_file: Path) -> None:
    result = JobB(config).execute(_unstorable(run_a(config, sample_file)))

    assert not result.success
    assert db_counts(config.db_path) == NOTHING


def test_in_a_writer_transaction_a_failing_input_rolls_back_alone(
    config: PipelineConfig, tmp_path: Path
) -> None:
    # The parallel writer runs a group's inputs in one transaction, a savepoint each.
    good = [run_a(config, write(tmp_path / f"{n}.txt", f"{n} 1\n{n} 2\n".encode())) for n in "xy"]
    bad = _unstorable(run_a(config, write(tmp_path / "bad.txt", b"b one\n")))
    job = JobB(config)
    with sqlite_store(config.db_path).transaction():
        results = [job.execute(doc) for doc in (good[0], bad, good[1])]

    assert [r.success for r in results] == [True, False, True]
    assert "UnicodeEncodeError" in (results[1].error or "")
    assert db_counts(config.db_path) == {
        "pipeline_inputs": 0, "processing_batches": 2, "processed_records": 4,
    }
    sources = query(config.db_path, "SELECT source_path FROM processing_batches ORDER BY id")
    assert [r["source_path"] for r in sources] == [good[0]["source_path"], good[1]["source_path"]]


def test_b_commit_hook_runs_in_the_transaction(config: PipelineConfig, sample_file: Path) -> None:
    doc = run_a(config, sample_file)
    seen: list[Outcome] = []

    def failing_hook(outcome: Outcome) -> None:
        seen.append(outcome)
        raise RuntimeError("ledger update failed")

    result = JobB(config).execute(doc, on_commit=failing_hook)

    assert len(seen) == 1 and isinstance(seen[0].output, int)
    assert (result.success, result.error_kind) == (False, "unexpected")
    assert result.error.endswith("RuntimeError: ledger update failed")
    assert db_counts(config.db_path) == NOTHING

    ok = JobB(config).execute(doc, on_commit=seen.append)
    assert ok.success
    assert seen[-1].output == ok.output


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"source_path": "/x",\n  oops}',
         "malformed JSON at line 2 column 3: Expecting property name enclosed in double quotes"),
        (b"", "malformed JSON at line 1 column 1: Expecting value"),
        (b'{"a": 1} trailing', "malformed JSON at line 1 column 10: Extra data"),
        (b'{"a": "\xff"}', "invalid UTF-8 at byte offset 7"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"source_path": "/x"}', "missing key(s): sha256, record_count, records"),
        (
            json.dumps({"source_path": "/x", "sha256": "a" * 64, "record_count": 2,
                        "records": [{"index": 0, "line_number": 1, "content": "x"}]}).encode(),
            "record_count is 2 but records has 1 item(s)",
        ),
        (
            json.dumps({"source_path": "/x", "sha256": "a" * 64, "record_count": 0,
                        "records": "none"}).encode(),
            "records must be a list",
        ),
        (
            json.dumps({"source_path": "/x", "sha256": "short", "record_count": 0,
                        "records": []}).encode(),
            "sha256 must be 64 lowercase hex digits",
        ),
    ],
)
def test_b_rejects_bad_json_and_writes_nothing(
    config: PipelineConfig, tmp_path: Path, content: bytes, problem: str
) -> None:
    path = write(tmp_path / "bad.json", content)

    result = JobB(config).execute(path)

    assert (result.success, result.error_kind) == (False, "input")
    assert result.error == f"{path}: {problem}"
    assert db_counts(config.db_path) == NOTHING


def test_b_rejects_a_bad_document_dict(config: PipelineConfig) -> None:
    result = JobB(config).execute({"source_path": "/x", "sha256": "a" * 64})

    assert result.error == "<document>: missing key(s): record_count, records"
    assert result.error_kind == "input"
    assert db_counts(config.db_path) == NOTHING


@pytest.mark.parametrize("input_data", ["missing.json", 42])
def test_b_rejects_what_is_not_a_json_file(
    config: PipelineConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, input_data: Any
) -> None:
    monkeypatch.chdir(tmp_path)

    result = JobB(config).execute(input_data)

    expected = {
        "missing.json": f"{tmp_path / 'missing.json'}: no such file",
        42: "42: expected a file path",
    }[input_data]
    assert (result.error_kind, result.error) == ("input", expected)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'\xef\xbb\xbf{"a": "\xff"}', "invalid UTF-8 at byte offset 10"),
        (b'{\x00"a": 1}', "binary file (NUL byte at offset 1)"),
    ],
)
def test_b_reports_encoding_errors_like_job_a(
    config: PipelineConfig, tmp_path: Path, content: bytes, problem: str
) -> None:
    path = write(tmp_path / "bad.json", content)

    result = JobB(config).execute(path)

    assert result.error == f"{path}: {problem}"


# Job C ---------------------------------------------------------------------------------


@pytest.fixture
def stored_batch(config: PipelineConfig, sample_file: Path) -> int:
    return run_b(config, run_a(config, sample_file)).output


def test_c_finalizes_the_batch_and_its_records(config: PipelineConfig, stored_batch: int) -> None:
    started = datetime.now(UTC)

    result = JobC(config).execute(stored_batch)

    assert result.success, result.error
    assert result.output == stored_batch
    assert result.note is None
    assert result.details == {"batch_id": stored_batch, "record_count": 3}
    [batch] = query(config.db_path, "SELECT status, finalized_at FROM processing_batches")
    assert batch["status"] == "finalized"
    assert_utc_iso(batch["finalized_at"], started, datetime.now(UTC))
    statuses = query(config.db_path, "SELECT status FROM processed_records")
    assert [r["status"] for r in statuses] == ["finalized"] * 3


def test_c_accepts_the_id_as_text(config: PipelineConfig, stored_batch: int) -> None:
    assert JobC(config).execute(str(stored_batch)).output == stored_batch


def test_c_twice_is_harmless(config: PipelineConfig, stored_batch: int) -> None:
    JobC(config).execute(stored_batch)
    [first] = query(config.db_path, "SELECT * FROM processing_batches")

    again = JobC(config).execute(stored_batch)

    assert again.success
    assert again.output == stored_batch
    assert again.note == f"batch {stored_batch} was already finalized"
    [batch] = query(config.db_path, "SELECT * FROM processing_batches")
    assert tuple(batch) == tuple(first)
    assert db_counts(config.db_path)["processed_records"] == 3


def test_c_touches_only_its_batch(
    config: PipelineConfig, stored_batch: int, tmp_path: Path
) -> None:
    other = run_b(config, run_a(config, write(tmp_path / "other.txt", b"o\n"))).output

    JobC(config).execute(stored_batch)

    rows = query(config.db_path, "SELECT id, status FROM processing_batches ORDER BY id")
    assert [tuple(r) for r in rows] == [(stored_batch, "finalized"), (other, "pending")]
    pending = query(
        config.db_path, "SELECT COUNT(*) FROM processed_records WHERE status = 'pending'"
    )
    assert pending[0][0] == 1


@pytest.mark.parametrize("batch_id", ["abc", "0", "-3", "", "1.5", 0, -3, None])
def test_c_rejects_a_bad_batch_id(
    config: PipelineConfig, stored_batch: int, batch_id: object
) -> None:
    before = query(config.db_path, "SELECT * FROM processing_batches")

    result = JobC(config).execute(batch_id)

    assert (result.success, result.error_kind) == (False, "input")
    assert result.error == f"{batch_id}: batch id must be a positive integer"
    assert [tuple(r) for r in query(config.db_path, "SELECT * FROM processing_batches")] \
        == [tuple(r) for r in before]


def test_c_rejects_an_unknown_batch(config: PipelineConfig, stored_batch: int) -> None:
    result = JobC(config).execute(99)

    assert (result.success, result.error_kind) == (False, "input")
    assert result.error == "batch 99: no such batch"
    [batch] = query(config.db_path, "SELECT status FROM processing_batches")
    assert batch["status"] == "pending"


def test_c_rejects_a_batch_id_sqlite_cannot_hold(config: PipelineConfig, stored_batch: int) -> None:
    result = JobC(config).execute(str(2**63))

    assert result.error_kind == "input"


# A group of inputs at once (execute_all, as the writer runs jobs B and C) -----------------


def _twins(config: PipelineConfig) -> tuple[PipelineConfig, PipelineConfig]:
    """Two configurations with databases of their own: one run one by one, one as a group."""
    return config, config.model_copy(update={"db_path": config.db_path.with_name("twin.db")})


def _comparable(results: list[JobResult]) -> list[tuple[Any, ...]]:
    return [
        (r.job_name, r.success, r.output, r.error, r.error_kind, r.note, r.details, r.facts,
         r.summary)
        for r in results
    ]


def _tables(config: PipelineConfig) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the job tables but their timestamps and the records' ids (SQLite gives
    a deleted record's id again: which one depends on when the delete ran)."""
    return {
        "batches": [
            tuple(r) for r in query(
                config.db_path,
                "SELECT id, source_path, sha256, record_count, status, output_path"
                " FROM processing_batches ORDER BY id",
            )
        ],
        "records": [
            tuple(r) for r in query(
                config.db_path,
                "SELECT batch_id, record_index, line_number, content, status"
                " FROM processed_records ORDER BY batch_id, record_index",
            )
        ],
    }


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_a_group_gives_what_each_input_alone_gives(
    config: PipelineConfig, tmp_path: Path, force: bool
) -> None:
    # Stored before: p and q. Then q changes and r is new, so the group holds content that
    # is already stored (p), content that replaces its file's earlier batch (q) and a new
    # file (r, large enough for a statement of its own); with --force every one is written
    # anew.
    many = b"".join(b"r%d\n\n" % i for i in range(300))
    texts = {"p": b"p1\np2\n", "q": b"q1\n", "r": many, "s": b"s1\n"}
    docs = {n: run_a(config, write(tmp_path / "in" / f"{n}.txt", t)) for n, t in texts.items()}
    q2 = run_a(config, write(tmp_path / "in" / "q.txt", b"q1 changed\nq2\n"))
    group = [docs["p"], q2, docs["r"], docs["s"]]
    alone, together = _twins(config)
    for twin in (alone, together):
        for doc in (docs["p"], docs["q"]):
            run_b(twin, doc)

    one_by_one = [JobB(alone, force=force).execute(doc) for doc in group]
    committed: list[list[int]] = []
    at_once = JobB(together, force=force).execute_all(
        group, on_commit=lambda at, outcomes: committed.append(list(at))
    )

    assert committed == [[0, 1, 2, 3]]  # as one group, not one by one after a failure
    assert _comparable(at_once) == _comparable(one_by_one)
    assert [r.success for r in at_once] == [True, True, True, True]
    assert [r.details["unchanged"] for r in at_once] == [not force, False, False, False]
    assert _tables(together) == _tables(alone)

    # Job C on the batches, some twice finalized: the same again.
    batches = [r.output for r in at_once]
    JobC(alone).execute(batches[0])
    JobC(together).execute(batches[0])
    assert _comparable(JobC(together).execute_all(batches)) == _comparable(
        [JobC(alone).execute(b) for b in batches]
    )
    assert _tables(together) == _tables(alone)


def test_a_failing_input_in_a_group_fails_alone(config: PipelineConfig, tmp_path: Path) -> None:
    # The group's statements break on one input's records: the group rolls back, then each
    # input runs in a savepoint of its own.
    good = [run_a(config, write(tmp_path / f"{n}.txt", f"{n} 1\n{n} 2\n".encode())) for n in "xy"]
    bad = _unstorable(run_a(config, write(tmp_path / "bad.txt", b"b one\n")))
    committed: list[tuple[list[int], list[Any]]] = []

    results = JobB(config).execute_all(
        [good[0], bad, "missing.json", good[1]],
        on_commit=lambda at, outcomes: committed.append(
            (list(at), [o.output for o in outcomes])
        ),
    )

    assert [r.success for r in results] == [True, False, False, True]
    assert "UnicodeEncodeError" in (results[1].error or "")
    assert results[1].error_kind == "unexpected"
    assert results[2].error_kind == "input"  # refused by validation, before the group ran
    assert committed == [([0], [results[0].output]), ([3], [results[3].output])]
    assert db_counts(config.db_path) == {
        "pipeline_inputs": 0, "processing_batches": 2, "processed_records": 4,
    }


class FlakyOnce(JobB):
    """Job B whose first validation of ``bad.txt``'s document breaks (an I/O error)."""

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__(config)
        self.tried: set[str] = set()

    def validate_input(self, input_data: Any) -> Any:
        source = input_data["source_path"]
        if source.endswith("bad.txt") and source not in self.tried:
            self.tried.add(source)
            raise OSError("transient read error")
        return super().validate_input(input_data)


def test_an_unexpected_validation_error_in_a_group_fails_the_input_once(
    config: PipelineConfig, tmp_path: Path
) -> None:
    # Run again, its validation would pass and its rows be written with no one told of them.
    docs = [run_a(config, write(tmp_path / f"{n}.txt", b"line\n")) for n in ("a", "bad", "c")]
    committed: list[list[int]] = []

    results = FlakyOnce(config).execute_all(
        docs, on_commit=lambda at, outcomes: committed.append(list(at))
    )

    assert [r.success for r in results] == [True, False, True]
    assert results[1].error_kind == "unexpected"
    assert "OSError: transient read error" in (results[1].error or "")
    assert results[1].traceback is not None
    assert committed == [[0, 2]]
    sources = query(config.db_path, "SELECT source_path FROM processing_batches ORDER BY id")
    assert [Path(r["source_path"]).name for r in sources] == ["a.txt", "c.txt"]


def test_a_group_with_an_unknown_batch_finalizes_the_others(
    config: PipelineConfig, stored_batch: int, tmp_path: Path
) -> None:
    other = run_b(config, run_a(config, write(tmp_path / "other.txt", b"o\n"))).output

    results = JobC(config).execute_all([stored_batch, 999, other])

    assert [r.success for r in results] == [True, False, True]
    assert results[1].error == "batch 999: no such batch"
    statuses = query(config.db_path, "SELECT DISTINCT status FROM processed_records")
    assert [r["status"] for r in statuses] == ["finalized"]


def test_one_file_twice_in_a_group_is_stored_in_order(
    config: PipelineConfig, tmp_path: Path
) -> None:
    path = write(tmp_path / "f.txt", b"first\n")
    first = run_a(config, path)
    second = run_a(config, write(path, b"second\nsecond 2\n"))

    results = JobB(config).execute_all([first, second, first])

    replaced = "replaced 1 earlier batch(es) of this file"
    assert [r.note for r in results] == [None, replaced, replaced]
    [batch] = query(config.db_path, "SELECT id, record_count FROM processing_batches")
    assert (batch["id"], batch["record_count"]) == (results[2].output, 1)


# BaseJob --------------------------------------------------------------------------------


class Exploding(BaseJob):
    name = "X"

    def validate_input(self, input_data: Any) -> Any:
        return input_data

    def single_job(self, validated: Any) -> Any:
        raise RuntimeError(f"boom on {validated}")


def test_a_bug_in_a_job_is_an_unexpected_error_with_a_traceback(config: PipelineConfig) -> None:
    result = Exploding(config).execute("item-1")

    assert result.success is False
    assert result.job_name == "X"
    assert result.error_kind == "unexpected"
    assert result.error == "item-1: RuntimeError: boom on item-1"
    assert result.traceback.startswith("Traceback (most recent call last):")
    assert "single_job" in result.traceback
    assert result.traceback.rstrip().endswith("RuntimeError: boom on item-1")
    assert result.output is None
    assert result.duration >= 0


def test_facts_merge_keeps_the_newer_value_of_each_fact() -> None:
    """A later job's value wins; what it does not report is kept; merging nothing new
    gives the same facts back (no copy: it runs for every input and job)."""
    from prefect_pipeline.jobs import Facts
    from prefect_pipeline.jobs.base import NO_FACTS

    read = Facts(sha256="ab", size=3, mtime_ns=5)
    stored = read.merge(Facts(batch_id=4, records_written=10, unchanged=False))

    assert stored == Facts(
        sha256="ab", size=3, mtime_ns=5, batch_id=4, records_written=10, unchanged=False
    )
    assert stored.merge(Facts(batch_id=5, unchanged=True)) == Facts(
        sha256="ab", size=3, mtime_ns=5, batch_id=5, records_written=10, unchanged=True
    )
    assert stored.merge(Facts(batch_id=4)) is stored
    assert stored.merge(None) is stored and stored.merge(NO_FACTS) is stored
    assert NO_FACTS.merge(read) is read
    assert read.merge(Facts(size=0)).size == 0  # a falsy value is a value
