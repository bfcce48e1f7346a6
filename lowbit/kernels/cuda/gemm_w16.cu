// gemm_w16.cu: y[M,N] = x[M,K] @ W[N,K]^T with bf16 activations and a weight stored as on disk,
// dequantized per tile in shared memory to bf16 and fed to bf16 tensor-core MMA
// (mma.sync.m16n8k16, ldmatrix, cp.async multi-stage pipeline). fp32 accumulation.
//
// SCHEME (compile-time):
//   0 bf16       W bf16 [E,N,K] (read straight into the MMA tile; used by the MoE bf16 experts)
//   1 fp8-block  W e4m3 [E,N,K], wscale f32 [E, ceil(N/128), ceil(K/128)], W' = q * s  (W8A16)
//   2 nvfp4      W u8 [E,N,K/2] (low nibble first), wscale e4m3 [E,N,K/16], wglobal f32 [E] divisor
//   3 int4       W i32 [E,N,K/8] (LSB first, q+8), wscale bf16 [E,N,K/G], wzero i32 [E,ceil(N/8),K/G]
//                (zp+8 packed along N, LSB first) or nullptr for symmetric; W' = (q - zp) * s
// Each scheme is exactly formats.<scheme>.dequantize; the reference is that followed by a float64
// matmul (lowbit.verify.gemm_checks). The dequantized weight is rounded to bf16 once (W' * s in
// fp32 -> bf16 RNE; int4: exact small integer times the bf16 scale, rounded once).
//
// Tiles (compile-time): BM x BN output tile, BK = 64 K-elements per stage, WARPS_M x WARPS_N warps,
// STAGES deep cp.async ring of (A tile, raw W tile); the raw W tile is expanded to one bf16 tile
// (BN x 72, padded rows: conflict-free ldmatrix) between two barriers per k-step.
// The tile table that picks these per shape lives in lowbit/kernels/gemm.py (_TILES).
//
// Launch: dense: grid (m_tiles*n_tiles, 1, splits) in grouped raster order (cta_tile, GROUP_M = 8);
//   block WARPS_M*WARPS_N*32, dynamic smem smem_bytes().
//   Dense: offs == nullptr, m_tiles = ceil(M/BM). Grouped (MoE): rows sorted by expert, offs [E+1]
//   row offsets, tile_offs [E+1] cumulative m-tiles per expert, m_tiles an upper bound
//   (ceil(rows/BM) + E); CTAs past tile_offs[E] exit. a_rows (optional) gathers A rows: sorted row
//   r reads x[a_rows[r]]. gate (optional, [M,N] bf16): y = silu(gate) * acc (the MoE up-projection).
//   splits > 1: K split in k_len chunks (multiple of 128); fp32 partials to ypart [splits, M, N],
//   summed by gemm_splitk_reduce.
// Preconditions (checked by the launcher): K % 32 == 0, 16-byte aligned contiguous operands,
//   N*K*bits/8 and row strides multiples of 16 bytes.
#include "gemm_common.cuh"

#ifndef SCHEME
#define SCHEME 1
#endif
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
#ifndef INT4_GROUP
#define INT4_GROUP 128
#endif

#define BK 64
#define AST (BK + 8)  // padded smem row, bf16 elements (144 bytes)
#define NT (WARPS_M * WARPS_N * 32)
#define WTM (BM / WARPS_M)
#define WTN (BN / WARPS_N)
#define MI (WTM / 16)
#define NI (WTN / 8)

#if SCHEME == 0
#define RAW_ROW_BYTES (AST * 2)
#elif SCHEME == 1
#define RAW_ROW_BYTES 64
#else
#define RAW_ROW_BYTES 32
#endif
#define RAW_CHUNKS ((SCHEME == 0) ? 8 : RAW_ROW_BYTES / 16)
#define DQ_PASSES (BN * 2 / NT)

static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tile must be a multiple of 16x16");
static_assert(BN * 2 % NT == 0, "dequant mapping: two threads per W row");

constexpr int A_STAGE = BM * AST * 2;
constexpr int W_STAGE = BN * RAW_ROW_BYTES;

