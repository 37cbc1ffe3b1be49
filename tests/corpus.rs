//! The replay corpus as individual tests: every llama.cpp recording (batch and token by token)
//! and every committed worker recording under `recordings/` is one test case, so
//! `cargo nextest run --partition count:K/N` spreads the corpus over N runners, and retries,
//! timeouts and JUnit come from the test runner. Each case runs the same library code as
//! `cargo xtask replay` (`worker_orcd::replay`) and must pass; llama.cpp cases also match
//! their insta snapshot in `snapshots/`.
//!
//! The backend is `$WORKER_ORCD_REPLAY_BACKEND` (`cpu`, the default, or `cuda`); a CUDA backend
//! that cannot start fails every case with the reason. `$WORKER_ORCD_ROOT` names the checkout
//! when the binary runs elsewhere (the GPU bundle).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use libtest_mimic::{Arguments, Failed, Trial};
use worker_orcd::model::Model;
use worker_orcd::reference::{recordings_in, ReferenceRecording};
use worker_orcd::replay::{self, BackendChoice, CaseReport};
use worker_orcd::tokenizer::Tokenizer;

/// The checkout: `$WORKER_ORCD_ROOT` (a GPU machine running the bundled binary from a copy of
/// the tree), else the crate's own directory.
fn checkout() -> PathBuf {
    std::env::var_os("WORKER_ORCD_ROOT").filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn root() -> PathBuf {
    checkout().join("recordings")
}

fn model() -> Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| {
        let path = worker_orcd::fetch::default_model_path().expect("default model (cargo xtask fetch-model)");
        Arc::new(Model::open(&path).expect("default model loads"))
    })
    .clone()
}

fn tokenizer() -> Arc<Tokenizer> {
    static T: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| Arc::new(Tokenizer::from_gguf(&model().file).expect("tokenizer loads"))).clone()
}

fn choice() -> Result<BackendChoice, Failed> {
    let v = std::env::var("WORKER_ORCD_REPLAY_BACKEND").unwrap_or_else(|_| "cpu".into());
    v.parse().map_err(|e: String| Failed::from(format!("WORKER_ORCD_REPLAY_BACKEND: {e}")))
}

fn backend() -> Result<Box<dyn worker_orcd::backend::Backend>, Failed> {
    let c = choice()?;
    replay::open_backend(c, model(), 2048, 2).map_err(|e| Failed::from(format!("cannot open the {c:?} backend: {e}")))
}

/// Snapshots live in `<checkout>/snapshots`, with the context in `info:`.
fn assert_snapshot(r: &CaseReport, name: &str) {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(checkout().join("snapshots"));
    s.set_prepend_module_to_snapshot(false);
    s.set_info(&serde_json::json!({ "model": r.model, "backend": r.backend, "case": r.name, "mode": r.mode }));
    s.bind(|| insta::assert_snapshot!(name, r.snapshot_text()));
}

fn verdict(r: &CaseReport) -> Result<(), Failed> {
    let summary: Vec<String> = r.checks.iter().map(|c| format!("[{}] {}: {}", if c.passed { "ok" } else { "FAIL" }, c.name, c.detail)).collect();
    println!("{} on {}: {}\n  {}", r.name, r.backend, if r.passed { "PASS" } else { "FAIL" }, summary.join("\n  "));
    if r.passed {
        Ok(())
    } else {
        Err(format!("{}: first divergence: {}\n  {}", r.name, r.divergence_line(), summary.join("\n  ")).into())
    }
}

fn llama_case(path: PathBuf, snapshot: String) -> Result<(), Failed> {
    let rec = ReferenceRecording::open(&path).map_err(|e| Failed::from(e.to_string()))?;
    let mut b = backend()?;
    let r = replay::llama::replay_case(&model(), b.as_mut(), &rec, Some(&tokenizer())).map_err(|e| Failed::from(e.to_string()))?;
    // One snapshot per case for every backend: the backends compute the same bits.
    assert_snapshot(&r, &format!("replay-{snapshot}"));
    verdict(&r)
}

fn worker_case(path: PathBuf) -> Result<(), Failed> {
    let b = backend()?;
    let m = model();
    let sha = worker_orcd::fetch::sha256_file(&worker_orcd::fetch::default_model_path().map_err(|e| Failed::from(e.to_string()))?)
        .map_err(|e| Failed::from(e.to_string()))?;
    let here = replay::backend::fingerprint_of(&m, &sha, b.as_ref(), 2);
    let mut engine = worker_orcd::engine::Engine::new(b, tokenizer());
    let r = replay::worker::replay(&path, &mut engine, &here).map_err(|e| Failed::from(e.to_string()))?;
    verdict(&r)
}

fn stem(p: &Path) -> String {
    let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    n.trim_end_matches(".safetensors.zst").trim_end_matches(".wrec").to_string()
}

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    let dirs = [("llama_cpp::batch", root().join("llama.cpp"), ""), ("llama_cpp::token", root().join("llama.cpp/token"), "token-")];
    for (group, dir, prefix) in dirs {
        for path in recordings_in(&dir).unwrap_or_else(|e| panic!("{e}")) {
            let name = stem(&path);
            let snapshot = format!("{prefix}{name}");
            trials.push(Trial::test(format!("{group}::{name}"), move || llama_case(path, snapshot)));
        }
    }
    let worker_dir = root().join("worker");
    let mut workers: Vec<PathBuf> = std::fs::read_dir(&worker_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", worker_dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wrec"))
        .collect();
    workers.sort();
    for path in workers {
        trials.push(Trial::test(format!("worker::{}", stem(&path)), move || worker_case(path)));
    }
    assert!(trials.len() >= 20, "the replay corpus is incomplete: {} cases under {}", trials.len(), root().display());
    libtest_mimic::run(&args, trials).exit();
}
