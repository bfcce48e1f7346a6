"""GEMV benchmark: every scheme on the Qwen shapes at M=1 and M=8; prints the table, writes JSON and a
markdown summary (the bars of issue 3 checked). Usage: python benchmarks/gemv.py [OUT_DIR]."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lowbit.cli.bench import format_table
from lowbit.verify.bench import DEFAULT_SHAPES, parse_shapes, run_bench
from lowbit.verify.bench_gemv import gemv_suite


def summary(result: dict) -> str:
    rows = [r for r in result["rows"] if r["suite"] == "gemv"]
    by = {(r["scheme"], r["act"], r["n"], r["k"], r["m"]): r for r in rows}
    out = [f"GPU: {result['gpu']}; device-to-device copy {result['copy_gbs']:.0f} GB/s", "",
           "| scheme/act | N x K | M=1 us | GB/s | % copy | vs cuBLAS | M=8 us | M=8/M=1 |", "|---|---|---|---|---|---|---|---|"]
    for (s, a, n, k, m), r in by.items():
        if m != 1:
            continue
        r8 = by.get((s, a, n, k, 8))
        ratio = f"{r8['us'] / r['us']:.2f}" if r8 else "-"
        out.append(f"| {s}/{a} | {n}x{k} | {r['us']} | {r['gbs']} | {r['pct_copy']}% | "
                   f"{r['speedup_vs_cublas_bf16']}x | {r8['us'] if r8 else '-'} | {ratio} |")
    return "\n".join(out)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
    result = run_bench(parse_shapes(DEFAULT_SHAPES), [1, 8], suites=[gemv_suite])
    print(format_table(result))
    md = summary(result)
    print(md)
    (out / "gemv_bench.json").write_text(json.dumps(result, indent=1))
    (out / "gemv_bench.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
