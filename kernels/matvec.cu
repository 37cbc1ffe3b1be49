// matvec.cu: matches backend::cpu::simd::matmul for quantized weights (vec_dot_q4_1_q8_1,
// vec_dot_q4_0_q8_0, vec_dot_q8_0_q8_0) and for float weights (vec_dot_f16, vec_dot_bf16,
// vec_dot_f32): out (n_tok, n_out) = W (n_out, n_in) . x (n_tok, n_in)^T.
//
// Weights are repacked at upload (backend::cuda::weights) without changing any value:
//   qs: (n_out, n_in/32) blocks of 16 bytes of nibbles (Q4_0/Q4_1) or 32 int8 (Q8_0),
//   dm: (n_out, n_in/32) u32 = f16 d in the low half, f16 m (Q4_1 only) in the high half.
// Activations arrive quantized by rmsnorm_q8 / quantize_q8_1 / attention / swiglu_q8:
//   aq (n_tok, n_in) int8, ads (n_tok, n_in/32) float2 (d, s).
//
// Numerics, as ggml's AVX2 vec_dot kernels and the CPU spec: each 32-block's integer products
// are summed in eight lanes of four adjacent elements (lane k: elements 4k..4k+3, one dp4a),
// each lane accumulated over the blocks in order as acc_k = fmaf(d_w * d_a, lane_sum, acc_k),
// the lanes reduced as hsum_float_8; Q4_1 adds `summs`, its minimum terms summed in block order
// with fmaf(m_w, s_a, summs). Each output is bitwise the CPU's for any n_tok and chunking.
//
// Launch (quantized): grid (ceil(n_out/R), ceil(n_tok/TT)), block 128, dynamic shared memory
// as documented at matvec_q_block. Eight threads compute one (token, row) output, thread k its
// lane k over all blocks; the eight lanes meet in a shuffle tree that is hsum_float_8's.
//
// Epilogue `mode`: 0 stores out[t*out_stride + r] = v; 1 adds to it (the residual connection,
// ops::add: x = x + v). When `tap` is not null the stored value is also written to
// tap[t*out_stride + r] (the per-layer trace buffer). 2 (Q|K|V stacked) applies rope.cu's
// rope_store_kv arithmetic to the results; 3 (gate|up stacked) applies swiglu.cu's swiglu_f32
// and quantizes, so the decode step needs no separate launch for either.
//
// Launch (float weights): grid (ceil(n_out/128), n_tok), block 128, one thread per output doing
// the CPU's dot product over n_in (F32: ggml_vec_dot_f32's lanes; F16/BF16: sequential, as the
// CPU); x is f32 (rounded to f16/bf16 here as the CPU rounds its activation row). Slow, and only
// used for models with float matrices.

enum { WT_Q4_0 = 0, WT_Q4_1 = 1, WT_Q8_0 = 2 };
enum { MODE_STORE = 0, MODE_ADD = 1, MODE_QKV = 2, MODE_SWIGLU = 3 };

__device__ __forceinline__ void store_out(float* out, float* tap, size_t idx, float v, int mode) {
    if (mode == MODE_ADD) v = out[idx] + v;
    out[idx] = v;
    if (tap) tap[idx] = v;
}

// Epilogue arguments of the fused modes (null / 0 when unused).
// `rope_row` (one-position blocks only, else null): the table's row for the position, already
// in shared memory (the persistent kernel loads it once per step).
struct QkvEpi {
    float* q_out; float* k_cache; float* v_cache; const float* table; const int* params;
    const float* bq; const float* bk; const float* bv; int dim; int kv_dim; int head_dim;
    const float* rope_row;
};
struct SwigluEpi { float* out; i8* aq; float2* ads; int ffn; };
// Fused input norm: when `w` is not null the block normalizes rows of `x` itself (rmsnorm.cu's
// rmsnorm_q8 arithmetic) into shared memory instead of reading aq/ads; `g8` (one-token blocks
// only) takes common.cuh's rmsnorm_q8_g8, the same values with eight threads per block. With
// `x` and no `w` the block quantizes the f32 rows of `x` itself (quantize_row_q8_1, by
// common.cuh's quantize_q8_g8): the input of a split SwiGLU phase (decode.cu's DEC_SPLIT_D).
struct NormIn { const float* x; const float* w; float eps; int g8; };
// Weights of this block's rows already in shared memory (decode.cu's staging), or null: `qs`
// and `dm` hold the item's rows from local row 0 (MODE_SWIGLU: the 32 gate rows, then the 32
// up rows), in the global arrays' layout.
struct Staged { const u8* qs; const u32* dm; };
// Flag-in-data output (decode.cu's DEC_LL), or p null: the block's MODE_ADD rows and its split
// SwiGLU values (H < 32) go out as st_ll words of epoch `e` into p (indexed by row / SwiGLU
// element) instead of plain floats; MODE_ADD adds them to the residual instead of reading
// `out`, which it leaves untouched: the flag-in-data word prev_ll[row] once it carries epoch
// e_prev (its load issued before the dot product, awaited after it), or without prev_ll the
// float prev[row] (the embedding, before the first layer's words exist). MODE_QKV (DEC_LL_QKV)
// stores q and the cache rows as before and also each stacked row's final value into p[row].
// The values are the same.
struct LLOut { u64* p; const float* prev; const u64* prev_ll; u32 e; u32 e_prev; };

// The four quants of lane k (elements 4k..4k+3) of weight block `blk`, as signed bytes in one
// word: Q8_0 word k of the block; Q4_x byte j holds element j (low nibble) and j + 16 (high),
// so lane k < 4 is the low nibbles of word k and lane k >= 4 the high nibbles of word k - 4;
// Q4_0 is offset by 8 (per-byte subtraction, exact).
template <int WT>
__device__ __forceinline__ int lane_quants(const u8* __restrict__ qs, size_t blk, int k) {
    if (WT == WT_Q8_0) return ((const int*)(qs + blk * 32))[k];
    u32 w = ((const u32*)(qs + blk * 16))[k & 3];
    w = (k < 4 ? w : w >> 4) & 0x0F0F0F0Fu;
    if (WT == WT_Q4_0) w = __vsub4(w, 0x08080808u);
    return (int)w;
}

