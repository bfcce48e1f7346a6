// common.cuh: the shared skeleton of every lowbit GEMV kernel (y = x @ W^T, M = 1..16).
//
// Geometry. Each warp works on one tile of 16 output rows (W rows). A CTA of blockDim.x/32 warps holds
// wr_n = warps/wk consecutive tiles and one slab of K (blockIdx.y of `splits`); the wk warps of a tile
// split the slab into contiguous parts and are summed through shared memory at the end (wk = 1: every
// warp of the CTA sweeps the same K positions, sharing the x lines in L1). One "iteration" = 4 lanes x one 16-byte
// chunk of W per row, i.e. KI = 4*EC elements of K for the 16 rows of the tile (EC = elements per 16-byte
// chunk: bf16 8, fp8 16, fp4/int4 32). Lane (g = lane/4, t = lane%4) loads rows g and g+8 of the tile,
// chunk (it*4 + t) of each row, with 16-byte non-temporal loads (ld.global.nc.L1::no_allocate),
// GEMV_UNROLL iterations in flight together with the rows' scales (P::side): no load in the loop waits
// on another. Two loops: the fast one covers whole stages of chunks that lie inside K on 16-byte-aligned
// rows (no bounds checks; rows past N clamped to row N-1, their outputs never written; pointers advance
// by a fixed stride), the general one the rest (a K tail; rows that are not 16-byte multiples: masked
// loads, zeros past N and K). The launcher picks warps per CTA and splits to fill the GPU evenly.
// Measured on H200 and dropped (benchmarks/RESULTS.md): bulk-copy (cp.async.bulk) shared-memory rings
// per warp, a single register ring refilled per iteration, and a thread-private cp.async (LDGSTS) ring of
// 3-8 stages in dynamic shared memory (every scheme capped near 2 TB/s, bf16 included): all slower than
// the two register buffers. A CTA-wide ring filled by the bulk TENSOR copy (one
// 2-D box of [rows x 64 bytes] per iteration, a producer warp) is the separate TMA build below
// (gemv_tma_body): faster for fp8 and bf16 on large shapes, slower for the 4-bit schemes; the autotuner
// picks per shape.
//
// Math. The chunk is decoded to bf16 pairs (f16 for W8A8: P::F16) and fed to the tensor cores with
// mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32: A = 16 W rows x 16 k-slots, B = 16 k-slots x 8 tokens,
// C = fp32 [16 rows x 8 tokens] (two C tiles for M > 8). A lane supplies the same 4 k-slots
// ({2t,2t+1,2t+8,2t+9}) of A and of B, so any mapping of a lane's own K positions onto its k-slots is
// valid as long as A and B use the same one: each scheme decodes in the order cheapest for it and
// permutes its x pairs the same way (P::xperm). The activation x (bf16 [M, K] row-major) is read through
// the read-only cache (16-byte loads when K % 8 == 0), token g (and g+8) per lane, zeros past M and K.
// Products of two bf16 are exact in fp32; accumulation is fp32.
//
// Epilogue. The wk partials of a tile are summed in a fixed order (shared memory, one barrier).
// With splits == 1 the tile's first warp writes its rows of y. With splits > 1 it writes its fp32 partial
// to ws[tile][split][MT*4][32]; the last warp to finish a tile (atomic counter cnt[tile], reset by that
// warp) sums the splits in order and writes y. Deterministic; every y[token < M][row < N] is written once.
//
// Grouped mode (MoE decode): gemv_grouped.cuh runs this same loop over stacked experts. TMA build: gemv_tma.cuh.
//
// Launch order (pdl.cuh): launched with programmatic dependent launch, a dense GEMV issues its first
// stage of weight and scale loads before waiting on the previous kernel (x is its output); a grouped one
// waits first (the expert ids are an earlier kernel's output). What earlier kernels wrote is read with
// coherent loads after the wait (x and activation scales: ld.global.ca, which griddepcontrol.wait makes
// see the earlier grids' writes; expert ids, routing weights: ld.global.cg), never through the
// non-coherent read-only path (__ldg, ld.global.nc): under PDL that data is written while this kernel is
// already resident, so it is not read-only for the kernel's lifetime, which ld.global.nc requires
// (measured: expert ids read with __ldg came back stale -> illegal addresses in graph decode). x through
// L2 only (ld.global.cg) measured 15-40 % slower at M = 8 (every warp re-reads x): hence L1.
//
// x in L1: ncu (H200, 8192x29568, M = 1) put 40 % of nvfp4's stall samples on the first use of a just-loaded
// x pair, but prefetching each lane's x line into L1 stages ahead (prefetch.global.L1, after the PDL wait)
// measured no gain at M = 1 and 5-20 % loss at M = 8, in this loop and the TMA build: the samples moved, the
// time did not (RESULTS.md, 2026-11-27 from 10:00 UTC). Removed.
//
// x in shared memory (GEMV_XS, the register loop only): a CTA launched with dynamic shared memory of at least
// M x (its K slab) x 2 bytes first copies its slab of x there (stage_x: after the PDL wait, while the first
// stage of weights is in flight), each lane chunk already permuted to the policy's k-slot order and the 16-byte
// units of an iteration interleaved by lane ([unit][t]: one 128-bit shared load of the 4 lanes t reads 64
// contiguous bytes, no bank conflict). The loop then reads its x pairs with shared loads: no permute, no
// zeroing (lanes of tokens >= M read token M - 1: their C columns are never written), and no L1 hits queued
// behind the streaming weight loads. Why (H200, 2026-11-27, benchmarks/gemv_attrib.py, diagnostic builds of
// the L1 form): with its x loads replaced by constants the int4 GEMV ran 18 % faster, without its x permutes
// 10 %. Measured with this form (same runs, against the L1 form): int4 29568x8192 48-54 us against 58-59, nvfp4
// 60 against 68; decode Mixtral-8x7B nvfp4 250-254 tok/s against 239-242, int4 299-303 against 264-267,
// Qwen3-30B-A3B fp8 441-443 against 430-434. The same staging in the shared-memory build (gemv_smem.cuh, whose
// weights are on chip before the PDL wait, so staging x only adds a step after it) made Qwen3 decode slower
// (423-426 against 430-434 tok/s): not there.
// Built as separate kernels (NAME_xs): both loops in one kernel spilled at the 128-register cap. The launchers
// take them where the slab fits beside the kernel's occupancy (gemv.xs_bytes), else the L1 form.
//
// Preconditions (checked by the Python launcher, lowbit/kernels/gemv.py): pointers to contiguous device
// arrays; 1 <= M <= 8*MT; cnt zeroed before first use (it is self-resetting) and not shared by two
// launches running at the same time.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

