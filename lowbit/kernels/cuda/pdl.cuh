// pdl.cuh: programmatic dependent launch (Hopper and later). A kernel launched by lowbit.kernels.launch
// with PDL on may start while the previous kernel of its stream is still running. Such a kernel:
//   - calls lb_pdl_trigger() early: once every CTA of it has, the next PDL kernel may be scheduled;
//   - calls lb_pdl_wait() before it reads anything an earlier kernel wrote, or writes anything an earlier
//     kernel may still read, and at least once on every path (so that its completion implies the
//     completion of every kernel before it: the chain stays transitive).
// Work that depends on nothing earlier (loading weights) may run before the wait: that is the gain.
// A kernel that triggers before its own wait lets the kernel after it launch while the one before it
// still runs, and that one may trigger at once too: a cascade of resident, waiting CTAs that hold
// registers the running kernel could use. The small kernels therefore wait first and trigger after, except
// the runtime's add_rms_norm and attend_split (lowbit/runtime/cuda_fused.py ADD_NORM_EARLY, cuda_attend.py
// ATTEND_EARLY): the GEMV after each only copies its weights before its own wait, and starting that copy
// earlier measured 2-3 % and 2 % faster decode (H100, 2026-11-28).
// After the wait, data an earlier kernel wrote must be read with coherent loads (__ldca, __ldcg, plain
// loads), never with __ldg / ld.global.nc: it was not read-only for this kernel's whole lifetime.
// Launched with PDL: the GEMVs (cuda/common.cuh), the runtime's fused kernels (lowbit/runtime/cuda_fused.py,
// where this header is pasted into the NVRTC source: they trigger and wait first thing, and their pointers
// carry no __restrict__, so no load of an earlier kernel's output takes the read-only path) and the fused
// MoE router (moe_route.cu: x without __restrict__). Before sm_90 both calls are no-ops.
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
