"""The CUDA backend: weights resident on the GPU in their on-disk layout, our kernels for every matmul.

Linear modules go to `lowbit.kernels.weights.to_gpu` once (BF16 ones as scheme "bf16") and run through
`lowbit.kernels.linear.linear` (GEMV for M <= 16 tokens, GEMM above); stacked MoE experts go to
`lowbit.kernels.moe.MoeWeights` and `moe_experts` (one launch for all chosen experts), routing
through `lowbit.kernels.moe_router.topk`. Activations between kernels are float32 cupy arrays (the
kernels take and return bf16). `decode_step` replays a CUDA graph of the whole one-token forward,
captured once per context bucket (positions below `span` share a graph: the position lives in a
device buffer, see kv_cache.DevicePos); where capture fails it logs once and runs the same code eagerly.
"""

from __future__ import annotations

import logging
import os
import re
import weakref

import numpy as np

from lowbit.formats.checkpoint import Checkpoint
from lowbit.runtime.config import ModelConfig
from lowbit.runtime.kv_cache import DevicePos
from lowbit.runtime.weights import module_layout, module_tensors

log = logging.getLogger(__name__)
BUCKET = 256
#: decode: add_rms_norm + router in one kernel (moe_router.route_add_norm); LOWBIT_ROUTER_ADD_NORM=0: two
ROUTER_ADD_NORM = os.environ.get("LOWBIT_ROUTER_ADD_NORM", "1") != "0"
_EXPERT = re.compile(r"(.*)\.experts\.(\d+)\.(\w+)$")


