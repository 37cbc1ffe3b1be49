// kquant.cu: the products of the types added with the k-quants, bitwise the CPU spec's:
//   quantize_q8_K          <- backend::cpu::kquant::quantize_row_q8_K
//   matvec_q5_0_q8_0       <- backend::cpu::quant::vec_dot_q5_0_q8_0
//   matvec_q5_1_q8_1       <- backend::cpu::quant::vec_dot_q5_1_q8_1
//   matvec_iq4_nl_q8_0     <- backend::cpu::quant::vec_dot_iq4_nl_q8_0
//   matvec_q2_K_q8_K .. matvec_q6_K_q8_K <- backend::cpu::kquant::vec_dot_q{2..6}_K_q8_K
// (each CPU function follows ggml's AVX2 kernel of the same name; read its doc comment first).
//
// Used by the forward pass (backend::cuda::forward, launch_matvec) for matrices of these types,
// with the activation quantized just before each product (quantize_q8_1's rows for the 32-block
// types, quantize_q8_K's for the k-quants); launched alone by backend::cuda::ops for the parity
// tests.
//
// Layouts: weights are the GGUF rows as they are (n_out rows of n_in/QKW blocks, `row_bytes`
// apart). Activations: aq (n_tok, n_in) int8; for Q8_0/Q8_1 consumers ads (n_tok, n_in/32)
// float2 (d, s) as quantize_q8_1 writes them; for Q8_K consumers ad (n_tok, n_in/256) float and
// bsums (n_tok, n_in/16) int16, as quantize_q8_K writes them.
//
// Output: out[t*out_stride + r] = v (mode 0) or out[...] += v (mode 1: the residual connection,
// ops::add), and the stored value copied to tap[t*out_stride + r] when `tap` is not null, as
// matvec.cu's store_out.
//
// Launch (matvec_*): grid (ceil(n_out/16), n_tok), block 128. Eight consecutive threads compute
// one output, thread k lane k (elements 4k..4k+3 of every 32-element chunk) over all blocks in
// order, one fmaf per lane and block as the CPU's fma_lanes; integer parts are exact, so their
// internal order is free. The lanes meet in hsum8_shfl (hsum_float_8's tree); the scalar terms
// (Q5_1 summs, Q4_K's four acc_m lanes, Q5_K summs, IQ4_NL's unpaired block) are combined as
// the CPU combines them.
//
// Launch (quantize_q8_K): grid (n/256, n_tok), block 256: one thread per element.

#define QKK 256

__device__ __forceinline__ float ld_f16(const u8* p) { return h2f((u16)(p[0] | (p[1] << 8))); }
__device__ __forceinline__ int pack4(int a, int b, int c, int d) {
    return (a & 0xff) | ((b & 0xff) << 8) | ((c & 0xff) << 16) | ((d & 0xff) << 24);
}
__device__ __forceinline__ int ld_i32(const i8* p) { return pack4(p[0], p[1], p[2], p[3]); }

extern "C" __global__ void quantize_q8_K(const float* __restrict__ x, i8* __restrict__ aq, float* __restrict__ ad,
                                         short* __restrict__ bsums, int n) {
    __shared__ float s_abs[QKK];
    __shared__ int s_idx[QKK];
    __shared__ i8 s_q[QKK];
    pdl_launch();
    pdl_wait();
    const int b = blockIdx.x, t = threadIdx.x;
    const size_t row = blockIdx.y;
    const float* xb = x + row * n + (size_t)b * QKK;
    const float v = xb[t];
    // The first element of largest magnitude: (|x|, index) reduced so that a tie keeps the lower
    // index, which is the CPU's `if |x| > amax` scan.
    s_abs[t] = fabsf(v);
    s_idx[t] = t;
    __syncthreads();
    for (int o = QKK / 2; o > 0; o >>= 1) {
        if (t < o) {
            float a0 = s_abs[t], a1 = s_abs[t + o];
            int i0 = s_idx[t], i1 = s_idx[t + o];
            if (a1 > a0 || (a1 == a0 && i1 < i0)) { s_abs[t] = a1; s_idx[t] = i1; }
        }
        __syncthreads();
    }
    const float amax = s_abs[0];
    const size_t nb = n / QKK;
    i8 q = 0;
    float iscale = 0.0f;
    if (amax != 0.0f) {
        const float mx = xb[s_idx[0]];
        iscale = -127.0f / mx;
        int r = __float2int_rn(iscale * v);  // round half to even: ggml's nearest_int
        q = (i8)min(127, r);
    }
    aq[row * n + (size_t)b * QKK + t] = q;
    s_q[t] = q;
    __syncthreads();
    if (t < QKK / 16) {
        int s = 0;
        for (int j = 0; j < 16; j++) s += s_q[16 * t + j];
        bsums[row * (n / 16) + (size_t)b * 16 + t] = (short)(amax != 0.0f ? s : 0);
    }
    if (t == 0) ad[row * nb + b] = amax != 0.0f ? 1.0f / iscale : 0.0f;
}

