"""References and checks for the prefill GEMM and the MoE layer (kernels in lowbit.kernels.gemm / moe).

References (numpy, float64): `gemm_ref` = formats.<scheme>.dequantize(W) then x @ W^T, with the
activations first quantized exactly as the W8A8 kernel does (`quantize_act_ref`) when act="fp8".
Tolerance (relative Frobenius error against that same-precision reference):
  GEMM_BOUND = 1e-2: the kernel rounds the dequantized weight to bf16 (W8A16/W4A16, 2^-9 relative per
  element) and the output to bf16 (2^-9); the W8A8 kernel uses the reference's own activation codes,
  so only fp32 summation order and the bf16 output differ. Random signs keep the sum of these errors
  near 2^-9 ~ 2e-3; 1e-2 leaves room without hiding a wrong scale (>= 3e-2) or a wrong element.
  MOE_BOUND = 2e-2: as above plus the bf16 rounding of the gate output and of silu(g)*u.
`check_gemm` / `check_moe` run the GPU path on fresh random inputs and return results for verify.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.formats import numerics

GEMM_BOUND = 1e-2
MOE_BOUND = 2e-2
SAMPLE_ROWS = 64


@dataclass
class KernelCheck:
    name: str
    kind: str  # "gemm" | "moe"
    scheme: str
    act: str
    m: int
    rel_err: float
    bound: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.rel_err) and self.rel_err <= self.bound)


def rel_err(y, ref) -> float:
    y = np.asarray(y, np.float64)
    ref = np.asarray(ref, np.float64)
    if not np.all(np.isfinite(y)):
        return float("inf")
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))


def quantize_act_ref(x) -> tuple[np.ndarray, np.ndarray]:
    """Per row and 128-channel block: s = amax/448 (1 for an all-zero block), q = e4m3(x / s).
    Returns (q as float32 values [M, K], s float32 [M, ceil(K/128)])."""
    x = np.asarray(x, np.float32)
    m, k = x.shape
    kb = -(-k // 128)
    xp = np.zeros((m, kb * 128), np.float32)
    xp[:, :k] = x
    amax = np.abs(xp.reshape(m, kb, 128)).max(axis=-1)
    s = (amax / np.float32(448.0)).astype(np.float32)
    s[amax == 0] = 1.0
    q = numerics.decode_e4m3(numerics.encode_e4m3(xp / np.repeat(s, 128, axis=1)))
    return q[:, :k], s


def dequant_act_ref(x) -> np.ndarray:
    q, s = quantize_act_ref(x)
    return q.astype(np.float64) * np.repeat(s, 128, axis=1)[:, : q.shape[1]]


def dense_weight(scheme: str, tensors: dict) -> np.ndarray:
    """float32 [N, K] of one linear from its on-disk tensors (scheme "bf16": {"weight": ...})."""
    if scheme == "bf16":
        return np.asarray(tensors["weight"]).astype(np.float32)
    from lowbit.formats import scheme_module

    return scheme_module(scheme).dequantize(tensors)


def gemm_ref(w_dense: np.ndarray, x, act: str = "bf16") -> np.ndarray:
    """float64 [M, N] = x @ W^T with x bf16-valued [M, K] (fp8-quantized first when act="fp8")."""
    xf = dequant_act_ref(x) if act == "fp8" else np.asarray(x, np.float64)
    return xf @ np.asarray(w_dense, np.float64).T


def random_bf16(rng: np.random.Generator, shape, scale: float = 1.0) -> np.ndarray:
    return numerics.to_bf16(rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))


def _sample_rows(m: int, rng) -> np.ndarray:
    if m <= SAMPLE_ROWS:
        return np.arange(m)
    return np.unique(np.concatenate([[0, m - 1], rng.choice(m, SAMPLE_ROWS - 2, replace=False)]))


def check_gemm(w, w_dense: np.ndarray, m: int, act: str = "bf16", seed: int = 0, name: str | None = None) -> KernelCheck:
    """Run lowbit.kernels.gemm.gemm(w, x) on fresh random x [m, K] (output poisoned with NaN first)
    and compare sampled rows with the float64 reference."""
    import cupy

    from lowbit.kernels.gemm import gemm

    rng = np.random.default_rng(seed)
    x = random_bf16(rng, (m, w.k))
    out = cupy.full((m, w.n), np.nan, dtype=numerics.BF16)
    y = gemm(w, cupy.asarray(x), act=act, out=out).get()
    rows = _sample_rows(m, rng)
    err = rel_err(y[rows].astype(np.float32), gemm_ref(w_dense, x[rows], act))
    if not np.all(np.isfinite(y.astype(np.float32))):
        err = float("inf")  # an element never written (still NaN) fails the check
    return KernelCheck(name or w.name, "gemm", w.scheme, act, m, err, GEMM_BOUND)


def check_moe(experts, dense: tuple, router_w: np.ndarray, top_k: int, tokens: int, norm: str = "mixtral",
              norm_topk_prob: bool = True, act: str = "bf16", seed: int = 0, path: str | None = None,
              name: str = "moe") -> KernelCheck:
    """moe_forward on fresh random x [tokens, H] vs moe_reference with the GPU's routing (ties and
    near-ties may legitimately route differently, so the expert math is checked on the GPU's choice;
    the routing itself is checked against route_ref on tokens without a near-tie)."""
    import cupy

    from lowbit.kernels import moe, moe_router
    from lowbit.verify import moe_reference as ref

    rng = np.random.default_rng(seed)
    x = random_bf16(rng, (tokens, experts.hidden))
    xg, rg = cupy.asarray(x), cupy.asarray(numerics.to_bf16(router_w))
    ids, wts = moe_router.route(xg, rg, top_k, norm, norm_topk_prob)
    out = cupy.full((tokens, experts.hidden), np.nan, dtype=numerics.BF16)
    y = moe.moe_experts(xg, ids, wts, experts, act=act, path=path, out=out).get().astype(np.float32)
    ids_h, wts_h = ids.get(), wts.get()
    rids, rwts, logits = ref.route_ref(x, numerics.to_bf16(router_w), top_k, norm, norm_topk_prob)
    clear = ref.routing_margin(logits, top_k) > 1e-3
    same = np.all(np.sort(ids_h[clear], axis=1) == np.sort(rids[clear], axis=1))
    w_err = rel_err(np.sort(wts_h[clear], axis=1), np.sort(rwts[clear], axis=1)) if clear.any() else 0.0
    decode = path == "decode" or (path is None and tokens <= moe.DECODE_MAX_TOKENS)
    act_fn = (lambda v: dequant_act_ref(numerics.to_bf16(v))) if act == "fp8" and not decode else None
    gate, up, down = dense
    want = ref.moe_experts_ref(x, ids_h, wts_h, gate, up, down, act_fn=act_fn)
    err = rel_err(y, want)
    if not same or w_err > 1e-5:
        err = float("inf")
    return KernelCheck(name, "moe", experts.scheme, act, tokens, err, MOE_BOUND)
