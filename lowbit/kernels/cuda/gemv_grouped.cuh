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
#if GEMV_XS
#define LB_GEMV_MOE_XS_KERNELS(TAG, POLICY)                                      \
  LB_GEMV_MOE_KERNEL(gemv_moe_gate_up_##TAG##_xs, POLICY, MOE_GATE_UP, true)     \
  LB_GEMV_MOE_KERNEL(gemv_moe_down_##TAG##_xs, POLICY, MOE_DOWN, true)
#else
#define LB_GEMV_MOE_XS_KERNELS(TAG, POLICY)
#endif
#define LB_GEMV_MOE_KERNELS(TAG, POLICY)                                  \
  LB_GEMV_MOE_KERNEL(gemv_moe_gate_up_##TAG, POLICY, MOE_GATE_UP, false)  \
  LB_GEMV_MOE_KERNEL(gemv_moe_down_##TAG, POLICY, MOE_DOWN, false)        \
  LB_GEMV_MOE_XS_KERNELS(TAG, POLICY)                                     \
  LB_GEMV_MOE_DOWN_SMEM_KERNEL(gemv_moe_down_smem_##TAG, POLICY)
