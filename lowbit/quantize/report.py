"""What is in a checkpoint: scheme, one row per module (kind, logical shape, bytes), size ratio.

Used by `lowbit inspect`. Works on our output, third-party checkpoints in the same layouts and on
plain BF16 checkpoints. The ratio compares the bytes on disk with the same model in BF16.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from lowbit.formats.checkpoint import open_checkpoint
from lowbit.formats.hf_config import scheme_from_config

#: marker tensor suffix -> (scheme, how to get [N, K] from the marker's shape)
_MARKERS = {
    "weight_scale_inv": "fp8-block",
    "weight_global_scale": "nvfp4",
    "weight_shape": "int4",
}


def _logical_shape(kind: str, shapes: dict[str, tuple], ck, module: str) -> tuple[int, ...]:
    if kind == "fp8-block":
        return shapes["weight"]
    if kind == "nvfp4":
        n, half = shapes["weight_packed"]
        return (n, 2 * half)
    if kind == "int4":
        return tuple(int(v) for v in np.asarray(ck.get(f"{module}.weight_shape")).reshape(-1))
    return shapes.get("weight") or next(iter(shapes.values()))


def inspect_checkpoint(path) -> dict:
    ck = open_checkpoint(path)
    found = scheme_from_config(ck.config, str(ck.path / "config.json"))
    modules: dict[str, dict[str, tuple]] = defaultdict(dict)
    nbytes: dict[str, int] = defaultdict(int)
    dtypes: dict[str, set] = defaultdict(set)
    for name in ck.names():
        module, _, leaf = name.rpartition(".")
        modules[module][leaf] = ck.shape(name)
        nbytes[module] += ck.nbytes(name)
        dtypes[module].add(ck.dtype(name))
    rows, bf16_equiv, total = [], 0, 0
    for module in sorted(modules):
        shapes = modules[module]
        kind = next((s for m, s in _MARKERS.items() if m in shapes), None)
        shape = _logical_shape(kind, shapes, ck, module) if kind else None
        if kind is None:
            kind = "/".join(sorted(dtypes[module]))
            elems = sum(int(np.prod(s)) for s in shapes.values())
        else:
            elems = int(np.prod(shape)) + sum(int(np.prod(s)) for k, s in shapes.items() if k == "bias")
        bf16_equiv += 2 * elems
        total += nbytes[module]
        rows.append({"module": module, "kind": kind, "shape": list(shape or next(iter(shapes.values()))),
                     "tensors": sorted(shapes), "bytes": nbytes[module]})
    counts = defaultdict(int)
    for r in rows:
        counts[r["kind"]] += 1
    return {
        "path": str(ck.path), "model_type": ck.config.get("model_type"),
        "scheme": found[0] if found else None, "options": found[1] if found else {},
        "files": ck.files(), "tensors": len(ck.names()), "modules": rows, "counts": dict(counts),
        "bytes": total, "bf16_bytes": bf16_equiv, "ratio": round(bf16_equiv / total, 3) if total else None,
        "manifest": ck.manifest is not None,
    }
