//! Choosing the backend a replay runs on (`--backend auto|cpu|cuda`), and the environment
//! fingerprint of a backend (the same fields the server records), so a replay can tell whether
//! bit-identical results are owed. Knows nothing of recordings' contents.

use std::sync::Arc;

use crate::backend::{Backend, BackendError};
use crate::model::Model;
use crate::trace::Fingerprint;

use super::ReplayError;

pub use crate::backend::BackendChoice;

/// Opens the chosen backend with a KV cache of `n_ctx` positions (see [`crate::backend::open`]).
pub fn open_backend(choice: BackendChoice, model: Arc<Model>, n_ctx: usize, threads: usize) -> Result<Box<dyn Backend>, ReplayError> {
    match crate::backend::open(choice, model, n_ctx, threads) {
        Ok(opened) => Ok(opened.backend),
        Err(BackendError::Unavailable { backend, reason }) => Err(ReplayError::Unavailable { backend, reason }),
        Err(other) => Err(ReplayError::Unavailable { backend: "cuda", reason: other.to_string() }),
    }
}

/// The fingerprint a recording made on `backend` carries (mirrors the server's, which is
/// private to `server`; kept field for field equal so replays compare like with like).
pub fn fingerprint_of(model: &Model, model_sha256: &str, backend: &dyn Backend, threads: usize) -> Fingerprint {
    let threads = if threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { threads };
    Fingerprint {
        model_name: model.name.clone(),
        model_sha256: model_sha256.to_string(),
        worker_version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: option_env!("WORKER_ORCD_GIT_COMMIT").unwrap_or("unknown").to_string(),
        backend: backend.kind().to_string(),
        device: backend.device(),
        driver: None,
        kernel_source_hash: None,
        threads: threads as u32,
        numerics: match backend.kind() {
            "cpu" => "cpu-reference: ggml q8 activation blocks, integer block dots, f32 accumulation".into(),
            k => k.to_string(),
        },
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        cpu: String::new(),
    }
}

/// Whether two fingerprints owe each other bit-identical traces: same model bytes, backend,
/// numerics and kernels; on GPUs also the same device and driver. The CPU backend's results
/// do not depend on the thread count, the CPU model or the build (it is the spec), so those
/// fields are informational there.
pub fn same_numerics(a: &Fingerprint, b: &Fingerprint) -> bool {
    let common = a.model_sha256 == b.model_sha256 && a.backend == b.backend && a.numerics == b.numerics && a.kernel_source_hash == b.kernel_source_hash;
    common && (a.backend == "cpu" || (a.device == b.device && a.driver == b.driver))
}
