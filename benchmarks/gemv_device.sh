#!/usr/bin/env bash
# One device call: compile + GPU tests of the GEMV/verify code + the GEMV benchmark, logs under $OUT.
# Usage on the device machine (repo root): bash benchmarks/gemv_device.sh [tests|bench|all]
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
what=${1:-all}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
date -u | tee -a "$OUT/gpu.txt"
if [[ $what == tests || $what == all ]]; then
  python3 -m pytest -q -m gpu --maxfail=30 tests/kernels/test_gemv.py tests/verify 2>&1 | tee "$OUT/tests.log"

fi
if [[ $what == bench || $what == all ]]; then
  python3 benchmarks/gemv.py "$OUT" 2>&1 | tee "$OUT/bench.log"
fi
