"""Shared helpers of the GPU kernel tests: random weights quantized by lowbit.formats, reference checks."""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np

from lowbit.formats import scheme_module
from lowbit.kernels.weights import reference_dequantize
from lowbit.verify.reference import error_bound, gemv_reference

BF16 = np.dtype(ml_dtypes.bfloat16)


def fresh_rng() -> tuple[np.random.Generator, int]:
    seed = int.from_bytes(os.urandom(4), "little")
    return np.random.default_rng(seed), seed


def random_weight(rng, n: int, k: int) -> np.ndarray:
    """Gaussian weights with a few large outliers (the shape real LLM weights have)."""
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.02
    idx = rng.integers(0, n * k, size=max(1, n * k // 1000))
    w.reshape(-1)[idx] *= 20
    return w


def disk_tensors(scheme: str, w: np.ndarray, **opts) -> dict:
    if scheme == "bf16":
        return {"weight": w.astype(BF16)}
    return scheme_module(scheme).quantize(w, **opts)


def random_x(rng, m: int, k: int) -> np.ndarray:
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[:, rng.integers(0, k, size=max(1, k // 200))] *= 30  # activation outlier channels
    return x.astype(BF16)


def check_against_reference(scheme: str, tensors: dict, x: np.ndarray, y: np.ndarray, act: str, seed: int):
    n, k = y.shape[1], x.shape[1]
    wdq = reference_dequantize(scheme, tensors, n, k)
    yr, absum, rms = gemv_reference(wdq, x.astype(np.float32), act)
    yk = y.astype(np.float64)
    assert np.isfinite(yk).all(), f"seed {seed}: non-finite outputs (an element was not written?)"
    bound = error_bound(scheme, k, yr, absum, rms)
    err = np.abs(yk - yr)
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert (err <= bound).all(), (f"seed {seed}: {scheme}/{act} [{n}x{k}] M={x.shape[0]}: error {err[worst]:.3g} > "
                                  f"bound {bound[worst]:.3g} at {worst} (ref {yr[worst]:.4g}, got {yk[worst]:.4g})")
    return float((err / (np.abs(yr).max() + 1e-30)).max())
