"""Fused float32 kernels for the CUDA backend's decode step: fewer, larger launches per layer.

The model runs these instead of chains of cupy elementwise ops where ops.fused is set (CUDA only);
each computes exactly what the numpy path in lowbit.runtime.model computes (the reference: the CPU
backend; tests/runtime/test_cuda.py compares the logits):
  rms_norm      y = x * rsqrt(mean(x^2) + eps) * w, one block per row (fp32, or bf16 for GEMV inputs)
  add_rms_norm  h += delta (the sublayer's fp32 or bf16 output), then rms_norm(h) in bf16, one pass; it lets
                the GEMV after it launch before its own PDL wait (ADD_NORM_EARLY)
  rope          rotate-half RoPE at positions start.. (or the device-held position), optionally after
                the per-head RMSNorm of Qwen3 (q_norm / k_norm), one block per (token, head)
  silu_mul      silu(g) * u
  qkv_rope_store  decode: q|k|v GEMV output + bias -> q/k norm -> RoPE -> q out, k and v into the cache
  swiglu        silu(gate) * up straight from the stacked gate|up GEMV output, bf16 for the down GEMV
  attend        one token's attention over the KV cache (lowbit.runtime.cuda_attend, compiled into the
                same module); in decode it also does qkv_rope_store's work (one launch less).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lowbit.kernels.launch import launch
from lowbit.runtime.cuda_attend import ATTEND_EARLY, ATTEND_SRC, Attention


_CUDA = Path(__file__).resolve().parents[1] / "kernels" / "cuda"
_SRC = (_CUDA / "pdl.cuh").read_text() + (_CUDA / "block_reduce.cuh").read_text() + r"""
__device__ unsigned short to_bf16_rne(float f) {
    unsigned int u = __float_as_uint(f);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

// Row norms keep the row in registers (RPT values per thread, all loads issued before the first use):
// one memory latency per pass instead of one per loop trip. Rows longer than RPT * blockDim take the loop.
#define RPT 8

// y (fp32) or yb (bf16 bits, RNE as cupy's astype) = x * rsqrt(mean(x^2) + eps) * w, one block per row
extern "C" __global__ void rms_norm_f32(const float* x, const float* w,
                                        float* y, unsigned short* yb, int n, float eps) {
    lb_pdl_wait();     // launched with PDL: everything below may read what the kernel before wrote
    lb_pdl_trigger();  // then the next kernel may get resident (after the wait: no cascade, see pdl.cuh)
    __shared__ float red[32];
    const float* xr = x + (long long)blockIdx.x * n;
    float vals[RPT], ws[RPT];
    float s = 0.f;
    const bool reg = n <= RPT * (int)blockDim.x;
    if (reg) {
#pragma unroll
        for (int c = 0; c < RPT; ++c) {
            const int i = threadIdx.x + c * blockDim.x;
            vals[c] = i < n ? xr[i] : 0.f;
            ws[c] = i < n ? w[i] : 0.f;
        }
#pragma unroll
        for (int c = 0; c < RPT; ++c) s += vals[c] * vals[c];
    } else {
        for (int i = threadIdx.x; i < n; i += blockDim.x) { float v = xr[i]; s += v * v; }
    }
    float r = rsqrtf(block_sum(s, red) / (float)n + eps);
    unsigned short* ybr = yb ? yb + (long long)blockIdx.x * n : nullptr;
    float* yr = y ? y + (long long)blockIdx.x * n : nullptr;
    if (reg) {
#pragma unroll
        for (int c = 0; c < RPT; ++c) {
            const int i = threadIdx.x + c * blockDim.x;
            if (i < n) { if (ybr) ybr[i] = to_bf16_rne(vals[c] * r * ws[c]); else yr[i] = vals[c] * r * ws[c]; }
        }
    } else {
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            if (ybr) ybr[i] = to_bf16_rne(xr[i] * r * w[i]); else yr[i] = xr[i] * r * w[i];
        }
    }
}

