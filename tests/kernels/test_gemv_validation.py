"""Launcher logic that runs without a GPU: layout validation, split-K planning, act/scheme pairing."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.errors import KernelError
from lowbit.formats import scheme_module
from lowbit.kernels.gemv import _check_weight, plan_launch
from lowbit.kernels.weights import GpuWeight, check_layout


def _q(scheme, n=40, k=256, **opts):
    w = np.random.default_rng(0).standard_normal((n, k)).astype(np.float32)
    return scheme_module(scheme).quantize(w, **opts)


@pytest.mark.parametrize("scheme,opts", [("fp8-block", {}), ("nvfp4", {}),
                                         ("int4", {"group_size": 64, "asymmetric": True})])
def test_check_layout_accepts_the_formats_output(scheme, opts):
    assert check_layout(scheme, _q(scheme, **opts), opts) == (40, 256, None)


def test_check_layout_accepts_stacked_experts():
    per = [_q("nvfp4") for _ in range(3)]
    stacked = {s: np.stack([p[s] for p in per]) for s in per[0]}
    assert check_layout("nvfp4", stacked, {}) == (40, 256, 3)


@pytest.mark.parametrize("scheme,opts", [("fp8-block", {}), ("nvfp4", {}), ("int4", {"group_size": 128}),
                                         ("int4", {"group_size": 32, "asymmetric": True})])
def test_every_scale_tensor_keeps_a_tail(scheme, opts):
    """Every tensor of a layout besides the packed weight is one GpuWeight keeps TAIL_BYTES after (weights.TAILED):
    a scheme's new side tensor cannot be left out of the contract the kernels' aligned scale reads rely on."""
    from lowbit.kernels.weights import TAILED, _expected_layout

    side = set(_expected_layout(scheme, 256, 512, opts)) - {"weight", "weight_packed"}
    assert side and side <= set(TAILED)


@pytest.mark.parametrize("scheme,suffix,bad", [
    ("fp8-block", "weight_scale_inv", np.ones((1, 1), np.float32)),
    ("nvfp4", "weight_scale", np.ones((40, 8), np.uint8)),
    ("int4", "weight_scale", np.ones((40, 3), np.float32)),
])
def test_check_layout_names_the_tensor_with_the_wrong_shape(scheme, suffix, bad):
    t = _q(scheme)
    t[suffix] = bad
    with pytest.raises(KernelError, match=suffix):
        check_layout(scheme, t, {"group_size": 128} if scheme == "int4" else {})


def test_check_layout_missing_and_unknown():
    t = _q("nvfp4")
    del t["weight_global_scale"]
    with pytest.raises(KernelError, match="weight_global_scale"):
        check_layout("nvfp4", t, {})
    with pytest.raises(KernelError, match="unknown scheme"):
        check_layout("fp4", t, {})
    with pytest.raises(KernelError, match="not supported"):
        check_layout("nvfp4", {"weight_packed": np.zeros((4, 5), np.uint8)}, {})  # K = 10


def test_int4_weight_shape_must_agree():
    t = _q("int4")
    t["weight_shape"] = np.array([40, 512], np.int64)
    with pytest.raises(KernelError, match="weight_shape"):
        check_layout("int4", t, {"group_size": 128})


def test_act_must_match_scheme_and_experts_need_a_view():
    w = GpuWeight("int4", 40, 256, {}, {"group_size": 128})
    with pytest.raises(KernelError, match="act='fp8' needs a fp8-block"):
        _check_weight(w, "fp8")
    with pytest.raises(KernelError, match="act="):
        _check_weight(w, "int8")
    with pytest.raises(KernelError, match="expert"):
        _check_weight(GpuWeight("nvfp4", 40, 256, {}, {}, experts=4), "bf16")


def test_plan_launch_fills_the_gpu_evenly():
    from lowbit.kernels.gemv import SHAPES_OF_CTA, _ctas_per_sm

    assert _ctas_per_sm(128, 8) == 2 and _ctas_per_sm(64, 8) == 4 and _ctas_per_sm(255, 4) == 2
    for scheme in ("bf16", "fp8-block", "nvfp4", "int4"):
        for n, k in [(4096, 4096), (8192, 29568), (29568, 8192), (768, 2048), (2048, 768), (16, 128)]:
            wr, wk, s = plan_launch(n, k, scheme, 132, 96)
            assert (wr, wk) in SHAPES_OF_CTA and 1 <= s <= 64
            iters = -(-k // {"bf16": 32, "fp8-block": 64, "nvfp4": 128, "int4": 128}[scheme])
            assert s * wk == 1 or iters // (s * wk) >= 4  # every warp keeps >= 2 double-buffered groups
    # a shape whose row blocks alone fill the 132 x 4 slots of 8-warp CTAs exactly needs no split
    assert plan_launch(132 * 4 * 8 * 16, 4096, "bf16", 132, 64) == (8, 1, 1)
    # a small N is split along K to reach every SM
    wr, wk, s = plan_launch(768, 8192, "fp8-block", 132, 80)
    assert -(-768 // (16 * wr)) * s >= 132


def test_build_variants_add_their_knobs_on_top_of_the_default_build(monkeypatch):
    from lowbit.kernels import gemv as G

    monkeypatch.delenv("LOWBIT_GEMV_MAXREG", raising=False)
    base = G.compile_defines("fp8-block")
    assert base["GEMV_MAXREG"] == 0 and base["GEMV_MIN_BLOCKS"] == G.COMPILE_TUNING["fp8-block"]["GEMV_MIN_BLOCKS"]
    for v, knobs in enumerate(G.VARIANTS["fp8-block"], start=1):
        d = G.compile_defines("fp8-block", v)
        assert all(d[key] == val for key, val in knobs.items())
        assert {key: val for key, val in d.items() if key not in knobs} == \
            {key: val for key, val in base.items() if key not in knobs}
    monkeypatch.setenv("LOWBIT_GEMV_MAXREG", "88")  # an experiment's override applies to the default build
    assert G.compile_defines("fp8-block")["GEMV_MAXREG"] == 88


def test_fastest_config_times_round_robin_after_an_untimed_pass(monkeypatch):
    """Every candidate runs once untimed, then they are timed in turn (not one candidate's repetitions back
    to back), and the lowest median wins (one outlier does not decide)."""
    from lowbit.kernels import timing

    launched, timed = [], []
    times = {"a": [5.0, 5.0, 5.0], "b": [1.0, 9.0, 1.0], "c": [3.0, 3.0, 3.0]}

    def fake_time_once(launch, cfg, flush):
        timed.append(cfg)
        return times[cfg][sum(1 for c in timed if c == cfg) - 1]

    monkeypatch.setattr(timing, "time_once", fake_time_once)
    best = timing.fastest_config(launched.append, ["a", "b", "c", "a"], flush="a flush buffer", reps=3)
    assert launched == ["a", "b", "c"]  # the untimed pass, duplicates dropped
    assert timed == ["a", "b", "c"] * 3
    assert best == "b"  # medians: a 5, b 1, c 3


def test_autotune_leaves_out_ctas_larger_than_warps(monkeypatch):
    """With LOWBIT_GEMV_WARPS below 8 (gemv.WARPS) the register-loop candidates of more warps are not timed (their
    launch refuses them: this crashed a decode run at WARPS = 4); the TMA and shared-memory builds' are."""
    from lowbit.kernels import gemv as G

    seen = []
    monkeypatch.setattr(G, "WARPS", 4)
    monkeypatch.setattr(G, "_TUNED", {})
    monkeypatch.setattr(G, "fastest_config", lambda launch, cands: seen.extend(cands) or cands[0])
    extra = [(1, 8, 1, 1), (2, 2, 2, 1), (8, 1, 2, G.TMA_VARIANT), (1, 16, 1, G.SMEM_VARIANT)]
    assert G._autotune("key", None, (1, 4, 1), lambda: extra) == (1, 4, 1, 0)
    assert all(c[0] * c[1] <= 4 for c in seen if c[3] >= 0)
    assert (1, 4, 1, 0) in seen and (2, 2, 2, 1) in seen and (1, 8, 1, 1) not in seen and (1, 8, 1, 0) not in seen
    assert (8, 1, 2, G.TMA_VARIANT) in seen and (1, 16, 1, G.SMEM_VARIANT) in seen


