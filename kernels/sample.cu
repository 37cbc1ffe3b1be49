// sample.cu: `sampler::pick` (src/sampler/mod.rs) on the GPU, from the logits of one position in
// device memory: the token `sampler::sample` chooses (temperature, repetition penalty, top-k,
// top-p, min-p, the (seed, index) draw), the statistics of its log-probability
// (`exact::max_logit`, `exact::sum_exp`) and the `top_n` most likely tokens. Every function of
// src/sampler/exact.rs has its twin here under the same name (`exact::exp_det`,
// `exact::fixed_exp`, `exact::key`, `exact::ceil_mul`, `exact::draw_threshold`, ...), in IEEE
// operations only (compiled with --fmad=false like every module), so each value is the host's
// bit for bit.
//
// The host sorts the vocabulary; the device never does. A candidate order is one 64-bit key
// (`key`: the logit's total order, then the id inverted), so "the first m candidates" is "the
// keys at or above the m-th key", and probabilities are integers (`fixed_exp`), so totals and
// running sums are exact in any order. `select_reaching` finds the key at which the running
// weight (in key order) first reaches a threshold by a most-significant-digit radix search:
// per 8-bit digit a histogram of counts, weight sums and the largest key per bin (integer
// atomics: their result does not depend on their order), the bin that holds the crossing,
// until a bin holds one element. Top-k, top-p, the draw and the top_n alternatives are all
// such searches.
//
// Three launches, in order on one stream:
//   pick_prepare  (1 block of 1024): marks the new history ids in the seen bitmap, the raw
//                 maximum and the first candidate's key after temperature and penalty.
//   pick_lanes    (PICK_LANES/256 blocks of 256): lane j of `exact::sum_exp` (elements j,
//                 j + PICK_LANES, ... in order), and when sampling the weight of every token.
//   pick_choose   (1 block of 1024): the lane tree, the searches, the result.

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

// sampler::tempered at one id: IEEE division by the temperature, then the penalty when the id
// is in the context. `seen` is read through L2 (pick_prepare writes it with atomics).
__device__ __forceinline__ float tempered_at(const float* __restrict__ logits, const u32* seen, int i, float t, float rp) {
    float v = logits[i];
    if (t > 0.0f) v = v / t;
    if (rp != 1.0f && ((__ldcg(seen + (i >> 5)) >> (i & 31)) & 1u)) v = v > 0.0f ? v / rp : v * rp;
    return v;
}

