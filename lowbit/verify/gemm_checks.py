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

import re
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


# ---- `lowbit verify` hooks (registered on import by lowbit.verify.runner) -------------------------------
VERIFY_MS = (64, 1024)
_EXPERT0 = re.compile(r"^(?P<base>.+)\.experts\.0\.(?P<proj>gate_proj|w1)$")
_PROJ_NAMES = {"gate_proj": ("gate_proj", "up_proj", "down_proj"), "w1": ("w1", "w3", "w2")}


def _result(r: KernelCheck, target: str):
    from lowbit.verify.checks import fail, passed

    check = f"{r.kind} {'T' if r.kind == 'moe' else 'M'}={r.m} {r.act}"
    detail = f"rel err {r.rel_err:.2e} (bound {r.bound:.0e}) vs float64 reference"
    if r.passed:
        return passed(target, check, detail, value=round(r.rel_err, 6), limit=r.bound, badness=r.rel_err / r.bound)
    out = fail(target, check, detail, value=r.rel_err if np.isfinite(r.rel_err) else None, limit=r.bound)
    out.badness = r.rel_err / r.bound if np.isfinite(r.rel_err) else 1e9
    return out


def gemm_tensor_check(ctx, lin) -> list:
    """The prefill GEMM of every quantized linear at M=64 and M=1024 (W8A8 too for fp8-block)."""
    if not ctx.gpu:
        return []
    from lowbit.verify.checks import passed

    if lin.k % 32:
        return [passed(lin.prefix, "gemm", f"K={lin.k} is not a multiple of 32: GEMM uses the dequantize fallback")]
    from lowbit.kernels.weights import to_gpu

    t = ctx.tensors(lin)
    w = to_gpu(ctx.scheme, t, name=lin.prefix, **ctx.opts)
    dense = dense_weight(ctx.scheme, t)
    acts = ("bf16", "fp8") if ctx.scheme == "fp8-block" else ("bf16",)
    seed = int(ctx.rng(lin).integers(1 << 31))
    return [_result(check_gemm(w, dense, m, act=a, seed=seed + m), lin.prefix) for m in VERIFY_MS for a in acts]


class _LazyExperts:
    """experts[e] -> float32 dequantized [N, K] of one projection, made on first use (only routed experts)."""

    def __init__(self, ctx, names: list[dict]):
        self.ctx, self.names, self.cache = ctx, names, {}

    def __getitem__(self, e):
        e = int(e)
        if e not in self.cache:
            t = {s: np.asarray(self.ctx.ck.get(n)) for s, n in self.names[e].items()}
            self.cache[e] = dense_weight(self.ctx.scheme, t)
        return self.cache[e]


def moe_layer_check(ctx, lin) -> list:
    """Once per MoE layer (on its expert 0 gate): the MoE path, decode (1 token) and prefill (8 tokens)."""
    m = _EXPERT0.match(lin.prefix)
    if not ctx.gpu or m is None:
        return []
    from lowbit.formats import scheme_module
    from lowbit.kernels.moe import MoeWeights

    cfg = ctx.ck.config
    n_exp = int(cfg.get("num_experts") or cfg.get("num_local_experts") or 0)
    top_k = int(cfg.get("num_experts_per_tok", 2))
    norm = "mixtral" if cfg.get("model_type") == "mixtral" else "qwen3"
    base, projs = m.group("base"), _PROJ_NAMES[m.group("proj")]
    suffixes = ["weight"] if ctx.scheme == "bf16" else list(scheme_module(ctx.scheme).tensor_layout(8, 128, **ctx.opts))
    have = set(ctx.ck.names())
    names = [{p: {s: f"{base}.experts.{e}.{proj}.{s}" for s in suffixes if f"{base}.experts.{e}.{proj}.{s}" in have}
              for p, proj in zip(("gate", "up", "down"), projs)} for e in range(n_exp)]
    from lowbit.verify.checks import passed

    target = f"{base}.experts"
    if n_exp == 0 or any(len(d[p]) != len(suffixes) for d in names for p in d):
        return [passed(target, "moe", f"MoE path not run: experts are not all stored as {ctx.scheme} "
                                      f"({n_exp} experts in config.json)")]
    if lin.k % 32 or lin.n % 32:
        return [passed(target, "moe", f"MoE path not run: hidden {lin.k} / expert {lin.n} not multiples of 32")]
    experts = [{p: {s: np.asarray(ctx.ck.get(n)) for s, n in d[p].items()} for p in d} for d in names]
    mw = MoeWeights.from_checkpoint_tensors(ctx.scheme, experts, name=f"{base}.experts", **ctx.opts)
    del experts
    dense = tuple(_LazyExperts(ctx, [d[p] for d in names]) for p in ("gate", "up", "down"))
    router = np.asarray(ctx.ck.get(f"{base}.gate.weight")).astype(np.float32)
    seed = int(ctx.rng(lin).integers(1 << 31))
    out = []
    for tokens, path in ((1, "decode"), (8, "prefill")):
        for act in (("bf16", "fp8") if ctx.scheme == "fp8-block" and path == "prefill" else ("bf16",)):
            r = check_moe(mw, dense, router, top_k, tokens, norm=norm, norm_topk_prob=bool(cfg.get("norm_topk_prob", True)),
                          act=act, seed=seed + tokens, path=path, name=target)
            out.append(_result(r, target))
    return out


def _register() -> None:
    try:
        from lowbit.verify.checks import register_tensor_check
    except ImportError:  # the verify package without its check registry
        return
    register_tensor_check(gemm_tensor_check)
    register_tensor_check(moe_layer_check)


_register()
