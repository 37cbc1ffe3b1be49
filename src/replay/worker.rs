//! Replay of worker recordings (`*.wrec`): re-run the recorded request on a backend and compare
//! tokens and traces; compare two recordings without re-running (`--diff`); record a request
//! in-process exactly as `serve --record-dir` does; describe a recording (`--explain`).
//!
//! Only the recording file is needed (plus the model it names, checked by sha256): nothing
//! else is shared between the machine that recorded and the one that replays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::backend::Tap;
use crate::engine::Engine;
use crate::run;
use crate::trace::{self, Damage, Fingerprint, FrameTap, Header, Recorder, RecorderConfig, Recording, RowRef, Site, Timings, TraceLevel};

use super::backend::same_numerics;
use super::report::{CaseReport, Divergence, LayerPoint, Mode};
use super::{bounds, ReplayError};

/// A tap adapter applied between the engine and the recorder's tap (tests plant recorder
/// faults with it; [`NoWrap`] otherwise).
pub trait TapWrap {
    fn wrap<'a>(&self, inner: &'a mut dyn Tap) -> Box<dyn Tap + 'a>;
}

pub struct NoWrap;

impl TapWrap for NoWrap {
    fn wrap<'a>(&self, inner: &'a mut dyn Tap) -> Box<dyn Tap + 'a> {
        struct Pass<'a>(&'a mut dyn Tap);
        impl Tap for Pass<'_> {
            fn wants(&self, p: crate::backend::TapPoint) -> bool {
                self.0.wants(p)
            }
            fn record(&mut self, p: crate::backend::TapPoint, pos0: usize, n: usize, d: &[f32]) {
                self.0.record(p, pos0, n, d)
            }
            fn forward_done(&mut self) {
                self.0.forward_done()
            }
        }
        Box::new(Pass(inner))
    }
}

/// Runs `header.resolved` on `engine` and writes a recording into `dir` with the recorder the
/// server uses (same writer thread, same frames); returns its path.
pub fn record_request(engine: &mut Engine, header: Header, dir: &Path, stem: &str, wrap: &dyn TapWrap) -> Result<PathBuf, ReplayError> {
    let level = header.trace;
    let unusable = |reason: String| ReplayError::Unusable { path: dir.display().to_string(), reason };
    let mut rec = Recorder::start(RecorderConfig::new(dir, level), header.dims).map_err(|e| unusable(e.to_string()))?;
    let req = header.resolved.generate_request();
    let case = header.job_id.clone();
    let stop_strings = header.resolved.stop_strings.clone();
    let active = rec.begin(stem, header).ok_or_else(|| unusable("recorder refused to begin".into()))?;
    let cancel = AtomicBool::new(false);
    let (done, dropped) = {
        let mut tap = rec.tap(&active);
        let o = {
            let mut wrapped = wrap.wrap(&mut tap);
            run::run(engine, &req, &stop_strings, wrapped.as_mut(), Some(&active), &cancel, &mut |_, _| true)
        };
        (o, tap.finish())
    };
    let done = done.map_err(|source| ReplayError::Engine { case, source })?;
    let path = active.path().to_path_buf();
    let o = &done.outcome;
    let timings = Timings { queue_ms: 0.0, prefill_ms: o.prefill_ms, decode_ms: o.decode_ms, total_ms: o.prefill_ms + o.decode_ms };
    rec.end(active, done.footer(&[], &stop_strings, timings, dropped, String::new()));
    rec.shutdown();
    Ok(path)
}

fn open(path: &Path) -> Result<Recording, ReplayError> {
    let r = Recording::open(path).map_err(|e| ReplayError::NotARecording { path: path.display().to_string(), reason: e.to_string() })?;
    if r.header.is_none() {
        return Err(ReplayError::Unusable { path: path.display().to_string(), reason: "no header frame: the request cannot be re-run".into() });
    }
    Ok(r)
}

/// Opens a recording (a clear error if it is not one or has no header).
pub fn open_recording(path: &Path) -> Result<Recording, ReplayError> {
    open(path)
}

fn case_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().trim_end_matches(".partial").trim_end_matches(".wrec").to_string()).unwrap_or_default()
}

