"""Every bad input: one message naming the file/tensor and the fix, and no OUT (or partial) left."""

from __future__ import annotations

import json
import shutil

import ml_dtypes
import numpy as np
import pytest

from lowbit.errors import CheckpointError, ConfigError, LowbitError
from lowbit.formats import safetensors_io as sio
from lowbit.formats.checkpoint import INDEX_NAME, open_checkpoint
import importlib
from lowbit.quantize import stream
from lowbit.quantize.convert import convert


@pytest.fixture
def src(tiny, tmp_path):
    d = tmp_path / "src"
    shutil.copytree(tiny("llama"), d)
    return d


def _poke(src, name, value):
    """Overwrite the first element of tensor `name` in place with a BF16 value."""
    ck = open_checkpoint(src)
    file, entry, start = ck._tensors[name]
    with open(src / file, "r+b") as f:
        f.seek(start + entry["data_offsets"][0] + 2 * 7)
        f.write(np.array([value], np.float32).astype(ml_dtypes.bfloat16).tobytes())


def _last_shard(src):
    return sorted(src.glob("model-*.safetensors"))[-1]


def _index(src):
    return json.loads((src / INDEX_NAME).read_text())


CASES = {
    "truncated": (lambda s: _last_shard(s).write_bytes(_last_shard(s).read_bytes()[:-100]),
                  CheckpointError, r"model-0000\d-of-0000\d.safetensors: tensor .* truncated or corrupt"),
    "corrupt header": (lambda s: _last_shard(s).write_bytes(b"\x10" + bytes(7) + b"garbage!" * 4),
                       CheckpointError, "header is not valid JSON"),
    "index missing shard": (
        lambda s: (s / INDEX_NAME).write_text(json.dumps({"weight_map": {
            **_index(s)["weight_map"], "model.norm.weight": "model-00009-of-00009.safetensors"}})),
        CheckpointError, "names shard 'model-00009-of-00009.safetensors'.*does not exist"),
    "index outside": (
        lambda s: (s / INDEX_NAME).write_text(json.dumps({"weight_map": {
            **_index(s)["weight_map"], "model.norm.weight": "../../etc/x.safetensors"}})),
        CheckpointError, "a path outside"),
    "no config": (lambda s: (s / "config.json").unlink(), ConfigError, "missing config.json"),
    "bad config": (lambda s: (s / "config.json").write_text("{"), ConfigError, "not valid JSON"),
    "nan in weight": (lambda s: _poke(s, "model.layers.1.mlp.down_proj.weight", np.nan),
                      CheckpointError, "tensor 'model.layers.1.mlp.down_proj.weight' contains NaN or Inf"),
    "inf in weight": (lambda s: _poke(s, "model.layers.1.self_attn.q_proj.weight", np.inf),
                      CheckpointError, "tensor 'model.layers.1.self_attn.q_proj.weight' contains NaN"),
    "inf in kept norm": (lambda s: _poke(s, "model.norm.weight", -np.inf),
                         CheckpointError, "tensor 'model.norm.weight' contains NaN or Inf"),
}


_DATA_CASES = ("nan in weight", "inf in weight", "inf in kept norm")  # found mid-conversion


@pytest.mark.parametrize("case, scheme", [(c, "nvfp4") for c in sorted(CASES)]
                         + [(c, s) for c in _DATA_CASES for s in ("fp8-block", "int4")])
def test_bad_input(src, tmp_path, case, scheme):
    mutate, exc, pattern = CASES[case]
    mutate(src)
    out = tmp_path / "out"
    with pytest.raises(exc, match=pattern) as e:
        convert(src, out, scheme, group_size=32)
    assert "\n" not in str(e.value)
    assert not out.exists() and not (tmp_path / "out.lowbit-partial").exists()


def test_already_quantized_source(tiny, tmp_path):
    convert(tiny("llama"), tmp_path / "q", "fp8-block")
    with pytest.raises(ConfigError, match="already quantized .*'fp8'.*BF16 original"):
        convert(tmp_path / "q", tmp_path / "o", "nvfp4")
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    del cfg["quantization_config"]
    (tmp_path / "q" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="weight_scale_inv' is a quantized checkpoint's tensor"):
        convert(tmp_path / "q", tmp_path / "o", "nvfp4")
    assert not (tmp_path / "o").exists()


