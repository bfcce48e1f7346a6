// gemv_grouped.cuh: the MoE decode GEMVs (gemv_moe_gate_up_* / gemv_moe_down_*, launched by
// lowbit/kernels/moe.py), built on the GEMV loop of common.cuh over stacked experts [E, N, K]. Each
// (token, slot) pair is one M = 1 GEMV whose tensors are advanced to expert ids[pair] (Args::ew/es/ez
// bytes per expert; the global scale by e floats).
//  gate/up: a tile is 8 output rows: lane rows g from gate and g + 8 from up (the same row index, a
//    policy object per tensor), so the fp32 C tile holds both dot products of a row and the epilogue
//    writes silu(gate) * up.
//  down: the k slots of a token are split-K parts (grid y = slot * sub + part), each partial scaled by
//    its routing weight (and the expert's out_scale) before the ordered split-K sum: deterministic, no
//    atomics on y.
//  down_smem (gemv_moe_down_smem_*, small experts): a CTA = 16 output rows x every slot of one token, the
//    slots' rows held in shared memory (gemv_smem.cuh).
// Launched with PDL, a grouped GEMV waits before anything else (the expert ids are the router's output);
// gate/up triggers its dependents only after that wait, so when the down launch starts the router has
// finished and down_smem may read the ids and copy its weights before its own wait.
// Preconditions (moe.py): H and I multiples of 32; T * topk <= 65535; contiguous, 16-byte aligned operands.
// Reference: lowbit/verify/moe_reference.py (moe_experts_ref).
#pragma once
#include "common.cuh"
#include "gemv_smem.cuh"
#include "block_reduce.cuh"
#include "moe_router.cuh"

namespace lb {

// Grids: gate/up (ceil(I / 8) / wr_n, splits, T * topk), pair p = grid z, token p / topk; down
// (ceil(H / 16) / wr_n, topk * sub, T), split j * sub + s = part s of slot j's K, pair t * topk + j.
template <class P, int MODE, bool XS>
__device__ __forceinline__ void gemv_grouped_body(const Args& a0) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wr_n = (blockDim.x >> 5) / a0.wk, wr = warp % wr_n, wk = warp / wr_n;
  const int tile = blockIdx.x * wr_n + wr, gtile = blockIdx.z * gridDim.x * wr_n + tile;
  const int g = lane >> 2;
  if (MODE != MOE_GATE_UP) lb_pdl_trigger();
  lb_pdl_wait();  // the expert ids and x come from earlier kernels
  if (MODE == MOE_GATE_UP) {
    const int pair = blockIdx.z, e = __ldcg(a0.ids + pair), row0 = tile * 8;
    lb_pdl_trigger();  // after the wait: the down launch may then read the router's ids before its own
    Args a = a0;
    a.x += (long)(pair / a0.topk) * a0.k;
    a.y += (long)pair * a0.n;
    const Args ag = expert_args(a, a0.w, a0.s, a0.z, a0.gscale, e);
    const Args au = expert_args(a, a0.w2, a0.s2, a0.z2, a0.g2, e);
    const Place pl{row0, gtile, (int)blockIdx.y, a0.splits, (int)blockIdx.y, 1.f, row0 < a0.n};
    const P pg(ag, row0), pu(au, row0);
    gemv_core<P, 1, MOE_GATE_UP, XS>(ag, pg, pu, ag.w, au.w, pl, row0 + g, row0 + g, wr, wk, wr_n);
  } else {
    const int j = blockIdx.y / a0.sub, pair = blockIdx.z * a0.topk + j, e = __ldcg(a0.ids + pair);
    const int row0 = tile * 16;
    Args a = a0;
    a.x += (long)pair * a0.k;
    a.y += (long)blockIdx.z * a0.n;
    a = expert_args(a, a0.w, a0.s, a0.z, a0.gscale, e);
    const P p(a, row0);
    const Place pl{row0, gtile, (int)blockIdx.y - j * a0.sub, a0.sub, (int)blockIdx.y,
                   __ldcg(a0.wts + pair) * p.out_scale(0), row0 < a0.n};
    gemv_core<P, 1, MOE_DOWN, XS>(a, p, p, a.w, a.w, pl, row0 + g, row0 + g + 8, wr, wk, wr_n);
  }
}