/// Re-runs a recording on `engine` (whose backend has `here` as fingerprint) and compares.
pub fn replay(path: &Path, engine: &mut Engine, here: &Fingerprint) -> Result<CaseReport, ReplayError> {
    let t0 = std::time::Instant::now();
    let mut recorded = open(path)?;
    let header = recorded.header.clone().expect("checked by open");
    let h = &header;
    let name = case_name(path);
    let mut r = CaseReport::new(&name, Mode::Worker, &path.display().to_string(), engine.backend().kind(), &h.fingerprint.model_name);
    // Damage: a cut (crash, kill, full disk) leaves a recording incomplete, and every complete
    // frame is still judged; anything else (a checksum, a payload that does not decode) fails.
    let corrupt: Vec<String> = recorded.damage.iter().filter(|d| !is_cut(d)).map(|d| d.to_string()).collect();
    let cut: Vec<String> = recorded.damage.iter().filter(|d| is_cut(d)).map(|d| d.to_string()).collect();
    r.check(
        "recording intact (frame checksums and payloads)",
        corrupt.is_empty(),
        if corrupt.is_empty() { format!("{} frames", recorded.frames) } else { corrupt.join("; ") },
    );
    if h.fingerprint.model_sha256 != here.model_sha256 {
        r.check("same model", false, format!("recorded with sha256 {}, replaying with {}", h.fingerprint.model_sha256, here.model_sha256));
        return Ok(r);
    }
    // The token frames themselves, not only the footer's list: in order, and the same ids.
    let frame_ids: Vec<u32> = recorded.tokens.iter().map(|t| t.id).collect();
    let in_order = recorded.tokens.iter().enumerate().all(|(i, t)| t.index as usize == i);
    match &recorded.footer {
        Some(f) => {
            let first = frame_ids
                .iter()
                .zip(&f.tokens)
                .position(|(a, b)| a != b)
                .or_else(|| (frame_ids.len() != f.tokens.len()).then(|| frame_ids.len().min(f.tokens.len())));
            r.check(
                "token frames agree with the footer",
                in_order && first.is_none(),
                match first {
                    None if in_order => format!("{} token frames", frame_ids.len()),
                    None => "token frame indices are not 0, 1, 2, ...".into(),
                    Some(i) => format!("token {i}: frame {:?}, footer {:?}", frame_ids.get(i), f.tokens.get(i)),
                },
            );
        }
        None => r.check("token frames in order", in_order, format!("{} token frames", frame_ids.len())),
    }
    let mut req = h.resolved.generate_request();
    let stop_reason = recorded.footer.as_ref().map(|f| f.stop_reason.clone()).unwrap_or_default();
    let recorded_ids = recorded.token_ids();
    let incomplete = recorded.footer.is_none() || !cut.is_empty();
    // A cancelled or unfinished run stopped early for reasons outside the engine: replay the
    // tokens it got to.
    let cancelled = stop_reason == "CANCELLED";
    if cancelled || incomplete {
        req.max_tokens = recorded_ids.len();
    }
    // The engine sees a cancel only before a prefill chunk or a token, so a run cancelled
    // after its last token had already made the forward call that followed it: the replay
    // makes it too (one token more allowed, cancelled as the last recorded one is emitted).
    let n_recorded = recorded_ids.len();
    if cancelled && !incomplete && n_recorded > 0 {
        req.max_tokens = n_recorded + 1;
    }
    let cancel = AtomicBool::new(false);
    let mut tap = FrameTap::new(h.trace);
    let mut on_token = |ev: &crate::engine::TokenEvent, _: String| !(cancelled && ev.index + 1 >= n_recorded);
    // The server's own run: the same text stops, matched the same way.
    let done = run::run(engine, &req, &h.resolved.stop_strings, &mut tap, None, &cancel, &mut on_token)
        .map_err(|source| ReplayError::Engine { case: name.clone(), source })?;
    let outcome = &done.outcome;
    r.tokens_replayed = req.prompt_ids.len() + outcome.tokens.len();
    let mut replayed_frames = tap.into_frames();
    // Judge positions both runs reached: the recording's last complete trace frame, and the
    // replay's last forward call (which stops at the last recorded token). A cancel during
    // prefill stopped the server after some chunks; the replay prefills them all.
    let end = |frames: &[trace::TraceFrame]| frames.iter().map(|f| f.pos0 + f.n_tok).max().unwrap_or(0);
    let got_to = end(&recorded.traces).min(end(&replayed_frames));
    if incomplete || cancelled {
        recorded.traces.retain(|f| f.pos0 + f.n_tok <= got_to);
        replayed_frames.retain(|f| f.pos0 + f.n_tok <= got_to);
        if cancelled && !incomplete {
            r.notes.push(format!("cancelled: the positions both runs reached (0..{got_to}) were judged"));
        }
    }
    if incomplete {
        let why = if cut.is_empty() { "no footer".to_string() } else { cut.join("; ") };
        r.incomplete = Some(super::report::Incomplete { position: got_to as usize, tokens: recorded_ids.len(), reason: why.clone() });
        r.notes.push(format!("recording is incomplete ({why}): got to position {got_to} with {} tokens; every complete frame was judged", recorded_ids.len()));
        if !recorded.partial_name {
            r.notes.push("the file has its finished name but no footer: it was cut after it was written".into());
        }
    }
    let replayed = Recording {
        path: None,
        version: recorded.version,
        file_len: 0,
        header: recorded.header.clone(),
        tokens: Vec::new(),
        traces: replayed_frames,
        footer: None,
        frames: 0,
        frame_index: Vec::new(),
        unknown_frames: 0,
        damage: Vec::new(),
        complete: true,
        partial_name: false,
    };
    let same = same_numerics(&h.fingerprint, here);
    r.notes.push(if same {
        "same fingerprint: traces must be bit-identical".into()
    } else {
        format!(
            "fingerprint differs ({} {} → {} {}): the backends share one arithmetic, traces must still be bit-identical",
            h.fingerprint.backend, h.fingerprint.device, here.backend, here.device
        )
    });
    let tok = engine.tokenizer().clone();
    r.tokens = outcome.tokens.iter().map(|&id| (id, tok.decode(&[id]))).collect();
    r.stop_reason = done.stop_reason.into();
    if let Some(f) = recorded.footer.as_ref().filter(|f| f.outcome == "ok") {
        r.check(
            "same stop reason and text",
            f.stop_reason == done.stop_reason && f.text == done.shown,
            format!("recorded {} {:?}, replayed {} {:?}", f.stop_reason, f.text, done.stop_reason, done.shown),
        );
    }
    compare(&mut r, &recorded, &replayed, &recorded_ids, &outcome.tokens, req.prompt_ids.len());
    r.seconds = t0.elapsed().as_secs_f64();
    Ok(r)
}

