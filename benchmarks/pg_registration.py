"""Registering found files on PostgreSQL: one statement per group against one per file.

``run-parallel`` registers and claims the files it finds a group at a time. This times
``PostgresStore.register_all_claimed`` (one ``INSERT … SELECT FROM unnest(…) ON CONFLICT``
per group) against one call per file (``register_claimed``: the same statement on one
path, as each file was registered before), on a throw-away server
(``tests/postgres_cluster.py``): ``--groups`` groups of ``--size`` new paths, then the same
paths again once every row is done (the ``ON CONFLICT`` branch). Medians per group and
totals, in rounds that alternate the two.

    .venv/bin/python benchmarks/pg_registration.py --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect_pipeline.clock import SYSTEM_CLOCK, iso, iso_in
from prefect_pipeline.database.backends import open_store
from prefect_pipeline.database.ledger import Ledger
from prefect_pipeline.database.store import Claim, Store
from tests.postgres_cluster import PostgresCluster

Register = Callable[[Store, list[tuple[str, str, int, int]], Claim], dict[str, Any]]


def one_per_file(
    store: Store, found: list[tuple[str, str, int, int]], claim: Claim
) -> dict[str, Any]:
    """Each found file registered by a statement of its own."""
    rows = {}
    for path, output_path, size, mtime_ns in found:
        row = store.register_claimed(
            path=path, output_path=output_path, size=size, mtime_ns=mtime_ns, claim=claim
        )
        if row is not None:
            rows[path] = row
    return rows


def register_groups(store: Store, register: Register, groups: int, size: int) -> list[float]:
    """Seconds per group to register ``groups`` groups of ``size`` paths, each group in a
    transaction of its own, as the ledger does."""
    ledger = Ledger(store, lease_seconds=600, clock=SYSTEM_CLOCK)
    times = []
    for group in range(groups):
        found = [
            (f"/in/{group:03d}/{n:05d}.txt", f"/out/{group:03d}/{n:05d}.json", 100 + n, n)
            for n in range(size)
        ]
        now = iso(SYSTEM_CLOCK.now())
        claim = Claim(
            ledger.token, ledger.run_id, iso_in(SYSTEM_CLOCK, 600), now, "A", "C", ledger.owner
        )
        started = time.perf_counter()
        with store.transaction():
            claimed = register(store, found, claim)
        times.append(time.perf_counter() - started)
        assert len(claimed) == size, len(claimed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--size", type=int, default=2000)
    args = parser.parse_args()
    print("| round | registration | new paths: ms a group (total s) | existing rows |")
    print("|---|---|---|---|")
    with PostgresCluster() as server:
        for round_ in range(args.rounds):
            for name in ("one per file", "one per group"):
                url = server.create_database(f"r{round_}_{name.replace(' ', '_')}")
                store = open_store(url, timeout=30)
                register: Register = (
                    one_per_file if name == "one per file" else type(store).register_all_claimed
                )
                new = register_groups(store, register, args.groups, args.size)
                with store.transaction():
                    store.execute("UPDATE pipeline_inputs SET status = 'done', claim_token = NULL")
                again = register_groups(store, register, args.groups, args.size)
                print(
                    f"| {round_ + 1} | {name} | {statistics.median(new) * 1000:.0f}"
                    f" ({sum(new):.2f}) | {statistics.median(again) * 1000:.0f}"
                    f" ({sum(again):.2f}) |"
                )


if __name__ == "__main__":
    main()