// Grid (n_out / rows_per_block, ceil(n_tok / tok_per_block)); see the header for the numerics.
// Block x covers `rows_per_block` output rows: rows x*R + rl, except in MODE_SWIGLU, where
// R = 2H covers gate rows x*H + (0..H) and up rows ffn + x*H + (0..H) (swiglu_row): H = 32
// quantizes the block's 32 SwiGLU outputs here (one Q8_1 block); H < 32 (the persistent
// kernel's DEC_SPLIT_D, H dividing 32) only stores them as f32 in se.out, and the consumer
// quantizes the row (NormIn with x and no w). Block y covers tokens y*TT .. y*TT + TT. Dynamic
// shared memory: R * TT floats of results, then, with a fused norm or quantization, or TT == 1,
// 16-byte aligned, TT * n_in int8 and TT * n_in/32 float2 of staged activations.
// n_in % 32 == 0. Block size 128 (the fused norm's reduction tree assumes it).
__device__ __forceinline__ int swiglu_row(int rl, int R, int ffn, int bx) {
    const int H = R / 2;
    return rl < H ? bx * H + rl : ffn + bx * H + rl - H;
}

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
        int row = mode == MODE_SWIGLU ? swiglu_row(rl, R, ffn, bx) : bx * R + rl;
        if (row < n_out) {
            size_t blk = (size_t)row * nb + b;
            const u8* p = qs + blk * (WT == WT_Q8_0 ? 32 : 16);
            asm volatile("prefetch.global.L2 [%0];" :: "l"(p));
        }
    }
}

