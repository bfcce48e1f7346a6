"""The check a batch job runs on its output: `lowbit verify --against SRC` where lowbit.verify is
installed (file hashes, structure, SQNR per tensor against per-scheme floors, GPU kernels when a GPU
is there), else a numpy fallback with the same figures. Kept (BF16) tensors must be bit-identical
to the source either way.

Figures: per quantized linear the relative Frobenius error ||W' - W|| / ||W|| (from the SQNR:
rel = 10^(-SQNR/20)); the worst and the mean over tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lowbit.formats import scheme_module

#: the stored tensor that marks a quantized linear, per scheme: (suffix, safetensors dtype)
_MARKER = {"fp8-block": ("weight", "F8_E4M3"), "nvfp4": ("weight_packed", "U8"),
           "int4": ("weight_packed", "I32")}
_EXTRA = {"int4": ("weight_zero_point",)}


@dataclass(frozen=True)
class ErrorSummary:
    tensors: int          # quantized tensors compared
    worst_tensor: str | None
    worst_rel_error: float | None
    mean_rel_error: float | None
    kept_mismatch: str | None = None  # first kept (BF16) tensor that differs from the source
    min_sqnr_db: float | None = None
    checker: str = "numpy"            # "lowbit verify" or "numpy"
    kernel_ran: bool = False
    failures: list[str] = field(default_factory=list)  # failed checks, worst first

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _quantized_prefixes(out, scheme: str) -> list[str]:
    suffix, dtype = _MARKER[scheme]
    tail = "." + suffix
    return [n[: -len(tail)] for n in out.names() if n.endswith(tail) and out.dtype(n) == dtype]


def _rel_error(deq: np.ndarray, ref: np.ndarray) -> float:
    diff = float(np.linalg.norm((deq - ref).astype(np.float64)))
    norm = float(np.linalg.norm(ref.astype(np.float64)))
    return diff / norm if norm > 0 else diff


def tensor_error(out, src, scheme: str, prefix: str) -> float:
    """Relative error of one quantized linear of `out` against `src[prefix.weight]` (numpy)."""
    names = list(scheme_module(scheme).tensor_layout(16, 128)) + list(_EXTRA.get(scheme, ()))
    parts = {s: np.asarray(out.get(f"{prefix}.{s}")) for s in names if f"{prefix}.{s}" in out}
    deq = scheme_module(scheme).dequantize(parts)
    ref = np.asarray(src.get(f"{prefix}.weight")).astype(np.float32)
    return _rel_error(deq, ref)


_CHUNK_BYTES = 64 << 20


def _same_bytes(out, src, name: str) -> bool:
    """Compare one tensor of two checkpoints in row chunks (bounded memory for 1 GB embeddings)."""
    if out.shape(name) != src.shape(name) or out.dtype(name) != src.dtype(name):
        return False
    shape = out.shape(name)
    if len(shape) == 0 or shape[0] == 0:
        return out.read(name).tobytes() == src.read(name).tobytes()
    rows = max(1, _CHUNK_BYTES // max(1, out.nbytes(name) // shape[0]))
    for r0 in range(0, shape[0], rows):
        n = min(rows, shape[0] - r0)
        if out.read(name, r0, n).tobytes() != src.read(name, r0, n).tobytes():
            return False
    return True


def _kept_mismatch(out, src, quantized: set[str]) -> str | None:
    for name in out.names():
        if name.rsplit(".", 1)[0] in quantized or name not in src:
            continue
        if not _same_bytes(out, src, name):
            return name
    return None


def _summarise(errors: dict[str, float], **kw) -> ErrorSummary:
    if not errors:
        return ErrorSummary(0, None, None, None, **kw)
    worst = max(errors, key=errors.get)
    return ErrorSummary(len(errors), f"{worst}.weight", errors[worst],
                        float(np.mean(list(errors.values()))), **kw)


def _numpy_summary(out, src, scheme: str, prefixes: list[str], kept: str | None) -> ErrorSummary:
    errors = {p: tensor_error(out, src, scheme, p) for p in prefixes}
    sq = [-20 * math.log10(e) for e in errors.values() if e > 0]
    return _summarise(errors, kept_mismatch=kept, min_sqnr_db=min(sq) if sq else None)


def _verify_summary(out_dir, src_dir, use_gpu, kept: str | None) -> ErrorSummary:
    from lowbit.verify.runner import verify_checkpoint

    rep = verify_checkpoint(out_dir, against=src_dir, use_gpu=use_gpu)
    sqnr = {r.target: r.value for r in rep.results if r.check == "sqnr" and r.value is not None}
    errors = {t: (10 ** (-db / 20) if math.isfinite(db) else 0.0) for t, db in sqnr.items()}
    failures = [f"{r.target} {r.check}: {r.detail}" for r in rep.worst_first() if not r.ok]
    return _summarise(errors, kept_mismatch=kept, min_sqnr_db=min(sqnr.values()) if sqnr else None,
                      checker="lowbit verify", kernel_ran=rep.kernel_ran, failures=failures[:5])


def error_summary(out_dir, src_dir, scheme: str, use_gpu="auto") -> ErrorSummary:
    """Check `out_dir` against its source `src_dir` (both checkpoint directories)."""
    from lowbit.formats.checkpoint import open_checkpoint

    out, src = open_checkpoint(out_dir), open_checkpoint(src_dir)
    prefixes = _quantized_prefixes(out, scheme)
    kept = _kept_mismatch(out, src, set(prefixes))
    try:
        import lowbit.verify.runner  # noqa: F401
    except ImportError:
        return _numpy_summary(out, src, scheme, prefixes, kept)
    return _verify_summary(out_dir, src_dir, use_gpu, kept)
