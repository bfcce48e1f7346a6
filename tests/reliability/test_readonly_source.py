"""lowbit never writes into SRC: conversions, a batch with error checks, and inspect leave every
byte, mtime and file list of a read-only source unchanged.

chmod -R a-w does not stop root, so where mount is permitted the source is also presented through a
read-only bind mount: any write attempt would fail with EROFS and the conversion would fail loudly.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from rel_util import tree_digest

from lowbit.batch.manifest import parse_manifest
from lowbit.batch.runner import run_batch


def _chmod_tree(root: Path, writable: bool) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        mode = mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        os.chmod(p, mode)


@pytest.fixture
def ro_source(tiny_llama, tmp_path):
    src = tmp_path / "ro-src"
    shutil.copytree(tiny_llama, src)
    _chmod_tree(src, writable=False)
    view = tmp_path / "ro-view"
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(src), str(view)], capture_output=True).returncode == 0
    if mounted:
        mounted = subprocess.run(["mount", "-o", "remount,bind,ro", str(view)],
                                 capture_output=True).returncode == 0
        if not mounted:
            subprocess.run(["umount", str(view)], check=False)
    yield (view if mounted else src), src, mounted
    if mounted:
        subprocess.run(["umount", "-l", str(view)], check=False)
    _chmod_tree(src, writable=True)


def test_source_is_never_written(ro_source, tmp_path):
    path, real, mounted = ro_source
    if mounted:  # the view really is read-only, even for root
        with pytest.raises(OSError):
            (path / "probe").write_text("x")
    before = tree_digest(real)
    for scheme in ("fp8-block", "nvfp4", "int4"):
        r = subprocess.run([sys.executable, "-m", "lowbit", "quantize", str(path), "-o",
                            str(tmp_path / f"out-{scheme}"), "--scheme", scheme, "--group-size", "32",
                            "--max-shard-size", "1MB", "--device", "cpu", "--quiet"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "lowbit", "inspect", str(path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    doc = {"output_root": str(tmp_path / "batch"), "workers": 2, "group_size": 32, "device": "cpu",
           "job": [{"source": str(path), "schemes": ["nvfp4", "int4"]}]}
    report = run_batch(parse_manifest(doc, base=tmp_path))
    assert [j["status"] for j in report.jobs] == ["ok", "ok"], [j["error"] for j in report.jobs]
    assert report.jobs[0]["worst_error"]["tensors"] > 0  # the error check read the source
    assert tree_digest(real) == before  # same files, same bytes, same mtimes
