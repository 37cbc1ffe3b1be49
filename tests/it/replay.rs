//! The replay harness on worker recordings: one moved to another directory replays from the
//! file alone; `diff` of two recordings of one request; `explain`; the committed GPU recordings
//! replay bit for bit on the CPU. (The llama.cpp corpus runs case by case in `tests/corpus.rs`.)

use std::path::Path;
use std::sync::Arc;

use worker_orcd::backend::cpu::CpuBackend;
use worker_orcd::engine::Engine;
use worker_orcd::replay::{backend::fingerprint_of, worker};
use worker_orcd::trace::{RecordedParams, ResolvedRequest, TraceLevel};

use crate::support::{model, tokenizer};

fn resolved(prompt: &str, temperature: f32, max_tokens: u32) -> ResolvedRequest {
    let tok = tokenizer();
    ResolvedRequest {
        prompt_text: prompt.into(),
        parse_special: false,
        prompt_ids: tok.encode(prompt, false),
        params: RecordedParams { temperature, top_k: 0, top_p: 0.9, min_p: 0.0, repetition_penalty: 1.0 },
        seed: 1234,
        seed_generated: false,
        max_tokens,
        stop_ids: Vec::new(),
        stop_strings: Vec::new(),
        top_logprobs: 2,
        prefill_chunk: 4,
    }
}

/// Records `resolved` on a fresh CPU engine into `dir`, as `serve --record-dir` would.
pub fn record(dir: &Path, stem: &str, req: ResolvedRequest, level: TraceLevel, wrap: &dyn worker::TapWrap) -> std::path::PathBuf {
    let m = model();
    let sha = worker_orcd::fetch::sha256_file(&worker_orcd::fetch::default_model_path().unwrap()).unwrap();
    let backend = CpuBackend::new(Arc::clone(&m), 256, 2).unwrap();
    let fp = fingerprint_of(&m, &sha, &backend, 2);
    let mut engine = Engine::new(Box::new(backend), tokenizer());
    let h = worker::header_for(stem, req, fp, level, &m.config);
    worker::record_request(&mut engine, h, dir, stem, wrap).unwrap()
}

/// A fresh engine and the fingerprint of where it runs, sharing nothing with the recorder.
pub fn fresh_engine(threads: usize) -> (Engine, worker_orcd::trace::Fingerprint) {
    let m = model();
    let sha = worker_orcd::fetch::sha256_file(&worker_orcd::fetch::default_model_path().unwrap()).unwrap();
    let backend = CpuBackend::new(Arc::clone(&m), 256, threads).unwrap();
    let fp = fingerprint_of(&m, &sha, &backend, threads);
    (Engine::new(Box::new(backend), tokenizer()), fp)
}

#[test]
fn a_recording_moved_to_another_directory_replays_from_the_file_alone() {
    let made = tempfile::tempdir().unwrap();
    let path = {
        let _g = crate::faults::LOCK.lock().unwrap_or_else(|e| e.into_inner());
        record(made.path(), "moved", resolved("The lighthouse keeper opened the door and", 0.8, 12), TraceLevel::Summary, &worker::NoWrap)
    };
    // Only the file travels: a new directory, a new engine with another thread count.
    let elsewhere = tempfile::tempdir().unwrap();
    let moved = elsewhere.path().join(path.file_name().unwrap());
    std::fs::copy(&path, &moved).unwrap();
    drop(made);
    let (mut engine, here) = fresh_engine(1);
    let _g = crate::faults::LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let r = worker::replay(&moved, &mut engine, &here).unwrap();
    assert!(r.passed, "{}\n{:?}", r.divergence_line(), r.checks);
    // Every recorded token replayed (this seed stops at an end-of-generation token after 9).
    let recorded = worker::open_recording(&moved).unwrap();
    assert_eq!(r.tokens.len(), recorded.tokens.len());
    assert!(r.tokens.len() >= 8, "only {} tokens: too short a run to prove anything", r.tokens.len());
    assert!(r.notes.iter().any(|n| n.contains("bit-identical")), "{:?}", r.notes);
    let text = worker::explain(&moved).unwrap();
    for want in ["seed: 1234", "trace level: summary", "complete: true", "prompt ids:", "fingerprint: model"] {
        assert!(text.contains(want), "explain lacks {want:?}:\n{text}");
    }
}

#[test]
fn diff_compares_two_recordings_without_re_executing() {
    let dir = tempfile::tempdir().unwrap();
    let _g = crate::faults::LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let req = resolved("Once upon a time", 0.0, 6);
    let a = record(dir.path(), "a", req.clone(), TraceLevel::Full, &worker::NoWrap);
    let b = record(dir.path(), "b", req, TraceLevel::Full, &worker::NoWrap);
    let r = worker::diff(&a, &b).unwrap();
    assert!(r.passed, "{}", r.divergence_line());
    assert!(r.curve.iter().all(|p| p.worst_nmse == Some(0.0)), "{:?}", r.curve);
    // A different request is refused as a comparison.
    let c = record(dir.path(), "c", resolved("Once upon a time there", 0.0, 6), TraceLevel::Full, &worker::NoWrap);
    let r = worker::diff(&a, &c).unwrap();
    assert!(!r.passed);
    assert!(r.checks.iter().any(|c| c.name.starts_with("same request") && !c.passed));
}

/// The committed recordings made by the server on an H100 (`recordings/worker/`, see its
/// README) replay on the CPU backend with every token and every traced row hash-identical:
/// the CUDA backend's bitwise contract, checked on every CI run without a GPU.
#[test]
fn gpu_recordings_replay_bit_identically_on_the_cpu() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recordings/worker");
    let paths = worker_orcd::trace::recordings_in(&dir).unwrap();
    assert!(paths.len() >= 2, "expected the GPU recordings in {}", dir.display());
    for path in paths {
        let rec = worker::open_recording(&path).unwrap();
        let fp = &rec.header.as_ref().unwrap().fingerprint;
        assert_eq!(fp.backend, "cuda", "{}: not a GPU recording", path.display());
        assert!(fp.kernel_source_hash.is_some(), "{}: no kernel hash in the fingerprint", path.display());
        let (mut engine, here) = fresh_engine(2);
        let _g = crate::faults::LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let r = worker::replay(&path, &mut engine, &here).unwrap();
        assert!(r.passed, "{}: {}\n{:?}", path.display(), r.divergence_line(), r.checks);
        let rows = r.notes.iter().find_map(|n| n.strip_prefix("trace rows with identical hashes: ")).expect("hash count note");
        let (same, total) = rows.split_once('/').unwrap();
        assert!(total.parse::<usize>().unwrap() > 0 && same == total, "{}: only {rows} rows hash-identical on the CPU", path.display());
        println!("{}: {} tokens, {rows} trace rows hash-identical on the CPU (recorded on {})", path.display(), r.tokens.len(), fp.device);
    }
}
