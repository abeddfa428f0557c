"""Claims record their owner; a command takes over at once the claims of a process of its
host that is gone, and reports the claims of a live or remote one as held."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest

from prefect_pipeline.clock import iso, local_time
from prefect_pipeline.config import PipelineConfig
from prefect_pipeline.database import Store
from prefect_pipeline.database.ledger import Ledger
from prefect_pipeline.database.owners import Owner, is_gone, this_process
from prefect_pipeline.database.queue import enqueue, requeue
from prefect_pipeline.database.queue import status as queue_status
from prefect_pipeline.pipeline.discovery import given_files
from tests.conftest import CliInvoke, ManualClock, query, sqlite_store


@pytest.fixture
def live_process() -> Iterator[Owner]:
    """Another process of this host that stays alive for the test."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        started = psutil.Process(child.pid).create_time()
        yield replace(this_process(), pid=child.pid, started_at=started)
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def dead_process() -> Owner:
    """A process of this host that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(child.pid).create_time()
    child.wait()
    return replace(this_process(), pid=child.pid, started_at=started)


def test_a_process_is_gone_when_its_id_is_free_or_taken_by_a_later_one(
    live_process: Owner, dead_process: Owner
) -> None:
    assert not is_gone(this_process())
    assert not is_gone(live_process)
    assert is_gone(dead_process)
    # The same id started at another time: another program reused it.
    assert is_gone(replace(live_process, started_at=live_process.started_at - 3600))


def test_a_zombie_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    process = psutil.Process(child.pid)
    owner = replace(this_process(), pid=child.pid, started_at=process.create_time())
    deadline = time.monotonic() + 30
    while process.status() != psutil.STATUS_ZOMBIE:  # exited, not yet reaped by this process
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert is_gone(owner)
    child.wait()


def _files(tmp_path: Path, count: int) -> list[Path]:
    root = tmp_path / "inputs"
    root.mkdir()
    paths = []
    for number in range(count):
        path = root / f"f{number}.txt"
        path.write_text(f"line {number}\n")
        paths.append(path)
    return paths


def _found(config: PipelineConfig, paths: list[Path]) -> list:  # type: ignore[type-arg]
    return list(given_files(paths, config.output_dir))


def _queued(config: PipelineConfig, tmp_path: Path, count: int) -> Store:
    """The test's database with ``count`` new files queued."""
    store = sqlite_store(config.db_path)
    assert enqueue(store, _found(config, _files(tmp_path, count))).queued == count
    return store


def test_a_dead_owners_files_are_taken_over_at_once(
    config: PipelineConfig, tmp_path: Path, dead_process: Owner, live_process: Owner
) -> None:
    store = sqlite_store(config.db_path)
    clock = ManualClock()
    found = _found(config, _files(tmp_path, 4))
    dead = Ledger(store, lease_seconds=300, clock=clock, owner=dead_process)
    alive = Ledger(store, lease_seconds=300, clock=clock, owner=live_process)
    assert len(dead.register_and_claim(found[:2], start_job="A", stop_job="C").claimed) == 2
    assert len(alive.register_and_claim(found[2:], start_job="A", stop_job="C").claimed) == 2
    owners = query(config.db_path, "SELECT owner_pid, owner_host FROM pipeline_inputs ORDER BY id")
    assert [tuple(row) for row in owners] == [(dead_process.pid, dead_process.host)] * 2 + [
        (live_process.pid, live_process.host)
    ] * 2

    # A later command, long before the leases run out.
    clock.advance(1)
    mine = Ledger(store, lease_seconds=300, clock=clock)
    registration = mine.register_and_claim(found, start_job="A", stop_job="C")

    assert sorted(c.path for c in registration.claimed) == [f.path for f in found[:2]]
    assert [(h.path, h.owner) for h in registration.held] == [
        (f.path, live_process.describe()) for f in found[2:]
    ]
    until = {h.until for h in registration.held}
    assert until == set(
        row[0]
        for row in query(
            config.db_path, "SELECT lease_expires_at FROM pipeline_inputs WHERE id > 2"
        )
    )
    assert registration.skipped == []
    assert {
        row[0]
        for row in query(config.db_path, "SELECT owner_pid FROM pipeline_inputs WHERE id <= 2")
    } == {this_process().pid}


