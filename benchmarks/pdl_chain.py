"""Programmatic dependent launch, measured: a CUDA graph of 64 steps of GEMV + the runtime's add + RMSNorm
kernel (which reads the GEMV's output; weights rotated past L2), time per step with PDL on and off, per
scheme and shape. Usage: python benchmarks/pdl_chain.py"""

from __future__ import annotations

import json
import os


def main() -> None:
    import cupy

    from lowbit.formats.numerics import BF16
    from lowbit.kernels.gemv import gemv
    from lowbit.runtime.cuda_fused import Fused
    from lowbit.verify.bench_gemm import _graph_time
    from lowbit.verify.bench_gemv import random_gpu_weight

    fused = Fused()
    for scheme in ("bf16", "fp8-block", "nvfp4", "int4"):
        for n, k in ((2048, 2048), (4096, 4096), (4096, 14336)):
            ws = [random_gpu_weight(scheme, n, k, seed=i) for i in range(12)]
            norm_w = cupy.ones(n, cupy.float32)
            xb = cupy.random.standard_normal((1, k), dtype=cupy.float32).astype(BF16)
            h = cupy.zeros((1, n), cupy.float32)
            row = {"scheme": scheme, "n": n, "k": k}
            for pdl in ("0", "1"):
                os.environ["LOWBIT_PDL"] = pdl

                def step(j):
                    y = gemv(ws[j % len(ws)], xb)
                    fused.add_rms_norm(h, y, norm_w, 1e-6)

                row[f"pdl{pdl}_us"] = _graph_time(step, 64) * 1e6
            print(json.dumps(row), flush=True)
            ws = None
            cupy.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main()
