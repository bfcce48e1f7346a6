"""Where a decode step's time goes (device machine). Two modes:

    python benchmarks/runtime_kernels.py steps CONFIG SCHEME   # graph decode ms/token at 1, 2 and 4 layers
    ncu --profile-from-start off --metrics gpu__time_duration.sum --csv \
        python benchmarks/runtime_kernels.py ncu CONFIG SCHEME  # every kernel of one eager step, 2 layers

The per-layer cost is the slope of ms/token over layers; the intercept is the fixed cost (embedding,
final norm, lm_head, argmax, graph launch, host sync).
"""

from __future__ import annotations

import json
import sys
import time

import cupy
import numpy as np

from lowbit.runtime.bench_decode import preset_config, random_cuda_ops
from lowbit.runtime.config import from_dict
from lowbit.runtime.model import Transformer


def build(config: str, scheme: str, layers: int, graph: bool):
    d = preset_config(config)
    d["num_hidden_layers"] = layers
    cfg = from_dict(d, config)
    ops = random_cuda_ops(cfg, scheme, cuda_graph=graph)
    model = Transformer(cfg, ops, max_context=256)
    ids = np.random.default_rng(0).integers(0, cfg.vocab, 32)
    tok = int(cupy.argmax(model.forward(cupy.asarray(ids), 0, last_only=True)[0]))
    pos = 32
    for _ in range(8):
        tok, pos = int(cupy.argmax(ops.decode_step(model, tok, pos))), pos + 1
    return ops, model, tok, pos


def steps(config: str, scheme: str) -> None:
    for layers in (1, 2, 4):
        ops, model, tok, pos = build(config, scheme, layers, True)
        t0 = time.perf_counter()
        for _ in range(64):
            tok, pos = int(cupy.argmax(ops.decode_step(model, tok, pos))), pos + 1
        print(json.dumps({"config": config, "scheme": scheme, "layers": layers,
                          "ms_per_token": (time.perf_counter() - t0) / 64 * 1e3}), flush=True)
        del ops, model
        cupy.get_default_memory_pool().free_all_blocks()


def ncu(config: str, scheme: str) -> None:
    ops, model, tok, pos = build(config, scheme, 2, False)
    cupy.cuda.Device().synchronize()
    cupy.cuda.profiler.start()
    ops.decode_step(model, tok, pos)
    cupy.cuda.Device().synchronize()
    cupy.cuda.profiler.stop()


if __name__ == "__main__":
    mode, config, scheme = sys.argv[1:4]
    (steps if mode == "steps" else ncu)(config, scheme)
