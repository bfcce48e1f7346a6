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


def test_scale_tensors_keep_a_tail_inside_their_allocation():
    """Kernels read scales in aligned words that can run a few bytes past the tensor's end (the TMA GEMM's
    scale copies; compute-sanitizer caught it on an int4 weight of 9 groups a row, and Mixtral nvfp4 prefill hit an
    illegal address when such a tensor ended a cudaMalloc region): every scale tensor a GpuWeight holds keeps
    TAIL_BYTES of its own allocation after it, whether it came from the host, from a cupy array that fills its
    pool block exactly, or from stacking linears along N."""
    import cupy
    import ml_dtypes

    from lowbit.formats import nvfp4
    from lowbit.kernels import weights as W
    from lowbit.runtime.cuda_ops import _stack_n

    def room(a):
        return a.data.mem.ptr + a.data.mem.size - (a.data.ptr + a.nbytes)

    rng = np.random.default_rng(0)
    n, k = 3072, 576  # int4, group 64: 9 groups a row; bf16 scales [3072, 9] = 55296 bytes = 108 pool units
    host = {"weight_packed": rng.integers(-2**31, 2**31 - 1, (n, k // 8), dtype=np.int64).astype(np.int32),
            "weight_scale": rng.standard_normal((n, k // 64)).astype(np.float32).astype(ml_dtypes.bfloat16)}
    from_host = W.to_gpu("int4", host, group_size=64)
    dev = {s: cupy.asarray(a) for s, a in host.items()}
    assert room(dev["weight_scale"]) == 0  # the case the tail is for: the pool block ends with the tensor
    from_dev = W.to_gpu("int4", dev, group_size=64)
    for w in (from_host, from_dev):
        assert room(w.tensors["weight_scale"]) >= W.TAIL_BYTES
        np.testing.assert_array_equal(w.tensors["weight_scale"].get(), host["weight_scale"])
    stacked = _stack_n([from_dev, from_host], "stacked")
    assert room(stacked.tensors["weight_scale"]) >= W.TAIL_BYTES
    q = nvfp4.quantize(rng.standard_normal((256, 512)).astype(np.float32))
    experts = W.to_gpu("nvfp4", {s: cupy.asarray(np.stack([a.view(np.uint8) if a.dtype.itemsize == 1 else a] * 4))
                                  for s, a in q.items() if s != "weight_shape"})
    assert room(experts.tensors["weight_scale"]) >= W.TAIL_BYTES
    assert experts.expert(3).tensors["weight_scale"].data.ptr == experts.tensors["weight_scale"][3].data.ptr  # a view
