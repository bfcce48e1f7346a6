// moe_common.cuh: device helpers shared by moe_route.cu and moe_decode.cu (warp top-k with the
// Mixtral / Qwen3-MoE normalisations, see moe_route.cu). Header only.
#pragma once
#include "gemm_common.cuh"

#ifndef MAXV
#define MAXV 8  // logits per lane: E <= 32 * MAXV
#endif

// A NaN logit ranks as -inf: NaN compares false with everything, so without this the argmax below keeps its
// sentinel index 0x7fffffff and an out-of-range expert id reaches the permutation and the expert GEMVs
// (an illegal address). Every id written is in [0, E) whatever the logits hold.
// (a bit test: fast-math builds may fold v != v away)
__device__ __forceinline__ float nan_to_ninf(float v) {
    return (__float_as_uint(v) & 0x7fffffffu) > 0x7f800000u ? -INFINITY : v;
}

// top-k of one token's logits by one warp (see the header for the normalisations)
__device__ __forceinline__ void topk_token(const float* __restrict__ logits, int t, int E, int k, int norm, int renorm,
                                           int* __restrict__ ids, float* __restrict__ wts, int lane) {
    float v[MAXV];
    bool taken[MAXV];
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
        const int e = lane + 32 * i;
        v[i] = e < E ? nan_to_ninf(__ldcg(logits + (size_t)t * E + e)) : -INFINITY;
        taken[i] = e >= E;
        mx = fmaxf(mx, v[i]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float total = 0.f;  // sum over all E of exp(l - max) (Qwen3 softmax denominator)
#pragma unroll
    for (int i = 0; i < MAXV; ++i)
        if (lane + 32 * i < E) total += __expf(v[i] - mx);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffffu, total, o);

    float chosen_l = 0.f, chosen_sum = 0.f;  // lane j < k keeps the j-th chosen logit
    for (int j = 0; j < k; ++j) {
        float bv = -INFINITY;
        int be = 0x7fffffff;
#pragma unroll
        for (int i = 0; i < MAXV; ++i)
            if (!taken[i] && (v[i] > bv || (v[i] == bv && lane + 32 * i < be))) { bv = v[i]; be = lane + 32 * i; }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oe = __shfl_xor_sync(0xffffffffu, be, o);
            if (ov > bv || (ov == bv && oe < be)) { bv = ov; be = oe; }
        }
#pragma unroll
        for (int i = 0; i < MAXV; ++i)
            if (lane + 32 * i == be) taken[i] = true;
        if (lane == j) chosen_l = bv;
        if (lane == 0) ids[(size_t)t * k + j] = be;
        chosen_sum += __expf(bv - mx);  // the first chosen is the max: exp(0) = 1
    }
    if (lane < k) {
        const float p = __expf(chosen_l - mx);
        float w;
        if (norm == 0) w = p / chosen_sum;          // Mixtral: softmax over the k chosen logits
        else if (renorm) w = (p / total) / (chosen_sum / total);
        else w = p / total;                         // Qwen3 without norm_topk_prob
        wts[(size_t)t * k + lane] = w;
    }
}

