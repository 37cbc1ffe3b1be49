//! The replay harness proven on planted faults: the CPU backend (feature `fault-injection`,
//! enabled for tests only through the root crate's dev-dependency on itself) commits, one at
//! a time, the bugs that sank the earlier worker, and replay must fail and name the right
//! layer and tensor (or sampling step). The unfaulted runs pass.
//!
//! The fault switch is global: every test here (and every replay test that runs the CPU
//! backend) holds [`LOCK`] while a fault may be set.

use std::sync::{Arc, Mutex, MutexGuard};

use worker_orcd::backend::cpu::faults::{self, Fault};
use worker_orcd::backend::cpu::CpuBackend;
use worker_orcd::backend::{Tap, TapPoint};
use worker_orcd::engine::Engine;
use worker_orcd::gguf::{GgmlType, GgufFile, GgufWriter, MetadataValue};
use worker_orcd::model::Model;
use worker_orcd::reference::{load_corpus, load_token_corpus};
use worker_orcd::replay::{self, backend::fingerprint_of, worker, CaseReport};
use worker_orcd::trace::{RecordedParams, ResolvedRequest, TraceLevel};

use crate::support::{model, tokenizer};

pub static LOCK: Mutex<()> = Mutex::new(());

/// Holds the lock with a fault planted; clears every fault when dropped (even on panic).
struct Planted<'a>(#[allow(dead_code)] MutexGuard<'a, ()>);

impl Planted<'_> {
    fn new(f: Fault, top_p_on_logits: bool) -> Planted<'static> {
        let g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        faults::set(f);
        worker_orcd::sampler::set_top_p_on_logits(top_p_on_logits);
        Planted(g)
    }
}

impl Drop for Planted<'_> {
    fn drop(&mut self) {
        faults::set(Fault::None);
        worker_orcd::sampler::set_top_p_on_logits(false);
    }
}

fn describe(r: &CaseReport) -> String {
    format!("{} → {}", r.name, r.divergence_line())
}

/// Replays corpus case `name` (batch or token-by-token recording) with fault `f` planted.
fn replay_case_with(name: &str, token: bool, f: Fault) -> CaseReport {
    let m = model();
    let corpus = if token { load_token_corpus() } else { load_corpus() };
    let (_, rec) = corpus.unwrap().into_iter().find(|(_, r)| r.case.name == name).unwrap_or_else(|| panic!("case {name}"));
    let _p = Planted::new(f, false);
    let mut b = CpuBackend::new(Arc::clone(&m), 1024, 2).unwrap();
    replay::llama::replay_case(&m, &mut b, &rec, None).unwrap()
}

/// plain-capital: 5 tokens with every op of layers 0, 1, 15 and 29 captured at every position.
fn replay_plain_capital(f: Fault) -> CaseReport {
    replay_case_with("plain-capital", false, f)
}

#[test]
fn backend_faults_are_named_against_llama_cpp() {
    let clean = replay_plain_capital(Fault::None);
    assert!(clean.passed, "unfaulted run fails: {}", describe(&clean));
    // (fault, tensors the first divergence may name, all in layer 0).
    let cases: [(Fault, &[&str]); 5] = [
        (Fault::KvPosStuckAtZero, &["kq_soft_max-0#0", "kqv_out-0#0"]),
        (Fault::SkipFfnDown, &["ffn_out-0#0"]),
        (Fault::TransposedQ, &["Qcur-0#0"]),
        (Fault::RopeWrongPairs, &["Qcur-0#2", "Kcur-0#2"]),
        // Overflows only where a score exceeds 11.09 (see backend::cpu), so its layer is the
        // first with such a score; the tensor must still be the attention's.
        (Fault::SoftmaxNoMax, &["kq_soft_max", "kqv_out"]),
    ];
    let mut table = Vec::new();
    for (f, want) in cases {
        let r = replay_plain_capital(f);
        table.push(format!("{f:?}: {}", r.divergence_line()));
        assert!(!r.passed, "{f:?}: replay passed");
        let d = r.first_divergence.as_ref().unwrap_or_else(|| panic!("{f:?}: no divergence named"));
        if f == Fault::SoftmaxNoMax {
            let base = d.tensor.split('-').next().unwrap_or("");
            assert!(want.contains(&base), "{f:?}: expected one of {want:?}: {}", describe(&r));
        } else {
            assert_eq!(d.layer, Some(0), "{f:?}: {}", describe(&r));
            assert!(want.contains(&d.tensor.as_str()), "{f:?}: expected one of {want:?}: {}", describe(&r));
        }
    }
    for t in &table {
        println!("fault {t}");
    }
}