def test_moe_decode_tuner_leaves_out_ctas_larger_than_warps(monkeypatch):
    """The MoE decode tuner's gate/up and down candidates are filtered the same way (moe_gemv.fitting)."""
    from lowbit.kernels import gemv as G
    from lowbit.kernels import moe_gemv

    monkeypatch.setattr(G, "WARPS", 4)
    for cands in (moe_gemv.GATE_UP_CANDIDATES, moe_gemv.DOWN_CANDIDATES):
        kept = moe_gemv.fitting((2, 2, 1), cands)
        assert kept[0] == (2, 2, 1) and all(c[0] * c[1] <= 4 for c in kept)
        assert kept[1:] == [c for c in cands if c[0] * c[1] <= 4]


def test_tma_build_knobs_and_shared_memory(monkeypatch):
    """The TMA build's defines (TMA_BUILD, LOWBIT_GEMV_TMA override or off) and its ring's shared memory."""
    from lowbit.kernels import gemv as G

    monkeypatch.delenv("LOWBIT_GEMV_TMA", raising=False)
    d = G.compile_defines("nvfp4", G.TMA_VARIANT)
    assert d["GEMV_TMA"] == G.TMA_BUILD["GEMV_TMA"] and d["GEMV_UNROLL"] == G.COMPILE_TUNING["nvfp4"]["GEMV_UNROLL"]
    assert G.compile_defines("nvfp4")["GEMV_MIN_BLOCKS"] == G.COMPILE_TUNING["nvfp4"]["GEMV_MIN_BLOCKS"]
    # stages x unroll x [16 rows per tile x 64 bytes] + 1 KB of alignment slack
    assert G.tma_smem_bytes("int4", 8) == G.TMA_BUILD["GEMV_TMA"] * d["GEMV_UNROLL"] * 16 * 8 * 64 + 1024
    # per-scheme tuning on top of TMA_BUILD (bf16: 4 iterations a stage)
    db = G.compile_defines("bf16", G.TMA_VARIANT)
    assert db["GEMV_UNROLL"] == G.TMA_TUNING["bf16"]["GEMV_UNROLL"] == 4 and db["GEMV_TMA_LATE"] == 1
    assert G.tma_smem_bytes("bf16", 8) == G.TMA_BUILD["GEMV_TMA"] * 4 * 16 * 8 * 64 + 1024
    monkeypatch.setenv("LOWBIT_GEMV_TMA", "6,3,1")
    assert G.tma_build() == {**G.TMA_BUILD, "GEMV_TMA": 6, "GEMV_TMA_SIDE": 3, "GEMV_MIN_BLOCKS": 1}
    assert G.tma_smem_bytes("int4", 4) == 6 * d["GEMV_UNROLL"] * 16 * 4 * 64 + 1024
    # the optional fields: unroll, release after the math, warps (the launch bound)
    monkeypatch.setenv("LOWBIT_GEMV_TMA", "6,3,1,1,0,4")
    assert G.compile_defines("bf16", G.TMA_VARIANT) == {
        **G.compile_defines("bf16"), **G.TMA_BUILD, "GEMV_TMA": 6, "GEMV_TMA_SIDE": 3, "GEMV_MIN_BLOCKS": 1,
        "GEMV_UNROLL": 1, "GEMV_TMA_LATE": 0, "GEMV_WARPS": 4}
    monkeypatch.setenv("LOWBIT_GEMV_TMA", "0")
    assert G.tma_build() == {}
    monkeypatch.setenv("LOWBIT_GEMV_TMA", "four")
    with pytest.raises(KernelError, match="LOWBIT_GEMV_TMA"):
        G.tma_build()


