"""`linear(w, x)`: y = x @ W^T for any batch, picking the kernel: GEMV for M <= 8, GEMM above (which itself
runs the GEMV for M <= 16 where that measured faster: small_m_uses_gemv below), the GEMV also for M <= 16
where the GEMM has no kernel (W4A4 activations, K % 32 != 0).

x is bf16 [..., K] (leading dims are flattened into M); the result is bf16 [..., N]. When
`lowbit.kernels.gemm` is not importable, or its kernels cannot take the weight's K (K % 32 != 0 for a
quantized weight), M > 16 falls back to dequantize + cupy matmul (float32), correct but slow; logged once.
"""

from __future__ import annotations

import logging

from lowbit.errors import KernelError
from lowbit.kernels.gemv import MAX_M as GEMV_MAX_M
from lowbit.kernels.timing import fastest_config
from lowbit.kernels.weights import GpuWeight

log = logging.getLogger(__name__)
_warned = False


def _fallback(w: GpuWeight, x2):
    import cupy

    global _warned
    if not _warned:
        log.warning("%s: no GEMM kernel for this weight; M > 16 uses dequantize + cupy matmul (slow)", w.name)
        _warned = True
    y = x2.astype(cupy.float32) @ w.dequantize().T
    return y.astype(x2.dtype)


#: M up to this always runs the GEMV kernels (lowbit.kernels.gemv): at M = 4 they beat the GEMM on every bench
#: shape and scheme (H200, 2026-11-27: e.g. nvfp4 72b mlp.up 68 us against 132, int4 Qwen3 qkv 9.5 against 14.1)
GEMV_ALWAYS_M = 8
_SMALL_M_CHOICE: dict = {}


def small_m_uses_gemv(w: GpuWeight, x, act: str, y) -> bool:
    """Whether this call (M <= 16) runs the GEMV kernels rather than the GEMM: always up to GEMV_ALWAYS_M; for
    M = 9..16 the faster of the two, timed once per (scheme, act, N, K, device) on this call's operands. At
    M = 16 neither wins everywhere (H200, 2026-11-27, GPU time: int4 72b mlp.up GEMM 82 us, GEMV 103; nvfp4
    the same shape GEMM 132, GEMV 102; GEMV ahead on every 7b and Qwen3 shape). LOWBIT_GEMM_GEMV=0: never."""
    import os

    import cupy

    from lowbit.kernels import gemv as G

    m = x.shape[0]
    if m > G.MAX_M or os.environ.get("LOWBIT_GEMM_GEMV", "1") == "0":
        return False
    if m <= GEMV_ALWAYS_M:
        return True
    key = (w.scheme, act, w.n, w.k, cupy.cuda.Device().id)
    if key not in _SMALL_M_CHOICE:
        def run(path):
            if path == "gemv":
                G.gemv(w, x, act=act, out=y)
            else:
                from lowbit.kernels.gemm import _gemm_kernels

                _gemm_kernels(w, x, act, y)

        _SMALL_M_CHOICE[key] = fastest_config(run, ["gemv", "gemm"]) == "gemv"
    return _SMALL_M_CHOICE[key]


def linear(w: GpuWeight, x, act: str = "bf16", out=None):
    if x.ndim < 1 or x.shape[-1] != w.k:
        raise KernelError(f"{w.name}: x has shape {tuple(x.shape)}, expected [..., {w.k}] (K of the weight)")
    lead = tuple(x.shape[:-1])
    x2 = x.reshape(-1, w.k)
    m = x2.shape[0]
    try:
        from lowbit.kernels.gemm import gemm, gemm_takes
    except ImportError:
        gemm = None
    has_gemm = gemm is not None and act in ("bf16", "fp8") and gemm_takes(w)
    if m <= GEMV_MAX_M and (not has_gemm or m <= GEMV_ALWAYS_M):
        from lowbit.kernels.gemv import gemv

        y = gemv(w, x2, act=act, out=out)
    else:
        y = gemm(w, x2, act=act) if has_gemm else _fallback(w, x2)
    return y.reshape(lead + (w.n,))