__device__ __forceinline__ void kq_store(float* out, float* tap, size_t idx, float v, int mode) {
    if (mode == 1) v = out[idx] + v;
    out[idx] = v;
    if (tap) tap[idx] = v;
}

// ---- weight values of one lane ---------------------------------------------------------------

// Q5_0 / Q5_1: element j has nibble j (low nibbles 0..15, high 16..31) and bit j of qh.
__device__ __forceinline__ int q5_lane(const u8* qh4, const u8* qs, int k, int offset) {
    u32 qh = qh4[0] | (qh4[1] << 8) | (qh4[2] << 16) | ((u32)qh4[3] << 24);
    int v[4];
#pragma unroll
    for (int e = 0; e < 4; e++) {
        int j = 4 * k + e;
        int nib = j < 16 ? (qs[j] & 0xF) : (qs[j - 16] >> 4);
        v[e] = (nib | (((qh >> j) & 1) << 4)) - offset;
    }
    return pack4(v[0], v[1], v[2], v[3]);
}

__constant__ i8 KVALUES_IQ4NL[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

__device__ __forceinline__ int iq4nl_lane(const u8* qs, int k) {
    int v[4];
#pragma unroll
    for (int e = 0; e < 4; e++) {
        int j = 4 * k + e;
        v[e] = KVALUES_IQ4NL[j < 16 ? (qs[j] & 0xF) : (qs[j - 16] >> 4)];
    }
    return pack4(v[0], v[1], v[2], v[3]);
}

// Element e (0..255) of a k-quant block, as the CPU's unpacking loops.
template <int T> __device__ __forceinline__ int kq_value(const u8* blk, int e);
template <> __device__ __forceinline__ int kq_value<2>(const u8* blk, int e) {  // Q2_K
    int j = e / 128, l = (e / 32) % 4, b = e % 32;
    return (blk[16 + 32 * j + b] >> (2 * l)) & 3;
}
template <> __device__ __forceinline__ int kq_value<3>(const u8* blk, int e) {  // Q3_K
    int j = e / 128, l = (e / 32) % 4, b = e % 32;
    int low = (blk[32 + 32 * j + b] >> (2 * l)) & 3;
    return low - ((blk[b] & (1 << (4 * j + l))) ? 0 : 4);
}
template <> __device__ __forceinline__ int kq_value<4>(const u8* blk, int e) {  // Q4_K
    int j = e / 64, hi = (e / 32) % 2, b = e % 32;
    return (blk[16 + 32 * j + b] >> (4 * hi)) & 0xF;
}
template <> __device__ __forceinline__ int kq_value<5>(const u8* blk, int e) {  // Q5_K
    int j = e / 64, hi = (e / 32) % 2, b = e % 32;
    int low = (blk[48 + 32 * j + b] >> (4 * hi)) & 0xF;
    return low | (((blk[16 + b] >> (2 * j + hi)) & 1) << 4);
}
template <> __device__ __forceinline__ int kq_value<6>(const u8* blk, int e) {  // Q6_K
    int j = e / 128, l = (e / 32) % 4, b = e % 32;
    int low = (blk[64 * j + 32 * (l % 2) + b] >> (4 * (l / 2))) & 0xF;
    return low | (((blk[128 + 32 * j + b] >> (2 * l)) & 3) << 4);
}

// The 16 sub-block scales (Q2_K: low nibbles; Q3_K: 6 bits - 32; Q6_K: int8) or the 8 scales
// and 8 mins of Q4_K/Q5_K (get_scale_min_k4).
__device__ __forceinline__ void scales_mins_k4(const u8* s, int* sc, int* mn) {
    for (int j = 0; j < 8; j++) {
        if (j < 4) { sc[j] = s[j] & 63; mn[j] = s[j + 4] & 63; }
        else { sc[j] = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4); mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4); }
    }
}
__device__ __forceinline__ void scales_q3k(const u8* blk, int* sc) {
    const u8* s = blk + 96;
    for (int i = 0; i < 16; i++) {
        int low = i < 8 ? (s[i] & 0xF) : (s[i - 8] >> 4);
        int high = (s[8 + (i % 4)] >> (2 * (i / 4))) & 3;
        sc[i] = (low | (high << 4)) - 32;
    }
}