def test_smem_rule_picks_the_most_warps_that_fit_one_wave(monkeypatch):
    """gemv_smem.dense_warps without a GPU (device and kernel attributes stubbed as an H200's): Qwen3's o_proj
    (2048 x 4096 fp8, 128 CTAs) gets 16 warps, its q|k|v (5120 x 2048, 320 CTAs) 4, a 29568-row weight none; the
    choice is kept per shape and follows LOWBIT_GEMV_SMEM_WARPS (RULE_MAX_WARPS) and LOWBIT_GEMV_SMEM (DENSE)."""
    from types import SimpleNamespace

    from lowbit.kernels import gemv_smem

    calls = []
    monkeypatch.setattr(gemv_smem, "_fn", lambda w, act, dev: calls.append(w.n) or SimpleNamespace(num_regs=104))
    monkeypatch.setattr(gemv_smem, "_device", lambda dev: (90, 232448, 233472, 65536, 132))
    monkeypatch.setattr(gemv_smem, "_WARPS", {})

    def w(n, k):
        return SimpleNamespace(scheme="fp8-block", n=n, k=k, group_size=0)

    assert gemv_smem.dense_warps(w(2048, 4096), 1, "bf16", 0) == 16
    assert gemv_smem.dense_warps(w(5120, 2048), 1, "bf16", 0) == 4
    assert gemv_smem.dense_warps(w(29568, 8192), 1, "bf16", 0) == 0
    assert gemv_smem.dense_warps(w(2048, 4096), 9, "bf16", 0) == 0
    gemv_smem.dense_warps(w(2048, 4096), 1, "bf16", 0)
    assert calls == [2048, 5120, 29568]  # decided once per shape
    monkeypatch.setattr(gemv_smem, "RULE_MAX_WARPS", 8)
    assert gemv_smem.dense_warps(w(2048, 4096), 1, "bf16", 0) == 8
    monkeypatch.setattr(gemv_smem, "DENSE", False)
    assert gemv_smem.dense_warps(w(2048, 4096), 1, "bf16", 0) == 0


