//! The one bounds table every comparison reads: replay, the tests and the GPU checks.
//!
//! - **Token-by-token llama.cpp recordings** (`recordings/llama.cpp/token/`): no tolerance.
//!   The CPU backend computes llama.cpp's one-token arithmetic exactly, so every tap at every
//!   position, every op on llama.cpp's inputs, every logit and every greedy step must be
//!   bit-identical ([`TOKEN`]).
//! - **Batch llama.cpp recordings** (`recordings/llama.cpp/`): llama.cpp itself computes a batch
//!   differently from one token at a time (for n ≥ 2 its F32 and Q8_0 products go through
//!   llamafile's tinyBLAS), so the bounds are llama.cpp's own batch-versus-token spread,
//!   measured on the committed corpus (`tests/it/parity.rs::batch_bounds_cover_llama_cpps_own_spread`
//!   recomputes it from the committed recordings, which have both modes of every case) and
//!   widened by the margins stated per field for prompts outside the corpus ([`BATCH`]).
//! - **Worker recordings** replayed on any backend: bit-identical (the backends share one
//!   arithmetic); see `replay::worker`.

use crate::backend::TapPoint;
use crate::model::Arch;
use crate::reference::RecordingMode;

/// Tolerances for one kind of llama.cpp recording. NMSE bounds are per position (one row).
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    /// Op by op on llama.cpp's inputs: products by ggml's `vec_dot` (all but the ones below),
    /// norms, RoPE, softmax, SwiGLU, adds.
    pub op: f64,
    /// Op by op for the products llama.cpp's batch path sends through tinyBLAS: `kq`, the
    /// attention's value product (`kqv_out`) and the output head (`result_output`).
    pub op_tinyblas: f64,
    /// Chained, every tensor of layer 0, and of layer 1 (few rounding flips have happened yet:
    /// tight bounds there catch bugs that move only a few dimensions).
    pub chained_layer0: f64,
    pub chained_layer1: f64,
    /// Chained, later layers: the residual stream (`l_out-N`, `result_norm`)...
    pub chained_residual: f64,
    /// ...and any other tensor of a layer.
    pub chained_op: f64,
    /// Logits per position (full rows).
    pub logits_nmse: f64,
    /// KL(llama.cpp ‖ ours) over llama.cpp's top 32 tokens, per position.
    pub logits_kl: f64,
    /// A prompt position's top-1 may differ where llama.cpp's top-2 gap is below this.
    pub prompt_top1_gap: f32,
    /// A greedy step (teacher-forced) may flip where llama.cpp's top-2 gap is below this...
    pub near_tie_gap: f32,
    /// ...on at most this fraction of the steps.
    pub max_tie_flip_fraction: f64,
}

/// Token recordings: exact.
pub const TOKEN: Bounds = Bounds {
    op: 0.0,
    op_tinyblas: 0.0,
    chained_layer0: 0.0,
    chained_layer1: 0.0,
    chained_residual: 0.0,
    chained_op: 0.0,
    logits_nmse: 0.0,
    logits_kl: 0.0,
    prompt_top1_gap: 0.0,
    near_tie_gap: 0.0,
    max_tie_flip_fraction: 0.0,
};

