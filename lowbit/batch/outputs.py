"""The state of a batch output directory: missing, complete (its lowbit.json sha256s verify), or not.

A re-run skips a job only when every file its `lowbit.json` lists exists with the recorded sha256
(and size, where recorded) and lowbit.json itself is unmodified (its `manifest_sha256`).
The manifest's `files` may be a mapping name -> sha256, name ->
{"sha256": ..., "size": ...}, or a list of {"name"/"path", "sha256"} records.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from lowbit.quantize.manifest import manifest_problem

MANIFEST_NAME = "lowbit.json"
_CHUNK = 1 << 22


@dataclass(frozen=True)
class OutputState:
    kind: str          # "missing" | "complete" | "invalid" | "foreign"
    reason: str = ""

    @property
    def complete(self) -> bool:
        return self.kind == "complete"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def manifest_files(manifest: dict) -> dict[str, dict]:
    """name -> {"sha256": str, "size": int|None} from any of the accepted `files` shapes."""
    files = manifest.get("files")
    out: dict[str, dict] = {}
    if isinstance(files, dict):
        for name, v in files.items():
            rec = v if isinstance(v, dict) else {"sha256": v}
            out[name] = {"sha256": rec.get("sha256"), "size": rec.get("size", rec.get("bytes"))}
    elif isinstance(files, list):
        for rec in files:
            if isinstance(rec, dict):
                name = rec.get("name") or rec.get("path") or rec.get("file")
                out[str(name)] = {"sha256": rec.get("sha256"), "size": rec.get("size", rec.get("bytes"))}
    return out


def _check_file(root: Path, name: str, rec: dict) -> str | None:
    p = root / name
    if Path(name).is_absolute() or ".." in Path(name).parts:
        return f"manifest names {name!r}, outside the output"
    if not p.is_file():
        return f"{name} is missing"
    if rec.get("size") is not None and p.stat().st_size != int(rec["size"]):
        return f"{name} has {p.stat().st_size} bytes, the manifest says {rec['size']}"
    if not isinstance(rec.get("sha256"), str):
        return f"the manifest has no sha256 for {name}"
    if sha256_file(p) != rec["sha256"].lower():
        return f"{name} does not match its sha256 in {MANIFEST_NAME}"
    return None


def output_state(out_dir) -> OutputState:
    """Is `out_dir` a complete, unmodified lowbit output?"""
    root = Path(out_dir)
    if not root.exists():
        return OutputState("missing")
    mpath = root / MANIFEST_NAME
    if not mpath.is_file():
        kind = "invalid" if root.is_dir() and not any(root.iterdir()) else "foreign"
        return OutputState(kind, f"{root} exists but has no {MANIFEST_NAME}")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        return OutputState("invalid", f"{mpath} is unreadable ({e})")
    files = manifest_files(manifest) if isinstance(manifest, dict) else {}
    if not files:
        return OutputState("invalid", f"{mpath} lists no files")
    for name, rec in sorted(files.items()):
        problem = _check_file(root, name, rec)
        if problem:
            return OutputState("invalid", problem)
    problem = manifest_problem(mpath)  # lowbit.json itself: canonical text + its own digest
    if problem:
        return OutputState("invalid", problem)
    return OutputState("complete")


def output_bytes(out_dir) -> int:
    """Bytes of the safetensors shards of an output directory (what the ratio compares)."""
    root = Path(out_dir)
    return sum(p.stat().st_size for p in root.glob("*.safetensors")) if root.is_dir() else 0


def source_bytes(source) -> int | None:
    """Bytes of the safetensors shards of a local source directory (None for a hub id)."""
    root = Path(source)
    if not root.is_dir():
        return None
    return sum(p.stat().st_size for p in root.glob("*.safetensors"))


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _source_differs(job_source: str, recorded) -> str | None:
    if not isinstance(recorded, str):
        return None
    if Path(job_source).is_dir():
        want = str(Path(job_source).absolute())
        return None if recorded == want else f"it was made from {recorded}, the job reads {want}"
    repo, _, rev = job_source.partition("@")
    got_repo, _, got_rev = recorded.partition("@")
    if got_repo != repo or (_COMMIT.match(rev) and got_rev != rev):
        return f"it was made from {recorded}, the job reads {job_source}"
    return None


def stale_reason(job, previous: dict | None) -> str | None:
    """Why a complete output no longer matches its job (scheme, int4 options, source, or any option
    recorded in the last batch report), or None when it does."""
    try:
        manifest = json.loads((Path(job.output) / MANIFEST_NAME).read_text())
    except (OSError, ValueError, RecursionError):
        return "its lowbit.json is unreadable"
    if manifest.get("scheme") != job.scheme:
        return f"its scheme is {manifest.get('scheme')!r}, the job asks for {job.scheme!r}"
    opts = manifest.get("options") or {}
    if job.scheme == "int4":
        for key in ("group_size", "asymmetric"):
            if key in opts and opts[key] != job.options.get(key):
                return f"its {key} is {opts[key]!r}, the job asks for {job.options.get(key)!r}"
    why = _source_differs(job.source, manifest.get("source"))
    if why:
        return why
    before = (previous or {}).get("options")
    if isinstance(before, dict) and before != job.options:
        changed = sorted(k for k in set(before) | set(job.options) if before.get(k) != job.options.get(k))
        return f"the job's options changed since it was made ({', '.join(changed)})"
    return None
