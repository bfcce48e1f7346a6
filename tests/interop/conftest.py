"""Tiny synthetic checkpoints in the real HF layout (sharded + index), built once per session."""

from __future__ import annotations

import pytest

from lowbit.synth import write_synthetic


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """tiny(arch, **kw) -> path of a tiny BF16 checkpoint (cached per arguments)."""
    cache = {}

    def make(arch: str, **kw):
        key = (arch, tuple(sorted(kw.items())))
        if key not in cache:
            d = tmp_path_factory.mktemp(f"src_{arch}")
            cache[key] = write_synthetic(d / "ckpt", arch, **kw)
        return cache[key]

    return make