#include "gemv_math.cuh"
#include "pdl.cuh"

// GEMV_WARPS: the most warps per CTA a launcher may use (the launch bound).
#ifndef GEMV_WARPS
#define GEMV_WARPS 8
#endif
// GEMV_MIN_BLOCKS: CTAs per SM the compiler must fit (caps registers; more warps hide more latency).
#ifndef GEMV_MIN_BLOCKS
#define GEMV_MIN_BLOCKS 1
#endif
// GEMV_MAXREG: 0 = registers capped by GEMV_MIN_BLOCKS CTAs of GEMV_WARPS warps per SM; N > 0 = at most N
// registers a thread (__maxnreg__, which excludes __launch_bounds__), whatever the CTA size: 96 lets 4-warp
// CTAs run 5 to an SM (20 warps)
#ifndef GEMV_MAXREG
#define GEMV_MAXREG 0
#endif
#if GEMV_MAXREG
#define LB_GEMV_BOUNDS __maxnreg__(GEMV_MAXREG)
#else
#define LB_GEMV_BOUNDS __launch_bounds__(GEMV_WARPS * 32, GEMV_MIN_BLOCKS)
#endif
#ifndef GEMV_UNROLL
#define GEMV_UNROLL 2
#endif
// GEMV_XPREFETCH: 1 = x pairs are loaded with the weights one stage ahead (registers), 0 = at use (L1)
#ifndef GEMV_XPREFETCH
#define GEMV_XPREFETCH 0
#endif

// GEMV_RING: S > 0 = the MoE gate/up launch (MODE MOE_GATE_UP) keeps S stages of its weight chunks in flight
// through a per-warp ring in shared memory filled by 16-byte cp.async copies (S * GEMV_UNROLL KiB a warp, before
// the x slab), instead of one stage in registers; 0 = the register loop (the default: lowbit/kernels/gemv.py
// TUNABLES says why).
#ifndef GEMV_RING
#define GEMV_RING 0
#endif

// GEMV_XS: 1 = also build the register loop's staged-x kernels (NAME_xs, see "x in shared memory" above);
// 0 = only the L1 form.
#ifndef GEMV_XS
#define GEMV_XS 1
#endif

