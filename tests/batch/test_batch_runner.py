"""The runner with fake job functions: isolation of every kind of failure, resume, report, lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from batch_fakes import fake_job

from lowbit.batch.manifest import parse_manifest
from lowbit.batch.report import REPORT_NAME, summary_table
from lowbit.batch.runner import LOCK_NAME, _root_lock, run_batch
from lowbit.errors import LowbitError


def _manifest(tmp_path: Path, kinds: list[str], workers: int = 2, **top):
    jobs = []
    for i, kind in enumerate(kinds):
        src = tmp_path / "src" / f"fake-{kind}-{i}"
        src.mkdir(parents=True, exist_ok=True)
        jobs.append({"source": str(src), "schemes": ["int4"]})
    return parse_manifest({"output_root": str(tmp_path / "out"), "workers": workers, "job": jobs, **top},
                          base=tmp_path)


def test_failures_are_isolated_and_reported(tmp_path):
    kinds = ["ok", "raise", "ok", "error", "crash", "sigkill", "garbage", "ok"]
    m = _manifest(tmp_path, kinds, workers=3)
    events = []
    report = run_batch(m, job_fn=fake_job, on_event=lambda k, i, s, d: events.append((k, i, s)))
    status = [j["status"] for j in report.jobs]
    assert status == ["ok", "failed", "ok", "failed", "failed", "failed", "failed", "ok"]
    err = [j["error"] or "" for j in report.jobs]
    assert "RuntimeError: injected bug" in err[1]
    assert err[3] == "injected failure"
    assert "exited with code 7" in err[4]
    assert "killed by SIGKILL" in err[5]
    assert "not a result dict" in err[6]
    assert report.exit_code == 1
    # every job started and finished once, on a worker slot < 3
    starts = sorted(i for k, i, s in events if k == "start")
    dones = sorted(i for k, i, s in events if k == "done")
    assert starts == dones == list(range(len(kinds)))
    assert all(s in (0, 1, 2) for k, i, s in events if k in ("start", "done"))
    assert any(k == "progress" for k, _, _ in events)
    on_disk = json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    assert [j["status"] for j in on_disk["jobs"]] == status
    assert set(on_disk["jobs"][0]) >= {"source", "scheme", "status", "output", "error", "bytes_in",
                                       "bytes_out", "ratio", "worst_error", "seconds"}
    assert on_disk["ok"] == 3 and on_disk["failed"] == 5


def test_rerun_skips_verified_outputs_and_redoes_modified_ones(tmp_path):
    m = _manifest(tmp_path, ["ok", "ok", "ok"])
    first = run_batch(m, job_fn=fake_job)
    assert [j["status"] for j in first.jobs] == ["ok"] * 3 and first.exit_code == 0
    # tamper with one output: one flipped byte must make the re-run convert it again
    victim = Path(first.jobs[1]["output"]) / "model.safetensors"
    data = bytearray(victim.read_bytes())
    data[3] ^= 0x01
    victim.write_bytes(bytes(data))
    second = run_batch(m, job_fn=fake_job)
    assert [j["status"] for j in second.jobs] == ["skipped", "ok", "skipped"]
    assert second.jobs[0]["bytes_out"] == first.jobs[0]["bytes_out"]
    assert second.jobs[0]["bytes_in"] == first.jobs[0]["bytes_in"]  # carried over from the last report
    assert second.exit_code == 0


def test_foreign_directory_under_output_name_is_refused(tmp_path):
    m = _manifest(tmp_path, ["ok"])
    out = Path(m.jobs[0].output)
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    report = run_batch(m, job_fn=fake_job)
    assert report.jobs[0]["status"] == "failed"
    assert "not a lowbit output" in report.jobs[0]["error"]
    assert (out / "notes.txt").read_text() == "mine"


def test_timeout_kills_a_hung_job(tmp_path):
    m = _manifest(tmp_path, ["hang", "ok"], timeout_s=3)
    report = run_batch(m, job_fn=fake_job)
    assert [j["status"] for j in report.jobs] == ["failed", "ok"]
    assert "timed out" in report.jobs[0]["error"]
    assert report.jobs[0]["seconds"] < 30


def test_second_batch_on_same_root_is_refused(tmp_path):
    root = tmp_path / "out"
    with _root_lock(root):
        m = _manifest(tmp_path, ["ok"])
        with pytest.raises(LowbitError, match="another `lowbit batch` is running"):
            run_batch(m, job_fn=fake_job)
    assert (root / LOCK_NAME).exists()


def test_summary_table_lists_every_job(tmp_path):
    m = _manifest(tmp_path, ["ok", "error"], workers=1)
    table = summary_table(run_batch(m, job_fn=fake_job))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["output", "scheme", "status"]
    assert "fake-ok-0-int4" in lines[1] and " ok " in lines[1] and "4.00x" in lines[1]
    assert "fake-error-1-int4" in lines[2] and "injected failure" in lines[2]
    assert lines[-1].startswith("1 ok, 1 failed, 0 skipped")


def test_skipped_output_still_held_to_max_rel_error(tmp_path):
    m = _manifest(tmp_path, ["ok"])
    report = run_batch(m, job_fn=fake_job)
    # the previous report recorded an error figure; a stricter limit now fails the finished output
    path = tmp_path / "out" / REPORT_NAME
    doc = json.loads(path.read_text())
    doc["jobs"][0]["worst_error"] = {"worst_rel_error": 0.2}
    path.write_text(json.dumps(doc))
    strict = _manifest(tmp_path, ["ok"], max_rel_error=0.1)
    again = run_batch(strict, job_fn=fake_job)
    assert report.jobs[0]["status"] == "ok" and again.jobs[0]["status"] == "failed"
    assert "max_rel_error 0.1" in again.jobs[0]["error"]


def test_report_write_failure_keeps_results_and_fails_exit(tmp_path, monkeypatch):
    import errno

    import lowbit.batch.runner as runner

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner, "write_report", full)
    report = run_batch(_manifest(tmp_path, ["ok"]), job_fn=fake_job)
    assert report.jobs[0]["status"] == "ok"  # the work is done and returned
    assert "could not write the report (No space left on device)" in report.extra["report_error"]
    assert report.exit_code == 1


def test_changed_options_or_source_redo_a_finished_output(tmp_path):
    m = _manifest(tmp_path, ["ok", "ok"])
    assert [j["status"] for j in run_batch(m, job_fn=fake_job).jobs] == ["ok", "ok"]
    # job 0: an option changed in the manifest (recorded in the last report) -> converted again
    changed = _manifest(tmp_path, ["ok", "ok"], group_size=64)
    rerun = run_batch(changed, job_fn=fake_job)
    assert [j["status"] for j in rerun.jobs] == ["ok", "ok"]
    assert "options changed since it was made (group_size)" in rerun.jobs[0]["note"]
    assert [j["status"] for j in run_batch(changed, job_fn=fake_job).jobs] == ["skipped", "skipped"]
    # a different source directory under the same name -> converted again
    other = tmp_path / "elsewhere" / "fake-ok-0"
    other.mkdir(parents=True)
    doc = {"output_root": str(tmp_path / "out"), "workers": 2, "group_size": 64,
           "job": [{"source": str(other), "schemes": ["int4"]}]}
    moved = run_batch(parse_manifest(doc, base=tmp_path), job_fn=fake_job)
    assert moved.jobs[0]["status"] == "ok" and "the job reads" in moved.jobs[0]["note"]


def test_unwritable_output_root_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    m = _manifest(tmp_path, ["ok"])
    bad = type(m)(path=m.path, output_root=str(blocker / "out"), workers=1, jobs=m.jobs)
    with pytest.raises(LowbitError, match="cannot create the output_root"):
        run_batch(bad, job_fn=fake_job)
