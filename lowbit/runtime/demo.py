"""`lowbit demo`: SmolLM2 -> BF16 -> each scheme -> check -> the same question -> one table.

For every scheme: convert (lowbit.quantize.convert), verify it against the source (lowbit.verify:
structure, hashes, SQNR floors, and the GPU kernels where a GPU is present), measure the weight error of
every quantized tensor (relative Frobenius error, mean and worst), perplexity on the shipped text, ask
"What is the capital of France?" greedily and time the decode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lowbit.formats.checkpoint import open_checkpoint
from lowbit.runtime.generate import Engine, perplexity, sample_text
from lowbit.runtime.weights import dequantized, module_layout

log = logging.getLogger(__name__)

QUESTION = "What is the capital of France?"
SCHEMES = (("fp8-block", {}), ("nvfp4", {}), ("int4", {"group_size": 64}))


@dataclass
class Row:
    scheme: str
    size_bytes: int
    err_mean: float | None
    err_max: float | None
    perplexity: float
    answer: str
    decode_tok_s: float
    verify: str = "-"


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def weight_errors(src: Path, quant: Path) -> tuple[float, float]:
    """Mean and max over quantized modules of ||W_deq - W|| / ||W||."""
    ref, q = open_checkpoint(src), open_checkpoint(quant)
    errs = []
    for name in q.names():
        prefix, part = name.rsplit(".", 1)
        if part not in ("weight_packed", "weight_scale_inv"):
            continue
        assert module_layout(q, prefix) != "dense"
        w = np.asarray(ref.get(f"{prefix}.weight"), dtype=np.float32)
        errs.append(float(np.linalg.norm(dequantized(q, prefix) - w) / max(np.linalg.norm(w), 1e-30)))
    return (float(np.mean(errs)), float(np.max(errs))) if errs else (0.0, 0.0)


def evaluate(path: Path, scheme: str, device: str, src: Path | None) -> Row:
    eng = Engine(path, device=device, max_context=1024)
    ppl = perplexity(eng, eng.tokenizer.encode(sample_text()))
    eng.reset()
    r = eng.generate(eng.tokenizer.encode_chat([{"role": "user", "content": QUESTION}]), max_new_tokens=32)
    em, ex = weight_errors(src, path) if src is not None else (None, None)
    return Row(scheme, checkpoint_bytes(path), em, ex, ppl, r.text.strip(), r.stats.decode_tok_s,
               verified(path, src) if src is not None else "-")


def verified(path: Path, src: Path) -> str:
    """`lowbit verify` against the source: 'pass N' or 'FAIL k/N', '+gpu' when the kernels ran."""
    try:
        from lowbit.verify.runner import verify_checkpoint
    except ImportError:
        return "n/a"
    rep = verify_checkpoint(path, against=src, use_gpu="auto")
    bad = sum(not r.ok for r in rep.results)
    tag = "+gpu" if rep.kernel_ran else ""
    return (f"pass {len(rep.results)}" if rep.ok else f"FAIL {bad}/{len(rep.results)}") + tag


def run_demo(workdir: Path, source: str = "auto", device: str = "auto", say=log.info) -> tuple[list[Row], str]:
    """All rows (bf16 first) and where the model came from."""
    from lowbit.quantize.convert import convert
    from lowbit.runtime.realmodel import smollm2_checkpoint

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    say("getting SmolLM2-135M-Instruct ...")
    src, origin = smollm2_checkpoint(source)
    say(f"BF16 checkpoint: {src} (from {origin})")
    rows = [evaluate(src, "bf16", device, None)]
    for scheme, opts in SCHEMES:
        out = workdir / f"smollm2-{scheme}"
        s = convert(src, out, scheme, device=device, overwrite=True, **opts)
        say(f"{scheme}: {s.quantized} tensors quantized, {len(s.kept)} kept BF16, {s.seconds:.1f} s -> {out}")
        rows.append(evaluate(out, scheme + (f" g{opts['group_size']}" if opts else ""), device, src))
    return rows, origin
