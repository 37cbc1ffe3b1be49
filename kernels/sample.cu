// sample.cu: `sampler::pick` (src/sampler/mod.rs) on the GPU, from the logits of one position in
// device memory: the token `sampler::sample` chooses (temperature, repetition penalty, top-k,
// top-p, min-p, the (seed, index) draw), the statistics of its log-probability
// (`exact::max_logit`, `exact::sum_exp`) and the `top_n` most likely tokens. Every function of
// src/sampler/exact.rs has its twin here under the same name (`exact::exp_det`,
// `exact::fixed_exp`, `exact::key`, `exact::ceil_mul`, `exact::draw_threshold`, ...), in IEEE
// operations only (compiled with --fmad=false like every module), so each value is the host's
// bit for bit.
//
// The host may sort the candidates; the device never does. A candidate order is one 64-bit key
// (`key`: the logit's total order, then the id inverted), so "the first m candidates" is "the
// keys at or above the m-th key", and probabilities are integers (`fixed_exp`), so totals and
// running sums are exact in any order. `select_reaching` finds the key at which the running
// weight (in key order) first reaches a threshold by a most-significant-digit radix search:
// per 8-bit digit a histogram of counts, weight sums and the largest key per bin (integer
// atomics: their result does not depend on their order), the bin that holds the crossing,
// until a bin holds one element. Top-k, top-p and the draw are such searches; the top_n
// alternatives (at most 32) are rounds of a block maximum.
//
// Four launches, in order on one stream:
//   pick_mark     (1 block): the new history ids into the seen bitmap.
//   pick_prepare  (ceil(n / 4096) blocks of 1024): per span, the raw maximum, the first
//                 candidate's key after temperature and penalty, and the span's top_n raw keys
//                 (rounds of a block maximum over 4096 logits); block 0 empties the candidate
//                 list.
//   pick_lanes    (PICK_LANES/256 blocks of 256): those reduced, lane j of `exact::sum_exp`
//                 (elements j, j + PICK_LANES, ... in order), and when sampling the candidate
//                 list: the key and weight of every token that can matter (see PickCand).
//   pick_choose   (1 block of 1024): the lane tree, the top_n alternatives (rounds of a block
//                 maximum over the spans' top_n keys), and when sampling the searches, over
//                 the candidate list only (staged in shared memory where it fits).

#define PICK_LANES 4096
#define PICK_TOPN 32
#define PICK_FIX_BITS 44

// Byte layout read by backend::cuda::pick (PickOut there).
struct PickOut {
    u32 id;
    float logit;
    float max;
    u32 n_top;
    double sum;
    u32 top_id[PICK_TOPN];
    float top_logit[PICK_TOPN];
};

// Shared between the three launches (device scratch, PickScratch on the host).
struct PickState {
    u64 first_key;  // key of the first candidate (tempered logits)
    float first;    // its tempered logit
    float max;      // exact::max_logit of the raw logits
};

// The candidate list (pick_lanes writes it, pick_choose searches it; t > 0 only): every token
// whose x = tempered logit - first (in f64, as fixed_exp's argument) is at least -32, with its
// key and weight fixed_exp(x). No other token can change the choice:
//   - a token outside has weight 0 (fixed_exp is 0 below -32, and of NaN), so it adds nothing
//     to any total or running sum, and the weighted searches (top-p, the draw) skip it;
//   - every key outside lies below every key inside: x is the correctly rounded difference, so
//     it does not decrease as the logit grows (key order); a NaN with the sign set has the
//     smallest key of all, and one with the sign clear the largest, so it is the first
//     candidate, every x is NaN, the list is empty and every weight 0. So where the list holds
//     at least top_k tokens, the top_k-th key of the vocabulary is the list's; where it holds
//     fewer, every listed token is within top-k, and a floor of 0 keeps the same listed ones;
//   - min-p ends the kept prefix at the largest key (within top-k) whose weight is below the
//     threshold: a listed one where the list has such a token; else any such key is an
//     outside one, below every listed key, and keeps every listed token, as no cut does.
// The list's order depends on the atomics that place each warp's tokens, and nothing read from
// it does: integer sums, maxima of keys, and select_reaching (unique keys, integer weights).
// The host's model of this, checked against sampler::sample: backend::cuda::pick's tests.
struct PickCand {
    u64 k;
    u64 w;
};