def test_a_remote_owners_claims_wait_for_their_lease(
    config: PipelineConfig, tmp_path: Path, dead_process: Owner
) -> None:
    """A process id means nothing on another host (or in another pid namespace): its claims
    are held until the lease runs out, even if no process here has that id."""
    store = _queued(config, tmp_path, 3)
    clock = ManualClock()
    elsewhere = [
        replace(dead_process, host="another-host"),
        replace(dead_process, namespace=f"{dead_process.namespace}-other"),
    ]
    for owner in elsewhere:
        other = Ledger(store, lease_seconds=60, clock=clock, owner=owner)
        assert len(other.claim_pending(1, max_attempts=3)) == 1

    mine = Ledger(store, lease_seconds=60, clock=clock)
    claimed = mine.claim_pending(10, max_attempts=3)
    assert [c.input_id for c in claimed] == [3]

    clock.advance(61)  # every lease ran out: taken over, the attempt counted
    later = Ledger(store, lease_seconds=60, clock=clock)
    claimed = later.claim_pending(10, max_attempts=3)
    assert [(c.input_id, c.attempts) for c in claimed] == [(1, 2), (2, 2), (3, 2)]


def test_a_drain_takes_a_dead_drainers_inputs_at_once_counting_the_attempt(
    config: PipelineConfig, tmp_path: Path, dead_process: Owner, live_process: Owner
) -> None:
    store = _queued(config, tmp_path, 4)
    clock = ManualClock()
    dead = Ledger(store, lease_seconds=300, clock=clock, owner=dead_process)
    alive = Ledger(store, lease_seconds=300, clock=clock, owner=live_process)
    assert [c.input_id for c in alive.claim_pending(1, max_attempts=3)] == [1]
    assert [c.input_id for c in dead.claim_pending(2, max_attempts=3)] == [2, 3]

    mine = Ledger(store, lease_seconds=300, clock=clock)
    claimed = mine.claim_pending(10, max_attempts=3)

    assert [(c.input_id, c.attempts) for c in claimed] == [(2, 2), (3, 2), (4, 1)]


def test_status_and_requeue_stale_see_a_dead_owner_at_once(
    config: PipelineConfig, tmp_path: Path, dead_process: Owner, live_process: Owner
) -> None:
    """Before the leases run out: a dead command of this host holds stale inputs; a live
    one, and one elsewhere (whose process cannot be seen), hold theirs."""
    store = _queued(config, tmp_path, 5)
    clock = ManualClock()
    # The dead one claims last: a claim by any other command of this host would take its
    # inputs over at once.
    holders = [live_process, replace(dead_process, host="far"), dead_process, dead_process]
    for owner in holders:
        ledger = Ledger(store, lease_seconds=300, clock=clock, owner=owner)
        assert len(ledger.claim_pending(1, max_attempts=3)) == 1
    clock.advance(1)

    report = queue_status(store, clock=clock)
    assert (report["inputs"]["processing"], report["inputs"]["stale"]) == (4, 2)
    assert query(config.db_path, "SELECT count(*) FROM pipeline_inputs WHERE"
                 " lease_expires_at < ?", (iso(clock.now()),))[0][0] == 0  # nothing written

    assert requeue(store, stale=True, clock=clock).requeued == 2
    rows = query(config.db_path, "SELECT id, status FROM pipeline_inputs ORDER BY id")
    assert [tuple(row) for row in rows] == [
        (1, "processing"), (2, "processing"), (3, "pending"), (4, "pending"), (5, "pending"),
    ]
    assert queue_status(store, clock=clock)["inputs"]["stale"] == 0


def test_status_counts_a_dead_owners_expired_claim_once(
    config: PipelineConfig, tmp_path: Path, dead_process: Owner
) -> None:
    store = _queued(config, tmp_path, 2)
    clock = ManualClock()
    dead = Ledger(store, lease_seconds=300, clock=clock, owner=dead_process)
    assert len(dead.claim_pending(1, max_attempts=3)) == 1
    clock.advance(200)
    assert len(dead.claim_pending(1, max_attempts=3)) == 1
    clock.advance(150)  # the first lease ran out, the second did not

    assert queue_status(store, clock=clock)["inputs"]["stale"] == 2


def test_requeue_by_id_takes_a_dead_owners_input_and_refuses_a_live_ones(
    config: PipelineConfig, tmp_path: Path, dead_process: Owner, live_process: Owner
) -> None:
    store = _queued(config, tmp_path, 2)
    clock = ManualClock()
    for owner in (live_process, dead_process):
        ledger = Ledger(store, lease_seconds=300, clock=clock, owner=owner)
        assert len(ledger.claim_pending(1, max_attempts=3)) == 1

    result = requeue(store, ids=[1, 2], clock=clock)

    assert result.requeued == 1
    assert result.refused == [(1, "being processed (its lease has not expired)")]
    rows = query(config.db_path, "SELECT id, status FROM pipeline_inputs ORDER BY id")
    assert [tuple(row) for row in rows] == [(1, "processing"), (2, "pending")]