namespace lb {

struct Args {
  const uint8_t* w;      // weight bytes (any scheme), row-major [N, row_bytes]
  const void* s;         // weight scales (scheme-specific)
  const int* z;          // int4 zero points or nullptr
  const float* gscale;   // nvfp4 global scale [1] (a divisor) or nullptr
  const uint16_t* x;     // bf16 bits [M, K]
  const float* xs;       // activation scales (A8: [M, ceil(K/128)], A4: [M] inverse global) or nullptr
  uint16_t* y;           // bf16 bits [M, N]
  float* ws;             // split-K workspace
  int* cnt;              // split-K counters [tiles]
  int n, k, m, splits, group, wk;  // wk: warps of a CTA that share one row tile, splitting its K slab
  // Grouped (MoE decode) launches only, see "Grouped mode" above; dense launches leave the defaults.
  const uint8_t* w2 = nullptr;  // the second tensor of a gate/up pair (up): weight, scales, zero points,
  const void* s2 = nullptr;     // global scale, with the same layout and strides as the first (gate)
  const int* z2 = nullptr;
  const float* g2 = nullptr;
  const int* ids = nullptr;     // expert of each (token, slot) [T * topk]
  const float* wts = nullptr;   // routing weight of each (token, slot) [T * topk] (down)
  long long ew = 0, es = 0, ez = 0;  // bytes per expert of the stacked weight, scales, zero points
  int topk = 1, sub = 1;        // slots per token; K splits per slot (down)
};

enum Mode { DENSE = 0, MOE_GATE_UP = 1, MOE_DOWN = 2 };

template <class T>
__device__ __forceinline__ const T* byte_offset(const T* p, long long bytes) {
  return p == nullptr ? nullptr : reinterpret_cast<const T*>(reinterpret_cast<const uint8_t*>(p) + bytes);
}

// Args of expert e: every stacked tensor advanced by e experts (the global scale by e floats).
__device__ __forceinline__ Args expert_args(Args a, const uint8_t* w, const void* s, const int* z, const float* g,
                                            int e) {
  a.w = w + e * a.ew;
  a.s = byte_offset(s, e * a.es);
  a.z = byte_offset(z, e * a.ez);
  a.gscale = g == nullptr ? nullptr : g + e;
  return a;
}

__device__ __forceinline__ float silu(float v) { return v / (1.0f + __expf(-v)); }

// A 2-byte read-only load, zero-extended in the load itself (a 16-bit load through __ldg is widened by a
// separate instruction right after it, which makes the warp wait for the load there).
__device__ __forceinline__ uint32_t ldg_u16(const void* p) {
  uint32_t v;
  asm("ld.global.nc.u16 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}

__device__ __forceinline__ uint4 zero4() { return make_uint4(0u, 0u, 0u, 0u); }

__device__ __forceinline__ uint4 ld_stream16(const void* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

// 16 bytes of row `row` of a [N, row_bytes] byte matrix at byte offset `off`; zero past the row or N.
__device__ __forceinline__ uint4 load_row_chunk(const uint8_t* base, int n, long row_bytes, int row, long off) {
  if (row >= n || off >= row_bytes) return zero4();
  const uint8_t* p = base + (long)row * row_bytes + off;
  if ((row_bytes & 15) == 0) return ld_stream16(p);
  uint32_t wv[4] = {0u, 0u, 0u, 0u};
  for (int i = 0; i < 16; ++i)
    if (off + i < row_bytes) wv[i >> 2] |= (uint32_t)__ldg(p + i) << (8 * (i & 3));
  return make_uint4(wv[0], wv[1], wv[2], wv[3]);
}

// NP bf16 pairs (2*NP elements) of x[token, k0 ...]; zeros past M and K.
template <int NP>
__device__ __forceinline__ void load_x(const Args& a, int token, int k0, uint32_t (&X)[NP]) {
#pragma unroll
  for (int i = 0; i < NP; ++i) X[i] = 0u;
  if (token >= a.m || k0 >= a.k) return;
  const uint16_t* row = a.x + (long)token * a.k + k0;
  if ((a.k & 7) == 0 && k0 + 2 * NP <= a.k) {
#pragma unroll
    for (int i = 0; i < NP / 4; ++i) {
      const uint4 v = __ldca(reinterpret_cast<const uint4*>(row) + i);
      X[4 * i] = v.x; X[4 * i + 1] = v.y; X[4 * i + 2] = v.z; X[4 * i + 3] = v.w;
    }
  } else {
    for (int i = 0; i < 2 * NP; ++i)
      if (k0 + i < a.k) X[i >> 1] |= (uint32_t)__ldca(row + i) << (16 * (i & 1));
  }
}

// NP bf16 pairs at xr + off (16-byte loads; the caller guarantees they lie inside K); zeros if xr is null.
template <int NP>
__device__ __forceinline__ void load_x_fast(const uint16_t* xr, long off, uint32_t (&X)[NP]) {
  if (xr == nullptr) {
#pragma unroll
    for (int i = 0; i < NP; ++i) X[i] = 0u;
    return;
  }
#pragma unroll
  for (int i = 0; i < NP / 4; ++i) {
    const uint4 v = __ldca(reinterpret_cast<const uint4*>(xr + off) + i);
    X[4 * i] = v.x; X[4 * i + 1] = v.y; X[4 * i + 2] = v.z; X[4 * i + 3] = v.w;
  }
}

__device__ __forceinline__ uint32_t dynamic_smem_bytes() {
  uint32_t r;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
  return r;
}

// Bytes of x a CTA stages for iterations [s_beg, s_beg + s_len) (see "x in shared memory").
template <class P>
__device__ __forceinline__ long xs_need(const Args& a, int s_len) {
  return (long)a.m * s_len * 4 * P::EC * 2;
}

// Copy x[token < M][iterations s_beg .. s_beg + s_len) into xs (every thread of the CTA; the caller syncs):
// layout [token][iteration][unit i of a lane chunk][lane t] of 16-byte units, each lane chunk permuted by
// P::xperm, zeros past K. A thread loads XB lane chunks (128 bytes) before it stores any, so that they are in
// flight together (one chunk at a time, the prologue of bf16 4096x4096 at M = 8 took 3.4x the M = 1 time on the
// H200). Measured and dropped: the copies made with cp.async (16-byte asynchronous copies, the permute in place
// after them) lost the gain at M = 1 (Mixtral nvfp4 decode 236 against 241 tok/s with x through L1).
// tid / nthr: the calling thread's index among the nthr threads that share the copy (the TMA build: its consumers).
template <class P>
__device__ __forceinline__ void stage_x(const Args& a, uint4* xs, int s_beg, int s_len, int tid = threadIdx.x,
                                        int nthr = blockDim.x) {
  constexpr int EC = P::EC, NP = EC / 2, NU = EC / 8, XB = 32 / NP;
  const int per_token = s_len * 4, chunks = a.m * per_token;  // lane chunks
  for (int c0 = tid; c0 < chunks; c0 += XB * nthr) {
    uint32_t X[XB][NP];
#pragma unroll
    for (int b = 0; b < XB; ++b) {
      const int c = c0 + b * nthr, token = c / per_token, r = c - token * per_token;
      load_x<NP>(a, c < chunks ? token : a.m, (s_beg * 4 + r) * EC, X[b]);  // token a.m: zeros, no load
    }
#pragma unroll
    for (int b = 0; b < XB; ++b) {
      const int c = c0 + b * nthr, token = c / per_token, r = c - token * per_token;
      if (c >= chunks) break;
      P::xperm(X[b]);
      uint4* dst = xs + ((long)token * per_token + (r & ~3)) * NU + (r & 3);
#pragma unroll
      for (int i = 0; i < NU; ++i)
        dst[4 * i] = make_uint4(X[b][4 * i], X[b][4 * i + 1], X[b][4 * i + 2], X[b][4 * i + 3]);
    }
  }
}

// The lane's x pairs of iteration it (it_rel = it - the slab's first) from the staged slab: xs[mt] is the shared
// address of the lane's token row (tokens past M clamped to M - 1) plus its lane t. Volatile shared loads: the
// compiler keeps them in program order with the mmas (asm volatile) instead of hoisting a stage's worth of x
// into registers ahead of its use, which spilled at the 128-register cap.
template <class P, int MT>
__device__ __forceinline__ void load_x_staged(const uint32_t (&xs)[MT], int it_rel, uint32_t (&X)[MT][P::EC / 2]) {
  constexpr int NU = P::EC / 8;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < NU; ++i)
      asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];"
                   : "=r"(X[mt][4 * i]), "=r"(X[mt][4 * i + 1]), "=r"(X[mt][4 * i + 2]), "=r"(X[mt][4 * i + 3])
                   : "r"(xs[mt] + (uint32_t)((it_rel * NU + i) * 64)));
}

// Where one warp's work lands: the row tile (its first row row0 and, for the split-K workspace, an index
// gtile unique over the whole grid), the K split it sweeps, and the partial it contributes (split of splits).
struct Place {
  int row0, gtile;        // gtile: tile index over every grid z (workspace and counters)
  int ksplit, ksplits;    // the K range: part ksplit of ksplits
  int split;              // which of a.splits partials (dense and gate/up: = ksplit)
  float pscale;           // the partial's factor (down: the routing weight times the expert's out_scale)
  bool active;
};

// Combine split-K partials (see the header), scale, write y. One warp, no block-wide barrier.
// PA scales rows g (and, dense, g + 8), PB rows g + 8 (gate/up: the up projection).
template <class P, int MT, int MODE>
__device__ __forceinline__ void epilogue(const Args& a, const P& pa, const P& pb, float (&acc)[MT][4],
                                         const Place& pl, int wr, int wk, int wr_n) {
  __shared__ float red[GEMV_WARPS * 8 * 32];
  const int lane = threadIdx.x & 31;
  float v[MT * 4];
#pragma unroll
  for (int r = 0; r < MT * 4; ++r) v[r] = acc[r >> 2][r & 3];
  if (a.wk > 1) {  // the wk warps of one tile: sum their partials in a fixed order through shared memory
#pragma unroll
    for (int r = 0; r < MT * 4; ++r) red[((wk * wr_n + wr) * MT * 4 + r) * 32 + lane] = v[r];
    __syncthreads();
    if (wk != 0) return;
#pragma unroll
    for (int r = 0; r < MT * 4; ++r) {
      v[r] = 0.f;
      for (int j = 0; j < a.wk; ++j) v[r] += red[((j * wr_n + wr) * MT * 4 + r) * 32 + lane];
    }
  }
  if (!pl.active) return;
  if (MODE == MOE_DOWN) {
#pragma unroll
    for (int r = 0; r < MT * 4; ++r) v[r] *= pl.pscale;
  }
  if (a.splits > 1) {
    float* base = a.ws + (long)pl.gtile * a.splits * (MT * 4 * 32);
#pragma unroll
    for (int r = 0; r < MT * 4; ++r) __stcg(base + ((long)pl.split * MT * 4 + r) * 32 + lane, v[r]);
    __threadfence();
    int last = 0;
    if (lane == 0) last = atomicAdd(a.cnt + pl.gtile, 1) == a.splits - 1;
    last = __shfl_sync(0xffffffffu, last, 0);
    if (!last) return;
    __threadfence();
#pragma unroll
    for (int r = 0; r < MT * 4; ++r) v[r] = 0.f;
    for (int s = 0; s < a.splits; ++s)
#pragma unroll
      for (int r = 0; r < MT * 4; ++r) v[r] += __ldcg(base + ((long)s * MT * 4 + r) * 32 + lane);
    if (lane == 0) a.cnt[pl.gtile] = 0;
  }
  const int g = lane >> 2, t = lane & 3;
  if constexpr (MODE == MOE_GATE_UP) {  // one token: C[g][0] = gate row . x, C[g + 8][0] = up row . x (lanes t = 0)
    const int row = pl.row0 + g;
    if (t == 0 && row < a.n)
      a.y[row] = __bfloat16_as_ushort(__float2bfloat16_rn(silu(v[0] * pa.out_scale(0)) * (v[2] * pb.out_scale(0))));
  } else {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int row = pl.row0 + g + 8 * h, token = 8 * mt + 2 * t + j;
          if (row < a.n && token < a.m) {
            const float out = MODE == MOE_DOWN ? v[mt * 4 + 2 * h + j] : v[mt * 4 + 2 * h + j] * pa.out_scale(token);
            a.y[(long)token * a.n + row] = __bfloat16_as_ushort(__float2bfloat16_rn(out));
          }
        }
  }
}

