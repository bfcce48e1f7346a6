"""lowbit.kernels.launch: argument marshalling (CPU) and programmatic dependent launch on the GPU: a chain
of kernels that each read the previous one's output must give, with PDL on, inside a CUDA graph, exactly
what plain launches give (a kernel reading its input before the previous kernel finished would not)."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.errors import KernelError


def test_dims_and_bad_arguments():
    from lowbit.kernels import launch

    assert launch._dims((3,)) == (3, 1, 1)
    assert launch._dims((2, 5)) == (2, 5, 1)
    assert launch._dims(7) == (7, 1, 1)
    with pytest.raises(KernelError, match="numpy int32"):
        launch._slot(3)  # a Python int has no width: the kernel would read garbage
    with pytest.raises(KernelError, match="cupy array"):
        launch._slot(np.zeros(3, np.float32))


def test_pack_puts_each_argument_in_its_own_slot():
    """What cuLaunchKernelEx reads: params[i] points at argument i, stored at its own width."""
    import ctypes
    import struct

    from lowbit.kernels import launch

    args = (np.int32(-3), np.uint32(7), np.int64(-(1 << 40)), np.uint64(1 << 63), np.float32(1.5), np.int32(9))
    params = launch.pack(args)
    got = [struct.unpack(f, ctypes.string_at(params[i], struct.calcsize(f)))[0]
           for i, f in enumerate(("<i", "<I", "<q", "<Q", "<f", "<i"))]
    assert got == [a.item() for a in args]
    params = launch.pack((np.float32(2.0),))  # a second pack overwrites the slots
    assert struct.unpack("<f", ctypes.string_at(params[0], 4))[0] == 2.0
    with pytest.raises(KernelError, match="at most"):
        launch.pack((np.int32(0),) * (launch._MAX_ARGS + 1))


def _chain(scheme, graph: bool, n_steps: int = 24):
    """h += gemv(W_i, x); x <- rms_norm(h) for i in 0..n_steps-1 (the GEMV, then the runtime's fused
    add + norm kernel), each launch reading the previous one's output; returns the final x."""
    import cupy

    from lowbit.kernels.gemv import gemv
    from lowbit.kernels.weights import to_gpu
    from lowbit.runtime.cuda_fused import Fused
    from tests.kernels.gpu_helpers import BF16, disk_tensors, random_weight

    rng = np.random.default_rng(3)
    n = 2048
    ws = [to_gpu(scheme, disk_tensors(scheme, random_weight(rng, n, n))) for _ in range(4)]
    norm_w = cupy.ones(n, cupy.float32)
    fused = Fused()
    x0 = cupy.asarray(rng.standard_normal((1, n)).astype(np.float32)).astype(BF16)

    def run():
        x, h = x0, cupy.zeros((1, n), cupy.float32)
        for i in range(n_steps):
            y = gemv(ws[i % 4], x)  # PDL launch straight after the norm's
            h, x = fused.add_rms_norm(h, y, norm_w, 1e-6)  # and this one straight after the GEMV's
        return x

    run()  # compile, autotune
    cupy.cuda.Device().synchronize()
    if not graph:
        return run().get()
    s = cupy.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        out = run()
        g = s.end_capture()
        g.launch(s)
    s.synchronize()
    return out.get()


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", ["bf16", "fp8-block", "nvfp4", "int4"])
def test_pdl_chain_matches_plain_launches(monkeypatch, scheme):
    from lowbit.kernels import launch

    monkeypatch.setenv("LOWBIT_PDL", "0")
    assert not launch.pdl_enabled()
    want = _chain(scheme, graph=False)
    monkeypatch.setenv("LOWBIT_PDL", "1")
    if not launch.pdl_enabled():
        pytest.skip("PDL needs compute capability >= 9.0 and a driver with cuLaunchKernelEx")
    for graph in (False, True):
        got = _chain(scheme, graph=graph)
        assert np.array_equal(got.view(np.uint16), want.view(np.uint16)), f"graph={graph}"


_OVERLAP_SRC = r'''
extern "C" __global__ void primary(volatile int* done, long long spin) {
    lb_pdl_trigger();
    const long long t0 = clock64();
    while (clock64() - t0 < spin) {}
    __threadfence();
    *done = 1;
}
extern "C" __global__ void secondary(volatile int* done, int* early) {
    lb_pdl_trigger();
    const int seen = *done;  // before the wait: 0 if the primary is still spinning
    lb_pdl_wait();
    *early = seen == 0;
    *done = 0;
}
'''


@pytest.mark.gpu
def test_pdl_secondary_starts_before_primary_ends():
    # the secondary kernel must start while the primary still spins (eager and inside a CUDA graph);
    # with PDL off it must not
    import cupy

    from lowbit.kernels import launch
    from lowbit.kernels.compile import CUDA_DIR

    mod = cupy.RawModule(code=(CUDA_DIR / "pdl.cuh").read_text() + _OVERLAP_SRC, options=("-std=c++17",))
    prim, sec = mod.get_function("primary"), mod.get_function("secondary")
    done, early = cupy.zeros(1, cupy.int32), cupy.zeros(1, cupy.int32)
    spin = np.int64(20_000_000)  # ~10 ms at 2 GHz

    def pair():
        launch.launch(prim, (1,), (32,), (done, spin))
        launch.launch(sec, (1,), (32,), (done, early))

    results = {}
    for pdl in ("0", "1"):
        import os

        os.environ["LOWBIT_PDL"] = pdl
        try:
            pair()
            cupy.cuda.Device().synchronize()
            results[("eager", pdl)] = int(early.get()[0])
            s = cupy.cuda.Stream(non_blocking=True)
            with s:
                s.begin_capture()
                pair()
                g = s.end_capture()
                g.launch(s)
            s.synchronize()
            results[("graph", pdl)] = int(early.get()[0])
        finally:
            os.environ.pop("LOWBIT_PDL", None)
    assert results[("eager", "0")] == 0 and results[("graph", "0")] == 0, results
    if not launch.pdl_enabled():
        pytest.skip("PDL needs compute capability >= 9.0")
    assert results[("eager", "1")] == 1 and results[("graph", "1")] == 1, results
