// gemm_w16_sm90.cu: the gemm_w16.cu computation (same operands, schemes, grouped mode, split-K and
// epilogue; reference: formats.<scheme>.dequantize + float64 matmul) on Hopper warpgroup MMA.
//
// CTA = 2 warpgroups (256 threads), tile 128 x 128 (warpgroup w: rows 64w..64w+63), BK = 64.
// Per k-step: cp.async ring of STAGES >= 3 (A bf16 tile, raw W tile), stored with the 128-byte
// swizzle; while the wgmma of step kt runs (wgmma.mma_async m64n128k16, A and B from shared memory,
// one group kept in flight), wgmma(kt-1) is retired, its stage refilled, and the raw W tile of step
// kt+1 dequantized to bf16 into the other half of a double buffer.
// SCHEME 0 (bf16 W) feeds the raw stage to wgmma directly.
// Only sm_90a has wgmma: elsewhere the kernel body is empty and the launcher uses gemm_w16.cu.
// Launch: grid as in gemm_w16.cu, block 256, dynamic smem smem_bytes (+1024 for alignment).
#include "gemm_sm90.cuh"

#ifndef SCHEME
#define SCHEME 1
#endif
#ifndef STAGES
#define STAGES 4
#endif
#ifndef INT4_GROUP
#define INT4_GROUP 128
#endif
#ifndef MINB
#define MINB 1  // CTAs per SM the register budget is sized for (2: <= 128 registers, STAGES 3 fits twice)
#endif
#ifndef BN
#define BN 128  // 128 (wgmma m64n128) or 256 (m64n256: half the A traffic per FLOP, 128 accumulators)
#endif
#define BM 128
#define BK 64
#define NT 256
#define NACC (BN / 2)
#define DQ_PASSES (BN * 2 / NT)

#if SCHEME == 0
#define RAW_ROW 128
#elif SCHEME == 1
#define RAW_ROW 64
#else
#define RAW_ROW 32
#endif
constexpr int A_STAGE = BM * 128;
constexpr int W_STAGE = BN * RAW_ROW;
constexpr int WBF = BN * 128;

__device__ __forceinline__ size_t w_row_bytes(int K) { return (size_t)K * RAW_ROW / BK; }

__device__ __forceinline__ void store_out(bf16* __restrict__ y, float* __restrict__ ypart,
                                          const bf16* __restrict__ gate, int row, int col, int N, int M,
                                          float v0, float v1) {
    if (gridDim.z > 1) {
        float* p = ypart + ((size_t)blockIdx.z * M + row) * N + col;
        p[0] = v0;
        if (col + 1 < N) p[1] = v1;
        return;
    }
    const size_t i = (size_t)row * N + col;
    if (gate != nullptr) {
        v0 *= silu(__bfloat162float(gate[i]));
        if (col + 1 < N) v1 *= silu(__bfloat162float(gate[i + 1]));
    }
    if (col + 1 < N && (N % 2 == 0)) {
        *reinterpret_cast<bf162*>(y + i) = __floats2bfloat162_rn(v0, v1);
    } else {
        y[i] = __float2bfloat16_rn(v0);
        if (col + 1 < N) y[i + 1] = __float2bfloat16_rn(v1);
    }
}

extern "C" __global__ void __launch_bounds__(NT, MINB) gemm_w16_sm90(
    const bf16* __restrict__ x, const int* __restrict__ a_rows, const uint8_t* __restrict__ wq,
    const void* __restrict__ wscale, const int32_t* __restrict__ wzero, const float* __restrict__ wglobal,
    const bf16* __restrict__ gate, bf16* __restrict__ y, float* __restrict__ ypart, int M, int N, int K,
    int k_len, int E, const int* __restrict__ offs, const int* __restrict__ tile_offs) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ uint8_t smem_raw[];
    uint8_t* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
    uint8_t* As = smem;
    uint8_t* Wraw = As + STAGES * A_STAGE;
    uint8_t* Wbf = Wraw + STAGES * W_STAGE;  // 2 x WBF, 1024-aligned (stage sizes are multiples of 1024)

    TileRows tr;
    int n0;
    if (!cta_tile(BM, BN, M, N, E, offs, tile_offs, tr, n0)) return;
    const int kbeg = blockIdx.z * k_len;
    const int kend = min(K, kbeg + k_len);
    const int nk = (kend - kbeg + BK - 1) / BK;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
    const float gs = (SCHEME == 2) ? wglobal[tr.e] : 1.0f;
    const uint8_t* wbase = wq + (size_t)tr.e * N * w_row_bytes(K);

    constexpr int A_LOADS = BM * 8 / NT;  // 4
    const bf16* arow[A_LOADS];
    bool aok[A_LOADS];
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i) {
        const int idx = tid + i * NT, r = tr.m0 + idx / 8;
        aok[i] = r < tr.m_end;
        arow[i] = x + (size_t)(aok[i] ? (a_rows ? a_rows[r] : r) : 0) * K + (idx % 8) * 8;
    }
    constexpr int RAW_CHUNKS = RAW_ROW / 16;
    constexpr int W_LOADS = (BN * RAW_CHUNKS + NT - 1) / NT;

    auto load_stage = [&](int kt) {
        const int st = kt % STAGES, k0 = kbeg + kt * BK;
        uint8_t* as = As + st * A_STAGE;
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int idx = tid + i * NT, r = idx / 8, c = idx % 8;
            const bool ok = aok[i] && (k0 + c * 8) < kend;
            cp_async16(as + sw128_off(r, c), ok ? (const void*)(arow[i] + k0) : (const void*)x, ok);
        }
        uint8_t* ws = Wraw + st * W_STAGE;
