"""A tiny byte-level BPE tokenizer for synthetic checkpoints (part of lowbit.synth).

Trained with the `tokenizers` library on a fixed paragraph, so the bytes are the same every time.
Special tokens take ids 0..2: <|endoftext|>, <|im_start|>, <|im_end|>. tokenizer_config.json carries a
ChatML template; generation_config.json lists <|im_end|> and <|endoftext|> as eos ids.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB_SIZE = 320

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = [
    "lowbit turns BF16 checkpoints into FP8, NVFP4 and Int4 safetensors.",
    "The quick brown fox jumps over the lazy dog. Hello, world! How are you today?",
    "A language model predicts the next token from the tokens before it.",
    "user: What is the capital of France? assistant: The capital of France is Paris.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000; punctuation . , ; : ! ? ( ) [ ] { }",
    "system: You are a helpful assistant. Answer briefly and truthfully.",
]


def build_tokenizer(special_ids: dict[str, int]) -> Tokenizer:
    specials = sorted(special_ids, key=special_ids.get)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    for name, i in special_ids.items():
        assert tok.token_to_id(name) == i, (name, tok.token_to_id(name), i)
    return tok


def write_tokenizer(out: Path, special_ids: dict[str, int]) -> None:
    tok = build_tokenizer(special_ids)
    tok.save(str(out / "tokenizer.json"))
    added = {str(i): {"content": name, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for name, i in special_ids.items()}
    tcfg = {"tokenizer_class": "PreTrainedTokenizerFast", "added_tokens_decoder": added,
            "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
            "unk_token": None, "model_max_length": 512, "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE}
    (out / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2, sort_keys=True) + "\n")
    gen = {"bos_token_id": special_ids["<|endoftext|>"],
           "eos_token_id": [special_ids["<|im_end|>"], special_ids["<|endoftext|>"]],
           "pad_token_id": special_ids["<|endoftext|>"], "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")
