#!/usr/bin/env bash
# Everything a session with a GPU should run, in one command (a lent GPU machine's time is
# short, and each call to it starts from a bare machine): install the package without
# dependencies (the machine already has torch, triton, cupy, pytest and numpy), the `gpu`
# tests against compiled kernels, then the benchmark suite, which writes its stamped
# results under benchmarks/results/<device>/ and copies them to $OUT.
#
#   bash scripts/gpu_session.sh            # $OUT (the device tool's folder) or /tmp/gk-gpu
#   BENCH_ARGS="--only conv,train" TEST_TIMEOUT=300 bash scripts/gpu_session.sh
#
# Each step has its own time limit and a failing step does not stop the next one: a test
# failure still leaves benchmark numbers. Exit status: 1 if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gk-gpu}
mkdir -p "$out"
status=0
step() {  # step NAME SECONDS COMMAND...: run it, log to $out/NAME.log, note failures
    local name=$1 seconds=$2; shift 2
    echo "== $name ($(date -u +%H:%M:%S), limit ${seconds}s)"
    timeout "$seconds" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "!! $name failed (exit $rc; 124: over its time limit), last lines:"; status=1
    fi
    tail -n "${TAIL:-15}" "$out/$name.log"
}
# the checkout itself on the path: the tests, models and benchmarks import even if the
# editable install below cannot build (no registry to fetch a build backend from)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export GPUKERNELS_COMMIT=${GPUKERNELS_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
step install 120 python -m pip install --no-deps --no-build-isolation -e .
step test-gpu "${TEST_TIMEOUT:-240}" env GPUKERNELS_TEST_GPU=1 python -m pytest -q -m gpu -rf tests
# shellcheck disable=SC2086 - BENCH_ARGS is a list of flags
step bench "${BENCH_TIMEOUT:-300}" python -m benchmarks.run ${BENCH_ARGS:---quick}
latest=$(ls -td benchmarks/results/*/ 2>/dev/null | head -1)
if [ -n "$latest" ]; then
    for f in "$latest"results.*; do cp "$f" "$out/"; done
    echo "results of $latest copied to $out"
fi
exit $status
