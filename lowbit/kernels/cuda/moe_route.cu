// moe_route.cu: MoE routing, token permutation and combine. Reference: lowbit/verify/moe_reference.py.
//
// router_logits: logits f32 [T, E] = x bf16 [T, H] . Wr bf16 [E, H] (fp32 accumulate). One warp per
//   (token, expert); block 256 = 8 experts; grid (ceil(E/8), T). Used for few tokens (decode); many
//   tokens use cuBLAS. Preconditions: H % 8 == 0, rows 16-byte aligned.
// router_fused: both in one launch for few tokens (the last block to finish runs the top-k: one
//   token ranked by the whole block, topk_token_block; more tokens one warp each). Launched with PDL:
//   each warp loads its router row before waiting on the previous kernel.
// router_add_norm: router_fused with the residual update and RMSNorm before it done by every block
//   (decode: one launch instead of add_rms_norm + router_fused); see the kernel.
// router_topk: ids i32 [T, k], weights f32 [T, k] from logits f32 [T, E]; one warp per token,
//   E <= 32*MAXV, k <= E. Top-k by repeated warp argmax (ties -> lower expert index).
//   NaN logits rank as -inf (nan_to_ninf), so every id written is in [0, E) whatever the logits hold.
//   norm 0 (Mixtral): softmax over the chosen k logits. norm 1 (Qwen3-MoE): softmax over all E, take
//   the chosen probabilities, divided by their sum when norm_topk_prob (renorm) != 0.
// moe_align: single block (1024 threads). From ids [n = T*k] and E: offs [E+1] (rows of expert e are
//   [offs[e], offs[e+1]) in sorted order), tile_offs [E+1] (cumulative ceil(count/bm)), pos [n]
//   (sorted row of assignment i) and sorted_tok [n] (token of sorted row r). Order inside an expert
//   follows shared-memory atomics (arbitrary, and irrelevant: rows are independent). No host sync.
//   Dynamic smem: 2*E ints. Precondition: 0 <= ids < E.
// moe_combine: out bf16 [T, H] = sum_j weights[t, j] * ys bf16 [pos[t*k + j], H] (fp32 sum);
//   grid T, block 256.
#include "block_reduce.cuh"
#include "moe_common.cuh"
#include "pdl.cuh"


// The first ROUTER_PRE 16-byte chunks per lane of a warp's router row (all of it for H <= 2048): loaded
// before griddepcontrol.wait by the PDL-launched kernels (the router weight is constant), so that their
// DRAM round trip overlaps the previous kernel.
#define ROUTER_PRE 8
__device__ __forceinline__ void router_preload(const bf16* __restrict__ wr, int E, int H, uint4 (&pre)[ROUTER_PRE]) {
    const int e = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
#pragma unroll
    for (int u = 0; u < ROUTER_PRE; ++u) {
        const int c = lane + 32 * u;
        pre[u] = (e < E && c < H / 8) ? __ldg(reinterpret_cast<const uint4*>(wr + (size_t)e * H) + c)
                                      : make_uint4(0u, 0u, 0u, 0u);
    }
}

__device__ __forceinline__ float dot_bf16x8(uint4 a, uint4 b, float s) {
    const uint32_t av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 fa = __bfloat1622float2(*reinterpret_cast<const bf162*>(&av[i]));
        const float2 fb = __bfloat1622float2(*reinterpret_cast<const bf162*>(&bv[i]));
        s = fmaf(fa.x, fb.x, s);
        s = fmaf(fa.y, fb.y, s);
    }
    return s;
}

