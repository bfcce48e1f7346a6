// moe_decode.cu: the MoE expert MLP for a few tokens (decode) as grouped GEMVs. Each chosen expert's
// rows are streamed once per (token, slot) with 16-byte loads and dequantized in registers; no
// permutation, no atomics. Reference: lowbit/verify/moe_reference.py (moe_experts_ref).
//
// Weights as on disk, stacked over experts (see gemm_w16.cu for the SCHEME layouts 0..3):
//   gate, up [E, I, H]; down [E, H, I]. ids i32 [T*k] (pair p = t*k + j), wts f32 [T*k].
// moe_decode_gate_up: h bf16 [T*k, I], h[p, i] = silu(gate_e[i] . x_t) * (up_e[i] . x_t), e = ids[p].
//   grid (ceil(I/8), T*k), block 256 (one warp per row i, both gate and up), dynamic smem H*2 (x_t).
// moe_decode_down: out bf16 [T, H], out[t, n] = sum_j wts[t*k+j] * (down_{ids[t*k+j]}[n] . h[t*k+j]).
//   grid (ceil(H/8), T), block 256 (one warp per output row), dynamic smem k*I*2 (the token's h rows).
// Preconditions (launcher): H and I multiples of 32; k <= 32; contiguous, 16-byte aligned operands.
#include "moe_common.cuh"

#ifndef SCHEME
#define SCHEME 1
#endif
#ifndef INT4_GROUP
#define INT4_GROUP 128
#endif
#define U 8  // chunks in flight per lane (gate/up)
#define UD 16  // chunks in flight per lane (down: k experts x I/EPC chunks per row)

#if SCHEME == 0
#define EPC 8
#elif SCHEME == 1
#define EPC 16
#else
#define EPC 32
#endif

__device__ __forceinline__ size_t row_bytes(int K) { return (size_t)K * 16 / EPC; }  // bytes per weight row

// dot of one 16-byte weight chunk (EPC elements) with EPC bf16 activations in shared memory
__device__ __forceinline__ float chunk_dot(const uint4 raw, const bf16* xk, const Scl& s) {
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
    const uint4* x4 = reinterpret_cast<const uint4*>(xk);
    float acc = 0.f;
#if SCHEME == 0
    const uint4 xv = x4[0];
    const uint32_t xa[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 a = __bfloat1622float2(*reinterpret_cast<const bf162*>(&w[i]));
        const float2 b = __bfloat1622float2(*reinterpret_cast<const bf162*>(&xa[i]));
        acc = fmaf(a.x, b.x, fmaf(a.y, b.y, acc));
    }
    return acc;
#elif SCHEME == 1
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const uint4 xv = x4[h];
        const uint32_t xa[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const uint32_t q = w[2 * h + i];
            const float2 a = e4m3x2_to_float2(q & 0xffff), b = e4m3x2_to_float2(q >> 16);
            const float2 xa0 = __bfloat1622float2(*reinterpret_cast<const bf162*>(&xa[2 * i]));
            const float2 xa1 = __bfloat1622float2(*reinterpret_cast<const bf162*>(&xa[2 * i + 1]));
            acc = fmaf(a.x, xa0.x, fmaf(a.y, xa0.y, fmaf(b.x, xa1.x, fmaf(b.y, xa1.y, acc))));
        }
    }
    return acc * s.s0;
#else
    float part[2] = {0.f, 0.f};
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // word i: elements 8i..8i+7
        const uint4 xv = x4[i];
        const uint32_t xa[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float2 xf = __bfloat1622float2(*reinterpret_cast<const bf162*>(&xa[j]));
            const uint32_t b = (w[i] >> (8 * j)) & 0xff;
#if SCHEME == 2
            const float2 v = e2m1x2_to_float2_scaled(b, 1.0f);
            part[i >> 1] = fmaf(v.x, xf.x, fmaf(v.y, xf.y, part[i >> 1]));
#else
            const float lo = (float)(int)((b & 0xf) - s.z), hi = (float)(int)((b >> 4) - s.z);
            part[0] = fmaf(lo, xf.x, fmaf(hi, xf.y, part[0]));
#endif
        }
    }
#if SCHEME == 2
    return part[0] * s.s0 + part[1] * s.s1;
#else
    return part[0] * s.s0;
#endif
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ void copy_to_smem(bf16* dst, const bf16* src, int n) {
    for (int c = threadIdx.x; c < n / 8; c += blockDim.x)
        reinterpret_cast<uint4*>(dst)[c] = reinterpret_cast<const uint4*>(src)[c];
}

