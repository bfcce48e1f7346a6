"""transformers 5 loads a converted tiny checkpoint of each scheme on CPU; its logits match.

Two checks per scheme:
1. tight: the quantized checkpoint loaded by transformers gives the logits of a plain BF16 checkpoint
   whose quantized weights we replaced by our own `dequantize` (so transformers reads our bytes as we
   do; the model runs in bf16 and the only slack is the order of float operations in its
   dequantizer: rel. L2 < 1e-2).
2. loose: those logits are within the scheme's error of the source model's logits (relative L2 of the
   logits). Bounds: the relative RMS weight error of each scheme on N(0, s) weights is about 3% for
   E4M3 (3 mantissa bits), about 10% for NVFP4 (E2M1, 1 mantissa bit, per-16 scales) and 10-13% for
   int4 g64; errors of the ~14 quantized linears of a 2-layer model add roughly in quadrature and
   random-weight logits amplify them little, so we allow 2x: fp8 0.08, nvfp4 0.25, int4 0.30.
NVFP4 MoE in transformers 5.24 is broken on its side (see the xfail below).
fp8: transformers' FineGrainedFP8 needs a GPU to run FP8 matmuls; on CPU we load it with
`FineGrainedFP8Config(dequantize=True)` and use the `tiny-aligned` preset, because that dequantizer
refuses partial 128x128 edge blocks (vLLM's kernels do too; see the converter's warnings).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lowbit.formats import safetensors_io as sio
from lowbit.formats import scheme_module
from lowbit.formats.checkpoint import open_checkpoint
from lowbit.formats.numerics import BF16
from lowbit.quantize.convert import convert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

BOUND = {"fp8-block": 0.08, "nvfp4": 0.25, "int4": 0.30}
IDS = [[1, 5, 9, 42, 77, 100, 3, 8, 250, 17]]


def dequantized_copy(qdir, out):
    """A BF16 checkpoint holding our dequantize() of every quantized module (reference model)."""
    ck = open_checkpoint(qdir)
    scheme = {"fp8": "fp8-block", "compressed-tensors": None}[ck.config["quantization_config"]["quant_method"]]
    scheme = scheme or ("nvfp4" if "nvfp4" in ck.config["quantization_config"]["format"] else "int4")
    marker = {"fp8-block": "weight_scale_inv", "nvfp4": "weight_global_scale", "int4": "weight_shape"}[scheme]
    quantized = {n.rpartition(".")[0] for n in ck.names() if n.endswith("." + marker)}
    tensors = {}
    for n in ck.names():
        module = n.rpartition(".")[0]
        if module not in quantized:
            tensors[n] = np.array(ck.get(n))
        elif n.endswith("." + marker):
            t = {x.rpartition(".")[2]: ck.get(x) for x in ck.names() if x.rpartition(".")[0] == module}
            tensors[module + ".weight"] = scheme_module(scheme).dequantize(t).astype(BF16)
    out.mkdir()
    sio.save_file(out / "model.safetensors", tensors)
    cfg = dict(ck.config)
    del cfg["quantization_config"]
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def _logits(path, **kw):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, **kw)
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.float()


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("arch, preset, scheme, opts", [
    ("llama", "tiny-aligned", "fp8-block", {}),
    ("llama", "tiny", "nvfp4", {}),
    ("llama", "tiny", "int4", {"group_size": 64}),
    # transformers 5.24 decompresses fused MoE experts through a DummyModule that carries no
    # weight_global_scale (integrations/compressed_tensors.py, CompressedTensorsDequantize), so every
    # NVFP4 expert comes out multiplied by its global scale (~3e4): a transformers bug, not our bytes
    # (compressed-tensors' own per-module decompress matches ours exactly: test_compressed_tensors.py).
    pytest.param("qwen3_moe", "tiny", "nvfp4", {}, marks=pytest.mark.xfail(
        strict=True, reason="transformers 5.24 drops weight_global_scale for NVFP4 MoE experts")),
    ("qwen3_moe", "tiny", "int4", {"group_size": 64}),
])
def test_transformers_logits(tiny, tmp_path, arch, preset, scheme, opts):
    src = tiny(arch, preset=preset)
    q = tmp_path / "q"
    convert(src, q, scheme, **opts)
    kw = {}
    if scheme == "fp8-block":
        kw["quantization_config"] = transformers.FineGrainedFP8Config(dequantize=True)
    got = _logits(q, **kw)
    ref_q = _logits(dequantized_copy(q, tmp_path / "deq"))
    ref_src = _logits(src)
    assert _rel(got, ref_q) < 1e-2  # transformers reads our bytes as our dequantize does
    err = _rel(got, ref_src)
    assert 0 < err < BOUND[scheme], err  # within the scheme's error, and not trivially the source
