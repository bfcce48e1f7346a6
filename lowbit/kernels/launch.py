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

_CLUSTER_DIMENSION, _PROGRAMMATIC_STREAM_SERIALIZATION = 4, 6  # CUlaunchAttributeID
_NON_PORTABLE_CLUSTER_SIZE_ALLOWED = 14  # CUfunction_attribute


class _LaunchAttribute(ctypes.Structure):
    # CUlaunchAttribute: the id, padding to 8 bytes, a 64-byte value union (PDL: its leading int; cluster
    # dimension: its leading three unsigned ints)
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_uint * 16)]


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
        self.attrs = (_LaunchAttribute * 2)()
        self.attrs[0].id = _PROGRAMMATIC_STREAM_SERIALIZATION
        self.attrs[0].value[0] = 1  # programmaticStreamSerializationAllowed
        self.attrs[1].id = _CLUSTER_DIMENSION  # used by launches with a cluster shape (numAttrs 2)
        self.cfg = _LaunchConfig()
        self.cfg.attrs = ctypes.cast(self.attrs, ctypes.POINTER(_LaunchAttribute))
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


@functools.lru_cache(maxsize=None)
def _func_set_attribute():
    f = ctypes.CDLL("libcuda.so.1").cuFuncSetAttribute
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    return f


def allow_cluster(fn, size: int) -> bool:
    """Whether fn may be launched in clusters of `size` CTAs here (sm_90+, PDL launches on): up to 8 always, up
    to 16 where the driver accepts the non-portable size for this function."""
    func = getattr(fn, "kernel", fn)
    if not pdl_enabled() or not hasattr(func, "ptr") or size > 16:
        return False
    if size <= 8:
        return True
    return _func_set_attribute()(func.ptr, _NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1) == 0


def launch(fn, grid, block, args, shared_mem: int = 0, cluster: tuple | None = None) -> None:
    """fn(grid, block, args, shared_mem=...) with PDL where it is on (see the module docstring). cluster: a
    cluster shape (x, y, z) for a kernel that reads its cluster size (%cluster_nctarank) and works without one
    too: it is launched in clusters only on the PDL path (check allow_cluster first)."""
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
    if cluster is not None:
        value = _PACKER.attrs[1].value
        value[0], value[1], value[2] = _dims(cluster)
        cfg.numAttrs = 2
    try:
        err = _driver()(ctypes.byref(cfg), func.ptr, params, None)
    finally:
        cfg.numAttrs = 1
    if err != 0:
        raise KernelError(f"cuLaunchKernelEx failed with CUresult {err} (grid {grid}, block {block}, "
                          f"{shared_mem} bytes of shared memory, cluster {cluster}); LOWBIT_PDL=0 launches "
                          "without PDL")