// One lane (k) of one output: the lane's fused accumulation over all blocks and, for Q4_1, the
// minimum terms; loads for LANE_U blocks are issued before their arithmetic (more loads in
// flight per thread; the arithmetic and its order are the same for any LANE_U).
#define LANE_U 8
template <int WT>
__device__ __forceinline__ void lane_dot(const u8* __restrict__ qs, const u32* __restrict__ dm, const i8* arow,
                                         const float2* ads_row, int row, int nb, int k, float& acc, float& summs) {
    const size_t blk0 = (size_t)row * nb;
    int b = 0;
    for (; b + LANE_U <= nb; b += LANE_U) {
        int wq[LANE_U], av[LANE_U];
        u32 dmw[LANE_U];
        float2 da[LANE_U];
#pragma unroll
        for (int u = 0; u < LANE_U; u++) {
            wq[u] = lane_quants<WT>(qs, blk0 + b + u, k);
            dmw[u] = dm[blk0 + b + u];
            av[u] = ((const int*)(arow + (b + u) * QK))[k];
            da[u] = ads_row[b + u];
        }
#pragma unroll
        for (int u = 0; u < LANE_U; u++) {
            int sumi = __dp4a(wq[u], av[u], 0);
            acc = fmaf(h2f((u16)(dmw[u] & 0xffffu)) * da[u].x, (float)sumi, acc);
            if (WT == WT_Q4_1) summs = fmaf(h2f((u16)(dmw[u] >> 16)), da[u].y, summs);
        }
    }
    for (; b < nb; b++) {
        int sumi = __dp4a(lane_quants<WT>(qs, blk0 + b, k), ((const int*)(arow + b * QK))[k], 0);
        u32 dmw = dm[blk0 + b];
        float2 da = ads_row[b];
        acc = fmaf(h2f((u16)(dmw & 0xffffu)) * da.x, (float)sumi, acc);
        if (WT == WT_Q4_1) summs = fmaf(h2f((u16)(dmw >> 16)), da.y, summs);
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
                                               QkvEpi qe, SwigluEpi se, NormIn ni, int bx, int by,
                                               Staged st = Staged{0, 0}, LLOut lo = LLOut{0, 0, 0, 0u, 0u},
                                               u64* stamps = 0) {
    extern __shared__ float sh[];
    __syncthreads();
    const int R = rows_per_block;
    const int nb = n_in / QK;
    const int t0 = by * tok_per_block;
    const int tcount = min(tok_per_block, n_tok - t0);
    const int slots = R * tok_per_block;
    float* res = sh;  // [tt][rl]
    // Activation source: global rows t0.., or, for one-token blocks and fused norms, rows in
    // shared memory (normalized here, or copied with all loads in flight at once).
    const i8* a_base = aq + (size_t)t0 * n_in;
    const float2* ads_base = ads + (size_t)t0 * nb;
    // MODE_ADD: the residual of this thread's first output (lane 0 of its group of eight),
    // loaded before the input so that both loads are in flight together (the residual was
    // complete before this block started, like the input).
    const int total = tcount * R;
    float prev_first = 0.0f;
    if (mode == MODE_ADD && !lo.prev_ll && (threadIdx.x & 7) == 0) {
        const int sl = threadIdx.x >> 3, tt = sl / R, row = bx * R + (sl - tt * R);
        if (sl < total && row < n_out) prev_first = lo.p ? lo.prev[row] : out[(size_t)(t0 + tt) * out_stride + row];
    }
    if (ni.w || ni.x || tok_per_block == 1) {
        size_t off = ((size_t)slots * sizeof(float) + 15) & ~(size_t)15;
        i8* aq_s = (i8*)((char*)sh + off);
        float2* ads_s = (float2*)((char*)sh + off + (((size_t)tok_per_block * n_in + 15) & ~(size_t)15));
        if (ni.x && !ni.w) {
            for (int tt = 0; tt < tcount; tt++)
                quantize_q8_g8(ni.x + (size_t)(t0 + tt) * n_in, n_in, aq_s + tt * n_in, ads_s + tt * nb);
        } else if (ni.w) {
            if (ni.g8 && tcount == 1)
                rmsnorm_q8_g8(ni.x + (size_t)t0 * n_in, ni.w, n_in, ni.eps, aq_s, ads_s);
            else
                for (int tt = 0; tt < tcount; tt++)
                    rmsnorm_q8_regs(ni.x + (size_t)(t0 + tt) * n_in, ni.w, n_in, ni.eps, 0, 0, aq_s + tt * n_in,
                                    ads_s + tt * nb);
        } else {
            const int n16 = n_in / 16;
            for (int i = threadIdx.x; i < n16; i += blockDim.x) ((int4*)aq_s)[i] = ((const int4*)a_base)[i];
            for (int i = threadIdx.x; i < nb; i += blockDim.x) ads_s[i] = ads_base[i];
        }
        __syncthreads();
        a_base = aq_s;
        ads_base = ads_s;
    }
    // Profiling only (decode.cu's sub-phase stamps): input in shared memory, products done,
    // epilogue done, each after a __syncthreads (which only profiling adds).
    if (stamps && threadIdx.x == 0) stamps[0] = globaltimer();
    // Eight threads per (token, row) output; every thread runs the same number of rounds so the
    // shuffles of hsum8_shfl always have the whole warp.
    const int k = threadIdx.x & 7, grp = threadIdx.x >> 3, n_grp = blockDim.x >> 3;
    for (int base = 0; base < total; base += n_grp) {
        const int sl = base + grp;
        const int tt = sl / R, rl = sl - (sl / R) * R;
        const int row = mode == MODE_SWIGLU ? swiglu_row(rl, R, se.ffn, bx) : bx * R + rl;
        const bool active = sl < total && row < n_out;
        float acc = 0.0f, summs = 0.0f;
        // The residual this output is added to, loaded before the dot product (not after it).
        float prev = 0.0f;
        u64 prev_w = 0;
        if (mode == MODE_ADD && active && k == 0) {
            if (lo.prev_ll) prev_w = ld_ll(lo.prev_ll + row);
            else if (base == 0) prev = prev_first;
            else prev = lo.p ? lo.prev[row] : out[(size_t)(t0 + tt) * out_stride + row];
        }
        if (active) {
            if (st.qs)
                lane_dot<WT>(st.qs, st.dm, a_base + (size_t)tt * n_in, ads_base + (size_t)tt * nb, rl, nb, k, acc, summs);
            else
                lane_dot<WT>(qs, dm, a_base + (size_t)tt * n_in, ads_base + (size_t)tt * nb, row, nb, k, acc, summs);
        }
        float v = hsum8_shfl(acc, 0xffffffffu);
        if (WT == WT_Q4_1) v = v + summs;
        if (active && k == 0) {
            if (mode == MODE_ADD) {
                const size_t idx = (size_t)(t0 + tt) * out_stride + row;
                if (lo.prev_ll) prev = ll_await(lo.prev_ll + row, prev_w, lo.e_prev, 0);
                v = prev + v;  // ops::add: x = x + v
                if (lo.p) st_ll(lo.p + row, v, lo.e);
                else out[idx] = v;
                if (tap) tap[idx] = v;
            } else if (mode == MODE_STORE) {
                store_out(out, tap, (size_t)(t0 + tt) * out_stride + row, v, mode);
            } else {
                res[tt * R + rl] = v;
            }
        }
    }
    if (stamps) {
        __syncthreads();
        if (threadIdx.x == 0) stamps[1] = globaltimer();
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
            const float* cs = qe.rope_row ? qe.rope_row : qe.table + pos * qe.head_dim;
            float y0, y1;
            if (row < qe.dim) {
                if (qe.bq) { x0 = x0 + qe.bq[row]; x1 = x1 + qe.bq[row + 1]; }
                int i = row % qe.head_dim;
                float c = cs[i], s = cs[i + 1];
                y0 = fmaf(x0, c, -(x1 * s));
                y1 = fmaf(x0, s, x1 * c);
                qe.q_out[t * qe.dim + row] = y0;
                qe.q_out[t * qe.dim + row + 1] = y1;
            } else if (row < qe.dim + qe.kv_dim) {
                int r = row - qe.dim;
                if (qe.bk) { x0 = x0 + qe.bk[r]; x1 = x1 + qe.bk[r + 1]; }
                int i = r % qe.head_dim;
                float c = cs[i], s = cs[i + 1];
                y0 = fmaf(x0, c, -(x1 * s));
                y1 = fmaf(x0, s, x1 * c);
                qe.k_cache[pos * qe.kv_dim + r] = y0;
                qe.k_cache[pos * qe.kv_dim + r + 1] = y1;
            } else {
                int r = row - qe.dim - qe.kv_dim;
                if (qe.bv) { x0 = x0 + qe.bv[r]; x1 = x1 + qe.bv[r + 1]; }
                y0 = x0;
                y1 = x1;
                qe.v_cache[pos * qe.kv_dim + r] = x0;
                qe.v_cache[pos * qe.kv_dim + r + 1] = x1;
            }
            // decode.cu's DEC_LL_QKV (one position): the stacked row also as flag-in-data words.
            if (lo.p) {
                st_ll(lo.p + row, y0, lo.e);
                st_ll(lo.p + row + 1, y1, lo.e);
            }
        }
    } else if (mode == MODE_SWIGLU && R < 64) {
        // swiglu.cu's swiglu_f32 on the H outputs of this block, stored as f32 only.
        __syncthreads();
        const int H = R / 2;
        for (int idx = threadIdx.x; idx < tcount * H; idx += blockDim.x) {
            const int tt = idx / H, j = idx - tt * H;
            const size_t t = t0 + tt;
            const float v = swiglu_elem(res[tt * R + j], res[tt * R + H + j], bx * H + j, se.ffn);
            if (lo.p) st_ll(lo.p + bx * H + j, v, lo.e);
            else se.out[t * se.ffn + bx * H + j] = v;
        }
    } else if (mode == MODE_SWIGLU) {
        // swiglu.cu's swiglu_f32 on the 32 outputs of this block, one warp per token.
        __syncthreads();
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
        int blk = bx;
        for (int tt = warp; tt < tcount; tt += n_warps) {
            size_t t = t0 + tt;
            float g = res[tt * R + lane], u = res[tt * R + 32 + lane];
            float s = swiglu_elem(g, u, blk * 32 + lane, se.ffn);
            if (se.out) se.out[t * se.ffn + blk * 32 + lane] = s;
            quantize_block_warp(s, se.aq + t * se.ffn + blk * QK, se.ads + t * (se.ffn / QK) + blk);
        }
    }
    if (stamps) {
        __syncthreads();
        if (threadIdx.x == 0) stamps[2] = globaltimer();
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
        QkvEpi qe = {q_out, k_cache, v_cache, table, params, bq, bk, bv, dim, kv_dim, head_dim, 0};           \
        SwigluEpi se = {sw_out, sw_aq, sw_ads, ffn};                                                          \
        NormIn ni = {norm_x, norm_w, eps, 0};                                                                 \
        pdl_launch();                                                                                      \
        matvec_prefetch<WT>(qs, n_in, n_out, mode, rows_per_block, ffn, blockIdx.x);                        \
        pdl_wait();                                                                                        \
        matvec_q_block<WT>(qs, dm, aq, ads, out, tap, n_in, n_out, out_stride, mode, n_tok, rows_per_block,    \
                           tok_per_block, qe, se, ni, blockIdx.x, blockIdx.y);                             \
    }
MATVEC_Q_KERNEL(matvec_q4_1_q8_1, WT_Q4_1)
MATVEC_Q_KERNEL(matvec_q4_0_q8_0, WT_Q4_0)
MATVEC_Q_KERNEL(matvec_q8_0_q8_0, WT_Q8_0)

// One-token products with no fused epilogue or norm (MODE_STORE / MODE_ADD; the logits above
// all): each output is the same lane_dot, hsum8_shfl and epilogue as matvec_q_block's, so the
// same bits; only the layout is for bandwidth. Sixteen rows per block of 128 threads (eight per
// output, every thread busy), the activation row read straight from global memory (every block
// reads the same few hundred bytes: cache hits), no shared memory and no barrier, so few
// registers and many resident blocks keep enough weight loads in flight (the general kernel
// above, 136 registers, fits three blocks per SM and reads the 32 MB output matrix at ~0.65
// TB/s). Launch: grid ceil(n_out / 16), block 128; out and tap indexed by row (n_tok = 1).
template <int WT>
__device__ __forceinline__ void matvec_one(const u8* __restrict__ qs, const u32* __restrict__ dm,
                                           const i8* __restrict__ aq, const float2* __restrict__ ads, float* out,
                                           float* tap, int n_in, int n_out, int mode) {
    pdl_launch();
    pdl_wait();
    const int k = threadIdx.x & 7, row = blockIdx.x * 16 + (threadIdx.x >> 3);
    const bool active = row < n_out;
    float acc = 0.0f, summs = 0.0f, prev = 0.0f;
    if (mode == MODE_ADD && active && k == 0) prev = out[row];
    if (active) lane_dot<WT>(qs, dm, aq, ads, row, n_in / QK, k, acc, summs);
    float v = hsum8_shfl(acc, 0xffffffffu);
    if (WT == WT_Q4_1) v = v + summs;
    if (active && k == 0) {
        if (mode == MODE_ADD) v = prev + v;  // ops::add: x = x + v
        out[row] = v;
        if (tap) tap[row] = v;
    }
}

#define MATVEC_ONE_KERNEL(name, WT)                                                                        \
    extern "C" __global__ void name(const u8* qs, const u32* dm, const i8* aq, const float2* ads, float* out,   \
                                    float* tap, int n_in, int n_out, int mode) {                               \
        matvec_one<WT>(qs, dm, aq, ads, out, tap, n_in, n_out, mode);                                       \
    }
MATVEC_ONE_KERNEL(matvec_one_q4_1_q8_1, WT_Q4_1)
MATVEC_ONE_KERNEL(matvec_one_q4_0_q8_0, WT_Q4_0)
MATVEC_ONE_KERNEL(matvec_one_q8_0_q8_0, WT_Q8_0)

// ---------------------------------------------------------------------------------------------
// Tensor-core variant for many tokens (prefill): the same numbers through int8 MMA.
//
// Every 32-block's eight lane sums must stay separate (each lane is accumulated apart over the
// blocks, as the file header says), so each mma gives lane sums, not block sums: mma.m16n8k16
// (s8 x s8 -> s32) multiplies 16 rows by one half block (16 elements, four lanes) against a B
// operand whose eight columns are two tokens x the four lanes of that half, each
// column zero outside its lane's four elements. Two such mmas (the low and the high half)
// give 16 rows x 2 tokens x 8 lanes: a quarter of the multiplies count, twice the m16n8k32
// form with one token per mma. The accumulator starts at 0x4B400000 (1.5 * 2^23 as a float's
// bits), so each lane sum s (|s| <= 65,536 < 2^22) comes out as the bits of 12582912 + s and
// one float subtraction gives (float)s exactly: no integer-to-float conversion (a quarter-rate
// instruction) per lane.
//
// Fragments (PTX ISA, integer m16n8k16): A a0 = row g, k 4t..4t+3; a1 = row g + 8, same k;
// B b0 = k 4t..4t+3 of column g; C c0, c1 = row g, columns 2t, 2t + 1; c2, c3 = row g + 8.
// Q4_x byte j holds element j (low nibble) and j + 16 (high nibble), so a thread's A words are
// bytes 4t..4t+3 of its rows' blocks: the low nibbles for the low half, the high for the high.
// Column c of B is token c >> 2, lane (c & 3) of the half: thread (g, t) feeds token g >> 2's
// word at byte 4t of the half when t == (g & 3), else zero. Thread t receives token t >> 1's
// lanes 2(t & 1) and 2(t & 1) + 1 of each half, so a thread pair (t, t ^ 1) holds one (row,
// token)'s eight lanes: hsum_float_8 is two local adds, two shuffles and a final add.
//
// Launch: grid (n_out / 16, ceil(n_tok / (8 * NP))), block 128: warp w of block (x, y) computes
// rows 16x..16x+15 for tokens (4y + w) * 2NP .. + 2NP (NP token pairs). No shared memory;
// the four warps of a block share their rows' weights through L1. Each thread keeps the next
// PF blocks' operands in flight (a ring of registers) while it works on the current one.
// n_out % 16 == 0. Modes: MODE_STORE, MODE_ADD (with tap), MODE_QKV (NORM pairs) and MODE_SWIGLU
// (grid x = ffn / 32: block x is SwiGLU block x, its four warps its gate and up rows).

__device__ __forceinline__ void mma_s8_16x8x16(int (&c)[4], u32 a0, u32 a1, u32 b0) {
    asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(b0));
}

