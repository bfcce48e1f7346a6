"""The TMA warp-specialized GEMMs of sm_90a (see lowbit.kernels.gemm, which picks them first for dense weights).

  W8A8 whose 128x128 output tiles fill every SM      gemm_fp8_tma_sm90.cu: persistent, a TMA producer
                                                     warpgroup, two wgmma consumers, 6-stage mbarrier ring
  fp8-block / nvfp4 / int4 weight-only, K >= 128     gemm_w16_tma_sm90.cu: the same frame, the weight
                                                     dequantized in registers as wgmma's A operand
                                                     (y^T = W x^T); tiles and split-K from tma_w16_plan()
`use_tma_fp8` / `use_tma_w16` say whether a launch goes here; `launch_tma_fp8` / `launch_tma_w16` run it.
LOWBIT_GEMM_TMA=0 turns both off; LOWBIT_TMA_FP8 / LOWBIT_TMA_W16 override their configurations (benchmarks).
Device facts (SM count, sm_90a availability) are read through lowbit.kernels.gemm, so one monkeypatch there
covers both modules.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from lowbit.errors import KernelError
from lowbit.kernels import gemm as _g
from lowbit.kernels.compile import get_function
from lowbit.kernels.weights import GpuWeight


def _tma_on() -> bool:
    """The TMA warp-specialized kernels: sm_90a, and not turned off with LOWBIT_GEMM_TMA=0."""
    import os

    return _g._sm90_available() and os.environ.get("LOWBIT_GEMM_TMA", "1") != "0"


#: gemm_fp8_tma_sm90 configuration: (BN, stages, PIPE run length or 0, consumer warpgroups);
#: LOWBIT_TMA_FP8="256,4,0,2" overrides (benchmarks)
TMA_FP8 = (128, 6, 4, 2)


def _tma_fp8_cfg() -> tuple[int, int, int, int]:
    return _g._env_ints("LOWBIT_TMA_FP8", TMA_FP8)


def _tma_fp8_smem(bn: int, stages: int, ncw: int) -> int:
    return stages * (64 * ncw + bn) * 128 + 2048


@functools.lru_cache(maxsize=None)
def _tma_fp8_kernel(bn: int, stages: int, pipe: int, ncw: int):
    f = get_function("gemm_fp8_tma_sm90.cu", "gemm_fp8_tma_sm90",
                     {"BN": bn, "STAGES": stages, "PIPE": pipe, "NCW": ncw})
    f.max_dynamic_shared_size_bytes = _tma_fp8_smem(bn, stages, ncw)
    return f


def _tma_fp8_tiles(rows: int, n: int) -> int:
    bn, _stages, _pipe, ncw = _tma_fp8_cfg()
    return -(-rows // (64 * ncw)) * -(-n // bn)


#: gemm_fp8_tma_sm90 takes every dense W8A8 GEMM of M >= TMA_FP8_MIN_ROWS (one CTA a 128x128 output tile, even
#: when the tiles fill only part of the SMs), and smaller M only when its tiles fill every SM. H200, 2026-11-27,
#: against the split-K mma.sync kernel (gemm_fp8.cu) on the six bench shapes: faster at every M from 128 up
#: (16 to 1184 tiles; e.g. Qwen3 attn.o M = 1024, 128 tiles, 29.7 against 72.0 us; Qwen2.5-72B mlp.down M = 256
#: 136 against 329 us; tied at 28 tiles); at M = 32 / 64 / 96 faster or tied on 4 of 6 shapes (72B mlp.down
#: 110 against 190-198 us) and up to 7 % slower on 2 (7B mlp.down M = 96, attn.o M = 32); the sum over the
#: shapes at M = 64: 369 against 486 us. LOWBIT_TMA_FP8_MIN_ROWS overrides.
TMA_FP8_MIN_ROWS = 32


def use_tma_fp8(w: GpuWeight, rows: int, splits: int, gate=None, groups=None) -> bool:
    """Whether a W8A8 launch goes to gemm_fp8_tma_sm90 (dense, no split-K, M >= TMA_FP8_MIN_ROWS or tiles >= SMs,
    TMA-legal)."""
    import os

    if groups is not None or gate is not None or splits != 1 or not _tma_on():
        return False
    wq = w.tensors["weight"]
    min_rows = int(os.environ.get("LOWBIT_TMA_FP8_MIN_ROWS", TMA_FP8_MIN_ROWS))
    return w.k % 16 == 0 and wq.data.ptr % 16 == 0 and (
        rows >= min_rows or _tma_fp8_tiles(rows, w.n) >= _g._num_sms())


def launch_tma_fp8(w: GpuWeight, xq, xs, y, rows: int) -> None:
    from lowbit.kernels import tma

    bn, stages, pipe, ncw = _tma_fp8_cfg()
    ma = tma.tensor_map_2d(xq, 64 * ncw, 128)
    mb = tma.tensor_map_2d(w.tensors["weight"], 128, 128)
    args = (ma, mb, xs, w.tensors["weight_scale_inv"], y, np.int32(rows), np.int32(w.n), np.int32(w.k))
    grid = (min(_tma_fp8_tiles(rows, w.n), _g._num_sms()),)
    _tma_fp8_kernel(bn, stages, pipe, ncw)(grid, (128 * (ncw + 1),), args, shared_mem=_tma_fp8_smem(bn, stages, ncw))


#: gemm_w16_tma_sm90: stages per (scheme, tokens per tile); a stage is the x tile (tokens x 256 bytes) + the
#: raw W tile (8 KB 4-bit, 16 KB fp8) + its scales. 256-token tiles share each decoded weight fragment between
#: twice the tokens (measured on H200, 2026-11-27: int4 at M >= 4096 570-660 TFLOPS against 470-520 with 128);
#: they are used while they fill every SM at least once; fp8 stays at 128 (256 fits only 2 stages and measured
#: slower). 16- to 64-token tiles serve M <= 64, where streaming the weight is the work.
TMA_W16_STAGES = {("int4", 256): 3, ("int4", 128): 5, ("int4", 64): 8, ("int4", 32): 8, ("int4", 16): 8,
                  ("nvfp4", 256): 3, ("nvfp4", 128): 5, ("nvfp4", 64): 8, ("nvfp4", 32): 8, ("nvfp4", 16): 8,
                  ("fp8-block", 256): 2, ("fp8-block", 128): 4, ("fp8-block", 64): 6, ("fp8-block", 32): 8,
                  ("fp8-block", 16): 8}
TMA_W16_RUN = 8  # k-blocks per straight-line run
#: token tiles that run two CTAs an SM (CTAS = 2: 104 consumer registers, the stages that fit 113 KB). H200,
#: 2026-11-27, M = 16 on the six bench shapes against one CTA an SM: fp8-block 0.87-1.01x the time (72B mlp.down
#: 93.9 against 107.5 us), nvfp4 0.88-1.03x, int4 0.92-1.01x; at 32 and 64 tokens mixed (0.9-1.08x): not taken.
TMA_W16_TWO_CTAS = {("int4", 16): 7, ("nvfp4", 16): 7, ("fp8-block", 16): 5}


@dataclass(frozen=True)
class W16Plan:
    stages: int
    run: int
    bt: int  # tokens per tile
    splits: int  # K splits (work units = output tiles x splits)
    kps: int  # 128-K blocks per split
    ctas: int = 1  # CTAs per SM (2: smaller register budget, see gemm_w16_tma_sm90.cu CTAS)


#: how much faster a 256-token tile computes than a 128-token one once both fill the GPU (4-bit weights;
#: H200, 2026-11-27: int4 600-660 vs 470-520 TFLOPS, nvfp4 ~500 vs ~350)
BT256_GAIN = 1.2


def _wave_eff(units: int, sms: int) -> float:
    """Busy fraction of the SMs over the rounds a persistent grid needs for `units` work units."""
    waves = units / sms
    return waves / math.ceil(waves)


def tma_w16_plan(w: GpuWeight, rows: int) -> W16Plan:
    """Tile, pipeline and split-K of gemm_w16_tma_sm90 for this weight and M.

    M <= 64: the smallest token tile that holds M, K split into about two work units per SM (streaming the
    weight is the work; the partials are small). M > 64: 128- or 256-token tiles (4-bit weights), whichever
    keeps the SMs busier over the persistent rounds (256 counted BT256_GAIN faster, the padding of a ragged
    last token tile counted as waste); K is split only while the tiles fill less than one wave and M <= 256,
    since the fp32 partials cost M x N x 8 bytes of traffic per split.
    LOWBIT_TMA_W16="stages,run,tokens[,splits[,ctas]]" overrides (benchmarks, tests). Cached (a call's host cost)."""
    import os

    return _w16_plan(w.scheme, w.n, w.k, rows, os.environ.get("LOWBIT_TMA_W16", ""), _g._num_sms())


@functools.lru_cache(maxsize=4096)
def _w16_plan(scheme: str, n: int, k: int, rows: int, env: str, sms: int) -> W16Plan:
    nk = -(-k // 128)
    nt = -(-n // 128)
    parts = tuple(int(p) for p in env.split(",")) if env else ()
    if parts:
        stages, run, bt = parts[:3]
        splits = parts[3] if len(parts) > 3 else 0
        ctas = parts[4] if len(parts) > 4 else 1
    else:
        if rows <= 64:
            bt = next(b for b in (16, 32, 64) if rows <= b)
        else:
            def score(b: int) -> float:
                m_tiles = -(-rows // b)
                return _wave_eff(m_tiles * nt, sms) * rows / (m_tiles * b) * (BT256_GAIN if b == 256 else 1.0)

            bt = max((128, 256) if scheme != "fp8-block" else (128,), key=score)
        stages, run, splits, ctas = TMA_W16_STAGES[(scheme, bt)], TMA_W16_RUN, 0, 1
        if (scheme, bt) in TMA_W16_TWO_CTAS:
            stages, ctas = TMA_W16_TWO_CTAS[(scheme, bt)], 2
    if not splits:
        tiles = -(-rows // bt) * nt
        splits = 1
        if rows <= 64 and tiles < sms:
            splits = max(1, min(nk // 4, -(-2 * sms // tiles)))
        elif rows <= 256 and tiles < sms:
            splits = max(1, min(nk // 4, -(-sms // tiles)))
    kps = -(-nk // splits)
    return W16Plan(stages, run, bt, -(-nk // kps), kps, ctas)


def _tma_w16_smem(scheme: str, stages: int, bt: int) -> int:
    """x tile + raw W tile + the staged scales (<= 2 KB) per stage, + 2 KB (alignment, barriers)."""
    return stages * (bt * 256 + 128 * (128 if scheme == "fp8-block" else 64) + 2048) + 2048


@functools.lru_cache(maxsize=None)
def _tma_w16_kernel(scheme: str, group: int, stages: int, run: int, bt: int, ctas: int = 1):
    if ctas not in (1, 2):
        raise KernelError(f"gemm_w16_tma_sm90: {ctas} CTAs an SM; the kernel is built for 1 or 2")
    smem = _tma_w16_smem(scheme, stages, bt)
    cap = 227 * 1024 if ctas == 1 else 113 * 1024  # a Hopper SM's 228 KB, less 1 KB a CTA
    if smem > cap:
        raise KernelError(f"gemm_w16_tma_sm90: {stages} stages of {bt}-token tiles need {smem} bytes of shared "
                          f"memory, over the {cap // 1024} KB a CTA can have at {ctas} an SM; use fewer stages")
    defines = {"SCHEME": _g.SCHEME_IDS[scheme], "INT4_GROUP": group, "STAGES": stages, "RUN": run, "BT": bt}
    if ctas != 1:
        defines["CTAS"] = ctas
    f = get_function("gemm_w16_tma_sm90.cu", "gemm_w16_tma_sm90", defines)
    f.max_dynamic_shared_size_bytes = smem
    return f


def use_tma_w16(w: GpuWeight, rows: int) -> bool:
    """Whether a dense weight-only GEMM goes to gemm_w16_tma_sm90 (fp8-block / nvfp4 / int4 on sm_90a, TMA-legal).

    K >= 128: the kernel stages the scales of whole 128-K blocks (a block's first group is clamped to
    K/G - 128/G, negative below one block); smaller K runs the other kernels."""

    if not _tma_on():
        return False
    if w.scheme not in ("fp8-block", "nvfp4", "int4") or w.experts is not None:
        return False
    if w.scheme == "int4" and w.k % w.group_size:
        return False
    main = w.tensors["weight" if w.scheme == "fp8-block" else "weight_packed"]
    return rows > 0 and w.k >= 128 and w.k % 32 == 0 and main.data.ptr % 16 == 0


def launch_tma_w16(w: GpuWeight, x, y, rows: int) -> None:
    import cupy

    from lowbit.kernels import tma

    p = tma_w16_plan(w, rows)
    mx = tma.tensor_map_2d(x, p.bt, 64)
    wg = None
    if w.scheme == "fp8-block":
        mw = tma.tensor_map_2d(w.tensors["weight"], 128, 128)
        ws, wz = w.tensors["weight_scale_inv"], None
    else:
        mw = tma.tensor_map_2d(w.tensors["weight_packed"].view(cupy.uint8), 128, 64, swizzle=0)
        ws, wz = w.tensors["weight_scale"], w.tensors.get("weight_zero_point")
        wg = w.tensors.get("weight_global_scale")
    ypart = cupy.empty((p.splits, rows, w.n), cupy.float32) if p.splits > 1 else None
    args = (mx, mw, ws, _g._ptr(wz), _g._ptr(wg), y, _g._ptr(ypart), np.int32(rows), np.int32(w.n), np.int32(w.k),
            np.int32(p.splits), np.int32(p.kps))
    units = -(-rows // p.bt) * -(-w.n // 128) * p.splits
    f = _tma_w16_kernel(w.scheme, w.group_size if w.scheme == "int4" else 128, p.stages, p.run, p.bt, p.ctas)
    f((min(units, p.ctas * _g._num_sms()),), (384,), args, shared_mem=_tma_w16_smem(w.scheme, p.stages, p.bt))
    if p.splits > 1:
        total = rows * w.n
        red = get_function("gemm_w16.cu", "gemm_splitk_reduce")
        red((min(-(-total // 256), 4096),), (256,), (ypart, np.int32(p.splits), np.int64(total), 0, y))
