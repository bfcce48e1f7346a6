#!/usr/bin/env bash
# One device call for the converter: the gpu byte-identity tests (cupy twin == numpy, convert
# --device cuda == --device cpu) and conversion throughput with --device cuda and cpu.
# Usage on the device machine (repo root): bash benchmarks/convert_device.sh
# Source: mixtral-8x7b shapes, 1 layer (3.4 GB BF16, 83% of it expert/attention weights to quantize).
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
src="--arch mixtral --preset mixtral-8x7b --layers 1"
{ nvidia-smi --query-gpu=name,memory.total --format=csv; nproc; date -u; } | tee "$OUT/convert_gpu.txt"
timeout 70 python3 -m pytest -q -m gpu -p no:cacheprovider tests/quantize/test_gpu_twin.py 2>&1 | tee "$OUT/convert_tests.log"
timeout 110 python3 benchmarks/convert.py $src --device cuda --workdir /tmp/lbconv --keep \
  --json "$OUT/convert_cuda.json" 2>&1 | tee "$OUT/convert_bench.log"
timeout 55 python3 benchmarks/convert.py $src --device cpu --workdir /tmp/lbconv \
  --json "$OUT/convert_cpu.json" 2>&1 | tee -a "$OUT/convert_bench.log"
