//! Crash-safe recordings: a real server process killed with `kill -9` mid-generation leaves a
//! recording that replays as incomplete, never as failed; a recording cut at any byte does
//! the same; a token frame changed behind the footer's back, or a bad checksum, fails. And
//! one recorded run: replay re-executes the server's text stops, which span tokens.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use worker_orcd::backend::cpu::CpuBackend;
use worker_orcd::engine::Engine;
use worker_orcd::replay::{backend::fingerprint_of, worker, CaseReport};
use worker_orcd::server::ServerConfig;
use worker_orcd::trace::{FrameHeader, FrameKind, Recording, TraceLevel, FRAME_HEADER_LEN};

use crate::reliability::{long_prompt, Worker};
use crate::server::{client, config, post, start, SseReader};
use crate::support::{model, tokenizer};

/// A CPU engine with room for the long prompts, and where it runs.
fn engine() -> (Engine, worker_orcd::trace::Fingerprint) {
    let m = model();
    let sha = worker_orcd::fetch::sha256_file(&worker_orcd::fetch::default_model_path().unwrap()).unwrap();
    let backend = CpuBackend::new(Arc::clone(&m), 1024, 2).unwrap();
    let fp = fingerprint_of(&m, &sha, &backend, 2);
    (Engine::new(Box::new(backend), tokenizer()), fp)
}

pub(crate) fn replay(path: &Path) -> CaseReport {
    let (mut e, fp) = engine();
    worker::replay(path, &mut e, &fp).unwrap()
}

pub(crate) fn describe(r: &CaseReport) -> String {
    let failed: Vec<String> = r.checks.iter().filter(|c| !c.passed).map(|c| format!("{}: {}", c.name, c.detail)).collect();
    format!("{} — failed checks {failed:?}; first divergence {}; notes {:?}", r.verdict_line(), r.divergence_line(), r.notes)
}

