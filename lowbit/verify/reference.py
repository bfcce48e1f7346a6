"""numpy references of the GEMV kernels and the error bound a kernel must meet against them.

The reference of every kernel is `formats.<scheme>.dequantize` (float32) followed by a float64 matmul;
for W8A8 / W4A4 the activation goes through the same quantize -> dequantize recipe first, written here in
numpy with the same float32 steps as cuda/gemv_act.cu (so the codes match bit for bit).
"""

from __future__ import annotations

import numpy as np

from lowbit.formats import numerics, nvfp4
from lowbit.kernels.weights import reference_dequantize

FP8_ACT_BLOCK = 128


def quantize_act_fp8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [M, K] -> (E4M3 codes [M, K], f32 scales [M, ceil(K/128)]): s = amax/448 per token per 128."""
    x = np.asarray(x, dtype=np.float32)
    m, k = x.shape
    kb = -(-k // FP8_ACT_BLOCK)
    pad = np.zeros((m, kb * FP8_ACT_BLOCK), np.float32)
    pad[:, :k] = x
    amax = np.abs(pad).reshape(m, kb, FP8_ACT_BLOCK).max(axis=-1)
    s = (amax / np.float32(numerics.E4M3_MAX)).astype(np.float32)
    s[amax == 0] = 1.0
    full = np.repeat(s, FP8_ACT_BLOCK, axis=1)[:, :k]
    return numerics.encode_e4m3(x / full), s


def dequantize_act_fp8(codes: np.ndarray, s: np.ndarray) -> np.ndarray:
    k = codes.shape[1]
    return numerics.decode_e4m3(codes) * np.repeat(s, FP8_ACT_BLOCK, axis=1)[:, :k]


def quantize_act_nvfp4(x: np.ndarray) -> list[dict[str, np.ndarray]]:
    """x [M, K] -> per token the nvfp4 tensors (global scale from that token's amax)."""
    x = np.asarray(x, dtype=np.float32)
    return [nvfp4.quantize(row[None, :], global_amax=nvfp4.amax(row)) for row in x]


def dequantize_act_nvfp4(per_token: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([nvfp4.dequantize(t) for t in per_token], axis=0)


def effective_activation(x: np.ndarray, act: str) -> np.ndarray:
    """The activation values the kernel multiplies (float32): x itself, or x quantized and dequantized."""
    x = np.asarray(x, dtype=np.float32)
    if act == "bf16":
        return x
    if act == "fp8":
        return dequantize_act_fp8(*quantize_act_fp8(x))
    if act == "nvfp4":
        return dequantize_act_nvfp4(quantize_act_nvfp4(x))
    raise ValueError(f"unknown act {act!r}")


def gemv_reference(w: np.ndarray, x: np.ndarray, act: str = "bf16") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, sum|w x|, sqrt(sum (w x)^2)) in float64, each [M, N], for dequantized w [N, K] and x [M, K]."""
    w64 = np.asarray(w, dtype=np.float64)
    xa = effective_activation(x, act).astype(np.float64)
    y = xa @ w64.T
    absum = np.abs(xa) @ np.abs(w64).T
    rms = np.sqrt((xa * xa) @ (w64 * w64).T)
    return y, absum, rms


def error_bound(scheme: str, k: int, y: np.ndarray, absum: np.ndarray, rms: np.ndarray) -> np.ndarray:
    """Per-element bound on |y_kernel - y_ref| (see the terms below); the kernel must stay inside it.

    - bf16 output: round-to-nearest of the fp32 result, <= 2^-9 |y|; we allow 2^-8 |y| (the fp32 result
      itself differs from y by the next term).
    - fp32 accumulation on the tensor cores: products of two bf16 are exact; each of the <= K/16 mma
      steps of an accumulator chain, plus <= 64 reduction adds (warps, split-K, scale multiplies), adds at
      most one fp32 ulp (2^-23, truncation included) of a partial sum bounded by sum|w x|.
    - int4 only: the decoded weight (q - zp) * scale is rounded to bf16 in the kernel (<= 2^-9 relative,
      round-to-nearest): a zero-mean error of standard deviation about 2^-9/sqrt(3) * sqrt(sum (w x)^2); we
      allow 10 of them. The errors are not independent (a group's elements share its scale, so equal codes
      round alike) and their sum is heavier-tailed than a normal one: the GPU test seed 4160594366 (int4 g64
      asymmetric, 1000 x 640, M = 8) reached 6.8 of them, reproduced exactly by a numpy emulation of the
      kernel's rounding; 6, the bound before 2026-11-27, failed it.
    """
    steps = k / 16.0 + 64.0
    bound = 2.0**-8 * np.abs(y) + steps * 2.0**-23 * absum + 1e-30
    if scheme == "int4":
        bound = bound + 10.0 * 2.0**-9 / np.sqrt(3.0) * rms
    return bound
