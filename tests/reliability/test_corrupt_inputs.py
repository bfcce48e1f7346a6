"""Corrupt inputs are refused before any work, with a message naming the file and the fix."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from lowbit.errors import CheckpointError, ConfigError, LowbitError
from lowbit.formats.checkpoint import INDEX_NAME, open_checkpoint


def _shards(src: Path) -> list[Path]:
    return sorted(src.glob("model-*.safetensors"))


def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _rewrite(path: Path, header: dict, data: bytes) -> None:
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)


def _first_tensor(header: dict) -> str:
    return sorted(k for k in header if k != "__metadata__")[0]


def truncate(src):
    p = _shards(src)[1]
    p.write_bytes(p.read_bytes()[:-100])
    return p.name, "the file holds"


def truncate_header(src):
    p = _shards(src)[0]
    p.write_bytes(p.read_bytes()[:5])
    return p.name, "less than the 8-byte header length"


def flip_header_byte(src):
    p = _shards(src)[0]
    raw = bytearray(p.read_bytes())
    raw[8] ^= 0x55  # the opening '{' of the JSON header
    p.write_bytes(bytes(raw))
    return p.name, "not valid JSON"


def absurd_length(src):
    p = _shards(src)[0]
    raw = p.read_bytes()
    p.write_bytes(struct.pack("<Q", 2**62) + raw[8:])
    return p.name, "exceeds the file size"


def absurd_shape(src):
    p = _shards(src)[0]
    h, data = _header(p)
    h[_first_tensor(h)]["shape"] = [2**40, 2**40]
    _rewrite(p, h, data)
    return p.name, "needs"


def overlapping_offsets(src):
    p = _shards(src)[0]
    h, data = _header(p)
    names = sorted(k for k in h if k != "__metadata__")
    a, b = h[names[0]], h[names[1]]
    # make b start inside a, same length as before (so only the overlap is wrong)
    length = b["data_offsets"][1] - b["data_offsets"][0]
    b["data_offsets"] = [a["data_offsets"][0] + 2, a["data_offsets"][0] + 2 + length]
    _rewrite(p, h, data)
    return p.name, "overlap"


def out_of_range_offsets(src):
    p = _shards(src)[0]
    h, data = _header(p)
    e = h[_first_tensor(h)]
    length = e["data_offsets"][1] - e["data_offsets"][0]
    e["data_offsets"] = [len(data) + 64, len(data) + 64 + length]
    _rewrite(p, h, data)
    return p.name, "ends at data byte"


def negative_offsets(src):
    p = _shards(src)[0]
    h, data = _header(p)
    h[_first_tensor(h)]["data_offsets"] = [-8, 0]
    _rewrite(p, h, data)
    return p.name, "out of order"


def index_lists_missing_tensor(src):
    idx = json.loads((src / INDEX_NAME).read_text())
    idx["weight_map"]["model.layers.0.mlp.ghost_proj.weight"] = _shards(src)[0].name
    (src / INDEX_NAME).write_text(json.dumps(idx))
    return INDEX_NAME, "ghost_proj"


def shard_has_unlisted_tensor(src):
    idx = json.loads((src / INDEX_NAME).read_text())
    first = _shards(src)[0].name
    name = sorted(k for k, v in idx["weight_map"].items() if v == first)[0]
    del idx["weight_map"][name]
    (src / INDEX_NAME).write_text(json.dumps(idx))
    return name, "does not list"


def index_omits_a_shard(src):
    idx = json.loads((src / INDEX_NAME).read_text())
    last = _shards(src)[-1].name
    idx["weight_map"] = {k: v for k, v in idx["weight_map"].items() if v != last}
    (src / INDEX_NAME).write_text(json.dumps(idx))
    return last, "does not name shard"


def index_names_missing_shard(src):
    gone = _shards(src)[2]
    gone.unlink()
    return gone.name, "does not exist"


def index_path_traversal(src):
    idx = json.loads((src / INDEX_NAME).read_text())
    name = sorted(idx["weight_map"])[0]
    idx["weight_map"][name] = "../../etc/passwd"
    (src / INDEX_NAME).write_text(json.dumps(idx))
    return "../../etc/passwd", "outside"


def index_absolute_path(src):
    idx = json.loads((src / INDEX_NAME).read_text())
    name = sorted(idx["weight_map"])[0]
    idx["weight_map"][name] = str(_shards(src)[0].resolve())
    (src / INDEX_NAME).write_text(json.dumps(idx))
    return name, "outside"


def index_not_json(src):
    (src / INDEX_NAME).write_text('{"weight_map": ')
    return INDEX_NAME, "not valid JSON"


def shard_symlink_escapes(src):
    victim = _shards(src)[1]
    outside = src.parent / "outside.safetensors"
    os.replace(victim, outside)
    victim.symlink_to(outside)
    return victim.name, "outside"


def config_symlink_escapes(src):
    outside = src.parent / "config-elsewhere.json"
    os.replace(src / "config.json", outside)
    (src / "config.json").symlink_to(outside)
    return "config.json", "outside"


def config_missing(src):
    (src / "config.json").unlink()
    return "config.json", "missing"


CORRUPTIONS = [truncate, truncate_header, flip_header_byte, absurd_length, absurd_shape,
               overlapping_offsets, out_of_range_offsets, negative_offsets, index_lists_missing_tensor,
               shard_has_unlisted_tensor, index_omits_a_shard, index_names_missing_shard, index_path_traversal,
               index_absolute_path, index_not_json, shard_symlink_escapes, config_symlink_escapes,
               config_missing]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_reader_refuses_with_clear_message(src_copy, corrupt):
    names, needle = corrupt(src_copy)
    with pytest.raises((CheckpointError, ConfigError)) as e:
        open_checkpoint(src_copy)
    msg = str(e.value)
    assert needle in msg, msg
    assert names in msg, msg          # names the file or tensor
    assert "\n" not in msg            # one line
    assert isinstance(e.value, LowbitError)


def _deep(n: int = 200_000) -> bytes:
    return b"[" * n + b"]" * n


@pytest.mark.parametrize("target", ["shard header", "index", "config.json"])
def test_deeply_nested_json_refused(src_copy, target):
    # json.loads raises RecursionError (not JSONDecodeError) on deep nesting: found by the fuzz test
    if target == "shard header":
        p = src_copy / "model.safetensors"
        for s in _shards(src_copy):
            s.unlink()
        (src_copy / INDEX_NAME).unlink()
        p.write_bytes(struct.pack("<Q", len(_deep())) + _deep())
    else:
        p = src_copy / (INDEX_NAME if target == "index" else "config.json")
        p.write_bytes(_deep())
    with pytest.raises(LowbitError) as e:
        open_checkpoint(src_copy)
    assert p.name in str(e.value)


def test_non_string_dtype_refused(src_copy):
    # found by the fuzz test: an unhashable dtype crashed the reader with TypeError
    p = _shards(src_copy)[0]
    h, data = _header(p)
    h[_first_tensor(h)]["dtype"] = ["BF16"]
    _rewrite(p, h, data)
    with pytest.raises(CheckpointError, match="which lowbit cannot read"):
        open_checkpoint(src_copy)


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_converter_refuses_before_writing(src_copy, tmp_path, corrupt):
    from lowbit.quantize.convert import convert

    corrupt(src_copy)
    out = tmp_path / "out"
    with pytest.raises(LowbitError):
        convert(src_copy, out, "nvfp4", device="cpu")
    assert not out.exists() and not (tmp_path / "out.lowbit-partial").exists()


@pytest.mark.parametrize("corrupt", [truncate, index_path_traversal, shard_symlink_escapes],
                         ids=lambda f: f.__name__)
def test_cli_one_line_exit_2(src_copy, tmp_path, corrupt):
    import subprocess
    import sys

    names, needle = corrupt(src_copy)
    r = subprocess.run([sys.executable, "-m", "lowbit", "quantize", str(src_copy), "-o", str(tmp_path / "o"),
                        "--scheme", "fp8-block", "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("lowbit: error: ")
    assert needle in r.stderr and names in r.stderr
    assert not (tmp_path / "o").exists()