/// Runs `body` on a worker process, reads `tokens` token events (0: only `started`),
/// `kill -9`s it and returns the recording it left.
fn killed_after(tokens: usize, body: Value, trace: &str) -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let w = Worker::spawn(&["--record-dir", dir.to_str().unwrap(), "--trace", trace]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = w.url();
    let sse = rt.block_on(async {
        let resp = post(&client(), format!("{url}/execute"), &body).await;
        let mut sse = SseReader::new(resp);
        assert_eq!(sse.next().await.unwrap().event, "started");
        for _ in 0..tokens {
            assert_eq!(sse.next().await.unwrap().event, "token");
        }
        sse
    });
    // Kill once the writer has put at least one trace frame on disk (it runs beside the stream).
    let t0 = std::time::Instant::now();
    let files = loop {
        let files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        if files.len() == 1 && Recording::open(&files[0]).is_ok_and(|r| !r.traces.is_empty()) {
            break files;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no trace frame written: {files:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    w.signal("KILL");
    drop(w);
    drop(sse);
    assert!(files[0].to_string_lossy().ends_with(".wrec.partial"), "{files:?}");
    files.into_iter().next().unwrap()
}

#[test]
fn kill_9_mid_generation_leaves_a_recording_that_replays_as_incomplete() {
    let count = json!({"job_id": "count", "prompt": "Count from 1 to 1000: 1, 2, 3, 4, 5, 6,", "max_tokens": 900, "temperature": 0});
    let long = json!({"job_id": "long", "prompt": long_prompt(), "max_tokens": 8, "temperature": 0});
    for (tokens, body, trace) in [(0, long, "hashes"), (1, count.clone(), "summary"), (40, count, "full")] {
        let path = killed_after(tokens, body, trace);
        let rec = Recording::open(&path).unwrap();
        assert!(!rec.complete && rec.footer.is_none());
        let r = replay(&path);
        println!("killed after {tokens} tokens ({trace}): {} ({} token frames, {} trace frames)", r.verdict_line(), rec.tokens.len(), rec.traces.len());
        assert!(r.passed, "{}", describe(&r));
        assert_eq!(r.verdict(), "INCOMPLETE", "{}", describe(&r));
        let inc = r.incomplete.as_ref().unwrap();
        assert!(inc.position > 0, "{}", describe(&r));
        if tokens > 0 {
            let n_prompt = rec.header.as_ref().unwrap().resolved.prompt_ids.len();
            assert!(inc.position >= n_prompt, "prefill was recorded whole before the first token: {}", describe(&r));
            assert!(inc.tokens >= tokens / 2, "{}", describe(&r));
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}

/// A finished recording of a short request, made by the server.
async fn served_recording(dir: &Path, body: Value, endpoint: &str, trace: TraceLevel) -> PathBuf {
    let s = start(ServerConfig { record_dir: Some(dir.to_path_buf()), trace, ..config() });
    let resp = post(&client(), format!("{}{endpoint}", s.url()), &body).await;
    let path = PathBuf::from(resp.headers()["x-worker-orcd-recording"].to_str().unwrap());
    let _ = resp.bytes().await.unwrap();
    crate::server::wait_file(&path).await;
    s.shutdown();
    path
}

#[tokio::test]
async fn a_recording_cut_anywhere_replays_every_complete_frame_as_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let body = json!({"job_id": "cut", "prompt": "The lighthouse keeper opened the door and", "max_tokens": 8, "temperature": 0.7, "seed": 3});
    let path = served_recording(dir.path(), body, "/execute", TraceLevel::Summary).await;
    let bytes = std::fs::read(&path).unwrap();
    let rec = Recording::from_bytes(&bytes).unwrap();
    assert!(rec.complete);
    let whole = tokio::task::spawn_blocking({
        let p = path.clone();
        move || replay(&p)
    })
    .await
    .unwrap();
    assert_eq!(whole.verdict(), "PASS", "{}", describe(&whole));
    // Every frame boundary after the header, and a byte into every frame, and mid-frame.
    let header_end = rec.frame_index[1].offset as usize;
    let mut cuts: Vec<usize> = Vec::new();
    for f in &rec.frame_index[1..] {
        let (start, len) = (f.offset as usize, FRAME_HEADER_LEN + f.stored_len as usize);
        cuts.extend([start, start + 1, start + FRAME_HEADER_LEN + len / 3]);
    }
    cuts.push(bytes.len() - 1);
    cuts.retain(|&c| c >= header_end && c < bytes.len());
    let cut_dir = tempfile::tempdir().unwrap();
    let n = cuts.len();
    let results = tokio::task::spawn_blocking(move || {
        let (mut e, fp) = engine();
        cuts.iter()
            .map(|&c| {
                let p = cut_dir.path().join(format!("cut-{c}.wrec.partial"));
                std::fs::write(&p, &bytes[..c]).unwrap();
                (c, worker::replay(&p, &mut e, &fp).unwrap())
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let mut positions = Vec::new();
    for (c, r) in &results {
        assert!(r.passed, "cut at byte {c}: {}", describe(r));
        assert_eq!(r.verdict(), "INCOMPLETE", "cut at byte {c}: {}", describe(r));
        positions.push(r.incomplete.as_ref().unwrap().position);
    }
    assert!(positions.windows(2).all(|w| w[0] <= w[1]), "a longer cut never gets less far: {positions:?}");
    println!("{n} cuts, positions reached {positions:?}");
}

/// Rewrites frame `i` of `bytes` with `change` applied to its stored payload; `fix_crc` keeps
/// the checksum valid (a deliberate edit) or not (corruption).
fn edit_frame(bytes: &mut [u8], rec: &Recording, i: usize, fix_crc: bool, change: impl FnOnce(&mut [u8])) {
    let f = rec.frame_index[i];
    let (h0, p0) = (f.offset as usize, f.offset as usize + FRAME_HEADER_LEN);
    change(&mut bytes[p0..p0 + f.stored_len as usize]);
    if fix_crc {
        let mut head = [0u8; FRAME_HEADER_LEN];
        head.copy_from_slice(&bytes[h0..p0]);
        let crc = FrameHeader::checksum(&head, &bytes[p0..p0 + f.stored_len as usize]);
        bytes[h0 + 12..h0 + 16].copy_from_slice(&crc.to_le_bytes());
    }
}

#[tokio::test]
async fn replay_checks_token_frames_and_fails_on_any_bad_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let body = json!({"job_id": "tamper", "prompt": "The lighthouse keeper opened the door and", "max_tokens": 6, "temperature": 0});
    let path = served_recording(dir.path(), body, "/execute", TraceLevel::Hashes).await;
    let bytes = std::fs::read(&path).unwrap();
    let rec = Recording::from_bytes(&bytes).unwrap();
    let token_frame = rec.frame_index.iter().position(|f| f.kind == FrameKind::Token as u8 && f.codec == 0).expect("a raw token frame");
    let trace_frame = rec.frame_index.iter().position(|f| f.kind == FrameKind::Trace as u8).unwrap();

    // A token id changed inside its frame, checksum fixed: the footer's list still agrees
    // with the replay, the frame does not.
    let mut changed = bytes.clone();
    edit_frame(&mut changed, &rec, token_frame, true, |p| {
        // postcard: index (one byte below 128), then the id as a varint; flip its lowest bit.
        p[1] ^= 1;
    });
    let edited = Recording::from_bytes(&changed).unwrap();
    assert!(edited.complete, "the edit is a valid frame: {:?}", edited.problems());
    let p1 = dir.path().join("changed.wrec");
    std::fs::write(&p1, &changed).unwrap();
    // A flipped byte in a trace frame, checksum left alone.
    let mut corrupt = bytes.clone();
    edit_frame(&mut corrupt, &rec, trace_frame, false, |p| p[p.len() / 2] ^= 0x40);
    let p2 = dir.path().join("corrupt.wrec");
    std::fs::write(&p2, &corrupt).unwrap();
    let (a, b) = tokio::task::spawn_blocking(move || (replay(&p1), replay(&p2))).await.unwrap();
    assert_eq!(a.verdict(), "FAIL", "{}", describe(&a));
    assert!(a.checks.iter().any(|c| c.name == "token frames agree with the footer" && !c.passed), "{}", describe(&a));
    assert_eq!(b.verdict(), "FAIL", "{}", describe(&b));
    assert!(b.checks.iter().any(|c| c.name.starts_with("recording intact") && !c.passed && c.detail.contains("checksum")), "{}", describe(&b));
}

#[tokio::test]
async fn replay_runs_the_servers_text_stops_even_across_tokens() {
    let s = start(config());
    let c = client();
    let prompt = "The capital of France is";
    let probe = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 0});
    let r: Value = post(&c, format!("{}/v1/completions", s.url()), &probe).await.json().await.unwrap();
    let pieces: Vec<String> = r["choices"][0]["logprobs"]["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    // A stop string made of the end of one token and the start of the next.
    let k = (2..pieces.len() - 1).find(|&k| pieces[k].chars().count() >= 2 && pieces[k + 1].trim().chars().count() >= 2).expect("two long tokens");
    let (a, b) = (&pieces[k], &pieces[k + 1]);
    let stop: String = a.chars().skip(a.chars().count() - 1).chain(b.chars().take(2)).collect();
    let before: String = pieces[..k].concat() + &a[..a.len() - a.chars().last().unwrap().len_utf8()];
    drop(s);

    let dir = tempfile::tempdir().unwrap();
    let body = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "stop": [stop]});
    let path = served_recording(dir.path(), body, "/v1/completions", TraceLevel::Hashes).await;
    let rec = Recording::open(&path).unwrap();
    let f = rec.footer.clone().unwrap();
    assert_eq!(f.stop_reason, "STOP_SEQUENCE", "{f:?}");
    assert_eq!(f.text, before, "the client got the text up to the stop string");
    let r = tokio::task::spawn_blocking({
        let p = path.clone();
        move || replay(&p)
    })
    .await
    .unwrap();
    assert_eq!(r.verdict(), "PASS", "{}", describe(&r));
    assert_eq!(r.stop_reason, "STOP_SEQUENCE", "replay stops where the server did, for the same reason");
    assert!(r.checks.iter().any(|c| c.name == "same stop reason and text" && c.passed));

    // Replay's recorder records the request exactly as the server did.
    let again = tempfile::tempdir().unwrap();
    let h = rec.header.clone().unwrap();
    let made = {
        let (mut e, _) = engine();
        worker::record_request(&mut e, h, again.path(), "again", &worker::NoWrap).unwrap()
    };
    let other = Recording::open(&made).unwrap();
    let g = other.footer.unwrap();
    assert_eq!((g.tokens, g.text, g.stop_reason, g.stop_sequence), (f.tokens, f.text, f.stop_reason, f.stop_sequence));
}
