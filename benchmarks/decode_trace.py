"""Kernel timeline of CUDA-graph decode steps (torch.profiler / CUPTI), 4 layers of real shapes, random weights.
Prints, for the last step, each kernel's start (us from the step's first kernel), duration and gap to the end
of the kernels before it (negative: it started early, PDL), and writes the chrome traces and the rows to OUT.
Usage: python benchmarks/decode_trace.py OUT_DIR qwen3-30b-a3b:fp8-block,mixtral-8x7b:int4  (needs torch)"""
import json
import sys

import cupy
import numpy as np

from lowbit.runtime.bench_decode import preset_config, random_cuda_ops
from lowbit.runtime.config import from_dict
from lowbit.runtime.model import Transformer


def main():
    import torch
    from torch.profiler import ProfilerActivity, profile

    out = sys.argv[1]
    torch.zeros(1, device="cuda")
    res = {}
    for config, scheme in [c.split(":") for c in sys.argv[2].split(",")]:
        d = preset_config(config)
        d["num_hidden_layers"] = 4
        cfg = from_dict(d, config)
        ops = random_cuda_ops(cfg, scheme)
        model = Transformer(cfg, ops, max_context=512)
        model.forward(cupy.asarray(np.random.default_rng(0).integers(0, cfg.vocab, 32)), 0, last_only=True)
        tok, pos = 1, 32
        for _ in range(6):
            tok, pos = int(cupy.argmax(ops.decode_step(model, tok, pos))), pos + 1
        cupy.cuda.runtime.deviceSynchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                tok, pos = int(cupy.argmax(ops.decode_step(model, tok, pos))), pos + 1
            cupy.cuda.runtime.deviceSynchronize()
        path = f"{out}/trace_{config}_{scheme}.json"
        prof.export_chrome_trace(path)
        ev = [e for e in json.load(open(path))["traceEvents"] if e.get("cat") == "kernel"]
        ev.sort(key=lambda e: e["ts"])
        # the last step: from the last embedding gather (cupy_take) on
        starts = [i for i, e in enumerate(ev) if "take" in e["name"]]
        step = ev[starts[-1]:] if starts else ev
        t0 = step[0]["ts"]
        rows, prev_end = [], t0
        for e in step:
            rows.append((round(e["ts"] - t0, 2), round(e["dur"], 2), round(e["ts"] - prev_end, 2), e["name"][:60]))
            prev_end = max(prev_end, e["ts"] + e["dur"])
        res[f"{config}:{scheme}"] = rows
        print(f"== {config} {scheme}: step {prev_end - t0:.1f} us over {len(step)} kernels")
        for r in rows:
            print(f"{r[0]:9.2f} {r[1]:8.2f} {r[2]:7.2f}  {r[3]}")
        ops = model = None
        cupy.get_default_memory_pool().free_all_blocks()
    json.dump(res, open(f"{out}/trace_rows.json", "w"), indent=1)


main()
