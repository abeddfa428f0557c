#!/usr/bin/env bash
# Set up, then run the whole test suite (what CI runs). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/mypy
# Two processes (each with its own Prefect and PostgreSQL servers): most tests wait on the
# processes they start, so two share two cores well; work stealing evens out the long ones.
exec .venv/bin/pytest -n "${PYTEST_PROCESSES:-2}" --dist worksteal "$@"
