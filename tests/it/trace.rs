//! Recordings: the writer and reader round trip bit for bit at every trace level, and the
//! reader survives truncation, bit flips, unfinished files and hostile bytes, returning every
//! complete frame. One test replays a real-model recording with a `FrameTap`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use worker_orcd::backend::{Tap, TapPoint};
use worker_orcd::trace::{
    first_divergence, row_hash, row_stats, Damage, Fingerprint, Footer, FrameTap, Header, ModelDims, Projector, RecordedParams, Recorder, RecorderConfig,
    Recording, RecordingError, ResolvedRequest, Site, Timings, TokenFrame, TraceLevel, FILE_HEADER_LEN, FRAME_HEADER_LEN,
};

const DIMS: ModelDims = ModelDims { n_layers: 2, dim: 8, n_vocab: 16 };

fn header(level: TraceLevel) -> Header {
    Header {
        job_id: "job-1".into(),
        endpoint: "/execute".into(),
        request_json: r#"{"job_id":"job-1","prompt":"hi","max_tokens":2}"#.into(),
        started_at: "2026-11-27T10:00:00.000000Z".into(),
        resolved: ResolvedRequest {
            prompt_text: "hi".into(),
            parse_special: true,
            prompt_ids: vec![5, 6, 7],
            params: RecordedParams { temperature: 0.7, top_k: 40, top_p: 0.9, min_p: 0.05, repetition_penalty: 1.1 },
            seed: 42,
            seed_generated: false,
            max_tokens: 2,
            stop_ids: vec![vec![9, 10]],
            stop_strings: vec![],
            top_logprobs: 2,
            prefill_chunk: 128,
        },
        fingerprint: Fingerprint {
            model_name: "test".into(),
            model_sha256: "00".repeat(32),
            worker_version: "0.1.0".into(),
            git_commit: "unknown".into(),
            backend: "cpu".into(),
            device: "cpu (2 threads)".into(),
            driver: None,
            kernel_source_hash: None,
            threads: 2,
            numerics: "test".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            cpu: "test".into(),
        },
        trace: level,
        dims: DIMS,
        projection: worker_orcd::trace::projection_spec(),
    }
}

fn footer(tokens: Vec<u32>, dropped: u32) -> Footer {
    Footer {
        outcome: "ok".into(),
        error: None,
        stop_reason: "MAX_TOKENS".into(),
        stop_sequence: None,
        stop_sequence_matched: None,
        eog_token: None,
        tokens,
        text: "ab".into(),
        timings: Timings { queue_ms: 1.0, prefill_ms: 2.0, decode_ms: 3.0, total_ms: 6.0 },
        dropped_trace_frames: dropped,
        ended_at: "2026-11-27T10:00:01.000000Z".into(),
    }
}

/// Deterministic values with the awkward ones mixed in: -0, NaN with a payload, infinities,
/// subnormals.
fn values(n: usize, salt: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let k = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(salt.wrapping_mul(40_503));
            match k % 17 {
                0 => -0.0,
                1 => f32::from_bits(0x7fc0_1234),
                2 => f32::INFINITY,
                3 => f32::from_bits(3),
                _ => (k % 10_007) as f32 / 97.0 - 50.0,
            }
        })
        .collect()
}

/// The tap calls of a prompt of 3 positions and one decode step, as the CPU backend makes
/// them, with the data each site received.
fn forward_calls() -> Vec<(TapPoint, usize, usize, Vec<f32>)> {
    let d = DIMS.dim as usize;
    let mut calls = Vec::new();
    for (pos0, n) in [(0usize, 3usize), (3, 1)] {
        let salt = pos0 as u32 * 100;
        calls.push((TapPoint::Embd, pos0, n, values(n * d, salt + 1)));
        for l in 0..DIMS.n_layers as usize {
            calls.push((TapPoint::AttnNorm(l), pos0, n, values(n * d, 999)));
            calls.push((TapPoint::LOut(l), pos0, n, values(n * d, salt + 10 + l as u32)));
        }
        calls.push((TapPoint::ResultNorm, pos0, n, values(n * d, salt + 50)));
        calls.push((TapPoint::Logits, pos0 + n - 1, 1, values(DIMS.n_vocab as usize, salt + 60)));
    }
    calls
}