// logits[t, e] for the warp's expert e = blockIdx.x * 8 + warp, token t = blockIdx.y, x row xrow (global or
// shared memory). pre: the row's first chunks (router_preload) or nullptr to load them here.
__device__ __forceinline__ void router_logits_body(const bf16* xrow, const bf16* __restrict__ wr, int E,
                                                   int H, float* __restrict__ logits,
                                                   const uint4 (*pre)[ROUTER_PRE] = nullptr) {
    const int t = blockIdx.y, e = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (e >= E) return;
    const uint4* xr = reinterpret_cast<const uint4*>(xrow);
    const uint4* w = reinterpret_cast<const uint4*>(wr + (size_t)e * H);
    float s = 0.f;
    for (int base = 0; base < H / 8; base += 32 * ROUTER_PRE) {  // 8 independent 16-byte loads in flight per lane
        uint4 a[ROUTER_PRE], b[ROUTER_PRE];
#pragma unroll
        for (int u = 0; u < ROUTER_PRE; ++u) {
            const int c = base + lane + 32 * u;
            if (c < H / 8) { a[u] = xr[c]; b[u] = (base == 0 && pre) ? (*pre)[u] : __ldg(w + c); }
        }
#pragma unroll
        for (int u = 0; u < ROUTER_PRE; ++u)
            if (base + lane + 32 * u < H / 8) s = dot_bf16x8(a[u], b[u], s);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) logits[(size_t)t * E + e] = s;
}

extern "C" __global__ void router_logits(const bf16* __restrict__ x, const bf16* __restrict__ wr, int E, int H,
                                         float* __restrict__ logits) {
    router_logits_body(x + (size_t)blockIdx.y * H, wr, E, H, logits);
}

// top-k of one token by a whole block (E <= blockDim.x): thread e computes the rank of logit e
// (larger first, ties to the lower index); the k winners are placed by rank. Same weights as topk_token.
__device__ void topk_token_block(const float* __restrict__ logits, int t, int E, int k, int norm, int renorm,
                                 int* __restrict__ ids, float* __restrict__ wts) {
    __shared__ __align__(16) float lg[MAXV * 32];
    __shared__ float sel[32];
    __shared__ float red[32];
    const int tid = threadIdx.x, E4 = (E + 3) / 4;
    __syncthreads();  // the shared arrays are reused token after token
    for (int e = tid; e < 4 * E4; e += blockDim.x) lg[e] = e < E ? nan_to_ninf(__ldcg(logits + (size_t)t * E + e)) : -INFINITY;
    __syncthreads();
    float v = tid < E ? lg[tid] : -INFINITY;
    int r = 0;
    if (tid < E) {  // 4 logits per shared load; the -inf padding past E never outranks (its index is > tid)
        const float4* lg4 = reinterpret_cast<const float4*>(lg);
#pragma unroll 4
        for (int j4 = 0; j4 < E4; ++j4) {
            const float4 u = lg4[j4];
            const int j = 4 * j4;
            r += (u.x > v) || (u.x == v && j < tid);
            r += (u.y > v) || (u.y == v && j + 1 < tid);
            r += (u.z > v) || (u.z == v && j + 2 < tid);
            r += (u.w > v) || (u.w == v && j + 3 < tid);
        }
    }
    if (tid < E && r < k) {
        sel[r] = v;
        ids[(size_t)t * k + r] = tid;
    }
    __syncthreads();
    const float mx = sel[0];
    float ex = tid < E ? __expf(v - mx) : 0.f;  // softmax denominator over all E (Qwen3)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ex += __shfl_xor_sync(0xffffffffu, ex, o);
    if ((tid & 31) == 0) red[tid >> 5] = ex;
    __syncthreads();
    if (tid < k) {
        float total = 0.f, chosen_sum = 0.f;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) total += red[w];
        for (int j = 0; j < k; ++j) chosen_sum += __expf(sel[j] - mx);
        const float p = __expf(sel[tid] - mx);
        float w;
        if (norm == 0) w = p / chosen_sum;
        else if (renorm) w = (p / total) / (chosen_sum / total);
        else w = p / total;
        wts[(size_t)t * k + tid] = w;
    }
}

extern "C" __global__ void router_topk(const float* __restrict__ logits, int T, int E, int k, int norm, int renorm,
                                       int* __restrict__ ids, float* __restrict__ wts) {
    const int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (t >= T) return;
    topk_token(logits, t, E, k, norm, renorm, ids, wts, lane);
}

