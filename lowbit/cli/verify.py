"""`lowbit verify CKPT [--against SRC] [--json]`: prove every quantized tensor; exit 0 pass, 1 fail, 2 bad input."""

from __future__ import annotations

import json

import click

from lowbit.cli.errors import EXIT_CHECK_FAILED


def format_report(report) -> str:
    rows = report.worst_first()
    head = ("verdict", "check", "target", "value", "limit", "detail")
    table = [head] + [("ok" if r.ok else "FAIL", r.check, r.target, "" if r.value is None else f"{r.value:g}",
                       "" if r.limit is None else f"{r.limit:g}", r.detail) for r in rows]
    widths = [min(max(len(row[i]) for row in table), 60) for i in range(len(head) - 1)]
    lines = ["  ".join(c[:60].ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1] for row in table]
    failed = sum(not r.ok for r in rows)
    scheme = f"{report.scheme} {report.opts or ''}".strip()
    lines.append("")
    lines.append(f"{report.path}: {scheme}: {len(rows)} checks, {failed} failed"
                 + (f"; kernels ran on {report.gpu}" if report.kernel_ran else ""))
    lines += report.notes
    return "\n".join(lines)


@click.command("verify")
@click.argument("ckpt", type=click.Path(exists=True, file_okay=False))
@click.option("--against", type=click.Path(exists=True, file_okay=False), default=None,
              help="The BF16 source checkpoint: also check the quantization error (SQNR floors).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@click.option("--gpu/--no-gpu", "gpu", default=None, help="Require (or skip) the GPU kernel checks; default: auto.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random activations.")
def verify(ckpt: str, against: str | None, as_json: bool, gpu: bool | None, seed: int) -> None:
    """Verify a converted checkpoint: hashes, structure, error vs source, GPU kernels vs reference."""
    from lowbit.verify.runner import verify_checkpoint

    report = verify_checkpoint(ckpt, against=against, use_gpu="auto" if gpu is None else gpu, seed=seed)
    click.echo(json.dumps(report.as_dict(), indent=1) if as_json else format_report(report))
    if not report.ok:
        raise click.exceptions.Exit(EXIT_CHECK_FAILED)