fn play(tap: &mut dyn Tap, calls: &[(TapPoint, usize, usize, Vec<f32>)]) {
    for (p, pos0, n, data) in calls {
        if tap.wants(*p) {
            tap.record(*p, *pos0, *n, data);
        }
    }
}

/// Writes a recording of `forward_calls()` and two tokens; returns its path.
fn write_recording(dir: &Path, cfg: impl FnOnce(&mut RecorderConfig), level: TraceLevel) -> PathBuf {
    let mut c = RecorderConfig::new(dir, level);
    cfg(&mut c);
    let mut rec = Recorder::start(c, DIMS).unwrap();
    let active = rec.begin("rec", header(level)).unwrap();
    let path = active.path().to_path_buf();
    let dropped = {
        let mut tap = rec.tap(&active);
        play(&mut tap, &forward_calls());
        tap.finish()
    };
    for (i, id) in [11u32, 12].into_iter().enumerate() {
        active.token(TokenFrame { index: i as u32, id, text: ["a", "b"][i].into(), logprob: -0.5, top: vec![(id, -0.5), (3, -1.5)] });
    }
    rec.end(active, footer(vec![11, 12], dropped));
    rec.flush();
    rec.shutdown();
    path
}

fn site(p: TapPoint) -> Option<Site> {
    worker_orcd::trace::site_of(p)
}

#[test]
fn full_recordings_round_trip_bit_for_bit() {
    for (shuffle, zstd) in [(true, Some(1)), (false, Some(3)), (true, None)] {
        let dir = tempfile::tempdir().unwrap();
        let path = write_recording(
            dir.path(),
            |c| {
                c.shuffle = shuffle;
                c.zstd_level = zstd;
            },
            TraceLevel::Full,
        );
        assert!(path.exists() && !path.with_extension("wrec.partial").exists());
        let r = Recording::open(&path).unwrap();
        assert!(r.complete, "{:?}", r.problems());
        assert_eq!(r.header.as_ref().unwrap(), &header(TraceLevel::Full));
        assert_eq!(r.footer.as_ref().unwrap(), &footer(vec![11, 12], 0));
        assert_eq!(r.token_ids(), vec![11, 12]);
        assert_eq!(r.tokens[1].top, vec![(12, -0.5), (3, -1.5)]);
        assert_eq!(r.traces.len(), 2);
        let mut proj = Projector::default();
        let mut n_rows = 0;
        for (p, pos0, n, data) in forward_calls() {
            let Some(site) = site(p) else { continue };
            let width = data.len() / n;
            for (k, row) in data.chunks(width).enumerate() {
                let got = r.row((pos0 + k) as u32, site).unwrap_or_else(|| panic!("row {site:?} {}", pos0 + k));
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got.values().unwrap()), bits(row), "{site:?} at {}", pos0 + k);
                assert_eq!(got.hash, row_hash(row));
                assert_eq!(got.stats.unwrap().absmax, row_stats(row).absmax);
                let mut want = Vec::new();
                proj.project(row, &mut want);
                assert_eq!(bits(got.projection.unwrap()), bits(&want), "projection of {site:?} at {}", pos0 + k);
                n_rows += 1;
            }
        }
        assert_eq!(r.rows().len(), n_rows);
        assert!(r.row(0, Site::Logits).is_none(), "logits only for the rows computed");

        // A replay with the same values agrees; one changed bit is found where it is.
        let mut same = FrameTap::new(TraceLevel::Full);
        play(&mut same, &forward_calls());
        assert_eq!(first_divergence(&r.traces, same.frames()), None);
        let mut calls = forward_calls();
        let (_, _, _, data) = calls.iter_mut().find(|c| c.0 == TapPoint::LOut(1) && c.1 == 0).unwrap();
        data[DIMS.dim as usize + 3] = f32::from_bits(data[DIMS.dim as usize + 3].to_bits() ^ 1);
        let mut changed = FrameTap::new(TraceLevel::Summary);
        play(&mut changed, &calls);
        let d = first_divergence(&r.traces, changed.frames()).unwrap();
        assert_eq!((d.pos, d.site, d.missing), (1, Site::LOut(1), false));
        assert!(d.est_rms_error.is_some(), "summaries on both sides give an error estimate");
    }
}

