//! The CUDA backend: the llama forward pass of `backend::cpu` on an NVIDIA GPU, through cudarc
//! with dynamic loading, over our own kernels (`kernels/*.cu`, compiled with NVRTC at start-up).
//!
//! **Architecture Invariant:** every kernel computes, per output element, the arithmetic of the
//! CPU reference function of the same name, in the same order (see each `.cu` header), so the
//! backend is deterministic by construction and its results do not depend on how a prompt is
//! split into batches: no atomics, no floating-point reduction whose order depends on the launch
//! shape, no cuBLAS. It is checked op by op (`tests/it/cuda.rs`) and layer by layer against the
//! CPU backend (`cuda-check parity`).
//!
//! Code map: `options` (the environment switches, read once) → `device` (cudarc, libraries,
//! buffers, launches) → `kernels` (sources, NVRTC, cache, hash) → `weights` (repacking into
//! device layouts) → `launch` (the product and embedding launches) → `ops` (each kernel as a host
//! function, for tests) and `decode` (the persistent decode kernel) → `forward` (the pass, trace
//! taps, CUDA graphs) → this file (the `Backend`). Imports follow the arrows only.
//!
//! Taps: `Embd`, `LOut(l)`, `ResultNorm` and `Logits` are written by the kernels into one
//! preallocated device buffer during the pass and downloaded once per call on a separate stream
//! into pinned memory. Asking for any other point switches to a slow debug mode (no graph, a
//! synchronous download after each op). `Kq` and `KqSoftmax` are never recorded by this backend.

mod decode;
pub use options::decode_flags;
pub mod device;
mod forward;
pub mod kernels;
mod launch;
pub mod ops;
pub mod options;
mod pick;
mod weights;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::backend::{Backend, BackendError, LogitRows, Tap};
use crate::gguf::GgmlType;
use crate::model::{Model, ModelConfig};

pub use device::{check_libraries, DeviceInfo, Gpu};
pub use launch::{mma_pick, MmaKernel};
pub use options::{options, CudaOptions};

use device::{dev_err, unavailable, DevBuf, PinnedBuf};
use weights::{push_group, push_stacked, resolve_group, ArenaBuilder, DevMatrix, Segment};

/// Positions computed per launch sequence; longer prompts are split into chunks of this size,
/// which by construction gives the same bits as one pass.
pub const MAX_BATCH: usize = 512;

/// Whether CUDA can be used here, and on what: loads the libraries, opens device 0 and compiles
/// (or loads cached) kernels. `Err(Unavailable)` on machines without a driver, NVRTC or GPU.
pub fn probe() -> Result<DeviceInfo, BackendError> {
    Gpu::open(0).map(|g| g.info.clone())
}

/// What a recording stores to know whether a replay on this device must be bit-identical.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    pub backend: String,
    pub device: String,
    pub compute_capability: String,
    pub driver_version: i32,
    pub nvrtc_version: String,
    pub kernel_hash: String,
    pub compile_options: Vec<String>,
}

pub(crate) struct LayerDev {
    attn_norm: u64,
    ffn_norm: u64,
    bq: u64,
    bk: u64,
    bv: u64,
    qkv: Vec<Segment>,
    wo: DevMatrix,
    gate_up: Vec<Segment>,
    down: DevMatrix,
    gemma: Option<GemmaDev>,
}

/// Quantized-activation buffers for one activation width (f32 rows, int8 quants, (d, s)), and
/// the Q8_K staging that k-quant products quantize their input rows into (shared by all widths).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Act {
    f32: u64,
    aq: u64,
    ads: u64,
    k8: Q8K,
}

/// Q8_K activation rows (`kquant::quantize_row_q8_K`'s blocks, split into arrays): int8 quants
/// (n_tok, n), f32 d (n_tok, n/256) and i16 bsums (n_tok, n/16).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Q8K {
    aq: u64,
    ad: u64,
    bs: u64,
}

/// Device scratch for one chunk of up to `MAX_BATCH` positions.
pub(crate) struct Scratch {
    _buf: DevBuf,
    /// i32: [pos0, 0, 0, 0, tokens...]
    io: u64,
    x: u64,
    xn: Act,
    qkv: u64,
    q: u64,
    attn: Act,
    gu: u64,
    sw: Act,
    tmp: u64,
    logits: u64,
    /// Trace slots: Embd, LOut(0..n_layers), ResultNorm, each (n_tok, dim).
    tap: u64,
}

