"""The benchmark harness's timing loop (lowbit.verify.bench.time_rotating) on the GPU."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("copies,warm,expect_warm", [(10, None, 10), (1, None, 1), (10, 3, 3)])
def test_time_rotating_warms_every_copy_before_timing(copies, warm, expect_warm):
    """Every rotated copy is called once before the timed loop (a first call's host work, such as a TMA map
    copied synchronously, must not fall inside it), unless `warm` caps the warm-up; then `iters` timed calls
    rotate over the copies."""
    cupy = pytest.importorskip("cupy")
    from lowbit.verify.bench import time_rotating

    calls = []
    buf = cupy.zeros(1024, dtype=cupy.float32)

    def call(i):
        calls.append(i)
        buf.fill(i)

    us = time_rotating(call, copies, iters=12, warm=warm)
    assert calls[:expect_warm] == list(range(expect_warm))
    assert calls[expect_warm:] == [i % copies for i in range(12)]
    assert us > 0
