// gemm_common.cuh: PTX helpers shared by gemm_*.cu and moe_*.cu (cp.async, ldmatrix, mma.sync,
// the grouped-tile lookup and the element decoders). Header only; every .cu that includes it
// compiles standalone with `nvcc -std=c++17 -cubin -arch=sm_90a` (and sm_120a).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;
typedef __nv_bfloat162 bf162;

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared; src_bytes = 0 zero-fills the destination (predicated load).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool pred) {
    int n = pred ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                                            const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(smem_u32(p)));
}

// D += A(16x16 bf16, row) * B(16x8 bf16, col), fp32 accumulate.
__device__ __forceinline__ void mma_bf16(float* d, const uint32_t* a, const uint32_t* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// D += A(16x32 e4m3, row) * B(32x8 e4m3, col), fp32 accumulate (sm_89+).
__device__ __forceinline__ void mma_e4m3(float* d, const uint32_t* a, const uint32_t* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Grouped (MoE) tiles. Rows of A are sorted by expert: expert e owns rows [offs[e], offs[e+1]).
// tile_offs[e] = sum over experts < e of ceil(count/BM); tile_offs[E] = number of live m-tiles.
// Dense GEMM passes offs == nullptr: one group, e = 0, rows [0, M).
struct TileRows {
    int e, m0, m_end;
};
__device__ __forceinline__ bool grouped_tile(int bx, int bm, int M, int E, const int* __restrict__ offs,
                                             const int* __restrict__ tile_offs, TileRows& t) {
    if (offs == nullptr) {
        t.e = 0;
        t.m0 = bx * bm;
        t.m_end = M;
        return t.m0 < M;
    }
    if (bx >= tile_offs[E]) return false;
    int lo = 0, hi = E - 1;  // largest e with tile_offs[e] <= bx (empty experts share values: take last)
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (tile_offs[mid] <= bx) lo = mid; else hi = mid - 1;
    }
    t.e = lo;
    t.m0 = offs[lo] + (bx - tile_offs[lo]) * bm;
    t.m_end = offs[lo + 1];
    return t.m0 < t.m_end;
}

// Output tile of this CTA. Dense (offs == nullptr): a 1-D grid of m_tiles * n_tiles CTAs in grouped
// raster order (GROUP_M m-tiles share each run of n-tiles), so a wave re-reads A and W slices that
// fit in L2 instead of streaming all of A once per n-tile. Grouped (MoE): blockIdx.x = m-tile of the
// expert-sorted rows (see grouped_tile), blockIdx.y = n-tile.
#define GROUP_M 8
// tile pid of an mt x ntl grid in grouped raster order: (m-tile pm, n-tile pn)
__device__ __forceinline__ void raster_tile(int pid, int mt, int ntl, int& pm, int& pn) {
    const int per_group = GROUP_M * ntl, first_m = (pid / per_group) * GROUP_M;
    const int gm = min(mt - first_m, GROUP_M);
    pm = first_m + (pid % per_group) % gm;
    pn = (pid % per_group) / gm;
}
__device__ __forceinline__ bool cta_tile(int bm, int bn, int M, int N, int E, const int* __restrict__ offs,
                                         const int* __restrict__ tile_offs, TileRows& t, int& n0) {
    if (offs != nullptr) {
        n0 = blockIdx.y * bn;
        return grouped_tile(blockIdx.x, bm, M, E, offs, tile_offs, t);
    }
    const int mt = (M + bm - 1) / bm, ntl = (N + bn - 1) / bn;
    int pm, pn;
    raster_tile(blockIdx.x, mt, ntl, pm, pn);
    t.e = 0;
    t.m0 = pm * bm;
    t.m_end = M;
    n0 = pn * bn;
    return pm < mt && pn < ntl;
}

// ---- element decoders -------------------------------------------------------------------------
// two e4m3 bytes (low byte = first element) -> float2 (exact; hardware cvt on sm_89+)
__device__ __forceinline__ float2 e4m3x2_to_float2(uint16_t v) {
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(v), __NV_E4M3);
    return __half22float2(*reinterpret_cast<__half2*>(&h));
}
__device__ __forceinline__ float e4m3_to_float(uint8_t v) {
    __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(v), __NV_E4M3);
    return __half2float(*reinterpret_cast<__half*>(&h));
}
// one byte of two E2M1 codes (low nibble = first element) -> half2 holding value * 2^-14 (exact:
// the code's 2 exponent bits and 1 mantissa bit drop into the half's exponent/mantissa fields,
// subnormals included). Multiply by 2^14 * scale afterwards.
__device__ __forceinline__ float2 e2m1x2_to_float2_scaled(uint32_t b, float s) {
    uint32_t h = ((b & 0x7u) << 9) | ((b & 0x8u) << 12) | ((b & 0x70u) << 21) | ((b & 0x80u) << 24);
    float2 f = __half22float2(*reinterpret_cast<__half2*>(&h));
    return make_float2(f.x * s, f.y * s);
}
__device__ __forceinline__ uint32_t pack_bf162(float a, float b) {
    bf162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
}
// Per-row scales of a weight chunk starting at element k of row n of expert e, as on disk
// (see gemm_w16.cu for the layouts). Scheme 2 folds the 2^14 of the E2M1 decoder and the global divisor.
struct Scl {
    float s0, s1;  // fp8: s0; nvfp4: per 16-group factors; int4: s0 = scale
    uint32_t z;    // int4: stored zero point (zp + 8), 8 for symmetric
};

