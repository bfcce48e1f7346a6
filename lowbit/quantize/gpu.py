"""The cupy twin of the numpy quantizers (`--device cuda`): the same bytes as lowbit.formats.

Written once against an array module `xp` (cupy on the GPU; numpy in the CPU tests, which check
this file against lowbit.formats byte for byte, and the gpu test repeats that with cupy). Every
step mirrors the numpy reference: float32 IEEE arithmetic in the same order (CuPy compiles without
fast-math, so `/` is correctly rounded), the same bit-exact E4M3 / E2M1 / BF16 rounding tricks as
lowbit.formats.numerics, exact min/max reductions. Scales come back as raw bits (uint8 / uint16)
and take their ml_dtypes view on the host, since E4M3 has no cupy dtype.
"""

from __future__ import annotations

import numpy as np

from lowbit.formats import fp8_block, int4, numerics, nvfp4
from lowbit.formats.numerics import BF16, E4M3

U32 = np.uint32


def available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def e4m3_bits(xp, x):
    """float32 -> E4M3 bytes (uint8), RNE, saturating: numerics.encode_e4m3 on any xp."""
    x = xp.clip(x.astype(xp.float32), -448.0, 448.0)
    b = x.view(xp.uint32)
    r = ((b >> U32(20)) & U32(1)) + U32(0x7FFFF) + b
    r = ((r >> U32(20)) & U32(0x7FF)) - U32((127 - 7) << 3)
    sign = (b >> U32(24)) & U32(0x80)
    sub = (xp.rint(xp.abs(x) * np.float32(512.0))).astype(xp.uint32)
    r = xp.where(xp.abs(x) < np.float32(2.0**-6), sub, r) | sign
    return r.astype(xp.uint8)


def e4m3_value(xp, bits):
    """E4M3 bytes -> float32 (exact) without an fp8 dtype: a 256-entry table."""
    table = xp.asarray(np.arange(256, dtype=np.uint8).view(E4M3).astype(np.float32))
    return table[bits.astype(xp.int32)]


def e2m1_codes(xp, x):
    """float32 -> E2M1 codes 0..15: numerics.encode_e2m1 on any xp."""
    mag = xp.minimum(xp.abs(x), np.float32(6.0))
    b = mag.view(xp.uint32)
    normal = (((b >> U32(22)) & U32(1)) + U32(0x1FFFFF) + b) >> U32(22)
    normal = normal - U32((127 - 1) << 1)
    sub = (mag + np.float32(2.0**22)).view(xp.uint32) - U32(0x4A800000)
    code = xp.where(mag < np.float32(1.0), sub, normal)
    return (code | ((x.view(xp.uint32) >> U32(28)) & U32(8))).astype(xp.uint8)


def bf16_bits(xp, x):
    """float32 -> bfloat16 bits (uint16), RNE (finite inputs; NaN is caught by the caller)."""
    b = x.astype(xp.float32).view(xp.uint32)
    return ((b + U32(0x7FFF) + ((b >> U32(16)) & U32(1))) >> U32(16)).astype(xp.uint16)