/// Batch recordings: llama.cpp's batch-versus-token spread, as measured on the committed corpus
/// (the measured worst in each comment; `parity.rs` recomputes it, `tests/corpus.rs` replays
/// it), with margins for prompts outside the corpus.
pub const BATCH: Bounds = Bounds {
    // Every op but the value product is bit-identical on llama.cpp's own batch inputs (65 of 69
    // per case), so no tolerance.
    op: 0.0,
    // kqv_out, measured ≤ 4.3e-15 (tinyBLAS sums the 8-float lanes of each output in another
    // order than ggml_vec_dot_f32); kq and result_output measured bit-identical.
    op_tinyblas: 1e-12,
    // Layer 0: every tensor measured bit-identical but kqv_out (8.2e-15).
    chained_layer0: 1e-9,
    // Layer 1: measured ≤ 4.6e-6 (l_out-1).
    chained_layer1: 5e-5,
    // Measured ≤ 1.1e-3 (l_out-29), 8.5e-4 (result_norm).
    chained_residual: 5e-3,
    // Measured ≤ 2.7e-3 (Vcur-29).
    chained_op: 1e-2,
    // Measured ≤ 6.3e-3 (last prompt position).
    logits_nmse: 2e-2,
    // Measured ≤ 7.2e-2 (chat-long).
    logits_kl: 0.2,
    // Measured: prompt top-1 flips at llama.cpp gaps ≤ 0.231 (16 of 939 positions).
    prompt_top1_gap: 0.4,
    // Free-running, llama.cpp's two modes split at gaps ≤ 0.128; teacher-forced replays flip on
    // at most 3 of 64 steps.
    near_tie_gap: 0.3,
    max_tie_flip_fraction: 0.1,
};

/// Batch recordings of gemma3 (Gemma-3-270M): llama.cpp's batch-versus-token spread is wider
/// there (a norm after attention and after the FFN of every layer, and Q/K norms, rescale the
/// low-order differences of tinyBLAS's sums instead of letting the residual absorb them), so
/// the residual and logit bounds are its own, measured on its corpus the same way
/// (`parity.rs::gemma3_batch_bounds_cover_llama_cpps_own_spread`), with the same margins.
pub const BATCH_GEMMA3: Bounds = Bounds {
    // Measured ≤ 2.4e-3 (l_out-15), 5.3e-3 (result_norm); layer 1 ≤ 2.9e-7 and the logits
    // ≤ 2.3e-3 stay within the llama family's bounds.
    chained_residual: 2e-2,
    // Measured: prompt top-1 flips at llama.cpp gaps ≤ 0.356 (31 of 599 positions).
    prompt_top1_gap: 0.6,
    ..BATCH
};

/// The bounds for a recording made in `mode` (of the llama family).
pub fn for_mode(mode: RecordingMode) -> &'static Bounds {
    for_arch(mode, Arch::Llama)
}

/// The bounds for a recording made in `mode` of a model of architecture `arch`.
pub fn for_arch(mode: RecordingMode, arch: Arch) -> &'static Bounds {
    match (mode, arch) {
        (RecordingMode::Token, _) => &TOKEN,
        (RecordingMode::Batch, Arch::Gemma3) => &BATCH_GEMMA3,
        (RecordingMode::Batch, _) => &BATCH,
    }
}

impl Bounds {
    /// The chained bound for a tap point.
    pub fn chained(&self, p: TapPoint) -> f64 {
        match (p, p.layer()) {
            (TapPoint::Embd, _) => 0.0,
            (TapPoint::Logits, _) => self.logits_nmse,
            (_, Some(0)) => self.chained_layer0,
            (_, Some(1)) => self.chained_layer1,
            (TapPoint::LOut(_) | TapPoint::ResultNorm, _) => self.chained_residual,
            _ => self.chained_op,
        }
    }

    /// The op-by-op bound for a stored llama.cpp tensor name (`kq-3#0`, `Qcur-0#2`, ...).
    pub fn op_for(&self, tensor: &str) -> f64 {
        let base = tensor.split(['#', ' ']).next().unwrap_or(tensor);
        let base = base.rsplit_once('-').map_or(base, |(b, l)| if l.parse::<usize>().is_ok() { b } else { base });
        match base {
            "kq" | "kqv_out" | "result_output" => self.op_tinyblas,
            _ => self.op,
        }
    }
}

/// Worker recordings replayed on any backend (the same one, or CPU ↔ CUDA): no tolerance.
/// Every traced row must be hash-identical, since both backends compute llama.cpp's one-token
/// arithmetic; the NMSE of a differing row is reported, never excused.
pub const WORKER_TRACE_NMSE: f64 = 0.0;
