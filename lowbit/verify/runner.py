"""`verify_checkpoint`: run every check on a converted checkpoint and collect a report (worst first).

Order: file hashes (lowbit.json), config, then per quantized linear the TENSOR_CHECKS list (structure
first; a linear whose structure fails gets no further checks). Without a GPU the kernel checks are
skipped and the report says so plainly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lowbit.errors import CheckpointError, VerifyError
from lowbit.verify import kernel_checks, quality, structure  # noqa: F401  (register the checks)
from lowbit.verify.checks import TENSOR_CHECKS, CheckResult, VerifyContext, fail

log = logging.getLogger(__name__)

try:  # the GEMM helper's checks register themselves where present
    from lowbit.verify import gemm_checks  # noqa: F401
except ImportError:
    pass


@dataclass
class VerifyReport:
    path: str
    scheme: str | None
    opts: dict
    gpu: str | None  # device name when kernels ran
    kernel_ran: bool
    results: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def worst_first(self) -> list[CheckResult]:
        return sorted(self.results, key=lambda r: (r.ok, -r.badness, r.target, r.check))

    def as_dict(self) -> dict:
        return {"path": self.path, "scheme": self.scheme, "options": self.opts, "ok": self.ok,
                "gpu": self.gpu, "kernel_ran": self.kernel_ran, "notes": self.notes,
                "failed": sum(not r.ok for r in self.results),
                "results": [r.as_dict() for r in self.worst_first()]}


def _open(path: Path):
    """open_checkpoint; when its headers are corrupt, report hash failures instead (a flipped byte)."""
    from lowbit.formats.checkpoint import open_checkpoint

    try:
        return open_checkpoint(path), []
    except CheckpointError as e:
        files = structure.check_files(path, structure.read_manifest(path))
        if any(not r.ok for r in files) and structure.read_manifest(path):
            return None, files + [fail(path.name, "structure", f"unreadable: {e}")]
        raise


def _use_gpu(want: str | bool) -> tuple[bool, str]:
    if want is False or want == "no":
        return False, "kernel checks disabled (--no-gpu)"
    ok, why = kernel_checks.gpu_available()
    if want is True and not ok:
        raise VerifyError(f"--gpu was asked for but {why}; drop --gpu to verify without kernels")
    return ok, why


def verify_checkpoint(path, against=None, use_gpu: str | bool = "auto", seed: int = 0,
                      progress: Callable[[int, int, str], None] | None = None) -> VerifyReport:
    from lowbit.formats.checkpoint import open_checkpoint
    from lowbit.formats.hf_config import scheme_from_config

    path = Path(path)
    ck, early = _open(path)
    if ck is None:
        return VerifyReport(str(path), None, {}, None, False, early, ["the checkpoint could not be opened"])
    found = scheme_from_config(ck.config)
    if found is None:
        raise VerifyError(f"{path}/config.json has no quantization_config: nothing to verify "
                          f"(convert it with `lowbit quantize` first)")
    scheme, opts = found
    gpu, why = _use_gpu(use_gpu)
    source = open_checkpoint(against) if against else None
    report = VerifyReport(str(path), scheme, opts, why if gpu else None, gpu)
    if not gpu:
        report.notes.append(f"NO GPU KERNEL RAN: {why}; structure{' and quality' if source else ''} checked only")
    report.results += structure.check_files(path, ck.manifest)
    lins, orphans = structure.find_linears(ck, scheme)
    report.results += orphans + structure.check_config(ck, scheme, lins)
    ctx = VerifyContext(ck, scheme, opts, source, gpu, seed)
    for i, lin in enumerate(lins):
        if progress:
            progress(i, len(lins), lin.prefix)
        for check in TENSOR_CHECKS:
            got = check(ctx, lin)
            report.results += got
            if check is structure.structure_check and any(not r.ok for r in got):
                break
    if progress:
        progress(len(lins), len(lins), "")
    return report
