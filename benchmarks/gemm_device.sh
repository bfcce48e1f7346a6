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
  for cfg in 3,2,128 3,1,256 4,1,256; do
    LOWBIT_SM90_W16=$cfg timeout 200 python3 -m pytest -q -m gpu --maxfail=5 -p no:cacheprovider tests/kernels/test_gemm.py tests/kernels/test_moe.py -k "1031 or 200 or prefill-700 or large_tiles" 2>&1 | tail -3
    mkdir -p "$OUT/w16_${cfg//,/_}"
    LOWBIT_SM90_W16=$cfg timeout 120 python3 benchmarks/gemm.py "$OUT/w16_${cfg//,/_}" --quick 2>&1 | tail -20
  done
fi
if [[ $what == moe ]]; then
  timeout 200 python3 -m pytest -q -m gpu --maxfail=15 -p no:cacheprovider tests/kernels/test_moe.py 2>&1 | tail -30 | tee "$OUT/tests.log"
  timeout 150 python3 benchmarks/moe.py "$OUT" 2>&1 | tail -20 | tee "$OUT/moe_bench.log"
fi
if [[ $what == quick ]]; then
  timeout 150 python3 benchmarks/gemm.py "$OUT" --quick 2>&1 | tail -40 | tee "$OUT/gemm_bench.log"
fi
