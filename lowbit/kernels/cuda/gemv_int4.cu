// gemv_int4.cu: y[M, N] = x[M, K] @ W[N, K]^T for compressed-tensors pack-quantized int4 (W4A16).
//
// Operands: `weight_packed` int32 [N, K/8] (8 elements per word, element i at bits 4i..4i+3, stored q+8);
// `weight_scale` bf16 [N, K/G]; optional `weight_zero_point` int32 [ceil(N/8), K/G] (zp+8 packed 8 per word
// along N, LSB first). W = (q - zp) * scale. x bf16 [M, K]; y bf16 [M, N]. G = `group` in 32, 64, 128.
// Geometry (common.cuh): a warp per 16 rows, grid (ceil(N/(16*warps)), splits); 16-byte chunk = 32 elements, which
// lie inside one group (G >= 32 and chunks are 32-aligned), so one scale and zero point per row and chunk.
// Decode: (nibble | 0x4300) is the bf16 128+nibble, exact; minus (128 + stored zp) is q - zp, exact.
// G = 128 (gemv_int4g128_*): one iteration (4 lanes x 32 = 128 elements, 128-aligned) is exactly one group
//   of each row, so the integer codes go to the tensor cores and the mma partial is multiplied by each
//   row's scale in fp32: exact up to fp32 accumulation.
// G = 32 / 64 (gemv_int4_*): a lane's chunk is one group but an mma spans 4 lanes' chunks, so q - zp is
//   multiplied by the scale in one bf16x2 multiply, ROUNDED to bf16 (|error| <= 2^-9 |W|, the one inexact
//   step of any lowbit GEMV; verify's bound includes it). Pair order: xperm4.cuh.
// Preconditions: K % G == 0; 1 <= M <= 8 / 16; any N. Rows are K/2 bytes, a multiple of 16.
// Reference: formats.int4.dequantize + float64 matmul.
#include "common.cuh"
#include "gemv_grouped.cuh"
#include "gemv_tma.cuh"
#include "xperm4.cuh"

namespace lb {
// The lane's zero point (stored, +8) in a word of 8 rows' zero points: the lane's rows are row0 + g (+ 8)
// with row0 a multiple of 8, so row % 8 == g (rows clamped to N - 1 in the fast loop may read another
// row's zero point: their outputs are never written).
__device__ __forceinline__ uint32_t zero_point(uint32_t zw) { return (zw >> (4 * ((threadIdx.x & 31) >> 2))) & 0xfu; }
}  // namespace lb

struct PolicyInt4 {
  static constexpr int EC = 32, BITS = 4;
  static constexpr bool PARTIAL = false, F16 = false;
  const uint16_t* s;
  const int* z;
  int n, groups, group;
  __device__ PolicyInt4(const lb::Args& a, int)
      : s(static_cast<const uint16_t*>(a.s)), z(a.z), n(a.n), groups(a.k / a.group), group(a.group) {}
  __device__ static void xperm(uint32_t (&X)[EC / 2]) { lb::xperm_pairs4<EC / 2>(X); }
  // Raw words as loaded: converting them where they are loaded would make the warp wait for the load there,
  // a stage early (ncu, H200: a third of the int4 GEMV's stall samples sat on such conversions).
  struct Side {
    uint32_t sc, zw;  // the chunk's group scale (bf16 bits) and the zero-point word (8 lanes' rows; 0x88888888 if none)
  };
  // The group index is clamped, not branched on: past K x is zero, so any in-range scale gives 0 there
  // (q - zp is finite); no read leaves the scale / zero-point tensors.
  __device__ Side side(int row, int k0) const { return side_fast(min(row, n - 1), min(k0, (groups - 1) * group)); }
  // row < N and k0 inside K
  __device__ Side side_fast(int row, int k0) const {
    const int gi = k0 / group;
    const uint32_t zw = z != nullptr ? (uint32_t)__ldg(z + (long)(row >> 3) * groups + gi) : 0x88888888u;
    return {lb::ldg_u16(s + (long)row * groups + gi), zw};
  }
  __device__ void decode(const uint4& raw, const Side& sd, uint32_t (&A)[EC / 2]) const {
    const uint32_t sc = sd.sc, zp = lb::zero_point(sd.zw);
    const uint32_t sc2 = sc | (sc << 16), c2 = (0x4300u | zp) * 0x10001u;
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int q = 0; q < 4; ++q)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t v = lb::and_or<0x000F000Fu>(w[q] >> (4 * i), 0x43004300u);
        A[4 * q + i] = lb::hmul2_bf16(lb::hsub2_bf16(v, c2), sc2);
      }
  }
  template <int MT>
  __device__ void partial(float (&)[MT][4], const float (&)[MT][4], const Side&, const Side&) const {}
  __device__ float out_scale(int) const { return 1.f; }
};