// ---- The fused router + gate/up decode GEMV (gemv_moe_route_gate_up_TAG, one token) ----
// router_add_norm (moe_route.cu) and the gate/up launch in one kernel, with the gate/up grid and launch plan:
// no kernel boundary between the routing and the expert weights' stream. Every CTA computes the residual
// update and the RMSNorm itself (h + delta and the norm weight from L2, the same code and order in every CTA,
// so the same x), stages its slab of x from that row (stage_x_row), and the CTAs of the first min(E, grid)
// tickets (an atomic ticket per CTA: dispatch order, so a CTA that waits never waits on one that is not
// resident yet, for any grid size) each compute the logits of their experts (one warp an expert, router row
// loaded before the PDL wait) and count themselves done; the last one publishes the launch's epoch. Every CTA
// waits for that, ranks the logits itself (topk_token_block), and streams its (slot, rows) tile of the chosen
// expert as gemv_moe_gate_up does. The CTA with blockIdx 0 writes h_out, x_out and the ids / weights for the
// down launch, which reads them before its own wait (this kernel triggers after the top-k).
// sync: 3 u64 counters (tickets, producers done, epoch published), zero once and only ever incremented, so
// no reset races; every launch on one sync buffer must have the same grid and E (moe_gemv.py keys it so).
// Dynamic shared memory: the largest slab (iters * KI * 2 bytes), then the bf16 row (2H), then s fp32 (4H).
// Preconditions (moe_gemv.route_gate_up): one token, H = K a multiple of 32, E <= 256, topk <= 32, h_out not
// aliasing h. Reference: moe_router.route_add_norm followed by moe_gemv.decode_gemv's gate/up.
struct RouteArgs {
  const float* h;            // the residual [H] (an earlier kernel's output)
  const float* df;           // delta f32 [H] or nullptr
  const unsigned short* db;  // delta bf16 [H] or nullptr
  const float* nw;           // RMSNorm weight [H]
  float eps;
  float* h_out;              // h + delta [H]
  uint16_t* x_out;           // the normalised row, bf16 [H]
  const bf16* wr;            // router weight [E, H]
  int E, norm, renorm;
  float* logits;             // [E] scratch
  unsigned long long* sync;  // [3]
  int* ids_out;              // [topk]
  float* wts_out;            // [topk]
};