// h += delta (fp32 df or bf16 db), then y / yb = rmsnorm(h) * w; one block per row; h updated in place
extern "C" __global__ void add_rms_norm(float* h, const float* df,
                                        const unsigned short* db, const float* w,
                                        float* y, unsigned short* yb, int n, float eps) {
    __shared__ float red[32];
    float* hr = h + (long long)blockIdx.x * n;
    long long off = (long long)blockIdx.x * n;
    float vals[RPT], ws[RPT];
    float s = 0.f;
    const bool reg = n <= RPT * (int)blockDim.x;
    if (reg) {  // the norm weight is constant: loaded before the wait
#pragma unroll
        for (int c = 0; c < RPT; ++c) {
            const int i = threadIdx.x + c * blockDim.x;
            ws[c] = i < n ? w[i] : 0.f;
        }
    }
#if LB_ADD_NORM_EARLY
    lb_pdl_trigger();  // the next GEMV may copy its weights while the kernels before this one run (ADD_NORM_EARLY)
#endif
    lb_pdl_wait();     // launched with PDL: everything below may read what the kernel before wrote
    lb_pdl_trigger();  // then the next kernel may get resident (after the wait: no cascade, see pdl.cuh)
    if (reg) {
        float ds[RPT];
#pragma unroll
        for (int c = 0; c < RPT; ++c) {
            const int i = threadIdx.x + c * blockDim.x;
            vals[c] = i < n ? hr[i] : 0.f;
            ds[c] = i < n ? (df ? df[off + i] : __uint_as_float(((unsigned int)db[off + i]) << 16)) : 0.f;
        }
#pragma unroll
        for (int c = 0; c < RPT; ++c) {
            const int i = threadIdx.x + c * blockDim.x;
            vals[c] += ds[c];
            if (i < n) hr[i] = vals[c];
            s += vals[c] * vals[c];
        }
    } else {
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            float d = df ? df[off + i] : __uint_as_float(((unsigned int)db[off + i]) << 16);
            float v = hr[i] + d;
            hr[i] = v;
            s += v * v;
        }
    }
    float r = rsqrtf(block_sum(s, red) / (float)n + eps);
    if (reg) {
#pragma unroll
        for (int c = 0; c < RPT; ++c) {
            const int i = threadIdx.x + c * blockDim.x;
            if (i < n) { float v = vals[c] * r * ws[c]; if (yb) yb[off + i] = to_bf16_rne(v); else y[off + i] = v; }
        }
    } else {
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            float v = hr[i] * r * w[i];
            if (yb) yb[off + i] = to_bf16_rne(v); else y[off + i] = v;
        }
    }
}

// x, y: [m, heads, d], one block per (token, head) row, blockDim = d rounded up to 32 (d <= 1024);
// optional RMSNorm of the row first (w != NULL: Qwen3's q_norm / k_norm); position = (pos ? pos[0] : start) + t
extern "C" __global__ void rope_f32(const float* x, float* y,
                                    const float* cs, const float* sn,
                                    const int* pos, int start, int heads, int d,
                                    const float* w, float eps) {
    lb_pdl_wait();     // launched with PDL: everything below may read what the kernel before wrote
    lb_pdl_trigger();  // then the next kernel may get resident (after the wait: no cascade, see pdl.cuh)
    __shared__ float red[32];
    __shared__ float row[1024];
    int r = blockIdx.x, t = r / heads, j = threadIdx.x;
    float v = j < d ? x[(long long)r * d + j] : 0.f;
    if (w) {
        float rr = rsqrtf(block_sum(v * v, red) / (float)d + eps);
        v = j < d ? v * rr * w[j] : 0.f;
    }
    row[j] = v;
    __syncthreads();
    if (j >= d) return;
    long long p = (long long)(pos ? pos[0] : start) + t;
    int h2 = d / 2;
    float rot = j < h2 ? -row[j + h2] : row[j - h2];
    y[(long long)r * d + j] = v * cs[p * d + j] + rot * sn[p * d + j];
}

