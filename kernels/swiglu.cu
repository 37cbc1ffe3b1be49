// swiglu.cu: matches backend::cpu::ops::swiglu (out = silu(gate) * up as ggml_vec_swiglu_f32:
// ggml's vectorized SiLU in the groups of eight, glibc's expf for the rest), optionally fused
// with quantize_row_q8_1 of the result for the down projection.
//
// Launch: grid (ceil(n/32 / 4), n_tok), block 128: one warp per block of 32 outputs. gate and
// up are read from one buffer: gate at gu[t*gu_stride + i], up at gu[t*gu_stride + up_offset + i]
// (the fused gate|up product writes (n_tok, 2n)). out (n_tok, n) may be null; aq/ads may be null.
extern "C" __global__ void swiglu_f32(const float* __restrict__ gu, int gu_stride, int up_offset,
                                      float* __restrict__ out, i8* __restrict__ aq,
                                      float2* __restrict__ ads, int n) {
    pdl_launch();
    pdl_wait();
    int nb = n / QK;
    int b = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (b >= nb) return;
    size_t t = blockIdx.y;
    int i = b * QK + (threadIdx.x & 31);
    float g = gu[t * gu_stride + i], u = gu[t * gu_stride + up_offset + i];
    float s = swiglu_elem(g, u, i, n);
    if (out) out[t * n + i] = s;
    if (aq) quantize_block_warp(s, aq + t * n + b * QK, ads + t * nb + b);
}

// geglu_f32: matches backend::cpu::ops::geglu (out = gelu(gate) * up as ggml_vec_geglu_f32 with
// GGML_GELU_FP16: gate <= -10 gives 0, gate >= 10 gives gate * up, else ggml's f16 GELU table
// entry of gate rounded to f16 (round to nearest even), widened, times up). The table is the
// CPU's `ops::gelu_table`, uploaded (65,536 u16). Launch and layout as swiglu_f32.
extern "C" __global__ void geglu_f32(const float* __restrict__ gu, int gu_stride, int up_offset,
                                     float* __restrict__ out, i8* __restrict__ aq, float2* __restrict__ ads,
                                     int n, const u16* __restrict__ table) {
    pdl_launch();
    pdl_wait();
    int nb = n / QK;
    int b = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (b >= nb) return;
    size_t t = blockIdx.y;
    int i = b * QK + (threadIdx.x & 31);
    float g = gu[t * gu_stride + i], u = gu[t * gu_stride + up_offset + i];
    float s;
    if (g <= -10.0f) {
        s = 0.0f;
    } else if (g >= 10.0f) {
        s = g * u;
    } else {
        s = h2f(table[f2h(g)]) * u;
    }
    if (out) out[t * n + i] = s;
    if (aq) quantize_block_warp(s, aq + t * n + b * QK, ads + t * nb + b);
}
