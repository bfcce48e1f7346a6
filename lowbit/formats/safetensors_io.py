"""safetensors at the byte level: validate a header, memmap a tensor, stream-write a shard.

The format: 8-byte little-endian header length n, n bytes of JSON (padded with spaces so the data
starts at a multiple of 8), then the data section. Each header entry has `dtype`, `shape` and
`data_offsets` [begin, end) relative to the data section. `__metadata__` maps str -> str.

We read through our own parser because `safetensors.numpy` cannot read F8_E4M3 and because we
validate every entry (offsets in range, no overlap, dtype*shape == length) before any work starts.
The writer knows every tensor of a shard up front (from the plan), writes the header first and
then takes tensor bytes in any order at known offsets, so memory stays bounded by one chunk.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
from pathlib import Path

import ml_dtypes
import numpy as np

from lowbit.errors import CheckpointError

#: safetensors dtype string -> numpy dtype
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_NP_TO_ST = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


def st_dtype(arr_or_dtype) -> str:
    """safetensors dtype string of a numpy array or dtype."""
    dt = np.dtype(getattr(arr_or_dtype, "dtype", arr_or_dtype))
    try:
        return _NP_TO_ST[dt]
    except KeyError:
        raise CheckpointError(f"numpy dtype {dt} has no safetensors equivalent") from None


def nbytes_of(dtype: str, shape) -> int:
    return DTYPES[dtype].itemsize * math.prod(shape)


def _bad(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}; the file is truncated or corrupt: re-download or re-create it")


def _check_entry(path: Path, name: str, e, data_len: int) -> tuple[int, int]:
    if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= e.keys():
        raise _bad(path, f"tensor {name!r} header entry {e!r} lacks dtype/shape/data_offsets")
    if not isinstance(e["dtype"], str) or e["dtype"] not in DTYPES:
        raise CheckpointError(
            f"{path}: tensor {name!r} has dtype {e['dtype']!r}, which lowbit cannot read "
            f"(known: {', '.join(DTYPES)}); convert the source to BF16 first")
    shape, offs = e["shape"], e["data_offsets"]
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise _bad(path, f"tensor {name!r} has invalid shape {shape!r}")
    if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)):
        raise _bad(path, f"tensor {name!r} has invalid data_offsets {offs!r}")
    begin, end = offs
    if not 0 <= begin <= end:
        raise _bad(path, f"tensor {name!r} has data_offsets {offs} out of order")
    if end > data_len:
        raise _bad(path, f"tensor {name!r} ends at data byte {end} but the file holds {data_len} data bytes")
    want = nbytes_of(e["dtype"], shape)
    if end - begin != want:
        raise _bad(path, f"tensor {name!r} {e['dtype']}{shape} needs {want} bytes but its "
                         f"data_offsets {offs} span {end - begin}")
    return begin, end


def read_header(path: Path) -> tuple[dict, int]:
    """(validated header without __metadata__, absolute offset of the data section)."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise _bad(path, f"only {size} bytes, less than the 8-byte header length")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(size - 8, MAX_HEADER):
            raise _bad(path, f"header length {n} exceeds the file size {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # RecursionError: [[[[...
        raise _bad(path, f"header is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    header.pop("__metadata__", None)
    data_len = size - 8 - n
    spans = sorted((_check_entry(path, k, v, data_len), k) for k, v in header.items())
    prev_end, prev_name = 0, None
    for (begin, end), name in spans:
        if begin < prev_end:
            raise _bad(path, f"tensors {prev_name!r} and {name!r} overlap")
        prev_end, prev_name = end, name
    return header, 8 + n


def memmap_tensor(path: Path, data_start: int, entry: dict) -> np.ndarray:
    """Read-only memmap of one tensor (unmapped when the array is dropped)."""
    dtype = DTYPES[entry["dtype"]]
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if end == begin:
        return np.zeros(shape, dtype)
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start + begin, shape=(end - begin,))
    return raw.view(dtype).reshape(shape)


def read_tensor_rows(path: Path, data_start: int, entry: dict, row0: int = 0, rows: int | None = None
                     ) -> np.ndarray:
    """A fresh (owned, writable) copy of rows [row0, row0+rows) of a tensor, read with pread.

    Reading by pread instead of through a long-lived memmap keeps the resident set bounded.
    """
    dtype = DTYPES[entry["dtype"]]
    shape = tuple(entry["shape"])
    if not shape:
        row0, rows, row_shape = 0, 1, ()
    else:
        rows = shape[0] - row0 if rows is None else rows
        if row0 < 0 or rows < 0 or row0 + rows > shape[0]:  # would silently read the next tensor
            raise ValueError(f"rows [{row0}, {row0 + rows}) outside tensor rows [0, {shape[0]})")
        row_shape = shape[1:]
    row_bytes = dtype.itemsize * math.prod(row_shape)
    out = np.empty((rows * row_bytes,), np.uint8)
    start = data_start + entry["data_offsets"][0] + row0 * row_bytes
    with open(path, "rb", buffering=0) as f:
        view, pos = memoryview(out), 0
        while pos < len(out):
            got = os.pread(f.fileno(), len(out) - pos, start + pos)
            if not got:
                raise _bad(Path(path), "unexpected end of file while reading")
            view[pos:pos + len(got)] = got
            pos += len(got)
    arr = out.view(dtype)
    return arr.reshape(shape) if not shape else arr.reshape((rows,) + row_shape)


class ShardWriter:
    """Streaming writer of one safetensors file whose tensors are all known up front.

    `tensors` maps name -> (safetensors dtype, shape). Header keys and data are in sorted-name
    order, so the bytes depend only on the plan and the tensor values. Call `write(name, array,
    offset)` any number of times (offset in bytes within the tensor) until every byte is written;
    `close()` checks that and raises if a tensor is incomplete.
    """

    def __init__(self, path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        pos = 0
        for name in sorted(tensors):
            dtype, shape = tensors[name]
            n = nbytes_of(dtype, shape)
            self.entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
            pos += n
        self.data_len = pos
        header = {"__metadata__": dict(metadata or {"format": "pt"}), **self.entries}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.data_start = 8 + len(raw)
        self._written = {name: 0 for name in self.entries}
        self._lock = threading.Lock()
        self._f = open(self.path, "wb")
        self._f.write(struct.pack("<Q", len(raw)) + raw)
        self._f.truncate(self.data_start + self.data_len)

    def write(self, name: str, array: np.ndarray, offset: int = 0) -> None:
        e = self.entries[name]
        data = np.ascontiguousarray(array)
        if data.dtype != DTYPES[e["dtype"]]:
            raise CheckpointError(f"{self.path}: tensor {name!r} expects {e['dtype']} but got "
                                  f"{st_dtype(data)} (internal: the plan and the quantizer disagree)")
        begin, end = e["data_offsets"]
        if begin + offset + data.nbytes > end:
            raise CheckpointError(f"{self.path}: write to {name!r} at {offset}+{data.nbytes} overruns "
                                  f"its {end - begin} bytes (internal: plan/quantizer mismatch)")
        os.pwrite(self._f.fileno(), memoryview(data.reshape(-1).view(np.uint8)),
                  self.data_start + begin + offset)
        with self._lock:
            self._written[name] += data.nbytes

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.close()
        short = [n for n, e in self.entries.items()
                 if self._written[n] != e["data_offsets"][1] - e["data_offsets"][0]]
        if short:
            raise CheckpointError(f"{self.path}: tensors {short[:3]} were not completely written "
                                  "(internal error in the converter)")

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def save_file(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write a whole dict of arrays (small files; the same byte layout as ShardWriter)."""
    layout = {k: (st_dtype(v), tuple(np.shape(v))) for k, v in tensors.items()}
    with ShardWriter(path, layout, metadata) as w:
        for k, v in tensors.items():
            w.write(k, np.asarray(v))
