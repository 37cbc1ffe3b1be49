// decode.cu: `decoder_layers`, the whole layer stack of one decode step (one position) in one
// persistent kernel. Its CPU reference is backend::cpu::CpuBackend::decoder_layers (the layer
// loop of the forward pass, followed by the final norm); NVRTC compiles this file after
// rmsnorm.cu, matvec.cu and attention.cu, whose per-block device functions it runs.
//
// Why: a decode step of SmolLM2 is ~150 small kernels whose launch gaps and ramp-up/drain cost
// more than their work. Here the grid stays resident (cooperative launch, one block of 128
// threads per SM) and the kernel boundaries become grid barriers. Per layer:
//   A  Q|K|V product with the attention norm fused, bias + RoPE + KV-cache store (MODE_QKV)
//   B  attention, one item per head, output quantized to Q8_1
//   C  output projection added to x (MODE_ADD)
//   D  gate|up product with the FFN norm fused, SwiGLU + Q8_1 (MODE_SWIGLU)
//   E  down projection added to x (MODE_ADD), copied to the trace slot of l_out-l
// then the final RMSNorm (result_norm, Q8_1 for the logits kernel that follows).
// Work item i of a phase is exactly virtual block i of the standalone kernel's grid, computed by
// the same device function with the same thread mapping, so every value is bitwise what the
// per-op kernels (and so the CPU backend) produce, whatever the grid size. Block b takes items
// b, b + gridDim.x, ...; the assignment changes nothing numerically.
//
// Grid barrier: a launch-spanning arrival counter (see grid_barrier); the atomics order threads
// and carry no data, so there are no atomics in any arithmetic. Release/acquire make every
// block's global writes visible to all after the barrier.
// Activations are read through coherent loads (no __restrict__ on them, see matvec.cu).

struct Mat {
    const u8* qs;
    const u32* dm;
    int wt;
    int n_in;
    int n_out;
    int pad;
};

// One layer's weights and cache (backend::cuda::forward::LayerDesc, #[repr(C)]).
struct LayerDesc {
    Mat qkv, wo, gate_up, down;
    const float* attn_norm;
    const float* ffn_norm;
    const float* bq;
    const float* bk;
    const float* bv;
    float* k_cache;
    float* v_cache;
};

