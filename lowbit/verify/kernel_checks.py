"""GPU check of every quantized tensor: its GEMV kernel at M=1 and M=8 on random activations against the
float64 reference of the dequantized weight, within `lowbit.verify.reference.error_bound(scheme, K)`."""

from __future__ import annotations

import logging

import numpy as np

from lowbit.formats import numerics
from lowbit.verify.checks import CheckResult, Linear, VerifyContext, fail, passed, register_tensor_check
from lowbit.verify.reference import error_bound, gemv_reference

log = logging.getLogger(__name__)
KERNEL_MS = (1, 8)


def gpu_available() -> tuple[bool, str]:
    """(usable, why not / device name)."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False, "no CUDA device"
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        return True, name.decode() if isinstance(name, bytes) else str(name)
    except Exception as e:  # noqa: BLE001 - any import/driver failure means "no GPU here"
        return False, f"cupy/CUDA unavailable ({type(e).__name__})"


def _kernel_result(lin: Linear, m: int, scheme: str, x: np.ndarray, y: np.ndarray, wdq: np.ndarray):
    yr, absum, rms = gemv_reference(wdq, x.astype(np.float32), "bf16")
    bound = error_bound(scheme, lin.k, yr, absum, rms)
    yk = y.astype(np.float64)
    check = f"gemv M={m}"
    if not np.isfinite(yk).all():
        return fail(lin.prefix, check, f"{int((~np.isfinite(yk)).sum())} outputs are NaN/inf (unwritten or overflow)")
    ratio = float((np.abs(yk - yr) / bound).max())
    detail = f"max |err|/bound {ratio:.3f} (K={lin.k})"
    if ratio <= 1.0:
        return passed(lin.prefix, check, detail, value=round(ratio, 4), limit=1.0, badness=ratio)
    r = fail(lin.prefix, check, detail, value=round(ratio, 4), limit=1.0)
    r.badness = ratio
    return r


def gemv_check(ctx: VerifyContext, lin: Linear) -> list[CheckResult]:
    """Run the scheme's GEMV on the GPU (poisoned output) and compare with the float64 reference."""
    if not ctx.gpu:
        return []
    import cupy

    from lowbit.formats import scheme_module
    from lowbit.kernels.gemv import gemv
    from lowbit.kernels.weights import to_gpu

    t = ctx.tensors(lin)
    w = to_gpu(ctx.scheme, t, name=lin.prefix, **ctx.opts)
    wdq = scheme_module(ctx.scheme).dequantize(t)
    rng = ctx.rng(lin)
    out = []
    for m in KERNEL_MS:
        x = rng.standard_normal((m, lin.k)).astype(np.float32).astype(numerics.BF16)
        y = cupy.full((m, lin.n), np.nan, dtype=numerics.BF16)
        gemv(w, cupy.asarray(x), out=y)
        out.append(_kernel_result(lin, m, ctx.scheme, x, cupy.asnumpy(y), wdq))
    return out


register_tensor_check(gemv_check)