/// Damage a cut leaves (a crash, `kill -9`, a full disk): the tail is missing, nothing is wrong.
fn is_cut(d: &Damage) -> bool {
    matches!(d, Damage::Truncated { .. } | Damage::MissingFooter)
}

/// Compares two recordings of the same request without re-executing either (`--diff A B`):
/// `a` is the reference, `b` is judged.
pub fn diff(a_path: &Path, b_path: &Path) -> Result<CaseReport, ReplayError> {
    let (a, b) = (open(a_path)?, open(b_path)?);
    let (ha, hb) = (a.header.as_ref().expect("checked"), b.header.as_ref().expect("checked"));
    let name = format!("{} vs {}", case_name(a_path), case_name(b_path));
    let mut r = CaseReport::new(&name, Mode::Diff, &format!("{} {}", a_path.display(), b_path.display()), &hb.fingerprint.backend, &ha.fingerprint.model_name);
    let same_req = ha.resolved.prompt_ids == hb.resolved.prompt_ids && ha.resolved.seed == hb.resolved.seed && ha.resolved.params == hb.resolved.params;
    r.check("same request (prompt ids, seed, parameters)", same_req, String::new());
    let same = same_numerics(&ha.fingerprint, &hb.fingerprint);
    r.notes.push(format!(
        "{} {} vs {} {}: {}",
        ha.fingerprint.backend,
        ha.fingerprint.device,
        hb.fingerprint.backend,
        hb.fingerprint.device,
        if same { "same fingerprint, bit-identical expected" } else { "fingerprints differ, bit-identical still expected (one arithmetic on every backend)" }
    ));
    let (ia, ib) = (a.token_ids(), b.token_ids());
    r.tokens = b.tokens.iter().map(|t| (t.id, t.text.clone())).collect();
    r.stop_reason = b.footer.as_ref().map(|f| f.stop_reason.clone()).unwrap_or_default();
    compare(&mut r, &a, &b, &ia, &ib, ha.resolved.prompt_ids.len());
    Ok(r)
}

/// Error of one row against the reference row: exact from values, else estimated from the
/// projections (|p(x)-p(y)|² estimates |x-y|², and rms²·width is |y|² exactly).
fn row_nmse(a: &RowRef<'_>, b: &RowRef<'_>) -> Option<f64> {
    if let (Some(x), Some(y)) = (b.values(), a.values()) {
        return Some(super::metrics::nmse(&x, &y));
    }
    let (pa, pb, st) = (a.projection?, b.projection?, a.stats?);
    let den = (st.rms as f64).powi(2) * a.width() as f64;
    let num = trace::projected_sq_distance(pa, pb);
    Some(if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        num / den
    })
}

fn site_layer(s: Site) -> Option<usize> {
    match s {
        Site::LOut(l) => Some(l as usize),
        _ => None,
    }
}

