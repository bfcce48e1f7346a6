"""A chat session over an Engine: the message list, the chat template, and <think> handling.

Each turn renders the whole conversation with the template, but the engine only prefills the tokens
after the longest prefix already in its KV cache, so earlier turns are not recomputed. A turn that
does not fit raises ContextFull before anything changes; one that fills the cache mid-answer stops
cleanly with stop == "context". `ThinkSplitter` cuts streamed text into (text, is_thinking) pieces at
<think> / </think>, even when a tag arrives split across chunks.
"""

from __future__ import annotations

from lowbit.runtime.generate import Engine, Stats
from lowbit.runtime.sampler import SamplingParams
from lowbit.runtime.tokenizer import StreamDecoder

OPEN, CLOSE = "<think>", "</think>"


class ThinkSplitter:
    def __init__(self):
        self.thinking, self.buf = False, ""

    def feed(self, text: str) -> list[tuple[str, bool]]:
        self.buf += text
        out = []
        while True:
            tag = CLOSE if self.thinking else OPEN
            i = self.buf.find(tag)
            if i >= 0:
                if i:
                    out.append((self.buf[:i], self.thinking))
                self.buf, self.thinking = self.buf[i + len(tag):], not self.thinking
                continue
            keep = next((k for k in range(len(tag) - 1, 0, -1) if self.buf.endswith(tag[:k])), 0)
            if len(self.buf) > keep:
                out.append((self.buf[:len(self.buf) - keep], self.thinking))
                self.buf = self.buf[len(self.buf) - keep:]
            return out

    def flush(self) -> list[tuple[str, bool]]:
        rest, self.buf = self.buf, ""
        return [(rest, self.thinking)] if rest else []


def strip_thinking(text: str) -> str:
    parts = ThinkSplitter()
    pieces = parts.feed(text) + parts.flush()
    return "".join(t for t, thinking in pieces if not thinking).strip()


class ChatSession:
    def __init__(self, engine: Engine, system: str | None = None, params: SamplingParams = SamplingParams(),
                 max_new_tokens: int = 512):
        if engine.tokenizer is None:
            from lowbit.errors import ConfigError

            raise ConfigError(f"{engine.path}: no tokenizer.json; chat needs the model's tokenizer files")
        self.engine, self.params, self.max_new_tokens = engine, params, max_new_tokens
        self.system = system
        self.messages: list[dict] = []

    def reset(self, system: str | None = None) -> None:
        self.system = system if system is not None else self.system
        self.messages = []
        self.engine.reset()

    def _conversation(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def turn(self, user: str, stats: Stats | None = None):
        """Yield (text, is_thinking) pieces of the answer; the answer joins the history at the end."""
        stats = stats if stats is not None else Stats()
        tok = self.engine.tokenizer
        ids = tok.encode_chat(self._conversation() + [{"role": "user", "content": user}])
        self.engine.model.kv.check_room(0, len(ids))            # ContextFull: history unchanged
        self.messages.append({"role": "user", "content": user})
        dec, split, answer = StreamDecoder(tok), ThinkSplitter(), []
        for t in self.engine.stream(ids, self.params, self.max_new_tokens, stats):
            if t in self.engine.eos_ids:
                break
            text = dec.push(t)
            answer.append(text)
            yield from split.feed(text)
        tail = dec.flush()
        answer.append(tail)
        yield from split.feed(tail) + split.flush()
        self.messages.append({"role": "assistant", "content": strip_thinking("".join(answer))})
