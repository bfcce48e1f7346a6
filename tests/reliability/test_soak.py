"""Soak: 20 tiny jobs on 4 workers with randomly injected failures (corrupt sources of several kinds,
a missing source, NaN weights, workers killed mid-conversion). The batch completes and reports
exactly the expected successes and failures; a re-run without the crashes finishes those jobs
(resuming) and skips the finished ones."""

from __future__ import annotations

import json
import random
import shutil
import struct
from pathlib import Path

import pytest
from soak_jobs import CRASH_MARKER, soak_job

from lowbit.batch.manifest import parse_manifest
from lowbit.batch.outputs import output_state
from lowbit.batch.report import REPORT_NAME
from lowbit.batch.runner import run_batch
from lowbit.formats.checkpoint import INDEX_NAME, open_checkpoint
from lowbit.synth import write_synthetic

N_JOBS, WORKERS, N_FAULTS = 20, 4, 9
ARCHS = ("llama", "qwen2", "mistral")


def _shard(src: Path) -> Path:
    return sorted(src.glob("model-*.safetensors"))[0]


def truncated(src: Path) -> None:
    p = _shard(src)
    p.write_bytes(p.read_bytes()[:-64])


def nan_weight(src: Path) -> None:
    ck = open_checkpoint(src)
    name = next(n for n in ck.names() if n.endswith("mlp.down_proj.weight"))
    file, entry, start = ck._tensors[name]
    with open(src / file, "r+b") as f:
        f.seek(start + entry["data_offsets"][0] + 10)
        f.write(b"\xc0\x7f")  # a BF16 NaN


def no_config(src: Path) -> None:
    (src / "config.json").unlink()


def traversal(src: Path) -> None:
    idx = json.loads((src / INDEX_NAME).read_text())
    idx["weight_map"][sorted(idx["weight_map"])[0]] = "../../outside.safetensors"
    (src / INDEX_NAME).write_text(json.dumps(idx))


def absurd_header(src: Path) -> None:
    p = _shard(src)
    raw = p.read_bytes()
    p.write_bytes(struct.pack("<Q", 2**60) + raw[8:])


def crash(src: Path) -> None:
    (src / CRASH_MARKER).write_text("kill this worker mid-conversion")


def missing(src: Path) -> None:
    shutil.rmtree(src)


#: fault -> a phrase the job's error message must contain
FAULTS = {truncated: "truncated or corrupt", nan_weight: "NaN", no_config: "config.json",
          traversal: "outside", absurd_header: "exceeds the file size", crash: "killed by SIGKILL",
          missing: "no such directory"}


@pytest.fixture(scope="module")
def clean_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("soak-src")
    return {a: write_synthetic(root / a, a, preset="tiny", seed=11) for a in ARCHS}


def test_soak_20_jobs_4_workers_injected_failures(clean_sources, tmp_path):
    rng = random.Random(2026)
    # every fault kind at least once, plus random extras, at random positions
    kinds = list(FAULTS) + rng.choices(list(FAULTS), k=N_FAULTS - len(FAULTS))
    rng.shuffle(kinds)
    faults = dict(zip(rng.sample(range(N_JOBS), N_FAULTS), kinds))
    jobs, expected = [], {}
    for i in range(N_JOBS):
        src = tmp_path / "src" / f"m{i:02d}"
        shutil.copytree(clean_sources[rng.choice(ARCHS)], src)
        fault = faults.get(i)
        if fault:
            fault(src)
        scheme = rng.choice(["fp8-block", "nvfp4", "int4"])
        jobs.append({"source": str(src), "schemes": [scheme], "name": f"soak-{i:02d}", "group_size": 32})
        expected[f"soak-{i:02d}-{scheme}"] = fault
    m = parse_manifest({"output_root": str(tmp_path / "out"), "workers": WORKERS, "device": "cpu",
                        "job": jobs}, base=tmp_path)
    report = run_batch(m, job_fn=soak_job)
    got = {Path(j["output"]).name: j for j in report.jobs}
    assert set(got) == set(expected)
    for name, fault in expected.items():
        rec = got[name]
        if fault is None:
            assert rec["status"] == "ok", (name, rec["error"])
            assert output_state(rec["output"]).complete and rec["worst_error"]["tensors"] > 0
        else:
            assert rec["status"] == "failed", (name, fault.__name__)
            assert FAULTS[fault] in rec["error"], (name, fault.__name__, rec["error"])
            assert not Path(rec["output"]).exists()
    assert report.count("ok") == sum(f is None for f in expected.values())
    assert report.count("failed") == sum(f is not None for f in expected.values())
    assert json.loads((tmp_path / "out" / REPORT_NAME).read_text())["failed"] == report.count("failed")
    # recovery: remove the crash markers; those jobs now finish, finished ones are skipped
    for j in jobs:
        Path(j["source"], CRASH_MARKER).unlink(missing_ok=True)
    again = {Path(j["output"]).name: j["status"] for j in run_batch(m, job_fn=soak_job).jobs}
    for name, fault in expected.items():
        want = {None: "skipped", crash: "ok"}.get(fault, "failed")
        assert again[name] == want, (name, fault and fault.__name__)
