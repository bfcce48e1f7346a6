"""The batch report: one record per job, written atomically to `output_root/batch-report.json`.

Record keys: source, scheme, status ("ok" | "failed" | "skipped"), output, error, bytes_in,
bytes_out, ratio, worst_error ({tensors, worst_tensor, worst_rel_error, mean_rel_error, ...} or None),
seconds, plus `note` (why a job was skipped or redone) and `push` (hub upload, when asked).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPORT_NAME = "batch-report.json"
STATUSES = ("ok", "failed", "skipped")
RECORD_KEYS = ("source", "scheme", "status", "output", "error", "bytes_in", "bytes_out", "ratio",
               "worst_error", "seconds")


def make_record(job, result) -> dict:
    """A report record from a Job and a worker's result dict (missing figures become None)."""
    if not isinstance(result, dict) or result.get("status") not in STATUSES:
        result = {"status": "failed", "error": f"the job function returned {result!r:.200}, not a "
                  "result dict with status ok|failed|skipped (a lowbit bug: please report it)"}
    rec = {"source": job.source, "scheme": job.scheme, "status": result["status"],
           "output": job.output, "error": result.get("error"), "options": dict(job.options)}
    for key in RECORD_KEYS[5:]:
        rec[key] = result.get(key)
    for key in ("note", "kept", "resumed_shards", "warnings", "push"):
        if result.get(key) not in (None, [], ""):
            rec[key] = result[key]
    return rec


@dataclass
class BatchReport:
    jobs: list[dict]
    executor: str = "local"
    seconds: float = 0.0
    path: str | None = None
    extra: dict = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for j in self.jobs if j["status"] == status)

    @property
    def failed(self) -> int:
        return self.count("failed") + sum(1 for j in self.jobs if (j.get("push") or {}).get("error"))

    @property
    def exit_code(self) -> int:
        return 0 if self.failed == 0 and not self.extra.get("report_error") else 1

    def to_dict(self) -> dict:
        return {"jobs": self.jobs, "executor": self.executor, "seconds": round(self.seconds, 3),
                "ok": self.count("ok"), "failed": self.count("failed"),
                "skipped": self.count("skipped"), **self.extra}


def write_report(report: BatchReport, output_root) -> Path:
    """Write the report with a temp file + rename: a reader never sees half a report."""
    root = Path(output_root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / REPORT_NAME
    fd, tmp = tempfile.mkstemp(prefix=".batch-report.", suffix=".tmp", dir=root)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    report.path = str(path)
    return path


def read_previous(output_root) -> dict[tuple[str, str], dict]:
    """(output, scheme) -> record of the last report, to carry figures over for skipped jobs."""
    path = Path(output_root) / REPORT_NAME
    try:
        data = json.loads(path.read_text())
        return {(j["output"], j["scheme"]): j for j in data.get("jobs", []) if isinstance(j, dict)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return {}


def _size(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return str(n)


def _err(rec: dict) -> str:
    w = rec.get("worst_error") or {}
    v = w.get("worst_rel_error")
    return "-" if v is None else f"{v:.4f}"


def summary_table(report: BatchReport, width: int = 60) -> str:
    """A plain-text table, one row per job, then the totals line."""
    head = ("output", "scheme", "status", "in", "out", "ratio", "worst err", "time", "error")
    rows = [head]
    for r in report.jobs:
        err = (r.get("error") or (r.get("push") or {}).get("error") or "")
        rows.append((Path(r["output"]).name, r["scheme"], r["status"], _size(r.get("bytes_in")),
                     _size(r.get("bytes_out")), "-" if r.get("ratio") is None else f"{r['ratio']:.2f}x",
                     _err(r), "-" if r.get("seconds") is None else f"{r['seconds']:.1f}s",
                     err if len(err) <= width else err[: width - 3] + "..."))
    widths = [max(len(str(row[c])) for row in rows) for c in range(len(head) - 1)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row[:-1], widths)) + "  " + row[-1]
             for row in rows]
    lines.append(f"{report.count('ok')} ok, {report.count('failed')} failed, "
                 f"{report.count('skipped')} skipped in {report.seconds:.1f}s")
    return "\n".join(line.rstrip() for line in lines)
