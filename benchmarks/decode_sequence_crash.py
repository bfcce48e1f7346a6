"""Regression check for the decode-sequence crash (benchmarks/RESULTS.md, sessions 8-10): SmolLM2 x 4 schemes,
Qwen3-30B-A3B fp8 and Mixtral-8x7B nvfp4/int4 built and run one after another in one process (random weights,
3 prefills of 32 tokens, then graph decode), with the split-K and router counters checked before each model.
Until session 10, Mixtral nvfp4's first prefill hit an illegal address in about half the runs: the TMA GEMM read
scale words past the end of a scale tensor (compute-sanitizer memcheck found it). Every scale tensor now keeps a
tail in its allocation (lowbit.kernels.weights.TAIL_BYTES); with it, 12 of 12 runs passed on the H200 (2026-11-27).
Usage: python benchmarks/decode_sequence_crash.py [TOKENS] [config:scheme,...]   (one JSON line a model)
RESET=1 zeroes the counters before each model. LAYERS=n caps every model at n layers (for compute-sanitizer runs:
every layer has the same shapes, so an out-of-bounds access shows in the first). The run that cleared the fix
(73 s on the H200, kernel cache warm; the one that found the bug had all layers, 2 tokens, LOWBIT_GEMV_TUNE=0):
    LAYERS=3 compute-sanitizer --tool memcheck --report-api-errors no python benchmarks/decode_sequence_crash.py 3"""

import json
import os
import sys

import cupy
import numpy as np

from lowbit.kernels import gemv as G
from lowbit.kernels import moe_router as MR
from lowbit.runtime.bench_decode import preset_config, random_cuda_ops
from lowbit.runtime.config import from_dict
from lowbit.runtime.model import Transformer

RUNS = [("smollm2-135m", s) for s in ("bf16", "fp8-block", "nvfp4", "int4")]
RUNS += [("qwen3-30b-a3b", "fp8-block"), ("mixtral-8x7b", "nvfp4"), ("mixtral-8x7b", "int4")]


def counters(reset: bool) -> dict:
    """Non-zero entries of every split-K counter array and of the router ticket (all must be 0 between calls)."""
    cupy.cuda.Device().synchronize()
    out = {}
    for name, arrs in (("ws_cnt", list(G._WS.cnt.current.values()) + G._WS.cnt.retired),
                       ("router", list(MR._COUNTERS.values()))):
        out[name] = [int(cupy.count_nonzero(a)) for a in arrs]
        for a in arrs if reset else ():
            a.fill(0)
    cupy.cuda.Device().synchronize()
    return out


def run_one(config: str, scheme: str, tokens: int) -> dict:
    phase = "load"
    try:
        d = preset_config(config)
        if os.environ.get("LAYERS"):
            d["num_hidden_layers"] = min(d["num_hidden_layers"], int(os.environ["LAYERS"]))
        cfg = from_dict(d, config)
        ops = random_cuda_ops(cfg, scheme)
        model = Transformer(cfg, ops, max_context=min(cfg.max_positions, 256 * -(-(32 + tokens + 16) // 256)))
        ids = cupy.asarray(np.random.default_rng(0).integers(0, cfg.vocab, 32))
        for i in range(3):
            phase = f"prefill{i}"
            model.kv.truncate(0)
            logits = model.forward(ids, 0, last_only=True)[0]
            cupy.cuda.Device().synchronize()
        tok, pos = int(cupy.argmax(logits)), 32
        for i in range(8 + tokens):
            phase = f"decode{i}"
            tok, pos = int(cupy.argmax(ops.decode_step(model, tok, pos))), pos + 1
            cupy.cuda.Device().synchronize()
        return {"config": config, "scheme": scheme, "ok": True, "graphs": len(ops.decoder.graphs)}
    except Exception as e:  # the context is unusable after an illegal address: report where, stop
        return {"config": config, "scheme": scheme, "phase": phase, "error": repr(e)[:300]}


def main() -> None:
    tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    runs = [tuple(c.split(":")) for c in sys.argv[2].split(",")] if len(sys.argv) > 2 else RUNS
    for config, scheme in runs:
        print(json.dumps({"before": f"{config}:{scheme}", "nonzero": counters(os.environ.get("RESET") == "1")}),
              flush=True)
        r = run_one(config, scheme, tokens)
        print(json.dumps(r), flush=True)
        if not r.get("ok"):
            break
        cupy.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main()
