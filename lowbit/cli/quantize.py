"""`lowbit quantize`: convert a BF16 checkpoint (directory or hub repo id) to fp8-block, nvfp4 or int4."""

from __future__ import annotations

import json

import click


@click.command(help="Convert a BF16 checkpoint (directory or org/name[@revision]) to fp8-block, "
                    "nvfp4 or int4 safetensors.")
@click.argument("src")
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False))
@click.option("--scheme", type=click.Choice(["fp8-block", "nvfp4", "int4"]), required=True)
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="128", show_default=True,
              help="int4 group size along K.")
@click.option("--asymmetric", is_flag=True, help="int4 with zero points.")
@click.option("--ignore", multiple=True, metavar="REGEX", help="Keep matching modules BF16 (repeatable).")
@click.option("--generic", is_flag=True, help="Unknown architecture: quantize 2-D *proj / w1..w3 weights.")
@click.option("--max-shard-size", default="5GB", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty OUT.")
@click.option("--no-resume", is_flag=True, help="Ignore finished shards of an interrupted run.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def quantize(src, out, scheme, group_size, asymmetric, ignore, generic, max_shard_size, overwrite,
             no_resume, device, quiet, as_json):
    from tqdm import tqdm

    from lowbit.quantize.convert import convert

    bar = None

    def progress(n: int, total: int) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"{scheme}", leave=False)
        bar.update(n)

    try:
        s = convert(src, out, scheme, group_size=int(group_size), asymmetric=asymmetric, ignore=ignore,
                    generic=generic, device=device, max_shard_size=max_shard_size, overwrite=overwrite,
                    resume=not no_resume, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        click.echo(json.dumps(s.to_json(), indent=2))
        return
    click.echo(f"{scheme}: {s.quantized} tensors quantized, {len(s.kept)} kept as in the source, "
               f"{s.bytes_in / 1e6:.1f} MB -> {s.bytes_out / 1e6:.1f} MB in {s.seconds:.2f}s "
               f"({s.mb_per_s:.0f} MB/s, {s.device}) -> {s.out}")
    linear_kept = [(n, why) for n, why in s.kept if why not in ("bias", "norm", "embedding", "lm_head",
                                                                  "MoE router")]
    for name, why in linear_kept[:20]:
        click.echo(f"  kept BF16: {name}: {why}")
    if len(linear_kept) > 20:
        click.echo(f"  ... and {len(linear_kept) - 20} more kept (see lowbit.json)")
    for w in s.warnings:
        click.echo(f"  warning: {w}", err=True)