#[test]
fn each_level_keeps_what_it_promises() {
    for level in [TraceLevel::Off, TraceLevel::Hashes, TraceLevel::Summary, TraceLevel::Full] {
        let dir = tempfile::tempdir().unwrap();
        let r = Recording::open(&write_recording(dir.path(), |_| {}, level)).unwrap();
        assert!(r.complete, "{level}: {:?}", r.problems());
        assert_eq!(r.header.as_ref().unwrap().trace, level);
        if level == TraceLevel::Off {
            assert!(r.traces.is_empty());
            continue;
        }
        let rows = r.rows();
        // embd, 2 layers and result_norm for 3 + 1 positions, and 2 logits rows.
        assert_eq!(rows.len(), 4 * 4 + 2, "{level}");
        for row in rows {
            assert_eq!(row.stats.is_some(), level >= TraceLevel::Summary, "{level}");
            assert_eq!(row.projection.is_some(), level >= TraceLevel::Summary, "{level}");
            assert_eq!(row.values().is_some(), level == TraceLevel::Full, "{level}");
        }
    }
}

/// Frame boundaries of a recording, from its frame headers.
fn boundaries(bytes: &[u8]) -> Vec<usize> {
    let mut b = vec![FILE_HEADER_LEN];
    let mut off = FILE_HEADER_LEN;
    while off < bytes.len() {
        let len = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        off += FRAME_HEADER_LEN + len;
        b.push(off);
    }
    assert_eq!(off, bytes.len());
    b
}

#[test]
fn a_truncated_recording_returns_every_complete_frame() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(write_recording(dir.path(), |_| {}, TraceLevel::Summary)).unwrap();
    let bounds = boundaries(&bytes);
    let total = bounds.len() - 1;
    assert_eq!(total, 1 + 2 + 2 + 1, "header, 2 traces, 2 tokens, footer");
    for cut in 0..bytes.len() {
        let r = match Recording::from_bytes(&bytes[..cut]) {
            Err(RecordingError::NotARecording { .. }) if cut < FILE_HEADER_LEN => continue,
            Err(e) => panic!("cut at {cut}: {e}"),
            Ok(r) => r,
        };
        assert!(!r.complete, "cut at {cut}");
        let whole = bounds.iter().filter(|&&b| b <= cut).count() - 1;
        assert_eq!(r.frames, whole, "cut at {cut}");
        assert_eq!(r.header.is_some(), whole >= 1);
        let last = bounds[whole];
        if cut == last {
            assert_eq!(r.damage.last(), Some(&Damage::MissingFooter), "cut at a boundary {cut}");
        } else {
            match &r.damage[0] {
                Damage::Truncated { offset, frame, .. } => assert_eq!((*offset as usize, *frame), (last, whole), "cut at {cut}"),
                d => panic!("cut at {cut}: {d}"),
            }
            assert!(r.problems().unwrap().contains(&format!("truncated at byte {last}")));
        }
    }
}

