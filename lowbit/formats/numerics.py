"""Element formats: E4M3 (fp8 "fn"), E2M1 (fp4) and BF16 encode / decode, all round-to-nearest-even.

numpy only. E4M3 saturates at +-448 (we clamp before the cast: ml_dtypes, like PyTorch eager, turns
overflow into NaN). E2M1 codes are `sign << 3 | magnitude_index` with the sign taken from the sign bit
(so -0.0 and small negatives that round to zero encode as 8, as compressed-tensors' packer does).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E4M3_MAX = 448.0
E4M3_MIN_SUBNORMAL = 2.0**-9
E2M1_MAX = 6.0

#: value of every E2M1 code 0..15 (8..15 are the negatives; 8 is -0.0)
E2M1_VALUES = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=np.float32,
)

# Midpoints between consecutive E2M1 magnitudes. At a midpoint, ties go to the even code: for the
# bounds between codes (0,1), (2,3), (4,5), (6,7) the even code is below (compare with >), for
# (1,2), (3,4), (5,6) it is above (compare with >=).
_E2M1_BOUNDS_TIE_DOWN = (0.25, 1.25, 2.5, 5.0)
_E2M1_BOUNDS_TIE_UP = (0.75, 1.75, 3.5)


def to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (RNE)."""
    return np.asarray(x, dtype=np.float32).astype(BF16)


_U32 = np.uint32


def encode_e4m3_reference(x: np.ndarray) -> np.ndarray:
    """The definition of encode_e4m3: clip to +-448, then ml_dtypes' RNE cast (tests compare)."""
    x = np.asarray(x, dtype=np.float32)
    return np.clip(x, -E4M3_MAX, E4M3_MAX).astype(E4M3)


def _rounding_table(reference, shift: int) -> np.ndarray:
    """code of every float32 `bits >> shift` interval: [2*key] the interval's exact start value,
    [2*key + 1] any value strictly inside it. Exact whenever every rounding boundary of the format
    (midpoints, saturation point) has its low `shift` bits zero, i.e. starts an interval."""
    keys = np.arange(1 << (32 - shift), dtype=_U32) << _U32(shift)
    table = np.empty(2 * len(keys), np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        table[0::2] = np.asarray(reference(keys.view(np.float32))).view(np.uint8)
        table[1::2] = np.asarray(reference((keys | _U32(1)).view(np.float32))).view(np.uint8)
    return table


def _lookup(table: np.ndarray, x: np.ndarray, shift: int) -> np.ndarray:
    b = np.asarray(x, dtype=np.float32).view(_U32)
    idx = (b >> _U32(shift)) << _U32(1)
    idx |= (b & _U32((1 << shift) - 1)) != 0
    return table.take(idx.astype(np.intp))


def encode_e4m3(x: np.ndarray) -> np.ndarray:
    """float32 -> float8_e4m3fn, RNE, saturating to +-448. NaN input is the caller's bug.

    Same bytes as encode_e4m3_reference, 3-5x faster: a table over the top 13 bits of the float32
    (sign, exponent, 4 mantissa bits) plus "any lower bit set", built from the reference. E4M3
    midpoints have at most 4 mantissa bits, so every rounding decision is fixed by that index.
    """
    return _lookup(_E4M3_TABLE, x, 19).view(E4M3)


def decode_e4m3(q: np.ndarray) -> np.ndarray:
    """float8_e4m3fn (or its uint8 bytes) -> float32."""
    q = np.asarray(q)
    if q.dtype == np.uint8:
        q = q.view(E4M3)
    return q.astype(np.float32)


def encode_e2m1_reference(x: np.ndarray) -> np.ndarray:
    """The readable definition of encode_e2m1 (a ladder over the rounding bounds); tests compare."""
    x = np.asarray(x, dtype=np.float32)
    mag = np.abs(x)
    code = np.zeros(x.shape, dtype=np.uint8)
    for b in _E2M1_BOUNDS_TIE_DOWN:
        code += mag > b
    for b in _E2M1_BOUNDS_TIE_UP:
        code += mag >= b
    code |= np.signbit(x).astype(np.uint8) << 3
    return code


def encode_e2m1(x: np.ndarray) -> np.ndarray:
    """float32 -> E2M1 codes (uint8 0..15), RNE, saturating to +-6.

    Same codes as encode_e2m1_reference, 3-4x faster: a table over the top 12 bits of the float32
    (sign, exponent, 3 mantissa bits) plus "any lower bit set"; every E2M1 rounding bound has at
    most 2 mantissa bits.
    """
    return _lookup(_E2M1_TABLE, x, 20)


_E4M3_TABLE = _rounding_table(encode_e4m3_reference, 19)
_E2M1_TABLE = _rounding_table(encode_e2m1_reference, 20)


def decode_e2m1(code: np.ndarray) -> np.ndarray:
    """E2M1 codes (uint8 0..15) -> float32."""
    return E2M1_VALUES[np.asarray(code, dtype=np.uint8) & 0xF]


def pack_nibbles(code: np.ndarray) -> np.ndarray:
    """[..., K] codes 0..15 -> [..., K/2] uint8, element 2k in the low nibble."""
    code = np.ascontiguousarray(code, dtype=np.uint8)
    if code.shape[-1] % 2:
        raise ValueError(f"pack_nibbles needs an even last dimension, got {code.shape}")
    # each uint16 (little endian) holds the pair lo | hi << 8; (v | v >> 4) & 0xFF = lo | hi << 4
    v = code.view("<u2")
    return ((v | (v >> np.uint16(4))) & np.uint16(0xFF)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """[..., K/2] uint8 -> [..., K] codes, low nibble first."""
    packed = np.asarray(packed, dtype=np.uint8)
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), dtype=np.uint8)
    out[..., 0::2] = packed & 0xF
    out[..., 1::2] = packed >> 4
    return out


