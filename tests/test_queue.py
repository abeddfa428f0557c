"""The input queue, in this process: ``enqueue``, ``drain-db``, ``status``, ``requeue``,
retries with backoff, and claims with leases (``Ledger``).

Everything runs for real: SQLite files in ``tmp_path``, the session's Prefect server, the
CLI through click's runner. ``drain-db --workers 0`` runs the jobs in this process without
Dask, which keeps these tests about the queue's logic. Processes, signals and concurrent
drainers are in ``test_queue_crash.py``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import Result

from prefect_pipeline.clock import SYSTEM_CLOCK, iso, iso_in, local_time
from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.database.ledger import Ledger
from prefect_pipeline.database.models import utcnow
from prefect_pipeline.database.queue import enqueue as enqueue_inputs
from prefect_pipeline.database.store import Finished
from prefect_pipeline.exceptions import ClaimLostError
from prefect_pipeline.jobs import BaseJob, JobA, JobB, JobC, Kind
from prefect_pipeline.pipeline.definition import PipelineDefinition
from prefect_pipeline.pipeline.discovery import given_files
from prefect_pipeline.pipeline.parallel import run_parallel_from_database
from tests.conftest import CliInvoke, ManualClock, db_counts, query, sqlite_store

Invoke = Callable[..., Result]

#: Inputs of the tree (relative path -> text). Two ``a.txt`` in different folders, a
#: file without records, blank and whitespace-only lines.
TREE = {
    "blank.txt": "\n   \n\t\n",
    "top.txt": "alpha\n\n  beta  \ngamma",
    "notes/a.txt": "one\ntwo\n   \nthree\n",
    "notes/deep/er/d.txt": "x\n",
    "other/a.txt": "\n\nfour\n",
    "other/b.md": "five\nsix\nseven\n",
    "other/deep/c.txt": "eight\n\t\nnine\nten\n",
}
#: Hidden names under the tree: never queued.
HIDDEN = {
    ".hidden.txt": "secret\n",
    ".git/config": "[core]\n",
    "notes/.swap.txt": "tmp\n",
}
#: The order ``enqueue`` finds the tree's inputs in (files of a folder, then sub-folders,
#: each sorted): the queue's ids follow it.
TREE_ORDER = [
    "blank.txt",
    "top.txt",
    "notes/a.txt",
    "notes/deep/er/d.txt",
    "other/a.txt",
    "other/b.md",
    "other/deep/c.txt",
]


def count_records(text: str) -> int:
    """Non-empty stripped lines, counted independently of the pipeline."""
    return sum(1 for line in text.split("\n") if line.strip())


def write_files(root: Path, files: dict[str, str | bytes]) -> dict[str, Path]:
    paths = {}
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        paths[relative] = path
    return paths


def mirrored_json(config: PipelineConfig, path: Path) -> Path:
    """Where job A's JSON for ``path`` goes: its absolute folder under the output dir."""
    folder = path.parent.resolve()
    return config.output_dir / folder.relative_to(folder.anchor) / f"{path.stem}_processed.json"


def rows(
    config: PipelineConfig, where: str = "1", params: tuple[Any, ...] = ()
) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in query(
            config.db_path, f"SELECT * FROM pipeline_inputs WHERE {where} ORDER BY id", params
        )
    ]


def by_path(config: PipelineConfig) -> dict[str, dict[str, Any]]:
    return {r["path"]: r for r in rows(config)}


def execute(config: PipelineConfig, sql: str, params: tuple[Any, ...] = ()) -> int:
    """Change the database behind the pipeline's back (standard library, own connection)."""
    with closing(sqlite3.connect(config.db_path)) as connection, connection:
        return connection.execute(sql, params).rowcount


def summary_of(result: Result) -> dict[str, Any]:
    """The one JSON line ``--json`` prints."""
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.output
    return json.loads(lines[0])


def assert_summary(summary: dict[str, Any], **expected: Any) -> None:
    assert {key: summary[key] for key in expected} == expected, summary


