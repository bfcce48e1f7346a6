"""Batch-1 decode benchmark of the runtime: GPU (random weights, real shapes) and CPU (SmolLM2).

GPU:  python benchmarks/decode.py gpu [--tokens N]
      SmolLM2-135M shapes in bf16/fp8-block/nvfp4/int4 next to transformers eager BF16 (same shapes,
      random weights, same GPU, same run); Qwen3-30B-A3B fp8-block; Mixtral-8x7B nvfp4 and int4.
CPU:  python benchmarks/decode.py cpu CKPT [--threads N]
      our numpy backend vs transformers (torch CPU, BF16) on the same checkpoint, greedy, 128 tokens.
Prints one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def transformers_gpu_smollm2(tokens: int = 128) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from lowbit.runtime.bench_decode import SMOLLM2_135M

    cfg = {k: v for k, v in SMOLLM2_135M.items() if k != "model_type"}
    model = AutoModelForCausalLM.from_config(LlamaConfig(**cfg), dtype=torch.bfloat16).cuda().eval()
    ids = torch.randint(0, cfg["vocab_size"], (1, 32), device="cuda")
    kw = dict(do_sample=False, min_new_tokens=tokens, max_new_tokens=tokens, pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids, **{**kw, "min_new_tokens": 8, "max_new_tokens": 8})
        dt = _hf_decode_seconds(model, ids, kw, torch.cuda.synchronize)
    return {"config": "smollm2-135m", "engine": "transformers eager bf16", "gpu": torch.cuda.get_device_name(),
            "decode_tok_s": (tokens - 1) / dt}


def _hf_decode_seconds(model, ids, kw, sync=lambda: None) -> float:
    """generate(tokens) minus generate(1 token): the decode part only, like our decode_tok_s."""
    def timed(n):
        sync()
        t = time.perf_counter()
        model.generate(ids, **{**kw, "min_new_tokens": n, "max_new_tokens": n})
        sync()
        return time.perf_counter() - t

    return min(timed(kw["max_new_tokens"]) for _ in range(2)) - min(timed(1) for _ in range(2))


def gpu(args) -> None:
    import cupy

    from lowbit.runtime.bench_decode import bench_decode
    from lowbit.verify.bench import measure_copy_bandwidth

    bw = measure_copy_bandwidth()
    runs = [("smollm2-135m", s) for s in ("bf16", "fp8-block", "nvfp4", "int4")]
    runs += [("qwen3-30b-a3b", "fp8-block"), ("mixtral-8x7b", "nvfp4"), ("mixtral-8x7b", "int4")]
    for config, scheme in runs:
        try:
            r = bench_decode(config, scheme, tokens=args.tokens, copy_gbs=bw)
        except Exception as e:  # report and go on: one failing shape must not hide the others
            r = {"config": config, "scheme": scheme, "error": f"{type(e).__name__}: {e}"[:500]}
        print(json.dumps(r), flush=True)
        cupy.get_default_memory_pool().free_all_blocks()
    from lowbit.runtime.bench_decode import time_moe_layer

    for config, scheme in (("qwen3-30b-a3b", "fp8-block"), ("mixtral-8x7b", "nvfp4")):
        try:
            print(json.dumps(time_moe_layer(config, scheme)), flush=True)
        except Exception as e:
            print(json.dumps({"moe_layer": config, "error": f"{type(e).__name__}: {e}"[:300]}), flush=True)
        cupy.get_default_memory_pool().free_all_blocks()
    try:
        print(json.dumps(transformers_gpu_smollm2(args.tokens)), flush=True)
    except Exception as e:
        print(json.dumps({"engine": "transformers", "error": f"{type(e).__name__}: {e}"[:500]}), flush=True)


def cpu(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from lowbit.runtime.generate import Engine

    eng = Engine(args.ckpt, device="cpu", max_context=512)
    prompt = eng.tokenizer.encode_chat([{"role": "user", "content": "Write a long story about the sea."}])
    eng.eos_ids = set()                                   # force args.tokens new tokens
    best = 0.0
    for _ in range(3):
        eng.reset()
        best = max(best, eng.generate(prompt, max_new_tokens=args.tokens).stats.decode_tok_s)
    print(json.dumps({"engine": "lowbit cpu (numpy f32)", "decode_tok_s": best, "threads": torch.get_num_threads()}))
    model = AutoModelForCausalLM.from_pretrained(args.ckpt, dtype=torch.bfloat16).eval()
    ids = torch.tensor([prompt])
    kw = dict(do_sample=False, min_new_tokens=args.tokens, max_new_tokens=args.tokens)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, do_sample=False)
        best = (args.tokens - 1) / _hf_decode_seconds(model, ids, kw)
    print(json.dumps({"engine": "transformers cpu bf16 (generate minus 1-token generate)", "decode_tok_s": best}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["gpu", "cpu"])
    ap.add_argument("ckpt", nargs="?")
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    (gpu if args.mode == "gpu" else cpu)(args)


if __name__ == "__main__":
    sys.exit(main())