template <int SCH, int G>
__device__ __forceinline__ Scl load_scale(int e, int n, int k, int N, int K, const void* __restrict__ wscale,
                                          const int32_t* __restrict__ wzero, float gs) {
    Scl s{0.f, 0.f, 8u};
    if (n >= N || k >= K) return s;
    if constexpr (SCH == 1) {
        const int nb = (N + 127) / 128, kb = (K + 127) / 128;
        s.s0 = __ldg(static_cast<const float*>(wscale) + ((size_t)e * nb + n / 128) * kb + k / 128);
    } else if constexpr (SCH == 2) {
        const uint16_t v = __ldg(reinterpret_cast<const unsigned short*>(
            static_cast<const uint8_t*>(wscale) + ((size_t)e * N + n) * (K / 16) + k / 16));
        const float f = 16384.0f / gs;  // the E2M1 decoder leaves a 2^-14 factor; global is a divisor
        s.s0 = e4m3_to_float(v & 0xff) * f;
        s.s1 = e4m3_to_float(v >> 8) * f;
    } else if constexpr (SCH == 3) {
        const int ng = K / G;
        s.s0 = __bfloat162float(static_cast<const bf16*>(wscale)[((size_t)e * N + n) * ng + k / G]);
        if (wzero != nullptr) {
            const uint32_t w = __ldg(wzero + ((size_t)e * ((N + 7) / 8) + n / 8) * ng + k / G);
            s.z = (w >> (4 * (n % 8))) & 15u;
        }
    }
    return s;
}

// 32 K-elements of one W row: raw bytes (smem) -> 16 registers of bf16 pairs (scheme 1..3).
template <int SCH>
__device__ __forceinline__ void dequant32_regs(const uint8_t* raw, const Scl& s, uint32_t (&o)[16]) {
    if constexpr (SCH == 1) {
        const uint4 r0 = reinterpret_cast<const uint4*>(raw)[0];
        const uint4 r1 = reinterpret_cast<const uint4*>(raw)[1];
        const uint32_t w[8] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            float2 a = e4m3x2_to_float2(w[i] & 0xffff);
            float2 b = e4m3x2_to_float2(w[i] >> 16);
            o[2 * i] = pack_bf162(a.x * s.s0, a.y * s.s0);
            o[2 * i + 1] = pack_bf162(b.x * s.s0, b.y * s.s0);
        }
    } else if constexpr (SCH == 2) {
        const uint4 r = reinterpret_cast<const uint4*>(raw)[0];
        const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float f = (i < 2) ? s.s0 : s.s1;  // bytes 0..7: group 0, bytes 8..15: group 1
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                float2 v = e2m1x2_to_float2_scaled((w[i] >> (8 * j)) & 0xff, f);
                o[4 * i + j] = pack_bf162(v.x, v.y);
            }
        }
    } else if constexpr (SCH == 3) {
        const uint4 r = reinterpret_cast<const uint4*>(raw)[0];
        const uint32_t w[4] = {r.x, r.y, r.z, r.w};
        const bf162 sc = __float2bfloat162_rn(s.s0);  // the scale is a bf16 already: exact
        const bf162 bias = __float2bfloat162_rn(128.0f + (float)s.z);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                // bf16 0x4300 | n = 128 + n exactly (7 mantissa bits); minus (128 + zp8) is exact
                uint32_t v = ((w[i] >> (8 * j)) & 0xfu) | (((w[i] >> (8 * j + 4)) & 0xfu) << 16) | 0x43004300u;
                bf162 q = __hsub2(*reinterpret_cast<bf162*>(&v), bias);
                bf162 d = __hmul2(q, sc);
                o[4 * i + j] = *reinterpret_cast<uint32_t*>(&d);
            }
        }
    }
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + __expf(-g)); }