/// Against the token-by-token recordings there is no tolerance: each fault is named at the
/// exact position, layer and tensor where the run first differs, and the clean run passes
/// with every tap of every position bit-identical.
#[test]
fn backend_faults_are_named_exactly_against_token_recordings() {
    let clean = replay_case_with("plain-capital", true, Fault::None);
    assert!(clean.passed, "unfaulted run fails: {}", describe(&clean));
    // (fault, case, position, tensor of the first differing hash).
    let cases: [(Fault, &str, usize, &str); 5] = [
        // Replay runs the case as one batch, whose keys are all written (over cell 0) before
        // attention: position 0's raw scores are the first to differ.
        (Fault::KvPosStuckAtZero, "plain-capital", 0, "kq-0#0"),
        (Fault::SkipFfnDown, "plain-capital", 0, "ffn_out-0#0"),
        (Fault::TransposedQ, "plain-capital", 0, "Qcur-0#0"),
        // RoPE is the identity at position 0.
        (Fault::RopeWrongPairs, "plain-capital", 1, "Qcur-0#2"),
        // A bug that only shows past a few dozen positions: the first position with more than
        // 32 cells to attend to, in the scores of layer 0.
        (Fault::AttentionWindow32, "chat-long", 32, "kq-0#0"),
    ];
    let mut table = Vec::new();
    for (f, case, pos, tensor) in cases {
        let r = replay_case_with(case, true, f);
        table.push(format!("{f:?} on {case}: {}", r.divergence_line()));
        assert!(!r.passed, "{f:?}: replay passed");
        let d = r.first_divergence.as_ref().unwrap_or_else(|| panic!("{f:?}: no divergence named"));
        assert_eq!((d.position, d.layer, d.tensor.as_str()), (Some(pos), Some(0), tensor), "{f:?}: {}", describe(&r));
    }
    for t in &table {
        println!("fault {t}");
    }
}

/// The real model cut to two layers, with seeded random Q/K/V biases (llama.cpp has no
/// reference for it: the worker's own unfaulted recording is the reference).
fn biased_model() -> Arc<Model> {
    let m = model();
    let f = &m.file;
    let mut w = GgufWriter::new();
    for (k, v) in &f.metadata {
        let v = if k == "llama.block_count" { MetadataValue::U32(2) } else { v.clone() };
        if k != "general.alignment" {
            w.add_metadata(k, v);
        }
    }
    let mut state = 0x5eed_u64;
    let mut rnd = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5
    };
    for t in &f.tensors {
        let keep = !t.name.starts_with("blk.") || t.name.starts_with("blk.0.") || t.name.starts_with("blk.1.");
        if keep {
            w.add_tensor(&t.name, &t.shape, t.ggml_type, f.tensor_bytes(&t.name).unwrap().to_vec());
        }
    }
    for l in 0..2 {
        for (name, n) in [("attn_q.bias", 576usize), ("attn_k.bias", 192), ("attn_v.bias", 192)] {
            let bytes: Vec<u8> = (0..n).flat_map(|_| rnd().to_le_bytes()).collect();
            w.add_tensor(&format!("blk.{l}.{name}"), &[n as u64], GgmlType::F32, bytes);
        }
    }
    let file = GgufFile::from_bytes(w.to_bytes()).expect("cut model parses");
    let m = Model::from_gguf(Arc::new(file)).expect("cut model loads");
    assert!(m.layers[0].bq.is_some(), "biases load");
    Arc::new(m)
}

fn engine_on(m: &Arc<Model>, sha: &str) -> (Engine, worker_orcd::trace::Fingerprint) {
    let b = CpuBackend::new(Arc::clone(m), 256, 2).unwrap();
    let fp = fingerprint_of(m, sha, &b, 2);
    (Engine::new(Box::new(b), tokenizer()), fp)
}

