// attention.cu: matches backend::cpu::ops::attention (grouped-query attention of one position
// over the cached positions 0..=pos as llama.cpp computes it for one token without flash
// attention), optionally fused with quantize_row_q8_1 of its output for the output projection.
//
// Launch: grid (n_heads, n_tok), block 128 (>= head_dim), dynamic shared memory
// (2*head_dim + 128*(head_dim+1) + n_ctx + n_ctx/8 + 16) floats (above 48 KB the launcher raises
// the limit). K and V are staged through shared memory in tiles of 128 positions (coalesced).
// Query position pos0 + t (pos0 = params[0]) sees n_kv = pos0 + t + 1 positions; query head h
// reads KV head h / (n_heads / n_kv_heads). Caches are (n_ctx, n_kv_heads*head_dim) f32.
// Numerics, as the CPU: each score is ggml_vec_dot_f32 of the key and the query (common.cuh's
// vec_dot_f32_ref), times the scale; the max is exact; exponentials are ggml's v_expf, summed
// in groups of eight by hsum_float_8 and the group sums added in f64 in order (one thread);
// probabilities are e * (float)(1/sum); each output channel is ggml_vec_dot_f32 of the values
// with the probabilities over the cells (32 lane accumulators, cells past n_kv contributing
// nothing, as ggml's zero-padded view). So the batch and the one-token paths run the same
// arithmetic for every (position, head), whatever the chunking.
// With aq/ads not null, head_dim % 32 == 0 and each head's output blocks are quantized here.

// Copies rows j0..j0+rows of one KV head (columns off..off+head_dim) of `c0` into `d0` (row
// stride ld) and, when `c1` is not null, the same rows of `c1` into `d1`: up to 8 16-byte loads
// per thread in flight before any shared-memory store (a plain loop waits for each load).
__device__ __forceinline__ void load_tiles(const float* c0, float* d0, const float* c1, float* d1, int j0, int rows,
                                           int kv_dim, int off, int head_dim, int ld) {
    const int vpr = head_dim / 4, per = rows * vpr, total = c1 ? 2 * per : per;
    const bool pow2 = (vpr & (vpr - 1)) == 0;
    const int shift = __ffs(vpr) - 1;
    for (int e0 = threadIdx.x; e0 < total; e0 += blockDim.x * 8) {
        float4 buf[8];
        int dst_off[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            int e = e0 + u * blockDim.x;
            if (e < total) {
                int w = e >= per, ee = e - w * per;
                int r = pow2 ? ee >> shift : ee / vpr, c = (ee - r * vpr) * 4;
                buf[u] = *(const float4*)((w ? c1 : c0) + (size_t)(j0 + r) * kv_dim + off + c);
                dst_off[u] = (w ? (int)(d1 - d0) : 0) + r * ld + c;
            }
        }
#pragma unroll
        for (int u = 0; u < 8; u++) {
            if (e0 + u * blockDim.x < total) {
                float* dst = d0 + dst_off[u];
                dst[0] = buf[u].x; dst[1] = buf[u].y; dst[2] = buf[u].z; dst[3] = buf[u].w;
            }
        }
    }
}

// The cells of the first K and V tiles that exist before this step (positions 0..pos0-1 of KV
// head `kvh`, at most one tile), copied into attention_head's dual tiles ahead of time: the
// persistent kernel (decode.cu) runs this before the barrier that ends the Q|K|V phase, so the
// attention phase after it loads only q and the new position's row. Starts with a barrier.
__device__ __forceinline__ void attention_preload(const float* k_cache, const float* v_cache,
                                                  const int* __restrict__ params, int n_heads, int n_kv_heads,
                                                  int head_dim, int h) {
    extern __shared__ float sh[];
    __syncthreads();
    const int kv_dim = n_kv_heads * head_dim, kvh = h / (n_heads / n_kv_heads);
    const int tile = blockDim.x, ld = head_dim + 1;
    float* kv = sh + 2 * head_dim;
    const int rows = min(tile, params[0]);
    if (rows > 0) load_tiles(k_cache, kv, v_cache, kv + tile * ld, 0, rows, kv_dim, kvh * head_dim, head_dim, ld);
}

