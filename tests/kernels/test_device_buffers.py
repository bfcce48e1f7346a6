"""lowbit.kernels.device_buffers and the caches built on it (device machine only): nothing a module-level cache
keeps may come from the allocator that is current when it is filled (the graph decoder's private pool, which
frees its memory under such arrays when it is collected), and nothing a captured graph may use is ever freed."""

from __future__ import annotations

import gc

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def _private_pool():
    import cupy

    return cupy.cuda.MemoryPool()


def test_buffers_bypass_the_current_pool_and_survive_it():
    import cupy

    from lowbit.kernels import device_buffers as db

    pool = _private_pool()
    with cupy.cuda.using_allocator(pool.malloc):
        pooled = cupy.arange(1024, dtype=cupy.int32)  # 4096 bytes: a whole number of pool units
        a = db.empty((10, 100), np.int32)
        z = db.zeros(777, np.float32)
    assert pool.used_bytes() == pooled.nbytes  # only the ordinary array came from the pool
    assert a.shape == (10, 100) and a.dtype == np.int32 and z.dtype == np.float32
    assert not bool(cupy.any(z))
    a[...] = cupy.arange(1000, dtype=cupy.int32).reshape(10, 100)
    del pooled, pool
    gc.collect()
    filler = cupy.full(1 << 20, 7, dtype=cupy.int32)  # likely reuses whatever the dead pool held
    assert int(a.sum()) == 999 * 1000 // 2 and not bool(cupy.any(z))
    del filler


def test_retained_grows_and_keeps_every_buffer():
    from lowbit.kernels import device_buffers as db

    r = db.Retained(np.int32, zeroed=True, minimum=64)
    small = r.get(0, 10)
    assert small.size == 64 and r.get(0, 64) is small
    small[:] = 5
    big = r.get(0, 1000)
    assert big.size == 1000 and not bool(big.any())
    assert r.retired == [small] and int(small.sum()) == 5 * 64  # the old buffer is alive and unchanged


def test_map_arena_slots_are_aligned_distinct_and_hold_the_bytes():
    from lowbit.kernels import device_buffers as db

    arena = db.MapArena()
    raws = [bytes([i % 256]) * 128 for i in range(db.MapArena.SLOTS_PER_SLAB + 5)]  # crosses into a second slab
    slots = [arena.put(0, r) for r in raws]
    ptrs = [s.data.ptr for s in slots]
    assert len(set(ptrs)) == len(ptrs) and all(p % 64 == 0 for p in ptrs)
    assert len(arena.slabs[0]) == 2
    for i in (0, 1, 511, 512, len(raws) - 1):
        assert bytes(slots[i].get()) == raws[i]
    with pytest.raises(ValueError, match="128 bytes"):
        arena.put(0, b"short")


def test_kernel_caches_take_nothing_from_the_current_pool(monkeypatch):
    """What the graph decoder's warm-up fills: split-K workspace and counters, TMA maps, router counter."""
    import cupy

    from lowbit.kernels import gemv, moe_router, tma

    monkeypatch.setattr(gemv, "_WS", gemv._Workspace())
    monkeypatch.setattr(tma, "_MAPS", {})
    monkeypatch.setattr(moe_router, "_COUNTERS", {})
    w = cupy.zeros((256, 512), cupy.uint8)  # from the default pool, like a loaded weight
    pool = _private_pool()
    dev = cupy.cuda.Device().id
    with cupy.cuda.using_allocator(pool.malloc):
        ws, cnt = gemv._WS.get(dev, 1 << 20, 10000)
        m = tma.tensor_map_2d(w, 128, 64, swizzle=0)
        c = moe_router._counter()
        ws2, cnt2 = gemv._WS.get(dev, 1 << 22, 20000)  # growth keeps the first pair alive
    assert pool.used_bytes() == 0
    assert tma.tensor_map_2d(w, 128, 64, swizzle=0) is m  # cached, never evicted
    assert not bool(cnt.any()) and not bool(cnt2.any()) and int(c[0]) == 0
    assert ws2.size >= 1 << 22 and gemv._WS.ws.retired == [ws] and gemv._WS.cnt.retired == [cnt]
