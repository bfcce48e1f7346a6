"""MoE decode on the grouped tensor-core GEMVs (moe.DECODE_KERNELS = "gemv"; kernels in cuda/gemv_grouped.cuh).

Two launches per step, both with programmatic dependent launch (lowbit.kernels.launch):
  gate/up  gemv_moe_gate_up_*: a warp's 16-row mma tile holds 8 gate rows and the same 8 up rows of the
           expert of one (token, slot); the epilogue writes silu(gate) * up to h [T * k, I]. Its weight chunks
           may stream through a per-warp ring in shared memory (LOWBIT_GEMV_RING stages in flight, ring_bytes;
           off by default, see gemv.TUNABLES).
  down     gemv_moe_down_smem_* where it fits (DOWN_SMEM): a CTA per 16 output rows and token, holding
           those rows of every chosen expert in shared memory. It reads the routing and copies the weights
           before its PDL wait, i.e. while the gate/up launch still runs (the gate/up kernel triggers its
           dependents only after its own wait, so the router has finished by then), and after the wait only
           multiplies by h. Otherwise gemv_moe_down_*: the k slots as split-K parts, each partial scaled
           by its routing weight, summed in a fixed order.
The first call of a shape times GATE_UP_CANDIDATES (and DOWN_CANDIDATES for the split-K down) with L2
flushed and keeps the fastest; down_smem is taken by rule (DOWN_SMEM_MAX_BYTES), since its gain is the
overlap with the gate/up launch, which a standalone timing of it does not see. (Timing the gate/up
candidates together with it, eagerly, picked a plan 1.7 us slower under the CUDA graph for nvfp4 than the
gate/up timed alone, which was the best pair for fp8, nvfp4 and int4; H200, 2026-11-27.)
"""

from __future__ import annotations

import functools
import os

import numpy as np

from lowbit.errors import KernelError
from lowbit.kernels import gemm as _gemm
from lowbit.kernels import gemv_smem
from lowbit.kernels.launch import launch
from lowbit.kernels.timing import FLUSH_BYTES, fastest_config
from lowbit.kernels.weights import GpuWeight

#: down with its weights in shared memory when it fits (LOWBIT_MOE_DOWN_SMEM=0: the split-K down);
#: DOWN_SMEM_WK warps per chosen expert (each sweeps 1/wk of I)
DOWN_SMEM = os.environ.get("LOWBIT_MOE_DOWN_SMEM", "1") != "0"
DOWN_SMEM_WK = int(os.environ.get("LOWBIT_MOE_DOWN_SMEM_WK", 2))
#: down_smem by rule only up to this much shared memory a CTA. Measured on H200 (2026-11-27, Qwen3-30B-A3B
#: shapes, CUDA graph, routing given, benchmarks/moe_decode_kernels.py): the down launch took 5.8 / 5.8 / 5.2 us
#: with 2 warps a slot (6.3 / 6.5 / 5.1 with 1) against 8.0 / 8.5 / 7.8 for the best split-K plan, fp8 (155 KiB)
#: / nvfp4 / int4; for bf16 (200 KiB of rows) the whole step took 29.4 us against 26.0 split-K
DOWN_SMEM_MAX_BYTES = 160 * 1024
#: launch plans the first decode call of a shape times (L2 flushed) besides the planner's, per launch;
#: from the sweep of benchmarks/moe_decode_kernels.py on H200 (2026-11-27), where the best plan differed
#: by scheme and shape (gate/up 10-80 us, down 8-40 us: up to 2x between plans)
GATE_UP_CANDIDATES = ((4, 2, 1), (4, 1, 2), (2, 4, 1), (8, 1, 1), (8, 1, 2))
DOWN_CANDIDATES = ((4, 2, 1), (4, 1, 2), (8, 1, 1), (2, 4, 1), (4, 1, 4), (2, 2, 4))
_TUNED: dict = {}
_SMEM_SET: set = set()


