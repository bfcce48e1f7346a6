"""Batch-1 CUDA-graph decode (lowbit.runtime.bench_decode, random weights, real shapes) under several environments,
one subprocess a run, the environments alternated for ROUNDS rounds: a same-machine A/B of compile-time knobs
(LOWBIT_GEMV_UNROLL, LOWBIT_GEMV_MIN_BLOCKS, ...) that every GEMV build reads (lowbit.kernels.gemv.compile_defines).
Usage: python benchmarks/decode_env_ab.py OUT.jsonl ROUNDS CONFIG:SCHEME "" "LOWBIT_GEMV_UNROLL=3" ...
("" = the defaults; several assignments in one argument separated by spaces). Odd rounds run the environments
in reverse order, so that an even number of rounds gives each the first slot equally often."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def one(config: str, scheme: str) -> None:
    import cupy

    from lowbit.runtime.bench_decode import bench_decode

    r = bench_decode(config, scheme)
    print(json.dumps({"gpu": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "config": config,
                      "scheme": scheme, "decode_tok_s": r["decode_tok_s"], "pct_roofline": r["pct_roofline"]}))


def main() -> None:
    if sys.argv[1] == "--one":
        one(sys.argv[2], sys.argv[3])
        return
    path, rounds, (config, scheme), envs = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(":"), sys.argv[4:]
    with open(path, "a") as out:
        for rnd in range(rounds):
            # odd rounds run the environments in reverse order: the first run of a round was measured ~1 % slow
            # (an A/B of two identical builds, H200, 2026-11-28: 449.2 / 451.7 against 454.6 / 454.3 tok/s)
            for spec in (envs if rnd % 2 == 0 else envs[::-1]):
                extra = dict(kv.split("=", 1) for kv in spec.split())
                r = subprocess.run([sys.executable, __file__, "--one", config, scheme], env={**os.environ, **extra},
                                   capture_output=True, text=True)
                lines = r.stdout.strip().splitlines()
                row = json.loads(lines[-1]) if lines else {"error": r.stderr[-400:]}
                row |= {"round": rnd, "env": spec}
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")
                out.flush()


if __name__ == "__main__":
    main()
