"""MoE on the GPU vs the numpy float64 reference: router (Mixtral / Qwen3 norms, both logit paths),
permutation with ragged loads (experts with zero tokens, one expert with every token), decode and
prefill expert paths for every scheme, W8A8, poisoned outputs. Bound: gemm_checks.MOE_BOUND."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.errors import KernelError
from lowbit.formats import numerics, scheme_module
from lowbit.verify import gemm_checks as gc
from lowbit.verify import moe_reference as ref

SCHEMES = [("bf16", {}), ("fp8-block", {}), ("nvfp4", {}), ("int4", {"group_size": 128}),
           ("int4", {"group_size": 32, "asymmetric": True})]


def _experts(scheme, opts, e, h, i, seed=0):
    from lowbit.kernels.moe import MoeWeights

    rng = np.random.default_rng(seed)
    shapes = {"gate": (i, h), "up": (i, h), "down": (h, i)}
    per, dense = [], {p: [] for p in shapes}
    for _ in range(e):
        ex = {}
        for p, (n, k) in shapes.items():
            w = rng.standard_normal((n, k), dtype=np.float32) / np.float32(np.sqrt(k))
            t = {"weight": numerics.to_bf16(w)} if scheme == "bf16" else scheme_module(scheme).quantize(w, **opts)
            ex[p] = t
            dense[p].append(gc.dense_weight(scheme, t))
        per.append(ex)
    mw = MoeWeights.from_checkpoint_tensors(scheme, per, **opts)
    return mw, tuple(np.stack(dense[p]) for p in ("gate", "up", "down"))


def _run_experts(mw, dense, x, ids, wts, act="bf16", path=None):
    import cupy

    from lowbit.kernels import moe

    out = cupy.full((x.shape[0], mw.hidden), np.nan, dtype=numerics.BF16)
    y = moe.moe_experts(cupy.asarray(x), cupy.asarray(ids, dtype=cupy.int32), cupy.asarray(wts, dtype=cupy.float32),
                        mw, act=act, path=path, out=out)
    assert y is out
    decode = path == "decode" or (path is None and x.shape[0] <= moe.DECODE_MAX_TOKENS)
    act_fn = (lambda v: gc.dequant_act_ref(numerics.to_bf16(v))) if act == "fp8" and not decode else None
    want = ref.moe_experts_ref(x, ids, wts, *dense, act_fn=act_fn)
    return gc.rel_err(out.get().astype(np.float32), want)


@pytest.mark.gpu
@pytest.mark.parametrize("norm,norm_topk", [("mixtral", True), ("qwen3", True), ("qwen3", False)])
@pytest.mark.parametrize("t,e,k,h", [(1, 128, 8, 256), (3, 8, 2, 256), (20, 60, 4, 256), (100, 128, 8, 256),
                                     (257, 60, 4, 256), (1, 8, 2, 4096), (1, 128, 8, 2048), (2, 8, 2, 5120),
                                     (1, 60, 4, 3584)])
def test_router_matches_reference(norm, norm_topk, t, e, k, h):
    import cupy

    from lowbit.kernels import moe_router

    rng = np.random.default_rng(t * e + h)
    x = gc.random_bf16(rng, (t, h))
    r = gc.random_bf16(rng, (e, h), 0.1 * (256 / h) ** 0.5)
    ids, wts = moe_router.route(cupy.asarray(x), cupy.asarray(r), k, norm, norm_topk)
    rids, rw, logits = ref.route_ref(x, r, k, norm, norm_topk)
    clear = ref.routing_margin(logits, k) > 1e-3  # near-ties may flip with fp32 logits
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(ids.get()[clear], rids[clear])  # same experts, same order
    np.testing.assert_allclose(wts.get()[clear], rw[clear], rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("t,e,k", [(1, 128, 8), (1, 8, 2), (5, 60, 4), (100, 128, 8)])
def test_router_ids_stay_in_range_on_nan(t, e, k):
    """NaN router logits (a diverged activation) rank as -inf: every id is a valid expert, distinct within its
    token, and the finite logits still win in order. Before, a NaN left the argmax's sentinel 0x7fffffff as
    an expert id, which the permutation and the expert GEMVs then indexed with (an illegal address)."""
    import cupy

    from lowbit.kernels import moe_router

    rng = np.random.default_rng(t + e)
    logits = rng.standard_normal((t, e)).astype(np.float32)
    logits[:, ::2] = np.nan                       # half of every row NaN
    if t > 1:
        logits[1] = np.nan                        # and one row NaN throughout
    paths = [moe_router.topk(cupy.asarray(logits), k, "qwen3", True)]
    if t <= moe_router.LOGITS_KERNEL_MAX_T and e <= 256:
        # the fused router (one block ranks a single token, warps rank several): NaN activations give NaN logits
        h = 256
        x = gc.random_bf16(rng, (t, h))
        x[0, 0] = np.nan
        if t > 1:
            x[1] = np.nan
        r = gc.random_bf16(rng, (e, h), 0.1)
        ids_x, _ = moe_router.route(cupy.asarray(x), cupy.asarray(r), k, "mixtral", True)
        ids_x = ids_x.get()
        assert ((ids_x >= 0) & (ids_x < e)).all()
        assert all(len(set(row)) == k for row in ids_x)
    for ids, _ in paths:
        ids = ids.get()
        assert ((ids >= 0) & (ids < e)).all(), ids
        assert all(len(set(row)) == k for row in ids)
        finite = np.where(np.isnan(logits[0]), -np.inf, logits[0])
        want = np.argsort(-finite, kind="stable")[:k]
        np.testing.assert_array_equal(ids[0], want)


@pytest.mark.gpu
@pytest.mark.parametrize("delta_bf16", [True, False])
@pytest.mark.parametrize("norm,norm_topk", [("mixtral", True), ("qwen3", True), ("qwen3", False)])
@pytest.mark.parametrize("t,e,k,h", [(1, 128, 8, 2048), (1, 8, 2, 4096), (3, 60, 4, 256), (1, 128, 8, 5120),
                                     (2, 8, 2, 776)])
def test_router_add_norm_matches_reference(delta_bf16, norm, norm_topk, t, e, k, h):
    """route_add_norm: s = h + delta exactly (fp32), x = bf16(rmsnorm(s) * w) within one bf16 rounding of the
    float64 reference, the routing of that x as route_ref's, h left as it was."""
    import cupy

    from lowbit.kernels import moe_router

    rng = np.random.default_rng(t * e + h + delta_bf16)
    hh = rng.standard_normal((t, h), dtype=np.float32) * np.float32(3.0)
    delta = gc.random_bf16(rng, (t, h)) if delta_bf16 else rng.standard_normal((t, h), dtype=np.float32)
    nw = (1.0 + 0.2 * rng.standard_normal(h)).astype(np.float32)
    r = gc.random_bf16(rng, (e, h), 0.1 * (256 / h) ** 0.5)
    h_dev = cupy.asarray(hh)
    s, x, ids, wts = moe_router.route_add_norm(h_dev, cupy.asarray(delta), cupy.asarray(nw), 1e-6, cupy.asarray(r), k,
                                               norm, norm_topk)
    want_s = hh + delta.astype(np.float32)
    np.testing.assert_array_equal(s.get(), want_s)
    np.testing.assert_array_equal(h_dev.get(), hh)  # not updated in place
    s64 = want_s.astype(np.float64)
    want_x = s64 / np.sqrt((s64 * s64).mean(axis=-1, keepdims=True) + 1e-6) * nw
    got_x = x.get().astype(np.float64)
    np.testing.assert_allclose(got_x, want_x, rtol=2.0**-7, atol=1e-30)  # one bf16 rounding
    rids, rw, logits = ref.route_ref(got_x, r, k, norm, norm_topk)  # the routing of the x the kernel used
    clear = ref.routing_margin(logits, k) > 1e-3
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(ids.get()[clear], rids[clear])
    np.testing.assert_allclose(wts.get()[clear], rw[clear], rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
def test_router_add_norm_rejects_bad_input():
    import cupy

    from lowbit.kernels import moe_router

    h = cupy.zeros((1, 256), cupy.float32)
    r = cupy.zeros((8, 256), numerics.BF16)
    with pytest.raises(KernelError, match="delta"):
        moe_router.route_add_norm(h, cupy.zeros((1, 128), cupy.float32), cupy.ones(256, cupy.float32), 1e-6, r, 2)
    with pytest.raises(KernelError, match="tokens"):
        big = cupy.zeros((65, 256), cupy.float32)
        moe_router.route_add_norm(big, big, cupy.ones(256, cupy.float32), 1e-6, r, 2)


def _ragged_ids(t, e, k, rng, kind):
    if kind == "all_on_one":  # k == 1 rows all on expert 3; others get nothing
        ids = np.full((t, k), 3)
        ids[:, 1:] = (np.arange(1, k)[None, :] + 3) % e
        return ids
    if kind == "half_empty":  # only even experts receive tokens
        return np.stack([rng.choice(np.arange(0, e, 2), k, replace=False) for _ in range(t)])
    return np.stack([rng.choice(e, k, replace=False) for _ in range(t)])


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["random", "all_on_one", "half_empty"])
@pytest.mark.parametrize("t,e,k,bm", [(1, 16, 4, 16), (300, 16, 4, 64), (5000, 128, 8, 128)])
def test_align_permutation(kind, t, e, k, bm):
    import cupy

    from lowbit.kernels import moe_router

    rng = np.random.default_rng(t)
    ids = _ragged_ids(t, e, k, rng, kind).astype(np.int32)
    p = moe_router.align(cupy.asarray(ids), e, bm)
    offs, tiles, pos, tok = (a.get() for a in (p.offs, p.tile_offs, p.pos, p.sorted_tok))
    counts = np.bincount(ids.reshape(-1), minlength=e)
    np.testing.assert_array_equal(offs, np.concatenate([[0], np.cumsum(counts)]))
    np.testing.assert_array_equal(tiles, np.concatenate([[0], np.cumsum(-(-counts // bm))]))
    assert sorted(pos.tolist()) == list(range(t * k))  # a permutation
    flat = ids.reshape(-1)
    np.testing.assert_array_equal(tok[pos], np.arange(t * k) // k)
    assert np.all((pos >= offs[flat]) & (pos < offs[flat + 1]))  # each row inside its expert's range


@pytest.mark.gpu
@pytest.mark.parametrize("scheme,opts", SCHEMES)
@pytest.mark.parametrize("path,t", [("decode", 1), ("decode", 3), ("prefill", 2), ("prefill", 37), ("prefill", 700)])
def test_moe_experts_every_scheme(scheme, opts, path, t):
    e, k, h = 16, 4, 256
    i = 384 if opts.get("group_size") == 128 else 160  # int4 g128 needs I % 128 == 0
    mw, dense = _experts(scheme, opts, e, h, i, seed=1)
    rng = np.random.default_rng(t)
    for kind in ("random", "all_on_one", "half_empty"):
        x = gc.random_bf16(rng, (t, h))
        ids = _ragged_ids(t, e, k, rng, kind)
        wts = rng.random((t, k)).astype(np.float32)
        err = _run_experts(mw, dense, x, ids, wts, path=path)
        assert err < gc.MOE_BOUND, f"{scheme} {opts} {path} T={t} {kind}: rel err {err:.3g}"


@pytest.mark.gpu
def test_moe_decode_shapes_in_any_order():
    # the decode kernels' shared-memory limit belongs to the compiled function that every shape shares:
    # a smaller shape after a larger one must not lower it under the larger one's next launch
    rng = np.random.default_rng(5)
    big, small = _experts("fp8-block", {}, 8, 512, 192, seed=6), _experts("fp8-block", {}, 8, 64, 32, seed=7)
    for mw, dense in (big, small, big, small):
        x = gc.random_bf16(rng, (2, mw.hidden))
        ids = _ragged_ids(2, 8, 4, rng, "random")
        err = _run_experts(mw, dense, x, ids, rng.random((2, 4)).astype(np.float32), path="decode")
        assert err < gc.MOE_BOUND, err


@pytest.mark.gpu
@pytest.mark.parametrize("scheme,opts", SCHEMES)
@pytest.mark.parametrize("kernels", ["gemv", "warp"])
def test_moe_decode_kernels(monkeypatch, scheme, opts, kernels):
    # both decode kernel families (DECODE_KERNELS) for 1..4 tokens and ragged routings, poisoned outputs
    from lowbit.kernels import moe

    monkeypatch.setattr(moe, "DECODE_KERNELS", kernels)
    i = 384 if opts.get("group_size") == 128 else 160
    mw, dense = _experts(scheme, opts, 16, 256, i, seed=8)
    rng = np.random.default_rng(9)
    for t in (1, 2, 4):
        for kind in ("random", "all_on_one", "half_empty"):
            x = gc.random_bf16(rng, (t, 256))
            ids = _ragged_ids(t, 16, 4, rng, kind)
            err = _run_experts(mw, dense, x, ids, rng.random((t, 4)).astype(np.float32), path="decode")
            assert err < gc.MOE_BOUND, f"{kernels} {scheme} {opts} T={t} {kind}: rel err {err:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("scheme,opts", SCHEMES)
@pytest.mark.parametrize("cfg", [((1, 1, 1), (1, 1, 1)), ((2, 4, 3), (4, 2, 2)), ((8, 1, 1), (1, 8, 3)),
                                 ((1, 8, 2), (2, 4, 1)), ((4, 1, 5), (8, 1, 4)), ((4, 2, 1), ("smem", 1)),
                                 ((2, 1, 2), ("smem", 2)), ((1, 1, 1), ("smem", 5))])
@pytest.mark.parametrize("xs", [True, False])
def test_moe_decode_gemv_launch_plans(monkeypatch, scheme, opts, cfg, xs):
    # the grouped GEMVs under every CTA shape and split: warps along K (shared-memory sums), split K with
    # the last-arriving reduction, several K splits per expert slot, the fast and the tail loops; the down
    # launch with its weights in shared memory, 1, 2 and 5 warps a slot (parts of 0-6 iterations, odd ones);
    # x staged in shared memory (the NAME_xs kernels, gemv.XS) and through L1
    import cupy

    from lowbit.kernels import gemv as G
    from lowbit.kernels import moe_gemv

    monkeypatch.setattr(G, "XS", xs)
    e, k, h, i = 8, 3, 1024, 384
    mw, dense = _experts(scheme, opts, e, h, i, seed=10)
    rng = np.random.default_rng(11)
    for t in (1, 3):
        x = gc.random_bf16(rng, (t, h))
        ids = _ragged_ids(t, e, k, rng, "random")
        wts = rng.random((t, k)).astype(np.float32)
        out = cupy.full((t, h), np.nan, dtype=numerics.BF16)
        moe_gemv.decode_gemv(cupy.asarray(x), cupy.asarray(ids, dtype=cupy.int32), cupy.asarray(wts), mw, out=out,
                             cfg=cfg)
        want = ref.moe_experts_ref(x, ids, wts, *dense)
        err = gc.rel_err(out.get().astype(np.float32), want)
        assert err < gc.MOE_BOUND, f"{scheme} {opts} {cfg} T={t}: rel err {err:.3g}"


def test_gate_up_ring_bytes(monkeypatch):
    # the gate/up launch's per-warp weight rings (LOWBIT_GEMV_RING stages of GEMV_UNROLL 1 KiB iterations a warp):
    # none by default; 64 KiB for an 8-warp CTA at 4 stages; none in the x-prefetch build (no ring in the kernel)
    from lowbit.kernels import moe_gemv

    for var in ("LOWBIT_GEMV_RING", "LOWBIT_GEMV_UNROLL", "LOWBIT_GEMV_XPREFETCH"):
        monkeypatch.delenv(var, raising=False)
    moe_gemv.ring_bytes.cache_clear()
    try:
        assert moe_gemv.ring_bytes("fp8-block", 8) == 0
        moe_gemv.ring_bytes.cache_clear()
        monkeypatch.setenv("LOWBIT_GEMV_RING", "4")
        assert moe_gemv.ring_bytes("fp8-block", 8) == 8 * 4 * 2 * 1024
        assert moe_gemv.ring_bytes("nvfp4", 2) == 2 * 4 * 2 * 1024
        moe_gemv.ring_bytes.cache_clear()
        monkeypatch.setenv("LOWBIT_GEMV_RING", "3")
        monkeypatch.setenv("LOWBIT_GEMV_XPREFETCH", "1")
        assert moe_gemv.ring_bytes("int4", 4) == 0
    finally:
        moe_gemv.ring_bytes.cache_clear()


@pytest.mark.gpu
@pytest.mark.parametrize("scheme,opts", SCHEMES)
@pytest.mark.parametrize("xs", [True, False])
def test_moe_decode_gate_up_ring(monkeypatch, scheme, opts, xs):
    # the gate/up launch with its weights through the per-warp cp.async ring (LOWBIT_GEMV_RING, off by default):
    # 2 and 4 stages, CTA shapes with warps along K, K splits and the tail loop, x staged and through L1, ragged
    # routings, poisoned outputs; the kernel and ring caches are switched to the ring build and back
    import cupy

    from lowbit.kernels import gemv as G
    from lowbit.kernels import moe_gemv

    def fresh():
        moe_gemv._kernel.cache_clear()
        moe_gemv.ring_bytes.cache_clear()
        moe_gemv._TUNED.clear()

    monkeypatch.setattr(G, "XS", xs)
    e, k, h, i = 8, 3, 1152, 384
    mw, dense = _experts(scheme, opts, e, h, i, seed=18)
    rng = np.random.default_rng(19)
    try:
        for stages in (2, 4):
            monkeypatch.setenv("LOWBIT_GEMV_RING", str(stages))
            fresh()
            assert moe_gemv.ring_bytes(mw.scheme, 8) == 8 * stages * G.compile_defines(mw.scheme)["GEMV_UNROLL"] * 1024
            for cfg in (((8, 1, 1), ("smem", 2)), ((2, 4, 3), (4, 2, 2)), ((1, 1, 1), (1, 1, 1))):
                for t in (1, 3):
                    x = gc.random_bf16(rng, (t, h))
                    ids = _ragged_ids(t, e, k, rng, "all_on_one" if t == 3 else "random")
                    wts = rng.random((t, k)).astype(np.float32)
                    out = cupy.full((t, h), np.nan, dtype=numerics.BF16)
                    moe_gemv.decode_gemv(cupy.asarray(x), cupy.asarray(ids, dtype=cupy.int32), cupy.asarray(wts), mw,
                                         out=out, cfg=cfg)
                    want = ref.moe_experts_ref(x, ids, wts, *dense)
                    err = gc.rel_err(out.get().astype(np.float32), want)
                    assert err < gc.MOE_BOUND, f"{scheme} {opts} ring {stages} {cfg} T={t}: rel err {err:.3g}"
    finally:
        monkeypatch.delenv("LOWBIT_GEMV_RING", raising=False)
        fresh()


@pytest.mark.gpu
@pytest.mark.parametrize("scheme,opts", SCHEMES)
def test_moe_decode_down_smem_qwen3_layout(scheme, opts):
    # Qwen3-MoE proportions (k = 8 of 32 experts, I = 768, H = 512): the down launch that holds every chosen
    # expert's rows in shared memory (taken by rule where it fits), 1 and 2 tokens, ragged routings, NaN outputs
    import cupy

    from lowbit.kernels import moe_gemv

    e, k, h, i = 32, 8, 512, 768
    mw, dense = _experts(scheme, opts, e, h, i, seed=12)
    assert moe_gemv.down_smem_fits(mw, k, 2, 0)  # bf16 too: 200 KiB of rows, no side data
    rng = np.random.default_rng(13)
    for t in (1, 2):
        for kind in ("random", "all_on_one"):
            x = gc.random_bf16(rng, (t, h))
            ids = _ragged_ids(t, e, k, rng, kind)
            wts = rng.random((t, k)).astype(np.float32)
            out = cupy.full((t, h), np.nan, dtype=numerics.BF16)
            for wk in (1, 2):
                moe_gemv.decode_gemv(cupy.asarray(x), cupy.asarray(ids, dtype=cupy.int32), cupy.asarray(wts), mw,
                                     out=out, cfg=((4, 2, 1), ("smem", wk)))
                err = gc.rel_err(out.get().astype(np.float32), ref.moe_experts_ref(x, ids, wts, *dense))
                assert err < gc.MOE_BOUND, f"{scheme} {opts} wk={wk} T={t} {kind}: rel err {err:.3g}"


def test_down_smem_bytes():
    # pure function: Qwen3-30B-A3B fp8 (k = 8, I = 768): 8 x 16 rows at a 832-byte pitch + 8 warps x 12
    # iterations x 2 rows x 32 lanes x 8 bytes of side data
    from lowbit.kernels.moe_gemv import down_smem_bytes

    assert down_smem_bytes("fp8-block", 8, 768, 1) == 8 * 16 * 832 + 8 * 12 * 2 * 32 * 8
    assert down_smem_bytes("int4", 8, 768, 2) == 8 * 16 * 448 + 16 * 3 * 2 * 32 * 8
    assert down_smem_bytes("bf16", 2, 14336, 1) == 2 * 16 * (28672 + 64)
    from lowbit.kernels.gemv_smem import smem_bytes  # the dense form: one slot, every warp its own part of K

    assert smem_bytes("fp8-block", 4096, 1, 16, 16) == 16 * 4160 + 16 * 4 * 2 * 32 * 8


def test_plan_decode_fills_the_gpu():
    # pure function: the planned launches split K when the experts alone would leave SMs idle
    from lowbit.kernels.moe_gemv import plan_decode

    (gr, gk, gs), (dr, dk, ds) = plan_decode(1, 8, 768, 2048, "fp8-block", 132)
    gate_ctas = -(-(768 // 8) // gr) * gs * 8
    down_ctas = -(-(2048 // 16) // dr) * ds * 8
    assert gate_ctas >= 132 and down_ctas >= 132
    assert 1 <= gr * gk <= 8 and 1 <= dr * dk <= 8
    (gr, gk, gs), _ = plan_decode(1, 2, 14336, 4096, "nvfp4", 132)
    assert gs * -(-(14336 // 8) // gr) * 2 >= 132


@pytest.mark.gpu
@pytest.mark.parametrize("t", [5, 64, 1000])
def test_moe_w8a8_prefill(t):
    mw, dense = _experts("fp8-block", {}, 8, 256, 384, seed=2)
    rng = np.random.default_rng(t)
    x = gc.random_bf16(rng, (t, 256))
    ids = _ragged_ids(t, 8, 2, rng, "random")
    err = _run_experts(mw, dense, x, ids, rng.random((t, 2)).astype(np.float32), act="fp8", path="prefill")
    assert err < gc.MOE_BOUND


@pytest.mark.gpu
@pytest.mark.parametrize("norm,k,e", [("mixtral", 2, 8), ("qwen3", 8, 128)])
@pytest.mark.parametrize("t", [1, 2, 300])
def test_moe_forward_layer(norm, k, e, t):
    mw, dense = _experts("fp8-block", {}, e, 128, 64, seed=3)
    router = np.random.default_rng(9).standard_normal((e, 128)).astype(np.float32) * np.float32(0.2)
    for act in ("bf16", "fp8"):
        r = gc.check_moe(mw, dense, router, k, t, norm=norm, act=act, seed=t)
        assert r.passed, r


@pytest.mark.gpu
def test_moe_weights_held_once_and_checked():
    from lowbit.kernels.moe import MoeWeights

    mw, _ = _experts("int4", {"group_size": 32}, 4, 64, 32)
    assert mw.gate.tensors["weight_packed"].shape == (4, 32, 8)
    assert mw.down.tensors["weight_packed"].shape == (4, 64, 4)
    assert mw.expert_nbytes() * 4 == mw.gate.nbytes() + mw.up.nbytes() + mw.down.nbytes()
    with pytest.raises(KernelError, match="no experts"):
        MoeWeights.from_checkpoint_tensors("int4", [])
    with pytest.raises(KernelError, match="gate"):
        MoeWeights.from_checkpoint_tensors("bf16", [{"gate": {"weight": np.zeros((32, 64), numerics.BF16)}}])


@pytest.mark.gpu
@pytest.mark.parametrize("scheme,opts", SCHEMES)
def test_moe_decode_staged_kernels(monkeypatch, scheme, opts):
    # the register decode kernels are the default; check the staged (shared-memory) ones too
    from lowbit.kernels import moe

    monkeypatch.setattr(moe, "STAGED_MAX_SMEM", 160 * 1024)
    i = 384 if opts.get("group_size") == 128 else 160
    mw, dense = _experts(scheme, opts, 16, 256, i, seed=4)
    rng = np.random.default_rng(5)
    for t in (1, 3):
        x = gc.random_bf16(rng, (t, 256))
        ids = _ragged_ids(t, 16, 4, rng, "all_on_one")
        err = _run_experts(mw, dense, x, ids, rng.random((t, 4)).astype(np.float32), path="decode")
        assert err < gc.MOE_BOUND, f"{scheme} {opts} T={t}: rel err {err:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("scheme,opts", SCHEMES)
@pytest.mark.parametrize("t", [1, 2, 4])
def test_moe_decode_fused_matches_reference(monkeypatch, scheme, opts, t):
    # moe_forward for a few tokens: router + experts in one persistent launch (moe_decode_fused)
    import cupy

    from lowbit.kernels import moe

    monkeypatch.setattr(moe, "FUSED_DECODE", True)
    e, k, h = 16, 4, 256
    i = 384 if opts.get("group_size") == 128 else 160
    mw, dense = _experts(scheme, opts, e, h, i, seed=6)
    rng = np.random.default_rng(t)
    router = gc.random_bf16(rng, (e, h), 0.2)
    assert moe._fused_fits(cupy.zeros((t, h), numerics.BF16), mw, k)
    checked = 0
    for _ in range(4):  # fresh draws; a draw with a near-tie in the routing is skipped
        x = gc.random_bf16(rng, (t, h))
        rids, rw, logits = ref.route_ref(x, router, k, "qwen3", True)
        if ref.routing_margin(logits, k).min() < 1e-3:
            continue
        out = cupy.full((t, h), np.nan, dtype=numerics.BF16)
        y = moe.moe_forward(cupy.asarray(x), cupy.asarray(router), mw, k, "qwen3", True, out=out)
        assert y is out
        err = gc.rel_err(out.get().astype(np.float32), ref.moe_experts_ref(x, rids, rw, *dense))
        assert err < gc.MOE_BOUND, f"{scheme} {opts} T={t}: rel err {err:.3g}"
        checked += 1
    assert checked >= 2