// 32 K-elements of one W row: raw bytes in smem -> 32 bf16 (64 bytes) in the bf16 tile.
__device__ __forceinline__ void dequant32(const uint8_t* raw, bf16* dst, const Scl& s) {
#if SCHEME != 0
    uint32_t o[16];
    dequant32_regs<SCHEME>(raw, s, o);
    uint4* d4 = reinterpret_cast<uint4*>(dst);
#pragma unroll
    for (int i = 0; i < 4; ++i) d4[i] = make_uint4(o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]);
#endif
}

__device__ __forceinline__ size_t w_row_bytes(int K) {
#if SCHEME == 0
    return (size_t)K * 2;
#elif SCHEME == 1
    return (size_t)K;
#else
    return (size_t)K / 2;
#endif
}

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

extern "C" __global__ void __launch_bounds__(NT) gemm_w16_kernel(
    const bf16* __restrict__ x, const int* __restrict__ a_rows, const uint8_t* __restrict__ wq,
    const void* __restrict__ wscale, const int32_t* __restrict__ wzero, const float* __restrict__ wglobal,
    const bf16* __restrict__ gate, bf16* __restrict__ y, float* __restrict__ ypart, int M, int N, int K,
    int k_len, int E, const int* __restrict__ offs, const int* __restrict__ tile_offs) {
    extern __shared__ __align__(128) uint8_t smem[];
    bf16* As = reinterpret_cast<bf16*>(smem);
    uint8_t* Wraw = smem + STAGES * A_STAGE;
    bf16* Wbf = reinterpret_cast<bf16*>(Wraw + STAGES * W_STAGE);

    TileRows tr;
    int n0;
    if (!cta_tile(BM, BN, M, N, E, offs, tile_offs, tr, n0)) return;
    const int kbeg = blockIdx.z * k_len;
    const int kend = min(K, kbeg + k_len);
    const int nk = (kend - kbeg + BK - 1) / BK;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;
    const float gs = (SCHEME == 2) ? wglobal[tr.e] : 1.0f;
    const uint8_t* wbase = wq + (size_t)tr.e * N * w_row_bytes(K);

    // A rows this thread copies (fixed over k): BM*8 16-byte chunks per stage
    constexpr int A_LOADS = BM * 8 / NT > 0 ? BM * 8 / NT : 1;
    const bf16* arow[A_LOADS];
    bool aok[A_LOADS];
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i) {
        const int idx = tid + i * NT, r = tr.m0 + idx / 8;
        aok[i] = (idx < BM * 8) && r < tr.m_end;
        const int src = aok[i] ? (a_rows ? a_rows[r] : r) : 0;
        arow[i] = x + (size_t)src * K + (idx % 8) * 8;
    }
    constexpr int W_LOADS = (BN * RAW_CHUNKS + NT - 1) / NT;

    auto load_stage = [&](int kt) {
        const int st = kt % STAGES, k0 = kbeg + kt * BK;
        bf16* as = As + st * (BM * AST);
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int idx = tid + i * NT;
            if (idx < BM * 8) {
                const bool ok = aok[i] && (k0 + (idx % 8) * 8) < kend;
                cp_async16(as + (idx / 8) * AST + (idx % 8) * 8, ok ? (const void*)(arow[i] + k0) : (const void*)x, ok);
            }
        }
        uint8_t* ws = Wraw + st * W_STAGE;
#pragma unroll
        for (int i = 0; i < W_LOADS; ++i) {
            const int idx = tid + i * NT;
            if (idx < BN * RAW_CHUNKS) {
                const int r = idx / RAW_CHUNKS, c = idx % RAW_CHUNKS, n = n0 + r;
#if SCHEME == 0
                const int kc = k0 + c * 8;
                const uint8_t* src = wbase + (size_t)n * w_row_bytes(K) + (size_t)kc * 2;
#elif SCHEME == 1
                const int kc = k0 + c * 16;
                const uint8_t* src = wbase + (size_t)n * w_row_bytes(K) + kc;
#else
                const int kc = k0 + c * 32;
                const uint8_t* src = wbase + (size_t)n * w_row_bytes(K) + kc / 2;
#endif
                const bool ok = n < N && kc < kend;
                cp_async16(ws + r * RAW_ROW_BYTES + c * 16, ok ? (const void*)src : (const void*)wq, ok);
            }
        }
    };

    float acc[MI][NI][4];
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
    Scl nxt[DQ_PASSES];
