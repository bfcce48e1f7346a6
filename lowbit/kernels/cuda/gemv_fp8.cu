// gemv_fp8.cu: y[M, N] = x[M, K] @ W[N, K]^T for the fp8-block scheme (W8A16 and W8A8).
//
// Operands: W = `weight` E4M3 bytes [N, K] row-major; S = `weight_scale_inv` f32 [ceil(N/128), ceil(K/128)],
// MULTIPLIED at dequant (W = e4m3(code) * S[n/128, k/128]); x bf16 [M, K]; y bf16 [M, N].
// W8A8 (gemv_fp8_a8_*): x holds the f16 values of E4M3 activation codes and xs f32 [M, ceil(K/128)] their
// per-token, per-128-channel scales, both written by act_quant_fp8 (gemv_act.cu, half = 1); the product is
// sum_blocks S[n,b] * xs[m,b] * sum_k code_w * code_x on f16 mmas: every E4M3 value is exact in f16, so a
// weight code pair is one hardware cvt (e4m3x2 -> f16x2) and the x codes need none. (mma.sync with E4M3
// operands, m16n8k32, is what sm_90 compiles the same way plus 4 cvts per mma for the x codes: measured
// in SASS, not used. Hopper's native fp8 tensor-core path is wgmma, which needs 64-row warpgroup tiles.)
// Geometry (common.cuh): a warp per 16 rows, grid (ceil(N/(16*warps)), splits); 16-byte chunk = 16 codes; one
// iteration (64 elements of K) lies inside one 128-block, so the tile's mma partial of an iteration is
// multiplied by that block's scale(s) in fp32 and added: the codes go to the tensor cores unscaled and
// the result is exact up to fp32 accumulation. E4M3 -> bf16 through the hardware cvt (e4m3x2 -> f16x2).
// Preconditions: 1 <= M <= 8 / 16; any N and K >= 1 (16-byte loads when K % 16 == 0, masked otherwise).
// Reference: formats.fp8_block.dequantize + float64 matmul (A8: with x dequantized by the same recipe,
// lowbit.verify.reference.quantize_act_fp8).
#include "common.cuh"
#include "gemv_grouped.cuh"
#include "gemv_tma.cuh"

template <bool A8>
struct PolicyFP8 {
  static constexpr int EC = 16, BITS = 8;
  static constexpr bool PARTIAL = true, F16 = A8;  // A8: f16 mmas (x = f16 values of E4M3 codes)
  const float* s;
  const float* xs;
  int kb_count, m, rowblock;
  __device__ PolicyFP8(const lb::Args& a, int row0)
      : s(static_cast<const float*>(a.s)), xs(a.xs), kb_count((a.k + 127) / 128), m(a.m), rowblock(row0 / 128) {}
  struct Side {
    float sw;  // S[rowblock, kb] of the iteration (rows of a tile share one 128-row block)
    int kb;
  };
  // An iteration (64 elements) lies inside one 128-block: every lane of a row tile gets the same kb.
  __device__ Side side(int, int k0) const {
    const int kb = min(k0 / 128, kb_count - 1);
    return {__ldg(s + (long)rowblock * kb_count + kb), kb};
  }
  __device__ Side side_fast(int row, int k0) const { return side(row, k0); }
  __device__ static void xperm(uint32_t (&)[EC / 2]) {}
  // Each code pair -> one 16-bit pair, exactly: A8 f16x2 (one hardware cvt), A16 bf16x2 (cvt, widen, pack).
  __device__ void decode(const uint4& raw, const Side&, uint32_t (&A)[EC / 2]) const {
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if constexpr (A8) {
        A[2 * i] = lb::e4m3x2_to_f16x2((uint16_t)(w[i] & 0xffffu));
        A[2 * i + 1] = lb::e4m3x2_to_f16x2((uint16_t)(w[i] >> 16));
      } else {
        A[2 * i] = lb::e4m3x2_to_bf16x2((uint16_t)(w[i] & 0xffffu));
        A[2 * i + 1] = lb::e4m3x2_to_bf16x2((uint16_t)(w[i] >> 16));
      }
    }
  }
  template <int MT>
  // rows g take sa's block scale, rows g + 8 sb's (the same block in a dense tile; gate vs up in a grouped one)
  __device__ void partial(float (&acc)[MT][4], const float (&part)[MT][4], const Side& sa, const Side& sb) const {
    const int kb = sa.kb;
    const int t = threadIdx.x & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float x0 = 1.f, x1 = 1.f;
      if (A8) {
        const int t0 = 8 * mt + 2 * t, t1 = t0 + 1;
        x0 = t0 < m ? __ldca(xs + (long)t0 * kb_count + kb) : 0.f;
        x1 = t1 < m ? __ldca(xs + (long)t1 * kb_count + kb) : 0.f;
      }
      acc[mt][0] += part[mt][0] * (sa.sw * x0); acc[mt][1] += part[mt][1] * (sa.sw * x1);
      acc[mt][2] += part[mt][2] * (sb.sw * x0); acc[mt][3] += part[mt][3] * (sb.sw * x1);
    }
  }
  __device__ float out_scale(int) const { return 1.f; }
};

LB_GEMV_KERNEL(gemv_fp8_m8, PolicyFP8<false>, 1)
LB_GEMV_KERNEL(gemv_fp8_m16, PolicyFP8<false>, 2)
LB_GEMV_KERNEL(gemv_fp8_a8_m8, PolicyFP8<true>, 1)
LB_GEMV_KERNEL(gemv_fp8_a8_m16, PolicyFP8<true>, 2)
LB_GEMV_TMA_KERNEL(gemv_tma_fp8_m8, PolicyFP8<false>, 1)
LB_GEMV_TMA_KERNEL(gemv_tma_fp8_m16, PolicyFP8<false>, 2)
LB_GEMV_TMA_KERNEL(gemv_tma_fp8_a8_m8, PolicyFP8<true>, 1)
LB_GEMV_TMA_KERNEL(gemv_tma_fp8_a8_m16, PolicyFP8<true>, 2)
LB_GEMV_SMEM_KERNEL(gemv_smem_fp8_m8, PolicyFP8<false>)
LB_GEMV_SMEM_KERNEL(gemv_smem_fp8_a8_m8, PolicyFP8<true>)
LB_GEMV_MOE_KERNELS(fp8, PolicyFP8<false>)