#[test]
fn bit_flips_are_detected_and_the_other_frames_survive() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(write_recording(dir.path(), |_| {}, TraceLevel::Summary)).unwrap();
    let bounds = boundaries(&bytes);
    let total = bounds.len() - 1;
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 1 << (i % 8);
        let r = match Recording::from_bytes(&b) {
            Err(_) if i < FILE_HEADER_LEN => continue,
            Err(e) => panic!("flip at {i}: {e}"),
            Ok(_) if i < FILE_HEADER_LEN => panic!("flip at {i} in the file header went unnoticed"),
            Ok(r) => r,
        };
        assert!(!r.complete, "flip at byte {i} went unnoticed");
        let k = bounds.iter().rposition(|&x| x <= i).unwrap(); // the damaged frame
        assert!(r.frames >= k, "flip at {i} (frame {k}) lost earlier frames: {} read", r.frames);
        let in_payload = i >= bounds[k] + FRAME_HEADER_LEN;
        if in_payload {
            assert_eq!(r.frames, total - 1, "flip at {i}: only frame {k} is lost ({:?})", r.damage);
            assert_eq!(r.damage[0], Damage::ChecksumMismatch { frame: k, offset: bounds[k] as u64 });
        }
    }
}

#[test]
fn an_unfinished_recording_is_opened_and_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = Recorder::start(RecorderConfig::new(dir.path(), TraceLevel::Hashes), DIMS).unwrap();
    let active = rec.begin("crashed", header(TraceLevel::Hashes)).unwrap();
    let final_path = active.path().to_path_buf();
    {
        let mut tap = rec.tap(&active);
        play(&mut tap, &forward_calls());
        tap.finish();
    }
    active.token(TokenFrame { index: 0, id: 11, text: "a".into(), logprob: -0.1, top: vec![] });
    rec.flush();
    drop(active);
    drop(rec); // the writer stops with the recording unfinished, as in a crash
    assert!(!final_path.exists());
    let partial = dir.path().join("crashed.wrec.partial");
    let r = Recording::open(&partial).unwrap();
    assert!(!r.complete && r.partial_name);
    assert_eq!(r.damage, vec![Damage::MissingFooter]);
    assert_eq!(r.token_ids(), vec![11]);
    assert_eq!(r.traces.len(), 2);
    assert!(r.problems().unwrap().contains("not finished"));
}

#[test]
fn hostile_bytes_never_panic() {
    let mut head = worker_orcd::trace::file_header().to_vec();
    // A frame claiming 4 GiB.
    let mut b = head.clone();
    b.extend_from_slice(&[2, 1, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    let r = Recording::from_bytes(&b).unwrap();
    assert!(matches!(r.damage[0], Damage::BadFrameHeader { frame: 0, offset: 16, .. }), "{:?}", r.damage);
    // A well-checksummed frame whose payload claims to decompress to 1 GiB but does not.
    let mut f = vec![1u8, 1, 0, 0];
    let payload = zstd::bulk::compress(b"tiny", 1).unwrap();
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&(1u32 << 30).to_le_bytes());
    let mut crc = crc32(&f);
    crc = crc32_update(crc, &payload);
    f.extend_from_slice(&crc.to_le_bytes());
    f.extend_from_slice(&payload);
    let mut b = head.clone();
    b.extend_from_slice(&f);
    let r = Recording::from_bytes(&b).unwrap();
    assert!(matches!(r.damage[0], Damage::Undecodable { frame: 0, .. }), "{:?}", r.damage);
    // Wrong magic, other versions, garbage.
    assert!(matches!(Recording::from_bytes(b"GIF89a........................"), Err(RecordingError::NotARecording { .. })));
    head[8] = 2;
    assert!(matches!(Recording::from_bytes(&head), Err(RecordingError::UnsupportedVersion { found: 2, supported: 1 })));
    let mut state = 0x1234_5678_9abc_def0u64;
    for n in 0..2000 {
        let mut g = worker_orcd::trace::file_header().to_vec();
        for _ in 0..(n % 97) * 3 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            g.push(state as u8);
        }
        let r = Recording::from_bytes(&g).unwrap();
        assert!(!r.complete);
    }
}

