"""MoE routing and token permutation on the GPU (kernels in cuda/moe_route.cu). No host synchronisation.

`route(x, router_w, top_k, norm, norm_topk_prob)` -> (ids int32 [T, k], weights f32 [T, k]):
logits in fp32 (few tokens: router_logits kernel; many: cuBLAS on fp32 copies), then router_topk
with the model's normalisation ("mixtral" | "qwen3"), matching lowbit.verify.moe_reference.route_ref.
`route_add_norm(h, delta, norm_w, eps, router_w, ...)`: the decode step's residual update + RMSNorm + route
in one launch. `align(ids, E, bm)` -> Permutation (offs, tile_offs, pos, sorted_tok) for the grouped GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.errors import KernelError
from lowbit.kernels import device_buffers
from lowbit.kernels.compile import get_function
from lowbit.kernels.launch import launch

NORMS = {"mixtral": 0, "qwen3": 1}
LOGITS_KERNEL_MAX_T = 64  # above this, cuBLAS computes the router logits
MAX_EXPERTS = 256  # router_topk keeps E/32 <= MAXV values per lane


@dataclass
class Permutation:
    offs: object  # int32 [E+1]: rows of expert e are [offs[e], offs[e+1]) in sorted order
    tile_offs: object  # int32 [E+1]: cumulative ceil(rows/bm)
    pos: object  # int32 [T*k]: sorted row of assignment (t, j)
    sorted_tok: object  # int32 [T*k]: token of each sorted row
    bm: int
    rows: int  # T*k


def router_logits(x, router_w):
    import cupy

    t, h = x.shape
    e = router_w.shape[0]
    if t > LOGITS_KERNEL_MAX_T:
        return cupy.matmul(x.astype(cupy.float32), router_w.astype(cupy.float32).T)
    out = cupy.empty((t, e), cupy.float32)
    if t:
        f = get_function("moe_route.cu", "router_logits")
        f((-(-e // 8), t), (256,), (x, router_w, np.int32(e), np.int32(h), out))
    return out


def topk(logits, top_k: int, norm: str = "mixtral", norm_topk_prob: bool = True):
    import cupy

    if norm not in NORMS:
        raise KernelError(f"router: norm={norm!r} is not known; use one of {', '.join(NORMS)}")
    t, e = logits.shape
    if not 1 <= top_k <= min(e, 32):
        raise KernelError(f"router: top_k={top_k} must be in 1..min(E={e}, 32)")
    if e > MAX_EXPERTS:
        raise KernelError(f"router: {e} experts exceed the kernel's limit of {MAX_EXPERTS}")
    ids = cupy.empty((t, top_k), cupy.int32)
    wts = cupy.empty((t, top_k), cupy.float32)
    if t:
        f = get_function("moe_route.cu", "router_topk")
        f((-(-t // 8),), (256,), (cupy.ascontiguousarray(logits), np.int32(t), np.int32(e), np.int32(top_k),
                                  np.int32(NORMS[norm]), np.int32(bool(norm_topk_prob)), ids, wts))
    return ids, wts


def _check_router(x, router_w) -> None:
    from lowbit.formats.numerics import BF16

    if x.ndim != 2 or router_w.ndim != 2 or x.shape[1] != router_w.shape[1]:
        raise KernelError(f"router: x {tuple(x.shape)} and router weight {tuple(router_w.shape)} "
                          "must be [T, H] and [E, H]")
    for name, a in (("x", x), ("router weight", router_w)):
        if a.dtype != BF16 or not a.flags.c_contiguous:
            raise KernelError(f"router: {name} must be contiguous bfloat16, found {a.dtype}")
    if x.shape[1] % 8:
        raise KernelError(f"router: hidden size {x.shape[1]} must be a multiple of 8")


_COUNTERS: dict = {}


def _counter():
    import cupy

    dev = cupy.cuda.Device().id
    if dev not in _COUNTERS:
        _COUNTERS[dev] = device_buffers.zeros(1, cupy.uint32)  # router_fused's ticket; the last block resets it
    return _COUNTERS[dev]


def route(x, router_w, top_k: int, norm: str = "mixtral", norm_topk_prob: bool = True):
    """(ids int32 [T, k], weights f32 [T, k]) for bf16 x [T, H] and router weight bf16 [E, H].
    Few tokens: one fused launch (router_fused; its last block ranks one token's logits with the whole
    block, more tokens one warp each); many: cuBLAS logits + router_topk (one warp per token)."""
    import cupy

    _check_router(x, router_w)
    t, h = x.shape
    e = router_w.shape[0]
    if t == 0 or t > LOGITS_KERNEL_MAX_T:
        return topk(router_logits(x, router_w), top_k, norm, norm_topk_prob)
    ids, wts = topk(cupy.empty((0, e), cupy.float32), top_k, norm, norm_topk_prob)  # validates the options
    ids = cupy.empty((t, top_k), cupy.int32)
    wts = cupy.empty((t, top_k), cupy.float32)
    logits = cupy.empty((t, e), cupy.float32)
    f = get_function("moe_route.cu", "router_fused")
    launch(f, (-(-e // 8), t), (256,), (x, router_w, np.int32(e), np.int32(h), np.int32(t), np.int32(top_k),
                                        np.int32(NORMS[norm]), np.int32(bool(norm_topk_prob)), logits, _counter(),
                                        ids, wts))
    return ids, wts


#: router_add_norm keeps the token's normalised row in shared memory (2 bytes an element)
ADD_NORM_MAX_HIDDEN = 16384


def route_add_norm(h, delta, norm_w, eps: float, router_w, top_k: int, norm: str = "mixtral",
                   norm_topk_prob: bool = True):
    """The decode step's entry into an MoE block in one launch (router_add_norm):
    s = h + delta, x = bf16(rmsnorm(s) * norm_w), then route(x, router_w, ...).
    h f32 [T, H], delta f32 or bf16 [T, H], norm_w f32 [H], router_w bf16 [E, H], 1 <= T <= LOGITS_KERNEL_MAX_T.
    Returns (s f32 [T, H] (a new array: h is not changed), x bf16 [T, H], ids int32 [T, k], weights f32 [T, k])."""
    import cupy

    from lowbit.formats.numerics import BF16

    if h.ndim != 2 or h.dtype != cupy.float32 or not h.flags.c_contiguous:
        raise KernelError(f"router_add_norm: h must be contiguous float32 [T, H], found {h.dtype} {tuple(h.shape)}")
    t, hid = h.shape
    if delta.shape != h.shape or delta.dtype not in (cupy.float32, BF16) or not delta.flags.c_contiguous:
        raise KernelError(f"router_add_norm: delta must be contiguous float32 or bfloat16 {tuple(h.shape)}, "
                          f"found {delta.dtype} {tuple(delta.shape)}")
    if norm_w.shape != (hid,) or norm_w.dtype != cupy.float32:
        raise KernelError(f"router_add_norm: the norm weight must be float32 [{hid}], found {norm_w.dtype} "
                          f"{tuple(norm_w.shape)}")
    if not 1 <= t <= LOGITS_KERNEL_MAX_T or hid > ADD_NORM_MAX_HIDDEN:
        raise KernelError(f"router_add_norm: {t} tokens of hidden size {hid}: the fused launch takes 1.."
                          f"{LOGITS_KERNEL_MAX_T} tokens and H <= {ADD_NORM_MAX_HIDDEN}; use add_rms_norm + route")
    x = cupy.empty((t, hid), BF16)
    _check_router(x, router_w)
    topk(cupy.empty((0, router_w.shape[0]), cupy.float32), top_k, norm, norm_topk_prob)  # validates the options
    e = router_w.shape[0]
    s = cupy.empty_like(h)
    ids = cupy.empty((t, top_k), cupy.int32)
    wts = cupy.empty((t, top_k), cupy.float32)
    logits = cupy.empty((t, e), cupy.float32)
    null = np.uint64(0)
    df, db = (delta, null) if delta.dtype == cupy.float32 else (null, delta)
    f = get_function("moe_route.cu", "router_add_norm")
    launch(f, (-(-e // 8), t), (256,), (h, df, db, norm_w, np.float32(eps), s, x, router_w, np.int32(e),
                                        np.int32(hid), np.int32(t), np.int32(top_k), np.int32(NORMS[norm]),
                                        np.int32(bool(norm_topk_prob)), logits, _counter(), ids, wts),
           shared_mem=2 * hid)
    return s, x, ids, wts


def align(ids, num_experts: int, bm: int) -> Permutation:
    """Sort the T*k assignments by expert on the GPU (one block; no host sync)."""
    import cupy

    n = int(ids.size)
    offs = cupy.empty(num_experts + 1, cupy.int32)
    tile_offs = cupy.empty(num_experts + 1, cupy.int32)
    pos = cupy.empty(n, cupy.int32)
    sorted_tok = cupy.empty(n, cupy.int32)
    f = get_function("moe_route.cu", "moe_align")
    k = ids.shape[-1] if ids.ndim == 2 else 1
    f((1,), (1024,), (cupy.ascontiguousarray(ids).reshape(-1), np.int32(n), np.int32(k), np.int32(num_experts),
                      np.int32(bm), offs, tile_offs, pos, sorted_tok), shared_mem=8 * num_experts)
    return Permutation(offs, tile_offs, pos, sorted_tok, bm, n)


def combine(ys, perm: Permutation, wts, tokens: int, out=None):
    """out bf16 [T, H] = sum_j wts[t, j] * ys[pos[t, j]]."""
    import cupy

    h = ys.shape[1]
    out = cupy.empty((tokens, h), ys.dtype) if out is None else out
    if tokens:
        k = perm.rows // tokens
        f = get_function("moe_route.cu", "moe_combine")
        f((tokens,), (256,), (ys, perm.pos, wts, np.int32(k), np.int32(h), out))
    return out
