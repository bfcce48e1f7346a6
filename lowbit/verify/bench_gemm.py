"""Benchmarks of the prefill GEMM and the MoE layer, beside cuBLAS BF16 and torch `_scaled_mm` FP8
(per-tensor, and block-scaled 1x128 / 128x128) timed in the same run.

Timing (GEMM rows, ours and the peers alike): GPU time, the median over `iters` calls issued back to back
behind a busy kernel, an event pair around each (`gpu_timeit`), so a call's host cost (Python, the driver)
is not in it; `wall_us` is the host-inclusive time of one call on an idle GPU (`timeit`, what an eager
Python caller sees). Weights rotate over copies totalling >= 4x the L2 so memory-bound shapes are not timed
out of the cache; random data (never zeros).
Weights are random valid codes built on the GPU (no NaN codes; the values do not affect speed).
`gemm_rows(...)` / `moe_rows(...)` return lists of dicts for the CLI and benchmarks/*.py to print.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

#: (model, layer, N, K)
GEMM_SHAPES = [
    ("qwen2.5-7b", "mlp.up", 18944, 3584),
    ("qwen2.5-7b", "mlp.down", 3584, 18944),
    ("qwen2.5-72b", "mlp.up", 29568, 8192),
    ("qwen2.5-72b", "mlp.down", 8192, 29568),
    ("qwen3-30b-a3b", "attn.qkv", 5120, 2048),
    ("qwen3-30b-a3b", "attn.o", 2048, 4096),
]
GEMM_MS = (16, 64, 256, 1024, 4096, 8192)
OURS = (("fp8-block", "fp8"), ("fp8-block", "bf16"), ("nvfp4", "bf16"), ("int4", "bf16"))


def timeit(fn, iters: int = 20, warmup: int = 3) -> float:
    """Median seconds of fn() between CUDA events (fn(i) gets the iteration index)."""
    import cupy

    for i in range(warmup):
        fn(i)
    times = []
    for i in range(iters):
        a, b = cupy.cuda.Event(), cupy.cuda.Event()
        a.record()
        fn(i)
        b.record()
        b.synchronize()
        times.append(cupy.cuda.get_elapsed_time(a, b) * 1e-3)
    return float(np.median(times))


def gpu_timeit(fn, iters: int = 20) -> float:
    """Median seconds of the GPU work of fn(i), the calls issued back to back behind a busy kernel (the host's
    launch cost hidden; lowbit.verify.bench.time_rotating)."""
    from lowbit.verify.bench import time_rotating

    return time_rotating(fn, max(iters, 1), iters, warm=3) * 1e-6


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy, bytes read + written per second."""
    import cupy

    a = cupy.ones(nbytes // 4, cupy.float32)
    b = cupy.empty_like(a)
    t = timeit(lambda i: b.__setitem__(Ellipsis, a), iters=10)
    return 2 * nbytes / t


def _l2_bytes() -> int:
    import cupy

    return int(cupy.cuda.Device().attributes.get("L2CacheSize", 50 << 20))


def random_weight(scheme: str, n: int, k: int, experts: int | None = None, seed: int = 0):
    """A GpuWeight of random valid codes (made on the GPU)."""
    import cupy

    from lowbit.formats import numerics
    from lowbit.kernels.weights import to_gpu

    rs = cupy.random.RandomState(seed)
    lead = () if experts is None else (experts,)

    def u8(*shape):
        return rs.randint(0, 256, lead + shape, dtype=cupy.int32).astype(cupy.uint8)

    if scheme == "bf16":
        t = {"weight": (rs.standard_normal(lead + (n, k), dtype=cupy.float32) * 0.02).astype(numerics.BF16)}
    elif scheme == "fp8-block":
        q = u8(n, k)
        q = cupy.where((q & 0x7F) == 0x7F, q & 0xFE, q)  # no NaN codes
        t = {"weight": q, "weight_scale_inv": rs.uniform(1e-4, 1e-3, lead + (-(-n // 128), -(-k // 128))).astype(cupy.float32)}
    elif scheme == "nvfp4":
        s = rs.randint(0x28, 0x48, lead + (n, k // 16), dtype=cupy.int32).astype(cupy.uint8)
        t = {"weight_packed": u8(n, k // 2), "weight_scale": s,
             "weight_global_scale": cupy.full(lead + (1,), 448.0 * 6.0 / 0.1, cupy.float32)}
    else:
        t = {"weight_packed": rs.randint(-(2**31), 2**31 - 1, lead + (n, k // 8), dtype=cupy.int64).astype(cupy.int32),
             "weight_scale": rs.uniform(1e-3, 1e-2, lead + (n, k // 128)).astype(cupy.float32).astype(numerics.BF16)}
    return to_gpu(scheme, t, name=f"bench.{scheme}")


def _rotation(nbytes: int) -> int:
    return int(min(8, max(1, -(-4 * _l2_bytes() // max(nbytes, 1)))))


def _torch_peers(m: int, n: int, k: int, iters: int) -> dict:
    """cuBLAS BF16 and cuBLASLt FP8 (per-tensor, block-scaled) through torch, seconds."""
    out = {}
    try:
        import torch
    except ImportError:
        return out
    dev = "cuda"
    copies = _rotation(n * k * 2)
    ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    out["cublas_bf16"] = gpu_timeit(lambda i: torch.matmul(x, ws[i % copies].t()), iters)
    out["cublas_bf16_wall"] = timeit(lambda i: torch.matmul(x, ws[i % copies].t()), iters)
    f8 = torch.float8_e4m3fn
    w8 = [w.to(f8) for w in ws]
    x8 = x.to(f8)
    one = torch.ones((), device=dev, dtype=torch.float32)
    try:
        out["torch_fp8_tensor"] = gpu_timeit(
            lambda i: torch._scaled_mm(x8, w8[i % copies].t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16), iters)
    except Exception as e:  # noqa: BLE001 - a peer that does not run is reported, not fatal
        log.warning("torch _scaled_mm per-tensor failed: %s", e)
    try:
        sa = torch.rand(k // 128, m, device=dev, dtype=torch.float32).t()
        sb = torch.rand(n // 128, k // 128, device=dev, dtype=torch.float32).t()
        out["torch_fp8_block"] = gpu_timeit(
            lambda i: torch._scaled_mm(x8, w8[i % copies].t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16), iters)
    except Exception as e:  # noqa: BLE001
        log.warning("torch _scaled_mm block-scaled failed: %s", e)
    del ws, w8
    torch.cuda.empty_cache()
    return out


def gemm_rows(shapes=GEMM_SHAPES, ms=GEMM_MS, ours=OURS, iters: int = 20, peers: bool = True) -> list[dict]:
    """One row per (shape, M, path): seconds and TFLOPS."""
    import cupy

    from lowbit.formats import numerics
    from lowbit.kernels.gemm import gemm

    rows = []
    for model, layer, n, k in shapes:
        weights = {}
        for scheme, _act in ours:
            if scheme not in weights:
                w0 = random_weight(scheme, n, k)
                weights[scheme] = [w0] + [random_weight(scheme, n, k, seed=s) for s in range(1, _rotation(w0.nbytes()))]
        for m in ms:
            flops = 2.0 * m * n * k
            x = cupy.random.standard_normal((m, k), dtype=cupy.float32).astype(numerics.BF16)
            y = cupy.empty((m, n), numerics.BF16)
            res = _torch_peers(m, n, k, iters) if peers else {}
            for scheme, act in ours:
                ws = weights[scheme]
                for w in ws:  # first call per weight: its TMA tensor map is built and copied (once, synchronously)
                    gemm(w, x, act=act, out=y)
                res[f"{scheme}:{act}"] = gpu_timeit(lambda i: gemm(ws[i % len(ws)], x, act=act, out=y), iters)
                res[f"{scheme}:{act}_wall"] = timeit(lambda i: gemm(ws[i % len(ws)], x, act=act, out=y), iters)
            for path, sec in res.items():
                if path.endswith("_wall"):
                    continue
                wall = res.get(path + "_wall")
                rows.append({"model": model, "layer": layer, "M": m, "N": n, "K": k, "path": path,
                             "us": sec * 1e6, "tflops": flops / sec / 1e12,
                             **({"wall_us": wall * 1e6} if wall is not None else {})})
        del weights
        cupy.get_default_memory_pool().free_all_blocks()
    return rows


def moe_rows(tokens=(1, 4, 64, 1024, 4096), scheme: str = "fp8-block", e: int = 128, k: int = 8, h: int = 2048,
             i_dim: int = 768, iters: int = 20, graph_steps: int = 32) -> list[dict]:
    """Qwen3-30B-A3B-shaped MoE layer: router + experts, eager and (decode) CUDA-graph replay."""
    import cupy

    from lowbit.formats import numerics
    from lowbit.kernels import moe, moe_router
    from lowbit.kernels.moe import MoeWeights, moe_experts, moe_forward

    mw = MoeWeights(scheme, random_weight(scheme, i_dim, h, e, 1), random_weight(scheme, i_dim, h, e, 2),
                    random_weight(scheme, h, i_dim, e, 3))
    router = (cupy.random.standard_normal((e, h), dtype=cupy.float32) * 0.05).astype(numerics.BF16)
    bw = copy_bandwidth()
    chosen = k * mw.expert_nbytes()
    rows = []
    for t in tokens:
        xs = [(cupy.random.standard_normal((t, h), dtype=cupy.float32)).astype(numerics.BF16) for _ in range(graph_steps)]
        for act in (("bf16", "fp8") if scheme == "fp8-block" and t > 4 else ("bf16",)):
            eager = timeit(lambda j: moe_forward(xs[j % graph_steps], router, mw, k, "qwen3", True, act=act), iters)
            row = {"tokens": t, "scheme": scheme, "act": act, "eager_us": eager * 1e6,
                   "flops_tflops": 2.0 * 3 * t * k * h * i_dim / eager / 1e12, "copy_GBps": bw / 1e9,
                   "chosen_bytes": chosen, "roofline_us": chosen / bw * 1e6}
            if t <= 4:
                row["graph_us"] = _graph_time(lambda j: moe_forward(xs[j], router, mw, k, "qwen3", True, act=act),
                                              graph_steps) * 1e6
                routed = [moe_router.route(xs[j], router, k, "qwen3", True) for j in range(graph_steps)]
                row["graph_route_us"] = _graph_time(lambda j: moe_router.route(xs[j], router, k, "qwen3", True),
                                                    graph_steps) * 1e6
                row["graph_experts_us"] = _graph_time(lambda j: moe_experts(xs[j], *routed[j], mw), graph_steps) * 1e6
                row["graph_gate_up_us"] = _graph_time(
                    lambda j: moe._decode(xs[j], routed[j][0], routed[j][1], mw, only="gate_up"), graph_steps) * 1e6
            rows.append(row)
    return rows


def _graph_time(step, n: int) -> float:
    """Seconds per step of a captured CUDA graph of n steps (no launch gaps)."""
    import cupy

    for j in range(n):
        step(j)  # warm the pool so capture allocates nothing new
    s = cupy.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        for j in range(n):
            step(j)
        g = s.end_capture()
    g.launch(s)
    s.synchronize()
    times = []
    for _ in range(10):
        a, b = cupy.cuda.Event(), cupy.cuda.Event()
        a.record(s)
        g.launch(s)
        b.record(s)
        b.synchronize()
        times.append(cupy.cuda.get_elapsed_time(a, b) * 1e-3 / n)
    return float(np.median(times))


def gemm_suite(ctx) -> list[dict]:
    """`lowbit bench --gemm`: rows {suite, model, layer, scheme, act, path, m, n, k, us, tflops}."""
    shapes = GEMM_SHAPES
    if ctx.schemes:
        ours = tuple((s, a) for s, a in OURS if s in ctx.schemes)
    else:
        ours = OURS
    rows = []
    for r in gemm_rows(shapes=shapes, ms=GEMM_MS, ours=ours, iters=min(ctx.iters, 20)):
        scheme, _, act = r["path"].partition(":")
        rows.append({"suite": "gemm", "gpu": ctx.gpu, "model": r["model"], "layer": r["layer"], "path": r["path"],
                     "scheme": scheme if act else r["path"], "act": act or "-", "m": r["M"], "n": r["N"],
                     "k": r["K"], "us": round(r["us"], 2), "tflops": round(r["tflops"], 1),
                     **({"wall_us": round(r["wall_us"], 2)} if "wall_us" in r else {})})
    return rows


def moe_suite(ctx) -> list[dict]:
    """`lowbit bench --moe`: Qwen3-30B-A3B MoE layer per scheme; decode against 8 experts at copy speed."""
    rows = []
    for scheme in ctx.schemes or ("fp8-block", "nvfp4", "int4", "bf16"):
        for r in moe_rows(scheme=scheme, tokens=(1, 4, 64, 1024, 4096)):
            rows.append({"suite": "moe", "gpu": ctx.gpu, **{k: (round(v, 2) if isinstance(v, float) else v)
                                                           for k, v in r.items()}})
    return rows


def format_gemm_table(rows: list[dict]) -> str:
    """TFLOPS per path (columns) for each shape and M (rows); the peers are measured in the same run."""
    paths = list(dict.fromkeys(r["path"] for r in rows))
    by = {(r["model"], r["layer"], r["m"], r["path"]): r for r in rows}
    out = ["| shape | M | " + " | ".join(paths) + " |", "|" + "---|" * (len(paths) + 2)]
    for model, layer, m, n, k in dict.fromkeys((r["model"], r["layer"], r["m"], r["n"], r["k"]) for r in rows):
        cells = [f"{by[(model, layer, m, p)]['tflops']:.0f}" if (model, layer, m, p) in by else "-" for p in paths]
        out.append(f"| {model} {layer} {n}x{k} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(out)


#: issue 4's GEMM bars: (our paths, the peer path, which M, the least fraction of the peer's TFLOPS, label)
GEMM_BARS = (
    (("fp8-block:fp8",), "torch_fp8_tensor", lambda m: m >= 4096, 0.60, "W8A8 >= 60 % of cuBLASLt FP8 at M >= 4096"),
    (("fp8-block:bf16", "nvfp4:bf16", "int4:bf16"), "cublas_bf16", lambda m: m >= 1024, 0.70,
     "W8A16 / W4A16 >= 70 % of cuBLAS BF16 at M >= 1024"),
    (("fp8-block:bf16", "nvfp4:bf16", "int4:bf16"), "cublas_bf16", lambda m: m <= 64, 1.0,
     "W8A16 / W4A16 faster than cuBLAS BF16 at M <= 64"),
)


def format_gemm_bars(rows: list[dict]) -> str:
    """Each bar of GEMM_BARS over the rows of one run: every (shape, M, path) it covers as % of the peer measured
    in the same run, then how many points meet it. Points without their peer's figure are left out."""
    by = {(r["model"], r["layer"], r["m"], r["path"]): r for r in rows}
    out = []
    for paths, peer, covers, least, label in GEMM_BARS:
        pts = []
        for (model, layer, m, path), r in by.items():
            p = by.get((model, layer, m, peer))
            if path in paths and covers(m) and p is not None and p["tflops"] > 0:
                frac = r["tflops"] / p["tflops"]
                met = frac > least if least == 1.0 else frac >= least
                pts.append(f"| {model} {layer} {r['n']}x{r['k']} | {m} | {path} | {100 * frac:.0f} % | "
                           f"{'yes' if met else 'no'} |")
        if not pts:
            continue
        n_met = sum(p.endswith("yes |") for p in pts)
        out += [f"{label}: met at {n_met} of {len(pts)} points", "| shape | M | path | % of peer | met |",
                "|---|---|---|---|---|", *pts, ""]
    return "\n".join(out).rstrip()


def format_moe_table(rows: list[dict]) -> str:
    out = ["| scheme | act | tokens | eager us | graph us | 8 experts @ copy us | graph/roofline |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        g, roof = r.get("graph_us"), r["roofline_us"]
        gtxt = "-" if g is None else f"{g:.1f}"
        ratio = "-" if g is None else f"{g / roof:.2f}"
        out.append(f"| {r['scheme']} | {r['act']} | {r['tokens']} | {r['eager_us']:.1f} | {gtxt} | {roof:.1f} | {ratio} |")
    return "\n".join(out)


#: the MoE decode target (performance.md, issue 4): a one-token step (router + experts, CUDA graph) within this
#: many times the chosen experts' bytes read at the copy bandwidth measured in the same run
MOE_DECODE_BAR = 1.5


def format_moe_bars(rows: list[dict]) -> str:
    """The MoE decode bar over the one-token rows that have a CUDA-graph time: graph / roofline per scheme, met
    or not (the target names fp8; every scheme is shown)."""
    pts = [(r["scheme"], r["act"], r["graph_us"] / r["roofline_us"]) for r in rows
           if r.get("tokens") == 1 and r.get("graph_us") is not None and r["roofline_us"] > 0]
    if not pts:
        return ""
    out = [f"MoE decode step within {MOE_DECODE_BAR}x of the chosen experts' bytes at copy speed:",
           "| scheme | act | graph / roofline | met |", "|---|---|---|---|"]
    out += [f"| {s} | {a} | {x:.2f}x | {'yes' if x <= MOE_DECODE_BAR else 'no'} |" for s, a, x in pts]
    return "\n".join(out)
