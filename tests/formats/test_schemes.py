"""Per-scheme tests: layouts, zero blocks, error bounds against the source (with the reason for each
bound), determinism, and the options that change the layout."""

import numpy as np
import pytest

from lowbit.errors import SchemeError
from lowbit.formats import fp8_block, int4, numerics, nvfp4, scheme_module

RNG = np.random.default_rng(1234)
SHAPES = [(1, 16), (130, 256), (257, 384), (96, 1152)]  # edge blocks, not powers of two


def _gauss(n, k, scale=0.02):
    return (RNG.standard_normal((n, k)) * scale).astype(np.float32)


@pytest.mark.parametrize("scheme, opts", [
    ("fp8-block", {}), ("nvfp4", {}), ("int4", {}), ("int4", {"group_size": 32, "asymmetric": True}),
])
@pytest.mark.parametrize("n, k", SHAPES)
def test_layout_matches_quantize_output(scheme, opts, n, k):
    m = scheme_module(scheme)
    if m.unsupported_reason(n, k, **opts):
        pytest.skip("shape not taken by this scheme")
    t = m.quantize(_gauss(n, k), **opts)
    layout = m.tensor_layout(n, k, **opts)
    assert set(t) == set(layout)
    dtype_of = {"F8_E4M3": numerics.E4M3, "F32": np.float32, "U8": np.uint8, "I32": np.int32,
                "BF16": numerics.BF16, "I64": np.int64}
    for name, (dt, shape) in layout.items():
        assert t[name].shape == shape, name
        assert t[name].dtype == dtype_of[dt], name


