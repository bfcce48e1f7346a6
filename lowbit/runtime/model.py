"""The transformer, in one readable file: Llama, Mistral, Qwen2, Qwen3, Mixtral, Qwen2-MoE, Qwen3-MoE.

Module names are the names on disk (`model.layers.{i}.self_attn.q_proj`, `...block_sparse_moe.experts.{e}.w1`,
`...mlp.shared_expert_gate`); `ops` (lowbit.runtime.backend) turns a name into a matmul on the host
(numpy, dequantized float32) or on the GPU (cupy, our kernels). Activations are float32 (the CUDA
backend hands its GEMVs bf16 and fuses norms, RoPE and attention where `ops.fused` is set).
The math follows transformers' modeling files: pre-norm RMSNorm, RoPE in the rotate-half layout,
GQA (query head h reads kv head h // group), SiLU-gated MLP, softmax router with top-k
(renormalized for Mixtral and Qwen3-MoE, and for Qwen2-MoE when norm_topk_prob), and Qwen2-MoE's
shared expert scaled by sigmoid(shared_expert_gate(x)).
"""

from __future__ import annotations

import math

from lowbit.runtime.config import ModelConfig, rope_tables
from lowbit.runtime.kv_cache import DevicePos, KVCache


class Transformer:
    def __init__(self, cfg: ModelConfig, ops, max_context: int):
        self.cfg, self.ops, self.xp = cfg, ops, ops.xp
        self.max_context = max_context
        cos, sin = rope_tables(cfg, max_context)
        self.cos, self.sin = ops.asarray(cos), ops.asarray(sin)
        self.kv = KVCache(self.xp, cfg.layers, cfg.kv_heads, max_context, cfg.head_dim)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)

    def forward(self, ids, pos, last_only: bool = False):
        """Logits float32 [M, vocab] for tokens `ids` (xp int array [M]) at positions pos..pos+M-1.

        The KV cache must hold exactly `pos` tokens; afterwards it holds pos + M. `pos` may also be a
        kv_cache.DevicePos (one token, position on the GPU) for a replayable CUDA-graph decode step.
        """
        cfg, ops = self.cfg, self.ops
        h = ops.embed(ids)                                                  # the residual stream
        x = self.rms_norm(h, "model.layers.0.input_layernorm.weight", to_linear=True)
        for i in range(cfg.layers):
            p = f"model.layers.{i}"
            attn, norm = self.attention(i, x, pos), f"{p}.post_attention_layernorm.weight"
            if cfg.moe_layer(i):
                h, x, routing = self.add_norm_route(h, attn, norm, i)
                delta = self.moe(i, x, routing)
            else:
                h, x = self.add_norm(h, attn, norm)
                delta = self.mlp(f"{p}.mlp", x)
            nxt = f"model.layers.{i + 1}.input_layernorm.weight" if i + 1 < cfg.layers else "model.norm.weight"
            h, x = self.add_norm(h, delta, nxt)
        if isinstance(pos, int):
            self.kv.length = pos + h.shape[0]
        return ops.lm_head(x[-1:] if last_only else x)

    def add_norm(self, h, delta, name: str):
        """(h + delta, rms_norm(h + delta)): a sublayer's output joins the residual stream, and the
        next sublayer's (or the final) norm reads it. The CUDA backend does both in one kernel."""
        if self.ops.fused:
            return self.ops.fused.add_rms_norm(h, delta, self.ops.vector(name), self.cfg.eps)
        h = h + delta
        return h, self.rms_norm(h, name)

    def add_norm_route(self, h, delta, name: str, i: int):
        """add_norm, then the MoE router of layer i on the normed x: (h, x, (expert ids, routing weights)).
        The CUDA decode step does all of it in one kernel where it can (ops.add_norm_route)."""
        cfg = self.cfg
        router = f"{self.moe_prefix(i)}.gate"
        fused = getattr(self.ops, "add_norm_route", None)
        out = fused(h, delta, name, router, cfg.top_k, cfg.norm_topk) if fused else None
        if out is not None:
            return out
        h, x = self.add_norm(h, delta, name)
        return h, x, self.ops.router(router, x, cfg.top_k, cfg.norm_topk)   # softmax, top-k, renormalize

    def rms_norm(self, x, name: str, to_linear: bool = False):
        """to_linear: the result only feeds linear layers (the CUDA backend then hands them bf16)."""
        if self.ops.fused:
            return self.ops.fused.rms_norm(x, self.ops.vector(name), self.cfg.eps, bf16=to_linear)
        xp = self.xp
        var = xp.mean(x * x, axis=-1, keepdims=True)
        return x * (1.0 / xp.sqrt(var + self.cfg.eps)) * self.ops.vector(name)

    def rope(self, x, pos, norm: str | None = None):
        """x [M, heads, D] rotated at positions pos.. (rotate_half: pairs (j, j + D/2)), after the
        per-head RMSNorm `norm` when given (Qwen3's q_norm / k_norm)."""
        if self.ops.fused:
            device = isinstance(pos, DevicePos)
            w = self.ops.vector(norm) if norm else None
            return self.ops.fused.rope(x, self.cos, self.sin, pos.index if device else None, 0 if device else pos,
                                       w, self.cfg.eps)
        if norm:
            x = self.rms_norm(x, norm)
        m, d = x.shape[0], x.shape[-1]
        rows = self.kv.rows(pos, m)
        cos, sin = self.cos[rows][:, None, :], self.sin[rows][:, None, :]
        rot = self.xp.concatenate([-x[..., d // 2:], x[..., :d // 2]], axis=-1)
        return x * cos + rot * sin

    def attention(self, i: int, x, pos):
        cfg, ops, xp = self.cfg, self.ops, self.xp
        p = f"model.layers.{i}.self_attn"
        m, hd, nkv = x.shape[0], cfg.head_dim, cfg.kv_heads
        qn, kn = (f"{p}.q_norm.weight", f"{p}.k_norm.weight") if cfg.qk_norm else (None, None)
        fast = ops.fused and isinstance(pos, DevicePos) and pos.span <= ops.fused.max_span
        # CUDA decode: projections, q/k norms, RoPE, the KV write and the attention in two or three launches
        o = (ops.qkv_attend(p, x, pos, self.kv.k[i], self.kv.v[i], self.cos, self.sin, qn, kn, self.scale,
                            cfg.sliding_window) if fast else None)
        if o is None:
            q, k, v = ops.linears((f"{p}.q_proj", f"{p}.k_proj", f"{p}.v_proj"), x)
            q, k, v = q.reshape(m, cfg.heads, hd), k.reshape(m, nkv, hd), v.reshape(m, nkv, hd)
            q, k = self.rope(q, pos, qn), self.rope(k, pos, kn)
            keys, values = self.kv.append(i, pos, k, v)          # [nkv, T, D], T = pos + m
            if fast:                                             # one kernel for the attention itself
                o = ops.fused.attend(q[0], self.kv.k[i], self.kv.v[i], pos.index, pos.span, self.scale,
                                     cfg.sliding_window, bf16=True)
        if o is not None:
            return ops.linear(f"{p}.o_proj", o.reshape(1, cfg.heads * hd), raw=True)
        group = cfg.heads // nkv
        qg = q.reshape(m, nkv, group, hd).transpose(1, 2, 0, 3).reshape(nkv, group * m, hd)
        if isinstance(pos, DevicePos):   # graph-captured decode: no cuBLAS (it cannot be captured)
            s = (qg[:, :, None, :] * keys[:, None, :, :]).sum(axis=-1)
        else:
            s = qg @ keys.transpose(0, 2, 1)
        s = s.reshape(nkv, group, m, keys.shape[1]) * self.scale
        s = s + self.kv.mask(pos, m, cfg.sliding_window)      # causal (and sliding-window) mask
        s = xp.exp(s - s.max(axis=-1, keepdims=True))
        s = (s / s.sum(axis=-1, keepdims=True)).reshape(nkv, group * m, -1)
        if isinstance(pos, DevicePos):
            o = (s[:, :, :, None] * values[:, None, :, :]).sum(axis=-2)
        else:
            o = s @ values
        o = o.reshape(nkv, group, m, hd).transpose(2, 0, 1, 3).reshape(m, cfg.heads * hd)
        return ops.linear(f"{p}.o_proj", o, raw=True)

    def mlp(self, p: str, x, names=("gate_proj", "up_proj", "down_proj")):
        gate, up, down = names
        act = self.ops.swiglu(p, names, x) if self.ops.fused else None    # CUDA: one GEMV + one kernel
        if act is None:
            g, u = self.ops.linears((f"{p}.{gate}", f"{p}.{up}"), x)
            act = self.ops.fused.silu_mul(g, u) if self.ops.fused else g / (1.0 + self.xp.exp(-g)) * u
        return self.ops.linear(f"{p}.{down}", act, raw=True)

    def moe_prefix(self, i: int) -> str:
        return f"model.layers.{i}.block_sparse_moe" if self.cfg.arch == "mixtral" else f"model.layers.{i}.mlp"

    def moe(self, i: int, x, routing):
        """Sparse MoE block on the router's choice (top-k expert ids, weights): weighted sum of the chosen
        experts (+ shared expert)."""
        cfg, ops, xp = self.cfg, self.ops, self.xp
        p = self.moe_prefix(i)
        names = ("w1", "w3", "w2") if cfg.arch == "mixtral" else ("gate_proj", "up_proj", "down_proj")
        top, w = routing
        out = ops.moe_experts(p, x, top, w, names, self.mlp)
        if cfg.shared_intermediate:
            shared = self.mlp(f"{p}.shared_expert", x).astype(xp.float32)
            gate = ops.linear(f"{p}.shared_expert_gate", x)
            out = out + shared / (1.0 + xp.exp(-gate))
        return out