__device__ __forceinline__ unsigned long long ld_acquire_u64(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void st_release_u64(unsigned long long* p, unsigned long long v) {
  asm volatile("st.release.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

template <class P>
__device__ __forceinline__ void route_gate_up_body(const Args& a0, const RouteArgs& r) {
  constexpr int KI = 4 * P::EC;
  extern __shared__ uint4 xs_smem[];
  __shared__ int sids[32];
  __shared__ float swts[32];
  __shared__ float red[32];
  __shared__ unsigned long long s_ticket;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int H = a0.k, iters = (H + KI - 1) / KI;
  const long long nct = (long long)gridDim.x * gridDim.y * gridDim.z;
  const bool first = blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0;
  uint16_t* xrow = reinterpret_cast<uint16_t*>(xs_smem) + (long)iters * KI;
  float* srow = reinterpret_cast<float*>(xrow + H);
  if (dynamic_smem_bytes() < (uint32_t)(iters * KI * 2 + 6 * H)) __trap();  // a launcher bug: never past it
  if (threadIdx.x == 0) s_ticket = atomicAdd(r.sync, 1ull);
  __syncthreads();
  const unsigned long long epoch = s_ticket / (unsigned long long)nct;
  const long long rank = (long long)(s_ticket - epoch * nct), np = min(nct, (long long)r.E);
  const int e0 = rank < np ? (int)(rank + np * warp) : r.E;
  uint4 pre[ROUTER_PRE];
  router_preload_row(r.wr, e0, r.E, H, pre);  // constant weights: before the wait (zeros past E)
  lb_pdl_wait();                              // h and delta are earlier kernels' outputs (plain loads)
  float ss = 0.f;
#pragma unroll 4
  for (int i = threadIdx.x; i < H; i += blockDim.x) {
    const float u = r.h[i] + (r.df ? r.df[i] : __uint_as_float((unsigned int)r.db[i] << 16));
    srow[i] = u;
    ss += u * u;
  }
  const float rs = rsqrtf(block_sum(ss, red) / (float)H + r.eps);
  for (int i = threadIdx.x; i < H; i += blockDim.x) {
    const float u = srow[i];
    const uint16_t xb = __bfloat16_as_ushort(__float2bfloat16_rn(u * rs * r.nw[i]));
    xrow[i] = xb;
    if (first) { r.h_out[i] = u; r.x_out[i] = xb; }
  }
  __syncthreads();
  if (e0 < r.E) {  // a producer's warp: the logits of experts e0 = rank + np * warp, then + np * nw * j
    const float lg = router_logit(reinterpret_cast<const bf16*>(xrow), r.wr, e0, H, &pre);
    if (lane == 0) r.logits[e0] = lg;
    for (long long e = e0 + np * nw; e < r.E; e += np * nw) {
      const float l2 = router_logit(reinterpret_cast<const bf16*>(xrow), r.wr, (int)e, H);
      if (lane == 0) r.logits[e] = l2;
    }
  }
  const int s_beg = (int)((long)iters * blockIdx.y / a0.splits);
  const int s_len = (int)((long)iters * (blockIdx.y + 1) / a0.splits) - s_beg;
  stage_x_row<P>(xrow, H, xs_smem, s_beg, s_len);  // while the producers finish
  __syncthreads();
  if (threadIdx.x == 0) {
    if (rank < np) {
      __threadfence();
      if (atomicAdd(r.sync + 1, 1ull) == (epoch + 1) * (unsigned long long)np - 1) {
        __threadfence();
        st_release_u64(r.sync + 2, epoch + 1);
      }
    }
    long long spins = 0;
    while (ld_acquire_u64(r.sync + 2) < epoch + 1) {
      __nanosleep(32);
      if (++spins > (1LL << 26)) __trap();  // a producer that never finishes: fail loudly, never hang
    }
  }
  __syncthreads();
  if (r.E <= (int)blockDim.x) topk_token_block(r.logits, 0, r.E, a0.topk, r.norm, r.renorm, sids, swts);
  else if (warp == 0) topk_token(r.logits, 0, r.E, a0.topk, r.norm, r.renorm, sids, swts, lane);
  __syncthreads();
  if (first && threadIdx.x < a0.topk) {
    r.ids_out[threadIdx.x] = sids[threadIdx.x];
    r.wts_out[threadIdx.x] = swts[threadIdx.x];
    __threadfence();
  }
  lb_pdl_trigger();  // the down launch reads the ids before its wait: written above by the CTA of blockIdx 0
  const int wr_n = nw / a0.wk, wr = warp % wr_n, wk = warp / wr_n;
  const int tile = blockIdx.x * wr_n + wr, gtile = blockIdx.z * gridDim.x * wr_n + tile;
  const int g = lane >> 2, pair = blockIdx.z, e = sids[pair], row0 = tile * 8;
  Args a = a0;
  a.y += (long)pair * a0.n;
  const Args ag = expert_args(a, a0.w, a0.s, a0.z, a0.gscale, e);
  const Args au = expert_args(a, a0.w2, a0.s2, a0.z2, a0.g2, e);
  const Place pl{row0, gtile, (int)blockIdx.y, a0.splits, (int)blockIdx.y, 1.f, row0 < a0.n};
  const P pg(ag, row0), pu(au, row0);
  gemv_core<P, 1, MOE_GATE_UP, 2>(ag, pg, pu, ag.w, au.w, pl, row0 + g, row0 + g, wr, wk, wr_n);
}
}  // namespace lb

// The grouped (MoE decode) pair of a policy: gemv_moe_gate_up_TAG and gemv_moe_down_TAG, one argument
// list (down ignores the second tensor). n, k: the rows and K of ONE expert's matrix.
#define LB_GEMV_MOE_KERNEL(NAME, POLICY, MODE, XS)                                                    \
  extern "C" __global__ void LB_GEMV_BOUNDS                                                            \
      NAME(const uint8_t* w, const void* s, const int* z, const float* gscale, const uint8_t* w2,     \
           const void* s2, const int* z2, const float* g2, const uint16_t* x, uint16_t* y, float* ws,  \
           int* cnt, const int* ids, const float* wts, long long ew, long long es, long long ez, int n, \
           int k, int splits, int group, int wk, int topk, int sub) {                                 \
    lb::Args a{w, s, z, gscale, x, nullptr, y, ws, cnt, n, k, 1, splits, group, wk};                   \
    a.w2 = w2; a.s2 = s2; a.z2 = z2; a.g2 = g2; a.ids = ids; a.wts = wts;                               \
    a.ew = ew; a.es = es; a.ez = ez; a.topk = topk; a.sub = sub;                                       \
    lb::gemv_grouped_body<POLICY, lb::MODE, XS>(a);                                                   \
  }
// The down launch with its weights in shared memory: the same argument list (splits and sub unused; wk =
// warps per slot).
#define LB_GEMV_MOE_DOWN_SMEM_KERNEL(NAME, POLICY)                                                    \
  extern "C" __global__ void __launch_bounds__(512)                                                    \
      NAME(const uint8_t* w, const void* s, const int* z, const float* gscale, const uint8_t* w2,     \
           const void* s2, const int* z2, const float* g2, const uint16_t* x, uint16_t* y, float* ws,  \
           int* cnt, const int* ids, const float* wts, long long ew, long long es, long long ez, int n, \
           int k, int splits, int group, int wk, int topk, int sub) {                                 \
    lb::Args a{w, s, z, gscale, x, nullptr, y, ws, cnt, n, k, 1, 1, group, wk};                        \
    a.ids = ids; a.wts = wts; a.ew = ew; a.es = es; a.ez = ez; a.topk = topk;                          \
    lb::gemv_smem_body<POLICY, lb::MOE_DOWN>(a);                                                      \
  }
// With GEMV_XS also the staged-x forms gemv_moe_gate_up_TAG_xs and gemv_moe_down_TAG_xs (common.cuh).
// The fused router + gate/up kernel of a policy: the gate/up argument list (x: x_out, ids / wts: outputs),
// then the router's.
#define LB_GEMV_MOE_ROUTE_KERNEL(NAME, POLICY)                                                        \
  extern "C" __global__ void LB_GEMV_BOUNDS                                                            \
      NAME(const uint8_t* w, const void* s, const int* z, const float* gscale, const uint8_t* w2,     \
           const void* s2, const int* z2, const float* g2, uint16_t* x, uint16_t* y, float* ws,        \
           int* cnt, int* ids, float* wts, long long ew, long long es, long long ez, int n, int k,     \
           int splits, int group, int wk, int topk, const float* h, const float* df,                  \
           const unsigned short* db, const float* nw, float eps, float* h_out, const bf16* wr, int E,  \
           int norm, int renorm, float* logits, unsigned long long* sync) {                           \
    lb::Args a{w, s, z, gscale, x, nullptr, y, ws, cnt, n, k, 1, splits, group, wk};                   \
    a.w2 = w2; a.s2 = s2; a.z2 = z2; a.g2 = g2; a.ew = ew; a.es = es; a.ez = ez; a.topk = topk;        \
    const lb::RouteArgs r{h, df, db, nw, eps, h_out, x, wr, E, norm, renorm, logits, sync, ids, wts};  \
    lb::route_gate_up_body<POLICY>(a, r);                                                             \
  }
#if GEMV_XS
#define LB_GEMV_MOE_XS_KERNELS(TAG, POLICY)                                      \
  LB_GEMV_MOE_KERNEL(gemv_moe_gate_up_##TAG##_xs, POLICY, MOE_GATE_UP, true)     \
  LB_GEMV_MOE_KERNEL(gemv_moe_down_##TAG##_xs, POLICY, MOE_DOWN, true)           \
  LB_GEMV_MOE_ROUTE_KERNEL(gemv_moe_route_gate_up_##TAG, POLICY)
#else
#define LB_GEMV_MOE_XS_KERNELS(TAG, POLICY)
#endif
#define LB_GEMV_MOE_KERNELS(TAG, POLICY)                                  \
  LB_GEMV_MOE_KERNEL(gemv_moe_gate_up_##TAG, POLICY, MOE_GATE_UP, false)  \
  LB_GEMV_MOE_KERNEL(gemv_moe_down_##TAG, POLICY, MOE_DOWN, false)        \
  LB_GEMV_MOE_XS_KERNELS(TAG, POLICY)                                     \
  LB_GEMV_MOE_DOWN_SMEM_KERNEL(gemv_moe_down_smem_##TAG, POLICY)