// The last block to finish (atomic ticket on counter, which it resets to 0) runs the top-k for all tokens.
__device__ __forceinline__ void router_finish(int E, int T, int k, int norm, int renorm, const float* logits,
                                              unsigned int* counter, int* ids, float* wts) {
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x * gridDim.y - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (threadIdx.x == 0) *counter = 0u;
    if (T == 1 && E <= (int)blockDim.x) {  // one token: rank-based top-k with the whole block
        topk_token_block(logits, 0, E, k, norm, renorm, ids, wts);
        return;
    }
    for (int t = threadIdx.x >> 5; t < T; t += blockDim.x >> 5) topk_token(logits, t, E, k, norm, renorm, ids, wts, threadIdx.x & 31);
}

// router_logits + router_topk in one launch (few tokens): every block writes its logits, the last one ranks.
extern "C" __global__ void router_fused(const bf16* x, const bf16* __restrict__ wr, int E, int H, int T,
                                        int k, int norm, int renorm, float* __restrict__ logits,
                                        unsigned int* __restrict__ counter, int* __restrict__ ids,
                                        float* __restrict__ wts) {
    uint4 pre[ROUTER_PRE];
    router_preload(wr, E, H, pre);  // constant weights: before the wait
    lb_pdl_wait();     // launched with PDL: x is the previous kernel's output (read with coherent loads)
    lb_pdl_trigger();  // then the grouped GEMV after it may get resident (after the wait, see pdl.cuh)
    router_logits_body(x + (size_t)blockIdx.y * H, wr, E, H, logits, &pre);
    router_finish(E, T, k, norm, renorm, logits, counter, ids, wts);
}

// router_add_norm: the decode step's entry into an MoE block in one launch: the residual update and the
// RMSNorm after the attention (the runtime's add_rms_norm) fused with router_fused. Every block computes
// its token's s = h + delta (delta fp32 df or bf16 db) and x = bf16(s * rsqrt(mean(s^2) + eps) * nw) itself
// (rows of a few KB, read from L2; the same code and order in every block, so the same x), keeps x in
// shared memory for its logits, and block (0, t) writes h_out[t] = s and x_out[t] = x for the experts.
// h_out must not alias h (other blocks still read h). Dynamic shared memory: 2 * H bytes.
extern "C" __global__ void router_add_norm(const float* h, const float* df, const unsigned short* db,
                                           const float* __restrict__ nw, float eps, float* h_out,
                                           unsigned short* x_out, const bf16* __restrict__ wr, int E, int H, int T,
                                           int k, int norm, int renorm, float* __restrict__ logits,
                                           unsigned int* __restrict__ counter, int* __restrict__ ids,
                                           float* __restrict__ wts) {
    extern __shared__ __align__(16) unsigned short xs[];
    __shared__ float red[32];
    constexpr int RN = 16;  // row elements a thread keeps in registers (H <= RN * blockDim: all loads at once)
    uint4 pre[ROUTER_PRE];
    router_preload(wr, E, H, pre);  // constant weights: before the wait
    const bool reg = H <= RN * (int)blockDim.x;
    float wn[RN], v[RN];
    if (reg) {
#pragma unroll
        for (int c = 0; c < RN; ++c) {
            const int i = threadIdx.x + c * blockDim.x;
            wn[c] = i < H ? nw[i] : 0.f;
        }
    }
    lb_pdl_wait();     // h and delta are earlier kernels' outputs (plain loads)
    lb_pdl_trigger();
    const size_t row = (size_t)blockIdx.y * H;
    const bool writer = blockIdx.x == 0;
    float ss = 0.f;
    if (reg) {
        float dv[RN];
#pragma unroll
        for (int c = 0; c < RN; ++c) {
            const int i = threadIdx.x + c * blockDim.x;
            v[c] = i < H ? h[row + i] : 0.f;
            dv[c] = i < H ? (df ? df[row + i] : __uint_as_float((unsigned int)db[row + i] << 16)) : 0.f;
        }
#pragma unroll
        for (int c = 0; c < RN; ++c) {
            v[c] += dv[c];
            ss += v[c] * v[c];
        }
    } else {
        for (int i = threadIdx.x; i < H; i += blockDim.x) {
            const float u = h[row + i] + (df ? df[row + i] : __uint_as_float((unsigned int)db[row + i] << 16));
            ss += u * u;
        }
    }
    const float r = rsqrtf(block_sum(ss, red) / (float)H + eps);
    if (reg) {
#pragma unroll
        for (int c = 0; c < RN; ++c) {
            const int i = threadIdx.x + c * blockDim.x;
            if (i >= H) continue;
            const unsigned short xb = __bfloat16_as_ushort(__float2bfloat16_rn(v[c] * r * wn[c]));
            xs[i] = xb;
            if (writer) { h_out[row + i] = v[c]; x_out[row + i] = xb; }
        }
    } else {
        for (int i = threadIdx.x; i < H; i += blockDim.x) {
            const float u = h[row + i] + (df ? df[row + i] : __uint_as_float((unsigned int)db[row + i] << 16));
            const unsigned short xb = __bfloat16_as_ushort(__float2bfloat16_rn(u * r * nw[i]));
            xs[i] = xb;
            if (writer) { h_out[row + i] = u; x_out[row + i] = xb; }
        }
    }
    __syncthreads();
    router_logits_body(reinterpret_cast<const bf16*>(xs), wr, E, H, logits, &pre);
    router_finish(E, T, k, norm, renorm, logits, counter, ids, wts);
}