// attention_preload with asynchronous copies (cp.async, 4 bytes each: the padded tile rows are
// not 16-byte aligned): issues them and commits one group, so the block goes on while they
// land; the caller waits for the group (cp_async_wait) before attention_head reads the tile.
// The persistent kernel's DEC_EARLY issues it phases ahead. Starts with a barrier.
__device__ __forceinline__ void attention_preload_async(const float* k_cache, const float* v_cache,
                                                        const int* __restrict__ params, int n_heads,
                                                        int n_kv_heads, int head_dim, int h) {
    extern __shared__ float sh[];
    __syncthreads();
    const int kv_dim = n_kv_heads * head_dim, off = (h / (n_heads / n_kv_heads)) * head_dim;
    const int tile = blockDim.x, ld = head_dim + 1;
    float* kv = sh + 2 * head_dim;
    const int rows = min(tile, params[0]);
    if (tile % head_dim == 0) {
        // Thread t copies column t % head_dim of rows t / head_dim, + tile / head_dim, ...: no
        // division in the loop (issuing these copies is the whole cost to the block).
        const int c = threadIdx.x % head_dim, step = tile / head_dim;
        const float* ks = k_cache + off + c;
        const float* vs = v_cache + off + c;
        float* kd = kv + c;
        float* vd = kv + tile * ld + c;
        for (int r = threadIdx.x / head_dim; r < rows; r += step) {
            cp_async4(kd + r * ld, ks + (size_t)r * kv_dim);
            cp_async4(vd + r * ld, vs + (size_t)r * kv_dim);
        }
    } else {
        const int per = rows * head_dim;
        for (int e = threadIdx.x; e < 2 * per; e += blockDim.x) {
            const int w = e >= per, ee = e - w * per, r = ee / head_dim, c = ee - r * head_dim;
            cp_async4(kv + w * tile * ld + r * ld + c, (w ? v_cache : k_cache) + (size_t)r * kv_dim + off + c);
        }
    }
    cp_async_commit();
}

