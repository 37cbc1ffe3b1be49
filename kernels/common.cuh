// common.cuh: types, f16/bf16 conversions, glibc's expf, and fixed-order reductions shared by
// every kernel in kernels/. Prepended to each .cu file by `backend::cuda::kernels` before NVRTC
// compiles it (NVRTC has no file system here), so no file includes it itself.
//
// Numerics contract: the kernels are compiled with --fmad=false --ftz=false --prec-div=true
// --prec-sqrt=true, so every float expression rounds exactly as the same expression written in
// Rust (which never contracts a*b+c into an FMA), and fused multiply-adds happen exactly where
// the CPU reference writes `mul_add` (fmaf here): the CPU reference is llama.cpp's one-token
// arithmetic (backend::cpu::lanes), so the order of every reduction is the CPU's, lane by lane,
// and every kernel is bitwise equal to backend::cpu. RMSNorm's f64 sum of squares is a fixed
// f64 tree here against the CPU's sequential sum, with an exactness check that falls back to
// the sequential sum when the two could round to different f32 means (rms_mean_exact).

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define QK 32

// Programmatic dependent launch (Hopper): a kernel launched with the programmatic-serialization
// attribute may start while its predecessor runs; it must call pdl_wait() before touching
// anything the predecessor writes. pdl_launch() lets the successor start early. Both are no-ops
// for ordinary launches and on older architectures.
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}
#define NEG_INF __int_as_float(0xff800000)

// Flag-in-data words (decode.cu's DEC_LL, the low-latency form of NCCL's LL protocol): a float
// and the epoch of the write that made it share one naturally aligned 64-bit word, written and
// read as single 64-bit accesses (single-copy atomic), so a reader that sees the epoch it awaits
// sees that write's value: no fence and no separate flag between producer and consumer.
__device__ __forceinline__ void st_ll(u64* p, float v, u32 e) {
    const u64 w = ((u64)e << 32) | (u64)__float_as_uint(v);
    asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(w) : "memory");
}
__device__ __forceinline__ u64 ld_ll(const u64* p) {
    u64 w;
    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(w) : "l"(p) : "memory");
    return w;
}
__device__ __forceinline__ u64 globaltimer() {
    u64 t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}
// Every spin loop's guard (decode.cu's barriers and flag-in-data polls): after 2 s of waiting
// the block traps (a launch error, never a hung device). Checked every 1024 polls.
__device__ __forceinline__ void spin_timeout(int spin, u64& t0) {
    if ((spin & 1023) == 1023) {
        u64 now = globaltimer();
        if (t0 == 0) t0 = now;
        else if (now - t0 > 2000000000ull) __trap();
    }
}
// The value of flag-in-data word *p once it carries epoch e; `w` is a load of it already made
// (issued early by the caller). `pause` ns between polls (0: none).
__device__ __forceinline__ float ll_await(const u64* p, u64 w, u32 e, unsigned pause) {
    u64 t0 = 0;
    for (int spin = 0; (u32)(w >> 32) != e; spin++) {
        spin_timeout(spin, t0);
        if (pause) __nanosleep(pause);
        w = ld_ll(p);
    }
    return __uint_as_float((u32)w);
}

// f16 <-> f32 through PTX (NVRTC is used without cuda_fp16.h). cvt.rn is round-to-nearest-even,
// as the `half` crate's f16::from_f32.
__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ float f16_round(float f) { return h2f(f2h(f)); }

__device__ __forceinline__ float bf2f(u16 h) { return __uint_as_float(((u32)h) << 16); }
// half::bf16::from_f32: round to nearest even, NaN kept quiet.
__device__ __forceinline__ float bf16_round(float f) {
    u32 x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return __uint_as_float((x | 0x00400000u) & 0xffff0000u);
    u32 round_bit = 0x00008000u;
    if ((x & round_bit) != 0 && (x & (3u * round_bit - 1u)) != 0) x += 0x00010000u;
    return __uint_as_float(x & 0xffff0000u);
}

