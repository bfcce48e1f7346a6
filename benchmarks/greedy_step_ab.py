"""Same-run A/B of the greedy decode loop: the argmax inside the decode step's CUDA graph (decode_step(...,
greedy=True), what lowbit generate and bench_decode run for greedy decoding; "fill": with the host filling the
token and position buffers every step, as before the step left them on the device) against the argmax launched by
the host after the step (int(cupy.argmax(decode_step(...)))), on one model instance, alternating, 128 tokens each.
Usage: python benchmarks/greedy_step_ab.py OUT.jsonl [CONFIG:SCHEME,...]"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    import cupy
    import numpy as np

    from lowbit.runtime.bench_decode import preset_config, random_cuda_ops
    from lowbit.runtime.config import from_dict
    from lowbit.runtime.model import Transformer

    cases = [c.split(":") for c in (sys.argv[2] if len(sys.argv) > 2 else
                                    "smollm2-135m:bf16,qwen3-30b-a3b:fp8-block,mixtral-8x7b:int4").split(",")]
    gpu = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    with open(sys.argv[1], "a") as out:
        for config, scheme in cases:
            cfg = from_dict(preset_config(config), config)
            ops = random_cuda_ops(cfg, scheme)
            model = Transformer(cfg, ops, max_context=512)
            logits = model.forward(cupy.asarray(np.random.default_rng(0).integers(0, cfg.vocab, 32)), 0,
                                   last_only=True)[0]
            tok0 = int(cupy.argmax(logits))

            def run(greedy, n: int) -> float:  # greedy: True, False or "fill" (host fills token and position)
                tok, pos = tok0, 32
                t0 = time.perf_counter()
                for _ in range(n):
                    if greedy:
                        if greedy == "fill":
                            ops.decoder.held = None
                        tok = ops.decode_step(model, tok, pos, greedy=True)
                    else:
                        tok = int(cupy.argmax(ops.decode_step(model, tok, pos)))
                    pos += 1
                return n / (time.perf_counter() - t0)

            run(True, 8), run(False, 8)  # capture both graphs
            for rnd in range(3):
                for greedy in (True, "fill", False):
                    row = {"gpu": gpu, "config": config, "scheme": scheme, "round": rnd,
                           "argmax_in_graph": greedy, "decode_tok_s": run(greedy, 128)}
                    print(json.dumps(row), flush=True)
                    out.write(json.dumps(row) + "\n")
            model = ops = None
            cupy.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main()
