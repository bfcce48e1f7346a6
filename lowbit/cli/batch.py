"""`lowbit batch MANIFEST.toml`: many models x schemes, N workers, resumable, JSON report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


class _Bars:
    """tqdm rendering of batch events: an overall bar (position 0) and one line per worker."""

    def __init__(self, workers: int, quiet: bool, file=None, disable=None):
        self.workers, self.quiet = workers, quiet
        self.file = file or sys.stderr
        self.kw = {"file": self.file, "disable": disable, "dynamic_ncols": True}  # disable=None: off if no tty
        self.total = None
        self.slots: dict = {}
        self.jobs: list = []

    def __call__(self, kind, index, slot, data):
        if self.quiet:
            return
        from tqdm import tqdm

        if kind == "plan":
            self.jobs = data["jobs"]
            self.total = tqdm(total=len(self.jobs), initial=len(self.jobs) - len(data["todo"]),
                              desc="batch", unit="job", position=0, **self.kw)
        elif kind == "start":
            bar = tqdm(total=None, desc=f"[{slot}] {self.jobs[index].label}", unit="B", unit_scale=True,
                       position=1 + (slot or 0), leave=False, **self.kw)
            self.slots[slot] = bar
        elif kind == "progress" and slot in self.slots:
            done, total = data
            bar = self.slots[slot]
            if total and bar.total != total:
                bar.total = total
            bar.n = done or 0
            bar.refresh()
        elif kind == "done":
            if slot in self.slots:
                self.slots.pop(slot).close()
            self.total.update(1)
            if data.get("status") == "failed":
                self.total.write(f"failed: {self.jobs[index].label}: {data.get('error')}", file=self.file)
        elif kind == "push":
            self.total.write(f"pushing {Path(data['output']).name} ...", file=self.file)

    def close(self):
        for bar in self.slots.values():
            bar.close()
        if self.total is not None:
            self.total.close()


@click.command("batch")
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--workers", type=int, default=None, help="Worker processes (default: the manifest's).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: spawned processes on this machine; ray: Ray tasks (pip install "
                   "lowbit[ray]; sources and output_root on storage every node sees).")
@click.option("--ray-address", default=None, help="ray.init address (e.g. auto, ray://head:10001).")
@click.option("--push-to-hub", "push_org", default=None, metavar="ORG",
              help="Upload each finished checkpoint to ORG/<name> with a generated model card.")
@click.option("--dry-run-push", "dry_run", is_flag=True,
              help="With --push-to-hub: write what would be uploaded under OUTPUT_ROOT/hub-dry-run.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the table.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def batch(ctx, manifest, workers, executor, ray_address, push_org, dry_run, as_json, quiet):
    """Convert every source x scheme of MANIFEST.toml; exit 0 only when no job failed.

    \b
    output_root = "out"        # each output: out/<source name>-<scheme>
    workers = 4
    verify = true              # lowbit verify --against the source, per output
    [[job]]
    source = "models/llama"    # a directory, or org/name@revision
    schemes = ["fp8-block", "nvfp4", "int4"]
    group_size = 64            # any `lowbit quantize` option by name

    The report goes to out/batch-report.json. A re-run skips outputs whose lowbit.json
    sha256s verify and resumes interrupted conversions at the shard level.
    """
    from lowbit.batch import load_manifest, run_batch, summary_table
    from lowbit.errors import LowbitError

    m = load_manifest(manifest)
    if dry_run and not push_org:
        raise LowbitError("--dry-run-push needs --push-to-hub ORG (the repos it would create)")
    bars = _Bars(workers or m.workers, quiet or as_json)
    try:
        report = run_batch(m, executor=executor, workers=workers, ray_address=ray_address,
                           on_event=bars, push_org=push_org,
                           dry_run_dir=Path(m.output_root) / "hub-dry-run" if dry_run else None)
    finally:
        bars.close()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(summary_table(report))
        click.echo(f"report: {report.path}" if report.path else report.extra["report_error"])
    ctx.exit(report.exit_code)
