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


def test_suites_wrap_rows(monkeypatch):
    from types import SimpleNamespace

    seen = {}

    def fake_gemm_rows(shapes, ms, ours, iters):
        seen["ours"], seen["iters"] = ours, iters
        return [{"model": "m", "layer": "up", "M": 16, "N": 256, "K": 512, "path": "int4:bf16", "us": 1.234,
                 "tflops": 3.456},
                {"model": "m", "layer": "up", "M": 16, "N": 256, "K": 512, "path": "cublas_bf16", "us": 2.0,
                 "tflops": 2.1}]

    monkeypatch.setattr(bg, "gemm_rows", fake_gemm_rows)
    monkeypatch.setattr(bg, "moe_rows", lambda scheme, tokens: [{"scheme": scheme, "act": "bf16", "tokens": 1,
                                                                  "eager_us": 1.0, "roofline_us": 2.0}])
    ctx = SimpleNamespace(schemes=["int4"], iters=50, gpu="GPU-X")
    rows = bg.gemm_suite(ctx)
    assert seen == {"ours": (("int4", "bf16"),), "iters": 20}
    assert rows[0]["scheme"] == "int4" and rows[0]["act"] == "bf16" and rows[0]["tflops"] == 3.5
    assert rows[1]["scheme"] == "cublas_bf16" and rows[1]["act"] == "-" and rows[1]["gpu"] == "GPU-X"
    moe = bg.moe_suite(ctx)
    assert [r["scheme"] for r in moe] == ["int4"] and moe[0]["suite"] == "moe"


def test_gemm_bars_against_the_peer_of_the_same_run():
    def row(m, path, tflops):
        return {"model": "m", "layer": "up", "m": m, "n": 256, "k": 512, "path": path, "tflops": tflops}

    rows = [row(4096, "torch_fp8_tensor", 1000.0), row(4096, "fp8-block:fp8", 600.0),  # 60 %: met
            row(8192, "torch_fp8_tensor", 1000.0), row(8192, "fp8-block:fp8", 599.0),  # just under
            row(1024, "fp8-block:fp8", 500.0),  # M < 4096: no W8A8 bar
            row(1024, "cublas_bf16", 500.0), row(1024, "int4:bf16", 400.0), row(1024, "nvfp4:bf16", 300.0),
            row(64, "cublas_bf16", 100.0), row(64, "int4:bf16", 100.0), row(64, "fp8-block:bf16", 120.0),
            row(256, "int4:bf16", 1.0)]  # no peer measured at that M: left out
    text = bg.format_gemm_bars(rows)
    lines = text.splitlines()
    assert "W8A8 >= 60 % of cuBLASLt FP8 at M >= 4096: met at 1 of 2 points" in lines
    assert "| m up 256x512 | 4096 | fp8-block:fp8 | 60 % | yes |" in lines
    assert "| m up 256x512 | 8192 | fp8-block:fp8 | 60 % | no |" in lines
    assert "W8A16 / W4A16 >= 70 % of cuBLAS BF16 at M >= 1024: met at 1 of 2 points" in lines
    assert "| m up 256x512 | 1024 | nvfp4:bf16 | 60 % | no |" in lines
    assert "W8A16 / W4A16 faster than cuBLAS BF16 at M <= 64: met at 1 of 2 points" in lines  # equal is not faster
    assert "| m up 256x512 | 64 | int4:bf16 | 100 % | no |" in lines
    assert "256 |" not in text


def test_gemv_bars_count_each_point():
    from lowbit.verify.bench_gemv import format_gemv_bars

    def row(scheme, act, n, k, m, us, pct, speedup):
        return {"suite": "gemv", "scheme": scheme, "act": act, "n": n, "k": k, "m": m, "us": us, "pct_copy": pct,
                "speedup_vs_cublas_bf16": speedup}

    rows = [row("fp8-block", "bf16", 8192, 29568, 1, 68.2, 84.0, 1.71),
            row("fp8-block", "bf16", 8192, 29568, 8, 70.0, 81.9, 1.70),
            row("int4", "bf16", 8192, 29568, 1, 57.3, 51.2, 2.11),
            row("int4", "bf16", 8192, 29568, 8, 80.0, 36.7, 1.5),
            row("bf16", "bf16", 29568, 8192, 1, 122.3, 94.0, 0.91),
            row("int4", "bf16", 4096, 4096, 1, 10.2, 71.0, 1.55),
            row("cublas-bf16", "bf16", 8192, 29568, 1, 116.4, 98.0, 1.0)]  # a peer: never a point
    lines = format_gemv_bars(rows).splitlines()
    assert ">= 85 % of copy at N*K >= 8192^2: met at 1 of 3 points" in lines
    assert "| bf16 | bf16 | 29568x8192 | 1 | 94.0 % of copy | yes |" in lines
    assert ">= 70 % of copy at 4096x4096: met at 1 of 1 points" in lines
    assert "FP8 >= 1.8x cuBLAS BF16 at N*K >= 8192^2: met at 0 of 1 points" in lines
    assert "4-bit >= 3x cuBLAS BF16 at N*K >= 8192^2: met at 0 of 1 points" in lines
    assert "M = 8 <= 1.3x the time of M = 1: met at 1 of 2 points" in lines
    assert "| int4 | bf16 | 8192x29568 | 8 | 1.4 x M=1 | no |" in lines
    assert not any("cublas-bf16" in ln for ln in lines)


def test_moe_bars_from_the_one_token_graph_rows():
    # this session's H200 figures (benchmarks/moe_h200_2026-11-27_session12.json): fp8 24.2 us against 9.0 us
    rows = [{"scheme": "fp8-block", "act": "bf16", "tokens": 1, "graph_us": 24.2, "roofline_us": 9.03},
            {"scheme": "fp8-block", "act": "bf16", "tokens": 4, "graph_us": 66.7, "roofline_us": 9.03},
            {"scheme": "bf16", "act": "bf16", "tokens": 1, "graph_us": 12.0, "roofline_us": 9.0},
            {"scheme": "int4", "act": "bf16", "tokens": 64, "eager_us": 300.0, "roofline_us": 4.7}]
    lines = bg.format_moe_bars(rows).splitlines()
    assert lines[0].startswith("MoE decode step within 1.5x")
    assert lines[3:] == ["| fp8-block | bf16 | 2.68x | no |", "| bf16 | bf16 | 1.33x | yes |"]
    assert bg.format_moe_bars(rows[3:]) == ""


def test_decode_bar_line():
    from lowbit.runtime.bench_decode import format_decode_bar

    # this session's final H200 figures (benchmarks/runtime_decode_h200_2026-11-27_session12_final.jsonl)
    r = {"config": "qwen3-30b-a3b", "scheme": "fp8-block", "gpu": "NVIDIA H200", "decode_tok_s": 433.5,
         "pct_roofline": 34.6, "roofline_tok_s": 1252.0, "active_mb_per_token": 3399.1, "copy_gbs": 4254.0}
    line = format_decode_bar(r)
    assert "433.5 tok/s, 34.6 % of the roofline (1252 tok/s" in line and line.endswith(": not met")
    assert format_decode_bar(dict(r, pct_roofline=42.4, decode_tok_s=264.8)).endswith(": met")
    assert format_decode_bar(dict(r, pct_roofline=42.2, decode_tok_s=242.3)).endswith(": not met")  # under 250
