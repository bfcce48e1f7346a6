"""Fixtures for the reliability tests: tiny synthetic checkpoints in the real HF layout."""

from __future__ import annotations

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
