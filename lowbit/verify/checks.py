"""The vocabulary of `lowbit verify`: results, the linears of a checkpoint, and the extensible check lists.

A tensor check is `check(ctx: VerifyContext, lin: Linear) -> list[CheckResult]`; `TENSOR_CHECKS` runs on
every quantized linear (structure, quality against the source, GPU kernels). Other modules (the GEMM
helper's verify/gemm_checks.py) append theirs with `register_tensor_check`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class CheckResult:
    target: str  # tensor prefix (a linear) or a file name
    check: str  # "structure", "sha256", "config", "sqnr", "gemv M=1", ...
    ok: bool
    value: float | None = None
    limit: float | None = None
    #: how close to failing: <= 1 passes, > 1 fails; orders the table (worst first)
    badness: float = 0.0
    detail: str = ""

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in self.__dict__.items()}


@dataclass
class Linear:
    """One quantized linear of a checkpoint: its prefix, [N, K], and its on-disk tensor names by suffix."""

    prefix: str
    n: int
    k: int
    names: dict[str, str] = field(default_factory=dict)


@dataclass
class VerifyContext:
    ck: object  # lowbit.formats.checkpoint.Checkpoint
    scheme: str
    opts: dict
    source: object | None = None  # the --against Checkpoint
    gpu: bool = False
    seed: int = 0
    _cache: tuple | None = None

    def tensors(self, lin: Linear) -> dict[str, np.ndarray]:
        """The linear's on-disk tensors as numpy arrays (the last linear's are cached)."""
        if self._cache is None or self._cache[0] != lin.prefix:
            self._cache = (lin.prefix, {s: np.asarray(self.ck.get(name)) for s, name in lin.names.items()})
        return self._cache[1]

    def rng(self, lin: Linear) -> np.random.Generator:
        """A generator seeded by the run's seed and the tensor name (reproducible per tensor)."""
        return np.random.default_rng([self.seed, int.from_bytes(lin.prefix.encode()[-8:].rjust(8, b"\0"), "little")])


TensorCheck = Callable[[VerifyContext, Linear], list[CheckResult]]
TENSOR_CHECKS: list[TensorCheck] = []


def register_tensor_check(fn: TensorCheck) -> TensorCheck:
    if fn not in TENSOR_CHECKS:
        TENSOR_CHECKS.append(fn)
    return fn


def fail(target: str, check: str, detail: str, value=None, limit=None) -> CheckResult:
    return CheckResult(target, check, False, value, limit, float("inf"), detail)


def passed(target: str, check: str, detail: str = "", value=None, limit=None, badness: float = 0.0) -> CheckResult:
    return CheckResult(target, check, True, value, limit, badness, detail)
