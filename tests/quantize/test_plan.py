"""The plan is made from headers alone: real-shape checkpoints whose data was never written
(sparse files) plan in full, with every output name, dtype, shape and the shard layout."""

from __future__ import annotations

import json

import pytest

from lowbit.formats import checkpoint
from lowbit.formats.checkpoint import open_checkpoint
from lowbit.formats.safetensors_io import ShardWriter
from lowbit.quantize.plan import make_plan
from lowbit.synth import _shards, make_config, tensor_shapes


def header_only(tmp_path, arch, preset, layers):
    """A real-shape checkpoint whose shards hold headers and holes (no data is written)."""
    cfg = make_config(arch, preset, layers)
    groups = _shards(tensor_shapes(cfg), 2, 5 * 10**9)
    weight_map = {}
    for i, group in enumerate(groups, 1):
        name = checkpoint.shard_name(i, len(groups))
        ShardWriter(tmp_path / name, {n: ("BF16", s) for n, s in group}).abort()
        weight_map.update({n: name for n, _ in group})
    checkpoint.write_index(tmp_path, weight_map, 0)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return open_checkpoint(tmp_path)


@pytest.mark.parametrize("scheme, opts, per_linear", [
    ("fp8-block", {}, 2), ("nvfp4", {}, 3), ("int4", {"group_size": 128}, 3)])
def test_qwen3_30b_a3b_plan_from_headers(tmp_path, scheme, opts, per_linear):
    ck = header_only(tmp_path, "qwen3_moe", "qwen3-30b-a3b", 2)
    plan = make_plan(ck, scheme, **opts)
    linears = 2 * (4 + 128 * 3)  # per layer: q/k/v/o + 128 experts x gate/up/down
    assert sum(it.quantize for it in plan.items) == linears
    assert sum(len(s.layout()) for s in plan.shards) == linears * per_linear + len(plan.kept)
    # fused groups: q/k/v and each expert's gate/up, per layer
    assert len(plan.groups) == 2 * (1 + 128)
    assert plan.groups["model.layers.1.mlp.experts.7.gate_up"] == [
        "model.layers.1.mlp.experts.7.gate_proj.weight", "model.layers.1.mlp.experts.7.up_proj.weight"]
    layout = {k: v for s in plan.shards for k, v in s.layout().items()}
    n = "model.layers.0.mlp.experts.3.down_proj"
    if scheme == "fp8-block":
        assert layout[n + ".weight"] == ("F8_E4M3", (2048, 768))
        assert layout[n + ".weight_scale_inv"] == ("F32", (16, 6))
    elif scheme == "nvfp4":
        assert layout[n + ".weight_packed"] == ("U8", (2048, 384))
        assert layout[n + ".weight_scale"] == ("F8_E4M3", (2048, 48))
    else:
        assert layout[n + ".weight_packed"] == ("I32", (2048, 96))
        assert layout[n + ".weight_scale"] == ("BF16", (2048, 6))
    assert layout["model.layers.1.mlp.gate.weight"] == ("BF16", (128, 2048))  # router kept
    norms = {f"model.layers.{i}.{m}" for i in range(2)
             for m in ("input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm")}
    routers = {"lm_head", "model.layers.0.mlp.gate", "model.layers.1.mlp.gate"}
    # the HF fp8 list is Qwen style (norms too); compressed-tensors `ignore` needs the Linear ones
    want = routers | norms | {"model.norm"} if scheme == "fp8-block" else routers
    assert set(plan.ignore) == want


def test_shard_layout_respects_max_size(tmp_path):
    ck = header_only(tmp_path, "llama", "llama3-8b", 4)
    plan = make_plan(ck, "int4", max_shard_bytes=10**9)
    sizes = [sum(it.out_bytes for it in s.items) for s in plan.shards]
    biggest = max(it.out_bytes for it in plan.items)  # one tensor never splits
    assert len(plan.shards) >= 3 and all(s <= max(10**9, biggest) for s in sizes)
    assert plan.shards[0].file == f"model-00001-of-{len(plan.shards):05d}.safetensors"
    assert plan.warnings == []  # int4: no serving warnings for 128-multiple shapes
    fp8 = make_plan(ck, "fp8-block")
    assert fp8.warnings == []  # llama3-8b shapes are all multiples of 128
