"""How fast a run stops: SIGINT or SIGTERM to the command's whole process group (what a
terminal's Ctrl-C, ``timeout``, systemd and Kubernetes send), and a Cancel from Prefect.

For each case it starts a real ``pipeline`` over generated small files in a process group of
its own, waits until some inputs are done, stops it, and measures the time from the signal
(or the Cancel) to the command's exit; then it checks the ledger: nothing left
``processing``. Medians of ``--repeats`` runs, printed as a table (and ``--json``).

    .venv/bin/python benchmarks/interrupts.py --repeats 3 --files 3000

Cases: ``run-parallel`` with 2 local workers and a temporary Prefect server (SIGINT, then
SIGTERM), ``drain-db`` in the command's own process (SIGTERM), the same two with a running
Prefect server (``PREFECT_API_URL``), and a Cancel through the API of a ``run-parallel``
with 2 workers and with none. An idle machine is assumed; say so if it was not.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import api_server, api_server_env, base_env, temporary_server_env

PIPELINE = Path(sys.executable).with_name("pipeline")


def make_files(root: Path, count: int) -> None:
    for number in range(count):
        folder = root / f"d{number % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{number:05d}.txt").write_text(
            "".join(f"file {number} line {line} of some words\n" for line in range(50))
        )


def done(db: Path) -> int:
    try:
        with closing(sqlite3.connect(db, timeout=1)) as connection:
            return int(
                connection.execute(
                    "SELECT count(*) FROM pipeline_inputs WHERE status = 'done'"
                ).fetchone()[0]
            )
    except sqlite3.Error:
        return 0


def statuses(db: Path) -> dict[str, int]:
    with closing(sqlite3.connect(db)) as connection:
        return dict(
            connection.execute("SELECT status, count(*) FROM pipeline_inputs GROUP BY status")
        )


def cancel(api_url: str, db: Path) -> None:
    """Cancel the flow run recorded on the ledger's rows, as the UI's Cancel does."""
    while True:
        with closing(sqlite3.connect(db, timeout=1)) as connection:
            row = connection.execute(
                "SELECT flow_run_id FROM pipeline_inputs WHERE flow_run_id IS NOT NULL LIMIT 1"
            ).fetchone()
        if row:
            break
        time.sleep(0.05)
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelling

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        client.set_flow_run_state(uuid.UUID(row[0]), Cancelling(), force=True)


def one(
    case: dict[str, Any], files: int, work: Path, env: dict[str, str], api_url: str | None
) -> dict[str, Any]:
    run = work / uuid.uuid4().hex[:8]
    inputs = run / "in"
    make_files(inputs, files)
    db = run / "pipeline.db"
    base = [str(PIPELINE), "--log-level", "OFF", "--db-path", str(db), "--output-dir",
            str(run / "out")]
    # Workers start with the run: what is measured is how fast a run with them stops.
    workers = ["--workers", case["workers"], "--workers-after", "0"]
    if case["command"] == "drain-db":
        subprocess.run([*base, "enqueue", str(inputs)], env=env, check=True,
                       capture_output=True)
        argv = [*base, "drain-db", *workers, "--json"]
    else:
        argv = [*base, "run-parallel", str(inputs), *workers, "--json"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while done(db) < case.get("after", 20):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{case['name']}: ended before the stop: {process.communicate()}")
        time.sleep(0.02)
    stopped = time.monotonic()
    if case["stop"] == "cancel":
        assert api_url is not None
        cancel(api_url, db)
    else:
        os.killpg(process.pid, case["stop"])
    _, stderr = process.communicate(timeout=300)
    took = time.monotonic() - stopped
    left = statuses(db)
    return {
        "case": case["name"],
        "seconds": round(took, 2),
        "exit": process.returncode,
        "processing_left": left.get("processing", 0),
        "stderr": stderr.strip()[-300:],
    }


CASES = [
    {"name": "run-parallel, 2 workers, temporary server: SIGINT to the group",
     "command": "run-parallel", "workers": "2", "stop": signal.SIGINT, "api": False},
    {"name": "run-parallel, 2 workers, temporary server: SIGTERM to the group",
     "command": "run-parallel", "workers": "2", "stop": signal.SIGTERM, "api": False},
    {"name": "drain-db, in process, temporary server: SIGTERM to the group",
     "command": "drain-db", "workers": "0", "stop": signal.SIGTERM, "api": False},
    {"name": "run-parallel, 2 workers, PREFECT_API_URL: SIGINT to the group",
     "command": "run-parallel", "workers": "2", "stop": signal.SIGINT, "api": True},
    {"name": "drain-db, in process, PREFECT_API_URL: SIGTERM to the group",
     "command": "drain-db", "workers": "0", "stop": signal.SIGTERM, "api": True},
    {"name": "run-parallel, 2 workers: Cancel in Prefect",
     "command": "run-parallel", "workers": "2", "stop": "cancel", "api": True, "after": 50},
    {"name": "run-parallel, in process: Cancel in Prefect",
     "command": "run-parallel", "workers": "0", "stop": "cancel", "api": True, "after": 50},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pipeline-interrupts-") as folder:
        work = Path(folder)
        home = work / "prefect-home"
        home.mkdir()
        with api_server(base_env(home), work / "server.log") as (url, _pid):
            for _ in range(args.repeats):
                for case in CASES:
                    env = api_server_env(home, url) if case["api"] else temporary_server_env(home)
                    results.append(one(case, args.files, work, env, url))
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print("| case | median s | min-max s | exits | left processing |")
    print("|---|---|---|---|---|")
    for case in CASES:
        runs = [r for r in results if r["case"] == case["name"]]
        seconds = [r["seconds"] for r in runs]
        print(f"| {case['name']} | {statistics.median(seconds):.2f} | {min(seconds):.2f}-"
              f"{max(seconds):.2f} | {sorted({r['exit'] for r in runs})} | "
              f"{sum(r['processing_left'] for r in runs)} |")
    odd = [r for r in results if r["exit"] != 130 or r["stderr"]]
    for r in odd:
        print(f"\n{r['case']}: exit {r['exit']}; stderr: {r['stderr']}")


if __name__ == "__main__":
    main()
