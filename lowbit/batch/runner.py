"""Run a batch manifest: skip finished outputs, run the rest on an executor, push, write the report.

Resumable: a job whose output directory verifies (every file's sha256 in its lowbit.json) is
skipped; any other job runs again, and the converter resumes an interrupted conversion from the
shards its partial directory already holds. One lock file per output root keeps two batches from
writing the same outputs at once. The library never prints: `on_event(kind, index, slot, data)`
reports "plan" (data=list of Jobs), "start", "progress" ((done, total)), "done" (result), "push".
"""

from __future__ import annotations

import fcntl
import logging
import time
from contextlib import contextmanager
from pathlib import Path

from lowbit.batch.executors import make_executor
from lowbit.batch.job import run_job
from lowbit.batch.manifest import BatchManifest, Job
from lowbit.batch.outputs import output_bytes, output_state, source_bytes, stale_reason
from lowbit.batch.report import BatchReport, make_record, read_previous, write_report
from lowbit.errors import LowbitError

log = logging.getLogger(__name__)
LOCK_NAME = ".lowbit-batch.lock"


def _ignore_event(*_args) -> None:
    pass


@contextmanager
def _root_lock(root: Path):
    try:
        root.mkdir(parents=True, exist_ok=True)
        f = open(root / LOCK_NAME, "w")
    except OSError as e:
        raise LowbitError(f"{root}: cannot create the output_root or its lock file ({e.strerror}); "
                          "choose a writable output_root") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LowbitError(f"{root}: another `lowbit batch` is running on this output_root; "
                              "wait for it to finish (or use another output_root)") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _skipped(job: Job, previous: dict) -> dict:
    """A record for a finished output, with the figures of the run that made it where known."""
    prev = previous.get((job.output, job.scheme)) or {}
    res = {"status": "skipped", "error": None, "seconds": 0.0,
           "note": "output already complete (lowbit.json sha256s verify)",
           "bytes_in": prev.get("bytes_in") or source_bytes(job.source),
           "bytes_out": output_bytes(job.output), "worst_error": prev.get("worst_error"),
           "kept": prev.get("kept")}
    if res["bytes_in"] and res["bytes_out"]:
        res["ratio"] = round(res["bytes_in"] / res["bytes_out"], 4)
    worst = (res["worst_error"] or {}).get("worst_rel_error")
    if job.max_rel_error is not None and worst is not None and worst > job.max_rel_error:
        res.update(status="failed", error=f"{job.output}: recorded worst relative error {worst:.4g} > "
                   f"max_rel_error {job.max_rel_error}; delete the output to convert it again")
    return res


def plan_jobs(manifest: BatchManifest) -> tuple[list[int], dict[int, dict], dict[int, str]]:
    """(indices of jobs to run, {index: result} for those skipped or refused without running,
    {index: why} for existing outputs to replace: they failed verification or no longer match their
    job; they are ours, they have a lowbit.json). Each output is hashed once."""
    previous = read_previous(manifest.output_root)
    todo, done, replace = [], {}, {}
    for i, job in enumerate(manifest.jobs):
        state = output_state(job.output)
        stale = stale_reason(job, previous.get((job.output, job.scheme))) if state.complete else None
        if stale:
            log.warning("%s: %s; converting it again", job.output, stale)
            replace[i] = f"converted again: {stale}"
            todo.append(i)
        elif state.complete:
            done[i] = _skipped(job, previous)
        elif state.kind == "foreign":
            done[i] = {"status": "failed", "seconds": 0.0,
                       "error": f"{state.reason}: not a lowbit output; move it away or delete it"}
        else:
            if state.kind == "invalid":
                log.warning("%s: %s; converting it again", job.output, state.reason)
                replace[i] = f"converted again: the previous output did not verify ({state.reason})"
            todo.append(i)
    return todo, done, replace


def _job_dict(job: Job, replace: str | None) -> dict:
    d = job.to_dict()
    if replace:
        d["_overwrite"] = replace
    return d


def batch_job(job_dict: dict, progress=None) -> dict:
    """The default job function (module level, so spawn and Ray can import it)."""
    d = dict(job_dict)
    return run_job(d, progress, overwrite=bool(d.pop("_overwrite", None)))


def _push_all(manifest, records: list[dict], push_org: str, dry_run_dir, api, on_event) -> None:
    from lowbit.batch.push import push_output

    for i, (job, rec) in enumerate(zip(manifest.jobs, records)):
        if rec["status"] == "failed":
            continue
        on_event("push", i, None, rec)
        rec["push"] = push_output(rec, job.options, push_org, dry_run_dir=dry_run_dir, api=api)
        on_event("pushed", i, None, rec["push"])


def run_batch(manifest: BatchManifest, *, executor: str = "local", workers: int | None = None,
              ray_address: str | None = None, job_fn=None, on_event=None, push_org: str | None = None,
              dry_run_dir=None, hub_api=None) -> BatchReport:
    """Run every job of `manifest`; returns the report (also written to output_root)."""
    on_event = on_event or _ignore_event
    job_fn = job_fn or batch_job
    root = Path(manifest.output_root)
    ex = make_executor(executor, workers or manifest.workers, ray_address)
    t0 = time.monotonic()
    with _root_lock(root):
        todo, results, replace = plan_jobs(manifest)
        on_event("plan", None, None, {"jobs": list(manifest.jobs), "todo": todo, "done": results})
        def relay(kind, k, slot, data):
            if kind == "done":
                if todo[k] in replace and isinstance(data, dict):
                    data.setdefault("note", replace[todo[k]])
                results[todo[k]] = data
            on_event(kind, todo[k], slot, data)

        try:
            ex.run([_job_dict(manifest.jobs[i], replace.get(i)) for i in todo], job_fn, relay)
        except KeyboardInterrupt:
            _write_interrupted(manifest, todo, results, executor, t0)
            raise
        records = [make_record(job, results[i]) for i, job in enumerate(manifest.jobs)]
        if push_org:
            _push_all(manifest, records, push_org, dry_run_dir, hub_api, on_event)
        report = BatchReport(records, executor=executor, seconds=time.monotonic() - t0)
        try:
            write_report(report, root)
        except OSError as e:  # e.g. the disk filled up: the caller still gets the results
            report.extra["report_error"] = (f"{root}: could not write the report ({e.strerror or e}); "
                                            "free space and re-run (finished jobs are skipped)")
            log.error(report.extra["report_error"])
    return report


def _write_interrupted(manifest, todo, results, executor, t0) -> None:
    for i in todo:
        results.setdefault(i, {"status": "failed", "error": "interrupted; re-run the batch to resume"})
    records = [make_record(job, results[i]) for i, job in enumerate(manifest.jobs)]
    write_report(BatchReport(records, executor=executor, seconds=time.monotonic() - t0),
                 manifest.output_root)
