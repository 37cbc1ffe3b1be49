// quantize.cu: matches backend::cpu::quant::quantize_row_q8_1 (and quantize_row_q8_0, whose d
// and qs are the same: Q8_0 consumers ignore s).
//
// Launch: grid (ceil(n/32 / 4), n_tok), block 128: one warp per block of 32 values.
// Layout: x (n_tok, n) f32 -> aq (n_tok, n) int8 and ads (n_tok, n/32) float2 (d, s), with d and
// s rounded to f16 as ggml stores them. n % 32 == 0.
extern "C" __global__ void quantize_q8_1(const float* __restrict__ x, i8* __restrict__ aq,
                                         float2* __restrict__ ads, int n) {
    pdl_launch();
    pdl_wait();
    int nb = n / QK;
    int b = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (b >= nb) return;  // whole warps leave together
    size_t t = blockIdx.y;
    int i = b * QK + (threadIdx.x & 31);
    quantize_block_warp(x[t * n + i], aq + t * n + b * QK, ads + t * nb + b);
}
