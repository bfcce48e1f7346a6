"""import-gguf pieces that need no real model: Q/K unpermute, name map, errors, atomic output, CLI."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from lowbit.cli.main import cli
from lowbit.errors import CheckpointError, LowbitError
from lowbit.gguf_import import hf_name, import_gguf, unpermute


def llama_cpp_permute(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute: HF rows -> GGUF rows (pairs interleaved per head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("heads,d", [(9, 64), (3, 64), (4, 16)])
def test_unpermute_inverts_llama_cpp_permute(heads, d):
    w = np.random.default_rng(0).standard_normal((heads * d, 24)).astype(np.float32)
    assert np.array_equal(unpermute(llama_cpp_permute(w, heads), heads), w)
    assert not np.array_equal(llama_cpp_permute(w, heads), w)


def test_names():
    assert hf_name("blk.12.attn_k.weight", "x") == "model.layers.12.self_attn.k_proj.weight"
    assert hf_name("blk.0.attn_q.bias", "x") == "model.layers.0.self_attn.q_proj.bias"
    assert hf_name("output.weight", "x") == "lm_head.weight"
    with pytest.raises(CheckpointError, match="ffn_gate_exps"):
        hf_name("blk.0.ffn_gate_exps.weight", "x")


def test_errors_and_no_partial_output(tmp_path):
    with pytest.raises(LowbitError, match="no such GGUF"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(CheckpointError, match="not a readable GGUF"):
        import_gguf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["bad.gguf"]
    (tmp_path / "exists").mkdir()
    r = CliRunner().invoke(cli, ["import-gguf", str(bad), str(tmp_path / "exists")])
    assert r.exit_code != 0 and "exists" in str(r.exception or r.output)
