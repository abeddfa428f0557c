"""Inputs of any size: job A reads, checks and writes large files a chunk at a time, and job
B stores large documents a chunk at a time, in one transaction.

The streaming path runs here on small files with a tiny threshold and tiny chunks (the
sizes are parameters), and must agree with the whole-file path byte for byte and row for
row. Real files, a real SQLite database through the store.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.exceptions import InputValidationError
from prefect_pipeline.jobs import JobA, JobB, JobC
from prefect_pipeline.jobs.document import DocumentReader, ProcessedDocument
from prefect_pipeline.jobs.job_a import split_records
from prefect_pipeline.jobs.reader import text_blocks
from prefect_pipeline.validators import decode_text
from tests.conftest import db_counts, files_under, query

CHUNKS = [1, 2, 3, 7, 64]


def streamed(config: PipelineConfig, chunk: int = 3, **update: Any) -> PipelineConfig:
    """``config`` with every input streamed, in chunks of ``chunk`` bytes."""
    return config.model_copy(update={"stream_threshold": 0, "chunk_bytes": chunk, **update})


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# Text made of the pieces that matter: every line ending, characters of 1 to 4 bytes, the
# separators str.splitlines() knows and the contract does not, what JSON escapes, a BOM
# (leading or not), and the record boundary of job A's layout as content.
PIECES = [
    "a", "b", " ", "\t", "\r", "\n", "\r\n", "é", "東", "🚀", "\ufeff", "\u2028", "\x85",
    "\x0c", '"', "\\", "\x01", "\x7f", '}, {"index": ', "]}",
]
WEIGHTS = [20, 10, 5, 2, 5, 8, 5, 3, 3, 2, 0.5, 1, 1, 1, 1, 1, 1, 1, 0.5, 0.5]


def random_texts(seed: int, count: int, longest: int = 60) -> list[bytes]:
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        data = "".join(rng.choices(PIECES, WEIGHTS, k=rng.randint(0, longest))).encode()
        texts.append(b"\xef\xbb\xbf" + data if rng.random() < 0.2 else data)
    return texts


# The reader -------------------------------------------------------------------------


def read_streamed(data: bytes, chunk: int, limit: int = 1 << 20) -> tuple[Any, ...]:
    """Records and hash through ``text_blocks``, or the error's problem."""
    digest = hashlib.sha256()
    records: list[dict[str, Any]] = []
    try:
        for text, first_line in text_blocks(
            io.BytesIO(data), Path("f"), chunk_bytes=chunk, max_line_bytes=limit, digest=digest
        ):
            records.extend(split_records(text, first_line, len(records)))
    except InputValidationError as exc:
        return ("error", exc.problem)
    return ("ok", records, digest.hexdigest())


def read_whole(data: bytes) -> tuple[Any, ...]:
    """The same through the whole-file path (``decode_text``)."""
    try:
        text = decode_text(Path("f"), data)
    except InputValidationError as exc:
        return ("error", exc.problem)
    return ("ok", split_records(text), hashlib.sha256(data).hexdigest())


BAD_BYTES = [b"\xff", b"\x00", b"\xe2", b"\x80", b"\xed\xa0\x80", b"\xc3"]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_streamed_reading_agrees_with_whole_file_reading(chunk: int) -> None:
    rng = random.Random(chunk)
    for data in random_texts(seed=chunk, count=400):
        if rng.random() < 0.3:  # an invalid byte or a NUL byte somewhere
            at = rng.randint(0, len(data))
            data = data[:at] + rng.choice(BAD_BYTES) + data[at:]
        assert read_streamed(data, chunk) == read_whole(data), data


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        # \r\n split across two chunks is one line ending, not two.
        (b"a\r\nb\r\nc", [(1, "a"), (2, "b"), (3, "c")]),
        (b"a\r\r\nb", [(1, "a"), (3, "b")]),
        (b"a\rb\rc\r", [(1, "a"), (2, "b"), (3, "c")]),
        (b"\r\n\r\n\r\nx", [(4, "x")]),
        (b"\n\r\rx\r\n", [(4, "x")]),
    ],
)
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_line_endings_across_chunk_boundaries(
    data: bytes, lines: list[tuple[int, str]], chunk: int
) -> None:
    _, records, _ = read_streamed(data, chunk)

    assert [(r["line_number"], r["content"]) for r in records] == lines


