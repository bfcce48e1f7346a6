"""Synthetic BF16 checkpoints in the real Hugging Face layout, for tests, benchmarks and demos.

`write_synthetic(out_dir, arch, preset="tiny", layers=None, seed=0, max_shard_size=None, dtype="bf16")`
writes config.json, sharded safetensors + index, and a tiny BPE tokenizer (tokenizer.json,
tokenizer_config.json with a ChatML template, generation_config.json). Weights are N(0, 0.02)
(norm weights 1 + N(0, 0.02)), drawn per tensor from a generator seeded by (seed, crc32(name)), so a
tensor's values do not depend on the layer count or shard layout. Tensors are generated and written
one row-chunk at a time: memory stays bounded for real-shape presets.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np

from lowbit.errors import LowbitError
from lowbit.formats import checkpoint, safetensors_io as sio
from lowbit.synth_presets import ARCHITECTURES, ARCHS, PRESETS
from lowbit.synth_tokenizer import write_tokenizer

_DTYPES = {"bf16": "BF16", "f16": "F16", "f32": "F32"}
_CHUNK_ELEMS = 1 << 22
SPECIAL_IDS = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}


def parse_size(s) -> int:
    """'5GB', '500MB', '1.5GiB', 1234 -> bytes (decimal units as transformers uses)."""
    if isinstance(s, (int, float)):
        return int(s)
    text = str(s).strip().upper()
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
             "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}
    for u, mult in units.items():
        if text.endswith(u):
            try:
                return int(float(text[: -len(u)]) * mult)
            except ValueError:
                break
    try:
        return int(text)
    except ValueError:
        raise LowbitError(f"size {s!r} is not understood: write e.g. 5GB, 500MB or a byte count") from None


def make_config(arch: str, preset: str = "tiny", layers: int | None = None, dtype: str = "bf16") -> dict:
    if arch not in PRESETS:
        raise LowbitError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    if preset not in PRESETS[arch]:
        raise LowbitError(f"unknown preset {preset!r} for {arch}: choose one of {', '.join(sorted(PRESETS[arch]))}")
    if dtype not in _DTYPES:
        raise LowbitError(f"unknown dtype {dtype!r}: choose one of {', '.join(_DTYPES)}")
    cfg = {"architectures": [ARCHITECTURES[arch]], "model_type": arch, "hidden_act": "silu",
           "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
           "bos_token_id": SPECIAL_IDS["<|endoftext|>"], "eos_token_id": SPECIAL_IDS["<|im_end|>"],
           "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype]}
    cfg.update(PRESETS[arch][preset])
    if layers is not None:
        if layers < 1:
            raise LowbitError(f"--layers {layers}: need at least 1 layer")
        cfg["num_hidden_layers"] = int(layers)
    if arch == "qwen2_moe":
        cfg["qkv_bias"] = True
    return cfg


def _is_sparse(cfg: dict, i: int) -> bool:
    if cfg["model_type"] == "mixtral":
        return True
    if "num_experts" not in cfg:
        return False
    step = cfg.get("decoder_sparse_step", 1)
    return i not in cfg.get("mlp_only_layers", []) and (i + 1) % step == 0


def _mlp(prefix: str, hidden: int, inter: int, names=("gate_proj", "up_proj", "down_proj")) -> list:
    g, u, d = names
    return [(f"{prefix}.{g}.weight", (inter, hidden)), (f"{prefix}.{u}.weight", (inter, hidden)),
            (f"{prefix}.{d}.weight", (hidden, inter))]


def _layer(cfg: dict, i: int) -> list[tuple[str, tuple[int, ...]]]:
    h, arch = cfg["hidden_size"], cfg["model_type"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    nq, nkv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    p = f"model.layers.{i}"
    out = [(f"{p}.input_layernorm.weight", (h,)), (f"{p}.post_attention_layernorm.weight", (h,)),
           (f"{p}.self_attn.q_proj.weight", (nq, h)), (f"{p}.self_attn.k_proj.weight", (nkv, h)),
           (f"{p}.self_attn.v_proj.weight", (nkv, h)), (f"{p}.self_attn.o_proj.weight", (h, nq))]
    if arch in ("qwen2", "qwen2_moe"):
        out += [(f"{p}.self_attn.q_proj.bias", (nq,)), (f"{p}.self_attn.k_proj.bias", (nkv,)),
                (f"{p}.self_attn.v_proj.bias", (nkv,))]
    if arch in ("qwen3", "qwen3_moe"):
        out += [(f"{p}.self_attn.q_norm.weight", (hd,)), (f"{p}.self_attn.k_norm.weight", (hd,))]
    if not _is_sparse(cfg, i):
        return out + _mlp(f"{p}.mlp", h, cfg["intermediate_size"])
    if arch == "mixtral":
        e = cfg["num_local_experts"]
        out.append((f"{p}.block_sparse_moe.gate.weight", (e, h)))
        for j in range(e):
            out += _mlp(f"{p}.block_sparse_moe.experts.{j}", h, cfg["intermediate_size"], ("w1", "w3", "w2"))
        return out
    e = cfg["num_experts"]
    out.append((f"{p}.mlp.gate.weight", (e, h)))
    for j in range(e):
        out += _mlp(f"{p}.mlp.experts.{j}", h, cfg["moe_intermediate_size"])
    if arch == "qwen2_moe":
        out += _mlp(f"{p}.mlp.shared_expert", h, cfg["shared_expert_intermediate_size"])
        out.append((f"{p}.mlp.shared_expert_gate.weight", (1, h)))
    return out


def tensor_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of the model, in the order HF checkpoints store them (embed, layers, norm, head)."""
    out = [("model.embed_tokens.weight", (cfg["vocab_size"], cfg["hidden_size"]))]
    for i in range(cfg["num_hidden_layers"]):
        out += sorted(_layer(cfg, i))
    out.append(("model.norm.weight", (cfg["hidden_size"],)))
    if not cfg.get("tie_word_embeddings"):
        out.append(("lm_head.weight", (cfg["vocab_size"], cfg["hidden_size"])))
    return out


