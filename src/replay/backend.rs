//! Choosing the backend a replay runs on (`--backend auto|cpu|cuda`), and the environment
//! fingerprint of a backend (the same fields the server records), so a replay can tell whether
//! bit-identical results are owed. Knows nothing of recordings' contents.

use std::sync::Arc;

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::CudaBackend;
use crate::backend::{Backend, BackendError};
use crate::model::Model;
use crate::trace::Fingerprint;

use super::ReplayError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// CUDA where a GPU is usable, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "cpu" => Ok(BackendChoice::Cpu),
            "cuda" => Ok(BackendChoice::Cuda),
            _ => Err(format!("unknown backend {s:?} (expected auto, cpu or cuda)")),
        }
    }
}

/// Opens the chosen backend with a KV cache of `n_ctx` positions. `Cuda` fails with one clear
/// line where CUDA is unavailable; `Auto` then falls back to the CPU.
pub fn open_backend(choice: BackendChoice, model: Arc<Model>, n_ctx: usize, threads: usize) -> Result<Box<dyn Backend>, ReplayError> {
    let cpu = |model| CpuBackend::new(model, n_ctx, threads).map(|b| Box::new(b) as Box<dyn Backend>);
    let unavailable = |e: BackendError| match e {
        BackendError::Unavailable { backend, reason } => ReplayError::Unavailable { backend, reason },
        other => ReplayError::Unavailable { backend: "cuda", reason: other.to_string() },
    };
    match choice {
        BackendChoice::Cpu => cpu(model).map_err(unavailable),
        BackendChoice::Cuda => CudaBackend::new(model, n_ctx).map(|b| Box::new(b) as Box<dyn Backend>).map_err(unavailable),
        BackendChoice::Auto => match CudaBackend::new(Arc::clone(&model), n_ctx) {
            Ok(b) => Ok(Box::new(b)),
            Err(_) => cpu(model).map_err(unavailable),
        },
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