__device__ __forceinline__ double exp_det(double x) {
    if (!(x >= -708.0)) return 0.0;
    if (x > 709.0) return __longlong_as_double(0x7ff0000000000000LL);
    const double INV_LN2 = __longlong_as_double(0x3ff71547652b82feLL);
    const double LN2_HI = __longlong_as_double(0x3fe62e42fee00000LL);
    const double LN2_LO = __longlong_as_double(0x3dea39ef35793c76LL);
    const double ROUND = 6755399441055744.0;
    double kf = (x * INV_LN2 + ROUND) - ROUND;
    double r = (x - kf * LN2_HI) - kf * LN2_LO;
    double p = __longlong_as_double(0x3e21eed8eff8d898LL);
    p = p * r + __longlong_as_double(0x3e5ae64567f544e4LL);
    p = p * r + __longlong_as_double(0x3e927e4fb7789f5cLL);
    p = p * r + __longlong_as_double(0x3ec71de3a556c734LL);
    p = p * r + __longlong_as_double(0x3efa01a01a01a01aLL);
    p = p * r + __longlong_as_double(0x3f2a01a01a01a01aLL);
    p = p * r + __longlong_as_double(0x3f56c16c16c16c17LL);
    p = p * r + __longlong_as_double(0x3f81111111111111LL);
    p = p * r + __longlong_as_double(0x3fa5555555555555LL);
    p = p * r + __longlong_as_double(0x3fc5555555555555LL);
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    long long k = (long long)kf;
    return p * __longlong_as_double((k + 1023) << 52);
}

__device__ __forceinline__ u64 fixed_exp(double x) {
    if (!(x >= -32.0)) return 0;
    return (u64)(exp_det(x) * 17592186044416.0);  // 2^44
}