def _shards(shapes: list, itemsize: int, max_bytes: int) -> list[list]:
    shards, cur, size = [], [], 0
    for name, shape in shapes:
        n = itemsize * math.prod(shape)
        if cur and size + n > max_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += n
    return shards + ([cur] if cur else [])


def _fill(writer: sio.ShardWriter, name: str, shape: tuple, seed: int, np_dtype) -> None:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    is_norm = len(shape) == 1 and name.endswith("norm.weight")
    rows = shape[0] if len(shape) > 1 else 1
    row_elems = math.prod(shape) // max(rows, 1)
    step = max(1, _CHUNK_ELEMS // max(row_elems, 1))
    offset = 0
    for r in range(0, rows, step):
        n = min(step, rows - r) * row_elems
        x = rng.standard_normal(n, dtype=np.float32)
        x *= np.float32(0.02)
        if is_norm:
            x += np.float32(1.0)
        chunk = x.astype(np_dtype)
        writer.write(name, chunk, offset)
        offset += chunk.nbytes


def write_synthetic(out_dir, arch: str, preset: str = "tiny", layers: int | None = None, seed: int = 0,
                    max_shard_size=None, dtype: str = "bf16") -> Path:
    """Write a random-weight checkpoint; returns its directory. See the module docstring."""
    cfg = make_config(arch, preset, layers, dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    st = _DTYPES[dtype]
    np_dtype, itemsize = sio.DTYPES[st], sio.DTYPES[st].itemsize
    shapes = tensor_shapes(cfg)
    total = sum(itemsize * math.prod(s) for _, s in shapes)
    if max_shard_size is None:
        limit = total // 2 + 1 if preset.startswith("tiny") else parse_size("5GB")
    else:
        limit = parse_size(max_shard_size)
    groups = _shards(shapes, itemsize, limit)
    weight_map = {}
    for i, group in enumerate(groups, 1):
        fname = checkpoint.shard_name(i, len(groups))
        with sio.ShardWriter(out / fname, {n: (st, s) for n, s in group}) as w:
            for name, shape in group:
                _fill(w, name, shape, seed, np_dtype)
                weight_map[name] = fname
    checkpoint.write_index(out, weight_map, total)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    write_tokenizer(out, SPECIAL_IDS)
    return out
