"""Same-run A/B of the MoE decode's down launch with its weights in shared memory (moe_gemv.DOWN_SMEM) against
the split-K down launch: batch-1 CUDA-graph decode tok/s of the runtime (lowbit.runtime.bench_decode, random
weights with the real shapes), back to back per model and round.
Usage: python benchmarks/moe_down_smem_ab.py OUT.jsonl [ROUNDS] [CONFIG:SCHEME,...]"""

from __future__ import annotations

import json
import sys


def main() -> None:
    import cupy

    from lowbit.kernels import moe_gemv
    from lowbit.runtime.bench_decode import bench_decode
    from lowbit.verify.bench import measure_copy_bandwidth

    out = open(sys.argv[1], "a")
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    cases = [c.split(":") for c in (sys.argv[3] if len(sys.argv) > 3 else "qwen3-30b-a3b:fp8-block").split(",")]
    bw = measure_copy_bandwidth()
    gpu = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    for rnd in range(rounds):
        for config, scheme in cases:
            for smem in (True, False):
                moe_gemv.DOWN_SMEM = smem
                moe_gemv._TUNED.clear()
                r = bench_decode(config, scheme, copy_gbs=bw)
                row = {"gpu": gpu, "copy_GBps": bw, "round": rnd, "down_smem": smem, "config": config,
                       "scheme": scheme, "decode_tok_s": r["decode_tok_s"], "pct_roofline": r["pct_roofline"],
                       "down_plan": str(next(iter(moe_gemv._TUNED.values()), (None, "untuned"))[1])}
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")
                out.flush()
                cupy.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main()
