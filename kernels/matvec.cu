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
// Launch (quantized): grid (ceil(n_out/R), ceil(n_tok/TT)), block 128, dynamic shared memory
// as documented at matvec_q_block. Phase 1 spreads the (row, block) pairs over the threads: each
// computes one block's integer dot product (dp4a; exact, so any grouping is the CPU's value)
// and the block's float terms (d_w*d_a)*sumi and m_w*s_a, exactly as the CPU forms them. Phase
// 2 has one thread per row add those terms in block order, `acc += term`, then `acc + summs`,
// the CPU's sequential order: each output is bitwise the CPU's, for any n_tok and any chunking.
//
// Epilogue `mode`: 0 stores out[t*out_stride + r] = v; 1 adds to it (the residual connection,
// ops::add: x = x + v). When `tap` is not null the stored value is also written to
// tap[t*out_stride + r] (the per-layer trace buffer). 2 (Q|K|V stacked) applies rope.cu's
// rope_store_kv arithmetic to the results; 3 (gate|up stacked) applies swiglu.cu's swiglu_f32
// and quantizes, so the decode step needs no separate launch for either.
//
// Launch (float weights): grid (ceil(n_out/128), n_tok), block 128, one thread per output doing
// the CPU's sequential dot product over n_in; x is f32 (rounded to f16/bf16 here as the CPU
// rounds its activation row). Slow, and only used for models with float matrices.

#define MV_UNROLL 4

enum { WT_Q4_0 = 0, WT_Q4_1 = 1, WT_Q8_0 = 2 };
enum { MODE_STORE = 0, MODE_ADD = 1, MODE_QKV = 2, MODE_SWIGLU = 3 };

__device__ __forceinline__ void store_out(float* out, float* tap, size_t idx, float v, int mode) {
    if (mode == MODE_ADD) v = out[idx] + v;
    out[idx] = v;
    if (tap) tap[idx] = v;
}

// Epilogue arguments of the fused modes (null / 0 when unused).
struct QkvEpi {
    float* q_out; float* k_cache; float* v_cache; const float* table; const int* params;
    const float* bq; const float* bk; const float* bv; int dim; int kv_dim; int head_dim;
};
struct SwigluEpi { float* out; i8* aq; float2* ads; int ffn; };
// Fused input norm: when `w` is not null the block normalizes rows of `x` itself (rmsnorm.cu's
// rmsnorm_q8 arithmetic, same 128-thread tree) into shared memory instead of reading aq/ads.
struct NormIn { const float* x; const float* w; float eps; };

// Weight block `blk` of the matrix, and its integer dot with activation block `a0|a1`.
template <int WT>
struct WBlock {
    int4 w0, w1;  // Q8_0: 32 bytes; 4-bit: w0 holds the 16 bytes of nibbles
    u32 dm;
    __device__ __forceinline__ void load(const u8* __restrict__ qs, const u32* __restrict__ dmv, size_t blk) {
        if (WT == WT_Q8_0) {
            const int4* w4 = (const int4*)(qs + blk * 32);
            w0 = w4[0];
            w1 = w4[1];
        } else {
            w0 = ((const int4*)qs)[blk];
        }
        dm = dmv[blk];
    }
    __device__ __forceinline__ int dot(int4 a0, int4 a1) const {
        int sumi = 0;
        if (WT == WT_Q8_0) {
            sumi = __dp4a(w0.x, a0.x, sumi); sumi = __dp4a(w0.y, a0.y, sumi);
            sumi = __dp4a(w0.z, a0.z, sumi); sumi = __dp4a(w0.w, a0.w, sumi);
            sumi = __dp4a(w1.x, a1.x, sumi); sumi = __dp4a(w1.y, a1.y, sumi);
            sumi = __dp4a(w1.z, a1.z, sumi); sumi = __dp4a(w1.w, a1.w, sumi);
        } else {
            // Byte j of a 4-bit block: low nibble is element j, high nibble element j + 16.
            const u32 m4 = 0x0F0F0F0Fu;
            u32 x = (u32)w0.x, y = (u32)w0.y, z = (u32)w0.z, w = (u32)w0.w;
            sumi = __dp4a((int)(x & m4), a0.x, sumi); sumi = __dp4a((int)(y & m4), a0.y, sumi);
            sumi = __dp4a((int)(z & m4), a0.z, sumi); sumi = __dp4a((int)(w & m4), a0.w, sumi);
            sumi = __dp4a((int)((x >> 4) & m4), a1.x, sumi); sumi = __dp4a((int)((y >> 4) & m4), a1.y, sumi);
            sumi = __dp4a((int)((z >> 4) & m4), a1.z, sumi); sumi = __dp4a((int)((w >> 4) & m4), a1.w, sumi);
            if (WT == WT_Q4_0) {
                // sum (q - 8) a = sum q a - 8 sum a, exact in integers.
                const int ones = 0x01010101;
                int suma = 0;
                suma = __dp4a(ones, a0.x, suma); suma = __dp4a(ones, a0.y, suma);
                suma = __dp4a(ones, a0.z, suma); suma = __dp4a(ones, a0.w, suma);
                suma = __dp4a(ones, a1.x, suma); suma = __dp4a(ones, a1.y, suma);
                suma = __dp4a(ones, a1.z, suma); suma = __dp4a(ones, a1.w, suma);
                sumi -= 8 * suma;
            }
        }
        return sumi;
    }
};

