"""Compile-variant sweep of the GEMV kernels at M=1: every (GEMV_MIN_BLOCKS, GEMV_UNROLL, GEMV_XPREFETCH)
x scheme x shape, each with its first-call autotuned launch, beside cuBLAS BF16 and the
device-to-device copy ceiling measured in the same run. Picks COMPILE_TUNING for lowbit/kernels/gemv.py.
Usage: python benchmarks/gemv_variants.py OUT_DIR [scheme,...]  (every variant is compiled first, 16 threads)"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import sys
from pathlib import Path

import cupy

from lowbit.kernels import compile as C
from lowbit.kernels import gemv as G
from lowbit.verify.bench import BenchContext, copies_for, device_info, measure_copy_bandwidth, time_rotating
from lowbit.verify.bench_gemv import _cublas_bf16, random_gpu_weight

SHAPES = [(8192, 8192), (29568, 8192), (4096, 4096)]
KNOBS = ("GEMV_MIN_BLOCKS", "GEMV_UNROLL", "GEMV_XPREFETCH")
VARIANTS = [(mb, un, xp) for mb, un, xp in itertools.product((1, 2, 3), (1, 2, 3, 4), (0, 1))]


def precompile(schemes, arch):
    jobs = []
    for scheme in schemes:
        for v in VARIANTS:
            G.COMPILE_TUNING[scheme] = dict(zip(KNOBS, v))
            jobs.append((G._FILES[scheme], C._define_flags(G.compile_defines(scheme))))
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda j: C._cubin(j[0], j[1], arch), jobs))


def main() -> None:
    out = Path(sys.argv[1])
    schemes = sys.argv[2].split(",") if len(sys.argv) > 2 else ["bf16", "fp8-block", "nvfp4", "int4"]
    keep = dict(G.COMPILE_TUNING)
    precompile(schemes, C.device_arch())
    G.COMPILE_TUNING.update(keep)
    name, l2 = device_info()
    copy = measure_copy_bandwidth()
    ctx = BenchContext(shapes=SHAPES, batches=[1], gpu=name, l2_bytes=l2, iters=30)
    rows = []
    print(f"{name}: copy {copy:.0f} GB/s; shipped tuning {keep}", flush=True)
    for n, k in SHAPES:
        base, _ = _cublas_bf16(ctx, n, k, 1)
        print(f"cublas-bf16 {n}x{k}: {base:.1f} us {100 * n * k * 2 / base / 1e3 / copy:.0f}%", flush=True)
        for scheme in schemes:
            w0 = random_gpu_weight(scheme, n, k)
            ws = [w0] + [random_gpu_weight(scheme, n, k, seed=i) for i in range(1, copies_for(w0.nbytes(), l2))]
            x = cupy.random.standard_normal((1, k), dtype=cupy.float32).astype(G._bf16())
            line = []
            for v in VARIANTS:
                G.COMPILE_TUNING[scheme] = dict(zip(KNOBS, v))
                G._planned.cache_clear()
                G._TUNED.clear()
                us = time_rotating(lambda i: G.gemv(ws[i], x), len(ws), ctx.iters)
                pct = 100 * w0.nbytes() / us / 1e3 / copy
                cfg = next(iter(G._TUNED.values()), None)
                rows.append({"gpu": name, "copy_gbs": copy, "scheme": scheme, "n": n, "k": k, "variant": v,
                             "us": us, "pct_copy": pct, "cublas_us": base, "launch": cfg})
                line.append(f"{v}:{pct:.0f}%")
            print(f"{scheme:9s} {n}x{k}: " + " ".join(line), flush=True)
            G.COMPILE_TUNING.update(keep)
            del ws, w0
            cupy.get_default_memory_pool().free_all_blocks()
        ctx._cublas_cache.clear()
    (out / "gemv_variants.json").write_text(json.dumps(rows, indent=1))
    for scheme in schemes:
        best = max(VARIANTS, key=lambda v: sum(r["pct_copy"] for r in rows if r["scheme"] == scheme and r["variant"] == v))
        print(f"best {scheme}: {best} " + " ".join(f"{r['n']}x{r['k']}={r['pct_copy']:.0f}%/{r['cublas_us'] / r['us']:.2f}x"
                                                  for r in rows if r["scheme"] == scheme and r["variant"] == best))


if __name__ == "__main__":
    main()