#pragma unroll
        for (int i = 0; i < W_LOADS; ++i) {
            const int idx = tid + i * NT;
            if (idx < BN * RAW_CHUNKS) {
                const int r = idx / RAW_CHUNKS, c = idx % RAW_CHUNKS, n = n0 + r;
                const int kc = k0 + c * (16 * BK / RAW_ROW);
                const uint8_t* src = wbase + (size_t)n * w_row_bytes(K) + (size_t)kc * RAW_ROW / BK;
                const bool ok = n < N && kc < kend;
#if SCHEME == 0
                uint8_t* dst = ws + sw128_off(r, c);
#else
                uint8_t* dst = ws + r * RAW_ROW + c * 16;
#endif
                cp_async16(dst, ok ? (const void*)src : (const void*)wq, ok);
            }
        }
    };
    auto scale_of = [&](int kt, Scl (&sc)[DQ_PASSES]) {
#pragma unroll
        for (int q = 0; q < DQ_PASSES; ++q)
            sc[q] = load_scale<SCHEME, INT4_GROUP>(tr.e, n0 + (tid >> 1) + q * (NT / 2), kbeg + kt * BK + (tid & 1) * 32,
                                                   N, K, wscale, wzero, gs);
    };
    // dequantize raw stage of step kt into bf16 buffer (kt & 1): thread rows tid/2 + q*NT/2, 32 elements each
    auto dequant = [&](int kt, const Scl (&sc)[DQ_PASSES]) {
#if SCHEME != 0
        const int h = tid & 1;
        uint8_t* dst = Wbf + (kt & 1) * WBF;
#pragma unroll
        for (int q = 0; q < DQ_PASSES; ++q) {
            const int r = (tid >> 1) + q * (NT / 2);
            uint32_t o[16];
            dequant32_regs<SCHEME>(Wraw + (kt % STAGES) * W_STAGE + r * RAW_ROW + h * (RAW_ROW / 2), sc[q], o);
#pragma unroll
            for (int i = 0; i < 4; ++i)
                *reinterpret_cast<uint4*>(dst + sw128_off(r, h * 4 + i)) = make_uint4(o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]);
        }
#endif
    };

    float acc[NACC];
#pragma unroll
    for (int i = 0; i < NACC; ++i) acc[i] = 0.f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < nk) load_stage(s);
        cp_async_commit();
    }
    Scl nxt[DQ_PASSES], cur[DQ_PASSES];
    scale_of(0, nxt);
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    dequant(0, nxt);
    if (nk > 1) scale_of(1, nxt);
    fence_proxy_async();
    __syncthreads();

    for (int kt = 0; kt < nk; ++kt) {
        const uint8_t* as = As + (kt % STAGES) * A_STAGE + wg * 64 * 128;
#if SCHEME == 0
        const uint8_t* bs = Wraw + (kt % STAGES) * W_STAGE;
#else
        const uint8_t* bs = Wbf + (kt & 1) * WBF;
#endif
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < BK / 16; ++ks) {
#if BN == 256
            wgmma_bf16_m64n256(acc, sw128_desc(as + ks * 32), sw128_desc(bs + ks * 32), 1);
#else
            wgmma_bf16_m64n128(acc, sw128_desc(as + ks * 32), sw128_desc(bs + ks * 32), 1);
#endif
        }
        wgmma_commit();
        // while wgmma(kt) runs: retire wgmma(kt-1), refill its stage, dequantize step kt+1
        wgmma_wait<1>();
        if (kt + 1 < nk) {
            cp_async_wait<STAGES - 3>();  // step kt+1 landed (this thread's copies)
            fence_proxy_async();
        }
        __syncthreads();  // everyone: wgmma(kt-1) retired, step kt+1 landed
        if (kt + STAGES - 1 < nk) load_stage(kt + STAGES - 1);  // into the stage wgmma(kt-1) read
        cp_async_commit();
        if (kt + 1 < nk) {
#pragma unroll
            for (int q = 0; q < DQ_PASSES; ++q) cur[q] = nxt[q];
            if (kt + 2 < nk) scale_of(kt + 2, nxt);
            dequant(kt + 1, cur);  // into the bf16 buffer wgmma(kt-1) read
            fence_proxy_async();
        }
        __syncthreads();  // the bf16 tile of step kt+1 is complete
    }
    wgmma_wait<0>();
    cp_async_wait<0>();

    const int g = lane >> 2, t4 = lane & 3, wr = (warp & 3) * 16;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = tr.m0 + wg * 64 + wr + g + h * 8;
        if (row >= tr.m_end) continue;
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
            const int col = n0 + j * 8 + t4 * 2;
            if (col < N) store_out(y, ypart, gate, row, col, N, M, acc[j * 4 + 2 * h], acc[j * 4 + 2 * h + 1]);
        }
    }
#endif
}