/// The shared comparison: tokens, then traces up to the first differing token (after it, the
/// two runs had different inputs), position-major in forward-pass order.
fn compare(r: &mut CaseReport, a: &Recording, b: &Recording, ids_a: &[u32], ids_b: &[u32], n_prompt: usize) {
    let first_tok = ids_a.iter().zip(ids_b).position(|(x, y)| x != y).or_else(|| (ids_a.len() != ids_b.len()).then(|| ids_a.len().min(ids_b.len())));
    r.check(
        "token ids identical",
        first_tok.is_none(),
        match first_tok {
            None => format!("{} tokens", ids_a.len()),
            Some(i) => format!("token {i}: recorded {:?}, replayed {:?}", ids_a.get(i), ids_b.get(i)),
        },
    );
    // Rows at positions fed the same tokens: the prompt, and generated tokens before the
    // first difference (token i is fed at position n_prompt + i).
    let limit = first_tok.map(|i| (n_prompt + i) as u32).unwrap_or(u32::MAX);
    let ra: BTreeMap<(u32, Site), RowRef<'_>> = a.rows().into_iter().map(|x| ((x.pos, x.site), x)).collect();
    let rb: BTreeMap<(u32, Site), RowRef<'_>> = b.rows().into_iter().map(|x| ((x.pos, x.site), x)).collect();
    // No tolerance on any backend: the CPU and CUDA backends compute one arithmetic (llama.cpp's
    // one-token path), so a row whose hash differs is a divergence, measured but never excused.
    let bound = bounds::WORKER_TRACE_NMSE;
    let mut worst: BTreeMap<Site, Option<f64>> = BTreeMap::new();
    let mut first: Option<Divergence> = None;
    let mut prev_at: BTreeMap<u32, (String, f64)> = BTreeMap::new();
    let keys: std::collections::BTreeSet<(u32, Site)> = ra.keys().chain(rb.keys()).copied().filter(|k| k.0 < limit).collect();
    let mut unmeasured = 0usize;
    let (mut rows_compared, mut rows_identical) = (0usize, 0usize);
    for k in keys {
        let (pos, site) = k;
        let (x, y) = (ra.get(&k), rb.get(&k));
        rows_compared += 1;
        let (ok, err, missing) = match (x, y) {
            (Some(x), Some(y)) if x.hash == y.hash => {
                rows_identical += 1;
                (true, Some(0.0), false)
            }
            (Some(x), Some(y)) => {
                let e = row_nmse(x, y);
                if e.is_none() {
                    unmeasured += 1;
                }
                (false, e, false)
            }
            _ => (false, None, true),
        };
        let w = worst.entry(site).or_insert(Some(0.0));
        *w = match (*w, err) {
            (Some(a), Some(e)) => Some(if e.is_nan() { f64::NAN } else { a.max(e) }),
            (_, None) if missing => *w,
            _ => None,
        };
        if !ok && first.is_none() {
            let detail = if missing { format!("row missing from the {}", if x.is_none() { "reference" } else { "replay" }) } else { "hashes differ".into() };
            first = Some(Divergence {
                position: Some(pos as usize),
                layer: site_layer(site),
                tensor: site.name(),
                nmse: if missing { Some(f64::INFINITY) } else { err },
                max_abs: None,
                cosine: None,
                bound,
                before: prev_at.get(&pos).cloned(),
                detail,
            });
        }
        prev_at.insert(pos, (site.name(), err.unwrap_or(f64::NAN)));
    }
    r.notes.push(format!("trace rows with identical hashes: {rows_identical}/{rows_compared}"));
    if unmeasured > 0 {
        r.notes.push(format!("{unmeasured} differing rows could not be measured (trace level hashes): their hashes differ, so they fail"));
    }
    // A recorder that files rows under the wrong position shows as every row matching the
    // other side's row one position over.
    if first.is_some() {
        for shift in [1i64, -1] {
            let hits = rb
                .iter()
                .filter(|((p, s), row)| {
                    let q = *p as i64 + shift;
                    q >= 0 && ra.get(&(q as u32, *s)).is_some_and(|o| o.hash == row.hash)
                })
                .count();
            if rb.len() > 4 && hits * 2 > rb.len() {
                r.notes
                    .push(format!("the reference's rows match the replay's rows at position {shift:+}: a recorder filing position i's trace under i{shift:+}"));
                if let Some(d) = first.as_mut() {
                    d.detail = format!("{}; rows shifted by {shift:+} position", d.detail);
                }
            }
        }
    }
    r.check("traces bit-identical", first.is_none(), "every row's hash equal".to_string());
    // A token that differs while every row before its sampling agreed: the sampler.
    if let Some(i) = first_tok {
        let sampled_at = (n_prompt + i) as u32 - 1;
        if first.as_ref().map(|d| d.position.unwrap_or(0) as u32 > sampled_at).unwrap_or(true) {
            first = Some(Divergence {
                position: Some(sampled_at as usize),
                layer: None,
                tensor: format!("sampling step {i}"),
                nmse: None,
                max_abs: None,
                cosine: None,
                bound,
                before: Some(("result_output".into(), worst.get(&Site::Logits).copied().flatten().unwrap_or(0.0))),
                detail: format!("recorded token {:?}, replayed {:?}; the logits agree", ids_a.get(i), ids_b.get(i)),
            });
        }
    }
    r.first_divergence = first;
    r.curve = worst
        .into_iter()
        .map(|(s, e)| LayerPoint { label: if s == Site::Logits { "logits".into() } else { s.name() }, layer: site_layer(s), worst_nmse: e, bound })
        .collect();
    r.finish_curve();
}

