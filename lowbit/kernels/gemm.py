"""Prefill GEMM: `gemm(w, x, act)` -> y = x @ W^T for a `GpuWeight` in its on-disk layout.

Paths (the weight is never repacked):
  bf16 weight                    cuBLAS through cupy.matmul (the baseline)
  fp8-block, act="fp8"  (W8A8)   act_quant_fp8 (per token per 128 channels, amax/448) then
                                 gemm_fp8_kernel: e4m3 mma.sync, fp32 promotion per 128-K block
  fp8-block / nvfp4 / int4, act="bf16" (W8A16, W4A16)
                                 gemm_w16_kernel: weight tile dequantized in shared memory to bf16,
                                 bf16 mma.sync, cp.async pipeline
Tiles, pipeline depth and split-K come from `_TILES` / `plan()` (a small table by M; split-K when the
output tiles cannot fill the GPU). On sm_90a the 128-row tiles run the warpgroup-MMA twins
(gemm_w16_sm90.cu / gemm_fp8_sm90.cu: wgmma, 4-stage cp.async ring, 128x128 tiles); LOWBIT_GEMM_SM90=0
forces the mma.sync kernels.
On sm_90a, dense GEMMs go to the TMA warp-specialized kernels first (LOWBIT_GEMM_TMA=0 turns them off):
  W8A8 whose 128x128 output tiles fill every SM      gemm_fp8_tma_sm90.cu: persistent, a TMA producer
                                                     warpgroup, two wgmma consumers, 6-stage mbarrier ring
  fp8-block / nvfp4 / int4 weight-only, K >= 128     gemm_w16_tma_sm90.cu: the same frame, the weight
                                                     dequantized in registers as wgmma's A operand
                                                     (y^T = W x^T); tiles and split-K from tma_w16_plan()
`launch()` with groups= runs the older kernels over MoE rows sorted by expert.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from lowbit.errors import KernelError
from lowbit.kernels.compile import device_arch, get_function
from lowbit.kernels.weights import GpuWeight

SCHEME_IDS = {"bf16": 0, "fp8-block": 1, "nvfp4": 2, "int4": 3}
_RAW_ROW = {0: 144, 1: 64, 2: 32, 3: 32}  # bytes of one W row per 64-K stage (bf16 padded)


@dataclass(frozen=True)
class Tile:
    bm: int
    bn: int
    warps_m: int
    warps_n: int
    stages: int

    @property
    def threads(self) -> int:
        return self.warps_m * self.warps_n * 32


# (max M, tile) for each kernel family: the first row whose max M >= M is used.
_TILES = {
    "w16": [(16, Tile(16, 128, 1, 4, 4)), (32, Tile(32, 128, 1, 4, 4)), (64, Tile(64, 128, 2, 2, 4)),
            (1 << 62, Tile(128, 128, 2, 4, 3))],
    "fp8": [(16, Tile(16, 128, 1, 4, 4)), (64, Tile(64, 128, 2, 2, 4)), (1 << 62, Tile(128, 128, 2, 4, 4))],
}


@functools.lru_cache(maxsize=None)
def _num_sms() -> int:
    import cupy

    return int(cupy.cuda.Device().attributes["MultiProcessorCount"])


def pick_tile(kind: str, m: int) -> Tile:
    for max_m, t in _TILES[kind]:
        if m <= max_m:
            return t
    raise AssertionError("tile table has no catch-all row")


def plan(kind: str, m: int, n: int, k: int) -> tuple[Tile, int, int]:
    """(tile, splits, k_len): split K (in 128-multiples) while the output tiles fill < 2 waves of SMs."""
    t = pick_tile(kind, m)
    tiles = -(-m // t.bm) * -(-n // t.bn)
    splits = 1
    target = (4 if t.bm <= 64 else 2) * _num_sms()  # small M is memory-bound: more CTAs in flight
    while tiles * splits * 2 <= target and k // (splits * 2) >= 256:
        splits *= 2
    k_len = -(-(-(-k // splits)) // 128) * 128
    return t, -(-k // k_len), k_len


def smem_bytes(kind: str, t: Tile, scheme_id: int = 0) -> int:
    if kind == "fp8":
        return t.stages * (t.bm + t.bn) * 144
    wbf = 0 if scheme_id == 0 else t.bn * 144
    return t.stages * (t.bm * 144 + t.bn * _RAW_ROW[scheme_id]) + wbf


@functools.lru_cache(maxsize=None)
def _kernel(kind: str, t: Tile, scheme_id: int = 0, group: int = 128):
    defines = {"BM": t.bm, "BN": t.bn, "WARPS_M": t.warps_m, "WARPS_N": t.warps_n, "STAGES": t.stages}
    if kind == "w16":
        defines.update(SCHEME=scheme_id, INT4_GROUP=group)
        f = get_function("gemm_w16.cu", "gemm_w16_kernel", defines)
    else:
        f = get_function("gemm_fp8.cu", "gemm_fp8_kernel", defines)
    f.max_dynamic_shared_size_bytes = smem_bytes(kind, t, scheme_id)
    return f


SM90_STAGES = 4
#: gemm_w16_sm90 configuration: (stages, CTAs per SM, BN); LOWBIT_SM90_W16="3,1,256" overrides (benchmarks)
SM90_W16 = (3, 2, 128)  # measured on H200 2026-11-26: (3, 2) 350-407 TFLOPS vs (4, 1) 270-290 for fp8 W8A16


def _env_ints(name: str, default: tuple) -> tuple:
    """A comma-separated list of ints from the environment (benchmark / test overrides), else default."""
    import os

    v = os.environ.get(name)
    return tuple(int(p) for p in v.split(",")) if v else default


@functools.lru_cache(maxsize=None)
def _sm90_available() -> bool:
    import os

    return device_arch() == "sm_90a" and os.environ.get("LOWBIT_GEMM_SM90", "1") != "0"


#: gemm_fp8_sm90 configuration: (warpgroups per CTA, CTAs per SM, stages); LOWBIT_SM90_FP8 overrides
SM90_FP8 = (2, 1, 4)


@functools.lru_cache(maxsize=None)
def _sm90_fp8_cfg() -> tuple[int, int, int]:
    return _env_ints("LOWBIT_SM90_FP8", SM90_FP8)


def effective_bm(kind: str, t: Tile) -> int:
    """Rows per CTA the launched kernel really uses (the MoE permutation's tiles must match)."""
    if kind == "fp8" and use_sm90(t):
        return 64 * _sm90_fp8_cfg()[0]
    return t.bm


@functools.lru_cache(maxsize=None)
def _sm90_w16_cfg() -> tuple[int, int, int]:
    cfg = _env_ints("LOWBIT_SM90_W16", SM90_W16)
    return (cfg + (128,))[:3]


def effective_bn(kind: str, t: Tile) -> int:
    """Output columns per CTA the launched kernel really uses."""
    if kind == "w16" and use_sm90(t):
        return _sm90_w16_cfg()[2]
    return t.bn


def use_sm90(t: Tile) -> bool:
    return t.bm == 128 and t.bn == 128 and _sm90_available()


def sm90_smem_bytes(kind: str, scheme_id: int = 0) -> int:
    if kind == "fp8":
        nwg, _minb, stages = _sm90_fp8_cfg()
        return stages * (64 * nwg + 128) * 128 + 1024
    stages, _minb, bn = _sm90_w16_cfg()
    raw = {0: 128, 1: 64, 2: 32, 3: 32}[scheme_id] * bn
    wbf = 0 if scheme_id == 0 else 2 * bn * 128
    return stages * (16384 + raw) + wbf + 1024


@functools.lru_cache(maxsize=None)
def _sm90_kernel(kind: str, scheme_id: int = 0, group: int = 128):
    if kind == "w16":
        stages, minb, bn = _sm90_w16_cfg()
        f = get_function("gemm_w16_sm90.cu", "gemm_w16_sm90",
                         {"SCHEME": scheme_id, "INT4_GROUP": group, "STAGES": stages, "MINB": minb, "BN": bn})
    else:
        nwg, minb, stages = _sm90_fp8_cfg()
        f = get_function("gemm_fp8_sm90.cu", "gemm_fp8_sm90", {"STAGES": stages, "NWG": nwg, "MINB": minb})
    f.max_dynamic_shared_size_bytes = sm90_smem_bytes(kind, scheme_id)
    return f


def _tma_on() -> bool:
    """The TMA warp-specialized kernels: sm_90a, and not turned off with LOWBIT_GEMM_TMA=0."""
    import os

    return _sm90_available() and os.environ.get("LOWBIT_GEMM_TMA", "1") != "0"


#: gemm_fp8_tma_sm90 configuration: (BN, stages, PIPE run length or 0, consumer warpgroups);
#: LOWBIT_TMA_FP8="256,4,0,2" overrides (benchmarks)
TMA_FP8 = (128, 6, 4, 2)


def _tma_fp8_cfg() -> tuple[int, int, int, int]:
    return _env_ints("LOWBIT_TMA_FP8", TMA_FP8)


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


def use_tma_fp8(w: GpuWeight, rows: int, splits: int, gate=None, groups=None) -> bool:
    """Whether a W8A8 launch goes to gemm_fp8_tma_sm90 (dense, no split-K, tiles >= SMs, TMA-legal)."""
    if groups is not None or gate is not None or splits != 1 or not _tma_on():
        return False
    wq = w.tensors["weight"]
    return w.k % 16 == 0 and wq.data.ptr % 16 == 0 and _tma_fp8_tiles(rows, w.n) >= _num_sms()


def _launch_tma_fp8(w: GpuWeight, xq, xs, y, rows: int) -> None:
    from lowbit.kernels import tma

    bn, stages, pipe, ncw = _tma_fp8_cfg()
    ma = tma.tensor_map_2d(xq, 64 * ncw, 128)
    mb = tma.tensor_map_2d(w.tensors["weight"], 128, 128)
    args = (ma, mb, xs, w.tensors["weight_scale_inv"], y, np.int32(rows), np.int32(w.n), np.int32(w.k))
    grid = (min(_tma_fp8_tiles(rows, w.n), _num_sms()),)
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


@dataclass(frozen=True)
class W16Plan:
    stages: int
    run: int
    bt: int  # tokens per tile
    splits: int  # K splits (work units = output tiles x splits)
    kps: int  # 128-K blocks per split


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
    LOWBIT_TMA_W16="stages,run,tokens[,splits]" overrides (benchmarks, tests). Cached (a call's host cost)."""
    import os

    return _w16_plan(w.scheme, w.n, w.k, rows, os.environ.get("LOWBIT_TMA_W16", ""), _num_sms())


@functools.lru_cache(maxsize=4096)
def _w16_plan(scheme: str, n: int, k: int, rows: int, env: str, sms: int) -> W16Plan:
    nk = -(-k // 128)
    nt = -(-n // 128)
    parts = tuple(int(p) for p in env.split(",")) if env else ()
    if parts:
        stages, run, bt = parts[:3]
        splits = parts[3] if len(parts) > 3 else 0
    else:
        if rows <= 64:
            bt = next(b for b in (16, 32, 64) if rows <= b)
        else:
            def score(b: int) -> float:
                m_tiles = -(-rows // b)
                return _wave_eff(m_tiles * nt, sms) * rows / (m_tiles * b) * (BT256_GAIN if b == 256 else 1.0)

            bt = max((128, 256) if scheme != "fp8-block" else (128,), key=score)
        stages, run, splits = TMA_W16_STAGES[(scheme, bt)], TMA_W16_RUN, 0
    if not splits:
        tiles = -(-rows // bt) * nt
        splits = 1
        if rows <= 64 and tiles < sms:
            splits = max(1, min(nk // 4, -(-2 * sms // tiles)))
        elif rows <= 256 and tiles < sms:
            splits = max(1, min(nk // 4, -(-sms // tiles)))
    kps = -(-nk // splits)
    return W16Plan(stages, run, bt, -(-nk // kps), kps)


def _tma_w16_smem(scheme: str, stages: int, bt: int) -> int:
    """x tile + raw W tile + the staged scales (<= 2 KB) per stage, + 2 KB (alignment, barriers)."""
    return stages * (bt * 256 + 128 * (128 if scheme == "fp8-block" else 64) + 2048) + 2048


@functools.lru_cache(maxsize=None)
def _tma_w16_kernel(scheme: str, group: int, stages: int, run: int, bt: int):
    smem = _tma_w16_smem(scheme, stages, bt)
    if smem > 227 * 1024:
        raise KernelError(f"gemm_w16_tma_sm90: {stages} stages of {bt}-token tiles need {smem} bytes of shared "
                          "memory, over the 227 KB a Hopper CTA can have; use fewer stages")
    defines = {"SCHEME": SCHEME_IDS[scheme], "INT4_GROUP": group, "STAGES": stages, "RUN": run, "BT": bt}
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


def _launch_tma_w16(w: GpuWeight, x, y, rows: int) -> None:
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
    args = (mx, mw, ws, _ptr(wz), _ptr(wg), y, _ptr(ypart), np.int32(rows), np.int32(w.n), np.int32(w.k),
            np.int32(p.splits), np.int32(p.kps))
    units = -(-rows // p.bt) * -(-w.n // 128) * p.splits
    f = _tma_w16_kernel(w.scheme, w.group_size if w.scheme == "int4" else 128, p.stages, p.run, p.bt)
    f((min(units, _num_sms()),), (384,), args, shared_mem=_tma_w16_smem(w.scheme, p.stages, p.bt))
    if p.splits > 1:
        total = rows * w.n
        red = get_function("gemm_w16.cu", "gemm_splitk_reduce")
        red((min(-(-total // 256), 4096),), (256,), (ypart, np.int32(p.splits), np.int64(total), 0, y))


def _ptr(a) -> int:
    return 0 if a is None else a.data.ptr


def check_x(w: GpuWeight, x, what: str = "x") -> None:
    import cupy

    if not isinstance(x, cupy.ndarray):
        raise KernelError(f"{w.name}: {what} must be a cupy array on the GPU, found {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != w.k:
        raise KernelError(f"{w.name}: {what} has shape {tuple(x.shape)}, expected [M, {w.k}]")
    from lowbit.formats.numerics import BF16

    if x.dtype != BF16:
        raise KernelError(f"{w.name}: {what} has dtype {x.dtype}, expected bfloat16; cast it with .astype")
    if not x.flags.c_contiguous or x.data.ptr % 16:
        raise KernelError(f"{w.name}: {what} must be C-contiguous and 16-byte aligned; use cupy.ascontiguousarray")
    if w.k % 32:
        raise KernelError(f"{w.name}: K={w.k} is not a multiple of 32, which the GEMM kernels need; "
                          "use the dequantize fallback (lowbit.kernels.linear) for this tensor")


def _weight_args(w: GpuWeight):
    """(wq, wscale, wzero, wglobal) device pointers for gemm_w16_kernel."""
    t = w.tensors
    if w.scheme == "bf16":
        return t["weight"], None, None, None
    if w.scheme == "fp8-block":
        return t["weight"], t["weight_scale_inv"], None, None
    if w.scheme == "nvfp4":
        return t["weight_packed"], t["weight_scale"], None, t["weight_global_scale"]
    if w.scheme == "int4":
        return t["weight_packed"], t["weight_scale"], t.get("weight_zero_point"), None
    raise KernelError(f"{w.name}: scheme {w.scheme!r} has no GEMM kernel")


def quantize_act_fp8(x, a_rows=None, rows: int | None = None):
    """x bf16 [*, K] -> (xq uint8 e4m3 [rows, K], xs f32 [ceil(K/128), rows]); row r reads x[a_rows[r]]."""
    import cupy

    k = x.shape[1]
    rows = x.shape[0] if rows is None else rows
    xq = cupy.empty((rows, k), cupy.uint8)
    xs = cupy.empty((-(-k // 128), rows), cupy.float32)
    warps = rows * (-(-k // 128))
    if warps:
        f = get_function("gemm_fp8.cu", "act_quant_fp8")
        f((-(-warps // 8),), (256,), (x, _ptr(a_rows), np.int32(rows), np.int32(k), xq, xs))
    return xq, xs


def launch(w: GpuWeight, x, act: str, *, rows: int, y, a_rows=None, gate=None, groups=None,
           tile: Tile | None = None, splits: int = 1, k_len: int | None = None, m_tiles: int | None = None):
    """Run one GEMM kernel into y [rows, N]. groups = (E, offs, tile_offs) for the MoE grouped mode."""
    import cupy

    kind = "fp8" if act == "fp8" else "w16"
    t = tile or pick_tile(kind, rows)
    k_len = k_len or -(-w.k // 128) * 128
    e, offs, tile_offs = groups if groups else (1, None, None)
    n_tiles = -(-w.n // effective_bn(kind, t))
    bm = effective_bm(kind, t)
    if groups:  # (m-tile bound, n-tile): grouped_tile maps blockIdx.x to an expert's rows
        grid = (max(m_tiles or -(-rows // bm), 1), n_tiles, splits)
    else:  # 1-D grouped raster order (cta_tile in gemm_common.cuh)
        grid = (max(-(-rows // bm) * n_tiles, 1), 1, splits)
    ypart = cupy.empty((splits, rows, w.n), cupy.float32) if splits > 1 else None
    dims = (np.int32(rows), np.int32(w.n), np.int32(w.k), np.int32(k_len), np.int32(e), _ptr(offs), _ptr(tile_offs))
    if kind == "fp8":
        if w.scheme != "fp8-block":
            raise KernelError(f"{w.name}: act='fp8' needs an fp8-block weight, found {w.scheme}")
        xq, xs = quantize_act_fp8(x, a_rows, rows)
        if use_tma_fp8(w, rows, splits, gate, groups):
            _launch_tma_fp8(w, xq, xs, y, rows)
            return y
        g_ptr = _ptr(gate) if splits == 1 else 0
        args = (xq, xs, w.tensors["weight"], w.tensors["weight_scale_inv"], g_ptr, y, _ptr(ypart)) + dims
        if use_sm90(t):
            _sm90_kernel("fp8")(grid, (128 * _sm90_fp8_cfg()[0],), args, shared_mem=sm90_smem_bytes("fp8"))
        else:
            _kernel("fp8", t)(grid, (t.threads,), args, shared_mem=smem_bytes("fp8", t))
    else:
        sid = SCHEME_IDS[w.scheme]
        wq, ws, wz, wg = _weight_args(w)
        g_ptr = _ptr(gate) if splits == 1 else 0
        args = (x, _ptr(a_rows), wq, _ptr(ws), _ptr(wz), _ptr(wg), g_ptr, y, _ptr(ypart)) + dims
        if use_sm90(t):
            _sm90_kernel("w16", sid, w.group_size)(grid, (256,), args, shared_mem=sm90_smem_bytes("w16", sid))
        else:
            f = _kernel("w16", t, sid, w.group_size)
            f(grid, (t.threads,), args, shared_mem=smem_bytes("w16", t, sid))
    if splits > 1:
        total = rows * w.n
        red = get_function("gemm_w16.cu", "gemm_splitk_reduce")
        red((min(-(-total // 256), 4096),), (256,), (ypart, np.int32(splits), np.int64(total), _ptr(gate), y))
    return y


def gemm_takes(w: GpuWeight) -> bool:
    """Whether gemm() has a kernel for this weight (bf16 goes to cuBLAS; the others need K % 32 == 0)."""
    return w.scheme == "bf16" or w.k % 32 == 0


def gemm(w: GpuWeight, x, act: str = "bf16", out=None):
    """y bf16 [M, N] = x bf16 [M, K] @ W^T. act: "bf16" (weight-only) or "fp8" (fp8-block W8A8). M <= 16 may
    run the GEMV kernels (small_m_uses_gemv)."""
    import cupy

    if w.experts is not None:
        raise KernelError(f"{w.name}: gemm() takes one linear; stacked experts go through lowbit.kernels.moe")
    if act not in ("bf16", "fp8"):
        raise KernelError(f"{w.name}: act={act!r} is not supported by the GEMM; use 'bf16' or 'fp8'")
    check_x(w, x)
    m = x.shape[0]
    if out is not None and (not isinstance(out, cupy.ndarray) or out.shape != (m, w.n) or out.dtype != x.dtype
                            or not out.flags.c_contiguous):
        raise KernelError(f"{w.name}: out must be a C-contiguous bfloat16 cupy array of shape ({m}, {w.n}), found "
                          f"{type(out).__name__} {getattr(out, 'shape', '')} {getattr(out, 'dtype', '')}")
    y = out if out is not None else cupy.empty((m, w.n), x.dtype)
    if m == 0:
        return y
    from lowbit.kernels.linear import small_m_uses_gemv

    if small_m_uses_gemv(w, x, act, y):
        from lowbit.kernels.gemv import gemv

        return gemv(w, x, act=act, out=y)
    return _gemm_kernels(w, x, act, y)


def _gemm_kernels(w: GpuWeight, x, act: str, y):
    """The GEMM proper (no GEMV dispatch), into y."""
    import cupy

    m = x.shape[0]
    if w.scheme == "bf16" and act == "bf16":
        return cupy.matmul(x, w.tensors["weight"].T, out=y)
    if act == "bf16" and use_tma_w16(w, m):
        _launch_tma_w16(w, x, y, m)
        return y
    t, splits, k_len = plan("fp8" if act == "fp8" else "w16", m, w.n, w.k)
    return launch(w, x, act, rows=m, y=y, tile=t, splits=splits, k_len=k_len)