__device__ __forceinline__ u32 ord_f32(float v) {
    u32 b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ u64 key(float v, u32 id) { return ((u64)ord_f32(v) << 32) | (u64)(~id); }
__device__ __forceinline__ u32 key_id(u64 k) { return ~(u32)k; }

// ⌈p · total⌉ for p in (0, 1] (exact::ceil_mul).
__device__ u64 ceil_mul(float p, u64 total) {
    u32 bits = __float_as_uint(p);
    u32 e = (bits >> 23) & 0xff;
    u64 f = bits & 0x7fffff;
    u64 mant = e == 0 ? f : (f | (1u << 23));
    u32 shift = e == 0 ? 149 : 150 - e;
    u64 lo = mant * total, hi = __umul64hi(mant, total);  // the product, < 2^87
    if (shift >= 128) return (lo | hi) != 0 ? 1 : 0;
    u64 q, rem;
    if (shift >= 64) {
        u32 sh = shift - 64;
        q = hi >> sh;
        rem = lo | (sh ? (hi & ((1ull << sh) - 1)) : 0);
    } else {
        q = (lo >> shift) | (hi << (64 - shift));
        rem = lo & ((1ull << shift) - 1);
    }
    return q + (rem != 0 ? 1 : 0);
}

__device__ __forceinline__ u64 draw_threshold(u64 coin, u64 total) {
    u64 lo = coin * total, hi = __umul64hi(coin, total);
    return ((lo >> 53) | (hi << 11)) + 1;
}

__device__ __forceinline__ u64 min_p_threshold(float min_p) { return (u64)ceil((double)min_p * 17592186044416.0); }

// sampler::tempered of one logit: IEEE division by the temperature, then the penalty when the
// id is in the context (`in_seen`: its bit in the seen bitmap).
// A NaN logit comes out as the host's arithmetic leaves it (x86 SSE: the operand's sign and
// payload, quieted), not as the GPU's canonical positive NaN: its key, and so its place in the
// candidate order, is the host's.
__device__ __forceinline__ float tempered(float v, bool in_seen, float t, float rp) {
    if (v != v) return __uint_as_float(__float_as_uint(v) | 0x00400000u);
    if (t > 0.0f) v = v / t;
    if (rp != 1.0f && in_seen) v = v > 0.0f ? v / rp : v * rp;
    return v;
}
__device__ __forceinline__ bool seen_bit(u32 word, int i) { return (word >> (i & 31)) & 1u; }

// The same at one id of `logits`, the bitmap in global memory, read through L2 (pick_mark
// writes it with atomics); only read when the penalty applies.
__device__ __forceinline__ float tempered_at(const float* __restrict__ logits, const u32* seen, int i, float t, float rp) {
    return tempered(logits[i], rp != 1.0f && seen_bit(__ldcg(seen + (i >> 5)), i), t, rp);
}
// Block-wide integer max and sum (any order gives the same result). `sh` holds 32 values.
__device__ u64 block_max_u64(u64 v, u64* sh) {
    v = warp_max_u64(v);
    int w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[w] = v;
    __syncthreads();
    u64 r = (threadIdx.x & 31) < nw ? sh[threadIdx.x & 31] : 0;
    return warp_max_u64(r);
}
__device__ u64 block_sum_u64(u64 v, u64* sh) {
    v = warp_sum_u64(v);
    int w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[w] = v;
    __syncthreads();
    u64 r = (threadIdx.x & 31) < nw ? sh[threadIdx.x & 31] : 0;
    return warp_sum_u64(r);
}

// f(i) for this thread's elements, four at a time so that their loads are in flight together
// (one block reads the whole candidate list: the loops are latency-bound). f only accumulates.
template <class F>
__device__ __forceinline__ void for_each4(int n, F f) {
    for (int base = threadIdx.x; base < n; base += 4 * blockDim.x) {
#pragma unroll
        for (int u = 0; u < 4; u++) {
            int i = base + u * blockDim.x;
            if (i < n) f(i);
        }
    }
}

// The new history ids into the seen bitmap (one block; before anything reads the bitmap).
extern "C" __global__ void pick_mark(int n, u32* seen, const u32* __restrict__ new_ids, int n_new) {
    for (int j = threadIdx.x; j < n_new; j += blockDim.x) {
        u32 id = new_ids[j];
        if (id < (u32)n) atomicOr(seen + (id >> 5), 1u << (id & 31));
    }
}

// Block b of ceil(n / PICK_SPAN) (1024 threads, four elements each): the largest raw logit and
// the largest tempered key of its span, into part_max[b] and part_key[b], and the span's top_n
// raw keys (largest first; 0, below every key, past the span's size) into
// part_top[b * PICK_TOPN ..]. Block 0 empties the candidate list (pick_lanes fills it).
#define PICK_SPAN 4096
extern "C" __global__ void __launch_bounds__(1024, 1) pick_prepare(const float* __restrict__ logits, int n, const u32* seen, float t, float rp,
                                                                   float* part_max, u64* part_key, int top_n, u64* part_top,
                                                                   u32* cand_n) {
    __shared__ u64 sh[32];
    __shared__ float shf[32];
    if (blockIdx.x == 0 && threadIdx.x == 0) *cand_n = 0;
    float m = NEG_INF;
    u64 best = 0;
    u64 raw[4];
#pragma unroll
    for (int u = 0; u < 4; u++) {
        int i = blockIdx.x * PICK_SPAN + u * blockDim.x + threadIdx.x;
        raw[u] = 0;
        if (i < n) {
            const float v = logits[i];
            m = fmaxf(m, v);
            raw[u] = key(v, (u32)i);
            best = max(best, key(tempered_at(logits, seen, i, t, rp), (u32)i));
        }
    }
    m = block_max_f32(m, shf);
    best = block_max_u64(best, sh);
    if (threadIdx.x == 0) {
        part_max[blockIdx.x] = m;
        part_key[blockIdx.x] = best;
    }
    // Real keys are never 0 (the id's complement is not 0 below the vocabulary limit).
    u64 prev = ~0ull;
    for (int r = 0; r < top_n; r++) {
        u64 c = 0;
#pragma unroll
        for (int u = 0; u < 4; u++)
            if (raw[u] < prev) c = max(c, raw[u]);
        prev = block_max_u64(c, sh);
        if (threadIdx.x == 0) part_top[(size_t)blockIdx.x * PICK_TOPN + r] = prev;
    }
}

// The partial maxima of pick_prepare, reduced (max is exact in any order; -0 reads as +0).
__device__ __forceinline__ void pick_reduce(const float* part_max, const u64* part_key, int n_part, float* max_out, u64* key_out) {
    float m = NEG_INF;
    u64 k = 0;
    for (int b = 0; b < n_part; b++) {
        m = fmaxf(m, part_max[b]);
        k = max(k, part_key[b]);
    }
    *max_out = m == 0.0f ? 0.0f : m;
    *key_out = k;
}

// Lane j of exact::sum_exp, and with t > 0 the candidate list (PickCand): each warp's
// candidates of a round take consecutive slots from one atomic add on the count. Block 0's
// thread 0 also writes the state.
extern "C" __global__ void pick_lanes(const float* __restrict__ logits, int n, const u32* seen, float t, float rp, const float* part_max,
                                      const u64* part_key, int n_part, PickState* st, double* lanes, PickCand* cand, u32* cand_n) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    float mx;
    u64 first_key;
    pick_reduce(part_max, part_key, n_part, &mx, &first_key);
    float first = tempered_at(logits, seen, (int)key_id(first_key), t, rp);
    if (j == 0) {
        st->max = mx;
        st->first_key = first_key;
        st->first = first;
    }
    double m = (double)mx;
    double s = 0.0;
    for (int i = j; i < n; i += PICK_LANES) s = s + exp_det((double)logits[i] - m);
    lanes[j] = s;
    if (t > 0.0f) {
        const double f = (double)first;
        const int lane = threadIdx.x & 31;
        // The round count is the same for every thread of a warp (the ballots need them all).
        for (int r = 0; r * PICK_LANES < n; r++) {
            const int i = j + r * PICK_LANES;
            bool in = false;
            PickCand c = {0, 0};
            if (i < n) {
                const float v = tempered_at(logits, seen, i, t, rp);
                const double x = (double)v - f;
                c.k = key(v, (u32)i);
                c.w = fixed_exp(x);
                in = x >= -32.0;
            }
            const unsigned bal = __ballot_sync(0xffffffffu, in);
            if (bal) {
                u32 base = 0;
                if (lane == 0) base = atomicAdd(cand_n, (u32)__popc(bal));
                base = __shfl_sync(0xffffffffu, base, 0);
                if (in) cand[base + __popc(bal & ((1u << lane) - 1u))] = c;
            }
        }
    }
}

