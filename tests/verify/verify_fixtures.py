"""Tiny converted checkpoints for the verify tests (synthetic BF16 source, converted per scheme)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SCHEMES = {"fp8-block": {}, "nvfp4": {}, "int4": {"group_size": 32, "asymmetric": True}}


def build(root: Path, device: str = "cpu") -> dict[str, Path]:
    from lowbit.quantize.convert import convert
    from lowbit.synth import write_synthetic

    src = write_synthetic(root / "src", "qwen3_moe", preset="tiny")
    out = {"src": Path(src)}
    for scheme, opts in SCHEMES.items():
        convert(src, root / scheme, scheme, device=device, **opts)
        out[scheme] = root / scheme
    return out


def flipped_copy(ckpt: Path, dest: Path, where: str = "data") -> Path:
    """A copy of ckpt with one byte of its first shard flipped (in the tensor data or in the header)."""
    shutil.copytree(ckpt, dest)
    shard = sorted(dest.glob("model-*.safetensors"))[0]
    raw = bytearray(shard.read_bytes())
    header = int.from_bytes(raw[:8], "little")
    pos = 8 + header + (len(raw) - 8 - header) // 2 if where == "data" else 8 + header // 2
    raw[pos] ^= 0x01
    shard.write_bytes(bytes(raw))
    return dest


def lowbit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lowbit", *args], capture_output=True, text=True, timeout=600)
