"""The model's shape and numerics, read from a Hugging Face config.json.

Reads what the runtime needs for Llama, Mistral, Qwen2, Qwen3, Mixtral, Qwen2-MoE and Qwen3-MoE:
GQA, head_dim, tied embeddings, RMS eps, attention bias (Qwen2), q/k norms (Qwen3), MoE routing, and
RoPE (rope_theta or rope_parameters.rope_theta; scaling of the default, linear, llama3 and yarn kinds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lowbit.errors import ConfigError

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe")
MOE_ARCHS = ("mixtral", "qwen2_moe", "qwen3_moe")


@dataclass
class ModelConfig:
    arch: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float
    max_positions: int
    tie_embeddings: bool
    attn_bias: bool
    qk_norm: bool
    rope_theta: float
    rope: dict = field(default_factory=dict)
    experts: int = 0
    top_k: int = 0
    moe_intermediate: int = 0
    norm_topk: bool = False
    shared_intermediate: int = 0
    sparse_step: int = 1
    mlp_only_layers: tuple = ()
    eos_ids: tuple = ()
    sliding_window: int | None = None

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    def moe_layer(self, i: int) -> bool:
        """Whether decoder layer i has a sparse MoE block (Qwen2/3-MoE may keep some layers dense)."""
        if not self.is_moe or i in self.mlp_only_layers:
            return False
        return (i + 1) % max(self.sparse_step, 1) == 0


def _need(c: dict, key: str, where: str):
    if key not in c:
        raise ConfigError(f"{where}: missing {key!r}; expected a Hugging Face causal-LM config.json")
    return c[key]


def _rope_dict(c: dict) -> dict:
    rp = dict(c.get("rope_parameters") or {})
    rs = c.get("rope_scaling") or {}
    rp.update({k: v for k, v in rs.items() if k not in rp})
    kind = rp.get("rope_type", rp.get("type", "default"))
    rp["rope_type"] = kind
    return rp


def _eos_ids(c: dict) -> tuple:
    e = c.get("eos_token_id")
    if e is None:
        return ()
    return tuple(e) if isinstance(e, list) else (int(e),)


def from_dict(c: dict, where: str = "config.json") -> ModelConfig:
    arch = c.get("model_type")
    if arch not in ARCHS:
        raise ConfigError(f"{where}: model_type {arch!r} is not supported; the runtime runs {', '.join(ARCHS)}")
    hidden, heads = int(_need(c, "hidden_size", where)), int(_need(c, "num_attention_heads", where))
    rope = _rope_dict(c)
    theta = c.get("rope_theta") or rope.get("rope_theta") or 10000.0
    cfg = ModelConfig(
        arch=arch, hidden=hidden, layers=int(_need(c, "num_hidden_layers", where)), heads=heads,
        kv_heads=int(c.get("num_key_value_heads") or heads),
        head_dim=int(c.get("head_dim") or hidden // heads),
        intermediate=int(c.get("intermediate_size") or 0), vocab=int(_need(c, "vocab_size", where)),
        eps=float(c.get("rms_norm_eps", 1e-6)), max_positions=int(c.get("max_position_embeddings", 4096)),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        attn_bias=bool(c.get("attention_bias", arch in ("qwen2", "qwen2_moe"))),
        qk_norm=arch in ("qwen3", "qwen3_moe"), rope_theta=float(theta), rope=rope,
        eos_ids=_eos_ids(c), sliding_window=c.get("sliding_window") if c.get("use_sliding_window", True) else None,
    )
    if arch == "mixtral":
        cfg.experts, cfg.top_k = int(c["num_local_experts"]), int(c["num_experts_per_tok"])
        cfg.moe_intermediate, cfg.norm_topk = cfg.intermediate, True
    elif arch in ("qwen2_moe", "qwen3_moe"):
        cfg.experts, cfg.top_k = int(c["num_experts"]), int(c["num_experts_per_tok"])
        cfg.moe_intermediate = int(c["moe_intermediate_size"])
        cfg.norm_topk = bool(c.get("norm_topk_prob", arch == "qwen3_moe"))
        cfg.shared_intermediate = int(c.get("shared_expert_intermediate_size") or 0)
        cfg.sparse_step = int(c.get("decoder_sparse_step", 1))
        cfg.mlp_only_layers = tuple(c.get("mlp_only_layers") or ())
    return cfg


def rope_tables(cfg: ModelConfig, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin float32 [positions, head_dim] in the rotate-half layout of HF Llama."""
    inv_freq, scale = inv_frequencies(cfg)
    t = np.arange(positions, dtype=np.float64)
    ang = np.outer(t, inv_freq)
    ang = np.concatenate([ang, ang], axis=-1)
    return (np.cos(ang) * scale).astype(np.float32), (np.sin(ang) * scale).astype(np.float32)


def inv_frequencies(cfg: ModelConfig) -> tuple[np.ndarray, float]:
    """(inverse frequencies [head_dim/2], attention scaling) as transformers' rope init functions."""
    d, base, rp = cfg.head_dim, cfg.rope_theta, cfg.rope
    inv = 1.0 / base ** (np.arange(0, d, 2, dtype=np.float64) / d)
    kind = rp.get("rope_type", "default")
    if kind == "default":
        return inv, 1.0
    if kind == "linear":
        return inv / float(rp["factor"]), 1.0
    if kind == "llama3":
        return _llama3(inv, rp), 1.0
    if kind == "yarn":
        return _yarn(cfg, inv, rp)
    raise ConfigError(f"config.json: rope scaling type {kind!r} is not supported (default, linear, llama3, yarn)")


def _llama3(inv: np.ndarray, rp: dict) -> np.ndarray:
    factor, lo, hi = float(rp["factor"]), float(rp["low_freq_factor"]), float(rp["high_freq_factor"])
    old = float(rp["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    out = np.where(wavelen > old / lo, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = (wavelen >= old / hi) & (wavelen <= old / lo)
    return np.where(medium, smoothed, out)


def _yarn(cfg: ModelConfig, inv: np.ndarray, rp: dict) -> tuple[np.ndarray, float]:
    d, base, factor = cfg.head_dim, cfg.rope_theta, float(rp["factor"])
    old = float(rp.get("original_max_position_embeddings") or cfg.max_positions)
    mscale, mscale_all = rp.get("mscale"), rp.get("mscale_all_dim")

    def get_mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = rp.get("attention_factor")
    if attn is None:
        attn = get_mscale(factor, mscale) / get_mscale(factor, mscale_all) if mscale and mscale_all \
            else get_mscale(factor)
    beta_fast, beta_slow = float(rp.get("beta_fast") or 32), float(rp.get("beta_slow") or 1)

    def dim(rot):
        return (d * math.log(old / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = dim(beta_fast), dim(beta_slow)
    if rp.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(d // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrap = 1 - ramp
    return (inv / factor) * (1 - extrap) + inv * extrap, float(attn)
