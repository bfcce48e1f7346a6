"""`lowbit inspect`: what is in a checkpoint."""

from __future__ import annotations

import json

import click


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return str(n)


@click.command(help="Show what is in a checkpoint: scheme, per-module table, sizes, ratio.")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@click.option("--all", "show_all", is_flag=True, help="List every module (default: the first 40).")
def inspect(path, as_json, show_all):
    from lowbit.quantize.report import inspect_checkpoint

    info = inspect_checkpoint(path)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    scheme = info["scheme"] or "unquantized"
    click.echo(f"{info['path']}: {info['model_type']}, scheme {scheme} {info['options'] or ''}".rstrip())
    click.echo(f"{info['tensors']} tensors in {len(info['files'])} files, {_human(info['bytes'])} "
               f"(BF16 equivalent {_human(info['bf16_bytes'])}, ratio {info['ratio']}x)")
    click.echo("modules by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(info["counts"].items())))
    rows = info["modules"] if show_all else info["modules"][:40]
    width = max(len(r["module"]) for r in rows)
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        click.echo(f"  {r['module']:<{width}}  {r['kind']:<10} {shape:>12}  {_human(r['bytes']):>10}")
    if len(rows) < len(info["modules"]):
        click.echo(f"  ... {len(info['modules']) - len(rows)} more (--all)")
