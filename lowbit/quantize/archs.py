"""Per-architecture rules: which tensors are quantized linears, which stay BF16 and why, fused groups.

A tensor is quantized only if it is the 2-D `.weight` of a linear layer that the architecture's rule
names. Everything else is copied bit-exact: embeddings, lm_head, every norm, the MoE routers
(`mlp.gate`, `block_sparse_moe.gate`, `mlp.shared_expert_gate`) and all biases.

Fused groups are the linears vLLM fuses into one layer (q/k/v -> qkv_proj, gate/up -> gate_up_proj,
per-expert w1/w3 -> w13): they share one NVFP4 global scale and are kept BF16 together if any member
cannot take the scheme's shape.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from lowbit.errors import ConfigError

log = logging.getLogger(__name__)

_ATTN = r"self_attn\.(q|k|v|o)_proj"
_MLP = r"mlp\.(gate|up|down)_proj"
_EXPERT = r"mlp\.experts\.\d+\.(gate|up|down)_proj"
_SHARED = r"mlp\.shared_expert\.(gate|up|down)_proj"
_MIXTRAL = r"block_sparse_moe\.experts\.\d+\.w[123]"

#: model_type -> regexes (full match on the part after `model.layers.N.`) of the quantized linears
ARCH_LINEARS: dict[str, tuple[str, ...]] = {
    "llama": (_ATTN, _MLP),
    "mistral": (_ATTN, _MLP),
    "qwen2": (_ATTN, _MLP),
    "qwen3": (_ATTN, _MLP),
    "mixtral": (_ATTN, _MIXTRAL),
    "qwen2_moe": (_ATTN, _MLP, _EXPERT, _SHARED),
    "qwen3_moe": (_ATTN, _MLP, _EXPERT),
}
SUPPORTED = tuple(ARCH_LINEARS)

_GENERIC = r".*(proj|\bw[123])"
_ROUTER = re.compile(r"(.*\.)?(mlp\.gate|block_sparse_moe\.gate|mlp\.shared_expert_gate)")
_LAYER = re.compile(r"model\.layers\.\d+\.(.*)")

#: (regex on the module name, group key template, member name) of the fused groups
_FUSED = (
    (re.compile(r"(.*)\.self_attn\.(q|k|v)_proj"), "{}.self_attn.qkv"),
    (re.compile(r"(.*)\.(gate|up)_proj"), "{}.gate_up"),
    (re.compile(r"(.*)\.w(1|3)"), "{}.w13"),
)


@dataclass(frozen=True)
class Rule:
    """What to do with one source tensor."""

    quantize: bool
    reason: str  # why it stays BF16 (empty when quantized)
    group: str | None = None  # fused group key (quantized linears only)


class ArchRules:
    def __init__(self, config: dict, generic: bool = False, ignore: tuple[str, ...] = ()):
        self.model_type = str(config.get("model_type", ""))
        if self.model_type in ARCH_LINEARS:
            self.linears = [re.compile(p) for p in ARCH_LINEARS[self.model_type]]
            self.generic = False
        elif generic:
            log.warning("architecture %r has no lowbit rule: using the generic rule "
                        "(quantize 2-D *proj / w1..w3 weights)", self.model_type)
            self.linears = [re.compile(_GENERIC)]
            self.generic = True
        else:
            raise ConfigError(
                f"config.json: model_type {self.model_type!r} is not supported; lowbit knows "
                f"{', '.join(SUPPORTED)}: pass --generic to quantize 2-D *proj / w1..w3 weights anyway")
        try:
            self.ignore = [re.compile(p) for p in ignore]
        except re.error as e:
            raise ConfigError(f"--ignore {e.pattern!r} is not a valid regex ({e})") from None

    def _is_linear(self, module: str) -> bool:
        m = _LAYER.fullmatch(module)
        if self.generic:
            return any(p.fullmatch(module) for p in self.linears)
        return bool(m) and any(p.fullmatch(m.group(1)) for p in self.linears)

    def rule(self, name: str, shape: tuple[int, ...]) -> Rule:
        module, _, leaf = name.rpartition(".")
        if leaf == "bias":
            return Rule(False, "bias")
        if "embed" in module:
            return Rule(False, "embedding")
        if module.endswith("lm_head"):
            return Rule(False, "lm_head")
        if "norm" in module.rpartition(".")[2]:
            return Rule(False, "norm")
        if _ROUTER.fullmatch(module):
            return Rule(False, "MoE router")
        if leaf != "weight" or len(shape) != 2 or not self._is_linear(module):
            return Rule(False, "not a quantized linear")
        for pat in self.ignore:
            if pat.search(module) or pat.search(name):
                return Rule(False, f"--ignore {pat.pattern}")
        return Rule(True, "", fused_group(module))


def fused_group(module: str) -> str | None:
    for pat, template in _FUSED:
        m = pat.fullmatch(module)
        if m:
            return template.format(m.group(1))
    return None
