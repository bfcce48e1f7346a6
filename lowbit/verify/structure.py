"""Structure checks: file hashes against lowbit.json, the config, and every quantized linear's tensors
(names, dtypes, shapes against lowbit.formats' layouts, and finite, positive scales)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lowbit.formats import numerics, scheme_module
from lowbit.formats.hf_config import ignore_list, is_ignored
from lowbit.verify.checks import CheckResult, Linear, VerifyContext, fail, passed, register_tensor_check

MANIFEST = "lowbit.json"
#: the suffix that marks a quantized linear, per scheme
MAIN_SUFFIX = {"fp8-block": "weight", "nvfp4": "weight_packed", "int4": "weight_packed"}
_SCALE_SUFFIXES = ("weight_scale_inv", "weight_scale", "weight_global_scale")


def check_files(path: Path, manifest: dict | None) -> list[CheckResult]:
    """sha256 of every file listed in lowbit.json (a single flipped byte fails); unlisted files fail too."""
    from lowbit.quantize.manifest import manifest_problem, sha256_file

    path = Path(path)
    if manifest is None:
        return [passed(MANIFEST, "sha256", "no lowbit.json: file hashes NOT checked (not a lowbit output)")]
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed:
        return [fail(MANIFEST, "sha256", "lowbit.json has no 'files' table; re-convert to regenerate it")]
    out = []
    for name, want in sorted(listed.items()):
        f = path / name
        if "/" in name or name.startswith(".") or not f.is_file():
            out.append(fail(name, "sha256", "listed in lowbit.json but missing"))
            continue
        got = sha256_file(f)
        out.append(passed(name, "sha256", "matches lowbit.json") if got == want else
                   fail(name, "sha256", f"sha256 {got[:12]}... != lowbit.json {str(want)[:12]}...: the file changed"))
    for f in sorted(path.iterdir()):
        if f.is_file() and f.name not in listed and f.name != MANIFEST and not f.name.startswith("."):
            out.append(fail(f.name, "sha256", "present but not listed in lowbit.json"))
    problem = manifest_problem(path / MANIFEST)  # lowbit.json itself (its manifest_sha256)
    out.append(fail(MANIFEST, "sha256", f"{problem}: re-convert to regenerate it") if problem else
               passed(MANIFEST, "sha256", "matches its manifest_sha256"))
    return out


def read_manifest(path: Path) -> dict | None:
    f = Path(path) / MANIFEST
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except ValueError:
        return {}


def _nk(ck, scheme: str, prefix: str, main: str) -> tuple[int, int]:
    shape = ck.shape(main)
    if len(shape) != 2:
        return -1, -1
    if scheme == "fp8-block":
        return shape[0], shape[1]
    if scheme == "nvfp4":
        return shape[0], shape[1] * 2
    ws = f"{prefix}.weight_shape"
    if ws in ck and ck.shape(ws) == (2,):
        n, k = (int(v) for v in np.asarray(ck.get(ws)))
        return n, k
    return shape[0], shape[1] * 8


def find_linears(ck, scheme: str) -> tuple[list[Linear], list[CheckResult]]:
    """Every quantized linear (by its main tensor), plus failures for orphan scale tensors."""
    main = MAIN_SUFFIX[scheme]
    names = set(ck.names())
    lins, problems = [], []
    for name in sorted(names):
        prefix, _, suffix = name.rpartition(".")
        if suffix != main or (scheme == "fp8-block" and ck.dtype(name) != "F8_E4M3"):
            continue
        n, k = _nk(ck, scheme, prefix, name)
        found = {s: f"{prefix}.{s}" for s in ("weight", "weight_packed", "weight_scale_inv", "weight_scale",
                                                "weight_global_scale", "weight_shape", "weight_zero_point")
                 if f"{prefix}.{s}" in names}
        lins.append(Linear(prefix, n, k, found))
    quantized = {lin.prefix for lin in lins}
    for name in sorted(names):
        prefix, _, suffix = name.rpartition(".")
        if suffix in _SCALE_SUFFIXES and prefix not in quantized:
            problems.append(fail(prefix, "structure", f"{name} has no quantized {main} beside it"))
    return lins, problems


def check_config(ck, scheme: str, lins: list[Linear]) -> list[CheckResult]:
    """No quantized linear may sit in the config's ignore list (loaders would read it as BF16)."""
    ignore = ignore_list(ck.config)
    bad = [lin.prefix for lin in lins if is_ignored(lin.prefix, ignore)]
    if bad:
        return [fail("config.json", "config", f"{len(bad)} quantized modules are in the ignore list, e.g. {bad[0]}")]
    if not lins:
        return [fail("config.json", "config", f"quantization_config says {scheme} but no quantized tensor was found")]
    return [passed("config.json", "config", f"{scheme}, {len(lins)} quantized linears, {len(ignore)} ignored")]


def _scale_problem(scheme: str, t: dict) -> str | None:
    """Scales must be finite and positive; fp8 weights must hold no NaN code."""
    if scheme == "fp8-block":
        s = np.asarray(t["weight_scale_inv"], dtype=np.float32)
        codes = np.asarray(t["weight"]).view(np.uint8)
        if np.any((codes & 0x7F) == 0x7F):
            return "weight holds E4M3 NaN codes"
    elif scheme == "nvfp4":
        s = numerics.decode_e4m3(t["weight_scale"])
        g = np.asarray(t["weight_global_scale"], dtype=np.float32)
        if not (np.isfinite(g).all() and (g > 0).all()):
            return f"weight_global_scale {g.reshape(-1)[:1]} is not finite and positive"
    else:
        s = np.asarray(t["weight_scale"]).astype(np.float32)
    if not np.isfinite(s).all():
        return "scales hold NaN or inf"
    if not (s > 0).all():
        return f"{int((s <= 0).sum())} scales are <= 0"
    return None


def structure_check(ctx: VerifyContext, lin: Linear) -> list[CheckResult]:
    mod = scheme_module(ctx.scheme)
    if lin.n < 0:
        return [fail(lin.prefix, "structure", f"{MAIN_SUFFIX[ctx.scheme]} is not 2-D")]
    why = mod.unsupported_reason(lin.n, lin.k, **ctx.opts)
    if why:
        return [fail(lin.prefix, "structure", f"[{lin.n}, {lin.k}] cannot be {ctx.scheme}: {why}")]
    for suffix, (dtype, shape) in mod.tensor_layout(lin.n, lin.k, **ctx.opts).items():
        name = f"{lin.prefix}.{suffix}"
        if suffix not in lin.names:
            return [fail(lin.prefix, "structure", f"{name} is missing")]
        if ctx.ck.dtype(name) != dtype or ctx.ck.shape(name) != tuple(shape):
            return [fail(lin.prefix, "structure", f"{name}: expected {dtype} {list(shape)}, found "
                                                  f"{ctx.ck.dtype(name)} {list(ctx.ck.shape(name))}")]
    problem = _scale_problem(ctx.scheme, ctx.tensors(lin))
    if problem:
        return [fail(lin.prefix, "structure", problem)]
    return [passed(lin.prefix, "structure", f"[{lin.n}, {lin.k}] layout ok")]


register_tensor_check(structure_check)
