// gemv_act.cu: on-the-fly activation quantization for the W8A8 and W4A4 GEMVs.
//
// act_quant_fp8: x bf16 [M, K] -> per token, per 128 channels (the DeepSeek recipe): s = amax/448 (1 when
//   amax == 0), code = E4M3(x / s) round-to-nearest-even, saturating (hardware cvt .satfinite).
//   Writes xs f32 [M, ceil(K/128)] = s and, where the pointer is not null, xq [M, K] = the code's value
//   (exact in bf16, and in f16 when half != 0: what the W8A8 GEMV reads) and codes uint8 [M, K].
//   Grid: ceil(M * ceil(K/128) / 8) CTAs of 8 warps, a warp per block.
// act_quant_nvfp4: x bf16 [M, K] -> per token NVFP4 with a dynamic global scale: gx = 2688/amax(x[m]) (1 when
//   amax is 0), per 16 channels s8 = E4M3(gx * amax16 / 6) (the smallest subnormal 2^-9 when it is 0),
//   code = E2M1(clamp(x / (s8 / gx), -6, 6)): the same float32 steps as formats.nvfp4.quantize.
//   Writes xq bf16 [M, K] = e2m1 * s8 (exact in bf16), xs f32 [M] = 1/gx, and, if not null, codes uint8
//   [M, K/2] (low nibble first) and scales uint8 [M, K/16]. Grid: M CTAs of 1024 threads.
// Preconditions: K >= 1 (fp8) / K % 16 == 0 (nvfp4); contiguous arrays; x finite.
// Reference: lowbit.verify.reference.quantize_act_fp8 / quantize_act_nvfp4 (bit-exact codes).
#include "common.cuh"

__device__ __forceinline__ float bf16_at(const uint16_t* p) { return __uint_as_float((uint32_t)*p << 16); }

__device__ __forceinline__ uint16_t bf16_bits(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }

extern "C" __global__ void __launch_bounds__(256)
    act_quant_fp8(const uint16_t* x, uint16_t* xq, float* xs, uint8_t* codes, int m, int k, int half) {
  const int kbc = (k + 127) / 128;
  const int wid = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (wid >= m * kbc) return;
  const int token = wid / kbc, kb = wid % kbc;
  float v[4], amax = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int kk = kb * 128 + lane * 4 + j;
    v[j] = kk < k ? bf16_at(x + (long)token * k + kk) : 0.f;
    amax = fmaxf(amax, fabsf(v[j]));
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float s = amax == 0.f ? 1.f : amax / 448.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int kk = kb * 128 + lane * 4 + j;
    if (kk >= k) continue;
    const __nv_fp8_storage_t q = __nv_cvt_float_to_fp8(v[j] / s, __NV_SATFINITE, __NV_E4M3);
    if (xq != nullptr) {
      const float f = lb::e4m3_to_float(q);
      xq[(long)token * k + kk] = half ? __half_as_ushort(__float2half_rn(f)) : bf16_bits(f);
    }
    if (codes != nullptr) codes[(long)token * k + kk] = q;
  }
  if (lane == 0) xs[(long)token * kbc + kb] = s;
}

// E2M1 code of a float32 (already clamped): round-to-nearest-even, sign from the sign bit.
__device__ __forceinline__ uint32_t e2m1_code(float v) {
  const float a = fabsf(v);
  uint32_t c = (a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) + (a >= 3.5f) + (a > 5.f);
  return c | (signbit(v) ? 8u : 0u);
}

__device__ __forceinline__ float e2m1_value(uint32_t c) {
  const uint32_t m3 = c & 7u;
  const float mag = m3 < 2u ? 0.5f * (float)m3 : (1.f + 0.5f * (float)(m3 & 1u)) * (float)(1u << ((m3 >> 1) - 1u));
  return (c & 8u) ? -mag : mag;
}

extern "C" __global__ void __launch_bounds__(1024)
    act_quant_nvfp4(const uint16_t* x, uint16_t* xq, float* xs, uint8_t* codes, uint8_t* scales, int m, int k) {
  __shared__ float red[32];
  const int token = blockIdx.x;
  const uint16_t* row = x + (long)token * k;
  float amax = 0.f;
  for (int i = threadIdx.x * 8; i < k; i += blockDim.x * 8) {  // K % 16 == 0: 16-byte loads of 8 values
    const uint4 v = *reinterpret_cast<const uint4*>(row + i);
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 4; ++j)
      amax = fmaxf(amax, fmaxf(fabsf(__uint_as_float(w[j] << 16)), fabsf(__uint_as_float(w[j] & 0xffff0000u))));
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = amax;
  __syncthreads();
  amax = 0.f;
  for (int w = 0; w < (int)(blockDim.x >> 5); ++w) amax = fmaxf(amax, red[w]);
  const float gx = (amax == 0.f || !isfinite(amax)) ? 1.f : 2688.f / amax;
  if (threadIdx.x == 0) xs[token] = 1.f / gx;
  for (int gi = threadIdx.x; gi < k / 16; gi += blockDim.x) {
    float v[16], ga = 0.f;
    const uint4 lo = *reinterpret_cast<const uint4*>(row + gi * 16);
    const uint4 hi = *reinterpret_cast<const uint4*>(row + gi * 16 + 8);
    const uint32_t w[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      v[j] = __uint_as_float((j & 1) ? (w[j >> 1] & 0xffff0000u) : (w[j >> 1] << 16));
      ga = fmaxf(ga, fabsf(v[j]));
    }
    __nv_fp8_storage_t s8 = __nv_cvt_float_to_fp8(gx * (ga / 6.f), __NV_SATFINITE, __NV_E4M3);
    if (lb::e4m3_to_float(s8) == 0.f) s8 = 0x01;  // 2^-9, the smallest E4M3 subnormal
    const float s8f = lb::e4m3_to_float(s8), eff = s8f / gx;
    uint32_t packed = 0u, ow[8] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const uint32_t c = e2m1_code(fminf(fmaxf(v[j] / eff, -6.f), 6.f));
      ow[j >> 1] |= (uint32_t)bf16_bits(e2m1_value(c) * s8f) << (16 * (j & 1));
      packed |= c << (4 * (j & 7));
      if ((j & 7) == 7) {
        if (codes != nullptr)
          *reinterpret_cast<uint32_t*>(codes + (long)token * (k / 2) + gi * 8 + (j >> 3) * 4) = packed;
        packed = 0u;
      }
    }
    uint4* dst = reinterpret_cast<uint4*>(xq + (long)token * k + gi * 16);
    dst[0] = make_uint4(ow[0], ow[1], ow[2], ow[3]);
    dst[1] = make_uint4(ow[4], ow[5], ow[6], ow[7]);
    if (scales != nullptr) scales[(long)token * (k / 16) + gi] = s8;
  }
}
