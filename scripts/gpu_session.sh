#!/usr/bin/env bash
# The budgeted GPU run, in one command (a lent GPU machine gives one command of at most
# 10 minutes and returns at most 8 files from $OUT): environment, doctor, headline
# benchmarks, smoke gpu tests, then the rest as far as GPU_BUDGET_S (default 480) goes.
# Each step's files land in $OUT as soon as it ends. See scripts/gpu_session.py.
#
#   GPUKERNELS_COMMIT=<hash> bash scripts/gpu_session.sh    # on the GPU machine ($OUT, else /tmp/gk-gpu)
#   bash scripts/gpu_session.sh --dry-run                   # the same plan on a CPU, in under 2 minutes
#
# Exit status: 1 if a step failed or timed out (skipped steps are named in session.log).
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python || command -v python3)}
exec "$py" scripts/gpu_session.py "$@"
