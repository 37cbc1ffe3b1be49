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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use libtest_mimic::{Arguments, Failed, Trial};
use worker_orcd::model::Model;
use worker_orcd::reference::{model_corpus_dirs, recordings_in, ReferenceRecording};
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

/// A model with its tokenizer and file hash, loaded once per binary.
#[derive(Clone)]
struct Loaded {
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    sha256: String,
}

fn load(path: &Path) -> Loaded {
    let model = Arc::new(Model::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    let tokenizer = Arc::new(Tokenizer::from_gguf(&model.file).expect("tokenizer loads"));
    let sha256 = worker_orcd::fetch::sha256_file(path).expect("model hashes");
    Loaded { model, tokenizer, sha256 }
}

/// The default model (or `$WORKER_ORCD_MODEL`).
fn default_model() -> Loaded {
    static M: OnceLock<Loaded> = OnceLock::new();
    M.get_or_init(|| load(&worker_orcd::fetch::default_model_path().expect("default model (cargo xtask fetch-model)"))).clone()
}

/// The model a llama.cpp recording was made with, found by the sha256 it carries among the
/// named models (fetched on first use), so every recording under `recordings/llama.cpp/` runs
/// against its own file. A hash no named model has fails the case.
fn model_for(sha256: &str) -> Result<Loaded, Failed> {
    static M: OnceLock<Mutex<HashMap<String, Loaded>>> = OnceLock::new();
    let d = default_model();
    if d.sha256 == sha256 {
        return Ok(d);
    }
    let mut map = M.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = map.get(sha256) {
        return Ok(l.clone());
    }
    let named =
        worker_orcd::fetch::named_by_sha256(sha256).ok_or_else(|| Failed::from(format!("recorded with model sha256 {sha256}, which is no named model's")))?;
    let path = worker_orcd::fetch::fetch_named(&named.name).map_err(|e| Failed::from(format!("{}: {e}", named.name)))?;
    let l = load(&path);
    map.insert(sha256.to_string(), l.clone());
    Ok(l)
}

fn choice() -> Result<BackendChoice, Failed> {
    let v = std::env::var("WORKER_ORCD_REPLAY_BACKEND").unwrap_or_else(|_| "cpu".into());
    v.parse().map_err(|e: String| Failed::from(format!("WORKER_ORCD_REPLAY_BACKEND: {e}")))
}

fn backend(model: Arc<Model>) -> Result<Box<dyn worker_orcd::backend::Backend>, Failed> {
    let c = choice()?;
    replay::open_backend(c, model, 2048, 2).map_err(|e| Failed::from(format!("cannot open the {c:?} backend: {e}")))
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
    let l = model_for(&rec.case.model_sha256)?;
    let mut b = backend(Arc::clone(&l.model))?;
    let r = replay::llama::replay_case(&l.model, b.as_mut(), &rec, Some(&l.tokenizer)).map_err(|e| Failed::from(e.to_string()))?;
    // One snapshot per case for every backend: the backends compute the same bits.
    assert_snapshot(&r, &format!("replay-{snapshot}"));
    verdict(&r)
}

fn worker_case(path: PathBuf) -> Result<(), Failed> {
    let l = default_model();
    let b = backend(Arc::clone(&l.model))?;
    let here = replay::backend::fingerprint_of(&l.model, &l.sha256, b.as_ref(), 2);
    let mut engine = worker_orcd::engine::Engine::new(b, Arc::clone(&l.tokenizer));
    let r = replay::worker::replay(&path, &mut engine, &here).map_err(|e| Failed::from(e.to_string()))?;
    verdict(&r)
}

/// The recordings of another named model: `recordings/llama.cpp/<name>/` with its `cases.json`
/// (`weight_types` lists the types of its matrices), batch recordings there and token-by-token
/// ones in `token/`. `None` when the replay backend runs every type; else the reason the cases
/// are listed as ignored (reported as skipped by the runner, never as passed): the CPU has
/// every type's product, the CUDA forward pass not yet the k-quant era's.
fn missing_types(cases: &Path) -> Option<String> {
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(cases).ok()?).ok()?;
    let types: Vec<String> = cfg["weight_types"].as_array()?.iter().filter_map(|v| v.as_str().map(str::to_lowercase)).collect();
    let cuda = matches!(choice(), Ok(BackendChoice::Cuda));
    let runs = |t: worker_orcd::gguf::GgmlType| if cuda { worker_orcd::backend::cuda::runs_type(t) } else { worker_orcd::backend::cpu::quant::supports(t) };
    let known = (0..64).filter_map(worker_orcd::gguf::GgmlType::from_id);
    let supported: Vec<String> = known.filter(|t| runs(*t)).map(|t| t.name().to_lowercase()).collect();
    let missing: Vec<&String> = types.iter().filter(|t| !supported.contains(t)).collect();
    (!missing.is_empty()).then(|| format!("the {} backend has no matrix product for {missing:?} yet", if cuda { "cuda" } else { "cpu" }))
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
    for dir in model_corpus_dirs(&root().join("llama.cpp")).unwrap_or_else(|e| panic!("{e}")) {
        let model = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let skip = missing_types(&dir.join("cases.json"));
        if let Some(why) = &skip {
            eprintln!("corpus: the {model} cases are ignored: {why}");
        }
        for (mode, sub, prefix) in [("batch", dir.clone(), ""), ("token", dir.join("token"), "token-")] {
            if !sub.is_dir() {
                continue;
            }
            for path in recordings_in(&sub).unwrap_or_else(|e| panic!("{e}")) {
                let name = stem(&path);
                let snapshot = format!("{model}-{prefix}{name}");
                let t = Trial::test(format!("llama_cpp::{model}::{mode}::{name}"), move || llama_case(path, snapshot));
                trials.push(t.with_ignored_flag(skip.is_some()));
            }
        }
    }
    let worker_dir = root().join("worker");
    for path in worker_orcd::trace::recordings_in(&worker_dir).unwrap_or_else(|e| panic!("{}: {e}", worker_dir.display())) {
        trials.push(Trial::test(format!("worker::{}", stem(&path)), move || worker_case(path)));
    }
    assert!(trials.len() >= 20, "the replay corpus is incomplete: {} cases under {}", trials.len(), root().display());
    libtest_mimic::run(&args, trials).exit();
}
