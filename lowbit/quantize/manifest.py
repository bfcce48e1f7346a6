"""The lowbit.json manifest of a converted checkpoint, and the resume journal of a partial one.

lowbit.json: lowbit version, scheme and options, the plan's settings (--ignore patterns, --generic,
--max-shard-size), source (absolute path or repo@commit), what stayed
BF16 and why, the sha256 of every other file in the directory, and `manifest_sha256` (its own
canonical text without that field), so any modified byte is detectable. No timestamps: the same
input and options give the same bytes.

The journal (`.lowbit-journal.json` in `OUT.lowbit-partial`) holds the plan fingerprint and the
sha256 of each finished shard; it is rewritten atomically after every shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from lowbit import __version__
from lowbit.formats.checkpoint import MANIFEST_NAME

log = logging.getLogger(__name__)
JOURNAL_NAME = ".lowbit-journal.json"
#: lowbit.json's own digest: sha256 of its canonical text without this field
SELF_DIGEST = "manifest_sha256"


def sha256_file(path: Path, block: int = 1 << 23) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(out_dir: Path, plan, source_id: str, known: dict[str, str] | None = None) -> Path:
    """`known`: sha256 already computed (the shards, by the journal), so big files hash once."""
    known = known or {}
    files = {p.name: known.get(p.name) or sha256_file(p) for p in sorted(Path(out_dir).iterdir())
             if p.is_file() and p.name not in (MANIFEST_NAME, JOURNAL_NAME)}
    body = {
        "lowbit_version": __version__,
        "scheme": plan.scheme,
        "options": plan.opts,
        "settings": plan.settings,
        "source": source_id,
        "quantized_tensors": sum(it.quantize for it in plan.items),
        "kept_bf16": [[name, why] for name, why in plan.kept],
        "warnings": plan.warnings,
        "files": files,
    }
    body[SELF_DIGEST] = manifest_digest(body)
    path = Path(out_dir) / MANIFEST_NAME
    path.write_text(_canonical(body))
    return path


def _canonical(body: dict) -> str:
    return json.dumps(body, indent=2, sort_keys=True) + "\n"


def manifest_digest(body: dict) -> str:
    """sha256 of the canonical manifest text without its own digest field."""
    return hashlib.sha256(_canonical({k: v for k, v in body.items() if k != SELF_DIGEST}).encode()).hexdigest()


def manifest_problem(path) -> str | None:
    """None when lowbit.json is byte for byte what lowbit wrote: canonical text and a matching
    `manifest_sha256`. The per-file sha256s cover every other file, so together any modified byte
    of a converted checkpoint is detected."""
    raw = Path(path).read_bytes()
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return f"{path}: not valid JSON"
    if not isinstance(body, dict) or SELF_DIGEST not in body:
        return f"{path}: no {SELF_DIGEST} field (written by an older lowbit?)"
    if _canonical(body).encode() != raw:
        return f"{path}: was edited (not the text lowbit wrote)"
    if body[SELF_DIGEST] != manifest_digest(body):
        return f"{path}: content does not match its {SELF_DIGEST}"
    return None


class Journal:
    """Which shards of a partial output are finished (for resume)."""

    def __init__(self, partial: Path, fingerprint: str, resume: bool):
        self.partial = Path(partial)
        self.path = self.partial / JOURNAL_NAME
        self.fingerprint = fingerprint
        self.shards: dict[str, str] = {}
        if self.partial.exists():
            old = self._load() if resume else None
            if old and old.get("fingerprint") == fingerprint:
                self.shards = dict(old.get("shards", {}))
                log.info("resuming %s: %d finished shards recorded", self.partial, len(self.shards))
            else:
                shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True, exist_ok=True)
        self._save()

    def _load(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "shards": self.shards},
                                  indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def done(self, name: str, path: Path) -> bool:
        """True when the shard is recorded and its bytes still hash to the recorded sha256."""
        want = self.shards.get(name)
        if want and path.is_file() and sha256_file(path) == want:
            return True
        self.shards.pop(name, None)
        return False

    def record(self, name: str, digest: str) -> None:
        self.shards[name] = digest
        self._save()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
