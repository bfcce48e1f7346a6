"""Quantization error against the source weight (`lowbit verify --against SRC`): relative error and SQNR.

SQNR = 10 log10(sum W^2 / sum (W - W')^2) over the whole tensor, W the source (float32 of BF16), W' the
dequantized checkpoint tensor. A tensor passes when its SQNR is at or above its scheme's floor:

- fp8-block: E4M3 keeps 3 mantissa bits; round-to-nearest leaves a relative error uniform in at most
  +-2^-4 of the value's binade, i.e. noise/signal <= 2^-8/3, SQNR >= 10 log10(768) = 28.9 dB for values in
  E4M3's normal range (Gaussian, Laplace and Student-t weights measure 31.5-32.3 dB). Values far below
  their 128x128 block's amax fall into subnormals and cost a little more: floor 28 dB.
- nvfp4: E2M1 has 1 mantissa bit: the relative step between codes is up to 1/3 (4 -> 6), and the per-16
  E4M3 scale adapts to each group, so the error depends little on the distribution: 19.9-22.5 dB measured
  on uniform, Gaussian, Laplace, Student-t(3) and outlier-laden weights. Floor 16 dB.
- int4 (symmetric, step = amax/7.5 per group of G): noise = step^2/12, so
  SQNR = 10 log10(12 * 7.5^2) - 20 log10(c) = 28.3 - 20 log10(c), c = amax/rms of a group (crest factor).
  Gaussian groups of 128 have c ~ 2.8 (19.3 dB); we accept groups with c up to 8 (heavy outliers): floor
  28.3 - 18.1 = 10.2 dB, the same for asymmetric (its step is (max-min)/15 <= 2 amax/15). Student-t(3)
  weights measure 13.4 dB at G=128.
A corrupt tensor (a wrong scale, shuffled or flipped codes) lands far below these floors (near 0 dB or
negative), while a correct one stays above them.
"""

from __future__ import annotations

import numpy as np

from lowbit.formats import scheme_module
from lowbit.verify.checks import CheckResult, Linear, VerifyContext, fail, passed, register_tensor_check

SQNR_FLOOR_DB = {"fp8-block": 28.0, "nvfp4": 16.0, "int4": 10.2}


def sqnr_db(w: np.ndarray, wq: np.ndarray) -> tuple[float, float]:
    """(SQNR in dB, relative Frobenius error) of wq against w, in float64."""
    w = np.asarray(w, dtype=np.float64)
    e = w - np.asarray(wq, dtype=np.float64)
    sig, noise = float((w * w).sum()), float((e * e).sum())
    if noise == 0:
        return float("inf"), 0.0
    if sig == 0:
        return float("-inf"), float("inf")
    return 10 * np.log10(sig / noise), float(np.sqrt(noise / sig))


def against_check(ctx: VerifyContext, lin: Linear) -> list[CheckResult]:
    """SQNR of the dequantized tensor against `prefix.weight` of the --against source."""
    if ctx.source is None:
        return []
    src_name = f"{lin.prefix}.weight"
    if src_name not in ctx.source:
        return [fail(lin.prefix, "sqnr", f"the source has no tensor {src_name}")]
    if tuple(ctx.source.shape(src_name)) != (lin.n, lin.k):
        return [fail(lin.prefix, "sqnr", f"source {src_name} is {list(ctx.source.shape(src_name))}, "
                                         f"the checkpoint's is [{lin.n}, {lin.k}]")]
    w = np.asarray(ctx.source.get(src_name)).astype(np.float32)
    wq = scheme_module(ctx.scheme).dequantize(ctx.tensors(lin))
    db, rel = sqnr_db(w, wq)
    floor = SQNR_FLOOR_DB[ctx.scheme]
    detail = f"SQNR {db:.1f} dB (floor {floor}), rel err {rel:.2e}"
    badness = floor / db if db > 0 else float("inf")
    if db >= floor:
        return [passed(lin.prefix, "sqnr", detail, value=round(db, 2), limit=floor, badness=badness)]
    r = fail(lin.prefix, "sqnr", detail, value=round(db, 2), limit=floor)
    r.badness = max(badness, 1.0 + 1e-9)
    return [r]


register_tensor_check(against_check)
