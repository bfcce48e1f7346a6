"""One batch job, as a worker runs it: convert, then measure sizes and the worst error.

`run_job(job_dict, progress)` never raises for a problem of the job itself: it returns a result
dict with `status` "ok" or "failed" and a one-line `error`, so one bad model cannot stop a batch.
`progress(done, total)` reports bytes converted so far.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import traceback
from pathlib import Path

from lowbit.batch.manifest import Job
from lowbit.batch.outputs import output_bytes
from lowbit.errors import LowbitError

log = logging.getLogger(__name__)
#: an output that converted but failed its error check is renamed to `<output><REJECTED_SUFFIX>`
REJECTED_SUFFIX = ".rejected"


class _Accumulate:
    """The converter reports bytes just read; the batch progress line wants (done, total)."""

    def __init__(self, progress):
        self.progress, self.done = progress, 0

    def __call__(self, n: int, total: int) -> None:
        self.done += int(n)
        if self.progress is not None:
            self.progress(self.done, total)


def _convert(job: Job, progress, overwrite: bool):
    from lowbit.quantize.convert import convert

    o = job.options
    return convert(job.source, job.output, job.scheme, group_size=o.get("group_size", 128),
                   asymmetric=o.get("asymmetric", False), ignore=tuple(o.get("ignore", ())),
                   generic=o.get("generic", False), device=o.get("device", "auto"),
                   max_shard_size=o.get("max_shard_size", "5GB"), overwrite=overwrite, resume=True,
                   progress=_Accumulate(progress))


def _local_source(job: Job) -> str:
    """The directory the conversion read (a hub id resolves to its cached snapshot)."""
    from lowbit.quantize.hub import resolve_source

    return str(resolve_source(job.source).path)


def _measure(job: Job, summary, result: dict) -> None:
    from lowbit.batch.quality import error_summary

    result["bytes_in"] = int(summary.bytes_in)
    result["bytes_out"] = int(summary.bytes_out) or output_bytes(job.output)
    if result["bytes_in"] and result["bytes_out"]:
        result["ratio"] = round(result["bytes_in"] / result["bytes_out"], 4)
    result["kept"] = len(summary.kept)
    result["resumed_shards"] = summary.resumed_shards
    result["warnings"] = [str(w) for w in summary.warnings]
    if not job.verify:
        return
    err = error_summary(job.output, _local_source(job), job.scheme, use_gpu=job.verify_gpu)
    result["worst_error"] = err.to_dict()
    if err.failures:
        raise LowbitError(f"{job.output}: {err.checker} failed {len(err.failures)} check(s), worst: "
                          f"{err.failures[0]}; see `lowbit verify {job.output} --against SRC`")
    if err.kept_mismatch:
        raise LowbitError(f"{job.output}: kept tensor {err.kept_mismatch} differs from the source; "
                          "the conversion is corrupt: delete the output and re-run")
    limit = job.max_rel_error
    if limit is not None and err.worst_rel_error is not None and err.worst_rel_error > limit:
        raise LowbitError(f"{job.output}: tensor {err.worst_tensor} has relative error "
                          f"{err.worst_rel_error:.4g} > max_rel_error {limit}; raise the limit or "
                          "use a finer scheme (fp8-block, or int4 with a smaller group_size)")


def _reject(job: Job) -> None:
    """Move an output that failed its check away from the final name (kept for inspection)."""
    out = Path(job.output)
    aside = out.with_name(out.name + REJECTED_SUFFIX)
    if aside.exists():
        shutil.rmtree(aside)
    if out.exists():
        os.replace(out, aside)
        log.warning("%s failed its check; moved to %s", out, aside)


def run_job(job_dict: dict, progress=None, overwrite: bool = False) -> dict:
    """Convert + measure one job; the result dict always has status, error and seconds."""
    job = Job.from_dict(job_dict)
    t0 = time.monotonic()
    result = {"status": "ok", "error": None}
    try:
        summary = _convert(job, progress, overwrite)
        try:
            _measure(job, summary, result)
        except Exception:
            _reject(job)
            raise
    except LowbitError as e:
        result.update(status="failed", error=str(e))
    except MemoryError:
        result.update(status="failed", error=f"{job.source}: out of memory converting to {job.scheme}; "
                      "use fewer workers or a machine with more RAM")
    except OSError as e:
        result.update(status="failed", error=f"{job.output}: {e.strerror or e} ({type(e).__name__}, "
                      f"errno {e.errno}); check free space and permissions, then re-run")
    except Exception as e:  # an internal bug: isolate it, keep the traceback in the log
        log.error("job %s failed with an internal error:\n%s", job.label, traceback.format_exc())
        result.update(status="failed", error=f"internal error {type(e).__name__}: {e} "
                      "(a lowbit bug: please report it with the log)")
    result["seconds"] = round(time.monotonic() - t0, 3)
    return result
