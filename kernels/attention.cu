// attention.cu: matches backend::cpu::ops::attention (grouped-query attention of one position
// over the cached positions 0..=pos, scores scaled by 1/sqrt(head_dim), ops::softmax, weighted
// sum of V), optionally fused with quantize_row_q8_1 of its output for the output projection.
//
// Launch: grid (n_heads, n_tok), block 128 (>= head_dim), dynamic shared memory
// (2*head_dim + 128*(head_dim+1) + n_ctx) floats (above 48 KB the launcher raises the limit).
// K and V are staged through shared memory in tiles of 128 positions (coalesced loads).
// Query position pos0 + t (pos0 = params[0]) sees n_kv = pos0 + t + 1 positions; query head h
// reads KV head h / (n_heads / n_kv_heads). Caches are (n_ctx, n_kv_heads*head_dim) f32.
// Numerics, as the CPU: each score is one sequential f32 dot product over head_dim; max exact;
// exp is glibc's expf; the sum of exponentials is f64 (per-thread then a fixed tree, the CPU is
// sequential: equal after the f32 rounding of 1/sum but for ~1e-9 of rows); each output element
// is one sequential f32 sum over positions in order. So the batch and the one-token paths run
// the same arithmetic for every (position, head), whatever the chunking.
// With aq/ads not null, head_dim % 32 == 0 and each head's output blocks are quantized here.

extern "C" __global__ void attention_f32(const float* __restrict__ q, const float* __restrict__ k_cache,
                                         const float* __restrict__ v_cache, float* __restrict__ out,
                                         i8* __restrict__ aq, float2* __restrict__ ads,
                                         const int* __restrict__ params, int n_heads, int n_kv_heads,
                                         int head_dim, float scale, int n_ctx) {
    pdl_launch();
    pdl_wait();
    extern __shared__ float sh[];
    __shared__ double dscratch[32];
    __shared__ float fscratch[32];
    const int h = blockIdx.x;
    const size_t t = blockIdx.y;
    const int dim = n_heads * head_dim, kv_dim = n_kv_heads * head_dim;
    const int n_kv = params[0] + (int)t + 1;
    const int kvh = h / (n_heads / n_kv_heads);
    const int tile = blockDim.x;       // positions per K/V tile
    const int ld = head_dim + 1;       // padded tile row: thread j reads row j without bank conflicts
    float* qh = sh;
    float* oh = sh + head_dim;
    float* kv = sh + 2 * head_dim;     // [tile][head_dim + 1]
    float* s = kv + tile * ld;         // [n_ctx] scores, then probabilities
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qh[d] = q[t * dim + h * head_dim + d];

    // Scores, one tile of positions at a time: the tile is loaded with coalesced 16-byte loads,
    // then thread j forms q.k_j sequentially over d (the CPU's order) from shared memory.
    float local_max = NEG_INF;
    const int vec_per_row = head_dim / 4;
    for (int j0 = 0; j0 < n_kv; j0 += tile) {
        int rows = min(tile, n_kv - j0);
        __syncthreads();
        for (int e = threadIdx.x; e < rows * vec_per_row; e += blockDim.x) {
            int r = e / vec_per_row, c = (e - r * vec_per_row) * 4;
            float4 v4 = *(const float4*)(k_cache + (size_t)(j0 + r) * kv_dim + kvh * head_dim + c);
            float* dst = kv + r * ld + c;
            dst[0] = v4.x; dst[1] = v4.y; dst[2] = v4.z; dst[3] = v4.w;
        }
        __syncthreads();
        int r = threadIdx.x;
        if (r < rows) {
            const float* kr = kv + r * ld;
            float dot = 0.0f;
            for (int d = 0; d < head_dim; d++) dot += kr[d] * qh[d];
            float v = dot * scale;
            s[j0 + r] = v;
            local_max = fmaxf(local_max, v);
        }
    }
    float max = block_max_f32(local_max, fscratch);

    double part = 0.0;
    for (int j = threadIdx.x; j < n_kv; j += blockDim.x) {
        float e = expf_glibc(s[j] - max);
        s[j] = e;
        part += (double)e;
    }
    double sum = block_sum_f64(part, dscratch);
    float inv = (float)(1.0 / sum);
    for (int j = threadIdx.x; j < n_kv; j += blockDim.x) s[j] *= inv;

    // Weighted sum of V: one thread per output element, positions in order across tiles.
    float acc = 0.0f;
    for (int j0 = 0; j0 < n_kv; j0 += tile) {
        int rows = min(tile, n_kv - j0);
        __syncthreads();
        for (int e = threadIdx.x; e < rows * vec_per_row; e += blockDim.x) {
            int r = e / vec_per_row, c = (e - r * vec_per_row) * 4;
            float4 v4 = *(const float4*)(v_cache + (size_t)(j0 + r) * kv_dim + kvh * head_dim + c);
            float* dst = kv + r * ld + c;
            dst[0] = v4.x; dst[1] = v4.y; dst[2] = v4.z; dst[3] = v4.w;
        }
        __syncthreads();
        int d = threadIdx.x;
        if (d < head_dim) {
            for (int r = 0; r < rows; r++) acc += kv[r * ld + d] * s[j0 + r];
        }
    }
    if (threadIdx.x < head_dim) {
        out[t * dim + h * head_dim + threadIdx.x] = acc;
        oh[threadIdx.x] = acc;
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
