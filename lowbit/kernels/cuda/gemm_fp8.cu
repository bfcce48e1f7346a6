// gemm_fp8.cu: fp8-block W8A8 GEMM, the DeepSeek-V3 recipe.
//
// act_quant_fp8: x bf16 [rows, K] (row r read from x[a_rows[r]] when a_rows is given) ->
//   xq e4m3 [rows, K], xs f32 [ceil(K/128), rows] (k-block major, so a tile's row scales are
//   contiguous). Per row and 128-channel block: s = amax/448 (1 when amax == 0), q = e4m3_satfinite(x / s)
//   (IEEE division, RNE), i.e. exactly lowbit.verify.gemm_checks.quantize_act_ref.
//   A half-warp per (row, k-block) "unit" (a lane: 8 elements, one 16-byte load, an 8-byte store). A CTA of
//   256 threads holds S = 16 * AQ_U unit slots, 2^lg k-blocks (lg = log2 of the smallest power of two >= kb,
//   at most log2 S) of S >> lg rows; half-warp h takes slots h, h + 16, ..., its AQ_U loads issued together.
//   No integer division. Launch: block 256, grid (ceil(rows / (S >> lg)), ceil(kb / 2^lg)). The earlier
//   warp-per-unit version (8-byte loads, a 64-bit division per warp) ran at ~1.5 TB/s on H200 and cost up to
//   28 % of a W8A8 GEMM at K >= 4096 (benchmarks/RESULTS.md, session 11).
//
// gemm_fp8_kernel: y[M,N] = sum_kb (xq[:,kb] @ Wq[:,kb]^T) * xs[kb, m] * ws[n/128, kb], with W e4m3
//   [E,N,K] and ws f32 [E, ceil(N/128), ceil(K/128)] as on disk (weight_scale_inv, a multiplier).
//   Each 128-K block is accumulated in fp32 by mma.sync.m16n8k32.e4m3 into a temporary, then scaled
//   and added to the main fp32 accumulator (promotion per K-block). bf16 output; with gate
//   ([M,N] bf16, optional) y = silu(gate) * acc (the MoE up-projection).
//   Reference: dequantize(W) and the dequantized activations, float64 matmul.
//   Tiles (compile-time): BM x BN (BN <= 128 so a tile sits in one 128-row scale block), BK = 128,
//   WARPS_M x WARPS_N warps, STAGES-deep cp.async ring; rows padded to 144 bytes (conflict-free
//   ldmatrix). Grid as in gemm_w16.cu (dense: m_tiles*n_tiles raster; grouped: (m_tiles, n_tiles)); split-K too.
//   Preconditions (launcher): K % 32 == 0, contiguous 16-byte aligned operands.
#include "gemm_common.cuh"

#ifndef BM
#define BM 128
#endif
#ifndef BN
#define BN 128
#endif
#ifndef WARPS_M
#define WARPS_M 2
#endif
#ifndef WARPS_N
#define WARPS_N 4
#endif
#ifndef STAGES
#define STAGES 3
#endif

#define BK 128
#define RST (BK + 16)  // padded smem row in bytes
#define NT (WARPS_M * WARPS_N * 32)
#define WTM (BM / WARPS_M)
#define WTN (BN / WARPS_N)
#define MI (WTM / 16)
#define NI (WTN / 8)
static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tile must be a multiple of 16x16");
static_assert(BN <= 128, "a tile must sit inside one 128-row weight-scale block");

constexpr int A_STAGE = BM * RST;
constexpr int B_STAGE = BN * RST;

// one unit (row r, k-block b) of act_quant_fp8 for this lane (lane16 of 16): load, amax over the half-warp,
// scale, quantize, store (nothing when !ok: a unit past the end). `raw` was loaded by the caller (zeros past K).
__device__ __forceinline__ void act_quant_unit(const uint4& raw, bool ok, bool in_k, int r, int b, int k, int rows,
                                               int K, uint8_t* __restrict__ xq, float* __restrict__ xs, int lane16) {
    float v[8];
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 f = __bfloat1622float2(*reinterpret_cast<const bf162*>(&w[i]));
        v[2 * i] = f.x;
        v[2 * i + 1] = f.y;
    }
    float m = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) m = fmaxf(m, fabsf(v[i]));
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));  // within the half-warp
    float s = m / 448.0f;
    if (m == 0.f) s = 1.0f;
    // v / s, correctly rounded, from one reciprocal per unit (Markstein: y = RN(1/s), q = RN(v y), r = v - s q
    // exact by fma, RN(q + r y) = RN(v / s) when nothing over- or underflows: |v / s| <= 448, and s >= 2^-60
    // keeps r normal). Smaller scales (amax < 2^-51) take the IEEE division. 8 divisions a lane made this
    // kernel compute-bound.
    const bool fast = s >= 0x1p-60f;  // the same for the whole half-warp
    const float y = 1.0f / s;
    auto quot = [&](float a) {
        if (!fast) return a / s;
        const float q0 = __fmul_rn(a, y);
        return __fmaf_rn(__fmaf_rn(-s, q0, a), y, q0);
    };
    if (in_k) {
        uint32_t q[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const __nv_fp8x2_storage_t lo = __nv_cvt_float2_to_fp8x2(make_float2(quot(v[4 * i]), quot(v[4 * i + 1])),
                                                                     __NV_SATFINITE, __NV_E4M3);
            const __nv_fp8x2_storage_t hi = __nv_cvt_float2_to_fp8x2(
                make_float2(quot(v[4 * i + 2]), quot(v[4 * i + 3])), __NV_SATFINITE, __NV_E4M3);
            q[i] = (uint32_t)lo | ((uint32_t)hi << 16);
        }
        *reinterpret_cast<uint2*>(xq + (size_t)r * K + k) = make_uint2(q[0], q[1]);
    }
    if (ok && lane16 == 0) xs[(size_t)b * rows + r] = s;
}

