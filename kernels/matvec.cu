// matvec.cu: matches backend::cpu::quant::matmul for quantized weights (vec_dot_q4_1_q8_1,
// vec_dot_q4_0_q8_0, vec_dot_q8_0_q8_0) and for float weights (vec_dot_f16, vec_dot_bf16,
// vec_dot_f32): out (n_tok, n_out) = W (n_out, n_in) . x (n_tok, n_in)^T.
//
// Weights are repacked at upload (backend::cuda::weights) without changing any value:
//   qs: (n_out, n_in/32) blocks of 16 bytes of nibbles (Q4_0/Q4_1) or 32 int8 (Q8_0),
//   dm: (n_out, n_in/32) u32 = f16 d in the low half, f16 m (Q4_1 only) in the high half.
// Activations arrive quantized by rmsnorm_q8 / quantize_q8_1 / attention / swiglu_q8:
//   aq (n_tok, n_in) int8, ads (n_tok, n_in/32) float2 (d, s).
//
// Launch (quantized): grid (ceil(n_out/ROWS), n_tok), block 128, dynamic shared memory
// ROWS * (n_in/32) * 2 floats. Phase 1 spreads the (row, block) pairs over the threads: each
// computes one block's integer dot product (dp4a; exact, so any grouping is the CPU's value)
// and the block's float terms (d_w*d_a)*sumi and m_w*s_a, exactly as the CPU forms them. Phase
// 2 has one thread per row add those terms in block order, `acc += term`, then `acc + summs`,
// the CPU's sequential order: each output is bitwise the CPU's, for any n_tok and any chunking.
//
// Epilogue `mode`: 0 stores out[t*out_stride + r] = v; 1 adds to it (the residual connection,
// ops::add: x = x + v). When `tap` is not null the stored value is also written to
// tap[t*out_stride + r] (the per-layer trace buffer).
//
// Launch (float weights): grid (ceil(n_out/128), n_tok), block 128, one thread per output doing
// the CPU's sequential dot product over n_in; x is f32 (rounded to f16/bf16 here as the CPU
// rounds its activation row). Slow, and only used for models with float matrices.

#define MV_ROWS 16

enum { WT_Q4_0 = 0, WT_Q4_1 = 1, WT_Q8_0 = 2 };

__device__ __forceinline__ void store_out(float* out, float* tap, size_t idx, float v, int mode) {
    if (mode == 1) v = out[idx] + v;
    out[idx] = v;
    if (tap) tap[idx] = v;
}

template <int WT>
__device__ __forceinline__ void matvec_q(const u8* __restrict__ qs, const u32* __restrict__ dm,
                                         const i8* __restrict__ aq, const float2* __restrict__ ads,
                                         float* out, float* tap, int n_in, int n_out, int out_stride,
                                         int mode) {
    extern __shared__ float sh[];
    const int nb = n_in / QK;
    const int row0 = blockIdx.x * MV_ROWS;
    const size_t t = blockIdx.y;
    float* terms = sh;                    // [MV_ROWS][nb]: (d_w*d_a)*sumi
    float* mterms = sh + MV_ROWS * nb;    // [MV_ROWS][nb]: m_w*s_a (Q4_1)
    const i8* a_row = aq + t * n_in;
    const float2* ads_row = ads + t * nb;
    const int n_items = MV_ROWS * nb;
    for (int it = threadIdx.x; it < n_items; it += blockDim.x) {
        int rl = it / nb, b = it - rl * nb;
        int row = row0 + rl;
        if (row >= n_out) break;
        size_t blk = (size_t)row * nb + b;
        const int4* a4 = (const int4*)(a_row + b * QK);
        int4 a0 = a4[0], a1 = a4[1];
        int sumi = 0;
        if (WT == WT_Q8_0) {
            const int4* w4 = (const int4*)(qs + blk * 32);
            int4 w0 = w4[0], w1 = w4[1];
            sumi = __dp4a(w0.x, a0.x, sumi); sumi = __dp4a(w0.y, a0.y, sumi);
            sumi = __dp4a(w0.z, a0.z, sumi); sumi = __dp4a(w0.w, a0.w, sumi);
            sumi = __dp4a(w1.x, a1.x, sumi); sumi = __dp4a(w1.y, a1.y, sumi);
            sumi = __dp4a(w1.z, a1.z, sumi); sumi = __dp4a(w1.w, a1.w, sumi);
        } else {
            // Byte j of a 4-bit block: low nibble is element j, high nibble element j + 16.
            uint4 w = ((const uint4*)qs)[blk];
            const u32 m4 = 0x0F0F0F0Fu;
            sumi = __dp4a((int)(w.x & m4), a0.x, sumi); sumi = __dp4a((int)(w.y & m4), a0.y, sumi);
            sumi = __dp4a((int)(w.z & m4), a0.z, sumi); sumi = __dp4a((int)(w.w & m4), a0.w, sumi);
            sumi = __dp4a((int)((w.x >> 4) & m4), a1.x, sumi); sumi = __dp4a((int)((w.y >> 4) & m4), a1.y, sumi);
            sumi = __dp4a((int)((w.z >> 4) & m4), a1.z, sumi); sumi = __dp4a((int)((w.w >> 4) & m4), a1.w, sumi);
            if (WT == WT_Q4_0) {
                // sum (q - 8) a = sum q a - 8 sum a, exact in integers.
                int suma = 0;
                const int ones = 0x01010101;
                suma = __dp4a(ones, a0.x, suma); suma = __dp4a(ones, a0.y, suma);
                suma = __dp4a(ones, a0.z, suma); suma = __dp4a(ones, a0.w, suma);
                suma = __dp4a(ones, a1.x, suma); suma = __dp4a(ones, a1.y, suma);
                suma = __dp4a(ones, a1.z, suma); suma = __dp4a(ones, a1.w, suma);
                sumi -= 8 * suma;
            }
        }
        u32 dmw = dm[blk];
        float2 da = ads_row[b];
        float d = h2f((u16)(dmw & 0xffffu));
        terms[rl * nb + b] = (d * da.x) * (float)sumi;
        if (WT == WT_Q4_1) mterms[rl * nb + b] = h2f((u16)(dmw >> 16)) * da.y;
    }
    __syncthreads();
    int rl = threadIdx.x;
    int row = row0 + rl;
    if (rl < MV_ROWS && row < n_out) {
        float acc = 0.0f, summs = 0.0f;
        for (int b = 0; b < nb; b++) {
            acc += terms[rl * nb + b];
            if (WT == WT_Q4_1) summs += mterms[rl * nb + b];
        }
        float v = WT == WT_Q4_1 ? acc + summs : acc;
        store_out(out, tap, t * out_stride + row, v, mode);
    }
}

