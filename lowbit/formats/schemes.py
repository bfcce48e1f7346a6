"""One frozen spec per scheme, in one dict literal: the facts every layer of lowbit takes from here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchemeSpec:
    name: str
    #: safetensors dtype of the stored weight tensor
    weight_dtype: str
    #: safetensors dtype of the scale tensor
    scale_dtype: str
    #: (rows, cols) of W covered by one scale; int4's cols is the group size option
    block: tuple[int, int]
    #: K must be a multiple of this for the tensor to be quantized (else it stays BF16)
    k_multiple: int
    #: tensors written for each quantized linear, as suffixes of `prefix.`
    tensor_names: tuple[str, ...]
    #: the fused groups (q/k/v, gate/up, expert w1/w3) share one global scale
    fused_global_scale: bool
    #: quantization_config `quant_method` written to config.json
    quant_method: str
    #: compressed-tensors `format`, or None for the HF "fp8" layout
    ct_format: str | None
    #: bump when the bytes we write for the same input change
    version: int = 1


SCHEMES: dict[str, SchemeSpec] = {
    "fp8-block": SchemeSpec(
        name="fp8-block",
        weight_dtype="F8_E4M3",
        scale_dtype="F32",
        block=(128, 128),
        k_multiple=1,
        tensor_names=("weight", "weight_scale_inv"),
        fused_global_scale=False,
        quant_method="fp8",
        ct_format=None,
    ),
    "nvfp4": SchemeSpec(
        name="nvfp4",
        weight_dtype="U8",
        scale_dtype="F8_E4M3",
        block=(1, 16),
        k_multiple=16,
        tensor_names=("weight_packed", "weight_scale", "weight_global_scale"),
        fused_global_scale=True,
        quant_method="compressed-tensors",
        ct_format="nvfp4-pack-quantized",
    ),
    "int4": SchemeSpec(
        name="int4",
        weight_dtype="I32",
        scale_dtype="BF16",
        block=(1, 128),
        k_multiple=128,
        tensor_names=("weight_packed", "weight_scale", "weight_shape"),
        fused_global_scale=False,
        quant_method="compressed-tensors",
        ct_format="pack-quantized",
    ),
}

INT4_GROUP_SIZES = (32, 64, 128)


def get_spec(name: str) -> SchemeSpec:
    from lowbit.errors import SchemeError

    try:
        return SCHEMES[name]
    except KeyError:
        raise SchemeError(
            f"unknown scheme {name!r}: choose one of {', '.join(SCHEMES)}"
        ) from None


def compressed_tensors_config(scheme: str, ignore: list[str], weights: dict) -> dict:
    """The compressed-tensors `quantization_config` of a weight-only scheme (its format from the spec): one
    config group over every Linear with `weights` as its weight arguments."""
    return {
        "quant_method": "compressed-tensors",
        "format": SCHEMES[scheme].ct_format,
        "quantization_status": "compressed",
        "global_compression_ratio": None,
        "kv_cache_scheme": None,
        "ignore": list(ignore),
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": weights,
                "input_activations": None,
                "output_activations": None,
            }
        },
    }
