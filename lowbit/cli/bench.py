"""`lowbit bench`: time the kernels on the GPU against cuBLAS BF16 and torch FP8, as a table and JSON."""

from __future__ import annotations

import json

import click

from lowbit.errors import LowbitError


def _ints(spec: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise LowbitError(f"--{what}: expected comma-separated integers like 1,8, found {spec!r}") from None
    if not vals or any(v < 1 or v > 16 for v in vals):
        raise LowbitError(f"--{what}: values must be in 1..16, found {spec!r}")
    return vals


def format_table(result: dict) -> str:
    head = f"{result['gpu']}  device-to-device copy {result['copy_gbs']:.0f} GB/s"
    cols = ("scheme", "act", "n", "k", "m", "us", "gbs", "pct_copy", "speedup_vs_cublas_bf16")
    lines = [head, "  ".join(f"{c:>10}" for c in cols)]
    for r in result["rows"]:
        lines.append("  ".join(f"{str(r.get(c, '')):>10}" for c in cols))
    return "\n".join(lines)


@click.command("bench")
@click.option("--shapes", default="qwen-7b,qwen-72b,qwen3-30b-a3b", show_default=True,
              help="Presets (qwen-7b, qwen-72b, qwen3-30b-a3b) or NxK, comma-separated.")
@click.option("--batch", "batch", default="1,8", show_default=True, help="Batch sizes M (1..16).")
@click.option("--schemes", default=None, help="Only these weight schemes (bf16,fp8-block,nvfp4,int4).")
@click.option("--iters", default=50, show_default=True, help="Timed launches per measurement (median).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write rows here.")
@click.option("--decode", is_flag=True, help="Batch-1 decode of a whole model (lowbit.runtime.bench_decode).")
@click.option("--config", "decode_config", default="qwen3-30b-a3b", show_default=True, help="--decode: model preset.")
@click.option("--scheme", "decode_scheme", default="fp8-block", show_default=True, help="--decode: weight scheme.")
@click.option("--random-weights", is_flag=True, help="--decode: random weights made on the GPU (the only mode).")
@click.option("--gemm", is_flag=True, help="Prefill GEMM suite: TFLOPS per scheme and M vs cuBLAS BF16 / torch FP8.")
@click.option("--moe", is_flag=True, help="MoE layer suite (Qwen3-30B-A3B shapes): decode vs copy roofline, prefill.")
def bench(shapes: str, batch: str, schemes: str | None, iters: int, json_path: str | None, decode: bool,
          decode_config: str, decode_scheme: str, random_weights: bool, gemm: bool = False, moe: bool = False) -> None:
    """Benchmark the GEMV kernels (and registered suites) on the GPU."""
    if decode:
        from lowbit.runtime.bench_decode import bench_decode, format_decode_bar

        r = bench_decode(decode_config, decode_scheme)
        click.echo(json.dumps(r, indent=1))
        click.echo(format_decode_bar(r))
        if json_path:
            with open(json_path, "w") as f:
                json.dump(r, f, indent=1)
        return
    from lowbit.verify.bench import parse_shapes, run_bench

    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001
        raise LowbitError(f"lowbit bench needs a CUDA GPU and cupy; none usable here ({e})") from None
    chosen = [s.strip() for s in schemes.split(",")] if schemes else None
    if gemm or moe:  # lowbit.verify.bench_gemm suites (their own shapes and M values)
        from lowbit.verify import bench_gemm as bg

        suites = [s for s, on in ((bg.gemm_suite, gemm), (bg.moe_suite, moe)) if on]
        result = run_bench([], [], chosen, iters, suites=suites)
        click.echo(f"{result['gpu']}  device-to-device copy {result['copy_gbs']:.0f} GB/s")
        if gemm:
            gemm_rows = [r for r in result["rows"] if r.get("suite") == "gemm"]
            click.echo(bg.format_gemm_table(gemm_rows))
            click.echo(bg.format_gemm_bars(gemm_rows))
        if moe:
            moe_rows = [r for r in result["rows"] if r.get("suite") == "moe"]
            click.echo(bg.format_moe_table(moe_rows))
            click.echo(bg.format_moe_bars(moe_rows))
        if json_path:
            with open(json_path, "w") as f:
                json.dump(result, f, indent=1)
        return
    result = run_bench(parse_shapes(shapes), _ints(batch, "batch"), chosen, iters)
    click.echo(format_table(result))
    from lowbit.verify.bench_gemv import format_gemv_bars

    click.echo(format_gemv_bars(result["rows"]))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
