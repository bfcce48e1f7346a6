"""int4: compressed-tensors `pack-quantized` W4A16, group-wise along K (formats.md 2.2, 5.3).

weight_packed int32 [N, K/8]: 8 consecutive K-elements per word, element i at bits [4i, 4i+4), stored
as q+8 (q in [-8, 7]). weight_scale bf16 [N, K/G]. weight_shape int64 [2] = [N, K].
Symmetric: scale = amax/7.5 rounded to bf16 first, q = clamp(rint(W/scale), -8, 7).
Asymmetric (--asymmetric): scale = (max-min)/15 with min <= 0 <= max, zp = clamp(rint(-8 - min/scale),
-8, 7), q = clamp(rint(W/scale) + zp, -8, 7); weight_zero_point int32 [ceil(N/8), K/G] holds zp+8
packed 8 per word along N (dim 0), LSB first. Dequant: W' = (q - zp) * scale.
A zero scale (all-zero group) is replaced by bf16 eps, as compressed-tensors does; its codes decode to 0.
"""

from __future__ import annotations

import numpy as np

from lowbit.errors import SchemeError
from lowbit.formats import numerics
from lowbit.formats.schemes import INT4_GROUP_SIZES, SCHEMES, compressed_tensors_config

SPEC = SCHEMES["int4"]
DEFAULT_GROUP = SPEC.block[1]
_BF16_EPS = np.float32(2.0**-7)


def _check_group(group_size: int) -> int:
    if group_size not in INT4_GROUP_SIZES:
        raise SchemeError(
            f"int4 group size {group_size} is not supported: use one of {INT4_GROUP_SIZES}"
        )
    return group_size


def tensor_layout(n: int, k: int, *, group_size: int = DEFAULT_GROUP, asymmetric: bool = False,
                  **_opts) -> dict[str, tuple[str, tuple[int, ...]]]:
    g = _check_group(group_size)
    out = {
        "weight_packed": ("I32", (n, k // 8)),
        "weight_scale": ("BF16", (n, k // g)),
        "weight_shape": ("I64", (2,)),
    }
    if asymmetric:
        out["weight_zero_point"] = ("I32", (-(-n // 8), k // g))
    return out


def unsupported_reason(n: int, k: int, *, group_size: int = DEFAULT_GROUP, **_opts) -> str | None:
    if k % _check_group(group_size):
        return f"K={k} is not a multiple of the int4 group size {group_size}"
    return None


def _bf16_scale(x: np.ndarray) -> np.ndarray:
    s = numerics.to_bf16(x).astype(np.float32)
    s[s == 0] = _BF16_EPS
    return s


def quantize(w: np.ndarray, *, group_size: int = DEFAULT_GROUP, asymmetric: bool = False,
             **_opts) -> dict[str, np.ndarray]:
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    g = _check_group(group_size)
    if k % g:
        raise SchemeError(f"int4: K={k} is not a multiple of group size {g}")
    wg = w.reshape(n, k // g, g)
    if asymmetric:
        mn = np.minimum(numerics.group_reduce(w, g, np.minimum), 0)
        mx = np.maximum(numerics.group_reduce(w, g, np.maximum), 0)
        scale = _bf16_scale((mx - mn) / np.float32(15.0))
        zp = np.clip(np.rint(np.float32(-8.0) - mn / scale), -8, 7)
    else:
        scale = _bf16_scale(numerics.group_reduce(np.abs(w), g) / np.float32(7.5))
        zp = np.zeros_like(scale)
    q = np.clip(np.rint(wg / scale[..., None]) + zp[..., None], -8, 7).astype(np.int8)
    out = {
        "weight_packed": numerics.pack_int32_lsb((q + 8).astype(np.uint8).reshape(n, k)),
        "weight_scale": numerics.to_bf16(scale),
        "weight_shape": np.array([n, k], dtype=np.int64),
    }
    if asymmetric:
        out["weight_zero_point"] = numerics.pack_int32_lsb((zp + 8).astype(np.uint8), axis=0)
    return out


def dequantize(t: dict[str, np.ndarray]) -> np.ndarray:
    n, k = (int(v) for v in np.asarray(t["weight_shape"]).reshape(-1)[:2])
    scale = np.asarray(t["weight_scale"]).astype(np.float32)
    ng = scale.shape[1]
    g = k // ng
    q = numerics.unpack_int32_lsb(t["weight_packed"], k).astype(np.float32) - 8
    zp = np.zeros((n, ng), np.float32)
    if "weight_zero_point" in t:
        zp = numerics.unpack_int32_lsb(t["weight_zero_point"], n, axis=0).astype(np.float32) - 8
    vals = q.reshape(n, ng, g) - zp[..., None]
    return (vals * scale[..., None]).reshape(n, k)


def config_fragment(ignore: list[str], *, group_size: int = DEFAULT_GROUP, asymmetric: bool = False,
                    **_opts) -> dict:
    return compressed_tensors_config("int4", ignore, {
        "num_bits": 4, "type": "int", "symmetric": not asymmetric,
        "strategy": "group", "group_size": _check_group(group_size), "dynamic": False,
    })
