"""The job's output check: lowbit verify --against (when installed) and the numpy fallback agree;
a tampered output or a changed kept tensor is caught."""

from __future__ import annotations

import builtins
import shutil

import pytest

from lowbit.batch.quality import error_summary
from lowbit.quantize.convert import convert
from lowbit.synth import write_synthetic


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("q")
    src = write_synthetic(root / "src", "qwen3", preset="tiny", seed=2)
    out = root / "out"
    convert(src, out, "int4", group_size=32, device="cpu")
    return src, out


def _no_verify(monkeypatch):
    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("lowbit.verify"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)


def test_verify_and_numpy_fallback_agree(pair, monkeypatch):
    src, out = pair
    v = error_summary(out, src, "int4", use_gpu=False)
    assert v.checker == "lowbit verify" and v.failures == [] and v.kept_mismatch is None
    _no_verify(monkeypatch)
    n = error_summary(out, src, "int4")
    assert n.checker == "numpy"
    assert n.tensors == v.tensors > 0 and n.worst_tensor == v.worst_tensor
    # verify reports SQNR rounded to 0.01 dB: rel = 10^(-dB/20) agrees to ~0.12 %
    assert n.worst_rel_error == pytest.approx(v.worst_rel_error, rel=2e-3)
    assert n.mean_rel_error == pytest.approx(v.mean_rel_error, rel=2e-3)
    assert n.min_sqnr_db == pytest.approx(v.min_sqnr_db, abs=0.01)


def test_tampered_output_fails_the_check(pair, tmp_path):
    src, out = pair
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    shard = sorted(bad.glob("model-*.safetensors"))[-1]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x40
    shard.write_bytes(bytes(data))
    s = error_summary(bad, src, "int4", use_gpu=False)
    assert s.failures and any(shard.name in f and "sha256" in f for f in s.failures)


def test_changed_kept_tensor_is_named(pair, tmp_path):
    src, out = pair
    src2 = tmp_path / "src2"
    shutil.copytree(src, src2)
    from lowbit.formats.checkpoint import open_checkpoint

    ck = open_checkpoint(src2)
    name = "model.norm.weight"
    file, entry, start = ck._tensors[name]
    with open(src2 / file, "r+b") as f:
        f.seek(start + entry["data_offsets"][0])
        f.write(b"\x40\x40")  # the first BF16 value becomes 3.0
    s = error_summary(out, src2, "int4", use_gpu=False)
    assert s.kept_mismatch == name


def test_kept_compare_in_chunks(pair, tmp_path, monkeypatch):
    """Multi-chunk comparison: identical tensors pass (the last, partial chunk must not read past the
    tensor), a changed byte in the last row is found."""
    import lowbit.batch.quality as q
    from lowbit.formats.checkpoint import open_checkpoint

    monkeypatch.setattr(q, "_CHUNK_BYTES", 1000)  # embed rows are a few hundred bytes: many chunks
    src, out = pair
    o, s = open_checkpoint(out), open_checkpoint(src)
    name = "model.embed_tokens.weight"
    assert o.shape(name)[0] * 2 > 1000 // (o.nbytes(name) // o.shape(name)[0])
    assert q._kept_mismatch(o, s, set(q._quantized_prefixes(o, "int4"))) is None
    src2 = tmp_path / "src2"
    shutil.copytree(src, src2)
    file, entry, start = open_checkpoint(src2)._tensors[name]
    with open(src2 / file, "r+b") as f:
        f.seek(start + entry["data_offsets"][1] - 2)
        f.write(b"\x40\x40")
    assert q._same_bytes(o, open_checkpoint(src2), name) is False
