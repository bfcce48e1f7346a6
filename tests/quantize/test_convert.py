"""The converter end to end on tiny checkpoints: bytes, fused groups, keep list, determinism, shards."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from lowbit.formats import nvfp4, scheme_module
from lowbit.formats.checkpoint import open_checkpoint
from lowbit.formats.hf_config import scheme_from_config
from lowbit.quantize import stream
from lowbit.quantize.convert import convert

CASES = [("fp8-block", {}), ("nvfp4", {}), ("int4", {"group_size": 32}),
         ("int4", {"group_size": 64, "asymmetric": True})]


def _suffixes(scheme, opts):
    return list(scheme_module(scheme).tensor_layout(128, 128, **opts))


def _converted(src, out, scheme, opts):
    s = convert(src, out, scheme, **opts)
    return s, open_checkpoint(out), open_checkpoint(src)


@pytest.mark.parametrize("arch", ["llama", "mixtral", "qwen3_moe"])
@pytest.mark.parametrize("scheme, opts", CASES)
def test_bytes_equal_whole_tensor_reference(tiny, tmp_path, arch, scheme, opts):
    s, out, src = _converted(tiny(arch), tmp_path / "out", scheme, opts)
    mod = scheme_module(scheme)
    kept = dict(s.kept)
    assert s.quantized > 0 and s.quantized + len(kept) == len(src.names())
    for name in src.names():
        module = name.rpartition(".")[0]
        if name in kept:  # copied bit-exact, same dtype
            assert out.dtype(name) == src.dtype(name) and out.get(name).tobytes() == src.get(name).tobytes()
            continue
        w = src.get(name).astype(np.float32)
        extra = {}
        if scheme == "nvfp4":  # fused-group amax (checked separately below)
            g = float(np.asarray(out.get(f"{module}.weight_global_scale"))[0])
            extra["global_amax"] = float(np.float32(6 * 448) / np.float32(g))
            assert nvfp4.global_scale(extra["global_amax"]) == np.float32(g)
        ref = mod.quantize(w, **opts, **extra)
        assert sorted(ref) == sorted(_suffixes(scheme, opts))
        for sfx, arr in ref.items():
            assert out.get(f"{module}.{sfx}").tobytes() == np.ascontiguousarray(arr).tobytes(), (name, sfx)
    # the config names the scheme and the kept linear-like modules
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert scheme_from_config(cfg)[0] == scheme
    assert "lm_head" in (cfg["quantization_config"].get("ignore") or cfg["quantization_config"]["ignored_layers"])


@pytest.mark.parametrize("arch, group_members", [
    ("llama", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
    ("llama", ["mlp.gate_proj", "mlp.up_proj"]),
    ("mixtral", ["block_sparse_moe.experts.2.w1", "block_sparse_moe.experts.2.w3"]),
    ("qwen3_moe", ["mlp.experts.1.gate_proj", "mlp.experts.1.up_proj"]),
])
def test_nvfp4_fused_groups_share_global_scale(tiny, tmp_path, arch, group_members):
    convert(tiny(arch), tmp_path / "o", "nvfp4")
    out, src = open_checkpoint(tmp_path / "o"), open_checkpoint(tiny(arch))
    p = "model.layers.1."
    scales = {m: out.get(f"{p}{m}.weight_global_scale").tobytes() for m in group_members}
    assert len(set(scales.values())) == 1, scales
    amax = max(float(np.abs(src.get(f"{p}{m}.weight").astype(np.float32)).max()) for m in group_members)
    assert np.frombuffer(scales[group_members[0]], np.float32)[0] == nvfp4.global_scale(amax)
    # a linear outside any group uses its own amax
    own = float(np.abs(src.get(f"{p}self_attn.o_proj.weight").astype(np.float32)).max())
    assert out.get(f"{p}self_attn.o_proj.weight_global_scale")[0] == nvfp4.global_scale(own)


def test_group_kept_together_when_one_member_cannot_convert(tiny, tmp_path):
    s = convert(tiny("llama"), tmp_path / "o", "nvfp4", ignore=[r"layers\.0\.self_attn\.k_proj"])
    kept = dict(s.kept)
    assert kept["model.layers.0.self_attn.k_proj.weight"].startswith("--ignore")
    for m in ("q_proj", "v_proj"):
        assert "fused with model.layers.0.self_attn.k_proj" in kept[f"model.layers.0.self_attn.{m}.weight"]
    assert "model.layers.1.self_attn.k_proj.weight" not in kept  # other layers unaffected
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())["quantization_config"]
    assert {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
            "model.layers.0.self_attn.v_proj"} <= set(cfg["ignore"])


def test_shape_fallback_int4_g128(tiny, tmp_path):
    # qwen3_moe tiny: hidden 192 (gate/up/q/k/v K=192 -> not a multiple of 128), expert down K=256.
    s = convert(tiny("qwen3_moe"), tmp_path / "o", "int4", group_size=128)
    kept = dict(s.kept)
    assert "not a multiple of the int4 group size 128" in kept["model.layers.0.mlp.experts.0.gate_proj.weight"]
    assert "model.layers.0.mlp.experts.0.down_proj.weight" not in kept
    out = open_checkpoint(tmp_path / "o")
    assert out.shape("model.layers.0.mlp.experts.0.down_proj.weight_packed") == (192, 32)


def test_routers_norms_embeddings_kept(tiny, tmp_path):
    s = convert(tiny("mixtral"), tmp_path / "o", "fp8-block")
    kept = dict(s.kept)
    assert kept["model.layers.0.block_sparse_moe.gate.weight"] == "MoE router"
    assert kept["model.embed_tokens.weight"] == "embedding" and kept["lm_head.weight"] == "lm_head"
    assert kept["model.norm.weight"] == "norm"
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())["quantization_config"]
    assert cfg["modules_to_not_convert"] == cfg["ignored_layers"]
    assert "model.layers.1.block_sparse_moe.gate" in cfg["ignored_layers"]
    assert "model.layers.1.post_attention_layernorm" in cfg["ignored_layers"]
    assert any("multiple of 128" in w for w in s.warnings)


def test_qwen2_moe_shared_expert_gate_and_bias(tiny, tmp_path):
    s = convert(tiny("qwen2_moe"), tmp_path / "o", "nvfp4")
    kept = dict(s.kept)
    assert kept["model.layers.0.mlp.shared_expert_gate.weight"] == "MoE router"
    assert kept["model.layers.0.self_attn.q_proj.bias"] == "bias"
    out = open_checkpoint(tmp_path / "o")
    g = {out.get(f"model.layers.0.mlp.shared_expert.{m}_proj.weight_global_scale").tobytes()
         for m in ("gate", "up")}
    assert len(g) == 1


def test_deterministic_and_manifest(tiny, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    convert(tiny("qwen3_moe"), a, "nvfp4")
    convert(tiny("qwen3_moe"), b, "nvfp4")
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    man = json.loads((a / "lowbit.json").read_text())
    assert man["scheme"] == "nvfp4" and man["source"] == str(tiny("qwen3_moe"))
    assert set(man["files"]) == set(files) - {"lowbit.json"}
    for f, digest in man["files"].items():
        assert hashlib.sha256((a / f).read_bytes()).hexdigest() == digest
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (a / f).read_bytes() == (tiny("qwen3_moe") / f).read_bytes()


def test_sharding_and_index(tiny, tmp_path):
    s = convert(tiny("mixtral"), tmp_path / "o", "int4", group_size=64, max_shard_size="400KB")
    shards = [f for f in s.files if f.endswith(".safetensors")]
    assert len(shards) >= 5 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    idx = json.loads((tmp_path / "o" / "model.safetensors.index.json").read_text())
    out = open_checkpoint(tmp_path / "o")  # validates the index against every shard
    assert sorted(idx["weight_map"]) == out.names()
    assert idx["metadata"]["total_size"] == out.total_bytes()
    settings = json.loads((tmp_path / "o" / "lowbit.json").read_text())["settings"]
    assert settings == {"ignore_patterns": [], "generic": False, "max_shard_bytes": 400_000}


def test_manifest_records_ignore_and_every_file_is_fsynced(tiny, tmp_path, monkeypatch):
    import os

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    out = tmp_path / "o"
    convert(tiny("llama"), out, "fp8-block", ignore=[r"layers\.0\.mlp"])
    settings = json.loads((out / "lowbit.json").read_text())["settings"]
    assert settings["ignore_patterns"] == [r"layers\.0\.mlp"] and settings["generic"] is False
    assert {p.name for p in out.iterdir()} <= {Path(s).name for s in synced}  # every file, before the rename
    assert str(tmp_path) in synced  # the parent directory, after the rename


def test_chunked_rows_equal_whole(tiny, tmp_path, monkeypatch):
    # Force many small chunks (128 rows) and compare with the default run: identical bytes.
    convert(tiny("llama"), tmp_path / "a", "int4", group_size=32, asymmetric=True)
    monkeypatch.setattr(stream, "CHUNK_ELEMS", 1)
    convert(tiny("llama"), tmp_path / "b", "int4", group_size=32, asymmetric=True)
    for f in sorted(p.name for p in (tmp_path / "a").iterdir()):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


@pytest.mark.parametrize("dtype", ["f16", "f32"])
def test_f16_f32_sources(tiny, tmp_path, dtype):
    s = convert(tiny("qwen2", dtype=dtype), tmp_path / "o", "fp8-block")
    out, src = open_checkpoint(tmp_path / "o"), open_checkpoint(tiny("qwen2", dtype=dtype))
    n = "model.layers.0.mlp.down_proj"
    ref = scheme_module("fp8-block").quantize(src.get(n + ".weight").astype(np.float32))
    assert out.get(n + ".weight").tobytes() == ref["weight"].tobytes()
    assert out.dtype("model.norm.weight") == dtype.upper()  # kept tensors keep the source dtype
    assert s.quantized == 14


def test_generic_rule_for_unknown_arch(tiny, tmp_path, caplog):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny("llama"), src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "my_llama"
    (src / "config.json").write_text(json.dumps(cfg))
    from lowbit.errors import ConfigError

    with pytest.raises(ConfigError, match="'my_llama' is not supported.*llama, mistral.*--generic"):
        convert(src, tmp_path / "o", "fp8-block")
    assert not (tmp_path / "o").exists()
    with caplog.at_level("WARNING"):
        s = convert(src, tmp_path / "o", "fp8-block", generic=True)
    assert "generic rule" in caplog.text and s.quantized == 14
