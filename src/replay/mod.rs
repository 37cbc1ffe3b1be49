//! Replay: re-execute recordings and compare them with what they recorded, naming the first
//! divergence (position, layer, tensor, error there and just before) and the worst layer.
//!
//! Three sources are replayed:
//! - **llama.cpp reference recordings** (`recordings/llama.cpp/`, [`llama`]): op by op on
//!   llama.cpp's captured inputs with the CPU spec ops, and chained on a backend, teacher-forced
//!   with llama.cpp's greedy tokens (one batch gives both the per-position comparison of every
//!   captured tensor and the greedy check);
//! - **worker recordings** (`*.wrec`, written by `serve --record-dir`, [`worker`]): the recorded
//!   request, seed and parameters run again; token ids must be identical;
//! - **two worker recordings** of the same request ([`worker::diff`]), without re-executing.
//!
//! The comparison never prints: it returns [`CaseReport`]s; [`cli`] (`worker-orcd replay`,
//! `cargo xtask replay`) renders them (table, JSON, JUnit, HTML via [`html`], SVG curves) and
//! the tests snapshot [`CaseReport::snapshot_text`].
//!
//! # Tolerances: one table, [`bounds`]
//! - **Token-by-token llama.cpp recordings**: none. Every tap at every position (by hash), every
//!   op on llama.cpp's inputs, every logit and all 64 greedy steps bit-identical.
//! - **Batch llama.cpp recordings**: llama.cpp's own batch-versus-token spread.
//! - **Worker recordings**: bit-identical on either backend (same fingerprint or not: the two
//!   backends share one arithmetic); the first trace row whose hash differs is named.

pub mod backend;
pub mod bounds;
pub mod cli;
pub mod exact;
pub mod html;
pub mod llama;
pub mod metrics;
pub mod report;
pub mod worker;

pub use backend::{open_backend, BackendChoice};
pub use report::{CaseReport, Check, Divergence, Incomplete, LayerPoint, Mode};

/// Why a replay could not run (a case that runs and disagrees is a failing [`CaseReport`]).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{case}: backend failed: {source}")]
    Backend { case: String, source: crate::backend::BackendError },
    #[error("{case}: engine failed: {source}")]
    Engine { case: String, source: crate::engine::EngineError },
    #[error("{backend} backend unavailable: {reason}")]
    Unavailable { backend: &'static str, reason: String },
    #[error("{path}: not a recording: {reason}")]
    NotARecording { path: String, reason: String },
    #[error("{path}: {reason}")]
    Unusable { path: String, reason: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}
