"""Shared test setup: the `gpu` marker skips cleanly where there is no CUDA device; `tiny` builds tiny synthetic
checkpoints in the real HF layout (sharded + index), once per session."""

from __future__ import annotations

import pytest

from lowbit.synth import write_synthetic


def _have_gpu() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


HAVE_GPU = _have_gpu()


def pytest_collection_modifyitems(config, items):
    if HAVE_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and cupy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
