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
  python3 -m pytest -q -m gpu --maxfail=30 tests/kernels/test_gemv.py $(ls -d tests/verify 2>/dev/null) 2>&1 | tee "$OUT/tests.log"

fi
if [[ $what == bench || $what == all ]]; then
  python3 benchmarks/gemv.py "$OUT" 2>&1 | tee "$OUT/bench.log"
fi
if [[ $what == cli || $what == all ]]; then
  python3 -m lowbit bench --shapes 4096x4096,768x2048 --batch 1,8 --schemes int4,nvfp4 --iters 20 --json "$OUT/cli_bench.json" 2>&1 | tee "$OUT/cli_bench.log"
fi
