"""The converter's fast numerics (bit tricks in lowbit.formats.numerics) give the same bytes as the
plain definitions: ml_dtypes' saturating cast for E4M3, the bound ladder for E2M1, and the
straightforward nibble / int32 packing loops. Inputs: every grid value and midpoint with their
float32 neighbours, random values over many scales and random bit patterns."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.formats import numerics as nm


def _around(grid: np.ndarray) -> np.ndarray:
    grid = np.unique(np.concatenate([grid, -grid]).astype(np.float32))
    mids = ((grid[1:].astype(np.float64) + grid[:-1]) / 2).astype(np.float32)
    pts = np.concatenate([grid, mids])
    return np.concatenate([pts, np.nextafter(pts, np.float32(np.inf)), np.nextafter(pts, np.float32(-np.inf)),
                           np.array([0.0, -0.0], np.float32)])


def _random(rng) -> list[np.ndarray]:
    out = [rng.standard_normal(200_000).astype(np.float32) * np.float32(s)
           for s in (1e-6, 1e-3, 2**-7, 0.05, 1, 3, 50, 448, 1e4)]
    bits = rng.integers(0, 2**32, 500_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return out + [bits[np.isfinite(bits)]]


def test_encode_e4m3_equals_ml_dtypes_cast():
    rng = np.random.default_rng(0)
    grid = np.arange(256, dtype=np.uint8).view(nm.E4M3).astype(np.float32)
    for x in [_around(grid[np.isfinite(grid)]), np.array([464, 480, 1e30, -1e30, 2**-10], np.float32),
              *_random(rng)]:
        want = np.clip(x, -448, 448).astype(nm.E4M3).view(np.uint8)
        np.testing.assert_array_equal(nm.encode_e4m3(x).view(np.uint8), want)


def test_encode_e2m1_equals_reference_ladder():
    rng = np.random.default_rng(1)
    for x in [_around(nm.E2M1_VALUES[:8]), np.array([7, 100, -1e9, 0.25, -0.25], np.float32),
              *_random(rng)]:
        np.testing.assert_array_equal(nm.encode_e2m1(x), nm.encode_e2m1_reference(x))


@pytest.mark.parametrize("shape", [(2,), (3, 16), (5, 4, 64)])
def test_packing_equals_plain_loops(shape):
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 16, shape, dtype=np.uint8)
    np.testing.assert_array_equal(nm.pack_nibbles(codes), (codes[..., 0::2] | (codes[..., 1::2] << 4)))
    if shape[-1] % 8 == 0:
        v = codes.astype(np.uint32).reshape(shape[:-1] + (shape[-1] // 8, 8))
        want = np.zeros(v.shape[:-1], np.uint32)
        for i in range(8):
            want |= v[..., i] << np.uint32(4 * i)
        np.testing.assert_array_equal(nm.pack_int32_lsb(codes), want.view(np.int32))
        np.testing.assert_array_equal(nm.unpack_int32_lsb(nm.pack_int32_lsb(codes), shape[-1]), codes)


@pytest.mark.parametrize("group", [16, 32, 64, 128])
def test_group_reduce_equals_reshape_reduction(group):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((7, group * 5)).astype(np.float32)
    a[3, 5] = np.nan  # NaN propagates as in .max()
    g = a.reshape(7, 5, group)
    np.testing.assert_array_equal(nm.group_reduce(a, group), g.max(-1))
    np.testing.assert_array_equal(nm.group_reduce(a, group, np.minimum), g.min(-1))
