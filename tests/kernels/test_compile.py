"""Every .cu in lowbit/kernels/cuda compiles on its own (its -D defaults) for sm_90a and sm_120a."""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from lowbit.kernels.compile import CUDA_DIR, nvcc_command

CU_FILES = sorted(CUDA_DIR.glob("*.cu"))
ARCHS = ("sm_90a", "sm_120a")
#: the dense GEMVs' TMA build (gemv_tma_* kernels, off in the standalone defaults)
TMA_FILES = [p for p in CU_FILES if p.name in ("gemv_bf16.cu", "gemv_fp8.cu", "gemv_nvfp4.cu", "gemv_int4.cu")]
TMA_BUILD = ("-DGEMV_TMA=4",)

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("cubin")

    def build(job):
        path, arch, extra = job
        cmd = nvcc_command(path, arch, out / f"{path.stem}.{arch}{extra}.cubin") + list(extra)
        p = subprocess.run(cmd, capture_output=True, text=True)
        return job, p.returncode, p.stderr

    jobs = [(p, a, ()) for p in CU_FILES for a in ARCHS] + [(p, a, TMA_BUILD) for p in TMA_FILES for a in ARCHS]
    with ThreadPoolExecutor(max_workers=4) as ex:
        return {job: (rc, err) for job, rc, err in ex.map(build, jobs)}


def test_there_are_gemv_kernels():
    names = {p.name for p in CU_FILES}
    assert {"gemv_bf16.cu", "gemv_fp8.cu", "gemv_nvfp4.cu", "gemv_int4.cu", "gemv_act.cu"} <= names


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_compiles_standalone(results, path, arch):
    rc, err = results[(path, arch, ())]
    assert rc == 0, f"{path.name} ({arch}) failed:\n{err}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path", TMA_FILES, ids=lambda p: p.name)
def test_tma_build_compiles(results, path, arch):
    rc, err = results[(path, arch, TMA_BUILD)]
    assert rc == 0, f"{path.name} -DGEMV_TMA=4 ({arch}) failed:\n{err}"


@pytest.mark.parametrize("path", [p for p in CU_FILES if p.name.startswith("gemv_")], ids=lambda p: p.name)
def test_header_comment(path):
    """DESIGN.md: each kernel file starts with a comment saying what it computes, layouts, geometry,
    preconditions and its reference."""
    head = path.read_text().split("#include")[0].lower()
    for word in ("operands" if "act" not in path.name else "x bf16", "grid", "preconditions", "reference"):
        assert word in head, f"{path.name}: header comment lacks '{word}'"


def _runtime_source(tmp_path):
    """The runtime's NVRTC module source (lowbit/runtime/cuda_fused.py: the fused norms, RoPE, SwiGLU and the
    decode attention) as a .cu file."""
    from lowbit.runtime.cuda_attend import ATTEND_SRC
    from lowbit.runtime.cuda_fused import _SRC

    src = tmp_path / "runtime_fused.cu"
    src.write_text(_SRC + ATTEND_SRC)
    return src


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("early", [0, 1])
def test_runtime_fused_source_compiles(tmp_path, arch, early):
    """The runtime's NVRTC module compiles with nvcc too, with the early PDL triggers on and off
    (ADD_NORM_EARLY, ATTEND_EARLY)."""
    src = _runtime_source(tmp_path)
    cmd = ["nvcc", "-std=c++17", "-cubin", f"-arch={arch}", f"-DLB_ADD_NORM_EARLY={early}",
           f"-DLB_ATTEND_EARLY={early}", "-o", str(tmp_path / "m.cubin"), str(src)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_runtime_early_triggers_take_effect(tmp_path):
    """LB_ADD_NORM_EARLY / LB_ATTEND_EARLY each add one launch_dependents before the wait: in add_rms_norm and
    in attend_split, and nowhere else."""
    src = _runtime_source(tmp_path)

    def triggers(add_norm: int, attend: int) -> dict:
        out = tmp_path / f"m{add_norm}{attend}.ptx"
        cmd = ["nvcc", "-std=c++17", "-ptx", "-arch=sm_90a", f"-DLB_ADD_NORM_EARLY={add_norm}",
               f"-DLB_ATTEND_EARLY={attend}", "-o", str(out), str(src)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        counts, name = {}, None
        for line in out.read_text().splitlines():
            if line.startswith(".visible .entry"):
                name = line.split()[2].split("(")[0]
            elif "griddepcontrol.launch_dependents" in line:
                counts[name] = counts.get(name, 0) + 1
        return counts

    base = triggers(0, 0)
    assert triggers(1, 0) == {**base, "add_rms_norm": base["add_rms_norm"] + 1}
    assert triggers(0, 1) == {**base, "attend_split": base["attend_split"] + 1}
