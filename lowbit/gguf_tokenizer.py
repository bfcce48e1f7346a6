"""The tokenizer of a GGUF model as tokenizer.json + tokenizer_config.json, with the `tokenizers` library.

GGUF `gpt2`-model vocabularies are byte-level BPE: tokens, merges and token types (3 = control ->
special added token, 4 = user-defined -> added token). The pre-tokenizer follows llama.cpp's
`tokenizer.ggml.pre`: `smollm` = Digits(individual_digits) then ByteLevel (SmolLM2), `gpt2`/`default`
= ByteLevel, `llama-bpe` and `qwen2` = their split regex then ByteLevel without its own regex.
Special tokens and the chat template come from the metadata; no BOS is added unless the GGUF says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from lowbit.errors import LowbitError

_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer(pre: str, where: Path):
    from tokenizers import Regex, pre_tokenizers as pt

    if pre == "smollm":
        return pt.Sequence([pt.Digits(individual_digits=True),
                            pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    if pre in ("gpt2", "default", None):
        return pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    regex = {"llama-bpe": _LLAMA3_RE, "qwen2": _QWEN2_RE}.get(pre)
    if regex is None:
        raise LowbitError(f"{where}: GGUF pre-tokenizer {pre!r} is not known to lowbit "
                          "(smollm, gpt2, llama-bpe, qwen2)")
    return pt.Sequence([pt.Split(Regex(regex), behavior="isolated", invert=False),
                        pt.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])


def build_tokenizer(reader, where: Path):
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    from lowbit.gguf_import import field

    if field(reader, "tokenizer.ggml.model") != "gpt2":
        raise LowbitError(f"{where}: GGUF tokenizer model {field(reader, 'tokenizer.ggml.model')!r}; "
                          "import-gguf reads byte-level BPE ('gpt2') vocabularies only")
    tokens = list(field(reader, "tokenizer.ggml.tokens"))
    types = list(field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges", [])]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(field(reader, "tokenizer.ggml.pre"), where)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    added = [AddedToken(t, special=(ty == 3), normalized=False) for t, ty in zip(tokens, types) if ty in (3, 4)]
    tok.add_tokens(added)
    return tok, tokens


def write_tokenizer_files(reader, out: Path, cfg: dict, where: Path) -> None:
    from lowbit.gguf_import import field

    tok, tokens = build_tokenizer(reader, where)
    tok.save(str(out / "tokenizer.json"))
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": bool(field(reader,
          "tokenizer.ggml.add_bos_token", False)), "clean_up_tokenization_spaces": False,
          "model_max_length": cfg.get("max_position_embeddings", 8192),
          "model_input_names": ["input_ids", "attention_mask"]}
    for attr, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")):
        i = field(reader, f"tokenizer.ggml.{key}_token_id")
        if i is not None:
            tc[attr] = tokens[int(i)]
    template = field(reader, "tokenizer.chat_template")
    if template:
        tc["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, ensure_ascii=False))
