"""Tests of the benchmark harness in ``benchmarks/``: workloads, raw baseline and run.py.

The workload and raw-baseline tests are fast and need only the standard library; the
harness tests start real subprocesses (and, end to end, the ``pipeline`` CLI with its
Prefect server and Dask workers) and are marked slow. No test asserts anything about
timings: they would only make the suite flaky.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import time
import tracemalloc
from pathlib import Path
from types import ModuleType

import psutil
import pytest

from tests.test_queue_crash import assert_gone

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
COUNT_KEYS = ("batches", "records", "finalized_batches", "finalized_records", "outputs")
MIB = 1024 * 1024


def _load(name: str) -> ModuleType:
    """Import a script from ``benchmarks/`` (it is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class body runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# run.py imports its siblings by name, as it does when run as a script.
sys.path.insert(0, str(BENCH_DIR))
workloads = _load("workloads")
raw_baseline = _load("raw_baseline")
measure = _load("measure")
run = _load("run")


def _tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _independent_record_count(path: Path) -> int:
    """Non-blank lines counted through Python's own universal-newline reader."""
    with path.open(encoding="utf-8-sig", newline=None) as handle:
        return sum(1 for line in handle if line.strip())


# ------------------------------------------------------------------------------ workloads


def test_workloads_are_deterministic(tmp_path: Path) -> None:
    first = workloads.generate("W1", tmp_path / "a", scale=0.05)
    second = workloads.generate("W1", tmp_path / "b", scale=0.05)
    assert first.files == 10
    assert _tree_digest(first.path) == _tree_digest(second.path)
    assert (first.records, first.bytes) == (second.records, second.bytes)


def test_workload_scale_and_folders(tmp_path: Path) -> None:
    w2 = workloads.generate("W2", tmp_path, scale=0.06)
    w3 = workloads.generate("W3", tmp_path, scale=0.001)
    assert (w2.files, w3.files) == (120, 1)  # scale rounds, but never below one file
    folders = sorted(p.name for p in w2.path.iterdir())
    assert folders == ["part-000", "part-001"]
    assert len(list((w2.path / "part-000").iterdir())) == workloads.FILES_PER_FOLDER
    assert w3.lines == workloads.WORKLOADS["W3"].lines_per_file


def test_workload_cache_is_reused_and_counts_are_right(tmp_path: Path) -> None:
    built = workloads.generate("W2", tmp_path, scale=0.02)
    marker = next(built.path.rglob("*.txt"))
    mtime = marker.stat().st_mtime_ns
    again = workloads.generate("W2", tmp_path, scale=0.02)
    assert again == built
    assert marker.stat().st_mtime_ns == mtime, "an identical workload must not be rebuilt"
    files = sorted(built.path.rglob("*.txt"))
    assert len(files) == built.files
    assert sum(_independent_record_count(f) for f in files) == built.records


@pytest.mark.parametrize(("name", "newline", "bom"), [("W4", b"\r\n", True), ("W5", b"\n", False)])
def test_big_workloads_scale_by_size(tmp_path: Path, name: str, newline: bytes, bom: bool) -> None:
    built = workloads.generate(name, tmp_path / "a", scale=0.001)
    again = workloads.generate(name, tmp_path / "b", scale=0.001)
    assert _tree_digest(built.path) == _tree_digest(again.path)
    (path,) = built.path.rglob("*.txt")
    data = path.read_bytes()
    # ~2 MB: at least the target, at most one line over it.
    assert built.files == 1 and 2_000_000 <= built.bytes == len(data) < 2_000_100
    assert data.startswith(workloads.BOM) == bom
    assert data.count(newline) == built.lines == data.count(b"\n")
    assert built.records == _independent_record_count(path)
    assert 0.9 * built.lines < built.records < built.lines  # a few blank lines
    mean_chars = len(data.decode("utf-8-sig")) / built.lines - len(newline)
    assert abs(mean_chars - (80 if name == "W4" else 10)) < (3 if name == "W4" else 0.5)


def _concatenated(root: Path, skip: int) -> bytes:
    """Every file under ``root`` in order, each without its first ``skip`` bytes."""
    return b"".join(p.read_bytes()[skip:] for p in sorted(root.rglob("*.txt")))


def test_split_workload_is_the_big_one_cut_into_small_files(tmp_path: Path) -> None:
    big = workloads.generate("W4", tmp_path, scale=0.001)
    split = workloads.generate("W4s", tmp_path, scale=0.001)
    piece = workloads.WORKLOADS["W4s"].piece_bytes
    # The same lines in the same order; every small file starts with a BOM as W4 does.
    assert _concatenated(split.path, 3) == _concatenated(big.path, 3)
    assert (split.lines, split.records) == (big.lines, big.records)
    assert split.bytes == big.bytes + 3 * (split.files - 1)
    sizes = [p.stat().st_size for p in sorted(split.path.rglob("*.txt"))]
    assert len(sizes) == split.files and sum(sizes) == split.bytes
    assert abs(split.files - big.bytes / piece) < 2
    assert all(piece <= size < piece + 200 for size in sizes[:-1]) and sizes[-1] <= piece + 200
    assert all(p.read_bytes().startswith(workloads.BOM) for p in split.path.rglob("*.txt"))


def test_ten_big_files_workload(tmp_path: Path) -> None:
    built = workloads.generate("W6", tmp_path, scale=0.0001)  # 10 x 100 KB
    paths = sorted(built.path.rglob("*.txt"))
    assert built.files == len(paths) == 10
    assert all(100_000 <= p.stat().st_size < 100_200 for p in paths)
    assert sum(p.stat().st_size for p in paths) == built.bytes
    assert sum(map(_independent_record_count, paths)) == built.records
    assert len({p.read_bytes() for p in paths}) == 10  # ten different files
    assert not any(b"\r" in p.read_bytes() or p.read_bytes().startswith(b"\xef") for p in paths)


def test_stdlib_workload_copies_the_standard_library(tmp_path: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    every = workloads.stdlib_files(stdlib)
    assert every and all(p.suffix == ".py" and "site-packages" not in p.parts for p in every)
    built = workloads.generate("STDLIB", tmp_path, scale=0.01)
    copied = sorted(p.relative_to(built.path) for p in built.path.rglob("*") if p.is_file())
    chosen = workloads._spread(every, 0.01)
    assert len(chosen) == max(1, round(len(every) * 0.01))
    # Copied byte for byte, minus files that are not UTF-8 text (named in the note).
    assert set(copied) <= set(chosen) and len(copied) == built.files > 0
    assert all((built.path / p).read_bytes() == (stdlib / p).read_bytes() for p in copied)
    for left_out in set(chosen) - set(copied):
        assert left_out.as_posix() in built.note
    assert sum(_independent_record_count(built.path / p) for p in copied) == built.records
    assert sum((built.path / p).stat().st_size for p in copied) == built.bytes
    assert f"Python {platform.python_version()}" in built.note
    assert workloads.generate("STDLIB", tmp_path, scale=0.01) == built  # cached


def test_workload_names_are_validated() -> None:
    assert workloads.parse_names("w1, W3, w4S, stdlib") == ["W1", "W3", "W4s", "STDLIB"]
    with pytest.raises(ValueError):
        workloads.parse_names("W1,W9")


# --------------------------------------------------------------------------- raw baseline


def test_parse_records_follows_the_rules() -> None:
    text = "first\r\n\r\n  second  \rthird\n \t \nlast"
    assert raw_baseline.parse_records(text) == [
        (0, 1, "first"),
        (1, 3, "second"),
        (2, 4, "third"),
        (3, 6, "last"),
    ]


# Pieces that every chunked reader must get right: CRLF, BOM and multi-byte characters
# split over chunk boundaries, lone CRs (also at the very end), blank lines, no final
# newline, characters str.splitlines() would split on but the pipeline does not.
STREAM_CASES = {
    "crlf.txt": b"ab\r\ncd\r\n\r\n  e  \r\n",
    "bom_crlf.txt": b"\xef\xbb\xbfa\r\nb\r\n",
    "cr.txt": b"x\ry\r\r z \r",
    "mixed.txt": b"one\r\r\ntwo\n\rthree\r\n\n",
    "utf8.txt": "caf\u00e9 \u20ac\n\U0001f600\n na\u00efve\u00e9\u00e9".encode(),
    "separators.txt": "a\x0cb\x85c\u2028d\nlast".encode(),
    "blank.txt": b"\n\n \t \n\n",
    "empty.txt": b"",
    "bom_only.txt": b"\xef\xbb\xbf",
}


def _write_files(root: Path, files: dict[str, bytes]) -> None:
    for relpath, data in files.items():
        target = root / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _tricky_inputs(root: Path) -> dict[str, bytes]:
    """Hand-written files covering BOM, CRLF, lone CR, blanks and an empty file."""
    files = {
        "bom.txt": b"\xef\xbb\xbfhello\nworld\n",
        "crlf.txt": b"a\r\n\r\n  b  \r\n",
        "cr.txt": b"x\ry\r\r z \r",
        "empty.txt": b"",
        "nested/deep/utf8.txt": "caf\u00e9\n\n na\u00efve\n".encode(),
    }
    for relpath, data in files.items():
        target = root / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return files


def test_raw_baseline_matches_an_independent_count(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    files = _tricky_inputs(inputs)
    generated = workloads.generate("W1", tmp_path / "gen", scale=0.02)
    for src in generated.path.rglob("*.txt"):
        dest = inputs / "gen" / src.relative_to(generated.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())
    sources = sorted(inputs.rglob("*.txt"))
    expected = sum(_independent_record_count(p) for p in sources)

    db, out = tmp_path / "bench.db", tmp_path / "out"
    summary = raw_baseline.process_directory(inputs, db, out)

    assert summary["total"] == summary["succeeded"] == len(sources) == len(files) + 4
    assert summary["failed"] == 0 and summary["failures"] == []
    assert summary["records"] == expected
    assert summary["startup_s"] is not None and summary["startup_s"] > 0
    with sqlite3.connect(db) as conn:
        batches = conn.execute(
            "SELECT count(*), sum(status = 'finalized'), sum(finalized_at IS NOT NULL)"
            " FROM processing_batches"
        ).fetchone()
        records = conn.execute(
            "SELECT count(*), sum(status = 'finalized') FROM processed_records"
        ).fetchone()
    conn.close()
    assert batches == (len(sources), len(sources), len(sources))
    assert records == (expected, expected)


def test_raw_baseline_json_outputs(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    _tricky_inputs(inputs)
    out = tmp_path / "out"
    raw_baseline.process_directory(inputs, tmp_path / "bench.db", out)

    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == [
        "bom_processed.json",
        "cr_processed.json",
        "crlf_processed.json",
        "empty_processed.json",
        "nested/deep/utf8_processed.json",
    ]  # and no temp files left behind
    bom = json.loads((out / "bom_processed.json").read_text(encoding="utf-8"))
    source = inputs / "bom.txt"
    assert bom == {
        "source_path": str(source.resolve()),
        "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "record_count": 2,
        "records": [
            {"index": 0, "line_number": 1, "content": "hello"},
            {"index": 1, "line_number": 2, "content": "world"},
        ],
    }
    cr = json.loads((out / "cr_processed.json").read_text(encoding="utf-8"))
    assert [(r["line_number"], r["content"]) for r in cr["records"]] == [
        (1, "x"),
        (2, "y"),
        (4, "z"),
    ]
    assert json.loads((out / "empty_processed.json").read_text("utf-8"))["record_count"] == 0


@pytest.mark.parametrize("text", [data.decode("utf-8-sig") for data in STREAM_CASES.values()])
def test_line_splitter_matches_whole_text_split(text: str) -> None:
    expected = raw_baseline.split_lines(text)
    for size in range(1, len(text) + 2):
        splitter = raw_baseline.LineSplitter()
        lines = []
        for start in range(0, len(text), size):
            lines += splitter.feed(text[start : start + size])
        assert lines + splitter.close() == expected, size


def _run_raw(inputs: Path, root: Path, **options: int) -> tuple[dict, dict, list]:
    """Raw baseline on ``inputs`` into ``root``: (summary, JSON bytes by name, rows)."""
    out = root / "out"
    summary = raw_baseline.process_directory(inputs, root / "x.db", out, **options)
    documents = {
        str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
    }
    with sqlite3.connect(root / "x.db") as conn:
        rows = conn.execute(
            "SELECT b.source_path, b.sha256, b.record_count, b.status, b.finalized_at IS NOT NULL,"
            " r.record_index, r.line_number, r.content, r.status"
            " FROM processing_batches b LEFT JOIN processed_records r ON r.batch_id = b.id"
            " ORDER BY b.source_path, r.record_index"
        ).fetchall()
    conn.close()
    return summary, documents, rows


def test_streaming_matches_reading_whole(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    _write_files(inputs, STREAM_CASES)
    big = workloads.generate("W4", tmp_path / "gen", scale=0.0001)  # CRLF + BOM, ~200 KB
    (inputs / "big.txt").write_bytes(next(big.path.rglob("*.txt")).read_bytes())

    whole = _run_raw(inputs, tmp_path / "whole")
    expected = sum(_independent_record_count(p) for p in inputs.iterdir())
    assert whole[0]["failed"] == 0 and whole[0]["records"] == expected
    # 1-3 bytes split every CRLF, BOM and multi-byte character somewhere; 4096 is many
    # lines per chunk.
    for chunk_size in (1, 2, 3, 4096):
        streamed = _run_raw(
            inputs, tmp_path / f"chunk{chunk_size}", stream_threshold=0, chunk_size=chunk_size
        )
        assert streamed[0]["records"] == whole[0]["records"]
        assert streamed[1] == whole[1], chunk_size  # byte for byte
        assert streamed[2] == whole[2], chunk_size


@pytest.mark.parametrize("stream_threshold", [0, 1 << 30])
def test_raw_baseline_refuses_binary_and_invalid_utf8(
    tmp_path: Path, stream_threshold: int
) -> None:
    inputs = tmp_path / "in"
    _write_files(
        inputs, {"nul.txt": b"text\nmore\x00text\n", "bad.txt": b"ok\n\xff\n", "good.txt": b"a\n"}
    )
    summary = raw_baseline.process_directory(
        inputs, tmp_path / "x.db", tmp_path / "out", stream_threshold=stream_threshold, chunk_size=3
    )
    errors = {Path(f["path"]).name: f["error"] for f in summary["failures"]}
    assert (summary["succeeded"], summary["failed"]) == (1, 2)
    assert "NUL byte at offset 9" in errors["nul.txt"]
    assert "UnicodeDecodeError" in errors["bad.txt"]
    # Nothing of a failed file stays behind: no rows, no JSON, no temp files.
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()] == ["good_processed.json"]
    with sqlite3.connect(tmp_path / "x.db") as conn:
        assert conn.execute("SELECT count(*) FROM processing_batches").fetchone() == (1,)
    conn.close()


def test_streaming_memory_is_bounded(tmp_path: Path) -> None:
    """Python's allocations while streaming stay near one chunk's worth, not the file's."""
    big = workloads.generate("W5", tmp_path / "gen", scale=0.0003)  # 0.6 MB, 54,000 records
    conn = raw_baseline.connect(tmp_path / "x.db")
    (source,) = big.path.rglob("*.txt")
    tracemalloc.start()
    try:
        count = raw_baseline.stream_file(conn, source, big.path, tmp_path / "out", 8 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        conn.close()
    assert count == big.records
    # One 8 KiB chunk is ~750 records (~0.3 MB of objects); reading the file whole would
    # hold all 54,000 at once (~25 MB).
    assert peak < 1024 * 1024, peak


def test_raw_baseline_takes_every_file_but_hidden_ones(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    _write_files(
        inputs,
        {"a.py": b"x = 1\n", "b.txt": b"b\n", ".hidden.txt": b"h\n", ".git/c.txt": b"c\n"},
    )
    summary = raw_baseline.process_directory(inputs, tmp_path / "x.db", tmp_path / "out")
    assert (summary["succeeded"], summary["records"]) == (2, 2)


def test_raw_baseline_command_line(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    _tricky_inputs(inputs)
    script = str(BENCH_DIR / "raw_baseline.py")
    result = subprocess.run(
        [sys.executable, script, str(inputs), "--db", str(tmp_path / "x.db"), "--out", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    keys = {"total", "succeeded", "failed", "skipped", "records", "elapsed_s", "startup_s"}
    assert keys | {"ignored", "failures"} <= summary.keys()
    assert (summary["total"], summary["records"]) == (5, 9)


# ------------------------------------------------------------------ process measurement


@pytest.mark.parametrize(
    ("cmdline", "is_root", "in_server", "role"),
    [
        (["pipeline", "run-parallel", "x"], True, False, "command"),
        (["python", "-m", "prefect_pipeline.pipeline.server_child", "--port", "1"], False, False,
         "prefect-server"),
        (["python", "-c", "from multiprocessing.spawn import spawn_main; spawn_main()"], False,
         False, "dask-workers"),
        (["python", "-c", "from multiprocessing.resource_tracker import main;main(5)"], False,
         False, "other"),
        (["python", "-m", "uvicorn", "app"], True, True, "prefect-server"),
    ],
)  # fmt: skip
def test_process_roles(cmdline: list[str], is_root: bool, in_server: bool, role: str) -> None:
    assert measure.classify_role(cmdline, is_root=is_root, in_server_tree=in_server) == role


def test_sampler_keeps_role_peaks_and_the_mix_at_the_tree_peak() -> None:
    hits: list[int] = []
    sampler = measure.TreeSampler(os.getpid(), limit=900 * MIB, on_limit=hits.append)
    for command, workers, server in [(100, 0, 300), (200, 500, 100), (150, 100, 50)]:
        sampler.record({"command": command * MIB, "dask-workers": workers * MIB,
                        "prefect-server": server * MIB, "other": 0})  # fmt: skip
    assert sampler.peak == 800 * MIB and hits == []
    assert sampler.breakdown() == {
        "command": {"peak_mb": 200, "at_tree_peak_mb": 200},
        "dask-workers": {"peak_mb": 500, "at_tree_peak_mb": 500},
        "prefect-server": {"peak_mb": 300, "at_tree_peak_mb": 100},
    }
    sampler.record({"command": 1000 * MIB})
    sampler.record({"command": 1000 * MIB})
    assert hits == [1000 * MIB]  # once


def test_run_process_measures_a_real_tree_by_role() -> None:
    # The child's command line carries Dask's worker mark, so it counts as a worker.
    child = "import time; time.sleep(1.5)"
    script = (
        "import subprocess, sys; "
        f"subprocess.run([sys.executable, '-c', {child!r}, 'spawn_main']); "
        "print('done'); sys.exit(3)"
    )
    result = measure.run_process([sys.executable, "-c", script], None, timeout_s=60)
    assert result.returncode == 3 and result.stdout == "done\n"
    assert set(result.roles) == {"command", "dask-workers"}
    assert 0 < result.roles["dask-workers"]["peak_mb"] < result.peak_rss / MIB
    assert measure.describe_failure(result) == "exit 3: (no stderr)"


def test_run_process_kills_a_tree_over_the_memory_limit() -> None:
    hog = "import time; data = b'x' * (300 * 2**20); time.sleep(30)"
    result = measure.run_process([sys.executable, "-c", hog], None, 60, memory_limit=100 * MIB)
    assert result.returncode == -signal.SIGKILL and result.wall_s < 30
    failure = measure.describe_failure(result)
    assert failure is not None and failure.startswith("killed by the harness"), failure


def test_a_harness_stopped_by_sigterm_stops_the_session_it_started(tmp_path: Path) -> None:
    """What ``api_server`` does with its ``prefect server start``: a child in a session of
    its own (a signal to the harness's group does not reach it), stopped in ``finally``.
    SIGTERM to the harness's group must run that ``finally``."""
    script = f"""
import subprocess, sys, time
sys.path.insert(0, {str(BENCH_DIR)!r})
import run
run.exit_on_stop_signals()
child = subprocess.Popen(["sleep", "300"], start_new_session=True)
try:
    print(child.pid, flush=True)
    time.sleep(120)
finally:
    run.stop_group(child)
"""
    harness = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert harness.stdout is not None
    child = psutil.Process(int(harness.stdout.readline()))
    os.killpg(harness.pid, signal.SIGTERM)

    assert harness.wait(timeout=60) == 128 + signal.SIGTERM
    assert_gone([child])


def test_describe_failure_names_the_signal_and_the_last_stderr_line() -> None:
    killed = measure.ProcResult(-signal.SIGKILL, 1.0, 0, "", "line one\nMemoryError\n\n")
    assert measure.describe_failure(killed) == "killed by SIGKILL: MemoryError"
    timed_out = measure.ProcResult(-signal.SIGKILL, 61.0, 0, "", "", timed_out=True)
    assert measure.describe_failure(timed_out) == "timed out after 61 s"
    assert measure.describe_failure(measure.ProcResult(0, 1.0, 0, "", "warning")) is None


# --------------------------------------------------------------------------- harness parts


def test_content_digest_ignores_row_order_but_not_content() -> None:
    rows = [("a" * 64, i, i + 1, f"line {i}") for i in range(50)]
    digest = run.content_digest(iter(rows))
    assert digest == run.content_digest(iter(reversed(rows)))
    changed = [*rows[:-1], ("a" * 64, 49, 50, "line 49 ")]
    assert digest != run.content_digest(iter(changed))
    assert digest != run.content_digest(iter(rows[:-1]))


def _args(*argv: str) -> argparse.Namespace:
    return run.parse_args(["--results-dir", "unused", *argv])


def test_plan_follows_the_mode_registry() -> None:
    labels = [spec.label for spec in run.build_plan(_args("--workers", "1,2"))]
    assert labels == ["raw", "sequential", "parallel-1", "parallel-2", "drain-2"]
    assert run.build_plan(_args("--modes", "fixed-costs")) == []  # a suite only
    eager = run.build_plan(_args("--modes", "parallel,eager", "--workers", "2"))
    assert [s.label for s in eager] == ["raw", "parallel-2", "eager-2"]
    assert "--workers 2 --workers-after 0" in run.MODES["eager"].template(eager[2], None)
    assert [s.label for s in run.build_plan(_args("--modes", "drain"))] == ["raw", "drain-2"]
    # A mode registered later is planned, labelled and selectable by name.
    drain = run.MODES["drain"]
    run.register_mode(dataclasses.replace(drain, name="drain-other"))
    try:
        plan = run.build_plan(_args("--modes", "drain-other", "--workers", "1,3"))
        assert [s.label for s in plan] == ["raw", "drain-other-3"]
    finally:
        del run.MODES["drain-other"]
    with pytest.raises(SystemExit):
        _args("--modes", "nonsense")
    assert [s.label for s in run.build_plan(_args("--modes", "run-all"))] == ["raw", "run-all"]


def test_plan_of_drainers_on_one_database() -> None:
    plan = run.build_plan(_args("--modes", "drain-pg,drain-sqlite", "--drainers", "4,1,2"))
    assert [s.label for s in plan] == [
        "raw", "drain-sqlite-1", "drain-sqlite-2", "drain-sqlite-4",
        "drain-pg-1", "drain-pg-2", "drain-pg-4",
    ]  # fmt: skip
    assert {s.workers for s in plan[1:]} == {1}  # one Dask worker per drainer by default
    plan = run.build_plan(_args("--modes", "drain-pg", "--drainer-workers", "0"))
    assert [(s.label, s.workers, s.drainers) for s in plan[1:]] == [
        ("drain-pg-1", 0, 1), ("drain-pg-2", 0, 2), ("drain-pg-4", 0, 4),
    ]  # fmt: skip
    assert "enqueue DIR && 4 x pipeline" in run.MODES["drain-pg"].template(plan[-1], None)
    assert "--db-url postgresql://" in run.MODES["drain-pg"].template(plan[-1], None)
    for bad in (["--drainer-workers", "-1"], ["--drainers", "0,2"]):
        with pytest.raises(SystemExit):
            _args("--modes", "drain-pg", *bad)


def test_run_processes_times_each_command_and_measures_the_group() -> None:
    """Commands started together: each one's own exit and wall time, one memory figure
    for all their trees plus a service's (here a stand-in for a database server)."""
    service = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        quick = [sys.executable, "-c", "print('quick')"]
        slow = [sys.executable, "-c", "import sys, time; time.sleep(1.5); sys.exit(4)"]
        first, second = measure.run_processes(
            [quick, slow], None, timeout_s=60, services={service.pid: "postgres"}
        )
        assert service.poll() is None  # a service is measured, never reaped as a leftover
    finally:
        service.kill()
        service.wait()
    assert (first.returncode, first.stdout, second.returncode) == (0, "quick\n", 4)
    assert first.wall_s < second.wall_s and second.wall_s >= 1.5
    assert first.peak_rss == second.peak_rss > 0 and first.roles == second.roles
    assert set(first.roles) == {"command", "postgres"}
    assert 0 < first.roles["postgres"]["peak_mb"] < first.peak_rss / MIB


# -------------------------------------------------------------------------------- harness

#: A stand-in for the ``pipeline`` CLI: instant, and it logs what it was run with.
STUB_PIPELINE = r"""
import json, os, sys
from pathlib import Path

argv = sys.argv[1:]
options = {argv[i]: argv[i + 1] for i in range(0, 6, 2)}
command, args = argv[6], argv[7:]
db, home = Path(options["--db-path"]), Path(os.environ["PREFECT_HOME"])
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps({
        "command": command, "db": str(db), "home": str(home),
        "home_files": sorted(p.name for p in home.iterdir()),
        "api_url": os.environ.get("PREFECT_API_URL"), "args": args,
        "workers_after": os.environ.get("PIPELINE_WORKERS_AFTER"),
    }) + "\n")
if "PREFECT_API_URL" not in os.environ:
    (home / "prefect.db").touch()  # what a temporary server leaves in PREFECT_HOME
if command == "run-parallel" and os.environ.get("STUB_FAIL"):
    sys.exit(print("Traceback (most recent call last):\nMemoryError: boom", file=sys.stderr) or 3)
if command == "run" and not Path(args[0]).exists():
    sys.exit(print(f"Error: {args[0]}: no such file", file=sys.stderr) or 1)
if command == "run-parallel":
    total = sum(1 for p in Path(args[0]).rglob("*") if p.is_file())
    done = db.exists()
    db.touch()
    print(json.dumps({"total": total, "skipped": total if done else 0, "failed": 0,
                      "succeeded": 0 if done else total, "startup_s": 0.25}))
elif command == "drain-db":
    print(json.dumps({"total": 0, "failed": 0, "startup_s": 0.5}))
elif command == "run-all":
    print(json.dumps({"success": True}))
elif command == "enqueue":
    db.touch()
"""


def _stub(tmp_path: Path) -> Path:
    stub = tmp_path / "pipeline-stub"
    stub.write_text(f"#!{sys.executable}\n{STUB_PIPELINE}", encoding="utf-8")
    stub.chmod(0o755)
    return stub


def _harness(results: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    """Run ``benchmarks/run.py`` (no settle waits) into ``results``."""
    cmd = [sys.executable, str(BENCH_DIR / "run.py"), "--repeats", "1", "--settle-max", "0"]
    return subprocess.run(
        [*cmd, "--results-dir", str(results), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_the_shared_server_is_paused_while_the_temporary_column_is_measured(
    tmp_path: Path,
) -> None:
    """``paused_server``: the process group of the server the harness started is stopped
    (no CPU) for the block, and runs again after; one it was given is left alone."""
    server = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        ctx = run.Context(scratch=tmp_path, timeout_s=10, api_url="http://x/api",
                          api_pid=server.pid)  # fmt: skip
        process = psutil.Process(server.pid)

        def stopped(wanted: bool, within: float = 10) -> bool:  # signals take a moment
            deadline = time.monotonic() + within
            while (process.status() == psutil.STATUS_STOPPED) != wanted:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)
            return True

        with run.paused_server(ctx):
            assert stopped(True)
        assert stopped(False)
        given = run.Context(scratch=tmp_path, timeout_s=10, api_url="http://x/api")
        with run.paused_server(given):
            assert not stopped(True, within=0.5)
    finally:
        server.kill()
        server.wait()


def test_fixed_costs_suite(tmp_path: Path) -> None:
    """The suite's plumbing, with the stub CLI and a fake running server's address."""
    log = tmp_path / "stub.log"
    api = "http://127.0.0.1:9/api"
    args = ("--modes", "fixed-costs", "--repeats", "2", "--pipeline", str(_stub(tmp_path)))
    result = _harness(
        tmp_path / "res", *args, "--api-url", api, "--workers-after", "2.5",
        env={"STUB_LOG": str(log), "PIPELINE_WORKERS_AFTER": "7"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    data = json.loads((tmp_path / "res" / "latest.json").read_text("utf-8"))
    assert data["summary"] == [] and data["errors"] == []
    rows = {row["key"]: row for row in data["suites"]["fixed-costs"]["summary"]}
    assert list(rows) == [
        "error", "no-op", "drain-empty", "run-all", "startup-2", "startup-2-eager", "first-use"
    ]
    for key, row in rows.items():
        assert (row["temporary"]["ok_runs"], row["api"]["ok_runs"]) == (
            (2, 0) if key == "first-use" else (2, 2)
        ), key
    assert rows["startup-2"]["temporary"]["median_s"] == 0.25  # the summary's startup_s
    runs = data["suites"]["fixed-costs"]["runs"]
    error = next(r for r in runs if r["key"] == "error")
    assert error["failure"].startswith("exit 1: Error: ") and error["returncode"] == 1
    markdown = (tmp_path / "res" / "latest.md").read_text("utf-8")
    assert "## Fixed costs" in markdown and "| drain-db on an empty queue |" in markdown
    # Memory by role, per measurement and column: the stub is the command's only process.
    assert rows["no-op"]["api"]["peak_by_role"]["command"]["peak_mb"] > 0
    assert "### Fixed costs: peak memory by process role" in markdown
    assert "| drain-db on an empty queue | API server |" in markdown
    assert not (tmp_path / "res" / "latest.png").exists()

    calls = [json.loads(line) for line in log.read_text("utf-8").splitlines()]
    template, calls = calls[0], calls[1:]
    assert template["command"] == "run-all" and template["api_url"] is None
    # Per measurement: a new PREFECT_HOME and database (a preparation step shares them).
    assert len({c["home"] for c in calls}) == len({c["db"] for c in calls}) == 26
    assert sum(c["command"] == "enqueue" for c in calls) == 4
    for call in calls:
        if call["api_url"] is not None:
            assert call["api_url"] == api and call["home_files"] == []
    # The harness's --workers-after reaches every command (not the developer's own value);
    # the eager row starts its workers with the run.
    assert {c["workers_after"] for c in calls} == {"2.5"}
    eager = [c["args"] for c in calls if "--workers-after" in c["args"]]
    assert len(eager) == 4 and all(a[a.index("--workers-after") + 1] == "0" for a in eager)
    first_use = [c for c in calls if c["api_url"] is None and c["home_files"] == []]
    assert len(first_use) == 2  # every other temporary-server home is a copy of the template's
    assert all(c["command"] == "run-all" for c in first_use)


def test_harness_records_a_failing_pipeline_and_goes_on(tmp_path: Path) -> None:
    """W4 in small; the stub fails like a pipeline that runs out of memory."""
    args = ("--scale", "0.0005", "--workloads", "W4", "--modes", "raw,parallel", "--workers", "1")
    env = {"STUB_LOG": str(tmp_path / "stub.log"), "STUB_FAIL": "1"}
    result = _harness(tmp_path / "res", *args, "--pipeline", str(_stub(tmp_path)), env=env)
    assert result.returncode == 1  # failed runs are errors...

    data = json.loads((tmp_path / "res" / "latest.json").read_text("utf-8"))
    raw, failed = data["summary"]  # ...but every run was made and reported
    assert failed["label"] == "parallel-1" and failed["ok_runs"] == 0
    assert failed["failures"] == ["parallel: exit 3: MemoryError: boom"]
    assert raw["ok_runs"] == 1 and raw["mb_per_s"] > 0 and raw["records_per_s"] > 0
    assert raw["peak_by_role"]["command"]["peak_mb"] > 0
    run_record = next(r for r in data["runs"] if r["label"] == "parallel-1")
    assert "MemoryError: boom" in run_record["stderr_tail"]
    markdown = (tmp_path / "res" / "latest.md").read_text("utf-8")
    assert "- W4 parallel-1: parallel: exit 3: MemoryError: boom" in markdown
    assert "| MB/s |" in markdown and "## Peak memory by process role" in markdown


#: A stand-in for the ``pipeline`` CLI that does the work, with the raw baseline's code, so
#: the harness's checks against raw pass: ``run-parallel DIR`` and ``run-all FILE``.
WORKING_PIPELINE = r"""
import json, sys
sys.path.insert(0, BENCH_DIR)
import raw_baseline
from pathlib import Path

argv = sys.argv[1:]
options = {argv[i]: argv[i + 1] for i in range(0, 6, 2)}
command, args = argv[6], argv[7:]
db, out = Path(options["--db-path"]), Path(options["--output-dir"])
if command == "run-parallel":
    summary = raw_baseline.process_directory(args[0], db, out)
    print(json.dumps({**summary, "startup_s": 0.1}))
elif command == "run-all":
    source = Path(args[0]).resolve()
    conn = raw_baseline.connect(db)
    count = raw_baseline.process_file(conn, source, source.parent, out.resolve())
    print(json.dumps({"success": True, "input": args[0], "error": None,
                      "jobs": [{"job": "A", "details": {"record_count": count}}]}))
else:
    sys.exit(f"the stub does not do {command}")
"""


def _working_stub(tmp_path: Path) -> Path:
    stub = tmp_path / "pipeline-working-stub"
    code = WORKING_PIPELINE.replace("BENCH_DIR", repr(str(BENCH_DIR)), 1)
    stub.write_text(f"#!{sys.executable}\n{code}", encoding="utf-8")
    stub.chmod(0o755)
    return stub


def test_harness_run_all_and_large_against_small_files(tmp_path: Path) -> None:
    """W4 and W4s (16 files) in small: run-all runs on W4's one file and is refused on
    W4s; the report sets each mode's W4 MB/s against its W4s MB/s."""
    args = ("--scale", "0.0005", "--workloads", "W4,W4s", "--modes", "raw,run-all,parallel")
    stub = str(_working_stub(tmp_path))
    result = _harness(tmp_path / "res", *args, "--workers", "1", "--pipeline", stub)
    assert result.returncode == 0, result.stderr

    data = json.loads((tmp_path / "res" / "latest.json").read_text("utf-8"))
    assert data["errors"] == []  # the stub's rows and JSON files are raw's
    labels = [(row["workload"], row["label"]) for row in data["summary"]]
    assert labels == [("W4", "raw"), ("W4", "parallel-1"), ("W4", "run-all"),
                      ("W4s", "raw"), ("W4s", "parallel-1")]  # fmt: skip
    run_all = data["summary"][2]
    assert run_all["ok_runs"] == 1 and run_all["mb_per_s"] > 0 and run_all["counts"]["records"]
    assert run_all["peak_by_role"]["command"]["peak_mb"] > 0
    (skipped,) = data["skipped"]
    assert skipped.startswith("W4s run-all: 16 files: run-all runs one command")
    pairs = {pair["label"]: pair for pair in data["large_vs_small"]}
    assert set(pairs) == {"raw", "parallel-1"}
    for pair in pairs.values():
        assert (pair["large"], pair["small"]) == ("W4", "W4s")
        assert pair["ratio"] == pytest.approx(pair["large_mb_per_s"] / pair["small_mb_per_s"])
    markdown = (tmp_path / "res" / "latest.md").read_text("utf-8")
    assert "## Large file against small files of the same lines" in markdown
    assert "| parallel-1 | W4 |" in markdown and "## Skipped" in markdown


def test_run_all_mode_runs_each_file_of_a_workload(tmp_path: Path) -> None:
    """A run-all run over several files: one command per file on one database."""
    workload = workloads.generate("W4s", tmp_path / "gen", scale=0.0002)
    assert 1 < workload.files <= run.RUN_ALL_MAX_FILES
    ctx = run.Context(scratch=tmp_path, timeout_s=60, settle_max_s=0)
    ctx.pipeline_exe = _working_stub(tmp_path)
    record = run.execute(run.RunSpec("run-all"), ctx, workload)
    assert record.ok, record.errors
    assert record.summary is not None
    assert record.summary["succeeded"] == workload.files
    assert record.summary["records"] == workload.records
    assert run.check_counts(record.counts, run.expected_counts(workload), "generator") == []
    assert record.startup_s is None and record.wall_s is not None and record.wall_s > 0
    too_many = dataclasses.replace(workload, files=run.RUN_ALL_MAX_FILES + 1)
    assert run.MODES["run-all"].refuse(workload) is None
    assert "11 files" in (run.MODES["run-all"].refuse(too_many) or "")


def _run_harness(results: Path, *args: str, timeout: float) -> dict:
    """Run ``benchmarks/run.py`` tiny, into ``results``; return the parsed latest.json."""
    cmd = [sys.executable, str(BENCH_DIR / "run.py"), "--scale", "0.02", "--repeats", "1"]
    result = subprocess.run(
        [*cmd, "--workloads", "W1", "--settle-max", "0", "--results-dir", str(results), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "| W1 | raw |" in result.stdout  # the Markdown table is printed too
    for name in ("latest.json", "latest.md", "latest.png"):
        assert (results / name).is_file() and (results / name).stat().st_size > 0, name
    return json.loads((results / "latest.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_harness_raw_only(tmp_path: Path) -> None:
    data = _run_harness(tmp_path / "results", "--modes", "raw", timeout=300)
    assert data["errors"] == []
    assert [row["label"] for row in data["summary"]] == ["raw"]
    (run,) = data["runs"]
    assert run["counts"]["batches"] == data["workloads"][0]["files"]
    assert {"cpu_count_logical", "memory_total_gb", "python", "packages"} <= data["machine"].keys()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_harness_end_to_end(tmp_path: Path) -> None:
    """The real CLI in every local mode; its database must agree with the raw baseline.

    With ``--api-url``: the session's Prefect server serves every command (a temporary
    server per command costs 10-20 s each, and a ``prefect server start`` of the harness's
    own as much once, migrating its database; their plumbing is tested with the stub in
    ``test_fixed_costs_suite``, and a command's own temporary server in
    ``test_prefect_server``)."""
    api_url = os.environ["PREFECT_API_URL"]
    args = (
        *("--workers", "1", "--workers-after", "0", "--modes", "raw,sequential,parallel"),
        *("--api-url", api_url),
    )
    data = _run_harness(tmp_path / "results", *args, timeout=850)

    assert data["errors"] == []
    assert {row["label"] for row in data["summary"]} == {"raw", "sequential", "parallel-1"}
    raw = next(record for record in data["runs"] if record["mode"] == "raw")
    assert raw["counts"]["batches"] == data["workloads"][0]["files"]
    for record in data["runs"]:
        assert record["errors"] == [], record
        for key in (*COUNT_KEYS, "content_digest"):
            assert record["counts"][key] == raw["counts"][key], (record["label"], key)
        assert record["summary"]["succeeded"] == raw["summary"]["succeeded"]
    assert data["config"]["workers_after"] == 0
    # Memory by role: Dask workers in Dask runs, started with the run (--workers-after 0).
    # The session's Prefect server is not the harness's to measure; the roles' rules are
    # tested in ``test_process_roles``.
    roles = {row["label"]: set(row["peak_by_role"]) for row in data["summary"]}
    assert roles["raw"] == {"command"}
    assert "command" in roles["sequential"]
    assert "dask-workers" not in roles["sequential"]
    assert {"command", "dask-workers"} <= roles["parallel-1"]
    assert all(row["mb_per_s"] > 0 for row in data["summary"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_drainers_on_one_database(tmp_path: Path, postgres_cluster: object) -> None:
    """drain-pg with the real CLI, tiny: two drain-db commands started together on one
    PostgreSQL database (on the session's server, which the harness's session takes as
    its own), reporting to the session's Prefect server; rows as raw's. drain-sqlite runs
    the same code with the SQLite file (not run here: each CLI start costs seconds)."""
    workload = workloads.generate("W2", tmp_path / "gen", scale=0.01)  # 20 files
    args = _args("--modes", "drain-pg", "--drainers", "2", "--drainer-workers", "0")
    raw_spec, spec = run.build_plan(args)
    ctx = run.Context(scratch=tmp_path, timeout_s=240, settle_max_s=0)
    ctx.pipeline_exe = run.find_pipeline(None)
    ctx.env = run.temporary_server_env(tmp_path / "prefect-home")
    ctx.api_url = os.environ["PREFECT_API_URL"]  # the session's server: none is started
    ctx.postgres = postgres_cluster
    with run.MODES["drain-pg"].session(args, ctx):
        assert ctx.postgres_pid is not None
        raw = run.execute(raw_spec, ctx, workload)
        record = run.execute(spec, ctx, workload)
    assert ctx.postgres is postgres_cluster and ctx.postgres_pid is None
    assert not [name for name in postgres_cluster.databases() if name.startswith("bench_")]

    run.check_against_raw(raw, raw, workload)
    run.check_against_raw(record, raw, workload)
    assert raw.errors == [] and record.errors == [], record.errors
    assert record.label == "drain-pg-2" and record.drainers == 2
    assert record.counts == raw.counts  # rows, finalized rows, contents and JSON files
    assert "--db-url postgresql://.../DB" in record.command
    assert len(record.drainer_runs) == 2
    assert sum(int(d["succeeded"]) for d in record.drainer_runs) == workload.files
    assert record.wall_s == max(d["wall_s"] for d in record.drainer_runs)
    assert record.enqueue_s and record.writer_s and 0 < record.writer_share <= 1
    assert record.writer_share == pytest.approx(record.writer_s / (2 * record.wall_s))
    assert {"command", "postgres"} <= set(record.peak_by_role)

    rows = run.summarize([raw, record], [workload])
    markdown = "\n".join(run.drainers_markdown(rows, {"drainer_workers": 0}))
    assert markdown.startswith("## Drainers on one database")
    assert "### W2" in markdown and "drain-db --workers 0 --json" in markdown
    assert "| raw baseline (SQLite) | - | 1/1 |" in markdown
    assert "| postgresql | 2 | 1/1 |" in markdown
