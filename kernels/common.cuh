// common.cuh: types, f16/bf16 conversions, glibc's expf, and fixed-order reductions shared by
// every kernel in kernels/. Prepended to each .cu file by `backend::cuda::kernels` before NVRTC
// compiles it (NVRTC has no file system here), so no file includes it itself.
//
// Numerics contract: the kernels are compiled with --fmad=false --ftz=false --prec-div=true
// --prec-sqrt=true, so every float expression rounds exactly as the same expression written in
// Rust (which never contracts a*b+c into an FMA). Together with a reduction order copied from
// the CPU reference wherever that order is visible in f32, this makes most kernels bitwise
// equal to backend::cpu. Reductions the CPU does in f64 (RMSNorm's sum of squares, softmax's
// sum) are a fixed f64 tree here: they equal the CPU's sequential f64 sum after rounding to f32
// except when the f64 sums straddle an f32 rounding boundary (probability ~1e-7 per row).

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

// ggml_silu_f32 / ops::silu.
__device__ __forceinline__ float silu_ref(float x) { return x / (1.0f + expf_glibc(-x)); }

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

// 1/sqrt(mean(x^2) + eps) of one row, as ops::rmsnorm: squares in f32 widened to f64, summed per
// thread in index order, then by block_sum_f64's fixed tree. Every thread gets the result.
__device__ __forceinline__ float rms_scale(const float* xr, int dim, float eps) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = xr[i];
        s += (double)(v * v);
    }
    double sum = block_sum_f64(s, scratch);
    float mean = (float)(sum / (double)dim);
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
    float mean = (float)(sum / (double)dim);
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
