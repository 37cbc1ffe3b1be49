//! The CPU reference backend: the llama forward pass in data-flow order, over the ops in
//! `ops` and the quantized products in `quant`.
//!
//! **Architecture Invariant:** this backend is the spec the CUDA kernels are checked against.
//! It is never optimized at the expense of readability, and it is deterministic: rows are
//! split over threads in fixed chunks and each value is one sequential reduction, so results
//! are bitwise identical for any thread count, and for any split of a prompt into batches.

mod gemma3;
pub mod kquant;
pub mod lanes;
pub mod ops;
pub mod quant;
pub mod simd;

use std::sync::Arc;

use crate::backend::{Backend, BackendError, LogitRows, Tap, TapPoint};
use crate::model::{Arch, Model, ModelConfig, Weight};

/// The most positions one pass of a sliding-window model computes: its sliding-window layers
/// keep a ring of `n_swa + SWA_BATCH - 1` cells (what the window of every position of a batch
/// needs), and longer batches are computed in passes of this many positions (the results do
/// not depend on the split).
pub const SWA_BATCH: usize = 512;

/// Planted faults for the replay harness's own tests (issue: replay must name each one).
/// Only compiled with the `fault-injection` feature; release builds cannot reach them.
#[cfg(feature = "fault-injection")]
pub mod faults {
    use std::cell::Cell;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(u32)]
    pub enum Fault {
        None = 0,
        KvPosStuckAtZero = 1,
        SkipFfnDown = 2,
        TransposedQ = 3,
        RopeWrongPairs = 4,
        SoftmaxNoMax = 5,
        SkipQkvBias = 6,
        /// Attention sees only the last 32 cached positions: invisible before position 32.
        AttentionWindow32 = 7,
    }

    thread_local! {
        // Per thread, so a test that plants a fault never disturbs tests running beside it;
        // `forward` carries the caller's fault onto the pool thread that runs the pass, where
        // every check is made.
        static ACTIVE: Cell<Fault> = const { Cell::new(Fault::None) };
    }

    /// Plants `f` for forward passes run by the calling thread.
    pub fn set(f: Fault) {
        ACTIVE.with(|a| a.set(f));
    }

    pub fn is(f: Fault) -> bool {
        ACTIVE.with(|a| a.get()) == f
    }

    /// The fault planted on the calling thread.
    pub fn current() -> Fault {
        ACTIVE.with(|a| a.get())
    }
}

#[cfg(feature = "fault-injection")]
use faults::{is as fault, Fault};

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
fn fault(_: ()) -> bool {
    false
}

macro_rules! planted {
    ($name:ident) => {{
        #[cfg(feature = "fault-injection")]
        {
            fault(Fault::$name)
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            fault(())
        }
    }};
}

struct LayerNorms {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
}

/// The CPU backend: a model, its f32 norm vectors, a KV cache and a thread pool.
pub struct CpuBackend {
    model: Arc<Model>,
    rope: ops::Rope,
    norms: Vec<LayerNorms>,
    output_norm: Vec<f32>,
    /// Per layer, (cells, kv_dim) keys and values after RoPE (keys) as f32 (llama.cpp with an
    /// F32 cache, which the reference recordings use): position p in cell `p % cells[l]`, where
    /// cells is n_ctx, or for a sliding-window layer the ring its window needs.
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
    cells: Vec<usize>,
    /// gemma3's extra norms, and each layer's RoPE (sliding-window layers have their own base).
    gemma: Vec<gemma3::GemmaNorms>,
    layer_ropes: Vec<ops::Rope>,
    n_cached: usize,
    n_ctx: usize,
    pool: Arc<rayon::ThreadPool>,
    n_threads: usize,
}

