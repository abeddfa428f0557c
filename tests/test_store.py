"""The storage seam: what every backend must do, checked through ``Store`` alone.

Each test runs against every backend in ``BACKENDS``; a new backend adds itself there and
must pass the same tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from prefect_pipeline.clock import iso, iso_in
from prefect_pipeline.database.backends import open_store
from prefect_pipeline.database.ledger import CONFLICT_ATTEMPTS, Ledger
from prefect_pipeline.database.owners import this_process
from prefect_pipeline.database.store import Claim, Finished, Store
from prefect_pipeline.exceptions import ClaimLostError
from tests.conftest import ManualClock, sqlite_store

#: A statement and its parameters, for a psycopg connection of a test's.
Statement = tuple[str, tuple[Any, ...]]

BACKENDS = ["sqlite", "postgresql"]

NOW = "2026-01-01T00:00:00.000000+00:00"


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        yield sqlite_store(tmp_path / "store.db")
    else:
        yield open_store(request.getfixturevalue("postgres_url"), timeout=10)


def records_json(*contents: str) -> str:
    import json

    return json.dumps(
        [{"index": i, "line_number": i + 1, "content": c} for i, c in enumerate(contents)]
    )


def count(store: Store, table: str) -> int:
    return int(store.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def new_batch(store: Store, source: str = "/in/a.txt", sha: str = "a" * 64) -> int:
    return store.insert_batch(
        source_path=source, sha256=sha, record_count=2, created_at=NOW, output_path=None
    )


# Batches and records ----------------------------------------------------------------------


def test_a_batch_and_its_records(store: Store) -> None:
    with store.transaction():
        batch = new_batch(store)
        store.insert_records(batch, records_json("one", "two"))
        nested = new_batch(store, "/in/b.txt")
        store.insert_records(nested, '{"records": ' + records_json("x") + "}", "$.records")

    assert store.find_batch("/in/a.txt", "a" * 64) == (batch, "pending")
    assert store.find_batch("/in/a.txt", "b" * 64) is None
    assert store.batch(batch) == ("pending", 2)
    assert store.batch(batch + 1000) is None
    rows = store.execute(
        "SELECT batch_id, record_index, line_number, content, status FROM processed_records"
        " ORDER BY id"
    ).fetchall()
    assert [tuple(r) for r in rows] == [
        (batch, 0, 1, "one", "pending"),
        (batch, 1, 2, "two", "pending"),
        (nested, 0, 1, "x", "pending"),
    ]

    with store.transaction():
        store.finalize_batch(batch, NOW)
    assert store.batch(batch) == ("finalized", 2)
    statuses = store.execute(
        "SELECT status FROM processed_records WHERE batch_id = ?", (batch,)
    ).fetchall()
    assert [r[0] for r in statuses] == ["finalized", "finalized"]

    with store.transaction():
        store.delete_batch(batch)
    assert count(store, "processed_records") == 1  # the records went with their batch


def test_records_go_in_a_chunk_at_a_time_in_one_transaction(store: Store) -> None:
    # How job B stores a large document: one insert_records call per chunk of records.
    with store.transaction():
        batch = new_batch(store)
        store.insert_records(batch, records_json("one", "two"))
        store.insert_records(batch, '[{"index": 2, "line_number": 5, "content": "three"}]')
    with pytest.raises(RuntimeError), store.transaction():
        undone = new_batch(store, "/in/b.txt")
        store.insert_records(undone, records_json("kept?"))
        raise RuntimeError("a later chunk fails")

    rows = store.execute("SELECT batch_id, record_index, content FROM processed_records").fetchall()
    assert sorted(tuple(r) for r in rows) == [
        (batch, 0, "one"), (batch, 1, "two"), (batch, 2, "three"),
    ]


def test_the_batches_of_a_path_but_one_content_are_deleted(store: Store) -> None:
    with store.transaction():
        old = new_batch(store, "/in/a.txt", "a" * 64)
        store.insert_records(old, records_json("old"))
        current = new_batch(store, "/in/a.txt", "b" * 64)
        store.insert_records(current, records_json("new"))
        other = new_batch(store, "/in/other.txt", "a" * 64)
        store.insert_records(other, records_json("other"))

    with store.transaction():
        assert store.delete_batches_of("/in/a.txt", keep_sha256="b" * 64) == 1
        assert store.delete_batches_of("/in/a.txt", keep_sha256="b" * 64) == 0
    ids = sorted(r[0] for r in store.execute("SELECT id FROM processing_batches"))
    assert ids == sorted([current, other])
    assert count(store, "processed_records") == 2  # the old batch's records went with it

    with store.transaction():
        assert store.delete_batches_of("/in/a.txt", keep_sha256=None) == 1
    assert [r[0] for r in store.execute("SELECT id FROM processing_batches")] == [other]


def test_a_group_of_batches_in_a_few_statements(store: Store) -> None:
    # What jobs B and C run on a group of inputs at once.
    a, b = "/in/a.txt", "/in/b.txt"
    with store.transaction():
        ids = store.insert_batches(
            [(a, "a" * 64, 2, None), (b, "b" * 64, 1, "/out/b.json")], created_at=NOW
        )
        assert set(ids) == {a, b} and ids[a] != ids[b]
        store.insert_records_of(
            [
                (ids[a], f'{{"records": {records_json("one", "two")}}}'),
                (ids[b], f'{{"records": {records_json("three")}}}'),
            ],
            "$.records",
        )
        rows = store.execute(
            "SELECT batch_id, record_index, line_number, content, status"
            " FROM processed_records ORDER BY id"
        ).fetchall()
        assert [tuple(row) for row in rows] == [
            (ids[a], 0, 1, "one", "pending"),
            (ids[a], 1, 2, "two", "pending"),
            (ids[b], 0, 1, "three", "pending"),
        ]

        assert sorted(store.batches_of([a, b, "/in/none.txt"])) == sorted(
            [(ids[a], a, "a" * 64, "pending"), (ids[b], b, "b" * 64, "pending")]
        )
        assert store.batches([ids[a], ids[b] + 1000]) == {ids[a]: ("pending", 2)}
        store.finalize_batches([ids[a]], NOW)
        assert store.batches([ids[a], ids[b]]) == {ids[a]: ("finalized", 2), ids[b]: ("pending", 1)}
        finalized = store.execute(
            "SELECT count(*) FROM processed_records WHERE status = 'finalized'"
        ).fetchone()[0]
        assert finalized == 2
        store.delete_batches([ids[b]])
    assert (count(store, "processing_batches"), count(store, "processed_records")) == (1, 2)


def test_a_savepoint_rolls_back_alone(store: Store) -> None:
    with store.transaction():
        kept = new_batch(store, "/in/kept.txt")
        with pytest.raises(RuntimeError), store.transaction():
            new_batch(store, "/in/undone.txt")
            raise RuntimeError("this input fails")
        with store.transaction():
            new_batch(store, "/in/after.txt")

    sources = [r[0] for r in store.execute("SELECT source_path FROM processing_batches")]
    assert sorted(sources) == ["/in/after.txt", "/in/kept.txt"]
    assert store.batch(kept) == ("pending", 2)


def test_a_failed_transaction_writes_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        new_batch(store)
        raise RuntimeError("the group fails")

    assert count(store, "processing_batches") == 0


# The ledger -------------------------------------------------------------------------------


def queue(store: Store, *names: str, size: int = 10) -> None:
    with store.transaction():
        for name in names:
            store.queue(
                path=f"/in/{name}", output_path=f"/out/{name}.json", size=size, mtime_ns=1,
                now=NOW,
            )


def test_claims_take_due_inputs_once_and_in_order(store: Store) -> None:
    queue(store, "a", "b", "c", "d")
    clock = ManualClock()
    first = Ledger(store, lease_seconds=60, clock=clock)
    second = Ledger(store, lease_seconds=60, clock=clock)

    mine = first.claim_pending(2, max_attempts=3, start_job="A", stop_job="C")
    theirs = second.claim_pending(10, max_attempts=3, start_job="A", stop_job="C")

    assert [Path(c.path).name for c in mine] == ["a", "b"]
    assert [Path(c.path).name for c in theirs] == ["c", "d"]
    assert all(c.attempts == 1 for c in mine + theirs)
    assert second.claim_pending(10, max_attempts=3) == []


def test_a_claim_respects_the_byte_cap(store: Store) -> None:
    queue(store, "a", "b", "c", size=100)
    ledger = Ledger(store, lease_seconds=60, clock=ManualClock())

    assert len(ledger.claim_pending(10, max_attempts=3, max_bytes=150)) == 2  # starts below
    assert len(ledger.claim_pending(10, max_attempts=3, max_bytes=1)) == 1  # at least one


def test_done_only_while_the_claim_holds(store: Store) -> None:
    queue(store, "a")
    clock = ManualClock()
    slow = Ledger(store, lease_seconds=60, clock=clock)
    [claimed] = slow.claim_pending(1, max_attempts=3)
    clock.advance(61)
    fast = Ledger(store, lease_seconds=60, clock=clock)
    [taken] = fast.claim_pending(1, max_attempts=3)
    assert (taken.input_id, taken.attempts) == (claimed.input_id, 2)
    finished = Finished("C", batch_id=None, sha256=None, records_written=0, unchanged=False)

    with pytest.raises(ClaimLostError), store.transaction():
        slow.mark_done([(claimed.input_id, finished)])
    assert slow.mark_failed(claimed.input_id, job="A", error="late") is False
    assert slow.release() == 0

    with store.transaction():
        fast.mark_done([(taken.input_id, finished)])
    assert fast.run_counts()["done"] == 1
    assert slow.run_counts()["done"] == 0


def test_a_run_counts_the_records_of_its_own_done_inputs_only(store: Store) -> None:
    """A row claimed again keeps its last run's records until this run marks it done: an
    input given back (an interrupt) or failed wrote nothing in this run."""
    queue(store, "a", "b", "c")
    clock = ManualClock()
    first = Ledger(store, lease_seconds=60, clock=clock)
    claimed = first.claim_pending(3, max_attempts=3)
    with store.transaction():
        first.mark_done([
            (row.input_id, Finished("C", batch_id=None, sha256=None, records_written=5,
                                    unchanged=index == 0))
            for index, row in enumerate(claimed)
        ])  # fmt: skip
    assert first.run_counts()["records"] == 15
    queue(store, "a", "b", "c")

    again = Ledger(store, lease_seconds=60, clock=clock)
    a, b, _ = again.claim_pending(3, max_attempts=3)
    with store.transaction():
        again.mark_done([(a.input_id, Finished("C", batch_id=None, sha256=None,
                                               records_written=2, unchanged=False))])
    again.mark_failed(b.input_id, job="B", error="broken")
    again.release()  # c: given back

    counts = again.run_counts()
    assert (counts["done"], counts["failed"], counts["pending"]) == (1, 1, 1)
    assert (counts["records"], counts["unchanged"]) == (2, 0)


def test_a_group_is_marked_done_only_where_the_claim_holds(store: Store) -> None:
    queue(store, "a", "b", "c")
    ledger = Ledger(store, lease_seconds=60, clock=ManualClock())
    a, b, c = ledger.claim_pending(3, max_attempts=3)
    with store.transaction():  # another command took c over
        store.execute("UPDATE pipeline_inputs SET claim_token = 'other' WHERE id = ?",
                      (c.input_id,))
    finished = Finished("C", 7, "f" * 64, 2, False)
    group = [(i.input_id, finished) for i in (a, b, c)]

    with pytest.raises(RuntimeError), store.transaction():
        assert store.mark_done(group, ledger.token, NOW) == 2
        raise RuntimeError("rolled back: nothing of it stays")
    with pytest.raises(ClaimLostError, match="1 input"), store.transaction():
        ledger.mark_done(group)
    with store.transaction():
        ledger.mark_done(group[:2])

    rows = store.inputs_by_path(["/in/a", "/in/b", "/in/c"])
    assert [rows[f"/in/{n}"].status for n in "abc"] == ["done", "done", "processing"]
    assert rows["/in/a"].sha256 == "f" * 64


def test_done_records_the_version_read_when_given(store: Store) -> None:
    queue(store, "a", "b")  # queued with size 10, mtime 1
    ledger = Ledger(store, lease_seconds=60, clock=ManualClock())
    a, b = ledger.claim_pending(2, max_attempts=3)

    with store.transaction():
        ledger.mark_done(
            [
                (a.input_id, Finished("C", 1, "a" * 64, 3, False, size=12, mtime_ns=99)),
                (b.input_id, Finished("C", 2, "b" * 64, 1, False)),
            ]
        )

    rows = store.inputs_by_path(["/in/a", "/in/b"])
    assert (rows["/in/a"].size, rows["/in/a"].mtime_ns) == (12, 99)
    assert (rows["/in/b"].size, rows["/in/b"].mtime_ns) == (10, 1)  # as queued


def test_retry_then_failure_then_requeue(store: Store) -> None:
    queue(store, "a")
    clock = ManualClock()
    ledger = Ledger(store, lease_seconds=60, clock=clock)
    [claimed] = ledger.claim_pending(1, max_attempts=2)

    assert ledger.mark_failed(claimed.input_id, job="A", error="flaky", retry_in=30)
    assert ledger.claim_pending(1, max_attempts=2) == []  # not due yet
    due = ledger.next_due()
    assert due is not None and (due - clock.now()).total_seconds() == pytest.approx(30)
    clock.advance(30)
    [again] = ledger.claim_pending(1, max_attempts=2)
    assert again.attempts == 2
    assert ledger.mark_failed(again.input_id, job="A", error="for good")

    assert ledger.run_failures() == [{"input": "/in/a", "job": "A", "error": "for good"}]
    report = store.status(iso(clock.now()))
    assert (report["inputs"]["failed"], report["inputs"]["total"]) == (1, 1)
    assert report["last_errors"][0]["error"] == "for good"
    with store.transaction():
        assert store.requeue_failed(iso(clock.now())) == 1
    assert store.input_state(again.input_id) == ("pending", None)


def test_an_expired_lease_on_the_last_attempt_fails_the_input(store: Store) -> None:
    queue(store, "a")
    clock = ManualClock()
    Ledger(store, lease_seconds=60, clock=clock).claim_pending(1, max_attempts=1)
    clock.advance(61)

    assert Ledger(store, lease_seconds=60, clock=clock).claim_pending(1, max_attempts=1) == []
    [row] = store.execute("SELECT status, last_error FROM pipeline_inputs").fetchall()
    assert row[0] == "failed"
    assert "lease expired" in row[1]


def test_register_found_files_and_renew_and_release(store: Store) -> None:
    clock = ManualClock()
    ledger = Ledger(store, lease_seconds=60, clock=clock)
    claim = Claim(
        ledger.token, ledger.run_id, iso(clock.now()), iso(clock.now()), "A", "C", ledger.owner
    )
    with store.transaction():
        row = store.register_claimed(
            path="/in/a", output_path="/out/a.json", size=5, mtime_ns=7, claim=claim
        )
    registered = store.inputs_by_path(["/in/a", "/in/missing"])
    assert list(registered) == ["/in/a"]
    assert registered["/in/a"].status == "processing"
    assert registered["/in/a"].owner == ledger.owner

    clock.advance(30)
    ledger.renew()
    lease = store.inputs_by_path(["/in/a"])["/in/a"].lease_expires_at
    assert lease is not None and lease > iso(clock.now())
    assert ledger.release() == 1
    assert store.input_state(row.input_id) == ("pending", None)


def test_found_files_are_registered_and_claimed_as_a_group(store: Store) -> None:
    queue(store, "c")  # a row of its own already, reset by the registration
    with store.transaction():
        store.execute("UPDATE pipeline_inputs SET last_error = 'old', attempts = 3")
    ledger = Ledger(store, lease_seconds=60, clock=ManualClock())
    claim = Claim(ledger.token, ledger.run_id, NOW, NOW, "A", "C", ledger.owner)
    found = [(f"/in/{n}", f"/out/{n}.json", 5 + i, 2**62 + i) for i, n in enumerate("abc")]

    with store.transaction():
        claimed = store.register_all_claimed(found, claim)

    assert sorted(claimed) == ["/in/a", "/in/b", "/in/c"]
    assert len({row.input_id for row in claimed.values()}) == 3
    assert claimed["/in/b"].output_path == "/out/b.json"
    rows = store.inputs_by_path(list(claimed))
    assert [(r.status, r.size, r.mtime_ns, r.start_job) for _, r in sorted(rows.items())] == [
        ("processing", 5 + i, 2**62 + i, "A") for i in range(3)
    ]
    assert store.held_claims([r.input_id for r in claimed.values()], ledger.token) == {
        r.input_id for r in claimed.values()
    }
    reset = store.execute(
        "SELECT attempts, last_error FROM pipeline_inputs WHERE path = '/in/c'"
    ).fetchone()
    assert tuple(reset) == (1, None)


def test_a_found_file_another_command_holds_is_left_out_of_the_group(store: Store) -> None:
    """Where commands write side by side (PostgreSQL), a path another command claimed
    between this one's read and its write keeps its claim: the group's statement leaves it
    out and registers the others."""
    if not store.register_guard:
        pytest.skip("one writer at a time: the ledger's read inside the write lock decides")
    clock = ManualClock()
    other = Ledger(store, lease_seconds=60, clock=clock)
    mine = Ledger(store, lease_seconds=60, clock=clock)
    now = iso(clock.now())
    theirs = Claim(other.token, other.run_id, iso_in(clock, 60), now, "A", "C", other.owner)
    with store.transaction():
        store.register_claimed(path="/in/b", output_path="/out/b", size=1, mtime_ns=1,
                               claim=theirs)
    claim = Claim(mine.token, mine.run_id, iso_in(clock, 60), now, "A", "C", mine.owner)
    found = [(f"/in/{n}", f"/out/{n}.json", 5, 7) for n in "abc"]

    with store.transaction():
        claimed = store.register_all_claimed(found, claim)

    assert sorted(claimed) == ["/in/a", "/in/c"]
    held = store.inputs_by_path(["/in/b"])["/in/b"]
    assert (held.status, held.size, held.owner) == ("processing", 1, other.owner)
    assert store.held_claims([held.id], other.token) == {held.id}


def _waiting_on_a_lock(watcher: Any) -> int:
    """How many connections to this database wait for a lock, seen from ``watcher``, a
    connection in autocommit (inside a transaction, pg_stat_activity is one snapshot)."""
    return int(watcher.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND datname = current_database()").fetchone()[0])


def test_two_commands_registering_the_same_files_at_once_on_postgresql(
    postgres_url: str,
) -> None:
    """Two commands find overlapping files at the same moment. The second's statement waits
    on the rows the first has inserted and not yet committed, then leaves out those the
    first now holds and registers the rest: no file is claimed twice, none is lost."""
    import threading

    import psycopg

    store = open_store(postgres_url, timeout=10)  # one connection per thread
    clock = ManualClock()
    now = iso(clock.now())
    first, second = (Ledger(store, lease_seconds=60, clock=clock) for _ in range(2))
    claims = [
        Claim(ledger.token, ledger.run_id, iso_in(clock, 60), now, "A", "C", ledger.owner)
        for ledger in (first, second)
    ]
    found = [(f"/in/{n}", f"/out/{n}.json", 1, 1) for n in "abcdef"]
    result: dict[str, Any] = {}

    def register_second() -> None:
        with store.transaction():
            result.update(store.register_all_claimed(found[2:], claims[1]))

    with store.transaction():
        mine = store.register_all_claimed(found[:4], claims[0])
        waiter = threading.Thread(target=register_second)
        waiter.start()
        deadline = time.monotonic() + 30
        # Watched from a connection of its own: inside a transaction, pg_stat_activity is a
        # snapshot taken once.
        with psycopg.connect(postgres_url, autocommit=True) as watcher:
            while not _waiting_on_a_lock(watcher):
                assert waiter.is_alive() and time.monotonic() < deadline
                time.sleep(0.02)
    waiter.join(30)

    assert not waiter.is_alive()
    assert sorted(mine) == ["/in/a", "/in/b", "/in/c", "/in/d"]
    assert sorted(result) == ["/in/e", "/in/f"]
    tokens = dict(store.execute("SELECT path, claim_token FROM pipeline_inputs").fetchall())
    assert tokens == {
        **{f"/in/{n}": first.token for n in "abcd"},
        **{f"/in/{n}": second.token for n in "ef"},
    }


def deadlock_with(
    postgres_url: str, action: Callable[[], Any], statements: tuple[Statement, Statement]
) -> dict[str, Any]:
    """Run ``action`` in a thread into a real deadlock with a connection of the test's, and
    return its ``{"result": ...}`` or ``{"error": ...}``.

    The test's connection runs the first statement (it holds a row ``action`` will ask
    for), waits until ``action`` waits for that row, then runs the second, which asks for a
    row ``action`` holds: a circle. ``action``'s connections look for one 3 s into a lock
    wait, the test's own after a minute, so ``action``'s transaction is the one rolled back
    ("deadlock detected"); the test's then rolls back, and ``action``, if it runs its
    transaction again, goes on. (Run again at once, as a test's clock has it, ``action``
    can win the released row back before the test's statement takes it, and meet the same
    circle once more: PostgreSQL wakes a row's waiters in no set order.)"""
    import threading

    import psycopg
    import psycopg.sql

    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(
            f"ALTER DATABASE {psycopg.sql.Identifier(admin.info.dbname).as_string(admin)}"
            " SET deadlock_timeout = '3s'"
        )
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = action()
        except BaseException as exc:  # reported by the caller's assertions
            outcome["error"] = exc

    with psycopg.connect(postgres_url) as other, psycopg.connect(
        postgres_url, autocommit=True
    ) as watcher:
        other.execute("SET deadlock_timeout = '60s'")
        other.execute(*statements[0])
        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 30
        while not _waiting_on_a_lock(watcher):
            assert thread.is_alive() and time.monotonic() < deadline, outcome
            time.sleep(0.02)
        # The statement that closes the circle returns once ``action``'s transaction was
        # rolled back to end it.
        other.execute(*statements[1])
        assert thread.is_alive(), outcome  # rolled back, and waiting behind this one
        other.rollback()
        thread.join(30)
    assert not thread.is_alive()
    return outcome


def _touch(path: str) -> Statement:
    """A statement that locks ``path``'s row of the ledger."""
    return ("UPDATE pipeline_inputs SET attempts = attempts WHERE path = %s", (path,))


def test_a_registration_rolled_back_to_end_a_deadlock_runs_again_on_postgresql(
    postgres_url: str,
) -> None:
    """Commands registering overlapping files can wait on one another in a circle (three
    can, though each locks in path order); PostgreSQL then rolls one back ("deadlock
    detected"). Played here with a connection of the test's: it holds one file's row while
    the registration waits for it, then asks for the row the registration holds. The
    registration, rolled back, runs again once the other transaction has ended, and claims
    both files, instead of ending its run."""
    from prefect_pipeline.pipeline.discovery import Found

    store = open_store(postgres_url, timeout=30)  # one connection per thread
    clock = ManualClock()
    earlier = Ledger(store, lease_seconds=1, clock=clock)
    found = [Found(f"/in/{n}", f"/out/{n}.json", 1, 1) for n in "ab"]
    assert len(earlier.register_and_claim(found, start_job="A", stop_job="C").claimed) == 2
    clock.advance(2)  # its leases ran out: the files are free to claim
    ledger = Ledger(store, lease_seconds=60, clock=clock)

    # The registration holds /in/a and waits for /in/b; then the test asks for /in/a.
    outcome = deadlock_with(
        postgres_url,
        lambda: ledger.register_and_claim(found, start_job="A", stop_job="C"),
        (_touch("/in/b"), _touch("/in/a")),
    )

    assert "error" not in outcome, outcome
    assert 1 <= len(clock.slept) < CONFLICT_ATTEMPTS  # paused, then went on
    claimed = outcome["result"].claimed
    assert sorted(row.path for row in claimed) == ["/in/a", "/in/b"]
    tokens = dict(store.execute("SELECT path, claim_token FROM pipeline_inputs").fetchall())
    assert tokens == {"/in/a": ledger.token, "/in/b": ledger.token}


def test_a_lease_renewal_rolled_back_to_end_a_deadlock_runs_again_on_postgresql(
    postgres_url: str,
) -> None:
    """A renewal locks every row the run holds, in the table's order, and another command's
    registration of the same files locks them in path order: the two can wait on each
    other. The renewal, rolled back, runs again instead of ending the run."""
    from prefect_pipeline.pipeline.discovery import Found

    store = open_store(postgres_url, timeout=30)
    clock = ManualClock()
    ledger = Ledger(store, lease_seconds=60, clock=clock)
    found = [Found(f"/in/{n}", f"/out/{n}.json", 1, 1) for n in "ab"]
    assert len(ledger.register_and_claim(found, start_job="A", stop_job="C").claimed) == 2
    clock.advance(30)

    # The renewal holds /in/a and waits for /in/b; then the test asks for /in/a.
    outcome = deadlock_with(postgres_url, ledger.renew, (_touch("/in/b"), _touch("/in/a")))

    assert "error" not in outcome, outcome
    assert 1 <= len(clock.slept) < CONFLICT_ATTEMPTS
    leases = {row.lease_expires_at for row in store.inputs_by_path(["/in/a", "/in/b"]).values()}
    assert leases == {iso_in(clock, 60)}


def test_the_owners_of_live_claims_and_the_end_of_their_leases(store: Store) -> None:
    clock = ManualClock()
    me = this_process()
    others = [replace(me, pid=me.pid + 1), replace(me, host="elsewhere")]
    for number, owner in enumerate(others):
        ledger = Ledger(store, lease_seconds=60, clock=clock, owner=owner)
        claim = Claim(ledger.token, ledger.run_id, iso_in(clock, 60), iso(clock.now()), "A", "C",
                      owner)
        with store.transaction():
            store.register_claimed(path=f"/in/{number}", output_path=f"/out/{number}", size=1,
                                   mtime_ns=1, claim=claim)

    now = iso(clock.now())
    assert store.live_owners(me.host, me.namespace, now) == [others[0]]
    assert store.live_owners("elsewhere", me.namespace, now) == [others[1]]
    with store.transaction():
        assert store.expire_claims_of(others[0], now) == 1
    assert store.inputs_by_path(["/in/0"])["/in/0"].lease_expires_at == now
    clock.advance(1)
    assert store.live_owners(me.host, me.namespace, iso(clock.now())) == []


def test_claims_are_given_back_after_an_interrupt_left_a_transaction_open(store: Store) -> None:
    """A Ctrl-C can land between a transaction's BEGIN and Peewee's record of it; giving the
    claims back must still work (it failed with "cannot start a transaction within a
    transaction", leaving the claims for their lease)."""
    clock = ManualClock()
    ledger = Ledger(store, lease_seconds=60, clock=clock)
    with store.transaction():
        claim = Claim(ledger.token, ledger.run_id, iso_in(clock, 60), iso(clock.now()), "A",
                      "C", ledger.owner)
        store.register_claimed(path="/in/a", output_path="/out/a", size=1, mtime_ns=1,
                               claim=claim)
    store.db.connection().execute("BEGIN")  # begun, and the interrupt came before the rest
    store.register_claimed(path="/in/b", output_path="/out/b", size=1, mtime_ns=1, claim=claim)

    assert ledger.release() == 1  # /in/b's claim never committed
    assert store.input_state(1) == ("pending", None)
    assert store.inputs_by_path(["/in/b"]) == {}