fn request(prompt: &str, temperature: f32, top_p: f32, max_tokens: u32) -> ResolvedRequest {
    ResolvedRequest {
        prompt_text: prompt.into(),
        parse_special: false,
        prompt_ids: tokenizer().encode(prompt, false),
        params: RecordedParams { temperature, top_k: 0, top_p, min_p: 0.0, repetition_penalty: 1.0 },
        seed: 77,
        seed_generated: false,
        max_tokens,
        stop_ids: Vec::new(),
        stop_strings: Vec::new(),
        top_logprobs: 0,
        prefill_chunk: 0,
    }
}

#[test]
fn a_missing_qkv_bias_is_named_against_a_worker_recording() {
    let m = biased_model();
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, fp) = engine_on(&m, "biased-test-model");
    let h = worker::header_for("bias", request("The capital of France is", 0.0, 1.0, 4), fp.clone(), TraceLevel::Full, &m.config);
    let path = {
        let _p = Planted::new(Fault::None, false);
        worker::record_request(&mut engine, h, dir.path(), "bias", &worker::NoWrap).unwrap()
    };
    let clean = {
        let _p = Planted::new(Fault::None, false);
        worker::replay(&path, &mut engine, &fp).unwrap()
    };
    assert!(clean.passed, "{}", describe(&clean));
    let r = {
        let _p = Planted::new(Fault::SkipQkvBias, false);
        worker::replay(&path, &mut engine, &fp).unwrap()
    };
    println!("fault SkipQkvBias: {}", r.divergence_line());
    assert!(!r.passed);
    let d = r.first_divergence.as_ref().unwrap();
    assert_eq!((d.position, d.layer, d.tensor.as_str()), (Some(0), Some(0), "l_out-0"), "{}", describe(&r));
    assert!(d.nmse.unwrap() > 1e-6, "{}", describe(&r));
}

#[test]
fn top_p_on_logits_is_named_as_a_sampling_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = {
        let _p = Planted::new(Fault::None, false);
        crate::replay::record(
            dir.path(),
            "topp",
            request("Once upon a time, in a small village by the sea,", 0.9, 0.5, 24),
            TraceLevel::Summary,
            &worker::NoWrap,
        )
    };
    let (mut engine, here) = crate::replay::fresh_engine(2);
    let r = {
        let _p = Planted::new(Fault::None, true);
        worker::replay(&path, &mut engine, &here).unwrap()
    };
    println!("fault TopPOnLogits: {}", r.divergence_line());
    assert!(!r.passed);
    let d = r.first_divergence.as_ref().unwrap();
    assert!(d.tensor.starts_with("sampling step"), "{}", describe(&r));
    assert_eq!(d.layer, None);
}

/// The recorder fault: token i's trace filed under index i + 1.
struct ShiftByOne<'a>(&'a mut dyn Tap);

impl Tap for ShiftByOne<'_> {
    fn wants(&self, p: TapPoint) -> bool {
        self.0.wants(p)
    }
    fn record(&mut self, p: TapPoint, pos0: usize, n_tok: usize, data: &[f32]) {
        self.0.record(p, pos0 + 1, n_tok, data)
    }
    fn forward_done(&mut self) {
        self.0.forward_done()
    }
}

struct RecorderOffByOne;

impl worker::TapWrap for RecorderOffByOne {
    fn wrap<'a>(&self, inner: &'a mut dyn Tap) -> Box<dyn Tap + 'a> {
        Box::new(ShiftByOne(inner))
    }
}

#[test]
fn a_recorder_filing_traces_one_position_late_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let _p = Planted::new(Fault::None, false);
    let path = crate::replay::record(dir.path(), "shifted", request("Once upon a time", 0.0, 1.0, 6), TraceLevel::Hashes, &RecorderOffByOne);
    let (mut engine, here) = crate::replay::fresh_engine(2);
    let r = worker::replay(&path, &mut engine, &here).unwrap();
    println!("fault RecorderOffByOne: {}", r.divergence_line());
    assert!(!r.passed);
    assert!(r.checks.iter().any(|c| c.name == "token ids identical" && c.passed), "tokens are not the recorder's to change");
    let d = r.first_divergence.as_ref().unwrap();
    assert_eq!((d.position, d.tensor.as_str()), (Some(0), "embd"), "{}", describe(&r));
    assert!(d.detail.contains("shifted by"), "{}", describe(&r));
}

