"""Device buffers that module-level caches keep: owned by the array itself, never by a memory pool.

Why: a cupy array taken from a `cupy.cuda.MemoryPool` holds only a weak reference to that pool; the memory
belongs to the pool, and when the pool is collected its memory is cudaFree'd under every array still
pointing into it. The runtime's graph decoder allocates from a pool of its own (cupy.cuda.using_allocator)
while it warms up and captures a decode step, and that is exactly when the kernels' module-level caches
(split-K workspaces and counters, router and barrier counters, TMA tensor maps) are first filled. A cache
entry made there could outlive its pool, and the next model in the process would then get a workspace, a
counter or a tensor map in freed memory. (This was first suspected of the illegal address in the multi-model
decode sequence; that crash had another cause, scale reads past a tensor's end: lowbit.kernels.weights.TAIL_BYTES.)
Every cache allocates here instead: straight from the driver (`cupy.cuda.Memory`), whatever allocator is
current, alive as long as the array is.

Rules for a cache of device memory (every module of lowbit.kernels and lowbit.runtime follows them):
  - allocate with `empty` / `zeros` below, never with cupy.empty inside a cache;
  - never free an entry a captured CUDA graph may use: grow by allocating anew and keep the old one
    (`Retained`), and never evict (tensor maps: `MapArena`).
"""

from __future__ import annotations

import numpy as np


def empty(shape, dtype):
    """An uninitialised cupy array of its own cudaMalloc (not from the current allocator or any pool)."""
    import cupy

    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    dtype = np.dtype(dtype)
    nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    mem = cupy.cuda.Memory(nbytes)
    return cupy.ndarray(shape, dtype, memptr=cupy.cuda.MemoryPointer(mem, 0))


def zeros(shape, dtype):
    """`empty`, zeroed and the device synchronized (call it outside stream capture: the memset runs on the
    legacy stream, which a non-blocking stream does not wait for)."""
    import cupy

    a = empty(shape, dtype)
    a.data.memset(0, a.nbytes)
    cupy.cuda.Device().synchronize()
    return a


class Retained:
    """Per device, one buffer that only grows; every buffer it ever handed out stays allocated (a CUDA graph
    captured with an older one still writes to it when replayed)."""

    def __init__(self, dtype, zeroed: bool = False, minimum: int = 0):
        self.dtype, self.zeroed, self.minimum = np.dtype(dtype), zeroed, minimum
        self.current: dict = {}
        self.retired: list = []

    def get(self, dev: int, size: int):
        buf = self.current.get(dev)
        if buf is None or buf.size < size:
            if buf is not None:
                self.retired.append(buf)
            alloc = zeros if self.zeroed else empty
            buf = self.current[dev] = alloc(max(size, self.minimum), self.dtype)
        return buf


class MapArena:
    """128-byte, 64-byte aligned slots of device memory for TMA tensor maps, in slabs that are never freed
    (a captured graph holds the map's address). Slots are handed out once; nothing is evicted."""

    SLOT = 128
    SLOTS_PER_SLAB = 512

    def __init__(self):
        self.slabs: dict = {}   # device -> list of slabs
        self.used: dict = {}    # device -> slots used in the last slab

    def put(self, dev: int, raw: bytes):
        """The device copy of one map's 128 bytes (a synchronous host-to-device copy: outside capture)."""
        if len(raw) != self.SLOT:
            raise ValueError(f"a tensor map is {self.SLOT} bytes, got {len(raw)}")
        slabs = self.slabs.setdefault(dev, [])
        if not slabs or self.used[dev] == self.SLOTS_PER_SLAB:
            slabs.append(empty(self.SLOT * self.SLOTS_PER_SLAB, np.uint8))
            self.used[dev] = 0
        i = self.used[dev]
        self.used[dev] = i + 1
        slot = slabs[-1][i * self.SLOT:(i + 1) * self.SLOT]
        slot.set(np.frombuffer(raw, np.uint8))
        return slot
