// gemm_fp8_sm90.cu: the gemm_fp8.cu W8A8 block-scaled GEMM (same operands: xq e4m3 [M,K] and
// xs f32 [ceil(K/128), M] from act_quant_fp8, W e4m3 [E,N,K], ws f32 [E, ceil(N/128), ceil(K/128)];
// same grouped mode, split-K and epilogue; reference: dequantized operands, float64 matmul) on Hopper
// warpgroup MMA (wgmma.mma_async m64n128k32 e4m3, both operands from 128-byte-swizzled smem).
// CTA = NWG warpgroups (2: tile 128 x 128; 1: 64 x 128, several CTAs per SM), BK = 128 = one scale block: each k-step accumulates into a
// temporary, then promotes acc += tmp * xs[kb, m] * ws[n/128, kb] in fp32 (DeepSeek-V3 recipe).
// Only sm_90a has wgmma: elsewhere the body is empty and the launcher uses gemm_fp8.cu.
// Launch: grid as in gemm_w16.cu (dense: (m_tiles*n_tiles, 1, splits); grouped: (m_tiles, n_tiles)),
// block 128*NWG, dynamic smem STAGES*(BM+BN)*128 + 1024.
#include "gemm_sm90.cuh"

#ifndef STAGES
#define STAGES 4
#endif
#ifndef NWG
#define NWG 2  // warpgroups per CTA (1: 64-row CTAs that interleave on an SM, MINB of them)
#endif
#ifndef MINB
#define MINB 1
#endif
#define BM (64 * NWG)
#define BN 128
#define BK 128
#define NT (128 * NWG)
constexpr int A_STAGE = BM * 128;
constexpr int B_STAGE = BN * 128;

extern "C" __global__ void __launch_bounds__(NT, MINB) gemm_fp8_sm90(
    const uint8_t* __restrict__ xq, const float* __restrict__ xs, const uint8_t* __restrict__ wq,
    const float* __restrict__ wscale, const bf16* __restrict__ gate, bf16* __restrict__ y,
    float* __restrict__ ypart, int M, int N, int K, int k_len, int E, const int* __restrict__ offs,
    const int* __restrict__ tile_offs) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ uint8_t smem_raw[];
    uint8_t* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
    uint8_t* As = smem;
    uint8_t* Bs = smem + STAGES * A_STAGE;

    TileRows tr;
    int n0;
    if (!cta_tile(BM, BN, M, N, E, offs, tile_offs, tr, n0)) return;
    const int kbeg = blockIdx.z * k_len;
    const int kend = min(K, kbeg + k_len);
    const int nk = (kend - kbeg + BK - 1) / BK;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
    const int g = lane >> 2, t4 = lane & 3;
    const int row0 = tr.m0 + wg * 64 + (warp & 3) * 16 + g;  // this thread's rows: row0, row0 + 8
    const int nkb = (K + 127) / 128;
    const uint8_t* wbase = wq + (size_t)tr.e * N * K;
    const float* wsrow = wscale + ((size_t)tr.e * ((N + 127) / 128) + n0 / 128) * nkb;

    auto load_stage = [&](int kt) {
        const int st = kt % STAGES, k0 = kbeg + kt * BK;
#pragma unroll
        for (int i = 0; i < BM * 8 / NT; ++i) {
            const int idx = tid + i * NT, r = idx / 8, c = idx % 8, kc = k0 + c * 16, row = tr.m0 + r;
            const bool ok = row < tr.m_end && kc < kend;
            cp_async16(As + st * A_STAGE + sw128_off(r, c), ok ? (const void*)(xq + (size_t)row * K + kc) : (const void*)xq, ok);
        }
#pragma unroll
        for (int i = 0; i < BN * 8 / NT; ++i) {
            const int idx = tid + i * NT, r = idx / 8, c = idx % 8, kc = k0 + c * 16, n = n0 + r;
            const bool ok = n < N && kc < kend;
            cp_async16(Bs + st * B_STAGE + sw128_off(r, c), ok ? (const void*)(wbase + (size_t)n * K + kc) : (const void*)wq, ok);
        }
    };

    float acc[64], tmp[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.f;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < nk) load_stage(s);
        cp_async_commit();
    }
    for (int kt = 0; kt < nk; ++kt) {
        cp_async_wait<STAGES - 2>();
        fence_proxy_async();
        __syncthreads();  // stage kt landed everywhere; every warpgroup finished step kt-1
        const uint8_t* as = As + (kt % STAGES) * A_STAGE + wg * 64 * 128;
        const uint8_t* bs = Bs + (kt % STAGES) * B_STAGE;
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < BK / 32; ++ks) wgmma_e4m3_m64n128(tmp, sw128_desc(as + ks * 32), sw128_desc(bs + ks * 32), ks > 0);
        wgmma_commit();
        if (kt + STAGES - 1 < nk) load_stage(kt + STAGES - 1);
        cp_async_commit();
        const int kb = (kbeg + kt * BK) / 128;
        const float wsc = __ldg(wsrow + kb);
        const float s0 = row0 < tr.m_end ? __ldg(xs + (size_t)kb * M + row0) * wsc : 0.f;
        const float s1 = row0 + 8 < tr.m_end ? __ldg(xs + (size_t)kb * M + row0 + 8) * wsc : 0.f;
        wgmma_wait<0>();
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            acc[4 * j] += tmp[4 * j] * s0;
            acc[4 * j + 1] += tmp[4 * j + 1] * s0;
            acc[4 * j + 2] += tmp[4 * j + 2] * s1;
            acc[4 * j + 3] += tmp[4 * j + 3] * s1;
        }
    }
    cp_async_wait<0>();

#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int row = row0 + h * 8;
        if (row >= tr.m_end) continue;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const int col = n0 + j * 8 + t4 * 2;
            if (col >= N) continue;
            float v0 = acc[4 * j + 2 * h], v1 = acc[4 * j + 2 * h + 1];
            if (gridDim.z > 1) {
                float* p = ypart + ((size_t)blockIdx.z * M + row) * N + col;
                p[0] = v0;
                if (col + 1 < N) p[1] = v1;
                continue;
            }
            const size_t i = (size_t)row * N + col;
            if (gate != nullptr) {
                v0 *= silu(__bfloat162float(gate[i]));
                if (col + 1 < N) v1 *= silu(__bfloat162float(gate[i + 1]));
            }
            if (col + 1 < N && N % 2 == 0) {
                *reinterpret_cast<bf162*>(y + i) = __floats2bfloat162_rn(v0, v1);
            } else {
                y[i] = __float2bfloat16_rn(v0);
                if (col + 1 < N) y[i + 1] = __float2bfloat16_rn(v1);
            }
        }
    }
#endif
}
