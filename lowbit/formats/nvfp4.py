"""nvfp4: compressed-tensors `nvfp4-pack-quantized`, weight-only (NVFP4A16) (formats.md 2.2-2.4).

weight_packed uint8 [N, K/2] (element 2k in the low nibble); weight_scale F8_E4M3 [N, K/16];
weight_global_scale float32 [1] = 448*6/amax, a DIVISOR: W' = E2M1[code] * weight_scale / global.
The amax is taken over the whole fused group (q/k/v, gate/up, expert w1/w3) by the caller.
A local scale that is zero after the E4M3 cast (all-zero group, or one tiny next to the tensor amax)
is raised to the smallest E4M3 subnormal, 2^-9, so no scale divides by zero.
"""

from __future__ import annotations

import numpy as np

from lowbit.formats import numerics
from lowbit.formats.schemes import SCHEMES, compressed_tensors_config

SPEC = SCHEMES["nvfp4"]
GROUP = SPEC.block[1]
_FP4_FP8 = np.float32(numerics.E4M3_MAX * numerics.E2M1_MAX)


def tensor_layout(n: int, k: int, **_opts) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {
        "weight_packed": ("U8", (n, k // 2)),
        "weight_scale": ("F8_E4M3", (n, k // GROUP)),
        "weight_global_scale": ("F32", (1,)),
    }


def unsupported_reason(n: int, k: int, **_opts) -> str | None:
    if k % GROUP:
        return f"K={k} is not a multiple of {GROUP} (NVFP4 group size)"
    return None


def amax(w: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(w, dtype=np.float32)))) if np.size(w) else 0.0


def global_scale(group_amax: float) -> np.float32:
    """448*6/amax in float32; 1.0 when the amax is 0 (the division would give inf)."""
    a = np.float32(group_amax)
    if not np.isfinite(a) or a == 0:
        return np.float32(1.0)
    return np.float32(_FP4_FP8 / a)


def quantize(w: np.ndarray, *, global_amax: float | None = None, **_opts) -> dict[str, np.ndarray]:
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    gs = global_scale(amax(w) if global_amax is None else global_amax)
    wg = w.reshape(n, k // GROUP, GROUP)
    local = gs * (numerics.group_reduce(np.abs(w), GROUP) / np.float32(numerics.E2M1_MAX))
    s8 = numerics.encode_e4m3(local)
    s8[s8.astype(np.float32) == 0] = numerics.E4M3_MIN_SUBNORMAL
    eff = (s8.astype(np.float32) / gs)[..., None]
    x = np.clip(wg / eff, -numerics.E2M1_MAX, numerics.E2M1_MAX)
    codes = numerics.encode_e2m1(x).reshape(n, k)
    return {
        "weight_packed": numerics.pack_nibbles(codes),
        "weight_scale": s8,
        "weight_global_scale": np.array([gs], dtype=np.float32),
    }


def dequantize(t: dict[str, np.ndarray]) -> np.ndarray:
    codes = numerics.unpack_nibbles(t["weight_packed"])
    n, k = codes.shape
    s = numerics.decode_e4m3(t["weight_scale"])
    gs = np.float32(np.asarray(t["weight_global_scale"], dtype=np.float32).reshape(-1)[0])
    vals = numerics.decode_e2m1(codes).reshape(n, k // GROUP, GROUP)
    return (vals * (s / gs)[..., None]).reshape(n, k)


def config_fragment(ignore: list[str], **_opts) -> dict:
    return compressed_tensors_config("nvfp4", ignore, {
        "num_bits": 4, "type": "float", "symmetric": True,
        "strategy": "tensor_group", "group_size": GROUP, "dynamic": False,
    })
