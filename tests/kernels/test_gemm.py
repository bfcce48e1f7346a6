"""GEMM kernels vs float64 references: every scheme, W8A8 and weight-only, fresh random inputs, NaN-poisoned
outputs, M and N that are not multiples of the tiles, split-K, partial K tiles. Bounds: gemm_checks.GEMM_BOUND
(reasoned there). The tile-plan tests run on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.errors import KernelError
from lowbit.formats import numerics, scheme_module
from lowbit.kernels import gemm_tma as T
from lowbit.verify import gemm_checks as gc

CASES = [  # (scheme, opts, acts)
    ("fp8-block", {}, ("bf16", "fp8")),
    ("nvfp4", {}, ("bf16",)),
    ("int4", {"group_size": 128}, ("bf16",)),
    ("int4", {"group_size": 32, "asymmetric": True}, ("bf16",)),
    ("int4", {"group_size": 64}, ("bf16",)),
]


def _weight(scheme, opts, n, k, seed):
    from lowbit.kernels.weights import to_gpu

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k), dtype=np.float32) * np.float32(0.05)
    if scheme == "bf16":
        t = {"weight": numerics.to_bf16(w)}
    else:
        t = scheme_module(scheme).quantize(w, **opts)
        if scheme == "int4":
            t["weight_shape"] = np.array([n, k], np.int64)
    return to_gpu(scheme, t, name=f"test.{scheme}", **opts), gc.dense_weight(scheme, t)


@pytest.fixture(autouse=True)
def _gemm_kernels_at_small_m(monkeypatch):
    """These tests cover the GEMM kernels themselves at every M: gemm() must not hand M <= 16 to the GEMV."""
    monkeypatch.setenv("LOWBIT_GEMM_GEMV", "0")


@pytest.mark.gpu
@pytest.mark.parametrize("scheme,opts,acts", CASES)
@pytest.mark.parametrize("m,n,k", [(1, 200, 256), (16, 384, 1024), (33, 200, 160), (64, 136, 512),
                                   (200, 384, 640), (1031, 264, 1024)])
def test_gemm_matches_reference(monkeypatch, scheme, opts, acts, m, n, k):
    if scheme == "int4" and k % opts["group_size"]:
        pytest.skip("K not a multiple of the group")
    w, dense = _weight(scheme, opts, n, k, seed=m + n + k)
    for act in acts:
        for seed in (0, 1):  # two fresh draws: the same function on any input; seed 1 without the TMA kernels
            monkeypatch.setenv("LOWBIT_GEMM_TMA", "1" if seed == 0 else "0")
            r = gc.check_gemm(w, dense, m, act=act, seed=seed)
            assert r.passed, f"{scheme} {opts} act={act} M={m} N={n} K={k} seed={seed}: rel err {r.rel_err:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("scheme,act", [("fp8-block", "fp8"), ("fp8-block", "bf16"), ("int4", "bf16"),
                                        ("nvfp4", "bf16")])
@pytest.mark.parametrize("tma", ["1", "0"])
def test_gemm_split_k(monkeypatch, scheme, act, tma):
    from lowbit.kernels import gemm as G

    monkeypatch.setenv("LOWBIT_GEMM_TMA", tma)
    w, dense = _weight(scheme, {}, 256, 4096, seed=7)
    t, splits, k_len = G.plan("fp8" if act == "fp8" else "w16", 16, 256, 4096)
    assert splits > 1 and k_len % 128 == 0
    r = gc.check_gemm(w, dense, 16, act=act, seed=3)
    assert r.passed, r


@pytest.mark.gpu
def test_bf16_weight_kernel_and_cublas_path():
    import cupy

    from lowbit.kernels import gemm as G

    w, dense = _weight("bf16", {}, 200, 256, seed=9)
    assert gc.check_gemm(w, dense, 77, seed=2).passed  # cuBLAS path
    rng = np.random.default_rng(0)
    x = gc.random_bf16(rng, (77, 256))
    y = cupy.full((77, 200), np.nan, dtype=numerics.BF16)
    G.launch(w, cupy.asarray(x), "bf16", rows=77, y=y)  # our bf16-MMA kernel (used by bf16 MoE experts)
    assert gc.rel_err(y.get().astype(np.float32), gc.gemm_ref(dense, x)) < gc.GEMM_BOUND


@pytest.mark.gpu
def test_gemm_rejects_bad_inputs():
    import cupy

    from lowbit.kernels.gemm import gemm

    w, _ = _weight("fp8-block", {}, 64, 256, seed=1)
    with pytest.raises(KernelError, match="bfloat16"):
        gemm(w, cupy.zeros((4, 256), cupy.float32))
    with pytest.raises(KernelError, match=r"\[M, 256\]"):
        gemm(w, cupy.zeros((4, 128), numerics.BF16))
    with pytest.raises(KernelError, match="act"):
        gemm(w, cupy.zeros((4, 256), numerics.BF16), act="nvfp4")
    w2, _ = _weight("fp8-block", {}, 64, 200, seed=1)
    with pytest.raises(KernelError, match="multiple of 32"):
        gemm(w2, cupy.zeros((4, 200), numerics.BF16))
    w3, _ = _weight("int4", {}, 64, 256, seed=1)
    with pytest.raises(KernelError, match="fp8-block"):
        gemm(w3, cupy.zeros((4, 256), numerics.BF16), act="fp8")
    with pytest.raises(KernelError, match=r"out must be .* \(4, 64\)"):
        gemm(w, cupy.zeros((4, 256), numerics.BF16), out=cupy.zeros((4, 65), numerics.BF16))
    with pytest.raises(KernelError, match="out must be"):
        gemm(w, cupy.zeros((4, 256), numerics.BF16), out=cupy.zeros((4, 64), cupy.float32))


def test_tile_plan(monkeypatch):
    from lowbit.kernels import gemm as G

    monkeypatch.setattr(G, "_num_sms", lambda: 132)
    for kind in ("w16", "fp8"):
        for m in (1, 16, 17, 64, 65, 4096, 16384):
            t = G.pick_tile(kind, m)
            assert t.bm >= min(m, 128) or t.bm == 128
            assert t.bm % (16 * t.warps_m) == 0 and t.bn % (16 * t.warps_n) == 0
        for m, n, k in ((16, 3584, 3584), (16, 256, 4096), (4096, 14336, 4096), (64, 18944, 3584)):
            t, splits, k_len = G.plan(kind, m, n, k)
            assert k_len % 128 == 0 and splits * k_len >= k and (splits - 1) * k_len < k
    assert G.plan("w16", 4096, 14336, 4096)[1] == 1  # big outputs fill the GPU: no split
    assert G.plan("w16", 16, 3584, 3584)[1] > 1  # 28 tiles on 132 SMs: split K
    assert G.smem_bytes("w16", G.pick_tile("w16", 4096), 1) <= 113 * 1024  # two CTAs per SM


@pytest.mark.gpu
@pytest.mark.parametrize("scheme,act", [("fp8-block", "fp8"), ("fp8-block", "bf16"), ("nvfp4", "bf16"),
                                        ("int4", "bf16")])
def test_gemm_mma_sync_path_for_large_tiles(monkeypatch, scheme, act):
    # on sm_90a the 128-row tiles run the wgmma kernels; check the portable mma.sync ones too
    from lowbit.kernels import gemm as G

    monkeypatch.setattr(G, "use_sm90", lambda t: False)
    monkeypatch.setenv("LOWBIT_GEMM_TMA", "0")
    w, dense = _weight(scheme, {}, 264, 1024, seed=5)
    for m in (129, 300):
        r = gc.check_gemm(w, dense, m, act=act, seed=m)
        assert r.passed, r


def _check_every_row(w, dense, m, act, seed):
    """gemm() on fresh random x into a NaN-poisoned output: every element written, every row within the bound."""
    import cupy

    from lowbit.kernels import gemm as G

    rng = np.random.default_rng(seed)
    x = gc.random_bf16(rng, (m, w.k))
    y = cupy.full((m, w.n), np.nan, dtype=numerics.BF16)
    G.gemm(w, cupy.asarray(x), act=act, out=y)
    got = y.get().astype(np.float32)
    assert np.all(np.isfinite(got)), "an output element was never written"
    ref = gc.gemm_ref(dense, x, act)
    row_err = np.abs(got - ref).max(axis=1) / (np.abs(ref).max(axis=1) + 1e-30)
    assert row_err.max() < gc.GEMM_BOUND, f"worst row {row_err.argmax()}: {row_err.max():.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", ["128,6,8,2", "128,6,4,2", "128,6,0,2", "256,4,0,2", "128,5,0,3"])
@pytest.mark.parametrize("m,n,k", [(129, 264, 1056), (300, 520, 256), (1031, 264, 1024), (512, 640, 4096),
                                   (257, 1000, 512)])
def test_gemm_fp8_tma_kernel(monkeypatch, cfg, m, n, k):
    # the warp-specialized TMA kernel (sm_90a), each configuration: 2 "SMs" so that it runs for small shapes
    # and every persistent CTA loops over several tiles (the ring's phases carry across tiles); ragged M, N
    # and a K tail of 32 (zero-filled by the copy engine); every row compared, every element written

    from lowbit.kernels import gemm as G

    if not G._sm90_available():
        pytest.skip("the TMA kernel needs sm_90a")
    monkeypatch.setattr(G, "_num_sms", lambda: 2)
    monkeypatch.setenv("LOWBIT_TMA_FP8", cfg)
    w, dense = _weight("fp8-block", {}, n, k, seed=m + k)
    assert T.use_tma_fp8(w, m, G.plan("fp8", m, n, k)[1])
    for seed in (0, 1):
        _check_every_row(w, dense, m, "fp8", seed)
    monkeypatch.setenv("LOWBIT_GEMM_TMA", "0")
    assert not T.use_tma_fp8(w, m, 1)


W16_TMA_CASES = [  # (scheme, opts, LOWBIT_TMA_W16 or "default"): every scheme as launched, then the other
    # tile shapes and run lengths (stages, run, tokens per tile)
    ("fp8-block", {}, "default"), ("nvfp4", {}, "default"), ("int4", {"group_size": 128}, "default"),
    ("int4", {"group_size": 32, "asymmetric": True}, "default"), ("int4", {"group_size": 64}, "default"),
    ("fp8-block", {}, "2,8,256"), ("nvfp4", {}, "4,8,128"), ("int4", {"group_size": 128}, "2,2,256"),
    ("int4", {"group_size": 32, "asymmetric": True}, "4,2,128"),
    # two CTAs an SM (CTAS = 2: 104 consumer registers), the small token tiles, with and without split-K
    ("int4", {"group_size": 128}, "6,8,32,0,2"), ("nvfp4", {}, "6,8,16,3,2"), ("fp8-block", {}, "3,8,64,0,2"),
    ("int4", {"group_size": 32, "asymmetric": True}, "4,8,64,2,2"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("scheme,opts,cfg", W16_TMA_CASES)
@pytest.mark.parametrize("m,n,k", [(129, 264, 1056), (300, 520, 256), (1031, 264, 1024), (512, 640, 4096),
                                   (257, 1000, 512)])
def test_gemm_w16_tma_kernel(monkeypatch, scheme, opts, cfg, m, n, k):
    # the register-A weight-only TMA kernel (sm_90a): 2 "SMs" so that it runs for small shapes and each CTA
    # loops over tiles; ragged M and N, a K tail of 32 (1056), K of 2 blocks (runs of 2) and 9 (8 + 1)

    from lowbit.kernels import gemm as G

    if not G._sm90_available():
        pytest.skip("the TMA kernel needs sm_90a")
    if scheme == "int4" and k % opts["group_size"]:
        pytest.skip("K not a multiple of the group")
    monkeypatch.setattr(G, "_num_sms", lambda: 2)
    if cfg != "default":
        monkeypatch.setenv("LOWBIT_TMA_W16", cfg)
    w, dense = _weight(scheme, opts, n, k, seed=m + k)
    assert T.use_tma_w16(w, m)
    for seed in (0, 1):
        _check_every_row(w, dense, m, "bf16", seed)


@pytest.mark.gpu
@pytest.mark.parametrize("scheme,opts", [("fp8-block", {}), ("nvfp4", {}),
                                         ("int4", {"group_size": 32, "asymmetric": True})])
@pytest.mark.parametrize("m,n,k", [(16, 264, 4096), (64, 520, 1056), (1, 136, 2048), (40, 1000, 512),
                                   (100, 264, 2048), (27, 264, 1024)])
def test_gemm_w16_tma_split_k(monkeypatch, scheme, opts, m, n, k):
    # few output tiles on 16 "SMs": the weight-only TMA kernel splits K (16- to 64-token tiles), every
    # unit writes an fp32 partial, gemm_splitk_reduce sums them; the plan's splits are checked too

    from lowbit.kernels import gemm as G

    if not G._sm90_available():
        pytest.skip("the TMA kernel needs sm_90a")
    monkeypatch.setattr(G, "_num_sms", lambda: 16)
    w, dense = _weight(scheme, opts, n, k, seed=m + k)
    p = T.tma_w16_plan(w, m)
    nk = -(-k // 128)
    assert p.bt == next(b for b in (16, 32, 64, 128) if m <= b or b == 128)
    assert (p.splits - 1) * p.kps < nk <= p.splits * p.kps
    if nk >= 8:
        assert p.splits > 1
    _check_every_row(w, dense, m, "bf16", 3)


def test_tma_w16_plan(monkeypatch):
    # the weight-only TMA kernel's tile / split choice (CPU): 256-token tiles where they keep the SMs busy,
    # 128 where 256 would leave a mostly idle second round, no split-K above M = 256 (the fp32 partials cost
    # M x N x 8 bytes each), split-K for small M
    from types import SimpleNamespace

    from lowbit.kernels import gemm as G

    monkeypatch.setattr(G, "_num_sms", lambda: 132)
    monkeypatch.delenv("LOWBIT_TMA_W16", raising=False)

    def plan(scheme, n, k, m):
        return T.tma_w16_plan(SimpleNamespace(scheme=scheme, n=n, k=k), m)

    assert (plan("int4", 29568, 8192, 4096).bt, plan("int4", 29568, 8192, 4096).splits) == (256, 1)
    assert plan("int4", 5120, 2048, 1024).bt == 128  # 256: 160 tiles = 1.2 waves
    assert plan("int4", 3584, 18944, 1024).bt == 256  # 112 tiles, one round, vs 224 = 1.7 rounds
    assert plan("int4", 2048, 4096, 1024).splits == 1  # 128 tiles: no split-K at M = 1024
    assert plan("fp8-block", 29568, 8192, 4096).bt == 128
    p = plan("nvfp4", 2048, 4096, 256)
    assert p.bt == 128 and p.splits > 1 and (p.splits - 1) * p.kps < 32 <= p.splits * p.kps
    p = plan("int4", 4096, 14336, 16)
    assert p.bt == 16 and (p.splits * 32 >= 2 * 132 or p.kps == 4)
    for scheme in ("int4", "nvfp4", "fp8-block"):  # 16-token tiles: two CTAs an SM, in their 113 KB of smem
        p = plan(scheme, 4096, 14336, 16)
        assert p.ctas == 2 and T._tma_w16_smem(scheme, p.stages, p.bt) <= 113 * 1024
        assert plan(scheme, 4096, 14336, 64).ctas == 1
    for m in (1, 16, 17, 64, 65, 200, 1000, 5000):
        p = plan("int4", 4096, 4096, m)
        assert p.bt in (16, 32, 64, 128, 256) and p.bt >= min(m, 16) and (p.bt >= m or p.bt >= 128)
        assert (p.splits - 1) * p.kps < 32 <= p.splits * p.kps


def test_use_tma_w16_guards(monkeypatch):
    # CPU: which weights the weight-only TMA kernel takes (K >= 128 and K % 32 == 0, int4 K % G == 0, dense,
    # 16-byte aligned), and LOWBIT_GEMM_TMA=0
    from types import SimpleNamespace

    from lowbit.kernels import gemm as G

    monkeypatch.setattr(G, "_sm90_available", lambda: True)
    monkeypatch.delenv("LOWBIT_GEMM_TMA", raising=False)

    def weight(scheme, k, group=128, experts=None, ptr=4096):
        main = "weight" if scheme == "fp8-block" else "weight_packed"
        return SimpleNamespace(scheme=scheme, k=k, group_size=group, experts=experts,
                               tensors={main: SimpleNamespace(data=SimpleNamespace(ptr=ptr))})

    assert T.use_tma_w16(weight("int4", 256), 64)
    assert T.use_tma_w16(weight("nvfp4", 1056), 1)
    assert not T.use_tma_w16(weight("int4", 96, group=32), 64)  # K < 128
    assert not T.use_tma_w16(weight("nvfp4", 64), 64)
    assert not T.use_tma_w16(weight("int4", 320, group=128), 64)  # K % G
    assert not T.use_tma_w16(weight("fp8-block", 200), 64)  # K % 32
    assert not T.use_tma_w16(weight("fp8-block", 256, experts=4), 64)
    assert not T.use_tma_w16(weight("fp8-block", 256, ptr=4104), 64)
    assert not T.use_tma_w16(weight("bf16", 256), 64)
    monkeypatch.setenv("LOWBIT_GEMM_TMA", "0")
    assert not T.use_tma_w16(weight("int4", 256), 64)


def test_tma_map_arguments_are_checked():
    # CPU: a tensor map needs a 16-byte aligned base and row stride; the error says which (before the driver)
    from lowbit.kernels import tma

    with pytest.raises(KernelError, match="16-byte aligned"):
        tma.encode_2d(8, 128, 256, 128, 128)
    with pytest.raises(KernelError, match="40 bytes a row"):
        tma.encode_2d(4096, 128, 20, 128, 64, elem_bytes=2)


@pytest.mark.gpu
@pytest.mark.parametrize("scheme,act", [("fp8-block", "fp8"), ("fp8-block", "bf16"), ("int4", "bf16"),
                                        ("bf16", "bf16")])
def test_small_m_runs_the_gemv(monkeypatch, scheme, act):
    """gemm() at M <= GEMV_ALWAYS_M is exactly gemv(); at M = 9..16 it runs whichever was measured faster for the
    shape (and stays within the bound); LOWBIT_GEMM_GEMV=0 keeps the GEMM kernels."""
    import cupy

    from lowbit.kernels import gemm as G
    from lowbit.kernels import linear as L
    from lowbit.kernels.gemv import gemv

    monkeypatch.setenv("LOWBIT_GEMM_GEMV", "1")
    w, dense = _weight(scheme, {}, 384, 1024, seed=11)
    x = cupy.asarray(gc.random_bf16(np.random.default_rng(4), (L.GEMV_ALWAYS_M, w.k)))
    assert cupy.array_equal(G.gemm(w, x, act=act), gemv(w, x, act=act))
    L._SMALL_M_CHOICE.clear()
    r = gc.check_gemm(w, dense, 13, act=act, seed=5)
    assert r.passed, r
    assert len(L._SMALL_M_CHOICE) == 1
    monkeypatch.setenv("LOWBIT_GEMM_GEMV", "0")
    assert not L.small_m_uses_gemv(w, x, act, cupy.empty((x.shape[0], w.n), x.dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("slots", [2, 8])
@pytest.mark.parametrize("rows,k", [(1, 128), (7, 224), (33, 1024), (129, 4160)])
def test_gemm_act_quant_fp8_matches_numpy_bit_for_bit(monkeypatch, slots, rows, k):
    """The W8A8 GEMM's activation quantizer (gemm_fp8.cu act_quant_fp8): codes and scales equal
    gemm_checks.quantize_act_ref exactly, with partial last k-blocks (K % 128 = 96, 64), an all-zero block
    (scale 1), a block of tiny values (the division fallback) and one of huge values, row counts that do not fill
    a CTA, and the gathered form (a_rows) the MoE uses.
    Outputs are poisoned first (codes 0x7F, an e4m3 NaN; scales NaN): every code and scale must be written."""
    import cupy

    from lowbit.kernels import gemm as G
    from lowbit.kernels.gemm import quantize_act_fp8

    monkeypatch.setattr(G, "ACT_QUANT_U", slots)  # unit slots per half-warp (the CTA's row / k-block layout)
    rng = np.random.default_rng(rows * 7919 + k)
    x = numerics.to_bf16(rng.standard_normal((rows, k), dtype=np.float32) * np.float32(3.0))
    x[rows // 2, : min(k, 128)] = 0  # one all-zero block
    if k > 128:  # a block of tiny values (scale < 2^-60: the kernel's IEEE-division path) and one of huge values
        x[0, 128:256] = numerics.to_bf16(x[0, 128:256].astype(np.float32) * np.float32(1e-30))
        x[-1, 128:256] = numerics.to_bf16(x[-1, 128:256].astype(np.float32) * np.float32(1e30))
    for a_rows in (None, rng.integers(0, rows, size=rows + 5).astype(np.int32)):
        src = x if a_rows is None else x[a_rows]
        q_ref, s_ref = gc.quantize_act_ref(src.astype(np.float32))
        n = src.shape[0]
        xq = cupy.full((n, k), 0x7F, cupy.uint8)  # e4m3 NaN
        xs = cupy.full((-(-k // 128), n), np.nan, cupy.float32)
        quantize_act_fp8(cupy.asarray(x), None if a_rows is None else cupy.asarray(a_rows), n, out=(xq, xs))
        what = f"rows={rows} K={k} gather={a_rows is not None}"
        assert np.array_equal(numerics.decode_e4m3(cupy.asnumpy(xq)), q_ref), what
        assert np.array_equal(cupy.asnumpy(xs).T, s_ref), what


@pytest.mark.gpu
def test_w8a8_takes_the_tma_kernel_from_min_rows(monkeypatch):
    """gemm_tma.use_tma_fp8: every M >= TMA_FP8_MIN_ROWS goes to the TMA kernel, even with tiles for only part
    of the SMs; smaller M only when its tiles fill the SMs; the result stays within the bound either way."""
    from lowbit.kernels import gemm as G

    if not G._sm90_available():
        pytest.skip("the TMA kernel needs sm_90a")
    monkeypatch.setattr(G, "_num_sms", lambda: 132)
    w, dense = _weight("fp8-block", {}, 264, 512, seed=3)  # 3 column tiles
    assert T.use_tma_fp8(w, T.TMA_FP8_MIN_ROWS, 1) and not T.use_tma_fp8(w, T.TMA_FP8_MIN_ROWS - 1, 1)
    assert not T.use_tma_fp8(w, 200, 2)  # an explicit split-K launch stays on gemm_fp8.cu
    monkeypatch.setenv("LOWBIT_TMA_FP8_MIN_ROWS", "100000")
    assert not T.use_tma_fp8(w, 4096, 1)
    monkeypatch.setattr(G, "_num_sms", lambda: 2)  # tiles >= SMs: taken at any M
    assert T.use_tma_fp8(w, 64, 1)
    monkeypatch.delenv("LOWBIT_TMA_FP8_MIN_ROWS")
    monkeypatch.setattr(G, "_num_sms", lambda: 132)
    for m in (T.TMA_FP8_MIN_ROWS, 200):  # 3 / 6 column tiles x 1 / 2 row tiles on 132 SMs: one CTA a tile
        r = gc.check_gemm(w, dense, m, act="fp8", seed=m)
        assert r.passed, f"M={m}: rel err {r.rel_err:.3g}"
