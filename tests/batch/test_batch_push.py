"""Model card and Hub push: dry run writes what would be uploaded; the real path is exercised with a
recording fake HfApi (no network)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from batch_fakes import fake_job, write_fake_output

from lowbit.batch.manifest import parse_manifest
from lowbit.batch.modelcard import quantize_command, render_card
from lowbit.batch.push import push_output
from lowbit.batch.runner import run_batch
from lowbit.errors import HubError


def _record(tmp_path: Path, scheme="int4") -> dict:
    out = tmp_path / f"llama-tiny-{scheme}"
    write_fake_output(str(out), b"x" * 100)
    return {"source": "meta-llama/Llama-3.2-1B@main", "scheme": scheme, "status": "ok",
            "output": str(out), "error": None, "bytes_in": 2_000_000_000, "bytes_out": 600_000_000,
            "ratio": 3.3333, "worst_error": {"tensors": 112, "worst_tensor": "model.layers.3.mlp.down_proj.weight",
                                             "worst_rel_error": 0.1234, "mean_rel_error": 0.1},
            "kept": 30, "seconds": 1.0}


def test_model_card_content(tmp_path):
    card = render_card(_record(tmp_path), {"group_size": 64, "asymmetric": True, "ignore": ["re:.*gate"]})
    front = card.split("---")[1]
    assert "base_model: meta-llama/Llama-3.2-1B" in front   # revision stripped
    assert "- int4" in front and "library_name: transformers" in front
    assert "group size 64, asymmetric" in card
    assert "2.00 GB BF16 -> 0.60 GB (3.33x smaller)" in card
    assert "0.1234 (`model.layers.3.mlp.down_proj.weight`)" in card
    assert "vLLM" in card and "SGLang" in card and "transformers" in card
    assert ("lowbit quantize meta-llama/Llama-3.2-1B@main -o llama-tiny-int4 --scheme int4 "
            "--group-size 64 --asymmetric --ignore 're:.*gate'") in card


@pytest.mark.parametrize("scheme,flag", [("fp8-block", "--scheme fp8-block"), ("nvfp4", "--scheme nvfp4")])
def test_command_has_no_int4_flags_for_other_schemes(scheme, flag):
    cmd = quantize_command("/m/src", scheme, {"group_size": 64, "asymmetric": True})
    assert flag in cmd and "--group-size" not in cmd and "--asymmetric" not in cmd


def test_dry_run_writes_plan_and_card(tmp_path):
    rec = _record(tmp_path)
    res = push_output(rec, {}, "my-org", dry_run_dir=tmp_path / "dry")
    assert res["status"] == "dry-run" and res["repo"] == "my-org/llama-tiny-int4"
    plan = json.loads((tmp_path / "dry" / "my-org" / "llama-tiny-int4" / "upload.json").read_text())
    files = {f["path"]: f for f in plan["files"]}
    assert set(files) == {"model.safetensors", "lowbit.json", "README.md"}
    assert files["model.safetensors"]["sha256"] == hashlib.sha256(b"x" * 100).hexdigest()
    assert (tmp_path / "dry" / "my-org" / "llama-tiny-int4" / "README.md").read_text().startswith("---")
    assert not (Path(rec["output"]) / "README.md").exists()  # the output itself is never modified


class _FakeApi:
    def __init__(self, fail=False):
        self.calls, self.fail = [], fail

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def create_commit(self, repo_id, operations, commit_message, **kw):
        if self.fail:
            raise ConnectionError("hub down\nmore")
        self.calls.append(("create_commit", repo_id, sorted(op.path_in_repo for op in operations)))


def test_upload_is_one_commit_with_card(tmp_path):
    api = _FakeApi()
    res = push_output(_record(tmp_path), {}, "my-org", api=api)
    assert res["status"] == "ok"
    assert api.calls[0] == ("create_repo", "my-org/llama-tiny-int4",
                            {"repo_type": "model", "private": False, "exist_ok": True})
    assert api.calls[1] == ("create_commit", "my-org/llama-tiny-int4",
                            ["README.md", "lowbit.json", "model.safetensors"])


def test_upload_failure_is_reported_not_raised(tmp_path):
    res = push_output(_record(tmp_path), {}, "my-org", api=_FakeApi(fail=True))
    assert res["status"] == "failed"
    assert "ConnectionError: hub down" in res["error"] and "HF_TOKEN" in res["error"]


def test_bad_org_refused(tmp_path):
    with pytest.raises(HubError, match="not a valid user or organisation"):
        push_output(_record(tmp_path), {}, "bad org/x", dry_run_dir=tmp_path)


def test_batch_pushes_only_finished_jobs(tmp_path):
    jobs = []
    for kind in ("ok", "error"):
        (tmp_path / f"fake-{kind}-0").mkdir()
        jobs.append({"source": str(tmp_path / f"fake-{kind}-0"), "schemes": ["nvfp4"]})
    m = parse_manifest({"output_root": str(tmp_path / "out"), "job": jobs}, base=tmp_path)
    api = _FakeApi()
    report = run_batch(m, job_fn=fake_job, push_org="org", hub_api=api)
    assert report.jobs[0]["push"]["status"] == "ok" and "push" not in report.jobs[1]
    assert [c[1] for c in api.calls] == ["org/fake-ok-0-nvfp4"] * 2
    again = run_batch(m, job_fn=fake_job, push_org="org", dry_run_dir=tmp_path / "dry")
    assert again.jobs[0]["status"] == "skipped" and again.jobs[0]["push"]["status"] == "dry-run"
    assert (tmp_path / "dry" / "org" / "fake-ok-0-nvfp4" / "upload.json").exists()