@pytest.fixture
def pipeline(cli_runner: CliInvoke, config: PipelineConfig) -> Invoke:
    """``pipeline(*args)``: the command with the test's database and output directory."""

    def invoke(*args: str | os.PathLike[str]) -> Result:
        return cli_runner(
            "--log-level",
            "OFF",
            "--db-path",
            config.db_path,
            "--output-dir",
            config.output_dir,
            *args,
        )

    return invoke


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The input tree (with its hidden files); returns its root."""
    root = tmp_path / "tree"
    write_files(root, {**TREE, **HIDDEN})
    return root


# enqueue ------------------------------------------------------------------------------------


def test_enqueue_a_tree_skips_hidden_files_and_mirrors_folders(
    pipeline: Invoke, config: PipelineConfig, tree: Path
) -> None:
    result = pipeline("enqueue", tree)
    assert result.exit_code == 0, result.output
    assert result.stdout == "7 input(s) queued, 0 already there\n"
    assert result.stderr == ""

    queued = rows(config)
    assert [r["path"] for r in queued] == [str(tree / p) for p in TREE_ORDER]
    assert [r["id"] for r in queued] == list(range(1, 8))
    for row in queued:
        path = Path(row["path"])
        assert row["status"] == "pending"
        assert row["attempts"] == 0
        assert row["start_job"] is None  # the range is the drain's to choose
        assert row["size"] == path.stat().st_size
        assert row["mtime_ns"] == path.stat().st_mtime_ns
        assert row["output_path"] == str(mirrored_json(config, path))
        assert row["claim_token"] is None and row["lease_expires_at"] is None
    # The two a.txt get different JSON files, each under its own absolute folder.
    outputs = {r["output_path"] for r in queued}
    assert len(outputs) == 7
    assert str(config.output_dir / str(tree / "notes")[1:] / "a_processed.json") in outputs
    assert str(config.output_dir / str(tree / "other")[1:] / "a_processed.json") in outputs
    assert db_counts(config.db_path) == {
        "pipeline_inputs": 7,
        "processing_batches": 0,
        "processed_records": 0,
    }

    again = pipeline("enqueue", tree)
    assert again.exit_code == 0, again.output
    assert again.stdout == "0 input(s) queued, 7 already there\n"
    as_json = pipeline("enqueue", tree, "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == {
        "queued": 0, "already": 7, "ignored": 0, "ignored_paths": [], "unreadable": 0,
        "unreadable_paths": [], "rejected": 0, "rejected_paths": [],
    }
    assert rows(config) == queued  # untouched, updated_at included


def test_enqueue_single_files_and_a_pattern(
    pipeline: Invoke, config: PipelineConfig, tree: Path
) -> None:
    result = pipeline("enqueue", tree / "top.txt", tree / "other", "--pattern", "*.txt")
    assert result.exit_code == 0, result.output
    # top.txt given by name; under other/: a.txt and deep/c.txt, not b.md.
    assert result.stdout == "3 input(s) queued, 0 already there\n"
    assert [r["path"] for r in rows(config)] == [
        str(tree / "other/a.txt"),
        str(tree / "other/deep/c.txt"),
        str(tree / "top.txt"),
    ]
    for row in rows(config):
        assert row["output_path"] == str(mirrored_json(config, Path(row["path"])))

    flat = pipeline("enqueue", tree / "notes", "--no-recursive")
    assert flat.stdout == "1 input(s) queued, 0 already there\n"
    assert rows(config)[-1]["path"] == str(tree / "notes/a.txt")


def test_enqueue_counts_a_file_found_twice_once(
    pipeline: Invoke, config: PipelineConfig, tree: Path
) -> None:
    """notes/ is inside the tree: its two inputs are found twice, and a file named twice is
    one input: each is queued, and counted, once."""
    result = pipeline("enqueue", tree, tree / "notes", tree / "notes" / "a.txt")
    assert result.exit_code == 0, result.output
    assert result.stdout == "7 input(s) queued, 0 already there\n"
    assert len(rows(config)) == 7
    # In a second command they are there already, each once.
    again = pipeline("enqueue", tree / "notes" / "a.txt", tree / "notes" / "a.txt")
    assert again.stdout == "0 input(s) queued, 1 already there\n"


@pytest.mark.parametrize("how", ["files-in-one-command", "patterns-in-two-commands"])
def test_inputs_whose_stems_clash_get_their_own_json(
    pipeline: Invoke, config: PipelineConfig, tmp_path: Path, how: str
) -> None:
    """a.txt and a.md in one folder: each keeps its own JSON file (discovery promises
    a.txt_processed.json and a.md_processed.json), however they were queued."""
    paths = write_files(tmp_path / "in", {"a.txt": "from txt\n", "a.md": "from md\nmore\n"})
    if how == "files-in-one-command":
        assert pipeline("enqueue", paths["a.txt"], paths["a.md"]).exit_code == 0
    else:
        assert pipeline("enqueue", tmp_path / "in", "--pattern", "*.md").exit_code == 0
        assert pipeline("enqueue", tmp_path / "in", "--pattern", "*.txt").exit_code == 0
    queued = rows(config)
    assert len(queued) == 2
    assert queued[0]["output_path"] != queued[1]["output_path"]

    drained = pipeline("drain-db", "--workers", "0")
    assert drained.exit_code == 0, drained.output
    for row in rows(config):
        document = json.loads(Path(row["output_path"]).read_text(encoding="utf-8"))
        assert document["source_path"] == row["path"]


def test_enqueue_a_missing_path_is_a_usage_error(
    pipeline: Invoke, config: PipelineConfig, tree: Path
) -> None:
    missing = tree / "nope.txt"
    result = pipeline("enqueue", tree, missing)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        f"Error: Invalid value for 'PATH...': {missing}: no such file or directory"
    )
    # Checked before anything is queued: the database was not even created.
    assert not config.db_path.exists()


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_enqueue_refuses_a_file_as_the_output_folder(
    cli_runner: CliInvoke, config: PipelineConfig, tree: Path, tmp_path: Path, where: str
) -> None:
    """The queued inputs' JSON paths are fixed at enqueue: under a file, every one of them
    would fail in drain-db. One line, exit 2, nothing queued."""
    afile = tmp_path / "afile"
    afile.write_text("kept\n")
    out = afile if where == "a file" else afile / "out"
    problem = "a file, not a directory" if where == "a file" else (
        f"cannot be created: {afile} is not a directory"
    )

    result = cli_runner("--db-path", config.db_path, "--output-dir", out, "enqueue", tree)

    assert result.exit_code == 2, result.output
    assert (result.stdout, result.stderr) == ("", f"Error: {out}: {problem} (check --output-dir)\n")
    assert not config.db_path.exists()
    assert afile.read_text() == "kept\n"


def test_drain_db_writes_where_enqueue_put_the_json_not_in_its_own_output_dir(
    cli_runner: CliInvoke, config: PipelineConfig, tree: Path, tmp_path: Path
) -> None:
    """A queued input's JSON path is fixed when it is queued: drain-db's own --output-dir
    is neither used nor checked (a drain from cron in a folder it may not write, or with
    the default ./data/output, is not refused for a folder it does not use)."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    base: list[str | Path] = ["--log-level", "OFF", "--db-path", config.db_path]
    assert cli_runner(*base, "--output-dir", config.output_dir, "enqueue", tree).exit_code == 0

    result = cli_runner(*base, "--output-dir", afile, "drain-db", "--workers", "0", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["succeeded"] == len(TREE)
    for row in rows(config, "status = 'done'"):
        assert Path(row["output_path"]).is_file()
        assert Path(row["output_path"]).is_relative_to(config.output_dir)
    assert afile.read_text() == "not a folder\n"


def test_enqueue_after_draining_queues_only_changed_or_forced_inputs(
    pipeline: Invoke, config: PipelineConfig, tree: Path
) -> None:
    assert pipeline("enqueue", tree).exit_code == 0
    drained = pipeline("drain-db", "--workers", "0", "--json")
    assert drained.exit_code == 0, drained.output
    total_records = sum(count_records(text) for text in TREE.values())
    assert_summary(
        summary_of(drained),
        total=7,
        succeeded=7,
        failed=0,
        skipped=0,
        pending=0,
        records=total_records,
        failures=[],
    )
    # Every JSON file is where the output_path column says, and holds its input's records.
    for row in rows(config):
        assert row["status"] == "done"
        document = json.loads(Path(row["output_path"]).read_text(encoding="utf-8"))
        assert document["source_path"] == row["path"]
        relative = str(Path(row["path"]).relative_to(tree))
        assert document["record_count"] == count_records(TREE[relative])
        assert row["records_written"] == count_records(TREE[relative])

    unchanged = pipeline("enqueue", tree)
    assert unchanged.stdout == "0 input(s) queued, 7 already there\n"

    # Touched (new mtime) but the same bytes: its stored sha256 says unchanged.
    touched = tree / "top.txt"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert pipeline("enqueue", tree).stdout == "0 input(s) queued, 7 already there\n"

    changed = tree / "other/a.txt"
    changed.write_text("four\nand a new line\n", encoding="utf-8")
    result = pipeline("enqueue", tree)
    assert result.stdout == "1 input(s) queued, 6 already there\n"
    state = by_path(config)
    assert state[str(changed)]["status"] == "pending"
    assert state[str(changed)]["attempts"] == 0
    assert state[str(changed)]["size"] == changed.stat().st_size
    assert [r["status"] for r in state.values()].count("done") == 6

    # --force queues the done ones; the pending one is already there.
    forced = pipeline("enqueue", tree, "--force")
    assert forced.stdout == "6 input(s) queued, 1 already there\n"
    assert [r["status"] for r in rows(config)] == ["pending"] * 7

    again = pipeline("drain-db", "--workers", "0", "--json")
    assert again.exit_code == 0, again.output
    # The changed file is processed again; the forced, unchanged ones find their content
    # already stored and write nothing.
    assert_summary(
        summary_of(again), total=7, succeeded=1, failed=0, skipped=6, pending=0, records=2
    )
    outcomes = {r["path"]: r["outcome"] for r in rows(config)}
    assert outcomes.pop(str(changed)) == "processed"
    assert set(outcomes.values()) == {"unchanged"}
    # One batch per path: the changed file's new content replaced its earlier batch.
    assert db_counts(config.db_path) == {
        "pipeline_inputs": 7,
        "processing_batches": 7,
        "processed_records": total_records - count_records(TREE["other/a.txt"]) + 2,
    }
    document = json.loads(Path(by_path(config)[str(changed)]["output_path"]).read_text())
    assert [r["content"] for r in document["records"]] == ["four", "and a new line"]

    # drain-db --force replaces the stored batches of what it runs, as run-parallel --force.
    before = {row["path"]: row["batch_id"] for row in rows(config)}
    assert pipeline("enqueue", tree, "--force").stdout == "7 input(s) queued, 0 already there\n"
    forced_drain = pipeline("drain-db", "--workers", "0", "--force", "--json")
    assert forced_drain.exit_code == 0, forced_drain.output
    assert (summary_of(forced_drain)["succeeded"], summary_of(forced_drain)["skipped"]) == (7, 0)
    after = {row["path"]: row["batch_id"] for row in rows(config)}
    assert all(after[path] != before[path] for path in before)  # new batches, replacing
    assert db_counts(config.db_path)["processing_batches"] == 7


class ChangedAfterFound(JobA):
    """Job A on a file that changes after the run found (or queued) it and before job A
    reads it, as a log that is being appended to does."""

    def validate_input(self, input_data: Any) -> Any:
        path = Path(input_data["path"])
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("appended after it was found\n")
        found = path.stat()
        os.utime(path, ns=(found.st_atime_ns, found.st_mtime_ns + 7 * 10**9))
        return super().validate_input(input_data)


@pytest.mark.parametrize("source", ["run-parallel", "drain-db"])
def test_the_ledger_records_the_version_that_was_read(
    config: PipelineConfig, tmp_path: Path, source: str
) -> None:
    from prefect_pipeline.pipeline.parallel import run_parallel_from_files

    path = write_files(tmp_path / "inputs", {"log.txt": "first\n"})["log.txt"]
    found = path.stat()
    changing = (
        PipelineDefinition().add_job("A", ChangedAfterFound).add_job("B", JobB).add_job("C", JobC)
    )
    if source == "drain-db":
        queue_files(config, path)
        summary = run_parallel_from_database(config, definition=changing, workers=0)
    else:
        summary = run_parallel_from_files(path.parent, config, definition=changing, workers=0)
    assert (summary.succeeded, summary.records) == (1, 2)

    read = path.stat()
    [row] = rows(config)
    assert (row["size"], row["mtime_ns"]) == (read.st_size, read.st_mtime_ns)
    assert (row["size"], row["mtime_ns"]) != (found.st_size, found.st_mtime_ns)
    # So the next run knows it has this version already, without reading it again.
    again = run_parallel_from_files(path.parent, config, workers=0)
    assert again.skipped_inputs == [{"input": str(path), "reason": "unchanged since its last run"}]
    assert db_counts(config.db_path)["processed_records"] == 2


class SlowWrite(JobB):
    """Job B whose writing takes 200 s on the run's clock (a large input). Before it writes,
    it notes the run's inputs whose committed lease has run out (another command may take
    them then)."""

    clock: ClassVar[Any] = None
    lapsed: ClassVar[list[str]] = []

    def single_job(self, validated: Any) -> Any:
        now = iso(self.clock.now())
        with closing(sqlite3.connect(self.config.db_path)) as connection:
            leases = connection.execute(
                "SELECT path, lease_expires_at FROM pipeline_inputs WHERE status = 'processing'"
            ).fetchall()
        self.lapsed.extend(path for path, lease in leases if lease < now)
        self.clock.advance(200)
        return super().single_job(validated)


def test_long_writes_do_not_let_the_runs_other_leases_run_out(
    config: PipelineConfig, tmp_path: Path
) -> None:
    from prefect_pipeline.pipeline.parallel import run_parallel_from_files

    paths = write_files(tmp_path / "inputs", {f"{n}.txt": f"{n}\n" for n in range(4)})
    SlowWrite.clock = clock = ManualClock()
    SlowWrite.lapsed = []
    definition = PipelineDefinition().add_job("A", JobA).add_job("B", SlowWrite).add_job("C", JobC)

    # Three groups of one claimed at once, each taking 200 s to write, leases of 300 s.
    summary = run_parallel_from_files(
        tmp_path / "inputs",
        config,
        definition=definition,
        workers=0,
        first_group_files=1,
        max_group_files=1,
        in_flight_per_worker=3,
        lease_seconds=300,
        clock=clock,
    )

    assert summary.succeeded == len(paths)
    assert SlowWrite.lapsed == []


def test_inputs_drained_from_the_queue_count_as_done_for_run_parallel(
    pipeline: Invoke, config: PipelineConfig, tree: Path
) -> None:
    """run-parallel skips an input whose last run ended done with the same size, mtime and
    job range; an input done by drain-db ran the same jobs (A..C) and must be skipped."""
    assert pipeline("enqueue", tree).exit_code == 0
    assert pipeline("drain-db", "--workers", "0").exit_code == 0
    before = rows(config)
    json_mtimes = {r["output_path"]: Path(r["output_path"]).stat().st_mtime_ns for r in before}

    result = pipeline("run-parallel", tree, "--workers", "0", "--json")
    assert result.exit_code == 0, result.output
    summary = summary_of(result)
    assert_summary(summary, total=7, succeeded=0, failed=0, skipped=7, records=0)
    assert summary["skipped_inputs"] == [
        {"input": str(tree / p), "reason": "unchanged since its last run"} for p in TREE_ORDER
    ]
    # Not run again: same run, same attempts, JSON files not rewritten.
    assert [(r["run_id"], r["attempts"]) for r in rows(config)] == [
        (r["run_id"], r["attempts"]) for r in before
    ]
    assert {p: Path(p).stat().st_mtime_ns for p in json_mtimes} == json_mtimes


# drain-db and status ------------------------------------------------------------------------


def test_drain_with_a_limit_then_status_then_the_rest(
    pipeline: Invoke, config: PipelineConfig, tree: Path
) -> None:
    assert pipeline("enqueue", tree).exit_code == 0
    records_of = {str(tree / p): count_records(TREE[p]) for p in TREE}
    order = [str(tree / p) for p in TREE_ORDER]

    first = pipeline("drain-db", "--workers", "0", "--limit", "3", "--json")
    assert first.exit_code == 0, first.output
    first_records = sum(records_of[p] for p in order[:3])
    first_summary = summary_of(first)
    assert_summary(
        first_summary,
        total=3,
        succeeded=3,
        failed=0,
        skipped=0,
        pending=0,
        records=first_records,
        failures=[],
        skipped_inputs=[],
    )
    # The queue is taken in id order: the first three are done, the rest untouched.
    assert [(r["path"], r["status"], r["attempts"]) for r in rows(config)] == [
        *((p, "done", 1) for p in order[:3]),
        *((p, "pending", 0) for p in order[3:]),
    ]
    assert {r["run_id"] for r in rows(config, "status = 'done'")} == {first_summary["run_id"]}
    assert db_counts(config.db_path) == {
        "pipeline_inputs": 7,
        "processing_batches": 3,
        "processed_records": first_records,
    }
    for row in rows(config, "status = 'done'"):
        assert Path(row["output_path"]).is_file()
    for row in rows(config, "status = 'pending'"):
        assert not Path(row["output_path"]).exists()

    status = pipeline("status", "--json")
    assert status.exit_code == 0, status.output
    fourth = rows(config, "id = 4")[0]
    first_done = rows(config, "id = 1")[0]
    reported = json.loads(status.stdout)
    last_run = reported.pop("last_run")
    assert reported == {
        "inputs": {"pending": 4, "processing": 0, "done": 3, "failed": 0, "total": 7, "stale": 0},
        "batches": {"pending": 0, "finalized": 3, "total": 3, "outside_queue": 0},
        "records": first_records,
        "oldest_pending": {"id": 4, "path": order[3], "queued_at": fourth["created_at"]},
        "last_errors": [],
    }
    # The last run is the drain's, with its Prefect flow run (recorded on its inputs).
    assert last_run["run_id"] == first_done["run_id"] == first_summary["run_id"]
    assert last_run["flow_run_id"] == first_done["flow_run_id"] == first_summary["flow_run_id"]
    assert last_run["flow_run_url"] == first_summary["flow_run_url"]
    assert first_summary["flow_run_url"].endswith(f"/runs/flow-run/{last_run['flow_run_id']}")
    before = SYSTEM_CLOCK.now()
    text = pipeline("status")

    def expected(now: datetime) -> str:  # its times local, dated when not today
        return (
            "inputs:  4 pending, 0 processing (0 stale: lease expired or command gone), 3 done,"
            " 0 failed\n"
            f"batches: 0 pending, 3 finalized; {first_records} record(s)\n"
            f"oldest pending: #4 {order[3]} (queued {local_time(fourth['created_at'], now)})\n"
            f"last run: {last_run['flow_run_url']} ({local_time(last_run['at'], now)})\n"
        )

    assert text.exit_code == 0, text.output
    assert text.stdout in {expected(before), expected(SYSTEM_CLOCK.now())}  # midnight between
    # When the run settled its last input.
    assert last_run["at"] == max(r["finished_at"] for r in rows(config, "status = 'done'"))

    rest = pipeline("drain-db", "--workers", "0", "--json")
    assert rest.exit_code == 0, rest.output
    rest_summary = summary_of(rest)
    total_records = sum(records_of.values())
    assert_summary(
        rest_summary,
        total=4,
        succeeded=4,
        failed=0,
        skipped=0,
        pending=0,
        records=total_records - first_records,
        failures=[],
    )
    assert rest_summary["run_id"] != first_summary["run_id"]

    # The summaries agree with the database, and the database with an independent count.
    counts = db_counts(config.db_path)
    assert counts == {
        "pipeline_inputs": 7,
        "processing_batches": 7,
        "processed_records": total_records,
    }
    assert first_summary["succeeded"] + rest_summary["succeeded"] == counts["processing_batches"]
    assert first_summary["records"] + rest_summary["records"] == counts["processed_records"]
    assert [r["status"] for r in rows(config)] == ["done"] * 7
    for row in rows(config):
        batch = query(
            config.db_path, "SELECT * FROM processing_batches WHERE id = ?", (row["batch_id"],)
        )[0]
        assert batch["source_path"] == row["path"]
        assert batch["status"] == "finalized"
        assert batch["record_count"] == records_of[row["path"]]
        assert batch["output_path"] == row["output_path"]
    assert (
        query(config.db_path, "SELECT count(*) FROM processed_records WHERE status != 'finalized'")[
            0
        ][0]
        == 0
    )
    finished = json.loads(pipeline("status", "--json").stdout)
    assert finished["oldest_pending"] is None
    # The last run is now the second drain; a requeue of one of its inputs later does not
    # move its time (when it settled its last input), as if it had run then.
    assert finished["last_run"]["run_id"] == rest_summary["run_id"]
    assert pipeline("requeue", "7", "--force").exit_code == 0
    assert json.loads(pipeline("status", "--json").stdout)["last_run"] == finished["last_run"]
    assert pipeline("drain-db", "--workers", "0").exit_code == 0  # done again, as before

    # Nothing left: a drain that finds an empty queue succeeds with nothing to do.
    empty = pipeline("drain-db", "--workers", "0", "--json")
    assert empty.exit_code == 0, empty.output
    assert_summary(summary_of(empty), total=0, succeeded=0, failed=0, records=0)


def test_status_of_an_empty_database(pipeline: Invoke, config: PipelineConfig) -> None:
    sqlite_store(config.db_path)  # created, nothing queued (a missing one is refused)
    result = pipeline("status", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "inputs": {"pending": 0, "processing": 0, "done": 0, "failed": 0, "total": 0, "stale": 0},
        "batches": {"pending": 0, "finalized": 0, "total": 0, "outside_queue": 0},
        "records": 0,
        "last_run": None,
        "oldest_pending": None,
        "last_errors": [],
    }


# Bad inputs -----------------------------------------------------------------------------------


def test_bad_inputs_fail_at_once_without_stopping_the_drain(
    pipeline: Invoke, config: PipelineConfig, tmp_path: Path
) -> None:
    root = tmp_path / "bad"
    paths = write_files(
        root,
        {
            "good1.txt": "g1\ng2\n",
            "latin1.txt": b"ok\ncaf\xe9\n",
            "missing.txt": "here when queued\n",
            "nul.txt": b"abc\ndef\x00ghi",
            "zgood2.txt": "z1\n",
        },
    )
    assert pipeline("enqueue", root).stdout == "5 input(s) queued, 0 already there\n"
    paths["missing.txt"].unlink()

    started = time.monotonic()
    # The default retry delay is 5 s: input errors must not wait for it.
    result = pipeline("drain-db", "--workers", "0", "--json")
    assert time.monotonic() - started < 5
    assert result.exit_code == 1, result.output
    assert result.stderr == ""
    summary = summary_of(result)
    missing, latin1, nul = (str(paths[n]) for n in ("missing.txt", "latin1.txt", "nul.txt"))
    assert_summary(summary, total=5, succeeded=2, failed=3, skipped=0, pending=0, records=3)
    assert summary["failures"] == [
        {"input": latin1, "job": "A", "error": f"{latin1}: invalid UTF-8 at byte offset 6"},
        {"input": missing, "job": "A", "error": f"{missing}: no such file"},
        {"input": nul, "job": "A", "error": f"{nul}: binary file (NUL byte at offset 7)"},
    ]
    state = by_path(config)
    for path in (missing, latin1, nul):
        row = state[path]
        assert (row["status"], row["attempts"], row["last_job"]) == ("failed", 1, "A")
        assert row["not_before"] is None and row["claim_token"] is None
        assert row["finished_at"] is not None
        assert not Path(row["output_path"]).exists()
    for name in ("good1.txt", "zgood2.txt"):
        assert state[str(paths[name])]["status"] == "done"
    assert db_counts(config.db_path) == {
        "pipeline_inputs": 5,
        "processing_batches": 2,
        "processed_records": 3,
    }

    # status lists the last errors, the latest first (they were recorded in id order).
    status = json.loads(pipeline("status", "--json").stdout)
    assert status["inputs"] == {
        "pending": 0,
        "processing": 0,
        "done": 2,
        "failed": 3,
        "total": 5,
        "stale": 0,
    }
    errors = {f["input"]: f["error"] for f in summary["failures"]}
    assert [
        (e["id"], e["path"], e["status"], e["job"], e["error"]) for e in status["last_errors"]
    ] == [
        (4, nul, "failed", "A", errors[nul]),
        (3, missing, "failed", "A", errors[missing]),
        (2, latin1, "failed", "A", errors[latin1]),
    ]
    text = pipeline("status").stdout.splitlines()
    assert text[2].startswith("last run: ")
    # Each line names its input once: the error's own "PATH: " is left out.
    assert text[3:] == [
        f"error: #4 {nul} (failed, job A): {errors[nul].removeprefix(f'{nul}: ')}",
        f"error: #3 {missing} (failed, job A): {errors[missing].removeprefix(f'{missing}: ')}",
        f"error: #2 {latin1} (failed, job A): {errors[latin1].removeprefix(f'{latin1}: ')}",
    ]
    assert all(errors[path].startswith(f"{path}: ") for path in (nul, missing, latin1))

    requeued = pipeline("requeue", "--failed")
    assert requeued.exit_code == 0, requeued.output
    assert requeued.stdout == "3 input(s) requeued\n"
    for path in (missing, latin1, nul):
        row = by_path(config)[path]
        assert row["status"] == "pending"
        assert row["attempts"] == 0
        assert row["claim_token"] is None
        assert row["lease_expires_at"] is None
        assert row["not_before"] is None
        # When its last run settled it, kept: ``status`` dates that run by it.
        assert row["finished_at"] is not None
    assert pipeline("requeue", "--failed").stdout == "0 input(s) requeued\n"

    paths["latin1.txt"].write_text("ok\ncafé\n", encoding="utf-8")
    again = pipeline("drain-db", "--workers", "0")
    assert again.exit_code == 1, again.output
    assert again.stdout.splitlines()[0] == (
        "1 succeeded, 2 failed, 0 skipped (of 3 input(s)); 2 record(s) written"
    )
    assert again.stdout.splitlines()[2].startswith("Prefect flow run: ")
    assert again.stdout.splitlines()[3:] == [
        f"FAILED {missing} (job A): no such file",
        f"FAILED {nul} (job A): binary file (NUL byte at offset 7)",
    ]
    state = by_path(config)
    assert (state[latin1]["status"], state[latin1]["attempts"]) == ("done", 1)
    assert state[latin1]["last_error"] is None
    assert (state[missing]["status"], state[missing]["attempts"]) == ("failed", 1)
    assert (state[nul]["status"], state[nul]["attempts"]) == ("failed", 1)
    stored = [
        r[0]
        for r in query(
            config.db_path,
            "SELECT r.content FROM processed_records r JOIN processing_batches b"
            " ON r.batch_id = b.id WHERE b.source_path = ? ORDER BY r.record_index",
            (latin1,),
        )
    ]
    assert stored == ["ok", "café"]


# Retries with backoff (Python API) ------------------------------------------------------------


class FlakyRead(BaseJob):
    """Job A's work, but raising ``OSError`` (a failure a retry may cure): on the first
    attempt for an input, or on every attempt for a file whose name starts with
    ``always``. Records what it was given and when."""

    name = "F"
    description = "Job A, failing transiently"
    uses_database = False
    takes = Kind.FILE

    calls: ClassVar[list[tuple[Any, float]]] = []
    lock: ClassVar[threading.Lock] = threading.Lock()
    #: Where calls read the time: the run's clock in tests that give one.
    clock: ClassVar[Any] = None

    def validate_input(self, input_data: Any) -> Any:
        now = self.clock.now().timestamp() if self.clock is not None else time.monotonic()
        with self.lock:
            self.calls.append((input_data, now))
        return JobA(self.config).validate_input(input_data)

    def single_job(self, validated: Any) -> Any:
        path, _ = validated
        marker = path.parent.parent / "markers" / path.name
        if path.name.startswith("always") or not marker.exists():
            marker.parent.mkdir(exist_ok=True)
            marker.touch()
            raise OSError(f"transient failure reading {path.name}")
        return JobA(self.config).single_job(validated)


@pytest.fixture
def flaky_definition() -> Iterator[PipelineDefinition]:
    FlakyRead.calls.clear()
    yield flaky_pipeline()
    FlakyRead.clock = None


def flaky_pipeline() -> PipelineDefinition:
    """F -> B -> C, for ``pipeline --definition tests.test_queue:flaky_pipeline``."""
    return PipelineDefinition().add_job("F", FlakyRead).add_job("B", JobB).add_job("C", JobC)


def queue_files(config: PipelineConfig, *paths: Path) -> None:
    result = enqueue_inputs(sqlite_store(config.db_path), given_files(paths, config.output_dir))
    assert (result.queued, result.already) == (len(paths), 0)


def test_a_transient_error_is_retried_after_a_delay(
    config: PipelineConfig, tmp_path: Path, flaky_definition: PipelineDefinition
) -> None:
    path = write_files(tmp_path / "inputs", {"flaky.txt": "r1\n\nr2\n"})["flaky.txt"]
    queue_files(config, path)

    clock = ManualClock()
    summary = run_parallel_from_database(
        config,
        definition=flaky_definition,
        workers=0,
        max_attempts=3,
        retry_base_seconds=5,
        clock=clock,
    )
    # The drain waited (on its clock) for the retry instead of ending with the input pending.
    assert sum(clock.slept) >= 5
    assert (summary.total, summary.succeeded, summary.failed, summary.pending) == (1, 1, 0, 0)
    assert summary.records == 2
    row = rows(config)[0]
    assert (row["status"], row["attempts"], row["last_job"]) == ("done", 2, "C")
    assert row["last_error"] is None and row["not_before"] is None
    assert row["records_written"] == 2
    # The first job, not a database job, is told where the input's JSON goes.
    assert [data for data, _ in FlakyRead.calls] == [
        {"path": str(path), "output_path": row["output_path"]},
    ] * 2
    assert json.loads(Path(row["output_path"]).read_text())["record_count"] == 2
    assert db_counts(config.db_path) == {
        "pipeline_inputs": 1,
        "processing_batches": 1,
        "processed_records": 2,
    }


def test_waiting_for_a_retry_does_not_count_towards_workers_after(
    config: PipelineConfig, tmp_path: Path, flaky_definition: PipelineDefinition
) -> None:
    """A drain that spends a minute waiting for its one input's retry has not worked a
    minute: its workers are for work, and with --workers-after 30 none is started."""
    path = write_files(tmp_path / "inputs", {"flaky.txt": "r1\n"})["flaky.txt"]
    queue_files(config, path)

    clock = ManualClock()
    summary = run_parallel_from_database(
        config,
        definition=flaky_definition,
        workers=1,
        workers_after_s=30,
        max_attempts=2,
        retry_base_seconds=60,
        clock=clock,
    )
    assert sum(clock.slept) >= 60  # on the run's clock, past --workers-after
    assert (summary.succeeded, summary.failed, summary.workers_started) == (1, 0, 0)
    assert rows(config)[0]["attempts"] == 2


def test_an_input_that_always_fails_stops_after_max_attempts(
    config: PipelineConfig, tmp_path: Path, flaky_definition: PipelineDefinition
) -> None:
    paths = write_files(tmp_path / "inputs", {"always.txt": "a\n", "flaky.txt": "f\n"})
    queue_files(config, paths["always.txt"], paths["flaky.txt"])

    clock = FlakyRead.clock = ManualClock()
    summary = run_parallel_from_database(
        config,
        definition=flaky_definition,
        workers=0,
        max_attempts=3,
        retry_base_seconds=5,
        clock=clock,
    )
    always = str(paths["always.txt"])
    error = f"{always}: OSError: transient failure reading always.txt"
    assert (summary.total, summary.succeeded, summary.failed, summary.pending) == (2, 1, 1, 0)
    assert summary.failures == [{"input": always, "job": "F", "error": error}]
    state = by_path(config)
    assert (state[always]["status"], state[always]["attempts"]) == ("failed", 3)
    assert (state[always]["last_job"], state[always]["last_error"]) == ("F", error)
    assert state[str(paths["flaky.txt"])]["status"] == "done"
    assert state[str(paths["flaky.txt"])]["attempts"] == 2
    # Exactly max_attempts tries, each delay doubling the one before (5 s, then 10 s).
    times = [t for data, t in FlakyRead.calls if data["path"] == always]
    assert len(times) == 3
    assert times[1] - times[0] >= 5
    assert times[2] - times[1] >= 10
    assert db_counts(config.db_path) == {
        "pipeline_inputs": 2,
        "processing_batches": 1,
        "processed_records": 1,
    }


def test_drain_db_waits_for_a_retry_scheduled_by_an_earlier_run(
    pipeline: Invoke, config: PipelineConfig, tmp_path: Path
) -> None:
    """--limit 1 ends a drain with its input waiting for a retry (exit 1: not done); the
    next drain-db runs it when it falls due, as it does with its own retries."""
    paths = write_files(tmp_path / "inputs", {"always.txt": "a\n", "flaky.txt": "f\n"})
    queue_files(config, paths["always.txt"], paths["flaky.txt"])
    always, flaky = str(paths["always.txt"]), str(paths["flaky.txt"])
    error = f"{always}: OSError: transient failure reading always.txt"
    drain = (
        "--definition",
        "tests.test_queue:flaky_pipeline",
        "drain-db",
        "--workers",
        "0",
        "--max-attempts",
        "2",
        "--json",
    )

    first = pipeline(*drain, "--limit", "1", "--retry-delay", "5")
    assert first.exit_code == 1, first.output
    assert_summary(summary_of(first), total=0, succeeded=0, failed=0, pending=1, records=0)
    row = by_path(config)[always]
    assert (row["status"], row["attempts"], row["last_job"], row["last_error"]) == (
        "pending",
        1,
        "F",
        error,
    )
    assert row["not_before"] > utcnow()
    assert (by_path(config)[flaky]["status"], by_path(config)[flaky]["attempts"]) == ("pending", 0)

    second = pipeline(*drain, "--retry-delay", "0.2")
    assert second.exit_code == 1, second.output
    summary = summary_of(second)
    assert_summary(summary, total=2, succeeded=1, failed=1, pending=0, records=1)
    assert summary["failures"] == [{"input": always, "job": "F", "error": error}]
    state = by_path(config)
    assert (state[always]["status"], state[always]["attempts"]) == ("failed", 2)
    assert (state[flaky]["status"], state[flaky]["attempts"]) == ("done", 2)


# requeue --------------------------------------------------------------------------------------


def test_requeue_stale_and_by_id(pipeline: Invoke, config: PipelineConfig, tmp_path: Path) -> None:
    paths = write_files(tmp_path / "inputs", {"a.txt": "a\n", "b.txt": "b\n", "c.txt": "c\n"})
    assert pipeline("enqueue", tmp_path / "inputs").exit_code == 0
    drained = pipeline("drain-db", "--workers", "0", "--limit", "1")
    assert drained.exit_code == 0, drained.output
    assert [r["status"] for r in rows(config)] == ["done", "pending", "pending"]

    # Input 2: claimed by a command that died (lease expired); input 3: held by a live one.
    past, future = iso_in(SYSTEM_CLOCK, -60), iso_in(SYSTEM_CLOCK, 600)
    assert (
        execute(
            config,
            "UPDATE pipeline_inputs SET status = 'processing', attempts = 1,"
            " claim_token = 'dead', run_id = 'dead', lease_expires_at = ? WHERE id = 2",
            (past,),
        )
        == 1
    )
    assert (
        execute(
            config,
            "UPDATE pipeline_inputs SET status = 'processing', attempts = 1,"
            " claim_token = 'alive', run_id = 'alive', lease_expires_at = ? WHERE id = 3",
            (future,),
        )
        == 1
    )
    status = pipeline("status")
    assert status.stdout.splitlines()[0] == (
        "inputs:  0 pending, 2 processing (1 stale: lease expired or command gone), 1 done,"
        " 0 failed"
    )

    stale = pipeline("requeue", "--stale")
    assert stale.exit_code == 0, stale.output
    assert stale.stdout == "1 input(s) requeued\n"
    row2, row3 = rows(config, "id IN (2, 3)")
    assert (row2["status"], row2["attempts"], row2["claim_token"], row2["lease_expires_at"]) == (
        "pending",
        0,
        None,
        None,
    )
    assert (row3["status"], row3["claim_token"], row3["lease_expires_at"]) == (
        "processing",
        "alive",
        future,
    )

    live = pipeline("requeue", "3")
    assert live.exit_code == 1
    assert live.stdout == "0 input(s) requeued\n"
    assert live.stderr == "not requeued: #3: being processed (its lease has not expired)\n"

    done = pipeline("requeue", "1")
    assert done.exit_code == 1
    assert done.stdout == "0 input(s) requeued\n"
    assert done.stderr == "not requeued: #1: done (use --force to run it again)\n"
    assert rows(config, "id = 1")[0]["status"] == "done"

    mixed = pipeline("requeue", "1", "2", "99", "--force")
    assert mixed.exit_code == 1
    assert mixed.stdout == "1 input(s) requeued\n"
    assert mixed.stderr == "not requeued: #2: already pending\nnot requeued: #99: no such input\n"
    row1 = rows(config, "id = 1")[0]
    assert (row1["status"], row1["attempts"]) == ("pending", 0)

    nothing = pipeline("requeue")
    assert nothing.exit_code == 2
    assert nothing.stderr.splitlines()[-1] == (
        "Error: say what to requeue: --failed, --stale or input IDs"
    )
    assert {p.read_text() for p in paths.values()} == {"a\n", "b\n", "c\n"}
    assert db_counts(config.db_path)["processing_batches"] == 1


# Claims and leases (Ledger) -------------------------------------------------------------------


@pytest.fixture
def queued_db(config: PipelineConfig, tmp_path: Path) -> Any:
    """A database with three queued inputs (the files exist but are never read)."""
    paths = write_files(tmp_path / "inputs", {f"{n}.txt": f"{n}\n" for n in "abc"})
    queue_files(config, *paths.values())
    return sqlite_store(config.db_path)


def test_a_claim_stops_at_the_byte_cap(config: PipelineConfig, tmp_path: Path) -> None:
    # Sizes 100, 300, 50, 500, 10: groups of big files stay small, one input at the least.
    sizes = {"a.txt": 100, "b.txt": 300, "c.txt": 50, "d.txt": 500, "e.txt": 10}
    paths = write_files(tmp_path / "inputs", {n: "x" * (k - 1) + "\n" for n, k in sizes.items()})
    queue_files(config, *paths.values())
    ledger = Ledger(sqlite_store(config.db_path), lease_seconds=300)

    claims = [ledger.claim_pending(10, max_attempts=3, max_bytes=350) for _ in range(4)]

    names = [[Path(c.path).name for c in claim] for claim in claims]
    assert names == [["a.txt", "b.txt"], ["c.txt", "d.txt"], ["e.txt"], []]


def test_claims_of_two_commands_never_overlap(config: PipelineConfig, queued_db: Any) -> None:
    first = Ledger(queued_db, lease_seconds=300)
    second = Ledger(queued_db, lease_seconds=300)
    mine = first.claim_pending(2, max_attempts=3)
    theirs = second.claim_pending(10, max_attempts=3)
    assert [c.input_id for c in mine] == [1, 2]
    assert [c.input_id for c in theirs] == [3]
    assert second.claim_pending(10, max_attempts=3) == []
    assert [(r["claim_token"], r["run_id"], r["attempts"]) for r in rows(config)] == [
        (first.token, first.run_id, 1),
        (first.token, first.run_id, 1),
        (second.token, second.run_id, 1),
    ]
    # Interrupted: the first command gives its inputs back, the attempt not counted.
    assert first.release() == 2
    assert [(r["status"], r["attempts"], r["claim_token"]) for r in rows(config)] == [
        ("pending", 0, None),
        ("pending", 0, None),
        ("processing", 1, second.token),
    ]


def test_a_claim_taken_over_after_its_lease_expired_is_rejected(
    config: PipelineConfig, queued_db: Any
) -> None:
    clock = ManualClock()
    slow = Ledger(queued_db, lease_seconds=60, clock=clock)
    claimed = slow.claim_pending(1, max_attempts=3)
    assert [(c.input_id, c.attempts) for c in claimed] == [(1, 1)]
    clock.advance(61)

    # Another command finds the lease expired and takes the input over.
    fast = Ledger(queued_db, lease_seconds=300, clock=clock)
    taken = fast.claim_pending(1, max_attempts=3)
    assert [(c.input_id, c.attempts) for c in taken] == [(1, 2)]
    before = rows(config, "id = 1")[0]
    assert (before["status"], before["claim_token"]) == ("processing", fast.token)

    # The slow command finishes its job: its writes and its status change are one
    # transaction, and the lost claim rolls both back.
    with (
        pytest.raises(ClaimLostError, match=r"^input 1: claim lost \(lease expired\)$"),
        queued_db.transaction(),
    ):
        queued_db.insert_batch(
            source_path=claimed[0].path,
            sha256="0" * 64,
            record_count=0,
            created_at=utcnow(),
            output_path=None,
        )
        slow.mark_done(
            [(1, Finished("C", batch_id=1, sha256="0" * 64, records_written=0, unchanged=False))]
        )
    assert rows(config, "id = 1")[0] == before
    assert db_counts(config.db_path) == {
        "pipeline_inputs": 3,
        "processing_batches": 0,
        "processed_records": 0,
    }
    # Nor can it fail the input, renew the lease, or give it back.
    assert slow.mark_failed(1, job="A", error="late", retry_in=None) is False
    slow.renew()
    assert slow.release() == 0
    assert rows(config, "id = 1")[0] == before

    # The command that holds the claim can finish it.
    with queued_db.transaction():
        fast.mark_done(
            [(1, Finished("C", batch_id=None, sha256=None, records_written=0, unchanged=False))]
        )
    after = rows(config, "id = 1")[0]
    assert (after["status"], after["attempts"], after["claim_token"]) == ("done", 2, None)


def test_an_expired_lease_on_the_last_attempt_fails_the_input(
    config: PipelineConfig, queued_db: Any
) -> None:
    clock = ManualClock()
    dead = Ledger(queued_db, lease_seconds=60, clock=clock)
    assert len(dead.claim_pending(1, max_attempts=1)) == 1
    clock.advance(61)
    other = Ledger(queued_db, lease_seconds=300, clock=clock)
    assert [c.input_id for c in other.claim_pending(1, max_attempts=1)] == [2]
    row = rows(config, "id = 1")[0]
    assert (row["status"], row["attempts"], row["claim_token"]) == ("failed", 1, None)
    assert row["last_error"] == (
        "lease expired on its last attempt (the command running it stopped or died)"
    )


def test_a_requeue_moves_neither_the_last_run_nor_its_time(
    pipeline: Invoke, config: PipelineConfig, tmp_path: Path
) -> None:
    """A run whose every input failed, then a later one that succeeded: requeueing the
    failed ones (or the later run's one) makes them pending, and ``status`` still shows the
    later run, dated when it settled its input; a claim clears what the requeue kept."""
    bad = write_files(tmp_path / "bad", {"b.bin": "\x00"})["b.bin"]
    good = write_files(tmp_path / "good", {"g.txt": "fine\n"})["g.txt"]
    failed = json.loads(pipeline("run-parallel", bad.parent, "--workers", "0", "--json").stdout)
    done = json.loads(pipeline("run-parallel", good.parent, "--workers", "0", "--json").stdout)
    assert (failed["failed"], done["succeeded"]) == (1, 1)
    last = json.loads(pipeline("status", "--json").stdout)["last_run"]
    assert last["run_id"] == done["run_id"]

    assert pipeline("requeue", "--failed").stdout == "1 input(s) requeued\n"
    assert json.loads(pipeline("status", "--json").stdout)["last_run"] == last
    [good_row] = rows(config, "path = ?", (str(good),))
    assert pipeline("requeue", str(good_row["id"]), "--force").exit_code == 0
    assert json.loads(pipeline("status", "--json").stdout)["last_run"] == last

    drained = json.loads(pipeline("drain-db", "--workers", "0", "--json").stdout)
    assert drained["total"] == 2
    assert json.loads(pipeline("status", "--json").stdout)["last_run"]["run_id"] == (
        drained["run_id"]
    )


def test_a_done_input_whose_batch_a_single_run_replaced_runs_again_and_is_finalized(
    pipeline: Invoke, config: PipelineConfig, tmp_path: Path
) -> None:
    """``run-parallel`` stored and finalized a file's batch; ``run FILE --stop-after B
    --force`` (or a run-all interrupted in job C) replaced it with a batch not finalized.
    The file is unchanged, but its recorded batch is gone: the next run-parallel runs it
    again, finds its content stored, and finalizes that batch, instead of skipping it."""
    path = write_files(tmp_path / "in", {"a.txt": "one\ntwo\n"})["a.txt"]
    first = json.loads(pipeline("run-parallel", path.parent, "--workers", "0", "--json").stdout)
    assert first["succeeded"] == 1
    replaced = pipeline("run", path, "--stop-after", "B", "--force")
    assert replaced.exit_code == 0, replaced.output
    [(batch, status)] = query(config.db_path, "SELECT id, status FROM processing_batches")
    assert status == "pending" and rows(config)[0]["batch_id"] != batch

    again = json.loads(pipeline("run-parallel", path.parent, "--workers", "0", "--json").stdout)

    assert again["skipped_inputs"] == [
        {"input": str(path), "reason": f"content already stored (batch {batch})"}
    ]
    [(kept, now)] = query(config.db_path, "SELECT id, status FROM processing_batches")
    assert (kept, now) == (batch, "finalized")
    assert rows(config)[0]["batch_id"] == batch
    # And then it is unchanged since its last run, its batch there: skipped as such.
    third = json.loads(pipeline("run-parallel", path.parent, "--workers", "0", "--json").stdout)
    assert third["skipped_inputs"] == [
        {"input": str(path), "reason": "unchanged since its last run"}
    ]


def test_a_done_input_whose_batch_other_content_replaced_is_still_skipped(
    pipeline: Invoke, config: PipelineConfig, tmp_path: Path
) -> None:
    """Its batch is gone, but because a run stored other content for the path on purpose
    (finalized): the unchanged input is skipped, not run again to write its old content
    back (two JSON files of one source, run from B, swapped the stored content forever)."""
    path = write_files(tmp_path / "in", {"a.txt": "one\ntwo\n"})["a.txt"]
    stat = path.stat()
    assert json.loads(
        pipeline("run-parallel", path.parent, "--workers", "0", "--json").stdout
    )["succeeded"] == 1
    path.write_text("uno\ndos\n")  # the same size
    assert pipeline("run-all", path).exit_code == 0
    path.write_text("one\ntwo\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as the ledger recorded it
    [(other, status)] = query(config.db_path, "SELECT id, status FROM processing_batches")
    assert status == "finalized"

    again = json.loads(pipeline("run-parallel", path.parent, "--workers", "0", "--json").stdout)

    assert again["skipped_inputs"] == [
        {"input": str(path), "reason": "unchanged since its last run"}
    ]
    assert [tuple(r) for r in query(config.db_path, "SELECT id FROM processing_batches")] == [
        (other,)
    ]


def test_enqueue_queues_a_done_input_whose_batch_a_single_run_replaced_and_drain_finalizes_it(
    pipeline: Invoke, config: PipelineConfig, tmp_path: Path
) -> None:
    """The queue's side of the same case: ``enqueue`` does not count it "already there",
    and ``drain-db`` finalizes the batch that waits."""
    path = write_files(tmp_path / "in", {"a.txt": "one\ntwo\n"})["a.txt"]
    assert pipeline("enqueue", path).stdout == "1 input(s) queued, 0 already there\n"
    assert pipeline("drain-db", "--workers", "0").exit_code == 0
    assert pipeline("run", path, "--stop-after", "B", "--force").exit_code == 0

    assert pipeline("enqueue", path).stdout == "1 input(s) queued, 0 already there\n"
    assert pipeline("drain-db", "--workers", "0").exit_code == 0

    [(batch, status)] = query(config.db_path, "SELECT id, status FROM processing_batches")
    assert (status, rows(config)[0]["batch_id"]) == ("finalized", batch)
    assert pipeline("enqueue", path).stdout == "0 input(s) queued, 1 already there\n"


def test_what_a_drain_would_take_is_what_status_counts_pending_or_stale(
    pipeline: Invoke, config: PipelineConfig, tmp_path: Path
) -> None:
    """``queued`` (a drain's display total, and what an interrupted drain did not reach)
    counts by the same rules as ``status``, without reading the rest of it."""
    from prefect_pipeline.database.owners import this_process
    from prefect_pipeline.database.queue import queued, status

    me = this_process()  # its pid with another start time: a command that is gone
    paths = write_files(tmp_path / "in", {f"{name}.txt": "x\n" for name in "abcdef"})
    assert pipeline("enqueue", tmp_path / "in").exit_code == 0
    a, b, c, d, e = (str(paths[f"{name}.txt"]) for name in "abcde")
    with closing(sqlite3.connect(config.db_path)) as connection, connection:
        set_to = "UPDATE pipeline_inputs SET status = ?, lease_expires_at = ? WHERE path = ?"
        connection.execute(set_to, ("processing", "2000-01-01T00:00:00+00:00", a))  # expired
        connection.execute(set_to, ("processing", "2999-01-01T00:00:00+00:00", b))  # live
        connection.execute(set_to, ("done", None, c))
        connection.execute(set_to, ("failed", None, d))
        connection.execute(  # live, but its command (of this host) is gone
            "UPDATE pipeline_inputs SET status = 'processing', claim_token = 't',"
            " lease_expires_at = '2999-01-01T00:00:00+00:00', owner_host = ?,"
            " owner_namespace = ?, owner_pid = ?, owner_started_at = 1.0 WHERE path = ?",
            (me.host, me.namespace, me.pid, e),
        )
    store = sqlite_store(config.db_path)

    inputs = status(store)["inputs"]
    assert (inputs["pending"], inputs["stale"]) == (1, 2)  # f; a and e
    assert queued(store) == 3