def gemv_name(kind: str, ew) -> str:
    from lowbit.kernels.gemv import _kernel_tag

    tag = _kernel_tag(ew.gate, "bf16")  # the dense weight-only GEMV's policy tag
    if kind.endswith("_xs"):  # the staged-x form of "gate_up" / "down" (cuda/common.cuh, gemv.xs_launch)
        return f"gemv_moe_{kind[:-3]}_{tag}_xs"
    return f"gemv_moe_{kind}_{tag}"


@functools.lru_cache(maxsize=None)
def _kernel(name: str, scheme: str, device_id: int):
    from lowbit.kernels import gemv as _gemv

    return _gemv._planned_fn(_gemv._FILES[scheme], name, scheme)


def gemv_fn(kind: str, ew):
    """The compiled grouped GEMV of `kind` ("gate_up", "down", "down_smem", "gate_up_xs", "down_xs") for the
    experts' scheme."""
    import cupy

    return _kernel(gemv_name(kind, ew), ew.scheme, cupy.cuda.Device().id)


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


def fitting(planned: tuple, candidates: tuple) -> list:
    """The planned config and the candidates whose CTAs fit (gemv.fits_warps)."""
    from lowbit.kernels import gemv as _gemv

    return [c for c in (planned, *candidates) if _gemv.fits_warps(c)]


def down_smem_bytes(scheme: str, k: int, i_dim: int, wk: int) -> int:
    """Dynamic shared memory of a down_smem CTA (k slots, k * wk warps; gemv_smem.smem_bytes)."""
    return gemv_smem.smem_bytes(scheme, i_dim, k, k * wk, wk)


def down_smem_fits(ew, k: int, wk: int, device_id: int) -> bool:
    """Whether down_smem can run these experts (gemv_smem.fits: sm_90+, warps, I, shared memory)."""
    return gemv_smem.fits(ew.scheme, ew.intermediate, k, k * wk, wk, device_id)


@functools.lru_cache(maxsize=None)
def ring_bytes(scheme: str, warps: int) -> int:
    """Shared memory of the gate/up launch's per-warp weight rings (cuda/common.cuh GEMV_RING: stages x
    GEMV_UNROLL iterations x 1 KiB a warp), placed before its x slab; 0 where the build has none. Cached, as the
    compiled kernels are (gemv_fn): the environment is read once."""
    from lowbit.kernels.gemv import compile_defines

    d = compile_defines(scheme)
    if d["GEMV_XPREFETCH"]:
        return 0
    return warps * d["GEMV_RING"] * d["GEMV_UNROLL"] * 1024


