"""CPU tests of the numpy MoE reference and the GEMM references (no GPU): routing against transformers'
Mixtral and Qwen3-MoE routers, the whole layer against their sparse MoE blocks (float64)."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.formats import numerics
from lowbit.verify import gemm_checks as gc
from lowbit.verify import moe_reference as ref

torch = pytest.importorskip("torch")


def _mixtral_block(e, k, h, i):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(hidden_size=h, intermediate_size=i, num_local_experts=e, num_experts_per_tok=k)
    return MixtralSparseMoeBlock(cfg).double().eval()


def _qwen3_block(e, k, h, i, norm_topk_prob):
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    cfg = Qwen3MoeConfig(hidden_size=h, moe_intermediate_size=i, num_experts=e, num_experts_per_tok=k,
                         norm_topk_prob=norm_topk_prob)
    return Qwen3MoeSparseMoeBlock(cfg).double().eval()


def _fill(block, rng, e, h, i):
    gate = rng.standard_normal((e, i, h)) / np.sqrt(h)
    up = rng.standard_normal((e, i, h)) / np.sqrt(h)
    down = rng.standard_normal((e, h, i)) / np.sqrt(i)
    router = rng.standard_normal((e, h))
    with torch.no_grad():
        block.gate.weight.copy_(torch.from_numpy(router))
        block.experts.gate_up_proj.copy_(torch.from_numpy(np.concatenate([gate, up], axis=1)))
        block.experts.down_proj.copy_(torch.from_numpy(down))
    return router, gate, up, down


@pytest.mark.parametrize("arch,norm_topk", [("mixtral", True), ("qwen3", True), ("qwen3", False)])
def test_route_matches_transformers(arch, norm_topk):
    rng = np.random.default_rng(1)
    e, k, h, i, t = (8, 2, 64, 32, 40) if arch == "mixtral" else (16, 4, 64, 32, 40)
    block = _mixtral_block(e, k, h, i) if arch == "mixtral" else _qwen3_block(e, k, h, i, norm_topk)
    router, *_ = _fill(block, rng, e, h, i)
    x = rng.standard_normal((t, h))
    with torch.no_grad():
        _, tw, ti = block.gate(torch.from_numpy(x))
    ids, w, _ = ref.route_ref(x, router, k, norm=arch, norm_topk_prob=norm_topk)
    np.testing.assert_array_equal(ids, ti.numpy())
    # transformers takes the softmax in float32 (router_logits.float()): agreement to float32 rounding
    np.testing.assert_allclose(w, tw.numpy(), rtol=2e-6, atol=1e-7)
    if arch == "qwen3" and not norm_topk:
        assert np.all(w.sum(axis=1) < 1.0)  # un-normalised: a proper subset of the probability mass
    else:
        np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("arch,norm_topk", [("mixtral", True), ("qwen3", True), ("qwen3", False)])
def test_moe_layer_matches_transformers(arch, norm_topk):
    rng = np.random.default_rng(2)
    e, k, h, i, t = (8, 2, 48, 40, 33) if arch == "mixtral" else (16, 4, 48, 40, 33)
    block = _mixtral_block(e, k, h, i) if arch == "mixtral" else _qwen3_block(e, k, h, i, norm_topk)
    router, gate, up, down = _fill(block, rng, e, h, i)
    x = rng.standard_normal((t, h))
    with torch.no_grad():
        want = block(torch.from_numpy(x)[None]).numpy()[0]
    got = ref.moe_ref(x, router, gate, up, down, k, norm=arch, norm_topk_prob=norm_topk)
    # float64 everywhere except transformers' float32 routing softmax
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_mixtral_and_qwen3_normalised_weights_agree():
    # softmax over the chosen k logits == softmax over all, take k, renormalise
    rng = np.random.default_rng(3)
    x, r = rng.standard_normal((20, 16)), rng.standard_normal((10, 16))
    i1, w1, _ = ref.route_ref(x, r, 3, "mixtral")
    i2, w2, _ = ref.route_ref(x, r, 3, "qwen3", True)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(w1, w2, rtol=1e-12)


def test_route_ties_go_to_lower_index_and_margin():
    x = np.ones((1, 4))
    r = np.array([[1.0, 0, 0, 0], [0, 0, 0, 1.0], [0.5, 0.5, 0, 0], [2.0, 0, 0, 0]])
    ids, w, logits = ref.route_ref(x, r, 2, "mixtral")
    assert ids.tolist() == [[3, 0]]  # logits 2, 1, 1, 1: the tie among 0, 1, 2 goes to 0
    assert ref.routing_margin(logits, 2)[0] == 0.0
    np.testing.assert_allclose(w[0], [np.e / (np.e + 1), 1 / (np.e + 1)])
    with pytest.raises(ValueError):
        ref.route_ref(x, r, 2, "deepseek")


def test_experts_ref_with_zero_and_all_tokens_on_one_expert():
    rng = np.random.default_rng(4)
    e, h, i, t = 4, 8, 6, 5
    gate, up = rng.standard_normal((e, i, h)), rng.standard_normal((e, i, h))
    down = rng.standard_normal((e, h, i))
    x = rng.standard_normal((t, h))
    ids = np.full((t, 1), 2)
    got = ref.moe_experts_ref(x, ids, np.full((t, 1), 0.5), gate, up, down)
    hh = ref.silu(x @ gate[2].T) * (x @ up[2].T)
    np.testing.assert_allclose(got, 0.5 * hh @ down[2].T, rtol=1e-12)


def test_quantize_act_ref_golden():
    x = np.zeros((2, 256), np.float32)
    x[0, :128] = np.linspace(-3.5, 7.0, 128)
    x[1, 128:] = -0.25
    q, s = gc.quantize_act_ref(x)
    assert s.shape == (2, 2)
    assert s[0, 0] == np.float32(7.0) / np.float32(448.0)
    assert s[0, 1] == 1.0 and s[1, 0] == 1.0  # all-zero blocks: scale 1, codes 0
    assert q[0, 127] == 448.0 and np.all(q[0, 128:] == 0) and np.all(q[1, :128] == 0)
    assert np.all(q[1, 128:] == -448.0)
    # e4m3 has 3 mantissa bits: relative rounding error <= 2^-4 on normals
    deq = gc.dequant_act_ref(x)
    big = np.abs(x) > 0.1
    assert np.max(np.abs(deq[big] - x[big]) / np.abs(x[big])) <= 2.0**-4


def test_gemm_ref_fp8_close_to_unquantized():
    rng = np.random.default_rng(5)
    x = numerics.to_bf16(rng.standard_normal((16, 256)).astype(np.float32)).astype(np.float32)
    w = rng.standard_normal((24, 256)).astype(np.float32)
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    np.testing.assert_allclose(gc.gemm_ref(w, x, "bf16"), exact, rtol=1e-12)
    err = gc.rel_err(gc.gemm_ref(w, x, "fp8"), exact)
    assert 1e-3 < err < 0.05  # quantized activations differ, but only by e4m3 rounding


def test_rel_err_flags_nan():
    assert gc.rel_err(np.array([np.nan, 1.0]), np.array([1.0, 1.0])) == float("inf")
    assert not gc.KernelCheck("w", "gemm", "int4", "bf16", 4, float("inf"), 1e-2).passed