// glibc's expf (sysdeps/ieee754/flt-32/e_expf.c, the function Rust's f32::exp calls on Linux),
// evaluated in double with the same operations: 2^(k/32) from a 32-entry table times a cubic.
// Checked bitwise against f32::exp on 448M inputs in [-103, 88] (0 mismatches).
__constant__ u64 EXP2F_TAB[32] = {
    0x3ff0000000000000ull, 0x3fefd9b0d3158574ull, 0x3fefb5586cf9890full, 0x3fef9301d0125b51ull,
    0x3fef72b83c7d517bull, 0x3fef54873168b9aaull, 0x3fef387a6e756238ull, 0x3fef1e9df51fdee1ull,
    0x3fef06fe0a31b715ull, 0x3feef1a7373aa9cbull, 0x3feedea64c123422ull, 0x3feece086061892dull,
    0x3feebfdad5362a27ull, 0x3feeb42b569d4f82ull, 0x3feeab07dd485429ull, 0x3feea47eb03a5585ull,
    0x3feea09e667f3bcdull, 0x3fee9f75e8ec5f74ull, 0x3feea11473eb0187ull, 0x3feea589994cce13ull,
    0x3feeace5422aa0dbull, 0x3feeb737b0cdc5e5ull, 0x3feec49182a3f090ull, 0x3feed503b23e255dull,
    0x3feee89f995ad3adull, 0x3feeff76f2fb5e47ull, 0x3fef199bdd85529cull, 0x3fef3720dcef9069ull,
    0x3fef5818dcfba487ull, 0x3fef7c97337b9b5full, 0x3fefa4afa2a490daull, 0x3fefd0765b6e4540ull,
};

__device__ __forceinline__ float expf_glibc(float x) {
    u32 ux = __float_as_uint(x);
    u32 abstop = (ux >> 20) & 0x7ff;
    if (abstop >= 0x42b) {  // top12(88.0f): |x| >= 88 or NaN
        if (ux == 0xff800000u) return 0.0f;
        if (abstop >= 0x7f8) return x + x;
        if (x > 88.72283172607421875f) return __uint_as_float(0x7f800000u);
        if (x < -103.972076416015625f) return 0.0f;
    }
    const double inv_ln2_n = __longlong_as_double(0x3ff71547652b82fell) * 32.0;
    const double c0 = __longlong_as_double(0x3fac6af84b912394ll) / 32.0 / 32.0 / 32.0;
    const double c1 = __longlong_as_double(0x3fcebfce50fac4f3ll) / 32.0 / 32.0;
    const double c2 = __longlong_as_double(0x3fe62e42ff0c52d6ll) / 32.0;
    const double shift = __longlong_as_double(0x4338000000000000ll);
    double xd = (double)x;
    double z = inv_ln2_n * xd;
    double kd = z + shift;
    u64 ki = (u64)__double_as_longlong(kd);
    kd -= shift;
    double r = z - kd;
    u64 t = EXP2F_TAB[ki % 32] + (ki << 47);
    double s = __longlong_as_double((long long)t);
    double zz = c0 * r + c1;
    double r2 = r * r;
    double y = c2 * r + 1.0;
    y = zz * r2 + y;
    y = y * s;
    return (float)y;
}

// ggml_silu_f32 / ops::silu (the scalar SiLU, for elements past the last multiple of 8).
__device__ __forceinline__ float silu_ref(float x) { return x / (1.0f + expf_glibc(-x)); }

