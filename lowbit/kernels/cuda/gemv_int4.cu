// gemv_int4.cu: y[M, N] = x[M, K] @ W[N, K]^T for compressed-tensors pack-quantized int4 (W4A16).
//
// Operands: `weight_packed` int32 [N, K/8] (8 elements per word, element i at bits 4i..4i+3, stored q+8);
// `weight_scale` bf16 [N, K/G]; optional `weight_zero_point` int32 [ceil(N/8), K/G] (zp+8 packed 8 per word
// along N, LSB first). W = (q - zp) * scale. x bf16 [M, K]; y bf16 [M, N]. G = `group` in 32, 64, 128.
// Geometry (common.cuh): grid (ceil(N/16), splits), GEMV_WARPS warps; 16-byte chunk = 32 elements, which
// lie inside one group (G >= 32 and chunks are 32-aligned), so one scale and zero point per row and chunk.
// Decode: (nibble | 0x4300) is the bf16 128+nibble, exact; minus (128 + stored zp) is q - zp, exact; times
// the bf16 scale in one bf16x2 multiply, ROUNDED to bf16 (|error| <= 2^-9 |W|, the one inexact step of any
// lowbit GEMV; verify's bound includes it). Pair order: xperm4.cuh.
// Preconditions: K % G == 0; 1 <= M <= 8 / 16; any N. Rows are K/2 bytes, a multiple of 16.
// Reference: formats.int4.dequantize + float64 matmul.
#include "common.cuh"
#include "xperm4.cuh"

struct PolicyInt4 {
  static constexpr int EC = 32, BITS = 4;
  static constexpr bool PARTIAL = false;
  const uint16_t* s;
  const int* z;
  int n, groups, group;
  __device__ PolicyInt4(const lb::Args& a, int)
      : s(static_cast<const uint16_t*>(a.s)), z(a.z), n(a.n), groups(a.k / a.group), group(a.group) {}
  __device__ static void xperm(uint32_t (&X)[EC / 2]) { lb::xperm_pairs4<EC / 2>(X); }
  __device__ void decode(const uint4& raw, int row, int k0, uint32_t (&A)[EC / 2]) const {
    const int r = min(row, n - 1), gi = k0 / group;
    const uint32_t sc = __ldg(s + (long)r * groups + gi);
    uint32_t zp = 8u;
    if (z != nullptr) zp = ((uint32_t)__ldg(z + (long)(r >> 3) * groups + gi) >> (4 * (r & 7))) & 0xfu;
    const uint32_t sc2 = sc | (sc << 16), c2 = (0x4300u | zp) * 0x10001u;
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int q = 0; q < 4; ++q)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t v = ((w[q] >> (4 * i)) & 0x000F000Fu) | 0x43004300u;
        A[4 * q + i] = lb::hmul2_bf16(lb::hsub2_bf16(v, c2), sc2);
      }
  }
  template <int MT>
  __device__ void partial(float (&)[MT][4], const float (&)[MT][4], int) const {}
  __device__ float out_scale(int) const { return 1.f; }
};

LB_GEMV_KERNEL(gemv_int4_m8, PolicyInt4, 1)
LB_GEMV_KERNEL(gemv_int4_m16, PolicyInt4, 2)
