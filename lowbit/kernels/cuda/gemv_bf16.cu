// gemv_bf16.cu: y[M, N] = x[M, K] @ W[N, K]^T with W bf16 (our own kernel; cuBLAS is the peer).
//
// Operands: W bf16 [N, K] row-major (the on-disk `weight`); x bf16 [M, K]; y bf16 [M, N]; fp32 accumulate.
// Geometry (common.cuh): a warp per 16 rows, grid (ceil(N/(16*warps)), splits); 16-byte chunk = 8 elements.
// Decode: none, the chunk's 4 words are the bf16 pairs for the mma, x pairs in natural order.
// Preconditions: 1 <= M <= 8 (gemv_bf16_m8) or <= 16 (gemv_bf16_m16); any N, K >= 1 (16-byte loads when
// K % 8 == 0, masked scalar loads otherwise); pointers 16-byte aligned.
// Reference: lowbit.verify.reference.gemv_reference("bf16") = float64 x @ W^T.
#include "common.cuh"
#include "gemv_grouped.cuh"
#include "gemv_tma.cuh"

struct PolicyBF16 {
  static constexpr int EC = 8, BITS = 16;
  static constexpr bool PARTIAL = false, F16 = false;
  struct Side {};
  __device__ PolicyBF16(const lb::Args&, int) {}
  __device__ Side side(int, int) const { return {}; }
  __device__ Side side_fast(int, int) const { return {}; }
  __device__ static void xperm(uint32_t (&)[EC / 2]) {}
  __device__ void decode(const uint4& raw, const Side&, uint32_t (&A)[EC / 2]) const {
    A[0] = raw.x; A[1] = raw.y; A[2] = raw.z; A[3] = raw.w;
  }
  template <int MT>
  __device__ void partial(float (&)[MT][4], const float (&)[MT][4], const Side&, const Side&) const {}
  __device__ float out_scale(int) const { return 1.f; }
};

LB_GEMV_KERNEL(gemv_bf16_m8, PolicyBF16, 1)
LB_GEMV_KERNEL(gemv_bf16_m16, PolicyBF16, 2)
LB_GEMV_TMA_KERNEL(gemv_tma_bf16_m8, PolicyBF16, 1)
LB_GEMV_TMA_KERNEL(gemv_tma_bf16_m16, PolicyBF16, 2)
LB_GEMV_SMEM_KERNEL(gemv_smem_bf16_m8, PolicyBF16)
LB_GEMV_MOE_KERNELS(bf16, PolicyBF16)
