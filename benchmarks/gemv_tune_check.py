"""Compare the autotuner's single-launch timings with the rotating benchmark for every candidate config.
Usage: python benchmarks/gemv_tune_check.py SCHEME N K [M]"""

import sys

import cupy

from lowbit.kernels import gemv as G
from lowbit.kernels.timing import time_config
from lowbit.verify.bench import copies_for, device_info, time_rotating
from lowbit.verify.bench_gemv import random_gpu_weight

scheme, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
m = int(sys.argv[4]) if len(sys.argv) > 4 else 1
_, l2 = device_info()
w0 = random_gpu_weight(scheme, n, k)
ws = [w0] + [random_gpu_weight(scheme, n, k, seed=i) for i in range(1, copies_for(w0.nbytes(), l2))]
x = cupy.random.standard_normal((m, k), dtype=cupy.float32).astype(G._bf16())
flush = cupy.empty(64 << 20, dtype=cupy.uint8)
G.gemv(ws[0], x)
print(scheme, n, k, "tuned:", list(G._TUNED.items())[-1][1], "planned:", G._planned(G._FILES[scheme], f"gemv_{G._kernel_tag(w0, 'bf16')}_m8", n, k, scheme, 0)[1:])
for cfg in dict.fromkeys([*G.TUNE_CANDIDATES]):
    single = time_config(lambda c: G.gemv(ws[0], x, cta=c[:2], splits=c[2]), cfg, flush) * 1e3
    rot = time_rotating(lambda i: G.gemv(ws[i], x, cta=cfg[:2], splits=cfg[2]), len(ws), 30)
    print(f"  {cfg}: autotune-style {single:.1f} us, rotating {rot:.1f} us, {100 * w0.nbytes() / rot / 1e3 / 4250:.0f}% of 4250 GB/s")