def test_a_dead_owner_on_its_last_attempt_fails_its_input(
    config: PipelineConfig, tmp_path: Path, dead_process: Owner
) -> None:
    store = _queued(config, tmp_path, 1)
    clock = ManualClock()
    dead = Ledger(store, lease_seconds=300, clock=clock, owner=dead_process)
    assert len(dead.claim_pending(1, max_attempts=1)) == 1

    assert Ledger(store, lease_seconds=300, clock=clock).claim_pending(5, max_attempts=1) == []
    [row] = query(config.db_path, "SELECT status, last_error FROM pipeline_inputs")
    assert tuple(row) == (
        "failed",
        "lease expired on its last attempt (the command running it stopped or died)",
    )


def test_run_parallel_reports_inputs_a_live_command_holds(
    cli_runner: CliInvoke, config: PipelineConfig, tmp_path: Path, live_process: Owner
) -> None:
    paths = _files(tmp_path, 3)
    store = sqlite_store(config.db_path)
    other = Ledger(store, lease_seconds=600, owner=live_process)
    assert (
        len(
            other.register_and_claim(_found(config, paths[:1]), start_job="A", stop_job="C").claimed
        )
        == 1
    )
    until = query(config.db_path, "SELECT lease_expires_at FROM pipeline_inputs")[0][0]
    base = [
        "--log-level",
        "OFF",
        "--db-path",
        str(config.db_path),
        "--output-dir",
        str(config.output_dir),
    ]

    result = cli_runner(*base, "run-parallel", tmp_path / "inputs", "--workers", "0", "--json")

    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert (summary["total"], summary["succeeded"], summary["skipped"], summary["held"]) == (
        3,
        2,
        0,
        1,
    )
    assert summary["held_inputs"] == [
        {"input": str(paths[0]), "owner": live_process.describe(), "until": until}
    ]

    before = datetime.now(UTC)
    text = cli_runner(*base, "run-parallel", tmp_path / "inputs", "--workers", "0")
    assert text.exit_code == 1, text.output
    assert text.stdout.splitlines()[0] == (
        "0 succeeded, 0 failed, 2 skipped, 1 held by another command (of 3 input(s)); "
        "0 record(s) written"
    )
    held = {  # the lease's end in local time, dated if midnight came in between
        f"1 input(s) held by {live_process.describe()} until {local_time(until, now)} (its"
        " lease, renewed while it runs): not run; run again once it has finished"
        for now in (before, datetime.now(UTC))
    }
    assert held & set(text.stdout.splitlines())


def test_a_lease_end_is_shown_in_local_time_to_the_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The held lines name when a lease runs out as the terminal's reader reads clocks:
    local time with its zone, the date only when it is not today (by today's offset, which
    a change to or from summer time makes another than the lease's)."""
    stored = "2026-12-07T23:40:12.123456+00:00"
    same_day = datetime(2026, 12, 7, 23, 0, tzinfo=UTC)

    def in_zone(zone: str) -> None:  # POSIX zones: no time zone database needed
        monkeypatch.setenv("TZ", zone)
        time.tzset()

    try:
        in_zone("UTC0")
        assert local_time(stored, now=same_day) == "23:40:12 UTC"
        assert local_time(stored, now=same_day - timedelta(days=1)) == (
            "2026-12-07 23:40:12 UTC"
        )
        # Stored without a zone: UTC, as every stored timestamp is.
        assert local_time("2026-12-07T23:40:12", now=same_day) == "23:40:12 UTC"
        assert local_time("not a time") == "not a time"

        in_zone("CET-1")
        # An hour east, the lease ends after midnight: today there at 00:00 UTC+1, not
        # at 22:00 UTC+1 the day before.
        assert local_time(stored, now=same_day) == "00:40:12 CET"
        assert local_time(stored, now=same_day - timedelta(hours=2)) == "2026-12-08 00:40:12 CET"

        in_zone("CET-1CEST,M3.5.0,M10.5.0/3")  # Central Europe, with summer time
        # 00:30 CEST on 25 October, read at 23:30 CET that day, after the change.
        assert local_time("2026-10-24T22:30:00+00:00", now=datetime(
            2026, 10, 25, 22, 30, tzinfo=UTC
        )) == "00:30:00 CEST"
    finally:
        monkeypatch.undo()
        time.tzset()