// One (head h, query row t) of the grid: the body of attention_f32, callable from a persistent
// kernel (decode.cu). q and the caches are not __restrict__ (there, other blocks wrote them in
// the same launch). Starts with a barrier so shared memory may be reused. With `dual`, shared
// memory holds a second tile (attention_smem_dual) and the first V tile is loaded together with
// the first K tile. With `preloaded` (dual, t == 0), attention_preload already holds the cells
// before position pos0 of the first tiles; only the new position's row is read here.
__device__ __forceinline__ void attention_head(const float* q, const float* k_cache, const float* v_cache,
                                               float* out, i8* aq, float2* ads, const int* __restrict__ params,
                                               int n_heads, int n_kv_heads, int head_dim, float scale, int h,
                                               size_t t, bool dual, bool preloaded = false, u64* ll = 0,
                                               u32 ll_e = 0) {
    extern __shared__ float sh[];
    __shared__ float fscratch[32];
    __syncthreads();
    const int dim = n_heads * head_dim, kv_dim = n_kv_heads * head_dim;
    const int n_kv = params[0] + (int)t + 1;
    const int kvh = h / (n_heads / n_kv_heads);
    const int tile = blockDim.x;       // positions per K/V tile
    const int ld = head_dim + 1;       // padded tile row: thread j reads row j without bank conflicts
    float* qh = sh;
    float* oh = sh + head_dim;
    float* kv = sh + 2 * head_dim;     // [tile][head_dim + 1]
    float* kv2 = kv + tile * ld;       // dual: the first V tile
    float* s = kv + (dual ? 2 : 1) * tile * ld;  // [n_ctx] scores, then probabilities
    float* gsum = s + ((n_kv + 7) & ~7);          // [ceil(n_kv / 8)] group sums, after the row
    // With `preloaded` and a block of at least 2 * head_dim threads, thread c loads its cell of
    // the new position's K (c < head_dim) or V row before q, so the two loads are in flight
    // together (stored into the tile below).
    const int p_new = n_kv - 1, c_new = threadIdx.x, w_new = c_new >= head_dim, d_new = c_new - w_new * head_dim;
    const bool row_early = preloaded && p_new < tile && 2 * head_dim <= (int)blockDim.x;
    float kv_new = 0.0f;
    if (row_early && c_new < 2 * head_dim)
        kv_new = (w_new ? v_cache : k_cache)[(size_t)p_new * kv_dim + kvh * head_dim + d_new];
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qh[d] = q[t * dim + h * head_dim + d];

    // Scores, one tile of positions at a time: the tile is loaded with coalesced 16-byte loads,
    // then thread j forms ggml_vec_dot_f32(k_j, q) from shared memory.
    float local_max = NEG_INF;
    for (int j0 = 0; j0 < n_kv; j0 += tile) {
        int rows = min(tile, n_kv - j0);
        __syncthreads();
        if (preloaded && j0 == 0) {
            const int p = n_kv - 1;  // the new position (t == 0)
            if (row_early) {
                if (c_new < 2 * head_dim) (w_new ? kv2 : kv)[p * ld + d_new] = kv_new;
            } else if (p < tile) {
                for (int c = threadIdx.x; c < 2 * head_dim; c += blockDim.x) {
                    const int w = c >= head_dim, d = c - w * head_dim;
                    (w ? kv2 : kv)[p * ld + d] = (w ? v_cache : k_cache)[(size_t)p * kv_dim + kvh * head_dim + d];
                }
            }
        } else {
            load_tiles(k_cache, kv, dual && j0 == 0 ? v_cache : 0, kv2, j0, rows, kv_dim, kvh * head_dim, head_dim, ld);
        }
        __syncthreads();
        int r = threadIdx.x;
        if (r < rows) {
            float v = vec_dot_f32_ref(kv + r * ld, qh, head_dim) * scale;
            s[j0 + r] = v;
            local_max = fmaxf(local_max, v);
        }
    }
    float max = block_max_f32(local_max, fscratch);

    // ggml_vec_soft_max_f32 on the row padded with -inf to a multiple of 8.
    for (int j = threadIdx.x; j < n_kv; j += blockDim.x) s[j] = v_expf(s[j] - max);
    __syncthreads();
    const int n_groups = (n_kv + 7) / 8;
    for (int gi = threadIdx.x; gi < n_groups; gi += blockDim.x) {
        float x[8];
#pragma unroll
        for (int l = 0; l < 8; l++) x[l] = 8 * gi + l < n_kv ? s[8 * gi + l] : 0.0f;
        gsum[gi] = ((x[4] + x[0]) + (x[6] + x[2])) + ((x[5] + x[1]) + (x[7] + x[3]));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double sum = 0.0;
        for (int gi = 0; gi < n_groups; gi++) sum += (double)gsum[gi];
        fscratch[0] = (float)(1.0 / sum);
    }
    __syncthreads();
    const float inv = fscratch[0];
    for (int j = threadIdx.x; j < n_kv; j += blockDim.x) s[j] *= inv;

    // Values: thread d accumulates channel d in 32 lanes by cell index (ggml_vec_dot_f32 over
    // the cells), tile by tile; tiles start at multiples of 128, so cell j0 + r is lane r % 32.
    // With at least 2 * head_dim threads, two threads share channel d: thread d the lanes 0..15,
    // thread head_dim + d the lanes 16..31 (each lane's chain over its cells unchanged), and
    // the second hands its lanes to the first through shared memory before the reduction.
    float acc32[32];
#pragma unroll
    for (int i = 0; i < 32; i++) acc32[i] = 0.0f;
    const bool split = 2 * head_dim <= (int)blockDim.x;
    const int half = split && threadIdx.x >= head_dim, d = threadIdx.x - half * head_dim, o = 16 * half;
    const bool on = threadIdx.x < (split ? 2 : 1) * head_dim;
    for (int j0 = 0; j0 < n_kv; j0 += tile) {
        int rows = min(tile, n_kv - j0);
        const bool pre = dual && j0 == 0;
        __syncthreads();
        if (!pre) load_tiles(v_cache, kv, 0, 0, j0, rows, kv_dim, kvh * head_dim, head_dim, ld);
        __syncthreads();
        const float* vt = pre ? kv2 : kv;
        if (on && split) {
            for (int r0 = 0; r0 < rows; r0 += 32) {
#pragma unroll
                for (int u = 0; u < 16; u++) {  // lane o + u in acc32[u]
                    const int r = r0 + o + u;
                    if (r < rows) acc32[u] = fmaf(vt[r * ld + d], s[j0 + r], acc32[u]);
                }
            }
        } else if (on) {
            for (int r0 = 0; r0 < rows; r0 += 32) {
#pragma unroll
                for (int u = 0; u < 32; u++) {
                    if (r0 + u < rows) acc32[u] = fmaf(vt[(r0 + u) * ld + d], s[j0 + r0 + u], acc32[u]);
                }
            }
        }
    }
    if (split) {
        __syncthreads();  // every read of the tiles is done: kv holds the exchange
        if (on && half) {
#pragma unroll
            for (int u = 0; u < 16; u++) kv[u * head_dim + d] = acc32[u];
        }
        __syncthreads();
        if (!half) {
#pragma unroll
            for (int u = 0; u < 16; u++) acc32[16 + u] = kv[u * head_dim + d];
        }
    }
    const float acc = reduce_f32x8_4(acc32);
    if (threadIdx.x < head_dim) {
        out[t * dim + h * head_dim + threadIdx.x] = acc;
        oh[threadIdx.x] = acc;
        // decode.cu's DEC_LL: the head's output also as flag-in-data words (one position, t 0).
        if (ll) st_ll(ll + h * head_dim + threadIdx.x, acc, ll_e);
    }
    if (aq) {
        __syncthreads();
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
        for (int b = warp; b < head_dim / QK; b += n_warps) {
            int blk = (h * head_dim) / QK + b;
            quantize_block_warp(oh[b * QK + lane], aq + t * dim + blk * QK, ads + t * (dim / QK) + blk);
        }
    }
}

