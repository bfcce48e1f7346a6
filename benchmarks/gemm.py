"""GEMM benchmark: TFLOPS per scheme and M on Qwen-7B/72B and Qwen3-30B-A3B shapes beside cuBLAS BF16 and
torch _scaled_mm FP8 (per-tensor and block-scaled) in the same run; prints a table, writes JSON + markdown.
Usage: python benchmarks/gemm.py [OUT_DIR] [--quick]"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lowbit.verify.bench_gemm import GEMM_MS, GEMM_SHAPES, gemm_rows

PEER = "cublas_bf16"


def table(rows: list[dict]) -> str:
    paths = list(dict.fromkeys(r["path"] for r in rows))
    by = {(r["model"], r["layer"], r["M"], r["path"]): r for r in rows}
    head = "| model layer | M | " + " | ".join(paths) + " |"
    out = [head, "|" + "---|" * (len(paths) + 2)]
    for key in dict.fromkeys((r["model"], r["layer"], r["M"], r["N"], r["K"]) for r in rows):
        model, layer, m, n, k = key
        cells = []
        for p in paths:
            r = by.get((model, layer, m, p))
            cells.append(f"{r['tflops']:.0f}" if r else "-")
        out.append(f"| {model} {layer} {n}x{k} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    out = Path(args[0]) if args else Path(".")
    quick = "--quick" in sys.argv
    import cupy

    gpu = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    shapes = GEMM_SHAPES[::2] if quick else GEMM_SHAPES
    rows = gemm_rows(shapes=shapes, ms=GEMM_MS, iters=10 if quick else 20)
    md = f"GPU: {gpu} (TFLOPS, median of CUDA-event timings)\n\n" + table(rows)
    print(md)
    (out / "gemm_bench.json").write_text(json.dumps({"gpu": gpu, "rows": rows}, indent=1))
    (out / "gemm_bench.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