def pack_int32_lsb(nibbles: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pack 4-bit values 0..15 into int32, 8 per word along `axis`, element i at bits [4i, 4i+4).

    The length along `axis` is padded with zeros to a multiple of 8 (compressed-tensors pads rows).
    """
    nibbles = np.asarray(nibbles)
    if nibbles.ndim and axis in (-1, nibbles.ndim - 1) and nibbles.shape[-1] % 8 == 0:
        # fast path: nibble pairs -> bytes (low nibble first); 4 little-endian bytes = one word
        packed = pack_nibbles(nibbles.astype(np.uint8) & np.uint8(0xF))
        return np.ascontiguousarray(packed).view("<i4").astype(np.int32, copy=False)
    v = np.moveaxis(np.asarray(nibbles, dtype=np.uint32), axis, -1)
    pad = (-v.shape[-1]) % 8
    if pad:
        v = np.concatenate([v, np.zeros(v.shape[:-1] + (pad,), np.uint32)], axis=-1)
    v = v.reshape(v.shape[:-1] + (v.shape[-1] // 8, 8))
    word = np.zeros(v.shape[:-1], dtype=np.uint32)
    for i in range(8):
        word |= (v[..., i] & 0xF) << np.uint32(4 * i)
    return np.moveaxis(word.view(np.int32), -1, axis)


def group_reduce(a: np.ndarray, group: int, op=np.maximum) -> np.ndarray:
    """[..., K] -> [..., K/group]: op (np.maximum / np.minimum) over consecutive groups along K.

    Equals a.reshape(..., K/group, group).max(-1) (exact: no rounding), but numpy's reduction over
    a short inner axis is slow; folding the group's members one strided slice at a time is 3-5x faster.
    """
    m = np.asarray(a).reshape(a.shape[:-1] + (a.shape[-1] // group, group))
    if group > 32:
        return op.reduce(m, axis=-1)
    out = m[..., 0].copy()
    for i in range(1, group):
        op(out, m[..., i], out=out)
    return out


def unpack_int32_lsb(words: np.ndarray, length: int, axis: int = -1) -> np.ndarray:
    """Inverse of pack_int32_lsb: int32 words -> uint8 values 0..15, `length` of them along `axis`."""
    w = np.moveaxis(np.asarray(words, dtype=np.int32).view(np.uint32), axis, -1)
    out = np.empty(w.shape + (8,), dtype=np.uint8)
    for i in range(8):
        out[..., i] = (w >> np.uint32(4 * i)) & 0xF
    out = out.reshape(w.shape[:-1] + (w.shape[-1] * 8,))[..., :length]
    return np.moveaxis(out, -1, axis)
