"""Conversion throughput (MB/s of BF16 read) and peak RSS per scheme, on a generated checkpoint.

    python benchmarks/convert.py --arch llama --preset llama3-8b --layers 2 [--device cpu|cuda]
        [--schemes fp8-block,nvfp4,int4] [--workdir DIR] [--json out.json]

Each conversion runs in a fresh child process that reports: seconds, MB/s of BF16 read, and its
peak RSS (ru_maxrss) minus its RSS right before `convert` (the interpreter + imports), so the
figure is what the conversion itself adds; also its CPU seconds (user + sys, all threads) and the
1-minute load average before and after (the machine may be shared: MB per CPU-second is the
figure that does not depend on other load). The page cache is not RSS (we read with pread and
write with pwrite, no long-lived mmaps). The source is converted once before timing so both runs
read from a warm page cache (reported figures are compute-bound, not disk-bound).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, time, psutil
from lowbit.quantize.convert import convert
src, out, scheme, device, extra = sys.argv[1:6]
base = psutil.Process().memory_info().rss
load0 = os.getloadavg()[0]
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
s = convert(src, out, scheme, device=device, overwrite=True, resume=False, **json.loads(extra))
dt = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
peak = r1.ru_maxrss * 1024
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
print(json.dumps({"scheme": scheme, "device": s.device, "seconds": dt, "bytes_in": s.bytes_in,
                  "bytes_out": s.bytes_out, "mb_per_s": s.bytes_in / 1e6 / dt,
                  "rss_base_mb": base / 1e6, "rss_peak_mb": peak / 1e6,
                  "rss_added_mb": (peak - base) / 1e6, "cpu_s": cpu,
                  "mb_per_cpu_s": s.bytes_in / 1e6 / cpu, "load_before": load0,
                  "load_after": os.getloadavg()[0]}))
"""


def run_one(src: Path, out: Path, scheme: str, device: str, extra: dict) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), scheme, device, json.dumps(extra)],
                       capture_output=True, text=True, check=False)
    if p.returncode:
        raise SystemExit(f"{scheme} failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--preset", default="llama3-8b")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--schemes", default="fp8-block,nvfp4,int4")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the generated source")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from lowbit.synth import write_synthetic

    work = Path(args.workdir or tempfile.mkdtemp(prefix="lowbit-bench-"))
    src = work / f"src-{args.arch}-{args.preset}-{args.layers}"
    if not (src / "config.json").exists():
        t = time.perf_counter()
        write_synthetic(src, args.arch, preset=args.preset, layers=args.layers)
        print(f"generated {src} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    rows = []
    for scheme in args.schemes.split(","):
        extra = {"group_size": 128} if scheme == "int4" else {}
        out = work / f"out-{scheme}"
        run_one(src, out, scheme, args.device, extra)  # warm the page cache
        r = run_one(src, out, scheme, args.device, extra)
        rows.append(r)
        print(f"{scheme:10s} {args.device:5s} {r['mb_per_s']:8.0f} MB/s  {r['seconds']:7.2f} s  "
              f"{r['mb_per_cpu_s']:5.0f} MB/cpu-s  load {r['load_before']:.1f}->{r['load_after']:.1f}  "
              f"peak RSS +{r['rss_added_mb']:.0f} MB (base {r['rss_base_mb']:.0f} MB)  "
              f"{r['bytes_in'] / 1e9:.2f} GB -> {r['bytes_out'] / 1e9:.2f} GB", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    meta = {"source": f"{args.arch}/{args.preset} layers={args.layers}", "source_bytes": size,
            "cpus": len(os.sched_getaffinity(0)), "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d", time.gmtime()), "results": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(meta, indent=2))
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