extern "C" __global__ void __launch_bounds__(256, 3) moe_decode_gate_up(
    const bf16* __restrict__ x, const int* __restrict__ ids, int k, int E, int I, int H,
    const uint8_t* __restrict__ gq, const void* __restrict__ gsc, const int32_t* __restrict__ gz,
    const float* __restrict__ gg, const uint8_t* __restrict__ uq, const void* __restrict__ usc,
    const int32_t* __restrict__ uz, const float* __restrict__ ug, bf16* __restrict__ h) {
    extern __shared__ __align__(16) uint8_t smem_raw[];
    bf16* xs = reinterpret_cast<bf16*>(smem_raw);
    const int p = blockIdx.y, t = p / k, e = ids[p];
    const int lane = threadIdx.x & 31, i = min(blockIdx.x * 8 + (threadIdx.x >> 5), I - 1);
    const float g_gs = (SCHEME == 2) ? gg[e] : 1.f, u_gs = (SCHEME == 2) ? ug[e] : 1.f;
    const uint8_t* grow = gq + ((size_t)e * I + i) * row_bytes(H);
    const uint8_t* urow = uq + ((size_t)e * I + i) * row_bytes(H);
    const int cpr = H / EPC, total = 2 * cpr;
    uint4 raw[U];
    Scl sc[U];
    auto fetch = [&](int base) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int idx = base + lane + 32 * u;
            if (idx < total) {
                const bool up = idx >= cpr;
                const int c = up ? idx - cpr : idx;
                raw[u] = __ldg(reinterpret_cast<const uint4*>(up ? urow : grow) + c);
                sc[u] = up ? load_scale<SCHEME, INT4_GROUP>(e, i, c * EPC, I, H, usc, uz, u_gs)
                           : load_scale<SCHEME, INT4_GROUP>(e, i, c * EPC, I, H, gsc, gz, g_gs);
            }
        }
    };
    fetch(0);  // the first weight loads fly while x is staged in shared memory
    copy_to_smem(xs, x + (size_t)t * H, H);
    __syncthreads();
    if (blockIdx.x * 8 + (threadIdx.x >> 5) >= I) return;
    float sg = 0.f, su = 0.f;
    for (int base = 0; base < total; base += 32 * U) {
        if (base > 0) fetch(base);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int idx = base + lane + 32 * u;
            if (idx < total) {
                const bool up = idx >= cpr;
                const int c = up ? idx - cpr : idx;
                const float d = chunk_dot(raw[u], xs + c * EPC, sc[u]);
                if (up) su += d; else sg += d;
            }
        }
    }
    sg = warp_sum(sg);
    su = warp_sum(su);
    if (lane == 0) h[(size_t)p * I + i] = __float2bfloat16_rn(silu(sg) * su);
}

