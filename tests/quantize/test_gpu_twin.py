"""lowbit.quantize.gpu (the --device cuda twin) gives the bytes of lowbit.formats: with numpy as the
array module on CPU (always), with cupy on the GPU (gpu marker), and end to end through convert."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.formats import nvfp4, scheme_module
from lowbit.quantize import gpu

CASES = [("fp8-block", {}), ("nvfp4", {}), ("int4", {"group_size": 128}),
         ("int4", {"group_size": 32, "asymmetric": True}), ("int4", {"group_size": 64})]


def _inputs():
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((200, 384)) * 0.02).astype(np.float32)
    w[3, :16] = 0  # an all-zero NVFP4 group / part of an fp8 block
    w[5, :128] = 0  # an all-zero int4 group
    w[7, 40] = 3.0  # an outlier
    w[9, :64] = 1e-7  # tiny groups next to the outlier (E4M3 subnormal / zero local scales)
    return [w, (rng.standard_normal((128, 256)) * 5).astype(np.float32)]


def _check(xp, scheme, opts, w):
    run = dict(opts)
    if scheme == "nvfp4":
        run["global_amax"] = nvfp4.amax(w)
    ref = scheme_module(scheme).quantize(w, **run)
    dev = gpu.to_host(xp, scheme, gpu.quantize(xp, scheme, xp.asarray(w), run))
    assert sorted(ref) == sorted(dev)
    for key in ref:
        assert dev[key].dtype == ref[key].dtype and dev[key].shape == ref[key].shape, key
        assert np.ascontiguousarray(dev[key]).tobytes() == np.ascontiguousarray(ref[key]).tobytes(), key


@pytest.mark.parametrize("scheme, opts", CASES)
def test_twin_with_numpy_equals_formats(scheme, opts):
    for w in _inputs():
        _check(np, scheme, opts, w)


@pytest.mark.gpu
@pytest.mark.parametrize("scheme, opts", CASES)
def test_twin_with_cupy_equals_formats(scheme, opts):
    import cupy

    for w in _inputs():
        _check(cupy, scheme, opts, w)


@pytest.mark.gpu
@pytest.mark.parametrize("scheme, opts", [("fp8-block", {}), ("nvfp4", {}), ("int4", {"group_size": 32})])
def test_convert_cuda_equals_cpu(tiny, tmp_path, scheme, opts):
    from lowbit.quantize.convert import convert

    a = convert(tiny("qwen3_moe"), tmp_path / "cpu", scheme, device="cpu", **opts)
    b = convert(tiny("qwen3_moe"), tmp_path / "cuda", scheme, device="cuda", **opts)
    assert a.device == "cpu" and b.device == "cuda"
    for f in sorted(p.name for p in (tmp_path / "cpu").iterdir()):
        assert (tmp_path / "cpu" / f).read_bytes() == (tmp_path / "cuda" / f).read_bytes(), f
