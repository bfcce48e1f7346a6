// moe_common.cuh: device helpers shared by moe_route.cu and moe_decode.cu (warp top-k with the
// Mixtral / Qwen3-MoE normalisations, see moe_route.cu). Header only.
#pragma once
#include "gemm_common.cuh"
#include "moe_topk.cuh"

// top-k of token t of logits [T, E] by one warp into ids / wts [T, k] (see the header for the normalisations)
__device__ __forceinline__ void topk_token(const float* __restrict__ logits, int t, int E, int k, int norm, int renorm,
                                           int* __restrict__ ids, float* __restrict__ wts, int lane) {
    topk_row(logits + (size_t)t * E, E, k, norm, renorm, ids + (size_t)t * k, wts + (size_t)t * k, lane);
}


