//! Backends run the llama forward pass: `cpu` (the readable reference) and `cuda`.
//!
//! One trait, [`Backend`], which the engine drives; one tap interface, [`Tap`], through which a
//! backend exposes intermediate tensors for tracing, dumping and parity checks.
//! **Architecture Invariant:** a backend knows nothing of sampling, HTTP or recording formats;
//! it computes logits and reports tensors to whatever tap it is given.

pub mod cpu;
pub mod cuda;

use crate::model::ModelConfig;

/// A named point of the forward pass whose value can be observed. Names follow llama.cpp's
/// graph (`Qcur-N`, `l_out-N`, ...) so that every tap has a llama.cpp counterpart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum TapPoint {
    /// Token embeddings, (n_tok, dim).
    Embd,
    AttnNorm(usize),
    /// Q projection before RoPE (plus bias if any), (n_tok, dim).
    Q(usize),
    K(usize),
    V(usize),
    /// Q and K after RoPE.
    QRope(usize),
    KRope(usize),
    /// Raw attention scores Q·K (before the scale, mask and softmax), laid out as `KqSoftmax`.
    Kq(usize),
    /// Attention probabilities, (n_tok, n_heads, n_kv) with n_kv = pos0 + n_tok (cells a
    /// position does not attend to are 0).
    KqSoftmax(usize),
    /// Attention output before the output projection, (n_tok, dim).
    KqvOut(usize),
    AttnOut(usize),
    FfnInp(usize),
    FfnNorm(usize),
    FfnGate(usize),
    FfnUp(usize),
    FfnSwiglu(usize),
    FfnOut(usize),
    /// The residual stream after layer N, (n_tok, dim).
    LOut(usize),
    ResultNorm,
    /// Logits, (n_rows, n_vocab), for the rows the caller asked for.
    Logits,
    /// gemma3: the embeddings scaled by sqrt(dim) (llama.cpp's `inp_scaled`), (n_tok, dim).
    InpScaled,
    /// gemma3: Q and K after their per-head RMS norms, before RoPE (`Qcur_normed`, `Kcur_normed`).
    QNorm(usize),
    KNorm(usize),
    /// gemma3: the attention output after its norm (`attn_post_norm`), (n_tok, dim).
    AttnPostNorm(usize),
    /// gemma3: gelu(gate) * up (`ffn_geglu`), (n_tok, ffn_dim).
    FfnGeglu(usize),
    /// gemma3: the FFN output after its norm (`ffn_post_norm`), (n_tok, dim).
    FfnPostNorm(usize),
}

impl TapPoint {
    /// llama.cpp's tensor name for this point (occurrences within a layer aside).
    pub fn llama_name(&self) -> String {
        use TapPoint::*;
        match *self {
            Embd => "embd".into(),
            AttnNorm(l) => format!("attn_norm-{l}"),
            Q(l) | QRope(l) => format!("Qcur-{l}"),
            K(l) | KRope(l) => format!("Kcur-{l}"),
            V(l) => format!("Vcur-{l}"),
            Kq(l) => format!("kq-{l}"),
            KqSoftmax(l) => format!("kq_soft_max-{l}"),
            KqvOut(l) => format!("kqv_out-{l}"),
            AttnOut(l) => format!("attn_out-{l}"),
            FfnInp(l) => format!("ffn_inp-{l}"),
            FfnNorm(l) => format!("ffn_norm-{l}"),
            FfnGate(l) => format!("ffn_gate-{l}"),
            FfnUp(l) => format!("ffn_up-{l}"),
            FfnSwiglu(l) => format!("ffn_swiglu-{l}"),
            FfnOut(l) => format!("ffn_out-{l}"),
            LOut(l) => format!("l_out-{l}"),
            ResultNorm => "result_norm".into(),
            Logits => "result_output".into(),
            InpScaled => "inp_scaled".into(),
            QNorm(l) => format!("Qcur_normed-{l}"),
            KNorm(l) => format!("Kcur_normed-{l}"),
            AttnPostNorm(l) => format!("attn_post_norm-{l}"),
            FfnGeglu(l) => format!("ffn_geglu-{l}"),
            FfnPostNorm(l) => format!("ffn_post_norm-{l}"),
        }
    }

