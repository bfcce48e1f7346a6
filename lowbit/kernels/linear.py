"""`linear(w, x)`: y = x @ W^T for any batch, picking the kernel: GEMV for M <= 8, GEMM above (which itself
runs the GEMV for M <= 16 where that measured faster: gemm.small_m_uses_gemv), the GEMV also for M <= 16
where the GEMM has no kernel (W4A4 activations, K % 32 != 0).

x is bf16 [..., K] (leading dims are flattened into M); the result is bf16 [..., N]. When
`lowbit.kernels.gemm` is not importable, or its kernels cannot take the weight's K (K % 32 != 0 for a
quantized weight), M > 16 falls back to dequantize + cupy matmul (float32), correct but slow; logged once.
"""

from __future__ import annotations

import logging

from lowbit.errors import KernelError
from lowbit.kernels.gemv import MAX_M as GEMV_MAX_M
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


def linear(w: GpuWeight, x, act: str = "bf16", out=None):
    if x.ndim < 1 or x.shape[-1] != w.k:
        raise KernelError(f"{w.name}: x has shape {tuple(x.shape)}, expected [..., {w.k}] (K of the weight)")
    lead = tuple(x.shape[:-1])
    x2 = x.reshape(-1, w.k)
    m = x2.shape[0]
    try:
        from lowbit.kernels.gemm import GEMV_ALWAYS_M, gemm, gemm_takes
    except ImportError:
        gemm = None
    has_gemm = gemm is not None and act in ("bf16", "fp8") and gemm_takes(w)
    if m <= GEMV_MAX_M and (not has_gemm or m <= GEMV_ALWAYS_M):
        from lowbit.kernels.gemv import gemv

        y = gemv(w, x2, act=act, out=out)
    else:
        y = gemm(w, x2, act=act) if has_gemm else _fallback(w, x2)
    return y.reshape(lead + (w.n,))