// The accumulator's starting bits and their float value (see above).
#define MMA_BIAS_BITS 0x4B400000
#define MMA_BIAS_F 12582912.0f
__device__ __forceinline__ float mma_lane(int c) { return __int_as_float(c) - MMA_BIAS_F; }

// One thread's operands of one weight block: its A words of rows g and g + 8 (Q4_x: one word
// each, both halves in its nibbles; Q8_0: the low and high half words), their scale words, and
// per token pair the fed B words (low, high half) and the received token's (d, s).
template <int WT, int NP>
struct MmaStage {
    u32 wa, wb, wa2, wb2, dma, dmb;
    u32 lo[NP], hi[NP];
    float2 da[NP];
};

template <int WT, int NP>
__device__ __forceinline__ void mma_stage_load(MmaStage<WT, NP>& st, const u8* __restrict__ qs,
                                               const u32* __restrict__ dm, const i8* const (&feed)[NP],
                                               const float2* const (&recv)[NP], size_t ia, size_t ib, int b,
                                               int t) {
    if (WT == WT_Q8_0) {
        st.wa = *(const u32*)(qs + ia * 32 + 4 * t);
        st.wb = *(const u32*)(qs + ib * 32 + 4 * t);
        st.wa2 = *(const u32*)(qs + ia * 32 + 16 + 4 * t);
        st.wb2 = *(const u32*)(qs + ib * 32 + 16 + 4 * t);
    } else {
        st.wa = *(const u32*)(qs + ia * 16 + 4 * t);
        st.wb = *(const u32*)(qs + ib * 16 + 4 * t);
        st.wa2 = st.wb2 = 0u;
    }
    st.dma = dm[ia];
    st.dmb = dm[ib];
#pragma unroll
    for (int j = 0; j < NP; j++) {
        const i8* f = feed[j];
        st.lo[j] = f ? *(const u32*)(f + b * QK) : 0u;
        st.hi[j] = f ? *(const u32*)(f + b * QK + 16) : 0u;
        st.da[j] = recv[j] ? recv[j][b] : make_float2(0.0f, 0.0f);
    }
}

// A thread's A operand words of one weight block (rows g and g + 8) from its raw words: Q8_0
// the low and high half words as they are; Q4_x one word per row holding both halves'
// nibbles (low nibbles: the low half), Q4_0 offset by 8 (per-byte subtraction, exact).
template <int WT>
__device__ __forceinline__ void mma_a_words(u32 wa, u32 wb, u32 wa2, u32 wb2, u32& a0, u32& a1, u32& a2, u32& a3) {
    if (WT == WT_Q8_0) {
        a0 = wa; a1 = wb; a2 = wa2; a3 = wb2;
    } else {
        const u32 m4 = 0x0F0F0F0Fu;
        a0 = wa & m4; a1 = wb & m4; a2 = (wa >> 4) & m4; a3 = (wb >> 4) & m4;
        if (WT == WT_Q4_0) {
            a0 = __vsub4(a0, 0x08080808u); a1 = __vsub4(a1, 0x08080808u);
            a2 = __vsub4(a2, 0x08080808u); a3 = __vsub4(a3, 0x08080808u);
        }
    }
}

