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

__device__ __forceinline__ u32 ld_relaxed(const u32* p) {
    u32 v;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// Every spin loop below traps after 2 s of waiting (common.cuh's spin_timeout).

// The pause between two polls of a spin loop (DEC_BACKOFF: flags bits 12..15 times 32 ns; 0:
// none). Fewer polls in flight leave the L2 slices that hold the awaited words (and receive the
// arrivals) to the writers.
__device__ __forceinline__ void poll_pause(unsigned ns) {
    if (ns) __nanosleep(ns);
}

// Polls *p until it reaches `target` (modular comparison). `relaxed` (DEC_RELAXED): relaxed
// loads and one acquire fence once it has, instead of an acquire load per poll.
__device__ __forceinline__ void poll_until(const u32* p, u32 target, bool relaxed, unsigned pause) {
    u64 t0 = 0;
    if (relaxed) {
        for (int spin = 0; (int)(ld_relaxed(p) - target) < 0; spin++) {
            spin_timeout(spin, t0);
            poll_pause(pause);
        }
        asm volatile("fence.acq_rel.gpu;" ::: "memory");
    } else {
        for (int spin = 0; (int)(ld_acquire(p) - target) < 0; spin++) {
            spin_timeout(spin, t0);
            poll_pause(pause);
        }
    }
}

// Barrier number kb of a launch: every block adds 1 to the counter bar[0] (a release reduction:
// its writes are visible before the count) and waits until the count reaches base + (kb+1) *
// grid (barrier_target), where base (params[1]) is the counter's value before the launch, kept
// by the host (each launch adds exactly counter_advance: 5 barriers per layer, 1 with DEC_LL,
// none with DEC_LL_QKV too, times the grid). The counter wraps; comparisons are modular.
// `prof` (profiling only, else null): per phase k and block b, the time the block arrived
// (finished its items) and left (may start the next phase), at prof[2 * (k * gridDim.x + b)]
// and the next word (ns, %globaltimer). k counts the five phases of every layer in every mode.
// After those rows (and the row of start times), four words per phase and block: the stamps
// of matvec_q_block inside the block's first item of a product phase (see decoder_layers).
// Split in two: grid_arrive (after the block's last global write of the phase) and grid_wait;
// between them a block may only issue work that writes no global memory (prefetches, copies
// into its own shared memory), which then overlaps the other blocks' arrivals.
#define DEC_ROWS 8

__device__ __forceinline__ u32 barrier_target(u32 base, int kb) { return base + (u32)(kb + 1) * gridDim.x; }

__device__ __forceinline__ void stamp_arrived(u64* prof, int k) {
    if (prof && threadIdx.x == 0) prof[2 * ((size_t)k * gridDim.x + blockIdx.x)] = globaltimer();
}

__device__ __forceinline__ void stamp_left(u64* prof, int& k) {
    if (prof && threadIdx.x == 0) prof[2 * ((size_t)k * gridDim.x + blockIdx.x) + 1] = globaltimer();
    k++;
}

__device__ __forceinline__ void grid_arrive(u32* bar, u64* prof, int k) {
    __syncthreads();
    if (threadIdx.x == 0) {
        stamp_arrived(prof, k);
        asm volatile("red.release.gpu.global.add.u32 [%0], %1;" :: "l"(bar), "r"(1u) : "memory");
    }
}

__device__ __forceinline__ void grid_wait(u32* bar, u32 target, u64* prof, int& k, bool relaxed, unsigned pause) {
    if (threadIdx.x == 0) poll_until(bar, target, relaxed, pause);
    stamp_left(prof, k);
    __syncthreads();
}

__device__ __forceinline__ void st_release(u32* p, u32 v) {
    asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// Per-item flags (DEC_HEAD_FLAGS), at bar + 4: after its arrival at the barrier of `target`, a
// block stores that target into the flag of each Q|K|V item it computed (a release store after
// the arrival's __syncthreads: the item's q rows and cache stores are visible before the flag).
// Targets only grow (modulo 2^32, compared modularly) and a flag is at most one layer behind the
// one awaited (the next layer's stores come after barriers that the waiting block must pass
// first), so the flags are never reset.
__device__ __forceinline__ void item_flags_set(u32* iflag, u32 target, int items) {
    if (threadIdx.x == 0)
        for (int it = blockIdx.x; it < items; it += gridDim.x) st_release(iflag + it, target);
}

// In place of grid_wait at the end of phase A: the block waits only for the Q|K|V items its
// attention heads read (head h's q rows, its KV head's k and v rows; each lane one item, see
// poll_until), then goes on; a block with no head goes on at once. Its arrival was counted, so
// the later barriers' targets are unchanged.
__device__ __forceinline__ void head_wait(const u32* iflag, u32 target, u64* prof, int& k, int h0, int n_heads,
                                          int n_kv_heads, int head_dim, int dim, bool relaxed, unsigned pause) {
    const int kv_dim = n_kv_heads * head_dim;
    for (int h = h0; h < n_heads; h += gridDim.x) {
        const int kvh = h / (n_heads / n_kv_heads);
        const int r0[3] = {h * head_dim, dim + kvh * head_dim, dim + kv_dim + kvh * head_dim};
        for (int s = 0; s < 3; s++) {
            const int i1 = (r0[s] + head_dim - 1) / DEC_ROWS;
            for (int i = r0[s] / DEC_ROWS + threadIdx.x; i <= i1; i += blockDim.x) poll_until(iflag + i, target, relaxed, pause);
        }
    }
    __syncthreads();
    stamp_left(prof, k);
}

// DEC_LL: instead of a grid barrier, the consumer of a phase's output polls the output itself.
// The rows a phase writes for the next (x after the output projection and after the down
// projection, in two buffers; the attention output; the SwiGLU row) are flag-in-data words
// (common.cuh's st_ll) tagged with the layer's epoch, params[2] + 1 + l: the host moves
// params[2] by n_layers per launch, so no word left from an earlier launch carries an epoch
// this one awaits, and no buffer is rewritten before every reader of its previous contents is
// done (each rewrite depends, through the phases between, on every block's read). ll_gather copies the n values of
// src into dst (shared memory) once each carries epoch e; all of a thread's loads of a round are
// in flight before it checks any. It starts and ends with __syncthreads (dst may still be read
// by the previous phase; the next reads it from every thread).
#define LL_PER 16
// The general form: n_runs (1 to 3) runs of `run` words, run r from s_r into d_r (ll_gather:
// one run; ll_gather_head: three). The run's pointers are chosen by value, not indexed, so
// they stay in registers.
struct LLRuns { const u64* s0; const u64* s1; const u64* s2; float* d0; float* d1; float* d2; };
__device__ __forceinline__ void ll_gather_runs(const LLRuns& rs, int run, int n_runs, u32 e, unsigned pause) {
    __syncthreads();
    const int n = run * n_runs;
    for (int i0 = 0; i0 < n; i0 += LL_PER * blockDim.x) {
        u64 w[LL_PER];
#pragma unroll
        for (int j = 0; j < LL_PER; j++) {
            const int i = i0 + j * blockDim.x + threadIdx.x;
            const int r = n_runs == 1 ? 0 : i / run;
            const u64* src = r == 0 ? rs.s0 : r == 1 ? rs.s1 : rs.s2;
            w[j] = i < n ? ld_ll(src + (i - r * run)) : ((u64)e << 32);
        }
#pragma unroll
        for (int j = 0; j < LL_PER; j++) {
            const int i = i0 + j * blockDim.x + threadIdx.x;
            if (i < n) {
                const int r = n_runs == 1 ? 0 : i / run, d = i - r * run;
                const u64* src = r == 0 ? rs.s0 : r == 1 ? rs.s1 : rs.s2;
                float* dst = r == 0 ? rs.d0 : r == 1 ? rs.d1 : rs.d2;
                dst[d] = ll_await(src + d, w[j], e, pause);
            }
        }
    }
    __syncthreads();
}

__device__ __forceinline__ void ll_gather(const u64* src, float* dst, int n, u32 e, unsigned pause) {
    ll_gather_runs(LLRuns{src, src, src, dst, dst, dst}, n, 1, e, pause);
}

// DEC_LL_QKV: head_dim words from each of three offsets of the stacked Q|K|V words: the first
// run into q_dst + q0 (head h's q row, where attention_head reads it), the other two into
// kv_dst and kv_dst + head_dim.
__device__ __forceinline__ void ll_gather_head(const u64* qkv, float* q_dst, float* kv_dst, int q0, int k0, int v0,
                                               int head_dim, u32 e, unsigned pause) {
    ll_gather_runs(LLRuns{qkv + q0, qkv + k0, qkv + v0, q_dst + q0, kv_dst, kv_dst + head_dim}, head_dim, 3, e, pause);
}

// The helper threads of a block for the work it issues after arriving at a barrier (weight
// prefetches, staging copies): every warp but the first, whose thread 0 polls the barrier, so
// the last block to arrive starts polling at once (the barrier waits for that block). A block
// of one warp has no helpers and issues that work with all its threads. Thread t of
// helper_n() (t < 0: none).
__device__ __forceinline__ int helper_t() { return blockDim.x > 32 ? (int)threadIdx.x - 32 : (int)threadIdx.x; }
__device__ __forceinline__ int helper_n() { return blockDim.x > 32 ? (int)blockDim.x - 32 : (int)blockDim.x; }

// The weight runs of item bx of a product phase: R rows from row0 (MODE_SWIGLU: H = R / 2
// gate rows from bx * H and H up rows from ffn + bx * H, as swiglu_row). n1 = 0: one run.
struct Runs { int r0; int n0; int r1; int n1; };
__device__ __forceinline__ Runs item_runs(int n_out, int mode, int R, int ffn, int bx) {
    if (mode == MODE_SWIGLU) return Runs{bx * (R / 2), R / 2, ffn + bx * (R / 2), R / 2};
    return Runs{bx * R, max(0, min(R, n_out - bx * R)), 0, 0};
}

// Pulls item bx's weights (quants and scales) towards L2 by the helper threads, line by line.
template <int WT>
__device__ __forceinline__ void mv_prefetch(const Mat& m, int mode, int rows, int ffn, int bx) {
    const int t = helper_t(), nt = helper_n();
    if (t < 0) return;
    const size_t nb = m.n_in / QK, qrow = nb * (WT == WT_Q8_0 ? 32 : 16), drow = nb * 4;
    const Runs r = item_runs(m.n_out, mode, rows, ffn, bx);
    prefetch_lines(m.qs + r.r0 * qrow, r.n0 * qrow, t, nt);
    prefetch_lines((const char*)m.dm + r.r0 * drow, r.n0 * drow, t, nt);
    if (r.n1) {
        prefetch_lines(m.qs + r.r1 * qrow, r.n1 * qrow, t, nt);
        prefetch_lines((const char*)m.dm + r.r1 * drow, r.n1 * drow, t, nt);
    }
}

template <int WT>
__device__ __forceinline__ void mv_block(const Mat& m, const i8* aq, const float2* ads, float* out, float* tap,
                                         int out_stride, int mode, int rows, QkvEpi qe, SwigluEpi se, NormIn ni,
                                         int bx, Staged st, LLOut lo = LLOut{0, 0, 0, 0u, 0u}, u64* stamps = 0) {
    matvec_q_block<WT>(m.qs, m.dm, aq, ads, out, tap, m.n_in, m.n_out, out_stride, mode, 1, rows, 1, qe, se, ni, bx, 0,
                       st, lo, stamps);
}

#define ROPE_ROW_MAX 256

// `flags` (backend::cuda::decode::Flags): speed only, every combination gives the same bits.
//   DEC_STAGE    each block copies the weights of its items of the coming product phases into
//                shared memory (cp.async, two buffers of stage_bytes at stage_off) while it
//                waits at the barriers, so the products read their weights from shared memory;
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
//   DEC_LL       no grid barrier after B, C, D and E: their outputs (attention, x after C, the
//                SwiGLU row, x after E) go out as flag-in-data words (ll_gather) and each block
//                that has an item in the next phase polls the words it reads into shared memory
//                (ll_x: x, ll_in: the attention output or the SwiGLU row) and goes on. Phase C
//                quantizes the attention output itself (as DEC_SPLIT_D's phase E its SwiGLU
//                row; the same Q8_1 blocks); DEC_LL implies DEC_SPLIT_D. The barrier after A
//                (or DEC_HEAD_FLAGS) stays: attention reads the K/V cache rows A stored.
//   DEC_LL_QKV   (with DEC_LL) no barrier after A either: the Q|K|V items also store their
//                stacked rows as flag-in-data words, and an attention block polls its head's q
//                row and its KV head's k and v rows, stores those two into this position's
//                cache cells itself (the same bits the Q|K|V item stores there) and reads them
//                back after a __syncthreads. No barrier is left in the step.
//   DEC_RELAXED  the barrier polls use relaxed loads and one acquire fence (poll_until).
//   bits 12..15  DEC_BACKOFF: every spin loop pauses that many times 32 ns between polls.
#define DEC_STAGE 1
#define DEC_NORM_G8 2
#define DEC_PRELOAD 4
#define DEC_EARLY 8
#define DEC_SPLIT_D 16
#define DEC_HEAD_FLAGS 32
#define DEC_LL 64
#define DEC_RELAXED 128
#define DEC_LL_QKV 256
#define DEC_BACKOFF_SHIFT 12
// The default set (backend::cuda::decode_flags::DEFAULT, checked by a unit test), compiled into
// entry points of its own (decoder_layers_<type>_default) with the flags known at compile time:
// every other path drops out of the code (294 KB of instructions instead of 446 KB for Q4_1, NVRTC 13.0).
#define DEC_DEFAULT 31

// The bytes stage_item copies for one item: R rows (MODE_SWIGLU: H gate rows, then H up rows,
// R = 2H) of qs, then of dm.
template <int WT>
__device__ __forceinline__ size_t stage_qs_bytes(const Mat& m, int R) {
    return (size_t)R * (m.n_in / QK) * (WT == WT_Q8_0 ? 32 : 16);
}

// Starts the copy of item bx's weights into `buf` (if the phase has that item), issued by the
// helper threads, and commits one cp.async group in every thread either way, so every thread
// commits the same groups in the same order. Called right after the block's arrival at the
// barrier that ends the last phase reading `buf`.
template <int WT>
__device__ __forceinline__ void stage_item(const Mat& m, int mode, int R, int ffn, int bx, int items, char* buf) {
    if (bx < items) {
        const int t = helper_t(), nt = helper_n();
        const size_t nb = m.n_in / QK, qrow = nb * (WT == WT_Q8_0 ? 32 : 16), drow = nb * 4;
        char* dbuf = buf + stage_qs_bytes<WT>(m, R);
        const Runs r = item_runs(m.n_out, mode, R, ffn, bx);
        cp_async_bytes_by(buf, m.qs + r.r0 * qrow, r.n0 * qrow, t, nt);
        cp_async_bytes_by(dbuf, (const char*)m.dm + r.r0 * drow, r.n0 * drow, t, nt);
        if (r.n1) {
            cp_async_bytes_by(buf + r.n0 * qrow, m.qs + r.r1 * qrow, r.n1 * qrow, t, nt);
            cp_async_bytes_by(dbuf + r.n0 * drow, (const char*)m.dm + r.r1 * drow, r.n1 * drow, t, nt);
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
// Staging schedule (buffer 0: A and D, buffer 1: C and E; a buffer is refilled only once the
// block has arrived at the barrier that ends the phase reading it), each copy issued by the
// helper threads right after the block's arrival, so it runs during the barrier and nothing of
// it is left on the next phase's path: after A(l) C(l) and D(l), after D(l) E(l), after E(l)
// A(l+1); before layer 0 A(0). A, D and E wait for every group (cp_async_wait<0>: theirs is
// the newest), C for all but D's, the one newer than its own (cp_async_wait<1>); a block with
// no item in a phase skips the wait (a later wait covers every older group anyway). Weight
// prefetches towards L2 run a phase or more ahead of each copy: E(l) after B(l), A(l+1) after
// C(l), C(l+1) and D(l+1) after E(l).
template <int WT, int FL>
__device__ __forceinline__ void decoder_layers(const LayerDesc* __restrict__ layers, int n_layers, float* x, float* q,
                                          float* attn, i8* attn_aq, float2* attn_ads, float* sw, i8* sw_aq,
                                          float2* sw_ads, float* xn, i8* xn_aq, float2* xn_ads, const float* __restrict__ output_norm,
                                          float* tap, const float* __restrict__ rope_table,
                                          const int* __restrict__ params, int dim, int kv_dim, int head_dim,
                                          int n_heads, int n_kv_heads, int ffn, float eps, float scale, u32* bar,
                                          u64* prof, int flags, int stage_off, int stage_bytes) {
    extern __shared__ float sh[];
    if (FL >= 0) flags = FL;  // a compile-time set (FL < 0: the launch's)
    pdl_wait();
    int k = 0;
    const u32 base = (u32)params[1];
    if (prof && threadIdx.x == 0) prof[2 * ((size_t)5 * n_layers * gridDim.x + blockIdx.x)] = globaltimer();
    const int nblk = gridDim.x, bid = blockIdx.x;
    const int qkv_w = dim + 2 * kv_dim;
    const int items_a = (qkv_w + DEC_ROWS - 1) / DEC_ROWS, items_c = (dim + DEC_ROWS - 1) / DEC_ROWS;
    const bool ll = flags & DEC_LL, relaxed = flags & DEC_RELAXED, llq = ll && (flags & DEC_LL_QKV);
    const unsigned pause = ((flags >> DEC_BACKOFF_SHIFT) & 15) * 32;
    const bool split = flags & (DEC_SPLIT_D | DEC_LL);
    const int rows_d = split ? 32 : 64;
    const int items_d = ffn / (rows_d / 2), items_e = items_c;
    const bool stage = flags & DEC_STAGE, pre = flags & DEC_PRELOAD, hflags = flags & DEC_HEAD_FLAGS;
    const int g8 = (flags & DEC_NORM_G8) ? 1 : 0;
    char* buf0 = (char*)sh + stage_off;
    char* buf1 = buf0 + stage_bytes;
    // DEC_LL: the shared copies after the staging buffers (x; the attention output, the SwiGLU
    // row or the q rows, then with DEC_LL_QKV a head's k and v rows at ll_in + dim), and the flag-in-data words after the barrier words (decode.rs's ll_words):
    // x after E (ll_x0) and after C (ll_x1), the attention output, the SwiGLU row, the stacked
    // Q|K|V row (DEC_LL_QKV). Epochs count from params[2] (the host adds n_layers per launch).
    float* ll_x = (float*)(buf1 + stage_bytes);
    float* ll_in = ll_x + dim;
    u64* ll_x0 = (u64*)(bar + ((4 + items_a + 1) & ~1));
    u64* ll_x1 = ll_x0 + dim;
    u64* ll_attn = ll_x1 + dim;
    u64* ll_sw = ll_attn + dim;
    u64* ll_qkv = ll_sw + ffn;
    const QkvEpi qe0 = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    // Profiling only: the sub-phase stamps of this block's first item of product phase k
    // (matvec_q_block's `stamps`: input ready, products done, epilogue done; a fourth word
    // unused), after the barrier words (decode.rs's prof_words).
    u64* sub = prof ? prof + 2 * (size_t)(5 * n_layers + 1) * gridDim.x : 0;
    auto sub_at = [&](int kk) -> u64* { return sub ? sub + 4 * ((size_t)kk * gridDim.x + bid) : 0; };
    // This position's RoPE row, read once per step (every layer's Q|K|V epilogue uses it).
    __shared__ float rope_s[ROPE_ROW_MAX];
    const bool rope_in_smem = head_dim <= ROPE_ROW_MAX;
    if (rope_in_smem)
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) rope_s[i] = rope_table[(size_t)params[0] * head_dim + i];
    __syncthreads();
    const SwigluEpi se0 = {0, 0, 0, 0};
    const Staged none = {0, 0};
    // Attention heads: block bid serves h0, h0 + nblk, ...; with DEC_PRELOAD the last blocks.
    const int h0 = pre ? nblk - 1 - bid : bid;
    // DEC_EARLY: the phase (2 C .. 4 E) after whose arrival this block issues the next layer's
    // preload: that of its last item of a layer, at the earliest C (issuing takes the block a
    // while after it arrives; after C the long D phase hides that, after B the short C would
    // wait for it). Blocks with a Q|K|V item keep preloading in phase A.
    const bool early = pre && (flags & DEC_EARLY) && h0 < n_heads && bid >= items_a;
    const int last = bid < items_e ? 4 : bid < items_d ? 3 : 2;
    // cp.async groups: with DEC_EARLY the preload is one group of its own, committed after C's,
    // D's or E's arrival; the attention phase waits for every group (cp_async_wait<0>), and
    // C's cp_async_wait<1> never concerns it (a block with a C item has a Q|K|V item too, so
    // it is no early block).
    if (early)
        attention_preload_async(layers[0].k_cache, layers[0].v_cache, params, n_heads, n_kv_heads, head_dim, h0);
    if (stage) stage_item<WT>(layers[0].qkv, MODE_QKV, DEC_ROWS, 0, bid, items_a, buf0);
    for (int l = 0; l < n_layers; l++) {
        const LayerDesc& L = layers[l];
        const bool more = l + 1 < n_layers;
        // DEC_LL: this layer's epoch and the x rows its phases read (layer 0: the embedding in x).
        const u32 ep = (u32)params[2] + 1u + (u32)l;
        // DEC_EARLY's preload of layer l + 1, run after this block's arrival in phase p.
        auto preload_next = [&](int p) {
            if (early && more && last == p)
                attention_preload_async(layers[l + 1].k_cache, layers[l + 1].v_cache, params, n_heads,
                                        n_kv_heads, head_dim, h0);
        };
        // The end of a phase without a barrier (DEC_LL): every thread of the block is done with
        // the phase (its shared memory may be refilled), the arrival stamped.
        auto ll_arrive = [&]() {
            __syncthreads();
            stamp_arrived(prof, k);
        };
        // A: Q|K|V with the attention norm, bias, RoPE, cache store.
        {
            if (ll && l > 0 && bid < items_a) ll_gather(ll_x0, ll_x, dim, ep - 1, pause);
            if (ll && l > 0) stamp_left(prof, k);  // leaving E(l - 1)
            if (stage && bid < items_a) cp_async_wait<0>();
            QkvEpi qe = {q, L.k_cache, L.v_cache, rope_table, params, L.bq, L.bk, L.bv, dim, kv_dim, head_dim,
                         rope_in_smem ? rope_s : 0};
            NormIn ni = {ll && l > 0 ? ll_x : x, L.attn_norm, eps, g8};
            const LLOut lo = {llq ? ll_qkv : 0, 0, 0, ep, 0u};
            for (int it = bid; it < items_a; it += nblk)
                mv_block<WT>(L.qkv, 0, 0, 0, 0, qkv_w, MODE_QKV, DEC_ROWS, qe, se0, ni, it,
                             it == bid ? staged_at<WT>(L.qkv, DEC_ROWS, buf0, stage) : none, lo, it == bid ? sub_at(k) : 0);
            if (llq) ll_arrive();
            else grid_arrive(bar, prof, k);
            // The barrier's number: one per phase, or with DEC_LL one per layer.
            const u32 target = barrier_target(base, ll ? l : k);
            if (hflags && !llq) item_flags_set(bar + 4, target, items_a);
            if (stage) {
                // C's and D's weights (buf1 last held E(l - 1)'s, buf0 this phase's).
                stage_item<WT>(L.wo, MODE_ADD, DEC_ROWS, 0, bid, items_c, buf1);
                stage_item<WT>(L.gate_up, MODE_SWIGLU, rows_d, ffn, bid, items_d, buf0);
            } else {
                for (int it = bid; it < items_c; it += nblk) mv_prefetch<WT>(L.wo, MODE_ADD, DEC_ROWS, 0, it);
            }
            if (pre && h0 < n_heads && !early)
                attention_preload(L.k_cache, L.v_cache, params, n_heads, n_kv_heads, head_dim, h0);
            if (llq) {
                // Head h's q row into ll_in (where attention_head reads it), its KV head's k and
                // v rows through ll_in + dim into this position's cache cells.
                const size_t pos = (size_t)params[0];
                for (int h = h0; h < n_heads; h += nblk) {
                    const int kvo = (h / (n_heads / n_kv_heads)) * head_dim;
                    float* kv_s = ll_in + dim;
                    ll_gather_head(ll_qkv, ll_in, kv_s, h * head_dim, dim + kvo, dim + kv_dim + kvo, head_dim, ep, pause);
                    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
                        L.k_cache[pos * kv_dim + kvo + d] = kv_s[d];
                        L.v_cache[pos * kv_dim + kvo + d] = kv_s[head_dim + d];
                    }
                }
                stamp_left(prof, k);
            } else if (hflags) {
                head_wait(bar + 4, target, prof, k, h0, n_heads, n_kv_heads, head_dim, dim, relaxed, pause);
            } else {
                grid_wait(bar, target, prof, k, relaxed, pause);
            }
        }
        // B: attention, one head per item. DEC_EARLY: the preload's group is complete once
        // at most the newest group (phase A's staging of C, with DEC_STAGE) is pending.
        if (early) cp_async_wait<0>();
        for (int h = h0; h < n_heads; h += nblk)
            attention_head(llq ? ll_in : q, L.k_cache, L.v_cache, attn, ll ? 0 : attn_aq, attn_ads, params, n_heads, n_kv_heads,
                           head_dim, scale, h, 0, true, pre && h == h0, ll ? ll_attn : 0, ep);
        if (ll) ll_arrive();
        else grid_arrive(bar, prof, k);
        if (stage)
            for (int it = bid; it < items_e; it += nblk) mv_prefetch<WT>(L.down, MODE_ADD, DEC_ROWS, 0, it);
        if (ll) {
            // The residual rows come straight from ll_x0's words (matvec_q_block's LLOut).
            if (bid < items_c) ll_gather(ll_attn, ll_in, dim, ep, pause);
            stamp_left(prof, k);
        } else {
            grid_wait(bar, barrier_target(base, k), prof, k, relaxed, pause);
        }
        // C: output projection into the residual stream (DEC_LL: from the x rows of E(l - 1),
        // the embedding before layer 0, into ll_x1; the attention output quantized here).
        {
            if (stage && bid < items_c) cp_async_wait<1>();
            const NormIn ni = {ll ? ll_in : 0, 0, 0.0f, 0};
            const LLOut lo = {ll ? ll_x1 : 0, x, ll && l > 0 ? ll_x0 : 0, ep, ep - 1};
            for (int it = bid; it < items_c; it += nblk)
                mv_block<WT>(L.wo, attn_aq, attn_ads, x, 0, dim, MODE_ADD, DEC_ROWS, qe0, se0, ni, it,
                             it == bid ? staged_at<WT>(L.wo, DEC_ROWS, buf1, stage) : none, lo, it == bid ? sub_at(k) : 0);
            if (ll) ll_arrive();
            else grid_arrive(bar, prof, k);
            if (stage) {
                if (more)
                    for (int it = bid; it < items_a; it += nblk) mv_prefetch<WT>(layers[l + 1].qkv, MODE_QKV, DEC_ROWS, 0, it);
            } else {
                for (int it = bid; it < items_d; it += nblk) mv_prefetch<WT>(L.gate_up, MODE_SWIGLU, rows_d, ffn, it);
            }
            preload_next(2);
        }
        if (ll) {
            if (bid < items_d) ll_gather(ll_x1, ll_x, dim, ep, pause);
            stamp_left(prof, k);
        } else {
            grid_wait(bar, barrier_target(base, k), prof, k, relaxed, pause);
        }
        // D: gate|up with the FFN norm, SwiGLU, Q8_1 (DEC_SPLIT_D / DEC_LL: f32, DEC_LL as
        // flag-in-data words).
        {
            if (stage && bid < items_d) cp_async_wait<0>();
            SwigluEpi se = {split ? sw : 0, sw_aq, sw_ads, ffn};
            NormIn ni = {ll ? ll_x : x, L.ffn_norm, eps, g8};
            const LLOut lo = {ll ? ll_sw : 0, 0, 0, ep, 0u};
            for (int it = bid; it < items_d; it += nblk)
                mv_block<WT>(L.gate_up, 0, 0, 0, 0, 2 * ffn, MODE_SWIGLU, rows_d, qe0, se, ni, it,
                             it == bid ? staged_at<WT>(L.gate_up, rows_d, buf0, stage) : none, lo, it == bid ? sub_at(k) : 0);
            if (ll) ll_arrive();
            else grid_arrive(bar, prof, k);
            if (stage) stage_item<WT>(L.down, MODE_ADD, DEC_ROWS, 0, bid, items_e, buf1);  // buf1 last held C's
            else
                for (int it = bid; it < items_e; it += nblk) mv_prefetch<WT>(L.down, MODE_ADD, DEC_ROWS, 0, it);
            preload_next(3);
        }
        if (ll) {
            // The residual rows come straight from ll_x1's words (matvec_q_block's LLOut).
            if (bid < items_e) ll_gather(ll_sw, ll_in, ffn, ep, pause);
            stamp_left(prof, k);
        } else {
            grid_wait(bar, barrier_target(base, k), prof, k, relaxed, pause);
        }
        // E: down projection into the residual stream (l_out-l; DEC_LL: into ll_x0).
        {
            if (stage && bid < items_e) cp_async_wait<0>();
            float* t = tap ? tap + (size_t)(1 + l) * dim : 0;
            const NormIn ni = {ll ? ll_in : split ? sw : 0, 0, 0.0f, 0};
            const LLOut lo = {ll ? ll_x0 : 0, 0, ll ? ll_x1 : 0, ep, ep};
            for (int it = bid; it < items_e; it += nblk)
                mv_block<WT>(L.down, sw_aq, sw_ads, x, t, dim, MODE_ADD, DEC_ROWS, qe0, se0, ni, it,
                             it == bid ? staged_at<WT>(L.down, DEC_ROWS, buf1, stage) : none, lo, it == bid ? sub_at(k) : 0);
            if (ll) ll_arrive();
            else grid_arrive(bar, prof, k);
            if (stage && more) stage_item<WT>(layers[l + 1].qkv, MODE_QKV, DEC_ROWS, 0, bid, items_a, buf0);  // buf0 last held D's
            preload_next(4);
            if (more) {
                if (stage) {
                    for (int it = bid; it < items_c; it += nblk) mv_prefetch<WT>(layers[l + 1].wo, MODE_ADD, DEC_ROWS, 0, it);
                    for (int it = bid; it < items_d; it += nblk)
                        mv_prefetch<WT>(layers[l + 1].gate_up, MODE_SWIGLU, rows_d, ffn, it);
                } else {
                    for (int it = bid; it < items_a; it += nblk) mv_prefetch<WT>(layers[l + 1].qkv, MODE_QKV, DEC_ROWS, 0, it);
                }
            }
        }
        if (!ll) grid_wait(bar, barrier_target(base, k), prof, k, relaxed, pause);
        // DEC_LL: the wait for E's words is the next layer's gather (stamped there) or the
        // final norm's.
    }
    if (stage) cp_async_wait<0>();
    if (ll) {
        // The last E's rows: into shared memory for the final norm, and into x (the exit value).
        if (blockIdx.x == 0) {
            ll_gather(ll_x0, ll_x, dim, (u32)params[2] + (u32)n_layers, pause);
            for (int i = threadIdx.x; i < dim; i += blockDim.x) x[i] = ll_x[i];
        }
        stamp_left(prof, k);
    }
    if (blockIdx.x == 0) {
        __syncthreads();
        const float* xf = ll ? ll_x : x;
        float* t = tap ? tap + (size_t)(n_layers + 1) * dim : 0;
        if (g8) rmsnorm_q8_g8(xf, output_norm, dim, eps, xn_aq, xn_ads, xn, t);
        else rmsnorm_q8_row(xf, output_norm, xn, t, xn_aq, xn_ads, dim, eps, 0);
        __syncthreads();
        if (prof && threadIdx.x == 0) prof[2 * ((size_t)5 * n_layers * gridDim.x) + 1] = globaltimer();
    }
}

// One entry point per weight type (every layer matrix of that type), so each holds the code of
// one matvec variant only: the persistent kernel's loop body must stay small enough for the
// instruction cache (the launcher falls back to the per-op kernels for mixed types).
#define DECODER_LAYERS_KERNEL(name, WT, FL)                                                                        \
    extern "C" __global__ void name(const LayerDesc* __restrict__ layers, int n_layers, float* x, float* q,    \
                                    float* attn, i8* attn_aq, float2* attn_ads, float* sw, i8* sw_aq,          \
                                    float2* sw_ads,                                                            \
                                    float* xn, i8* xn_aq, float2* xn_ads, const float* __restrict__ output_norm, \
                                    float* tap, const float* __restrict__ rope_table,                          \
                                    const int* __restrict__ params, int dim, int kv_dim, int head_dim,         \
                                    int n_heads, int n_kv_heads, int ffn, float eps, float scale, u32* bar,    \
                                    u64* prof, int flags, int stage_off, int stage_bytes) {                    \
        decoder_layers<WT, FL>(layers, n_layers, x, q, attn, attn_aq, attn_ads, sw, sw_aq, sw_ads, xn, xn_aq, xn_ads, \
                           output_norm, tap, rope_table, params, dim, kv_dim, head_dim, n_heads, n_kv_heads,  \
                           ffn, eps, scale, bar, prof, flags, stage_off, stage_bytes);                         \
    }
DECODER_LAYERS_KERNEL(decoder_layers_q4_1, WT_Q4_1, -1)
DECODER_LAYERS_KERNEL(decoder_layers_q4_0, WT_Q4_0, -1)
DECODER_LAYERS_KERNEL(decoder_layers_q8_0, WT_Q8_0, -1)
DECODER_LAYERS_KERNEL(decoder_layers_q4_1_default, WT_Q4_1, DEC_DEFAULT)
DECODER_LAYERS_KERNEL(decoder_layers_q4_0_default, WT_Q4_0, DEC_DEFAULT)
DECODER_LAYERS_KERNEL(decoder_layers_q8_0_default, WT_Q8_0, DEC_DEFAULT)
