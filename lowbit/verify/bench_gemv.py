"""The GEMV benchmark suite: every scheme x shape x batch, next to cuBLAS BF16 and torch FP8 _scaled_mm.

Weights are random on-disk bytes made on the GPU (valid codes, finite scales): timing does not depend
on the values, and quantizing 240M-element tensors on the CPU would cost minutes. Correctness is the
business of the tests and `lowbit verify`. Bytes counted = every weight tensor (codes + scales + zero
points) read once; x and y are excluded (they are < 0.1% at these shapes).
"""

from __future__ import annotations

import logging

import numpy as np

from lowbit.verify.bench import BenchContext, GEMV_VARIANTS, copies_for, register_suite, time_rotating

log = logging.getLogger(__name__)


def random_gpu_weight(scheme: str, n: int, k: int, seed: int = 0):
    """A GpuWeight of random valid on-disk bytes, made on the GPU."""
    import cupy
    import ml_dtypes

    from lowbit.kernels.weights import to_gpu

    rs = cupy.random.RandomState(seed)
    bf16 = np.dtype(ml_dtypes.bfloat16)
    if scheme == "bf16":
        return to_gpu("bf16", {"weight": (rs.standard_normal((n, k), dtype=cupy.float32) * 0.02).astype(bf16)})
    if scheme == "fp8-block":
        codes = rs.randint(0, 0x7E, size=(n, k), dtype=cupy.int32).astype(cupy.uint8)
        codes |= (rs.randint(0, 2, size=(n, k), dtype=cupy.int32) << 7).astype(cupy.uint8)
        s = rs.uniform(1e-4, 1e-3, size=(-(-n // 128), -(-k // 128))).astype(cupy.float32)
        return to_gpu(scheme, {"weight": codes, "weight_scale_inv": s})
    if scheme == "nvfp4":
        packed = rs.randint(0, 256, size=(n, k // 2), dtype=cupy.int32).astype(cupy.uint8)
        scales = rs.randint(0x30, 0x58, size=(n, k // 16), dtype=cupy.int32).astype(cupy.uint8)
        return to_gpu(scheme, {"weight_packed": packed, "weight_scale": scales,
                               "weight_global_scale": cupy.full((1,), 100.0, cupy.float32)})
    if scheme == "int4":
        packed = rs.randint(-(2**31), 2**31 - 1, size=(n, k // 8), dtype=cupy.int64).astype(cupy.int32)
        scale = rs.uniform(1e-3, 1e-2, size=(n, k // 128)).astype(cupy.float32).astype(bf16)
        return to_gpu(scheme, {"weight_packed": packed, "weight_scale": scale}, group_size=128)
    raise ValueError(scheme)


def _cublas_bf16(ctx: BenchContext, n: int, k: int, m: int) -> tuple[float, str]:
    """cuBLAS BF16 GEMV time (us) through cupy.matmul, else torch.nn.functional.linear."""
    import cupy

    key = (n, k, m)
    if key in ctx._cublas_cache:
        return ctx._cublas_cache[key]
    ws = [random_gpu_weight("bf16", n, k, seed=i).tensors["weight"]
          for i in range(copies_for(n * k * 2, ctx.l2_bytes))]
    x = (cupy.random.standard_normal((m, k), dtype=cupy.float32)).astype(ws[0].dtype)
    try:
        cupy.matmul(x, ws[0].T)
        how, fn = "cupy.matmul", (lambda i: cupy.matmul(x, ws[i].T))
    except Exception:  # noqa: BLE001 - cupy without bf16 matmul: use torch's cuBLAS call
        import torch

        tx = torch.from_dlpack(x)
        tw = [torch.from_dlpack(w) for w in ws]
        how, fn = "torch.nn.functional.linear", (lambda i: torch.nn.functional.linear(tx, tw[i]))
    us = time_rotating(fn, len(ws), ctx.iters)
    ctx._cublas_cache[key] = (us, how)
    del ws
    return us, how


def _torch_fp8(ctx: BenchContext, n: int, k: int, m: int) -> float | None:
    """torch._scaled_mm FP8 per-tensor (cuBLASLt), M padded to 16; None where torch cannot run it."""
    try:
        import torch

        mp = max(16, -(-m // 16) * 16)
        a = torch.randn(mp, k, device="cuda").to(torch.float8_e4m3fn)
        bs = [torch.randn(n, k, device="cuda").to(torch.float8_e4m3fn)
              for _ in range(copies_for(n * k, ctx.l2_bytes, budget=3 << 30))]
        one = torch.tensor(1.0, device="cuda")
        fn = lambda i: torch._scaled_mm(a, bs[i].t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)  # noqa: E731
        return time_rotating(fn, len(bs), ctx.iters)
    except Exception as e:  # noqa: BLE001
        log.info("torch FP8 peer unavailable: %s", e)
        return None


def _row(ctx, scheme, act, n, k, m, us, nbytes, base_us, how):
    gbs = nbytes / (us * 1e-6) / 1e9
    return {"suite": "gemv", "gpu": ctx.gpu, "scheme": scheme, "act": act, "n": n, "k": k, "m": m,
            "us": round(us, 2), "bytes": int(nbytes), "gbs": round(gbs, 1),
            "pct_copy": round(100 * gbs / ctx.copy_gbs, 1), "cublas_bf16_us": round(base_us, 2),
            "speedup_vs_cublas_bf16": round(base_us / us, 2), "peer": how}


def gemv_suite(ctx: BenchContext) -> list[dict]:
    import cupy

    from lowbit.kernels.gemv import gemv

    rows = []
    for n, k in ctx.shapes:
        for scheme, act in GEMV_VARIANTS:
            if ctx.schemes and scheme not in ctx.schemes:
                continue
            w0 = random_gpu_weight(scheme, n, k)
            ws = [w0] + [random_gpu_weight(scheme, n, k, seed=i) for i in range(1, copies_for(w0.nbytes(), ctx.l2_bytes))]
            for m in ctx.batches:
                x = cupy.random.standard_normal((m, k), dtype=cupy.float32).astype(_bf16())
                us = time_rotating(lambda i: gemv(ws[i], x, act=act), len(ws), ctx.iters)
                base, how = _cublas_bf16(ctx, n, k, m)
                rows.append(_row(ctx, scheme, act, n, k, m, us, w0.nbytes(), base, how))
                log.info("gemv %s/%s %dx%d M=%d: %.1f us", scheme, act, n, k, m, us)
            del ws
            cupy.get_default_memory_pool().free_all_blocks()
        for m in ctx.batches:
            base, how = _cublas_bf16(ctx, n, k, m)
            rows.append(_row(ctx, "cublas-bf16", "bf16", n, k, m, base, n * k * 2, base, how))
            t8 = _torch_fp8(ctx, n, k, m)
            if t8 is not None:
                rows.append(_row(ctx, "torch-fp8-scaled_mm", "fp8", n, k, m, t8, n * k, base, "torch._scaled_mm"))
        ctx._cublas_cache.clear()
        cupy.get_default_memory_pool().free_all_blocks()
    return rows


PEERS = ("cublas-bf16", "torch-fp8-scaled_mm")
LARGE = 8192 * 8192  # "large shapes": N * K at least this


def format_gemv_bars(rows: list[dict]) -> str:
    """Issue 3's GEMV bars over the rows of one run (ours only, M = 1 unless said), each point with its figure
    and met / not met, then a count per bar: >= 85 % of copy at N*K >= 8192^2; >= 70 % at 4096x4096; FP8 >= 1.8x
    and the 4-bit schemes >= 3x cuBLAS BF16 at N*K >= 8192^2; time at M = 8 <= 1.3x M = 1."""
    ours = [r for r in rows if r.get("suite", "gemv") == "gemv" and r["scheme"] not in PEERS]
    one = [r for r in ours if r["m"] == 1]
    large = [r for r in one if r["n"] * r["k"] >= LARGE]

    def copy_pct(r, least):
        return r, r["pct_copy"], "% of copy", r["pct_copy"] >= least

    def speedup(r, least):
        return r, r["speedup_vs_cublas_bf16"], "x cuBLAS BF16", r["speedup_vs_cublas_bf16"] >= least

    m1 = {(r["scheme"], r["act"], r["n"], r["k"]): r for r in one}
    m8 = []
    for r in ours:
        base = m1.get((r["scheme"], r["act"], r["n"], r["k"]))
        if r["m"] == 8 and base is not None and base["us"] > 0:
            m8.append((r, round(r["us"] / base["us"], 2), "x M=1", r["us"] <= 1.3 * base["us"]))
    bars = [
        (">= 85 % of copy at N*K >= 8192^2", [copy_pct(r, 85) for r in large]),
        (">= 70 % of copy at 4096x4096", [copy_pct(r, 70) for r in one if (r["n"], r["k"]) == (4096, 4096)]),
        ("FP8 >= 1.8x cuBLAS BF16 at N*K >= 8192^2", [speedup(r, 1.8) for r in large if r["scheme"] == "fp8-block"]),
        ("4-bit >= 3x cuBLAS BF16 at N*K >= 8192^2",
         [speedup(r, 3.0) for r in large if r["scheme"] in ("nvfp4", "int4")]),
        ("M = 8 <= 1.3x the time of M = 1", m8),
    ]
    out = []
    for label, pts in bars:
        if not pts:
            continue
        out += [f"{label}: met at {sum(p[3] for p in pts)} of {len(pts)} points",
                "| scheme | act | N x K | M | figure | met |", "|---|---|---|---|---|---|"]
        out += [f"| {r['scheme']} | {r['act']} | {r['n']}x{r['k']} | {r['m']} | {v} {unit} | {'yes' if ok else 'no'} |"
                for r, v, unit, ok in pts]
        out.append("")
    return "\n".join(out).rstrip()


def _bf16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


register_suite(gemv_suite)
