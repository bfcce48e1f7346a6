"""Sampler: greedy, penalties, top-k / top-p support, seeded reproducibility, distribution."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.errors import LowbitError
from lowbit.runtime.sampler import Sampler, SamplingParams

LOGITS = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))


def draws(params, n=2000, logits=LOGITS):
    s = Sampler(np, params)
    return np.array([s(logits) for _ in range(n)])


def test_greedy_is_argmax():
    assert Sampler(np, SamplingParams())(np.array([0.1, 3.0, -1.0, 2.9], np.float32)) == 1


def test_repetition_penalty_as_transformers():
    # positive logit 3.0 / 2 = 1.5 < 2.9, so the seen token 1 loses to token 3
    s = Sampler(np, SamplingParams(repetition_penalty=2.0))
    assert s(np.array([0.1, 3.0, -1.0, 2.9], np.float32), seen=np.array([1, 1])) == 3
    # negative logits are multiplied: -1 * 2 = -2 stays below 0.1, token 0 still wins among the rest
    assert s(np.array([0.1, -1.0], np.float32), seen=np.array([1])) == 0


def test_top_k_and_top_p_restrict_support():
    assert set(draws(SamplingParams(temperature=1.0, top_k=2, seed=0))) == {0, 1}
    # top_p 0.7: 0.5 alone < 0.7, 0.5 + 0.3 reaches it -> tokens {0, 1}
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.7, seed=0))) == {0, 1}
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.5, seed=0))) == {0}


def test_temperature_one_follows_the_distribution():
    freq = np.bincount(draws(SamplingParams(temperature=1.0, seed=1), n=20000), minlength=4) / 20000
    # 20000 draws: the std of a frequency is <= 0.0036, so 0.015 is > 4 sigma
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.015)


def test_seed_reproducible_and_seeds_differ():
    p = SamplingParams(temperature=1.0, seed=7)
    a, b = draws(p, 200), draws(p, 200)
    assert (a == b).all()
    assert not (a == draws(SamplingParams(temperature=1.0, seed=8), 200)).all()


def test_bad_options_raise():
    with pytest.raises(LowbitError):
        SamplingParams(top_p=0.0).check()
