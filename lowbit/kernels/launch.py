"""Kernel launches with programmatic dependent launch (PDL, sm_90 and later).

`launch(fn, grid, block, args, shared_mem=0)` runs a cupy RawKernel like `fn(grid, block, args,
shared_mem=...)`; where PDL is on (compute capability >= 9.0, LOWBIT_PDL not "0") it launches through the
driver's cuLaunchKernelEx with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, so the kernel may
start while the previous kernel of the stream still runs: its CTAs load what depends on nothing earlier
(weights) and then wait (cuda/pdl.cuh). Only kernels that follow the pdl.cuh contract may be launched
here: every one of them calls lb_pdl_wait() before touching an earlier kernel's data and reads that data
with coherent loads (not the read-only path); today the GEMVs (lowbit.kernels.gemv, the MoE decode).
Stream capture records the programmatic edges into the CUDA graph (CUDA 12.3+), which is where decode
gains: the launch gap and the DRAM ramp of each kernel overlap the previous kernel's tail.
Arguments: cupy arrays (their device pointer) and numpy scalars (int32, uint32, int64, uint64, float32).
"""

from __future__ import annotations

import ctypes
import functools
import os

import numpy as np

from lowbit.errors import KernelError

_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CUlaunchAttributeID


class _LaunchAttribute(ctypes.Structure):
    # CUlaunchAttribute: the id, padding to 8 bytes, a 64-byte value union (here its leading int)
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int),
                ("value_pad", ctypes.c_char * 60)]


class _LaunchConfig(ctypes.Structure):
    _fields_ = [("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
                ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
                ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(_LaunchAttribute)), ("numAttrs", ctypes.c_uint)]


_CTYPES = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.uint32): ctypes.c_uint32,
           np.dtype(np.int64): ctypes.c_int64, np.dtype(np.uint64): ctypes.c_uint64,
           np.dtype(np.float32): ctypes.c_float}


@functools.lru_cache(maxsize=None)
def _driver():
    """cuLaunchKernelEx of libcuda, or None where the driver lacks it."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        f = lib.cuLaunchKernelEx
    except (OSError, AttributeError):
        return None
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.POINTER(_LaunchConfig), ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
    return f


@functools.lru_cache(maxsize=None)
def _pdl_device(device_id: int) -> bool:
    import cupy

    return int(cupy.cuda.Device(device_id).compute_capability) >= 90


def pdl_enabled() -> bool:
    import cupy

    return (os.environ.get("LOWBIT_PDL", "1") != "0" and _driver() is not None
            and _pdl_device(cupy.cuda.Device().id))


def _arg(a):
    if isinstance(a, np.generic) and a.dtype in _CTYPES:
        return _CTYPES[a.dtype](a.item())
    if type(a).__module__.startswith("cupy") and hasattr(getattr(a, "data", None), "ptr"):  # cupy.ndarray
        return ctypes.c_void_p(a.data.ptr)
    raise KernelError(f"kernel argument of type {type(a).__name__} {getattr(a, 'dtype', '')}: pass a cupy array "
                      "or a numpy int32/uint32/int64/uint64/float32 scalar")


def _dims(d) -> tuple[int, int, int]:
    d = tuple(int(v) for v in (d if isinstance(d, tuple) else (d,)))
    return d + (1,) * (3 - len(d))


def launch(fn, grid, block, args, shared_mem: int = 0) -> None:
    """fn(grid, block, args, shared_mem=...) with PDL where it is on (see the module docstring)."""
    func = getattr(fn, "kernel", fn)  # a cupy RawKernel holds its cupy.cuda.function.Function here
    if not pdl_enabled() or not hasattr(func, "ptr"):
        fn(grid, block, args, shared_mem=shared_mem)
        return
    import cupy

    vals = [_arg(a) for a in args]
    params = (ctypes.c_void_p * max(1, len(vals)))(*[ctypes.cast(ctypes.byref(v), ctypes.c_void_p) for v in vals])
    attr = _LaunchAttribute()
    attr.id = _PROGRAMMATIC_STREAM_SERIALIZATION
    attr.value = 1  # programmaticStreamSerializationAllowed
    (gx, gy, gz), (bx, by, bz) = _dims(grid), _dims(block)
    cfg = _LaunchConfig(gx, gy, gz, bx, by, bz, int(shared_mem), cupy.cuda.get_current_stream().ptr,
                        ctypes.pointer(attr), 1)
    err = _driver()(ctypes.byref(cfg), func.ptr, params, None)
    if err != 0:
        raise KernelError(f"cuLaunchKernelEx failed with CUresult {err} (grid {grid}, block {block}, "
                          f"{shared_mem} bytes of shared memory); LOWBIT_PDL=0 launches without PDL")
