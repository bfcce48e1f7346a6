"""The generate loop: load a checkpoint on a backend, prefill, decode token by token, time both.

`Engine(path, device)` opens the checkpoint (lowbit.formats.checkpoint validates every header first),
reads the config, builds the model on numpy or cupy and the tokenizer. `Engine.stream(...)` yields
token ids; the KV cache keeps what was computed, so a later call whose prompt starts with the
cached tokens (the next chat turn) only prefills the new ones.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from lowbit.formats.checkpoint import open_checkpoint
from lowbit.formats.hf_config import scheme_from_config
from lowbit.runtime.backend import CpuOps, select_device
from lowbit.runtime.config import from_dict
from lowbit.runtime.kv_cache import ContextFull
from lowbit.runtime.model import Transformer
from lowbit.runtime.sampler import Sampler, SamplingParams

log = logging.getLogger(__name__)


@dataclass
class Stats:
    prompt_tokens: int = 0
    prefilled: int = 0
    generated: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    stop: str = ""

    @property
    def prefill_tok_s(self) -> float:
        return self.prefilled / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tok_s(self) -> float:
        # the first new token comes from the prefill; each later one costs one decode step
        return (self.generated - 1) / self.decode_s if self.decode_s and self.generated > 1 else 0.0


@dataclass
class Result:
    prompt_ids: list[int]
    output_ids: list[int]
    text: str
    stats: Stats = field(default_factory=Stats)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Engine:
    def __init__(self, path, device: str = "auto", max_context: int | None = None,
                 cpu_cache_bytes: int | None = None, cuda_graph: bool = True):
        self.path = Path(path)
        ckpt = open_checkpoint(self.path)
        self.quant = scheme_from_config(ckpt.config, f"{self.path}/config.json")  # unknown -> ConfigError
        self.cfg = from_dict(ckpt.config, f"{self.path}/config.json")
        self.device = select_device(device)
        ctx = min(max_context or 4096, self.cfg.max_positions)
        if self.device == "cuda":
            from lowbit.runtime.cuda_ops import CudaOps

            self.ops = CudaOps(ckpt, self.cfg, cuda_graph=cuda_graph)
        else:
            self.ops = CpuOps(ckpt, self.cfg, cpu_cache_bytes)
        self.model = Transformer(self.cfg, self.ops, ctx)
        self.tokenizer = None
        if (self.path / "tokenizer.json").exists():
            from lowbit.runtime.tokenizer import Tokenizer

            self.tokenizer = Tokenizer(self.path)
        self.eos_ids = set(self.tokenizer.eos_ids if self.tokenizer else ()) | set(self.cfg.eos_ids)
        self.cached: list[int] = []          # the token ids whose keys/values are in the KV cache
        if self.device == "cpu" and self.ops.fits_in_cache():
            self.logits([0])                 # dequantize every layer once, now, not in the first prompt
            self.reset()

    @property
    def max_context(self) -> int:
        return self.model.max_context

    def logits(self, ids: list[int]):
        """float32 logits [len(ids), vocab] on the host, from an empty cache (for tests and perplexity)."""
        self.reset()
        out = self.model.forward(self.ops.ids(ids), 0)
        self.cached = list(ids)
        return self.ops.to_host(out)

    def reset(self) -> None:
        self.cached = []
        self.model.kv.truncate(0)

    def _prefill(self, prompt: list[int], stats: Stats):
        start = min(_common_prefix(self.cached, prompt), len(prompt) - 1)
        self.model.kv.check_room(start, len(prompt) - start)
        self.model.kv.truncate(start)
        t = time.perf_counter()
        logits = self.model.forward(self.ops.ids(prompt[start:]), start, last_only=True)
        self.ops.synchronize()
        stats.prefill_s, stats.prefilled = time.perf_counter() - t, len(prompt) - start
        self.cached = list(prompt)
        return logits[0]

    def stream(self, prompt: list[int], params: SamplingParams = SamplingParams(), max_new_tokens: int = 256,
               stats: Stats | None = None):
        """Yield new token ids (the stop token included, when one comes); fill `stats` as it goes."""
        stats = stats if stats is not None else Stats()
        stats.prompt_tokens = len(prompt)
        if not prompt:
            raise ContextFull("empty prompt: nothing to generate from")
        sampler = Sampler(self.ops.xp, params)
        # greedy without a penalty: the decode step itself returns the argmax (inside its CUDA graph)
        greedy = params.temperature == 0 and params.repetition_penalty == 1.0
        logits = self._prefill(prompt, stats)
        seen = self.ops.ids(prompt) if params.repetition_penalty != 1.0 else None
        tok = sampler(logits, seen)
        for i in range(max_new_tokens):
            stats.generated += 1
            if tok in self.eos_ids:
                stats.stop = "eos"
                yield tok
                return
            yield tok
            if i + 1 == max_new_tokens:
                break
            pos = len(self.cached)
            if pos + 1 > self.max_context:
                stats.stop = "context"
                return
            t = time.perf_counter()
            out = self.ops.decode_step(self.model, tok, pos, greedy=greedy)
            self.ops.synchronize()
            stats.decode_s += time.perf_counter() - t
            self.cached.append(tok)
            if seen is not None:
                seen = self.ops.xp.concatenate([seen, self.ops.ids([tok])])
            tok = out if greedy else sampler(out, seen)
        stats.stop = "length"

    def generate(self, prompt: list[int], params: SamplingParams = SamplingParams(),
                 max_new_tokens: int = 256) -> Result:
        stats = Stats()
        out = list(self.stream(prompt, params, max_new_tokens, stats))
        text_ids = [t for t in out if t not in self.eos_ids]
        text = self.tokenizer.decode(text_ids) if self.tokenizer else ""
        return Result(list(prompt), out, text, stats)

    def prompt_ids(self, prompt: str, raw: bool = False, system: str | None = None) -> list[int]:
        """Token ids of a one-shot prompt: the chat template applied unless raw."""
        if self.tokenizer is None:
            from lowbit.errors import ConfigError

            raise ConfigError(f"{self.path}: no tokenizer.json; copy the source model's tokenizer files here")
        if raw:
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return self.tokenizer.encode_chat(msgs)


def perplexity(engine: Engine, ids: list[int]) -> float:
    """exp(mean negative log-likelihood) of ids[1:] given the prefix, in one prefill."""
    import numpy as np

    logits = engine.logits(ids[:-1]).astype(np.float64)
    m = logits.max(axis=-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))
    nll = -logp[np.arange(len(ids) - 1), ids[1:]]
    return float(np.exp(nll.mean()))


def sample_text() -> str:
    """The shipped public-domain text (lowbit/data/perplexity.txt)."""
    from importlib.resources import files

    return files("lowbit").joinpath("data/perplexity.txt").read_text(encoding="utf-8")
