"""Worst per-tensor error of a converted checkpoint against its BF16 source (numpy, CPU).

For every quantized linear `prefix` of the output: dequantize it with `lowbit.formats.<scheme>`
and compare with the source `prefix.weight` in float32. The figure is the relative Frobenius error
||W' - W|| / ||W|| (an all-zero source tensor counts its absolute error). Tensors kept in BF16
must be bit-identical to the source; a mismatch is reported as an error of +inf for that tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def to_dict(self) -> dict:
        return {"tensors": self.tensors, "worst_tensor": self.worst_tensor,
                "worst_rel_error": self.worst_rel_error, "mean_rel_error": self.mean_rel_error,
                "kept_mismatch": self.kept_mismatch}


def _quantized_prefixes(out, scheme: str) -> list[str]:
    suffix, dtype = _MARKER[scheme]
    tail = "." + suffix
    return [n[: -len(tail)] for n in out.names() if n.endswith(tail) and out.dtype(n) == dtype]


def _rel_error(deq: np.ndarray, ref: np.ndarray) -> float:
    diff = float(np.linalg.norm((deq - ref).astype(np.float64)))
    norm = float(np.linalg.norm(ref.astype(np.float64)))
    return diff / norm if norm > 0 else diff


def tensor_error(out, src, scheme: str, prefix: str) -> float:
    """Relative error of one quantized linear of `out` against `src[prefix.weight]`."""
    names = list(scheme_module(scheme).tensor_layout(16, 128)) + list(_EXTRA.get(scheme, ()))
    parts = {s: np.asarray(out.get(f"{prefix}.{s}")) for s in names if f"{prefix}.{s}" in out}
    deq = scheme_module(scheme).dequantize(parts)
    ref = np.asarray(src.get(f"{prefix}.weight")).astype(np.float32)
    return _rel_error(deq, ref)


def _kept_mismatch(out, src, quantized: set[str]) -> str | None:
    for name in out.names():
        if name.rsplit(".", 1)[0] in quantized or name not in src:
            continue
        a, b = out.get(name), src.get(name)
        if a.shape != b.shape or a.tobytes() != b.tobytes():
            return name
    return None


def error_summary(out_dir, src_dir, scheme: str) -> ErrorSummary:
    """Compare every quantized tensor of `out_dir` with `src_dir` (both checkpoint directories)."""
    from lowbit.formats.checkpoint import open_checkpoint

    out, src = open_checkpoint(out_dir), open_checkpoint(src_dir)
    prefixes = _quantized_prefixes(out, scheme)
    errors = {p: tensor_error(out, src, scheme, p) for p in prefixes}
    kept = _kept_mismatch(out, src, set(prefixes))
    if not errors:
        return ErrorSummary(0, None, None, None, kept)
    worst = max(errors, key=errors.get)
    return ErrorSummary(len(errors), f"{worst}.weight", errors[worst],
                        float(np.mean(list(errors.values()))), kept)
