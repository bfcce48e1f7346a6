"""Fake job functions for the batch runner tests (importable by name in spawned workers).

The behaviour comes from the source directory name `fake-<kind>-<n>`:
ok (writes a small output with a valid lowbit.json, atomically), raise (an unexpected exception),
error (a returned failure), crash (os._exit(7)), sigkill (the worker kills itself), hang (sleeps),
garbage (returns a non-dict).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

from lowbit.quantize.manifest import SELF_DIGEST, manifest_digest


def write_fake_output(out: str, payload: bytes, scheme: str = "int4", source: str = "/src",
                      options: dict | None = None) -> None:
    out_p = Path(out)
    tmp = out_p.with_name(out_p.name + ".fake-partial")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "model.safetensors").write_bytes(payload)
    files = {"model.safetensors": {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}}
    body = {"files": files, "scheme": scheme, "source": source, "options": options or {}}
    body[SELF_DIGEST] = manifest_digest(body)
    (tmp / "lowbit.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out_p)


def fake_job(job: dict, progress=None) -> dict:
    kind = Path(job["source"]).name.split("-")[1]
    if progress:
        progress(1, 2)
    if kind == "ok":
        payload = f"{job['source']}|{job['scheme']}".encode() * 8
        if job.get("_overwrite"):  # the runner asks to replace an output that failed verification
            shutil.rmtree(job["output"])
        write_fake_output(job["output"], payload, job["scheme"], str(Path(job["source"]).absolute()))
        if progress:
            progress(2, 2)
        out_bytes = sum(p.stat().st_size for p in Path(job["output"]).glob("*.safetensors"))
        return {"status": "ok", "error": None, "bytes_in": 4 * out_bytes,
                "bytes_out": out_bytes, "ratio": 4.0, "seconds": 0.01}
    if kind == "raise":
        raise RuntimeError("injected bug")
    if kind == "error":
        return {"status": "failed", "error": "injected failure", "seconds": 0.0}
    if kind == "crash":
        os._exit(7)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        time.sleep(600)
    return "garbage"
