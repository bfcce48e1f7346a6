"""`lowbit chat CKPT`: talk to a model; tokens stream; /reset /system /think /exit."""

from __future__ import annotations

import sys

import click

from lowbit.cli.generate import make_params, sampling_options

HELP = "commands: /reset (new conversation), /system TEXT, /think (show or hide <think> text), /exit"


def _read(stream) -> str | None:
    click.echo(click.style(">>> ", bold=True), nl=False)
    line = stream.readline()
    return None if not line else line.rstrip("\n")


@click.command()
@click.argument("ckpt", type=click.Path(exists=True, file_okay=False))
@click.option("--system", default=None, help="System message for the conversation.")
@sampling_options
@click.option("--hide-thinking", is_flag=True, help="Start with <think> text hidden (toggle with /think).")
def chat(ckpt, system, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, device,
         max_context, hide_thinking):
    """Chat with the model in CKPT (reads lines from stdin; the KV cache is kept across turns)."""
    from lowbit.runtime.chat import ChatSession
    from lowbit.runtime.generate import Engine, Stats
    from lowbit.runtime.kv_cache import ContextFull

    params = make_params(temperature, top_k, top_p, repetition_penalty, seed)
    eng = Engine(ckpt, device=device, max_context=max_context)
    session = ChatSession(eng, system, params, max_new_tokens)
    show_think = not hide_thinking
    stdin = sys.stdin
    click.echo(f"lowbit chat: {ckpt} on {eng.device}, {eng.max_context} positions. {HELP}")
    while (line := _read(stdin)) is not None:
        cmd = line.strip()
        if not cmd:
            continue
        if cmd in ("/exit", "/quit"):
            break
        if cmd == "/reset":
            session.reset()
            click.echo("(conversation cleared)")
            continue
        if cmd.startswith("/system"):
            session.reset(cmd[len("/system"):].strip() or None)
            click.echo(f"(system: {session.system!r}; conversation cleared)")
            continue
        if cmd == "/think":
            show_think = not show_think
            click.echo(f"(thinking {'shown' if show_think else 'hidden'})")
            continue
        if cmd.startswith("/"):
            click.echo(f"(unknown command {cmd.split()[0]}; {HELP})")
            continue
        stats = Stats()
        try:
            for text, thinking in session.turn(line, stats):
                if thinking:
                    if show_think:
                        click.echo(click.style(text, dim=True), nl=False)
                else:
                    click.echo(text, nl=False)
        except ContextFull as e:
            click.echo(f"\n({e})")
            continue
        click.echo()
        note = " | context full: /reset to continue" if stats.stop == "context" else ""
        click.echo(click.style(f"[prefill {stats.prefilled} of {stats.prompt_tokens} tok | {stats.generated} tok, "
                               f"{stats.decode_tok_s:.1f} tok/s{note}]", dim=True))