// Grid (n_out / rows_per_block, ceil(n_tok / tok_per_block)); see the header for the numerics.
// Block x covers `rows_per_block` output rows: rows x*R + rl, except in MODE_SWIGLU, where
// R = 64 covers gate rows x*32 + (0..32) and up rows ffn + x*32 + (0..32). Block y covers tokens
// y*TT .. y*TT + TT: each weight block is loaded once and used for every token of the block.
// Dynamic shared memory: R * TT * (n_in/32) * (2 for Q4_1, else 1) floats + R * TT floats, and
// with a fused norm or TT == 1, 16-byte aligned, TT * n_in int8 and TT * n_in/32 float2 (+ 32
// bytes). n_in % 512 == 0 is not required; n_in % 32 == 0 is.
// Block size 128 (the fused norm's reduction tree assumes it).

// Pulls the weights block `bx` will read towards L2 (they never depend on a previous kernel, so
// this runs before pdl_wait / a grid barrier).
template <int WT>
__device__ __forceinline__ void matvec_prefetch(const u8* __restrict__ qs, int n_in, int n_out, int mode,
                                                int rows_per_block, int ffn, int bx) {
    const int R = rows_per_block;
    const int nb = n_in / QK;
    const int n_items = R * nb;
    for (int it = threadIdx.x; it < n_items; it += blockDim.x) {
        int rl = it / nb, b = it - (it / nb) * nb;
        int row = mode == MODE_SWIGLU ? (rl < 32 ? bx * 32 + rl : ffn + bx * 32 + rl - 32) : bx * R + rl;
        if (row < n_out) {
            size_t blk = (size_t)row * nb + b;
            const u8* p = qs + blk * (WT == WT_Q8_0 ? 32 : 16);
            asm volatile("prefetch.global.L2 [%0];" :: "l"(p));
        }
    }
}

