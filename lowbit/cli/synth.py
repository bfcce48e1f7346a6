"""`lowbit synth`: write a BF16 checkpoint with random weights in the real HF layout."""

from __future__ import annotations

import json

import click

from lowbit.synth_presets import ARCHS, preset_names


@click.command(help="Write a BF16 checkpoint with random weights and real shapes "
                    f"(presets: {json.dumps(preset_names())}).")
@click.option("--arch", type=click.Choice(ARCHS), required=True)
@click.option("--preset", default="tiny", show_default=True, help="tiny, or a real model's shapes")
@click.option("--layers", type=int, default=None, help="Override the number of decoder layers.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-shard-size", default=None, help="e.g. 5GB (default: 2 shards for tiny, 5GB else)")
@click.option("--dtype", type=click.Choice(["bf16", "f16", "f32"]), default="bf16", show_default=True)
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False))
def synth(arch, preset, layers, seed, max_shard_size, dtype, out):
    from lowbit.synth import write_synthetic

    path = write_synthetic(out, arch, preset=preset, layers=layers, seed=seed,
                           max_shard_size=max_shard_size, dtype=dtype)
    size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    click.echo(f"wrote {arch}/{preset} to {path} ({size / 1e6:.1f} MB of safetensors)")
