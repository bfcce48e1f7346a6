"""MoE layer on the GPU: router, token permutation, grouped GEMM over stacked experts, weighted combine.

`MoeWeights` holds each projection once, stacked over experts in the on-disk layout:
gate/up [E, I, H], down [E, H, I] (`GpuWeight` with a leading expert dim; no per-expert copies stay
on the GPU). `moe_forward(x, router_w, experts, top_k, norm, norm_topk_prob, act)` -> bf16 [T, H].

Two paths, neither with a host synchronisation or a Python loop over experts:
  decode (T <= DECODE_MAX_TOKENS): with FUSED_DECODE (off by default), moe_forward runs router + experts
    as ONE persistent launch (moe_decode_fused, 2 CTAs per SM, grid barriers between phases); otherwise
    router_fused, then moe_experts (routing given), two grouped GEMV launches per step. DECODE_KERNELS
    picks them: "gemv" (default) = gemv_moe_gate_up_* + gemv_moe_down_* of cuda/gemv_*.cu, the tensor-core
    GEMV of the dense layers with the expert looked up per (token, slot) (cuda/gemv_grouped.cuh):
    gate and up rows share one mma tile and the SwiGLU is applied in its epilogue; the down projection
    treats the k chosen experts as K splits, each partial scaled by its routing weight, summed in a fixed
    order. "warp" = moe_decode_gate_up + moe_decode_down of cuda/moe_decode.cu (one warp per output row,
    fp32 FMAs; the _staged variants, off by default, copy each warp's rows to shared memory first).
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
from lowbit.kernels.launch import launch
from lowbit.kernels.timing import FLUSH_BYTES, fastest_config
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


def _moe_gemv_name(kind: str, ew: MoeWeights) -> str:
    tag = {"bf16": "bf16", "fp8-block": "fp8", "nvfp4": "nvfp4", "int4": "int4"}[ew.scheme]
    if ew.scheme == "int4" and ew.gate.group_size == 128:
        tag = "int4g128"
    return f"gemv_moe_{kind}_{tag}"


@functools.lru_cache(maxsize=None)
def _moe_gemv_kernel(name: str, scheme: str, device_id: int):
    from lowbit.kernels import gemv as _gemv

    return _gemv._planned_fn(_gemv._FILES[scheme], name, scheme)


def _moe_gemv_fn(kind: str, ew: MoeWeights):
    import cupy

    return _moe_gemv_kernel(_moe_gemv_name(kind, ew), ew.scheme, cupy.cuda.Device().id)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _expert_strides(w: GpuWeight) -> tuple:
    q, s, z, _ = _gemm._weight_args(w)
    return tuple(np.int64(0 if a is None else a.nbytes // w.experts) for a in (q, s, z))


def plan_decode(t: int, k: int, i_dim: int, h_dim: int, scheme: str, sm_count: int, regs: int = 128):
    """((row tiles, warps along K, splits) of the gate/up launch, (row tiles, warps along K, K splits per
    slot) of the down launch) for T tokens with k experts each. Both launches are planned as one dense
    GEMV with the (token, slot) pairs as extra row tiles (their CTAs fill the GPU the same way)."""
    from lowbit.kernels.gemv import plan_launch

    gate_up = plan_launch(16 * _cdiv(i_dim, 8) * t * k, h_dim, scheme, sm_count, regs)
    down = plan_launch(16 * _cdiv(h_dim, 16) * t * k, i_dim, scheme, sm_count, regs)
    return gate_up, down


#: launch plans the first decode call of a shape times (L2 flushed) besides the planner's, per launch;
#: from the sweep of benchmarks/moe_decode_kernels.py on H200 (2026-11-27), where the best plan differed
#: by scheme and shape (gate/up 10-80 us, down 8-40 us: up to 2x between plans)
GATE_UP_CANDIDATES = ((4, 2, 1), (4, 1, 2), (2, 4, 1), (8, 1, 1), (8, 1, 2))
DOWN_CANDIDATES = ((4, 2, 1), (4, 1, 2), (8, 1, 1), (2, 4, 1), (4, 1, 4), (2, 2, 4))
_TUNED: dict = {}


def _decode_gemv(x, ids, wts, ew: MoeWeights, out=None, only: str | None = None, cfg: tuple | None = None):
    """The grouped-GEMV decode (DECODE_KERNELS = "gemv"). cfg = (gate_up, down) overrides the plan; else
    the first call of a shape (with gemv.TUNE) times the candidates and keeps the fastest of each launch."""
    import cupy

    from lowbit.kernels import gemv as _gemv

    t, k = ids.shape
    i_dim, h_dim = ew.intermediate, ew.hidden
    dev = x.device.id
    fg, fd = _moe_gemv_fn("gate_up", ew), _moe_gemv_fn("down", ew)
    group = np.int32(ew.gate.group_size if ew.scheme == "int4" else 0)
    h = cupy.empty((t * k, i_dim), x.dtype)
    out = cupy.empty((t, h_dim), x.dtype) if out is None else out
    gq, gsc, gz, gg = (_gemm._ptr(a) for a in _gemm._weight_args(ew.gate))
    uq, usc, uz, ug = (_gemm._ptr(a) for a in _gemm._weight_args(ew.up))
    dq, dsc, dz, dg = (_gemm._ptr(a) for a in _gemm._weight_args(ew.down))
    u64 = np.uint64

    def check(c):
        wr, wk, s = c
        if not (1 <= wr * wk <= _gemv.WARPS and 1 <= s <= 1024):
            raise KernelError(f"{ew.gate.name}: decode launch plan {c} needs row tiles x warps along K in "
                              f"1..{_gemv.WARPS} and splits in 1..1024")

    def gate_up(c):
        # tiles of 8 rows (gate rows i..i+7 with the same up rows), one grid z per (token, slot)
        check(c)
        wr, wk, s = c
        bx = _cdiv(_cdiv(i_dim, 8), wr)
        ws, cnt = _gemv._WS.get(dev, bx * wr * t * k * s * 4 * 32 if s > 1 else 0, bx * wr * t * k)
        launch(fg, (bx, s, t * k), (wr * wk * 32,),
               (u64(gq), u64(gsc), u64(gz), u64(gg), u64(uq), u64(usc), u64(uz), u64(ug), x, h, ws, cnt, ids, wts,
                *_expert_strides(ew.gate), np.int32(i_dim), np.int32(h_dim), np.int32(s), group, np.int32(wk),
                np.int32(k), np.int32(1)))

    def down(c):
        # tiles of 16 rows, one grid z per token, split j * s + q = part q of slot j's K
        check(c)
        wr, wk, s = c
        bx = _cdiv(_cdiv(h_dim, 16), wr)
        ws, cnt = _gemv._WS.get(dev, bx * wr * t * k * s * 4 * 32, bx * wr * t)
        launch(fd, (bx, k * s, t), (wr * wk * 32,),
               (u64(dq), u64(dsc), u64(dz), u64(dg), _gemv.NULL, _gemv.NULL, _gemv.NULL, _gemv.NULL, h, out, ws,
                cnt, ids, wts, *_expert_strides(ew.down), np.int32(h_dim), np.int32(i_dim), np.int32(k * s), group,
                np.int32(wk), np.int32(k), np.int32(s)))

    key = (_moe_gemv_name("down", ew), t, k, i_dim, h_dim, dev)
    if cfg is None and key in _TUNED:
        cfg = _TUNED[key]
    elif cfg is None:
        planned = plan_decode(t, k, i_dim, h_dim, ew.scheme, _gemv._sm_count(dev), max(fg.num_regs, fd.num_regs))
        if not _gemv.TUNE or cupy.cuda.get_current_stream().is_capturing():
            cfg = planned  # timing is impossible inside a CUDA-graph capture
        else:
            flush = cupy.empty(FLUSH_BYTES, dtype=cupy.uint8)  # one for both tunings
            best_gu = fastest_config(gate_up, [planned[0], *GATE_UP_CANDIDATES], flush)
            gate_up(best_gu)
            best_dn = fastest_config(down, [planned[1], *DOWN_CANDIDATES], flush)
            cfg = _TUNED[key] = (best_gu, best_dn)
            del flush
    gate_up(cfg[0])
    if only == "gate_up":
        return h
    down(cfg[1])
    return out


def _decode(x, ids, wts, ew: MoeWeights, out=None, only: str | None = None):
    """only="gate_up" runs the first kernel alone (benchmark breakdown)."""
    import cupy

    if DECODE_KERNELS == "gemv":
        return _decode_gemv(x, ids, wts, ew, out, only)

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