struct SelectSmem {
    u32 cnt[256];
    u64 wsum[256];
    u64 kmax[256];
    u64 prefix, rem, found;
    int done;
};

// What one element contributes to a search: its key, whether it is in the set, its weight.
struct Elem {
    u64 k;
    u64 w;
    bool in;
};

// One digit's running count, weight and largest key in a thread's registers.
struct SelectSlot {
    int d = -1;
    u32 c = 0;
    u64 w = 0, k = 0;
    __device__ __forceinline__ void flush(SelectSmem* s) {
        if (!c) return;
        atomicAdd(&s->cnt[d], c);
        if (w) atomicAdd((unsigned long long*)&s->wsum[d], (unsigned long long)w);
        atomicMax((unsigned long long*)&s->kmax[d], (unsigned long long)k);
    }
    // flush() for a whole converged warp: when every lane holds the same digit (the crowded
    // bins of the first passes), one lane adds the warp's sums.
    __device__ __forceinline__ void flush_warp(SelectSmem* s) {
        int dd = c ? d : -1;
        unsigned peers = __match_any_sync(0xffffffffu, dd);
        if (peers != 0xffffffffu) {
            flush(s);
            return;
        }
        if (dd < 0) return;
        u32 cc = c;
        u64 ww = w, kk = k;
        for (int o = 16; o > 0; o >>= 1) {
            cc += __shfl_xor_sync(0xffffffffu, cc, o);
            ww += __shfl_xor_sync(0xffffffffu, ww, o);
            kk = max(kk, __shfl_xor_sync(0xffffffffu, kk, o));
        }
        if ((threadIdx.x & 31) == 0) {
            atomicAdd(&s->cnt[dd], cc);
            if (ww) atomicAdd((unsigned long long*)&s->wsum[dd], (unsigned long long)ww);
            atomicMax((unsigned long long*)&s->kmax[dd], (unsigned long long)kk);
        }
    }
    __device__ __forceinline__ void add(SelectSmem* s, int digit, const Elem& e) {
        if (d != digit) {
            flush(s);
            d = digit;
            c = 0;
            w = 0;
            k = 0;
        }
        c += 1;
        w += e.w;
        k = max(k, e.k);
    }
};

