// tma_sm90.cuh: the Hopper bulk tensor copy (TMA) and shared-memory mbarriers, for the warp-specialized
// GEMMs (gemm_fp8_tma_sm90.cu). Header only; plain sm_90 features (cp.async.bulk.tensor, mbarrier
// expect-tx), compiled only where __CUDA_ARCH__ >= 900.
//
// Tensor maps (CUtensorMap, 128 bytes) are encoded on the host by lowbit/kernels/tma.py
// (cuTensorMapEncodeTiled) and copied to device global memory; the kernel takes a generic pointer to
// them. A tensor map in global memory is made visible to the copy engine's proxy with
// fence.proxy.tensormap::generic.acquire before its first use (tma_map_acquire).
//
// mbarrier protocol (one "full" and one "empty" barrier per ring stage): the producer waits empty[s] with
// the parity of its pass over the ring (a fresh barrier counts as having completed the pass before it, so
// the first pass does not wait), announces the stage's bytes with arrive.expect_tx on full[s] and issues
// the copies, which complete the transaction on full[s]; consumers wait full[s] with their pass's parity,
// read the stage and arrive on empty[s].
#pragma once
#include <stdint.h>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// makes the inits visible to the async proxy (the copy engine) before any copy completes on them
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    uint32_t done;
    do {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    } while (!done);
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// 4-byte global -> shared copy (cp.async.ca), completion tracked by cp_async_mbar_arrive
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"((uint32_t)__cvta_generic_to_shared(dst)), "l"(src)
                 : "memory");
}
// an arrive on the mbarrier when this thread's cp.asyncs so far have completed (.noinc: counted in the
// barrier's init count)
__device__ __forceinline__ void cp_async_mbar_arrive(uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// `bytes` (a multiple of 16) of global memory at src (16-byte aligned) -> shared memory at dst (16-byte aligned),
// one bulk copy (no tensor map) completing `bar`'s transaction with its bytes
__device__ __forceinline__ void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}
__device__ __forceinline__ void tma_map_acquire(const void* map) {
    asm volatile("fence.proxy.tensormap::generic.acquire.gpu [%0], 128;\n" ::"l"(map) : "memory");
}
// box of the 2-D tensor map at element coordinates (c0 = inner, c1 = row) -> shared memory at dst;
// completes `bar`'s transaction with the box's bytes (zero-filled where the box leaves the tensor)
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const void* map, int c0, int c1, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
        "l"(map), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}

// the STAGES full and empty barriers of a ring at full0 / empty0 (8 bytes apart), by one thread, made visible
// to the copy engine; the caller syncs the CTA afterwards
__device__ __forceinline__ void ring_init(uint32_t full0, uint32_t empty0, int stages, uint32_t full_count,
                                         uint32_t empty_count) {
    for (int s = 0; s < stages; ++s) {
        mbar_init(full0 + 8 * s, full_count);
        mbar_init(empty0 + 8 * s, empty_count);
    }
    mbar_fence_init();
}

// A persistent CTA's k-blocks in ring order: work units u = blockIdx.x, + gridDim.x, ... below `units`; unit u
// is output tile u / splits (origin(tile, m0, n0) gives its corner) and its k-blocks [kps * (u % splits),
// min(nk, kps * (u % splits + 1))). Calls f(m0, n0, kb, stage, phase) for each, with the stage and phase of a
// ring of RING stages that every role of the CTA walks in this same order.
template <int RING, class Origin, class F>
__device__ __forceinline__ void for_each_block(int units, int splits, int kps, int nk, Origin origin, F f) {
    uint32_t it = 0;
    for (int u = blockIdx.x; u < units; u += gridDim.x) {
        int m0, n0;
        origin(u / splits, m0, n0);
        const int kb1 = min(nk, kps * (u % splits + 1));
        for (int kb = kps * (u % splits); kb < kb1; ++kb, ++it) f(m0, n0, kb, it % RING, (it / RING) & 1);
    }
}
#endif
