"""Same-run A/B of the GEMV's TMA build against the register-buffered build (both in lowbit/kernels/gemv.py).

For each shape, scheme and M: the register-buffered GEMV with the first-call autotuner's choice (TMA candidates
left out), then every TMA candidate config (gemv.TMA_CANDIDATES) of every TMA build given, with rotating weights
(L2 never holds them). Prints one line per (scheme, shape, M) and writes OUT/ab_tma.json.

Usage: python benchmarks/gemv_tma_ab.py OUT SHAPES BUILDS MS
  SHAPES  "8192x29568,29568x8192"   BUILDS  LOWBIT_GEMV_TMA values, ";"-separated: "4,2,2;6,2,1"   MS  "1,8"
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cupy

from lowbit.kernels import gemv as G
from lowbit.verify.bench import BenchContext, copies_for, device_info, measure_copy_bandwidth, time_rotating
from lowbit.verify.bench_gemv import _cublas_bf16, random_gpu_weight

PAIRS = [("bf16", "bf16"), ("fp8-block", "bf16"), ("fp8-block", "fp8"), ("nvfp4", "bf16"), ("nvfp4", "nvfp4"),
         ("int4", "bf16")]


def main() -> None:
    out = Path(sys.argv[1])
    shapes = [tuple(map(int, s.split("x"))) for s in sys.argv[2].split(",")]
    builds = sys.argv[3].split(";")
    ms = [int(v) for v in sys.argv[4].split(",")]
    name, l2 = device_info()
    copy = measure_copy_bandwidth()
    ctx = BenchContext(shapes=shapes, batches=[1], gpu=name, l2_bytes=l2, iters=40)
    cands, rows = G.TMA_CANDIDATES, []
    print(f"{name} copy {copy:.0f} GB/s", flush=True)
    for n, k in shapes:
        base = {m: _cublas_bf16(ctx, n, k, m)[0] for m in ms}
        for scheme, act in PAIRS:
            w0 = random_gpu_weight(scheme, n, k)
            ws = [w0] + [random_gpu_weight(scheme, n, k, seed=i) for i in range(1, copies_for(w0.nbytes(), l2))]

            def pct(us):
                return 100 * w0.nbytes() / us / 1e3 / copy

            for m in ms:
                x = cupy.random.standard_normal((m, k), dtype=cupy.float32).astype(G._bf16())
                G.TMA_CANDIDATES = ()
                G._TUNED.clear()
                us0 = time_rotating(lambda i: G.gemv(ws[i], x, act=act), len(ws), ctx.iters)
                G.TMA_CANDIDATES = cands
                res = []
                for b in builds:
                    os.environ["LOWBIT_GEMV_TMA"] = b
                    tw = G.compile_defines(scheme, G.TMA_VARIANT)["GEMV_WARPS"]
                    for wr, s in [c for c in cands if c[0] <= tw]:
                        us = time_rotating(lambda i: G.gemv(ws[i], x, act=act, cta=(wr, 1), splits=s,
                                                            variant=G.TMA_VARIANT), len(ws), ctx.iters)
                        res.append((us, b, wr, s))
                os.environ.pop("LOWBIT_GEMV_TMA")
                rows.append({"gpu": name, "copy": copy, "scheme": scheme, "act": act, "n": n, "k": k, "m": m,
                             "old_us": us0, "tma": [list(r) for r in res], "cublas_us": base[m]})
                best = {b: min(r for r in res if r[1] == b) for b in builds}
                print(f"{scheme}/{act} {n}x{k} M{m}: old {us0:.1f}us {pct(us0):.0f}% | "
                      + " ".join(f"[{b}] {v[0]:.1f}us {pct(v[0]):.0f}% wr{v[2]}s{v[3]}" for b, v in best.items())
                      + f" | cublas {base[m]:.1f} us", flush=True)
            ws.clear()  # free the rotating copies before the next scheme's
            cupy.get_default_memory_pool().free_all_blocks()
        ctx._cublas_cache.clear()
    (out / "ab_tma.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
