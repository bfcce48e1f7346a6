"""Benchmark harness: CUDA-event timing with rotated weight copies (L2 never holds the weight), the
device-to-device copy ceiling and cuBLAS BF16 measured in the same run, and suites of callables.

A suite is a function `suite(ctx: BenchContext) -> list[dict]`; `SUITES` is the list `lowbit bench` runs
(the GEMM helper appends its own with `register_suite`). Every row names the GPU it ran on.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

SHAPE_PRESETS: dict[str, list[tuple[int, int]]] = {
    "qwen-7b": [(4096, 4096), (4096, 14336), (14336, 4096)],
    "qwen-72b": [(8192, 8192), (8192, 29568), (29568, 8192)],
    "qwen3-30b-a3b": [(768, 2048), (2048, 768)],
}
DEFAULT_SHAPES = "qwen-7b,qwen-72b,qwen3-30b-a3b"
#: (weight scheme, activation) pairs the GEMV suite times
GEMV_VARIANTS = [("bf16", "bf16"), ("fp8-block", "bf16"), ("fp8-block", "fp8"),
                 ("nvfp4", "bf16"), ("nvfp4", "nvfp4"), ("int4", "bf16")]


def parse_shapes(spec: str) -> list[tuple[int, int]]:
    """'qwen-7b,1024x4096' -> [(N, K), ...] (presets expanded, duplicates dropped, order kept)."""
    from lowbit.errors import LowbitError

    out: list[tuple[int, int]] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item in SHAPE_PRESETS:
            out += SHAPE_PRESETS[item]
            continue
        parts = item.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise LowbitError(f"--shapes: {item!r} is neither a preset ({', '.join(SHAPE_PRESETS)}) nor NxK")
        out.append((int(parts[0]), int(parts[1])))
    return list(dict.fromkeys(out))


@dataclass
class BenchContext:
    shapes: list[tuple[int, int]]
    batches: list[int]
    schemes: list[str] | None = None  # None: all
    iters: int = 50
    gpu: str = ""
    copy_gbs: float = 0.0
    l2_bytes: int = 50 << 20
    extra: dict = field(default_factory=dict)
    _cublas_cache: dict = field(default_factory=dict)


def time_rotating(call: Callable[[int], object], copies: int, iters: int, warm: int | None = None) -> float:
    """Median microseconds of call(i % copies), each launch between two CUDA events, run back to back.

    Every copy is called once first (`warm` limits that to the first few): a first call may do host work that
    waits for the GPU (a TMA tensor map is built and copied synchronously once per weight address). Such a
    wait inside the timed loop drains the queue behind the busy kernel, and every later launch is then timed
    at the host's pace: with three of ten copies warmed, fp8 4096x4096 measured 48-95 us a call, 11.7 alone."""
    import cupy

    from lowbit.kernels.timing import spin

    for i in range(copies if warm is None else min(copies, warm)):
        call(i)  # warm-up (and compile, tensor maps)
    cupy.cuda.Device().synchronize()
    events = [cupy.cuda.Event() for _ in range(iters + 1)]
    spin((3.0 + 0.2 * iters) * 1000.0)  # the GPU busy while the launches are enqueued: they run back to back
    events[0].record()
    for i in range(iters):
        call(i % copies)
        events[i + 1].record()
    events[-1].synchronize()
    times = [cupy.cuda.get_elapsed_time(events[i], events[i + 1]) * 1e3 for i in range(iters)]
    return statistics.median(times)


def copies_for(nbytes: int, l2_bytes: int, budget: int = 6 << 30) -> int:
    """How many copies of a buffer rotate past L2 (3x its size), within a memory budget."""
    want = -(-3 * l2_bytes // max(nbytes, 1)) + 1
    return int(max(2, min(want, budget // max(nbytes, 1))))


def measure_copy_bandwidth(nbytes: int = 1 << 30, iters: int = 20) -> float:
    """Device-to-device copy, GB/s counting bytes read + bytes written."""
    import cupy

    src = cupy.ones(nbytes // 4, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    us = time_rotating(lambda i: cupy.copyto(dst, src), 1, iters)
    return 2 * nbytes / (us * 1e-6) / 1e9


def device_info() -> tuple[str, int]:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return name, int(props.get("l2CacheSize", 50 << 20))


SUITES: list[Callable[[BenchContext], list[dict]]] = []


def register_suite(fn: Callable[[BenchContext], list[dict]]) -> Callable[[BenchContext], list[dict]]:
    if fn not in SUITES:
        SUITES.append(fn)
    return fn


def run_bench(shapes: list[tuple[int, int]], batches: list[int], schemes: list[str] | None = None,
              iters: int = 50, suites: list | None = None) -> dict:
    """Measure the ceilings, run every suite, return {'gpu', 'copy_gbs', 'rows': [...]}."""
    from lowbit.verify import bench_gemv  # noqa: F401  (registers the GEMV suite)

    try:  # the GEMM helper's suites, where present
        from lowbit.verify import bench_gemm  # noqa: F401
    except ImportError:
        pass
    name, l2 = device_info()
    ctx = BenchContext(shapes=shapes, batches=batches, schemes=schemes, iters=iters, gpu=name, l2_bytes=l2)
    ctx.copy_gbs = measure_copy_bandwidth()
    log.info("%s: device-to-device copy %.0f GB/s", name, ctx.copy_gbs)
    rows: list[dict] = []
    for suite in suites or SUITES:
        rows += suite(ctx)
    return {"gpu": name, "copy_gbs": ctx.copy_gbs, "l2_bytes": l2, "rows": rows}
