"""Launch-parameter sweep of the GEMV kernels (warps per CTA, unroll, split-K) on a few shapes.
Usage: python benchmarks/gemv_sweep.py  (set LOWBIT_GEMV_WARPS / _STAGES / _STAGE_BYTES per process)."""

from __future__ import annotations

import os
import sys

import cupy

from lowbit.kernels import gemv as G
from lowbit.verify.bench import copies_for, device_info, measure_copy_bandwidth, time_rotating
from lowbit.verify.bench_gemv import random_gpu_weight

name, l2 = device_info()
copy = measure_copy_bandwidth()
shapes = [(8192, 8192), (4096, 4096), (29568, 8192), (8192, 29568)]
schemes = sys.argv[1].split(",") if len(sys.argv) > 1 else ["bf16", "fp8-block", "nvfp4", "int4"]
print(f"{name} copy {copy:.0f} GB/s tuning={G.COMPILE_TUNING} env={ {k: v for k, v in os.environ.items() if k.startswith("LOWBIT_GEMV")} } plan={[G.plan_launch(n, k, sch, 132, 96) for n, k in [(8192, 8192), (29568, 8192)] for sch in ["bf16", "nvfp4"]]}")
for n, k in shapes:
    for scheme in schemes:
        ws = [random_gpu_weight(scheme, n, k, seed=i) for i in range(copies_for(n * k * 2, l2))]
        for m in (1, 8):
            x = cupy.random.standard_normal((m, k), dtype=cupy.float32).astype(G._bf16())
            res = []
            for cfg in [None]:
                kw = {} if cfg is None else {"cta": cfg[:2], "splits": cfg[2]}
                us = time_rotating(lambda i: G.gemv(ws[i], x, **kw), len(ws), 30)
                res.append(f"{'auto' if cfg is None else cfg}={us:.1f}us/{100 * ws[0].nbytes() / us / 1e3 / copy:.0f}%")
            print(f"{scheme:10s} {n}x{k} M={m}: " + " ".join(res) + f" tuned={list(G._TUNED.values())[-1] if G._TUNED else None}", flush=True)
        del ws
        cupy.get_default_memory_pool().free_all_blocks()