// Block bytes and f16 offsets of each k-quant.
template <int T> struct KQ;
template <> struct KQ<2> { enum { BYTES = 84, D = 80 }; };
template <> struct KQ<3> { enum { BYTES = 110, D = 108 }; };
template <> struct KQ<4> { enum { BYTES = 144, D = 0 }; };
template <> struct KQ<5> { enum { BYTES = 176, D = 0 }; };
template <> struct KQ<6> { enum { BYTES = 210, D = 208 }; };

// ---- the 32-block kernels --------------------------------------------------------------------

enum { WT5_0 = 0, WT5_1 = 1, WTIQ4 = 2 };

template <int WT>
__device__ void matvec_q32(const u8* __restrict__ w, int row_bytes, const i8* __restrict__ aq,
                           const float2* __restrict__ ads, float* __restrict__ out, int n_in, int n_out,
                           float* __restrict__ tap, int out_stride, int mode) {
    pdl_launch();
    pdl_wait();
    const int k = threadIdx.x & 7;
    const int row = blockIdx.x * 16 + (threadIdx.x >> 3);
    const size_t t = blockIdx.y;
    const unsigned mask = 0xffu << (threadIdx.x & 24);
    if (row >= n_out) return;  // whole groups of eight leave together
    const int nb = n_in / QK;
    const u8* wr = w + (size_t)row * row_bytes;
    const i8* ar = aq + t * n_in;
    const float2* dr = ads + t * nb;
    float acc = 0.0f, acc2 = 0.0f, summs = 0.0f;
    if (WT == WT5_0) {
        for (int b = 0; b < nb; b++) {
            const u8* blk = wr + b * 22;
            int s = __dp4a(q5_lane(blk + 2, blk + 6, k, 16), ld_i32(ar + b * QK + 4 * k), 0);
            acc = fmaf(ld_f16(blk) * dr[b].x, (float)s, acc);
        }
        acc = hsum8_shfl(acc, mask);
    } else if (WT == WT5_1) {
        for (int b = 0; b < nb; b++) {
            const u8* blk = wr + b * 24;
            summs = fmaf(ld_f16(blk + 2), dr[b].y, summs);
            int s = __dp4a(q5_lane(blk + 4, blk + 8, k, 0), ld_i32(ar + b * QK + 4 * k), 0);
            acc = fmaf(ld_f16(blk) * dr[b].x, (float)s, acc);
        }
        acc = hsum8_shfl(acc, mask) + summs;
    } else {
        // Blocks in pairs: even ones into acc, odd ones into acc2; then acc + acc2 lane-wise,
        // hsum_float_8, and an unpaired last block in the scalar tail.
        int b = 0;
        for (; b + 1 < nb; b += 2) {
            const u8* b0 = wr + b * 18;
            const u8* b1 = b0 + 18;
            int s0 = __dp4a(iq4nl_lane(b0 + 2, k), ld_i32(ar + b * QK + 4 * k), 0);
            int s1 = __dp4a(iq4nl_lane(b1 + 2, k), ld_i32(ar + (b + 1) * QK + 4 * k), 0);
            acc = fmaf(dr[b].x * ld_f16(b0), (float)s0, acc);
            acc2 = fmaf(dr[b + 1].x * ld_f16(b1), (float)s1, acc2);
        }
        acc = hsum8_shfl(acc + acc2, mask);
        if (b < nb) {
            const u8* blk = wr + b * 18;
            int s = __dp4a(iq4nl_lane(blk + 2, k), ld_i32(ar + b * QK + 4 * k), 0);
            for (int o = 4; o > 0; o >>= 1) s += __shfl_xor_sync(mask, s, o);  // exact integers
            acc = fmaf(dr[b].x * ld_f16(blk), (float)s, acc);
        }
    }
    if (k == 0) kq_store(out, tap, t * out_stride + row, acc, mode);
}

extern "C" __global__ void matvec_q5_0_q8_0(const u8* w, int row_bytes, const i8* aq, const float2* ads, float* out, int n_in, int n_out,
                                     float* tap, int out_stride, int mode) {
    matvec_q32<WT5_0>(w, row_bytes, aq, ads, out, n_in, n_out, tap, out_stride, mode);
}
extern "C" __global__ void matvec_q5_1_q8_1(const u8* w, int row_bytes, const i8* aq, const float2* ads, float* out, int n_in, int n_out,
                                     float* tap, int out_stride, int mode) {
    matvec_q32<WT5_1>(w, row_bytes, aq, ads, out, n_in, n_out, tap, out_stride, mode);
}
extern "C" __global__ void matvec_iq4_nl_q8_0(const u8* w, int row_bytes, const i8* aq, const float2* ads, float* out, int n_in, int n_out,
                                     float* tap, int out_stride, int mode) {
    matvec_q32<WTIQ4>(w, row_bytes, aq, ads, out, n_in, n_out, tap, out_stride, mode);
}

