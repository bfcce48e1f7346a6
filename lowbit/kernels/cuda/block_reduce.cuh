// block_reduce.cuh: sums and maxima over a whole thread block (warp shuffles, then one shared slot per warp).
// Every thread of the block must call them; each returns the block's result to every thread. red: 32 floats
// of shared memory, reusable right after the call returns. Used by moe_route.cu and pasted into the runtime's
// NVRTC source (lowbit/runtime/cuda_fused.py).
#pragma once

__device__ __forceinline__ float block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float s = 0.f;
  for (int i = 0; i < (int)(blockDim.x >> 5); ++i) s += red[i];
  return s;
}

__device__ __forceinline__ float block_max(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float s = __int_as_float(0xff800000);
  for (int i = 0; i < (int)(blockDim.x >> 5); ++i) s = fmaxf(s, red[i]);
  return s;
}