// Decode (one token at device position pos[0]): the stacked q|k|v GEMV output y (bf16 bits,
// [(heads + 2 kv_heads) * d]) + bias -> q/k RMSNorm (qn/kn, optional) -> RoPE on q and k -> q to qout
// (fp32 [heads, d]), k and v into the caches ([kv_heads, max_ctx, d]) at pos. One block per head row.
// Head row b (kind 0 q, 1 k, 2 v) of the stacked q|k|v GEMV output y (bf16 bits, [(heads + 2 kv_heads) * d]) at
// position p: + bias, the per-head RMSNorm (q_norm / k_norm, optional), RoPE for q and k. Thread j < d holds
// element j. head_in loads what thread j needs of the constant tables (bias, norm weight, RoPE tables) in one
// go, so it may run before the PDL wait; head_value then takes the GEMV output value and finishes (every
// thread of the block calls it: block reductions and barriers inside; blockDim.x >= d; row: blockDim.x floats
// of shared memory; threads j >= d get 0). Used by qkv_rope_store and by attend_split (fused).
struct HeadIn { float b, w, c, s; };

__device__ HeadIn head_in(const float* bias, const float* nw, const float* cs, const float* sn, long long p, int b,
                          int kind, int d) {
    const int j = threadIdx.x;
    HeadIn in{0.f, 1.f, 1.f, 0.f};
    if (j < d) {
        if (bias) in.b = bias[(long long)b * d + j];
        if (nw) in.w = nw[j];
        if (kind < 2) { in.c = cs[p * d + j]; in.s = sn[p * d + j]; }
    }
    return in;
}

__device__ float head_y(const unsigned short* y, int b, int d) {
    const int j = threadIdx.x;
    return j < d ? __uint_as_float(((unsigned int)y[(long long)b * d + j]) << 16) : 0.f;
}

__device__ float head_value(float yv, HeadIn in, bool norm, int kind, int d, float eps, float* red, float* row) {
    const int j = threadIdx.x;
    float v = j < d ? yv + in.b : 0.f;
    if (norm) {
        float rr = rsqrtf(block_sum(v * v, red) / (float)d + eps);
        v = j < d ? v * rr * in.w : 0.f;
    }
    if (kind < 2) {
        row[j] = v;
        __syncthreads();
        int h2 = d / 2;
        if (j < d) {
            float rot = j < h2 ? -row[j + h2] : row[j - h2];
            v = v * in.c + rot * in.s;
        }
        __syncthreads();  // row is reused by the next call
    }
    return v;
}

// The position and the constant tables are read before the PDL wait: pos is filled before the step's first
// kernel, and a PDL kernel only starts after the kernel before it has started (by induction, after the fill).
extern "C" __global__ void qkv_rope_store(const unsigned short* y, const float* bias,
                                          const float* qn, const float* kn, float eps,
                                          const float* cs, const float* sn,
                                          const int* pos, float* qout,
                                          float* kc, float* vc,
                                          int max_ctx, int heads, int kv_heads, int d) {
    __shared__ float red[32];
    __shared__ float row[1024];
    int b = blockIdx.x, j = threadIdx.x;
    long long i = (long long)b * d + j;
    int kind = b < heads ? 0 : (b < heads + kv_heads ? 1 : 2);          // q, k, v
    const float* nw = kind == 0 ? qn : (kind == 1 ? kn : 0);
    long long p = pos[0];
    const HeadIn in = head_in(bias, nw, cs, sn, p, b, kind, d);
    lb_pdl_wait();     // launched with PDL: y is the GEMV's output
    lb_pdl_trigger();  // then the next kernel may get resident (after the wait: no cascade, see pdl.cuh)
    float v = head_value(head_y(y, b, d), in, nw != 0, kind, d, eps, red, row);
    if (j >= d) return;
    if (kind == 0) qout[i] = v;
    else if (kind == 1) kc[((long long)(b - heads) * max_ctx + p) * d + j] = v;
    else vc[((long long)(b - heads - kv_heads) * max_ctx + p) * d + j] = v;
}

