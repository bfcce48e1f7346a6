"""Job function for the soak test: the real batch job, plus a worker crash (SIGKILL mid-conversion)
injected where the source directory holds an INJECT_CRASH marker file."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from lowbit.batch.runner import batch_job

CRASH_MARKER = "INJECT_CRASH"


def soak_job(job: dict, progress=None) -> dict:
    if (Path(job["source"]) / CRASH_MARKER).exists():
        def crash(*_a, **_k):  # the first progress report comes after the first tensor is written
            os.kill(os.getpid(), signal.SIGKILL)
        return batch_job(job, crash)
    return batch_job(job, progress)