// A warp's start on a tile: zero accumulators, and the lane's x row per token tile (its first k-slot chunk,
// t * EC elements in; nullptr past M). Shared by the register loop and the TMA build (gemv_tma.cuh).
template <int MT, int EC>
__device__ __forceinline__ void start_tile(const Args& a, int g, int t, float (&acc)[MT][4],
                                           const uint16_t* (&xr)[MT]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[mt][i] = 0.f;
    xr[mt] = g + 8 * mt < a.m ? a.x + (long)(g + 8 * mt) * a.k + t * EC : nullptr;
  }
}

// Everything iterations [it0, it0+U) of rows ra and rb need from memory, issued together so that no
// load waits on another: the W chunks, each row's side data (scales / zero points, P::side) and, with
// GEMV_XPREFETCH, the lane's x pairs. The main loop computes one stage while the next is in flight.
template <class P, int MT, int U>
struct Stage {
  uint4 wa[U], wb[U];
  typename P::Side sa[U], sb[U];
#if GEMV_XPREFETCH
  uint32_t X[U][MT][P::EC / 2];
#endif
};

// The general loader: any row (zeros past N), any K (masked chunk and x loads, zeros past it_end).
// Row ra is read from weight wA with policy pa, row rb from wB with pb (dense: the same tensor).
template <class P, int MT, int U>
__device__ __forceinline__ void load_stage(const Args& a, const P& pa, const P& pb, const uint8_t* wA,
                                           const uint8_t* wB, long row_bytes, int ra, int rb, int g, int t,
                                           int it0, int it_end, Stage<P, MT, U>& st) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const long off = ((long)(it0 + u) * 4 + t) * 16;
    const int k0 = ((it0 + u) * 4 + t) * P::EC;
    const bool ok = it0 + u < it_end;
    st.wa[u] = ok ? load_row_chunk(wA, a.n, row_bytes, ra, off) : zero4();
    st.wb[u] = ok ? load_row_chunk(wB, a.n, row_bytes, rb, off) : zero4();
    st.sa[u] = ok ? pa.side(ra, k0) : typename P::Side{};
    st.sb[u] = ok ? pb.side(rb, k0) : typename P::Side{};