class CudaOps:
    def __init__(self, ckpt: Checkpoint, cfg: ModelConfig, cuda_graph: bool = True, act: str = "bf16",
                 fused: bool = True):
        import cupy

        from lowbit.formats.numerics import BF16

        self.xp, self.cfg, self.act, self.bf16 = cupy, cfg, act, BF16
        self.quant_opts = _int4_opts(ckpt)
        self.lin, self.vec, experts = {}, {}, {}
        for prefix in _modules(ckpt):
            m = _EXPERT.fullmatch(prefix)
            if m:
                experts.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = prefix
            else:
                self.lin[prefix] = self._upload(ckpt, prefix)
        for name in ckpt.names():
            if len(ckpt.shape(name)) == 1 and not name.endswith(("weight_global_scale", "weight_shape")):
                self.vec[name] = cupy.asarray(np.asarray(ckpt.get(name), dtype=np.float32))
        self.embed_w = cupy.asarray(np.asarray(ckpt.get("model.embed_tokens.weight")))
        if "lm_head" not in self.lin:
            from lowbit.kernels.weights import to_gpu

            self.lin["lm_head"] = to_gpu("bf16", {"weight": self.embed_w}, name="lm_head (tied)")
        self.moe = {p: self._upload_experts(ckpt, p, e) for p, e in experts.items()}
        if cuda_graph and any(w is None for w in self.moe.values()):
            log.info("experts run one by one (host sync per layer): CUDA graph decode is off")
            cuda_graph = False
        self.fused = _fused(fused)
        self._fuse_linears()
        self.decoder = _GraphDecoder(self, capture=cuda_graph)

    def _upload(self, ckpt, prefix):
        from lowbit.kernels.weights import to_gpu

        layout, t = module_tensors(ckpt, prefix)
        if layout == "dense":
            return to_gpu("bf16", {"weight": np.asarray(t["weight"]).astype(self.bf16)}, name=prefix)
        return to_gpu(layout, t, name=prefix, **(self.quant_opts if layout == "int4" else {}))

    def _upload_experts(self, ckpt, p: str, experts: dict):
        """MoeWeights for a layer's experts, or a per-expert dict when the kernel cannot take them."""
        from lowbit.errors import KernelError
        from lowbit.kernels.moe import MoeWeights

        gate, up, down = ("w1", "w3", "w2") if self.cfg.arch == "mixtral" else ("gate_proj", "up_proj", "down_proj")
        layouts = {module_layout(ckpt, pr) for ex in experts.values() for pr in ex.values()}
        scheme = "bf16" if layouts == {"dense"} else next(iter(layouts))
        try:
            if len(layouts) != 1:
                raise KernelError(f"{p}: experts mix layouts {sorted(layouts)}")
            per = []
            for e in range(len(experts)):
                d = {}
                for proj, name in (("gate", gate), ("up", up), ("down", down)):
                    layout, t = module_tensors(ckpt, experts[e][name])
                    d[proj] = {"weight": np.asarray(t["weight"]).astype(self.bf16)} if layout == "dense" else t
                per.append(d)
            opts = self.quant_opts if scheme == "int4" else {}
            return MoeWeights.from_checkpoint_tensors(scheme, per, name=f"{p}.experts", **opts)
        except KernelError as err:
            log.warning("%s: grouped MoE kernel not usable (%s); running experts one by one", p, err)
            for ex in experts.values():
                for pr in ex.values():
                    self.lin[pr] = self._upload(ckpt, pr)
            return None

    # --- what the model calls ---
    def asarray(self, a):
        return self.xp.asarray(a)

    def vector(self, name: str):
        return self.vec.get(name)

    def _bf16_in(self, x):
        return x if x.dtype == self.bf16 and x.flags.c_contiguous else self.xp.ascontiguousarray(x.astype(self.bf16))

    def linear(self, prefix: str, x, raw: bool = False):
        """float32 x @ W^T (+ bias); raw and no bias: the kernel's bf16 output as it is (one cast less)."""
        from lowbit.kernels.linear import linear

        y = linear(self.lin[prefix], self._bf16_in(x), act=self.act)
        b = self.vec.get(f"{prefix}.bias")
        if raw and b is None:
            return y
        y = y.astype(self.xp.float32)
        return y if b is None else y + b

    def linears(self, prefixes, x):
        """Modules on one input: one GEMV over their N-stacked weight when _fuse_linears built it."""
        from lowbit.kernels.linear import linear

        xb, key = self._bf16_in(x), "|".join(prefixes)
        if key not in self.lin:
            return [self.linear(p, xb) for p in prefixes]
        y = linear(self.lin[key], xb, act=self.act).astype(self.xp.float32)
        outs, n0 = [], 0
        for p, n in zip(prefixes, self.split[key]):
            b = self.vec.get(f"{p}.bias")
            outs.append(y[:, n0:n0 + n] if b is None else y[:, n0:n0 + n] + b)
            n0 += n
        return outs

    def qkv_attend(self, p: str, x, pos, k_cache, v_cache, cos, sin, qn, kn, scale: float, window):
        """Decode step's attention, bf16 [heads, D] for the o_proj GEMV: the stacked q|k|v GEMV, then one
        attention launch that also applies bias, q/k norms and RoPE and writes the position's k and v
        (Attention.fuses_qkv), or qkv_rope_store + attention; None when q/k/v are not stacked (then the
        model runs the general path)."""
        from lowbit.kernels.linear import linear

        key = f"{p}.q_proj|{p}.k_proj|{p}.v_proj"
        if key not in self.lin:
            return None
        cfg, f = self.cfg, self.fused
        y = linear(self.lin[key], self._bf16_in(x), act=self.act)
        parts = dict(bias=self.vec.get(f"{key}.bias"), qn=self.vec.get(qn) if qn else None,
                     kn=self.vec.get(kn) if kn else None)
        if f.attend_fuses_qkv(cfg.head_dim):
            return f.attend(None, k_cache, v_cache, pos.index, pos.span, scale, window, bf16=True,
                            qkv=dict(y=y, eps=cfg.eps, cos=cos, sin=sin, heads=cfg.heads, **parts))
        q = f.qkv_rope_store(y, parts["bias"], parts["qn"], parts["kn"], cfg.eps, cos, sin, pos.index, k_cache,
                             v_cache, cfg.heads)
        return f.attend(q, k_cache, v_cache, pos.index, pos.span, scale, window, bf16=True)

    def swiglu(self, p: str, names, x):
        """bf16 silu(gate(x)) * up(x) from one stacked GEMV + one kernel, or None when not stacked / biased."""
        from lowbit.kernels.linear import linear

        key = f"{p}.{names[0]}|{p}.{names[1]}"
        if key not in self.lin or f"{key}.bias" in self.vec:
            return None
        return self.fused.swiglu(linear(self.lin[key], self._bf16_in(x), act=self.act), self.split[key][0])

    def _fuse_linears(self) -> None:
        """Stack q/k/v and gate/up along N once at load, where the layout allows (see _stack_n)."""
        self.split = {}
        for i in range(self.cfg.layers):
            p = f"model.layers.{i}"
            groups = [tuple(f"{p}.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj"))]
            for m in (f"{p}.mlp", f"{p}.mlp.shared_expert"):
                groups.append((f"{m}.gate_proj", f"{m}.up_proj"))
            for g in groups:
                ws = [self.lin.get(x) for x in g]
                w = _stack_n(ws, "|".join(g)) if all(ws) else None
                if w is not None:
                    key = "|".join(g)
                    self.lin[key], self.split[key] = w, [x.n for x in ws]
                    if any(f"{x}.bias" in self.vec for x in g):
                        self.vec[f"{key}.bias"] = self.xp.concatenate(
                            [self.vec.get(f"{x}.bias", self.xp.zeros(n, self.xp.float32)) for x, n in zip(g, self.split[key])])
                    for x in g:
                        del self.lin[x]

    def embed(self, ids):
        return self.embed_w[ids].astype(self.xp.float32)

    def lm_head(self, h):
        return self.linear("lm_head", h)

    def router(self, prefix: str, x, top_k: int, renormalize: bool):
        """Few tokens and a plain BF16 router (the rule for every supported model): one fused launch
        (fp32 logits of bf16 x and W, softmax, top-k; lowbit.kernels.moe_router.route); otherwise the
        router GEMV, then route()."""
        from lowbit.kernels import moe_router

        w = self.lin[prefix]
        if (w.scheme == "bf16" and w.experts is None and f"{prefix}.bias" not in self.vec and w.n <= moe_router.MAX_EXPERTS
                and x.shape[0] <= moe_router.LOGITS_KERNEL_MAX_T and x.shape[-1] % 8 == 0):
            return moe_router.route(self._bf16_in(x), w.tensors["weight"], top_k, "qwen3", renormalize)
        return self.route(self.linear(prefix, x), top_k, renormalize)

    def add_norm_route(self, h, delta, norm: str, router: str, top_k: int, renormalize: bool):
        """Decode: the residual update, the post-attention RMSNorm and the router in one launch
        (lowbit.kernels.moe_router.route_add_norm; LOWBIT_ROUTER_ADD_NORM=0 turns it off), as
        (h, x, (ids, weights)); None where it does not apply (then add_norm + router run)."""
        from lowbit.kernels import moe_router

        w = self.lin.get(router)
        if not (self.fused and ROUTER_ADD_NORM and w is not None and w.scheme == "bf16" and w.experts is None
                and f"{router}.bias" not in self.vec and w.n <= moe_router.MAX_EXPERTS and h.ndim == 2
                and 1 <= h.shape[0] <= moe_router.LOGITS_KERNEL_MAX_T and h.shape[1] % 8 == 0
                and h.shape[1] <= moe_router.ADD_NORM_MAX_HIDDEN and h.dtype == self.xp.float32
                and h.flags.c_contiguous and delta.shape == h.shape
                and delta.dtype in (self.xp.float32, self.bf16)):
            return None
        s, x, ids, wts = moe_router.route_add_norm(h, self.xp.ascontiguousarray(delta), self.vector(norm),
                                                   self.cfg.eps, w.tensors["weight"], top_k, "qwen3", renormalize)
        return s, x, (ids, wts)

    def route(self, logits, top_k: int, renormalize: bool):
        from lowbit.kernels.moe_router import topk

        return topk(self.xp.ascontiguousarray(logits), top_k, "qwen3", renormalize)

    def moe_experts(self, p: str, x, top, w, names, mlp):
        xp = self.xp
        if self.moe.get(p) is not None:
            from lowbit.kernels.moe import moe_experts

            ids = top if top.dtype == xp.int32 else top.astype(xp.int32)     # topk gives int32 / f32 already
            y = moe_experts(self._bf16_in(x), ids, w if w.dtype == xp.float32 else w.astype(xp.float32),
                            self.moe[p], act=self.act)
            return y if not self.cfg.shared_intermediate else y.astype(xp.float32)   # bf16: add_norm takes it
        out = xp.zeros(x.shape, xp.float32)
        top_h = xp.asnumpy(top)
        for e in np.unique(top_h):
            rows, slot = np.nonzero(top_h == e)
            r = xp.asarray(rows)
            out[r] += mlp(f"{p}.experts.{int(e)}", x[r], names).astype(xp.float32) * w[r, xp.asarray(slot)][:, None]
        return out

    # --- what the generate loop calls ---
    def ids(self, ids):
        return self.xp.asarray(np.asarray(ids, dtype=np.int64))

    def to_host(self, a):
        return self.xp.asnumpy(a)

    def synchronize(self):
        self.xp.cuda.get_current_stream().synchronize()

    def decode_step(self, model, token: int, pos: int, greedy: bool = False):
        """Logits [vocab] (a device buffer reused by the next step) of one token at position pos; greedy: the
        argmax of those logits as an int instead, computed inside the step (the graph ends with the argmax and
        its copy to pinned host memory, so no sampling launch and no second synchronization per token)."""
        try:
            return self.decoder.step(model, token, pos, greedy)
        except Exception as e:
            if not self.decoder.capture:
                raise
            log.warning("CUDA graph decode failed (%s: %s); decoding eagerly from now on", type(e).__name__, e)
            self.decoder = _GraphDecoder(self, capture=False)
            return self.decoder.step(model, token, pos, greedy)


