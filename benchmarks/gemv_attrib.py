"""Where a 4-bit GEMV's time goes: the register-loop GEMV rebuilt with one part of its work removed at a time
(diagnostic builds, wrong results by design), each timed at its best launch config, same run, L2 flushed.

Builds (textual patches of a copy of lowbit/kernels/cuda):
  base      the shipped source
  l1        the shipped source with the staged-x kernels off (gemv.XS = False: x through L1)
  xclamp    M = 1: lanes of tokens >= M read token M-1's x instead of zeros (a real, result-preserving change)
  nox       x pairs are constants (no x loads; the permutes stay)        } these two patch the L1 form and
  noperm    no x permute (the loads stay)                                } run with gemv.XS off
  nodecode  the weight words go to the mma as they are (no decode; nvfp4 then drops its scale loads too)
  nomma     each mma replaced by an xor of its operands into the accumulator
  loads     nox + noperm + nodecode + nomma: the loop's loads and addressing only
Usage: python benchmarks/gemv_attrib.py OUT.jsonl [build,...] [arch]  (builds compiled first, 14 processes)"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

SHAPES = (("int4", 29568, 8192), ("int4", 8192, 29568), ("int4", 14336, 4096), ("int4", 4096, 14336),
          ("nvfp4", 29568, 8192), ("nvfp4", 14336, 4096), ("nvfp4", 4096, 14336))


def _sub(text: str, old: str, new: str, count: int = 1) -> str:
    if text.count(old) < count:
        raise SystemExit(f"patch target not found: {old[:60]}")
    return text.replace(old, new)


def patch(build: str, src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
    parts = {"loads": ("nox", "noperm", "nodecode", "nomma"), "l1": ("base",)}.get(build, (build,))
    common = (dst / "common.cuh").read_text()
    math = (dst / "gemv_math.cuh").read_text()
    xp = (dst / "xperm4.cuh").read_text()
    i4 = (dst / "gemv_int4.cu").read_text()
    f4 = (dst / "gemv_nvfp4.cu").read_text()
    for p in parts:
        if p == "xclamp":
            common = _sub(common, "xr[mt] = g + 8 * mt < a.m ? a.x + (long)(g + 8 * mt) * a.k + t * EC : nullptr;",
                          "xr[mt] = a.x + (long)min(g + 8 * mt, a.m - 1) * a.k + t * EC;")
        elif p == "nox":
            common = _sub(common, "const uint4 v = __ldca(reinterpret_cast<const uint4*>(xr + off) + i);",
                          "const uint4 v = make_uint4(0x3f803f80u ^ (uint32_t)off, 0x3f803f80u, 0x3f803f80u + i, "
                          "0x3f803f80u);")
        elif p == "noperm":
            xp = re.sub(r"X\[4 \* q( \+ \d)?\] = __byte_perm\([^;]*;", "", xp)
            xp = _sub(xp, "const uint32_t x01", "(void)0; const uint32_t x01")
        elif p == "nodecode":
            i4 = re.sub(r"A\[4 \* q \+ i\] = lb::hsub2_bf16\([^;]*;", "A[4 * q + i] = w[q] + i;", i4)
            f4 = re.sub(r"A\[4 \* q \+ (\d)\] = lb::hmul2_bf16\([^;]*;", r"A[4 * q + \1] = v + \1;", f4)
        elif p == "nomma":
            math = _sub(math, "  if constexpr (F16) LB_MMA_16816(\"f16\");\n  else LB_MMA_16816(\"bf16\");",
                        "  c[0] += __uint_as_float((a0 ^ a1 ^ a2 ^ a3 ^ b0 ^ b1) & 0x3fffffffu);")
        elif p != "base":
            raise SystemExit(f"unknown build {p}")
    for name, text in (("common.cuh", common), ("gemv_math.cuh", math), ("xperm4.cuh", xp),
                       ("gemv_int4.cu", i4), ("gemv_nvfp4.cu", f4)):
        (dst / name).write_text(text)


def _precompile(job) -> None:
    from lowbit.kernels import compile as C
    from lowbit.kernels import gemv as G

    build_dir, scheme, arch = job
    C.CUDA_DIR = Path(build_dir)
    C._cubin(G._FILES[scheme], C._define_flags(G.compile_defines(scheme)), arch)


def main() -> None:
    import concurrent.futures
    import multiprocessing

    from lowbit.kernels import compile as C

    out = Path(sys.argv[1])
    builds = sys.argv[2].split(",") if len(sys.argv) > 2 else ["base", "xclamp", "nox", "noperm", "nodecode",
                                                               "nomma", "loads"]
    src = C.CUDA_DIR
    tmp = Path(tempfile.mkdtemp())
    for b in builds:
        patch(b, src, tmp / b)
    arch = sys.argv[3] if len(sys.argv) > 3 else "sm_90a"
    jobs = [(str(tmp / b), s, arch) for b in builds for s in ("int4", "nvfp4")]
    with concurrent.futures.ProcessPoolExecutor(14, mp_context=multiprocessing.get_context("fork")) as ex:
        list(ex.map(_precompile, jobs))
    run(out, builds, src, tmp)


def run(out: Path, builds, src: Path, tmp: Path) -> None:
    import cupy

    from lowbit.formats import numerics
    from lowbit.kernels import compile as C
    from lowbit.kernels import gemv as G
    from lowbit.kernels.timing import FLUSH_BYTES, time_once
    from lowbit.verify.bench import measure_copy_bandwidth
    from lowbit.verify.bench_gemv import random_gpu_weight

    copy = measure_copy_bandwidth()
    gpu = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    flush = cupy.empty(FLUSH_BYTES, dtype=cupy.uint8)
    cands = list(dict.fromkeys(((1, 8, 1), (2, 4, 1), (4, 1, 4), (4, 2, 2), (8, 1, 2), (8, 1, 4), (2, 4, 2),
                                (4, 1, 6), (8, 1, 1), (4, 1, 2))))

    def select(b: str) -> None:  # the build's sources and x form, compiled kernels forgotten
        C.CUDA_DIR = tmp / b
        G.XS = b not in ("l1", "nox", "noperm")
        C._module.cache_clear()
        C._function.cache_clear()
        G._planned.cache_clear()
    with out.open("w") as f:
        f.write(json.dumps({"gpu": gpu, "copy_gbs": copy, "builds": builds}) + "\n")
        for scheme, n, k in SHAPES:
            w = random_gpu_weight(scheme, n, k, seed=1)
            x = cupy.random.standard_normal((1, k), dtype=cupy.float32).astype(numerics.BF16)
            y = cupy.empty((1, n), numerics.BF16)
            row = {"scheme": scheme, "n": n, "k": k, "bytes": w.nbytes()}
            times = {}
            for b in builds:
                select(b)
                fn = G._planned(G._FILES[scheme], "gemv_int4g128_m8" if scheme == "int4" else "gemv_nvfp4_m8",
                                n, k, scheme, 0)[0]
                row[f"{b}_regs"] = int(fn.num_regs)  # the L1 form's
                for c in cands:
                    G.gemv(w, x, out=y, cta=c[:2], splits=c[2])
                times[b] = {c: [] for c in cands}
            for _ in range(5):  # round-robin over builds and configs
                for b in builds:
                    select(b)
                    for c in cands:
                        times[b][c].append(1e3 * time_once(lambda cc: G.gemv(w, x, out=y, cta=cc[:2], splits=cc[2]),
                                                           c, flush))
            for b in builds:
                med = {c: sorted(v)[2] for c, v in times[b].items()}
                best = min(med, key=med.get)
                row[f"{b}_us"] = round(med[best], 2)
                row[f"{b}_pct_copy"] = round(100 * w.nbytes() / med[best] / 1e3 / copy, 1)
                row[f"{b}_cfg"] = list(best)
            print(json.dumps(row), flush=True)
            f.write(json.dumps(row) + "\n")
            f.flush()
    C.CUDA_DIR = src


if __name__ == "__main__":
    main()