extern "C" __global__ void attention_f32(const float* q, const float* k_cache, const float* v_cache, float* out,
                                         i8* aq, float2* ads, const int* __restrict__ params, int n_heads,
                                         int n_kv_heads, int head_dim, float scale, int n_ctx) {
    pdl_launch();
    pdl_wait();
    attention_head(q, k_cache, v_cache, out, aq, ads, params, n_heads, n_kv_heads, head_dim, scale, blockIdx.x,
                   blockIdx.y, false);
}

// attention_window_f32: matches backend::cpu::ops::attention_window (gemma3): attention of query
// position pos = pos0 + t (pos0 = params[0]) over the positions first..=pos, first = 0 or, when
// n_swa > 0, max(0, pos + 1 - n_swa) (a sliding window), the positions before it masked. The
// cache keeps every position (cell = position), so every reduction is laid out as the CPU's:
// scores by vec_dot_f32_ref times `scale`, the exact max over the window, exponentials by v_expf
// (masked positions exactly 0), group sums of eight by hsum_float_8's tree added in f64 in
// order, probabilities e * (float)(1/sum), and each channel's ggml_vec_dot_f32 of the values
// over the cells in 32 lanes by cell index (masked cells contribute nothing, as the CPU skips
// them). Unlike attention_f32 it stages nothing: K and V are read from global memory, one
// channel per thread, so it serves heads up to the block size (256 for gemma3's head_dim 256).
// Launch: grid (n_heads, n_tok), block >= head_dim (a multiple of 32), dynamic shared memory
// (head_dim + n_ctx + n_ctx/8 + 8) floats.
extern "C" __global__ void attention_window_f32(const float* __restrict__ q, const float* __restrict__ k_cache,
                                                const float* __restrict__ v_cache, float* __restrict__ out,
                                                i8* __restrict__ aq, float2* __restrict__ ads,
                                                const int* __restrict__ params, int n_heads, int n_kv_heads,
                                                int head_dim, float scale, int n_swa) {
    pdl_launch();
    pdl_wait();
    extern __shared__ float sh[];
    __shared__ float fscratch[32];
    const int h = blockIdx.x;
    const size_t t = blockIdx.y;
    const int dim = n_heads * head_dim, kv_dim = n_kv_heads * head_dim;
    const int pos = params[0] + (int)t;
    const int n_kv = pos + 1;
    const int first = n_swa > 0 ? max(0, pos + 1 - n_swa) : 0;
    const int kvh = h / (n_heads / n_kv_heads);
    float* qh = sh;
    float* s = sh + head_dim;
    float* gsum = s + ((n_kv + 7) & ~7);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qh[d] = q[t * dim + h * head_dim + d];
    __syncthreads();
    float local_max = NEG_INF;
    for (int j = first + threadIdx.x; j < n_kv; j += blockDim.x) {
        float v = vec_dot_f32_ref(k_cache + (size_t)j * kv_dim + kvh * head_dim, qh, head_dim) * scale;
        s[j] = v;
        local_max = fmaxf(local_max, v);
    }
    float max = block_max_f32(local_max, fscratch);
    for (int j = threadIdx.x; j < n_kv; j += blockDim.x) s[j] = j < first ? 0.0f : v_expf(s[j] - max);
    __syncthreads();
    const int n_groups = (n_kv + 7) / 8;
    for (int gi = threadIdx.x; gi < n_groups; gi += blockDim.x) {
        float x[8];
#pragma unroll
        for (int l = 0; l < 8; l++) x[l] = 8 * gi + l < n_kv ? s[8 * gi + l] : 0.0f;
        gsum[gi] = ((x[4] + x[0]) + (x[6] + x[2])) + ((x[5] + x[1]) + (x[7] + x[3]));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double sum = 0.0;
        for (int gi = first / 8; gi < n_groups; gi++) sum += (double)gsum[gi];
        fscratch[0] = (float)(1.0 / sum);
    }
    __syncthreads();
    const float inv = fscratch[0];
    for (int j = threadIdx.x; j < n_kv; j += blockDim.x) s[j] *= inv;
    __syncthreads();
    const int d = threadIdx.x;
    float acc32[32];
#pragma unroll
    for (int i = 0; i < 32; i++) acc32[i] = 0.0f;
    if (d < head_dim) {
        const float* vc = v_cache + kvh * head_dim + d;
        for (int j0 = first / 32 * 32; j0 < n_kv; j0 += 32) {
#pragma unroll
            for (int u = 0; u < 32; u++) {
                int j = j0 + u;
                if (j >= first && j < n_kv) acc32[u] = fmaf(vc[(size_t)j * kv_dim], s[j], acc32[u]);
            }
        }
    }
    const float acc = reduce_f32x8_4(acc32);
    __syncthreads();
    if (d < head_dim) {
        out[t * dim + h * head_dim + d] = acc;
        qh[d] = acc;
    }
    if (aq) {
        __syncthreads();
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
        for (int b = warp; b < head_dim / QK; b += n_warps) {
            int blk = (h * head_dim) / QK + b;
            quantize_block_warp(qh[b * QK + lane], aq + t * dim + blk * QK, ads + t * (dim / QK) + blk);
        }
    }
}