fn crc32(b: &[u8]) -> u32 {
    crc32_update(0, b)
}

fn crc32_update(crc: u32, b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(crc);
    h.update(b);
    h.finalize()
}

#[test]
fn a_full_disk_cuts_a_recording_back_to_whole_frames_and_keeps_it_partial() {
    use std::sync::atomic::AtomicU64;
    use worker_orcd::trace::RecordingOutcome;
    let whole_dir = tempfile::tempdir().unwrap();
    let whole = std::fs::read(write_recording(whole_dir.path(), |_| {}, TraceLevel::Summary)).unwrap();
    let frames = Recording::from_bytes(&whole).unwrap().frame_index;
    let header_end = frames[1].offset;
    // A disk with room for 0 bytes up to the whole file, a byte at a time around each frame
    // boundary and in steps between.
    let mut budgets: Vec<u64> = (0..whole.len() as u64).step_by(97).collect();
    for f in &frames {
        budgets.extend([f.offset.saturating_sub(1), f.offset, f.offset + 1]);
    }
    budgets.push(whole.len() as u64);
    // The writer alone and with encoder threads: the same cuts.
    for (left, encoders) in budgets.iter().flat_map(|&l| [(l, 0usize), (l, 2)]) {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(AtomicU64::new(left));
        let mut c = RecorderConfig::new(dir.path(), TraceLevel::Summary);
        c.encoders = encoders;
        c.disk_bytes_left = Some(Arc::clone(&disk));
        let mut rec = Recorder::start(c, DIMS).unwrap();
        let active = rec.begin("rec", header(TraceLevel::Summary)).unwrap();
        let verdict = active.verdict();
        let dropped = {
            let mut tap = rec.tap(&active);
            play(&mut tap, &forward_calls());
            tap.finish()
        };
        for (i, id) in [11u32, 12].into_iter().enumerate() {
            active.token(TokenFrame { index: i as u32, id, text: ["a", "b"][i].into(), logprob: -0.5, top: vec![(id, -0.5), (3, -1.5)] });
        }
        rec.end(active, footer(vec![11, 12], dropped));
        let outcome = verdict.wait(std::time::Duration::from_secs(10)).expect("the writer publishes an outcome");
        rec.shutdown();
        let files: Vec<PathBuf> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        match outcome {
            RecordingOutcome::Written(p) => {
                assert!(left >= whole.len() as u64, "{left}: written on a disk too small");
                assert_eq!(std::fs::read(&p).unwrap(), whole, "{left}");
            }
            RecordingOutcome::Lost { error } => {
                assert!(left < header_end, "{left}: lost although the header frame fit: {error}");
                assert!(files.is_empty(), "{left}: {files:?}");
            }
            RecordingOutcome::Cut { partial, error } => {
                assert!(error.contains("no space left"), "{error}");
                assert!(left >= header_end && left < whole.len() as u64, "{left}");
                assert_eq!(files, vec![partial.clone()], "{left}: only the .partial file is left");
                assert!(partial.to_string_lossy().ends_with(".wrec.partial"));
                let bytes = std::fs::read(&partial).unwrap();
                // Cut back to the last whole frame: a prefix of the whole file, ending on a frame
                // boundary, which the reader takes as a clean cut.
                assert!(frames.iter().any(|f| f.offset == bytes.len() as u64), "{left}: {} bytes is not a frame boundary", bytes.len());
                assert_eq!(&whole[..bytes.len()], &bytes[..], "{left}");
                let r = Recording::from_bytes(&bytes).unwrap();
                assert!(!r.complete && r.footer.is_none(), "{left}");
                assert_eq!(r.damage, vec![Damage::MissingFooter], "{left}: cut at a frame boundary, nothing torn");
            }
        }
    }
}

