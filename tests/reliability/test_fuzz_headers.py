"""Fuzz the checkpoint reader: random safetensors headers, byte-level mutations and index files.

Property: open_checkpoint (and reading every tensor it accepts) either succeeds or raises a
LowbitError subclass; never another exception. Bounded: ~200 examples per property, no deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowbit.errors import LowbitError
from lowbit.formats.checkpoint import INDEX_NAME, open_checkpoint
from lowbit.formats.safetensors_io import DTYPES

# CI: 200 fixed examples per property. LOWBIT_FUZZ_EXAMPLES=N runs N fresh random ones (a longer hunt).
_N = int(os.environ.get("LOWBIT_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_N or 200, deadline=None, derandomize=not _N, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CONFIG = json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=8))
json_values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                        st.dictionaries(st.text(max_size=6), c, max_size=4)),
                           max_leaves=12)
small_ints = st.one_of(st.integers(-4, 64), st.sampled_from([2**31, 2**63, 2**64 + 1]), st.booleans(),
                       st.floats(0, 10), st.text(max_size=3))
dtypes = st.one_of(st.sampled_from(sorted(DTYPES)), st.text(max_size=6), st.lists(st.integers(), max_size=2),
                   st.integers())
entries = st.one_of(
    st.fixed_dictionaries({"dtype": dtypes, "shape": st.one_of(st.lists(small_ints, max_size=3), json_values),
                           "data_offsets": st.one_of(st.lists(small_ints, min_size=0, max_size=3), json_values)}),
    json_values)
headers = st.one_of(
    st.dictionaries(st.sampled_from(["a", "b", "c", "__metadata__", "w.weight"]), entries, max_size=4),
    json_values)


def _check(root: Path) -> None:
    try:
        ck = open_checkpoint(root)
        for name in ck.names():
            np.asarray(ck.get(name)).sum()
            ck.read(name)
    except LowbitError:
        pass


def _dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="lowbit-fuzz-"))
    (d / "config.json").write_text(CONFIG)
    return d


@FUZZ
@given(header=headers, data_len=st.integers(0, 256), pad=st.booleans())
def test_random_headers(header, data_len, pad):
    d = _dir()
    try:
        body = json.dumps(header).encode()
        if pad:
            body += b" " * (-len(body) % 8)
        (d / "model.safetensors").write_bytes(struct.pack("<Q", len(body)) + body + bytes(data_len))
        _check(d)
    finally:
        shutil.rmtree(d)


def _valid_shard() -> bytes:
    h = {"__metadata__": {"format": "pt"},
         "a": {"dtype": "BF16", "shape": [2, 4], "data_offsets": [0, 16]},
         "b": {"dtype": "F8_E4M3", "shape": [3, 5], "data_offsets": [16, 31]}}
    body = json.dumps(h).encode()
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body + bytes(range(31))


VALID = _valid_shard()


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(1, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, len(VALID))),
       length=st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_mutated_valid_shard(flips, cut, length):
    raw = bytearray(VALID)
    for pos, mask in flips:
        raw[pos] ^= mask
    if length is not None:
        raw[:8] = struct.pack("<Q", length)
    if cut is not None:
        raw = raw[:cut]
    d = _dir()
    try:
        (d / "model.safetensors").write_bytes(bytes(raw))
        _check(d)
    finally:
        shutil.rmtree(d)


shard_names = st.one_of(st.sampled_from(["model-00001-of-00001.safetensors", "../x.safetensors",
                                         "/etc/passwd", "", ".", "sub/model.safetensors",
                                         "model.safetensors", "a\x00b", "config.json"]),
                        st.text(max_size=12), json_values)
indexes = st.one_of(
    st.fixed_dictionaries({"metadata": json_values,
                           "weight_map": st.one_of(st.dictionaries(st.sampled_from(["a", "b", "c"]),
                                                                   shard_names, max_size=4), json_values)}),
    json_values)


@FUZZ
@given(index=indexes, raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_random_index_files(index, raw):
    d = _dir()
    try:
        (d / "model-00001-of-00001.safetensors").write_bytes(VALID)
        (d / INDEX_NAME).write_bytes(raw if raw is not None else json.dumps(index).encode())
        _check(d)
    finally:
        shutil.rmtree(d)