extern "C" __global__ void matvec_q4_1_q8_1(const u8* qs, const u32* dm, const i8* aq, const float2* ads,
                                            float* out, float* tap, int n_in, int n_out, int out_stride, int mode) {
    matvec_q<WT_Q4_1>(qs, dm, aq, ads, out, tap, n_in, n_out, out_stride, mode);
}
extern "C" __global__ void matvec_q4_0_q8_0(const u8* qs, const u32* dm, const i8* aq, const float2* ads,
                                            float* out, float* tap, int n_in, int n_out, int out_stride, int mode) {
    matvec_q<WT_Q4_0>(qs, dm, aq, ads, out, tap, n_in, n_out, out_stride, mode);
}
extern "C" __global__ void matvec_q8_0_q8_0(const u8* qs, const u32* dm, const i8* aq, const float2* ads,
                                            float* out, float* tap, int n_in, int n_out, int out_stride, int mode) {
    matvec_q<WT_Q8_0>(qs, dm, aq, ads, out, tap, n_in, n_out, out_stride, mode);
}

// Float weights: w (n_out, n_in) raw from the GGUF file (f16 / bf16 bits, or f32).
enum { FT_F16 = 0, FT_BF16 = 1, FT_F32 = 2 };

template <int FT>
__device__ __forceinline__ void matvec_float(const void* __restrict__ w, const float* __restrict__ x, float* out,
                                             float* tap, int n_in, int n_out, int out_stride, int mode) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= n_out) return;
    size_t t = blockIdx.y;
    const float* xr = x + t * n_in;
    float acc = 0.0f;
    for (int j = 0; j < n_in; j++) {
        size_t k = (size_t)row * n_in + j;
        if (FT == FT_F16) acc += h2f(((const u16*)w)[k]) * f16_round(xr[j]);
        else if (FT == FT_BF16) acc += bf2f(((const u16*)w)[k]) * bf16_round(xr[j]);
        else acc += ((const float*)w)[k] * xr[j];
    }
    store_out(out, tap, t * out_stride + row, acc, mode);
}

extern "C" __global__ void matvec_f16(const void* w, const float* x, float* out, float* tap, int n_in, int n_out,
                                      int out_stride, int mode) {
    matvec_float<FT_F16>(w, x, out, tap, n_in, n_out, out_stride, mode);
}
extern "C" __global__ void matvec_bf16(const void* w, const float* x, float* out, float* tap, int n_in, int n_out,
                                       int out_stride, int mode) {
    matvec_float<FT_BF16>(w, x, out, tap, n_in, n_out, out_stride, mode);
}
extern "C" __global__ void matvec_f32(const void* w, const float* x, float* out, float* tap, int n_in, int n_out,
                                      int out_stride, int mode) {
    matvec_float<FT_F32>(w, x, out, tap, n_in, n_out, out_stride, mode);
}