def group_max(xp, a, g):
    n, k = a.shape
    return a.reshape(n, k // g, g).max(axis=-1)


def pack_pairs(xp, codes):
    """[N, K] codes 0..15 -> [N, K/2] uint8, low nibble first."""
    return (codes[:, 0::2] | (codes[:, 1::2] << np.uint8(4))).astype(xp.uint8)


def fp8_block_quantize(xp, w):
    n, k = w.shape
    blk = fp8_block.BLOCK
    nb, kb = -(-n // blk), -(-k // blk)
    a = xp.zeros((nb * blk, kb * blk), xp.float32)
    a[:n, :k] = xp.abs(w)
    amax = a.reshape(nb, blk, kb, blk).max(axis=(1, 3))
    s = amax / np.float32(448.0)
    s[amax == 0] = np.float32(1.0)
    full = xp.repeat(xp.repeat(s, blk, axis=0), blk, axis=1)[:n, :k]
    return {"weight": e4m3_bits(xp, w / full), "weight_scale_inv": s}


def nvfp4_quantize(xp, w, global_amax):
    n, k = w.shape
    gs = nvfp4.global_scale(global_amax)  # host float32, as the reference
    local = np.float32(gs) * (group_max(xp, xp.abs(w), 16) / np.float32(6.0))
    s8 = e4m3_bits(xp, local)
    s8[s8 == 0] = 1  # 2^-9, the smallest subnormal: no zero scale
    eff = (e4m3_value(xp, s8) / np.float32(gs))[..., None]
    x = xp.clip(w.reshape(n, k // 16, 16) / eff, -6.0, 6.0)
    return {"weight_packed": pack_pairs(xp, e2m1_codes(xp, x).reshape(n, k)), "weight_scale": s8,
            "weight_global_scale": np.array([gs], np.float32)}


def int4_quantize(xp, w, group_size, asymmetric):
    n, k = w.shape
    g = group_size
    wg = w.reshape(n, k // g, g)
    if asymmetric:
        mn = xp.minimum(wg.min(axis=-1), np.float32(0))
        mx = xp.maximum(wg.max(axis=-1), np.float32(0))
        raw = (mx - mn) / np.float32(15.0)
    else:
        raw = group_max(xp, xp.abs(w), g) / np.float32(7.5)
    sbits = bf16_bits(xp, raw)
    scale = (sbits.astype(xp.uint32) << U32(16)).view(xp.float32)
    scale = xp.where(scale == 0, np.float32(2.0**-7), scale)
    sbits = xp.where(sbits == 0, xp.uint16(0x3C00), sbits)  # bf16(2^-7), as the reference's eps
    if asymmetric:
        zp = xp.clip(xp.rint(np.float32(-8.0) - mn / scale), -8, 7)
    else:
        zp = xp.zeros_like(scale)
    q = xp.clip(xp.rint(wg / scale[..., None]) + zp[..., None], -8, 7).astype(xp.int8)
    nib = (q + 8).astype(xp.uint32).reshape(n, k // 8, 8)
    word = xp.zeros((n, k // 8), xp.uint32)
    for i in range(8):
        word |= nib[..., i] << U32(4 * i)
    out = {"weight_packed": word.view(xp.int32), "weight_scale": sbits,
           "weight_shape": np.array([n, k], np.int64)}
    if asymmetric:
        out["weight_zero_point"] = zp
    return out


def quantize(xp, scheme: str, w, opts: dict) -> dict:
    """Device arrays in, device (or host) arrays out; see `gpu_quantize` for the host view."""
    if scheme == "fp8-block":
        return fp8_block_quantize(xp, w)
    if scheme == "nvfp4":
        return nvfp4_quantize(xp, w, opts["global_amax"])
    return int4_quantize(xp, w, opts.get("group_size", int4.DEFAULT_GROUP), opts.get("asymmetric", False))


def to_host(xp, scheme: str, out: dict) -> dict[str, np.ndarray]:
    """Device results -> numpy arrays with the on-disk dtypes of lowbit.formats."""
    get = (lambda a: a.get()) if xp is not np else (lambda a: a)
    host = {k: (v if isinstance(v, np.ndarray) else get(v)) for k, v in out.items()}
    if scheme == "fp8-block":
        host["weight"] = host["weight"].view(E4M3)
    elif scheme == "nvfp4":
        host["weight_scale"] = host["weight_scale"].view(E4M3)
    else:
        host["weight_scale"] = host["weight_scale"].view(BF16)
        if "weight_zero_point" in host:
            host["weight_zero_point"] = numerics.pack_int32_lsb((host["weight_zero_point"] + 8)
                                                                .astype(np.uint8), axis=0)
    return host


def gpu_quantize(scheme: str, w32: np.ndarray, opts: dict) -> dict[str, np.ndarray]:
    """stream.quantize_item's `quantize_fn` for --device cuda: upload, quantize, download."""
    import cupy

    w = cupy.asarray(w32, dtype=cupy.float32)
    return to_host(cupy, scheme, quantize(cupy, scheme, w, opts))
