"""Decode attention for the CUDA backend: one token's query against the KV cache, fp32 softmax.

Two kernels, the same math (tests/runtime/test_attend.py checks both against float64 numpy):
  attend_split  the default: the keys [t0, T) of a head are cut into ranges (flash-decoding), a block per
                (head, range); each block writes its range's (max, exp-sum, unnormalised output) and the
                last block of the head to finish combines them in range order. Deterministic.
  attend_f32    one block per query head over all its keys (LOWBIT_ATTEND_SPLIT=0).
Causal up to the device-held position, optional sliding window; keys past the position are never read
(a captured graph replays at any position below its span). The CUDA source is appended to the fused
kernels' NVRTC module (lowbit.runtime.cuda_fused), whose helpers (block_sum, block_max, to_bf16_rne,
the PDL calls) it uses.
"""

from __future__ import annotations

import os

import numpy as np

#: threads per attend_f32 block (one block per query head): 8 warps x 4 keys in flight for the scores
ATTEND_THREADS = 256
#: attend_split (LOWBIT_ATTEND_SPLIT=0: attend_f32): at most SPLIT_MAX ranges per head (<= 32: one warp
#: combines), each at least SPLIT_MIN_KEYS keys (4 warps x 4 keys in flight: one pass), SPLIT_THREADS threads
ATTEND_SPLIT = os.environ.get("LOWBIT_ATTEND_SPLIT", "1") != "0"
SPLIT_MAX, SPLIT_MIN_KEYS, SPLIT_THREADS = 16, 16, 128
#: attend_split makes q (and the position's k, v) from the q|k|v GEMV output itself, so that the decode step
#: needs no qkv_rope_store launch (LOWBIT_ATTEND_QKV=0: it does); head_dim <= SPLIT_THREADS
ATTEND_QKV = os.environ.get("LOWBIT_ATTEND_QKV", "1") != "0"
#: attend_split triggers the next kernel (the o_proj GEMV) before its PDL wait, so that the GEMV copies its
#: weights while the q|k|v GEMV still runs. Same run, H100, 2026-11-28: Qwen3-30B-A3B fp8 decode 407.0 / 410.9
#: tok/s against 400.0 / 402.8 (LOWBIT_ATTEND_EARLY=0: after the wait)
ATTEND_EARLY = os.environ.get("LOWBIT_ATTEND_EARLY", "1") != "0"
#: attend_split copies its range's cached keys and values into shared memory before its PDL wait (cp.async), when
#: they fit STAGE_SMEM bytes with the query and scores (LOWBIT_ATTEND_STAGE=0: read from global memory after it).
#: Same run, 2026-11-28: Qwen3-30B-A3B fp8 decode 464.2 / 465.5 against 444.8 / 440.6 tok/s (H200); Mixtral-8x7B
#: nvfp4 236.7 against 233.2 (H100)
ATTEND_STAGE = os.environ.get("LOWBIT_ATTEND_STAGE", "1") != "0"
STAGE_SMEM = 44 * 1024