// One weight block against one token pair: the two half-block mmas, then each lane's fmaf
// into acc[r][i] (row a / b; lanes q, q + 1, q + 4, q + 5, q = 2(t & 1)) and, for Q4_1, the
// minimum terms. dma / dmb: the rows' scale words; lo / hi: the fed B words; da: the
// received token's (d, s).
template <int WT>
__device__ __forceinline__ void mma_pair(float (&acc)[2][4], float (&summs)[2], u32 a0, u32 a1, u32 a2, u32 a3,
                                         u32 dma, u32 dmb, u32 lo_w, u32 hi_w, float2 da) {
    int lo[4] = {MMA_BIAS_BITS, MMA_BIAS_BITS, MMA_BIAS_BITS, MMA_BIAS_BITS};
    int hi[4] = {MMA_BIAS_BITS, MMA_BIAS_BITS, MMA_BIAS_BITS, MMA_BIAS_BITS};
    mma_s8_16x8x16(lo, a0, a1, lo_w);
    mma_s8_16x8x16(hi, a2, a3, hi_w);
    const float sa = h2f((u16)(dma & 0xffffu)) * da.x, sb = h2f((u16)(dmb & 0xffffu)) * da.x;
    acc[0][0] = fmaf(sa, mma_lane(lo[0]), acc[0][0]);
    acc[0][1] = fmaf(sa, mma_lane(lo[1]), acc[0][1]);
    acc[0][2] = fmaf(sa, mma_lane(hi[0]), acc[0][2]);
    acc[0][3] = fmaf(sa, mma_lane(hi[1]), acc[0][3]);
    acc[1][0] = fmaf(sb, mma_lane(lo[2]), acc[1][0]);
    acc[1][1] = fmaf(sb, mma_lane(lo[3]), acc[1][1]);
    acc[1][2] = fmaf(sb, mma_lane(hi[2]), acc[1][2]);
    acc[1][3] = fmaf(sb, mma_lane(hi[3]), acc[1][3]);
    if (WT == WT_Q4_1) {
        summs[0] = fmaf(h2f((u16)(dma >> 16)), da.y, summs[0]);
        summs[1] = fmaf(h2f((u16)(dmb >> 16)), da.y, summs[1]);
    }
}

// A pair's two outputs (rows a and b) from its lanes: hsum_float_8, ((x0 + x4) + (x2 + x6)) +
// ((x1 + x5) + (x3 + x7)), over the thread pair (t, t ^ 1), then summs. Every thread of the
// warp must call it (shuffles); both threads of a pair get the same values.
template <int WT>
__device__ __forceinline__ void mma_values(const float (&acc)[2][4], const float (&summs)[2], float (&v)[2]) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const float u0 = acc[r][0] + acc[r][2], u1 = acc[r][1] + acc[r][3];
        const float s0 = u0 + __shfl_xor_sync(0xffffffffu, u0, 1);
        const float s1 = u1 + __shfl_xor_sync(0xffffffffu, u1, 1);
        v[r] = s0 + s1;
        if (WT == WT_Q4_1) v[r] = v[r] + summs[r];
    }
}

// MODE_QKV for one output: rope_store_kv's arithmetic (the fused one-position epilogue's in
// matvec_q_block) on row `row` of token t, from its raw value `own` and that of row ^ 1
// (`partner`, the other half of its NORM pair): each thread forms its pair's two biased
// inputs and stores its own row's rotated value.
__device__ __forceinline__ void qkv_store_row(const QkvEpi& qe, int row, size_t t, float own, float partner) {
    const bool odd = row & 1;
    const int re = row - (int)odd;
    const size_t pos = (size_t)qe.params[0] + t;
    float x0 = odd ? partner : own, x1 = odd ? own : partner;
    const float* cs = qe.table + pos * qe.head_dim;
    if (re < qe.dim) {
        if (qe.bq) { x0 = x0 + qe.bq[re]; x1 = x1 + qe.bq[re + 1]; }
        const int i = re % qe.head_dim;
        const float c = cs[i], s = cs[i + 1];
        qe.q_out[t * qe.dim + row] = odd ? fmaf(x0, s, x1 * c) : fmaf(x0, c, -(x1 * s));
    } else if (re < qe.dim + qe.kv_dim) {
        const int r = re - qe.dim;
        if (qe.bk) { x0 = x0 + qe.bk[r]; x1 = x1 + qe.bk[r + 1]; }
        const int i = r % qe.head_dim;
        const float c = cs[i], s = cs[i + 1];
        qe.k_cache[pos * qe.kv_dim + r + (int)odd] = odd ? fmaf(x0, s, x1 * c) : fmaf(x0, c, -(x1 * s));
    } else {
        const int r = re - qe.dim - qe.kv_dim;
        if (qe.bv) { x0 = x0 + qe.bv[r]; x1 = x1 + qe.bv[r + 1]; }
        qe.v_cache[pos * qe.kv_dim + r + (int)odd] = odd ? x1 : x0;
    }
}

// A pair's two outputs (rows a and b, token rtok): MODE_STORE / MODE_ADD write them to `out`,
// MODE_QKV takes each row's NORM partner from the thread four lanes over (row g ^ 1; a warp's
// 16 rows start at a multiple of 16, so pairs never straddle warps) and applies qkv_store_row.
// Every thread of the warp must call it (shuffles); threads with even t store.
template <int WT>
__device__ __forceinline__ void mma_store(const float (&acc)[2][4], const float (&summs)[2], float* out, float* tap,
                                          int out_stride, int mode, int n_tok, int n_out, int rtok, int row_a,
                                          int row_b, int t, const QkvEpi& qe) {
    float v[2];
    mma_values<WT>(acc, summs, v);
    if (mode == MODE_QKV) {
        const float pa = __shfl_xor_sync(0xffffffffu, v[0], 4), pb = __shfl_xor_sync(0xffffffffu, v[1], 4);
        if ((t & 1) == 0 && rtok < n_tok) {
            if (row_a < n_out) qkv_store_row(qe, row_a, rtok, v[0], pa);
            if (row_b < n_out) qkv_store_row(qe, row_b, rtok, v[1], pb);
        }
        return;
    }
    if ((t & 1) == 0 && rtok < n_tok) {
        const size_t o = (size_t)rtok * out_stride;
        if (row_a < n_out) store_out(out, tap, o + row_a, v[0], mode);
        if (row_b < n_out) store_out(out, tap, o + row_b, v[1], mode);
    }
}

// MODE_SWIGLU's second half: `res` holds n tokens x 64 values (the block's 32 gate rows, then
// its 32 up rows, of SwiGLU block `blk`); warp w of `n_warps` takes tokens w, w + n_warps, ..:
// swiglu_f32's element and quantize_row_q8_1's block, as matvec_q_block's fused epilogue.
__device__ __forceinline__ void swiglu_rows(const float* res, const SwigluEpi& se, int blk, int tok0, int n,
                                            int n_warps) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int tt = warp; tt < n; tt += n_warps) {
        const size_t t = tok0 + tt;
        const float s = swiglu_elem(res[tt * 64 + lane], res[tt * 64 + 32 + lane], blk * 32 + lane, se.ffn);
        if (se.out) se.out[t * se.ffn + blk * 32 + lane] = s;
        quantize_block_warp(s, se.aq + t * se.ffn + blk * QK, se.ads + t * (se.ffn / QK) + blk);
    }
}