#if SCHEME != 0
#pragma unroll
    for (int p = 0; p < DQ_PASSES; ++p)
        nxt[p] = load_scale<SCHEME, INT4_GROUP>(tr.e, n0 + (tid >> 1) + p * (NT / 2), kbeg + (tid & 1) * 32, N, K, wscale, wzero, gs);
#endif

    for (int kt = 0; kt < nk; ++kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // stage kt landed for everyone; everyone finished the MMAs of kt-1
        const int st = kt % STAGES;
#if SCHEME != 0
        Scl cur[DQ_PASSES];
#pragma unroll
        for (int p = 0; p < DQ_PASSES; ++p) cur[p] = nxt[p];
        if (kt + 1 < nk) {
#pragma unroll
            for (int p = 0; p < DQ_PASSES; ++p)
                nxt[p] = load_scale<SCHEME, INT4_GROUP>(tr.e, n0 + (tid >> 1) + p * (NT / 2), kbeg + (kt + 1) * BK + (tid & 1) * 32,
                                    N, K, wscale, wzero, gs);
        }
#pragma unroll
        for (int p = 0; p < DQ_PASSES; ++p) {
            const int r = (tid >> 1) + p * (NT / 2), h = tid & 1;
            dequant32(Wraw + st * W_STAGE + r * RAW_ROW_BYTES + h * (RAW_ROW_BYTES / 2), Wbf + r * AST + h * 32,
                      cur[p]);
        }
#endif
        if (kt + STAGES - 1 < nk) load_stage(kt + STAGES - 1);
        cp_async_commit();
#if SCHEME != 0
        __syncthreads();  // the bf16 W tile is complete
        const bf16* wb = Wbf;
#else
        const bf16* wb = reinterpret_cast<const bf16*>(Wraw + st * W_STAGE);
#endif
        const bf16* as = As + st * (BM * AST);
#pragma unroll
        for (int ks = 0; ks < BK / 16; ++ks) {
            uint32_t af[MI][4], bfr[NI][2];
#pragma unroll
            for (int i = 0; i < MI; ++i)
                ldmatrix_x4(af[i][0], af[i][1], af[i][2], af[i][3],
                            as + (wm * WTM + i * 16 + (lane & 15)) * AST + ks * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int j = 0; j < NI / 2; ++j)
                ldmatrix_x4(bfr[2 * j][0], bfr[2 * j][1], bfr[2 * j + 1][0], bfr[2 * j + 1][1],
                            wb + (wn * WTN + j * 16 + (lane & 7) + (lane >> 4) * 8) * AST + ks * 16 +
                                ((lane >> 3) & 1) * 8);
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < NI; ++j) mma_bf16(acc[i][j], af[i], bfr[j]);
        }
    }
    cp_async_wait<0>();

    const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int i = 0; i < MI; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = tr.m0 + wm * WTM + i * 16 + g + h * 8;
            if (row >= tr.m_end) continue;
#pragma unroll
            for (int j = 0; j < NI; ++j) {
                const int col = n0 + wn * WTN + j * 8 + t4 * 2;
                if (col < N) store_out(y, ypart, gate, row, col, N, M, acc[i][j][2 * h], acc[i][j][2 * h + 1]);
            }
        }
    }
}

// y[i] = sum_s ypart[s, i] (optionally silu(gate[i]) * sum), i over M*N
extern "C" __global__ void gemm_splitk_reduce(const float* __restrict__ ypart, int splits, long long total,
                                              const bf16* __restrict__ gate, bf16* __restrict__ y) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        float v = 0.f;
        for (int s = 0; s < splits; ++s) v += ypart[s * total + i];
        if (gate != nullptr) v *= silu(__bfloat162float(gate[i]));
        y[i] = __float2bfloat16_rn(v);
    }
}
