"""The CUDA backend (device machine only): logits equal the CPU backend's; graph decode equals eager."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.runtime.generate import Engine
from lowbit.runtime.sampler import SamplingParams

pytestmark = pytest.mark.gpu

CASES = [("llama", None, {}), ("mistral", "int4", {"group_size": 64}), ("qwen2", "fp8-block", {}),
         ("qwen3", "nvfp4", {}), ("mixtral", "int4", {"group_size": 64}), ("qwen2_moe", None, {}),
         ("qwen3_moe", "fp8-block", {}), ("qwen3_moe", "nvfp4", {})]


def checkpoint(tiny_ckpt, tmp_path_factory, arch, scheme, opts):
    path = tiny_ckpt(arch)
    if scheme is None:
        return path
    from lowbit.quantize.convert import convert

    out = tmp_path_factory.mktemp(f"{arch}-{scheme}") / "q"
    convert(path, out, scheme, device="cpu", **opts)
    return out


@pytest.mark.parametrize("arch,scheme,opts", CASES)
def test_cuda_logits_match_cpu(tiny_ckpt, tmp_path_factory, token_ids, arch, scheme, opts):
    path = checkpoint(tiny_ckpt, tmp_path_factory, arch, scheme, opts)
    cpu = Engine(path, device="cpu", max_context=64)
    ids = token_ids(cpu.cfg.vocab, 21, seed=4)
    ref = cpu.logits(ids)
    got = Engine(path, device="cuda", max_context=64).logits(ids)
    # the kernels take bf16 activations (relative rounding 2^-9 per matmul input) and accumulate in
    # fp32; through 2 layers that stays well under 3% of the largest logit
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < 3e-2, f"{arch} {scheme}: cuda vs cpu max relative logit error {err:.2e}"


@pytest.mark.parametrize("arch,scheme,opts", [("llama", None, {}), ("qwen3_moe", "fp8-block", {}),
                                              ("qwen2_moe", "int4", {"group_size": 32})])
def test_cuda_graph_decode_equals_eager(tiny_ckpt, tmp_path_factory, token_ids, arch, scheme, opts):
    path = checkpoint(tiny_ckpt, tmp_path_factory, arch, scheme, opts)
    runs = []
    for graph in (True, False):
        eng = Engine(path, device="cuda", max_context=320, cuda_graph=graph)
        prompt = token_ids(eng.cfg.vocab, 7, seed=9)
        # 300 positions: crosses the 256-position bucket, so two graphs are captured and replayed
        runs.append(eng.generate(prompt, SamplingParams(), max_new_tokens=300).output_ids)
        if graph:
            assert eng.ops.decoder.capture and len(eng.ops.decoder.graphs) == 2
    assert runs[0] == runs[1]


@pytest.mark.parametrize("graph", [True, False])
@pytest.mark.parametrize("arch", ["qwen3", "qwen3_moe"])
def test_greedy_decode_step_returns_the_argmax(tiny_ckpt, token_ids, arch, graph):
    """decode_step(greedy=True) (argmax and its copy to the host inside the step's graph) gives the token that
    the argmax of decode_step's logits gives, step after step (the same position redone: the KV write is the
    same), through the captured graphs and eagerly."""
    eng = Engine(tiny_ckpt(arch), device="cuda", max_context=64, cuda_graph=graph)
    ids = token_ids(eng.cfg.vocab, 8, seed=7)
    eng.logits(ids)
    tok = int(ids[-1])
    for pos in range(8, 16):
        want = int(np.argmax(eng.ops.to_host(eng.ops.decode_step(eng.model, tok, pos))))
        got = eng.ops.decode_step(eng.model, tok, pos, greedy=True)
        assert isinstance(got, int) and got == want, f"position {pos}: {got} != {want}"
        tok = got
    assert eng.ops.decoder.capture == graph and len(eng.ops.decoder.graphs) == (2 if graph else 0)


def test_cuda_sampling_reproducible(tiny_ckpt):
    eng = Engine(tiny_ckpt("qwen3"), device="cuda", max_context=64)
    p = SamplingParams(temperature=0.8, top_k=50, top_p=0.9, seed=3)
    a = eng.generate([5, 6, 7], p, 20).output_ids
    eng.reset()
    assert eng.generate([5, 6, 7], p, 20).output_ids == a


@pytest.mark.parametrize("arch", ["qwen3", "mistral", "qwen3_moe"])
def test_cuda_graph_decode_logits_match_cpu(tiny_ckpt, token_ids, arch):
    """Decode steps through the captured graph (fused attention at a device position) vs the CPU forward."""
    path = tiny_ckpt(arch)
    cpu = Engine(path, device="cpu", max_context=64)
    ids = token_ids(cpu.cfg.vocab, 14, seed=6)
    ref = cpu.logits(ids)
    eng = Engine(path, device="cuda", max_context=64)
    eng.logits(ids[:9])
    got = [eng.ops.to_host(eng.ops.decode_step(eng.model, ids[i], i)) for i in range(9, 14)]
    assert eng.ops.decoder.capture and eng.ops.decoder.graphs
    err = np.abs(np.stack(got) - ref[9:]).max() / np.abs(ref).max()
    assert err < 3e-2, f"{arch}: graph decode vs cpu max relative logit error {err:.2e}"


def test_graph_decode_after_another_model_was_dropped(tiny_ckpt, tmp_path_factory, token_ids):
    """Kernel caches filled during one model's graph warm-up must stay valid for the next model in the process
    (they once lived in the first decoder's private pool and were freed with it)."""
    import gc

    from lowbit.runtime import cuda_ops

    first = Engine(checkpoint(tiny_ckpt, tmp_path_factory, "qwen3_moe", "fp8-block", {}), device="cuda",
                   max_context=64)
    first.generate(token_ids(first.cfg.vocab, 5, seed=1), SamplingParams(), max_new_tokens=8)
    pool = first.ops.decoder.pool
    assert first.ops.decoder.graphs
    del first
    gc.collect()
    assert pool in cuda_ops._GRAPH_POOLS  # kept alive (its unused blocks went back to the device)
    path = checkpoint(tiny_ckpt, tmp_path_factory, "mixtral", "int4", {"group_size": 64})
    runs = []
    for graph in (True, False):
        eng = Engine(path, device="cuda", max_context=64, cuda_graph=graph)
        runs.append(eng.generate(token_ids(eng.cfg.vocab, 6, seed=2), SamplingParams(), max_new_tokens=24).output_ids)
        if graph:
            assert eng.ops.decoder.capture and eng.ops.decoder.graphs
    assert runs[0] == runs[1]
