"""cupy twin of the numpy quantizers (filled in below)."""

from __future__ import annotations


def available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False