/// Three recordings written at once, many frames each, interleaved as the server never does
/// but the recorder allows: with 0, 1 and 3 encoder threads every file is the same bytes, its
/// frames in the order they were sent.
#[test]
fn encoder_threads_write_the_same_bytes_in_the_same_order() {
    let mut files: Vec<Vec<Vec<u8>>> = Vec::new();
    for encoders in [0usize, 1, 3] {
        for level in [TraceLevel::Full, TraceLevel::Summary] {
            let dir = tempfile::tempdir().unwrap();
            let mut c = RecorderConfig::new(dir.path(), level);
            c.encoders = encoders;
            let mut rec = Recorder::start(c, DIMS).unwrap();
            let recs: Vec<_> = (0..3).map(|r| rec.begin(&format!("rec-{r}"), header(level)).unwrap()).collect();
            let mut dropped = vec![0u32; recs.len()];
            for step in 0..40u32 {
                for (r, a) in recs.iter().enumerate() {
                    let mut calls = forward_calls();
                    for (_, _, _, data) in calls.iter_mut() {
                        data.iter_mut().for_each(|v| *v += (step * 7 + r as u32) as f32);
                    }
                    let mut tap = rec.tap(a);
                    play(&mut tap, &calls);
                    dropped[r] += tap.finish();
                    a.token(TokenFrame { index: step, id: step + r as u32, text: "x".into(), logprob: -0.5, top: vec![] });
                }
            }
            let paths: Vec<PathBuf> = recs.iter().map(|a| a.path().to_path_buf()).collect();
            for (r, a) in recs.into_iter().enumerate() {
                rec.end(a, footer(vec![], dropped[r]));
            }
            rec.flush();
            let s = rec.status().snapshot();
            rec.shutdown();
            assert_eq!(dropped, vec![0; 3], "{encoders} encoders: no frame may be dropped with the default budget");
            assert_eq!(s.trace_frames, 3 * 40 * 2, "{encoders} encoders, {level:?}");
            let bytes: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
            for b in &bytes {
                let r = Recording::from_bytes(b).unwrap();
                assert!(r.complete && r.problems().is_none(), "{encoders} encoders: {:?}", r.problems());
                assert_eq!(r.traces.len(), 80);
                // Each step's tap makes forward calls 0 (the prompt) and 1 (a decode step).
                assert!(r.traces.iter().enumerate().all(|(i, t)| t.forward as usize == i % 2), "{encoders} encoders: trace frames out of order");
            }
            files.push(bytes.into_iter().flatten().collect::<Vec<u8>>().chunks(1 << 20).map(|c| c.to_vec()).collect());
        }
    }
    assert_eq!(files[0], files[2], "1 encoder thread changed the Full recordings' bytes");
    assert_eq!(files[0], files[4], "3 encoder threads changed the Full recordings' bytes");
    assert_eq!(files[1], files[3], "1 encoder thread changed the Summary recordings' bytes");
    assert_eq!(files[1], files[5], "3 encoder threads changed the Summary recordings' bytes");
}

#[test]
fn a_lagging_writer_drops_trace_frames_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    // A budget too small for any trace buffer: every forward call's frame is dropped.
    let path = write_recording(dir.path(), |c| c.budget_bytes = 64, TraceLevel::Full);
    let r = Recording::open(&path).unwrap();
    assert!(r.complete, "dropped frames are counted, not damage: {:?}", r.problems());
    assert!(r.traces.is_empty());
    assert_eq!(r.footer.as_ref().unwrap().dropped_trace_frames, 2);
    assert_eq!(r.token_ids(), vec![11, 12], "tokens are never dropped");

    let mut rec = Recorder::start(RecorderConfig { budget_bytes: 64, ..RecorderConfig::new(dir.path(), TraceLevel::Full) }, DIMS).unwrap();
    let a = rec.begin("again", header(TraceLevel::Full)).unwrap();
    let dropped = {
        let mut tap = rec.tap(&a);
        play(&mut tap, &forward_calls());
        tap.finish()
    };
    rec.end(a, footer(vec![], dropped));
    rec.flush();
    let s = rec.status().snapshot();
    assert_eq!((s.dropped_frames, s.errors, s.state), (2, 1, "error"));
    assert!(s.last_error.unwrap().contains("dropped 2 trace frames"));
    assert!(s.pool_peak_bytes <= 64);
}