// One block's work (virtual block (bx, by) of the grid described above), so that a persistent
// kernel (decode.cu) can run many. Activations (aq, ads, ni.x) are deliberately not __restrict__:
// in the persistent kernel other blocks wrote them in this same launch, and the non-coherent
// read-only path could serve stale lines. Starts with a barrier so shared memory may be reused.
template <int WT>
__device__ __forceinline__ void matvec_q_block(const u8* __restrict__ qs, const u32* __restrict__ dm,
                                               const i8* aq, const float2* ads,
                                               float* out, float* tap, int n_in, int n_out, int out_stride,
                                               int mode, int n_tok, int rows_per_block, int tok_per_block,
                                               QkvEpi qe, SwigluEpi se, NormIn ni, int bx, int by) {
    extern __shared__ float sh[];
    __syncthreads();
    const int R = rows_per_block;
    const int nb = n_in / QK;
    const int t0 = by * tok_per_block;
    const int tcount = min(tok_per_block, n_tok - t0);
    const int slots = R * tok_per_block;
    float* terms = sh;                                          // [tt][rl][b]
    float* mterms = sh + slots * nb;                            // Q4_1: [tt][rl][b]
    float* res = sh + slots * nb * (WT == WT_Q4_1 ? 2 : 1);     // [tt][rl]
    // MODE_ADD: the value this thread adds to in phase 2 (its first (token, row)), loaded now so
    // the load overlaps the products. Only this block writes those rows.
    float first_old = 0.0f;
    if (mode == MODE_ADD && threadIdx.x < tcount * R) {
        int tt = threadIdx.x / R, row = bx * R + threadIdx.x - tt * R;
        if (row < n_out) first_old = out[(size_t)(t0 + tt) * out_stride + row];
    }
    const int n_items = R * nb;
    // This thread's (row, block) pairs of one pass of the main loop, and their weights.
    WBlock<WT> wb[MV_UNROLL];
    int rls[MV_UNROLL], bs[MV_UNROLL];
    bool ok[MV_UNROLL];
    auto load_pass = [&](int it0) {
#pragma unroll
        for (int u = 0; u < MV_UNROLL; u++) {
            int it = it0 + u * blockDim.x + threadIdx.x;
            int rl = it / nb, b = it - (it / nb) * nb;
            int row = mode == MODE_SWIGLU ? (rl < 32 ? bx * 32 + rl : se.ffn + bx * 32 + rl - 32)
                                          : bx * R + rl;
            ok[u] = it < n_items && row < n_out;
            rls[u] = rl;
            bs[u] = b;
            if (ok[u]) wb[u].load(qs, dm, (size_t)row * nb + b);
        }
    };
    // The first pass's weights are requested before the activations are ready (they overlap the
    // fused norm or the staging below).
    load_pass(0);
    // Activation source: global rows t0.., or, for one-token blocks and fused norms, rows in
    // shared memory (normalized here, or copied with all loads in flight at once instead of one
    // dependent round trip per unrolled block).
    const i8* a_base = aq + (size_t)t0 * n_in;
    const float2* ads_base = ads + (size_t)t0 * nb;
    if (ni.w || tok_per_block == 1) {
        size_t off = (size_t)(res + slots) - (size_t)sh;
        off = (off + 15) & ~(size_t)15;
        i8* aq_s = (i8*)((char*)sh + off);
        float2* ads_s = (float2*)((char*)sh + off + (((size_t)tok_per_block * n_in + 15) & ~(size_t)15));
        if (ni.w) {
            for (int tt = 0; tt < tcount; tt++)
                rmsnorm_q8_regs(ni.x + (size_t)(t0 + tt) * n_in, ni.w, n_in, ni.eps, 0, 0, aq_s + tt * n_in,
                                ads_s + tt * nb);
        } else {
            // One token: n_in int8 (16-byte pieces) and nb (d, s) pairs.
            const int n16 = n_in / 16;
            int4 v[4];
            float2 d2[2];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                int i = threadIdx.x + u * blockDim.x;
                if (i < n16) v[u] = ((const int4*)a_base)[i];
            }
#pragma unroll
            for (int u = 0; u < 2; u++) {
                int i = threadIdx.x + u * blockDim.x;
                if (i < nb) d2[u] = ads_base[i];
            }
            for (int i = threadIdx.x + 4 * blockDim.x; i < n16; i += blockDim.x) ((int4*)aq_s)[i] = ((const int4*)a_base)[i];
            for (int i = threadIdx.x + 2 * blockDim.x; i < nb; i += blockDim.x) ads_s[i] = ads_base[i];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                int i = threadIdx.x + u * blockDim.x;
                if (i < n16) ((int4*)aq_s)[i] = v[u];
            }
#pragma unroll
            for (int u = 0; u < 2; u++) {
                int i = threadIdx.x + u * blockDim.x;
                if (i < nb) ads_s[i] = d2[u];
            }
        }
        __syncthreads();
        a_base = aq_s;
        ads_base = ads_s;
    }
    for (int it0 = 0; it0 < n_items; it0 += blockDim.x * MV_UNROLL) {
        if (it0 > 0) load_pass(it0);
        for (int tt = 0; tt < tcount; tt++) {
#pragma unroll
            for (int u = 0; u < MV_UNROLL; u++) {
                if (!ok[u]) continue;
                const int4* a4 = (const int4*)(a_base + (size_t)tt * n_in + bs[u] * QK);
                int sumi = wb[u].dot(a4[0], a4[1]);
                float2 da = ads_base[(size_t)tt * nb + bs[u]];
                float d = h2f((u16)(wb[u].dm & 0xffffu));
                int slot = (tt * R + rls[u]) * nb + bs[u];
                terms[slot] = (d * da.x) * (float)sumi;
                if (WT == WT_Q4_1) mterms[slot] = h2f((u16)(wb[u].dm >> 16)) * da.y;
            }
        }
    }
    __syncthreads();
    // Phase 2: one thread per (token, row) adds the block terms in block order, as the CPU.
    for (int idx = threadIdx.x; idx < tcount * R; idx += blockDim.x) {
        int tt = idx / R, rl = idx - (idx / R) * R;
        const float* tr = terms + (tt * R + rl) * nb;
        const float* mr = mterms + (tt * R + rl) * nb;
        float acc = 0.0f, summs = 0.0f;
        for (int b = 0; b < nb; b++) {
            acc += tr[b];
            if (WT == WT_Q4_1) summs += mr[b];
        }
        float v = WT == WT_Q4_1 ? acc + summs : acc;
        if (mode == MODE_STORE || mode == MODE_ADD) {
            int row = bx * R + rl;
            size_t o = (size_t)(t0 + tt) * out_stride + row;
            if (row < n_out && mode == MODE_ADD && idx == threadIdx.x) {
                v = first_old + v;  // store_out's `out[idx] + v`
                out[o] = v;
                if (tap) tap[o] = v;
            } else if (row < n_out) {
                store_out(out, tap, o, v, mode);
            }
        } else {
            res[tt * R + rl] = v;
        }
    }
    if (mode == MODE_QKV) {
        // Bias, RoPE and the cache writes of rope.cu's rope_store_kv, on pairs of adjacent rows.
        __syncthreads();
        for (int idx = threadIdx.x; idx < tcount * R / 2; idx += blockDim.x) {
            int tt = idx / (R / 2), rl = 2 * (idx - tt * (R / 2));
            int row = bx * R + rl;
            if (row >= n_out) continue;
            size_t t = t0 + tt;
            size_t pos = (size_t)qe.params[0] + t;
            float x0 = res[tt * R + rl], x1 = res[tt * R + rl + 1];
            const float* cs = qe.table + pos * qe.head_dim;
            if (row < qe.dim) {
                if (qe.bq) { x0 = x0 + qe.bq[row]; x1 = x1 + qe.bq[row + 1]; }
                int i = row % qe.head_dim;
                float c = cs[i], s = cs[i + 1];
                qe.q_out[t * qe.dim + row] = x0 * c - x1 * s;
                qe.q_out[t * qe.dim + row + 1] = x0 * s + x1 * c;
            } else if (row < qe.dim + qe.kv_dim) {
                int r = row - qe.dim;
                if (qe.bk) { x0 = x0 + qe.bk[r]; x1 = x1 + qe.bk[r + 1]; }
                int i = r % qe.head_dim;
                float c = cs[i], s = cs[i + 1];
                qe.k_cache[pos * qe.kv_dim + r] = x0 * c - x1 * s;
                qe.k_cache[pos * qe.kv_dim + r + 1] = x0 * s + x1 * c;
            } else {
                int r = row - qe.dim - qe.kv_dim;
                if (qe.bv) { x0 = x0 + qe.bv[r]; x1 = x1 + qe.bv[r + 1]; }
                qe.v_cache[pos * qe.kv_dim + r] = x0;
                qe.v_cache[pos * qe.kv_dim + r + 1] = x1;
            }
        }
    } else if (mode == MODE_SWIGLU) {
        // swiglu.cu's swiglu_f32 on the 32 outputs of this block, one warp per token.
        __syncthreads();
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
        int blk = bx;
        for (int tt = warp; tt < tcount; tt += n_warps) {
            size_t t = t0 + tt;
            float g = res[tt * R + lane], u = res[tt * R + 32 + lane];
            float s = silu_ref(g) * u;
            if (se.out) se.out[t * se.ffn + blk * 32 + lane] = s;
            quantize_block_warp(s, se.aq + t * se.ffn + blk * QK, se.ads + t * (se.ffn / QK) + blk);
        }
    }
}