@pytest.mark.parametrize("chunk", [1, 2])
def test_a_bom_split_across_chunks_is_dropped(chunk: int) -> None:
    _, records, _ = read_streamed(b"\xef\xbb\xbfhi\n\xef\xbb\xbfthere", chunk)

    # Only the leading BOM is one; the second is content (as in the whole-file path).
    assert [r["content"] for r in records] == ["hi", "\ufeffthere"]


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_invalid_utf8_is_reported_at_its_byte_offset(chunk: int) -> None:
    data = "é\n".encode() * 20 + b"ok \xe2\x82 broken\n" + b"more\n" * 10

    assert read_streamed(data, chunk) == ("error", "invalid UTF-8 at byte offset 63")
    assert read_whole(data) == ("error", "invalid UTF-8 at byte offset 63")


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_a_nul_byte_anywhere_makes_the_file_binary(chunk: int) -> None:
    # The whole file is checked: a NUL byte after an invalid byte, or after a line that is
    # too long, still makes it binary, as the whole-file path says.
    after_bad_byte = b"ok\n\xff\n" + b"x" * 100 + b"\x00"
    after_long_line = b"ok\n" + b"y" * 100 + b"\nz\x00"

    assert read_streamed(after_bad_byte, chunk) == ("error", "binary file (NUL byte at offset 105)")
    assert read_streamed(after_long_line, chunk, limit=10) == (
        "error",
        "binary file (NUL byte at offset 105)",
    )


@pytest.mark.parametrize("chunk", [1, 5, 64, 4096])
def test_a_line_over_the_limit_is_reported_with_its_number(chunk: int) -> None:
    data = b"short\r\n" + b"exactly10!\n" + b"\n" + b"x" * 11 + b"\n" + b"\xff after it\n"

    assert read_streamed(data, chunk, limit=10) == (
        "error",
        "line 4 is longer than 10 bytes (--max-line-bytes)",
    )
    # A line of exactly the limit is fine; an invalid byte before the long line comes first.
    assert read_streamed(data[:18], chunk, limit=10)[0] == "ok"
    assert read_streamed(b"\xff\n" + data, chunk, limit=10) == (
        "error",
        "invalid UTF-8 at byte offset 0",
    )


