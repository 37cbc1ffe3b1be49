// rope.cu: matches backend::cpu::ops::rope_norm (llama.cpp's LLAMA_ROPE_TYPE_NORM: rotate
// adjacent pairs) and ops::rope_neox (LLAMA_ROPE_TYPE_NEOX: rotate x[j] with x[j + head_dim/2]),
// plus `rope_store_kv` (reference ops::rope_store_kv), the forward pass's fused step after the
// Q/K/V product: bias add (ops::add), RoPE of Q and K, and the K/V cache writes of the CPU backend.
//
// The angles are not computed here: `table` (n_ctx, head_dim) holds ops::Rope::cache(pos) (base,
// linear scaling, frequency factors) for every position, computed once on the host by the CPU
// reference itself, so the cos/sin values are the CPU's bit for bit. Positions are pos0 + t with
// pos0 = params[0] read from device memory (so one captured CUDA graph serves every decode step).
//
// Launch: grid (n_tok), block 256, one thread per pair (loops when wider).

// ops::rope_norm's rotation, ggml's rotate_pairs as GCC contracted it in the reference build.
__device__ __forceinline__ void rotate(float x0, float x1, const float* cs, int i, float* o) {
    float c = cs[i], s = cs[i + 1];
    o[0] = fmaf(x0, c, -(x1 * s));
    o[1] = fmaf(x0, s, x1 * c);
}

// Pair p of a row of heads of head_dim: its two elements and its angle's table index. Pair j
// of a head turns by θ_j (table entries 2j, 2j+1) in both kinds; NORM pairs (2j, 2j+1), NEOX
// pairs (j, j + head_dim/2).
__device__ __forceinline__ void rope_pair(int p, int head_dim, int neox, int* e0, int* e1, int* ci) {
    int half = head_dim / 2, h = p / half, j = p - h * half;
    *ci = 2 * j;
    *e0 = neox ? h * head_dim + j : 2 * p;
    *e1 = neox ? *e0 + half : 2 * p + 1;
}

// x (n_tok, width) rotated in place, heads of head_dim: NORM pairs.
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

// As rope_norm, NEOX pairs.
extern "C" __global__ void rope_neox(float* __restrict__ x, const float* __restrict__ table,
                                     const int* __restrict__ params, int width, int head_dim) {
    pdl_launch();
    pdl_wait();
    size_t t = blockIdx.x;
    const float* cs = table + (size_t)(params[0] + t) * head_dim;
    for (int p = threadIdx.x; p < width / 2; p += blockDim.x) {
        int e0, e1, ci;
        rope_pair(p, head_dim, 1, &e0, &e1, &ci);
        float o[2];
        rotate(x[t * width + e0], x[t * width + e1], cs, ci, o);
        x[t * width + e0] = o[0];
        x[t * width + e1] = o[1];
    }
}

// qkv (n_tok, dim + 2*kv_dim) as the Q|K|V products wrote it (dim: the width of Q). Biases
// may be null. q_out (n_tok, dim) gets RoPE'd Q; k_cache/v_cache (n_ctx, kv_dim) get rows
// pos0 + t. `neox` selects the pairs (rope_pair).
extern "C" __global__ void rope_store_kv(const float* __restrict__ qkv, const float* __restrict__ bq,
                                         const float* __restrict__ bk, const float* __restrict__ bv,
                                         float* __restrict__ q_out, float* __restrict__ k_cache,
                                         float* __restrict__ v_cache, const float* __restrict__ table,
                                         const int* __restrict__ params, int dim, int kv_dim, int head_dim,
                                         int neox) {
    pdl_launch();
    pdl_wait();
    size_t t = blockIdx.x;
    size_t pos = (size_t)params[0] + t;
    const float* cs = table + pos * head_dim;
    const float* row = qkv + t * (dim + 2 * kv_dim);
    for (int p = threadIdx.x; p < dim / 2; p += blockDim.x) {
        int e0, e1, ci;
        rope_pair(p, head_dim, neox, &e0, &e1, &ci);
        float x0 = row[e0], x1 = row[e1];
        if (bq) { x0 = x0 + bq[e0]; x1 = x1 + bq[e1]; }
        float o[2];
        rotate(x0, x1, cs, ci, o);
        q_out[t * dim + e0] = o[0];
        q_out[t * dim + e1] = o[1];
    }
    for (int p = threadIdx.x; p < kv_dim / 2; p += blockDim.x) {
        int e0, e1, ci;
        rope_pair(p, head_dim, neox, &e0, &e1, &ci);
        float x0 = row[dim + e0], x1 = row[dim + e1];
        if (bk) { x0 = x0 + bk[e0]; x1 = x1 + bk[e1]; }
        float o[2];
        rotate(x0, x1, cs, ci, o);
        k_cache[pos * kv_dim + e0] = o[0];
        k_cache[pos * kv_dim + e1] = o[1];
    }
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        float v = row[dim + kv_dim + i];
        if (bv) v = v + bv[i];
        v_cache[pos * kv_dim + i] = v;
    }
}
