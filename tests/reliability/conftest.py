"""Fixtures for the reliability tests: tiny synthetic checkpoints in the real HF layout."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from lowbit.synth import write_synthetic


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny sharded llama checkpoint (3 shards + index). Treat as read-only: copy before corrupting."""
    return write_synthetic(tmp_path_factory.mktemp("src") / "llama-tiny", "llama", preset="tiny", seed=1)


@pytest.fixture
def src_copy(tiny_llama, tmp_path) -> Path:
    dst = tmp_path / "src"
    shutil.copytree(tiny_llama, dst)
    return dst


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256, mtime_ns) of every file under root (symlinks not followed)."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(),
                                             os.stat(p).st_mtime_ns)
    return out


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}
