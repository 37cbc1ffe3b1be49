// embedding.cu: matches backend::cpu::ops::embedding (ggml get_rows: dequantize one row of the
// token embedding table per token; gguf::quant::dequantize_block_* formulas).
//
// Launch: grid (n_tok), block 256. tokens (n_tok) int32 ids (checked < n_vocab on the host);
// x (n_tok, dim) f32; `tap`, when not null, receives a copy (the Embd trace slot).
// Quantized tables are in the repacked layout of matvec.cu (the output head reuses them when
// tied); float tables are raw GGUF rows.

enum { ET_Q4_0 = 0, ET_Q4_1 = 1, ET_Q8_0 = 2, ET_F16 = 3, ET_BF16 = 4, ET_F32 = 5 };

template <int ET>
__device__ __forceinline__ void embed(const u8* __restrict__ qs, const u32* __restrict__ dm,
                                      const int* __restrict__ tokens, float* __restrict__ x,
                                      float* __restrict__ tap, int dim) {
    pdl_launch();
    pdl_wait();
    size_t t = blockIdx.x;
    size_t tok = (size_t)tokens[t];
    int nb = dim / QK;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        int b = i / QK, j = i % QK;
        size_t blk = tok * nb + b;
        float v;
        if (ET == ET_Q8_0) {
            v = (float)(int)(i8)qs[blk * 32 + j] * h2f((u16)(dm[blk] & 0xffffu));
        } else if (ET == ET_Q4_0 || ET == ET_Q4_1) {
            u8 byte = qs[blk * 16 + (j & 15)];
            int q = j < 16 ? (byte & 0x0f) : (byte >> 4);
            float d = h2f((u16)(dm[blk] & 0xffffu));
            if (ET == ET_Q4_0) v = (float)(q - 8) * d;
            else v = (float)q * d + h2f((u16)(dm[blk] >> 16));
        } else if (ET == ET_F16) {
            v = h2f(((const u16*)qs)[tok * dim + i]);
        } else if (ET == ET_BF16) {
            v = bf2f(((const u16*)qs)[tok * dim + i]);
        } else {
            v = ((const float*)qs)[tok * dim + i];
        }
        x[t * dim + i] = v;
        if (tap) tap[t * dim + i] = v;
    }
}

#define EMBED_KERNEL(name, ET)                                                                        \
    extern "C" __global__ void name(const u8* qs, const u32* dm, const int* tokens, float* x, float* tap, \
                                    int dim) {                                                        \
        embed<ET>(qs, dm, tokens, x, tap, dim);                                                       \
    }
EMBED_KERNEL(embedding_q4_0, ET_Q4_0)
EMBED_KERNEL(embedding_q4_1, ET_Q4_1)
EMBED_KERNEL(embedding_q8_0, ET_Q8_0)
EMBED_KERNEL(embedding_f16, ET_F16)
EMBED_KERNEL(embedding_bf16, ET_BF16)
EMBED_KERNEL(embedding_f32, ET_F32)
