"""--executor ray on a local Ray instance: same jobs, same report as the local executor."""

from __future__ import annotations

from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import batch_fakes  # noqa: E402
from batch_fakes import fake_job  # noqa: E402

from lowbit.batch.manifest import parse_manifest  # noqa: E402
from lowbit.batch.runner import run_batch  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    # the fake job module lives under tests/, which Ray workers cannot import: ship it by value
    ray.cloudpickle.register_pickle_by_value(batch_fakes)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_executor_same_report_as_local(tmp_path, local_ray):
    kinds = ["ok", "error", "crash", "ok", "raise"]
    jobs = []
    for i, kind in enumerate(kinds):
        (tmp_path / f"fake-{kind}-{i}").mkdir()
        jobs.append({"source": str(tmp_path / f"fake-{kind}-{i}"), "schemes": ["fp8-block"]})
    doc = {"output_root": str(tmp_path / "ray-out"), "workers": 2, "job": jobs}
    ray_report = run_batch(parse_manifest(doc, base=tmp_path), executor="ray", job_fn=fake_job)
    doc["output_root"] = str(tmp_path / "local-out")
    local_report = run_batch(parse_manifest(doc, base=tmp_path), executor="local", job_fn=fake_job)
    assert [j["status"] for j in ray_report.jobs] == ["ok", "failed", "failed", "ok", "failed"]
    assert [j["status"] for j in ray_report.jobs] == [j["status"] for j in local_report.jobs]
    assert "Ray task failed" in ray_report.jobs[2]["error"]
    assert "RuntimeError: injected bug" in ray_report.jobs[4]["error"]
    assert ray_report.to_dict()["executor"] == "ray" and ray_report.exit_code == 1
    for r, loc_ in zip(ray_report.jobs, local_report.jobs):
        assert set(r) == set(loc_)
    # the re-run on Ray skips the two finished outputs
    again = run_batch(parse_manifest({**doc, "output_root": str(tmp_path / "ray-out")}, base=tmp_path),
                      executor="ray", job_fn=fake_job)
    assert [j["status"] for j in again.jobs] == ["skipped", "failed", "failed", "skipped", "failed"]


def test_ray_executor_real_conversion(tmp_path, local_ray):
    from lowbit.synth import write_synthetic

    src = write_synthetic(tmp_path / "llama-tiny", "llama", preset="tiny", seed=4)
    doc = {"output_root": str(tmp_path / "ray-out"), "workers": 2, "group_size": 32, "device": "cpu",
           "job": [{"source": str(src), "schemes": ["fp8-block", "int4"]}]}
    rep = run_batch(parse_manifest(doc, base=tmp_path), executor="ray")
    assert [j["status"] for j in rep.jobs] == ["ok", "ok"], [j["error"] for j in rep.jobs]
    doc["output_root"] = str(tmp_path / "local-out")
    loc = run_batch(parse_manifest(doc, base=tmp_path), executor="local")
    for r, loc_ in zip(rep.jobs, loc.jobs):
        # error figures equal up to float64 summation order (Ray sets OMP_NUM_THREADS=1 in tasks)
        assert r["worst_error"]["worst_tensor"] == loc_["worst_error"]["worst_tensor"]
        assert r["worst_error"]["worst_rel_error"] == pytest.approx(loc_["worst_error"]["worst_rel_error"],
                                                                    rel=1e-12)
        assert r["bytes_out"] == loc_["bytes_out"]
        files = sorted(p.name for p in Path(loc_["output"]).iterdir())
        assert files == sorted(p.name for p in Path(r["output"]).iterdir())
        for f in files:  # same bytes from either executor
            assert (Path(r["output"]) / f).read_bytes() == (Path(loc_["output"]) / f).read_bytes()
