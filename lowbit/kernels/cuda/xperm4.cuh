// xperm4.cuh: the k-slot order shared by the 4-bit GEMVs (gemv_nvfp4.cu, gemv_int4.cu).
// A 32-bit word holds 8 consecutive 4-bit elements e0..e7 (element i at bits 4i..4i+3). They are decoded
// as the bf16 pairs (e0,e4), (e1,e5), (e2,e6), (e3,e7): element i and i+4 sit 16 bits apart, so one shift
// and one mask place both in a bf16x2. The x pairs are permuted the same way with byte permutes.
#pragma once
#include <stdint.h>

namespace lb {
// X[4q..4q+3] = natural pairs (x0,x1),(x2,x3),(x4,x5),(x6,x7) -> (x0,x4),(x1,x5),(x2,x6),(x3,x7).
template <int NP>
__device__ __forceinline__ void xperm_pairs4(uint32_t (&X)[NP]) {
#pragma unroll
  for (int q = 0; q < NP / 4; ++q) {
    const uint32_t x01 = X[4 * q], x23 = X[4 * q + 1], x45 = X[4 * q + 2], x67 = X[4 * q + 3];
    X[4 * q] = __byte_perm(x01, x45, 0x5410);
    X[4 * q + 1] = __byte_perm(x01, x45, 0x7632);
    X[4 * q + 2] = __byte_perm(x23, x67, 0x5410);
    X[4 * q + 3] = __byte_perm(x23, x67, 0x7632);
  }
}
}  // namespace lb
