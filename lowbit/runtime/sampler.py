"""Next-token choice from float32 logits, written once against xp (numpy on the host, cupy on the GPU).

Order as transformers' generate: repetition penalty (positive logits divided, negative multiplied,
over the ids seen so far), temperature, top-k, top-p (keep the smallest set of most likely tokens
whose probability reaches p, at least one), then a draw by inverse CDF from a seeded RandomState.
temperature 0 is greedy (argmax; the penalty still applies). The same seed gives the same tokens
on the same backend.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.errors import LowbitError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def check(self) -> "SamplingParams":
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            raise LowbitError(f"sampling options {self}: need temperature >= 0, 0 < top-p <= 1, top-k >= 0, "
                              "repetition-penalty > 0")
        return self


class Sampler:
    def __init__(self, xp, params: SamplingParams):
        self.xp, self.p = xp, params.check()
        self.rng = xp.random.RandomState(params.seed if params.seed is not None else None)

    def __call__(self, logits, seen=None) -> int:
        """One token id from logits [vocab]; `seen` is an xp int array of ids for the repetition penalty."""
        xp, p = self.xp, self.p
        logits = logits.astype(xp.float32, copy=True)
        if p.repetition_penalty != 1.0 and seen is not None and len(seen):
            ids = xp.unique(seen)
            s = logits[ids]
            logits[ids] = xp.where(s < 0, s * p.repetition_penalty, s / p.repetition_penalty)
        if p.temperature == 0:
            return int(xp.argmax(logits))
        logits /= p.temperature
        if 0 < p.top_k < logits.shape[0]:
            kth = xp.partition(logits, -p.top_k)[-p.top_k]
            logits[logits < kth] = -xp.inf
        probs = xp.exp(logits - logits.max())
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = xp.argsort(-probs)
            before = xp.cumsum(probs[order]) - probs[order]      # mass of the more likely tokens
            probs[order[before >= p.top_p]] = 0.0
        cdf = xp.cumsum(probs)
        u = self.rng.random_sample(1) * cdf[-1]
        return int(min(int(xp.searchsorted(cdf, u, side="right")[0]), logits.shape[0] - 1))
