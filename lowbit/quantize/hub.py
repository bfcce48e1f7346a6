"""Resolve SRC: a local checkpoint directory, or a Hugging Face repo id `org/name[@revision]`.

Repo ids go through `huggingface_hub.snapshot_download` with only the files a conversion needs
(safetensors, json, tokenizer files, chat templates). Every hub failure (offline, unreachable,
unknown repo or revision, gated) becomes one HubError line; timeouts are bounded so nothing hangs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lowbit.errors import CheckpointError, HubError

ALLOW_PATTERNS = ["*.safetensors", "*.json", "tokenizer*", "*.jinja", "*.model", "*.txt"]
_REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(@(?P<rev>[\w./-]+))?$")


@dataclass(frozen=True)
class Source:
    path: Path  # local directory holding the checkpoint
    ident: str  # what the manifest records: the absolute path, or repo@commit
    trusted_root: Path | None  # where symlinks may point (the hub cache repo folder), None = path


def resolve_source(src: str, *, timeout: float = 10.0) -> Source:
    p = Path(src)
    if p.exists():
        if not p.is_dir():
            raise CheckpointError(f"{p}: is a file; pass the checkpoint directory that holds it")
        return Source(p.absolute(), str(p.absolute()), None)
    m = _REPO_ID.match(str(src))
    if not m or str(src).startswith((".", "/", "~")):
        raise CheckpointError(f"{src}: no such directory, and not a hub repo id (org/name[@revision]); "
                              "check the path")
    return _download(m.group("repo"), m.group("rev"), timeout)


def _download(repo: str, revision: str | None, timeout: float) -> Source:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as e:  # pragma: no cover - a core dependency
        raise HubError(f"huggingface_hub is not importable ({e}); pip install huggingface_hub") from None
    try:
        local = snapshot_download(repo, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                  etag_timeout=timeout)
    except LocalEntryNotFoundError:
        raise HubError(f"{repo}: the Hugging Face hub is unreachable (offline, or no network) and the "
                       "repo is not in the local cache; connect, or pass a local directory") from None
    except HfHubHTTPError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise HubError(f"{repo}@{revision or 'main'}: hub request failed ({first}); check the repo id, "
                       "revision and access (huggingface-cli login for gated repos)") from None
    except (OSError, ValueError) as e:
        raise HubError(f"{repo}: could not download from the Hugging Face hub ({e.__class__.__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}); check the network or pass a "
                       "local directory") from None
    path = Path(local)
    commit = path.name
    return Source(path, f"{repo}@{commit}", path.parent.parent)
