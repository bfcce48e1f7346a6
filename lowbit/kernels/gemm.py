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
                                                     (both in lowbit.kernels.gemm_tma)
`launch()` with groups= runs the older kernels over MoE rows sorted by expert.
"""

from __future__ import annotations

import functools
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


#: act_quant_fp8's unit slots per half-warp (16-byte loads in flight per lane; a power of two). H200,
#: 2026-11-27: 2 was fastest at every size (4096x4096: 21.7 us, against 25.1 with 4 and 28.4 with 8)
ACT_QUANT_U = 2


def quantize_act_fp8(x, a_rows=None, rows: int | None = None, out=None):
    """x bf16 [*, K] -> (xq uint8 e4m3 [rows, K], xs f32 [ceil(K/128), rows]); row r reads x[a_rows[r]].
    out: an (xq, xs) pair of those shapes and dtypes to write into (tests poison them first)."""
    import cupy

    k = x.shape[1]
    rows = x.shape[0] if rows is None else rows
    kb = -(-k // 128)
    shapes = ((rows, k), (kb, rows))
    if out is None:
        xq, xs = cupy.empty(shapes[0], cupy.uint8), cupy.empty(shapes[1], cupy.float32)
    else:
        xq, xs = out
        if (xq.shape, xs.shape, xq.dtype, xs.dtype) != (*shapes, cupy.uint8, cupy.float32) or not (
                xq.flags.c_contiguous and xs.flags.c_contiguous):
            raise KernelError(f"quantize_act_fp8: out must be contiguous uint8 {shapes[0]} and float32 {shapes[1]}, "
                              f"got {xq.dtype} {xq.shape} and {xs.dtype} {xs.shape}")
    if rows and kb:  # a CTA: 2^lg k-blocks of slots >> lg rows (gemm_fp8.cu)
        slots = 16 * ACT_QUANT_U
        lg = min(slots.bit_length() - 1, (kb - 1).bit_length())
        f = get_function("gemm_fp8.cu", "act_quant_fp8", {"AQ_U": ACT_QUANT_U})
        f((-(-rows // (slots >> lg)), -(-kb // (1 << lg))), (256,),
          (x, _ptr(a_rows), np.int32(rows), np.int32(k), np.int32(lg), xq, xs))
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
        from lowbit.kernels import gemm_tma

        if gemm_tma.use_tma_fp8(w, rows, splits, gate, groups):
            gemm_tma.launch_tma_fp8(w, xq, xs, y, rows)
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
    from lowbit.kernels import gemm_tma

    if act == "bf16" and gemm_tma.use_tma_w16(w, m):
        gemm_tma.launch_tma_w16(w, x, y, m)
        return y
    if act == "fp8" and w.scheme == "fp8-block" and gemm_tma.use_tma_fp8(w, m, 1):  # before gemm_fp8.cu's split-K plan
        return launch(w, x, act, rows=m, y=y)
    t, splits, k_len = plan("fp8" if act == "fp8" else "w16", m, w.n, w.k)
    return launch(w, x, act, rows=m, y=y, tile=t, splits=splits, k_len=k_len)
