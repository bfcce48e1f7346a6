"""Batches of real conversions of tiny synthetic checkpoints (CPU), through the library and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lowbit.batch.manifest import parse_manifest
from lowbit.batch.report import REPORT_NAME
from lowbit.batch.runner import run_batch
from lowbit.formats.checkpoint import open_checkpoint
from lowbit.synth import write_synthetic

# Worst relative Frobenius error of one tensor of N(0, 0.02) weights, per scheme, with headroom:
# fp8 E4M3 keeps 3 mantissa bits: relative rounding error <= 2^-4, RMS about 2^-4/sqrt(3) = 0.036;
# nvfp4 E2M1 with an E4M3 scale per 16 values: about 0.09-0.10 RMS for Gaussian data;
# int4 group 32 symmetric: step = amax/7 with amax about 2.1 sigma, RMS step/sqrt(12) = 0.087 sigma.
BOUND = {"fp8-block": 0.04, "nvfp4": 0.15, "int4": 0.15}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("srcs")
    return {arch: write_synthetic(root / f"{arch}-tiny", arch, preset="tiny", seed=3)
            for arch in ("llama", "qwen3_moe")}


def _doc(root: Path, sources, **job) -> dict:
    return {"output_root": str(root), "workers": 2, "group_size": 32,
            "job": [{"source": str(sources["llama"]), "schemes": ["fp8-block", "nvfp4", "int4"], **job},
                    {"source": str(sources["qwen3_moe"]), "schemes": ["nvfp4"]}]}


def test_batch_converts_measures_and_resumes(tmp_path, sources):
    m = parse_manifest(_doc(tmp_path / "out", sources), base=tmp_path)
    report = run_batch(m)
    assert [j["status"] for j in report.jobs] == ["ok"] * 4, [j["error"] for j in report.jobs]
    assert [Path(j["output"]).name for j in report.jobs] == [
        "llama-tiny-fp8-block", "llama-tiny-nvfp4", "llama-tiny-int4", "qwen3_moe-tiny-nvfp4"]
    for j in report.jobs:
        w = j["worst_error"]
        assert w["tensors"] > 0 and w["kept_mismatch"] is None
        assert 0 < w["mean_rel_error"] <= w["worst_rel_error"] < BOUND[j["scheme"]], j
        assert j["ratio"] > 1.2 and j["bytes_in"] > j["bytes_out"] > 0
        ck = open_checkpoint(j["output"])
        assert ck.manifest["scheme"] == j["scheme"]
    # fp8 (8 bits) is more accurate than nvfp4 / int4 (4 bits)
    assert report.jobs[0]["worst_error"]["worst_rel_error"] < report.jobs[1]["worst_error"]["worst_rel_error"]
    assert report.exit_code == 0
    again = run_batch(m)
    assert [j["status"] for j in again.jobs] == ["skipped"] * 4
    assert [j["worst_error"] for j in again.jobs] == [j["worst_error"] for j in report.jobs]


def test_quality_limit_fails_job_and_keeps_final_name_clean(tmp_path, sources):
    m = parse_manifest(_doc(tmp_path / "out", sources, max_rel_error=0.05), base=tmp_path)
    report = run_batch(m)
    status = {Path(j["output"]).name: j["status"] for j in report.jobs}
    assert status == {"llama-tiny-fp8-block": "ok", "llama-tiny-nvfp4": "failed",
                      "llama-tiny-int4": "failed", "qwen3_moe-tiny-nvfp4": "ok"}
    failed = report.jobs[1]
    assert "max_rel_error 0.05" in failed["error"]
    assert not Path(failed["output"]).exists()
    assert Path(failed["output"] + ".rejected").is_dir()


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lowbit", "batch", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_cli_exit_codes_json_and_table(tmp_path, sources):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    toml = tmp_path / "batch.toml"
    toml.write_text(f'output_root = "out"\nworkers = 2\ngroup_size = 32\n'
                    f'[[job]]\nsource = "{sources["llama"]}"\nschemes = ["int4"]\n'
                    f'[[job]]\nsource = "broken"\nschemes = ["fp8-block"]\n')
    r = _cli(str(toml), "--json")
    assert r.returncode == 1, r.stderr
    rep = json.loads(r.stdout)
    assert [j["status"] for j in rep["jobs"]] == ["ok", "failed"]
    assert "no *.safetensors" in rep["jobs"][1]["error"]
    assert json.loads((tmp_path / "out" / REPORT_NAME).read_text())["jobs"] == rep["jobs"]
    # fix the manifest: drop the broken job; the re-run skips the finished one and exits 0
    toml.write_text(toml.read_text().split("[[job]]\nsource = \"broken\"")[0])
    r = _cli(str(toml), "--push-to-hub", "my-org", "--dry-run-push")
    assert r.returncode == 0, r.stderr
    assert "llama-tiny-int4" in r.stdout and "skipped" in r.stdout and "0 failed" in r.stdout
    card = (tmp_path / "out" / "hub-dry-run" / "my-org" / "llama-tiny-int4" / "README.md").read_text()
    assert "--scheme int4 --group-size 32" in card
    bad = tmp_path / "bad.toml"
    bad.write_text('output_root = "o"\n[[job]]\nsource = "x"\nschemes = ["int3"]\n')
    r = _cli(str(bad))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown scheme 'int3'" in r.stderr


def test_hub_sources_from_cache_offline(tmp_path, sources, monkeypatch):
    """`org/name@rev` sources resolve through huggingface_hub (here: an offline cache); an uncached
    repo fails that job with one clear line, quickly, without stopping the batch."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--lowbit-test--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    import shutil

    shutil.copytree(sources["llama"], repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    doc = {"output_root": str(tmp_path / "out"), "workers": 2,
           "job": [{"source": "lowbit-test/tiny-llama@main", "schemes": ["nvfp4"]},
                   {"source": "lowbit-test/not-cached", "schemes": ["nvfp4"]}]}
    report = run_batch(parse_manifest(doc, base=tmp_path), push_org="org", dry_run_dir=tmp_path / "dry")
    ok, bad = report.jobs
    assert Path(ok["output"]).name == "tiny-llama-nvfp4" and ok["status"] == "ok", ok["error"]
    assert ok["worst_error"]["tensors"] > 0
    assert bad["status"] == "failed" and "unreachable" in bad["error"] and bad["seconds"] < 60
    card = (tmp_path / "dry" / "org" / "tiny-llama-nvfp4" / "README.md").read_text()
    assert "base_model: lowbit-test/tiny-llama" in card
    assert f"lowbit-test/tiny-llama@{commit}" in card  # the exact commit the converter recorded


def test_int4_group_size_change_redoes_output_even_without_report(tmp_path, sources):
    doc = {"output_root": str(tmp_path / "out"), "workers": 1, "group_size": 32,
           "job": [{"source": str(sources["llama"]), "schemes": ["int4"]}]}
    first = run_batch(parse_manifest(doc, base=tmp_path))
    assert first.jobs[0]["status"] == "ok"
    (tmp_path / "out" / REPORT_NAME).unlink()  # lowbit.json alone must tell the options apart
    doc["group_size"] = 64
    second = run_batch(parse_manifest(doc, base=tmp_path))
    assert second.jobs[0]["status"] == "ok", second.jobs[0]["error"]
    assert "its group_size is 32, the job asks for 64" in second.jobs[0]["note"]
    assert json.loads((Path(second.jobs[0]["output"]) / "lowbit.json").read_text())["options"]["group_size"] == 64
