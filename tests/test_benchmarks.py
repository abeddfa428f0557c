"""Tests of the benchmark harness in ``benchmarks/``: workloads, raw baseline and run.py.

The workload and raw-baseline tests are fast and need only the standard library; the
harness tests start real subprocesses (and, end to end, the ``pipeline`` CLI with its
Prefect server and Dask workers) and are marked slow. No test asserts anything about
timings: they would only make the suite flaky.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
COUNT_KEYS = ("batches", "records", "finalized_batches", "finalized_records", "outputs")


def _load(name: str) -> ModuleType:
    """Import a script from ``benchmarks/`` (it is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class body runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


workloads = _load("workloads")
raw_baseline = _load("raw_baseline")


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


def test_workload_names_are_validated() -> None:
    assert workloads.parse_names("w1, W3") == ["W1", "W3"]
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


# -------------------------------------------------------------------------------- harness


def _run_harness(results: Path, *args: str, timeout: float) -> dict:
    """Run ``benchmarks/run.py`` tiny, into ``results``; return the parsed latest.json."""
    cmd = [sys.executable, str(BENCH_DIR / "run.py"), "--scale", "0.02", "--repeats", "1"]
    result = subprocess.run(
        [*cmd, "--workloads", "W1", "--results-dir", str(results), *args],
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
    """The real CLI in every local mode; its database must agree with the raw baseline."""
    args = ("--workers", "1", "--modes", "raw,sequential,parallel")
    data = _run_harness(tmp_path / "results", *args, timeout=850)

    assert data["errors"] == []
    assert {row["label"] for row in data["summary"]} == {"raw", "sequential", "parallel-1"}
    raw = next(run for run in data["runs"] if run["mode"] == "raw")
    assert raw["counts"]["batches"] == data["workloads"][0]["files"]
    for run in data["runs"]:
        assert run["errors"] == [], run
        for key in (*COUNT_KEYS, "content_sha256"):
            assert run["counts"][key] == raw["counts"][key], (run["label"], key)
        assert run["summary"]["succeeded"] == raw["summary"]["succeeded"]
