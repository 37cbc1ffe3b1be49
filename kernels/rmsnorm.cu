// rmsnorm.cu: matches backend::cpu::ops::rmsnorm (ggml_rms_norm followed by ggml_mul), and
// `rmsnorm_q8` fuses it with quant::quantize_row_q8_1 of the output, the activation format that
// every quantized matvec consumes.
//
// Launch: grid (n_tok), block 128 threads, no dynamic shared memory. The block size is part of
// the numerics (it fixes the f64 reduction tree of common.cuh's rms_scale), and matvec.cu's fused
// norm uses the same 128-thread tree, so both paths give the same bits.
// Numerics: squares in f32 widened to f64, summed per thread in index order and then by the
// fixed tree of block_sum_f64 (the CPU sums sequentially in f64); the f32 mean is the CPU's
// (common.cuh's rms_mean_exact), scale in f32 as the CPU does; `out = (x * scale) * w`.
// Bitwise equal to the CPU.

extern "C" __global__ void rmsnorm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                       float* __restrict__ out, int dim, float eps) {
    pdl_launch();
    pdl_wait();
    const float* xr = x + (size_t)blockIdx.x * dim;
    float* orow = out + (size_t)blockIdx.x * dim;
    float scale = rms_scale(xr, dim, eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) orow[i] = (xr[i] * scale) * w[i];
}

// Row t of rmsnorm_q8, callable from a persistent kernel (decode.cu; x not __restrict__ there).
__device__ __forceinline__ void rmsnorm_q8_row(const float* x, const float* __restrict__ w, float* out, float* tap,
                                               i8* aq, float2* ads, int dim, float eps, size_t t) {
    rmsnorm_q8_regs(x + t * dim, w, dim, eps, out ? out + t * dim : 0, tap ? tap + t * dim : 0, aq + t * dim,
                    ads + t * (dim / QK));
}

// Writes the normalized row as f32 to `out` and `tap` when they are not null, and always as Q8_1
// blocks to (aq, ads): aq (n_tok, dim) int8, ads (n_tok, dim/32) (d, s). dim % 32 == 0.
extern "C" __global__ void rmsnorm_q8(const float* __restrict__ x, const float* __restrict__ w,
                                      float* __restrict__ out, float* __restrict__ tap,
                                      i8* __restrict__ aq, float2* __restrict__ ads, int dim, float eps) {
    pdl_launch();
    pdl_wait();
    // Eight threads per Q8_1 block (common.cuh's rmsnorm_q8_g8): rmsnorm_q8_row's values, with
    // 16 blocks quantized per round instead of one per warp.
    const size_t t = blockIdx.x;
    rmsnorm_q8_g8(x + t * dim, w, dim, eps, aq + t * dim, ads + t * (dim / QK), out ? out + t * dim : 0,
                  tap ? tap + t * dim : 0);
}

// head_rmsnorm_f32: matches backend::cpu::ops::rmsnorm over each head of a strided buffer, in
// place (gemma3's per-head Q and K norms): row (t, h) is x[t * stride + off + h * head_dim ..
// + head_dim], normalized with rms_scale (as rmsnorm_f32) and multiplied by w (head_dim).
// Launch: grid (n_tok, n_heads), block 128, no dynamic shared memory.
extern "C" __global__ void head_rmsnorm_f32(float* x, int stride, int off, int head_dim,
                                            const float* __restrict__ w, float eps) {
    pdl_launch();
    pdl_wait();
    float* xr = x + (size_t)blockIdx.x * stride + off + (size_t)blockIdx.y * head_dim;
    float scale = rms_scale(xr, head_dim, eps);
    __syncthreads();
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) xr[i] = (xr[i] * scale) * w[i];
}
