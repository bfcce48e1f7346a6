"""MoE benchmark, Qwen3-30B-A3B shapes (128 experts, top 8, hidden 2048, expert 768): decode (1 token,
eager and CUDA-graph) against the time to read the 8 chosen experts at copy bandwidth, and prefill.
Usage: python benchmarks/moe.py [OUT_DIR]"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lowbit.verify.bench_gemm import moe_rows


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
    import cupy

    gpu = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    rows = []
    for scheme in ("fp8-block", "nvfp4", "int4", "bf16"):
        rows += moe_rows(scheme=scheme, tokens=(1, 4, 64, 1024, 4096) if scheme == "fp8-block" else (1, 1024))
    lines = [f"GPU: {gpu}; copy {rows[0]['copy_GBps']:.0f} GB/s", "",
             "| scheme | act | tokens | eager us | graph us: fused (unfused route / experts = gate_up + down) | roofline us (8 experts @ copy) | "
             "graph/roofline | TFLOPS |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = r.get("graph_us")
        ratio = f"{g / r['roofline_us']:.2f}" if g else "-"
        gs = (f"{g:.1f} ({r['graph_route_us']:.1f} / {r['graph_experts_us']:.1f} = {r['graph_gate_up_us']:.1f} + "
              f"{r['graph_experts_us'] - r['graph_gate_up_us']:.1f})") if g else "-"
        lines.append(f"| {r['scheme']} | {r['act']} | {r['tokens']} | {r['eager_us']:.1f} | "
                     f"{gs} | {r['roofline_us']:.1f} | {ratio} | {r['flops_tflops']:.1f} |")
    md = "\n".join(lines)
    print(md)
    (out / "moe_bench.json").write_text(json.dumps({"gpu": gpu, "rows": rows}, indent=1))
    (out / "moe_bench.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