def test_a_long_line_is_never_held_whole(tmp_path: Path) -> None:
    # 8 MB on one line, a 64 KiB limit: the error comes from a few chunks, not the line.
    data = b"start\n" + b"z" * 8_000_000 + b"\nend\n"
    tracemalloc.start()
    try:
        result = read_streamed(data, 16 * 1024, limit=64 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result == ("error", "line 2 is longer than 64 KiB (--max-line-bytes)")
    assert peak < 1_000_000


# Job A: both paths write the same file ---------------------------------------------------


SHAPES = [
    b"",
    b"\n",
    b"\xef\xbb\xbf",
    b"one line without an ending",
    b"  padded  \n\n\t\n",
    b"a\r\nb\rc\nd",
    "Zürich – 東京 🚀\n\u2028\nx\x85y\n".encode(),
    b'"quoted" \\ back\\slash\x01\x1f\x7f\n',
    b'}, {"index": 5, "line_number": 1, "content": "fake"}\n]}\n',
    b"x\n" * 5000,
]


@pytest.mark.parametrize("chunk", [1, 2, 7, 4096])
def test_streamed_json_is_byte_identical_to_the_whole_file_json(
    config: PipelineConfig, tmp_path: Path, chunk: int
) -> None:
    for number, data in enumerate(SHAPES + random_texts(seed=99, count=150)):
        path = write(tmp_path / "inputs" / f"in{number}.txt", data)
        whole = JobA(config).execute({"path": str(path), "output_path": str(tmp_path / "w.json")})
        stream = JobA(streamed(config, chunk)).execute(
            {"path": str(path), "output_path": str(tmp_path / "s.json")}
        )

        assert whole.success and stream.success, (whole.error, stream.error)
        expected = (tmp_path / "w.json").read_bytes()
        assert (tmp_path / "s.json").read_bytes() == expected, data
        # What json.dumps makes of the document (what job A has always written).
        assert expected == json.dumps(json.loads(expected), ensure_ascii=False).encode()
        assert whole.output.text is not None
        assert stream.output.text is None or data == b""  # an empty file is always whole
        assert stream.facts == whole.facts
        assert [dict(d) | {"output_path": None} for d in (stream.output, whole.output)] == [
            dict(whole.output) | {"output_path": None}
        ] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs", "s.json", "w.json"]


def test_a_large_document_travels_without_its_records(
    config: PipelineConfig, tmp_path: Path
) -> None:
    path = write(tmp_path / "big.txt", b"a record of some length\n" * 10_000)

    doc = JobA(streamed(config, 4096)).execute(path).output

    assert isinstance(doc, ProcessedDocument) and doc.text is None
    # What a Dask worker sends to the writer: the fields, not 240 KB of records.
    assert len(pickle.dumps(doc)) < 1000
    copy = pickle.loads(pickle.dumps(doc))
    assert copy["record_count"] == 10_000
    assert copy["records"][9999] == {
        "index": 9999, "line_number": 10_000, "content": "a record of some length",
    }
    assert dict(copy) == json.loads(Path(doc["output_path"]).read_text()) | {
        "output_path": doc["output_path"]
    }


def test_a_line_over_the_limit_fails_its_input_and_writes_nothing(
    config: PipelineConfig, tmp_path: Path
) -> None:
    config = config.model_copy(update={"max_line_bytes": 16})
    bad = write(tmp_path / "long.txt", b"fine\n" * 3 + b"x" * 17 + b"\nfine\n")
    good = write(tmp_path / "ok.txt", b"fine\n" * 3 + b"y" * 16 + b"\n")

    result = JobA(config).execute(bad)
    other = JobA(config).execute(good)

    assert (result.success, result.error_kind) == (False, "input")
    assert result.error == f"{bad}: line 4 is longer than 16 bytes (--max-line-bytes)"
    assert other.success, other.error
    assert files_under(config.output_dir) == ["ok_processed.json"]


@pytest.mark.parametrize("problem", ["invalid UTF-8", "NUL byte", "long line"])
def test_a_large_input_that_fails_late_leaves_no_file_behind(
    config: PipelineConfig, tmp_path: Path, problem: str
) -> None:
    config = streamed(config, 1024, max_line_bytes=1000)
    tail = {"invalid UTF-8": b"\xff\n", "NUL byte": b"\x00\n", "long line": b"l" * 1001}[problem]
    path = write(tmp_path / "big.txt", b"a good line\n" * 5000 + tail)
    previous = config.output_dir / "big_processed.json"
    write(previous, b"the JSON of an earlier version")

    result = JobA(config).execute(path)

    assert (result.success, result.error_kind) == (False, "input")
    assert previous.read_bytes() == b"the JSON of an earlier version"  # untouched
    assert files_under(config.output_dir) == ["big_processed.json"]  # no temporary file


# Job B: both paths store the same rows ---------------------------------------------------


def stored_rows(db_path: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    batches = query(
        db_path,
        "SELECT source_path, sha256, record_count, status, output_path FROM processing_batches"
        " ORDER BY source_path",
    )
    records = query(
        db_path,
        "SELECT b.source_path, r.record_index, r.line_number, r.content, r.status,"
        " typeof(r.record_index), typeof(r.line_number), typeof(r.content)"
        " FROM processed_records r JOIN processing_batches b ON b.id = r.batch_id"
        " ORDER BY b.source_path, r.id",
    )
    return [tuple(b) for b in batches], [tuple(r) for r in records]


def test_both_paths_store_identical_rows(config: PipelineConfig, tmp_path: Path) -> None:
    inputs = [
        write(tmp_path / "inputs" / f"in{n}.txt", data)
        for n, data in enumerate(SHAPES + random_texts(seed=7, count=40, longest=400))
    ]
    whole = config.model_copy(update={"db_path": tmp_path / "whole.db"})
    stream = streamed(config, 5, db_path=tmp_path / "stream.db")
    for path in inputs:
        out = str(tmp_path / "out" / f"{path.stem}.json")
        for cfg in (whole, stream):
            doc = JobA(cfg).execute({"path": str(path), "output_path": out}).output
            batch = JobB(cfg).execute(doc)
            assert batch.success, batch.error
            assert JobC(cfg).execute(batch.output).success

    assert stored_rows(whole.db_path) == stored_rows(stream.db_path)
    assert db_counts(stream.db_path)["processed_records"] > 5000


def test_a_group_carries_document_text_up_to_its_budget(
    config: PipelineConfig, tmp_path: Path
) -> None:
    """Past ``group_text_bytes``, a group's small documents go on as their files' paths, and
    job B stores the same rows from them; the next group starts with the whole budget."""
    from prefect_pipeline.pipeline.definition import JobSpec
    from prefect_pipeline.pipeline.wrappers import WorkItem, run_job_on_items

    inputs = [
        write(tmp_path / "inputs" / f"in{n}.txt", b"a short line\n" * 50 + bytes([65 + n]))
        for n in range(6)
    ]
    one_text = len(JobA(config).execute(inputs[0]).output.text)
    spec = JobSpec("A", JobA, JobA.description)
    rows = {}
    for budget in (10 * one_text, 2 * one_text):
        cfg = config.model_copy(
            update={"group_text_bytes": budget, "db_path": tmp_path / f"{budget}.db"}
        )
        items = [WorkItem({"path": str(path)}) for path in inputs]
        groups = [
            run_job_on_items(spec, items[:3], cfg),
            run_job_on_items(spec, items[3:], cfg),
        ]
        carried = [[r.output.text is not None for r in group] for group in groups]
        if budget == 2 * one_text:
            assert carried == [[True, True, False], [True, True, False]]
        else:
            assert carried == [[True] * 3, [True] * 3]
        for result in groups[0] + groups[1]:
            assert result.details["streamed"] is False
            batch = JobB(cfg).execute(result.output)
            assert batch.success, batch.error
        rows[budget] = stored_rows(cfg.db_path)

    assert rows[10 * one_text] == rows[2 * one_text]
    assert len(rows[2 * one_text][1]) == 6 * 51


@pytest.mark.parametrize("chunk", [1, 16, 100, 1 << 16])
def test_the_reader_yields_json_arrays_of_whole_records(
    config: PipelineConfig, tmp_path: Path, chunk: int
) -> None:
    data = "\n".join(f'line {n} "{n}" }}, {{"index": ]}}' for n in range(300)).encode()
    doc = JobA(config).execute(write(tmp_path / "in.txt", data)).output
    path = Path(doc["output_path"])

    with open(path, "rb") as handle:
        reader = DocumentReader(handle, path, chunk_bytes=chunk, max_record_bytes=1 << 20)
        assert reader.read_header() == (doc["source_path"], doc["sha256"], 300)
        arrays = list(reader.record_arrays(check_layout=True))

    assert len(arrays) > 1 if chunk < 1000 else len(arrays) == 1
    parsed = [json.loads(text) for text, _ in arrays]
    assert [len(p) for p in parsed] == [count for _, count in arrays]
    assert [r for p in parsed for r in p] == doc["records"]


def test_b_stores_a_large_json_file_given_by_path(config: PipelineConfig, tmp_path: Path) -> None:
    path = write(tmp_path / "in.txt", b"first\n\nsecond \xc3\xa9\n" * 500)
    doc = JobA(config).execute(path).output
    json_file = Path(doc["output_path"])
    json_file.write_bytes(b"\xef\xbb\xbf" + json_file.read_bytes())  # a BOM is accepted too

    result = JobB(streamed(config, 64)).execute(json_file)

    assert result.success, result.error
    assert result.details["records_written"] == 1000
    assert result.facts is not None and result.facts.size == json_file.stat().st_size
    rows = query(config.db_path, "SELECT line_number, content FROM processed_records ORDER BY id")
    assert [tuple(r) for r in rows] == [
        (r["line_number"], r["content"]) for r in doc["records"]
    ]


def test_b_reads_a_json_file_in_another_layout_whole_up_to_the_line_limit(
    config: PipelineConfig, tmp_path: Path
) -> None:
    doc = dict(JobA(config).execute(write(tmp_path / "in.txt", b"a\nb\n")).output)
    del doc["output_path"]
    pretty = write(tmp_path / "pretty.json", json.dumps(doc, indent=2).encode())

    small_enough = JobB(streamed(config, 8)).execute(pretty)
    too_large = JobB(streamed(config, 8, max_line_bytes=64)).execute(pretty)

    assert small_enough.success, small_enough.error
    assert (too_large.error_kind, too_large.error) == (
        "input",
        f"{pretty}: not in the layout job A writes, and larger than 64 bytes "
        "(--max-line-bytes) to be read whole",
    )


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (
            lambda text: text.replace('"line_number": 700,', '"line_number": "700",'),
            "records[",
        ),
        (lambda text: text[:-2], "the JSON file ends before its records do"),
        (
            lambda text: text.replace('"record_count": 1000', '"record_count": 1001'),
            "record_count is 1001 but records has 1000 item(s)",
        ),
    ],
)
def test_a_bad_record_late_in_a_large_json_file_rolls_back_every_chunk(
    config: PipelineConfig, tmp_path: Path, damage: Any, problem: str
) -> None:
    doc = JobA(config).execute(write(tmp_path / "in.txt", b"a line\n" * 1000)).output
    json_file = Path(doc["output_path"])
    json_file.write_text(damage(json_file.read_text()))

    result = JobB(streamed(config, 256)).execute(json_file)

    assert (result.success, result.error_kind) == (False, "input")
    assert result.error is not None and result.error.startswith(f"{json_file}: ")
    assert problem in result.error
    assert db_counts(config.db_path)["processed_records"] == 0
    assert db_counts(config.db_path)["processing_batches"] == 0


