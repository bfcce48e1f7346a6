// pdl.cuh: programmatic dependent launch (Hopper and later). A kernel launched by lowbit.kernels.launch
// with PDL on may start while the previous kernel of its stream is still running. Such a kernel:
//   - calls lb_pdl_trigger() early: once every CTA of it has, the next PDL kernel may be scheduled;
//   - calls lb_pdl_wait() before it reads anything an earlier kernel wrote, or writes anything an earlier
//     kernel may still read, and at least once on every path (so that its completion implies the
//     completion of every kernel before it: the chain stays transitive).
// Work that depends on nothing earlier (loading weights) may run before the wait: that is the gain.
// After the wait, data an earlier kernel wrote must be read with coherent loads (__ldca, __ldcg, plain
// loads), never with __ldg / ld.global.nc: it was not read-only for this kernel's whole lifetime.
// Launched with PDL: the GEMVs (cuda/common.cuh). Launched plainly but triggering early, so that the
// GEMV after them may start: the runtime's fused kernels (lowbit/runtime/cuda_fused.py, where this
// header is pasted into the NVRTC source; their `const __restrict__` loads may take the read-only path,
// so they must not be launched with PDL as they are) and the MoE router. Before sm_90 both are no-ops.
#pragma once

__device__ __forceinline__ void lb_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void lb_pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}
