"""Weights of a checkpoint as the runtime sees them: dense vectors and linear layers by on-disk module name.

A linear module `prefix` is stored in one of four layouts (formats.md), told apart by its tensors:
`prefix.weight` BF16/F16/F32 (dense), `prefix.weight` F8_E4M3 + `prefix.weight_scale_inv` (fp8-block,
f32 or third-party bf16/f16 scales), `prefix.weight_packed` + `weight_global_scale` (nvfp4) and
`prefix.weight_packed` + `weight_shape` (int4). The CPU backend dequantizes each module with
`lowbit.formats.<scheme>.dequantize` into float32 [N, K] and keeps it in an LRU cache under a byte cap,
so a model larger than the cap runs (slowly) by dequantizing layer by layer.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np

from lowbit.errors import CheckpointError
from lowbit.formats import scheme_module
from lowbit.formats.checkpoint import Checkpoint

log = logging.getLogger(__name__)

_SCHEME_SUFFIXES = {
    "fp8-block": ("weight", "weight_scale_inv"),
    "nvfp4": ("weight_packed", "weight_scale", "weight_global_scale"),
    "int4": ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point"),
}


def module_layout(ckpt: Checkpoint, prefix: str) -> str | None:
    """'dense', 'fp8-block', 'nvfp4' or 'int4' for a linear module; None when it is not on disk."""
    if f"{prefix}.weight_packed" in ckpt:
        return "nvfp4" if f"{prefix}.weight_global_scale" in ckpt else "int4"
    if f"{prefix}.weight_scale_inv" in ckpt:
        return "fp8-block"
    if f"{prefix}.weight" in ckpt:
        dt = ckpt.dtype(f"{prefix}.weight")
        if dt.startswith("F8"):
            raise CheckpointError(
                f"{ckpt.file_of(prefix + '.weight')}: {prefix}.weight is {dt} without {prefix}.weight_scale_inv; "
                "expected block-FP8 with its scales (per-tensor FP8 is not supported)")
        return "dense"
    return None


def module_tensors(ckpt: Checkpoint, prefix: str) -> tuple[str, dict[str, np.ndarray]]:
    """(layout, {suffix: array}) of a linear module, arrays as stored (memmaps)."""
    layout = module_layout(ckpt, prefix)
    if layout is None:
        raise CheckpointError(f"{ckpt.path}: tensor {prefix}.weight (or its quantized form) is missing; "
                              "expected every linear module of the architecture in the checkpoint")
    if layout == "dense":
        return layout, {"weight": ckpt.get(f"{prefix}.weight")}
    return layout, {s: ckpt.get(f"{prefix}.{s}") for s in _SCHEME_SUFFIXES[layout] if f"{prefix}.{s}" in ckpt}


def dequantized(ckpt: Checkpoint, prefix: str) -> np.ndarray:
    """float32 [N, K] weight of a linear module, whatever its layout."""
    layout, t = module_tensors(ckpt, prefix)
    if layout == "dense":
        return np.ascontiguousarray(t["weight"], dtype=np.float32)
    return np.ascontiguousarray(scheme_module(layout).dequantize(t), dtype=np.float32)


class CpuWeights:
    """float32 weights on the host: vectors kept, linear layers in an LRU cache of at most `cap_bytes`."""

    def __init__(self, ckpt: Checkpoint, cap_bytes: int):
        self.ckpt, self.cap = ckpt, int(cap_bytes)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._vectors: dict[str, np.ndarray | None] = {}
        self.used = 0

    def has(self, name: str) -> bool:
        return name in self.ckpt

    def vector(self, name: str) -> np.ndarray | None:
        """A small tensor (norm weight, bias, router) as float32, or None when absent."""
        if name not in self._vectors:
            self._vectors[name] = np.array(self.ckpt.get(name), dtype=np.float32) if name in self.ckpt else None
        return self._vectors[name]

    def linear(self, prefix: str | tuple[str, ...]) -> np.ndarray:
        """[N, K] float32; a tuple of modules sharing the input gives them stacked along N (one matmul)."""
        w = self._cache.get(prefix)
        if w is not None:
            self._cache.move_to_end(prefix)
            return w
        if isinstance(prefix, tuple):
            w = np.concatenate([dequantized(self.ckpt, p) for p in prefix], axis=0)
        else:
            w = dequantized(self.ckpt, prefix)
        while self._cache and self.used + w.nbytes > self.cap:
            _, old = self._cache.popitem(last=False)
            self.used -= old.nbytes
        if w.nbytes <= self.cap:
            self._cache[prefix] = w
            self.used += w.nbytes
        return w