def test_b_refuses_a_json_file_changed_after_job_a_wrote_it(
    config: PipelineConfig, tmp_path: Path
) -> None:
    stream = streamed(config, 64)
    path = write(tmp_path / "in.txt", b"version one\n" * 100)
    doc = JobA(stream).execute(path).output
    path.write_bytes(b"version two\n" * 100)
    JobA(stream).execute(path)  # another run rewrote the JSON meanwhile

    result = JobB(stream).execute(doc)

    assert (result.success, result.error_kind) == (False, "unexpected")
    assert "the JSON file is not the one job A reported" in (result.error or "")
    assert db_counts(config.db_path)["processing_batches"] == 0


def test_a_failure_mid_stream_in_a_writer_transaction_rolls_back_that_input_alone(
    config: PipelineConfig, tmp_path: Path
) -> None:
    from tests.conftest import sqlite_store

    stream = streamed(config, 128)
    docs = [
        JobA(stream).execute(write(tmp_path / f"{name}.txt", f"{name}\n".encode() * 200)).output
        for name in ("one", "bad", "two")
    ]
    bad_json = Path(docs[1]["output_path"])
    bad_json.write_bytes(bad_json.read_bytes()[:-300] + b"]}")  # records cut short
    job = JobB(stream)
    with sqlite_store(stream.db_path).transaction():
        results = [job.execute(doc) for doc in docs]

    assert [r.success for r in results] == [True, False, True]
    assert db_counts(config.db_path)["processed_records"] == 400
    sources = query(config.db_path, "SELECT source_path FROM processing_batches ORDER BY id")
    assert [r["source_path"] for r in sources] == [docs[0]["source_path"], docs[2]["source_path"]]