// act (bf16 bits) [m, inter] = silu(g) * u from the stacked gate|up GEMV output y (bf16 bits) [m, 2 inter]
extern "C" __global__ void swiglu_bf16(const unsigned short* y, unsigned short* act,
                                       long long m, int inter) {
    lb_pdl_wait();     // launched with PDL: everything below may read what the kernel before wrote
    lb_pdl_trigger();  // then the next kernel may get resident (after the wait: no cascade, see pdl.cuh)
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= m * inter) return;
    long long r = i / inter, c = i % inter;
    float g = __uint_as_float(((unsigned int)y[r * 2 * inter + c]) << 16);
    float u = __uint_as_float(((unsigned int)y[r * 2 * inter + inter + c]) << 16);
    act[i] = to_bf16_rne(g / (1.0f + expf(-g)) * u);
}
"""

MAX_SPAN = 8192
#: the fused kernels launch with PDL (they wait for the kernel before them first thing); "0": plainly
FUSED_PDL = os.environ.get("LOWBIT_FUSED_PDL", "1") != "0"
#: add_rms_norm triggers the next kernel's launch before its own PDL wait, so that the GEMV after it (the next
#: layer's q|k|v, or the MLP's gate/up) copies its weights while the kernels before the norm still run (the MoE
#: down launch computes from shared memory and leaves DRAM idle). Same run, H100, 2026-11-28: Qwen3-30B-A3B fp8
#: decode 403.8 / 406.3 tok/s against 392.8 / 393.5, Mixtral-8x7B nvfp4 233.2 against 227.8. Same run, H200, both
#: early triggers (this and cuda_attend.ATTEND_EARLY) against neither: Qwen3 fp8 452.7 / 451.5 against 438.2 / 436.2,
#: Mixtral nvfp4 255.3 / 256.4 against 251.5 / 251.7. LOWBIT_ADD_NORM_EARLY=0: after the wait, as the other small
#: kernels (pdl.cuh)
ADD_NORM_EARLY = os.environ.get("LOWBIT_ADD_NORM_EARLY", "1") != "0"


def norm_threads(n: int) -> int:
    """Threads per row of the RMSNorm kernels: enough for RPT (8) values of the row in each thread's
    registers (rows past 8 * 1024 take the kernels' loop)."""
    return min(1024, max(128, -(-n // (8 * 32)) * 32))


class Fused:
    max_span = MAX_SPAN     # attend keeps the scores of `span` keys in shared memory (4 * (D + span + ...) bytes)

    def __init__(self):
        import cupy

        self.cp = cupy
        mod = cupy.RawModule(code=_SRC + ATTEND_SRC, options=("-std=c++17", f"-DLB_ADD_NORM_EARLY={ADD_NORM_EARLY:d}",
                                                               f"-DLB_ATTEND_EARLY={ATTEND_EARLY:d}"))
        self._rms = mod.get_function("rms_norm_f32")
        self._add_rms = mod.get_function("add_rms_norm")
        self._rope = mod.get_function("rope_f32")
        self._attention = Attention(mod, self._launch)
        self._qkv = mod.get_function("qkv_rope_store")
        self._swiglu = mod.get_function("swiglu_bf16")
        self._silu = cupy.ElementwiseKernel("float32 g, float32 u", "float32 y",
                                            "y = g / (1.0f + expf(-g)) * u", "lowbit_silu_mul")

    def rms_norm(self, x, w, eps: float, bf16: bool = False):
        """fp32 out, or bf16 (rounded as astype would) when the result only feeds GEMVs."""
        cp = self.cp
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        n = x.shape[-1]
        null = np.uint64(0)
        if bf16:
            from lowbit.formats.numerics import BF16

            y = cp.empty(x.shape, dtype=BF16)
            args = (x, w, null, y, np.int32(n), np.float32(eps))
        else:
            y = cp.empty_like(x)
            args = (x, w, y, null, np.int32(n), np.float32(eps))
        self._launch(self._rms, (x.size // n,), (norm_threads(n),), args)
        return y

    def add_rms_norm(self, h, delta, w, eps: float):
        """(h + delta in place, its RMSNorm in bf16 for the next GEMVs); delta fp32 or bf16."""
        cp = self.cp
        from lowbit.formats.numerics import BF16

        assert h.dtype == cp.float32 and h.flags.c_contiguous
        n = h.shape[-1]
        null = np.uint64(0)
        if delta.dtype == BF16:
            df, db = null, cp.ascontiguousarray(delta)
        else:
            df, db = cp.ascontiguousarray(delta, dtype=cp.float32), null
        y = cp.empty(h.shape, dtype=BF16)
        self._launch(self._add_rms, (h.size // n,), (norm_threads(n),),
               (h, df, db, w, null, y, np.int32(n), np.float32(eps)))
        return h, y

    def rope(self, x, cos, sin, pos, start: int, w=None, eps: float = 0.0):
        """x [M, heads, D]; pos: device int32 [1] or None (then positions start..); w: RMSNorm first."""
        cp = self.cp
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        m, heads, d = x.shape
        y = cp.empty_like(x)
        null = np.uint64(0)
        self._launch(self._rope, (m * heads,), (-(-d // 32) * 32,),
               (x, y, cos, sin, pos if pos is not None else null, np.int32(start), np.int32(heads), np.int32(d),
                w if w is not None else null, np.float32(eps)))
        return y

    def qkv_rope_store(self, y, bias, qn, kn, eps, cos, sin, pos, k_cache, v_cache, heads: int):
        """Decode: stacked q|k|v GEMV output (bf16 [1, N]) -> q fp32 [heads, D]; k, v written to the caches."""
        cp = self.cp
        kv_heads, max_ctx, d = k_cache.shape
        q = cp.empty((heads, d), cp.float32)
        null = np.uint64(0)
        opt = lambda a: a if a is not None else null  # noqa: E731
        self._launch(self._qkv, (heads + 2 * kv_heads,), (-(-d // 32) * 32,),
               (y, opt(bias), opt(qn), opt(kn), np.float32(eps), cos, sin, pos, q, k_cache, v_cache,
                np.int32(max_ctx), np.int32(heads), np.int32(kv_heads), np.int32(d)))
        return q

    def swiglu(self, y, inter: int):
        """bf16 [M, inter] = silu(gate) * up from the stacked gate|up GEMV output bf16 [M, 2 inter]."""
        from lowbit.formats.numerics import BF16

        m = y.shape[0]
        act = self.cp.empty((m, inter), BF16)
        self._launch(self._swiglu, (-(-(m * inter) // 256),), (256,),
               (self.cp.ascontiguousarray(y), act, np.int64(m), np.int32(inter)))
        return act

    def silu_mul(self, g, u):
        return self._silu(g, u)

    @staticmethod
    def _launch(fn, grid, block, args, shared_mem: int = 0):
        """With programmatic dependent launch where it is on (lowbit.kernels.launch; LOWBIT_FUSED_PDL=0: these
        kernels launch plainly, the GEMVs keep PDL)."""
        if FUSED_PDL:
            launch(fn, grid, block, args, shared_mem)
        else:
            fn(grid, block, args, shared_mem=shared_mem)

    def attend(self, q, k_cache, v_cache, pos, span: int, scale: float, window: int | None, bf16: bool = False,
               qkv: dict | None = None):
        """One token's attention (lowbit.runtime.cuda_attend.Attention.attend; qkv: fused with qkv_rope_store)."""
        return self._attention.attend(q, k_cache, v_cache, pos, span, scale, window, bf16, qkv)

    @staticmethod
    def attend_fuses_qkv(d: int) -> bool:
        return Attention.fuses_qkv(d)
