// rope.cu: matches backend::cpu::ops::rope_norm (llama.cpp's LLAMA_ROPE_TYPE_NORM: rotate
// adjacent pairs), plus `rope_store_kv`, the forward pass's fused step after the Q/K/V product:
// bias add (ops::add), RoPE of Q and K, and the K/V cache writes of the CPU backend.
//
// The angles are not computed here: `table` (n_ctx, head_dim) holds ops::rope_cache(head_dim,
// pos, base) for every position, computed once on the host by the CPU reference itself, so the
// cos/sin values are the CPU's bit for bit. Positions are pos0 + t with pos0 = params[0] read
// from device memory (so one captured CUDA graph serves every decode step).
//
// Launch: grid (n_tok), block 256, one thread per pair (loops when wider).

// ops::rope_norm's rotation, ggml's rotate_pairs as GCC contracted it in the reference build.
__device__ __forceinline__ void rotate(float x0, float x1, const float* cs, int i, float* o) {
    float c = cs[i], s = cs[i + 1];
    o[0] = fmaf(x0, c, -(x1 * s));
    o[1] = fmaf(x0, s, x1 * c);
}

// x (n_tok, width) rotated in place, heads of head_dim.
extern "C" __global__ void rope_norm(float* __restrict__ x, const float* __restrict__ table,
                                     const int* __restrict__ params, int width, int head_dim) {
    pdl_launch();
    pdl_wait();
    size_t t = blockIdx.x;
    const float* cs = table + (size_t)(params[0] + t) * head_dim;
    for (int p = threadIdx.x; p < width / 2; p += blockDim.x) {
        int i = 2 * p;
        float o[2];
        rotate(x[t * width + i], x[t * width + i + 1], cs, i % head_dim, o);
        x[t * width + i] = o[0];
        x[t * width + i + 1] = o[1];
    }
}

// qkv (n_tok, dim + 2*kv_dim) as the fused Q|K|V product wrote it. Biases may be null.
// q_out (n_tok, dim) gets RoPE'd Q; k_cache/v_cache (n_ctx, kv_dim) get rows pos0 + t.
extern "C" __global__ void rope_store_kv(const float* __restrict__ qkv, const float* __restrict__ bq,
                                         const float* __restrict__ bk, const float* __restrict__ bv,
                                         float* __restrict__ q_out, float* __restrict__ k_cache,
                                         float* __restrict__ v_cache, const float* __restrict__ table,
                                         const int* __restrict__ params, int dim, int kv_dim, int head_dim) {
    pdl_launch();
    pdl_wait();
    size_t t = blockIdx.x;
    size_t pos = (size_t)params[0] + t;
    const float* cs = table + pos * head_dim;
    const float* row = qkv + t * (dim + 2 * kv_dim);
    for (int p = threadIdx.x; p < dim / 2; p += blockDim.x) {
        int i = 2 * p;
        float x0 = row[i], x1 = row[i + 1];
        if (bq) { x0 = x0 + bq[i]; x1 = x1 + bq[i + 1]; }
        rotate(x0, x1, cs, i % head_dim, q_out + t * dim + i);
    }
    for (int p = threadIdx.x; p < kv_dim / 2; p += blockDim.x) {
        int i = 2 * p;
        float x0 = row[dim + i], x1 = row[dim + i + 1];
        if (bk) { x0 = x0 + bk[i]; x1 = x1 + bk[i + 1]; }
        rotate(x0, x1, cs, i % head_dim, k_cache + pos * kv_dim + i);
    }
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        float v = row[dim + kv_dim + i];
        if (bv) v = v + bv[i];
        v_cache[pos * kv_dim + i] = v;
    }
}
