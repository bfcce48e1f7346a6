import pytest

from lowbit.errors import ConfigError
from lowbit.formats import hf_config


@pytest.mark.parametrize("scheme, opts", [
    ("fp8-block", {}), ("nvfp4", {}), ("int4", {"group_size": 128, "asymmetric": False}),
    ("int4", {"group_size": 32, "asymmetric": True}),
])
def test_config_round_trip(scheme, opts):
    cfg = hf_config.with_quantization_config({"model_type": "llama"}, scheme, ["lm_head"], **opts)
    assert hf_config.scheme_from_config(cfg) == (scheme, opts)
    assert hf_config.ignore_list(cfg) == ["lm_head"]


def test_fp8_config_fields_that_vllm_requires():
    qc = hf_config.with_quantization_config({}, "fp8-block", ["b", "a"])["quantization_config"]
    assert qc["activation_scheme"] == "dynamic" and qc["weight_block_size"] == [128, 128]
    assert qc["modules_to_not_convert"] == qc["ignored_layers"] == ["a", "b"]


def test_official_qwen3_fp8_config_is_read():
    cfg = {"quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                                   "weight_block_size": [128, 128],
                                   "modules_to_not_convert": ["lm_head", "model.layers.0.mlp.gate"]}}
    assert hf_config.scheme_from_config(cfg) == ("fp8-block", {})
    assert hf_config.is_ignored("model.layers.0.mlp.gate", hf_config.ignore_list(cfg))
    assert not hf_config.is_ignored("model.layers.0.mlp.gate_proj", hf_config.ignore_list(cfg))


def test_unquantized_and_unknown_configs():
    assert hf_config.scheme_from_config({"model_type": "llama"}) is None
    with pytest.raises(ConfigError, match="gptq"):
        hf_config.scheme_from_config({"quantization_config": {"quant_method": "gptq"}})
    with pytest.raises(ConfigError, match="per-tensor"):
        hf_config.scheme_from_config({"quantization_config": {"quant_method": "fp8"}})


def test_ct_regex_ignore_is_anchored():
    ignore = ["lm_head", "re:.*mlp\\.gate$"]
    assert hf_config.is_ignored("model.layers.3.mlp.gate", ignore)
    assert not hf_config.is_ignored("model.layers.3.mlp.gate_proj", ignore)
    assert hf_config.is_ignored("lm_head", ignore)


def test_compressed_tensors_parses_our_configs():
    ct = pytest.importorskip("compressed_tensors.quantization")
    for scheme, opts in [("nvfp4", {}), ("int4", {"group_size": 64, "asymmetric": True})]:
        qc = hf_config.with_quantization_config({}, scheme, ["lm_head"], **opts)["quantization_config"]
        parsed = ct.QuantizationConfig.model_validate(qc)
        w = parsed.config_groups["group_0"].weights
        assert w.num_bits == 4 and w.group_size == (16 if scheme == "nvfp4" else 64)
