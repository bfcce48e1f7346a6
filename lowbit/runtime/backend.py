"""Backends: the operations the model needs, on the host (numpy) or the GPU (cupy), and device choice.

An `ops` object gives the model `xp`, `asarray`, `vector(name)`, `linear(prefix, x)` (with the
module's bias when it has one), `embed(ids)`, `lm_head(h)` and `moe_experts(...)`. The CPU one
dequantizes to float32 (lowbit.runtime.weights); the CUDA one lives in lowbit.runtime.cuda_ops.
"""

from __future__ import annotations

import logging

import numpy as np
import psutil

from lowbit.errors import LowbitError
from lowbit.formats.checkpoint import Checkpoint
from lowbit.runtime.config import ModelConfig
from lowbit.runtime.weights import CpuWeights, dequantized, module_layout

log = logging.getLogger(__name__)


def cuda_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def select_device(device: str) -> str:
    """'auto' -> 'cuda' when cupy sees a GPU, else 'cpu'; 'cuda' without one is an error."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise LowbitError("--device cuda: no CUDA GPU visible to cupy; install lowbit[gpu] on a GPU machine "
                          "or use --device cpu")
    if device not in ("cpu", "cuda"):
        raise LowbitError(f"--device {device!r}: expected auto, cpu or cuda")
    return device


class CpuOps:
    """numpy, float32. Linear weights dequantized once and cached under `cap_bytes` (LRU beyond it)."""

    xp = np
    fused = None            # the CUDA backend's fused kernels (lowbit.runtime.cuda_fused); none here

    def __init__(self, ckpt: Checkpoint, cfg: ModelConfig, cap_bytes: int | None = None):
        if cap_bytes is None:
            cap_bytes = int(psutil.virtual_memory().available * 0.6)
        self.cfg, self.w, self._rows = cfg, CpuWeights(ckpt, cap_bytes), {}
        self.embed_w = dequantized(ckpt, "model.embed_tokens")
        self.tied = cfg.tie_embeddings or module_layout(ckpt, "lm_head") is None
        if self.tied and not cfg.tie_embeddings:
            log.warning("%s: no lm_head.weight; using the tied embeddings", ckpt.path)

    def fits_in_cache(self) -> bool:
        """Whether all weights, dequantized to float32, fit under the cache cap."""
        ck = self.w.ckpt
        elems = sum(4 * ck.nbytes(n) // max(1, _itemsize(ck.dtype(n))) for n in ck.names())
        return elems * 2 <= self.w.cap   # x2: the packed nibbles of 4-bit layouts count half an element

    @staticmethod
    def asarray(a):
        return np.asarray(a)

    def vector(self, name: str):
        return self.w.vector(name)

    def linear(self, prefix: str, x, raw: bool = False):
        """x @ W^T (+ bias). `raw` lets a backend return its kernels' dtype (float32 here anyway)."""
        y = x @ self.w.linear(prefix).T
        b = self.w.vector(f"{prefix}.bias")
        return y if b is None else y + b

    def linears(self, prefixes: tuple[str, ...], x) -> list:
        """Several linear modules on the same input, as one matmul over their stacked weights."""
        y = x @ self.w.linear(prefixes).T
        outs, n0 = [], 0
        for p in prefixes:
            n = self._rows.get(p)
            if n is None:
                n = self._rows[p] = self.w.ckpt.shape(_weight_name(self.w.ckpt, p))[0]
            b = self.w.vector(f"{p}.bias")
            outs.append(y[:, n0:n0 + n] if b is None else y[:, n0:n0 + n] + b)
            n0 += n
        return outs

    def embed(self, ids):
        return self.embed_w[np.asarray(ids)]

    def lm_head(self, h):
        return h @ self.embed_w.T if self.tied else self.linear("lm_head", h)

    def router(self, prefix: str, x, top_k: int, renormalize: bool):
        """The MoE router module `prefix` on x: (expert ids [M, k], weights [M, k])."""
        return self.route(self.linear(prefix, x), top_k, renormalize)

    @staticmethod
    def route(logits, top_k: int, renormalize: bool):
        """(expert ids [M, k], weights [M, k]): softmax over experts, the k largest, renormalized or not."""
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        top = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
        w = np.take_along_axis(probs, top, axis=-1)
        return top, (w / w.sum(axis=-1, keepdims=True) if renormalize else w)

    def moe_experts(self, p: str, x, top, w, names, mlp):
        """Sum over each token's top-k experts, each expert run once on the tokens that chose it."""
        out = np.zeros_like(x)
        for e in np.unique(top):
            rows, slot = np.nonzero(top == e)
            out[rows] += mlp(f"{p}.experts.{int(e)}", x[rows], names) * w[rows, slot][:, None]
        return out


    # --- the generate loop's needs (same names on the CUDA backend) ---
    @staticmethod
    def ids(ids):
        return np.asarray(ids, dtype=np.int64)

    @staticmethod
    def to_host(a):
        return np.asarray(a)

    @staticmethod
    def synchronize():
        pass

    @staticmethod
    def decode_step(model, token: int, pos: int, greedy: bool = False):
        """Logits [vocab] of one new token at position pos (greedy: their argmax, the first maximum)."""
        logits = model.forward(np.array([token], dtype=np.int64), pos)[0]
        return int(np.argmax(logits)) if greedy else logits


def _weight_name(ckpt: Checkpoint, prefix: str) -> str:
    """The tensor whose first dim is N: `weight` (dense, fp8) or `weight_packed` (nvfp4, int4)."""
    return f"{prefix}.weight" if f"{prefix}.weight" in ckpt else f"{prefix}.weight_packed"


def _itemsize(st_dtype: str) -> int:
    from lowbit.formats.safetensors_io import DTYPES

    return DTYPES[st_dtype].itemsize
