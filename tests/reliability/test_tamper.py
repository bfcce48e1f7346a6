"""Any modified byte of a converted checkpoint is detected through its manifest: the per-file sha256s
in lowbit.json cover every other file, and lowbit.json's own `manifest_sha256` (+ canonical text)
covers itself. Checked with the batch resume check, and with `lowbit verify` where it exists."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import pytest

from lowbit.batch.outputs import output_state
from lowbit.quantize.convert import convert
from lowbit.quantize.manifest import manifest_problem


@pytest.fixture(scope="module")
def converted(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("tamper") / "llama-nvfp4"
    convert(tiny_llama, out, "nvfp4", max_shard_size="1MB", device="cpu")
    return out


def _flip(path: Path, pos: int, mask: int) -> bytes:
    raw = path.read_bytes()
    data = bytearray(raw)
    data[pos] ^= mask
    path.write_bytes(bytes(data))
    return raw


def test_every_file_sampled_bytes(converted):
    assert output_state(converted).complete
    rng = random.Random(7)
    files = sorted(p for p in converted.iterdir() if p.is_file())
    assert {"lowbit.json", "config.json", "model.safetensors.index.json"} <= {p.name for p in files}
    for p in files:
        size = p.stat().st_size
        for pos in {0, size - 1, *(rng.randrange(size) for _ in range(4))}:
            raw = _flip(p, pos, rng.randrange(1, 256))
            try:
                state = output_state(converted)
                assert state.kind == "invalid", (p.name, pos)
                assert p.name in state.reason or "lowbit.json" in state.reason, state.reason
            finally:
                p.write_bytes(raw)
    assert output_state(converted).complete


def test_bytes_of_the_manifest(converted):
    path = converted / "lowbit.json"
    raw = path.read_bytes()
    assert manifest_problem(path) is None
    rng = random.Random(8)
    key = raw.index(b"manifest_sha256")
    # every third byte (bounded CI time), plus every byte of the digest's key and value
    positions = sorted(set(range(0, len(raw), 3)) | set(range(key - 1, key + 86)))
    for pos in positions:
        mask = rng.randrange(1, 256)
        _flip(path, pos, mask)
        try:
            assert manifest_problem(path) is not None, (pos, raw[pos:pos + 1], mask)
        finally:
            path.write_bytes(raw)
    # whitespace-only edits that keep valid JSON are caught too
    path.write_bytes(raw.replace(b"\n", b"\r\n", 1))
    try:
        assert manifest_problem(path) is not None
    finally:
        path.write_bytes(raw)


@pytest.mark.skipif(importlib.util.find_spec("lowbit.cli.verify") is None,
                    reason="lowbit verify (GEMV helper's) is not in this tree yet")
def test_lowbit_verify_detects_flipped_bytes(converted):
    ok = subprocess.run([sys.executable, "-m", "lowbit", "verify", str(converted)], capture_output=True,
                        text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rng = random.Random(9)
    man = (converted / "lowbit.json").read_bytes()
    flips = [(sorted(converted.glob("model-*.safetensors"))[0].name, None), ("config.json", None),
             ("model.safetensors.index.json", None), ("lowbit.json", man.index(b"\n  ")),  # whitespace
             ("lowbit.json", man.index(b"manifest_sha256") + 14),  # the digest's own key
             ("lowbit.json", man.index(b'"scheme": "nvfp4"') + 12)]  # a value: nvfp4 -> ~vfp4
    for name, pos in flips:
        p = converted / name
        raw = _flip(p, rng.randrange(p.stat().st_size) if pos is None else pos, 0x10 if pos is None else 0x01)
        try:
            r = subprocess.run([sys.executable, "-m", "lowbit", "verify", str(converted)],
                               capture_output=True, text=True, timeout=300)
            assert r.returncode in (1, 2), (name, pos, r.stdout, r.stderr)
            assert p.name in r.stdout + r.stderr
        finally:
            p.write_bytes(raw)
