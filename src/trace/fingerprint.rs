//! The environment fingerprint a recording carries: model bytes, build, backend, device,
//! driver, kernel hash and numerics. One function for the server's recordings and for replay's
//! "where am I running" so the two compare field for field.

use super::Fingerprint;
use crate::backend::Backend;

/// The numerics line of the CPU reference backend.
pub const CPU_NUMERICS: &str = "cpu-reference: ggml q8 activation blocks, integer block dots, f32 accumulation";

/// The fingerprint of a recording made with `backend` on this machine.
pub fn fingerprint_of(model_name: &str, sha: &str, backend: &dyn Backend, threads: usize) -> Fingerprint {
    let threads = if threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { threads };
    // A device backend reports its own facts (driver, kernel hash) from the device it opened.
    let facts = backend.device_facts();
    let numerics = facts.as_ref().map_or_else(|| CPU_NUMERICS.to_string(), |f| f.numerics.clone());
    Fingerprint {
        model_name: model_name.to_string(),
        model_sha256: sha.to_string(),
        worker_version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: git_commit(),
        backend: backend.kind().to_string(),
        device: backend.device(),
        driver: facts.as_ref().map(|f| f.driver.clone()),
        kernel_source_hash: facts.map(|f| f.kernel_hash),
        threads: threads as u32,
        numerics,
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        cpu: cpu_model(),
    }
}

/// The build's git commit (`git describe --always --dirty` at build time, see build.rs), else
/// `unknown`.
pub fn git_commit() -> String {
    // Embedded by build.rs at compile time: a run-time `git describe` would describe whatever
    // checkout happens to sit at the build path on the machine the binary runs on.
    option_env!("WORKER_ORCD_GIT_COMMIT").unwrap_or("unknown").to_string()
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}