// The key of the element of the set at which the running weight, in key order (largest first),
// first reaches `thr` (1 <= thr <= the set's total weight). `elem(i)` describes element i. A
// weighted search may leave weight-0 elements out of the set: the crossing is never one.
template <class F>
__device__ u64 select_reaching(int n, u64 thr, F elem, SelectSmem* s) {
    if (threadIdx.x == 0) {
        s->prefix = 0;
        s->rem = thr;
        s->done = 0;
    }
    for (int shift = 56; shift >= 0; shift -= 8) {
        for (int d = threadIdx.x; d < 256; d += blockDim.x) {
            s->cnt[d] = 0;
            s->wsum[d] = 0;
            s->kmax[d] = 0;
        }
        __syncthreads();
        u64 hi_mask = shift == 56 ? 0 : (~0ull << (shift + 8));
        u64 prefix = s->prefix;
        // Most elements share a few digits in the first passes: each thread sums its own
        // elements per digit in four register slots (slot = digit & 3) and adds a slot to the
        // shared histogram only when another digit needs it, so a shared bin takes about one
        // atomic per thread instead of one per element.
        SelectSlot s0, s1, s2, s3;
        // Four elements per step, all loaded before any is used (the loop is latency-bound).
        for (int base = threadIdx.x; base < n; base += 4 * blockDim.x) {
            Elem e[4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                int i = base + u * blockDim.x;
                e[u] = i < n ? elem(i) : Elem{0, 0, false};
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
                if (!e[u].in || ((e[u].k ^ prefix) & hi_mask) != 0) continue;
                int d = (int)((e[u].k >> shift) & 255);
                switch (d & 3) {
                    case 0: s0.add(s, d, e[u]); break;
                    case 1: s1.add(s, d, e[u]); break;
                    case 2: s2.add(s, d, e[u]); break;
                    default: s3.add(s, d, e[u]); break;
                }
            }
        }
        s0.flush_warp(s);
        s1.flush_warp(s);
        s2.flush_warp(s);
        s3.flush_warp(s);
        __syncthreads();
        if (threadIdx.x < 32) {
            // Lane l holds bins 255 - 8l down to 248 - 8l: running sums from the top bin.
            int lane = threadIdx.x;
            u64 local = 0;
            for (int b = 0; b < 8; b++) local += s->wsum[255 - 8 * lane - b];
            u64 incl = local;
            for (int o = 1; o < 32; o <<= 1) {
                u64 v = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += v;
            }
            u64 rem = s->rem;
            unsigned hit = __ballot_sync(0xffffffffu, incl >= rem);
            int first = __ffs(hit) - 1;  // thr <= total: some lane reaches it
            if (lane == first) {
                u64 acc = incl - local;
                int b = 0;
                for (; b < 8; b++) {
                    u64 w = s->wsum[255 - 8 * lane - b];
                    if (acc + w >= rem) break;
                    acc += w;
                }
                int d = 255 - 8 * lane - b;
                s->rem = rem - acc;
                s->prefix = prefix | ((u64)d << shift);
                if (s->cnt[d] == 1 || shift == 0) {
                    s->found = s->kmax[d];
                    s->done = 1;
                }
            }
        }
        __syncthreads();
        if (s->done) break;
    }
    u64 r = s->found;
    __syncthreads();
    return r;
}

