// moe_router.cuh: the MoE router's device pieces, shared by moe_route.cu (router_fused, router_add_norm) and
// the fused router + gate/up decode GEMV (gemv_grouped.cuh, gemv_moe_route_gate_up_*): a warp's router row
// loaded before the PDL wait, one expert's logit by one warp, and the top-k of one token by a whole block.
// Header only, global namespace. Reference: lowbit/verify/moe_reference.py.
#pragma once
#include "moe_common.cuh"

// The first ROUTER_PRE 16-byte chunks per lane of a warp's router row (all of it for H <= 2048): loaded
// before griddepcontrol.wait by the PDL-launched kernels (the router weight is constant), so that their
// DRAM round trip overlaps the previous kernel.
#define ROUTER_PRE 8
// (the warp's expert e; past E: zeros)
__device__ __forceinline__ void router_preload_row(const bf16* __restrict__ wr, int e, int E, int H,
                                                   uint4 (&pre)[ROUTER_PRE]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int u = 0; u < ROUTER_PRE; ++u) {
        const int c = lane + 32 * u;
        pre[u] = (e < E && c < H / 8) ? __ldg(reinterpret_cast<const uint4*>(wr + (size_t)e * H) + c)
                                      : make_uint4(0u, 0u, 0u, 0u);
    }
}

__device__ __forceinline__ float dot_bf16x8(uint4 a, uint4 b, float s) {
    const uint32_t av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 fa = __bfloat1622float2(*reinterpret_cast<const bf162*>(&av[i]));
        const float2 fb = __bfloat1622float2(*reinterpret_cast<const bf162*>(&bv[i]));
        s = fmaf(fa.x, fb.x, s);
        s = fmaf(fa.y, fb.y, s);
    }
    return s;
}

// The logit x . Wr[e] of expert e < E for the x row xrow (global or shared memory), by one warp (every lane
// returns it). pre: the row's first chunks (router_preload_row) or nullptr to load them here.
__device__ __forceinline__ float router_logit(const bf16* xrow, const bf16* __restrict__ wr, int e, int H,
                                              const uint4 (*pre)[ROUTER_PRE] = nullptr) {
    const int lane = threadIdx.x & 31;
    const uint4* xr = reinterpret_cast<const uint4*>(xrow);
    const uint4* w = reinterpret_cast<const uint4*>(wr + (size_t)e * H);
    float s = 0.f;
    for (int base = 0; base < H / 8; base += 32 * ROUTER_PRE) {  // 8 independent 16-byte loads in flight per lane
        uint4 a[ROUTER_PRE], b[ROUTER_PRE];
#pragma unroll
        for (int u = 0; u < ROUTER_PRE; ++u) {
            const int c = base + lane + 32 * u;
            if (c < H / 8) { a[u] = xr[c]; b[u] = (base == 0 && pre) ? (*pre)[u] : __ldg(w + c); }
        }
#pragma unroll
        for (int u = 0; u < ROUTER_PRE; ++u)
            if (base + lane + 32 * u < H / 8) s = dot_bf16x8(a[u], b[u], s);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    return s;
}

// top-k of one token by a whole block (E <= blockDim.x): thread e computes the rank of logit e
// (larger first, ties to the lower index); the k winners are placed by rank. Same weights as topk_token.
__device__ void topk_token_block(const float* __restrict__ logits, int t, int E, int k, int norm, int renorm,
                                 int* __restrict__ ids, float* __restrict__ wts) {
    __shared__ __align__(16) float lg[MAXV * 32];
    __shared__ float sel[32];
    __shared__ float red[32];
    const int tid = threadIdx.x, E4 = (E + 3) / 4;
    __syncthreads();  // the shared arrays are reused token after token
    for (int e = tid; e < 4 * E4; e += blockDim.x) lg[e] = e < E ? nan_to_ninf(__ldcg(logits + (size_t)t * E + e)) : -INFINITY;
    __syncthreads();
    float v = tid < E ? lg[tid] : -INFINITY;
    int r = 0;
    if (tid < E) {  // 4 logits per shared load; the -inf padding past E never outranks (its index is > tid)
        const float4* lg4 = reinterpret_cast<const float4*>(lg);
#pragma unroll 4
        for (int j4 = 0; j4 < E4; ++j4) {
            const float4 u = lg4[j4];
            const int j = 4 * j4;
            r += (u.x > v) || (u.x == v && j < tid);
            r += (u.y > v) || (u.y == v && j + 1 < tid);
            r += (u.z > v) || (u.z == v && j + 2 < tid);
            r += (u.w > v) || (u.w == v && j + 3 < tid);
        }
    }
    if (tid < E && r < k) {
        sel[r] = v;
        ids[(size_t)t * k + r] = tid;
    }
    __syncthreads();
    const float mx = sel[0];
    float ex = tid < E ? __expf(v - mx) : 0.f;  // softmax denominator over all E (Qwen3)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ex += __shfl_xor_sync(0xffffffffu, ex, o);
    if ((tid & 31) == 0) red[tid >> 5] = ex;
    __syncthreads();
    if (tid < k) {
        float total = 0.f, chosen_sum = 0.f;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) total += red[w];
        for (int j = 0; j < k; ++j) chosen_sum += __expf(sel[j] - mx);
        const float p = __expf(sel[tid] - mx);
        float w;
        if (norm == 0) w = p / chosen_sum;
        else if (renorm) w = (p / total) / (chosen_sum / total);
        else w = p / total;
        wts[(size_t)t * k + tid] = w;
    }
}