// One lane of ggml's AVX2 `ggml_v_expf` (lanes::v_expf): 2^n (1 + j) by the 1.5*2^23 rounding
// trick and a degree-5 polynomial; explicit fmaf() is a fused multiply-add whatever --fmad says.
__device__ __forceinline__ float v_expf(float x) {
    const float r = __uint_as_float(0x4b400000u);  // 0x1.8p23
    float z = fmaf(x, __uint_as_float(0x3fb8aa3bu), r);
    float n = z - r;
    float b = fmaf(-n, __uint_as_float(0x35bfbe8eu), fmaf(-n, __uint_as_float(0x3f317200u), x));
    u32 e = __float_as_uint(z) << 23;
    float k = __uint_as_float(e + __float_as_uint(1.0f));
    bool c = fabsf(n) > 126.0f;
    float u = b * b;
    float j = fmaf(fmaf(fmaf(__uint_as_float(0x3c072010u), b, __uint_as_float(0x3d2b9f17u)), u,
                        fmaf(__uint_as_float(0x3e2aaf33u), b, __uint_as_float(0x3efffedbu))),
                   u, __uint_as_float(0x3f7ffff6u) * b);
    if (!c) return fmaf(j, k, k);
    u32 g = n <= 0.0f ? 0x82000000u : 0u;
    float s1 = __uint_as_float(g + 0x7f000000u);
    float s2 = __uint_as_float(e - g);
    if (fabsf(n) > 192.0f) return s1 * s1;
    return fmaf(s2, j, s2) * s1;
}

// One lane of `ggml_v_silu` (lanes::v_silu).
__device__ __forceinline__ float v_silu(float x) { return x / (1.0f + v_expf(0.0f - x)); }

// ggml_vec_swiglu_f32's element i of n (ops::swiglu): vectorized SiLU in the groups of 8.
__device__ __forceinline__ float swiglu_elem(float g, float u, int i, int n) {
    return (i < (n & ~7) ? v_silu(g) : silu_ref(g)) * u;
}

// hsum_float_8 (lanes::hsum_float_8) of eight values held by eight consecutive threads of a
// warp (lane k of the sum in thread `base + k`): ((x0+x4)+(x2+x6)) + ((x1+x5)+(x3+x7)) by xor
// shuffles 4, 2, 1. Every thread of the group gets the sum. `mask` covers the calling threads.
__device__ __forceinline__ float hsum8_shfl(float v, unsigned mask) {
    v += __shfl_xor_sync(mask, v, 4);
    v += __shfl_xor_sync(mask, v, 2);
    v += __shfl_xor_sync(mask, v, 1);
    return v;
}

// GGML_F32x8_REDUCE of four 8-lane accumulators (lanes::reduce_f32x8_4), acc[8*j + l].
__device__ __forceinline__ float reduce_f32x8_4(const float* acc) {
    float x0[8];
#pragma unroll
    for (int l = 0; l < 8; l++) x0[l] = (acc[l] + acc[16 + l]) + (acc[8 + l] + acc[24 + l]);
    float t0 = x0[0] + x0[4], t1 = x0[1] + x0[5], t2 = x0[2] + x0[6], t3 = x0[3] + x0[7];
    return (t0 + t1) + (t2 + t3);
}

// ggml_vec_dot_f32 (quant::vec_dot_f32) of x and y, n elements, both in shared or global memory:
// four 8-lane fused accumulators over each 32 elements, the reduction above, then the n % 32
// leftovers by eights and fours (products rounded, added in order) and the rest fused.
__device__ __forceinline__ float vec_dot_f32_ref(const float* x, const float* y, int n) {
    float acc[32];
#pragma unroll
    for (int i = 0; i < 32; i++) acc[i] = 0.0f;
    int np = n & ~31;
    for (int i = 0; i < np; i += 32) {
#pragma unroll
        for (int e = 0; e < 32; e++) acc[e] = fmaf(x[i + e], y[i + e], acc[e]);
    }
    float sum = reduce_f32x8_4(acc);
    int i = np;
    while (n - i >= 8) {
        for (int e = i; e < i + 8; e++) sum = sum + x[e] * y[e];
        i += 8;
    }
    if (n - i >= 4) {
        for (int e = i; e < i + 4; e++) sum = sum + x[e] * y[e];
        i += 4;
    }
    for (; i < n; i++) sum = fmaf(x[i], y[i], sum);
    return sum;
}

