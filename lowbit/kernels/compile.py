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


@functools.lru_cache(maxsize=None)
def _module(file: str, flags: tuple[str, ...], arch: str, device_id: int):
    import cupy

    src = (CUDA_DIR / file).read_text()
    opts = (CXX_STD, f"--gpu-architecture={arch}", f"-I{CUDA_DIR}") + flags
    return cupy.RawModule(code=src, options=opts, backend="nvcc", name_expressions=None)


def get_function(file: str, name: str, defines: dict | None = None):
    """The kernel `name` (extern "C") of cuda/`file`, compiled for the current device."""
    import cupy

    dev = cupy.cuda.Device()
    mod = _module(file, _define_flags(defines), device_arch(), dev.id)
    return mod.get_function(name)


def nvcc_command(path: Path, arch: str, out: Path) -> list[str]:
    """The standalone compile of one .cu (its own -D defaults), as CI checks it."""
    return ["nvcc", CXX_STD, "-cubin", f"-arch={arch}", f"-I{CUDA_DIR}", "-o", str(out), str(path)]
