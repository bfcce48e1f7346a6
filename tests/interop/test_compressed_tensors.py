"""The compressed-tensors library decompresses our nvfp4 / int4 bytes to the values of our dequantize.

Independent check that our bytes mean what we think: compressed-tensors is the reference
implementation of both formats (vLLM and transformers load through it). Its decompress returns
bf16 (the scale dtype), so we compare with our float32 dequantize rounded to bf16: exact equality.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from lowbit.formats import scheme_module
from lowbit.formats.checkpoint import open_checkpoint
from lowbit.quantize.convert import convert

torch = pytest.importorskip("torch")
pytest.importorskip("compressed_tensors")


def _torch(a: np.ndarray):
    a = np.array(a)  # owned, writable copy
    if a.dtype == np.dtype(ml_dtypes.float8_e4m3fn):
        return torch.from_numpy(a.view(np.uint8)).view(torch.float8_e4m3fn)
    if a.dtype == np.dtype(ml_dtypes.bfloat16):
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe"])
@pytest.mark.parametrize("scheme, opts", [("nvfp4", {}), ("int4", {"group_size": 32}),
                                          ("int4", {"group_size": 64, "asymmetric": True})])
def test_ct_decompress_equals_our_dequantize(tiny, tmp_path, arch, scheme, opts):
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme

    convert(tiny(arch), tmp_path / "o", scheme, **opts)
    ck = open_checkpoint(tmp_path / "o")
    qc = ck.config["quantization_config"]
    ct_scheme = QuantizationScheme.model_validate(qc["config_groups"]["group_0"])
    comp = NVFP4PackedCompressor if scheme == "nvfp4" else PackedQuantizationCompressor
    modules = sorted({n.rpartition(".")[0] for n in ck.names() if n.endswith(".weight_packed")})
    assert len(modules) >= 14
    for m in modules:
        t = {n.rpartition(".")[2]: ck.get(n) for n in ck.names() if n.rpartition(".")[0] == m}
        ours = scheme_module(scheme).dequantize(t).astype(ml_dtypes.bfloat16).astype(np.float32)
        theirs = comp.decompress({k: _torch(v) for k, v in t.items()}, ct_scheme)["weight"]
        assert theirs.dtype == torch.bfloat16
        np.testing.assert_array_equal(theirs.float().numpy(), ours, err_msg=m)