__device__ __forceinline__ u64 warp_max_u64(u64 v) {
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ u64 warp_sum_u64(u64 v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
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

extern "C" __global__ void pick_prepare(const float* __restrict__ logits, int n, u32* seen, const u32* __restrict__ new_ids, int n_new, float t,
                                        float rp, PickState* st) {
    __shared__ u64 sh[32];
    __shared__ float shf[32];
    for (int j = threadIdx.x; j < n_new; j += blockDim.x) {
        u32 id = new_ids[j];
        if (id < (u32)n) atomicOr(seen + (id >> 5), 1u << (id & 31));
    }
    __threadfence_block();
    __syncthreads();
    float m = NEG_INF;
    u64 best = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        m = fmaxf(m, logits[i]);
        best = max(best, key(tempered_at(logits, seen, i, t, rp), (u32)i));
    }
    m = block_max_f32(m, shf);
    best = block_max_u64(best, sh);
    if (threadIdx.x == 0) {
        st->max = m == 0.0f ? 0.0f : m;
        st->first_key = best;
        st->first = tempered_at(logits, seen, (int)key_id(best), t, rp);
    }
}

// Lane j of exact::sum_exp, and with t > 0 the weight of every token: fixed_exp of its
// tempered logit minus the first candidate's.
extern "C" __global__ void pick_lanes(const float* __restrict__ logits, int n, const u32* seen, float t, float rp, const PickState* st,
                                      double* lanes, u64* weight) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    double m = (double)st->max;
    double s = 0.0;
    for (int i = j; i < n; i += PICK_LANES) s = s + exp_det((double)logits[i] - m);
    lanes[j] = s;
    if (t > 0.0f) {
        double f = (double)st->first;
        for (int i = j; i < n; i += PICK_LANES) weight[i] = fixed_exp((double)tempered_at(logits, seen, i, t, rp) - f);
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

// The key of the element of the set at which the running weight, in key order (largest first),
// first reaches `thr` (1 <= thr <= the set's total weight). `elem(i)` describes element i.
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
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            Elem e = elem(i);
            if (!e.in || ((e.k ^ prefix) & hi_mask) != 0) continue;
            int d = (int)((e.k >> shift) & 255);
            atomicAdd(&s->cnt[d], 1u);
            if (e.w) atomicAdd((unsigned long long*)&s->wsum[d], (unsigned long long)e.w);
            atomicMax((unsigned long long*)&s->kmax[d], (unsigned long long)e.k);
        }
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

extern "C" __global__ void pick_choose(const float* __restrict__ logits, int n, const u32* seen, float t, float rp, int top_k, float top_p,
                                       float min_p, u64 coin, int top_n, const PickState* st, const double* lanes, const u64* weight,
                                       PickOut* out) {
    __shared__ SelectSmem s;
    __shared__ double tree[1024];
    __shared__ u64 sh[32];
    __shared__ u64 top_key[PICK_TOPN];
    __shared__ u32 n_gathered;
    int tid = threadIdx.x;  // blockDim.x == 1024 == PICK_LANES / 4

    // exact::sum_exp's tree: widths 2048 and 1024 within each thread's four lanes, then shared.
    tree[tid] = (lanes[tid] + lanes[tid + 2048]) + (lanes[tid + 1024] + lanes[tid + 3072]);
    __syncthreads();
    for (int w = 512; w > 0; w >>= 1) {
        if (tid < w) tree[tid] = tree[tid] + tree[tid + w];
        __syncthreads();
    }

    // The top_n alternatives (raw logits): the keys at or above the top_n-th, ranked.
    int k = top_n < n ? top_n : n;
    if (k > 0) {
        u64 kth = select_reaching(n, (u64)k, [&](int i) { return Elem{key(logits[i], (u32)i), 1, true}; }, &s);
        if (tid == 0) n_gathered = 0;
        __syncthreads();
        for (int i = tid; i < n; i += blockDim.x) {
            u64 ki = key(logits[i], (u32)i);
            if (ki >= kth) top_key[atomicAdd(&n_gathered, 1u)] = ki;
        }
        __syncthreads();
        if (tid < k) {
            u64 mine = top_key[tid];
            int rank = 0;
            for (int j = 0; j < k; j++) rank += top_key[j] > mine;
            u32 id = key_id(mine);
            out->top_id[rank] = id;
            out->top_logit[rank] = logits[id];
        }
    }

    u64 chosen = st->first_key;
    if (t > 0.0f) {
        auto tkey = [&](int i) { return key(tempered_at(logits, seen, i, t, rp), (u32)i); };
        u64 floor_key = 0;
        if (top_k > 0 && top_k < n) floor_key = select_reaching(n, (u64)top_k, [&](int i) { return Elem{tkey(i), 1, true}; }, &s);
        u64 part = 0;
        for (int i = tid; i < n; i += blockDim.x)
            if (tkey(i) >= floor_key) part += weight[i];
        u64 total = block_sum_u64(part, sh);
        if (total > 0) {
            u64 keep = floor_key;
            if (top_p < 1.0f) {
                u64 thr = ceil_mul(top_p, total);
                u64 kp = select_reaching(n, thr, [&](int i) { u64 ki = tkey(i); return Elem{ki, weight[i], ki >= floor_key}; }, &s);
                keep = max(keep, kp);
            }
            if (min_p > 0.0f) {
                // The first candidate (in key order, within top-k) whose weight is below the
                // threshold ends the prefix min-p keeps.
                u64 thr = min_p_threshold(min_p);
                u64 b = 0;
                for (int i = tid; i < n; i += blockDim.x) {
                    u64 ki = tkey(i);
                    if (ki >= floor_key && weight[i] < thr) b = max(b, ki);
                }
                b = block_max_u64(b, sh);
                if (b > 0) keep = max(keep, b + 1);
            }
            u64 kpart = 0;
            for (int i = tid; i < n; i += blockDim.x)
                if (tkey(i) >= keep) kpart += weight[i];
            u64 kept = block_sum_u64(kpart, sh);
            u64 thr = draw_threshold(coin, kept);
            chosen = select_reaching(n, thr, [&](int i) { u64 ki = tkey(i); return Elem{ki, weight[i], ki >= keep}; }, &s);
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
