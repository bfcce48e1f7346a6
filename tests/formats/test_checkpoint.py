"""Checkpoint reader / streaming writer: bytes, validation messages, lazy reads."""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lowbit.errors import CheckpointError, ConfigError
from lowbit.formats import safetensors_io as sio
from lowbit.formats.checkpoint import INDEX_NAME, open_checkpoint, write_index


def _ckpt(tmp_path, tensors, name="model.safetensors"):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    sio.save_file(tmp_path / name, tensors)
    return tmp_path


def _sample():
    rng = np.random.default_rng(0)
    return {
        "w": rng.standard_normal((5, 7)).astype(np.float32).astype(ml_dtypes.bfloat16),
        "f8": np.arange(12, dtype=np.uint8).reshape(3, 4).view(ml_dtypes.float8_e4m3fn),
        "i": np.arange(3, dtype=np.int64),
        "s": np.array(2.5, np.float32),
    }


def test_writer_matches_safetensors_library_and_reader_roundtrips(tmp_path):
    t = _sample()
    _ckpt(tmp_path, t)
    # The library reads our file (except F8, which safetensors.numpy cannot represent) ...
    plain = {k: v for k, v in t.items() if k != "f8"}
    sio.save_file(tmp_path / "plain.safetensors", plain)
    got = load_file(str(tmp_path / "plain.safetensors"))
    for k, v in plain.items():
        assert got[k].tobytes() == v.tobytes() and got[k].shape == v.shape
    # ... and the data section equals the library's own output byte for byte.
    save_file(plain, str(tmp_path / "lib.safetensors"))
    ours, lib = (tmp_path / "plain.safetensors").read_bytes(), (tmp_path / "lib.safetensors").read_bytes()
    assert ours[8 + struct.unpack("<Q", ours[:8])[0]:] == lib[8 + struct.unpack("<Q", lib[:8])[0]:]
    assert (8 + struct.unpack("<Q", ours[:8])[0]) % 8 == 0  # data starts 8-aligned
    ck = open_checkpoint(tmp_path)
    assert ck.names() == ["f8", "i", "s", "w"]
    assert ck.dtype("f8") == "F8_E4M3" and ck.shape("w") == (5, 7)
    for k, v in t.items():
        assert ck.get(k).dtype == v.dtype and ck.get(k).tobytes() == v.tobytes()
    assert ck.read("w", 2, 2).tobytes() == t["w"][2:4].tobytes()
    assert not ck.get("w").flags.writeable
    assert ck.file_of("w") == "model.safetensors" and ck.manifest is None


def test_writer_header_sorted_and_metadata(tmp_path):
    with sio.ShardWriter(tmp_path / "x.safetensors", {"b": ("F32", (2,)), "a": ("U8", (3,))}) as w:
        w.write("b", np.array([1, 2], np.float32))
        w.write("a", np.array([1], np.uint8), offset=0)
        w.write("a", np.array([2, 3], np.uint8), offset=1)
    raw = (tmp_path / "x.safetensors").read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    assert list(header) == ["__metadata__", "a", "b"] and header["__metadata__"] == {"format": "pt"}
    assert header["a"]["data_offsets"] == [0, 3] and header["b"]["data_offsets"] == [3, 11]
    assert load_file(str(tmp_path / "x.safetensors"))["a"].tolist() == [1, 2, 3]


def test_writer_refuses_incomplete_and_wrong_dtype(tmp_path):
    w = sio.ShardWriter(tmp_path / "x.safetensors", {"a": ("F32", (4,))})
    with pytest.raises(CheckpointError, match="expects F32"):
        w.write("a", np.zeros(4, np.float64))
    w.write("a", np.zeros(2, np.float32))
    with pytest.raises(CheckpointError, match="not completely written"):
        w.close()


def test_sharded_index_read(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    sio.save_file(tmp_path / "model-00001-of-00002.safetensors", {"a": np.ones(2, np.float32)})
    sio.save_file(tmp_path / "model-00002-of-00002.safetensors", {"b": np.zeros(3, np.int32)})
    write_index(tmp_path, {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}, 20)
    ck = open_checkpoint(tmp_path)
    assert ck.names() == ["a", "b"] and ck.file_of("b") == "model-00002-of-00002.safetensors"
    assert ck.total_bytes() == 20


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:-3]), "truncated or corrupt"),
    (lambda p: p.write_bytes(b"\x04"), "less than the 8-byte header length"),
    (lambda p: p.write_bytes(struct.pack("<Q", 10**12) + b"{}"), "exceeds the file size"),
    (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"{{{{"), "not valid JSON"),
])
def test_corrupt_shards_named(tmp_path, mutate, message):
    _ckpt(tmp_path, _sample())
    mutate(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=message) as e:
        open_checkpoint(tmp_path)
    assert "model.safetensors" in str(e.value)


def _raw_file(path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("header, message", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, "overlap"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, "needs 12 bytes"),
    ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, "cannot read"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, "ends at data byte 16"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "invalid shape"),
])
def test_bad_header_entries(tmp_path, header, message):
    (tmp_path / "config.json").write_text("{}")
    _raw_file(tmp_path / "model.safetensors", header, bytes(12))
    with pytest.raises(CheckpointError, match=message) as e:
        open_checkpoint(tmp_path)
    assert "'a'" in str(e.value) or "'b'" in str(e.value)


def test_index_problems(tmp_path):
    _ckpt(tmp_path, {"a": np.ones(2, np.float32)}, "model-00001-of-00001.safetensors")
    idx = tmp_path / INDEX_NAME
    idx.write_text(json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors",
                                              "b": "missing.safetensors"}}))
    with pytest.raises(CheckpointError, match="missing.safetensors.*does not exist"):
        open_checkpoint(tmp_path)
    idx.write_text(json.dumps({"weight_map": {"a": "../evil.safetensors"}}))
    with pytest.raises(CheckpointError, match="outside"):
        open_checkpoint(tmp_path)
    idx.write_text(json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors",
                                              "zz": "model-00001-of-00001.safetensors"}}))
    with pytest.raises(CheckpointError, match="'zz'.*does not hold it"):
        open_checkpoint(tmp_path)


def test_symlink_escaping_dir_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    sio.save_file(outside / "model.safetensors", {"a": np.ones(2, np.float32)})
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    os.symlink(outside / "model.safetensors", src / "model.safetensors")
    with pytest.raises(CheckpointError, match="outside"):
        open_checkpoint(src)
    assert open_checkpoint(src, trusted_root=tmp_path).names() == ["a"]  # the hub cache case


def test_config_problems(tmp_path):
    sio.save_file(tmp_path / "model.safetensors", {"a": np.ones(2, np.float32)})
    with pytest.raises(ConfigError, match="missing config.json"):
        open_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        open_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a JSON object"):
        open_checkpoint(tmp_path)
