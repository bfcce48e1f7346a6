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
import struct
import threading

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


#: each kernel argument fills one 8-byte slot of a packed buffer (struct format, little-endian)
_SLOTS = {np.dtype(np.int32): "i4x", np.dtype(np.uint32): "I4x", np.dtype(np.int64): "q", np.dtype(np.uint64): "Q",
          np.dtype(np.float32): "f4x"}
_MAX_ARGS = 64


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


_SLOT_OF_TYPE = {np.dtype(t).type: f for t, f in _SLOTS.items()}


def _slot(a) -> tuple[str, int | float]:
    """(struct format of the argument's 8-byte slot, its value): a cupy array passes its device pointer, a numpy
    scalar its value at its own width."""
    f = _SLOT_OF_TYPE.get(type(a))
    if f is not None:
        return f, a.item()
    if type(a).__module__.startswith("cupy") and hasattr(getattr(a, "data", None), "ptr"):  # cupy.ndarray
        return "Q", a.data.ptr
    raise KernelError(f"kernel argument of type {type(a).__name__} {getattr(a, 'dtype', '')}: pass a cupy array "
                      "or a numpy int32/uint32/int64/uint64/float32 scalar")


class _Packer(threading.local):
    """Per thread: the argument buffer (8-byte slots), the pointer to each slot that cuLaunchKernelEx reads,
    the PDL attribute and a launch config, built once (building them per launch cost ~45 us of the ~55 us a
    launch took on the host; H200 device machine, 2026-11-27)."""

    def __init__(self):
        self.buf = ctypes.create_string_buffer(8 * _MAX_ARGS)
        base = ctypes.addressof(self.buf)
        self.params = (ctypes.c_void_p * _MAX_ARGS)(*[base + 8 * i for i in range(_MAX_ARGS)])
        self.attr = _LaunchAttribute()
        self.attr.id = _PROGRAMMATIC_STREAM_SERIALIZATION
        self.attr.value = 1  # programmaticStreamSerializationAllowed
        self.cfg = _LaunchConfig()
        self.cfg.attrs = ctypes.pointer(self.attr)
        self.cfg.numAttrs = 1
        self.formats: dict[tuple, str] = {}


_PACKER = _Packer()


def pack(args) -> ctypes.Array:
    """Write args into this thread's slot buffer; returns the slot pointers (valid until the next pack)."""
    p = _PACKER
    if len(args) > _MAX_ARGS:
        raise KernelError(f"{len(args)} kernel arguments: at most {_MAX_ARGS}")
    slots = [_slot(a) for a in args]
    key = tuple(f for f, _ in slots)
    fmt = p.formats.get(key)
    if fmt is None:
        fmt = p.formats[key] = "<" + "".join(key)
    struct.pack_into(fmt, p.buf, 0, *[v for _, v in slots])
    return p.params


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

    params = pack(args)
    cfg = _PACKER.cfg
    cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = _dims(grid)
    cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = _dims(block)
    cfg.sharedMemBytes = int(shared_mem)
    cfg.hStream = cupy.cuda.get_current_stream().ptr
    err = _driver()(ctypes.byref(cfg), func.ptr, params, None)
    if err != 0:
        raise KernelError(f"cuLaunchKernelEx failed with CUresult {err} (grid {grid}, block {block}, "
                          f"{shared_mem} bytes of shared memory); LOWBIT_PDL=0 launches without PDL")