// A pair's two outputs into a MODE_SWIGLU block's result rows (see swiglu_rows): columns ca and
// ca + 8, token row rt (rtok minus the block's first token).
template <int WT>
__device__ __forceinline__ void mma_store_res(const float (&acc)[2][4], const float (&summs)[2], float* res, int rt,
                                              int ca, int t) {
    float v[2];
    mma_values<WT>(acc, summs, v);
    if ((t & 1) == 0) {
        res[rt * 64 + ca] = v[0];
        res[rt * 64 + ca + 8] = v[1];
    }
}

// Every token pair's lane sums and minimum terms at zero.
template <int NP>
__device__ __forceinline__ void mma_zero(float (&acc)[NP][2][4], float (&summs)[NP][2]) {
#pragma unroll
    for (int j = 0; j < NP; j++) {
#pragma unroll
        for (int i = 0; i < 4; i++) acc[j][0][i] = acc[j][1][i] = 0.0f;
        summs[j][0] = summs[j][1] = 0.0f;
    }
}

template <int WT, int NP, int PF>
__device__ __forceinline__ void matvec_mma(const u8* __restrict__ qs, const u32* __restrict__ dm,
                                           const i8* __restrict__ aq, const float2* __restrict__ ads, float* out,
                                           float* tap, int n_in, int n_out, int out_stride, int mode, int n_tok,
                                           const QkvEpi& qe, const SwigluEpi& se) {
    pdl_launch();
    pdl_wait();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int nb = n_in / QK;
    // MODE_SWIGLU: block x is SwiGLU block x (gate rows 32x.., up rows ffn + 32x..), warp w its
    // 16 rows (w >> 1) * ffn + 32x + 16 (w & 1), every warp the block's 2NP tokens.
    const bool sw = mode == MODE_SWIGLU;
    const int row_a = (sw ? (warp >> 1) * se.ffn + blockIdx.x * 32 + (warp & 1) * 16 : blockIdx.x * 16) + g;
    const int row_b = row_a + 8;
    const int tok0 = (sw ? blockIdx.y : blockIdx.y * 4 + warp) * (2 * NP);
    if (tok0 >= n_tok) return;  // whole warps (MODE_SWIGLU: the whole block)
    // Pair j: the token this thread feeds (null: it feeds zeros) and the one it receives.
    const i8* feed[NP];
    const float2* recv[NP];
    int rtok[NP];
#pragma unroll
    for (int j = 0; j < NP; j++) {
        const int ft = tok0 + 2 * j + (g >> 2);
        feed[j] = ((g & 3) == t && ft < n_tok) ? aq + (size_t)ft * n_in + 4 * t : nullptr;
        rtok[j] = tok0 + 2 * j + (t >> 1);
        recv[j] = rtok[j] < n_tok ? ads + (size_t)rtok[j] * nb : nullptr;
    }
    float acc[NP][2][4], summs[NP][2];
    mma_zero<NP>(acc, summs);
    const size_t ra = (size_t)row_a * nb, rb = (size_t)row_b * nb;
    MmaStage<WT, NP> st[PF];
#pragma unroll
    for (int s = 0; s < PF; s++)
        if (s < nb) mma_stage_load<WT, NP>(st[s], qs, dm, feed, recv, ra + s, rb + s, s, t);
    for (int b0 = 0; b0 < nb; b0 += PF) {
#pragma unroll
        for (int s = 0; s < PF; s++) {
            const int b = b0 + s;
            if (b < nb) {  // uniform
                const MmaStage<WT, NP>& c = st[s];
                u32 a0, a1, a2, a3;
                mma_a_words<WT>(c.wa, c.wb, c.wa2, c.wb2, a0, a1, a2, a3);
#pragma unroll
                for (int j = 0; j < NP; j++)
                    if (tok0 + 2 * j < n_tok)  // warp-uniform
                        mma_pair<WT>(acc[j], summs[j], a0, a1, a2, a3, c.dma, c.dmb, c.lo[j], c.hi[j], c.da[j]);
                if (b + PF < nb) mma_stage_load<WT, NP>(st[s], qs, dm, feed, recv, ra + b + PF, rb + b + PF, b + PF, t);
            }
        }
    }
    if (sw) {
        __shared__ float res[8 * 64];  // 2NP <= 8 tokens x 64 rows
#pragma unroll
        for (int j = 0; j < NP; j++)
            if (tok0 + 2 * j < n_tok)  // block-uniform
                mma_store_res<WT>(acc[j], summs[j], res, 2 * j + (t >> 1), (warp >> 1) * 32 + (warp & 1) * 16 + g, t);
        __syncthreads();
        swiglu_rows(res, se, blockIdx.x, tok0, min(2 * NP, n_tok - tok0), 4);
        return;
    }
#pragma unroll
    for (int j = 0; j < NP; j++)
        if (tok0 + 2 * j < n_tok)  // warp-uniform: every thread joins the shuffles
            mma_store<WT>(acc[j], summs[j], out, tap, out_stride, mode, n_tok, n_out, rtok[j], row_a, row_b, t, qe);
}

// Kernels by tokens per warp (2 * NP): launch.rs picks by n_tok so that short prompts still
// spread over the grid. The epilogue arguments after n_tok are matvec_q's (MODE_QKV's, then
// MODE_SWIGLU's; null / 0 when unused).
#define MMA_EPI_PARAMS                                                                                     \
    float *q_out, float *k_cache, float *v_cache, const float *table, const int *params, const float *bq,   \
        const float *bk, const float *bv, int dim, int kv_dim, int head_dim, float *sw_out, i8 *sw_aq,     \
        float2 *sw_ads, int ffn
#define MMA_EPI_STRUCTS                                                                                    \
    QkvEpi qe = {q_out, k_cache, v_cache, table, params, bq, bk, bv, dim, kv_dim, head_dim, 0};           \
    SwigluEpi se = {sw_out, sw_aq, sw_ads, ffn}
#define MATVEC_MMA_KERNEL(name, WT, NP, PF)                                                                \
    extern "C" __global__ void name(const u8* qs, const u32* dm, const i8* aq, const float2* ads, float* out,   \
                                    float* tap, int n_in, int n_out, int out_stride, int mode, int n_tok,      \
                                    MMA_EPI_PARAMS) {                                                      \
        MMA_EPI_STRUCTS;                                                                                   \
        matvec_mma<WT, NP, PF>(qs, dm, aq, ads, out, tap, n_in, n_out, out_stride, mode, n_tok, qe, se);    \
    }