#if GEMV_XPREFETCH
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) load_x<P::EC / 2>(a, ok ? g + 8 * mt : a.m, k0, st.X[u][mt]);
#endif
  }
}

// The fast loader, for iterations whose chunks all lie inside K on 16-byte-aligned rows: no bounds
// checks. Rows past N are clamped to row N-1 (valid memory; their outputs are never written).
// wa/wb point at the lane's first chunk of its two rows, xr[mt] at its token's x (nullptr past M).
template <class P, int MT, int U>
__device__ __forceinline__ void load_stage_fast(const P& pa, const P& pb, const uint8_t* wa, const uint8_t* wb,
                                                int rca, int rcb, const uint16_t* const (&xr)[MT], int t, int it0,
                                                Stage<P, MT, U>& st) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int it = it0 + u, k0 = (it * 4 + t) * P::EC;
    st.wa[u] = ld_stream16(wa + (long)it * 64);
    st.wb[u] = ld_stream16(wb + (long)it * 64);
    st.sa[u] = pa.side_fast(rca, k0);
    st.sb[u] = pb.side_fast(rcb, k0);
#if GEMV_XPREFETCH
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) load_x_fast<P::EC / 2>(xr[mt], (long)it * 4 * P::EC, st.X[u][mt]);
#endif
  }
}