    /// Our own name: llama.cpp's, with `Qcur`/`Kcur` after RoPE marked `:rope`.
    pub fn name(&self) -> String {
        match self {
            TapPoint::QRope(_) | TapPoint::KRope(_) => format!("{}:rope", self.llama_name()),
            _ => self.llama_name(),
        }
    }

    /// Whether recordings keep this point: `embd`, every `l_out-N`, `result_norm`, logits.
    pub fn is_recorded(self) -> bool {
        matches!(self, TapPoint::Embd | TapPoint::LOut(_) | TapPoint::ResultNorm | TapPoint::Logits)
    }

    pub fn layer(&self) -> Option<usize> {
        use TapPoint::*;
        match *self {
            Embd | ResultNorm | Logits | InpScaled => None,
            AttnNorm(l) | Q(l) | K(l) | V(l) | QRope(l) | KRope(l) | Kq(l) | KqSoftmax(l) | KqvOut(l) | AttnOut(l) | FfnInp(l) | FfnNorm(l) | FfnGate(l)
            | FfnUp(l) | FfnSwiglu(l) | FfnOut(l) | LOut(l) | QNorm(l) | KNorm(l) | AttnPostNorm(l) | FfnGeglu(l) | FfnPostNorm(l) => Some(l),
        }
    }
}

/// Receives intermediate tensors during a forward pass. `data` holds `n_tok` rows for the
/// positions `pos0..pos0 + n_tok` (for `Logits`, the rows requested, see [`LogitRows`]).
/// Implementations must be cheap when they want nothing: `wants` is asked first. `Send`
/// because the CPU backend runs a whole forward pass on its own thread pool (the caller waits).
pub trait Tap: Send {
    fn wants(&self, point: TapPoint) -> bool;
    fn record(&mut self, point: TapPoint, pos0: usize, n_tok: usize, data: &[f32]);
    /// Called by the engine after every forward call, once all of its taps are recorded, so
    /// that a recorder can hand the call's trace on at once instead of when the next begins.
    fn forward_done(&mut self) {}
}

/// A tap that wants nothing.
pub struct NoTap;

impl Tap for NoTap {
    fn wants(&self, _: TapPoint) -> bool {
        false
    }
    fn record(&mut self, _: TapPoint, _: usize, _: usize, _: &[f32]) {}
}

/// Which points a [`CaptureTap`] keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Points {
    /// Every point the backend offers.
    All,
    /// What a recording keeps ([`TapPoint::is_recorded`]).
    Recorded,
    Only(Vec<TapPoint>),
}

/// The collecting tap: keeps every row of the points it wants, the rows of successive calls
/// appended in order. For `dump`, the op-by-op replay and the CPU-against-CUDA checks.
#[derive(Debug, Clone)]
pub struct CaptureTap {
    points: Points,
    /// Per point: its rows, `rows[p]` of them, concatenated.
    pub tensors: std::collections::BTreeMap<TapPoint, Vec<f32>>,
    /// Per point: how many rows `tensors` holds.
    pub rows: std::collections::BTreeMap<TapPoint, usize>,
}

impl CaptureTap {
    pub fn new(points: Points) -> CaptureTap {
        CaptureTap { points, tensors: Default::default(), rows: Default::default() }
    }

    pub fn all() -> CaptureTap {
        CaptureTap::new(Points::All)
    }

    pub fn recorded() -> CaptureTap {
        CaptureTap::new(Points::Recorded)
    }

    /// The rows kept of `p` and their values.
    pub fn get(&self, p: TapPoint) -> Option<(usize, &[f32])> {
        self.tensors.get(&p).map(|v| (self.rows[&p], v.as_slice()))
    }
}

impl Tap for CaptureTap {
    fn wants(&self, p: TapPoint) -> bool {
        match &self.points {
            Points::All => true,
            Points::Recorded => p.is_recorded(),
            Points::Only(points) => points.contains(&p),
        }
    }
    fn record(&mut self, p: TapPoint, _pos0: usize, n_tok: usize, data: &[f32]) {
        self.tensors.entry(p).or_default().extend_from_slice(data);
        *self.rows.entry(p).or_default() += n_tok;
    }
}

