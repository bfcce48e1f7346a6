"""TMA tensor maps (CUtensorMap) for the Hopper warp-specialized GEMMs.

`tensor_map_2d(array, box_rows, box_cols, swizzle)` encodes a 2-D row-major device array of 1- or 2-byte
elements with the CUDA driver's cuTensorMapEncodeTiled (through ctypes: cupy does not wrap it), the 128-byte
swizzle (or 64, or none), zero fill outside the array, and returns the 128-byte map in device memory (a cupy
uint8 array) for the kernel to take by pointer (tma_sm90.cuh), cached by (pointer, shape, box, swizzle).
The device copies live in a `device_buffers.MapArena`: never freed and never evicted, because a captured
CUDA graph holds a map's address for as long as it lives (an LRU of 1024 maps, allocated from whatever pool
was current, once handed such an address back to other data).
"""

from __future__ import annotations

import ctypes
import functools

from lowbit.errors import KernelError
from lowbit.kernels.device_buffers import MapArena

_DTYPE = {1: 0, 2: 1}  # element bytes -> CU_TENSOR_MAP_DATA_TYPE_UINT8 / UINT16
_SWIZZLE = {0: 0, 64: 2, 128: 3}  # CU_TENSOR_MAP_SWIZZLE_NONE / 64B / 128B
_L2_256B = 3


@functools.lru_cache(maxsize=1)
def _encode_fn():
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as e:  # pragma: no cover - only on a GPU machine without the driver library
        raise KernelError(f"libcuda.so.1 not loadable ({e}): TMA tensor maps need the CUDA driver") from e
    f = lib.cuTensorMapEncodeTiled
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p,
                  ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64),
                  ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32),
                  ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    return f


def encode_2d(ptr: int, rows: int, cols: int, box_rows: int, box_cols: int, elem_bytes: int = 1,
              swizzle: int = 128) -> bytes:
    """The 128 bytes of a map over a [rows, cols] row-major array of elem_bytes elements at device address ptr
    (box_cols in elements)."""
    if ptr % 16 or (cols * elem_bytes) % 16:
        raise KernelError(f"TMA needs a 16-byte aligned base and row stride (address {ptr:#x}, "
                          f"{cols * elem_bytes} bytes a row)")
    buf = ctypes.create_string_buffer(128 + 64)
    addr = (ctypes.addressof(buf) + 63) & ~63  # CUtensorMap is 64-byte aligned
    dims = (ctypes.c_uint64 * 2)(cols, rows)
    strides = (ctypes.c_uint64 * 1)(cols * elem_bytes)
    box = (ctypes.c_uint32 * 2)(box_cols, box_rows)
    estr = (ctypes.c_uint32 * 2)(1, 1)
    rc = _encode_fn()(addr, _DTYPE[elem_bytes], 2, ptr, dims, strides, box, estr, 0, _SWIZZLE[swizzle], _L2_256B, 0)
    if rc != 0:
        raise KernelError(f"cuTensorMapEncodeTiled failed with CUresult {rc} for a [{rows}, {cols}] array, "
                          f"box [{box_rows}, {box_cols}]")
    return ctypes.string_at(addr, 128)


_ARENA = MapArena()
_MAPS: dict = {}


def _cached_map(ptr: int, rows: int, cols: int, box_rows: int, box_cols: int, elem_bytes: int, swizzle: int,
                device: int):
    key = (ptr, rows, cols, box_rows, box_cols, elem_bytes, swizzle, device)
    m = _MAPS.get(key)
    if m is None:
        m = _MAPS[key] = _ARENA.put(device, encode_2d(ptr, rows, cols, box_rows, box_cols, elem_bytes, swizzle))
    return m


def tensor_map_2d(array, box_rows: int, box_cols: int, swizzle: int = 128):
    """The device copy of the map over `array` (2-D, C-contiguous, 1- or 2-byte elements).

    Maps are cached by (address, shape, box, swizzle): a map encodes nothing else, so one built for an earlier
    array at the same address with the same shape is the same map. This matters for speed: copying a new
    map to the GPU is a synchronous host-to-device copy, which would stall small GEMMs (activations come
    from cupy's memory pool, which hands the same addresses back)."""
    import cupy

    rows, cols = array.shape
    return _cached_map(array.data.ptr, rows, cols, box_rows, box_cols, array.itemsize, swizzle,
                       cupy.cuda.Device().id)
