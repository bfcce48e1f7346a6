#!/usr/bin/env bash
# Runtime on the device machine: GPU tests, then the decode benchmark. Logs under $OUT.
# usage: bash benchmarks/runtime_device.sh [quick]
set -u
export PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests/runtime/test_cuda.py -x 2>&1 | tail -60 > "$OUT/runtime_gpu_tests.log"
tail -5 "$OUT/runtime_gpu_tests.log"
if [ "${1:-}" = quick ]; then
  timeout 120 python3 benchmarks/runtime_profile.py smollm2-135m bf16 2>&1 | tail -45 > "$OUT/profile.txt"
  timeout 200 python3 -c "
import json
from lowbit.runtime.bench_decode import bench_decode
for c, s in [('smollm2-135m', 'bf16'), ('smollm2-135m', 'fp8-block'), ('qwen3-30b-a3b', 'fp8-block')]:
    try: print(json.dumps(bench_decode(c, s, tokens=64)), flush=True)
    except Exception as e: print(json.dumps({'config': c, 'scheme': s, 'error': repr(e)[:400]}), flush=True)
" 2>&1 | tee "$OUT/decode_bench.jsonl"
else
  timeout 420 python3 benchmarks/decode.py gpu 2>&1 | tee "$OUT/decode_bench.jsonl"
fi