#define MATVEC_Q_KERNEL(name, WT)                                                                          \
    extern "C" __global__ void name(const u8* qs, const u32* dm, const i8* aq, const float2* ads, float* out,   \
                                    float* tap, int n_in, int n_out, int out_stride, int mode, int n_tok,      \
                                    int rows_per_block, int tok_per_block, float* q_out, float* k_cache,       \
                                    float* v_cache, const float* table, const int* params, const float* bq,    \
                                    const float* bk, const float* bv, int dim, int kv_dim, int head_dim,       \
                                    float* sw_out, i8* sw_aq, float2* sw_ads, int ffn, const float* norm_x,     \
                                    const float* norm_w, float eps) {                                          \
        QkvEpi qe = {q_out, k_cache, v_cache, table, params, bq, bk, bv, dim, kv_dim, head_dim};              \
        SwigluEpi se = {sw_out, sw_aq, sw_ads, ffn};                                                          \
        NormIn ni = {norm_x, norm_w, eps};                                                                    \
        pdl_launch();                                                                                      \
        matvec_prefetch<WT>(qs, n_in, n_out, mode, rows_per_block, ffn, blockIdx.x);                        \
        pdl_wait();                                                                                        \
        matvec_q_block<WT>(qs, dm, aq, ads, out, tap, n_in, n_out, out_stride, mode, n_tok, rows_per_block,    \
                           tok_per_block, qe, se, ni, blockIdx.x, blockIdx.y);                             \
    }