// Fixed butterfly reductions within a warp (all 32 lanes active). Max and integer sums are exact
// in any order; the f64 sum uses the same xor tree on every call.
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ int warp_sum_i32(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
// Integer maximum and sum over a warp (exact: any order gives the same result).
__device__ __forceinline__ u64 warp_max_u64(u64 v) {
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ u64 warp_sum_u64(u64 v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_f64(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Block-wide f64 sum in a fixed order: each warp's butterfly, then warp 0 sums the warp totals
// by the same butterfly. `scratch` holds 32 doubles. blockDim.x must be a multiple of 32.
__device__ double block_sum_f64(double v, double* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = warp_sum_f64(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double w = lane < n_warps ? scratch[lane] : 0.0;
        w = warp_sum_f64(w);
        if (lane == 0) scratch[0] = w;
    }
    __syncthreads();
    double total = scratch[0];
    __syncthreads();
    return total;
}

// A block-wide f64 sum in another fixed order, with two barriers instead of four: each warp's
// butterfly, then every thread adds the warp totals in warp order itself. For sums whose order
// is free (rms_mean_exact's input). `scratch` holds 32 doubles; blockDim.x % 32 == 0.
__device__ __forceinline__ double block_sum_f64_2(double v, double* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = warp_sum_f64(v);
    __syncthreads();  // the previous call's readers are done with scratch
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double total = scratch[0];
    for (int w = 1; w < n_warps; w++) total += scratch[w];
    return total;
}

__device__ float block_max_f32(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < n_warps ? scratch[lane] : NEG_INF;
        w = warp_max(w);
        if (lane == 0) scratch[0] = w;
    }
    __syncthreads();
    float total = scratch[0];
    __syncthreads();
    return total;
}

// quantize_row_q8_1 for one block of 32 held one value per lane (quant.rs `quantize_block`):
// d = amax/127 stored as f16, q = round_half_even(x * (127/amax)), s = f16(d * sum q) with the
// unrounded d. Writes 32 int8 (lane i writes qs[i]) and (d, s) as floats (lane 0).
// Not inlined: its two IEEE divisions expand to a lot of code, and it is called from many sites;
// one shared copy keeps the persistent decode kernel's hot code small (instruction cache).
__device__ __noinline__ void quantize_block_warp(float x, i8* qs, float2* ds) {
    int lane = threadIdx.x & 31;
    float amax = warp_max(fabsf(x));
    float d = amax / 127.0f;
    float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int q = __float2int_rn(x * id);
    qs[lane] = (i8)q;
    int sum = warp_sum_i32(q);
    if (lane == 0) *ds = make_float2(f16_round(d), f16_round(d * (float)sum));
}

// The CPU's mean of squares, `(float)(sequential f64 sum / dim)`, from `sum`, the same squares
// summed in f64 by a fixed tree. Both f64 sums lie within (dim-1)·2^-53·Σ of the exact one
// (every term is >= 0), so when the interval sum ± 2(dim-1)·2^-53·sum (widened by 1%) maps to a
// single float, that float is the CPU's (division and rounding are monotonic); otherwise, about
// once in 10^6 rows, thread 0 redoes the CPU's sequential sum in index order. Block-uniform:
// every thread passes the same `sum` and gets the same mean.
__device__ __noinline__ float rms_mean_exact(const float* xr, int dim, double sum) {
    __shared__ float mean_s;
    const double delta = sum * (2.0 * (double)(dim - 1) * 1.1102230246251565e-16 * 1.01);
    const float lo = (float)((sum - delta) / (double)dim), hi = (float)((sum + delta) / (double)dim);
    if (lo == hi) return lo;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int i = 0; i < dim; i++) {
            float v = xr[i];
            s += (double)(v * v);
        }
        mean_s = (float)(s / (double)dim);
    }
    __syncthreads();
    return mean_s;
}

// 1/sqrt(mean(x^2) + eps) of one row, as ops::rmsnorm: squares in f32 widened to f64, summed per
// thread in index order, then by block_sum_f64's fixed tree, the mean made the CPU's by
// rms_mean_exact. Every thread gets the result.
__device__ __forceinline__ float rms_scale(const float* xr, int dim, float eps) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = xr[i];
        s += (double)(v * v);
    }
    double sum = block_sum_f64(s, scratch);
    float mean = rms_mean_exact(xr, dim, sum);
    return 1.0f / sqrtf(mean + eps);
}

