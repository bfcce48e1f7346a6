"""Hub resolution: a repo id goes through snapshot_download (mocked here: no network in CI) and the
HF cache layout (snapshots/<commit>/ holding symlinks into ../../blobs) converts; errors are one line."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from lowbit.errors import CheckpointError, HubError
from lowbit.quantize import hub
from lowbit.quantize.convert import convert


def _fake_cache(src, root):
    """Lay out `src` the way huggingface_hub's cache does: blobs + a snapshot of symlinks."""
    repo = root / "models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / ("c0ffee" * 6 + "abcd")
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(src.iterdir())):
        shutil.copyfile(f, blobs / f"blob{i}")
        os.symlink(os.path.relpath(blobs / f"blob{i}", snap), snap / f.name)
    return snap


def test_repo_id_through_snapshot_download(tiny, tmp_path, monkeypatch):
    snap = _fake_cache(tiny("llama"), tmp_path / "cache")
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, etag_timeout=None):
        calls.append((repo_id, revision, allow_patterns))
        return str(snap)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    s = convert("org/tiny@v1.0", tmp_path / "out", "int4", group_size=32)
    assert calls == [("org/tiny", "v1.0", hub.ALLOW_PATTERNS)]
    assert s.source == f"org/tiny@{snap.name}"
    man = json.loads((tmp_path / "out" / "lowbit.json").read_text())
    assert man["source"] == f"org/tiny@{snap.name}"
    # the same bytes as converting the local directory
    convert(tiny("llama"), tmp_path / "local", "int4", group_size=32)
    for f in sorted(p.name for p in (tmp_path / "local").glob("*.safetensors")):
        assert (tmp_path / "out" / f).read_bytes() == (tmp_path / "local" / f).read_bytes()


def test_hub_http_error_is_one_line(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*a, **k):
        raise LocalEntryNotFoundError("no connection\nmore detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(HubError, match="hub is unreachable") as e:
        convert("org/missing", tmp_path / "o", "nvfp4")
    assert "\n" not in str(e.value) and not (tmp_path / "o").exists()


@pytest.mark.parametrize("src", ["./not-here", "not a repo id", "/abs/missing/dir"])
def test_not_a_dir_nor_repo_id(tmp_path, src):
    with pytest.raises(CheckpointError, match="no such directory, and not a hub repo id"):
        hub.resolve_source(src)
