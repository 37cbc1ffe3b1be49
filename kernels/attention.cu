// attention.cu: matches backend::cpu::ops::attention (grouped-query attention of one position
// over the cached positions 0..=pos, scores scaled by 1/sqrt(head_dim), ops::softmax, weighted
// sum of V), optionally fused with quantize_row_q8_1 of its output for the output projection.
//
// Launch: grid (n_heads, n_tok), block 128, dynamic shared memory (2*head_dim + n_ctx) floats.
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
                                         int head_dim, float scale) {
    extern __shared__ float sh[];
    __shared__ double dscratch[32];
    __shared__ float fscratch[32];
    const int h = blockIdx.x;
    const size_t t = blockIdx.y;
    const int dim = n_heads * head_dim, kv_dim = n_kv_heads * head_dim;
    const int n_kv = params[0] + (int)t + 1;
    const int kvh = h / (n_heads / n_kv_heads);
    float* qh = sh;
    float* oh = sh + head_dim;
    float* s = sh + 2 * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qh[d] = q[t * dim + h * head_dim + d];
    __syncthreads();

    float local_max = NEG_INF;
    for (int j = threadIdx.x; j < n_kv; j += blockDim.x) {
        const float* kr = k_cache + (size_t)j * kv_dim + kvh * head_dim;
        float dot = 0.0f;
        for (int d = 0; d < head_dim; d++) dot += kr[d] * qh[d];
        float v = dot * scale;
        s[j] = v;
        local_max = fmaxf(local_max, v);
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
    __syncthreads();

    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        const float* vc = v_cache + kvh * head_dim + d;
        float acc = 0.0f;
        for (int j = 0; j < n_kv; j++) acc += vc[(size_t)j * kv_dim] * s[j];
        out[t * dim + h * head_dim + d] = acc;
        oh[d] = acc;
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
