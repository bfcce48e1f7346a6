"""The MoE layer written plainly in numpy (float64): routing, expert MLPs, weighted sum.

No cupy here: this is the reference the GPU path (lowbit.kernels.moe) is checked against, and it is
itself checked on the CPU against transformers' Mixtral and Qwen3-MoE blocks (tests/kernels/test_moe_reference.py).

Routing (per token, logits = x . router_w^T):
  "mixtral": top-k of the logits, weights = softmax over the k chosen logits
             (== transformers: softmax over all, top-k, divided by their sum).
  "qwen3":   p = softmax over all E; top-k of p; weights = p[chosen], divided by their sum when
             norm_topk_prob.
Expert e: y = down_e @ (silu(gate_e @ x) * (up_e @ x)); the layer output is sum_j w_j * y_{e_j}.
"""

from __future__ import annotations

import numpy as np

NORMS = ("mixtral", "qwen3")


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def route_ref(x, router_w, top_k: int, norm: str = "mixtral", norm_topk_prob: bool = True):
    """(ids int64 [T, k], weights float64 [T, k], logits float64 [T, E]); ties go to the lower index."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    logits = np.asarray(x, np.float64) @ np.asarray(router_w, np.float64).T
    ids = np.argsort(-logits, axis=-1, kind="stable")[:, :top_k]
    chosen = np.take_along_axis(logits, ids, axis=-1)
    if norm == "mixtral":
        w = _softmax(chosen)
    else:
        w = np.take_along_axis(_softmax(logits), ids, axis=-1)
        if norm_topk_prob:
            w = w / w.sum(axis=-1, keepdims=True)
    return ids, w, logits


def silu(v: np.ndarray) -> np.ndarray:
    return v / (1.0 + np.exp(-v))


def moe_experts_ref(x, ids, weights, gate, up, down, act_fn=None) -> np.ndarray:
    """sum_j weights[t, j] * expert_{ids[t, j]}(x[t]) in float64.

    gate, up: float [E, I, H]; down: float [E, H, I] (dequantized weights); x [T, H].
    act_fn (optional) maps the inputs of the gate/up and of the down projection to what a kernel
    feeds its matrix units (e.g. fp8 quantize-dequantize for W8A8).
    """
    act_fn = act_fn or (lambda v: v)
    x = np.asarray(x, np.float64)
    ids = np.asarray(ids)
    weights = np.asarray(weights, np.float64)
    out = np.zeros(x.shape, np.float64)  # down maps I back to H
    for e in np.unique(ids):
        tok, slot = np.nonzero(ids == e)
        xe = act_fn(x[tok])
        h = silu(xe @ np.asarray(gate[e], np.float64).T) * (xe @ np.asarray(up[e], np.float64).T)
        y = act_fn(h) @ np.asarray(down[e], np.float64).T
        np.add.at(out, tok, y * weights[tok, slot][:, None])
    return out


def moe_ref(x, router_w, gate, up, down, top_k: int, norm: str = "mixtral", norm_topk_prob: bool = True,
            ids=None, weights=None) -> np.ndarray:
    """The whole layer; pass ids/weights to reuse a routing decided elsewhere (e.g. on the GPU)."""
    if ids is None or weights is None:
        ids, weights, _ = route_ref(x, router_w, top_k, norm, norm_topk_prob)
    return moe_experts_ref(x, ids, weights, gate, up, down)


def routing_margin(logits: np.ndarray, top_k: int) -> np.ndarray:
    """Per token, the gap between the k-th and (k+1)-th largest logit (small gap: a near-tie)."""
    s = -np.sort(-np.asarray(logits, np.float64), axis=-1)
    if s.shape[-1] <= top_k:
        return np.full(s.shape[0], np.inf)
    return s[:, top_k - 1] - s[:, top_k]