// G = 128: exact integer codes into the mma, per-row scales applied to each iteration's partial.
struct PolicyInt4G128 {
  static constexpr int EC = 32, BITS = 4;
  static constexpr bool PARTIAL = true, F16 = false;
  const uint16_t* s;
  const int* z;
  int n, groups;
  __device__ PolicyInt4G128(const lb::Args& a, int)
      : s(static_cast<const uint16_t*>(a.s)), z(a.z), n(a.n), groups(a.k / 128) {}
  __device__ static void xperm(uint32_t (&X)[EC / 2]) { lb::xperm_pairs4<EC / 2>(X); }
  struct Side {  // raw words, converted at use (see PolicyInt4::Side)
    uint32_t sc;  // the row's group scale of the iteration, bf16 bits (one 128-group: the same for the 4 lanes)
    uint32_t zw;  // the zero-point word (0x88888888 if none)
  };
  __device__ Side side(int row, int k0) const { return side_fast(min(row, n - 1), min(k0, (groups - 1) * 128)); }
  // row < N and k0 inside K
  __device__ Side side_fast(int row, int k0) const {
    const int gi = k0 / 128;
    const uint32_t zw = z != nullptr ? (uint32_t)__ldg(z + (long)(row >> 3) * groups + gi) : 0x88888888u;
    return {lb::ldg_u16(s + (long)row * groups + gi), zw};
  }
  __device__ void decode(const uint4& raw, const Side& sd, uint32_t (&A)[EC / 2]) const {
    const uint32_t zp = lb::zero_point(sd.zw);
    const uint32_t c2 = (0x4300u | zp) * 0x10001u;
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int q = 0; q < 4; ++q)
#pragma unroll
      for (int i = 0; i < 4; ++i) A[4 * q + i] = lb::hsub2_bf16(lb::and_or<0x000F000Fu>(w[q] >> (4 * i), 0x43004300u), c2);
  }
  template <int MT>
  __device__ void partial(float (&acc)[MT][4], const float (&part)[MT][4], const Side& da, const Side& db) const {
    const float sa = __uint_as_float(da.sc << 16), sb = __uint_as_float(db.sc << 16);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      acc[mt][0] += part[mt][0] * sa; acc[mt][1] += part[mt][1] * sa;
      acc[mt][2] += part[mt][2] * sb; acc[mt][3] += part[mt][3] * sb;
    }
  }
  __device__ float out_scale(int) const { return 1.f; }
};

LB_GEMV_KERNEL(gemv_int4_m8, PolicyInt4, 1)
LB_GEMV_KERNEL(gemv_int4_m16, PolicyInt4, 2)
LB_GEMV_KERNEL(gemv_int4g128_m8, PolicyInt4G128, 1)
LB_GEMV_KERNEL(gemv_int4g128_m16, PolicyInt4G128, 2)
LB_GEMV_TMA_KERNEL(gemv_tma_int4_m8, PolicyInt4, 1)
LB_GEMV_TMA_KERNEL(gemv_tma_int4_m16, PolicyInt4, 2)
LB_GEMV_TMA_KERNEL(gemv_tma_int4g128_m8, PolicyInt4G128, 1)
LB_GEMV_TMA_KERNEL(gemv_tma_int4g128_m16, PolicyInt4G128, 2)
LB_GEMV_SMEM_KERNEL(gemv_smem_int4_m8, PolicyInt4)
LB_GEMV_SMEM_KERNEL(gemv_smem_int4g128_m8, PolicyInt4G128)
LB_GEMV_MOE_KERNELS(int4, PolicyInt4)
LB_GEMV_MOE_KERNELS(int4g128, PolicyInt4G128)
