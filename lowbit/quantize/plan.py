"""The conversion plan: per source tensor, what is written (names, dtypes, shapes) and in which shard.

Built from the checkpoint headers alone (no tensor data is touched), so every output name, dtype,
shape and the whole shard layout are known, and every shape problem is found, before work starts.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field

from lowbit import __version__
from lowbit.errors import CheckpointError, ConfigError
from lowbit.formats import checkpoint, fp8_block, get_spec, scheme_module
from lowbit.formats.checkpoint import Checkpoint
from lowbit.formats.safetensors_io import nbytes_of
from lowbit.quantize.archs import ArchRules, fused_group

SOURCE_DTYPES = ("BF16", "F16", "F32")
_QUANT_SUFFIXES = ("weight_scale_inv", "weight_packed", "weight_scale", "weight_global_scale",
                   "weight_zero_point", "input_scale", "qweight", "qzeros")


@dataclass
class Item:
    """One source tensor and the tensors written for it."""

    source: str
    module: str
    quantize: bool
    reason: str  # why kept (empty when quantized)
    group: str | None
    outputs: dict[str, tuple[str, tuple[int, ...]]]  # output name -> (dtype, shape)
    in_bytes: int

    @property
    def out_bytes(self) -> int:
        return sum(nbytes_of(d, s) for d, s in self.outputs.values())


@dataclass
class Shard:
    file: str
    items: list[Item]

    def layout(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {n: v for it in self.items for n, v in it.outputs.items()}


@dataclass
class Plan:
    scheme: str
    opts: dict
    items: list[Item]
    shards: list[Shard]
    groups: dict[str, list[str]]  # fused group key -> member source names (quantized only)
    ignore: list[str]  # module names written to quantization_config
    warnings: list[str] = field(default_factory=list)
    #: how the plan was asked for, beyond the scheme options (recorded in lowbit.json)
    settings: dict = field(default_factory=dict)

    @property
    def kept(self) -> list[tuple[str, str]]:
        return [(it.source, it.reason) for it in self.items if not it.quantize]

    def fingerprint(self, source_id: str) -> str:
        body = {"version": __version__, "scheme": self.scheme, "opts": self.opts, "source": source_id,
                "shards": [[s.file, sorted(s.layout().items())] for s in self.shards]}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=list).encode()).hexdigest()


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def check_source(ck: Checkpoint) -> None:
    """Refuse already-quantized sources and dtypes other than BF16/F16/F32."""
    qc = ck.config.get("quantization_config")
    if qc:
        raise ConfigError(f"{ck.path / 'config.json'}: the source is already quantized "
                          f"(quant_method {qc.get('quant_method')!r}); convert the BF16 original")
    for name in ck.names():
        if name.rpartition(".")[2] in _QUANT_SUFFIXES:
            raise CheckpointError(f"{ck.path / ck.file_of(name)}: tensor {name!r} is a quantized "
                                  "checkpoint's tensor; convert the BF16 original")
    for name in ck.names():
        if ck.dtype(name) not in SOURCE_DTYPES:
            raise CheckpointError(f"{ck.path / ck.file_of(name)}: tensor {name!r} has dtype "
                                  f"{ck.dtype(name)}; lowbit converts {'/'.join(SOURCE_DTYPES)} "
                                  "sources: convert it to BF16 first")


def _scheme_opts(scheme: str, group_size: int, asymmetric: bool) -> dict:
    get_spec(scheme)
    if scheme == "int4":
        scheme_module("int4").tensor_layout(1, group_size, group_size=group_size)  # validates G
        return {"group_size": int(group_size), "asymmetric": bool(asymmetric)}
    if asymmetric:
        raise ConfigError(f"--asymmetric applies to int4 only, not {scheme}: drop the flag")
    return {}


def _first_items(ck: Checkpoint, rules: ArchRules, scheme: str, opts: dict) -> list[Item]:
    mod = scheme_module(scheme)
    items = []
    for name in sorted(ck.names(), key=_natural_key):
        shape = ck.shape(name)
        r = rules.rule(name, shape)
        reason, quant = r.reason, r.quantize
        if quant:
            why = mod.unsupported_reason(*shape, **opts)
            if why:
                quant, reason = False, why
        items.append(Item(name, name.rpartition(".")[0], quant, reason, r.group if quant else None,
                          {}, ck.nbytes(name)))
    return items


def _resolve_groups(items: list[Item]) -> dict[str, list[str]]:
    """A fused group whose member stays BF16 keeps the whole group BF16 (vLLM fuses them)."""
    by_group: dict[str, list[Item]] = {}
    for it in items:
        if it.group:
            by_group.setdefault(it.group, []).append(it)
    blocked = {}
    for it in items:
        if not it.quantize and it.reason not in ("bias", "norm", "embedding", "lm_head", "MoE router",
                                                 "not a quantized linear"):
            g = fused_group(it.module)
            if g:
                blocked.setdefault(g, f"fused with {it.module} ({it.reason})")
    groups = {}
    for g, members in by_group.items():
        if g in blocked:
            for it in members:
                it.quantize, it.reason, it.group = False, blocked[g], None
        else:
            groups[g] = [it.source for it in members]
    return groups


def _outputs(it: Item, ck: Checkpoint, scheme: str, opts: dict) -> None:
    if not it.quantize:
        it.outputs = {it.source: (ck.dtype(it.source), ck.shape(it.source))}
        return
    n, k = ck.shape(it.source)
    layout = scheme_module(scheme).tensor_layout(n, k, **opts)
    it.outputs = {f"{it.module}.{sfx}": (d, tuple(s)) for sfx, (d, s) in layout.items()}


def _warnings(items: list[Item], ck: Checkpoint, scheme: str) -> list[str]:
    """Collapsed serving warnings (one line per distinct module pattern and message)."""
    if scheme != "fp8-block":
        return []
    seen: dict[str, int] = {}
    for it in items:
        if not it.quantize:
            continue
        n, k = ck.shape(it.source)
        msgs = [fp8_block.serving_warning(n, k)]
        if it.group and n % fp8_block.BLOCK:
            msgs.append(f"N={n} of a fused {it.group.rpartition('.')[2]} shard is not a multiple of 128: "
                        "vLLM/SGLang block-FP8 need each fused shard divisible by 128")
        pattern = re.sub(r"\.\d+\.", ".*.", it.module)
        for m in filter(None, msgs):
            key = f"{pattern}: {m}"
            seen[key] = seen.get(key, 0) + 1
    return [f"{k} ({v} tensors)" for k, v in sorted(seen.items())]


def _ignore_list(items: list[Item], scheme: str) -> list[str]:
    out = set()
    for it in items:
        if it.quantize or it.reason in ("bias", "embedding") or not it.source.endswith(".weight"):
            continue
        if len(it.outputs[it.source][1]) == 2 or scheme == "fp8-block":
            out.add(it.module)
    return sorted(out, key=_natural_key)


def _shard(items: list[Item], max_bytes: int) -> list[Shard]:
    groups, cur, size = [], [], 0
    for it in items:
        if cur and size + it.out_bytes > max_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append(it)
        size += it.out_bytes
    if cur:
        groups.append(cur)
    return [Shard(checkpoint.shard_name(i, len(groups)), g) for i, g in enumerate(groups, 1)]


def make_plan(ck: Checkpoint, scheme: str, *, group_size: int = 128, asymmetric: bool = False,
              ignore=(), generic: bool = False, max_shard_bytes: int = 5 * 10**9) -> Plan:
    check_source(ck)
    opts = _scheme_opts(scheme, group_size, asymmetric)
    rules = ArchRules(ck.config, generic=generic, ignore=tuple(ignore))
    items = _first_items(ck, rules, scheme, opts)
    groups = _resolve_groups(items)
    for it in items:
        _outputs(it, ck, scheme, opts)
    if not any(it.quantize for it in items):
        raise ConfigError(f"{ck.path}: no tensor can be quantized with {scheme} "
                          f"(options {opts}); check the architecture, --ignore and --group-size")
    shards = _shard(items, max(1, max_shard_bytes))
    assert math.fsum(len(s.items) for s in shards) == len(items)
    settings = {"ignore_patterns": list(ignore), "generic": bool(generic), "max_shard_bytes": int(max_shard_bytes)}
    return Plan(scheme, opts, items, shards, groups, _ignore_list(items, scheme), _warnings(items, ck, scheme),
                settings)
