// gemv_tma.cuh: the TMA-fed dense GEMV build (gemv_tma_* kernels, GEMV_TMA = S > 0), on the loop pieces of
// common.cuh (policies, side data, compute_stage, epilogue). Header only; included by each gemv_*.cu after
// common.cuh; expands to nothing when GEMV_TMA is 0 (the default of a standalone compile; CI also compiles it
// with -DGEMV_TMA=4, tests/kernels/test_compile.py).
#pragma once
#include "common.cuh"

// GEMV_TMA: S > 0 = also build the TMA-fed dense GEMVs (gemv_tma_*, see gemv_tma_body) with an S-stage ring
#ifndef GEMV_TMA
#define GEMV_TMA 0
#endif
#if GEMV_TMA
#include "tma_sm90.cuh"
namespace lb {
// TMA-fed dense GEMV (built when GEMV_TMA = S > 0; gemv_tma_* kernels). ncu on the H200 (8192x29568, M = 1)
// showed the register-buffered loop (common.cuh) at 14-16 warps an SM (123-128 registers), each with ~2 KB of
// weight in flight, against bf16's 23 warps; most stall samples were long-scoreboard waits. Here the
// weights stream into a shared-memory ring that costs no registers:
//  - a CTA = wr_n consumer warps (a 16-row tile each, R = 16 * wr_n rows) + one producer warp (the last);
//  - the producer's lane 0 fills a ring of S stages; a stage = GEMV_UNROLL iterations = U boxes of
//    [R rows x 64 bytes] (one iteration's 4 lanes x 16 bytes of every row) loaded by the bulk tensor copy
//    from the map over the weight bytes [N, row_bytes] (zero-filled past N and past the row);
//  - smem stage layout [u][row][64 bytes]: a quarter-warp reads rows g, g + 1 at 64-byte pitch: the 8
//    lanes cover 128 contiguous bytes, no bank conflict without a swizzle;
//  - consumers wait full[s], read their chunks, run the same decode and mma as that loop and release the
//    stage (one arrive per warp on empty[s], GEMV_TMA_LATE); their side data (scales) is loaded
//    from global memory GEMV_TMA_SIDE stages ahead into a register ring (the loop is unrolled by it).
// The producer issues its copies before the PDL wait (weights depend on nothing earlier); consumers wait
// before reading x. wk = 1 (no K split inside a CTA); K splits across CTAs (grid y) as in the dense GEMV.
// Every consumer warp walks every stage (even one whose rows lie past N) so the producer's empty
// barriers complete.
// Measured (H200, 2026-11-27, same-run A/B against the register loop, benchmarks/gemv_tma_ab.py): fp8 W8A16
// 69 us against 79-84 at 8192x29568 and 29568x8192 (82-83 % of copy), W8A8 75 against 83 at 8192x29568,
// bf16 123 against 129-134 there; slower at 4096-sized shapes and for nvfp4 and int4 everywhere (int4
// 8192x29568: 60-66 us against 57). The 4-bit consumers are capped at 96 registers here (spilling 20-80
// bytes) and sync on the ring; __maxnreg__(112), 6 stages, 3-stage side rings and x prefetches were all
// slower. So the autotuner (lowbit/kernels/gemv.py) times this build beside the other and keeps the faster.
#ifndef GEMV_TMA_SIDE
#define GEMV_TMA_SIDE 2
#endif
// GEMV_TMA_LATE: 1 = a consumer releases its stage after the stage's math (the compiler may place its
// shared-memory reads among the math); 0 = right after copying the stage to registers. Measured (H200,
// 2026-11-27): 1 made W8A8 29568x8192 74 us against 84, 8192x29568 70.5 against 73.6, nothing slower.
#ifndef GEMV_TMA_LATE
#define GEMV_TMA_LATE 1
#endif
// XS: x staged after the ring by the consumers (common.cuh "x in shared memory"; the launcher gives the room).
template <class P, int MT, bool XS>
__device__ __forceinline__ void gemv_tma_body(const Args& a, const void* wmap) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int EC = P::EC, KI = 4 * EC, U = GEMV_UNROLL, S = GEMV_TMA, D = GEMV_TMA_SIDE;
  extern __shared__ uint8_t tma_smem_raw[];
  __shared__ __align__(8) uint64_t bars[2 * S];
  uint8_t* ring = tma_smem_raw + ((1024 - ((uint32_t)__cvta_generic_to_shared(tma_smem_raw) & 1023)) & 1023);
  const uint32_t full0 = (uint32_t)__cvta_generic_to_shared(bars), empty0 = full0 + 8 * S;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wr_n = (blockDim.x >> 5) - 1;
  const int R = 16 * wr_n, row_cta = blockIdx.x * R;
  const int iters = (a.k + KI - 1) / KI;
  const int s_beg = (int)((long)iters * blockIdx.y / a.splits);
  const int it_end = (int)((long)iters * (blockIdx.y + 1) / a.splits);
  const int nst = (it_end - s_beg + U - 1) / U;
  const uint32_t box = (uint32_t)R * 64;
  if (threadIdx.x == 0) ring_init(full0, empty0, S, 1, wr_n);
  __syncthreads();
  lb_pdl_trigger();
  if (warp == wr_n) {  // the producer
    if (lane == 0) {
      tma_map_acquire(wmap);
      for (int st = 0; st < nst; ++st) {
        const uint32_t s = st % S, ph = (st / S) & 1;
        const int it0 = s_beg + st * U, nb = min(U, it_end - it0);
        mbar_wait(empty0 + 8 * s, ph ^ 1);
        mbar_arrive_expect_tx(full0 + 8 * s, nb * box);
        for (int u = 0; u < nb; ++u)
          tma_load_2d((uint32_t)__cvta_generic_to_shared(ring + (s * U + u) * box), wmap, (it0 + u) * 64, row_cta,
                      full0 + 8 * s);
      }
    }
    lb_pdl_wait();
    return;
  }
  const int g = lane >> 2, t = lane & 3;
  const int row0 = row_cta + 16 * warp, ra = row0 + g, rb = ra + 8;
  const int rca = min(ra, a.n - 1), rcb = min(rb, a.n - 1);
  const Place pl{row0, (int)blockIdx.x * wr_n + warp, (int)blockIdx.y, a.splits, (int)blockIdx.y, 1.f, row0 < a.n};
  const P p(a, row0);
  const int fast_end = min(a.k / KI, it_end);  // iterations below it: chunks and x inside K
  float acc[MT][4];
  const uint16_t* xr[MT];
  start_tile<MT, EC>(a, g, t, acc, xr);
  typename P::Side sa[D][U], sb[D][U];
  auto load_side = [&](typename P::Side (&da)[U], typename P::Side (&db)[U], int st) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int it = s_beg + st * U + u, k0 = (it * 4 + t) * EC;
      if (it < fast_end) {
        da[u] = p.side_fast(rca, k0);
        db[u] = p.side_fast(rcb, k0);
      } else {
        da[u] = p.side(ra, k0);
        db[u] = p.side(rb, k0);
      }
    }
  };
