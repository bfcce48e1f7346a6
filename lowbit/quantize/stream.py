"""Tensor-level streaming: read a source tensor in row chunks, quantize or copy, write at offsets.

Memory stays bounded by a few chunks (CHUNK_ELEMS elements each) whatever the tensor size. Chunks
hold a multiple of 128 rows, so fp8 128x128 blocks and int4 zero-point words (8 rows) never straddle
two chunks and the bytes equal those of quantizing the whole tensor at once. NVFP4 chunks take the
fused group's amax, computed beforehand (`group_amax`). NaN/Inf is found without an extra pass:
NaN and Inf propagate into every scale (fp8 / int4) or into the amax (nvfp4, kept tensors).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lowbit.errors import CheckpointError
from lowbit.formats import scheme_module
from lowbit.formats.checkpoint import Checkpoint
from lowbit.formats.safetensors_io import DTYPES, ShardWriter
from lowbit.quantize.plan import Item

CHUNK_ELEMS = 1 << 19  # ~2 MB of float32: temporaries stay in L2/L3 (numpy passes are cache-bound)
_PER_TENSOR = ("weight_global_scale", "weight_shape")
#: dtype -> (unsigned view, magnitude mask, first non-finite magnitude)
_BITS = {"BF16": (np.uint16, 0x7FFF, 0x7F80), "F16": (np.uint16, 0x7FFF, 0x7C00),
         "F32": (np.uint32, 0x7FFFFFFF, 0x7F800000)}


def nan_error(ck: Checkpoint, name: str) -> CheckpointError:
    return CheckpointError(f"{ck.path / ck.file_of(name)}: tensor {name!r} contains NaN or Inf; "
                           "fix the source weights (lowbit will not quantize non-finite values)")


def to_f32(raw: np.ndarray) -> np.ndarray:
    """BF16/F16/F32 -> float32 (exact)."""
    return raw.astype(np.float32, copy=False)


def max_magnitude(raw: np.ndarray, dtype: str) -> tuple[float, bool]:
    """(max |x|, all finite) of a BF16/F16/F32 array by integer ops on the bit patterns."""
    ut, mask, inf = _BITS[dtype]
    if raw.size == 0:
        return 0.0, True
    m = int(np.bitwise_and(raw.reshape(-1).view(ut), ut(mask)).max())
    if m >= inf:
        return math.inf, False
    return float(np.array([m], ut).view(raw.dtype).astype(np.float32)[0]), True


def chunk_rows(n: int, k: int) -> int:
    return max(128, (CHUNK_ELEMS // max(k, 1)) // 128 * 128) if n > 0 else 1


def _ranges(n: int, step: int) -> list[tuple[int, int]]:
    return [(r, min(step, n - r)) for r in range(0, n, step)] or [(0, 0)]


def tensor_amax(ck: Checkpoint, name: str, pool: ThreadPoolExecutor) -> float:
    shape = ck.shape(name)
    dtype = ck.dtype(name)
    k = math.prod(shape[1:]) if len(shape) > 1 else 1

    def one(rng):
        return max_magnitude(ck.read(name, rng[0], rng[1]), dtype)

    parts = list(pool.map(one, _ranges(shape[0], chunk_rows(shape[0], k))))
    if not all(ok for _, ok in parts):
        raise nan_error(ck, name)
    return max(a for a, _ in parts)


def copy_item(ck: Checkpoint, it: Item, writer: ShardWriter, pool: ThreadPoolExecutor) -> None:
    """Bit-exact copy of a kept tensor, chunk by chunk, refusing NaN/Inf in float tensors."""
    shape = ck.shape(it.source)
    dtype = ck.dtype(it.source)
    if not shape:
        writer.write(it.source, ck.read(it.source))
        return
    k = math.prod(shape[1:])
    step = chunk_rows(shape[0], k)
    row_bytes = DTYPES[dtype].itemsize * k

    def one(rng):
        raw = ck.read(it.source, rng[0], rng[1])
        if dtype in _BITS and not max_magnitude(raw, dtype)[1]:
            raise nan_error(ck, it.source)
        writer.write(it.source, raw, rng[0] * row_bytes)

    list(pool.map(one, _ranges(shape[0], step)))


def quantize_item(ck: Checkpoint, it: Item, writer: ShardWriter, pool: ThreadPoolExecutor, scheme: str,
                  opts: dict, global_amax: float | None, quantize_fn, chunk_scale: int = 1) -> None:
    """Quantize one linear weight chunk by chunk; `quantize_fn(scheme, w32, opts)` does the math.
    `chunk_scale` multiplies the chunk size (the GPU wants fewer, larger chunks)."""
    n, k = ck.shape(it.source)
    mod = scheme_module(scheme)
    step = chunk_rows(n, k) * chunk_scale
    chunk_opts = dict(opts)
    if global_amax is not None:
        chunk_opts["global_amax"] = global_amax

    def one(rng):
        r0, rows = rng
        w32 = to_f32(ck.read(it.source, r0, rows))
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # NaN/Inf caught below
            out = quantize_fn(scheme, w32, chunk_opts)
        before = mod.tensor_layout(r0, k, **opts)
        for sfx, arr in out.items():
            name = f"{it.module}.{sfx}"
            if sfx in _PER_TENSOR:
                if r0 == 0:
                    writer.write(name, np.array([n, k], np.int64) if sfx == "weight_shape" else arr)
                continue
            if sfx not in ("weight", "weight_packed") and not np.isfinite(arr.astype(np.float32)).all():
                raise nan_error(ck, it.source)
            row_bytes = arr.nbytes // max(arr.shape[0], 1)
            writer.write(name, arr, before[sfx][1][0] * row_bytes)

    list(pool.map(one, _ranges(n, step)))


def cpu_quantize(scheme: str, w32: np.ndarray, opts: dict) -> dict[str, np.ndarray]:
    return scheme_module(scheme).quantize(w32, **opts)