// rmsnorm_q8 of one row (ops::rmsnorm then quantize_row_q8_1), with every load issued up front:
// thread t holds x[t + blockDim.x * j] and w[...] in registers. Those are exactly the elements,
// in exactly the order, that rms_scale's thread t sums, and with blockDim.x a multiple of 32,
// element t + blockDim.x * j lies in Q8_1 block (warp + n_warps * j) at lane t % 32, the block
// that warp quantizes in rmsnorm_q8's loop: the same arithmetic, bit for bit, in one round trip
// to memory instead of one per block. Rows longer than NORM_MAXJ * blockDim.x take that loop.
#define NORM_MAXJ 8
__device__ __forceinline__ void rmsnorm_q8_regs(const float* xr, const float* __restrict__ w, int dim, float eps,
                                                float* out, float* tap, i8* aq, float2* ads) {
    __shared__ double nscratch[32];
    const int bd = blockDim.x, t = threadIdx.x;
    if (dim > NORM_MAXJ * bd) {
        float scale = rms_scale(xr, dim, eps);
        int lane = t & 31, warp = t >> 5, n_warps = bd >> 5;
        for (int b = warp; b < dim / QK; b += n_warps) {
            int i = b * QK + lane;
            float o = (xr[i] * scale) * w[i];
            if (out) out[i] = o;
            if (tap) tap[i] = o;
            quantize_block_warp(o, aq + b * QK, ads + b);
        }
        return;
    }
    float xv[NORM_MAXJ], wv[NORM_MAXJ];
#pragma unroll
    for (int j = 0; j < NORM_MAXJ; j++) {
        int i = t + bd * j;
        xv[j] = i < dim ? xr[i] : 0.0f;
        wv[j] = i < dim ? w[i] : 0.0f;
    }
    double s = 0.0;
#pragma unroll
    for (int j = 0; j < NORM_MAXJ; j++) {
        if (t + bd * j < dim) s += (double)(xv[j] * xv[j]);
    }
    double sum = block_sum_f64(s, nscratch);
    float mean = rms_mean_exact(xr, dim, sum);
    float scale = 1.0f / sqrtf(mean + eps);
#pragma unroll
    for (int j = 0; j < NORM_MAXJ; j++) {
        int i = t + bd * j;
        if (i - (t & 31) >= dim) break;  // warp-uniform (dim % 32 == 0)
        float o = (xv[j] * scale) * wv[j];
        if (out) out[i] = o;
        if (tap) tap[i] = o;
        quantize_block_warp(o, aq + (i / QK) * QK, ads + i / QK);
    }
}

