"""Tiny checkpoints for the runtime tests, built once per session with lowbit.synth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lowbit.synth import write_synthetic

ROPE_VARIANTS = {
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
}


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """tiny_ckpt(arch, rope=None) -> path of a synthetic BF16 checkpoint (cached per session)."""
    made = {}

    def make(arch: str, rope: str | None = None):
        key = (arch, rope)
        if key not in made:
            out = tmp_path_factory.mktemp(f"{arch}-{rope or 'plain'}")
            path = write_synthetic(out / "ckpt", arch, "tiny", layers=2, seed=1)
            if rope:
                cfg_path = path / "config.json"
                cfg = json.loads(cfg_path.read_text())
                theta = cfg.get("rope_theta", 10000.0)
                cfg["rope_scaling"] = dict(ROPE_VARIANTS[rope])
                cfg["rope_parameters"] = {**ROPE_VARIANTS[rope], "rope_theta": theta}
                cfg_path.write_text(json.dumps(cfg))
            made[key] = path
        return made[key]

    return make


@pytest.fixture(scope="session")
def token_ids():
    """token_ids(vocab, n, seed=0) -> n random ids, none of the special ids 0..2."""
    def make(vocab: int, n: int, seed: int = 0) -> list[int]:
        return [int(t) for t in np.random.default_rng(seed).integers(3, vocab, n)]

    return make