// Dynamic shared memory: `cap` candidates (PickCand), the list's copy where it holds at most
// that many (else the searches read it from global memory). The top_n candidates are the
// n_part spans' top_n keys (pick_prepare): each of the vocabulary's top_n is among its span's.
extern "C" __global__ void __launch_bounds__(1024, 1) pick_choose(const float* __restrict__ logits, int n, float t, int top_k, float top_p,
                                       float min_p, u64 coin, int top_n, const PickState* st, const double* lanes,
                                       const u64* part_top, int n_part, const PickCand* cand, const u32* cand_n, int cap,
                                       PickOut* out) {
    __shared__ SelectSmem s;
    __shared__ double tree[1024];
    __shared__ u64 sh[32];
    extern __shared__ PickCand sc[];
    int tid = threadIdx.x;  // blockDim.x == 1024 == PICK_LANES / 4

    // exact::sum_exp's tree: widths 2048 and 1024 within each thread's four lanes, then shared.
    tree[tid] = (lanes[tid] + lanes[tid + 2048]) + (lanes[tid + 1024] + lanes[tid + 3072]);
    __syncthreads();
    for (int w = 512; w > 0; w >>= 1) {
        if (tid < w) tree[tid] = tree[tid] + tree[tid + w];
        __syncthreads();
    }

    // The top_n alternatives (raw logits): top_n rounds, each the largest key below the last.
    int k = top_n < n ? top_n : n;
    u64 prev = ~0ull;
    const int n_top = n_part * k;
    for (int r = 0; r < k; r++) {
        u64 best = 0;
        for (int c = tid; c < n_top; c += blockDim.x) {
            const u64 kc = part_top[(size_t)(c / k) * PICK_TOPN + c % k];
            if (kc < prev) best = max(best, kc);
        }
        prev = block_max_u64(best, sh);
        if (tid == 0) {
            u32 id = key_id(prev);
            out->top_id[r] = id;
            out->top_logit[r] = logits[id];
        }
    }

    u64 chosen = st->first_key;
    if (t > 0.0f) {
        const int m = (int)*cand_n;
        const PickCand* C = cand;
        if (m <= cap) {
            for (int i = tid; i < m; i += blockDim.x) sc[i] = cand[i];
            __syncthreads();
            C = sc;
        }
        u64 floor_key = 0;
        if (top_k > 0 && top_k < n && m >= top_k) floor_key = select_reaching(m, (u64)top_k, [&](int i) { return Elem{C[i].k, 1, true}; }, &s);
        u64 part = 0;
        for_each4(m, [&](int i) {
            if (C[i].k >= floor_key) part += C[i].w;
        });
        u64 total = block_sum_u64(part, sh);
        if (total > 0) {
            u64 keep = floor_key;
            if (top_p < 1.0f) {
                u64 thr = ceil_mul(top_p, total);
                u64 kp = select_reaching(m, thr, [&](int i) { const PickCand c = C[i]; return Elem{c.k, c.w, c.w > 0 && c.k >= floor_key}; }, &s);
                keep = max(keep, kp);
            }
            if (min_p > 0.0f) {
                // The first candidate (in key order, within top-k) whose weight is below the
                // threshold ends the prefix min-p keeps (none listed: no cut, see PickCand).
                u64 thr = min_p_threshold(min_p);
                u64 b = 0;
                for_each4(m, [&](int i) {
                    const PickCand c = C[i];
                    if (c.k >= floor_key && c.w < thr) b = max(b, c.k);
                });
                b = block_max_u64(b, sh);
                if (b > 0) keep = max(keep, b + 1);
            }
            u64 kpart = 0;
            for_each4(m, [&](int i) {
                if (C[i].k >= keep) kpart += C[i].w;
            });
            u64 kept = block_sum_u64(kpart, sh);
            u64 thr = draw_threshold(coin, kept);
            chosen = select_reaching(m, thr, [&](int i) { const PickCand c = C[i]; return Elem{c.k, c.w, c.w > 0 && c.k >= keep}; }, &s);
        }
    }
    if (tid == 0) {
        u32 id = key_id(chosen);
        out->id = id;
        out->logit = logits[id];
        out->max = st->max;
        out->n_top = (u32)k;
        out->sum = tree[0];
    }
}
