// gemm_fp8_tma_sm90.cu: dense fp8-block W8A8 GEMM on Hopper, warp-specialized: y[M, N] bf16 =
// sum over 128-K blocks kb of xs[kb, m] * ws[n/128, kb] * (xq[m, kb-block] . W[n, kb-block]).
//
// Operands (as gemm_fp8.cu): xq e4m3 [M, K] and xs f32 [ceil(K/128), M] (act_quant_fp8, per token per 128
// channels), W e4m3 [N, K] (`weight`), ws f32 [ceil(N/128), ceil(K/128)] (`weight_scale_inv`, multiplied).
// xq and W are read through TMA tensor maps (lowbit/kernels/tma.py: 2-D, uint8, box 128 x 128, 128-byte
// swizzle, zero fill past M, N and K), so K % 16 == 0 and 16-byte-aligned bases are required.
// Reference: the dequantized operands, float64 matmul (lowbit.verify.reference).
//
// CTA = 1 producer + NCW consumer warpgroups (NCW = 2, or 3 for 192-row tiles), persistent (grid <= SMs; CTA b
// takes output tiles b, b + grid, ... in the grouped raster order of cta_tile, gemm_common.cuh); output tile
// (64 * NCW) x BN (BN = 128 or 256). The producer warpgroup's one thread issues, per 128-K block, the TMA
// copies of the A tile and of the B tile (in 128-row boxes) into a STAGES-deep ring (tma_sm90.cuh's
// full/empty mbarriers), running ahead across tile boundaries. Each consumer owns 64 output rows: per k-block
// and 128-column half, four wgmma m64n128k32 (both operands from the 128-byte-swizzled stage) into a
// temporary, then the DeepSeek-V3 promotion acc += tmp * xs * ws in fp32; the stage is released as soon as
// its wgmmas have read it. PIPE = U > 0 (BN = 128, NCW = 2): two k-blocks in flight per consumer (two
// temporaries), in straight-line runs of U blocks (see the comment at the loop). Registers: setmaxnreg
// gives the producer 40 and the consumers 232 (NCW = 2; 24 / 160 for NCW = 3). The epilogue writes bf16
// from registers while the producer already fills the ring with the next tile.
// Measured on H200 (benchmarks/RESULTS.md, 2026-11-27): 128 x 128 with PIPE = 4 (the launcher's default)
// beat 128 x 256 without pipelining and the 192-row three-consumer tile.
// Preconditions (launcher, lowbit/kernels/gemm.py): dense (no expert groups), K % 16 == 0, 16-byte aligned
// xq and W, tensor maps of boxes (64 * NCW) x 128 (A) and 128 x 128 (B).
// Only sm_90a has wgmma: elsewhere the body is empty and the launcher never picks this kernel.
// Launch: grid (min(tiles, SMs)), block 128 * (NCW + 1), dynamic smem STAGES * (64 * NCW + BN) * 128 + 2048.
#include "gemm_sm90.cuh"
#include "tma_sm90.cuh"

#include <type_traits>

#ifndef STAGES
#define STAGES 6
#endif
#ifndef BN
#define BN 128  // 128 or 256: a consumer computes its 64 x BN rows as BN / 128 column halves of one wgmma width
#endif
#ifndef PIPE
#define PIPE 0  // U > 0: two k-blocks in flight per consumer warpgroup, straight-line runs of U (BN = 128)
#endif
#ifndef NCW
#define NCW 2  // consumer warpgroups (64 rows each): 2 (setmaxnreg 232) or 3 (160; no PIPE)
#endif
#define BM (64 * NCW)
#define BK 128
#if NCW == 2
#define PRODUCER_REGS 40
#define CONSUMER_REGS 232
#else
#define PRODUCER_REGS 24
#define CONSUMER_REGS 160
#endif
#define STR2(x) #x
#define STR(x) STR2(x)
#define NH (BN / 128)
[[maybe_unused]] constexpr int STAGE_A = BM * BK;
[[maybe_unused]] constexpr int STAGE_B = BN * BK;

// the output tile `pid` of an mt x ntl grid, in cta_tile's grouped raster order (gemm_common.cuh)
__device__ __forceinline__ void tile_origin(int pid, int mt, int ntl, int& m0, int& n0) {
    raster_tile(pid, mt, ntl, m0, n0);
    m0 *= BM;
    n0 *= BN;
}

