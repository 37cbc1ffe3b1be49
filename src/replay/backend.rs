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

/// The fingerprint a recording made on `backend` carries (the server's, see
/// [`crate::trace::fingerprint`]), so replays compare like with like.
pub fn fingerprint_of(model: &Model, model_sha256: &str, backend: &dyn Backend, threads: usize) -> Fingerprint {
    crate::trace::fingerprint::fingerprint_of(&model.name, model_sha256, backend, threads)
}

/// Whether two fingerprints owe each other bit-identical traces: same model bytes, backend,
/// numerics and kernels; on GPUs also the same device and driver. The CPU backend's results
/// do not depend on the thread count, the CPU model or the build (it is the spec), so those
/// fields are informational there.
pub fn same_numerics(a: &Fingerprint, b: &Fingerprint) -> bool {
    let common = a.model_sha256 == b.model_sha256 && a.backend == b.backend && a.numerics == b.numerics && a.kernel_source_hash == b.kernel_source_hash;
    common && (a.backend == "cpu" || (a.device == b.device && a.driver == b.driver))
}