def test_unsupported_source_dtype(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    sio.save_file(tmp_path / "model.safetensors", {
        "model.layers.0.mlp.down_proj.weight": np.zeros((16, 16), np.float64)})
    with pytest.raises(CheckpointError, match="down_proj.weight' has dtype F64.*BF16/F16/F32"):
        convert(tmp_path, tmp_path.parent / "o", "fp8-block")


def test_out_exists_refused_then_overwritten(tiny, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(LowbitError, match="exists and is not empty; pass --overwrite"):
        convert(tiny("llama"), out, "fp8-block")
    assert (out / "keep.txt").exists()
    convert(tiny("llama"), out, "fp8-block", overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "lowbit.json").exists()
    assert not any(p.name.startswith("o.lowbit") for p in tmp_path.iterdir())
    with pytest.raises(LowbitError, match="overwrite the source"):
        convert(tiny("llama"), tiny("llama"), "fp8-block", overwrite=True)


def test_bad_options(tiny, tmp_path):
    with pytest.raises(LowbitError, match="group size 48"):
        convert(tiny("llama"), tmp_path / "o", "int4", group_size=48)
    with pytest.raises(LowbitError, match="--asymmetric applies to int4 only"):
        convert(tiny("llama"), tmp_path / "o", "nvfp4", asymmetric=True)
    with pytest.raises(LowbitError, match="unknown scheme 'int8'"):
        convert(tiny("llama"), tmp_path / "o", "int8")
    with pytest.raises(LowbitError, match="not a valid regex"):
        convert(tiny("llama"), tmp_path / "o", "nvfp4", ignore=["("])
    assert not (tmp_path / "o").exists()


def test_resume_after_injected_failure(tiny, tmp_path, monkeypatch):
    src = tiny("mixtral")
    ref = tmp_path / "ref"
    convert(src, ref, "nvfp4", max_shard_size="500KB")
    n_shards = len(list(ref.glob("model-*.safetensors")))
    assert n_shards >= 4
    real = stream.quantize_item
    calls = {"n": 0}

    def flaky(ck, it, *a, **k):
        if it.source.startswith("model.layers.1."):
            raise OSError("disk on fire (injected)")
        calls["n"] += 1
        return real(ck, it, *a, **k)

    out = tmp_path / "out"
    monkeypatch.setattr(stream, "quantize_item", flaky)
    with pytest.raises(OSError, match="injected"):
        convert(src, out, "nvfp4", max_shard_size="500KB")
    assert not out.exists()
    partial = tmp_path / "out.lowbit-partial"
    done = json.loads((partial / ".lowbit-journal.json").read_text())["shards"]
    assert 1 <= len(done) < n_shards
    monkeypatch.setattr(stream, "quantize_item", real)
    s = convert(src, out, "nvfp4", max_shard_size="500KB")
    assert s.resumed_shards == len(done)
    assert not partial.exists()
    for f in sorted(p.name for p in ref.iterdir()):
        assert (out / f).read_bytes() == (ref / f).read_bytes(), f
    # a different option set does not reuse the journal of another run
    with pytest.raises(OSError):
        monkeypatch.setattr(stream, "quantize_item", flaky)
        convert(src, tmp_path / "x", "nvfp4", max_shard_size="500KB")
    monkeypatch.setattr(stream, "quantize_item", real)
    s = convert(src, tmp_path / "x", "fp8-block", max_shard_size="500KB")
    assert s.resumed_shards == 0


def test_interrupt_leaves_no_out(tiny, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("lowbit.quantize.convert"), "_finish", boom)
    with pytest.raises(KeyboardInterrupt):
        convert(tiny("llama"), tmp_path / "o", "int4", group_size=32)
    assert not (tmp_path / "o").exists()


def test_resume_ignores_shards_of_a_changed_source(tiny, tmp_path, monkeypatch):
    src = tmp_path / "src"
    shutil.copytree(tiny("mixtral"), src)
    real = stream.quantize_item

    def flaky(ck, it, *a, **k):
        if it.source.startswith("model.layers.1."):
            raise OSError("injected")
        return real(ck, it, *a, **k)

    monkeypatch.setattr(stream, "quantize_item", flaky)
    with pytest.raises(OSError):
        convert(src, tmp_path / "out", "nvfp4", max_shard_size="500KB")
    monkeypatch.setattr(stream, "quantize_item", real)
    _poke(src, "model.layers.0.self_attn.q_proj.weight", 0.5)  # same shapes, new values
    s = convert(src, tmp_path / "out", "nvfp4", max_shard_size="500KB")
    assert s.resumed_shards == 0
    convert(src, tmp_path / "ref", "nvfp4", max_shard_size="500KB")
    for f in sorted(p.name for p in (tmp_path / "ref").glob("*.safetensors")):
        assert (tmp_path / "out" / f).read_bytes() == (tmp_path / "ref" / f).read_bytes()