extern "C" __global__ void __launch_bounds__(128 * (NCW + 1), 1) gemm_fp8_tma_sm90(
    const void* __restrict__ map_a, const void* __restrict__ map_b, const float* __restrict__ xs,
    const float* __restrict__ wscale, bf16* __restrict__ y, int M, int N, int K) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ uint8_t smem_raw[];
    uint8_t* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
    uint8_t* As = smem;
    uint8_t* Bs = smem + STAGES * STAGE_A;
    const uint32_t full0 = smem_u32(Bs + STAGES * STAGE_B), empty0 = full0 + 8 * STAGES;
    const int mt = (M + BM - 1) / BM, ntl = (N + BN - 1) / BN, tiles = mt * ntl, nk = (K + BK - 1) / BK;

    // full: the producer's arrive.expect_tx (+ the copies' bytes); empty: one arrive per consumer warp
    if (threadIdx.x == 0) ring_init(full0, empty0, STAGES, 1, 4 * NCW);
    __syncthreads();

    const int wg = threadIdx.x / 128;
    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 " STR(PRODUCER_REGS) ";\n");
        if (threadIdx.x == 0) {
            tma_map_acquire(map_a);
            tma_map_acquire(map_b);
            auto origin = [&](int tile, int& m0, int& n0) { tile_origin(tile, mt, ntl, m0, n0); };
            for_each_block<STAGES>(tiles, 1, nk, nk, origin, [&](int m0, int n0, int kb, uint32_t s, uint32_t ph) {
                mbar_wait(empty0 + 8 * s, ph ^ 1);
                mbar_arrive_expect_tx(full0 + 8 * s, STAGE_A + STAGE_B);
                tma_load_2d(smem_u32(As + s * STAGE_A), map_a, kb * BK, m0, full0 + 8 * s);
#pragma unroll
                for (int h = 0; h < NH; ++h)  // W rows past N (or a whole box past N) are zero-filled
                    tma_load_2d(smem_u32(Bs + s * STAGE_B + h * 128 * BK), map_b, kb * BK, n0 + h * 128, full0 + 8 * s);
            });
        }
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 " STR(CONSUMER_REGS) ";\n");
        const int c = wg - 1, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
        const int g = lane >> 2, t4 = lane & 3;
        uint32_t it = 0;
        for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
            int m0, n0;
            tile_origin(tile, mt, ntl, m0, n0);
            const int row0 = m0 + c * 64 + warp * 16 + g;  // this thread's rows: row0, row0 + 8
            const float* wsrow = wscale + (size_t)(n0 / 128) * nk;  // column half h: wsrow + h * nk
            float acc[NH][64];
#pragma unroll
            for (int h = 0; h < NH; ++h)
#pragma unroll
                for (int i = 0; i < 64; ++i) acc[h][i] = 0.f;
            // the scales of k-block kb + 1 are loaded while k-block kb computes (an L2 round trip is
            // longer than one k-block's wgmmas); column halves past N read the last row block's scale
            const int hmax = (N - 1) / 128 - n0 / 128;
            auto scales = [&](int kb, float (&wsc)[NH], float& x0, float& x1) {
#pragma unroll
                for (int h = 0; h < NH; ++h) wsc[h] = __ldg(wsrow + (size_t)min(h, hmax) * nk + kb);
                x0 = row0 < M ? __ldg(xs + (size_t)kb * M + row0) : 0.f;
                x1 = row0 + 8 < M ? __ldg(xs + (size_t)kb * M + row0 + 8) : 0.f;
            };