// quantize_block_warp's arithmetic with eight threads per Q8_1 block, four adjacent elements
// each (thread sub = t % 8 holds elements 4 sub .. 4 sub + 3): the exact max and the exact
// integer sum meet by three xor shuffles in the group of eight, then the same two divisions
// and round half even. Every lane of the warp must call it (the shuffles); `store` says
// whether this lane's group writes (qs: its four quants, ds: the block's (d, s), by sub 0).
__device__ __forceinline__ void quantize4_g8(float o0, float o1, float o2, float o3, bool store, i8* qs, float2* ds) {
    float amax = fmaxf(fmaxf(fabsf(o0), fabsf(o1)), fmaxf(fabsf(o2), fabsf(o3)));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 4));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    const int q0 = __float2int_rn(o0 * id), q1 = __float2int_rn(o1 * id);
    const int q2 = __float2int_rn(o2 * id), q3 = __float2int_rn(o3 * id);
    int isum = q0 + q1 + q2 + q3;
    isum += __shfl_xor_sync(0xffffffffu, isum, 4);
    isum += __shfl_xor_sync(0xffffffffu, isum, 2);
    isum += __shfl_xor_sync(0xffffffffu, isum, 1);
    if (store) {
        *(u32*)qs = (u32)(q0 & 0xff) | ((u32)(q1 & 0xff) << 8) | ((u32)(q2 & 0xff) << 16) | ((u32)(q3 & 0xff) << 24);
        if ((threadIdx.x & 7) == 0) *ds = make_float2(f16_round(d), f16_round(d * (float)isum));
    }
}

// At most this many rounds of blockDim.x / 8 Q8_1 blocks are held in registers at once by the
// eight-thread quantizers below (all their loads in flight before the first is used).
#define G8_MAXR 4

// quantize_row_q8_1 of one row of `dim` floats (dim % 32 == 0) into aq/ads, by quantize4_g8:
// 16-byte loads, blockDim.x / 8 blocks per round, every round's load issued before the first
// round is quantized when the row fits G8_MAXR rounds. Bitwise quantize_block_warp's blocks.
__device__ __forceinline__ void quantize_q8_g8(const float* xr, int dim, i8* aq, float2* ads) {
    const int t = threadIdx.x, per = blockDim.x / 8, nb = dim / QK, sub = t & 7;
    if (nb <= G8_MAXR * per) {
        float4 v[G8_MAXR];
#pragma unroll
        for (int j = 0; j < G8_MAXR; j++) {
            const int b = t / 8 + per * j;
            v[j] = b < nb ? *(const float4*)(xr + b * QK + 4 * sub) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int j = 0; j < G8_MAXR; j++) {
            if (per * j >= nb) break;  // block-uniform: every lane joins the shuffles
            const int b = t / 8 + per * j;
            quantize4_g8(v[j].x, v[j].y, v[j].z, v[j].w, b < nb, aq + b * QK + 4 * sub, ads + b);
        }
        return;
    }
    for (int b0 = 0; b0 < nb; b0 += per) {  // block-uniform: every lane joins the shuffles
        const int b = b0 + t / 8;
        float4 v = b < nb ? *(const float4*)(xr + b * QK + 4 * sub) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        quantize4_g8(v.x, v.y, v.z, v.w, b < nb, aq + b * QK + 4 * sub, ads + b);
    }
}

