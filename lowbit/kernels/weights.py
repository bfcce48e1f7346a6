"""Quantized weights on the GPU: `GpuWeight` and `to_gpu`, the one object every kernel takes.

`to_gpu(scheme, tensors, **opts)` takes the on-disk tensors of ONE linear (numpy or cupy arrays, keyed by
the suffixes of `lowbit.formats.<scheme>.tensor_layout`, or `{"weight": bf16 [N, K]}` for scheme "bf16"),
checks them against that layout and copies them to the current device unchanged:

    bf16       weight            bf16   [N, K]
    fp8-block  weight            uint8  [N, K]          (F8_E4M3 bytes)
               weight_scale_inv  f32    [ceil(N/128), ceil(K/128)]  (bf16/f16 scales are cast to f32)
    nvfp4      weight_packed     uint8  [N, K/2]        (low nibble first)
               weight_scale      uint8  [N, K/16]       (E4M3 bytes)
               weight_global_scale f32  [1]             (a divisor)
    int4       weight_packed     int32  [N, K/8]        (LSB first, q+8)
               weight_scale      bf16   [N, K/G]
               weight_zero_point int32  [ceil(N/8), K/G] (asymmetric only)

Every scale and zero-point tensor on the GPU is followed by at least TAIL_BYTES bytes of its own allocation
(TAILED): some kernels read whole aligned words past a row's last scale (gemm_w16_tma_sm90.cu's scale copies),
and past the tensor's last row that must stay inside the allocation (compute-sanitizer caught the read on an
int4 weight of 9 groups a row).

NO repack happens: the GEMV kernels read the on-disk layouts directly (the only conversion is a dtype cast of
non-f32 fp8 scales to f32). A leading expert dimension E is allowed on every tensor (stacked MoE
experts: all tensors [E, ...], nvfp4 global scale [E] or [E, 1]); `GpuWeight.expert(i)` is a zero-copy view.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lowbit.errors import KernelError

SCHEMES = ("bf16", "fp8-block", "nvfp4", "int4")

#: dtype each tensor has on the GPU (numpy dtype names; bf16 = ml_dtypes.bfloat16)
_GPU_DTYPES = {
    ("bf16", "weight"): "bfloat16",
    ("fp8-block", "weight"): "uint8",
    ("fp8-block", "weight_scale_inv"): "float32",
    ("nvfp4", "weight_packed"): "uint8",
    ("nvfp4", "weight_scale"): "uint8",
    ("nvfp4", "weight_global_scale"): "float32",
    ("int4", "weight_packed"): "int32",
    ("int4", "weight_scale"): "bfloat16",
    ("int4", "weight_zero_point"): "int32",
}


#: bytes of the allocation every scale / zero-point tensor keeps past its end (never used; module docstring)
TAIL_BYTES = 16
#: the tensors kernels read in whole aligned words that may run past their end. The packed weights are left
#: out: their rows are 16-byte multiples or read through TMA (which bounds-checks), and padding them copied
#: gigabytes at load. With the scales tailed, compute-sanitizer memcheck over the multi-model decode sequence
#: (every scheme's GEMV, GEMM and MoE kernels; cupy's pool on, so only reads past a pool block show) found
#: nothing more (H200, 2026-11-27).
TAILED = ("weight_scale", "weight_scale_inv", "weight_zero_point", "weight_global_scale")


def _tail_room(a) -> int:
    """Bytes of a's allocation past a's end (cupy pool blocks are rounded up to 512 bytes)."""
    mem = a.data.mem
    return int(mem.ptr + mem.size - (a.data.ptr + a.nbytes))


def with_tail(a):
    """a itself where its allocation runs >= TAIL_BYTES past its end, else a contiguous copy in one that does
    (zeroed tail). Host arrays and non-contiguous views are returned as they are."""
    if not type(a).__module__.startswith("cupy") or not a.flags.c_contiguous or _tail_room(a) >= TAIL_BYTES:
        return a
    import cupy

    buf = cupy.zeros(a.nbytes + TAIL_BYTES, cupy.uint8)
    out = buf[:a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@dataclass
class GpuWeight:
    """One quantized linear (or a stack of E experts) resident on the GPU, in the on-disk layout."""

    scheme: str
    n: int
    k: int
    tensors: dict = field(default_factory=dict)  # suffix -> cupy array
    opts: dict = field(default_factory=dict)  # int4: group_size, asymmetric
    experts: int | None = None  # leading expert dim E, or None for one linear
    name: str = "weight"  # for error messages

    def __post_init__(self):
        self.tensors = {s: with_tail(t) if s in TAILED else t for s, t in self.tensors.items()}

    @property
    def group_size(self) -> int:
        return int(self.opts.get("group_size", 128))

    @property
    def asymmetric(self) -> bool:
        return bool(self.opts.get("asymmetric", False))

    def nbytes(self) -> int:
        """Bytes a GEMV reads from the weight (every tensor, scales and zero points included)."""
        return int(sum(t.nbytes for t in self.tensors.values()))

    def expert(self, i: int) -> "GpuWeight":
        """A zero-copy view of expert i of a stacked weight."""
        if self.experts is None:
            raise KernelError(f"{self.name}: expert({i}) asked of a weight with no expert dimension")
        if not 0 <= i < self.experts:
            raise KernelError(f"{self.name}: expert index {i} out of range 0..{self.experts - 1}")
        views = {s: t[i] for s, t in self.tensors.items()}
        if "weight_global_scale" in views:
            views["weight_global_scale"] = views["weight_global_scale"].reshape(1)
        return GpuWeight(self.scheme, self.n, self.k, views, dict(self.opts), None, f"{self.name}[{i}]")

    def dequantize(self):
        """float32 [N, K] (or [E, N, K]) on the GPU via the numpy reference (for fallbacks and tests)."""
        import cupy

        if self.experts is not None:
            return cupy.stack([self.expert(i).dequantize() for i in range(self.experts)])
        if self.scheme == "bf16":
            return self.tensors["weight"].astype(cupy.float32)
        return cupy.asarray(reference_dequantize(self.scheme, to_host(self), self.n, self.k))


def to_host(w: GpuWeight) -> dict[str, np.ndarray]:
    """The on-disk tensors (numpy) of a 2-D GpuWeight, fp8 bytes as ml_dtypes types, weight_shape added."""
    from lowbit.formats import numerics

    out = {s: t.get() for s, t in w.tensors.items()}
    if w.scheme == "fp8-block":
        out["weight"] = out["weight"].view(numerics.E4M3)
    if w.scheme == "nvfp4":
        out["weight_scale"] = out["weight_scale"].view(numerics.E4M3)
    if w.scheme == "int4":
        out["weight_shape"] = np.array([w.n, w.k], np.int64)
    return out


def reference_dequantize(scheme: str, tensors: dict, n: int, k: int) -> np.ndarray:
    from lowbit.formats import scheme_module

    if scheme == "bf16":
        return np.asarray(tensors["weight"]).astype(np.float32)
    return scheme_module(scheme).dequantize(tensors)


def _shape_of(tensors: dict, suffix: str, name: str) -> tuple[int, ...]:
    if suffix not in tensors:
        raise KernelError(f"{name}: tensor '{suffix}' is missing; pass every tensor of the scheme's layout")
    return tuple(int(d) for d in tensors[suffix].shape)


def _infer_nk(scheme: str, tensors: dict, opts: dict, name: str) -> tuple[int, int, int | None]:
    """(N, K, E) from the main tensor's shape (and weight_shape for int4)."""
    main = "weight" if scheme in ("bf16", "fp8-block") else "weight_packed"
    shape = _shape_of(tensors, main, name)
    if len(shape) not in (2, 3):
        raise KernelError(f"{name}.{main}: expected 2-D [N, K] or 3-D [E, N, K], found shape {shape}")
    e = shape[0] if len(shape) == 3 else None
    n, kk = shape[-2], shape[-1]
    k = {"bf16": kk, "fp8-block": kk, "nvfp4": kk * 2, "int4": kk * 8}[scheme]
    if scheme == "int4" and "weight_shape" in tensors:
        ws = np.asarray(tensors["weight_shape"].get() if hasattr(tensors["weight_shape"], "get")
                        else tensors["weight_shape"]).reshape(-1, 2)[0]
        if int(ws[0]) != n or int(ws[1]) != k:
            raise KernelError(f"{name}.weight_shape says {tuple(int(v) for v in ws)} but weight_packed "
                              f"{shape} gives [{n}, {k}]: the checkpoint is inconsistent, re-convert it")
    return n, k, e