#if PIPE
            // two k-blocks in flight per consumer: k-block kb + 1 is issued into the other temporary before
            // k-block kb is waited for and promoted, so the promotion overlaps this warpgroup's own wgmmas.
            // ptxas keeps wgmmas asynchronous only where it can see which group a register read follows:
            // with a group in flight across a loop back-edge or a data-dependent wait it serializes every
            // wgmma (C7514; seen in the SASS as a wait after each). Hence straight-line runs of PIPE k-blocks
            // (the last one's promotion is exposed, covered by the other consumer), then pairs and a single.
            // fence_op keeps the compiler from moving a temporary's reads above the wait that retires it.
            static_assert(NH == 1 && NCW == 2, "PIPE needs acc + 2 temporaries in registers: BN = 128, NCW = 2 only");
            float ta[64], tb[64];
            auto fence_op = [&](float (&t)[64]) {
#pragma unroll
                for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(t[i])::"memory");
            };
            auto issue = [&](float (&t)[64], int kb) {
                const uint32_t q = it + kb, s = q % STAGES;
                mbar_wait(full0 + 8 * s, (q / STAGES) & 1);
                const uint8_t* as = As + s * STAGE_A + c * 64 * 128;
                const uint8_t* bs = Bs + s * STAGE_B;
                fence_op(t);
                wgmma_fence();
#pragma unroll
                for (int ks = 0; ks < BK / 32; ++ks)
                    wgmma_e4m3_m64n128(t, sw128_desc(as + ks * 32), sw128_desc(bs + ks * 32), ks > 0);
                wgmma_commit();
                fence_op(t);
            };
            auto promote = [&](const float (&t)[64], int kb, float wsc, float x0, float x1) {
                if (lane == 0) mbar_arrive(empty0 + 8 * ((it + kb) % STAGES));
                const float s0 = x0 * wsc, s1 = x1 * wsc;
#pragma unroll
                for (int j = 0; j < 16; ++j) {
                    acc[0][4 * j] += t[4 * j] * s0;
                    acc[0][4 * j + 1] += t[4 * j + 1] * s0;
                    acc[0][4 * j + 2] += t[4 * j + 2] * s1;
                    acc[0][4 * j + 3] += t[4 * j + 3] * s1;
                }
            };
            float wa[NH], xa0, xa1, wb[NH], xb0, xb1;
            // a straight-line run of U k-blocks from kb, alternating the temporaries; nothing in flight after it
            auto run = [&](auto u, int kb) {
                constexpr int U = decltype(u)::value;
                scales(kb, wa, xa0, xa1);
                issue(ta, kb);
#pragma unroll
                for (int i = 1; i < U; ++i) {
                    if (i & 1) {
                        scales(kb + i, wb, xb0, xb1);
                        issue(tb, kb + i);
                        wgmma_wait<1>();
                        fence_op(ta);
                        promote(ta, kb + i - 1, wa[0], xa0, xa1);
                    } else {
                        scales(kb + i, wa, xa0, xa1);
                        issue(ta, kb + i);
                        wgmma_wait<1>();
                        fence_op(tb);
                        promote(tb, kb + i - 1, wb[0], xb0, xb1);
                    }
                }
                wgmma_wait<0>();
                if (U & 1) {
                    fence_op(ta);
                    promote(ta, kb + U - 1, wa[0], xa0, xa1);
                } else {
                    fence_op(tb);
                    promote(tb, kb + U - 1, wb[0], xb0, xb1);
                }
            };
            int kb = 0;
            for (; kb + PIPE <= nk; kb += PIPE) run(std::integral_constant<int, PIPE>{}, kb);
            for (; kb + 2 <= nk; kb += 2) run(std::integral_constant<int, 2>{}, kb);
            if (kb < nk) run(std::integral_constant<int, 1>{}, kb);
            it += nk;
#else
            float tmp[64], nwsc[NH], nx0, nx1;
            scales(0, nwsc, nx0, nx1);
            for (int kb = 0; kb < nk; ++kb, ++it) {
                const uint32_t s = it % STAGES, ph = (it / STAGES) & 1;
                float wsc[NH];
#pragma unroll
                for (int h = 0; h < NH; ++h) wsc[h] = nwsc[h];
                const float x0 = nx0, x1 = nx1;
                if (kb + 1 < nk) scales(kb + 1, nwsc, nx0, nx1);
                mbar_wait(full0 + 8 * s, ph);
                const uint8_t* as = As + s * STAGE_A + c * 64 * 128;
#pragma unroll
                for (int h = 0; h < NH; ++h) {
                    const uint8_t* bs = Bs + s * STAGE_B + h * 128 * 128;
                    wgmma_fence();
#pragma unroll
                    for (int ks = 0; ks < BK / 32; ++ks)
                        wgmma_e4m3_m64n128(tmp, sw128_desc(as + ks * 32), sw128_desc(bs + ks * 32), ks > 0);
                    wgmma_commit();
                    wgmma_wait<0>();
                    if (h == NH - 1 && lane == 0) mbar_arrive(empty0 + 8 * s);
                    const float s0 = x0 * wsc[h], s1 = x1 * wsc[h];
#pragma unroll
                    for (int j = 0; j < 16; ++j) {
                        acc[h][4 * j] += tmp[4 * j] * s0;
                        acc[h][4 * j + 1] += tmp[4 * j + 1] * s0;
                        acc[h][4 * j + 2] += tmp[4 * j + 2] * s1;
                        acc[h][4 * j + 3] += tmp[4 * j + 3] * s1;
                    }
                }
            }
#endif
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int row = row0 + r * 8;
                if (row >= M) continue;
#pragma unroll
                for (int h = 0; h < NH; ++h)
#pragma unroll
                    for (int j = 0; j < 16; ++j) {
                        const int col = n0 + h * 128 + j * 8 + t4 * 2;
                        if (col >= N) continue;
                        const size_t i = (size_t)row * N + col;
                        const float v0 = acc[h][4 * j + 2 * r], v1 = acc[h][4 * j + 2 * r + 1];
                        if (col + 1 < N && N % 2 == 0) {
                            *reinterpret_cast<bf162*>(y + i) = __floats2bfloat162_rn(v0, v1);
                        } else {
                            y[i] = __float2bfloat16_rn(v0);
                            if (col + 1 < N) y[i + 1] = __float2bfloat16_rn(v1);
                        }
                    }
            }
        }
    }
#endif
}
