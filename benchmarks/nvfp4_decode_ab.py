"""Same-run A/B of the nvfp4 GEMV decode (cuda/gemv_nvfp4.cu, GEMV_NVFP4_IMAD: 1 = one integer multiply a pair
places sign and magnitude, 0 = the shifts), M = 1, every GEMV build autotuned per variant:
  standalone: round-robin over the two variants (timing.time_once: weight evicted from L2, launch behind a spin
    kernel), the outputs compared bit for bit;
  decode: the runtime's batch-1 CUDA-graph decode (bench_decode, random weights, real shapes), one subprocess a
    variant (LOWBIT_GEMV_NVFP4_IMAD), alternating, ROUNDS rounds.
Usage: python benchmarks/nvfp4_decode_ab.py OUT_DIR [ROUNDS] [CONFIG,...]"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SHAPES = ((8192, 29568), (29568, 8192), (8192, 8192), (14336, 4096), (4096, 14336), (6144, 4096), (4096, 4096))


def standalone(out, reps: int = 15) -> None:
    import cupy

    from lowbit.formats import numerics
    from lowbit.kernels import gemv as G
    from lowbit.kernels.timing import FLUSH_BYTES, time_once
    from lowbit.verify.bench import measure_copy_bandwidth
    from lowbit.verify.bench_gemm import random_weight

    bw = measure_copy_bandwidth()
    flush = cupy.empty(FLUSH_BYTES, dtype=cupy.uint8)
    for n, k in SHAPES:
        w = random_weight("nvfp4", n, k, seed=1)
        nbytes = sum(int(t.nbytes) for t in w.tensors.values())
        x = cupy.random.standard_normal((1, k), dtype=cupy.float32).astype(numerics.BF16)
        ys = {v: cupy.full((1, n), float("nan"), numerics.BF16) for v in (0, 1)}

        def launch(v):
            os.environ["LOWBIT_GEMV_NVFP4_IMAD"] = str(v)
            G.gemv(w, x, out=ys[v])

        for v in (0, 1):
            launch(v)  # tunes this variant's builds
        same = bool((ys[0].view(cupy.uint16) == ys[1].view(cupy.uint16)).all())
        times = {0: [], 1: []}
        for _ in range(reps):
            for v in (0, 1):
                times[v].append(1e3 * time_once(launch, v, flush))
        row = {"n": n, "k": k, "copy_gbs": round(bw, 1), "bit_identical": same}
        for v, ts in times.items():
            ts.sort()
            med = ts[len(ts) // 2]
            row[f"imad{v}_us"] = round(med, 2)
            row[f"imad{v}_pct_copy"] = round(100 * nbytes / (med * 1e-6) / 1e9 / bw, 1)
        print(json.dumps(row), flush=True)
        out.write(json.dumps(row) + "\n")
        out.flush()


def decode_one(config: str) -> None:
    import cupy

    from lowbit.runtime.bench_decode import bench_decode

    r = bench_decode(config, "nvfp4")
    print(json.dumps({"gpu": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "config": config,
                      "imad": int(os.environ.get("LOWBIT_GEMV_NVFP4_IMAD", "1")),
                      "decode_tok_s": r["decode_tok_s"], "pct_roofline": r["pct_roofline"]}), flush=True)


def main() -> None:
    if sys.argv[1] == "--decode-one":
        decode_one(sys.argv[2])
        return
    d = Path(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    configs = (sys.argv[3] if len(sys.argv) > 3 else "mixtral-8x7b").split(",")
    with open(d / "nvfp4_decode_standalone.jsonl", "a") as out:
        standalone(out)
    with open(d / "nvfp4_decode_runtime.jsonl", "a") as out:
        for _ in range(rounds):
            for config in configs:
                for v in (1, 0):
                    env = dict(os.environ, LOWBIT_GEMV_NVFP4_IMAD=str(v))
                    r = subprocess.run([sys.executable, __file__, "--decode-one", config], env=env,
                                       capture_output=True, text=True)
                    line = (r.stdout.strip().splitlines() or [r.stderr[-400:]])[-1]
                    print(line, flush=True)
                    out.write(line + "\n")
                    out.flush()


if __name__ == "__main__":
    main()
