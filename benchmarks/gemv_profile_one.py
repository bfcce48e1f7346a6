"""Run one GEMV a few times (for `ncu`): python benchmarks/gemv_profile_one.py SCHEME N K M."""

import sys

import cupy

from lowbit.kernels import gemv as G
from lowbit.verify.bench_gemv import random_gpu_weight

scheme, n, k, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
w = random_gpu_weight(scheme, n, k)
x = cupy.random.standard_normal((m, k), dtype=cupy.float32).astype(G._bf16())
for _ in range(4):
    G.gemv(w, x)
cupy.cuda.Device().synchronize()