// attention_rows_f32_p{6,8}: attention_f32's arithmetic for several (query row, head) pairs per
// block: the G = n_heads / n_kv_heads query heads of KV head blockIdx.x for R query rows
// (rows blockIdx.y * R ..), G * R <= NP pairs, so each K and V tile is loaded from the cache
// once for all of them instead of once per pair (prefill reads each cached row ~n_tok times).
// Per pair the operations are attention_head's, in its order: scores by vec_dot_f32_ref times
// the scale, the exact max, v_expf, hsum_float_8 group sums added in f64 in order, p = e * (float)
// (1 / sum), and each channel's 32-lane accumulation over the cells by cell index with
// reduce_f32x8_4; with aq/ads each head's output is quantized by quantize_block_warp. So every
// output is bitwise attention_f32's (and the CPU's), whatever R and the chunking.
// Launch: grid (n_kv_heads, ceil(n_tok / R)), block 128 (the K/V tile), head_dim 64 (thread
// (c, d): channel d of pairs c, c + 2, ..), dynamic shared memory attention_rows_smem floats
// (ops.rs): the pairs' q rows (later their outputs), one tile of 128 x 65, each pair's row of
// `stride` scores and its stride / 8 group sums.
// a[p] for a p known only at run time, without indexing the array (so it stays in registers).
template <int NP>
__device__ __forceinline__ int reg_at(const int (&a)[NP], int p) {
    int r = 0;
#pragma unroll
    for (int pp = 0; pp < NP; pp++)
        if (pp == p) r = a[pp];
    return r;
}

