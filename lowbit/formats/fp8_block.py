"""fp8-block: the HF / DeepSeek-V3 "fp8" layout (formats.md section 1).

weight F8_E4M3 [N, K]; weight_scale_inv float32 [ceil(N/128), ceil(K/128)] holding amax/448, which is
MULTIPLIED at dequant. Partial edge blocks are zero-padded for the amax and cropped after quantizing.
An all-zero block gets scale 1.0 (as transformers does), so its codes decode to zeros.
"""

from __future__ import annotations

import numpy as np

from lowbit.formats import numerics
from lowbit.formats.schemes import SCHEMES

SPEC = SCHEMES["fp8-block"]
BLOCK = SPEC.block[0]


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def tensor_layout(n: int, k: int, **_opts) -> dict[str, tuple[str, tuple[int, ...]]]:
    """On-disk names (suffixes), safetensors dtypes and shapes for a [n, k] weight."""
    return {
        "weight": ("F8_E4M3", (n, k)),
        "weight_scale_inv": ("F32", (_ceil(n, BLOCK), _ceil(k, BLOCK))),
    }


def unsupported_reason(n: int, k: int, **_opts) -> str | None:
    """Every 2-D shape converts (edge blocks are partial)."""
    return None


def serving_warning(n: int, k: int) -> str | None:
    """vLLM/SGLang block-FP8 needs K % 128 == 0 (activation group quant) at serve time."""
    if k % BLOCK:
        return f"K={k} is not a multiple of 128: vLLM and SGLang block-FP8 kernels will refuse it"
    return None


def block_scales(w: np.ndarray) -> np.ndarray:
    """amax/448 per 128x128 block of a float32 [N, K] array (1.0 for all-zero blocks)."""
    n, k = w.shape
    nb, kb = _ceil(n, BLOCK), _ceil(k, BLOCK)
    a = np.abs(w)
    if n % BLOCK or k % BLOCK:
        padded = np.zeros((nb * BLOCK, kb * BLOCK), np.float32)
        padded[:n, :k] = a
        a = padded
    amax = a.reshape(nb, BLOCK, kb * BLOCK).max(axis=1).reshape(nb, kb, BLOCK).max(axis=-1)  # rows first: faster
    s = (amax / np.float32(numerics.E4M3_MAX)).astype(np.float32)
    s[amax == 0] = 1.0
    return s


def expand_scales(s: np.ndarray, n: int, k: int) -> np.ndarray:
    """[nb, kb] block scales -> [n, k] per-element multiplier."""
    return np.repeat(np.repeat(s, BLOCK, axis=0), BLOCK, axis=1)[:n, :k]


def quantize(w: np.ndarray, **_opts) -> dict[str, np.ndarray]:
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    s = block_scales(w)
    q = numerics.encode_e4m3(w / expand_scales(s, n, k))
    return {"weight": q, "weight_scale_inv": s}


def dequantize(t: dict[str, np.ndarray]) -> np.ndarray:
    q = numerics.decode_e4m3(t["weight"])
    s = np.asarray(t["weight_scale_inv"]).astype(np.float32)  # bf16/fp16 scales of third parties too
    n, k = q.shape
    return q * expand_scales(s, n, k)


def config_fragment(ignore: list[str], **_opts) -> dict:
    return {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "weight_block_size": [BLOCK, BLOCK],
        "modules_to_not_convert": list(ignore),
        "ignored_layers": list(ignore),
    }
