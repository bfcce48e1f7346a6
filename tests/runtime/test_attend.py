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


@pytest.mark.gpu
@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("heads,kv_heads,d,t_len,span,window", CASES)
def test_attend_matches_numpy(monkeypatch, split, heads, kv_heads, d, t_len, span, window):
    import cupy

    from lowbit.runtime import cuda_attend, cuda_fused

    monkeypatch.setattr(cuda_attend, "ATTEND_SPLIT", split)
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
