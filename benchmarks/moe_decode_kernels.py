"""MoE decode step (routing given, CUDA graph of 32 steps with different tokens and routings): the two
decode kernel families of lowbit.kernels.moe (DECODE_KERNELS "gemv" and "warp") side by side, the grouped
GEMV with its down launch in shared memory (moe_gemv.DOWN_SMEM, "gemv") and split over K ("gemv_splitk"), and
the grouped-GEMV launch plans around the planner's, for Qwen3-30B-A3B (128 experts, top 8, 2048 x 768) and
Mixtral-8x7B (8 experts, top 2, 4096 x 14336) shapes. Roofline = the chosen experts' bytes at the copy
bandwidth measured in the same run.
Usage: python benchmarks/moe_decode_kernels.py OUT_DIR [--sweep] [--only=MODEL:SCHEME,...]"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CASES = (("qwen3-30b-a3b", "fp8-block", 128, 8, 2048, 768), ("qwen3-30b-a3b", "nvfp4", 128, 8, 2048, 768),
         ("qwen3-30b-a3b", "int4", 128, 8, 2048, 768), ("qwen3-30b-a3b", "bf16", 128, 8, 2048, 768),
         ("mixtral-8x7b", "nvfp4", 8, 2, 4096, 14336), ("mixtral-8x7b", "int4", 8, 2, 4096, 14336),
         ("mixtral-8x7b", "fp8-block", 8, 2, 4096, 14336))
GATE_UP = ((1, 8, 1), (2, 4, 1), (4, 2, 1), (8, 1, 1), (1, 8, 2), (2, 4, 2), (4, 1, 2), (4, 1, 4), (8, 1, 2),
           (2, 2, 4), (1, 4, 4))
DOWN = ((1, 8, 1), (2, 4, 1), (4, 2, 1), (8, 1, 1), (4, 1, 2), (2, 4, 2), (1, 8, 2), (4, 1, 4), (2, 2, 4),
        (1, 4, 6))


def main() -> None:
    import cupy
    import numpy as np

    from lowbit.formats import numerics
    from lowbit.kernels import gemv, moe, moe_gemv
    from lowbit.kernels.moe import MoeWeights
    from lowbit.verify.bench_gemm import _graph_time, copy_bandwidth, random_weight

    out = Path(sys.argv[1])
    sweep = "--sweep" in sys.argv
    gpu = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    bw = copy_bandwidth()
    rows = []
    steps = 32
    only = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--only=")), None)
    for model, scheme, e, k, h, i in CASES:
        if only and f"{model}:{scheme}" not in only:
            continue
        mw = MoeWeights(scheme, random_weight(scheme, i, h, e, 1), random_weight(scheme, i, h, e, 2),
                        random_weight(scheme, h, i, e, 3))
        rng = np.random.default_rng(0)
        xs = [cupy.random.standard_normal((1, h), dtype=cupy.float32).astype(numerics.BF16) for _ in range(steps)]
        ids = [cupy.asarray(rng.choice(e, k, replace=False)[None, :].astype(np.int32)) for _ in range(steps)]
        wts = [cupy.asarray(rng.random((1, k)).astype(np.float32)) for _ in range(steps)]
        roof = k * mw.expert_nbytes() / bw * 1e6
        row = {"model": model, "scheme": scheme, "experts": e, "top_k": k, "hidden": h, "inter": i,
               "roofline_us": roof, "copy_GBps": bw / 1e9}
        for label, kern, smem in (("warp", "warp", False), ("gemv_splitk", "gemv", False), ("gemv", "gemv", True)):
            moe.DECODE_KERNELS, moe_gemv.DOWN_SMEM = kern, smem
            moe_gemv._TUNED.clear()
            row[f"{label}_us"] = _graph_time(lambda j: moe._decode(xs[j], ids[j], wts[j], mw), steps) * 1e6
            row[f"{label}_gate_up_us"] = _graph_time(
                lambda j: moe._decode(xs[j], ids[j], wts[j], mw, only="gate_up"), steps) * 1e6
        tuned = next(iter(moe_gemv._TUNED.values()), (None, "untuned"))
        row["down_smem"], row["tuned"] = str(tuned[1]), str(tuned)
        fg = moe_gemv.gemv_fn("gate_up", mw)
        fd = moe_gemv.gemv_fn("down", mw)
        plan = moe_gemv.plan_decode(1, k, i, h, scheme, gemv._sm_count(0), max(fg.num_regs, fd.num_regs))
        row["plan"] = plan
        row["regs"] = (int(fg.num_regs), int(fd.num_regs))
        if sweep:
            gu = {}
            for c in dict.fromkeys((plan[0],) + GATE_UP):
                gu[c] = _graph_time(lambda j: moe_gemv.decode_gemv(xs[j], ids[j], wts[j], mw, only="gate_up",
                                                                   cfg=(c, plan[1])), steps) * 1e6
            dn = {}
            best_gu = min(gu, key=gu.get)
            smem = tuple(("smem", wk) for wk in (1, 2) if moe_gemv.down_smem_fits(mw, k, wk, 0))
            for c in dict.fromkeys((plan[1],) + DOWN + smem):
                dn[c] = _graph_time(lambda j: moe_gemv.decode_gemv(xs[j], ids[j], wts[j], mw, cfg=(best_gu, c)),
                                    steps) * 1e6 - gu[best_gu]
            if smem:  # the whole step (gate/up + the shared-memory down) per gate/up plan
                pair = {}
                for c in gu:
                    for sd in smem:
                        pair[f"{c} + {sd}"] = _graph_time(
                            lambda j: moe_gemv.decode_gemv(xs[j], ids[j], wts[j], mw, cfg=(c, sd)), steps) * 1e6
                row["sweep_pair_smem_us"] = pair
            row["sweep_gate_up_us"] = {str(c): v for c, v in gu.items()}
            row["sweep_down_us"] = {str(c): v for c, v in dn.items()}
        rows.append(row)
        print(json.dumps(row), flush=True)
        mw = None  # free the experts before the next case
        cupy.get_default_memory_pool().free_all_blocks()
    lines = [f"GPU: {gpu}; copy {bw / 1e9:.0f} GB/s", "",
             "| model | scheme | warp us (gate_up) | gemv split-K down us (gate_up) | gemv us (gate_up; down) "
             "| roofline us | gemv / roofline |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['scheme']} | {r['warp_us']:.1f} ({r['warp_gate_up_us']:.1f}) | "
                     f"{r['gemv_splitk_us']:.1f} ({r['gemv_splitk_gate_up_us']:.1f}) | "
                     f"{r['gemv_us']:.1f} ({r['gemv_gate_up_us']:.1f}; {r['down_smem']}) | {r['roofline_us']:.1f} | "
                     f"{r['gemv_us'] / r['roofline_us']:.2f} |")
    md = "\n".join(lines)
    print(md)
    (out / "moe_decode_kernels.json").write_text(json.dumps({"gpu": gpu, "rows": rows}, indent=1))
    (out / "moe_decode_kernels.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