#[test]
fn a_real_model_recording_replays_bit_for_bit() {
    use worker_orcd::backend::cpu::CpuBackend;
    use worker_orcd::engine::Engine;
    let path = worker_orcd::fetch::default_model_path().unwrap();
    let model = Arc::new(worker_orcd::model::Model::open(&path).unwrap());
    let tok = Arc::new(worker_orcd::tokenizer::Tokenizer::from_gguf(&model.file).unwrap());
    let c = &model.config;
    let dims = ModelDims { n_layers: c.n_layers as u32, dim: c.dim as u32, n_vocab: c.n_vocab as u32 };
    let mut engine = Engine::new(Box::new(CpuBackend::new(Arc::clone(&model), 256, 2).unwrap()), Arc::clone(&tok));
    let mut h = header(TraceLevel::Full);
    h.dims = dims;
    h.resolved.prompt_ids = tok.encode("The quick brown fox", false);
    h.resolved.max_tokens = 5;
    h.resolved.stop_ids.clear();
    h.resolved.prefill_chunk = 3;
    let req = h.resolved.generate_request();
    let dir = tempfile::tempdir().unwrap();
    let mut rec = Recorder::start(RecorderConfig::new(dir.path(), TraceLevel::Full), dims).unwrap();
    let active = rec.begin("real", h).unwrap();
    let cancel = AtomicBool::new(false);
    let (outcome, dropped) = {
        let mut tap = rec.tap(&active);
        let o = engine.generate(&req, &mut tap, &cancel, &mut |ev| {
            active.token(TokenFrame { index: ev.index as u32, id: ev.id, text: ev.text.clone(), logprob: ev.logprob, top: ev.top_logprobs.clone() })
        });
        (o.unwrap(), tap.finish())
    };
    let file = active.path().to_path_buf();
    rec.end(active, footer(outcome.tokens.clone(), dropped));
    rec.flush();
    let r = Recording::open(&file).unwrap();
    assert!(r.complete, "{:?}", r.problems());
    let n_prompt = req.prompt_ids.len();
    // Every generated token is fed back, except the last when max_tokens ends the run.
    let fed = outcome.tokens.len() - usize::from(outcome.stop_reason == worker_orcd::engine::StopReason::MaxTokens);
    assert_eq!(r.traces.len(), n_prompt.div_ceil(3) + fed, "one frame per forward call");
    assert_eq!(r.row(0, Site::LOut(29)).unwrap().width(), 576);
    assert_eq!(r.row(n_prompt as u32 - 1, Site::Logits).unwrap().values().unwrap().len(), 49_152);

    // Replay: the recorded request, run again, agrees bit for bit at every layer.
    let replay_req = r.generate_request().unwrap();
    assert_eq!(replay_req, req);
    let mut replay = FrameTap::new(TraceLevel::Full);
    let again = engine.generate(&replay_req, &mut replay, &cancel, &mut |_| {}).unwrap();
    assert_eq!(again.tokens, r.token_ids());
    assert_eq!(first_divergence(&r.traces, replay.frames()), None);
    // A different last prompt token is named at its position, from the embedding on.
    let mut other = replay_req.clone();
    *other.prompt_ids.last_mut().unwrap() += 1;
    let mut tap = FrameTap::new(TraceLevel::Summary);
    engine.generate(&other, &mut tap, &cancel, &mut |_| {}).unwrap();
    let d = first_divergence(&r.traces, tap.frames()).unwrap();
    assert_eq!((d.pos as usize, d.site), (n_prompt - 1, Site::Embd));
}