def test_xs_bytes_sizes_the_slab_and_keeps_the_occupancy(monkeypatch):
    """The staged-x form's shared memory (gemv.xs_bytes): M tokens x the largest K slab of the split x 2 bytes,
    matching the kernel's xs_need; 0 where it would cost the kernel CTAs an SM, or with XS off."""
    from types import SimpleNamespace

    from lowbit.kernels import gemv as G

    fn = SimpleNamespace(num_regs=128, shared_size_bytes=8192)  # 2 CTAs of 8 warps an SM
    # int4: 128 elements an iteration; K = 4096 -> 32 iterations, 3 splits -> slabs of 10-11 iterations
    assert G.xs_bytes(fn, "int4", 1, 4096, 3, 8) == 1 * 11 * 128 * 2
    assert G.xs_bytes(fn, "bf16", 8, 4096, 1, 8) == 8 * 4096 * 2  # 64 KiB: 2 x (64 + 9) KiB fit 228 KiB
    assert G.xs_bytes(fn, "int4", 8, 29568, 1, 8) == 0  # 462 KiB: never
    small = SimpleNamespace(num_regs=64, shared_size_bytes=8192)  # 4 CTAs of 8 warps an SM
    assert G.xs_bytes(small, "bf16", 8, 4096, 1, 8) == 0  # 4 x 73 KiB would not fit: the L1 form keeps 4 CTAs
    monkeypatch.setattr(G, "XS", False)
    assert G.xs_bytes(fn, "int4", 1, 4096, 3, 8) == 0
