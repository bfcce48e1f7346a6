"""Timing kernel launch configurations on the GPU, for the first-call autotuners (lowbit.kernels.gemv,
lowbit.kernels.moe, lowbit.kernels.linear).

`fastest_config(launch, candidates)` runs each candidate once untimed, then times them round-robin
(`time_once`: the weight evicted from L2 by filling a flush buffer, the launch issued while a spin kernel keeps
the GPU busy so that host launch overhead is not measured) and returns the one with the lowest median.
`spin(us)` is that busy kernel; the benchmark harness (lowbit.verify.bench) uses it too.
"""

from __future__ import annotations

import functools

import numpy as np

_SPIN = r"""extern "C" __global__ void spin(long long cycles) {
  const long long t0 = clock64();
  while (clock64() - t0 < cycles) { }
}"""


@functools.lru_cache(maxsize=None)
def _spin_kernel():
    import cupy

    return cupy.RawKernel(_SPIN, "spin")


#: bytes written before each timed launch to evict the weight from L2 (more than any Hopper L2)
FLUSH_BYTES = 64 << 20


def spin(us: float = 100.0) -> None:
    """Keep the GPU busy for `us` so that the host's launch overhead is hidden from the event pair after it."""
    import cupy

    khz = cupy.cuda.Device().attributes["ClockRate"]
    _spin_kernel()((1,), (1,), (np.int64(int(us * khz / 1e3)),))


def time_once(launch, cfg, flush) -> float:
    """Milliseconds of one launch with the weight evicted from L2 first, as in a real decode step. The
    launch is issued while the GPU spins, so the host's launch overhead (Python, driver; larger for some
    configs than others) is not in the time: without the spin it was, and the tuner preferred cheap-to-
    launch configs over fast ones."""
    import cupy

    flush.fill(0)
    spin()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    launch(cfg)
    end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end)


def time_config(launch, cfg, flush, reps: int = 5) -> float:
    times = sorted(time_once(launch, cfg, flush) for _ in range(reps))
    return times[len(times) // 2]


def fastest_config(launch, cands, flush=None, reps: int = 7):
    """The candidate launch config with the lowest median time. Every candidate runs once untimed, then they
    are timed in turn, round-robin, so that drift over the tuning run (GPU clock, caches, first-use costs)
    falls on every candidate alike. (Timing each candidate's repetitions back to back, the runtime's
    Mixtral int4 expert down projection had been given a plan that ran 42 us where the sweep measured
    29 us for the best one; H200, 2026-11-27.) flush: a device buffer of >= FLUSH_BYTES, else one is made."""
    if flush is None:
        import cupy

        flush = cupy.empty(FLUSH_BYTES, dtype=cupy.uint8)
    cands = list(dict.fromkeys(cands))
    for c in cands:
        launch(c)
    times = {c: [] for c in cands}
    for _ in range(reps):
        for c in cands:
            times[c].append(time_once(launch, c, flush))
    return min(cands, key=lambda c: sorted(times[c])[reps // 2])
