"""`lowbit import-gguf`: a GGUF Llama-family model -> a BF16 Hugging Face checkpoint, without torch.

Tensors: `gguf.quants.dequantize` (float32), names mapped to HF names, llama.cpp's Q/K row
permutation undone (its convert script interleaves the two RoPE halves of each head), rounded to BF16
and streamed one tensor at a time into model.safetensors. config.json (LlamaForCausalLM, or
Qwen2ForCausalLM for `qwen2` GGUFs), generation_config.json and the tokenizer
(lowbit.gguf_tokenizer) come from the GGUF metadata. The output is written to a temporary sibling
directory and renamed into place, so OUT is either complete or absent.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from lowbit.errors import CheckpointError, LowbitError
from lowbit.formats import numerics
from lowbit.formats.safetensors_io import ShardWriter

log = logging.getLogger(__name__)

ARCHS = {"llama": ("llama", "LlamaForCausalLM"), "qwen2": ("qwen2", "Qwen2ForCausalLM")}
_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
_BLOCK = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
          "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj"}


def field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def hf_name(gguf_name: str, path: Path) -> str:
    if gguf_name in _GLOBAL:
        return _GLOBAL[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if not m or m.group(2) not in _BLOCK:
        raise CheckpointError(f"{path}: tensor {gguf_name!r} has no Hugging Face name in lowbit's Llama-family "
                              "map; only dense Llama/Mistral/Qwen2 GGUFs import")
    return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: per head, rows (pairs interleaved) -> (first half, second half)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_float32(reader, t, cfg: dict) -> np.ndarray:
    """One GGUF tensor dequantized to float32 in the HF layout [out, in]."""
    from gguf.quants import dequantize

    w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
    w = w.reshape([int(x) for x in reversed(t.shape)]) if w.ndim != len(t.shape) else w
    if cfg["model_type"] == "llama":     # llama.cpp permutes Q/K of llama-arch models only
        if t.name.endswith("attn_q.weight"):
            w = unpermute(w, cfg["num_attention_heads"])
        elif t.name.endswith("attn_k.weight"):
            w = unpermute(w, cfg["num_key_value_heads"])
    return w


def make_config(reader, path: Path) -> dict:
    arch = field(reader, "general.architecture")
    if arch not in ARCHS:
        raise LowbitError(f"{path}: GGUF architecture {arch!r} is not supported; import-gguf reads "
                          f"{', '.join(ARCHS)} (dense Llama family)")
    model_type, cls = ARCHS[arch]
    a = lambda k, d=None: field(reader, f"{arch}.{k}", d)  # noqa: E731
    heads = int(a("attention.head_count"))
    hidden = int(a("embedding_length"))
    names = {t.name for t in reader.tensors}
    vocab = a("vocab_size") or len(field(reader, "tokenizer.ggml.tokens", []))
    cfg = {"architectures": [cls], "model_type": model_type, "hidden_size": hidden,
           "intermediate_size": int(a("feed_forward_length")), "num_hidden_layers": int(a("block_count")),
           "num_attention_heads": heads, "num_key_value_heads": int(a("attention.head_count_kv", heads)),
           "head_dim": int(a("rope.dimension_count", hidden // heads)), "vocab_size": int(vocab),
           "max_position_embeddings": int(a("context_length", 4096)),
           "rms_norm_eps": float(f"{float(a('attention.layer_norm_rms_epsilon', 1e-6)):.6g}"),
           "rope_theta": float(a("rope.freq_base", 10000.0)), "hidden_act": "silu",
           "tie_word_embeddings": "output.weight" not in names, "torch_dtype": "bfloat16",
           "attention_bias": "blk.0.attn_q.bias" in names, "mlp_bias": False}
    for key, name in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id")):
        v = field(reader, f"tokenizer.ggml.{key}_token_id")
        if v is not None:
            cfg[name] = int(v)
    return cfg


def write_weights(reader, cfg: dict, out: Path, path: Path, progress=None) -> int:
    layout, order = {}, []
    for t in reader.tensors:
        name = hf_name(t.name, path)
        layout[name] = ("BF16", tuple(int(x) for x in reversed(t.shape)))
        order.append((name, t))
    with ShardWriter(out / "model.safetensors", layout, {"format": "pt"}) as w:
        for i, (name, t) in enumerate(order):
            w.write(name, numerics.to_bf16(tensor_float32(reader, t, cfg)).reshape(layout[name][1]))
            if progress:
                progress(i + 1, len(order))
    return len(order)


def import_gguf(gguf_path, out_dir, *, overwrite: bool = False, progress=None) -> Path:
    """Convert `gguf_path` into a BF16 HF checkpoint at `out_dir` (atomic); returns out_dir."""
    from gguf import GGUFReader

    from lowbit.gguf_tokenizer import write_tokenizer_files

    src, out = Path(gguf_path), Path(out_dir)
    if not src.is_file():
        raise LowbitError(f"{src}: no such GGUF file")
    if out.exists() and not overwrite:
        raise LowbitError(f"{out} exists; pass --overwrite to replace it or choose another OUT")
    try:
        reader = GGUFReader(str(src))
    except Exception as e:  # the gguf package raises ValueError/struct.error on bad files
        raise CheckpointError(f"{src}: not a readable GGUF file ({e}); re-download it") from e
    cfg = make_config(reader, src)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    try:
        n = write_weights(reader, cfg, tmp, src, progress)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        write_tokenizer_files(reader, tmp, cfg, src)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("imported %d tensors from %s into %s", n, src, out)
    return out
