"""MoE layer on the GPU: router, token permutation, grouped GEMM over stacked experts, weighted combine.

`MoeWeights` holds each projection once, stacked over experts in the on-disk layout:
gate/up [E, I, H], down [E, H, I] (`GpuWeight` with a leading expert dim; no per-expert copies stay
on the GPU). `moe_forward(x, router_w, experts, top_k, norm, norm_topk_prob, act)` -> bf16 [T, H].

Two paths, neither with a host synchronisation or a Python loop over experts:
  decode (T <= DECODE_MAX_TOKENS): with FUSED_DECODE (off by default), moe_forward runs router + experts
    as ONE persistent launch (moe_decode_fused, 2 CTAs per SM, grid barriers between phases); otherwise
    router_fused, then moe_experts (routing given), two grouped GEMV launches per step. DECODE_KERNELS
    picks them: "gemv" (default) = lowbit.kernels.moe_gemv, the tensor-core GEMV of the dense layers with
    the expert looked up per (token, slot) (cuda/gemv_grouped.cuh): gate and up rows share one mma tile and
    the SwiGLU is applied in its epilogue; the down projection holds small experts' rows in shared memory,
    copied before its PDL wait, or treats the k chosen experts as K splits, each partial scaled by its
    routing weight, summed in a fixed order. "warp" = moe_decode_gate_up + moe_decode_down of
    cuda/moe_decode.cu (one warp per output row, fp32 FMAs; the _staged variants, off by default, copy each
    warp's rows to shared memory first).
  prefill: moe_align (sort assignments by expert, offsets by scan), gate and up grouped GEMMs that
    gather x rows on the fly (the up GEMM applies silu(gate) * up in its epilogue), the down grouped
    GEMM, then moe_combine (weighted sum back to token order). act="fp8" runs the fp8-block
    experts as W8A8 (activations quantized per token per 128 channels), else weight-only.
Reference: lowbit.verify.moe_reference.moe_ref (float64 numpy).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from lowbit.errors import KernelError
from lowbit.kernels import device_buffers, moe_router
from lowbit.kernels import gemm as _gemm
from lowbit.kernels.compile import get_function
from lowbit.kernels.weights import GpuWeight, to_gpu

DECODE_MAX_TOKENS = 4
PROJS = ("gate", "up", "down")


@dataclass
class MoeWeights:
    scheme: str
    gate: GpuWeight  # [E, I, H]
    up: GpuWeight  # [E, I, H]
    down: GpuWeight  # [E, H, I]

    @property
    def num_experts(self) -> int:
        return int(self.gate.experts)

    @property
    def hidden(self) -> int:
        return self.gate.k

    @property
    def intermediate(self) -> int:
        return self.gate.n

    def expert_nbytes(self) -> int:
        """Bytes of one expert (gate + up + down, scales included)."""
        return (self.gate.nbytes() + self.up.nbytes() + self.down.nbytes()) // self.num_experts

    @classmethod
    def from_checkpoint_tensors(cls, scheme: str, experts, *, name: str = "experts", **opts) -> "MoeWeights":
        """experts: a sequence over E of {"gate"|"up"|"down": {suffix: array}} (numpy, memmap or cupy),
        each in the on-disk layout of `scheme` (or {"weight": bf16} for "bf16"). Each projection is
        stacked once into [E, ...] and uploaded; the per-expert inputs are not kept."""
        if not experts:
            raise KernelError(f"{name}: no experts given")
        stacked = {}
        for proj in PROJS:
            try:
                parts = [ex[proj] for ex in experts]
            except KeyError:
                raise KernelError(f"{name}: every expert needs 'gate', 'up' and 'down' tensors") from None
            tensors = {s: _stack([p[s] for p in parts]) for s in parts[0] if s != "weight_shape"}
            stacked[proj] = to_gpu(scheme, tensors, name=f"{name}.{proj}", **opts)
        w = cls(scheme, stacked["gate"], stacked["up"], stacked["down"])
        w.check()
        return w

    def check(self) -> None:
        g, u, d = self.gate, self.up, self.down
        if not (g.experts == u.experts == d.experts) or g.experts is None:
            raise KernelError(f"{g.name}: gate/up/down must all be stacked over the same experts")
        if (g.n, g.k) != (u.n, u.k) or (d.n, d.k) != (g.k, g.n):
            raise KernelError(f"{g.name}: shapes gate {g.n}x{g.k}, up {u.n}x{u.k}, down {d.n}x{d.k} do not form "
                              "an expert MLP (gate/up [I, H], down [H, I])")
        if g.k % 32 or g.n % 32:
            raise KernelError(f"{g.name}: hidden {g.k} and intermediate {g.n} must be multiples of 32")


def _stack(arrays):
    import cupy

    if any(isinstance(a, cupy.ndarray) for a in arrays):
        return cupy.stack([cupy.asarray(a) for a in arrays])
    return np.stack([np.asarray(a) for a in arrays])


#: the staged decode kernels (weights via cp.async into shared memory) run when their shared memory fits
#: under this; 0 = off. Measured on H200 (2026-11-26, Qwen3-30B-A3B fp8 decode): no faster than the
#: register kernels (gate_up 12.6 vs 12.3 us, down 10.8 vs 9.5 us), so off by default.
STAGED_MAX_SMEM = 0
_ELEM_BYTES = {"bf16": 2.0, "fp8-block": 1.0, "nvfp4": 0.5, "int4": 0.5}


@functools.lru_cache(maxsize=None)
def _decode_fn(name: str, scheme_id: int, group: int, device_id: int):
    return get_function("moe_decode.cu", name, {"SCHEME": scheme_id, "INT4_GROUP": group}), {"smem": -1}


def _decode_kernel(name: str, scheme_id: int, group: int, smem: int):
    """The kernel, its dynamic shared-memory limit raised to `smem` if needed. The limit belongs to the
    compiled function, which every (hidden, k, intermediate) shape shares: it is only ever raised, so a
    smaller shape never lowers it under a larger one's launch."""
    import cupy

    f, state = _decode_fn(name, scheme_id, group, cupy.cuda.Device().id)
    if state["smem"] < smem:
        f.max_dynamic_shared_size_bytes = smem
        state["smem"] = smem
    return f


