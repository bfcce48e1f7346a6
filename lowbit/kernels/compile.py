"""Compile .cu files at run time through cupy.RawModule, cached per (file, defines, device arch).

`get_function("gemv_fp8.cu", "gemv_fp8_kernel", defines={"BLOCK": 128})` returns a cupy RawKernel.
The arch is read from the current device (sm_90 -> sm_90a so wgmma-capable code may be used;
sm_120 -> sm_120a). `nvcc_command(path, arch)` gives the standalone compile check that CI runs.
"""

from __future__ import annotations

import functools
from pathlib import Path

CUDA_DIR = Path(__file__).parent / "cuda"
CXX_STD = "-std=c++17"


def device_arch() -> str:
    import cupy

    major, minor = cupy.cuda.Device().compute_capability[:1], cupy.cuda.Device().compute_capability[1:]
    cc = f"{major}{minor}"
    return f"sm_{cc}a" if cc in ("90", "100", "120") else f"sm_{cc}"


def _define_flags(defines: dict | None) -> tuple[str, ...]:
    return tuple(f"-D{k}={v}" for k, v in sorted((defines or {}).items()))


def _nvcc() -> str:
    import os
    import shutil

    for cand in (shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_PATH", "/usr/local/cuda"), "bin", "nvcc"),
                 "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.exists(cand):
            return cand
    from lowbit.errors import KernelError

    raise KernelError("nvcc not found: put the CUDA toolkit's bin/ on PATH or set CUDA_PATH")


def _cubin(file: str, flags: tuple[str, ...], arch: str) -> Path:
    """Compile cuda/`file` with nvcc to a cubin for `arch`, cached by a hash of the sources and flags.

    cupy's own nvcc backend adds `-gencode=compute_XX` (no `a` suffix) and `-ftz=true`; building the cubin
    here keeps exactly the standalone command CI checks (IEEE subnormals, sm_90a/sm_120a features).
    """
    import hashlib
    import os
    import subprocess
    import tempfile

    h = hashlib.sha256()
    for part in [file, arch, *flags]:
        h.update(part.encode())
    for dep in sorted(CUDA_DIR.glob("*.cu*")):
        if dep.suffix == ".cuh" or dep.name == file:
            h.update(dep.read_bytes())
    cache = Path(os.environ.get("LOWBIT_KERNEL_CACHE", Path.home() / ".cache" / "lowbit" / "kernels"))
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"{Path(file).stem}-{arch}-{h.hexdigest()[:16]}.cubin"
    if not out.exists():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            tmp_out = Path(tmp) / out.name
            cmd = nvcc_command(CUDA_DIR / file, arch, tmp_out)
            cmd[0] = _nvcc()
            p = subprocess.run(cmd[:-1] + list(flags) + cmd[-1:], capture_output=True, text=True)
            if p.returncode != 0:
                from lowbit.errors import KernelError

                raise KernelError(f"nvcc failed on {file} ({arch}, {' '.join(flags)}):\n{p.stderr[-4000:]}")
            os.replace(tmp_out, out)
    return out


@functools.lru_cache(maxsize=None)
def _module(file: str, flags: tuple[str, ...], arch: str, device_id: int):
    import cupy

    return cupy.RawModule(path=str(_cubin(file, flags, arch)))


def get_function(file: str, name: str, defines: dict | None = None):
    """The kernel `name` (extern "C") of cuda/`file`, compiled for the current device (cached: one object
    per kernel, build and device, so attributes set on it persist and a call costs a dict lookup)."""
    import cupy

    return _function(file, name, _define_flags(defines), cupy.cuda.Device().id)


@functools.lru_cache(maxsize=None)
def _function(file: str, name: str, flags: tuple[str, ...], device_id: int):
    import cupy

    with cupy.cuda.Device(device_id):
        return _module(file, flags, device_arch(), device_id).get_function(name)


def nvcc_command(path: Path, arch: str, out: Path) -> list[str]:
    """The standalone compile of one .cu (its own -D defaults), as CI checks it."""
    return ["nvcc", CXX_STD, "-cubin", f"-arch={arch}", f"-I{CUDA_DIR}", "-o", str(out), str(path)]
