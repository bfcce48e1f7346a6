"""CPU: the GEMM/MoE benchmark tables put each measured figure in its row and column."""

from __future__ import annotations

from lowbit.verify import bench_gemm as bg


def test_gemm_table_places_values():
    rows = [{"model": "m", "layer": "up", "m": 16, "n": 256, "k": 512, "path": p, "tflops": v}
            for p, v in (("cublas_bf16", 10.4), ("fp8-block:fp8", 21.6))]
    rows.append({"model": "m", "layer": "up", "m": 64, "n": 256, "k": 512, "path": "cublas_bf16", "tflops": 40.0})
    lines = bg.format_gemm_table(rows).splitlines()
    assert lines[0] == "| shape | M | cublas_bf16 | fp8-block:fp8 |"
    assert lines[2] == "| m up 256x512 | 16 | 10 | 22 |"
    assert lines[3] == "| m up 256x512 | 64 | 40 | - |"  # a path not measured at that M


def test_moe_table_ratio_to_roofline():
    rows = [{"scheme": "fp8-block", "act": "bf16", "tokens": 1, "eager_us": 80.0, "graph_us": 27.0,
             "roofline_us": 9.0},
            {"scheme": "fp8-block", "act": "fp8", "tokens": 64, "eager_us": 400.0, "roofline_us": 9.0}]
    lines = bg.format_moe_table(rows).splitlines()
    assert lines[2] == "| fp8-block | bf16 | 1 | 80.0 | 27.0 | 9.0 | 3.00 |"
    assert lines[3] == "| fp8-block | fp8 | 64 | 400.0 | - | 9.0 | - |"