extern "C" __global__ void moe_align(const int* __restrict__ ids, int n, int k, int E, int bm,
                                     int* __restrict__ offs, int* __restrict__ tile_offs, int* __restrict__ pos,
                                     int* __restrict__ sorted_tok) {
    extern __shared__ int sm[];
    int* cnt = sm;
    int* base = sm + E;
    for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) pos[i] = atomicAdd(&cnt[ids[i]], 1);
    __syncthreads();
    if (threadIdx.x < 32) {  // one warp: exclusive scans of counts and tiles, E/32 experts per lane
        const int lane = threadIdx.x, per = (E + 31) / 32, e0 = lane * per;
        int rows = 0, tiles = 0;
        for (int e = e0; e < min(E, e0 + per); ++e) { rows += cnt[e]; tiles += (cnt[e] + bm - 1) / bm; }
        int r_inc = rows, t_inc = tiles;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int r = __shfl_up_sync(0xffffffffu, r_inc, o), tt = __shfl_up_sync(0xffffffffu, t_inc, o);
            if (lane >= o) { r_inc += r; t_inc += tt; }
        }
        int r = r_inc - rows, tl = t_inc - tiles;
        for (int e = e0; e < min(E, e0 + per); ++e) {
            base[e] = r;
            offs[e] = r;
            tile_offs[e] = tl;
            r += cnt[e];
            tl += (cnt[e] + bm - 1) / bm;
        }
        if (lane == 31) { offs[E] = r_inc; tile_offs[E] = t_inc; }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int p = base[ids[i]] + pos[i];
        pos[i] = p;
        sorted_tok[p] = i / k;
    }
}

extern "C" __global__ void moe_combine(const bf16* __restrict__ ys, const int* __restrict__ pos,
                                       const float* __restrict__ wts, int k, int H, bf16* __restrict__ out) {
    const int t = blockIdx.x;
    for (int c = threadIdx.x; c < H / 2; c += blockDim.x) {
        float a = 0.f, b = 0.f;
        for (int j = 0; j < k; ++j) {
            const float w = wts[(size_t)t * k + j];
            const float2 v = __bfloat1622float2(reinterpret_cast<const bf162*>(ys + (size_t)pos[t * k + j] * H)[c]);
            a = fmaf(w, v.x, a);
            b = fmaf(w, v.y, b);
        }
        reinterpret_cast<bf162*>(out + (size_t)t * H)[c] = __floats2bfloat162_rn(a, b);
    }
}