def _expected_layout(scheme: str, n: int, k: int, opts: dict) -> dict[str, tuple[int, ...]]:
    if scheme == "bf16":
        return {"weight": (n, k)}
    from lowbit.formats import scheme_module

    mod = scheme_module(scheme)
    why = mod.unsupported_reason(n, k, **opts)
    if why:
        raise KernelError(f"{scheme} weight [{n}, {k}] is not supported by the kernels: {why}")
    lay = {s: shp for s, (_dt, shp) in mod.tensor_layout(n, k, **opts).items()}
    lay.pop("weight_shape", None)
    return lay


def _to_device(arr, dtype: str):
    """Copy to the current device, reinterpreting fp8 bytes as uint8 and casting bf16/f16 scales to f32."""
    import cupy
    import ml_dtypes

    want = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    if isinstance(arr, np.ndarray):
        if want == np.uint8 and arr.dtype.itemsize == 1:
            arr = arr.view(np.uint8)
        elif arr.dtype != want:
            arr = arr.astype(want)
        return cupy.asarray(np.ascontiguousarray(arr))
    g = cupy.ascontiguousarray(arr)
    if g.dtype == want:
        return g
    if want == np.uint8 and g.dtype.itemsize == 1:
        return g.view(np.uint8)
    return g.astype(want)