#pragma unroll
  for (int d = 0; d < D; ++d)
    if (d < nst) load_side(sa[d], sb[d], d);
  lb_pdl_wait();  // x (an earlier kernel's output) is read from here on
  uint32_t xs[MT] = {};
  if constexpr (XS) {  // the consumers copy the CTA's slab of x after the ring, then sync among themselves
    uint4* xsm = reinterpret_cast<uint4*>(ring + (long)S * U * box);
    const int s_len = it_end - s_beg;
    if (dynamic_smem_bytes() < (uint32_t)(ring - tma_smem_raw) + S * U * box + xs_need<P>(a, s_len)) __trap();
    stage_x<P>(a, xsm, s_beg, s_len, threadIdx.x, wr_n * 32);
    asm volatile("bar.sync 1, %0;" ::"r"(wr_n * 32) : "memory");
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
      xs[mt] = (uint32_t)__cvta_generic_to_shared(xsm + (long)min(g + 8 * mt, a.m - 1) * s_len * 4 * (EC / 8) + t);
  }
  const uint8_t* mine = ring + (16 * warp + g) * 64 + t * 16;
  for (int st0 = 0; st0 < nst; st0 += D) {
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int st = st0 + d;
      if (st >= nst) break;
      const uint32_t s = st % S;
      mbar_wait(full0 + 8 * s, (st / S) & 1);
      Stage<P, MT, U> cur;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        cur.wa[u] = *reinterpret_cast<const uint4*>(mine + (s * U + u) * box);
        cur.wb[u] = *reinterpret_cast<const uint4*>(mine + (s * U + u) * box + 8 * 64);
        cur.sa[u] = sa[d][u];
        cur.sb[u] = sb[d][u];
      }
      if (!GEMV_TMA_LATE) {
        __syncwarp();
        if (lane == 0) mbar_arrive(empty0 + 8 * s);
      }
      // reloading the side registers before this stage's math (measured: after it, the TMA build of every
      // scheme was 5-20 % slower on the H200)
      if (st + D < nst) load_side(sa[d], sb[d], st + D);
      const int it0 = s_beg + st * U;
      if (it0 + U <= fast_end) compute_stage<P, MT, U, true, XS>(a, p, p, cur, xr, g, t, it0, it_end, acc, xs, s_beg);
      else compute_stage<P, MT, U, false, XS>(a, p, p, cur, xr, g, t, it0, it_end, acc, xs, s_beg);
      if (GEMV_TMA_LATE) {
        __syncwarp();
        if (lane == 0) mbar_arrive(empty0 + 8 * s);
      }
    }
  }
  epilogue<P, MT, DENSE>(a, p, p, acc, pl, warp, 0, wr_n);
#endif
}
}  // namespace lb

// The TMA-fed dense GEMV of a policy: the dense argument list after the weight's tensor map (device memory);
// with GEMV_XS also NAME_xs, its staged-x form.
#define LB_GEMV_TMA_KERNEL_FORM(NAME, POLICY, MT, XS)                                                     \
  extern "C" __global__ void __launch_bounds__((GEMV_WARPS + 1) * 32, GEMV_MIN_BLOCKS)                    \
      NAME(const void* wmap, const uint8_t* w, const void* s, const int* z, const float* gscale,           \
           const uint16_t* x, const float* xs, uint16_t* y, float* ws, int* cnt, int n, int k, int m,      \
           int splits, int group) {                                                                       \
    const lb::Args a{w, s, z, gscale, x, xs, y, ws, cnt, n, k, m, splits, group, 1};                       \
    lb::gemv_tma_body<POLICY, MT, XS>(a, wmap);                                                           \
  }
#if GEMV_XS
#define LB_GEMV_TMA_KERNEL(NAME, POLICY, MT) \
  LB_GEMV_TMA_KERNEL_FORM(NAME, POLICY, MT, false) LB_GEMV_TMA_KERNEL_FORM(NAME##_xs, POLICY, MT, true)
#else
#define LB_GEMV_TMA_KERNEL(NAME, POLICY, MT) LB_GEMV_TMA_KERNEL_FORM(NAME, POLICY, MT, false)
#endif
#else
#define LB_GEMV_TMA_KERNEL(NAME, POLICY, MT)
#endif