extern "C" __global__ void __launch_bounds__(256, 2) moe_decode_down(
    const bf16* __restrict__ h, const int* __restrict__ ids, const float* __restrict__ wts, int k, int E, int H,
    int I, const uint8_t* __restrict__ dq, const void* __restrict__ dsc, const int32_t* __restrict__ dz,
    const float* __restrict__ dg, bf16* __restrict__ out) {
    extern __shared__ __align__(16) uint8_t smem_raw[];
    bf16* hs = reinterpret_cast<bf16*>(smem_raw);
    const int t = blockIdx.y;
    const int lane = threadIdx.x & 31, n = min(blockIdx.x * 8 + (threadIdx.x >> 5), H - 1);
    const int cpr = I / EPC, total = k * cpr;
    uint4 raw[UD];
    Scl sc[UD];
    auto fetch = [&](int base) {
#pragma unroll
        for (int u = 0; u < UD; ++u) {
            const int idx = base + lane + 32 * u;
            if (idx < total) {
                const int j = idx / cpr, c = idx - j * cpr, e = __ldg(ids + t * k + j);
                raw[u] = __ldg(reinterpret_cast<const uint4*>(dq + ((size_t)e * H + n) * row_bytes(I)) + c);
                sc[u] = load_scale<SCHEME, INT4_GROUP>(e, n, c * EPC, H, I, dsc, dz, (SCHEME == 2) ? __ldg(dg + e) : 1.f);
            }
        }
    };
    fetch(0);  // the first weight loads fly while the token's h rows are staged
    copy_to_smem(hs, h + (size_t)t * k * I, k * I);
    __syncthreads();
    if (blockIdx.x * 8 + (threadIdx.x >> 5) >= H) return;
    float acc = 0.f;
    for (int base = 0; base < total; base += 32 * UD) {
        if (base > 0) fetch(base);
#pragma unroll
        for (int u = 0; u < UD; ++u) {
            const int idx = base + lane + 32 * u;
            if (idx < total) {
                const int j = idx / cpr, c = idx - j * cpr;
                acc = fmaf(__ldg(wts + t * k + j), chunk_dot(raw[u], hs + j * I + c * EPC, sc[u]), acc);
            }
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) out[(size_t)t * H + n] = __float2bfloat16_rn(acc);
}

// ---- staged variants: each warp's weight rows are copied whole into shared memory with cp.async
// (no registers held per load, so many more bytes are in flight per SM), then consumed from there.
// Same math and grids as above; dynamic smem: gate_up H*2 + 16*row_bytes(H); down k*I*2 + 8*k*row_bytes(I).
// The launcher uses them when that fits (<= 160 KiB), else the register kernels.
extern "C" __global__ void __launch_bounds__(256) moe_decode_gate_up_staged(
    const bf16* __restrict__ x, const int* __restrict__ ids, int k, int E, int I, int H,
    const uint8_t* __restrict__ gq, const void* __restrict__ gsc, const int32_t* __restrict__ gz,
    const float* __restrict__ gg, const uint8_t* __restrict__ uq, const void* __restrict__ usc,
    const int32_t* __restrict__ uz, const float* __restrict__ ug, bf16* __restrict__ h) {
    extern __shared__ __align__(16) uint8_t smem_raw[];
    bf16* xs = reinterpret_cast<bf16*>(smem_raw);
    const int p = blockIdx.y, t = p / k, e = ids[p];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, i = min(blockIdx.x * 8 + warp, I - 1);
    const int cpr = H / EPC, total = 2 * cpr;
    uint8_t* wb = smem_raw + (size_t)H * 2 + (size_t)warp * 2 * row_bytes(H);
    const uint8_t* grow = gq + ((size_t)e * I + i) * row_bytes(H);
    const uint8_t* urow = uq + ((size_t)e * I + i) * row_bytes(H);
    for (int c = lane; c < total; c += 32)
        cp_async16(wb + (size_t)c * 16, (c < cpr ? grow + (size_t)c * 16 : urow + (size_t)(c - cpr) * 16), true);
    cp_async_commit();
    const float g_gs = (SCHEME == 2) ? gg[e] : 1.f, u_gs = (SCHEME == 2) ? ug[e] : 1.f;
    Scl sc[U];
    auto scales = [&](int base) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int idx = base + lane + 32 * u;
            if (idx < total) {
                const bool up = idx >= cpr;
                const int c = up ? idx - cpr : idx;
                sc[u] = up ? load_scale<SCHEME, INT4_GROUP>(e, i, c * EPC, I, H, usc, uz, u_gs)
                           : load_scale<SCHEME, INT4_GROUP>(e, i, c * EPC, I, H, gsc, gz, g_gs);
            }
        }
    };
    scales(0);
    copy_to_smem(xs, x + (size_t)t * H, H);
    cp_async_wait<0>();
    __syncthreads();
    if (blockIdx.x * 8 + warp >= I) return;
    float sg = 0.f, su = 0.f;
    for (int base = 0; base < total; base += 32 * U) {
        if (base > 0) scales(base);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int idx = base + lane + 32 * u;
            if (idx < total) {
                const bool up = idx >= cpr;
                const int c = up ? idx - cpr : idx;
                const float d = chunk_dot(reinterpret_cast<const uint4*>(wb)[idx], xs + c * EPC, sc[u]);
                if (up) su += d; else sg += d;
            }
        }
    }
    sg = warp_sum(sg);
    su = warp_sum(su);
    if (lane == 0) h[(size_t)p * I + i] = __float2bfloat16_rn(silu(sg) * su);
}

