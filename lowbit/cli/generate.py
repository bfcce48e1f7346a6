"""`lowbit generate CKPT --prompt ...`: one answer, with prefill and decode speed."""

from __future__ import annotations

import json
import sys

import click

DEVICES = click.Choice(["auto", "cpu", "cuda"])


def sampling_options(f):
    for opt in reversed([
        click.option("--max-new-tokens", default=256, show_default=True, help="Stop after this many new tokens."),
        click.option("--temperature", default=0.0, show_default=True, help="0 = greedy."),
        click.option("--top-k", default=0, show_default=True, help="Keep the k most likely tokens (0 = all)."),
        click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling mass."),
        click.option("--repetition-penalty", default=1.0, show_default=True),
        click.option("--seed", type=int, default=None, help="Seed for reproducible sampling."),
        click.option("--device", type=DEVICES, default="auto", show_default=True),
        click.option("--max-context", default=4096, show_default=True, help="KV cache positions."),
    ]):
        f = opt(f)
    return f


def make_params(temperature, top_k, top_p, repetition_penalty, seed):
    from lowbit.runtime.sampler import SamplingParams

    return SamplingParams(temperature, top_k, top_p, repetition_penalty, seed).check()


@click.command()
@click.argument("ckpt", type=click.Path(exists=True, file_okay=False))
@click.option("--prompt", required=True, help="The user message (or plain text with --raw).")
@click.option("--raw", is_flag=True, help="Send the prompt as plain text, without the chat template.")
@click.option("--system", default=None, help="A system message (chat template only).")
@sampling_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def generate(ckpt, prompt, raw, system, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
             device, max_context, as_json):
    """Generate an answer to PROMPT with the model in CKPT and report tokens per second."""
    from lowbit.runtime.generate import Engine, Stats
    from lowbit.runtime.tokenizer import StreamDecoder

    params = make_params(temperature, top_k, top_p, repetition_penalty, seed)
    eng = Engine(ckpt, device=device, max_context=max_context)
    ids = eng.prompt_ids(prompt, raw=raw, system=system)
    stats, out = Stats(), []
    dec = StreamDecoder(eng.tokenizer) if eng.tokenizer and not as_json else None
    for t in eng.stream(ids, params, max_new_tokens, stats):
        out.append(t)
        if dec and t not in eng.eos_ids:
            click.echo(dec.push(t), nl=False)
    text = eng.tokenizer.decode([t for t in out if t not in eng.eos_ids]) if eng.tokenizer else ""
    if as_json:
        click.echo(json.dumps({"prompt_ids": ids, "output_ids": out, "text": text,
                               "prefill_tok_s": round(stats.prefill_tok_s, 2),
                               "decode_tok_s": round(stats.decode_tok_s, 2)}))
        return
    if dec:
        click.echo(dec.flush())
    click.echo(f"[{eng.device}] prefill {stats.prefilled} tok {stats.prefill_tok_s:.1f} tok/s | decode "
               f"{stats.generated} tok {stats.decode_tok_s:.1f} tok/s | stop: {stats.stop}", err=True)
    sys.stdout.flush()