def decode_gemv(x, ids, wts, ew, out=None, only: str | None = None, cfg: tuple | None = None):
    """The grouped-GEMV decode. cfg = (gate_up plan, down plan) overrides the plans, a down plan being
    (row tiles, warps along K, splits) or ("smem", wk); else the first call of a shape times the
    candidates and keeps the fastest of each launch (down_smem by rule where it fits, DOWN_SMEM)."""
    import cupy

    from lowbit.kernels import gemv as _gemv

    t, k = ids.shape
    i_dim, h_dim = ew.intermediate, ew.hidden
    dev = x.device.id
    fg, fd = gemv_fn("gate_up", ew), gemv_fn("down", ew)
    group = np.int32(ew.gate.group_size if ew.scheme == "int4" else 0)
    h = cupy.empty((t * k, i_dim), x.dtype)
    out = cupy.empty((t, h_dim), x.dtype) if out is None else out
    gq, gsc, gz, gg = (_gemm._ptr(a) for a in _gemm._weight_args(ew.gate))
    uq, usc, uz, ug = (_gemm._ptr(a) for a in _gemm._weight_args(ew.up))
    dq, dsc, dz, dg = (_gemm._ptr(a) for a in _gemm._weight_args(ew.down))
    u64 = np.uint64
    xs = _gemv.XS and ew.scheme in _gemv.XS_GROUPED  # x staged in shared memory (gemv.xs_launch)

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
        ring = ring_bytes(ew.scheme, wr * wk)
        f, smem = (_gemv.xs_launch(fg, gemv_fn("gate_up_xs", ew), ew.scheme, 1, h_dim, s, wr * wk, ring) if xs
                   else (fg, ring))
        if (f, smem) not in _SMEM_SET:  # a driver call: once per kernel and size
            if f.max_dynamic_shared_size_bytes < smem:
                f.max_dynamic_shared_size_bytes = smem
            _SMEM_SET.add((f, smem))
        launch(f, (bx, s, t * k), (wr * wk * 32,),
               (u64(gq), u64(gsc), u64(gz), u64(gg), u64(uq), u64(usc), u64(uz), u64(ug), x, h, ws, cnt, ids, wts,
                *_expert_strides(ew.gate), np.int32(i_dim), np.int32(h_dim), np.int32(s), group, np.int32(wk),
                np.int32(k), np.int32(1)), shared_mem=smem)

    def down_args(ws, cnt, splits, wk, sub):
        return (u64(dq), u64(dsc), u64(dz), u64(dg), _gemv.NULL, _gemv.NULL, _gemv.NULL, _gemv.NULL, h, out, ws,
                cnt, ids, wts, *_expert_strides(ew.down), np.int32(h_dim), np.int32(i_dim), np.int32(splits), group,
                np.int32(wk), np.int32(k), np.int32(sub))

    def down(c):
        if c[0] == "smem":
            wk = c[1]
            if not down_smem_fits(ew, k, wk, dev):
                raise KernelError(f"{ew.down.name}: the shared-memory down launch does not fit {k} experts x "
                                  f"{wk} warps of I={i_dim} ({ew.scheme}) here; use a split-K plan")
            f = gemv_fn("down_smem", ew)
            smem = down_smem_bytes(ew.scheme, k, i_dim, wk)
            if f.max_dynamic_shared_size_bytes < smem:
                f.max_dynamic_shared_size_bytes = smem
            launch(f, (_cdiv(h_dim, 16), t), (k * wk * 32,), down_args(_gemv.NULL, _gemv.NULL, 1, wk, 1),
                   shared_mem=smem)
            return
        # tiles of 16 rows, one grid z per token, split j * s + q = part q of slot j's K
        check(c)
        wr, wk, s = c
        bx = _cdiv(_cdiv(h_dim, 16), wr)
        ws, cnt = _gemv._WS.get(dev, bx * wr * t * k * s * 4 * 32, bx * wr * t)
        f, smem = _gemv.xs_launch(fd, gemv_fn("down_xs", ew), ew.scheme, 1, i_dim, s, wr * wk) if xs else (fd, 0)
        launch(f, (bx, k * s, t), (wr * wk * 32,), down_args(ws, cnt, k * s, wk, s), shared_mem=smem)

    key = (gemv_name("down", ew), t, k, i_dim, h_dim, dev)
    if cfg is None and key in _TUNED:
        cfg = _TUNED[key]
    elif cfg is None:
        planned = plan_decode(t, k, i_dim, h_dim, ew.scheme, _gemv._sm_count(dev), max(fg.num_regs, fd.num_regs))
        # by rule (its gain is the overlap with gate/up under PDL, which a standalone timing does not see; with
        # PDL off too, so that both launch modes run the same kernels and give the same bits)
        use_smem = (DOWN_SMEM and down_smem_fits(ew, k, DOWN_SMEM_WK, dev)
                    and down_smem_bytes(ew.scheme, k, i_dim, DOWN_SMEM_WK) <= DOWN_SMEM_MAX_BYTES)
        smem_down = ("smem", DOWN_SMEM_WK) if use_smem else None
        if not _gemv.TUNE or cupy.cuda.get_current_stream().is_capturing():
            cfg = (planned[0], smem_down or planned[1])  # timing is impossible inside a CUDA-graph capture
        else:
            flush = cupy.empty(FLUSH_BYTES, dtype=cupy.uint8)  # one for both tunings
            best_gu = fastest_config(gate_up, fitting(planned[0], GATE_UP_CANDIDATES), flush)
            gate_up(best_gu)
            best_dn = smem_down or fastest_config(down, fitting(planned[1], DOWN_CANDIDATES), flush)
            cfg = _TUNED[key] = (best_gu, best_dn)
            del flush
    gate_up(cfg[0])
    if only == "gate_up":
        return h
    down(cfg[1])
    return out
