// gemv_smem.cuh: the shared-memory GEMV build for decode (gemv_smem_* dense, gemv_moe_down_smem_* MoE down),
// on the loop pieces of common.cuh (policies, Stage, compute_stage). Header only; included by gemv_grouped.cuh.
//
// A CTA owns 16 output rows and ALL of their K: every weight row it needs is copied into shared memory by one
// bulk copy (cp.async.bulk, completing one mbarrier) BEFORE the PDL wait, with each lane's side data (scales)
// stored in 8-byte shared slots, so that after the wait (x is the previous kernel's output) the CTA only reads
// x and computes: no weight load and no split-K round trip through L2 on the decode step's critical path.
// The CTA's warps split the work into parts of whole iterations (4 lanes x one 16-byte chunk per row, as in
// common.cuh) and their fp32 C tiles are summed in a fixed order through shared memory.
//  DENSE (gemv_smem_*_m8): y[M, N] = x @ W^T, M <= 8; grid ceil(N / 16); warp w sweeps part w of K.
//  MOE_DOWN (gemv_moe_down_smem_*): grid (ceil(H / 16), T); warp w sweeps part w % wk of the K (= I) of slot
//    w / wk of token blockIdx.y, i.e. the 16 rows of expert ids[token * topk + slot]; its C tile is scaled by
//    the slot's routing weight (and the expert's out_scale) before the sum. The expert ids are read before
//    the wait: the gate/up launch before it triggers only after its own wait (gemv_grouped.cuh), so the
//    router has finished when this kernel starts.
// Shared memory (dynamic): rows at a pitch of a multiple of 128 bytes plus 64 (the two rows a quarter-warp
// reads fall in different banks), then warps x iterations x 2 rows x 32 lanes x 8 bytes of side data
// (none for bf16); lowbit/kernels/gemv_smem.py computes the same size.
// Preconditions (launchers): K % (4 * EC) == 0, rows a multiple of 16 bytes, 16-byte aligned weights, the
// size within the device's opt-in limit, at most 16 warps. sm_90+ only (the bulk copy): elsewhere the body is
// empty and the launchers never pick it.
// Measured (H200, 2026-11-27, Qwen3-30B-A3B shapes): the MoE down launch 5.2-5.8 us under a CUDA graph
// against 7.8-8.5 us for the best split-K plan (fp8, nvfp4, int4); decode +4-6 % tok/s (RESULTS.md).
#pragma once
#include "common.cuh"
#include "tma_sm90.cuh"

#include <type_traits>