/// Pinned host staging, grown on demand.
pub(crate) struct Pinned {
    io: PinnedBuf,
    logits: Option<PinnedBuf>,
    tap: Option<PinnedBuf>,
}

/// A captured decode step (one position). cudarc's graph handle is not `Send`; the graph is only
/// launched with this backend's context bound, from whichever thread owns the backend.
pub(crate) struct SendGraph(cudarc::driver::CudaGraph);
// SAFETY: CUDA graph executables may be launched from any thread that binds their context.
unsafe impl Send for SendGraph {}

/// Which step graph: (positions, first logits row, logits rows, trace slots written).
pub(crate) type GraphKey = (usize, usize, usize, bool);

/// Prefill graphs kept at once (each a chunk length seen twice; the oldest goes first).
pub(crate) const PREFILL_GRAPHS: usize = 16;

pub struct CudaBackend {
    model: Arc<Model>,
    gpu: Gpu,
    _weights: DevBuf,
    layers: Vec<LayerDev>,
    embd: DevMatrix,
    output: DevMatrix,
    output_norm: u64,
    rope_table: u64,
    /// gemma3: ggml's f16 GELU table on the device (0 for other architectures).
    gelu_table: u64,
    k_cache: DevBuf,
    v_cache: DevBuf,
    scratch: Scratch,
    pinned: Pinned,
    graphs: HashMap<GraphKey, SendGraph>,
    /// Prefill shapes run once without a graph (captured when seen again), and the captured
    /// ones in capture order (evicted oldest first beyond `PREFILL_GRAPHS`).
    prefill_seen: HashSet<GraphKey>,
    prefill_order: VecDeque<GraphKey>,
    event: cudarc::driver::CudaEvent,
    n_ctx: usize,
    n_cached: usize,
    /// Capture one CUDA graph per decode step shape (on by default; `WORKER_ORCD_CUDA_GRAPHS=0`
    /// turns it off for comparison).
    use_graphs: bool,
    /// The persistent one-launch decode step, or why it is not used.
    persistent: Result<decode::Persistent, String>,
    /// Whether one-position steps use it (tests compare both paths).
    use_persistent: bool,
    /// The persistent kernel's barrier counter before its next launch (uploaded with pos0).
    barrier_base: u32,
    /// The persistent kernel's flag-in-data epoch base (decode.cu's DEC_LL, params[2]), moved
    /// by `epoch_advance` per launch.
    ll_epoch: u32,
    /// The token choice on the device (`forward_pick`).
    pick: pick::DevicePick,
    /// The last chunk's device choice, when it made one.
    picked: Option<crate::sampler::Picked>,
    /// Whether `forward_pick` chooses on the device (`WORKER_ORCD_CUDA_PICK`).
    use_device_pick: bool,
}

/// gemma3's per-layer device data: the four extra norms, the layer's RoPE table and window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GemmaDev {
    q_norm: u64,
    k_norm: u64,
    attn_post_norm: u64,
    ffn_post_norm: u64,
    rope_table: u64,
    /// The sliding window of this layer (0: global).
    n_swa: i32,
}

/// Whether the CUDA forward pass runs matrices of type `t` (see [`check_types`]).
pub fn runs_type(t: GgmlType) -> bool {
    matches!(t, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::F16 | GgmlType::BF16 | GgmlType::F32) || ops::kquant_kernel(t).is_some()
}

/// Whether `t` has an embedding kernel reading the table as uploaded; tables of the other types
/// are dequantized once at load (the CPU's own `dequantize`, so the same numbers) into f32 rows.
fn embeds_type(t: GgmlType) -> bool {
    matches!(t, GgmlType::Q4_1 | GgmlType::Q4_0 | GgmlType::Q8_0 | GgmlType::F16 | GgmlType::BF16 | GgmlType::F32)
}

