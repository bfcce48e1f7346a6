"""Quantized checkpoints: our runtime's logits equal those of the dequantized model.

The reference is transformers (float32) on a checkpoint whose every quantized module was replaced by
`formats.<scheme>.dequantize(...)` stored as F32, so both sides multiply the same float32 weights;
the bound is float32 accumulation noise (1e-4 of max |logit|).
"""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from lowbit.errors import ConfigError
from lowbit.formats.checkpoint import open_checkpoint
from lowbit.formats.safetensors_io import save_file
from lowbit.runtime.generate import Engine
from lowbit.runtime.weights import dequantized, module_layout

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
convert = pytest.importorskip("lowbit.quantize.convert").convert

CASES = [("llama", "fp8-block", {}), ("qwen3", "nvfp4", {}), ("qwen2", "int4", {"group_size": 64}),
         ("qwen2_moe", "int4", {"group_size": 32, "asymmetric": True}), ("mixtral", "fp8-block", {}),
         ("qwen3_moe", "nvfp4", {})]


def write_dequantized(src, out):
    """Every module of `src` in float32 (quantized ones dequantized), config without quantization."""
    ck = open_checkpoint(src)
    tensors = {}
    prefixes = {n.rsplit(".", 1)[0] for n in ck.names()}
    for p in prefixes:
        layout = module_layout(ck, p) if (f"{p}.weight" in ck or f"{p}.weight_packed" in ck) else None
        if layout not in (None, "dense"):
            tensors[f"{p}.weight"] = dequantized(ck, p)
    quant_parts = ("weight", "weight_scale_inv", "weight_packed", "weight_scale", "weight_global_scale",
                   "weight_shape", "weight_zero_point")
    for n in ck.names():
        base, part = n.rsplit(".", 1)
        if f"{base}.weight" in tensors and part in quant_parts:
            continue
        tensors[n] = np.asarray(ck.get(n)).astype(np.float32)
    out.mkdir()
    save_file(out / "model.safetensors", tensors)
    cfg = dict(ck.config)
    cfg.pop("quantization_config")
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("arch,scheme,opts", CASES)
def test_quantized_logits_equal_dequantized_model(tiny_ckpt, token_ids, tmp_path, arch, scheme, opts):
    q = tmp_path / "q"
    convert(tiny_ckpt(arch), q, scheme, device="cpu", **opts)
    eng = Engine(q, device="cpu", max_context=32)
    assert eng.quant[0] == scheme
    ck = open_checkpoint(q)
    assert any(module_layout(ck, n.rsplit(".", 1)[0]) == scheme for n in ck.names() if "layers.0" in n)
    ids = token_ids(eng.cfg.vocab, 17, seed=2)
    ours = eng.logits(ids)
    ref_dir = write_dequantized(q, tmp_path / "deq")
    model = transformers.AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err < 1e-4, f"{arch} {scheme}: max relative logit error {err:.2e}"


def test_third_party_fp8_with_bf16_scales(tiny_ckpt, token_ids, tmp_path):
    """Official Qwen3 FP8 layout: bf16 weight_scale_inv and fully qualified modules_to_not_convert."""
    q = tmp_path / "q"
    convert(tiny_ckpt("qwen3"), q, "fp8-block", device="cpu")
    ck = open_checkpoint(q)
    f32 = Engine(q, device="cpu", max_context=32)
    ids = token_ids(f32.cfg.vocab, 9)
    tensors = {n: np.asarray(ck.get(n)) for n in ck.names()}
    for n in list(tensors):
        if n.endswith("weight_scale_inv"):
            tensors[n] = tensors[n].astype(ml_dtypes.bfloat16)   # a third party rounds scales to bf16
    third = tmp_path / "third"
    third.mkdir()
    save_file(third / "model.safetensors", tensors)
    cfg = dict(ck.config)
    cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                                  "weight_block_size": [128, 128],
                                  "modules_to_not_convert": ["lm_head", "model.layers.0.input_layernorm"]}
    (third / "config.json").write_text(json.dumps(cfg))
    eng = Engine(third, device="cpu", max_context=32)
    a, b = eng.logits(ids), f32.logits(ids)
    # bf16 scales move each weight by <= 2^-9 relative: logits move, but only a little
    assert 0 < np.abs(a - b).max() < 0.05 * np.abs(b).max()


def test_unknown_quantization_config_is_a_clear_error(tiny_ckpt, tmp_path):
    src = tiny_ckpt("llama")
    dst = tmp_path / "odd"
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="awq"):
        Engine(dst, device="cpu")
