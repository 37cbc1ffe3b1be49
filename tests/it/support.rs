//! Shared test helpers: the default model loaded once per test binary, and error metrics.

use std::sync::{Arc, OnceLock};

use worker_orcd::model::Model;
use worker_orcd::tokenizer::Tokenizer;

/// The default model's path (`WORKER_ORCD_MODEL`, else fetched and verified through
/// `worker_orcd::fetch` on first use). Never skipped: a test that needs the model fails without it.
pub fn model_path() -> std::path::PathBuf {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| worker_orcd::fetch::default_model_path().expect("default model (see README: cargo xtask fetch-model)")).clone()
}

/// The default model, loaded once and shared by every test in this binary.
pub fn model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL.get_or_init(|| Arc::new(Model::open(&model_path()).expect("default model loads"))).clone()
}

pub fn tokenizer() -> Arc<Tokenizer> {
    static TOK: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| Arc::new(Tokenizer::from_gguf(&model().file).expect("tokenizer loads"))).clone()
}

/// Normalized mean squared error `Σ(a-b)² / Σb²` of `a` against reference `b`, in f64 (the
/// replay module's metric).
pub fn nmse(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "nmse of slices of different lengths");
    worker_orcd::replay::metrics::nmse(a, b)
}

/// Largest per-row NMSE over rows of `width` (position 0 of this model carries a huge
/// activation spike, so one global ratio would hide errors at other positions).
pub fn max_row_nmse(a: &[f32], b: &[f32], width: usize) -> f64 {
    a.chunks(width).zip(b.chunks(width)).map(|(x, y)| nmse(x, y)).fold(0.0, f64::max)
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