// vec_dot_f32_ref(k, q, 64) with k in registers and q in shared memory (16-byte aligned, read
// as float4): the same 32 fused lanes over the two halves and the same reduction.
__device__ __forceinline__ float dot64_regs(const float (&k)[64], const float* q) {
    float acc[32];
#pragma unroll
    for (int e = 0; e < 32; e += 4) {
        const float4 a = *(const float4*)(q + e);
        acc[e] = fmaf(k[e], a.x, 0.0f);
        acc[e + 1] = fmaf(k[e + 1], a.y, 0.0f);
        acc[e + 2] = fmaf(k[e + 2], a.z, 0.0f);
        acc[e + 3] = fmaf(k[e + 3], a.w, 0.0f);
    }
#pragma unroll
    for (int e = 0; e < 32; e += 4) {
        const float4 a = *(const float4*)(q + 32 + e);
        acc[e] = fmaf(k[32 + e], a.x, acc[e]);
        acc[e + 1] = fmaf(k[33 + e], a.y, acc[e + 1]);
        acc[e + 2] = fmaf(k[34 + e], a.z, acc[e + 2]);
        acc[e + 3] = fmaf(k[35 + e], a.w, acc[e + 3]);
    }
    return reduce_f32x8_4(acc);
}

template <int NP>
__device__ __forceinline__ void attention_rows(const float* __restrict__ q, const float* __restrict__ k_cache,
                                               const float* __restrict__ v_cache, float* __restrict__ out,
                                               i8* __restrict__ aq, float2* __restrict__ ads,
                                               const int* __restrict__ params, int n_heads, int n_kv_heads,
                                               float scale, int stride, int rows_per_block, int n_tok) {
    constexpr int HD = 64, PPT = NP / 2;
    extern __shared__ float sh[];
    __shared__ float red[4][NP];
    __shared__ float inv_sum[NP];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int dim = n_heads * HD, kv_dim = n_kv_heads * HD, G = n_heads / n_kv_heads;
    const int kvh = blockIdx.x, t0 = blockIdx.y * rows_per_block;
    const int pos0 = params[0];
    const int tile = blockDim.x, ld = HD + 1;
    float* qh = sh;                      // [NP][HD]
    float* kv = qh + NP * HD;            // [tile][ld]
    float* s = kv + tile * ld;           // [NP][stride]
    float* gsum = s + NP * stride;       // [NP][stride / 8]
    const int gstride = stride / 8;
    // Pair p: row t0 + p / G, head kvh * G + p % G; n_kv 0 marks a pair that does not exist.
    int n_kv[NP];
#pragma unroll
    for (int p = 0; p < NP; p++) {
        const int t = t0 + p / G;
        n_kv[p] = (p < G * rows_per_block && t < n_tok) ? pos0 + t + 1 : 0;
    }
    int n_max = 0;
#pragma unroll
    for (int p = 0; p < NP; p++) n_max = max(n_max, n_kv[p]);
    for (int e = tid; e < NP * HD; e += blockDim.x) {
        const int p = e / HD, d = e - p * HD;
        const int t = t0 + p / G, h = kvh * G + p % G;
        qh[e] = reg_at<NP>(n_kv, p) > 0 ? q[(size_t)t * dim + h * HD + d] : 0.0f;
    }

    // Scores: thread j forms row j of each tile against every pair's q.
    float lmax[NP];
#pragma unroll
    for (int p = 0; p < NP; p++) lmax[p] = NEG_INF;
    for (int j0 = 0; j0 < n_max; j0 += tile) {
        const int rows = min(tile, n_max - j0);
        __syncthreads();
        load_tiles(k_cache, kv, 0, 0, j0, rows, kv_dim, kvh * HD, HD, ld);
        __syncthreads();
        const int j = j0 + tid;
        if (tid < rows) {
            // The key row in registers, read once for every pair (q rows: float4 broadcasts).
            float kr[HD];
#pragma unroll
            for (int e = 0; e < HD; e++) kr[e] = kv[tid * ld + e];
#pragma unroll
            for (int p = 0; p < NP; p++) {
                if (j < n_kv[p]) {
                    const float v = dot64_regs(kr, qh + p * HD) * scale;
                    s[p * stride + j] = v;
                    lmax[p] = fmaxf(lmax[p], v);
                }
            }
        }
    }
#pragma unroll
    for (int p = 0; p < NP; p++) {
        const float m = warp_max(lmax[p]);
        if (lane == 0) red[warp][p] = m;
    }
    __syncthreads();
    float mx[NP];
#pragma unroll
    for (int p = 0; p < NP; p++) mx[p] = fmaxf(fmaxf(red[0][p], red[1][p]), fmaxf(red[2][p], red[3][p]));

    // ggml_vec_soft_max_f32 per pair, on its row padded with -inf to a multiple of 8.
#pragma unroll
    for (int p = 0; p < NP; p++)
        for (int j = tid; j < n_kv[p]; j += blockDim.x) s[p * stride + j] = v_expf(s[p * stride + j] - mx[p]);
    __syncthreads();
#pragma unroll
    for (int p = 0; p < NP; p++) {
        const int n_groups = (n_kv[p] + 7) / 8;
        for (int gi = tid; gi < n_groups; gi += blockDim.x) {
            float x[8];
#pragma unroll
            for (int l = 0; l < 8; l++) x[l] = 8 * gi + l < n_kv[p] ? s[p * stride + 8 * gi + l] : 0.0f;
            gsum[p * gstride + gi] = ((x[4] + x[0]) + (x[6] + x[2])) + ((x[5] + x[1]) + (x[7] + x[3]));
        }
    }
    __syncthreads();
#pragma unroll
    for (int p = 0; p < NP; p++) {
        if (tid == p) {
            const int n_groups = (n_kv[p] + 7) / 8;
            double sum = 0.0;
            for (int gi = 0; gi < n_groups; gi++) sum += (double)gsum[p * gstride + gi];
            inv_sum[p] = (float)(1.0 / sum);
        }
    }
    __syncthreads();
#pragma unroll
    for (int p = 0; p < NP; p++) {
        const float inv = inv_sum[p];
        for (int j = tid; j < n_kv[p]; j += blockDim.x) s[p * stride + j] *= inv;
    }

    // Values: thread (c, d) accumulates channel d of pairs c, c + 2, .. in 32 lanes by cell index.
    const int c = tid / HD, d = tid - c * HD;
    float acc[PPT][32];
#pragma unroll
    for (int k = 0; k < PPT; k++)
#pragma unroll
        for (int i = 0; i < 32; i++) acc[k][i] = 0.0f;
    for (int j0 = 0; j0 < n_max; j0 += tile) {
        const int rows = min(tile, n_max - j0);
        __syncthreads();
        load_tiles(v_cache, kv, 0, 0, j0, rows, kv_dim, kvh * HD, HD, ld);
        __syncthreads();
        // Each value cell is read once for the thread's PPT pairs and their probabilities four
        // cells at a time (float4; a read past a pair's last cell lands in the next row or the
        // group sums, inside the allocation, and is masked); each lane still takes its cells in
        // index order.
        int rp[PPT];
        int r_max = 0;
#pragma unroll
        for (int k = 0; k < PPT; k++) {
            rp[k] = min(tile, reg_at<NP>(n_kv, c + 2 * k) - j0);
            r_max = max(r_max, rp[k]);
        }
        for (int r0 = 0; r0 < r_max; r0 += 32) {
#pragma unroll
            for (int u = 0; u < 32; u += 4) {
                if (r0 + u < r_max) {
                    float v[4];
#pragma unroll
                    for (int i = 0; i < 4; i++) v[i] = kv[(r0 + u + i) * ld + d];
#pragma unroll
                    for (int k = 0; k < PPT; k++) {
                        const float4 p4 = *(const float4*)(s + (c + 2 * k) * stride + j0 + r0 + u);
                        const float pv[4] = {p4.x, p4.y, p4.z, p4.w};
#pragma unroll
                        for (int i = 0; i < 4; i++)
                            if (r0 + u + i < rp[k]) acc[k][u + i] = fmaf(v[i], pv[i], acc[k][u + i]);
                    }
                }
            }
        }
    }
    __syncthreads();  // qh becomes the outputs
#pragma unroll
    for (int k = 0; k < PPT; k++) {
        const int p = c + 2 * k;
        if (reg_at<NP>(n_kv, p) > 0) {
            const float o = reduce_f32x8_4(acc[k]);
            const int t = t0 + p / G, h = kvh * G + p % G;
            out[(size_t)t * dim + h * HD + d] = o;
            qh[p * HD + d] = o;
        }
    }
    if (aq) {
        __syncthreads();
        for (int item = warp; item < NP * (HD / QK); item += blockDim.x >> 5) {
            const int p = item / (HD / QK), b = item - p * (HD / QK);
            if (reg_at<NP>(n_kv, p) > 0) {  // warp-uniform
                const int t = t0 + p / G, h = kvh * G + p % G;
                const int blk = (h * HD) / QK + b;
                quantize_block_warp(qh[p * HD + b * QK + lane], aq + (size_t)t * dim + blk * QK,
                                    ads + (size_t)t * (dim / QK) + blk);
            }
        }
    }
}

#define ATTENTION_ROWS_KERNEL(name, NP)                                                                          \
    extern "C" __global__ void __launch_bounds__(128) name(                                                      \
        const float* q, const float* k_cache, const float* v_cache, float* out, i8* aq, float2* ads,             \
        const int* __restrict__ params, int n_heads, int n_kv_heads, float scale, int stride, int rows_per_block, \
        int n_tok) {                                                                                              \
        pdl_launch();                                                                                             \
        pdl_wait();                                                                                               \
        attention_rows<NP>(q, k_cache, v_cache, out, aq, ads, params, n_heads, n_kv_heads, scale, stride,        \
                           rows_per_block, n_tok);                                                                \
    }
ATTENTION_ROWS_KERNEL(attention_rows_f32_p6, 6)
ATTENTION_ROWS_KERNEL(attention_rows_f32_p8, 8)
