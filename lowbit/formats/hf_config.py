"""Read and write `quantization_config` in config.json: HF "fp8" and compressed-tensors.

`scheme_from_config` recognises our own output and third-party checkpoints in the same layouts
(official Qwen3 FP8 releases with bf16 `weight_scale_inv` and fully qualified
`modules_to_not_convert`; llm-compressor nvfp4 / pack-quantized output).
"""

from __future__ import annotations

import copy
import re

from lowbit.errors import ConfigError
from lowbit.formats import scheme_module


def with_quantization_config(config: dict, scheme: str, ignore: list[str], **opts) -> dict:
    """A copy of `config` carrying the scheme's quantization_config (minimal CT arguments)."""
    out = copy.deepcopy(config)
    out["quantization_config"] = scheme_module(scheme).config_fragment(sorted(ignore), **opts)
    return out


def _ct_weights(qc: dict, where: str) -> dict:
    groups = qc.get("config_groups") or {}
    if len(groups) != 1:
        raise ConfigError(
            f"{where}: compressed-tensors config with {len(groups)} config_groups; lowbit reads exactly one"
        )
    return next(iter(groups.values())).get("weights") or {}


def scheme_from_config(config: dict, where: str = "config.json") -> tuple[str, dict] | None:
    """(scheme name, options) of a quantized checkpoint's config, or None for an unquantized one."""
    qc = config.get("quantization_config")
    if not qc:
        return None
    method = qc.get("quant_method")
    if method == "fp8":
        block = qc.get("weight_block_size")
        if list(block or []) != [128, 128]:
            raise ConfigError(
                f"{where}: fp8 quantization_config with weight_block_size={block}; lowbit reads only "
                "[128, 128] block scales (per-tensor FP8 is not supported)"
            )
        return "fp8-block", {}
    if method == "compressed-tensors":
        fmt = qc.get("format")
        w = _ct_weights(qc, where)
        if fmt == "nvfp4-pack-quantized" and w.get("group_size") == 16:
            return "nvfp4", {}
        if fmt == "pack-quantized" and w.get("num_bits") == 4 and w.get("type") == "int" \
                and w.get("strategy") == "group":
            return "int4", {"group_size": int(w["group_size"]), "asymmetric": not w.get("symmetric", True)}
        raise ConfigError(
            f"{where}: compressed-tensors format {fmt!r} with weights {w} is not one lowbit reads "
            "(nvfp4-pack-quantized, or pack-quantized int4 group-wise)"
        )
    raise ConfigError(
        f"{where}: unknown quantization_config quant_method {method!r}; lowbit reads 'fp8' "
        "(block 128x128) and 'compressed-tensors' (nvfp4-pack-quantized, pack-quantized int4)"
    )


def ignore_list(config: dict) -> list[str]:
    """The skip list of any of the three config dialects."""
    qc = config.get("quantization_config") or {}
    for key in ("ignored_layers", "modules_to_not_convert", "ignore"):
        if qc.get(key):
            return list(qc[key])
    return []


def is_ignored(module: str, ignore: list[str]) -> bool:
    """Exact module name (with or without a leading `model.`), or a CT `re:` regex (full match)."""
    bare = module[len("model."):] if module.startswith("model.") else module
    for entry in ignore:
        if entry.startswith("re:"):
            if re.fullmatch(entry[3:], module):
                return True
        elif entry in (module, bare, "model." + bare):
            return True
    return False