MATVEC_MMA_KERNEL(matvec_mma_q4_1_q8_1_t2, WT_Q4_1, 1, 4)
MATVEC_MMA_KERNEL(matvec_mma_q4_1_q8_1_t4, WT_Q4_1, 2, 3)
MATVEC_MMA_KERNEL(matvec_mma_q4_1_q8_1_t8, WT_Q4_1, 4, 2)
MATVEC_MMA_KERNEL(matvec_mma_q4_0_q8_0_t2, WT_Q4_0, 1, 4)
MATVEC_MMA_KERNEL(matvec_mma_q4_0_q8_0_t4, WT_Q4_0, 2, 3)
MATVEC_MMA_KERNEL(matvec_mma_q4_0_q8_0_t8, WT_Q4_0, 4, 2)
MATVEC_MMA_KERNEL(matvec_mma_q8_0_q8_0_t2, WT_Q8_0, 1, 4)
MATVEC_MMA_KERNEL(matvec_mma_q8_0_q8_0_t4, WT_Q8_0, 2, 3)
MATVEC_MMA_KERNEL(matvec_mma_q8_0_q8_0_t8, WT_Q8_0, 4, 2)

// ---------------------------------------------------------------------------------------------
// Tiled tensor-core products (longer prompts): matvec_mma's arithmetic (the same fragments,
// lane sums, biased accumulators, fmaf chains and hsum: the same bits), with the block's weight
// rows and activation rows staged in shared memory by cp.async, TILE_STAGES chunks of TILE_KC
// blocks in flight, so each weight block is read from L2 once per 4NP tokens and each
// activation block once per 64 rows, in 16-byte pieces, instead of once per warp in words.
// Block of 256 threads (8 warps): warp w computes rows 16 (w & 3) .. + 16 of the block's 64
// and tokens (w >> 2) 2NP .. + 2NP of its 4NP, as matvec_mma's warps do (B columns: two
// tokens x the half block's four lanes).
// Launch: grid (ceil(n_out / 64), ceil(n_tok / (4 NP))), block 256, dynamic shared memory
// TILE_STAGES * TileLayout::STAGE (tile_smem in launch.rs). n_out % 16 == 0 (a warp's 16 rows
// are all in or all out), qs / aq 16-byte aligned, dm 4, ads 8. Modes: MODE_STORE, MODE_ADD
// (with tap), MODE_QKV (NORM pairs) and MODE_SWIGLU (grid x = ffn / 32: local rows 0..31 are
// SwiGLU block x's gate rows, 32..63 its up rows). Rows, tokens and blocks past the ends are not copied: their
// shared memory holds stale bytes that only reach outputs that are not stored (an mma's
// column depends on its B column alone, a row on its A row alone).
#define TILE_KC 4
#define TILE_STAGES 3
#define TILE_ROWS 64
#define TILE_THREADS 256

// One stage: wq (64 rows x KC blocks of quants; the row stride's extra 16 bytes put the eight
// rows of a warp's A load on distinct banks), wd (64 x KC scale words), xq (4NP tokens x KC
// blocks of int8, padded likewise), xd (4NP x KC (d, s)).
template <int WT, int NP>
struct TileLayout {
    static constexpr int QB = WT == WT_Q8_0 ? 32 : 16;
    static constexpr int TOK = 4 * NP;
    static constexpr int WQ_STRIDE = TILE_KC * QB + 16;
    static constexpr int XQ_STRIDE = TILE_KC * QK + 16;
    static constexpr int WD = TILE_ROWS * WQ_STRIDE;
    static constexpr int XQ = WD + TILE_ROWS * TILE_KC * 4;
    static constexpr int XD = XQ + TOK * XQ_STRIDE;
    static constexpr int STAGE = XD + TOK * TILE_KC * 8;
};

// Issues chunk c's weight copies (rows row0.., blocks c*KC..) into stage `st`.
// Local row r of a block whose rows start at row0, or (sw_ffn != 0, MODE_SWIGLU) of SwiGLU
// block `blk`: its 32 gate rows, then its 32 up rows.
__device__ __forceinline__ int tile_row(int r, int row0, int sw_ffn, int blk) {
    return sw_ffn ? (r < 32 ? blk * 32 + r : sw_ffn + blk * 32 + r - 32) : row0 + r;
}

template <int WT, int NP>
__device__ __forceinline__ void tile_load_w(char* st, const u8* __restrict__ qs, const u32* __restrict__ dm, int nb,
                                            int n_out, int row0, int c, int sw_ffn) {
    using L = TileLayout<WT, NP>;
    constexpr int PIECES = L::QB / 16;
    const int b0 = c * TILE_KC;
    for (int i = threadIdx.x; i < TILE_ROWS * TILE_KC * PIECES; i += TILE_THREADS) {
        const int r = i / (TILE_KC * PIECES), kb = (i / PIECES) % TILE_KC, p = i % PIECES;
        const int row = tile_row(r, row0, sw_ffn, blockIdx.x), b = b0 + kb;
        if (row < n_out && b < nb)
            cp_async16(st + r * L::WQ_STRIDE + kb * L::QB + p * 16, qs + ((size_t)row * nb + b) * L::QB + p * 16);
    }
    for (int i = threadIdx.x; i < TILE_ROWS * TILE_KC; i += TILE_THREADS) {
        const int r = i / TILE_KC, kb = i % TILE_KC;
        const int row = tile_row(r, row0, sw_ffn, blockIdx.x), b = b0 + kb;
        if (row < n_out && b < nb) cp_async4(st + L::WD + i * 4, dm + (size_t)row * nb + b);
    }
}

// Issues chunk c's activation copies (tokens tok0..) into stage `st`.
template <int WT, int NP>
__device__ __forceinline__ void tile_load_x(char* st, const i8* __restrict__ aq, const float2* __restrict__ ads,
                                            int n_in, int n_tok, int tok0, int c) {
    using L = TileLayout<WT, NP>;
    const int nb = n_in / QK, b0 = c * TILE_KC;
    for (int i = threadIdx.x; i < L::TOK * TILE_KC * 2; i += TILE_THREADS) {
        const int tk = i / (TILE_KC * 2), kb = (i / 2) % TILE_KC, p = i % 2;
        const int tok = tok0 + tk, b = b0 + kb;
        if (tok < n_tok && b < nb)
            cp_async16(st + L::XQ + tk * L::XQ_STRIDE + kb * QK + p * 16, aq + (size_t)tok * n_in + b * QK + p * 16);
    }
    for (int i = threadIdx.x; i < L::TOK * TILE_KC; i += TILE_THREADS) {
        const int tk = i / TILE_KC, kb = i % TILE_KC;
        const int tok = tok0 + tk, b = b0 + kb;
        if (tok < n_tok && b < nb) cp_async8(st + L::XD + i * 8, ads + (size_t)tok * nb + b);
    }
}