@pytest.mark.parametrize("n, k", [(200, 300), (128, 128), (129, 1)])
def test_fp8_elementwise_error_bound(n, k):
    w = _gauss(n, k) * RNG.uniform(0.01, 100, size=(n, 1)).astype(np.float32)
    t = fp8_block.quantize(w)
    s = fp8_block.expand_scales(t["weight_scale_inv"], n, k)
    err = np.abs(fp8_block.dequantize(t) - w)
    # E4M3 keeps 3 mantissa bits: RNE is within half an ulp = 2^-4 relative for normals; below the
    # smallest normal (2^-6 in scaled units) the absolute error is half the subnormal step, 2^-10 * s.
    # Float32 division/multiply add a few 2^-24 relative on top.
    bound = np.maximum(2.0**-4 * np.abs(w), 2.0**-10 * s) * (1 + 1e-6) + 1e-30
    assert np.all(err <= bound)
    assert t["weight_scale_inv"].shape == (-(-n // 128), -(-k // 128))


def test_fp8_partial_edge_block_uses_only_real_elements():
    w = np.zeros((130, 130), np.float32)
    w[129, 129] = 3.5  # the only non-zero in the bottom-right partial block
    t = fp8_block.quantize(w)
    assert t["weight_scale_inv"][1, 1] == np.float32(3.5 / 448)
    assert fp8_block.dequantize(t)[129, 129] == np.float32(3.5)


def test_zero_blocks_decode_to_zero_with_finite_scales():
    w = np.zeros((256, 256), np.float32)
    w[:128, :128] = _gauss(128, 128)
    for name, opts in [("fp8-block", {}), ("nvfp4", {}), ("int4", {}), ("int4", {"asymmetric": True})]:
        m = scheme_module(name)
        t = m.quantize(w, **opts)
        d = m.dequantize(t)
        assert np.all(d[128:, :] == 0) and np.all(d[:, 128:] == 0), name
        for arr in t.values():
            assert np.all(np.isfinite(np.asarray(arr).astype(np.float64))), name
    assert np.all(fp8_block.quantize(np.zeros((3, 5), np.float32))["weight_scale_inv"] == 1.0)
    z = nvfp4.quantize(np.zeros((4, 32), np.float32))
    assert z["weight_global_scale"][0] == 1.0 and np.all(z["weight_scale"].astype(np.float32) > 0)


def test_nvfp4_group_error_bound_and_global_scale():
    w = _gauss(64, 512)
    t = nvfp4.quantize(w)
    assert t["weight_global_scale"][0] == np.float32(448 * 6 / np.abs(w).max())
    # the group holding the tensor amax gets local scale exactly 448 (formats.md 5.3)
    assert t["weight_scale"].astype(np.float32).max() == 448.0
    err = np.abs(nvfp4.dequantize(t) - w).reshape(64, 32, 16)
    amax_g = np.abs(w).reshape(64, 32, 16).max(-1, keepdims=True)
    # The widest E2M1 step is 2 (between 4 and 6), so rounding costs at most 1 unit = amax/6 when the
    # group's largest value maps to 6; the E4M3 local scale (2^-4 relative) can push that largest value
    # past 6 by 1/16, clipped: amax/6 * (1 + 1/16) + amax/16 < amax/4.
    assert np.all(err <= amax_g / 4 + 1e-12)
    rel = np.linalg.norm(err) / np.linalg.norm(w)
    assert rel < 0.11  # ~0.095 on Gaussian weights (real-model.md), an empirical ceiling with margin


def test_nvfp4_fused_group_shares_global_amax():
    a, b = _gauss(32, 64), _gauss(32, 64) * 10
    shared = max(nvfp4.amax(a), nvfp4.amax(b))
    ta, tb = nvfp4.quantize(a, global_amax=shared), nvfp4.quantize(b, global_amax=shared)
    assert ta["weight_global_scale"][0] == tb["weight_global_scale"][0] == np.float32(2688 / shared)
    assert np.linalg.norm(nvfp4.dequantize(ta) - a) / np.linalg.norm(a) < 0.2


@pytest.mark.parametrize("g", [32, 64, 128])
@pytest.mark.parametrize("asym", [False, True])
def test_int4_elementwise_error_bound(g, asym):
    w = _gauss(48, 256) + (0.01 if asym else 0.0)
    t = int4.quantize(w, group_size=g, asymmetric=asym)
    scale = np.repeat(t["weight_scale"].astype(np.float32), g, axis=1)
    err = np.abs(int4.dequantize(t) - w)
    # Rounding to the integer grid costs at most half a step (scale/2). The scale is rounded to bf16
    # (at most 2^-8 relative) before dividing, so the grid's range, 7.5 steps each side (symmetric) or
    # 15 steps with a zero point rounded by at most half a step (asymmetric), can fall short of the
    # data by 7.5*2^-8 resp. 15*2^-8 steps, which the clip to [-8, 7] adds to the half step.
    width = 15.0 if asym else 7.5
    assert np.all(err <= scale * (0.5 + width * 2.0**-8) * (1 + 1e-6))
    assert np.any(err > scale * 0.45)  # the bound is tight enough to mean something


def test_int4_symmetric_golden_codes():
    w = np.array([[7.5, -7.5, 0.0, 1.0, -1.0, 2.5, 3.5, -8.0] * 4], np.float32)  # amax 8 -> scale 8/7.5
    t = int4.quantize(w, group_size=32)
    s = np.float32(numerics.to_bf16(np.float32(8 / 7.5)))
    assert t["weight_scale"].astype(np.float32)[0, 0] == s
    q = numerics.unpack_int32_lsb(t["weight_packed"], 32).astype(int)[0, :8] - 8
    want = np.clip(np.rint(w[0, :8] / s), -8, 7)
    np.testing.assert_array_equal(q, want)
    assert tuple(t["weight_shape"]) == (1, 32)


def test_int4_asymmetric_zero_point_layout_packed_along_n():
    w = _gauss(20, 64) + 0.05  # mostly positive: zero points far from 0
    t = int4.quantize(w, group_size=32, asymmetric=True)
    assert t["weight_zero_point"].shape == (3, 2)  # ceil(20/8) words along N, K/G columns
    zp = numerics.unpack_int32_lsb(t["weight_zero_point"], 20, axis=0).astype(int) - 8
    assert zp.min() >= -8 and zp.max() <= 7 and np.any(zp != 0)


def test_unsupported_shapes_and_options_are_named():
    assert "multiple of 16" in nvfp4.unsupported_reason(8, 40)
    assert "group size 128" in int4.unsupported_reason(8, 576)
    assert int4.unsupported_reason(8, 576, group_size=64) is None
    with pytest.raises(SchemeError, match="group size 48"):
        int4.tensor_layout(8, 96, group_size=48)
    with pytest.raises(SchemeError, match="choose one of"):
        scheme_module("fp6")


@pytest.mark.parametrize("scheme", ["fp8-block", "nvfp4", "int4"])
def test_quantize_is_deterministic(scheme):
    w = _gauss(100, 256)
    m = scheme_module(scheme)
    a, b = m.quantize(w.copy()), m.quantize(w.copy())
    for name in a:
        assert np.asarray(a[name]).tobytes() == np.asarray(b[name]).tobytes()
