#!/usr/bin/env bash
# Set up, then run the pipeline in parallel over the sample files shipped in samples/.
# Results: data/output/ (JSON) and data/pipeline.db (SQLite). Extra arguments go to
# `pipeline run-parallel`, e.g. scripts/demo.sh --json
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Not `exec`: the pipeline measures elapsed time and start-up from its process's start, and
# an exec'd process keeps this script's, so the set-up above would count as start-up.
.venv/bin/pipeline run-parallel samples/ "$@"
