"""What reading the bytes alone costs: a kernel that only reads S bytes (no math), in a CUDA graph of 32 PDL
launches whose offsets rotate through a 2 GiB pool (DRAM-cold), timed like benchmarks/moe_decode_kernels.py.
Rows: contiguous reads of 1-100 MiB; the MoE decode gate/up pattern (16 regions of 1.5 MiB = Qwen3-30B-A3B's
8 experts x gate and up at fp8, 48 CTAs of 32 KiB each); the same with bulk copies into shared memory
(cp.async.bulk, 1 to 64 copies a CTA) instead of 16-byte loads. The floor a grouped GEMV's time is compared with.
Usage: python benchmarks/read_floor.py OUT.json"""

from __future__ import annotations

import json
import sys

SRC = r'''
__device__ __forceinline__ void pdl_wait_trigger() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;");
}
// 32 KiB a CTA at offs[cta / per_region] + its place in the region: 128 threads x 16 loads of 16 bytes in flight
extern "C" __global__ void __launch_bounds__(128) read_ldg(const uint4* base, const long long* offs, int per_region,
                                                         unsigned int* out) {
  pdl_wait_trigger();
  const uint4* p = base + offs[blockIdx.x / per_region] / 16 + (long long)(blockIdx.x % per_region) * 2048;
  uint4 v[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) v[i] = __ldcs(p + i * 128 + threadIdx.x);
  unsigned int s = 0;
#pragma unroll
  for (int i = 0; i < 16; ++i) s ^= v[i].x ^ v[i].y ^ v[i].z ^ v[i].w;
  if (s == 0x12345678u) out[blockIdx.x] = s;  // keeps the loads
}
// the same 32 KiB as nc bulk copies into shared memory, completing one mbarrier
extern "C" __global__ void __launch_bounds__(128) read_bulk(const unsigned char* base, const long long* offs,
                                                          int per_region, int nc, unsigned int* out) {
  extern __shared__ __align__(128) unsigned char dsm[];
  __shared__ __align__(8) unsigned long long bar;
  const unsigned b = (unsigned)__cvta_generic_to_shared(&bar);
  if (threadIdx.x == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(b) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], 32768;" ::"r"(b) : "memory");
  }
  __syncthreads();
  pdl_wait_trigger();
  const unsigned char* p = base + offs[blockIdx.x / per_region] + (long long)(blockIdx.x % per_region) * 32768;
  const int sz = 32768 / nc;
  for (int i = threadIdx.x; i < nc; i += blockDim.x)
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 ::"r"((unsigned)__cvta_generic_to_shared(dsm + i * sz)), "l"(p + (long long)i * sz), "r"(sz), "r"(b)
                 : "memory");
  unsigned done = 0;
  while (!done)
    asm volatile("{\n.reg .pred q;\nmbarrier.try_wait.parity.shared::cta.b64 q, [%1], 0;\nselp.u32 %0, 1, 0, q;\n}"
                 : "=r"(done) : "r"(b) : "memory");
  if (dsm[threadIdx.x * 7] == 0x5a && threadIdx.x == 999) out[blockIdx.x] = 1;
}
'''


def main() -> None:
    import cupy
    import numpy as np

    from lowbit.kernels.launch import launch
    from lowbit.verify.bench_gemm import _graph_time, copy_bandwidth

    mod = cupy.RawModule(code=SRC, options=("-std=c++17",))
    f_ldg, f_bulk = mod.get_function("read_ldg"), mod.get_function("read_bulk")
    f_bulk.max_dynamic_shared_size_bytes = 32768
    pool = cupy.zeros(2 << 30, dtype=cupy.uint8)
    out = cupy.zeros(1 << 16, dtype=cupy.uint32)
    rng = np.random.default_rng(0)
    steps, rows = 32, {}
    for mb in (1, 4, 8, 16, 25, 50, 100):
        ctas, nbytes = mb * 32, mb << 20
        offs = [cupy.asarray(np.array([(j * nbytes * 7919) % (pool.size - nbytes) // 32768 * 32768], np.int64))
                for j in range(steps)]
        us = _graph_time(lambda j: launch(f_ldg, (ctas,), (128,), (pool, offs[j], np.int32(ctas), out)), steps) * 1e6
        rows[f"contiguous {mb} MiB"] = {"us": us, "GBps": nbytes / us / 1e3}
    # 16 regions of 1.5 MiB chosen at random each step among 256 regions 8 MiB apart
    offs = [cupy.asarray(rng.choice(256, 16, replace=False).astype(np.int64) * (8 << 20)) for _ in range(steps)]
    nbytes = 16 * (3 << 19)
    us = _graph_time(lambda j: launch(f_ldg, (768,), (128,), (pool, offs[j], np.int32(48), out)), steps) * 1e6
    rows["experts 16 x 1.5 MiB, 16-byte loads"] = {"us": us, "GBps": nbytes / us / 1e3}
    for nc in (1, 4, 16, 64):
        us = _graph_time(lambda j: launch(f_bulk, (768,), (128,), (pool, offs[j], np.int32(48), np.int32(nc), out),
                                          shared_mem=32768), steps) * 1e6
        rows[f"experts 16 x 1.5 MiB, {nc} bulk copies a CTA"] = {"us": us, "GBps": nbytes / us / 1e3}
    res = {"gpu": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "copy_GBps": copy_bandwidth() / 1e9,
           "rows": rows}
    print(json.dumps(res, indent=1))
    with open(sys.argv[1], "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