extern "C" __global__ void __launch_bounds__(256) moe_decode_down_staged(
    const bf16* __restrict__ h, const int* __restrict__ ids, const float* __restrict__ wts, int k, int E, int H,
    int I, const uint8_t* __restrict__ dq, const void* __restrict__ dsc, const int32_t* __restrict__ dz,
    const float* __restrict__ dg, bf16* __restrict__ out) {
    extern __shared__ __align__(16) uint8_t smem_raw[];
    bf16* hs = reinterpret_cast<bf16*>(smem_raw);
    const int t = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n = min(blockIdx.x * 8 + warp, H - 1);
    const int cpr = I / EPC, total = k * cpr;
    uint8_t* wb = smem_raw + (size_t)k * I * 2 + (size_t)warp * k * row_bytes(I);
    for (int idx = lane; idx < total; idx += 32) {
        const int j = idx / cpr, c = idx - j * cpr, e = __ldg(ids + t * k + j);
        cp_async16(wb + (size_t)idx * 16, dq + ((size_t)e * H + n) * row_bytes(I) + (size_t)c * 16, true);
    }
    cp_async_commit();
    Scl sc[U];
    auto scales = [&](int base) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int idx = base + lane + 32 * u;
            if (idx < total) {
                const int j = idx / cpr, c = idx - j * cpr, e = __ldg(ids + t * k + j);
                sc[u] = load_scale<SCHEME, INT4_GROUP>(e, n, c * EPC, H, I, dsc, dz, (SCHEME == 2) ? __ldg(dg + e) : 1.f);
            }
        }
    };
    scales(0);
    copy_to_smem(hs, h + (size_t)t * k * I, k * I);
    cp_async_wait<0>();
    __syncthreads();
    if (blockIdx.x * 8 + warp >= H) return;
    float acc = 0.f;
    for (int base = 0; base < total; base += 32 * U) {
        if (base > 0) scales(base);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int idx = base + lane + 32 * u;
            if (idx < total) {
                const int j = idx / cpr, c = idx - j * cpr;
                acc = fmaf(__ldg(wts + t * k + j),
                           chunk_dot(reinterpret_cast<const uint4*>(wb)[idx], hs + j * I + c * EPC, sc[u]), acc);
            }
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) out[(size_t)t * H + n] = __float2bfloat16_rn(acc);
}

// ---- one persistent launch for the whole decode step (router + gate/up + down) ----------------------
// moe_decode_fused: every CTA is resident (grid = 2 per SM, which __launch_bounds__(256, 2) and
// <= 96 KiB of shared memory guarantee on an otherwise idle GPU), phases are
// separated by a grid barrier on bar[2] (arrival count, generation; zero once, self-resetting):
//   1. logits[t, e] = x_t . router_e (one warp per (t, e), grid-stride), barrier;
//   2. every CTA ranks the logits itself (warp t: top-k of token t into shared memory);
//   3. h[p, i] = silu(gate_e[i] . x_t) * (up_e[i] . x_t), one warp per (pair p, row i), barrier;
//   4. out[t, n] = sum_j w_tj * (down_{e_tj}[n] . h[t*k + j]), one warp per (t, n).
// Same math as router_fused + moe_decode_gate_up + moe_decode_down. T * k <= 32, E <= 32 * MAXV.
// Dynamic smem: max(T*H, T*k*I) * 2 bytes.
__device__ __forceinline__ void grid_barrier(unsigned int* bar) {
    __syncthreads();
    if (threadIdx.x == 0) {
        volatile unsigned int* vgen = bar + 1;
        const unsigned int gen = *vgen;
        __threadfence();
        if (atomicAdd(bar, 1u) == gridDim.x - 1) {
            bar[0] = 0u;
            __threadfence();
            atomicAdd(bar + 1, 1u);
        } else {
            long long spins = 0;
            while (*vgen == gen) {
                __nanosleep(64);
                if (++spins > (1LL << 26)) __trap();  // a CTA that never arrives: fail loudly, never hang
            }
        }
        __threadfence();
    }
    __syncthreads();
}