MATVEC_Q_KERNEL(matvec_q4_1_q8_1, WT_Q4_1)
MATVEC_Q_KERNEL(matvec_q4_0_q8_0, WT_Q4_0)
MATVEC_Q_KERNEL(matvec_q8_0_q8_0, WT_Q8_0)

// ---------------------------------------------------------------------------------------------
// Tensor-core variant for many tokens (prefill): the same numbers through int8 MMA.
//
// Each 32-element block's integer dot product is exact however it is computed, so one
// mma.sync.m16n8k32 (s8 x s8 -> s32) yields the sumi of 16 rows x 8 tokens for block b at once.
// Each thread then owns 2 rows x 2 tokens of that tile and adds the block's float terms in
// block order, `acc += (d_w * d_a) * sumi` and (Q4_1) `summs += m_w * s_a`, ending with
// `acc + summs`: the CPU's sequence for every output, so results are bitwise those of
// matvec_q_block (and of the CPU backend) for any n_tok and chunking.
// Fragments (PTX ISA, m16n8k32 .s8): g = lane / 4, t = lane % 4; A regs 0..3 hold rows g, g+8,
// g, g+8 at k = 4t..4t+3, 4t..4t+3, 16+4t.., 16+4t..; B regs 0..1 hold column (token) g at
// k = 4t.. and 16+4t..; C regs 0..3 hold (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1).
// Q4_x byte j holds element j (low nibble) and j + 16 (high nibble), so a thread's A word for
// a row is bytes 4t..4t+3 of the block: low nibbles give k = 4t.., high nibbles k = 16+4t...
// Launch: grid (n_out / 16, ceil(n_tok / 32)), block 128 (warp w: tokens 32y + 8w .. + 8),
// no shared memory. n_out % 16 == 0. Modes: MODE_STORE and MODE_ADD (with tap) only.

