"""GEMV kernels vs the float64 reference of the dequantized weight (GPU only; fresh random inputs each run).

Every output buffer is poisoned with NaN first: every element must be written.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.gpu_helpers import BF16, check_against_reference, disk_tensors, fresh_rng, random_weight, random_x

pytestmark = pytest.mark.gpu

MS = (1, 3, 8, 9, 16)


def _run(scheme, n, k, m, act="bf16", splits=None, cta=None, variant=0, **opts):
    import cupy

    from lowbit.kernels.gemv import gemv
    from lowbit.kernels.weights import to_gpu

    rng, seed = fresh_rng()
    t = disk_tensors(scheme, random_weight(rng, n, k), **opts)
    w = to_gpu(scheme, t, **opts)
    x = random_x(rng, m, k)
    out = cupy.full((m, n), np.nan, dtype=BF16)
    y = gemv(w, cupy.asarray(x), act=act, out=out, splits=splits, cta=cta, variant=variant)
    assert y is out
    return check_against_reference(scheme, t, x, cupy.asnumpy(y), act, seed)


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("n,k", [(37, 200), (300, 1024), (131, 29568), (77, 333), (16, 8)])
def test_bf16(n, k, m):
    _run("bf16", n, k, m)


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("act", ["bf16", "fp8"])
@pytest.mark.parametrize("n,k", [(200, 384), (131, 1000), (45, 29568), (513, 333), (129, 128)])
def test_fp8_block(n, k, m, act):
    _run("fp8-block", n, k, m, act)


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("act", ["bf16", "nvfp4"])
@pytest.mark.parametrize("n,k", [(200, 512), (97, 1008), (40, 29568), (1000, 48)])
def test_nvfp4(n, k, m, act):
    _run("nvfp4", n, k, m, act)


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("g,asym", [(32, False), (64, True), (128, False), (128, True), (32, True)])
@pytest.mark.parametrize("n,k", [(200, 512), (99, 29568), (130, 384)])
def test_int4(n, k, m, g, asym):
    if k % g:
        pytest.skip("K not a multiple of G")
    _run("int4", n, k, m, group_size=g, asymmetric=asym)


@pytest.mark.parametrize("scheme,act", [("bf16", "bf16"), ("fp8-block", "fp8"), ("nvfp4", "nvfp4"), ("int4", "bf16")])
@pytest.mark.parametrize("splits", [1, 2, 7, 40])
def test_split_k_any_factor(scheme, act, splits):
    _run(scheme, 70, 4096, 5, act, splits=splits)


@pytest.mark.parametrize("scheme,act", [("fp8-block", "bf16"), ("fp8-block", "fp8")])
@pytest.mark.parametrize("m", [1, 8, 13])
@pytest.mark.parametrize("n,k,cta,splits", [(4096, 4096, (4, 1), 2), (300, 1024, (1, 8), 1), (131, 29568, (2, 2), 5)])
def test_every_build_variant(scheme, act, m, n, k, cta, splits):
    """The other builds the autotuner may pick (gemv.VARIANTS: fp8 at 96 registers) are correct too."""
    from lowbit.kernels import gemv as G

    for v in range(1, len(G.VARIANTS[scheme]) + 1):
        _run(scheme, n, k, m, act, splits=splits, cta=cta, variant=v)


def _record_shared_mem(monkeypatch) -> list:
    """The dynamic shared memory of every GEMV launch from here on (gemv.launch_kernel wrapped)."""
    from lowbit.kernels import gemv as G

    smem = []
    real = G.launch_kernel

    def spy(*a, shared_mem=0):
        smem.append(shared_mem)
        real(*a, shared_mem=shared_mem)

    monkeypatch.setattr(G, "launch_kernel", spy)
    return smem


@pytest.mark.parametrize("scheme,act,opts", [("bf16", "bf16", {}), ("fp8-block", "bf16", {}), ("fp8-block", "fp8", {}),
                                             ("nvfp4", "bf16", {}), ("nvfp4", "nvfp4", {}),
                                             ("int4", "bf16", {"group_size": 128, "asymmetric": True}),
                                             ("int4", "bf16", {"group_size": 32})])
@pytest.mark.parametrize("m", [1, 8, 13])
@pytest.mark.parametrize("xs", [True, False])
@pytest.mark.parametrize("n,k,cta,splits", [(300, 4096, (4, 1), 2), (131, 29568, (2, 2), 5), (77, 1008, (1, 8), 1),
                                            (515, 1536, (2, 4), 3)])
def test_staged_x_and_l1_forms(monkeypatch, scheme, act, opts, m, xs, n, k, cta, splits):
    """The register loop with x staged in shared memory (NAME_xs kernels, gemv.XS) and with x through L1: K tails
    (K = 1008), slabs of unequal length (splits 3 and 5), warps splitting a slab (wk = 2, 4, 8), tokens past M in
    the staged rows (M = 1, 13), every policy. The staged form must really run where asked."""
    from lowbit.kernels import gemv as G

    if k % opts.get("group_size", 1):
        pytest.skip("K not a multiple of G")
    smem = _record_shared_mem(monkeypatch)
    monkeypatch.setattr(G, "XS", xs)
    monkeypatch.setattr(G, "XS_DENSE", ("bf16", "fp8-block", "nvfp4", "int4"))  # every kernel form, taken or not
    _run(scheme, n, k, m, act, splits=splits, cta=cta, **opts)
    tag = "int4g128" if opts.get("group_size") == 128 else G._TAGS[(scheme, act)]
    name = f"gemv_{tag}_m{8 if m <= 8 else 16}"
    fn, fx = (G._planned_fn(G._FILES[scheme], name + sfx, scheme) for sfx in ("", "_xs"))
    staged = xs and G.xs_bytes(fx, scheme, m, k, splits, cta[0] * cta[1], fn=fn) > 0
    assert smem and all((b > 0) == staged for b in smem), (smem, staged)
    if xs and m == 1 and k <= 4096:  # small slabs always fit
        assert staged


TMA_CASES = [("bf16", "bf16", {}), ("fp8-block", "bf16", {}), ("fp8-block", "fp8", {}), ("nvfp4", "bf16", {}),
             ("nvfp4", "nvfp4", {}), ("int4", "bf16", {"group_size": 128}),
             ("int4", "bf16", {"group_size": 128, "asymmetric": True}), ("int4", "bf16", {"group_size": 32}),
             ("int4", "bf16", {"group_size": 64, "asymmetric": True})]


@pytest.mark.parametrize("scheme,act,opts", TMA_CASES)
@pytest.mark.parametrize("m", [1, 8, 13])
@pytest.mark.parametrize("n,k,cta,splits", [(300, 1024, (8, 1), 1), (131, 29568, (4, 1), 5), (1000, 640, (4, 1), 3),
                                            (77, 4096, (1, 1), 2), (2048, 1536, (8, 1), 7)])
@pytest.mark.parametrize("xs", [True, False])
def test_tma_build(monkeypatch, scheme, act, opts, m, n, k, cta, splits, xs):
    """The TMA-fed GEMV (gemv_tma_body): ragged N (rows past N zero-filled by the copy engine), K tails inside a
    stage and a stage past the split's end, split-K, every policy; x staged after the ring by the consumers
    (NAME_xs, every scheme's form) and read through L1."""
    from lowbit.kernels import gemv as G

    if k % opts.get("group_size", 1):
        pytest.skip("K not a multiple of G")
    monkeypatch.setattr(G, "XS", xs)
    monkeypatch.setattr(G, "XS_DENSE", ("bf16", "fp8-block", "nvfp4", "int4"))
    smem = _record_shared_mem(monkeypatch)
    _run(scheme, n, k, m, act, splits=splits, cta=cta, variant=G.TMA_VARIANT, **opts)
    ring = G.tma_smem_bytes(scheme, cta[0])
    assert smem[-1] in ((ring, ring + G._xs_need(scheme, m, k, splits)) if xs else (ring,)), (smem, ring)
    if xs and m == 1 and k <= 4096 and cta[0] >= 4:  # a few KB of x fit beside these rings, costing no CTA an SM
        assert smem[-1] > ring


@pytest.mark.parametrize("scheme,act,opts", TMA_CASES)
@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("n,k,warps", [(300, 1024, 8), (77, 4096, 16), (1000, 640, 2), (16, 2048, 5), (131, 3840, 4)])
def test_smem_build(scheme, act, opts, m, n, k, warps):
    """The shared-memory decode GEMV (gemv_smem.cuh, dense): rows past N (their copies clamped, outputs not
    written), parts of K of unequal length (5 warps) and of an odd number of iterations, every policy."""
    from lowbit.kernels import gemv as G
    from lowbit.kernels import gemv_smem

    if k % opts.get("group_size", 1) or k % gemv_smem.KI[scheme]:
        pytest.skip("K not a multiple of G or of the iteration")
    _run(scheme, n, k, m, act, cta=(1, warps), variant=G.SMEM_VARIANT, **opts)


def test_smem_build_taken_by_rule_where_it_fits_one_wave():
    """At M <= 8 a weight whose ceil(N / 16) CTAs fit one wave takes the shared-memory build; a large one and
    M = 9 do not; LOWBIT_GEMV_SMEM=0 (gemv_smem.DENSE) turns it off."""
    import cupy

    from lowbit.kernels import gemv_smem
    from lowbit.kernels.weights import to_gpu

    rng, _ = fresh_rng()
    small = to_gpu("fp8-block", disk_tensors("fp8-block", random_weight(rng, 2048, 4096)))
    big = to_gpu("fp8-block", disk_tensors("fp8-block", random_weight(rng, 29568, 1024)))
    dev = cupy.cuda.Device().id
    assert gemv_smem.dense_warps(small, 1, "bf16", dev) >= 8
    assert gemv_smem.dense_warps(small, 9, "bf16", dev) == 0
    assert gemv_smem.dense_warps(big, 1, "bf16", dev) == 0
    gemv_smem.DENSE = False
    try:
        assert gemv_smem.dense_warps(small, 1, "bf16", dev) == 0
    finally:
        gemv_smem.DENSE = True


@pytest.mark.parametrize("stages,side", [(2, 1), (3, 3), (6, 2)])
def test_tma_build_ring_depths(monkeypatch, stages, side):
    """Other ring and side-ring depths (the producer wraps the ring many times; the side loop's unroll)."""
    from lowbit.kernels import gemv as G

    monkeypatch.setenv("LOWBIT_GEMV_TMA", f"{stages},{side},1")
    for scheme, act, opts in TMA_CASES[::2]:
        _run(scheme, 200, 8192, 3, act, splits=1, cta=(2, 1), variant=G.TMA_VARIANT, **opts)


def test_error_is_small_not_just_bounded():
    """The bound is not vacuous: relative to max|y| the fp8 W8A16 error is at bf16 output level."""
    assert _run("fp8-block", 256, 4096, 4) < 2.0**-7


def test_act_quant_fp8_matches_numpy_bit_for_bit():
    import cupy

    from lowbit.kernels.gemv import quantize_act_fp8
    from lowbit.verify.reference import quantize_act_fp8 as ref

    rng, seed = fresh_rng()
    x = random_x(rng, 7, 1000)
    xq, xs, codes = quantize_act_fp8(cupy.asarray(x), codes=True)
    rc, rs = ref(x.astype(np.float32))
    assert np.array_equal(cupy.asnumpy(codes), rc.view(np.uint8)), f"seed {seed}"
    assert np.array_equal(cupy.asnumpy(xs), rs), f"seed {seed}"
    assert np.array_equal(cupy.asnumpy(xq).astype(np.float32), rc.astype(np.float32)), f"seed {seed}"
    hq, hs = quantize_act_fp8(cupy.asarray(x), half=True)  # what the W8A8 GEMV reads: f16, same values
    assert hq.dtype == cupy.float16 and np.array_equal(cupy.asnumpy(hs), rs), f"seed {seed}"
    assert np.array_equal(cupy.asnumpy(hq).astype(np.float32), rc.astype(np.float32)), f"seed {seed}"


def test_act_quant_nvfp4_matches_numpy_bit_for_bit():
    import cupy

    from lowbit.kernels.gemv import quantize_act_nvfp4
    from lowbit.verify.reference import quantize_act_nvfp4 as ref

    rng, seed = fresh_rng()
    x = random_x(rng, 5, 2048)
    x[2] = 0  # an all-zero token: global scale 1, scales raised to 2^-9
    xq, xs, codes, scales = quantize_act_nvfp4(cupy.asarray(x), codes=True)
    per = ref(x.astype(np.float32))
    assert np.array_equal(cupy.asnumpy(codes), np.concatenate([p["weight_packed"] for p in per])), f"seed {seed}"
    assert np.array_equal(cupy.asnumpy(scales), np.concatenate([p["weight_scale"] for p in per]).view(np.uint8))
    gs = np.array([p["weight_global_scale"][0] for p in per], np.float32)
    assert np.array_equal(cupy.asnumpy(xs), np.float32(1) / gs), f"seed {seed}"


def test_stacked_experts_view():
    import cupy

    from lowbit.formats import scheme_module
    from lowbit.kernels.gemv import gemv
    from lowbit.kernels.weights import to_gpu

    rng, seed = fresh_rng()
    per = [scheme_module("nvfp4").quantize(random_weight(rng, 48, 256)) for _ in range(3)]
    stacked = {s: np.stack([p[s] for p in per]) for s in per[0]}
    w = to_gpu("nvfp4", stacked)
    assert w.experts == 3
    x = cupy.asarray(random_x(rng, 2, 256))
    for i in range(3):
        single = gemv(to_gpu("nvfp4", per[i]), x)
        assert cupy.array_equal(gemv(w.expert(i), x), single), f"seed {seed}: expert {i}"


def test_launcher_rejects_bad_arguments():
    import cupy

    from lowbit.errors import KernelError
    from lowbit.kernels.gemv import gemv
    from lowbit.kernels.weights import to_gpu

    rng, _ = fresh_rng()
    w = to_gpu("fp8-block", disk_tensors("fp8-block", random_weight(rng, 64, 256)))
    good = cupy.asarray(random_x(rng, 2, 256))
    bad = {
        "float32": good.astype(cupy.float32),
        "wrong K": cupy.asarray(random_x(rng, 2, 128)),
        "M=17": cupy.asarray(random_x(rng, 17, 256)),
        "strided": cupy.asarray(random_x(rng, 2, 512))[:, ::2],
        "numpy": random_x(rng, 2, 256),
    }
    for what, x in bad.items():
        with pytest.raises(KernelError):
            gemv(w, x)
    with pytest.raises(KernelError, match="act"):
        gemv(w, good, act="nvfp4")
    with pytest.raises(KernelError, match="out"):
        gemv(w, good, out=cupy.empty((2, 63), BF16))


@pytest.mark.parametrize("scheme,act", [("bf16", "bf16"), ("nvfp4", "bf16"), ("int4", "bf16")])
def test_autotuned_launch_is_correct(monkeypatch, scheme, act):
    """Shapes above TUNE_MIN_ELEMENTS are autotuned on first use (unless the shared-memory build takes them by
    rule, off here); the chosen config must be correct too."""
    from lowbit.kernels import gemv as G
    from lowbit.kernels import gemv_smem

    monkeypatch.setattr(gemv_smem, "DENSE", False)
    before = len(G._TUNED)
    _run(scheme, 2048, 4096, 4, act)
    assert len(G._TUNED) == before + 1
    _run(scheme, 2048, 4096, 12, act)  # the m16 kernel is tuned separately


@pytest.mark.parametrize("scheme,opts", [("nvfp4", {}), ("int4", {"group_size": 32, "asymmetric": True}),
                                         ("int4", {"group_size": 64})])
@pytest.mark.parametrize("n,k", [(37, 192), (16, 64), (130, 320)])
def test_no_reads_past_the_scales(scheme, opts, n, k):
    """K that ends inside an iteration: the kernel must not read scales/zero points past the tensors.
    They are placed in front of 0xFF bytes (E4M3 / bf16 NaN) so any stray read poisons the output."""
    import cupy

    from lowbit.kernels.gemv import gemv
    from lowbit.kernels.weights import to_gpu

    if k % opts.get("group_size", 16):
        pytest.skip("K not a multiple of G")
    rng, seed = fresh_rng()
    t = disk_tensors(scheme, random_weight(rng, n, k), **opts)
    g = {}
    for name, arr in t.items():
        if name == "weight_shape":
            continue
        raw = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
        buf = cupy.full(raw.size + 4096, 0xFF, dtype=cupy.uint8)
        buf[: raw.size] = cupy.asarray(raw)
        dt = np.uint8 if arr.dtype.itemsize == 1 else arr.dtype
        g[name] = buf[: raw.size].view(dt).reshape(arr.shape)
    w = to_gpu(scheme, g, **opts)
    assert w.tensors["weight_scale"].data.ptr == g["weight_scale"].data.ptr  # no copy: the poison stays behind
    x = random_x(rng, 3, k)
    y = gemv(w, cupy.asarray(x), out=cupy.full((3, n), np.nan, dtype=BF16))
    check_against_reference(scheme, t, x, cupy.asnumpy(y), "bf16", seed)


def test_linear_dispatches_gemv_and_gemm():
    """linear(): M <= 16 is exactly gemv; M > 16 goes to gemm (or its fallback) and matches the reference."""
    import cupy

    from lowbit.kernels.gemv import gemv
    from lowbit.kernels.linear import linear
    from lowbit.kernels.weights import to_gpu

    rng, seed = fresh_rng()
    t = disk_tensors("fp8-block", random_weight(rng, 96, 512))
    w = to_gpu("fp8-block", t)
    x = random_x(rng, 40, 512)
    xg = cupy.asarray(x)
    assert cupy.array_equal(linear(w, xg[:5]), gemv(w, xg[:5])), f"seed {seed}"
    y3 = linear(w, xg.reshape(5, 8, 512))  # leading dims are flattened: M = 40 > 16
    assert y3.shape == (5, 8, 96)
    from lowbit.formats import scheme_module

    ref = x.astype(np.float64) @ scheme_module("fp8-block").dequantize(t).astype(np.float64).T
    got = cupy.asnumpy(y3).reshape(40, 96).astype(np.float64)
    assert np.abs(got - ref).max() <= 2.0**-6 * np.abs(ref).max(), f"seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("scheme, k", [("fp8-block", 200), ("nvfp4", 80)])
def test_linear_large_m_with_k_the_gemm_cannot_take_falls_back(scheme, k):
    """K % 32 != 0: gemm has no kernel, so linear() must dequantize + matmul instead of raising."""
    import cupy

    from lowbit.formats import scheme_module
    from lowbit.kernels.gemm import gemm_takes
    from lowbit.kernels.linear import linear
    from lowbit.kernels.weights import to_gpu

    rng, seed = fresh_rng()
    t = disk_tensors(scheme, random_weight(rng, 72, k))
    w = to_gpu(scheme, t)
    assert not gemm_takes(w)
    x = random_x(rng, 33, k)
    got = cupy.asnumpy(linear(w, cupy.asarray(x))).astype(np.float64)
    ref = x.astype(np.float64) @ scheme_module(scheme).dequantize(t).astype(np.float64).T
    # float32 matmul of exact operands, then one bf16 rounding of the output (2^-8 relative)
    assert np.abs(got - ref).max() <= 2.0**-7 * np.abs(ref).max(), f"seed {seed}"
