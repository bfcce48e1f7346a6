"""Same-run A/B of the split-slab shared-memory GEMV (gemv_smem.cuh with grid y = splits, lowbit.kernels.gemv_smem
.split_candidates) against the build the autotuner picks without it (register loop or TMA), on large shapes.

For each scheme and shape: the autotuner runs with gemv_smem.SPLIT off and its choice is kept; then that choice
and every split-slab candidate (warps, splits), built with GEMV_SMEM_UNROLL 1 and 2, are timed round-robin
(timing.time_once: weight evicted from L2, launch behind a spin kernel), `reps` launches each; the median, % of
the copy bandwidth measured in the same run, and the largest difference from the tuned build's output.
Usage: python benchmarks/gemv_smem_split.py OUT.jsonl [REPS] [M,...] [SCHEME,...]"""

from __future__ import annotations

import json
import os
import sys

SHAPES = ((8192, 29568), (29568, 8192), (8192, 8192), (4096, 14336), (14336, 4096), (4096, 4096))
SCHEMES = ("int4", "nvfp4", "fp8-block", "bf16")


def main(path: str, reps: int = 15, ms=(1,), schemes=SCHEMES) -> None:
    import cupy

    from lowbit.formats import numerics
    from lowbit.kernels import gemv as G
    from lowbit.kernels import gemv_smem
    from lowbit.kernels.timing import FLUSH_BYTES, time_once
    from lowbit.verify.bench import measure_copy_bandwidth
    from lowbit.verify.bench_gemm import random_weight

    bw = measure_copy_bandwidth()
    gpu = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    flush = cupy.empty(FLUSH_BYTES, dtype=cupy.uint8)
    with open(path, "a") as out:
        for scheme in schemes:
            for n, k in SHAPES:
                w = random_weight(scheme, n, k, seed=1)
                nbytes = sum(int(t.nbytes) for t in w.tensors.values())
                for m in ms:
                    x = cupy.random.standard_normal((m, k), dtype=cupy.float32).astype(numerics.BF16)
                    y = cupy.empty((m, n), numerics.BF16)
                    gemv_smem.SPLIT = False
                    G.gemv(w, x, out=y)  # tunes without the split build
                    gemv_smem.SPLIT = True
                    tuned = next((v for key, v in G._TUNED.items() if key[1:3] == (n, k) and key[4] == (m > 1)), None)
                    ref = y.astype(cupy.float32)
                    cfgs = {"tuned": None}
                    for u in (1, 2):
                        os.environ["LOWBIT_GEMV_SMEM_UNROLL"] = str(u)
                        for wk, s in gemv_smem.split_candidates(w, "bf16", 0):
                            cfgs[f"smem_u{u}_w{wk}_s{s}"] = (u, wk, s)

                    def launch(c):
                        if c is None:
                            G.gemv(w, x, out=y)
                        else:
                            os.environ["LOWBIT_GEMV_SMEM_UNROLL"] = str(c[0])
                            G.gemv(w, x, out=y, cta=(1, c[1]), splits=c[2], variant=G.SMEM_VARIANT)

                    err = {}
                    for name, c in cfgs.items():
                        y.fill(float("nan"))
                        launch(c)
                        d = cupy.abs(y.astype(cupy.float32) - ref)
                        err[name] = float(cupy.nan_to_num(d, nan=float("inf")).max() / cupy.abs(ref).max())
                    times = {name: [] for name in cfgs}
                    for _ in range(reps):
                        for name, c in cfgs.items():
                            times[name].append(1e3 * time_once(launch, c, flush))
                    row = {"gpu": gpu, "copy_gbs": round(bw, 1), "scheme": scheme, "n": n, "k": k, "m": m,
                           "bytes": nbytes, "tuned": str(tuned)}
                    for name, ts in times.items():
                        ts.sort()
                        med = ts[len(ts) // 2]
                        row[name] = {"us": round(med, 2), "pct_copy": round(100 * nbytes / (med * 1e-6) / 1e9 / bw, 1),
                                     "rel_err_vs_tuned": err[name]}
                    best = min((v["us"], name) for name, v in row.items() if name.startswith("smem"))
                    row["best_smem"] = best[1]
                    row["speedup_best_smem"] = round(row["tuned"]["us"] / best[0], 3)
                    print(json.dumps({key: row[key] for key in ("scheme", "n", "k", "m", "tuned", "best_smem",
                                                                 "speedup_best_smem")} |
                                     {"tuned_us": row["tuned"]["us"], "tuned_pct": row["tuned"]["pct_copy"],
                                      "smem_us": best[0], "smem_pct": row[best[1]]["pct_copy"]}), flush=True)
                    out.write(json.dumps(row) + "\n")
                    out.flush()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], int(a[1]) if len(a) > 1 else 15, tuple(int(v) for v in a[2].split(",")) if len(a) > 2 else (1,),
         tuple(a[3].split(",")) if len(a) > 3 else SCHEMES)