# Memory ---------------------------------------------------------------------------------

# Jobs A and B on one file in a fresh process, with the default sizes; prints its RSS
# before the jobs and its peak RSS after them, in bytes. The peak is VmHWM, the high-water
# mark of this process's own memory: ru_maxrss would include that of the process it was
# forked from (the test runner's, recorded at exec).
_JOBS = """
import json, sys
from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.jobs import JobA, JobB

def kib(field):
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024

config = PipelineConfig(output_dir=sys.argv[2], db_path=sys.argv[3], log_level="OFF")
JobB(config).store  # the database and its schema: part of the baseline
before = kib("VmRSS")
doc = JobA(config).execute(sys.argv[1])
assert doc.success, doc.error
batch = JobB(config).execute(doc.output)
assert batch.success, batch.error
after = kib("VmHWM")
print(json.dumps({"before": before, "after": after, "records": doc.output["record_count"],
                  "text": doc.output.text is not None}))
"""


@pytest.mark.slow
def test_a_large_input_runs_in_memory_that_does_not_grow_with_it(
    config: PipelineConfig, tmp_path: Path
) -> None:
    import subprocess
    import sys

    rng = random.Random(13)
    lines = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz 0123456789é", k=rng.randint(0, 1000)))
        for _ in range(2000)
    ]
    block = ("\n".join(lines) + "\n").encode()
    path = tmp_path / "large.txt"
    with open(path, "wb") as handle:
        for _ in range(200_000_000 // len(block)):
            handle.write(block)
    size = path.stat().st_size

    done = subprocess.run(
        [sys.executable, "-c", _JOBS, str(path), str(config.output_dir), str(config.db_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    grown = figures["after"] - figures["before"]
    assert figures["text"] is False  # the streamed path
    assert db_counts(config.db_path)["processed_records"] == figures["records"] > 350_000
    # The file is ~200 MB (the whole-file path held about 8 times that); the streamed path
    # holds a chunk of it at a time, whatever its size.
    assert size > 190_000_000
    assert grown < 64 * 1024 * 1024, f"peak RSS grew by {grown / 2**20:.0f} MiB"
