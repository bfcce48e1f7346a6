"""The shared-memory GEMV build for decode (cuda/gemv_smem.cuh): a CTA per 16 output rows holds all of their K
in shared memory, copied before its PDL wait, so that after the wait it only reads x and computes.

Dense (`launch_dense`, gemv_smem_*_m8, M <= 8) and the MoE down projection (`moe_gemv`, gemv_moe_down_smem_*).
This module sizes their shared memory (the kernel's layout), says whether a launch fits (sm_90+, the device's
opt-in shared-memory limit, one wave of CTAs for the dense form: its gain is weights already on chip when the
previous kernel finishes, which a second wave would not have) and launches the dense form.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from lowbit.errors import KernelError

#: the dense build by rule at M <= 8 where it fits one wave (LOWBIT_GEMV_SMEM=0: never)
DENSE = os.environ.get("LOWBIT_GEMV_SMEM", "1") != "0"
#: the most warps of a CTA (the kernels' __launch_bounds__(512))
MAX_WARPS = 16
#: the most warps the dense rule gives a CTA (LOWBIT_GEMV_SMEM_WARPS)
RULE_MAX_WARPS = int(os.environ.get("LOWBIT_GEMV_SMEM_WARPS", MAX_WARPS))
#: K per warp iteration of every GEMV build (4 lanes x one 16-byte chunk, common.cuh), per scheme
KI = {"bf16": 32, "fp8-block": 64, "nvfp4": 128, "int4": 128}
#: bytes of one lane's side-data slot (bf16 has no side data)
SIDE_BYTES = {"bf16": 0, "fp8-block": 8, "nvfp4": 8, "int4": 8}
_BITS = {"bf16": 16, "fp8-block": 8, "nvfp4": 4, "int4": 4}
#: static shared memory of the kernels (the mbarrier and the 16 warps x 4 x 32 fp32 sums) plus the 1 KiB the
#: driver reserves per CTA
_STATIC = 8 + 16 * 4 * 32 * 4 + 1024


def smem_bytes(scheme: str, k: int, slots: int, warps: int, wk: int) -> int:
    """Dynamic shared memory of a CTA: slots x 16 rows of K at the padded pitch (gemv_smem.cuh's
    smem_row_pitch), then an 8-byte side slot per lane, row (2) and iteration of each of the `warps` warps,
    each sweeping 1/wk of K."""
    row_bytes = k * _BITS[scheme] // 8
    pitch = -(-row_bytes // 128) * 128 + 64
    ipw = -(-(k // KI[scheme]) // wk)
    return slots * 16 * pitch + warps * ipw * 2 * 32 * SIDE_BYTES[scheme]


@functools.lru_cache(maxsize=None)
def _device(device_id: int) -> tuple:
    import cupy

    rt = cupy.cuda.runtime
    props = rt.getDeviceProperties(device_id)
    return (int(cupy.cuda.Device(device_id).compute_capability),
            int(rt.deviceGetAttribute(rt.cudaDevAttrMaxSharedMemoryPerBlockOptin, device_id)),
            int(props["sharedMemPerMultiprocessor"]), int(props["regsPerMultiprocessor"]),
            int(props["multiProcessorCount"]))


def fits(scheme: str, k: int, slots: int, warps: int, wk: int, device_id: int) -> bool:
    """sm_90+ (bulk copies), 1..MAX_WARPS warps, K a multiple of the scheme's iteration, the CTA's shared
    memory within the opt-in limit."""
    cc, optin, _, _, _ = _device(device_id)
    return (cc >= 90 and 1 <= warps <= MAX_WARPS and k % KI[scheme] == 0
            and smem_bytes(scheme, k, slots, warps, wk) <= optin)


def ctas_per_sm(fn, warps: int, smem: int, device_id: int) -> int:
    """CTAs of `warps` warps and `smem` dynamic bytes that one SM holds at once (registers allocated per warp
    in units of 256, shared memory, 2048 threads)."""
    _, _, smem_sm, regs_sm, _ = _device(device_id)
    regs_warp = -(-int(fn.num_regs) * 32 // 256) * 256
    return min(regs_sm // (regs_warp * warps), smem_sm // (smem + _STATIC), 2048 // (32 * warps))


def _name(w, act: str) -> str:
    from lowbit.kernels.gemv import _kernel_tag

    return f"gemv_smem_{_kernel_tag(w, act)}_m8"


def _fn(w, act: str, device_id: int):
    from lowbit.kernels import gemv as G

    return G._planned_fn(G._FILES[w.scheme], _name(w, act), w.scheme)


_WARPS: dict = {}


def dense_warps(w, m: int, act: str, device_id: int) -> int:
    """The most warps (16, 8, 4 or 2, at most RULE_MAX_WARPS and one per iteration of K) with which the dense
    build fits and its ceil(N / 16) CTAs run in one wave; 0 if none (or M > 8). Kept per shape: every GEMV call
    asks."""
    if m > 8 or not DENSE:
        return 0
    key = (_name(w, act), w.n, w.k, device_id, RULE_MAX_WARPS)
    if key not in _WARPS:
        fn, sms, _WARPS[key] = _fn(w, act, device_id), _device(device_id)[4], 0
        for warps in (16, 8, 4, 2):
            if warps > min(RULE_MAX_WARPS, w.k // KI[w.scheme]) or not fits(w.scheme, w.k, 1, warps, warps,
                                                                                device_id):
                continue
            if ctas_per_sm(fn, warps, smem_bytes(w.scheme, w.k, 1, warps, warps), device_id) * sms >= -(-w.n // 16):
                _WARPS[key] = warps
                break
    return _WARPS[key]


def launch_dense(w, act: str, args: tuple, m: int, warps: int, group: int, device_id: int) -> None:
    """One launch of gemv_smem_*_m8: args = the dense GEMV's (weight, scales, zero points, global scale, x, xs,
    y); grid ceil(N / 16), `warps` warps each sweeping 1/warps of K."""
    from lowbit.kernels.gemv import NULL
    from lowbit.kernels.launch import launch

    if not (1 <= m <= 8 and fits(w.scheme, w.k, 1, warps, warps, device_id)):
        raise KernelError(f"{w.name}: the shared-memory GEMV needs sm_90+, M <= 8, K a multiple of "
                          f"{KI[w.scheme]} and {warps} warps within 1..{MAX_WARPS} that fit its shared memory")
    fn = _fn(w, act, device_id)
    smem = smem_bytes(w.scheme, w.k, 1, warps, warps)
    if fn.max_dynamic_shared_size_bytes < smem:
        fn.max_dynamic_shared_size_bytes = smem
    launch(fn, (-(-w.n // 16),), (32 * warps,),
           args + (NULL, NULL, np.int32(w.n), np.int32(w.k), np.int32(m), np.int32(1), np.int32(group),
                   np.int32(warps)), shared_mem=smem)