/// The weight types the CUDA forward pass runs: Q4_0, Q4_1 and Q8_0 repacked (`matvec.cu`,
/// fused epilogues, tensor cores, the persistent decode kernel), Q5_0, Q5_1, IQ4_NL and
/// Q2_K..Q6_K as the file's rows (`kquant.cu`), and the float types. A model with another type
/// is refused here, before any upload, with the tensor and type named (`auto` then falls back
/// to the CPU).
fn check_types(model: &Model) -> Result<(), BackendError> {
    let mut all = vec![&model.output];
    for l in &model.layers {
        all.extend([&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]);
    }
    if let Some(w) = all.into_iter().find(|w| !runs_type(w.ty())) {
        return Err(unavailable(format!("tensor {} has type {}, which the cuda forward pass does not run", w.info.name, w.ty().name())));
    }
    let e = &model.token_embd;
    if !embeds_type(e.ty()) && !crate::gguf::quant::can_dequantize(e.ty()) {
        return Err(unavailable(format!("tensor {} has type {}, which the cuda backend cannot embed", e.info.name, e.ty().name())));
    }
    Ok(())
}

/// The token embedding table in a layout an embedding kernel reads: as uploaded, or dequantized
/// to f32 rows (row by row, as `cpu::ops::embedding` dequantizes the row it reads).
fn push_embedding(arena: &mut ArenaBuilder, model: &Model) -> Result<DevMatrix, BackendError> {
    let m = model.matrix(&model.token_embd);
    if embeds_type(m.ty) {
        return Ok(push_stacked(arena, &[m]));
    }
    use rayon::prelude::*;
    let mut rows = vec![0f32; m.n_in * m.n_out];
    let rb = m.row_bytes();
    rows.par_chunks_mut(m.n_in)
        .enumerate()
        .try_for_each(|(i, out)| crate::gguf::quant::dequantize(m.ty, &m.data[i * rb..(i + 1) * rb], out))
        .map_err(|e| unavailable(format!("token_embd.weight: {e}")))?;
    let off = arena.push_f32(&rows);
    Ok(DevMatrix { ty: GgmlType::F32, n_in: m.n_in, n_out: m.n_out, qs: off as u64, dm: 0 })
}