// The lane's x pairs of iteration it for every token tile, permuted to the policy's k-slot order.
template <class P, int MT, bool FAST>
__device__ __forceinline__ void load_x_chunk(const Args& a, const uint16_t* const (&xr)[MT], int g, int t, int it,
                                             uint32_t (&X)[MT][P::EC / 2]) {
  constexpr int EC = P::EC, NP = EC / 2;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    if (FAST) load_x_fast<NP>(xr[mt], (long)it * 4 * EC, X[mt]);
    else load_x<NP>(a, g + 8 * mt, (it * 4 + t) * EC, X[mt]);
    P::xperm(X[mt]);
  }
}

// One iteration's math: decode rows a and b (chunks wa, wb with side data sa, sb), mma, partial scaling.
template <class P, int MT>
__device__ __forceinline__ void math_chunk(const P& pa, const P& pb, const uint4& wa, const uint4& wb,
                                           const typename P::Side& sa, const typename P::Side& sb,
                                           const uint32_t (&X)[MT][P::EC / 2], float (&acc)[MT][4]) {
  constexpr int NP = P::EC / 2;
  uint32_t RA[NP], RB[NP];
  pa.decode(wa, sa, RA);
  pb.decode(wb, sb, RB);
  if constexpr (P::PARTIAL) {
    float part[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) part[mt][i] = 0.f;
    mma_chunk<NP, MT, P::F16>(part, RA, RB, X);
    pa.partial(acc, part, sa, sb);
  } else {
    mma_chunk<NP, MT, P::F16>(acc, RA, RB, X);
  }
}

// One iteration's math (entry u of a stage, iteration it): x, decode, mma, per-iteration partial scaling.
// XS: x from the staged slab (xs, slab starting at iteration it_xs), else as the build says.
template <class P, int MT, int U, bool FAST, bool XS = false>
__device__ __forceinline__ void compute_one(const Args& a, const P& pa, const P& pb, const Stage<P, MT, U>& st,
                                            const uint16_t* const (&xr)[MT], int g, int t, int it, int u,
                                            float (&acc)[MT][4], const uint32_t (&xs)[MT] = {},
                                            int it_xs = 0) {
  uint32_t X[MT][P::EC / 2];
  if constexpr (XS) {
    load_x_staged<P, MT>(xs, it - it_xs, X);
    math_chunk<P, MT>(pa, pb, st.wa[u], st.wb[u], st.sa[u], st.sb[u], X, acc);
    return;
  }
#if GEMV_XPREFETCH
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int i = 0; i < P::EC / 2; ++i) X[mt][i] = st.X[u][mt][i];
    P::xperm(X[mt]);
  }
#else
  load_x_chunk<P, MT, FAST>(a, xr, g, t, it, X);
#endif
  math_chunk<P, MT>(pa, pb, st.wa[u], st.wb[u], st.sa[u], st.sb[u], X, acc);
}

template <class P, int MT, int U, bool FAST, bool XS = false>
__device__ __forceinline__ void compute_stage(const Args& a, const P& pa, const P& pb, const Stage<P, MT, U>& st,
                                              const uint16_t* const (&xr)[MT], int g, int t, int it0, int it_end,
                                              float (&acc)[MT][4], const uint32_t (&xs)[MT] = {},
                                              int it_xs = 0) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    if (!FAST && it0 + u >= it_end) break;
    compute_one<P, MT, U, FAST, XS>(a, pa, pb, st, xr, g, t, it0 + u, u, acc, xs, it_xs);
  }
}

__device__ __forceinline__ void cp_async_cg16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ uint4 lds16(uint32_t a) {
  uint4 r;
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "r"(a));
  return r;
}

// The fast iterations [it_beg, it_fast) of a warp through its ring (GEMV_RING): stage j (U iterations) is copied
// into slot j % S by the lane's own 16-byte cp.async copies S - 1 stages before it is computed, so that S - 1
// stages of every warp are in flight while one is computed (the register loop holds one). Each lane reads back
// only the chunks it copied itself: no barrier. The side data (scales) are loaded a stage ahead in registers.
// wa, wb: the lane's first chunk of its two rows; ring: the shared address of the lane's first slot; slab: where
// x is staged (XS), after the prologue's copies are issued: every warp of the CTA calls it (it_fast == it_beg: no
// stage of its own).
template <class P, int MT, int U, int S, bool XS>
__device__ __forceinline__ void ring_loop(const Args& a, const P& pa, const P& pb, const uint8_t* wa,
                                          const uint8_t* wb, int rca, int rcb, const uint16_t* const (&xr)[MT],
                                          int g, int t, int it_beg, int it_fast, int s_beg, int s_len,
                                          float (&acc)[MT][4], const uint32_t (&xs)[MT], uint32_t ring,
                                          uint4* slab) {
  const int nst = (it_fast - it_beg) / U;
  auto issue = [&](int j) {
    const uint32_t slot = ring + (uint32_t)(j % S) * U * 1024;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const long it = it_beg + j * U + u;
      cp_async_cg16(slot + u * 1024, wa + it * 64);
      cp_async_cg16(slot + u * 1024 + 512, wb + it * 64);
    }
  };
  auto sides = [&](Stage<P, MT, U>& st, int j) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k0 = ((it_beg + j * U + u) * 4 + t) * P::EC;
      st.sa[u] = pa.side_fast(rca, k0);
      st.sb[u] = pb.side_fast(rcb, k0);
    }
  };
