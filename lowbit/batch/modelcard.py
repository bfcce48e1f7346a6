"""README.md model card for a converted checkpoint: source, scheme, error summary, engines, command.

Rendered with huggingface_hub's ModelCard (jinja2) so the YAML front matter is what the Hub expects.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from lowbit import __version__
from lowbit.batch.manifest import is_repo_id

#: which engines load each scheme's on-disk layout (see shared/reference/formats.md, section 0)
ENGINES: dict[str, list[str]] = {
    "fp8-block": [
        "vLLM (`quant_method: fp8`, 128x128 block scales)",
        "SGLang",
        "transformers (FineGrainedFP8; an FP8-capable GPU, or `dequantize=True`)",
    ],
    "nvfp4": [
        "vLLM (compressed-tensors `nvfp4-pack-quantized`: W4A4 kernels on Blackwell, "
        "Marlin W4A16 on Hopper/Ampere)",
        "SGLang (dense models)",
        "transformers through compressed-tensors (decompressed to BF16)",
    ],
    "int4": [
        "vLLM (compressed-tensors `pack-quantized` W4A16, Marlin/Machete kernels)",
        "SGLang",
        "transformers through compressed-tensors (decompressed to BF16)",
    ],
}
SCHEME_TEXT = {
    "fp8-block": "FP8 E4M3 weights with 128x128 block scales (`weight_scale_inv`), activations dynamic",
    "nvfp4": "NVFP4 weights (E2M1, FP8 E4M3 scale per 16 values, FP32 global scale), weight-only",
    "int4": "Int4 group-wise weights (BF16 scales), weight-only (W4A16)",
}

TEMPLATE = """---
{{ card_data }}
---

# {{ name }}

{{ scheme_text }}, converted from [{{ source }}]({{ source_link }}){% if resolved %}
(exactly `{{ resolved }}`){% endif %} by lowbit {{ version }}. Data-free conversion: no calibration set was used.

## Quantization

| | |
|---|---|
| scheme | `{{ scheme }}`{% if options %} ({{ options }}){% endif %} |
| size | {{ size_in }} BF16 -> {{ size_out }} ({{ ratio }}) |
| tensors quantized | {{ tensors }} |
| worst relative error | {{ worst }} |
| mean relative error | {{ mean }} |
| lowest SQNR | {{ sqnr }} |
| checked by | {{ checker }} |

The error is ||W' - W|| / ||W|| of each dequantized weight against the source weight.
{% if kept %}{{ kept }} tensors (router, norms, embeddings, lm_head and layers the scheme cannot
take) are kept in BF16, bit-identical to the source.{% endif %}

## Engines that load it

{% for e in engines %}- {{ e }}
{% endfor %}
## How it was made

```bash
{{ command }}
```

Every file is listed with its sha256 in `lowbit.json`; `lowbit verify . --against {{ source }}`
re-checks them and the error figures above.
"""


def quantize_command(source: str, scheme: str, options: dict, output: str = "OUT") -> str:
    """The `lowbit quantize` command line that makes this checkpoint."""
    args = ["lowbit", "quantize", source, "-o", output, "--scheme", scheme]
    if scheme == "int4":
        args += ["--group-size", str(options.get("group_size", 128))]
        if options.get("asymmetric"):
            args.append("--asymmetric")
    for pattern in options.get("ignore") or ():
        args += ["--ignore", pattern]
    if options.get("generic"):
        args.append("--generic")
    if options.get("max_shard_size", "5GB") != "5GB":
        args += ["--max-shard-size", str(options["max_shard_size"])]
    return shlex.join(args)


def _fmt_bytes(n) -> str:
    if not n:
        return "?"
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def _fmt_err(v) -> str:
    return "not measured" if v is None else f"{v:.4g}"


def _manifest_source(output: str) -> str | None:
    """The exact source the converter recorded (repo@commit for a hub id)."""
    try:
        return json.loads((Path(output) / "lowbit.json").read_text()).get("source")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None


def _checker(err: dict) -> str:
    if not err:
        return "not checked"
    who = f"`{err['checker']} --against` the source" if err.get("checker") == "lowbit verify" else \
        "numpy dequantize vs the source"
    return who + ("; GPU kernels checked" if err.get("kernel_ran") else "; no GPU kernel ran")


def render_card(record: dict, options: dict) -> str:
    """README.md text for one finished batch record (see lowbit.batch.report)."""
    from huggingface_hub import ModelCard, ModelCardData

    source, scheme = record["source"], record["scheme"]
    base = source.split("@", 1)[0] if is_repo_id(source) else None
    data = ModelCardData(base_model=base, library_name="transformers", pipeline_tag="text-generation",
                         tags=["lowbit", scheme, "quantized",
                               "compressed-tensors" if scheme != "fp8-block" else "fp8"])
    err = record.get("worst_error") or {}
    opts = ""
    if scheme == "int4":
        opts = f"group size {options.get('group_size', 128)}, " + \
            ("asymmetric" if options.get("asymmetric") else "symmetric")
    ratio = record.get("ratio")
    resolved = _manifest_source(record["output"])
    card = ModelCard.from_template(
        data, template_str=TEMPLATE, name=Path(record["output"]).name, scheme=scheme,
        scheme_text=SCHEME_TEXT[scheme], source=source, version=__version__,
        resolved=resolved if resolved and resolved != source else None,
        source_link=f"https://huggingface.co/{base}" if base else source, options=opts,
        size_in=_fmt_bytes(record.get("bytes_in")), size_out=_fmt_bytes(record.get("bytes_out")),
        ratio=f"{ratio:.2f}x smaller" if ratio else "ratio unknown",
        tensors=err.get("tensors", "?"), worst=_fmt_err(err.get("worst_rel_error")) +
        (f" (`{err['worst_tensor']}`)" if err.get("worst_tensor") else ""),
        mean=_fmt_err(err.get("mean_rel_error")), kept=record.get("kept"),
        sqnr="not measured" if err.get("min_sqnr_db") is None else f"{err['min_sqnr_db']:.1f} dB",
        checker=_checker(err),
        engines=ENGINES[scheme], command=quantize_command(source, scheme, options,
                                                          Path(record["output"]).name))
    return str(card)