extern "C" __global__ void __launch_bounds__(256, 2) moe_decode_fused(
    const bf16* __restrict__ x, const bf16* __restrict__ wr, int T, int E, int k, int I, int H, int norm, int renorm,
    const uint8_t* __restrict__ gq, const void* __restrict__ gsc, const int32_t* __restrict__ gz,
    const float* __restrict__ gg, const uint8_t* __restrict__ uq, const void* __restrict__ usc,
    const int32_t* __restrict__ uz, const float* __restrict__ ug, const uint8_t* __restrict__ dq,
    const void* __restrict__ dsc, const int32_t* __restrict__ dz, const float* __restrict__ dg,
    float* __restrict__ logits, bf16* __restrict__ h, bf16* __restrict__ out, unsigned int* __restrict__ bar) {
    extern __shared__ __align__(16) uint8_t smem_raw[];
    bf16* buf = reinterpret_cast<bf16*>(smem_raw);  // x rows (phases 1-3), then h rows (phase 4)
    __shared__ int sid[32];
    __shared__ float swt[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gw = blockIdx.x * 8 + warp, nw = gridDim.x * 8;
    copy_to_smem(buf, x, T * H);
    __syncthreads();
    // 1. router logits
    for (int item = gw; item < T * E; item += nw) {
        const int t = item / E, e = item - t * E;
        const uint4* xr = reinterpret_cast<const uint4*>(buf + (size_t)t * H);
        const uint4* w = reinterpret_cast<const uint4*>(wr + (size_t)e * H);
        float s = 0.f;
        for (int c = lane; c < H / 8; c += 32) {
            const uint4 a = xr[c], b = __ldg(w + c);
            const uint32_t av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const float2 fa = __bfloat1622float2(*reinterpret_cast<const bf162*>(&av[q]));
                const float2 fb = __bfloat1622float2(*reinterpret_cast<const bf162*>(&bv[q]));
                s = fmaf(fa.x, fb.x, fmaf(fa.y, fb.y, s));
            }
        }
        s = warp_sum(s);
        if (lane == 0) logits[item] = s;
    }
    grid_barrier(bar);
    // 2. top-k, redundantly in every CTA
    if (warp < T) topk_token(logits, warp, E, k, norm, renorm, sid, swt, lane);
    __syncthreads();
    // 3. gate/up
    const int cpr = H / EPC;
    for (int item = gw; item < T * k * I; item += nw) {
        const int p = item / I, i = item - p * I, t = p / k, e = sid[p];
        const float g_gs = (SCHEME == 2) ? gg[e] : 1.f, u_gs = (SCHEME == 2) ? ug[e] : 1.f;
        const uint8_t* grow = gq + ((size_t)e * I + i) * row_bytes(H);
        const uint8_t* urow = uq + ((size_t)e * I + i) * row_bytes(H);
        float sg = 0.f, su = 0.f;
        for (int base = 0; base < 2 * cpr; base += 32 * U) {
            uint4 raw[U];
            Scl sc[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int idx = base + lane + 32 * u;
                if (idx < 2 * cpr) {
                    const bool up = idx >= cpr;
                    const int c = up ? idx - cpr : idx;
                    raw[u] = __ldg(reinterpret_cast<const uint4*>(up ? urow : grow) + c);
                    sc[u] = up ? load_scale<SCHEME, INT4_GROUP>(e, i, c * EPC, I, H, usc, uz, u_gs)
                               : load_scale<SCHEME, INT4_GROUP>(e, i, c * EPC, I, H, gsc, gz, g_gs);
                }
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int idx = base + lane + 32 * u;
                if (idx < 2 * cpr) {
                    const bool up = idx >= cpr;
                    const int c = up ? idx - cpr : idx;
                    const float d = chunk_dot(raw[u], buf + (size_t)t * H + c * EPC, sc[u]);
                    if (up) su += d; else sg += d;
                }
            }
        }
        sg = warp_sum(sg);
        su = warp_sum(su);
        if (lane == 0) h[(size_t)p * I + i] = __float2bfloat16_rn(silu(sg) * su);
    }
    grid_barrier(bar);
    // 4. down, weighted sum over the k experts of each token
    for (int c = threadIdx.x; c < T * k * I / 8; c += blockDim.x)
        reinterpret_cast<uint4*>(buf)[c] = __ldcg(reinterpret_cast<const uint4*>(h) + c);
    __syncthreads();
    const int cpd = I / EPC;
    for (int item = gw; item < T * H; item += nw) {
        const int t = item / H, n = item - t * H;
        float acc = 0.f;
        for (int base = 0; base < k * cpd; base += 32 * U) {
            uint4 raw[U];
            Scl sc[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int idx = base + lane + 32 * u;
                if (idx < k * cpd) {
                    const int j = idx / cpd, c = idx - j * cpd, e = sid[t * k + j];
                    raw[u] = __ldg(reinterpret_cast<const uint4*>(dq + ((size_t)e * H + n) * row_bytes(I)) + c);
                    sc[u] = load_scale<SCHEME, INT4_GROUP>(e, n, c * EPC, H, I, dsc, dz, (SCHEME == 2) ? dg[e] : 1.f);
                }
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int idx = base + lane + 32 * u;
                if (idx < k * cpd) {
                    const int j = idx / cpd, c = idx - j * cpd;
                    acc = fmaf(swt[t * k + j], chunk_dot(raw[u], buf + (size_t)(t * k + j) * I + c * EPC, sc[u]), acc);
                }
            }
        }
        acc = warp_sum(acc);
        if (lane == 0) out[item] = __float2bfloat16_rn(acc);
    }
}
