"""Same-run A/B of programmatic dependent launch in the runtime: batch-1 graph decode tok/s
(lowbit.runtime.bench_decode, random weights with the real shapes) with LOWBIT_PDL=1 and =0, back to
back per model. Usage: python benchmarks/pdl_decode_ab.py [ROUNDS]"""

from __future__ import annotations

import json
import os
import sys

CASES = (("qwen3-30b-a3b", "fp8-block"), ("mixtral-8x7b", "int4"), ("smollm2-135m", "bf16"), ("smollm2-135m", "nvfp4"))


def main() -> None:
    import cupy

    from lowbit.runtime.bench_decode import bench_decode
    from lowbit.verify.bench import measure_copy_bandwidth

    bw = measure_copy_bandwidth()
    for rnd in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1):
        for config, scheme in CASES:
            for pdl in ("1", "0"):
                os.environ["LOWBIT_PDL"] = pdl
                r = bench_decode(config, scheme, copy_gbs=bw)
                print(json.dumps({"round": rnd, "pdl": pdl, "config": config, "scheme": scheme,
                                  "decode_tok_s": r["decode_tok_s"]}), flush=True)
                cupy.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main()
