// gemv_math.cuh: the GEMVs' arithmetic helpers: the m16n8k16 tensor-core mma (bf16, or f16 for W8A8) and
// its per-chunk sequence, bf16x2 / f16x2 packing and arithmetic, the one-LOP3 mask-and-or, and the exact
// E4M3 conversions through the hardware cvt. Header only; included by common.cuh.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

namespace lb {

// One m16n8k16 mma, fp32 accumulate: bf16 x bf16, or f16 x f16 when F16 (the W8A8 GEMV: E4M3 codes of weight
// and activation are exact in f16).
template <bool F16>
__device__ __forceinline__ void mma_16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t b0, uint32_t b1) {
#define LB_MMA_16816(T)                                                                                  \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." T "." T ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, " \
               "{%0,%1,%2,%3};\n"                                                                       \
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                        \
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1))
  if constexpr (F16) LB_MMA_16816("f16");
  else LB_MMA_16816("bf16");
#undef LB_MMA_16816
}

// All mmas of one chunk: A = rows g (RA) and g+8 (RB), B = the token tile(s) X[mt] (bf16 or, F16, f16 pairs).
// One accumulator chain: splitting the mmas over 2 or 4 independent chains measured the same (H200, 2026-11-27).
template <int NP, int MT, bool F16 = false>
__device__ __forceinline__ void mma_chunk(float (&c)[MT][4], const uint32_t (&RA)[NP], const uint32_t (&RB)[NP],
                                          const uint32_t (&X)[MT][NP]) {
#pragma unroll
  for (int j = 0; j < NP / 2; ++j)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
      mma_16816<F16>(c[mt], RA[2 * j], RB[2 * j], RA[2 * j + 1], RB[2 * j + 1], X[mt][2 * j], X[mt][2 * j + 1]);
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t hmul2_bf16(uint32_t a, uint32_t b) {
  __nv_bfloat162 r = __hmul2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}

// (a & m) | c in one LOP3 (the compiler splits two immediate masks into an AND and an OR).
template <uint32_t M>
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "n"(M), "r"(c));
  return d;
}

__device__ __forceinline__ uint32_t hsub2_bf16(uint32_t a, uint32_t b) {
  __nv_bfloat162 r = __hsub2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}

// Two E4M3 bytes (low byte first) -> f16x2, exact: one hardware cvt.
__device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint16_t two) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)two, __NV_E4M3);
  return (uint32_t)h.x | ((uint32_t)h.y << 16);
}

// Two E4M3 bytes (low byte first) -> bf16x2, exact, through the hardware cvt (e4m3x2 -> f16x2).
__device__ __forceinline__ uint32_t e4m3x2_to_bf16x2(uint16_t two) {
  __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)two, __NV_E4M3);
  const float2 f = __half22float2(*reinterpret_cast<__half2*>(&h));
  return pack_bf16x2(f.x, f.y);
}

__device__ __forceinline__ float e4m3_to_float(uint8_t b) {
  __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)b, __NV_E4M3);
  return __half2float(*reinterpret_cast<__half*>(&h));
}

}  // namespace lb