template <int WT, int NP>
__device__ __forceinline__ void matvec_tile(const u8* __restrict__ qs, const u32* __restrict__ dm,
                                            const i8* __restrict__ aq, const float2* __restrict__ ads, float* out,
                                            float* tap, int n_in, int n_out, int out_stride, int mode, int n_tok,
                                            const QkvEpi& qe, const SwigluEpi& se) {
    using L = TileLayout<WT, NP>;
    extern __shared__ __align__(16) char tsh[];
    const bool sw = mode == MODE_SWIGLU;
    const int sw_ffn = sw ? se.ffn : 0;
    pdl_launch();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int nb = n_in / QK, nc = (nb + TILE_KC - 1) / TILE_KC;
    const int row0 = blockIdx.x * TILE_ROWS, tok0 = blockIdx.y * L::TOK;
    const int wr = (warp & 3) * 16, wt = (warp >> 2) * (2 * NP);
    // The weights never depend on the previous kernel: their first chunks are requested before
    // pdl_wait; each commit group then holds chunk s's activations (group 0 also the weights).
#pragma unroll
    for (int s = 0; s < TILE_STAGES - 1; s++)
        if (s < nc) tile_load_w<WT, NP>(tsh + s * L::STAGE, qs, dm, nb, n_out, row0, s, sw_ffn);
    pdl_wait();
#pragma unroll
    for (int s = 0; s < TILE_STAGES - 1; s++) {
        if (s < nc) tile_load_x<WT, NP>(tsh + s * L::STAGE, aq, ads, n_in, n_tok, tok0, s);
        cp_async_commit();
    }
    float acc[NP][2][4], summs[NP][2];
    mma_zero<NP>(acc, summs);
    const bool rows_in = sw || row0 + wr < n_out;  // warp-uniform
    const bool feeds = (g & 3) == t;
    for (int c = 0; c < nc; c++) {
        cp_async_wait<TILE_STAGES - 2>();
        __syncthreads();  // chunk c is visible to all; every thread is done with chunk c - 1
        {
            const int nx = c + TILE_STAGES - 1;
            if (nx < nc) {
                char* sn = tsh + (nx % TILE_STAGES) * L::STAGE;
                tile_load_w<WT, NP>(sn, qs, dm, nb, n_out, row0, nx, sw_ffn);
                tile_load_x<WT, NP>(sn, aq, ads, n_in, n_tok, tok0, nx);
            }
            cp_async_commit();
        }
        const char* st = tsh + (c % TILE_STAGES) * L::STAGE;
        if (rows_in) {
#pragma unroll
            for (int kb = 0; kb < TILE_KC; kb++) {
                if (c * TILE_KC + kb < nb) {  // uniform
                    const char* w = st + (wr + g) * L::WQ_STRIDE + kb * L::QB + 4 * t;
                    const u32 wa = *(const u32*)w, wb = *(const u32*)(w + 8 * L::WQ_STRIDE);
                    const u32 wa2 = WT == WT_Q8_0 ? *(const u32*)(w + 16) : 0u;
                    const u32 wb2 = WT == WT_Q8_0 ? *(const u32*)(w + 8 * L::WQ_STRIDE + 16) : 0u;
                    u32 a0, a1, a2, a3;
                    mma_a_words<WT>(wa, wb, wa2, wb2, a0, a1, a2, a3);
                    const u32* wd = (const u32*)(st + L::WD);
                    const u32 dma = wd[(wr + g) * TILE_KC + kb], dmb = wd[(wr + g + 8) * TILE_KC + kb];
                    const float2* xd = (const float2*)(st + L::XD);
#pragma unroll
                    for (int j = 0; j < NP; j++) {
                        if (tok0 + wt + 2 * j < n_tok) {  // warp-uniform
                            const char* x = st + L::XQ + (wt + 2 * j + (g >> 2)) * L::XQ_STRIDE + kb * QK + 4 * t;
                            const u32 lo = feeds ? *(const u32*)x : 0u, hi = feeds ? *(const u32*)(x + 16) : 0u;
                            const float2 da = xd[(wt + 2 * j + (t >> 1)) * TILE_KC + kb];
                            mma_pair<WT>(acc[j], summs[j], a0, a1, a2, a3, dma, dmb, lo, hi, da);
                        }
                    }
                }
            }
        }
    }
    cp_async_wait<0>();
    if (sw) {
        // The staging memory becomes the block's 4NP x 64 results (swiglu_rows).
        __syncthreads();
        float* res = (float*)tsh;
#pragma unroll
        for (int j = 0; j < NP; j++)
            if (tok0 + wt + 2 * j < n_tok)  // warp-uniform
                mma_store_res<WT>(acc[j], summs[j], res, wt + 2 * j + (t >> 1), wr + g, t);
        __syncthreads();
        swiglu_rows(res, se, blockIdx.x, tok0, min(L::TOK, n_tok - tok0), TILE_THREADS / 32);
        return;
    }
    if (!rows_in) return;  // whole warps; no barrier follows
    const int row_a = row0 + wr + g;
#pragma unroll
    for (int j = 0; j < NP; j++)
        if (tok0 + wt + 2 * j < n_tok)  // warp-uniform: every thread joins the shuffles
            mma_store<WT>(acc[j], summs[j], out, tap, out_stride, mode, n_tok, n_out, tok0 + wt + 2 * j + (t >> 1), row_a,
                          row_a + 8, t, qe);
}

// 32 tokens per block (NP = 8). A 16-token variant (NP = 4) measured no faster than the
// per-warp kernels at any shape (BENCHMARKS.md, 2026-12-07 second session).
#define MATVEC_TILE_KERNEL(name, WT, NP)                                                                   \
    extern "C" __global__ void __launch_bounds__(TILE_THREADS) name(                                       \
        const u8* qs, const u32* dm, const i8* aq, const float2* ads, float* out, float* tap, int n_in,        \
        int n_out, int out_stride, int mode, int n_tok, MMA_EPI_PARAMS) {                                      \
        MMA_EPI_STRUCTS;                                                                                   \
        matvec_tile<WT, NP>(qs, dm, aq, ads, out, tap, n_in, n_out, out_stride, mode, n_tok, qe, se);      \
    }
MATVEC_TILE_KERNEL(matvec_tile_q4_1_q8_1_t32, WT_Q4_1, 8)
MATVEC_TILE_KERNEL(matvec_tile_q4_0_q8_0_t32, WT_Q4_0, 8)
MATVEC_TILE_KERNEL(matvec_tile_q8_0_q8_0_t32, WT_Q8_0, 8)

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
    if (FT == FT_F32) {
        // ggml_vec_dot_f32's lanes (quant::vec_dot_f32_bytes).
        acc = vec_dot_f32_ref((const float*)w + (size_t)row * n_in, xr, n_in);
    } else {
        for (int j = 0; j < n_in; j++) {
            size_t k = (size_t)row * n_in + j;
            if (FT == FT_F16) acc += h2f(((const u16*)w)[k]) * f16_round(xr[j]);
            else acc += bf2f(((const u16*)w)[k]) * bf16_round(xr[j]);
        }
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
