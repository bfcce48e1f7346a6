"""`gemv(w, x, act)`: y = x @ W^T for M = 1..16 on the GPU, reading the on-disk layouts directly.

Kernels: cuda/gemv_{bf16,fp8,nvfp4,int4}.cu (+ gemv_act.cu for W8A8 / W4A4 activation quantization).
act: "bf16" (weight-only; every scheme), "fp8" (fp8-block W8A8: x quantized to E4M3 per token per 128
channels), "nvfp4" (nvfp4 W4A4: x quantized to NVFP4, per-16 E4M3 scales, dynamic per-token global).
Launch: CTAs of (row tiles x warps along K) warps, grid (ceil(N/(16*row tiles)), splits); `plan_launch`
picks the CTA shape and the split-K factor (deterministic reductions) so the weight spreads evenly.
Above TUNE_MIN_ELEMENTS the first call of a shape (M = 1 and M > 1 apart) times the planner's config, other
configs and builds (VARIANTS; on sm_90+ the TMA-fed build, gemv_tma_*: one producer warp streams the weight
through a shared-memory ring with the bulk tensor copy) and keeps the fastest. The register loop of the 4-bit
schemes (XS_DENSE) runs its staged-x form (NAME_xs: the CTA's slab of x copied into shared memory first,
pre-permuted; `xs_launch`) wherever that slab fits beside the kernel's occupancy, the L1 form elsewhere.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from lowbit.errors import KernelError
from lowbit.kernels import device_buffers, gemv_smem
from lowbit.kernels.launch import launch as launch_kernel
from lowbit.kernels.timing import fastest_config
from lowbit.kernels.weights import GpuWeight

WARPS = int(os.environ.get("LOWBIT_GEMV_WARPS", 8))
#: compile-time knobs of cuda/common.cuh (see its header) and their defaults
TUNABLES = {"GEMV_MIN_BLOCKS": 1, "GEMV_UNROLL": 2, "GEMV_XPREFETCH": 0, "GEMV_MAXREG": 0, "GEMV_RING": 0}
#: GEMV_RING (the MoE gate/up's per-warp cp.async weight ring, cuda/common.cuh) is off by default: with 4 stages
#: (64 KiB an 8-warp CTA) Qwen3-30B-A3B fp8 gate/up alone took 11.4 us against 11.7, but the down launch after it
#: could no longer get resident beside it and copy its weights early, and the experts step took 22.6 us against
#: 17.6 (H200, 2026-11-28, benchmarks/moe_decode_kernels.py; GPU tests passed with it on). LOWBIT_GEMV_RING=S: on.
#: per weight scheme: the knobs measured best on H200 (benchmarks/gemv_variants.py, RESULTS.md); the env
#: variables LOWBIT_<KNOB> (LOWBIT_GEMV_UNROLL=3 ...) override them for experiments.
COMPILE_TUNING = {"bf16": {"GEMV_MIN_BLOCKS": 3, "GEMV_UNROLL": 2},
                  "fp8-block": {"GEMV_MIN_BLOCKS": 2, "GEMV_UNROLL": 2},
                  "nvfp4": {"GEMV_MIN_BLOCKS": 2, "GEMV_UNROLL": 2}, "int4": {"GEMV_MIN_BLOCKS": 2, "GEMV_UNROLL": 2}}
UNROLL = 2  # the planner's minimum work per warp (iterations), whatever the compile-time unroll
#: further builds of a scheme's dense GEMVs that the first-call autotuner also times (knobs over the
#: COMPILE_TUNING build). fp8 at 96 registers (20 warps an SM in 4-warp CTAs): 7-13 % faster than the
#: 128-register build on the large shapes, slower on small ones (H200, 2026-11-27); the 4-bit kernels gained
#: nothing from it. Builds without the weight decode and x permute reached only ~60 % of copy against fp8's
#: ~67 % (benchmarks/RESULTS.md, 2026-11-27 07:19 session): the per-element mma / x-fragment work and the
#: register-held loads limit them more than the decode arithmetic.
VARIANTS = {"fp8-block": ({"GEMV_MAXREG": 96},)}
#: the TMA-fed dense GEMV build (cuda/gemv_tma.cuh): a ring of GEMV_TMA stages in shared memory filled by the
#: bulk tensor copy, GEMV_TMA_SIDE stages of scales ahead in registers, each stage released after its math
#: (GEMV_TMA_LATE). Its configs enter the first-call autotuner as (row tiles, 1, splits, TMA_VARIANT).
#: LOWBIT_GEMV_TMA=0 leaves it out; LOWBIT_GEMV_TMA="S,side,min_blocks[,unroll[,late[,warps]]]" overrides
#: the build (experiments). Measured on H200 (benchmarks/RESULTS.md, 2026-11-27 from 11:30 UTC): releasing
#: after the math made W8A8 29568x8192 74 us against 84 and nothing slower; bf16 at 4 iterations a stage
#: made 14336x4096 34.6 us against 37.8 (the other schemes spill there and are 1.5-2x slower).
TMA_BUILD = {"GEMV_TMA": 4, "GEMV_TMA_SIDE": 2, "GEMV_MIN_BLOCKS": 2, "GEMV_TMA_LATE": 1}
#: per weight scheme, on top of TMA_BUILD
TMA_TUNING = {"bf16": {"GEMV_UNROLL": 4}}
TMA_VARIANT = -1
#: the shared-memory decode build (cuda/gemv_smem.cuh, lowbit.kernels.gemv_smem): config (1, warps, 1,
#: SMEM_VARIANT); taken by rule at M <= 8 where it fits one wave (gemv_smem.dense_warps), not tuned: its main gain
#: is the weights copied on chip before the PDL wait, while the previous kernel runs, which a standalone timing
#: does not see (with PDL off too, so that both launch modes run the same kernel and give the same bits)
SMEM_VARIANT = -2
#: (row tiles, splits) of the TMA build that the autotuner tries
TMA_CANDIDATES = ((8, 1), (8, 2), (8, 4), (4, 1), (4, 2), (4, 4), (4, 8))


def compile_defines(scheme: str, variant: int = 0) -> dict:
    """The -D constants the GEMV kernels of `scheme` are built with (COMPILE_TUNING, env overrides; variant
    v > 0: VARIANTS[scheme][v - 1] on top)."""
    d = {"GEMV_WARPS": WARPS}
    for knob, default in TUNABLES.items():
        d[knob] = int(os.environ.get("LOWBIT_" + knob, COMPILE_TUNING[scheme].get(knob, default)))
    if variant == TMA_VARIANT:
        d.update(tma_build(scheme))
    elif variant:
        d.update(VARIANTS[scheme][variant - 1])
    return d


def tma_build(scheme: str = "") -> dict:
    """TMA_BUILD with the scheme's TMA_TUNING and the LOWBIT_GEMV_TMA override
    ("S,side,min_blocks[,unroll[,late[,warps]]]") on top; {} where it is off."""
    env = os.environ.get("LOWBIT_GEMV_TMA", "")
    if env == "0":
        return {}
    d = {**TMA_BUILD, **TMA_TUNING.get(scheme, {})}
    if not env:
        return d
    try:
        vals = [int(v) for v in env.split(",")]
    except ValueError:
        raise KernelError(f"LOWBIT_GEMV_TMA={env!r}: expected 0 or 'stages,side,min_blocks[,unroll[,late[,warps]]]' "
                          "integers") from None
    return {**d, **dict(zip(_TMA_KNOBS, vals))}


_TMA_KNOBS = ("GEMV_TMA", "GEMV_TMA_SIDE", "GEMV_MIN_BLOCKS", "GEMV_UNROLL", "GEMV_TMA_LATE", "GEMV_WARPS")


def tma_smem_bytes(scheme: str, row_tiles: int, defines: dict | None = None) -> int:
    """Dynamic shared memory of a TMA GEMV CTA: stages x unroll x [16 * row tiles rows x 64 bytes] + alignment
    (defines: the build's, compile_defines(scheme, TMA_VARIANT) if not given)."""
    d = defines or compile_defines(scheme, TMA_VARIANT)
    return d["GEMV_TMA"] * d["GEMV_UNROLL"] * 16 * row_tiles * 64 + 1024


TUNE = os.environ.get("LOWBIT_GEMV_TUNE", "1") != "0"
#: the register loop's staged-x kernels (NAME_xs, cuda/common.cuh "x in shared memory"): taken wherever a CTA's
#: slab of x fits (xs_bytes); LOWBIT_GEMV_XS=0 keeps x in L1 (A/B)
XS = os.environ.get("LOWBIT_GEMV_XS", "1") != "0"
#: the schemes whose dense / grouped (MoE decode) GEMVs take it. Measured (H200, 2026-11-27, same runs): the 4-bit
#: GEMVs 5-18 % faster; the fp8 MoE decode (Qwen3-30B-A3B) 2-3 % faster end to end; the dense bf16 GEMV 7 %
#: slower at M = 1 and 20 % at M = 8 on 4096x4096 (15.7 / 17.9 us against 14.5 / 14.8: its x is a quarter of
#: its bytes, so the staging costs more than the L1 reads it saves), the dense fp8 ones mixed (+-4 %)
XS_DENSE = ("nvfp4", "int4")
XS_GROUPED = ("nvfp4", "int4", "fp8-block")
#: shared memory an SM gives its CTAs (sm_90: 228 KiB, 1 KiB of it reserved per CTA)
SM_SMEM = 228 * 1024
ACTS = {"bf16": ("bf16", "fp8-block", "nvfp4", "int4"), "fp8": ("fp8-block",), "nvfp4": ("nvfp4",)}
_FILES = {"bf16": "gemv_bf16.cu", "fp8-block": "gemv_fp8.cu", "nvfp4": "gemv_nvfp4.cu", "int4": "gemv_int4.cu"}
_TAGS = {("bf16", "bf16"): "bf16", ("fp8-block", "bf16"): "fp8", ("fp8-block", "fp8"): "fp8_a8",
         ("nvfp4", "bf16"): "nvfp4", ("nvfp4", "nvfp4"): "nvfp4_a4", ("int4", "bf16"): "int4"}
#: a NULL device pointer as a kernel argument (8 bytes of zeros)
NULL = np.uint64(0)


def _bf16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


#: the most rows (tokens) a GEMV call takes (two 8-token mma tiles)
MAX_M = 16


def check_activation(x, k: int, name: str = "x", max_m: int = MAX_M) -> int:
    """Validate x (cupy bf16 [M, K], C-contiguous, 16-byte aligned, current device); return M."""
    import cupy

    if not isinstance(x, cupy.ndarray):
        raise KernelError(f"{name}: expected a cupy array on the GPU, found {type(x).__name__}; use cupy.asarray")
    if x.dtype != _bf16():
        raise KernelError(f"{name}: expected dtype bfloat16, found {x.dtype}; cast with x.astype(ml_dtypes.bfloat16)")
    if x.ndim != 2 or x.shape[1] != k:
        raise KernelError(f"{name}: expected shape [M, {k}], found {tuple(x.shape)}")
    m = int(x.shape[0])
    if not 1 <= m <= max_m:
        raise KernelError(f"{name}: GEMV takes 1 <= M <= {max_m} rows, found M={m}; use lowbit.kernels.linear")
    if not x.flags.c_contiguous:
        raise KernelError(f"{name}: must be C-contiguous; pass cupy.ascontiguousarray({name})")
    if x.data.ptr % 16:
        raise KernelError(f"{name}: data pointer is not 16-byte aligned; pass a fresh copy ({name}.copy())")
    if x.device.id != cupy.cuda.Device().id:
        raise KernelError(f"{name}: lives on device {x.device.id}, current device is {cupy.cuda.Device().id}")
    return m


def _check_out(out, m: int, n: int):
    import cupy

    if out is None:
        return cupy.empty((m, n), dtype=_bf16())
    if not isinstance(out, cupy.ndarray) or out.dtype != _bf16() or tuple(out.shape) != (m, n) \
            or not out.flags.c_contiguous:
        raise KernelError(f"out: expected a C-contiguous cupy bfloat16 array [{m}, {n}], found "
                          f"{getattr(out, 'dtype', type(out).__name__)} {tuple(getattr(out, 'shape', ()))}")
    return out


def _check_weight(w: GpuWeight, act: str) -> None:
    if act not in ACTS:
        raise KernelError(f"act={act!r} is not known; use one of {', '.join(ACTS)}")
    if w.scheme not in ACTS[act]:
        raise KernelError(f"{w.name}: act={act!r} needs a {' or '.join(ACTS[act])} weight, found {w.scheme}; "
                          f"use act='bf16' for weight-only")
    if w.experts is not None:
        raise KernelError(f"{w.name}: stacked weight of {w.experts} experts; call gemv on w.expert(i)")
    for suffix, t in w.tensors.items():
        if not t.flags.c_contiguous or t.data.ptr % 16 and suffix in ("weight", "weight_packed"):
            raise KernelError(f"{w.name}.{suffix}: must be C-contiguous and 16-byte aligned; re-upload with to_gpu")


@functools.lru_cache(maxsize=None)
def _sm_count(device_id: int) -> int:
    import cupy

    return int(cupy.cuda.Device(device_id).attributes["MultiProcessorCount"])


def _ctas_per_sm(regs: int, warps: int) -> int:
    threads = 32 * warps
    per_warp = -(-max(regs, 1) * 32 // 256) * 256  # registers are allocated per warp, 256 at a time
    return max(1, min(65536 // (per_warp * warps), 2048 // threads, 32))


#: (row tiles, warps along K) per CTA that the planner considers
SHAPES_OF_CTA = ((8, 1), (4, 1), (4, 2), (2, 4), (1, 8))


def plan_launch(n: int, k: int, scheme: str, sm_count: int, regs: int = 128) -> tuple[int, int, int]:
    """(row tiles per CTA, warps along K per tile, split-K factor) spreading the weight evenly on the GPU.

    Score = (CTAs / (slots * waves)) * (mean / max iterations of a warp): how full the resident CTA slots
    stay (wave quantization) times the K imbalance between warps. Ties go to fewer splits, then to wider
    row blocks. Pure function: unit-tested without a GPU.
    """
    tiles = -(-n // 16)
    iters = -(-k // gemv_smem.KI[scheme])
    best = (-1.0, 0, 8, 1, 1)
    for wr, wk in SHAPES_OF_CTA:
        if wk > 1 and iters < 2 * UNROLL * wk:
            continue
        slots = sm_count * _ctas_per_sm(regs, wr * wk)
        blocks = -(-tiles // wr)
        for s in range(1, max(1, min(64, iters // (2 * UNROLL * wk))) + 1):
            ctas = blocks * s
            fill = ctas / (slots * -(-ctas // slots))
            parts = s * wk
            balance = (iters / parts) / -(-iters // parts) * (tiles / (blocks * wr))
            score = round(fill * balance * (1 - 0.002 * s), 3)
            if score > best[0]:
                best = (score, -s, wr, wk, s)
    return best[2], best[3], best[4]


class _Workspace:
    """Per-device split-K scratch: fp32 partials and self-resetting int32 counters (zeroed once). Both only
    grow and are never freed (device_buffers.Retained: CUDA graphs keep the addresses they were captured with)."""

    def __init__(self):
        self.ws = device_buffers.Retained(np.float32, minimum=1 << 16)
        self.cnt = device_buffers.Retained(np.int32, zeroed=True, minimum=4096)

    def get(self, dev: int, floats: int, tiles: int):
        return self.ws.get(dev, floats), self.cnt.get(dev, tiles)


_WS = _Workspace()


def quantize_act_fp8(x, codes: bool = False, half: bool = False):
    """x bf16 [M, K] -> (xq [M, K] = E4M3 values, bf16 or, with half, f16 (what the W8A8 GEMV reads), xs f32
    [M, ceil(K/128)][, codes uint8 [M, K]])."""
    import cupy

    from lowbit.kernels.compile import get_function

    m = check_activation(x, int(x.shape[-1]) if x.ndim == 2 else -1)
    k = int(x.shape[1])
    kbc = -(-k // 128)
    xq = cupy.empty((m, k), dtype=cupy.float16 if half else x.dtype)
    xs = cupy.empty((m, kbc), dtype=cupy.float32)
    cd = cupy.empty((m, k), dtype=cupy.uint8) if codes else None
    fn = get_function("gemv_act.cu", "act_quant_fp8")
    fn((-(-m * kbc // 8),), (256,), (x, xq, xs, cd if codes else NULL, np.int32(m), np.int32(k), np.int32(half)))
    return (xq, xs, cd) if codes else (xq, xs)


def quantize_act_nvfp4(x, codes: bool = False):
    """x bf16 [M, K] -> (xq bf16 = e2m1 * s8, xs f32 [M] = 1/global[, codes u8 [M, K/2], scales u8 [M, K/16]])."""
    import cupy

    from lowbit.kernels.compile import get_function

    m = check_activation(x, int(x.shape[-1]) if x.ndim == 2 else -1)
    k = int(x.shape[1])
    if k % 16:
        raise KernelError(f"x: NVFP4 activation quantization needs K % 16 == 0, found K={k}")
    xq = cupy.empty_like(x)
    xs = cupy.empty((m,), dtype=cupy.float32)
    cd = cupy.empty((m, k // 2), dtype=cupy.uint8) if codes else None
    sc = cupy.empty((m, k // 16), dtype=cupy.uint8) if codes else None
    fn = get_function("gemv_act.cu", "act_quant_nvfp4")
    fn((m,), (1024,), (x, xq, xs, cd if codes else NULL, sc if codes else NULL, np.int32(m), np.int32(k)))
    return (xq, xs, cd, sc) if codes else (xq, xs)


def _xs_need(scheme: str, m: int, k: int, parts: int) -> int:
    """Bytes of x a staged-x CTA holds: m tokens x the largest of `parts` K slabs (cuda/common.cuh xs_need)."""
    ki = gemv_smem.KI[scheme]
    iters = -(-k // ki)
    return m * -(-iters // parts) * ki * 2


def xs_bytes(fx, scheme: str, m: int, k: int, parts: int, warps: int, base: int = 0, fn=None) -> int:
    """Bytes of x a staged-x CTA of fx adds to its `base` dynamic shared memory (m tokens, the largest of `parts`
    K slabs; cuda/common.cuh xs_need), or 0 where x is not staged: XS off, over the opt-in limit, or fewer CTAs an
    SM than the L1 form fn (default fx) gets with `base` alone (registers of `warps`-warp CTAs, shared memory)."""
    if not XS:
        return 0
    need = _xs_need(scheme, m, k, parts)

    def ctas(f, b):
        return min(_ctas_per_sm(int(f.num_regs), warps), SM_SMEM // (b + int(f.shared_size_bytes) + 1024))

    fits = base + need + int(fx.shared_size_bytes) <= SM_SMEM - 1024 and ctas(fx, base + need) >= ctas(fn or fx, base)
    return need if fits else 0


_XS_PLANS: dict = {}


def xs_launch(fn, fx, scheme: str, m: int, k: int, parts: int, warps: int, base: int = 0):
    """(kernel, dynamic shared memory) of a launch of fn (a register-loop kernel, or a TMA one with its ring of
    `base` bytes): its staged-x form fx (NAME_xs) with the slab after `base` where it fits (xs_bytes), else
    (fn, base). Kept per launch shape: the kernel attributes are driver calls."""
    key = (fn, fx, scheme, m, k, parts, warps, base, XS)
    if key not in _XS_PLANS:
        b = xs_bytes(fx, scheme, m, k, parts, warps, base, fn)
        if b and fx.max_dynamic_shared_size_bytes < base + b:
            fx.max_dynamic_shared_size_bytes = base + b
        _XS_PLANS[key] = (fx, base + b) if b else (fn, base)
    return _XS_PLANS[key]


def _planned_fn(file: str, name: str, scheme: str, variant: int = 0):
    """A GEMV kernel of `file` built with the scheme's compile-time knobs (variant: see VARIANTS)."""
    from lowbit.kernels.compile import get_function

    return get_function(file, name, compile_defines(scheme, variant))


@functools.lru_cache(maxsize=4096)
def _planned(file: str, name: str, n: int, k: int, scheme: str, dev: int, variant: int = 0):
    """(kernel, warps, splits) for one shape, cached: the kernel's register count sets the occupancy."""
    fn = _planned_fn(file, name, scheme, variant)
    return (fn, *plan_launch(n, k, scheme, _sm_count(dev), int(fn.num_regs)))


#: launch configs (row tiles, warps along K, splits) tried by the autotuner besides the planner's
TUNE_CANDIDATES = ((1, 8, 1), (2, 4, 1), (1, 8, 2), (2, 4, 2), (4, 2, 2), (4, 1, 4), (4, 1, 6),
                   (1, 4, 4), (1, 2, 8), (2, 2, 4))
TUNE_MIN_ELEMENTS = 1 << 20  # below this the planner's choice is kept (tuning would cost more than it saves)
_TUNED: dict = {}


def fits_warps(cfg: tuple) -> bool:
    """Whether a launch config's CTA fits WARPS: register-loop configs (row tiles x warps along K) above it
    (LOWBIT_GEMV_WARPS below 8) are refused by their launch, so no tuner times them; the TMA and shared-memory
    builds size their own CTAs."""
    return len(cfg) > 3 and cfg[3] in (TMA_VARIANT, SMEM_VARIANT) or cfg[0] * cfg[1] <= WARPS


def _autotune(key, launch, planned, extra=lambda: ()) -> tuple:
    """Time the planner's config, TUNE_CANDIDATES and extra() (configs of other builds, with their variant
    index) once per (kernel, N, K, device, M > 1), keep the fastest.

    The kernel's speed depends on DRAM locality and issue rate in ways the occupancy model misses; a
    measurement on the real weight (L2 flushed between runs) settles it. Runs once, at the first call.
    """
    if key not in _TUNED:
        ext = [c for c in extra() if fits_warps(c)]
        cands = [c for c in (planned, *TUNE_CANDIDATES) if fits_warps(c)]
        if ext:  # (row tiles, warps along K, splits, build variant)
            cands = [c + (0,) for c in cands] + ext
        _TUNED[key] = fastest_config(launch, cands)
    return _TUNED[key]


def _kernel_tag(w: GpuWeight, act: str) -> str:
    if w.scheme == "int4" and w.group_size == 128:
        return "int4g128"
    return _TAGS[(w.scheme, act)]


def gemv(w: GpuWeight, x, act: str = "bf16", out=None, splits: int | None = None, cta: tuple | None = None,
         variant: int = 0):
    """y bf16 [M, N] = x @ W^T, M in 1..16, fp32 accumulation. `splits`, `cta` = (row tiles, warps along K)
    and `variant` (a build of VARIANTS) override the launch plan."""
    _check_weight(w, act)
    m = check_activation(x, w.k)
    y = _check_out(out, m, w.n)
    dev = x.device.id
    mt = 1 if m <= 8 else 2
    tiles = -(-w.n // 16)
    name = f"gemv_{_kernel_tag(w, act)}_m{8 * mt}"
    fn, pr, pk, ps = _planned(_FILES[w.scheme], name, w.n, w.k, w.scheme, dev)
    xs = NULL
    if act == "fp8":
        x, xs = quantize_act_fp8(x, half=True)  # f16 values of the E4M3 codes (the kernel's f16 mmas)
    elif act == "nvfp4":
        x, xs = quantize_act_nvfp4(x)
    t = w.tensors
    args = (t.get("weight", t.get("weight_packed")), t.get("weight_scale_inv", t.get("weight_scale", NULL)),
            t.get("weight_zero_point", NULL), t.get("weight_global_scale", NULL), x, xs, y)
    group = w.group_size if w.scheme == "int4" else 0

    def launch(cfg):  # (row tiles, warps along K, splits[, build variant])
        wr, wk, s = cfg[:3]
        if len(cfg) > 3 and cfg[3] == TMA_VARIANT:
            _launch_tma(w, name, args, m, mt, wr, s, group, dev)
            return
        if len(cfg) > 3 and cfg[3] == SMEM_VARIANT:
            gemv_smem.launch_dense(w, act, args, m, wk, group, dev)
            return
        if not 1 <= s <= 65535 or not 1 <= wr * wk <= WARPS:
            raise KernelError(f"splits={s} must be in 1..65535 and row tiles x warps along K={wr}x{wk} in 1..{WARPS}")
        v = 0 if len(cfg) == 3 else cfg[3]
        f = fn if v == 0 else _planned(_FILES[w.scheme], name, w.n, w.k, w.scheme, dev, v)[0]
        if XS and w.scheme in XS_DENSE:
            f, smem = xs_launch(f, _planned_fn(_FILES[w.scheme], name + "_xs", w.scheme, v), w.scheme, m, w.k, s,
                                wr * wk)
        else:
            smem = 0
        ws, cnt = _WS.get(dev, tiles * s * mt * 4 * 32 if s > 1 else 0, tiles)
        launch_kernel(f, (-(-tiles // wr), s), (wr * wk * 32,),
                      args + (ws, cnt, np.int32(w.n), np.int32(w.k), np.int32(m), np.int32(s), np.int32(group),
                              np.int32(wk)), shared_mem=smem)

    planned = (pr, pk, ps)
    if cta is not None or splits is not None or variant:
        if variant == TMA_VARIANT and not use_tma(w, dev):
            raise KernelError(f"{w.name}: the TMA GEMV needs sm_90+, rows a multiple of 16 bytes and "
                              f"LOWBIT_GEMV_TMA not 0")
        if not (0 <= variant <= len(VARIANTS.get(w.scheme, ())) or variant in (TMA_VARIANT, SMEM_VARIANT)):
            raise KernelError(f"{w.name}: variant {variant} is not a build of {w.scheme} (see gemv.VARIANTS)")
        cfg = (*(cta or (pr, pk)), splits or ps, variant)
    elif warps := gemv_smem.dense_warps(w, m, act, dev):
        cfg = (1, warps, 1, SMEM_VARIANT)
    elif TUNE and w.n * w.k >= TUNE_MIN_ELEMENTS:
        def extra():  # the other builds' planned configs and TUNE_CANDIDATES, the TMA build's candidates
            vs = range(1, len(VARIANTS.get(w.scheme, ())) + 1)
            tw = compile_defines(w.scheme, TMA_VARIANT).get("GEMV_WARPS", WARPS)
            tma = [(wr, 1, s, TMA_VARIANT) for wr, s in TMA_CANDIDATES if wr <= tw] if use_tma(w, dev) else []
            return [(*_planned(_FILES[w.scheme], name, w.n, w.k, w.scheme, dev, v)[1:], v) for v in vs] + \
                [(*c, v) for v in vs for c in TUNE_CANDIDATES] + tma

        # tuned apart for M = 1 and M > 1: the TMA build won at M = 1 on 29568x8192 and lost at M = 8
        # (bf16 152.7 us against 122.3 at M = 1, when M = 8 reused the M = 1 choice; H200, 2026-11-27)
        cfg = _autotune((fn, w.n, w.k, dev, m > 1), launch, planned, extra)
    else:
        cfg = planned
    launch(cfg)
    return y


def use_tma(w: GpuWeight, dev: int) -> bool:
    """Whether the TMA build may run w: on, sm_90 or later, rows a multiple of 16 bytes (the tensor map's stride)."""
    import cupy

    main = w.tensors.get("weight", w.tensors.get("weight_packed"))
    return (bool(tma_build()) and int(cupy.cuda.Device(dev).compute_capability) >= 90
            and (main.nbytes // w.n) % 16 == 0)


@functools.lru_cache(maxsize=256)
def _tma_fn(file: str, name: str, defines: tuple, dev: int):
    """A TMA GEMV kernel with its dynamic shared-memory limit raised once to the largest CTA's need."""
    from lowbit.kernels.compile import get_function

    fn = get_function(file, name, dict(defines))
    fn.max_dynamic_shared_size_bytes = tma_smem_bytes("", dict(defines)["GEMV_WARPS"], dict(defines))
    return fn


def _launch_tma(w: GpuWeight, name: str, args: tuple, m: int, mt: int, wr: int, s: int, group: int, dev: int):
    """One launch of the TMA build: CTAs of wr consumer warps + a producer warp, grid (ceil(tiles / wr), s)."""
    from lowbit.kernels.tma import tensor_map_2d

    d = compile_defines(w.scheme, TMA_VARIANT)
    if not 1 <= wr <= d["GEMV_WARPS"] or not 1 <= s <= 65535:
        raise KernelError(f"TMA GEMV: row tiles {wr} must be in 1..{d['GEMV_WARPS']} and splits {s} in 1..65535")
    tname, defs = name.replace("gemv_", "gemv_tma_", 1), tuple(sorted(d.items()))
    fn = _tma_fn(_FILES[w.scheme], tname, defs, dev)
    smem = tma_smem_bytes(w.scheme, wr, d)
    if XS and w.scheme in XS_DENSE:
        fn, smem = xs_launch(fn, _tma_fn(_FILES[w.scheme], tname + "_xs", defs, dev), w.scheme, m, w.k, s, wr + 1,
                             smem)
    wt = args[0]
    wmap = tensor_map_2d(wt.view(np.uint8).reshape(w.n, -1), 16 * wr, 64, swizzle=0)
    tiles = -(-w.n // 16)
    ws, cnt = _WS.get(dev, tiles * s * mt * 4 * 32 if s > 1 else 0, tiles)
    launch_kernel(fn, (-(-tiles // wr), s), ((wr + 1) * 32,),
                  (wmap, *args, ws, cnt, np.int32(w.n), np.int32(w.k), np.int32(m), np.int32(s), np.int32(group)),
                  shared_mem=smem)
