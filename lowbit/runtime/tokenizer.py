"""Tokenizer and chat template, as transformers does them, without transformers.

`tokenizers` reads tokenizer.json. The chat template comes from tokenizer_config.json
(`chat_template`, a string or a list of named templates) or chat_template.jinja, and is rendered in
a jinja2 ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks, loopcontrols,
`raise_exception`, a `tojson` filter and `strftime_now`, with the special tokens as variables; the
rendered text is encoded without adding special tokens (transformers' apply_chat_template).
Stop ids: every eos id of generation_config.json, config.json and the tokenizer's eos_token.
`StreamDecoder` yields text only once it is complete UTF-8 (never half a character).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from lowbit.errors import ConfigError, LowbitError

_SPECIALS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); re-copy the file from the model repository") from e


def _token_str(v) -> str | None:
    return v.get("content") if isinstance(v, dict) else v


def _ids(v) -> list[int]:
    if v is None:
        return []
    return [int(x) for x in v] if isinstance(v, list) else [int(v)]


def _template_env():
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


class Tokenizer:
    def __init__(self, model_dir):
        from tokenizers import Tokenizer as HFTokenizer

        d = Path(model_dir)
        if not (d / "tokenizer.json").exists():
            raise ConfigError(f"{d}: no tokenizer.json; copy the tokenizer files of the source model next to "
                              "config.json (lowbit quantize copies them)")
        self.tok = HFTokenizer.from_file(str(d / "tokenizer.json"))
        tc = _read_json(d / "tokenizer_config.json")
        self.specials = {k: _token_str(tc.get(k)) for k in _SPECIALS if _token_str(tc.get(k))}
        self.add_bos = bool(tc.get("add_bos_token", False))
        self.template = self._chat_template(d, tc.get("chat_template"))
        self.eos_ids = self._eos_ids(d)

    def _chat_template(self, d: Path, t):
        if isinstance(t, list):
            named = {x.get("name"): x.get("template") for x in t}
            t = named.get("default") or next(iter(named.values()), None)
        if not t and (d / "chat_template.jinja").exists():
            t = (d / "chat_template.jinja").read_text(encoding="utf-8")
        return t or None

    def _eos_ids(self, d: Path) -> tuple[int, ...]:
        ids = _ids(_read_json(d / "generation_config.json").get("eos_token_id"))
        ids += _ids(_read_json(d / "config.json").get("eos_token_id"))
        if "eos_token" in self.specials:
            i = self.tok.token_to_id(self.specials["eos_token"])
            ids += [] if i is None else [i]
        return tuple(dict.fromkeys(ids))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        if not self.template:
            raise ConfigError("this model has no chat template (tokenizer_config.json chat_template or "
                              "chat_template.jinja); use --raw to send the prompt as plain text")
        import jinja2

        try:
            return _template_env().from_string(self.template).render(
                messages=messages, add_generation_prompt=add_generation_prompt, **self.specials, **kwargs)
        except jinja2.exceptions.TemplateError as e:
            raise LowbitError(f"chat template: {e}") from e

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> list[int]:
        return self.encode(self.render_chat(messages, add_generation_prompt, **kwargs), add_special_tokens=False)


class StreamDecoder:
    """Incremental detokenization: text is released only when it ends in a complete character."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.t, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.prefix = self.read = 0

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        before = self.t.decode(self.ids[self.prefix:self.read], self.skip)
        now = self.t.decode(self.ids[self.prefix:], self.skip)
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        """What is left at the end (an incomplete byte sequence decodes to U+FFFD, as transformers does)."""
        rest = self.t.decode(self.ids[self.prefix:], self.skip)[len(self.t.decode(self.ids[self.prefix:self.read],
                                                                                 self.skip)):]
        self.prefix = self.read = len(self.ids)
        return rest
