"""Disk full: a clear one-line error, nothing half-written under OUT (or anywhere), the source
untouched; after space is freed the conversion resumes and ends byte-identical.

The real test mounts a small tmpfs (needs root / CAP_SYS_ADMIN; skipped where mount is refused).
The fallback test simulates ENOSPC in the shard writer and always runs.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rel_util import tree_bytes, tree_digest

from lowbit.batch.manifest import parse_manifest
from lowbit.batch.runner import run_batch
from lowbit.errors import LowbitError
from lowbit.formats import safetensors_io
from lowbit.quantize.convert import convert
from lowbit.quantize.manifest import JOURNAL_NAME, sha256_file


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the ENOSPC simulation covers it")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _assert_partial_clean(partial: Path) -> int:
    """Every shard left in the partial dir is finished: recorded in the journal with its sha256."""
    if not partial.exists():
        return 0
    journal = json.loads((partial / JOURNAL_NAME).read_text())["shards"]
    shards = sorted(p.name for p in partial.glob("*.safetensors"))
    assert shards == sorted(journal)
    for name in shards:
        assert sha256_file(partial / name) == journal[name]
    return len(shards)


def test_tmpfs_full_then_resume(tiny_llama, small_fs, tmp_path):
    before = tree_digest(tiny_llama)
    ref = tmp_path / "ref"
    convert(tiny_llama, ref, "fp8-block", max_shard_size="300KB", device="cpu")  # ~1.9 MB in shards
    out = small_fs / "out"
    r = subprocess.run([sys.executable, "-m", "lowbit", "quantize", str(tiny_llama), "-o", str(out),
                        "--scheme", "fp8-block", "--max-shard-size", "300KB", "--device", "cpu", "--quiet"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "no space left on device" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()
    kept = _assert_partial_clean(small_fs / "out.lowbit-partial")
    assert kept >= 1  # some shards fit and are kept for the resume
    assert tree_digest(tiny_llama) == before
    # free space, re-run: resumes from the kept shards and ends byte-identical to the reference
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_fs)], check=True)
    s = convert(tiny_llama, out, "fp8-block", max_shard_size="300KB", device="cpu")
    assert s.resumed_shards == kept
    assert tree_bytes(out) == tree_bytes(ref)
    assert not (small_fs / "out.lowbit-partial").exists()


def test_batch_on_full_disk_reports_clear_failure(tiny_llama, small_fs, tmp_path):
    doc = {"output_root": str(small_fs / "batch"), "workers": 2, "max_shard_size": "300KB",
           "device": "cpu", "job": [{"source": str(tiny_llama), "schemes": ["fp8-block", "nvfp4"]}]}
    report = run_batch(parse_manifest(doc, base=tmp_path))
    statuses = [j["status"] for j in report.jobs]
    assert "failed" in statuses and report.exit_code == 1
    for j in report.jobs:
        if j["status"] == "failed":
            assert "no space left on device" in j["error"]
            assert not Path(j["output"]).exists()
        else:
            assert (Path(j["output"]) / "lowbit.json").exists()


def test_simulated_enospc_leaves_nothing_half_written(tiny_llama, tmp_path, monkeypatch):
    before = tree_digest(tiny_llama)
    real = os.pwrite
    written = {"n": 0}

    def pwrite(fd, data, offset):  # the disk "fills up" after ~700 KB
        written["n"] += len(data)
        if written["n"] > 700_000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(safetensors_io.os, "pwrite", pwrite)
    out = tmp_path / "out"
    with pytest.raises(LowbitError, match="no space left on device") as e:
        convert(tiny_llama, out, "nvfp4", max_shard_size="200KB", device="cpu")
    assert "\n" not in str(e.value)
    assert not out.exists()
    kept = _assert_partial_clean(tmp_path / "out.lowbit-partial")
    assert kept >= 1
    assert tree_digest(tiny_llama) == before
    monkeypatch.setattr(safetensors_io.os, "pwrite", real)
    s = convert(tiny_llama, out, "nvfp4", max_shard_size="200KB", device="cpu")
    assert s.resumed_shards == kept
    ref = tmp_path / "ref"
    convert(tiny_llama, ref, "nvfp4", max_shard_size="200KB", device="cpu")
    assert tree_bytes(out) == tree_bytes(ref)