def _ptrs(w: GpuWeight):
    return tuple(_gemm._ptr(a) for a in _gemm._weight_args(w))


#: which decode kernels moe_experts runs: "gemv" (the grouped tensor-core GEMVs) or "warp" (moe_decode.cu)
DECODE_KERNELS = "gemv"


def _decode(x, ids, wts, ew: MoeWeights, out=None, only: str | None = None):
    """only="gate_up" runs the first kernel alone (benchmark breakdown)."""
    import cupy

    if DECODE_KERNELS == "gemv":
        from lowbit.kernels.moe_gemv import decode_gemv

        return decode_gemv(x, ids, wts, ew, out, only)

    t, k = ids.shape
    e, i_dim, h_dim = ew.num_experts, ew.intermediate, ew.hidden
    sid, g = _gemm.SCHEME_IDS[ew.scheme], ew.gate.group_size
    eb = _ELEM_BYTES[ew.scheme]
    h = cupy.empty((t * k, i_dim), x.dtype)
    out = cupy.empty((t, h_dim), x.dtype) if out is None else out
    smem = h_dim * 2 + int(16 * h_dim * eb)
    name = "moe_decode_gate_up_staged" if smem <= STAGED_MAX_SMEM else "moe_decode_gate_up"
    smem = smem if smem <= STAGED_MAX_SMEM else h_dim * 2
    _decode_kernel(name, sid, g, smem)(
        (-(-i_dim // 8), t * k), (256,),
        (x, ids, np.int32(k), np.int32(e), np.int32(i_dim), np.int32(h_dim)) + _ptrs(ew.gate) + _ptrs(ew.up) + (h,),
        shared_mem=smem)
    if only == "gate_up":
        return h
    smem = k * i_dim * 2 + int(8 * k * i_dim * eb)
    name = "moe_decode_down_staged" if smem <= STAGED_MAX_SMEM else "moe_decode_down"
    smem = smem if smem <= STAGED_MAX_SMEM else k * i_dim * 2
    _decode_kernel(name, sid, g, smem)(
        (-(-h_dim // 8), t), (256,),
        (h, ids, wts, np.int32(k), np.int32(e), np.int32(h_dim), np.int32(i_dim)) + _ptrs(ew.down) + (out,),
        shared_mem=smem)
    return out


def _prefill(x, ids, wts, ew: MoeWeights, act: str, out=None):
    import cupy

    t, k = ids.shape
    e, i_dim, h_dim = ew.num_experts, ew.intermediate, ew.hidden
    rows = t * k
    kind = "fp8" if act == "fp8" else "w16"
    tile = _gemm.pick_tile(kind, -(-rows // e))
    bm = _gemm.effective_bm(kind, tile)
    perm = moe_router.align(ids, e, bm)
    groups = (e, perm.offs, perm.tile_offs)
    m_tiles = -(-rows // bm) + e
    common = dict(rows=rows, groups=groups, tile=tile, m_tiles=m_tiles)
    g = cupy.empty((rows, i_dim), x.dtype)
    _gemm.launch(ew.gate, x, act, y=g, a_rows=perm.sorted_tok, **common)
    hbuf = cupy.empty((rows, i_dim), x.dtype)
    _gemm.launch(ew.up, x, act, y=hbuf, a_rows=perm.sorted_tok, gate=g, **common)
    yd = cupy.empty((rows, h_dim), x.dtype)
    _gemm.launch(ew.down, hbuf, act, y=yd, **common)
    return moe_router.combine(yd, perm, wts, t, out=out)


def moe_experts(x, ids, wts, experts: MoeWeights, act: str = "bf16", path: str | None = None, out=None):
    """sum_j wts[t, j] * expert_{ids[t, j]}(x[t]) for routing decided already (ids int32, wts f32 [T, k])."""
    import cupy

    if act not in ("bf16", "fp8"):
        raise KernelError(f"{experts.gate.name}: act={act!r}; use 'bf16' or 'fp8'")
    if act == "fp8" and experts.scheme != "fp8-block":
        raise KernelError(f"{experts.gate.name}: act='fp8' needs fp8-block experts, found {experts.scheme}")
    _gemm.check_x(experts.gate, x)
    if ids.ndim != 2 or ids.shape[0] != x.shape[0] or ids.dtype != cupy.int32 or wts.shape != ids.shape:
        raise KernelError(f"{experts.gate.name}: ids must be int32 [T, k] and weights f32 [T, k] for x [T, H]")
    wts = cupy.ascontiguousarray(wts, dtype=cupy.float32)
    ids = cupy.ascontiguousarray(ids)
    if x.shape[0] == 0:
        return cupy.empty((0, experts.hidden), x.dtype)
    use_decode = path == "decode" or (path is None and x.shape[0] <= DECODE_MAX_TOKENS)
    if out is not None and (out.shape != (x.shape[0], experts.hidden) or out.dtype != x.dtype
                            or not out.flags.c_contiguous):
        raise KernelError(f"{experts.gate.name}: out must be contiguous bf16 [{x.shape[0]}, {experts.hidden}]")
    return _decode(x, ids, wts, experts, out) if use_decode else _prefill(x, ids, wts, experts, act, out)


#: decode steps (T <= DECODE_MAX_TOKENS) run as one persistent launch (moe_decode_fused) when it fits.
#: Measured on H200 (2026-11-26, Qwen3-30B-A3B fp8, 1 token): CUDA-graph step 30.0 us fused vs 27.6 us
#: for the three launches (but eager 79 vs 128 us: one Python launch instead of three). Off by default.
FUSED_DECODE = False
_BARRIERS: dict = {}


def _fused_fits(x, ew: MoeWeights, top_k: int) -> bool:
    t, h_dim = x.shape
    smem = max(t * h_dim, t * top_k * ew.intermediate) * 2
    return (FUSED_DECODE and 0 < t <= DECODE_MAX_TOKENS and t * top_k <= 32 and ew.num_experts <= 256
            and h_dim % 8 == 0 and smem <= 96 * 1024)


def _decode_fused(x, router_w, ew: MoeWeights, top_k: int, norm: str, norm_topk_prob: bool, out=None):
    """Router + experts of a few tokens in one persistent launch (grid barriers between phases)."""
    import cupy

    t, h_dim = x.shape
    e, i_dim = ew.num_experts, ew.intermediate
    dev = cupy.cuda.Device().id
    if dev not in _BARRIERS:
        _BARRIERS[dev] = device_buffers.zeros(2, cupy.uint32)  # arrival count, generation (self-resetting)
    smem = max(t * h_dim, t * top_k * i_dim) * 2
    f = _decode_kernel("moe_decode_fused", _gemm.SCHEME_IDS[ew.scheme], ew.gate.group_size, 96 * 1024)
    logits = cupy.empty((t, e), cupy.float32)
    h = cupy.empty((t * top_k, i_dim), x.dtype)
    out = cupy.empty((t, h_dim), x.dtype) if out is None else out
    args = (x, router_w, np.int32(t), np.int32(e), np.int32(top_k), np.int32(i_dim), np.int32(h_dim),
            np.int32(moe_router.NORMS[norm]), np.int32(bool(norm_topk_prob))) + _ptrs(ew.gate) + _ptrs(ew.up) \
        + _ptrs(ew.down) + (logits, h, out, _BARRIERS[dev])
    # every CTA must be resident at once (grid barriers): 2 per SM is what __launch_bounds__(256, 2)
    # sizes the registers for, and smem <= 96 KiB lets two fit; launched alone on its stream
    f((2 * _gemm._num_sms(),), (256,), args, shared_mem=smem)
    return out


def moe_forward(x, router_w, experts: MoeWeights, top_k: int, norm: str = "mixtral",
                norm_topk_prob: bool = True, act: str = "bf16", path: str | None = None, out=None):
    """The MoE block: bf16 x [T, H], router weight bf16 [E, H] -> bf16 [T, H]."""
    if router_w.shape[0] != experts.num_experts:
        raise KernelError(f"{experts.gate.name}: router has {router_w.shape[0]} experts, weights have "
                          f"{experts.num_experts}")
    if path in (None, "decode") and _fused_fits(x, experts, top_k):
        moe_router._check_router(x, router_w)
        _gemm.check_x(experts.gate, x)
        if norm not in moe_router.NORMS:
            raise KernelError(f"router: norm={norm!r} is not known; use one of {', '.join(moe_router.NORMS)}")
        return _decode_fused(x, router_w, experts, top_k, norm, norm_topk_prob, out)
    ids, wts = moe_router.route(x, router_w, top_k, norm, norm_topk_prob)
    return moe_experts(x, ids, wts, experts, act=act, path=path, out=out)