// rmsnorm_q8_regs with eight threads per Q8_1 block, four adjacent elements each (16-byte
// loads): thread t takes block t / 8 + (blockDim.x / 8) * j, elements 4 (t % 8) .. + 3. The same
// values: the f64 sum of squares reaches its f32 mean through rms_mean_exact, which gives the
// CPU's mean for any order of the (non-negative) terms, `o = (x * scale) * w` per element, and
// each block quantized as quantize_block_warp does (exact max, the same two divisions, round
// half even, exact integer sum), its amax and sum met by three xor shuffles in the group of
// eight instead of five in a warp. A block of 128 threads quantizes 16 blocks per round instead
// of 4. Rows longer than G8_MAXR rounds take rmsnorm_q8_regs. dim % 32 == 0; blockDim.x % 32 == 0.
// `out` and `tap`, when not null, get the normalized row as f32 (as rmsnorm_q8_regs).
__device__ __forceinline__ void rmsnorm_q8_g8(const float* xr, const float* __restrict__ w, int dim, float eps,
                                              i8* aq, float2* ads, float* out = 0, float* tap = 0) {
    __shared__ double gscratch[32];
    const int t = threadIdx.x, per = blockDim.x / 8, nb = dim / QK;
    if (nb > G8_MAXR * per) {
        rmsnorm_q8_regs(xr, w, dim, eps, out, tap, aq, ads);
        return;
    }
    const int sub = t & 7;
    float4 xv[G8_MAXR], wv[G8_MAXR];
#pragma unroll
    for (int j = 0; j < G8_MAXR; j++) {
        const int b = t / 8 + per * j, i = b * QK + 4 * sub;
        if (b < nb) {
            xv[j] = *(const float4*)(xr + i);
            wv[j] = *(const float4*)(w + i);
        } else {
            xv[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            wv[j] = xv[j];
        }
    }
    double s = 0.0;
#pragma unroll
    for (int j = 0; j < G8_MAXR; j++) {
        if (per * j >= nb) break;  // block-uniform: rounds past the row hold only zeros
        s += (double)(xv[j].x * xv[j].x);
        s += (double)(xv[j].y * xv[j].y);
        s += (double)(xv[j].z * xv[j].z);
        s += (double)(xv[j].w * xv[j].w);
    }
    const double sum = block_sum_f64_2(s, gscratch);
    const float mean = rms_mean_exact(xr, dim, sum);
    const float scale = 1.0f / sqrtf(mean + eps);
#pragma unroll
    for (int j = 0; j < G8_MAXR; j++) {
        if (per * j >= nb) break;  // block-uniform
        const int b = t / 8 + per * j;
        float o0 = (xv[j].x * scale) * wv[j].x, o1 = (xv[j].y * scale) * wv[j].y;
        float o2 = (xv[j].z * scale) * wv[j].z, o3 = (xv[j].w * scale) * wv[j].w;
        if (b < nb) {
            const int i = b * QK + 4 * sub;
            if (out) *(float4*)(out + i) = make_float4(o0, o1, o2, o3);
            if (tap) *(float4*)(tap + i) = make_float4(o0, o1, o2, o3);
        }
        quantize4_g8(o0, o1, o2, o3, b < nb, aq + b * QK + 4 * sub, ads + b);
    }
}

// Asynchronous global -> shared copies (sm_80+ cp.async): issued now, waited for with
// cp_async_wait<N> (all but the newest N committed groups done) and a __syncthreads.
__device__ __forceinline__ u32 smem_addr(const void* p) {
    u64 a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (u32)a;
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(smem_addr(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async8(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" :: "r"(smem_addr(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" :: "r"(smem_addr(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }

// Copies `bytes` (a multiple of 4) from global `src` to shared `dst`, thread t of nt issuing
// every nt-th cp.async (a thread with t < 0 issues none): 16-byte pieces when both ends are
// 16-byte aligned, else 4-byte ones.
__device__ __forceinline__ void cp_async_bytes_by(void* dst, const void* src, size_t bytes, int t, int nt) {
    if (t < 0) return;
    if ((((size_t)src | (size_t)smem_addr(dst) | bytes) & 15) == 0) {
        for (size_t i = (size_t)t * 16; i < bytes; i += (size_t)nt * 16)
            cp_async16((char*)dst + i, (const char*)src + i);
    } else {
        for (size_t i = (size_t)t * 4; i < bytes; i += (size_t)nt * 4)
            cp_async4((char*)dst + i, (const char*)src + i);
    }
}

// Pulls the 128-byte lines of [p, p + bytes) towards L2, thread t of nt taking every nt-th line.
__device__ __forceinline__ void prefetch_lines(const void* p, size_t bytes, int t, int nt) {
    if (t < 0 || bytes == 0) return;
    const size_t a = (size_t)p & ~(size_t)127, end = (size_t)p + bytes;
    for (size_t q = a + (size_t)t * 128; q < end; q += (size_t)nt * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(q));
}