namespace lb {

__host__ __device__ constexpr long smem_row_pitch(long row_bytes) { return (row_bytes + 127) / 128 * 128 + 64; }

template <class P, int MODE>
__device__ __forceinline__ void gemv_smem_body(const Args& a0) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int EC = P::EC, KI = 4 * EC, U = GEMV_UNROLL;
  using Side = typename P::Side;
  constexpr bool HAS_SIDE = !std::is_empty<Side>::value;
  static_assert(sizeof(Side) <= 8, "a lane's side data must fit its 8-byte slot");
  extern __shared__ __align__(128) uint8_t dsm[];
  __shared__ __align__(8) uint64_t bar;
  __shared__ float red[16 * 4 * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int nw = blockDim.x >> 5, row0 = blockIdx.x * 16;
  const int slots = MODE == MOE_DOWN ? a0.topk : 1, wk = MODE == MOE_DOWN ? a0.wk : nw;
  const int j = warp / wk, part = warp % wk, token = MODE == MOE_DOWN ? (int)blockIdx.y : 0;
  const long row_bytes = (long)a0.k * P::BITS / 8, pitch = smem_row_pitch(row_bytes);
  const int iters = a0.k / KI, ipw = (iters + wk - 1) / wk;
  const int it_beg = min(iters, part * ipw), it_end = min(iters, it_beg + ipw);
  uint64_t* sides = reinterpret_cast<uint64_t*>(dsm + (long)slots * 16 * pitch) + (long)warp * ipw * 64 + lane;
  const uint32_t b = (uint32_t)__cvta_generic_to_shared(&bar);
  if (threadIdx.x == 0) {
    mbar_init(b, 1);
    mbar_fence_init();
    mbar_arrive_expect_tx(b, (uint32_t)(slots * 16 * row_bytes));
  }
  __syncthreads();
  for (int i = threadIdx.x; i < slots * 16; i += blockDim.x) {  // row i & 15 of slot i >> 4 (clamped past N)
    const long e = MODE == MOE_DOWN ? __ldcg(a0.ids + token * slots + (i >> 4)) : 0;
    const int r = min(row0 + (i & 15), a0.n - 1);
    bulk_load((uint32_t)__cvta_generic_to_shared(dsm + i * pitch), a0.w + e * a0.ew + r * row_bytes,
              (uint32_t)row_bytes, b);
  }
  Args a = a0;
  float pscale = 1.f;
  if constexpr (MODE == MOE_DOWN) {
    const int pair = token * slots + j;
    a.x += (long)pair * a0.k;
    a = expert_args(a, a0.w, a0.s, a0.z, a0.gscale, __ldcg(a0.ids + pair));
  }
  const P p(a, row0);
  if constexpr (MODE == MOE_DOWN) pscale = __ldcg(a0.wts + token * slots + j) * p.out_scale(0);
  const int rca = min(row0 + g, a.n - 1), rcb = min(row0 + g + 8, a.n - 1);
  if constexpr (HAS_SIDE) {
    for (int it = it_beg; it < it_end; ++it) {
      const int k0 = (it * 4 + t) * EC;
      const Side sa = p.side_fast(rca, k0), sb = p.side_fast(rcb, k0);
      uint64_t va = 0, vb = 0;
      memcpy(&va, &sa, sizeof(Side));
      memcpy(&vb, &sb, sizeof(Side));
      sides[(it - it_beg) * 64] = va;
      sides[(it - it_beg) * 64 + 32] = vb;
    }
  }
  lb_pdl_trigger();
  lb_pdl_wait();  // x is the previous kernel's output
  float acc[1][4];
  const uint16_t* xr[1];
  start_tile<1, EC>(a, g, t, acc, xr);
  const uint8_t* wa = dsm + (j * 16 + g) * pitch + t * 16;
  mbar_wait(b, 0);
  for (int it0 = it_beg; it0 < it_end; it0 += U) {
    Stage<P, 1, U> st;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int it = min(it0 + u, it_end - 1);  // past it_end: not computed (compute_stage's general form)
      st.wa[u] = *reinterpret_cast<const uint4*>(wa + it * 64);
      st.wb[u] = *reinterpret_cast<const uint4*>(wa + 8 * pitch + it * 64);
      if constexpr (HAS_SIDE) {
        const uint64_t va = sides[(it - it_beg) * 64], vb = sides[(it - it_beg) * 64 + 32];
        memcpy(&st.sa[u], &va, sizeof(Side));
        memcpy(&st.sb[u], &vb, sizeof(Side));
      }
    }
    if (it0 + U <= it_end) compute_stage<P, 1, U, true>(a, p, p, st, xr, g, t, it0, it_end, acc);
    else compute_stage<P, 1, U, false>(a, p, p, st, xr, g, t, it0, it_end, acc);
  }
  // C tile entry r = 2h + q: row g + 8h, token 2t + q (MOE_DOWN: token 0 only, i.e. lanes t = 0, q = 0)
#pragma unroll
  for (int r = 0; r < 4; ++r) red[(warp * 4 + r) * 32 + lane] = acc[0][r] * pscale;
  __syncthreads();
  for (int i = threadIdx.x; i < 128; i += blockDim.x) {  // a CTA may have fewer than 128 threads
    const int r = i >> 5, l = i & 31;
    const int row = row0 + (l >> 2) + 8 * (r >> 1), tok = 2 * (l & 3) + (r & 1);
    if (row < a0.n && tok < (MODE == MOE_DOWN ? 1 : a0.m)) {
      float v = 0.f;
      for (int w = 0; w < nw; ++w) v += red[(w * 4 + r) * 32 + l];
      if constexpr (MODE != MOE_DOWN) v *= p.out_scale(tok);
      a0.y[(long)(token + tok) * a0.n + row] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
    }
  }
#endif
}

}  // namespace lb

// The dense shared-memory GEMV of a policy (M <= 8): the dense argument list; splits, ws and cnt unused.
#define LB_GEMV_SMEM_KERNEL(NAME, POLICY)                                                             \
  extern "C" __global__ void __launch_bounds__(512)                                                    \
      NAME(const uint8_t* w, const void* s, const int* z, const float* gscale, const uint16_t* x,     \
           const float* xs, uint16_t* y, float* ws, int* cnt, int n, int k, int m, int splits,         \
           int group, int wk) {                                                                       \
    const lb::Args a{w, s, z, gscale, x, xs, y, ws, cnt, n, k, m, 1, group, wk};                       \
    lb::gemv_smem_body<POLICY, lb::DENSE>(a);                                                         \
  }
