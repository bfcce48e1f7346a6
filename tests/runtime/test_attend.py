"""The decode attention kernels (device machine only) against a float64 numpy reference: one block per
head (attend_f32) and the split-key form (attend_split, flash-decoding), GQA, sliding window, bf16 output,
ranges that are empty, short or uneven, counters that reset between calls."""

from __future__ import annotations

import numpy as np
import pytest


def reference(q, k, v, t_len, group, window):
    heads, d = q.shape
    t0 = t_len - window if window and t_len > window else 0
    out = np.empty((heads, d))
    for h in range(heads):
        kk, vv = k[h // group, t0:t_len].astype(np.float64), v[h // group, t0:t_len].astype(np.float64)
        s = kk @ q[h].astype(np.float64) / np.sqrt(d)
        p = np.exp(s - s.max())
        out[h] = p @ vv / p.sum()
    return out


CASES = [  # heads, kv_heads, d, T, span, window
    (4, 4, 64, 1, 64, None), (8, 2, 128, 15, 64, None), (8, 2, 128, 16, 64, None), (8, 2, 128, 17, 64, None),
    (32, 8, 128, 41, 256, None), (6, 3, 64, 200, 256, None), (4, 1, 128, 1000, 1024, None),
    (8, 2, 64, 100, 128, 50), (4, 2, 128, 700, 1024, 300)]


def test_attend_splits_plan_the_ranges_and_their_shared_memory():
    """As many ranges as 16-key ranges fill the span, at most SPLIT_MAX (<= 32: one warp combines them);
    at any position below the span the kernel's ranges (per = max(16, ceil(T / splits))) cover every key
    and fit the shared memory the launcher sizes from the span."""
    from lowbit.runtime.cuda_attend import SPLIT_MAX, SPLIT_MIN_KEYS, attend_splits

    assert SPLIT_MAX <= 32
    for span in (1, 15, 16, 17, 64, 255, 256, 257, 1024, 8192):
        s = attend_splits(span)
        assert s == min(SPLIT_MAX, -(-span // SPLIT_MIN_KEYS))
        host_per = max(SPLIT_MIN_KEYS, -(-span // s))
        for t in range(1, span + 1):
            per = max(SPLIT_MIN_KEYS, -(-t // s))
            assert per * s >= t and per <= host_per


def test_attend_split_stages_ranges_that_fit_its_shared_memory():
    """The ranges' keys and values go to shared memory when, with the query and the scores, they fit STAGE_SMEM
    (the short spans of a chat's first graph buckets) and d is a multiple of 4 (16-byte copies); longer ranges
    are read from global memory. The sizes are those the kernel lays out."""
    from lowbit.runtime import cuda_attend as ca

    assert ca.split_smem(128, 16, False) == 4 * (128 + 16)
    assert ca.split_smem(128, 16, True) == 4 * (128 + 16 + 2 * 16 * 128)
    assert ca.split_smem(64, 17, True) == 4 * (64 + 20 + 2 * 17 * 64)
    if ca.ATTEND_STAGE:
        assert ca.split_stage(128, 16) and ca.split_stage(128, 32) and ca.split_stage(64, 64)
        assert not ca.split_stage(128, 64) and not ca.split_stage(256, 32) and not ca.split_stage(66, 16)


@pytest.mark.gpu
@pytest.mark.parametrize("split,stage", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("heads,kv_heads,d,t_len,span,window", CASES)
def test_attend_matches_numpy(monkeypatch, split, stage, heads, kv_heads, d, t_len, span, window):
    import cupy

    from lowbit.runtime import cuda_attend, cuda_fused

    monkeypatch.setattr(cuda_attend, "ATTEND_SPLIT", split)
    monkeypatch.setattr(cuda_attend, "ATTEND_STAGE", stage)
    fused = cuda_fused.Fused()
    seed = int(np.random.SeedSequence().entropy % 2**32)
    rng = np.random.default_rng(seed)
    max_ctx = span
    q = rng.standard_normal((heads, d), dtype=np.float32)
    k = rng.standard_normal((kv_heads, max_ctx, d), dtype=np.float32) * 2
    v = rng.standard_normal((kv_heads, max_ctx, d), dtype=np.float32)
    k[:, t_len:] = np.nan  # keys past the position must never be read
    v[:, t_len:] = np.nan
    ref = reference(q, k, v, t_len, heads // kv_heads, window)
    pos = cupy.asarray([t_len - 1], dtype=cupy.int32)
    kd, vd = cupy.asarray(k), cupy.asarray(v)
    for bf16 in (False, True, False):  # the third call: the split counters reset themselves
        got = fused.attend(cupy.asarray(q), kd, vd, pos, span, 1 / np.sqrt(d), window, bf16=bf16)
        got = cupy.asnumpy(got).astype(np.float64)
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err < (2**-8 if bf16 else 1e-5), f"seed {seed} split={split} bf16={bf16}: error {err:.2e}"


def qkv_reference(y, bias, qn, kn, cos, sin, p, heads, kv_heads, d, eps):
    """q [heads, d], k and v [kv_heads, d] of position p from the stacked q|k|v GEMV output (float64)."""
    rows = y.astype(np.float64).reshape(heads + 2 * kv_heads, d) + (0 if bias is None else bias.reshape(-1, d))

    def norm_rope(x, w):
        if w is not None:
            x = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w
        rot = np.concatenate([-x[:, d // 2:], x[:, :d // 2]], axis=-1)
        return x * cos[p] + rot * sin[p]

    return norm_rope(rows[:heads], qn), norm_rope(rows[heads:heads + kv_heads], kn), rows[heads + kv_heads:]


@pytest.mark.gpu
@pytest.mark.parametrize("stage", [True, False])
@pytest.mark.parametrize("norms,bias", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("heads,kv_heads,d,t_len,span,window", CASES)
def test_attend_fused_with_qkv_matches_numpy(monkeypatch, stage, norms, bias, heads, kv_heads, d, t_len, span,
                                             window):
    """attend(qkv=...): q, and the position's k and v, made from the q|k|v GEMV output inside attend_split
    (bias, q/k RMSNorm, RoPE) as qkv_rope_store makes them; the k and v land in the caches at the position,
    every other cache row is left as it was. Staged (the ranges' rows copied to shared memory before the PDL
    wait) and not."""
    import cupy

    from lowbit.formats.numerics import BF16
    from lowbit.runtime import cuda_attend, cuda_fused

    monkeypatch.setattr(cuda_attend, "ATTEND_STAGE", stage)

    fused = cuda_fused.Fused()
    seed = int(np.random.SeedSequence().entropy % 2**32)
    rng = np.random.default_rng(seed)
    max_ctx, p, eps = span, t_len - 1, 1e-6
    n = (heads + 2 * kv_heads) * d
    y = rng.standard_normal((1, n), dtype=np.float32).astype(BF16)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    qn = (1 + 0.3 * rng.standard_normal(d)).astype(np.float32) if norms else None
    kn = (1 + 0.3 * rng.standard_normal(d)).astype(np.float32) if norms else None
    ang = rng.uniform(0, 6.3, (max_ctx, d // 2)).astype(np.float32)
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1).astype(np.float32)
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1).astype(np.float32)
    k = rng.standard_normal((kv_heads, max_ctx, d), dtype=np.float32) * 2
    v = rng.standard_normal((kv_heads, max_ctx, d), dtype=np.float32)
    k[:, t_len:] = np.nan  # keys past the position must never be read
    v[:, t_len:] = np.nan
    k[:, p] = v[:, p] = np.nan  # the position's row is written by the kernel before it is read
    q_ref, k_ref, v_ref = qkv_reference(y, b, qn, kn, cos, sin, p, heads, kv_heads, d, eps)
    kf, vf = k.copy(), v.copy()
    kf[:, p], vf[:, p] = k_ref, v_ref
    ref = reference(q_ref, kf, vf, t_len, heads // kv_heads, window)
    kd, vd = cupy.asarray(k), cupy.asarray(v)
    dev = lambda a: None if a is None else cupy.asarray(a)  # noqa: E731
    qkv = dict(y=cupy.asarray(y), bias=dev(b), qn=dev(qn), kn=dev(kn), eps=eps, cos=cupy.asarray(cos),
               sin=cupy.asarray(sin), heads=heads)
    pos = cupy.asarray([p], dtype=cupy.int32)
    for _ in range(2):  # twice: the counters reset themselves
        got = cupy.asnumpy(fused.attend(None, kd, vd, pos, span, 1 / np.sqrt(d), window, bf16=True, qkv=qkv))
        err = np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max()
        assert err < 2**-7, f"seed {seed}: error {err:.2e}"
    kg, vg = cupy.asnumpy(kd), cupy.asnumpy(vd)
    np.testing.assert_allclose(kg[:, p], k_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vg[:, p], v_ref, rtol=1e-6, atol=1e-6)
    others = np.ones(max_ctx, bool)
    others[p] = False
    np.testing.assert_array_equal(kg[:, others], k[:, others])  # NaNs compare equal here
    np.testing.assert_array_equal(vg[:, others], v[:, others])
