"""Golden tests for the element formats: every code, every byte, ties, -0, saturation, packing."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lowbit.formats import numerics as nm


def test_every_e2m1_code_decodes_to_the_spec_table():
    # formats.md 5.1: codes 0..7 = 0, .5, 1, 1.5, 2, 3, 4, 6; 8..15 the negatives (8 = -0)
    want = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]
    got = nm.decode_e2m1(np.arange(16, dtype=np.uint8))
    np.testing.assert_array_equal(got, np.array(want, np.float32))
    assert np.signbit(got[8]) and not np.signbit(got[0])


def test_every_e2m1_value_encodes_back_to_its_code():
    codes = np.arange(16, dtype=np.uint8)
    np.testing.assert_array_equal(nm.encode_e2m1(nm.decode_e2m1(codes)), codes)


@pytest.mark.parametrize("x, code", [
    (0.25, 0), (0.75, 2), (1.25, 2), (1.75, 4), (2.5, 4), (3.5, 6), (5.0, 6),   # ties go to the even code
    (0.2500001, 1), (0.7499999, 1), (4.9999, 6), (5.0001, 7),
    (6.0, 7), (7.0, 7), (1e30, 7),                                               # saturation at 6
    (-0.25, 8), (-0.0, 8), (-0.1, 8), (-5.0, 14), (-7.0, 15),                   # sign from the sign bit
])
def test_e2m1_rounding_ties_to_even_and_saturation(x, code):
    assert nm.encode_e2m1(np.array([x], np.float32))[0] == code


def test_all_256_e4m3_bytes_round_trip():
    b = np.arange(256, dtype=np.uint8)
    vals = nm.decode_e4m3(b)
    finite = ~np.isnan(vals)
    assert (~finite).sum() == 2  # 0x7F and 0xFF are the only NaNs of e4m3fn
    back = nm.encode_e4m3(vals[finite]).view(np.uint8)
    np.testing.assert_array_equal(back, b[finite])  # -0 (0x80) included
    assert nm.decode_e4m3(np.array([0x7E], np.uint8))[0] == 448.0
    assert nm.decode_e4m3(np.array([0x01], np.uint8))[0] == 2.0**-9  # smallest subnormal


@pytest.mark.parametrize("x, want", [
    (1.0625, 1.0),       # halfway between 1.0 (mantissa 000) and 1.125 (001): to even
    (1.1875, 1.25),      # halfway between 1.125 (001) and 1.25 (010): to even
    (2.0**-10, 0.0),     # half the smallest subnormal: to even (zero)
    (3 * 2.0**-10, 2.0**-8),
    (449.0, 448.0), (500.0, 448.0), (1e30, 448.0), (-1e30, -448.0),  # saturate, never NaN
])
def test_e4m3_rne_and_saturation(x, want):
    got = nm.encode_e4m3(np.array([x], np.float32)).astype(np.float32)[0]
    assert got == want


def test_e4m3_negative_zero_keeps_its_sign():
    assert nm.encode_e4m3(np.array([-0.0], np.float32)).view(np.uint8)[0] == 0x80


def test_pack_nibbles_low_nibble_first_golden():
    codes = np.array([[1, 2, 15, 0]], np.uint8)
    np.testing.assert_array_equal(nm.pack_nibbles(codes), np.array([[0x21, 0x0F]], np.uint8))


def test_pack_int32_lsb_golden():
    vals = np.arange(8, dtype=np.uint8)[None, :]  # element i at bits 4i
    assert nm.pack_int32_lsb(vals)[0, 0] == 0x76543210
    top = np.array([[15] * 8], np.uint8)
    assert nm.pack_int32_lsb(top)[0, 0] == -1  # 0xFFFFFFFF as int32


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                  elements=st.integers(0, 15)))
def test_nibble_pack_unpack_roundtrip(codes):
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, codes[..., :1]], axis=-1)
    np.testing.assert_array_equal(nm.unpack_nibbles(nm.pack_nibbles(codes)), codes)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40),
                  elements=st.integers(0, 15)), st.sampled_from([0, 1, -1]))
def test_int32_pack_unpack_roundtrip_any_length_and_axis(vals, axis):
    length = vals.shape[axis]
    packed = nm.pack_int32_lsb(vals, axis=axis)
    assert packed.dtype == np.int32 and packed.shape[axis] == -(-length // 8)
    np.testing.assert_array_equal(nm.unpack_int32_lsb(packed, length, axis=axis), vals)
