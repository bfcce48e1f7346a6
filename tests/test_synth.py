"""lowbit.synth: layouts of the 7 archs, determinism, tiny dims, real-shape parameter counts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lowbit.errors import LowbitError
from lowbit.formats.checkpoint import open_checkpoint
from lowbit.synth import make_config, parse_size, tensor_shapes, write_synthetic
from lowbit.synth_presets import ARCHS


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_layout(tmp_path, arch):
    p = write_synthetic(tmp_path / arch, arch)
    ck = open_checkpoint(p)
    cfg = json.loads((p / "config.json").read_text())
    assert len(ck.files()) >= 2 and (p / "model.safetensors.index.json").exists()
    assert {n: s for n, s in tensor_shapes(cfg)} == {n: ck.shape(n) for n in ck.names()}
    assert all(ck.dtype(n) == "BF16" for n in ck.names())
    # every matrix dimension is off multiples of 128 or at least one of them is (edge blocks exercised)
    mats = [ck.shape(n) for n in ck.names() if len(ck.shape(n)) == 2]
    assert any(d % 128 for s in mats for d in s)
    assert cfg["hidden_size"] % 128 != 0
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (p / f).exists()
    w = ck.get("model.layers.0.self_attn.q_proj.weight").astype(np.float32)
    assert abs(float(w.std()) - 0.02) < 0.002 and abs(float(w.mean())) < 0.002  # N(0, 0.02)


def test_deterministic_by_seed(tmp_path):
    a = write_synthetic(tmp_path / "a", "qwen3_moe", seed=3)
    b = write_synthetic(tmp_path / "b", "qwen3_moe", seed=3)
    c = write_synthetic(tmp_path / "c", "qwen3_moe", seed=4)
    files = sorted(x.name for x in a.iterdir())
    assert files == sorted(x.name for x in b.iterdir())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    shard = next(f for f in files if f.endswith(".safetensors"))
    assert (a / shard).read_bytes() != (c / shard).read_bytes()


def test_tensor_values_do_not_depend_on_layer_count(tmp_path):
    a = open_checkpoint(write_synthetic(tmp_path / "a", "llama", layers=1))
    b = open_checkpoint(write_synthetic(tmp_path / "b", "llama", layers=3))
    n = "model.layers.0.mlp.down_proj.weight"
    assert a.get(n).tobytes() == b.get(n).tobytes()


@pytest.mark.parametrize("arch, preset, billions", [
    ("llama", "llama3-8b", 8.03), ("mixtral", "mixtral-8x7b", 46.70),
    ("qwen3_moe", "qwen3-30b-a3b", 30.53), ("qwen2", "qwen2.5-7b", 7.62), ("qwen2", "qwen2.5-72b", 72.71),
    ("qwen3", "qwen3-8b", 8.19),
])
def test_real_preset_parameter_counts(arch, preset, billions):
    # the published parameter counts of these models (model cards) within 0.5%
    n = sum(math.prod(s) for _, s in tensor_shapes(make_config(arch, preset)))
    assert abs(n / 1e9 - billions) / billions < 0.005, n


def test_f32_dtype_and_errors(tmp_path):
    ck = open_checkpoint(write_synthetic(tmp_path / "f", "qwen2", dtype="f32"))
    assert {ck.dtype(n) for n in ck.names()} == {"F32"}
    with pytest.raises(LowbitError, match="unknown arch 'gpt2'.*llama"):
        make_config("gpt2")
    with pytest.raises(LowbitError, match="unknown preset"):
        make_config("llama", "huge")
    assert parse_size("5GB") == 5 * 10**9 and parse_size("1.5MiB") == 1572864 and parse_size(7) == 7


def test_max_shard_size_splits(tmp_path):
    ck = open_checkpoint(write_synthetic(tmp_path / "s", "llama", max_shard_size="300KB"))
    assert len(ck.files()) >= 8
    sizes = {f: 0 for f in ck.files()}
    for n in ck.names():
        sizes[ck.file_of(n)] += ck.nbytes(n)
    biggest = max(ck.nbytes(n) for n in ck.names())
    assert all(s <= max(300_000, biggest) for s in sizes.values())


@pytest.mark.parametrize("arch", ARCHS)
def test_transformers_loads_and_runs(tmp_path, arch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    p = write_synthetic(tmp_path / arch, arch)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        p, output_loading_info=True, dtype=torch.bfloat16)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 42]])).logits
    assert logits.shape == (1, 4, 384) and torch.isfinite(logits).all()
    tok = transformers.AutoTokenizer.from_pretrained(p)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tok("hello world")["input_ids"]) == "hello world"