impl CpuBackend {
    /// `n_threads` 0 means all available cores.
    pub fn new(model: Arc<Model>, n_ctx: usize, n_threads: usize) -> Result<CpuBackend, BackendError> {
        let n_threads = if n_threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { n_threads };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n_threads)
            .thread_name(|i| format!("cpu-backend-{i}"))
            .build()
            .map_err(|e| BackendError::Unavailable { backend: "cpu", reason: e.to_string() })?;
        let pool = Arc::new(pool);
        let c = &model.config;
        let n_ctx = n_ctx.min(c.n_ctx_train).max(1);
        let opt = |w: &Option<Weight>| w.as_ref().map(|w| model.f32_vec(w));
        let norms = model
            .layers
            .iter()
            .map(|l| LayerNorms {
                attn_norm: model.f32_vec(&l.attn_norm),
                ffn_norm: model.f32_vec(&l.ffn_norm),
                bq: opt(&l.bq),
                bk: opt(&l.bk),
                bv: opt(&l.bv),
            })
            .collect();
        let cells: Vec<usize> = (0..c.n_layers).map(|l| if c.is_swa(l) { n_ctx.min(c.n_swa + SWA_BATCH - 1) } else { n_ctx }).collect();
        let gemma = if c.arch == Arch::Gemma3 {
            let v = |w: &Option<Weight>| w.as_ref().map(|w| model.f32_vec(w)).expect("gemma3 layers carry their norms (checked at load)");
            model
                .layers
                .iter()
                .map(|l| gemma3::GemmaNorms {
                    q_norm: v(&l.attn_q_norm),
                    k_norm: v(&l.attn_k_norm),
                    attn_post_norm: v(&l.attn_post_norm),
                    ffn_post_norm: v(&l.ffn_post_norm),
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(CpuBackend {
            rope: model.rope(),
            layer_ropes: (0..c.n_layers).map(|l| model.layer_rope(l)).collect(),
            output_norm: model.f32_vec(&model.output_norm),
            norms,
            k_cache: cells.iter().map(|&n| vec![0.0; n * c.kv_dim()]).collect(),
            v_cache: cells.iter().map(|&n| vec![0.0; n * c.kv_dim()]).collect(),
            cells,
            gemma,
            n_cached: 0,
            n_ctx,
            pool,
            n_threads,
            model,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// This backend with every layer keeping every position (llama.cpp's `swa_full`): the
    /// reference the sliding-window rings are checked against. Call before any forward pass.
    pub fn with_full_window_caches(mut self) -> CpuBackend {
        let kv = self.model.config.kv_dim();
        for l in 0..self.cells.len() {
            self.cells[l] = self.n_ctx;
            self.k_cache[l] = vec![0.0; self.n_ctx * kv];
            self.v_cache[l] = vec![0.0; self.n_ctx * kv];
        }
        self.n_cached = 0;
        self
    }

    /// Cells of each layer's KV cache (n_ctx, or a sliding-window layer's ring).
    pub fn cache_cells(&self) -> &[usize] {
        &self.cells
    }

    fn matmul(&self, w: &Weight, x: &[f32], n_tok: usize) -> Vec<f32> {
        let m = self.model.matrix(w);
        let mut out = vec![0.0f32; n_tok * m.n_out];
        self.pool.install(|| simd::matmul(&m, x, n_tok, &mut out));
        out
    }

    /// Writes the keys and values of positions `pos0..` (rows of kv_dim) into layer `l`'s cache:
    /// position p in cell `p % cells[l]` (the position itself unless the layer keeps a ring).
    fn store_kv(&mut self, l: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let (kv_dim, cells) = (self.model.config.kv_dim(), self.cells[l]);
        for (t, (kr, vr)) in k.chunks_exact(kv_dim).zip(v.chunks_exact(kv_dim)).enumerate() {
            let slot = if planted!(KvPosStuckAtZero) { 0 } else { (pos0 + t) % cells };
            self.k_cache[l][slot * kv_dim..(slot + 1) * kv_dim].copy_from_slice(kr);
            self.v_cache[l][slot * kv_dim..(slot + 1) * kv_dim].copy_from_slice(vr);
        }
    }

    /// The attention of layer `l` for positions `pos0..pos0 + n` (queries `q`, (n, q_dim)) over
    /// its cache, each position a task on the pool running `one(t, q_t, k_cache, v_cache, n_kv,
    /// out, kq, probs)` (kq and probs (n_heads, n_kv), when a tap wants them). Records `Kq` and
    /// `KqSoftmax` laid out (n_tok, n_heads, pos0 + n), cells a position does not attend to left
    /// 0, and returns the output (n, q_dim).
    fn attention_layer(&self, l: usize, q: &[f32], pos0: usize, n: usize, tap: &mut dyn Tap, one: &PosAttention) -> Vec<f32> {
        let c = &self.model.config;
        let (n_heads, q_dim) = (c.n_heads, c.q_dim());
        let n_kv_total = pos0 + n;
        let row_len = n_heads * n_kv_total;
        let want = [tap.wants(TapPoint::Kq(l)), tap.wants(TapPoint::KqSoftmax(l))];
        let mut scores = if want[0] { vec![0.0f32; n * row_len] } else { Vec::new() };
        let mut probs = if want[1] { vec![0.0f32; n * row_len] } else { Vec::new() };
        let mut attn = vec![0.0f32; n * q_dim];
        {
            let (kc, vc) = (&self.k_cache[l], &self.v_cache[l]);
            let (mut kq_rows, mut p_rows) = (per_row(&mut scores, row_len, n), per_row(&mut probs, row_len, n));
            self.pool.install(|| {
                use rayon::prelude::*;
                let work = attn.par_chunks_mut(q_dim).zip(kq_rows.par_iter_mut()).zip(p_rows.par_iter_mut()).enumerate();
                work.for_each(|(t, ((out, kq_dst), p_dst))| {
                    let n_kv = pos0 + t + 1;
                    let mut kq_local = kq_dst.as_ref().map(|_| vec![0.0f32; n_heads * n_kv]);
                    let mut p_local = p_dst.as_ref().map(|_| vec![0.0f32; n_heads * n_kv]);
                    one(t, &q[t * q_dim..(t + 1) * q_dim], kc, vc, n_kv, out, kq_local.as_deref_mut(), p_local.as_deref_mut());
                    for (dst, src) in [(kq_dst, kq_local), (p_dst, p_local)] {
                        if let (Some(dst), Some(src)) = (dst.as_deref_mut(), src) {
                            for h in 0..n_heads {
                                dst[h * n_kv_total..h * n_kv_total + n_kv].copy_from_slice(&src[h * n_kv..(h + 1) * n_kv]);
                            }
                        }
                    }
                });
            });
        }
        if want[0] {
            tap.record(TapPoint::Kq(l), pos0, n, &scores);
        }
        if want[1] {
            tap.record(TapPoint::KqSoftmax(l), pos0, n, &probs);
        }
        attn
    }

    /// Every decoder layer on the residual stream `x` (n positions from pos0, embeddings on
    /// entry, l_out of the last layer on exit), then the final norm, returned (result_norm).
    /// The reference of the CUDA backend's persistent decode kernel of the same name
    /// (`kernels/decode.cu`, `decoder_layers_<type>`), which runs this for one position.
    pub(crate) fn decoder_layers(&mut self, x: &mut [f32], pos0: usize, n: usize, tap: &mut dyn Tap) -> Vec<f32> {
        let c = self.model.config.clone();
        let (dim, kv_dim, hd, q_dim) = (c.dim, c.kv_dim(), c.head_dim, c.q_dim());
        let emit = |tap: &mut dyn Tap, p: TapPoint, data: &[f32]| {
            if tap.wants(p) {
                tap.record(p, pos0, n, data);
            }
        };
        let mut xn = vec![0.0f32; n * dim];
        for l in 0..c.n_layers {
            let lw = self.model.layers[l].clone();
            let norms = &self.norms[l];

            // Attention block.
            ops::rmsnorm(&*x, &norms.attn_norm, c.rms_eps, &mut xn);
            emit(tap, TapPoint::AttnNorm(l), &xn);
            let mut q = if planted!(TransposedQ) { transposed_product(&self.model, &lw.wq, &xn, n) } else { self.matmul(&lw.wq, &xn, n) };
            let mut k = self.matmul(&lw.wk, &xn, n);
            let mut v = self.matmul(&lw.wv, &xn, n);
            if !planted!(SkipQkvBias) {
                for (t, b) in [(&mut q, &norms.bq), (&mut k, &norms.bk), (&mut v, &norms.bv)] {
                    if let Some(b) = b {
                        for row in t.chunks_exact_mut(b.len()) {
                            ops::add(row, b);
                        }
                    }
                }
            }
            emit(tap, TapPoint::Q(l), &q);
            emit(tap, TapPoint::K(l), &k);
            emit(tap, TapPoint::V(l), &v);
            for t in 0..n {
                let pos = pos0 + t;
                if planted!(RopeWrongPairs) {
                    // The other pairing than the model's.
                    let wrong = ops::RopeKind::Neox == self.rope.kind;
                    rope_wrong_pairs(&mut q[t * q_dim..(t + 1) * q_dim], hd, pos, c.rope_base, wrong);
                    rope_wrong_pairs(&mut k[t * kv_dim..(t + 1) * kv_dim], hd, pos, c.rope_base, wrong);
                } else {
                    simd::rope(&self.rope, &mut q[t * q_dim..(t + 1) * q_dim], pos);
                    simd::rope(&self.rope, &mut k[t * kv_dim..(t + 1) * kv_dim], pos);
                }
            }
            emit(tap, TapPoint::QRope(l), &q);
            emit(tap, TapPoint::KRope(l), &k);
            self.store_kv(l, pos0, &k, &v);
            let soft_no_max = planted!(SoftmaxNoMax);
            let window_32 = planted!(AttentionWindow32);
            let attn = self.attention_layer(l, &q, pos0, n, tap, &|_, qt, kc, vc, n_kv, out, mut kq_local, mut p_local| {
                if soft_no_max {
                    attention_no_max(qt, kc, vc, n_kv, c.n_heads, c.n_kv_heads, hd, out, p_local);
                } else if window_32 && n_kv > 32 {
                    // Planted fault: cells before n_kv - 32 are forgotten (their taps stay 0).
                    let skip = n_kv - 32;
                    let (mut kq_w, mut p_w) = (vec![0.0f32; c.n_heads * 32], vec![0.0f32; c.n_heads * 32]);
                    let (kw, vw) = (&kc[skip * kv_dim..], &vc[skip * kv_dim..]);
                    simd::attention(qt, kw, vw, 32, c.n_heads, c.n_kv_heads, hd, out, Some(&mut kq_w), Some(&mut p_w));
                    for (local, win) in [(kq_local.as_deref_mut(), &kq_w), (p_local.as_deref_mut(), &p_w)] {
                        if let Some(local) = local {
                            for h in 0..c.n_heads {
                                local[h * n_kv + skip..(h + 1) * n_kv].copy_from_slice(&win[h * 32..(h + 1) * 32]);
                            }
                        }
                    }
                } else {
                    simd::attention(qt, kc, vc, n_kv, c.n_heads, c.n_kv_heads, hd, out, kq_local, p_local);
                }
            });
            emit(tap, TapPoint::KqvOut(l), &attn);
            let o = self.matmul(&lw.wo, &attn, n);
            emit(tap, TapPoint::AttnOut(l), &o);
            ops::add(x, &o);
            emit(tap, TapPoint::FfnInp(l), x);

            // Feed-forward block (SwiGLU).
            ops::rmsnorm(&*x, &self.norms[l].ffn_norm, c.rms_eps, &mut xn);
            emit(tap, TapPoint::FfnNorm(l), &xn);
            let g = self.matmul(&lw.w_gate, &xn, n);
            let u = self.matmul(&lw.w_up, &xn, n);
            emit(tap, TapPoint::FfnGate(l), &g);
            emit(tap, TapPoint::FfnUp(l), &u);
            let mut s = vec![0.0f32; g.len()];
            simd::swiglu(&g, &u, &mut s);
            emit(tap, TapPoint::FfnSwiglu(l), &s);
            if !planted!(SkipFfnDown) {
                let d = self.matmul(&lw.w_down, &s, n);
                emit(tap, TapPoint::FfnOut(l), &d);
                ops::add(x, &d);
            }
            emit(tap, TapPoint::LOut(l), x);
        }

        ops::rmsnorm(&*x, &self.output_norm, c.rms_eps, &mut xn);
        emit(tap, TapPoint::ResultNorm, &xn);
        xn
    }

    fn forward_inner(&mut self, tokens: &[u32], pos0: usize, rows: LogitRows, tap: &mut dyn Tap) -> Vec<f32> {
        let c = self.model.config.clone();
        let n = tokens.len();
        let dim = c.dim;

        // Embedding lookup (get_rows on token_embd).
        let mut x = vec![0.0f32; n * dim];
        let table = self.model.bytes(&self.model.token_embd);
        for (t, &id) in tokens.iter().enumerate() {
            ops::embedding(self.model.token_embd.ty(), table, dim, id, &mut x[t * dim..(t + 1) * dim]);
        }
        if tap.wants(TapPoint::Embd) {
            tap.record(TapPoint::Embd, pos0, n, &x);
        }

        let xn = if c.arch == Arch::Gemma3 {
            self.gemma3_scale_embeddings(&mut x);
            if tap.wants(TapPoint::InpScaled) {
                tap.record(TapPoint::InpScaled, pos0, n, &x);
            }
            self.gemma3_layers(&mut x, pos0, n, tap)
        } else {
            self.decoder_layers(&mut x, pos0, n, tap)
        };
        let (first, count) = match rows {
            LogitRows::All => (0, n),
            LogitRows::Last => (n - 1, 1),
            LogitRows::None => (n, 0),
        };
        if count == 0 {
            return Vec::new();
        }
        let logits = self.matmul(&self.model.output.clone(), &xn[first * dim..(first + count) * dim], count);
        if tap.wants(TapPoint::Logits) {
            tap.record(TapPoint::Logits, pos0 + first, count, &logits);
        }
        logits
    }
}

impl Backend for CpuBackend {
    fn kind(&self) -> &'static str {
        "cpu"
    }

    fn device(&self) -> String {
        format!("cpu ({} threads)", self.n_threads)
    }

    fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    fn n_cached(&self) -> usize {
        self.n_cached
    }

    fn truncate(&mut self, pos: usize) {
        // A sliding-window ring holds the windows of the last SWA_BATCH positions: going back
        // further, the cells the window of `pos` needs were overwritten, so nothing is kept.
        let lost = self.model.config.n_swa > 0 && self.n_cached > pos + SWA_BATCH;
        self.n_cached = if lost { 0 } else { self.n_cached.min(pos) };
    }

    fn forward(&mut self, tokens: &[u32], pos0: usize, rows: LogitRows, tap: &mut dyn Tap) -> Result<Vec<f32>, BackendError> {
        crate::backend::check_batch(tokens, pos0, self.n_cached, self.n_ctx, self.model.config.n_vocab)?;
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        // Run the whole pass on the pool: the `pool.install` of each matrix product and of
        // attention then runs in place on a pool thread instead of handing work across threads
        // and waking the caller (hundreds of times a token: at one thread that hand-off cost
        // more than attention). Nothing of the arithmetic depends on which thread runs it.
        let pool = Arc::clone(&self.pool);
        #[cfg(feature = "fault-injection")]
        let planted = faults::current();
        // A ring of sliding-window cells holds the windows of at most SWA_BATCH positions.
        let step = if self.model.config.n_swa > 0 { SWA_BATCH } else { tokens.len() };
        let logits = pool.install(|| {
            #[cfg(feature = "fault-injection")]
            faults::set(planted);
            let mut logits = Vec::new();
            for (i, chunk) in tokens.chunks(step).enumerate() {
                let start = i * step;
                let last = start + chunk.len() == tokens.len();
                let chunk_rows = match rows {
                    LogitRows::All => LogitRows::All,
                    LogitRows::Last if last => LogitRows::Last,
                    _ => LogitRows::None,
                };
                logits.extend(self.forward_inner(chunk, pos0 + start, chunk_rows, tap));
            }
            #[cfg(feature = "fault-injection")]
            faults::set(Fault::None);
            logits
        });
        self.n_cached = pos0 + tokens.len();
        Ok(logits)
    }
}

/// One position's attention for [`CpuBackend::attention_layer`]: (t, q_t, k_cache, v_cache,
/// n_kv, out, kq, probs).
#[allow(clippy::type_complexity)]
type PosAttention<'a> = dyn Fn(usize, &[f32], &[f32], &[f32], usize, &mut [f32], Option<&mut [f32]>, Option<&mut [f32]>) + Sync + 'a;

/// `n` row slots of `buf` (rows of `row_len`), or `n` empty slots when `buf` is empty.
fn per_row(buf: &mut [f32], row_len: usize, n: usize) -> Vec<Option<&mut [f32]>> {
    if buf.is_empty() {
        (0..n).map(|_| None).collect()
    } else {
        buf.chunks_mut(row_len).map(Some).collect()
    }
}

/// Planted fault: Q computed with the weight matrix transposed (x · W instead of W · x),
/// the bug of an earlier worker that swapped cuBLAS operands. Only square matrices can be
/// transposed in place of themselves, which Q's is.
fn transposed_product(model: &Model, w: &Weight, x: &[f32], n: usize) -> Vec<f32> {
    let dense = model.file.dequantize_tensor(&w.info.name).expect("weight dequantizes");
    let dim = w.info.shape[0] as usize;
    let mut out = vec![0.0f32; n * dim];
    for t in 0..n {
        for o in 0..dim {
            let mut acc = 0.0f32;
            for i in 0..dim {
                acc += dense[i * dim + o] * x[t * dim + i];
            }
            out[t * dim + o] = acc;
        }
    }
    out
}

/// Planted fault: RoPE rotating the wrong pairs: (i, i + head_dim/2), NEOX style, on a
/// NORM-rope model (`adjacent` false), adjacent pairs on a NEOX-rope model (`adjacent` true).
fn rope_wrong_pairs(x: &mut [f32], head_dim: usize, pos: usize, base: f32, adjacent: bool) {
    let cache = ops::rope_cache(head_dim, pos, base);
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let (cos, sin) = (cache[2 * i], cache[2 * i + 1]);
            let (a, b) = if adjacent { (2 * i, 2 * i + 1) } else { (i, i + half) };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos - x1 * sin;
            head[b] = x0 * sin + x1 * cos;
        }
    }
}

/// Planted fault: softmax without subtracting the maximum, as a naive half-precision kernel
/// writes it (exponentials and their sum in f16). In f32 the missing max subtraction is
/// harmless for this model (its scores stay below 13, far from exp's f32 overflow at 88), but
/// in f16 `exp(s)` overflows to infinity for any score above 11.09, and the probabilities
/// become NaN: the broken-softmax bug of the earlier worker.
#[allow(clippy::too_many_arguments)]
fn attention_no_max(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    n_kv: usize,
    n_heads: usize,
    n_kv_heads: usize,
    hd: usize,
    out: &mut [f32],
    mut probs_out: Option<&mut [f32]>,
) {
    let group = n_heads / n_kv_heads;
    let kv_stride = n_kv_heads * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    for h in 0..n_heads {
        let kvh = h / group;
        let mut s: Vec<f32> = (0..n_kv).map(|j| (0..hd).map(|d| kc[j * kv_stride + kvh * hd + d] * q[h * hd + d]).sum::<f32>() * scale).collect();
        let mut sum = half::f16::from_f32(0.0);
        for v in s.iter_mut() {
            let e = half::f16::from_f32(v.exp());
            *v = e.to_f32();
            sum = half::f16::from_f32(sum.to_f32() + e.to_f32());
        }
        let sum = sum.to_f32();
        if let Some(p) = probs_out.as_deref_mut() {
            for (j, v) in s.iter().enumerate() {
                p[h * n_kv + j] = v / sum;
            }
        }
        for d in 0..hd {
            out[h * hd + d] = (0..n_kv).map(|j| vc[j * kv_stride + kvh * hd + d] * s[j] / sum).sum();
        }
    }
}
