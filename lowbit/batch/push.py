"""Upload finished batch outputs to the Hugging Face Hub, with a generated README.md model card.

`push_output(record, options, org)` creates `org/<output name>` (`HfApi.create_repo`,
exist_ok) and uploads the whole output folder plus README.md in ONE commit (`HfApi.create_commit`
with one CommitOperationAdd per file: the operations `upload_folder` builds, plus the card), so a
failed upload leaves no half-pushed revision. The output directory itself is never modified (its
lowbit.json sha256s stay valid).

Dry run (`dry_run_dir`): nothing is sent; `dry_run_dir/<org>/<name>/` receives README.md and
`upload.json` (repo id, every file with size and sha256, the commit message): what would be uploaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lowbit.batch.modelcard import render_card
from lowbit.batch.outputs import sha256_file
from lowbit.errors import HubError

_ORG = __import__("re").compile(r"^[A-Za-z0-9][\w.-]{0,95}$")


def repo_id_for(org: str, output: str) -> str:
    if not _ORG.match(org or ""):
        raise HubError(f"--push-to-hub {org!r} is not a valid user or organisation name; "
                       "pass e.g. --push-to-hub my-org")
    return f"{org}/{Path(output).name}"


def _files(output: Path) -> list[Path]:
    files = sorted(p for p in output.rglob("*") if p.is_file())
    if not files:
        raise HubError(f"{output}: nothing to upload (empty output); re-run the batch")
    return files


def _dry_run(repo_id: str, output: Path, card: str, message: str, dry_run_dir) -> dict:
    dest = Path(dry_run_dir) / repo_id
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "README.md").write_text(card)
    files = [{"path": str(p.relative_to(output)), "size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in _files(output)]
    plan = {"repo_id": repo_id, "repo_type": "model", "commit_message": message,
            "files": files + [{"path": "README.md", "size": len(card.encode()), "generated": True}]}
    (dest / "upload.json").write_text(json.dumps(plan, indent=2) + "\n")
    return {"repo": repo_id, "status": "dry-run", "error": None, "plan": str(dest / "upload.json")}


def _upload(api, repo_id: str, output: Path, card: str, message: str, private: bool) -> dict:
    from huggingface_hub import CommitOperationAdd

    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    ops = [CommitOperationAdd(path_in_repo=str(p.relative_to(output)), path_or_fileobj=str(p))
           for p in _files(output) if p.name != "README.md"]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    info = api.create_commit(repo_id, operations=ops, commit_message=message, repo_type="model")
    return {"repo": repo_id, "status": "ok", "error": None,
            "url": str(getattr(info, "commit_url", "") or f"https://huggingface.co/{repo_id}")}


def push_output(record: dict, options: dict, org: str, *, dry_run_dir=None, api=None,
                private: bool = False) -> dict:
    """Push one finished output; returns {"repo", "status": ok|dry-run|failed, "error", ...}."""
    repo_id = repo_id_for(org, record["output"])
    output = Path(record["output"])
    card = render_card(record, options)
    message = f"lowbit: {record['scheme']} conversion of {record['source']}"
    if dry_run_dir is not None:
        return _dry_run(repo_id, output, card, message, dry_run_dir)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=os.environ.get("HF_TOKEN"))
    try:
        return _upload(api, repo_id, output, card, message, private)
    except HubError:
        raise
    except Exception as e:  # network, auth, quota: report it on this job, go on with the others
        first = (str(e).splitlines() or [""])[0]
        return {"repo": repo_id, "status": "failed",
                "error": f"upload to {repo_id} failed ({type(e).__name__}: {first}); check HF_TOKEN "
                         "write access and the network, then re-run with --push-to-hub"}