// ---- the k-quant kernels ---------------------------------------------------------------------

template <int T>
__device__ void matvec_kq(const u8* __restrict__ w, int row_bytes, const i8* __restrict__ aq, const float* __restrict__ ad,
                          const short* __restrict__ bsums, float* __restrict__ out, int n_in, int n_out,
                          float* __restrict__ tap, int out_stride, int mode) {
    pdl_launch();
    pdl_wait();
    const int k = threadIdx.x & 7;
    const int row = blockIdx.x * 16 + (threadIdx.x >> 3);
    const size_t t = blockIdx.y;
    const unsigned mask = 0xffu << (threadIdx.x & 24);
    if (row >= n_out) return;
    const int nb = n_in / QKK;
    const u8* wr = w + (size_t)row * row_bytes;
    float acc = 0.0f, acc_m = 0.0f, summs = 0.0f;
    for (int b = 0; b < nb; b++) {
        const u8* blk = wr + (size_t)b * KQ<T>::BYTES;
        const i8* a = aq + t * n_in + (size_t)b * QKK;
        const short* bs = bsums + t * (n_in / 16) + (size_t)b * 16;
        const float ya = ad[t * nb + b];
        const float d = ya * ld_f16(blk + KQ<T>::D);
        int sc[16], mn[16];
        if (T == 2) for (int i = 0; i < 16; i++) { sc[i] = blk[i] & 0xF; mn[i] = blk[i] >> 4; }
        if (T == 3) scales_q3k(blk, sc);
        if (T == 4 || T == 5) scales_mins_k4(blk + 4, sc, mn);
        if (T == 6) for (int i = 0; i < 16; i++) sc[i] = (i8)blk[192 + i];
        // The minimum terms, where each kernel puts them.
        if (T == 2) {
            const float dmin = -ya * ld_f16(blk + 82);
            int p = mn[2 * k] * bs[2 * k] + mn[2 * k + 1] * bs[2 * k + 1];
            acc = fmaf(dmin, (float)p, acc);
        }
        if (T == 4 && k < 4) {
            const float dmin = -ya * ld_f16(blk + 2);
            int p = mn[2 * k] * (bs[4 * k] + bs[4 * k + 1]) + mn[2 * k + 1] * (bs[4 * k + 2] + bs[4 * k + 3]);
            acc_m = fmaf(dmin, (float)p, acc_m);
        }
        if (T == 5) {
            const float dmin = -ya * ld_f16(blk + 2);
            int p = 0;
            for (int i = 0; i < 8; i++) p += mn[i] * (bs[2 * i] + bs[2 * i + 1]);
            summs = fmaf(dmin, (float)p, summs);
        }
        // Lane k: Σ over the eight 32-element chunks of scale * (products of elements 4k..4k+3).
        int sumi = 0;
        for (int c = 0; c < 8; c++) {
            int e = 32 * c + 4 * k;
            int qw = pack4(kq_value<T>(blk, e), kq_value<T>(blk, e + 1), kq_value<T>(blk, e + 2), kq_value<T>(blk, e + 3));
            int quad = __dp4a(qw, ld_i32(a + e), 0);
            int s = (T == 4 || T == 5) ? sc[c] : sc[2 * c + k / 4];
            sumi += s * quad;
        }
        if (T == 6) sumi -= 32 * (bs[2 * k] * sc[2 * k] + bs[2 * k + 1] * sc[2 * k + 1]);
        acc = fmaf(d, (float)sumi, acc);
    }
    float r = hsum8_shfl(acc, mask);
    if (T == 4) {
        float m = acc_m + __shfl_xor_sync(mask, acc_m, 2);  // lane 0: m0 + m2, lane 1: m1 + m3
        m = m + __shfl_xor_sync(mask, m, 1);
        r = r + m;
    }
    if (T == 5) r = r + summs;
    if (k == 0) kq_store(out, tap, t * out_stride + row, r, mode);
}

#define KQ_KERNEL(NAME, T)                                                                                  \
    extern "C" __global__ void NAME(const u8* w, int row_bytes, const i8* aq, const float* ad, const short* bsums, \
                                    float* out, int n_in, int n_out, float* tap, int out_stride, int mode) {  \
        matvec_kq<T>(w, row_bytes, aq, ad, bsums, out, n_in, n_out, tap, out_stride, mode);                \
    }
KQ_KERNEL(matvec_q2_K_q8_K, 2)
KQ_KERNEL(matvec_q3_K_q8_K, 3)
KQ_KERNEL(matvec_q4_K_q8_K, 4)
KQ_KERNEL(matvec_q5_K_q8_K, 5)
KQ_KERNEL(matvec_q6_K_q8_K, 6)
