"""Batch-1 decode speed of the CUDA runtime on random weights with real shapes, and its roofline.

`random_cuda_ops(cfg, scheme)` builds the CUDA backend without a checkpoint: every linear (and every
stacked expert projection) gets random valid bytes of the scheme, made on the GPU. `bench_decode`
prefills a short prompt (prefill_tok_s: the best of two warm prefills; first_prefill_s: the first, which
compiles and tunes the kernels), then times greedy decode steps (CUDA graph replay + sampling + host sync per
token, as `lowbit generate` runs them) and reports tok/s next to the roofline: the bytes one token must
read (dense weights, the top-k experts of every MoE layer, lm_head, the KV cache) over the measured
device-to-device copy bandwidth.
"""

from __future__ import annotations

import time

import numpy as np

from lowbit.runtime.config import ModelConfig, from_dict
from lowbit.runtime.cuda_ops import CudaOps, _fused, _GraphDecoder
from lowbit.runtime.model import Transformer

SMOLLM2_135M = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
                "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
                "tie_word_embeddings": True}


def preset_config(name: str) -> dict:
    if name == "smollm2-135m":
        return dict(SMOLLM2_135M)
    from lowbit.synth import make_config
    from lowbit.synth_presets import PRESETS

    arch = next((a for a, p in PRESETS.items() if name in p), None)
    if arch is None:
        from lowbit.errors import LowbitError

        raise LowbitError(f"--config {name!r}: not a synth preset; choose smollm2-135m or one of "
                          + ", ".join(sorted({p for ps in PRESETS.values() for p in ps})))
    return make_config(arch, name)