ATTEND_SRC = r"""
// 16-byte asynchronous copies global -> shared, L2 only (cp.async.cg; sm_80 and later)
__device__ __forceinline__ void cp_async16(float* dst, const float* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

// The n keys kr[0 .. n) ([n, d]: a range's rows of one kv head, in global or shared memory) against the query
// qs ([d], shared memory, ready): the scaled scores into s[0 .. n), then s <- exp(s - mx); mx and the sum of s
// out. Each warp takes KPW keys at a time (independent loads in flight), lanes split d. Every thread of the
// block calls it (barriers inside; it ends on one).
__device__ __forceinline__ void range_softmax(const float* qs, const float* kr, int n, int d, float scale, float* s,
                              float* red, float& mx, float& sum) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    constexpr int KPW = 4;
    for (int tb = warp * KPW; tb < n; tb += warps * KPW) {
        float acc[KPW];
#pragma unroll
        for (int u = 0; u < KPW; ++u) acc[u] = 0.f;
        for (int j = lane; j < d; j += 32) {
            const float qj = qs[j];
#pragma unroll
            for (int u = 0; u < KPW; ++u)
                if (tb + u < n) acc[u] += qj * kr[(long long)(tb + u) * d + j];
        }
#pragma unroll
        for (int u = 0; u < KPW; ++u) {
            float a = acc[u];
            for (int o = 16; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
            if (lane == 0 && tb + u < n) s[tb + u] = a * scale;
        }
    }
    __syncthreads();
    mx = __int_as_float(0xff800000);
    for (int t = threadIdx.x; t < n; t += blockDim.x) mx = fmaxf(mx, s[t]);
    mx = block_max(mx, red);
    sum = 0.f;
    for (int t = threadIdx.x; t < n; t += blockDim.x) { float e = expf(s[t] - mx); s[t] = e; sum += e; }
    sum = block_sum(sum, red);
    __syncthreads();
}

// q, out: [heads, d]; k, v: [kv_heads, max_ctx, d]; one block per query head; scores in shared memory
extern "C" __global__ void attend_f32(const float* q, const float* k,
                                      const float* v, float* out,
                                      const int* pos, int max_ctx, int group, int d,
                                      float scale, int window, unsigned short* outb) {
    lb_pdl_wait();     // launched with PDL: everything below may read what the kernel before wrote
    lb_pdl_trigger();  // then the next kernel may get resident (after the wait: no cascade, see pdl.cuh)
    extern __shared__ float sh[];           // [d] query, then [T] scores
    __shared__ float red[32];
    int h = blockIdx.x, kvh = h / group;
    int T = pos[0] + 1;
    int t0 = (window > 0 && T > window) ? T - window : 0;
    float* qs = sh;
    float* s = sh + d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) qs[j] = q[(long long)h * d + j];
    __syncthreads();
    const float* kb = k + (long long)kvh * max_ctx * d;
    const float* vb = v + (long long)kvh * max_ctx * d;
    float mx, sum;
    range_softmax(qs, kb + (long long)t0 * d, T - t0, d, scale, s, red, mx, sum);
    // out = sum_t p_t v_t: the block's threads split (d columns) x (key slices), several independent
    // loads in flight per thread; the slices' partials are summed in shared memory in a fixed order
    const int slices = max(1, (int)blockDim.x / d), n_t = T - t0, per = (n_t + slices - 1) / slices;
    float* part = sh + d + (n_t + 3) / 4 * 4;  // [slices][d], after the scores (launcher: 4 floats slack)
    for (int idx = threadIdx.x; idx < slices * d; idx += blockDim.x) {
        const int j = idx % d, a0 = t0 + (idx / d) * per, a1 = min(T, a0 + per);
        float acc = 0.f;
#pragma unroll 8
        for (int t = a0; t < a1; ++t) acc += s[t - t0] * vb[(long long)t * d + j];
        part[idx] = acc;
    }
    __syncthreads();
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float acc = 0.f;
        for (int q2 = 0; q2 < slices; ++q2) acc += part[q2 * d + j];
        if (outb) outb[(long long)h * d + j] = to_bf16_rne(acc / sum); else out[(long long)h * d + j] = acc / sum;
    }
}

// Flash-decoding (split keys): keys [t0, T) of head h are cut into gridDim.y ranges of `per` keys, per =
// max(min_per, ceil((T - t0) / gridDim.y)), one block each; a block writes its range's max m, exp-sum l and
// unnormalised output o[d] to ws[h][split] = {m, l, o[0..d)} (l = 0: empty range, o not written). The last
// block of head h to finish (counter cnt[h], self-resetting) combines them in split order:
// out = sum_s o_s e^(m_s - M) / sum_s l_s e^(m_s - M), M = max_s m_s, over the non-empty ranges (at most 32).
// Deterministic; the same range_softmax as attend_f32 per range. Shared memory: [d] query + [per] scores, and
// with stage != 0 the range's keys and values ([per, d] each, after the scores rounded up to 4 floats).
//
// stage (the launcher: d % 4 == 0 and the staged rows fit the shared memory): before its PDL wait a block
// copies its range's cached keys and values older than the position (written by earlier steps' attention,
// which completed before any kernel of this step could start; L2 is the point of coherence and the copies,
// cp.async.cg, do not go through L1) into shared memory, so that their DRAM reads overlap the q|k|v GEMV
// instead of following it; the position's own k and v go from registers to shared memory as they are made.
//
// Fused with qkv_rope_store (qy non-null, blockDim.x >= d): q is not read but made from the stacked q|k|v GEMV
// output (bias, q_norm, RoPE: head_in, head_value) by every block of the head, and the blocks whose range holds the
// position first make that position's k and v the same way and write them to the caches (the group's q heads
// write the same values), so no separate qkv_rope_store launch is needed.
// qy: the stacked q|k|v GEMV output (bf16 bits) or nullptr (q is given); qbias [(heads + 2 kv_heads) * d], qn,
// kn ([d], q_norm / k_norm): each optional; cs, sn: the RoPE tables [max positions, d].
extern "C" __global__ void attend_split(const float* q, float* k,
                                        float* v, float* out,
                                        const int* pos, int max_ctx, int group, int d,
                                        float scale, int window, unsigned short* outb,
                                        float* ws, int* cnt, int min_per,
                                        const unsigned short* qy, const float* qbias, const float* qn,
                                        const float* kn, const float* cs, const float* sn, float qeps,
                                        int heads, int kv_heads, int stage) {
    extern __shared__ float sh[];
    __shared__ float red[32];
    __shared__ int last;
    const int h = blockIdx.x, sp = blockIdx.y, splits = gridDim.y, kvh = h / group;
    const int T = pos[0] + 1;  // before the wait: see qkv_rope_store
    const int t0 = (window > 0 && T > window) ? T - window : 0;
    const int per = max(min_per, (T - t0 + splits - 1) / splits);
    const int a0 = min(T, t0 + sp * per), a1 = min(T, a0 + per), n = a1 - a0;
    float* w = ws + ((long long)h * splits + sp) * (d + 2);
    const bool fused = qy != nullptr && n > 0, cur = fused && a1 == T;  // cur: the range holds the position
    const long long p = T - 1;
    HeadIn qin, kin, vin;  // the constant tables first (before the wait), then the GEMV output: one round trip
    if (fused) qin = head_in(qbias, qn, cs, sn, p, h, 0, d);
    if (cur) {
        kin = head_in(qbias, kn, cs, sn, p, heads + kvh, 1, d);
        vin = head_in(qbias, nullptr, cs, sn, p, heads + kv_heads + kvh, 2, d);
    }
    const int s_pad = (per + 3) / 4 * 4;
    float* ks = sh + d + s_pad;      // stage: the range's keys [per, d], then its values
    float* vs = ks + (long long)per * d;
    if (stage && n > 0) {            // rows [a0, a1 - 1) or [a0, a1): older than the position (not written here)
        const int old = n - (a1 == T ? 1 : 0), chunks = old * d / 4;
        const float* kg = k + ((long long)kvh * max_ctx + a0) * d;
        const float* vg = v + ((long long)kvh * max_ctx + a0) * d;
        for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
            cp_async16(ks + 4 * c, kg + 4 * c);
            cp_async16(vs + 4 * c, vg + 4 * c);
        }
        cp_async_commit();
    }
#if LB_ATTEND_EARLY
    lb_pdl_trigger();  // the o_proj GEMV may copy its weights while the q|k|v GEMV still runs
#endif
    lb_pdl_wait();     // launched with PDL: everything below may read what the kernel before wrote
    lb_pdl_trigger();  // then the next kernel may get resident (after the wait: no cascade, see pdl.cuh)
    if (fused) {  // uniform over the block: the barriers inside are safe
        __shared__ float row[LB_SPLIT_THREADS];
        const float yq = head_y(qy, h, d);
        const float yk = cur ? head_y(qy, heads + kvh, d) : 0.f, yv = cur ? head_y(qy, heads + kv_heads + kvh, d) : 0.f;
        const float qv = head_value(yq, qin, qn != nullptr, 0, d, qeps, red, row);
        if (threadIdx.x < d) sh[threadIdx.x] = qv;
        if (cur) {  // the position's k and v into the caches, before they are read
            const int j = threadIdx.x;
            const long long at = ((long long)kvh * max_ctx + p) * d + j;
            const float kv = head_value(yk, kin, kn != nullptr, 1, d, qeps, red, row);
            const float vv = head_value(yv, vin, false, 2, d, qeps, red, row);
            if (j < d) {
                k[at] = kv;
                v[at] = vv;
                if (stage) { ks[(p - a0) * d + j] = kv; vs[(p - a0) * d + j] = vv; }
            }
        }
    }
    if (n > 0) {
        float* qs = sh;
        float* s = sh + d;
        if (qy == nullptr) {
            for (int j = threadIdx.x; j < d; j += blockDim.x) qs[j] = q[(long long)h * d + j];
            if (stage && a1 == T)  // the position's row: the kernel before this one wrote it
                for (int j = threadIdx.x; j < d; j += blockDim.x) {
                    ks[(p - a0) * d + j] = k[((long long)kvh * max_ctx + p) * d + j];
                    vs[(p - a0) * d + j] = v[((long long)kvh * max_ctx + p) * d + j];
                }
        }
        if (stage) cp_async_wait_all();
        __syncthreads();
        const float* kr = stage ? ks : k + ((long long)kvh * max_ctx + a0) * d;
        const float* vr = stage ? vs : v + ((long long)kvh * max_ctx + a0) * d;
        float mx, sum;
        range_softmax(qs, kr, n, d, scale, s, red, mx, sum);
        for (int j = threadIdx.x; j < d; j += blockDim.x) {
            float acc = 0.f;
#pragma unroll 8
            for (int t = 0; t < n; ++t) acc += s[t] * vr[(long long)t * d + j];
            w[2 + j] = acc;
        }
        if (threadIdx.x == 0) { w[0] = mx; w[1] = sum; }
    } else if (threadIdx.x == 0) {
        w[0] = __int_as_float(0xff800000);
        w[1] = 0.f;
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(cnt + h, 1) == splits - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    // combine: warp 0 turns the ranges' (m, l) into weights e^(m_s - M) / L (ranges past `active` are
    // empty), then every thread sums its columns over the ranges: two rounds of independent loads
    __shared__ float wsc[32];
    const float* wh = ws + (long long)h * splits * (d + 2);
    const int active = min(splits, (T - t0 + per - 1) / per);
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        const float m = lane < active ? __ldcg(wh + (long long)lane * (d + 2)) : __int_as_float(0xff800000);
        const float l = lane < active ? __ldcg(wh + (long long)lane * (d + 2) + 1) : 0.f;
        float M = m;
        for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
        const float e = lane < active ? expf(m - M) : 0.f;
        float L = l * e;
        for (int o = 16; o > 0; o >>= 1) L += __shfl_xor_sync(0xffffffffu, L, o);
        wsc[lane] = e / L;
    }
    __syncthreads();
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float acc = 0.f;
#pragma unroll 4
        for (int q2 = 0; q2 < active; ++q2) acc += __ldcg(wh + (long long)q2 * (d + 2) + 2 + j) * wsc[q2];
        if (outb) outb[(long long)h * d + j] = to_bf16_rne(acc); else out[(long long)h * d + j] = acc;
    }
    if (threadIdx.x == 0) cnt[h] = 0;
}
""".replace("LB_SPLIT_THREADS", str(SPLIT_THREADS))



