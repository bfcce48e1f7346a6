"""Our CPU runtime's logits against transformers' (float32 on the same BF16 weights), every architecture.

Both sides compute in float32 from the same bf16 values, so the bound is float32 accumulation-order
noise scaled by the logit magnitude (1e-4 relative to max |logit|), far tighter than bf16 (4e-3).
"""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.runtime.generate import Engine

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe"]


def hf_logits(path, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def check_close(ours, ref):
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err < 1e-4, f"max relative logit error {err:.2e}"
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() > 0.9


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(tiny_ckpt, token_ids, arch):
    path = tiny_ckpt(arch)
    eng = Engine(path, device="cpu", max_context=64)
    ids = token_ids(eng.cfg.vocab, 23)
    check_close(eng.logits(ids), hf_logits(path, ids))


@pytest.mark.parametrize("arch,rope", [("llama", "llama3"), ("qwen3", "yarn")])
def test_rope_scaling_matches_transformers(tiny_ckpt, token_ids, arch, rope):
    path = tiny_ckpt(arch, rope)
    eng = Engine(path, device="cpu", max_context=128)
    ids = token_ids(eng.cfg.vocab, 100, seed=3)   # past original_max_position_embeddings=64
    check_close(eng.logits(ids), hf_logits(path, ids))


@pytest.mark.parametrize("arch", ["llama", "qwen2_moe"])
def test_incremental_decode_equals_full_forward(tiny_ckpt, token_ids, arch):
    """Prefill 10 tokens, then feed 6 one by one through the KV cache: same logits as one forward."""
    eng = Engine(tiny_ckpt(arch), device="cpu", max_context=32)
    ids = token_ids(eng.cfg.vocab, 16, seed=5)
    full = eng.logits(ids)
    eng.reset()
    step = [eng.model.forward(np.array(ids[:10]), 0)[-1]]
    for i in range(10, 16):
        step.append(eng.ops.decode_step(eng.model, ids[i], i))
    np.testing.assert_allclose(np.stack(step), full[9:], rtol=0, atol=1e-5 * np.abs(full).max())


@pytest.mark.parametrize("arch", ["qwen3", "mixtral"])
def test_device_position_path_equals_int_path(tiny_ckpt, token_ids, arch):
    """The CUDA-graph decode form (position in an array, attention over a masked bucket) on numpy."""
    from lowbit.runtime.kv_cache import DevicePos

    eng = Engine(tiny_ckpt(arch), device="cpu", max_context=48)
    ids = token_ids(eng.cfg.vocab, 12, seed=7)
    full = eng.logits(ids)
    eng.reset()
    eng.model.forward(np.array(ids[:8]), 0)
    got = [eng.model.forward(np.array([ids[i]]), DevicePos(np.array([i], np.int32), 40))[0] for i in range(8, 12)]
    np.testing.assert_allclose(np.stack(got), full[8:], rtol=0, atol=1e-5 * np.abs(full).max())


def test_small_cache_cap_dequantizes_layer_by_layer(tiny_ckpt, token_ids):
    """A cap smaller than the model: the LRU evicts, the cache stays under the cap, logits are unchanged."""
    path = tiny_ckpt("qwen2_moe")
    full = Engine(path, device="cpu", max_context=32)
    small = Engine(path, device="cpu", max_context=32, cpu_cache_bytes=1_000_000)
    ids = token_ids(full.cfg.vocab, 9, seed=11)
    np.testing.assert_array_equal(small.logits(ids), full.logits(ids))
    assert 0 < small.ops.w.used <= 1_000_000 < full.ops.w.used