#ifndef AQ_U
#define AQ_U 2  // unit slots per half-warp of act_quant_fp8 (loads in flight per lane): 2 beat 4 and 8 (H200)
#endif
extern "C" __global__ void __launch_bounds__(256) act_quant_fp8(const bf16* __restrict__ x,
                                                                 const int* __restrict__ a_rows, int rows, int K,
                                                                 int lg, uint8_t* __restrict__ xq,
                                                                 float* __restrict__ xs) {
    constexpr int S = 16 * AQ_U;
    const int kb = (K + 127) / 128;
    const int lane16 = threadIdx.x & 15, hw = threadIdx.x >> 4;  // half-warp hw of 16 takes slots hw + 16 j
    uint4 raw[AQ_U];
    int r[AQ_U], b[AQ_U], k[AQ_U];
    bool ok[AQ_U], in_k[AQ_U];
#pragma unroll
    for (int j = 0; j < AQ_U; ++j) {  // every load in flight before any is used
        const int slot = hw + 16 * j;
        r[j] = blockIdx.x * (S >> lg) + (slot >> lg);
        b[j] = blockIdx.y * (1 << lg) + (slot & ((1 << lg) - 1));
        ok[j] = r[j] < rows && b[j] < kb;
        k[j] = b[j] * 128 + lane16 * 8;
        in_k[j] = ok[j] && k[j] < K;  // K % 32 == 0: a lane's 8 elements are all in range or all out
        raw[j] = make_uint4(0u, 0u, 0u, 0u);
        if (in_k[j]) {
            const int src = a_rows ? __ldg(a_rows + r[j]) : r[j];
            raw[j] = __ldg(reinterpret_cast<const uint4*>(x + (size_t)src * K + k[j]));
        }
    }
#pragma unroll
    for (int j = 0; j < AQ_U; ++j)  // every lane runs every unit (the shuffles need the whole warp); stores if ok
        act_quant_unit(raw[j], ok[j], in_k[j], r[j], b[j], k[j], rows, K, xq, xs, lane16);
}

