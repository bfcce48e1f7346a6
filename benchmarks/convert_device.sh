#!/usr/bin/env bash
# One device call for the converter: the gpu byte-identity tests (cupy twin == numpy, convert
# --device cuda == --device cpu) and conversion throughput with --device cuda and cpu.
# Usage on the device machine (repo root): bash benchmarks/convert_device.sh [LAYERS]
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
layers=${1:-2}
{ nvidia-smi --query-gpu=name,memory.total --format=csv; nproc; date -u; } | tee "$OUT/convert_gpu.txt"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/quantize/test_gpu_twin.py 2>&1 | tee "$OUT/convert_tests.log"
timeout 200 python3 benchmarks/convert.py --layers "$layers" --device cuda --workdir /tmp/lbconv --keep \
  --json "$OUT/convert_cuda.json" 2>&1 | tee "$OUT/convert_bench.log"
timeout 120 python3 benchmarks/convert.py --layers "$layers" --device cpu --workdir /tmp/lbconv \
  --json "$OUT/convert_cpu.json" 2>&1 | tee -a "$OUT/convert_bench.log"