def split_stage(d: int, per: int) -> bool:
    """Whether attend_split stages its ranges' keys and values (per keys of d floats each) in shared memory."""
    return ATTEND_STAGE and d % 4 == 0 and split_smem(d, per, True) <= STAGE_SMEM


def split_smem(d: int, per: int, stage: bool) -> int:
    """attend_split's dynamic shared memory: the query, the scores and, staged, the range's keys and values."""
    return 4 * (d + (-(-per // 4) * 4 + 2 * per * d if stage else per))


def attend_splits(span: int) -> int:
    """Key ranges per head for a graph bucket of `span` positions (static: the grid of a captured graph)."""
    return max(1, min(SPLIT_MAX, -(-span // SPLIT_MIN_KEYS)))


class Attention:
    """The two attention kernels of a compiled module and attend_split's workspaces."""

    def __init__(self, mod, launch):
        import cupy

        self.cp = cupy
        self._launch = launch
        self._attend = mod.get_function("attend_f32")
        self._attend_split = mod.get_function("attend_split")
        self._split_bufs: dict = {}

    def _split_ws(self, heads: int, splits: int, d: int):
        """attend_split's partials [heads, splits, d + 2] f32 and per-head counters (zeroed once, self-resetting),
        one pair per shape, shared by every layer (the attention launches of a step run one after another)."""
        key = (heads, splits, d, self.cp.cuda.Device().id)
        if key not in self._split_bufs:
            from lowbit.kernels import device_buffers  # not from the graph decoder's pool (see that module)

            self._split_bufs[key] = (device_buffers.empty(heads * splits * (d + 2), np.float32),
                                     device_buffers.zeros(heads, np.int32))
        return self._split_bufs[key]

    def attend(self, q, k_cache, v_cache, pos, span: int, scale: float, window: int | None, bf16: bool = False,
               qkv: dict | None = None):
        """q [heads, D] f32 of one token at device position pos -> [heads, D] f32, or bf16 (rounded as
        astype would) when it only feeds the o_proj GEMV.

        qkv (fused, see fuses_qkv): q is None and made inside attend_split from qkv["y"] (the stacked q|k|v
        GEMV output, bf16 [1, (heads + 2 kv_heads) D]) with qkv's bias, q_norm / k_norm ("qn", "kn"),
        "eps", RoPE tables "cos" / "sin" and "heads"; the position's k and v are written to the caches too."""
        cp = self.cp
        kv_heads, max_ctx, d = k_cache.shape
        heads = qkv["heads"] if qkv else q.shape[0]
        null = np.uint64(0)
        if bf16:
            from lowbit.formats.numerics import BF16

            out = cp.empty((heads, d), dtype=BF16)
            outs = (null, out)
        else:
            out = cp.empty((heads, d), dtype=cp.float32)
            outs = (out, null)
        common = (cp.ascontiguousarray(q) if qkv is None else null, k_cache, v_cache, outs[0], pos, np.int32(max_ctx),
                  np.int32(heads // kv_heads), np.int32(d), np.float32(scale), np.int32(window or 0), outs[1])
        if ATTEND_SPLIT:
            splits = attend_splits(span)
            ws, cnt = self._split_ws(heads, splits, d)
            per = max(SPLIT_MIN_KEYS, -(-span // splits))
            stage = split_stage(d, per) and k_cache.data.ptr % 16 == 0 and v_cache.data.ptr % 16 == 0
            opt = lambda a: null if a is None else a  # noqa: E731
            fused = ((qkv["y"], opt(qkv.get("bias")), opt(qkv.get("qn")), opt(qkv.get("kn")), qkv["cos"], qkv["sin"],
                      np.float32(qkv["eps"])) if qkv else (null,) * 6 + (np.float32(0),))
            self._launch(self._attend_split, (heads, splits), (SPLIT_THREADS,),
                         common + (ws, cnt, np.int32(SPLIT_MIN_KEYS)) + fused
                         + (np.int32(heads), np.int32(kv_heads), np.int32(stage)),
                         shared_mem=split_smem(d, per, stage))
        else:
            if qkv is not None:
                raise ValueError("attend: the fused q|k|v input needs attend_split (LOWBIT_ATTEND_SPLIT=1)")
            smem = 4 * (d + span + 4 + max(1, ATTEND_THREADS // d) * d)
            self._launch(self._attend, (heads,), (ATTEND_THREADS,), common, shared_mem=smem)
        return out

    @staticmethod
    def fuses_qkv(d: int) -> bool:
        """Whether attend(qkv=...) can take the q|k|v GEMV output directly for head size d."""
        return ATTEND_SPLIT and ATTEND_QKV and d <= SPLIT_THREADS