def check_layout(scheme: str, tensors: dict, opts: dict, name: str = "weight") -> tuple[int, int, int | None]:
    """Validate tensor names and shapes against the scheme's layout; return (N, K, E). No GPU needed."""
    if scheme not in SCHEMES:
        raise KernelError(f"{name}: unknown scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    n, k, e = _infer_nk(scheme, tensors, opts, name)
    for suffix, shape in _expected_layout(scheme, n, k, opts).items():
        found = _shape_of(tensors, suffix, name)
        want = shape if e is None else (e,) + tuple(shape)
        ok = found == want or (suffix == "weight_global_scale" and e is not None and found == (e,))
        if not ok:
            raise KernelError(f"{name}.{suffix}: expected shape {want} for a {scheme} weight [{n}, {k}]"
                              f"{'' if e is None else f' x {e} experts'}, found {found}; re-convert the tensor")
    extra = set(tensors) - set(_expected_layout(scheme, n, k, opts)) - {"weight_shape"}
    if extra:
        raise KernelError(f"{name}: unexpected tensors {sorted(extra)} for scheme {scheme} with options {opts};"
                          f" pass asymmetric=True for weight_zero_point, or drop them")
    return n, k, e


def to_gpu(scheme: str, tensors: dict, *, name: str = "weight", **opts) -> GpuWeight:
    """Validate and upload one linear's on-disk tensors. opts: int4 `group_size`, `asymmetric`."""
    if scheme == "int4":
        g = opts.get("group_size")
        if g is None and "weight_scale" in tensors and "weight_packed" in tensors:
            g = tensors["weight_packed"].shape[-1] * 8 // max(1, tensors["weight_scale"].shape[-1])
        opts = {"group_size": int(g or 128), "asymmetric": bool(opts.get("asymmetric", False))}
        if "weight_zero_point" in tensors:
            opts["asymmetric"] = True
    else:
        opts = {}
    n, k, e = check_layout(scheme, tensors, opts, name)
    gpu = {}
    for suffix in _expected_layout(scheme, n, k, opts):
        g = _to_device(tensors[suffix], _GPU_DTYPES[(scheme, suffix)])
        if suffix == "weight_global_scale" and e is not None:
            g = g.reshape(e, 1)
        gpu[suffix] = g
    return GpuWeight(scheme, n, k, gpu, opts, e, name)
