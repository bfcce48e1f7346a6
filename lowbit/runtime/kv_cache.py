"""Preallocated KV cache: per layer, keys and values float32 [kv_heads, max_context, head_dim].

`append(layer, pos, k, v)` writes the new tokens' keys/values (k, v: [M, kv_heads, D]) at pos..pos+M-1
and returns views of the first pos+M positions; nothing is allocated per token. `length` is the number
of valid positions (set by the model after a forward), so a chat can keep the cache across turns and
`truncate(n)` can roll back.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.errors import LowbitError


@dataclass
class DevicePos:
    """A decode position held on the GPU (int32 [1]) and the number of cached keys attention reads
    (`span` >= position + 1; keys past the position are masked). A CUDA graph captured with one
    DevicePos replays for every position below its span: only the array's value changes."""

    index: object
    span: int


class ContextFull(LowbitError):
    """The conversation does not fit in the KV cache any more."""


class KVCache:
    def __init__(self, xp, layers: int, kv_heads: int, max_context: int, head_dim: int, dtype="float32"):
        self.xp, self.max_context = xp, max_context
        self.k = [xp.zeros((kv_heads, max_context, head_dim), dtype=dtype) for _ in range(layers)]
        self.v = [xp.zeros((kv_heads, max_context, head_dim), dtype=dtype) for _ in range(layers)]
        self.length = 0
        self._causal = None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) * 2

    def check_room(self, pos: int, m: int) -> None:
        if pos + m > self.max_context:
            raise ContextFull(
                f"context full: {pos} cached + {m} new tokens > {self.max_context} positions; "
                "start a new conversation (/reset) or raise --max-context")

    def rows(self, pos, m: int):
        """Index of the new tokens' positions (into RoPE tables): a slice, or the device position."""
        return pos.index if isinstance(pos, DevicePos) else slice(pos, pos + m)

    def append(self, layer: int, pos, k, v):
        if isinstance(pos, DevicePos):                       # one token at a device-held position
            self.k[layer][:, pos.index] = k.transpose(1, 0, 2)
            self.v[layer][:, pos.index] = v.transpose(1, 0, 2)
            return self.k[layer][:, :pos.span], self.v[layer][:, :pos.span]
        m = k.shape[0]
        self.check_room(pos, m)
        self.k[layer][:, pos:pos + m] = k.transpose(1, 0, 2)
        self.v[layer][:, pos:pos + m] = v.transpose(1, 0, 2)
        return self.k[layer][:, :pos + m], self.v[layer][:, :pos + m]

    def mask(self, pos: int, m: int, window: int | None = None):
        """Additive mask [m, pos+m]: -inf where key t is after query pos+j (or older than the window)."""
        xp = self.xp
        if isinstance(pos, DevicePos):
            if self._causal is None:
                self._causal = xp.arange(self.max_context, dtype=xp.int32)
            kpos = self._causal[:pos.span]
            bad = kpos > pos.index
            if window is not None:
                bad = bad | (pos.index - kpos >= window)
            return xp.where(bad, xp.float32(-xp.inf), xp.float32(0.0))
        t = pos + m
        if m == 1 and (window is None or t <= window):
            return 0.0
        q = xp.arange(pos, t)[:, None]
        kpos = xp.arange(t)[None, :]
        bad = kpos > q
        if window is not None:
            bad = bad | (q - kpos >= window)
        return xp.where(bad, xp.float32(-xp.inf), xp.float32(0.0))

    def truncate(self, n: int) -> None:
        self.length = min(self.length, n)