#pragma unroll
  for (int j = 0; j < S - 1; ++j) {
    if (j < nst) issue(j);
    asm volatile("cp.async.commit_group;" ::: "memory");
  }
  Stage<P, MT, U> cur;
  if (nst > 0) sides(cur, 0);
  if constexpr (XS) {  // every warp of the CTA takes part (one barrier)
    stage_x<P>(a, slab, s_beg, s_len);
    __syncthreads();
  }
  for (int j = 0; j < nst; ++j) {
    if (j + S - 1 < nst) issue(j + S - 1);
    asm volatile("cp.async.commit_group;" ::: "memory");
    Stage<P, MT, U> nxt;
    if (j + 1 < nst) sides(nxt, j + 1);
    asm volatile("cp.async.wait_group %0;" ::"n"(S - 1) : "memory");  // stage j has landed
    const uint32_t slot = ring + (uint32_t)(j % S) * U * 1024;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      cur.wa[u] = lds16(slot + u * 1024);
      cur.wb[u] = lds16(slot + u * 1024 + 512);
    }
    compute_stage<P, MT, U, true, XS>(a, pa, pb, cur, xr, g, t, it_beg + j * U, it_fast, acc, xs, s_beg);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      cur.sa[u] = nxt.sa[u];
      cur.sb[u] = nxt.sb[u];
    }
  }
}

// The GEMV main loop, shared by every scheme and mode. P supplies EC, BITS, PARTIAL, Side, side,
// side_fast, decode, xperm, partial, out_scale. Iterations [it_beg, it_fast) run the fast loader (whole
// stages of in-range chunks), the rest (a K tail, rows that are not 16-byte multiples) the general one.
// Row ra of the tile comes from wA (policy pa), row rb from wB (pb).
template <class P, int MT, int MODE, bool XS>
__device__ __forceinline__ void gemv_core(const Args& a, const P& pa, const P& pb, const uint8_t* wA,
                                          const uint8_t* wB, const Place& pl, int ra, int rb, int wr, int wk,
                                          int wr_n) {
  constexpr int EC = P::EC, KI = 4 * EC, U = GEMV_UNROLL;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const long row_bytes = (long)a.k * P::BITS / 8;
  const int iters = (a.k + KI - 1) / KI;
  const int s_beg = (int)((long)iters * pl.ksplit / pl.ksplits);
  const int s_len = (int)((long)iters * (pl.ksplit + 1) / pl.ksplits) - s_beg;
  const int it_beg = s_beg + s_len * wk / a.wk;
  const int it_end = pl.active ? s_beg + s_len * (wk + 1) / a.wk : it_beg;
  const int full = (row_bytes & 15) == 0 ? a.k / KI : 0;  // iterations whose 4 chunks lie inside K
  const int it_fast = it_beg + max(0, min(it_end, full) - it_beg) / U * U;
  float acc[MT][4];
  const uint16_t* xr[MT];
  start_tile<MT, EC>(a, g, t, acc, xr);
  extern __shared__ uint4 xs_smem[];
  // the gate/up ring (GEMV_RING): S stages x U iterations x rows a, b x 32 lanes x 16 bytes a warp, before the slab
  constexpr int S = (MODE == MOE_GATE_UP && GEMV_XPREFETCH == 0) ? GEMV_RING : 0;
  const long ring_bytes = S > 0 ? (long)(blockDim.x >> 5) * S * U * 1024 : 0;
  uint32_t xs[MT];  // shared addresses (load_x_staged)
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
    xs[mt] = (uint32_t)__cvta_generic_to_shared(xs_smem + ring_bytes / 16 +
                                                min(g + 8 * mt, a.m - 1) * s_len * 4 * (EC / 8) + t);

  const bool fast = it_fast > it_beg;
  const int rca = min(ra, a.n - 1), rcb = min(rb, a.n - 1);
  const uint8_t* wa = wA + (long)rca * row_bytes + t * 16;
  const uint8_t* wb = wB + (long)rcb * row_bytes + t * 16;
  // double-buffered: stage i+1's loads are issued before stage i is computed
  Stage<P, MT, U> cur;
#if GEMV_RING
  if constexpr (S > 0) {
    // every warp calls it (the x staging's barrier), those without fast iterations with none to run
    if (dynamic_smem_bytes() < ring_bytes + (XS ? xs_need<P>(a, s_len) : 0)) __trap();  // a launcher bug
    ring_loop<P, MT, U, S, XS>(a, pa, pb, wa, wb, rca, rcb, xr, g, t, it_beg, fast ? it_fast : it_beg, s_beg, s_len,
                               acc, xs,
                               (uint32_t)__cvta_generic_to_shared(xs_smem) + (threadIdx.x >> 5) * S * U * 1024 +
                                   (threadIdx.x & 31) * 16,
                               xs_smem + ring_bytes / 16);
  } else
#endif
  {
    if (fast) {
#if GEMV_XPREFETCH
      if (!XS) lb_pdl_wait();  // x is loaded with the weights
#endif
      load_stage_fast<P, MT, U>(pa, pb, wa, wb, rca, rcb, xr, t, it_beg, cur);
    }
    lb_pdl_wait();  // the first weights are in flight; x (an earlier kernel's output) is read from here on
    if constexpr (XS) {  // every warp of the CTA, active or not, takes part (one barrier)
      if (dynamic_smem_bytes() < xs_need<P>(a, s_len)) __trap();  // a launcher bug: never read past the slab
      stage_x<P>(a, xs_smem, s_beg, s_len);
      __syncthreads();
    }
    if (fast) {
      for (int it0 = it_beg; it0 < it_fast; it0 += U) {
        Stage<P, MT, U> nxt;
        if (it0 + U < it_fast) load_stage_fast<P, MT, U>(pa, pb, wa, wb, rca, rcb, xr, t, it0 + U, nxt);
        compute_stage<P, MT, U, true, XS>(a, pa, pb, cur, xr, g, t, it0, it_fast, acc, xs, s_beg);
        cur = nxt;
      }
    }
  }
  if (it_end > it_fast) {
    load_stage<P, MT, U>(a, pa, pb, wA, wB, row_bytes, ra, rb, g, t, it_fast, it_end, cur);
    for (int it0 = it_fast; it0 < it_end; it0 += U) {
      Stage<P, MT, U> nxt;
      load_stage<P, MT, U>(a, pa, pb, wA, wB, row_bytes, ra, rb, g, t, it0 + U, it_end, nxt);
      compute_stage<P, MT, U, false, XS>(a, pa, pb, cur, xr, g, t, it0, it_end, acc, xs, s_beg);
      cur = nxt;
    }
  }
  epilogue<P, MT, MODE>(a, pa, pb, acc, pl, wr, wk, wr_n);
}