__device__ __forceinline__ void mma_s8_16x8x32(int (&c)[4], const u32 (&a)[4], const u32 (&b)[2]) {
    c[0] = c[1] = c[2] = c[3] = 0;
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <int WT>
__device__ __forceinline__ void mma_a_fragment(const u8* __restrict__ qs, size_t blk_a, size_t blk_b, int t,
                                               u32 (&a)[4]) {
    if (WT == WT_Q8_0) {
        const u8* pa = qs + blk_a * 32 + 4 * t;
        const u8* pb = qs + blk_b * 32 + 4 * t;
        a[0] = *(const u32*)pa;
        a[1] = *(const u32*)pb;
        a[2] = *(const u32*)(pa + 16);
        a[3] = *(const u32*)(pb + 16);
    } else {
        const u32 m4 = 0x0F0F0F0Fu;
        u32 wa = *(const u32*)(qs + blk_a * 16 + 4 * t);
        u32 wb = *(const u32*)(qs + blk_b * 16 + 4 * t);
        a[0] = wa & m4;
        a[1] = wb & m4;
        a[2] = (wa >> 4) & m4;
        a[3] = (wb >> 4) & m4;
        if (WT == WT_Q4_0) {
            // q - 8 per byte (exact: the same integer sum as sum q a - 8 sum a).
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = __vsub4(a[i], 0x08080808u);
        }
    }
}

template <int WT>
__device__ __forceinline__ void matvec_mma(const u8* __restrict__ qs, const u32* __restrict__ dm,
                                           const i8* __restrict__ aq, const float2* __restrict__ ads, float* out,
                                           float* tap, int n_in, int n_out, int out_stride, int mode, int n_tok) {
    pdl_launch();
    pdl_wait();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int nb = n_in / QK;
    const int row_a = blockIdx.x * 16 + g, row_b = row_a + 8;
    const int tok0 = blockIdx.y * 32 + warp * 8;
    if (tok0 >= n_tok) return;  // whole warps
    const int tok_frag = tok0 + g;                       // B column this thread loads
    const int tok_c0 = tok0 + 2 * t, tok_c1 = tok_c0 + 1;  // C columns this thread owns
    const bool has_frag = tok_frag < n_tok, has_c0 = tok_c0 < n_tok, has_c1 = tok_c1 < n_tok;
    const i8* arow = aq + (size_t)(has_frag ? tok_frag : tok0) * n_in;
    const float2* ads0 = ads + (size_t)(has_c0 ? tok_c0 : tok0) * nb;
    const float2* ads1 = ads + (size_t)(has_c1 ? tok_c1 : tok0) * nb;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, summs[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 2
    for (int b = 0; b < nb; b++) {
        u32 a[4], bf[2];
        mma_a_fragment<WT>(qs, (size_t)row_a * nb + b, (size_t)row_b * nb + b, t, a);
        if (has_frag) {
            bf[0] = *(const u32*)(arow + b * QK + 4 * t);
            bf[1] = *(const u32*)(arow + b * QK + 16 + 4 * t);
        } else {
            bf[0] = bf[1] = 0;
        }
        u32 dma = dm[(size_t)row_a * nb + b], dmb = dm[(size_t)row_b * nb + b];
        float2 da0 = ads0[b], da1 = ads1[b];
        int c[4];
        mma_s8_16x8x32(c, a, bf);
        float d_a = h2f((u16)(dma & 0xffffu)), d_b = h2f((u16)(dmb & 0xffffu));
        acc[0] += (d_a * da0.x) * (float)c[0];
        acc[1] += (d_a * da1.x) * (float)c[1];
        acc[2] += (d_b * da0.x) * (float)c[2];
        acc[3] += (d_b * da1.x) * (float)c[3];
        if (WT == WT_Q4_1) {
            float m_a = h2f((u16)(dma >> 16)), m_b = h2f((u16)(dmb >> 16));
            summs[0] += m_a * da0.y;
            summs[1] += m_a * da1.y;
            summs[2] += m_b * da0.y;
            summs[3] += m_b * da1.y;
        }
    }
    const int rows[4] = {row_a, row_a, row_b, row_b};
    const int toks[4] = {tok_c0, tok_c1, tok_c0, tok_c1};
    const bool ok[4] = {has_c0, has_c1, has_c0, has_c1};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (!ok[i] || rows[i] >= n_out) continue;
        float v = WT == WT_Q4_1 ? acc[i] + summs[i] : acc[i];
        store_out(out, tap, (size_t)toks[i] * out_stride + rows[i], v, mode);
    }
}

#define MATVEC_MMA_KERNEL(name, WT)                                                                        \
    extern "C" __global__ void name(const u8* qs, const u32* dm, const i8* aq, const float2* ads, float* out,   \
                                    float* tap, int n_in, int n_out, int out_stride, int mode, int n_tok) {    \
        matvec_mma<WT>(qs, dm, aq, ads, out, tap, n_in, n_out, out_stride, mode, n_tok);                    \
    }
MATVEC_MMA_KERNEL(matvec_mma_q4_1_q8_1, WT_Q4_1)
MATVEC_MMA_KERNEL(matvec_mma_q4_0_q8_0, WT_Q4_0)
MATVEC_MMA_KERNEL(matvec_mma_q8_0_q8_0, WT_Q8_0)

// Float weights: w (n_out, n_in) raw from the GGUF file (f16 / bf16 bits, or f32).
enum { FT_F16 = 0, FT_BF16 = 1, FT_F32 = 2 };

template <int FT>
__device__ __forceinline__ void matvec_float(const void* __restrict__ w, const float* __restrict__ x, float* out,
                                             float* tap, int n_in, int n_out, int out_stride, int mode) {
    pdl_launch();
    pdl_wait();
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