impl CudaBackend {
    /// Loads `model` onto GPU 0 with a KV cache of `n_ctx` positions (at most the model's
    /// training context). Fails with `Unavailable` where CUDA or a GPU is missing.
    pub fn new(model: Arc<Model>, n_ctx: usize) -> Result<CudaBackend, BackendError> {
        check_types(&model)?;
        let gpu = Gpu::open(0)?;
        let c = model.config.clone();
        let n_ctx = n_ctx.min(c.n_ctx_train).max(1);
        if ops::attention_smem(c.head_dim, n_ctx) > gpu.max_dynamic_smem {
            return Err(unavailable(format!("context of {n_ctx} positions exceeds the attention kernel's shared memory")));
        }
        let gemma = c.arch == crate::model::Arch::Gemma3;
        if c.q_dim() != c.dim && !gemma {
            return Err(unavailable(format!(
                "attention.key_length {} x {} heads = {} differs from the embedding width {}: the CUDA kernels assume they are equal (the CPU backend runs it)",
                c.head_dim,
                c.n_heads,
                c.q_dim(),
                c.dim
            )));
        }
        if !c.head_dim.is_multiple_of(32) || c.head_dim > if gemma { 256 } else { ops::ATTENTION_THREADS } {
            return Err(unavailable(format!("head_dim {} is not a multiple of 32 up to {}", c.head_dim, ops::ATTENTION_THREADS)));
        }
        let mut arena = ArenaBuilder::default();
        let vec_f32 = |arena: &mut ArenaBuilder, w: &crate::model::Weight| arena.push_f32(&model.f32_vec(w)) as u64;
        let opt = |arena: &mut ArenaBuilder, w: &Option<crate::model::Weight>| w.as_ref().map(|w| arena.push_f32(&model.f32_vec(w)) as u64);
        let mut layers = Vec::with_capacity(c.n_layers);
        let mut biases = Vec::new();
        for lw in &model.layers {
            let m = |w| model.matrix(w);
            let qkv = push_group(&mut arena, &[m(&lw.wq), m(&lw.wk), m(&lw.wv)]);
            let gate_up = push_group(&mut arena, &[m(&lw.w_gate), m(&lw.w_up)]);
            let bq = opt(&mut arena, &lw.bq);
            let bk = opt(&mut arena, &lw.bk);
            let bv = opt(&mut arena, &lw.bv);
            biases.push((bq, bk, bv));
            let gemma_dev = if gemma {
                let v = |arena: &mut ArenaBuilder, w: &Option<crate::model::Weight>| {
                    arena.push_f32(&model.f32_vec(w.as_ref().expect("gemma3 norms checked at load"))) as u64
                };
                let l = layers.len();
                Some(GemmaDev {
                    q_norm: v(&mut arena, &lw.attn_q_norm),
                    k_norm: v(&mut arena, &lw.attn_k_norm),
                    attn_post_norm: v(&mut arena, &lw.attn_post_norm),
                    ffn_post_norm: v(&mut arena, &lw.ffn_post_norm),
                    rope_table: arena.push_f32(&ops::rope_table(&model.layer_rope(l), n_ctx)) as u64,
                    n_swa: if c.is_swa(l) { c.n_swa as i32 } else { 0 },
                })
            } else {
                None
            };
            layers.push(LayerDev {
                gemma: gemma_dev,
                attn_norm: vec_f32(&mut arena, &lw.attn_norm),
                ffn_norm: vec_f32(&mut arena, &lw.ffn_norm),
                bq: 0,
                bk: 0,
                bv: 0,
                qkv,
                wo: push_stacked(&mut arena, &[m(&lw.wo)]),
                gate_up,
                down: push_stacked(&mut arena, &[m(&lw.w_down)]),
            });
        }
        let embd = push_embedding(&mut arena, &model)?;
        // Tied: the output head reuses the table where it was uploaded as the file has it.
        let tied = model.output.info.name == model.token_embd.info.name && embd.ty == model.token_embd.ty();
        let output = if tied { embd } else { push_stacked(&mut arena, &[model.matrix(&model.output)]) };
        let output_norm = vec_f32(&mut arena, &model.output_norm);
        let rope_table = arena.push_f32(&ops::rope_table(&model.rope(), n_ctx)) as u64;
        // gemma3's GELU table (ggml's, as the CPU builds it), 65,536 f16 bit patterns.
        let gelu_table = if gemma {
            let t: Vec<u8> = crate::backend::cpu::ops::gelu_table().iter().flat_map(|v| v.to_le_bytes()).collect();
            Some(arena.push(&t) as u64)
        } else {
            None
        };
        let weights = arena.upload(&gpu)?;
        let base = weights.ptr();
        for (l, (bq, bk, bv)) in layers.iter_mut().zip(biases) {
            l.attn_norm += base;
            l.ffn_norm += base;
            l.bq = bq.map_or(0, |o| o + base);
            l.bk = bk.map_or(0, |o| o + base);
            l.bv = bv.map_or(0, |o| o + base);
            resolve_group(&mut l.qkv, base);
            resolve_group(&mut l.gate_up, base);
            l.wo = l.wo.resolve(base);
            l.down = l.down.resolve(base);
            if let Some(g) = l.gemma.as_mut() {
                g.q_norm += base;
                g.k_norm += base;
                g.attn_post_norm += base;
                g.ffn_post_norm += base;
                g.rope_table += base;
            }
        }
        let kv_bytes = c.n_layers * n_ctx * c.kv_dim() * 4;
        let k_cache = gpu.alloc(kv_bytes)?;
        let v_cache = gpu.alloc(kv_bytes)?;
        let scratch = alloc_scratch(&gpu, &c)?;
        let pinned = Pinned { io: gpu.pinned((4 + MAX_BATCH) * 4)?, logits: None, tap: None };
        let event = gpu.ctx.new_event(None).map_err(|e| dev_err("event", e))?;
        let use_graphs = options::options().graphs && !gemma;
        let persistent = match c.rope_kind {
            // Its Q|K|V phase is the fused NORM epilogue (see forward.rs, `fuse_qkv`).
            crate::backend::cpu::ops::RopeKind::Neox => Err("the persistent decode kernel fuses NORM RoPE only; NEOX models decode per op".to_string()),
            crate::backend::cpu::ops::RopeKind::Norm => decode::Persistent::new(&gpu, &c, &layers, k_cache.ptr(), v_cache.ptr(), n_ctx)?,
        };
        let pick = pick::DevicePick::new(&gpu, c.n_vocab, n_ctx)?;
        Ok(CudaBackend {
            pick,
            picked: None,
            use_device_pick: options::options().device_pick,
            use_persistent: persistent.is_ok(),
            persistent,
            barrier_base: 0,
            ll_epoch: 0,
            embd: embd.resolve(base),
            output: output.resolve(base),
            output_norm: output_norm + base,
            rope_table: rope_table + base,
            gelu_table: gelu_table.map_or(0, |o| o + base),
            _weights: weights,
            layers,
            k_cache,
            v_cache,
            scratch,
            pinned,
            graphs: HashMap::new(),
            prefill_seen: HashSet::new(),
            prefill_order: VecDeque::new(),
            event,
            n_ctx,
            n_cached: 0,
            use_graphs,
            gpu,
            model,
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.gpu.info
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn fingerprint(&self) -> Fingerprint {
        let i = &self.gpu.info;
        Fingerprint {
            backend: "cuda".into(),
            device: i.name.clone(),
            compute_capability: format!("{}.{}", i.compute_capability.0, i.compute_capability.1),
            driver_version: i.driver_version,
            nvrtc_version: format!("{}.{}", i.nvrtc_version.0, i.nvrtc_version.1),
            kernel_hash: i.kernel_hash.clone(),
            compile_options: i.nvrtc_options.clone(),
        }
    }

    /// Device memory this backend allocated (weights, KV cache, scratch), in bytes.
    pub fn device_bytes(&self) -> usize {
        self.gpu.allocated_bytes()
    }

    /// Forgets every captured graph (the next steps capture again).
    fn drop_graphs(&mut self) {
        self.graphs.clear();
        self.prefill_order.clear();
    }

    /// Turns decode-step CUDA graphs on or off (results are identical either way).
    pub fn set_graphs(&mut self, on: bool) {
        // gemma3 decodes per op without graphs (its captured step is not checked bitwise yet).
        self.use_graphs = on && self.model.config.arch != crate::model::Arch::Gemma3;
    }

    /// Turns the persistent decode kernel on or off for one-position steps (results are
    /// identical either way); returns whether it is now in use. It stays off where it is
    /// unavailable (see [`CudaBackend::persistent_status`]).
    pub fn set_persistent(&mut self, on: bool) -> bool {
        self.use_persistent = on && self.persistent.is_ok();
        self.drop_graphs();
        self.use_persistent
    }

    /// Chooses tokens on the device (true, the default) or on the host over downloaded logits;
    /// the same bits either way. Returns the previous setting.
    pub fn set_device_pick(&mut self, on: bool) -> bool {
        std::mem::replace(&mut self.use_device_pick, on)
    }

    /// Sets the persistent decode kernel's optimizations (`decode_flags`; results are
    /// identical for every combination) and returns those in force (graphs are recaptured).
    pub fn set_decode_flags(&mut self, f: u32) -> u32 {
        self.drop_graphs();
        match &mut self.persistent {
            Ok(p) => p.set_flags(f),
            Err(_) => 0,
        }
    }

    /// Runs the persistent decode kernel on `n` blocks (`None`: one per SM, the default;
    /// clamped to that). The same bits for every grid; tests use small grids so that blocks
    /// take several items per phase. Returns the grid in force (0 without the kernel).
    pub fn set_decode_grid(&mut self, n: Option<usize>) -> usize {
        self.drop_graphs();
        match &mut self.persistent {
            Ok(p) => p.set_grid(n),
            Err(_) => 0,
        }
    }

    /// Records barrier timestamps in the persistent kernel (profiling; graphs are recaptured).
    pub fn set_persistent_profiling(&mut self, on: bool) -> Result<(), BackendError> {
        self.drop_graphs();
        match &mut self.persistent {
            Ok(p) => p.set_profiling(&self.gpu, on),
            Err(_) => Ok(()),
        }
    }

    /// The last persistent step's timestamps and the grid size (see `decode::Persistent::profile`).
    pub fn persistent_profile(&self) -> Result<Option<(Vec<u64>, usize)>, BackendError> {
        match &self.persistent {
            Ok(p) => Ok(p.profile(&self.gpu)?.map(|v| (v, p.grid()))),
            Err(_) => Ok(None),
        }
    }

    /// `Ok(())` when one-position steps may use the persistent kernel, else why not.
    pub fn persistent_status(&self) -> Result<(), String> {
        self.persistent.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }
}

fn alloc_scratch(gpu: &Gpu, c: &ModelConfig) -> Result<Scratch, BackendError> {
    let b = MAX_BATCH;
    let (dim, kv, ffn) = (c.dim, c.kv_dim(), c.ffn_dim);
    let mut sizes: Vec<usize> = Vec::new();
    let mut take = |bytes: usize| {
        sizes.push(bytes.div_ceil(256) * 256);
        sizes.len() - 1
    };
    let act = |take: &mut dyn FnMut(usize) -> usize, w: usize| [take(b * w * 4), take(b * w), take(b * w / 32 * 8)];
    let io = take((4 + b) * 4);
    let x = take(b * dim * 4);
    let xn = act(&mut take, dim);
    // Q is wider than the model for gemma3 (n_heads * head_dim).
    let qd = dim.max(c.q_dim());
    let qkv = take(b * (qd + 2 * kv) * 4);
    let q = take(b * qd * 4);
    let attn = act(&mut take, qd);
    let gu = take(b * 2 * ffn * 4);
    let sw = act(&mut take, ffn);
    let tmp = take(b * dim.max(ffn) * 4);
    let logits = take(b * c.n_vocab * 4);
    let tap = take((c.n_layers + 2) * b * dim * 4);
    let wide = dim.max(ffn).max(c.q_dim());
    let k8 = [take(b * wide), take(b * wide / 256 * 4 + 4), take(b * wide / 16 * 2 + 2)];
    let offsets: Vec<usize> = sizes
        .iter()
        .scan(0, |acc, &s| {
            let o = *acc;
            *acc += s;
            Some(o)
        })
        .collect();
    let total: usize = sizes.iter().sum();
    let buf = gpu.alloc(total)?;
    let p = |i: usize| buf.ptr() + offsets[i] as u64;
    let k8 = Q8K { aq: p(k8[0]), ad: p(k8[1]), bs: p(k8[2]) };
    let a = |ix: [usize; 3]| Act { f32: p(ix[0]), aq: p(ix[1]), ads: p(ix[2]), k8 };
    Ok(Scratch {
        io: p(io),
        x: p(x),
        xn: a(xn),
        qkv: p(qkv),
        q: p(q),
        attn: a(attn),
        gu: p(gu),
        sw: a(sw),
        tmp: p(tmp),
        logits: p(logits),
        tap: p(tap),
        _buf: buf,
    })
}

impl Backend for CudaBackend {
    fn produces(&self, p: crate::backend::TapPoint) -> bool {
        // The attention kernel never materializes the scores or probabilities (module docs).
        !matches!(p, crate::backend::TapPoint::Kq(_) | crate::backend::TapPoint::KqSoftmax(_))
    }

    fn kind(&self) -> &'static str {
        "cuda"
    }

    fn device(&self) -> String {
        self.gpu.info.describe()
    }

    fn device_facts(&self) -> Option<crate::backend::DeviceFacts> {
        let i = &self.gpu.info;
        Some(crate::backend::DeviceFacts {
            driver: format!("cuda driver {}", i.driver_version),
            kernel_hash: i.kernel_hash.clone(),
            numerics: format!("cuda kernels mirroring the cpu reference; nvrtc {}.{} {}", i.nvrtc_version.0, i.nvrtc_version.1, i.nvrtc_options.join(" ")),
        })
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
        self.n_cached = self.n_cached.min(pos);
    }

    fn forward(&mut self, tokens: &[u32], pos0: usize, rows: LogitRows, tap: &mut dyn Tap) -> Result<Vec<f32>, BackendError> {
        crate::backend::check_batch(tokens, pos0, self.n_cached, self.n_ctx, self.model.config.n_vocab)?;
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        self.gpu.bind()?;
        self.forward_chunks(tokens, pos0, rows, tap, None)
    }

    fn forward_pick(
        &mut self,
        tokens: &[u32],
        pos0: usize,
        tap: &mut dyn Tap,
        args: &crate::sampler::PickArgs,
    ) -> Result<crate::sampler::Picked, BackendError> {
        crate::backend::check_batch(tokens, pos0, self.n_cached, self.n_ctx, self.model.config.n_vocab)?;
        if tokens.is_empty() || !self.pick.supports(args) || !self.use_device_pick {
            return crate::backend::pick_on_host(self, tokens, pos0, tap, args);
        }
        self.gpu.bind()?;
        self.picked = None;
        let r = self.forward_chunks(tokens, pos0, LogitRows::Last, tap, Some(args));
        if r.is_err() {
            self.pick.invalidate();
        }
        r?;
        self.picked.take().ok_or_else(|| BackendError::Device("the device choice was not made".into()))
    }
}