/// Which positions of a batch get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitRows {
    /// Only the last position (generation).
    Last,
    /// Every position (parity checks, prompt logprobs).
    All,
    /// None (prefill of a chunk that is not the last).
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("context full: positions {pos0}..{end} exceed the context of {n_ctx}")]
    ContextFull { pos0: usize, end: usize, n_ctx: usize },
    #[error("token id {id} is outside the vocabulary of {n_vocab}")]
    BadToken { id: u32, n_vocab: usize },
    #[error("positions must be contiguous: cache holds {cached}, batch starts at {pos0}")]
    NonContiguous { cached: usize, pos0: usize },
    #[error("{backend} backend is unavailable: {reason}")]
    Unavailable { backend: &'static str, reason: String },
    #[error("device error: {0}")]
    Device(String),
}

/// A forward-pass implementation holding its own KV cache (batch size one).
pub trait Backend: Send {
    /// `cpu` or `cuda`.
    fn kind(&self) -> &'static str;
    /// A human description of the device (CPU model and thread count, GPU name).
    fn device(&self) -> String;
    fn config(&self) -> &ModelConfig;
    /// Maximum number of positions in the KV cache.
    fn n_ctx(&self) -> usize;
    /// Number of positions currently cached.
    fn n_cached(&self) -> usize;
    /// Forgets cached positions from `pos` on (0 clears the cache). A backend may keep fewer
    /// (a sliding-window ring that no longer holds the window of `pos` keeps none): continue
    /// from `n_cached()`.
    fn truncate(&mut self, pos: usize);
    /// Runs `tokens` at positions `pos0..`, which must continue the cache (`pos0 == n_cached()`),
    /// and returns the logits of the rows selected by `rows`, row-major (rows, n_vocab).
    fn forward(&mut self, tokens: &[u32], pos0: usize, rows: LogitRows, tap: &mut dyn Tap) -> Result<Vec<f32>, BackendError>;
    /// [`Backend::forward`] of `tokens` with the last row's logits, then the token choice of
    /// `sampler::pick` on them. A backend may choose on its device and return only the
    /// result (the tap still gets the logits when it wants them); the result is the same bits.
    fn forward_pick(
        &mut self,
        tokens: &[u32],
        pos0: usize,
        tap: &mut dyn Tap,
        args: &crate::sampler::PickArgs,
    ) -> Result<crate::sampler::Picked, BackendError> {
        pick_on_host(self, tokens, pos0, tap, args)
    }
    /// A decode step in halves, so that the caller's host work for the step before it (its
    /// trace frame, streaming its token) runs while a device computes this one:
    /// `pick_start`, then [`Backend::pick_wait`] with the same arguments returns what
    /// [`Backend::forward_pick`] would. A backend that runs the step on its own device
    /// enqueues it here and returns; the default does nothing, and `pick_wait` runs it all.
    ///
    /// Taps: a backend may keep a waited step's taps back until [`Backend::flush_taps`] (the
    /// caller's next call of it); it records every step's taps in step order, each step's
    /// before any of a later one, and records any it still holds during any later call that
    /// is given a tap, before that call's own (a device backend: once the call's step is
    /// enqueued, so that the copies run beside it).
    fn pick_start(&mut self, tokens: &[u32], pos0: usize, tap: &mut dyn Tap, args: &crate::sampler::PickArgs) -> Result<(), BackendError> {
        let _ = (tokens, pos0, tap, args);
        Ok(())
    }
    /// The second half of the step [`Backend::pick_start`] began with the same arguments (or,
    /// without one, the whole step).
    fn pick_wait(&mut self, tokens: &[u32], pos0: usize, tap: &mut dyn Tap, args: &crate::sampler::PickArgs) -> Result<crate::sampler::Picked, BackendError> {
        self.forward_pick(tokens, pos0, tap, args)
    }
    /// Records the taps a backend kept back (see [`Backend::pick_start`]); the default keeps
    /// none.
    fn flush_taps(&mut self, tap: &mut dyn Tap) {
        let _ = tap;
    }
    /// Whether this backend ever records `p` (replay does not count a point a backend never
    /// produces as missing; one it should produce and did not is a finding).
    fn produces(&self, p: TapPoint) -> bool {
        let _ = p;
        true
    }
    /// What a recording's fingerprint needs to know of the device beyond [`Backend::device`]:
    /// `None` for the CPU reference, whose numerics line is fixed.
    fn device_facts(&self) -> Option<DeviceFacts> {
        None
    }
}