// Dense: y = x @ W^T. Tile = 16 rows of W (lane rows g and g + 8), grid (tiles / wr_n, splits).
template <class P, int MT, bool XS>
__device__ __forceinline__ void gemv_body(const Args& a) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wr_n = (blockDim.x >> 5) / a.wk, wr = warp % wr_n, wk = warp / wr_n;
  const int tile = blockIdx.x * wr_n + wr, row0 = tile * 16;
  const Place pl{row0, tile, (int)blockIdx.y, a.splits, (int)blockIdx.y, 1.f, row0 < a.n};
  lb_pdl_trigger();
  const P p(a, row0);
  const int ra = row0 + (lane >> 2);
  gemv_core<P, MT, DENSE, XS>(a, p, p, a.w, a.w, pl, ra, ra + 8, wr, wk, wr_n);
}

}  // namespace lb

// One extern "C" kernel per (policy, token tiles), with the argument list every launcher passes; with GEMV_XS
// also NAME_xs, the staged-x form (launched with xs_need bytes of dynamic shared memory or more). Two kernels,
// not a branch in one: both loops in one kernel spilled at the 128-register cap where each alone did not.
#define LB_GEMV_KERNEL_FORM(NAME, POLICY, MT, XS)                                                      \
  extern "C" __global__ void LB_GEMV_BOUNDS                                                            \
      NAME(const uint8_t* w, const void* s, const int* z, const float* gscale, const uint16_t* x,     \
           const float* xs, uint16_t* y, float* ws, int* cnt, int n, int k, int m, int splits,         \
           int group, int wk) {                                                                       \
    const lb::Args a{w, s, z, gscale, x, xs, y, ws, cnt, n, k, m, splits, group, wk};                  \
    lb::gemv_body<POLICY, MT, XS>(a);                                                                 \
  }
#if GEMV_XS
#define LB_GEMV_KERNEL(NAME, POLICY, MT) \
  LB_GEMV_KERNEL_FORM(NAME, POLICY, MT, false) LB_GEMV_KERNEL_FORM(NAME##_xs, POLICY, MT, true)
#else
#define LB_GEMV_KERNEL(NAME, POLICY, MT) LB_GEMV_KERNEL_FORM(NAME, POLICY, MT, false)
#endif
