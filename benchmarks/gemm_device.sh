#!/usr/bin/env bash
# One device call: compile checks, GPU tests of the GEMM/MoE kernels, GEMM + MoE benchmarks; logs to $OUT.
# Usage on the device machine (repo root): bash benchmarks/gemm_device.sh [tests|bench|quick|tune|moe|all]
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
what=${1:-all}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
date -u | tee -a "$OUT/gpu.txt"
if [[ $what == tests || $what == all || $what == quick ]]; then
  timeout 240 python3 -m pytest -q -m gpu --maxfail=15 -p no:cacheprovider tests/kernels/test_gemm.py tests/kernels/test_moe.py tests/kernels/test_gemm_verify.py 2>&1 | tail -60 | tee "$OUT/tests.log"
fi
if [[ $what == bench || $what == all ]]; then
  python3 benchmarks/gemm.py "$OUT" 2>&1 | tee "$OUT/gemm_bench.log"
  python3 benchmarks/moe.py "$OUT" 2>&1 | tee "$OUT/moe_bench.log"
fi
if [[ $what == tune ]]; then
  timeout 200 python3 -m pytest -q -m gpu --maxfail=15 -p no:cacheprovider tests/kernels/test_gemm.py tests/kernels/test_moe.py 2>&1 | tail -30 | tee "$OUT/tests.log"
  LOWBIT_SM90_FP8=1,2,4 timeout 200 python3 -m pytest -q -m gpu --maxfail=5 -p no:cacheprovider tests/kernels/test_gemm.py tests/kernels/test_moe.py -k "1031 or 200 or w8a8 or prefill-700" 2>&1 | tail -5 | tee "$OUT/tests_fp8_1.log"
  mkdir -p "$OUT/fp8_1"
  LOWBIT_SM90_FP8=1,2,4 timeout 120 python3 benchmarks/gemm.py "$OUT/fp8_1" --quick 2>&1 | tail -25
  timeout 150 python3 benchmarks/moe.py "$OUT" 2>&1 | tail -20 | tee "$OUT/moe_bench.log"
fi
if [[ $what == moe ]]; then
  timeout 200 python3 -m pytest -q -m gpu --maxfail=15 -p no:cacheprovider tests/kernels/test_moe.py 2>&1 | tail -30 | tee "$OUT/tests.log"
  timeout 150 python3 benchmarks/moe.py "$OUT" 2>&1 | tail -20 | tee "$OUT/moe_bench.log"
fi
if [[ $what == quick ]]; then
  timeout 150 python3 benchmarks/gemm.py "$OUT" --quick 2>&1 | tail -40 | tee "$OUT/gemm_bench.log"
fi