/// What a recording holds, without running anything (`--explain`).
pub fn explain(path: &Path) -> Result<String, ReplayError> {
    use std::fmt::Write;
    let r = Recording::open(path).map_err(|e| ReplayError::NotARecording { path: path.display().to_string(), reason: e.to_string() })?;
    let mut s = String::new();
    let _ = writeln!(s, "{}: worker recording, format version {}, {} bytes, {} frames", path.display(), r.version, r.file_len, r.frames);
    let _ = writeln!(s, "complete: {}{}", r.complete, r.problems().map(|p| format!(" ({})", p.replace('\n', "; "))).unwrap_or_default());
    if let Some(h) = &r.header {
        let q = &h.resolved;
        let _ = writeln!(s, "job: {} {} at {}", h.job_id, h.endpoint, h.started_at);
        let _ = writeln!(s, "request: {}", h.request_json);
        let _ = writeln!(s, "prompt ({} tokens, parse_special {}): {:?}", q.prompt_ids.len(), q.parse_special, q.prompt_text);
        let _ = writeln!(s, "prompt ids: {:?}", q.prompt_ids);
        let _ = writeln!(s, "seed: {}{}", q.seed, if q.seed_generated { " (generated by the worker)" } else { "" });
        let p = &q.params;
        let _ = writeln!(
            s,
            "params: temperature {} top_k {} top_p {} min_p {} repetition_penalty {}; max_tokens {}; stops {:?} {:?}",
            p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty, q.max_tokens, q.stop_ids, q.stop_strings
        );
        let f = &h.fingerprint;
        let _ = writeln!(
            s,
            "fingerprint: model {} (sha256 {}), worker {} ({}), backend {} on {}, driver {:?}, kernels {:?}, {} threads, numerics {:?}, {}/{} {}",
            f.model_name,
            f.model_sha256,
            f.worker_version,
            f.git_commit,
            f.backend,
            f.device,
            f.driver,
            f.kernel_source_hash,
            f.threads,
            f.numerics,
            f.os,
            f.arch,
            f.cpu
        );
        let _ = writeln!(s, "trace level: {} ({} trace frames, {} rows)", h.trace, r.traces.len(), r.rows().len());
    }
    let _ = writeln!(s, "tokens ({}):", r.tokens.len());
    for t in &r.tokens {
        let _ = writeln!(s, "  {:>4} {:>6} {:?} logprob {:.3}", t.index, t.id, t.text, t.logprob);
    }
    if let Some(f) = &r.footer {
        let _ = writeln!(
            s,
            "outcome: {} stop {} {:?}, text {:?}, dropped trace frames {}",
            f.outcome, f.stop_reason, f.stop_sequence_matched, f.text, f.dropped_trace_frames
        );
    }
    Ok(s)
}

/// The header a recording of `resolved` made here would carry (for [`record_request`]).
pub fn header_for(
    job_id: &str,
    resolved: crate::trace::ResolvedRequest,
    fingerprint: Fingerprint,
    level: TraceLevel,
    cfg: &crate::model::ModelConfig,
) -> Header {
    Header {
        job_id: job_id.into(),
        endpoint: "/execute".into(),
        request_json: String::new(),
        started_at: String::new(),
        resolved,
        fingerprint,
        trace: level,
        dims: trace::ModelDims { n_layers: cfg.n_layers as u32, dim: cfg.dim as u32, n_vocab: cfg.n_vocab as u32 },
        projection: trace::projection_spec(),
    }
}