/// `Backend::forward_pick` with the choice made on the host over the downloaded logits (the
/// default, and a device backend's fallback).
pub fn pick_on_host<B: Backend + ?Sized>(
    b: &mut B,
    tokens: &[u32],
    pos0: usize,
    tap: &mut dyn Tap,
    args: &crate::sampler::PickArgs,
) -> Result<crate::sampler::Picked, BackendError> {
    let logits = b.forward(tokens, pos0, LogitRows::Last, tap)?;
    Ok(crate::sampler::pick(&logits, args))
}

/// The device facts a backend reports for recordings' fingerprints (see
/// `trace::fingerprint::fingerprint_of`), from the device it already opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    /// e.g. `cuda driver 13000`.
    pub driver: String,
    /// Hash of the kernel sources the device runs.
    pub kernel_hash: String,
    /// The numerics line: what arithmetic the results come from (compiler and its options).
    pub numerics: String,
}

/// The checks every backend's `forward` makes before touching its cache: the batch continues
/// the cache, fits the context and names only tokens of the vocabulary.
pub fn check_batch(tokens: &[u32], pos0: usize, n_cached: usize, n_ctx: usize, n_vocab: usize) -> Result<(), BackendError> {
    if pos0 != n_cached {
        return Err(BackendError::NonContiguous { cached: n_cached, pos0 });
    }
    let end = pos0 + tokens.len();
    if end > n_ctx {
        return Err(BackendError::ContextFull { pos0, end, n_ctx });
    }
    if let Some(&id) = tokens.iter().find(|&&id| id as usize >= n_vocab) {
        return Err(BackendError::BadToken { id, n_vocab });
    }
    Ok(())
}

/// Which backend runs the model (`--backend auto|cpu|cuda`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// CUDA where a GPU and the CUDA libraries are usable, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<BackendChoice, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "cpu" => Ok(BackendChoice::Cpu),
            "cuda" => Ok(BackendChoice::Cuda),
            _ => Err(format!("unknown backend {s:?} (expected auto, cpu or cuda)")),
        }
    }
}

/// A backend opened by [`open`], with the reason `auto` fell back to the CPU, if it did.
pub struct Opened {
    pub backend: Box<dyn Backend>,
    pub fallback: Option<String>,
}

/// Opens the chosen backend with a KV cache of `n_ctx` positions and `threads` CPU threads.
/// `Cuda` fails with one clear line where CUDA is unavailable; `Auto` then uses the CPU and
/// says why in [`Opened::fallback`].
pub fn open(choice: BackendChoice, model: std::sync::Arc<crate::model::Model>, n_ctx: usize, threads: usize) -> Result<Opened, BackendError> {
    let cpu = |model| -> Result<Box<dyn Backend>, BackendError> { Ok(Box::new(cpu::CpuBackend::new(model, n_ctx, threads)?)) };
    match choice {
        BackendChoice::Cpu => Ok(Opened { backend: cpu(model)?, fallback: None }),
        BackendChoice::Cuda => Ok(Opened { backend: Box::new(cuda::CudaBackend::new(model, n_ctx)?), fallback: None }),
        BackendChoice::Auto => match cuda::CudaBackend::new(std::sync::Arc::clone(&model), n_ctx) {
            Ok(b) => Ok(Opened { backend: Box::new(b), fallback: None }),
            Err(e) => Ok(Opened { backend: cpu(model)?, fallback: Some(format!("{e}; using the cpu backend")) }),
        },
    }
}