extern "C" __global__ void __launch_bounds__(NT, 1) gemm_fp8_kernel(
    const uint8_t* __restrict__ xq, const float* __restrict__ xs, const uint8_t* __restrict__ wq,
    const float* __restrict__ wscale, const bf16* __restrict__ gate, bf16* __restrict__ y, float* __restrict__ ypart, int M, int N, int K,
    int k_len, int E, const int* __restrict__ offs, const int* __restrict__ tile_offs) {
    extern __shared__ __align__(128) uint8_t smem[];
    uint8_t* As = smem;
    uint8_t* Bs = smem + STAGES * A_STAGE;

    TileRows tr;
    int n0;
    if (!cta_tile(BM, BN, M, N, E, offs, tile_offs, tr, n0)) return;
    const int kbeg = blockIdx.z * k_len;
    const int kend = min(K, kbeg + k_len);
    const int nk = (kend - kbeg + BK - 1) / BK;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;
    const int g = lane >> 2, t4 = lane & 3;
    const int nkb = (K + 127) / 128;
    const uint8_t* wbase = wq + (size_t)tr.e * N * K;
    const float* wsrow = wscale + ((size_t)tr.e * ((N + 127) / 128) + n0 / 128) * nkb;

    auto load_stage = [&](int kt) {
        const int st = kt % STAGES, k0 = kbeg + kt * BK;
        for (int idx = tid; idx < BM * 8; idx += NT) {
            const int r = idx / 8, c = idx % 8, row = tr.m0 + r, kc = k0 + c * 16;
            const bool ok = row < tr.m_end && kc < kend;
            cp_async16(As + st * A_STAGE + r * RST + c * 16, ok ? (const void*)(xq + (size_t)row * K + kc) : (const void*)xq, ok);
        }
        for (int idx = tid; idx < BN * 8; idx += NT) {
            const int r = idx / 8, c = idx % 8, n = n0 + r, kc = k0 + c * 16;
            const bool ok = n < N && kc < kend;
            cp_async16(Bs + st * B_STAGE + r * RST + c * 16, ok ? (const void*)(wbase + (size_t)n * K + kc) : (const void*)wq, ok);
        }
    };
    // row scales of this thread's accumulator rows for k-block kb (0 for rows past the group)
    auto load_ascale = [&](int kt, float (&a)[MI][2]) {
        const int kb = (kbeg + kt * BK) / 128;
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = tr.m0 + wm * WTM + i * 16 + g + h * 8;
                a[i][h] = row < tr.m_end ? __ldg(xs + (size_t)kb * M + row) : 0.f;
            }
    };

    float acc[MI][NI][4], tmp[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < nk) load_stage(s);
        cp_async_commit();
    }
    float anext[MI][2];
    load_ascale(0, anext);
    float wnext = __ldg(wsrow + kbeg / 128);

    for (int kt = 0; kt < nk; ++kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int st = kt % STAGES;
        float acur[MI][2];
#pragma unroll
        for (int i = 0; i < MI; ++i) { acur[i][0] = anext[i][0]; acur[i][1] = anext[i][1]; }
        const float wcur = wnext;
        if (kt + 1 < nk) {
            load_ascale(kt + 1, anext);
            wnext = __ldg(wsrow + (kbeg + (kt + 1) * BK) / 128);
        }
        if (kt + STAGES - 1 < nk) load_stage(kt + STAGES - 1);
        cp_async_commit();

#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
            for (int j = 0; j < NI; ++j)
#pragma unroll
                for (int c = 0; c < 4; ++c) tmp[i][j][c] = 0.f;
        const uint8_t* as = As + st * A_STAGE;
        const uint8_t* bs = Bs + st * B_STAGE;
#pragma unroll
        for (int ks = 0; ks < BK / 32; ++ks) {
            uint32_t af[MI][4], bfr[NI][2];
#pragma unroll
            for (int i = 0; i < MI; ++i)
                ldmatrix_x4(af[i][0], af[i][1], af[i][2], af[i][3],
                            as + (wm * WTM + i * 16 + (lane & 15)) * RST + ks * 32 + (lane >> 4) * 16);
#pragma unroll
            for (int j = 0; j < NI / 2; ++j)
                ldmatrix_x4(bfr[2 * j][0], bfr[2 * j][1], bfr[2 * j + 1][0], bfr[2 * j + 1][1],
                            bs + (wn * WTN + j * 16 + (lane & 7) + (lane >> 4) * 8) * RST + ks * 32 +
                                ((lane >> 3) & 1) * 16);
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < NI; ++j) mma_e4m3(tmp[i][j], af[i], bfr[j]);
        }
#pragma unroll
        for (int i = 0; i < MI; ++i) {
            const float s0 = acur[i][0] * wcur, s1 = acur[i][1] * wcur;
#pragma unroll
            for (int j = 0; j < NI; ++j) {
                acc[i][j][0] += tmp[i][j][0] * s0;
                acc[i][j][1] += tmp[i][j][1] * s0;
                acc[i][j][2] += tmp[i][j][2] * s1;
                acc[i][j][3] += tmp[i][j][3] * s1;
            }
        }
    }
    cp_async_wait<0>();

#pragma unroll
    for (int i = 0; i < MI; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = tr.m0 + wm * WTM + i * 16 + g + h * 8;
            if (row >= tr.m_end) continue;
#pragma unroll
            for (int j = 0; j < NI; ++j) {
                const int col = n0 + wn * WTN + j * 8 + t4 * 2;
                if (col >= N) continue;
                float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
                if (gridDim.z == 1 && gate != nullptr) {
                    v0 *= silu(__bfloat162float(gate[(size_t)row * N + col]));
                    if (col + 1 < N) v1 *= silu(__bfloat162float(gate[(size_t)row * N + col + 1]));
                }
                if (gridDim.z > 1) {
                    float* p = ypart + ((size_t)blockIdx.z * M + row) * N + col;
                    p[0] = v0;
                    if (col + 1 < N) p[1] = v1;
                } else if (col + 1 < N && N % 2 == 0) {
                    *reinterpret_cast<bf162*>(y + (size_t)row * N + col) = __floats2bfloat162_rn(v0, v1);
                } else {
                    y[(size_t)row * N + col] = __float2bfloat16_rn(v0);
                    if (col + 1 < N) y[(size_t)row * N + col + 1] = __float2bfloat16_rn(v1);
                }
            }
        }
    }
}