/// A recording made on the GPU, replayed on the CPU: the backends share one arithmetic, so
/// there is no cross-backend tolerance. The clean replay is hash-identical row for row
/// (`replay::gpu_recordings_replay_bit_identically_on_the_cpu`); with a fault that only shows
/// past position 32, replay fails at exactly that position and names layer 0's output, the
/// first traced row whose hash differs.
#[test]
fn a_gpu_recording_replayed_on_the_cpu_names_the_first_differing_row() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recordings/worker/gpu-chat-haiku.wrec");
    let rec = worker::open_recording(&path).unwrap();
    let h = rec.header.as_ref().unwrap();
    assert_eq!(h.fingerprint.backend, "cuda");
    assert!(h.resolved.prompt_ids.len() > 33, "the fault must land inside the prompt");
    let (mut engine, here) = crate::replay::fresh_engine(2);
    let r = {
        let _p = Planted::new(Fault::AttentionWindow32, false);
        worker::replay(&path, &mut engine, &here).unwrap()
    };
    println!("fault AttentionWindow32 on a GPU recording: {}", r.divergence_line());
    assert!(!r.passed, "a faulted CPU replay of a GPU recording passed");
    assert!(r.checks.iter().any(|c| c.name == "traces bit-identical" && !c.passed), "{:?}", r.checks);
    let d = r.first_divergence.as_ref().unwrap();
    assert_eq!((d.position, d.layer, d.tensor.as_str()), (Some(32), Some(0), "l_out-0"), "{}", describe(&r));
    assert_eq!(d.detail, "hashes differ", "{}", describe(&r));
}

/// The HTML report, read by a real browser (headless Chromium, Debian's `chromium` package, or
/// `$CHROMIUM`): a page with a passing and a failing case, whose DOM as the browser built it
/// holds the verdict table, the failing case's section with its first divergence, and its error
/// curve as an SVG polyline; the page also renders to a screenshot.
#[test]
fn the_html_report_shows_the_failing_case_and_its_curve_in_a_browser() {
    let chromium = std::env::var_os("CHROMIUM")
        .map(std::path::PathBuf::from)
        .or_else(|| ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].iter().map(std::path::PathBuf::from).find(|p| p.exists()));
    let chromium = chromium.expect("headless Chromium is needed for this test: apt-get install chromium (or set $CHROMIUM); .ci/run installs it");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recordings/worker/gpu-sampled-story.wrec");
    let (mut engine, here) = crate::replay::fresh_engine(2);
    let (clean, bad) = {
        let clean = {
            let _p = Planted::new(Fault::None, false);
            worker::replay(&path, &mut engine, &here).unwrap()
        };
        let _p = Planted::new(Fault::SkipFfnDown, false);
        (clean, worker::replay(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recordings/worker/gpu-chat-haiku.wrec"), &mut engine, &here).unwrap())
    };
    assert!(clean.passed && !bad.passed);
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, replay::html::page(&[clean, bad.clone()], 1.0, "replay report test")).unwrap();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(&chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"])
            .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", chromium.display()));
        assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = run(&["--dump-dom"]);
    assert!(dom.contains(r#"data-cases="2""#) && dom.contains(r#"data-failed="1""#), "{dom}");
    let id = format!(r#"id="case-{}""#, replay::html::sanitize(&bad.name));
    let section = &dom[dom.find(&id).unwrap_or_else(|| panic!("no section {id} in the DOM:\n{dom}"))..];
    let section = &section[..section.find("</section>").expect("section closes")];
    let d = bad.first_divergence.as_ref().unwrap();
    assert!(section.contains(&replay::html::escape(&d.tensor)), "first divergence's tensor missing:\n{section}");
    assert!(section.contains("<svg") && section.contains(r#"class="nmse""#), "no error curve in the failing case:\n{section}");
    assert!(dom.contains(&format!(r##"href="#case-{}""##, replay::html::sanitize(&bad.name))), "the verdict table does not link the failing case");
    let png = dir.path().join("shot.png");
    run(&[&format!("--screenshot={}", png.display()), "--window-size=1000,1400"]);
    let shot = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert!(shot.starts_with(b"\x89PNG") && shot.len() > 10_000, "screenshot of {} bytes", shot.len());
}