_GRAPH_POOLS: list = []


class _GraphDecoder:
    """The one-token forward with token and position in device buffers, replayed as one CUDA graph per
    context bucket (capture=True) or run eagerly through the very same code (capture=False)."""

    def __init__(self, ops: CudaOps, capture: bool = True):
        import cupy
        import cupyx

        self.ops, self.xp, self.capture = ops, cupy, capture
        self.tok = cupy.zeros(1, cupy.int64)
        self.pos = cupy.zeros(1, cupy.int32)
        self.graphs: dict[tuple, tuple] = {}  # (span, greedy) -> (graph, logits, argmax buffer)
        # private: graph temporaries are never handed out again. A pool frees its memory under every array
        # still pointing into it when it is collected, so pools are kept for the whole process (anything a
        # warm-up left cached stays valid); a dead decoder's unused blocks go back to the device.
        self.pool = cupy.cuda.MemoryPool()
        _GRAPH_POOLS.append(self.pool)
        weakref.finalize(self, self.pool.free_all_blocks)
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.next_tok = cupyx.empty_pinned((1,), dtype=np.int64)  # a greedy step's argmax, copied by the step
        # (token, position) the device buffers already hold: a greedy step leaves its argmax and pos + 1 there
        self.held = None

    def step(self, model, token: int, pos: int, greedy: bool = False):
        span = min(-(-(pos + 1) // BUCKET) * BUCKET, model.max_context)
        model.kv.check_room(pos, 1)
        with self.stream:
            if self.capture and (span, greedy) not in self.graphs:
                self.tok.fill(token)
                self.pos.fill(pos)
                self._capture(model, span, greedy)  # its warm-up run moves the buffers on (greedy)
                self.held = None
            if self.held != (token, pos):
                self.tok.fill(token)
                self.pos.fill(pos)
            self.held = None
            if not self.capture:
                out = self._forward(model, span, greedy)[0]
            else:
                graph, out = self.graphs[(span, greedy)][:2]
                graph.launch(self.stream)
        self.stream.synchronize()
        if not greedy:
            return out
        nxt = int(self.next_tok[0])
        self.held = (nxt, pos + 1)
        return nxt

    def _forward(self, model, span: int, greedy: bool) -> tuple:
        """(logits [vocab], the argmax's device array or None): the step's work, on self.stream."""
        cp = self.xp
        out = model.forward(self.tok, DevicePos(self.pos, span))[0]
        if not greedy:
            return out, None
        nxt = cp.argmax(out)  # the first maximum, as the Sampler's xp.argmax
        cp.cuda.runtime.memcpyAsync(self.next_tok.ctypes.data, nxt.data.ptr, 8, cp.cuda.runtime.memcpyDeviceToHost,
                                    self.stream.ptr)
        self.tok[0] = nxt  # the next step's input, already on the device (no host fill when it follows)
        self.pos += 1
        return out, nxt

    def _capture(self, model, span: int, greedy: bool) -> None:
        cp = self.xp
        with cp.cuda.using_allocator(self.pool.malloc):
            self._forward(model, span, greedy)                        # compile kernels, fill workspaces
            self.stream.synchronize()
            mode = getattr(cp.cuda.runtime, "streamCaptureModeRelaxed", None)
            self.stream.begin_capture(*(() if mode is None else (mode,)))
            try:
                out, nxt = self._forward(model, span, greedy)
            finally:
                graph = self.stream.end_capture()
        self.graphs[(span, greedy)] = (graph, out, nxt)  # nxt: the argmax's buffer stays the graph's


def _stack_n(ws: list, name: str):
    """One GpuWeight holding several linears of the same K stacked along N, or None where the on-disk
    layout does not allow it: fp8 scale blocks straddling a boundary (N % 128), differing nvfp4 global
    scales, int4 options or zero points packed across a boundary (N % 8)."""
    import cupy

    from lowbit.kernels.weights import GpuWeight

    w0 = ws[0]
    if any(w.scheme != w0.scheme or w.k != w0.k or w.experts is not None or w.opts != w0.opts for w in ws):
        return None
    inner = [w.n for w in ws[:-1]]
    if w0.scheme == "fp8-block" and any(n % 128 for n in inner):
        return None
    if w0.scheme == "int4" and any(n % 8 for n in inner):
        return None
    if w0.scheme == "nvfp4":
        gs = [float(w.tensors["weight_global_scale"].reshape(-1)[0]) for w in ws]
        if len(set(gs)) != 1:
            return None
    t = {s: (w0.tensors[s] if s == "weight_global_scale" else cupy.concatenate([w.tensors[s] for w in ws]))
         for s in w0.tensors}
    return GpuWeight(w0.scheme, sum(w.n for w in ws), w0.k, t, dict(w0.opts), None, name)


def _fused(wanted: bool):
    if not wanted:
        return None
    from lowbit.runtime.cuda_fused import Fused

    return Fused()


def _modules(ckpt: Checkpoint) -> list[str]:
    """Every linear module on disk (2-D weight or a quantized layout), embeddings excluded."""
    out = []
    for n in ckpt.names():
        prefix, part = n.rsplit(".", 1)
        if part == "weight_packed" or (part == "weight" and len(ckpt.shape(n)) == 2 and "embed_tokens" not in n):
            out.append(prefix)
    return out


def _int4_opts(ckpt: Checkpoint) -> dict:
    from lowbit.formats.hf_config import scheme_from_config

    q = scheme_from_config(ckpt.config) or ("", {})
    return dict(q[1]) if q[0] == "int4" else {}