def _random(scheme: str, n: int, k: int, e: int | None, rs):
    import cupy
    import ml_dtypes

    from lowbit.kernels.weights import to_gpu

    lead = () if e is None else (e,)
    bf16 = np.dtype(ml_dtypes.bfloat16)
    rint = lambda lo, hi, shape, dt: rs.randint(lo, hi, size=lead + shape, dtype=cupy.int32).astype(dt)  # noqa
    if scheme == "bf16":
        t = {"weight": (rs.standard_normal(lead + (n, k), dtype=cupy.float32) * 0.02).astype(bf16)}
    elif scheme == "fp8-block":
        t = {"weight": rint(0, 0x60, (n, k), cupy.uint8),
             "weight_scale_inv": rs.uniform(1e-4, 1e-3, size=lead + (-(-n // 128), -(-k // 128))).astype(cupy.float32)}
    elif scheme == "nvfp4":
        t = {"weight_packed": rint(0, 256, (n, k // 2), cupy.uint8), "weight_scale": rint(0x30, 0x40, (n, k // 16), cupy.uint8),
             "weight_global_scale": cupy.full(lead + (1,), 1000.0, cupy.float32)}
    else:
        g = next(g for g in (128, 64, 32) if k % g == 0)
        t = {"weight_packed": rs.randint(-(2**31), 2**31 - 1, size=lead + (n, k // 8), dtype=cupy.int64).astype(cupy.int32),
             "weight_scale": rs.uniform(1e-4, 1e-3, size=lead + (n, k // g)).astype(cupy.float32).astype(bf16)}
        return to_gpu(scheme, t, group_size=g)
    return to_gpu(scheme, t)


def random_cuda_ops(cfg: ModelConfig, scheme: str, seed: int = 0, cuda_graph: bool = True,
                    fused: bool = True) -> CudaOps:
    import cupy

    from lowbit.kernels.moe import MoeWeights

    rs = cupy.random.RandomState(seed)
    ops = CudaOps.__new__(CudaOps)
    ops.xp, ops.cfg, ops.act, ops.quant_opts = cupy, cfg, "bf16", {"group_size": 128}
    from lowbit.formats.numerics import BF16

    ops.bf16, ops.lin, ops.vec, ops.moe = BF16, {}, {}, {}
    h, hd = cfg.hidden, cfg.head_dim
    ops.embed_w = (rs.standard_normal((cfg.vocab, h), dtype=cupy.float32) * 0.02).astype(BF16)
    ops.lin["lm_head"] = _random("bf16", cfg.vocab, h, None, rs)
    ones = lambda n: cupy.ones(n, cupy.float32)  # noqa: E731
    ops.vec["model.norm.weight"] = ones(h)
    mix = cfg.arch == "mixtral"
    for i in range(cfg.layers):
        p = f"model.layers.{i}"
        ops.vec[f"{p}.input_layernorm.weight"] = ops.vec[f"{p}.post_attention_layernorm.weight"] = ones(h)
        for name, n, k in (("q_proj", cfg.heads * hd, h), ("k_proj", cfg.kv_heads * hd, h),
                           ("v_proj", cfg.kv_heads * hd, h), ("o_proj", h, cfg.heads * hd)):
            ops.lin[f"{p}.self_attn.{name}"] = _random(scheme, n, k, None, rs)
        if cfg.qk_norm:
            ops.vec[f"{p}.self_attn.q_norm.weight"] = ops.vec[f"{p}.self_attn.k_norm.weight"] = ones(hd)
        if not cfg.moe_layer(i):
            for name, n, k in (("gate_proj", cfg.intermediate, h), ("up_proj", cfg.intermediate, h),
                               ("down_proj", h, cfg.intermediate)):
                ops.lin[f"{p}.mlp.{name}"] = _random(scheme, n, k, None, rs)
            continue
        m, e, inter = (f"{p}.block_sparse_moe" if mix else f"{p}.mlp"), cfg.experts, cfg.moe_intermediate
        ops.lin[f"{m}.gate"] = _random("bf16", e, h, None, rs)
        ops.moe[m] = MoeWeights(scheme, _random(scheme, inter, h, e, rs), _random(scheme, inter, h, e, rs),
                                _random(scheme, h, inter, e, rs))
        if cfg.shared_intermediate:
            for name, n, k in (("gate_proj", cfg.shared_intermediate, h), ("up_proj", cfg.shared_intermediate, h),
                               ("down_proj", h, cfg.shared_intermediate)):
                ops.lin[f"{m}.shared_expert.{name}"] = _random(scheme, n, k, None, rs)
            ops.lin[f"{m}.shared_expert_gate"] = _random("bf16", 1, h, None, rs)
    ops.fused = _fused(fused)
    ops._fuse_linears()
    ops.decoder = _GraphDecoder(ops, capture=cuda_graph)
    return ops


def active_bytes(ops: CudaOps, cfg: ModelConfig, context: int) -> int:
    """Bytes one decode token reads: all non-expert linears, k experts per MoE layer, KV cache, one embedding row."""
    dense = sum(w.nbytes() for w in ops.lin.values())
    experts = sum(cfg.top_k * mw.expert_nbytes() for mw in ops.moe.values() if mw is not None)
    kv = 2 * cfg.layers * cfg.kv_heads * context * cfg.head_dim * 4
    return dense + experts + kv + cfg.hidden * 2


def bench_decode(config: str, scheme: str, tokens: int = 128, prompt: int = 32, cuda_graph: bool = True,
                 copy_gbs: float | None = None, fused: bool = True) -> dict:
    import cupy

    from lowbit.verify.bench import device_info, measure_copy_bandwidth

    cfg = from_dict(preset_config(config), config)
    ops = random_cuda_ops(cfg, scheme, cuda_graph=cuda_graph, fused=fused)
    model = Transformer(cfg, ops, max_context=min(cfg.max_positions, 256 * -(-(prompt + tokens + 16) // 256)))
    ids = cupy.asarray(np.random.default_rng(0).integers(0, cfg.vocab, prompt))

    def prefill() -> tuple:
        model.kv.truncate(0)
        t0 = time.perf_counter()
        out = model.forward(ids, 0, last_only=True)[0]
        cupy.cuda.get_current_stream().synchronize()
        return time.perf_counter() - t0, out

    first_s, _ = prefill()                              # compiles and tunes the prefill kernels
    prefill_s, logits = min((prefill() for _ in range(2)), key=lambda r: r[0])
    tok, pos = int(cupy.argmax(logits)), prompt
    for _ in range(8):                                  # warm-up: compile, capture
        tok, pos = ops.decode_step(model, tok, pos, greedy=True), pos + 1
    t0 = time.perf_counter()
    for _ in range(tokens):
        tok, pos = ops.decode_step(model, tok, pos, greedy=True), pos + 1
    dt = time.perf_counter() - t0
    bw = copy_gbs if copy_gbs else measure_copy_bandwidth()
    nbytes = active_bytes(ops, cfg, pos)
    roof = bw * 1e9 / nbytes
    gpu, _ = device_info()
    return {"config": config, "scheme": scheme, "gpu": gpu, "cuda_graph": cuda_graph, "fused": fused,
            "decode_tok_s": tokens / dt,
            "prefill_tok_s": prompt / prefill_s, "first_prefill_s": first_s, "active_mb_per_token": nbytes / 1e6,
            "copy_gbs": bw,
            "roofline_tok_s": roof, "pct_roofline": 100 * tokens / dt / roof}


#: the decode target (performance.md, issue 5): batch-1 tok/s and % of the roofline, both at least
DECODE_BAR = (250.0, 40.0)


def format_decode_bar(r: dict) -> str:
    """One line: a bench_decode result against DECODE_BAR, met or not."""
    tok, pct = DECODE_BAR
    met = r["decode_tok_s"] >= tok and r["pct_roofline"] >= pct
    return (f"{r['config']} {r['scheme']} on {r['gpu']}: {r['decode_tok_s']:.1f} tok/s, {r['pct_roofline']:.1f} % of "
            f"the roofline ({r['roofline_tok_s']:.0f} tok/s: {r['active_mb_per_token']:.0f} MB a token at "
            f"{r['copy_gbs']:.0f} GB/s); target >= {tok:.0f} tok/s and >= {pct:.0f} %: {'met' if met else 'not met'}")


def time_moe_layer(config: str, scheme: str, iters: int = 200) -> dict:
    """One MoE layer's decode pieces alone (1 token): router GEMV + top-k, and the grouped expert kernels."""
    import cupy

    from lowbit.kernels.linear import linear
    from lowbit.kernels.moe import MoeWeights, moe_experts
    from lowbit.kernels.moe_router import topk

    cfg = from_dict(preset_config(config), config)
    rs = cupy.random.RandomState(1)
    h, e, inter = cfg.hidden, cfg.experts, cfg.moe_intermediate
    mw = MoeWeights(scheme, _random(scheme, inter, h, e, rs), _random(scheme, inter, h, e, rs),
                    _random(scheme, h, inter, e, rs))
    router = _random("bf16", e, h, None, rs)
    x = rs.standard_normal((1, h), dtype=cupy.float32).astype(_bf16())

    def route():
        return topk(linear(router, x).astype(cupy.float32), cfg.top_k, "qwen3", cfg.norm_topk)

    ids, w = route()
    out = {}
    for name, fn in (("router_us", route), ("experts_us", lambda: moe_experts(x, ids, w, mw))):
        fn()
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(iters):
            fn()
        stop.record()
        stop.synchronize()
        out[name] = cupy.cuda.get_elapsed_time(start, stop) * 1e3 / iters
    nbytes = cfg.top_k * mw.expert_nbytes()
    return {"config": config, "scheme": scheme, **out, "expert_mb": nbytes / 1e6,
            "experts_gbs": nbytes / (out["experts_us"] * 1e-6) / 1e9}


def _bf16():
    from lowbit.formats.numerics import BF16

    return BF16