__device__ __forceinline__ u32 ld_acquire(const u32* p) {
    u32 v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ u64 globaltimer() {
    u64 t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}

// Barrier k of a launch: every block adds 1 to the counter bar[0] (a release reduction: its
// writes are visible before the count) and waits until the count reaches base + (k+1) * grid,
// where base (params[1]) is the counter's value before the launch, kept by the host (each
// launch adds exactly 5 * n_layers * grid). The counter wraps; comparisons are modular. A
// block that waits more than 2 s traps (a launch error, never a hung device).
// `prof` (profiling only, else null): per barrier k and block b, the time the block arrived
// and left, at prof[2 * (k * gridDim.x + b)] and the next word (ns, %globaltimer).
// Split in two: grid_arrive (after the block's last global write of the phase) and grid_wait;
// between them a block may only issue work that writes no global memory (prefetches, copies
// into its own shared memory), which then overlaps the other blocks' arrivals.
#define DEC_ROWS 8

__device__ __forceinline__ void grid_arrive(u32* bar, u64* prof, int k) {
    __syncthreads();
    if (threadIdx.x == 0) {
        if (prof) prof[2 * ((size_t)k * gridDim.x + blockIdx.x)] = globaltimer();
        asm volatile("red.release.gpu.global.add.u32 [%0], %1;" :: "l"(bar), "r"(1u) : "memory");
    }
}

__device__ __forceinline__ void grid_wait(u32* bar, u32 base, u64* prof, int& k) {
    if (threadIdx.x == 0) {
        const u32 target = base + (u32)(k + 1) * gridDim.x;
        u64 t0 = 0;
        for (int spin = 0; (int)(ld_acquire(bar) - target) < 0; spin++) {
            if ((spin & 1023) == 1023) {
                u64 now = globaltimer();
                if (t0 == 0) t0 = now;
                else if (now - t0 > 2000000000ull) __trap();
            }
        }
        if (prof) prof[2 * ((size_t)k * gridDim.x + blockIdx.x) + 1] = globaltimer();
    }
    k++;
    __syncthreads();
}

__device__ __forceinline__ void grid_barrier(u32* bar, u32 base, u64* prof, int& k) {
    grid_arrive(bar, prof, k);
    grid_wait(bar, base, prof, k);
}

__device__ __forceinline__ void st_release(u32* p, u32 v) {
    asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// Per-item flags (DEC_HEAD_FLAGS), at bar + 4: after its arrival at barrier k, a block stores
// that barrier's target (base + (k + 1) * grid, see grid_wait) into the flag of each Q|K|V item
// it computed (a release store after the arrival's __syncthreads: the item's q rows and cache
// stores are visible before the flag). Targets only grow (modulo 2^32, compared modularly) and
// a flag is at most one layer behind the one awaited (the next layer's stores come after
// barriers that the waiting block must pass first), so the flags are never reset.
__device__ __forceinline__ void item_flags_set(u32* iflag, u32 base, int k, int items) {
    if (threadIdx.x == 0) {
        const u32 target = base + (u32)(k + 1) * gridDim.x;
        for (int it = blockIdx.x; it < items; it += gridDim.x) st_release(iflag + it, target);
    }
}

// In place of grid_wait at the end of phase A: the block waits only for the Q|K|V items its
// attention heads read (head h's q rows, its KV head's k and v rows; each lane one item, an
// acquire load, the 2 s trap of grid_wait), then goes on; a block with no head goes on at once.
// Its arrival was counted, so the later barriers' targets are unchanged.
__device__ __forceinline__ void head_wait(const u32* iflag, u32 base, u64* prof, int& k, int h0, int n_heads,
                                          int n_kv_heads, int head_dim, int dim) {
    const u32 target = base + (u32)(k + 1) * gridDim.x;
    const int kv_dim = n_kv_heads * head_dim;
    for (int h = h0; h < n_heads; h += gridDim.x) {
        const int kvh = h / (n_heads / n_kv_heads);
        const int r0[3] = {h * head_dim, dim + kvh * head_dim, dim + kv_dim + kvh * head_dim};
        for (int s = 0; s < 3; s++) {
            const int i1 = (r0[s] + head_dim - 1) / DEC_ROWS;
            for (int i = r0[s] / DEC_ROWS + threadIdx.x; i <= i1; i += blockDim.x) {
                u64 t0 = 0;
                for (int spin = 0; (int)(ld_acquire(iflag + i) - target) < 0; spin++) {
                    if ((spin & 1023) == 1023) {
                        u64 now = globaltimer();
                        if (t0 == 0) t0 = now;
                        else if (now - t0 > 2000000000ull) __trap();
                    }
                }
            }
        }
    }
    __syncthreads();
    if (prof && threadIdx.x == 0) prof[2 * ((size_t)k * gridDim.x + blockIdx.x) + 1] = globaltimer();
    k++;
}

template <int WT>
__device__ __forceinline__ void mv_prefetch(const Mat& m, int mode, int rows, int ffn, int bx) {
    matvec_prefetch<WT>(m.qs, m.n_in, m.n_out, mode, rows, ffn, bx);
}

template <int WT>
__device__ __forceinline__ void mv_block(const Mat& m, const i8* aq, const float2* ads, float* out, float* tap,
                                         int out_stride, int mode, int rows, QkvEpi qe, SwigluEpi se, NormIn ni,
                                         int bx, Staged st) {
    matvec_q_block<WT>(m.qs, m.dm, aq, ads, out, tap, m.n_in, m.n_out, out_stride, mode, 1, rows, 1, qe, se, ni, bx, 0,
                       st);
}

#define ROPE_ROW_MAX 256

// `flags` (backend::cuda::decode::Flags): speed only, every combination gives the same bits.
//   DEC_STAGE    each block copies the weights of its item of the next product phase but one
//                into shared memory (cp.async, two buffers of stage_bytes at stage_off) while it
//                works and waits, so the products read their weights from shared memory;
//   DEC_NORM_G8  the fused norms quantize with eight threads per block (rmsnorm_q8_g8);
//   DEC_PRELOAD  attention head h runs on block gridDim.x - 1 - h (the last blocks, which have
//                the fewest Q|K|V rows), and that block copies the head's cached K/V cells of
//                the first tile into shared memory before the barrier that ends phase A;
//   DEC_EARLY    (with DEC_PRELOAD) an attention block with no Q|K|V item issues the next
//                layer's tile preload as asynchronous copies (attention_preload_async) once
//                its last item of this layer is done (at the earliest after arriving in phase
//                C), and waits for them at the attention phase: the copies run while the block
//                idles through the barriers between, and no phase's barrier waits for them;
//   DEC_SPLIT_D  phase D in ffn/16 items of 16 gate + 16 up rows (twice the blocks, half the
//                rows each) storing the SwiGLU row as f32; each item of phase E quantizes that
//                row itself (quantize_q8_g8: the same Q8_1 blocks the 32-row items make).
//   DEC_HEAD_FLAGS  no grid-wide wait between A and B: each block flags its Q|K|V items
//                (item_flags_set) and an attention block waits for the items its heads read
//                (head_wait); the others go straight on to the barrier after B, which still
//                orders everything A wrote before phase C.
#define DEC_STAGE 1
#define DEC_NORM_G8 2
#define DEC_PRELOAD 4
#define DEC_EARLY 8
#define DEC_SPLIT_D 16
#define DEC_HEAD_FLAGS 32

// The bytes stage_item copies for one item: R rows (MODE_SWIGLU: H gate rows, then H up rows,
// R = 2H) of qs, then of dm.
template <int WT>
__device__ __forceinline__ size_t stage_qs_bytes(const Mat& m, int R) {
    return (size_t)R * (m.n_in / QK) * (WT == WT_Q8_0 ? 32 : 16);
}

// Starts the copy of item bx's weights into `buf` (if the phase has that item) and commits one
// cp.async group either way, so every thread commits the same groups in the same order.
template <int WT>
__device__ __forceinline__ void stage_item(const Mat& m, int mode, int R, int ffn, int bx, int items, char* buf) {
    if (bx < items) {
        const size_t nb = m.n_in / QK, qrow = nb * (WT == WT_Q8_0 ? 32 : 16), drow = nb * 4;
        char* dbuf = buf + stage_qs_bytes<WT>(m, R);
        if (mode == MODE_SWIGLU) {
            const size_t H = R / 2, g = (size_t)bx * H, u = (size_t)ffn + (size_t)bx * H;
            cp_async_bytes(buf, m.qs + g * qrow, H * qrow);
            cp_async_bytes(buf + H * qrow, m.qs + u * qrow, H * qrow);
            cp_async_bytes(dbuf, (const char*)m.dm + g * drow, H * drow);
            cp_async_bytes(dbuf + H * drow, (const char*)m.dm + u * drow, H * drow);
        } else {
            const size_t r0 = (size_t)bx * R, n = min(R, m.n_out - bx * R);
            cp_async_bytes(buf, m.qs + r0 * qrow, n * qrow);
            cp_async_bytes(dbuf, (const char*)m.dm + r0 * drow, n * drow);
        }
    }
    cp_async_commit();
}

template <int WT>
__device__ __forceinline__ Staged staged_at(const Mat& m, int R, char* buf, bool on) {
    if (!on) return Staged{0, 0};
    return Staged{(const u8*)buf, (const u32*)(buf + stage_qs_bytes<WT>(m, R))};
}

// Launch: cooperative, grid <= resident blocks (one per SM), block 128, dynamic shared memory
// = max over the phases (matvec_smem of each product, attention_smem_dual), then with DEC_STAGE
// two staging buffers (stage_off, stage_bytes: the largest item of any product).
// x (dim) holds the embedding on entry and l_out-(n_layers-1) on exit; xn/xn_aq/xn_ads get
// result_norm. `tap`, when not null, is the trace buffer: slot 1 + l gets l_out-l and slot
// n_layers + 1 result_norm (slot 0, embd, is the embedding kernel's). `prof`: see grid_barrier;
// its last row holds each block's start time and (block 0) the end of the final norm.
// Staging schedule (buffer 0: A and D, buffer 1: C and E; a buffer is refilled only after the
// barrier that ends the phase reading it): A(l) copies C(l), B(l) copies D(l), D(l) copies E(l),
// E(l) copies A(l+1); before layer 0 A(0) is copied. Each product waits for all but the newest
// group (cp_async_wait<1>), which is always its own plus the one issued after it; a block with
// no item in a phase skips the wait (a later wait covers every older group anyway).
template <int WT>
__device__ __forceinline__ void decoder_layers(const LayerDesc* __restrict__ layers, int n_layers, float* x, float* q,
                                          float* attn, i8* attn_aq, float2* attn_ads, float* sw, i8* sw_aq,
                                          float2* sw_ads, float* xn, i8* xn_aq, float2* xn_ads, const float* __restrict__ output_norm,
                                          float* tap, const float* __restrict__ rope_table,
                                          const int* __restrict__ params, int dim, int kv_dim, int head_dim,
                                          int n_heads, int n_kv_heads, int ffn, float eps, float scale, u32* bar,
                                          u64* prof, int flags, int stage_off, int stage_bytes) {
    extern __shared__ float sh[];
    pdl_wait();
    int k = 0;
    const u32 base = (u32)params[1];
    if (prof && threadIdx.x == 0) prof[2 * ((size_t)5 * n_layers * gridDim.x + blockIdx.x)] = globaltimer();
    const int nblk = gridDim.x, bid = blockIdx.x;
    const int qkv_w = dim + 2 * kv_dim;
    const int items_a = (qkv_w + DEC_ROWS - 1) / DEC_ROWS, items_c = (dim + DEC_ROWS - 1) / DEC_ROWS;
    const bool split = flags & DEC_SPLIT_D;
    const int rows_d = split ? 32 : 64;
    const int items_d = ffn / (rows_d / 2), items_e = items_c;
    const bool stage = flags & DEC_STAGE, pre = flags & DEC_PRELOAD, hflags = flags & DEC_HEAD_FLAGS;
    const int g8 = (flags & DEC_NORM_G8) ? 1 : 0;
    char* buf0 = (char*)sh + stage_off;
    char* buf1 = buf0 + stage_bytes;
    const QkvEpi qe0 = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    // This position's RoPE row, read once per step (every layer's Q|K|V epilogue uses it).
    __shared__ float rope_s[ROPE_ROW_MAX];
    const bool rope_in_smem = head_dim <= ROPE_ROW_MAX;
    if (rope_in_smem)
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) rope_s[i] = rope_table[(size_t)params[0] * head_dim + i];
    __syncthreads();
    const SwigluEpi se0 = {0, 0, 0, 0};
    const NormIn ni0 = {0, 0, 0.0f, 0};
    const Staged none = {0, 0};
    // Attention heads: block bid serves h0, h0 + nblk, ...; with DEC_PRELOAD the last blocks.
    const int h0 = pre ? nblk - 1 - bid : bid;
    // DEC_EARLY: the phase (2 C .. 4 E) after whose arrival this block issues the next layer's
    // preload: that of its last item of a layer, at the earliest C (issuing takes the block a
    // while after it arrives; after C the long D phase hides that, after B the short C would
    // wait for it). Blocks with a Q|K|V item keep preloading in phase A.
    const bool early = pre && (flags & DEC_EARLY) && h0 < n_heads && bid >= items_a;
    const int last = bid < items_e ? 4 : bid < items_d ? 3 : 2;
    // cp.async groups: with DEC_EARLY the preload is one group of its own, committed before the
    // staging group of the phase after it, so every cp_async_wait<1> of a product still
    // leaves only its successor's group pending (the preload, older, is waited for too).
    if (early)
        attention_preload_async(layers[0].k_cache, layers[0].v_cache, params, n_heads, n_kv_heads, head_dim, h0);
    if (stage) stage_item<WT>(layers[0].qkv, MODE_QKV, DEC_ROWS, 0, bid, items_a, buf0);
    for (int l = 0; l < n_layers; l++) {
        const LayerDesc& L = layers[l];
        const bool more = l + 1 < n_layers;
        // DEC_EARLY's preload of layer l + 1, run after this block's arrival in phase p.
        auto preload_next = [&](int p) {
            if (early && more && last == p)
                attention_preload_async(layers[l + 1].k_cache, layers[l + 1].v_cache, params, n_heads,
                                        n_kv_heads, head_dim, h0);
        };
        // A: Q|K|V with the attention norm, bias, RoPE, cache store.
        {
            if (stage) {
                stage_item<WT>(L.wo, MODE_ADD, DEC_ROWS, 0, bid, items_c, buf1);
                if (bid < items_a) cp_async_wait<1>();
            }
            QkvEpi qe = {q, L.k_cache, L.v_cache, rope_table, params, L.bq, L.bk, L.bv, dim, kv_dim, head_dim,
                         rope_in_smem ? rope_s : 0};
            NormIn ni = {x, L.attn_norm, eps, g8};
            for (int it = bid; it < items_a; it += nblk)
                mv_block<WT>(L.qkv, 0, 0, 0, 0, qkv_w, MODE_QKV, DEC_ROWS, qe, se0, ni, it,
                             it == bid ? staged_at<WT>(L.qkv, DEC_ROWS, buf0, stage) : none);
            grid_arrive(bar, prof, k);
            if (hflags) item_flags_set(bar + 4, base, k, items_a);
            if (stage) {
                for (int it = bid; it < items_d; it += nblk) mv_prefetch<WT>(L.gate_up, MODE_SWIGLU, rows_d, ffn, it);
            } else {
                for (int it = bid; it < items_c; it += nblk) mv_prefetch<WT>(L.wo, MODE_ADD, DEC_ROWS, 0, it);
            }
            if (pre && h0 < n_heads && !early)
                attention_preload(L.k_cache, L.v_cache, params, n_heads, n_kv_heads, head_dim, h0);
        }
        if (hflags) head_wait(bar + 4, base, prof, k, h0, n_heads, n_kv_heads, head_dim, dim);
        else grid_wait(bar, base, prof, k);
        // B: attention, one head per item. DEC_EARLY: the preload's group is complete once
        // at most the newest group (phase A's staging of C, with DEC_STAGE) is pending.
        if (early) {
            if (stage) cp_async_wait<1>();
            else cp_async_wait<0>();
        }
        if (stage) stage_item<WT>(L.gate_up, MODE_SWIGLU, rows_d, ffn, bid, items_d, buf0);
        for (int h = h0; h < n_heads; h += nblk)
            attention_head(q, L.k_cache, L.v_cache, attn, attn_aq, attn_ads, params, n_heads, n_kv_heads, head_dim,
                           scale, h, 0, true, pre && h == h0);
        grid_arrive(bar, prof, k);
        if (stage)
            for (int it = bid; it < items_e; it += nblk) mv_prefetch<WT>(L.down, MODE_ADD, DEC_ROWS, 0, it);
        grid_wait(bar, base, prof, k);
        // C: output projection into the residual stream.
        {
            if (stage && bid < items_c) cp_async_wait<1>();
            for (int it = bid; it < items_c; it += nblk)
                mv_block<WT>(L.wo, attn_aq, attn_ads, x, 0, dim, MODE_ADD, DEC_ROWS, qe0, se0, ni0, it,
                             it == bid ? staged_at<WT>(L.wo, DEC_ROWS, buf1, stage) : none);
            grid_arrive(bar, prof, k);
            if (stage) {
                if (more)
                    for (int it = bid; it < items_a; it += nblk) mv_prefetch<WT>(layers[l + 1].qkv, MODE_QKV, DEC_ROWS, 0, it);
            } else {
                for (int it = bid; it < items_d; it += nblk) mv_prefetch<WT>(L.gate_up, MODE_SWIGLU, rows_d, ffn, it);
            }
            preload_next(2);
        }
        grid_wait(bar, base, prof, k);
        // D: gate|up with the FFN norm, SwiGLU, Q8_1.
        {
            if (stage) {
                stage_item<WT>(L.down, MODE_ADD, DEC_ROWS, 0, bid, items_e, buf1);
                if (bid < items_d) cp_async_wait<1>();
            }
            SwigluEpi se = {split ? sw : 0, sw_aq, sw_ads, ffn};
            NormIn ni = {x, L.ffn_norm, eps, g8};
            for (int it = bid; it < items_d; it += nblk)
                mv_block<WT>(L.gate_up, 0, 0, 0, 0, 2 * ffn, MODE_SWIGLU, rows_d, qe0, se, ni, it,
                             it == bid ? staged_at<WT>(L.gate_up, rows_d, buf0, stage) : none);
            grid_arrive(bar, prof, k);
            if (!stage)
                for (int it = bid; it < items_e; it += nblk) mv_prefetch<WT>(L.down, MODE_ADD, DEC_ROWS, 0, it);
            preload_next(3);
        }
        grid_wait(bar, base, prof, k);
        // E: down projection into the residual stream (l_out-l).
        {
            if (stage) {
                if (more) stage_item<WT>(layers[l + 1].qkv, MODE_QKV, DEC_ROWS, 0, bid, items_a, buf0);
                else cp_async_commit();
                if (bid < items_e) cp_async_wait<1>();
            }
            float* t = tap ? tap + (size_t)(1 + l) * dim : 0;
            const NormIn ni = {split ? sw : 0, 0, 0.0f, 0};
            for (int it = bid; it < items_e; it += nblk)
                mv_block<WT>(L.down, sw_aq, sw_ads, x, t, dim, MODE_ADD, DEC_ROWS, qe0, se0, ni, it,
                             it == bid ? staged_at<WT>(L.down, DEC_ROWS, buf1, stage) : none);
            grid_arrive(bar, prof, k);
            preload_next(4);
            if (more) {
                if (stage) {
                    for (int it = bid; it < items_c; it += nblk) mv_prefetch<WT>(layers[l + 1].wo, MODE_ADD, DEC_ROWS, 0, it);
                } else {
                    for (int it = bid; it < items_a; it += nblk) mv_prefetch<WT>(layers[l + 1].qkv, MODE_QKV, DEC_ROWS, 0, it);
                }
            }
        }
        grid_wait(bar, base, prof, k);
    }
    if (stage) cp_async_wait<0>();
    if (blockIdx.x == 0) {
        __syncthreads();
        float* t = tap ? tap + (size_t)(n_layers + 1) * dim : 0;
        if (g8) rmsnorm_q8_g8(x, output_norm, dim, eps, xn_aq, xn_ads, xn, t);
        else rmsnorm_q8_row(x, output_norm, xn, t, xn_aq, xn_ads, dim, eps, 0);
        __syncthreads();
        if (prof && threadIdx.x == 0) prof[2 * ((size_t)5 * n_layers * gridDim.x) + 1] = globaltimer();
    }
}

// One entry point per weight type (every layer matrix of that type), so each holds the code of
// one matvec variant only: the persistent kernel's loop body must stay small enough for the
// instruction cache (the launcher falls back to the per-op kernels for mixed types).
#define DECODER_LAYERS_KERNEL(name, WT)                                                                        \
    extern "C" __global__ void name(const LayerDesc* __restrict__ layers, int n_layers, float* x, float* q,    \
                                    float* attn, i8* attn_aq, float2* attn_ads, float* sw, i8* sw_aq,          \
                                    float2* sw_ads,                                                            \
                                    float* xn, i8* xn_aq, float2* xn_ads, const float* __restrict__ output_norm, \
                                    float* tap, const float* __restrict__ rope_table,                          \
                                    const int* __restrict__ params, int dim, int kv_dim, int head_dim,         \
                                    int n_heads, int n_kv_heads, int ffn, float eps, float scale, u32* bar,    \
                                    u64* prof, int flags, int stage_off, int stage_bytes) {                    \
        decoder_layers<WT>(layers, n_layers, x, q, attn, attn_aq, attn_ads, sw, sw_aq, sw_ads, xn, xn_aq, xn_ads, \
                           output_norm, tap, rope_table, params, dim, kv_dim, head_dim, n_heads, n_kv_heads,  \
                           ffn, eps, scale, bar, prof, flags, stage_off, stage_bytes);                         \
    }
DECODER_LAYERS_KERNEL(decoder_layers_q4_1, WT_Q4_1)
DECODER_LAYERS_KERNEL(decoder_layers_q4_0, WT_Q4_0)
DECODER_LAYERS_KERNEL(decoder_layers_q8_0, WT_Q8_0)
