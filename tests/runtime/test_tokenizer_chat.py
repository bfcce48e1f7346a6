"""Tokenizer, chat template, streaming detokenization, <think> splitting, chat via the CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lowbit.cli.main import cli
from lowbit.runtime.chat import ThinkSplitter, strip_thinking
from lowbit.runtime.tokenizer import StreamDecoder, Tokenizer

transformers = pytest.importorskip("transformers")


CONVERSATIONS = [
    [{"role": "user", "content": "Hello there!"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2=?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "Déjà vu? ünïcödé 日本語 🙂"}],
]


@pytest.mark.parametrize("conv", CONVERSATIONS)
def test_chat_ids_equal_transformers(tiny_ckpt, conv):
    path = tiny_ckpt("llama")
    ours = Tokenizer(path).encode_chat(conv)
    ref = transformers.AutoTokenizer.from_pretrained(path).apply_chat_template(
        conv, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ours == list(ref)


def test_stream_decoder_never_splits_a_character(tiny_ckpt):
    tok = Tokenizer(tiny_ckpt("llama"))
    text = "naïve 日本語 🙂 done"
    ids = tok.encode(text, add_special_tokens=False)
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == tok.decode(ids)
    assert all("\ufffd" not in p for p in pieces)


def test_think_splitter_handles_split_tags():
    s = ThinkSplitter()
    chunks = ["<thi", "nk>plan a", "nswer</th", "ink>Hello", " world"]
    pieces = [p for c in chunks for p in s.feed(c)] + s.flush()
    thought = "".join(t for t, th in pieces if th)
    said = "".join(t for t, th in pieces if not th)
    assert (thought, said) == ("plan answer", "Hello world")
    assert strip_thinking("<think>x</think>\n\nHi") == "Hi"


def test_generate_json(tiny_ckpt):
    path = tiny_ckpt("qwen3")
    r = CliRunner().invoke(cli, ["generate", str(path), "--prompt", "hi", "--max-new-tokens", "5",
                                 "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert set(out) == {"prompt_ids", "output_ids", "text", "prefill_tok_s", "decode_tok_s"}
    assert 1 <= len(out["output_ids"]) <= 5 and out["prefill_tok_s"] > 0
    assert out["prompt_ids"] == Tokenizer(path).encode_chat([{"role": "user", "content": "hi"}])


def test_chat_keeps_kv_cache_and_commands(tiny_ckpt):
    r = CliRunner().invoke(cli, ["chat", str(tiny_ckpt("llama")), "--device", "cpu", "--max-new-tokens", "4"],
                           input="first question\nsecond question\n/reset\nthird\n/think\n/bogus\n/exit\n")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("[prefill")]
    assert len(lines) == 3
    (n1, m1), (n2, m2), (n3, m3) = ((int(ln.split()[1]), int(ln.split()[3])) for ln in lines)
    # turn 2 reuses at least the whole first prompt from the cache; after /reset all is prefilled
    assert n1 == m1 and n2 <= m2 - m1 and n3 == m3
    assert "(conversation cleared)" in r.output and "(thinking hidden)" in r.output
    assert "unknown command /bogus" in r.output


def test_chat_context_full_stops_cleanly(tiny_ckpt):
    r = CliRunner().invoke(cli, ["chat", str(tiny_ckpt("llama")), "--device", "cpu", "--max-context", "40",
                                 "--max-new-tokens", "30"], input="hello\nhello again and again\n/exit\n")
    assert r.exit_code == 0, r.output
    assert "context full" in r.output
