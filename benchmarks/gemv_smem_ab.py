"""Same-run A/B of the shared-memory decode GEMV (lowbit.kernels.gemv_smem, gemv_smem.DENSE) and of the MoE down
launch in shared memory (moe_gemv.DOWN_SMEM):
  1. standalone, M = 1, weight evicted from L2 before each launch (timing.time_config): the smem build
     against the autotuned build on the runtime's decode shapes;
  2. the runtime's batch-1 CUDA-graph decode (lowbit.runtime.bench_decode, random weights, real shapes) with
     (dense smem, down smem) = on/on, off/on, off/off, back to back per model and round.
  3. (--warps-cap) the same decode with the dense rule's warps a CTA capped at 16, 8 and 4.
Usage: python benchmarks/gemv_smem_ab.py OUT_DIR [ROUNDS] [CONFIG:SCHEME,...]
       python benchmarks/gemv_smem_ab.py OUT_DIR --standalone-only | --warps-cap"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SHAPES = (("fp8-block", 5120, 2048), ("fp8-block", 2048, 4096), ("int4", 6144, 4096), ("int4", 4096, 4096),
          ("nvfp4", 6144, 4096), ("bf16", 960, 576), ("bf16", 576, 1536), ("fp8-block", 4096, 4096),
          ("bf16", 4096, 4096), ("nvfp4", 4096, 4096), ("fp8-block", 768, 2048), ("fp8-block", 2048, 768),
          ("int4", 768, 2048), ("int4", 2048, 768), ("nvfp4", 2048, 768), ("bf16", 2048, 768))


def standalone(out, reps: int = 25) -> None:
    import cupy

    from lowbit.formats import numerics
    from lowbit.kernels import gemv as G
    from lowbit.kernels import gemv_smem
    from lowbit.kernels.timing import FLUSH_BYTES, time_once
    from lowbit.verify.bench_gemm import random_weight

    flush = cupy.empty(FLUSH_BYTES, dtype=cupy.uint8)
    for scheme, n, k in SHAPES:
        w = random_weight(scheme, n, k, seed=1)
        x = cupy.random.standard_normal((1, k), dtype=cupy.float32).astype(numerics.BF16)
        y = cupy.empty((1, n), numerics.BF16)
        gemv_smem.DENSE = True
        warps = gemv_smem.dense_warps(w, 1, "bf16", 0)
        gemv_smem.DENSE = False
        G.gemv(w, x, out=y)  # tunes
        tuned = next((v for key, v in G._TUNED.items() if key[1:3] == (n, k)), None)
        cfgs = {"tuned": None} | {f"smem{wk}": wk for wk in (2, 4, 8, 16)
                                  if gemv_smem.fits(scheme, k, 1, wk, wk, 0) and wk <= k // gemv_smem.KI[scheme]}

        def launch(c):
            if c is None:
                G.gemv(w, x, out=y)
            else:
                G.gemv(w, x, out=y, cta=(1, c), variant=G.SMEM_VARIANT)

        for c in cfgs.values():
            launch(c)
        times = {name: [] for name in cfgs}
        for _ in range(reps):  # round-robin, as the autotuner times
            for name, c in cfgs.items():
                times[name].append(1e3 * time_once(launch, c, flush))
        row = {"scheme": scheme, "n": n, "k": k, "smem_warps_by_rule": warps, "tuned": str(tuned)}
        for name, ts in times.items():
            ts.sort()
            row[f"{name}_us"] = ts[reps // 2]
            row[f"{name}_us_q1_q3"] = (ts[reps // 4], ts[3 * reps // 4])
        gemv_smem.DENSE = True
        print(json.dumps(row), flush=True)
        out.write(json.dumps(row) + "\n")
        out.flush()


def runtime(out, rounds: int, cases) -> None:
    import cupy

    from lowbit.kernels import gemv_smem, moe_gemv
    from lowbit.runtime.bench_decode import bench_decode
    from lowbit.verify.bench import measure_copy_bandwidth

    bw = measure_copy_bandwidth()
    gpu = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    for rnd in range(rounds):
        for config, scheme in cases:
            for dense, down in ((True, True), (False, True), (False, False)):
                gemv_smem.DENSE, moe_gemv.DOWN_SMEM = dense, down
                moe_gemv._TUNED.clear()
                r = bench_decode(config, scheme, copy_gbs=bw)
                row = {"gpu": gpu, "copy_GBps": bw, "round": rnd, "dense_smem": dense, "down_smem": down,
                       "config": config, "scheme": scheme, "decode_tok_s": r["decode_tok_s"],
                       "pct_roofline": r["pct_roofline"]}
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")
                out.flush()
                cupy.get_default_memory_pool().free_all_blocks()


def warps_cap(out, rounds: int, cases) -> None:
    """Decode tok/s with the dense rule's warps capped at 16, 8 and 4 (gemv_smem.RULE_MAX_WARPS)."""
    import cupy

    from lowbit.kernels import gemv_smem
    from lowbit.runtime.bench_decode import bench_decode
    from lowbit.verify.bench import measure_copy_bandwidth

    bw = measure_copy_bandwidth()
    for rnd in range(rounds):
        for config, scheme in cases:
            for cap in (16, 8, 4):
                gemv_smem.RULE_MAX_WARPS = cap
                r = bench_decode(config, scheme, copy_gbs=bw)
                row = {"round": rnd, "warps_cap": cap, "config": config, "scheme": scheme,
                       "decode_tok_s": r["decode_tok_s"], "pct_roofline": r["pct_roofline"], "copy_GBps": bw}
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")
                out.flush()
                cupy.get_default_memory_pool().free_all_blocks()
    gemv_smem.RULE_MAX_WARPS = gemv_smem.MAX_WARPS


def main() -> None:
    d = Path(sys.argv[1])
    if "--warps-cap" in sys.argv:
        with open(d / "gemv_smem_warps_cap.jsonl", "a") as out:
            warps_cap(out, 2, [c.split(":") for c in "qwen3-30b-a3b:fp8-block,mixtral-8x7b:int4,smollm2-135m:bf16"
                                                   .split(",")])
        return
    if "--standalone-only" in sys.argv:
        with open(d / "gemv_smem_standalone.jsonl", "a") as out:
            standalone(out)
        return
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    cases = [c.split(":") for c in (sys.argv[3] if len(sys.argv) > 3 else
                                    "qwen3-30b-a3b:fp8-block,mixtral-8x7b:int4,smollm2-135m:bf16").split(",")]
    with open(d / "gemv_smem_standalone.jsonl", "a") as out:
        standalone(out)
    with open(d / "gemv_smem_decode.jsonl", "a") as out:
        runtime(out, rounds, cases)


if __name__ == "__main__":
    main()
