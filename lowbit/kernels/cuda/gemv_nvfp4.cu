// gemv_nvfp4.cu: y[M, N] = x[M, K] @ W[N, K]^T for compressed-tensors NVFP4 (W4A16 and W4A4).
//
// Operands: `weight_packed` uint8 [N, K/2] (element 2k in the low nibble, E2M1 codes); `weight_scale`
// E4M3 bytes [N, K/16]; `weight_global_scale` f32 [1], a DIVISOR: W = e2m1 * scale / global.
// x bf16 [M, K]; y bf16 [M, N]. W4A4 (gemv_nvfp4_a4_*): x holds the bf16 values e2m1 * e4m3_scale of the
// activation codes and xs f32 [M] the per-token 1/global_x, both from act_quant_nvfp4 (gemv_act.cu).
// Geometry (common.cuh): a warp per 16 rows, grid (ceil(N/(16*warps)), splits); 16-byte chunk = 32 codes = 2 groups.
// Decode (arithmetic, no lookup table): the code's sign goes to bf16 bit 15 and its 3 magnitude bits to
// bits 6..8, which is exactly e2m1 * 2^-126 (normals and the subnormal 0.5 alike); one bf16x2 multiply by
// (E4M3 scale * 2^119) makes e2m1 * scale * 2^-7, exact in bf16 (<= 6 significant bits, no overflow).
// The factor 2^7 / global (and 1/global_x for A4) is applied to the fp32 result. Pair order: xperm4.cuh.
// Preconditions: K % 16 == 0; 1 <= M <= 8 / 16; any N (16-byte loads when K % 32 == 0, masked otherwise).
// Reference: formats.nvfp4.dequantize + float64 matmul (A4: reference.quantize_act_nvfp4 for x).
#include "common.cuh"
#include "gemv_grouped.cuh"
#include "gemv_tma.cuh"
#include "xperm4.cuh"

template <bool A4>
struct PolicyNVFP4 {
  static constexpr int EC = 32, BITS = 4;
  static constexpr bool PARTIAL = false, F16 = false;
  const uint8_t* s;
  const float* xs;
  int n, groups;
  float osc;
  __device__ PolicyNVFP4(const lb::Args& a, int)
      : s(static_cast<const uint8_t*>(a.s)), xs(a.xs), n(a.n), groups(a.k / 16),
        osc(128.f / __ldg(a.gscale)) {}
  __device__ static void xperm(uint32_t (&X)[EC / 2]) { lb::xperm_pairs4<EC / 2>(X); }
  __device__ static uint32_t scale2(uint8_t code) {
    const float f = lb::e4m3_to_float(code) * 0x1p119f;
    return lb::pack_bf16x2(f, f);
  }
  // The chunk's two E4M3 group scales (low byte = the first group). Group indices are clamped, not
  // branched on: past K the codes are zero (the chunk load zero-fills) and x is zero, so any in-range
  // scale gives 0 there; no read leaves the scale tensor. Even `groups`: one aligned 2-byte load.
  struct Side {
    uint32_t two;
  };
  __device__ Side side(int row, int k0) const {
    const long base = (long)min(row, n - 1) * groups;
    const int g0 = min(k0 / 16, groups - 1), g1 = min(k0 / 16 + 1, groups - 1);
    if ((groups & 1) == 0 && g1 == g0 + 1) return {lb::ldg_u16(s + base + g0)};
    return {(uint32_t)__ldg(s + base + g0) | ((uint32_t)__ldg(s + base + g1) << 8)};
  }
  // In range (row < N, the chunk inside K, hence K % 32 == 0 and `groups` even): one 2-byte load.
  __device__ Side side_fast(int row, int k0) const {
    return {lb::ldg_u16(s + (long)row * groups + k0 / 16)};
  }
  __device__ void decode(const uint4& raw, const Side& sd, uint32_t (&A)[EC / 2]) const {
    const uint32_t sc0 = scale2((uint8_t)(sd.two & 0xffu));
    const uint32_t sc1 = scale2((uint8_t)(sd.two >> 8));
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
    constexpr uint32_t MAG = 0x01C001C0u, SGN = 0x80008000u;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint32_t v = w[q], sc = q < 2 ? sc0 : sc1;
      A[4 * q + 0] = lb::hmul2_bf16(((v << 6) & MAG) | ((v << 12) & SGN), sc);
      A[4 * q + 1] = lb::hmul2_bf16(((v << 2) & MAG) | ((v << 8) & SGN), sc);
      A[4 * q + 2] = lb::hmul2_bf16(((v >> 2) & MAG) | ((v << 4) & SGN), sc);
      A[4 * q + 3] = lb::hmul2_bf16(((v >> 6) & MAG) | (v & SGN), sc);
    }
  }
  template <int MT>
  __device__ void partial(float (&)[MT][4], const float (&)[MT][4], const Side&, const Side&) const {}
  __device__ float out_scale(int token) const { return A4 ? osc * __ldca(xs + token) : osc; }
};

LB_GEMV_KERNEL(gemv_nvfp4_m8, PolicyNVFP4<false>, 1)
LB_GEMV_KERNEL(gemv_nvfp4_m16, PolicyNVFP4<false>, 2)
LB_GEMV_KERNEL(gemv_nvfp4_a4_m8, PolicyNVFP4<true>, 1)
LB_GEMV_KERNEL(gemv_nvfp4_a4_m16, PolicyNVFP4<true>, 2)
LB_GEMV_TMA_KERNEL(gemv_tma_nvfp4_m8, PolicyNVFP4<false>, 1)
LB_GEMV_TMA_KERNEL(gemv_tma_nvfp4_m16, PolicyNVFP4<false>, 2)
LB_GEMV_TMA_KERNEL(gemv_tma_nvfp4_a4_m8, PolicyNVFP4<true>, 1)
LB_GEMV_TMA_KERNEL(gemv_tma_nvfp4_a4_m16, PolicyNVFP4<true>, 2)
LB_GEMV_SMEM_KERNEL(gemv_smem_nvfp4_m8, PolicyNVFP4<false>)
LB_GEMV_SMEM_KERNEL(gemv_smem_nvfp4_a4_m8, PolicyNVFP4<true>)
LB_GEMV_MOE_KERNELS(nvfp4, PolicyNVFP4<false>)
