//! The result of replaying one case: verdict, checks, first divergence, worst layer and the
//! per-layer error curve, plus the readable summary that insta snapshots. Serializable to JSON
//! (the xtask's `--report`); rendering to tables, JUnit and plots lives in the xtask.

use std::fmt::Write;

use serde::Serialize;

use super::bounds;
use super::llama::{ChainedResult, OpResult};
use super::metrics::{bucket, within};
use crate::reference::{RecordingMode, ReferenceRecording};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A llama.cpp reference recording, op by op and chained.
    LlamaCpp,
    /// A worker recording, re-executed.
    Worker,
    /// Two worker recordings compared without re-executing.
    Diff,
}

/// One pass/fail check with its measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// Where a run first left its tolerance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Divergence {
    pub position: Option<usize>,
    pub layer: Option<usize>,
    /// Tensor (reference name) or `sampling step N` / `token N`.
    pub tensor: String,
    /// NMSE there (infinite for a missing tensor; `None` where not measurable).
    pub nmse: Option<f64>,
    pub max_abs: Option<f64>,
    pub cosine: Option<f64>,
    pub bound: f64,
    /// The tensor just before in causal order, at the same position, and its NMSE.
    pub before: Option<(String, f64)>,
    pub detail: String,
}

/// One point of the per-layer error curve.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerPoint {
    /// `embd`, `l_out-N`, `result_norm`, `logits`.
    pub label: String,
    pub layer: Option<usize>,
    /// Worst per-position NMSE (estimated from projections where values are not stored).
    pub worst_nmse: Option<f64>,
    pub bound: f64,
}

/// How far an incomplete recording (cut by a crash, `kill -9` or a full disk) got: everything
/// up to there was judged. Distinct from a failure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incomplete {
    /// Positions judged: `0..position`.
    pub position: usize,
    /// Generated tokens recorded.
    pub tokens: usize,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseReport {
    pub name: String,
    pub mode: Mode,
    pub source: String,
    pub backend: String,
    pub model: String,
    pub passed: bool,
    pub checks: Vec<Check>,
    pub first_divergence: Option<Divergence>,
    pub worst_layer: Option<LayerPoint>,
    pub curve: Vec<LayerPoint>,
    pub ops: Vec<OpResult>,
    /// Token ids with their text (generated or teacher-forced).
    pub tokens: Vec<(u32, String)>,
    pub stop_reason: String,
    pub notes: Vec<String>,
    /// Positions run through the backend (0 for a diff).
    pub tokens_replayed: usize,
    pub seconds: f64,
    /// Set for a recording that was cut: `passed` then says whether what it holds agrees.
    pub incomplete: Option<Incomplete>,
}

impl CaseReport {
    pub fn new(name: &str, mode: Mode, source: &str, backend: &str, model: &str) -> CaseReport {
        CaseReport {
            name: name.into(),
            mode,
            source: source.into(),
            backend: backend.into(),
            model: model.into(),
            passed: true,
            checks: Vec::new(),
            first_divergence: None,
            worst_layer: None,
            curve: Vec::new(),
            ops: Vec::new(),
            tokens: Vec::new(),
            stop_reason: String::new(),
            notes: Vec::new(),
            tokens_replayed: 0,
            seconds: 0.0,
            incomplete: None,
        }
    }

    /// `PASS`, `FAIL`, or `INCOMPLETE` (what a cut recording holds agrees).
    pub fn verdict(&self) -> &'static str {
        match (self.passed, &self.incomplete) {
            (false, _) => "FAIL",
            (true, Some(_)) => "INCOMPLETE",
            (true, None) => "PASS",
        }
    }

    /// The verdict in words: `incomplete, got to position N` for a cut recording.
    pub fn verdict_line(&self) -> String {
        match &self.incomplete {
            Some(i) if self.passed => format!("incomplete, got to position {} ({} tokens): {}", i.position, i.tokens, i.reason),
            _ => self.verdict().to_lowercase(),
        }
    }

    pub fn check(&mut self, name: &str, passed: bool, detail: String) {
        self.passed &= passed;
        self.checks.push(Check { name: name.into(), passed, detail });
    }

    /// Sets `worst_layer` from the curve (largest NMSE relative to its bound).
    pub fn finish_curve(&mut self) {
        let rel = |p: &LayerPoint| p.worst_nmse.map(|e| if p.bound > 0.0 { e / p.bound } else if e > 0.0 { f64::INFINITY } else { 0.0 });
        self.worst_layer = self
            .curve
            .iter()
            .filter(|p| p.worst_nmse.is_some())
            .max_by(|a, b| rel(a).unwrap_or(0.0).partial_cmp(&rel(b).unwrap_or(0.0)).unwrap_or(std::cmp::Ordering::Greater))
            .cloned();
    }

    /// One line naming the first divergence, or `ok`.
    pub fn divergence_line(&self) -> String {
        let Some(d) = &self.first_divergence else { return "none".into() };
        let mut s = String::new();
        if let Some(p) = d.position {
            let _ = write!(s, "position {p}, ");
        }
        if let Some(l) = d.layer {
            let _ = write!(s, "layer {l}, ");
        }
        let _ = write!(s, "{}", d.tensor);
        if let Some(e) = d.nmse {
            let _ = write!(s, ": NMSE {e:.3e} (bound {:.0e})", d.bound);
        }
        if let Some(m) = d.max_abs {
            let _ = write!(s, ", max abs {m:.3e}");
        }
        if let Some((name, e)) = &d.before {
            let _ = write!(s, "; before it {name}: {e:.3e}");
        }
        if !d.detail.is_empty() {
            let _ = write!(s, " ({})", d.detail);
        }
        s
    }

    /// The readable, stable summary asserted with insta: tokens with text, stop reason,
    /// checks, per-layer worst error bucketed to one significant digit, verdict. Timings and
    /// raw floats are left out so only real changes show up as drift.
    pub fn snapshot_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "case: {} ({:?})", self.name, self.mode);
        let _ = writeln!(s, "verdict: {}", self.verdict());
        let _ = writeln!(s, "stop: {}", self.stop_reason);
        let _ = writeln!(s, "tokens ({}):", self.tokens.len());
        for chunk in self.tokens.chunks(8) {
            let line: Vec<String> = chunk.iter().map(|(id, t)| format!("{id} {t:?}")).collect();
            let _ = writeln!(s, "  {}", line.join(" | "));
        }
        let _ = writeln!(s, "checks:");
        for c in &self.checks {
            let _ = writeln!(s, "  [{}] {}", if c.passed { "ok" } else { "FAIL" }, c.name);
        }
        let _ = writeln!(s, "first divergence: {}", self.first_divergence.as_ref().map(|d| {
            format!("{}{}{}", d.position.map(|p| format!("position {p}, ")).unwrap_or_default(), d.layer.map(|l| format!("layer {l}, ")).unwrap_or_default(), d.tensor)
        }).unwrap_or_else(|| "none".into()));
        let _ = writeln!(s, "worst NMSE per layer (1 significant digit):");
        for chunk in self.curve.chunks(6) {
            let line: Vec<String> = chunk.iter().map(|p| format!("{}={}", p.label, p.worst_nmse.map(bucket).unwrap_or_else(|| "-".into()))).collect();
            let _ = writeln!(s, "  {}", line.join(" "));
        }
        if let Some(w) = &self.worst_layer {
            let _ = writeln!(s, "worst layer: {}", w.label);
        }
        s
    }
}

pub(crate) fn token_texts(tok: Option<&Tokenizer>, ids: &[u32]) -> Vec<(u32, String)> {
    ids.iter().map(|&id| (id, tok.map(|t| t.decode(&[id])).unwrap_or_default())).collect()
}

/// Judges a llama.cpp case from its op-by-op and chained results, under the bounds of the
/// recording's mode (token recordings: every check is bit-identity).
pub fn judge_llama(rec: &ReferenceRecording, ops: Vec<OpResult>, ch: &ChainedResult, backend: &str, model: &str, tok: Option<&Tokenizer>) -> CaseReport {
    let case = &rec.case;
    let b = bounds::for_mode(case.mode);
    let exact = case.mode == RecordingMode::Token;
    let dir = if exact { "recordings/llama.cpp/token" } else { "recordings/llama.cpp" };
    let mut r = CaseReport::new(&case.name, Mode::LlamaCpp, &format!("{dir}/{}.safetensors.zst", case.name), backend, model);
    r.tokens = token_texts(tok, &case.greedy_ids);
    r.stop_reason = format!("{} greedy steps (teacher-forced)", case.greedy_ids.len());
    r.tokens_replayed = ch.tokens_run;
    r.notes.push(format!("llama.cpp recording mode: {}", if exact { "token by token (exact)" } else { "batch (bounds: llama.cpp's batch-versus-token spread)" }));
    if let Some(t) = tok {
        let ok = t.encode(&case.prompt_text, case.parse_special) == case.prompt_ids;
        r.check("prompt ids equal llama.cpp's", ok, String::new());
    }
    if !ops.is_empty() {
        let bad: Vec<&OpResult> = ops.iter().filter(|o| !o.passed).collect();
        let real: Vec<&OpResult> = ops.iter().filter(|o| !o.control).collect();
        let same = real.iter().filter(|o| o.identical).count();
        let worst = real.iter().map(|o| o.nmse).fold(0.0, f64::max);
        let name = if exact { "op by op on llama.cpp's captured inputs, bit-identical" } else { "op by op on llama.cpp's captured inputs" };
        let inexact: Vec<String> = real.iter().filter(|o| !o.identical).map(|o| format!("{} {:.1e}", o.tensor, o.nmse)).collect();
        r.check(name, bad.is_empty(), format!("{same} of {} ops bit-identical, worst NMSE {worst:.3e} (not identical: {inexact:?}); failing: {:?}", real.len(), bad.iter().map(|o| &o.tensor).collect::<Vec<_>>()));
    }
    r.ops = ops;
    if let Some(ex) = &ch.exact {
        let not_produced: Vec<&str> = ex.columns.iter().filter(|c| c.not_produced).map(|c| c.name.as_str()).collect();
        let n_pos = case.n_hashed_positions();
        r.check(
            "every tap at every position bit-identical",
            ex.rows_compared > 0 && ex.rows_identical == ex.rows_compared,
            format!("{} of {} rows ({} taps at {n_pos} positions; {} taps this backend never produces)", ex.rows_identical, ex.rows_compared, ex.columns.len() - not_produced.len(), not_produced.len()),
        );
        r.check(
            "op by op on llama.cpp's inputs at every layer and position (by hash)",
            ex.ops_isolated > 0 && ex.ops_isolated == ex.ops_identical,
            format!("{} of {} ops whose inputs are bit-identical to llama.cpp's gave its output bit for bit", ex.ops_identical, ex.ops_isolated),
        );
        if !not_produced.is_empty() {
            r.notes.push(format!("{} hashed taps never recorded by this backend, not compared (e.g. {:?})", not_produced.len(), &not_produced[..not_produced.len().min(3)]));
        }
        if let Some((pos, name, layer)) = &ex.first {
            let col = ex.columns.iter().position(|c| &c.name == name).unwrap_or(0);
            // The value error there, where the recording keeps the row.
            let stored = name.split('#').next().unwrap_or(name);
            let e = ch.tensors.iter().find(|t| t.tensor == *name || t.tensor == stored).and_then(|t| t.rows.iter().find(|r| r.0 == *pos).map(|r| r.1));
            let before = ex.columns[..col].iter().rev().find(|c| !c.not_produced).map(|c| (c.name.clone(), 0.0));
            r.first_divergence = Some(Divergence {
                position: Some(*pos),
                layer: *layer,
                tensor: name.clone(),
                nmse: e.map(|e| e.nmse),
                max_abs: e.map(|e| e.max_abs),
                cosine: e.map(|e| e.cosine),
                bound: 0.0,
                before,
                detail: format!("hash differs{}", ex.first_op.as_ref().map(|(p, n)| format!("; first op wrong on llama.cpp's own inputs: {n} at position {p}")).unwrap_or_default()),
            });
        }
    }
    // Chained tensors with stored values, in causal order (a one-batch prefill: layer by layer).
    let mut prev: Option<&super::llama::TensorCompare> = None;
    for t in &ch.tensors {
        if r.first_divergence.is_none() && !t.passed() {
            let (position, e) = match t.first_over() {
                Some((p, e)) => (Some(*p), Some(*e)),
                None => (None, None),
            };
            let before = prev.and_then(|b| {
                let e = match position {
                    Some(p) => b.rows.iter().find(|r| r.0 == p).map(|r| r.1.nmse),
                    None => Some(b.worst()),
                };
                e.map(|e| (b.tensor.clone(), e))
            });
            r.first_divergence = Some(Divergence {
                position,
                layer: t.layer,
                tensor: t.tensor.clone(),
                nmse: Some(e.map(|e| e.nmse).unwrap_or(f64::INFINITY)),
                max_abs: e.map(|e| e.max_abs),
                cosine: e.map(|e| e.cosine),
                bound: t.bound,
                before,
                detail: if t.missing { "not produced by this backend".into() } else { String::new() },
            });
        }
        if !t.missing {
            prev = Some(t);
        }
        if t.tensor == "embd" || t.tensor.starts_with("l_out-") || t.tensor == "result_norm" {
            r.curve.push(LayerPoint { label: t.tensor.clone(), layer: t.layer, worst_nmse: Some(t.worst()), bound: t.bound });
        }
    }
    if !ch.not_produced.is_empty() {
        r.notes.push(format!("never recorded by this backend, not compared: {:?}", ch.not_produced));
    }
    if !ch.uncompared.is_empty() {
        r.notes.push(format!("not in the recording, not compared: {:?}", ch.uncompared));
    }
    let n_fail = ch.tensors.iter().filter(|t| !t.passed()).count();
    let name = if exact { "stored tensor values bit-identical" } else { "chained tensors per position within bounds" };
    r.check(name, n_fail == 0, format!("{} tensors compared, {n_fail} over", ch.tensors.len()));
    // Logits.
    let worst_nmse = ch.logits.iter().filter_map(|l| l.nmse).fold(0.0, f64::max);
    let worst_kl = ch.logits.iter().map(|l| l.kl_top32).fold(0.0, f64::max);
    r.curve.push(LayerPoint { label: "logits".into(), layer: None, worst_nmse: Some(worst_nmse), bound: b.logits_nmse });
    let logits_off = |l: &super::llama::LogitsRow| if exact { !l.identical } else { l.nmse.is_some_and(|e| !within(e, b.logits_nmse)) || !within(l.kl_top32, b.logits_kl) };
    if exact {
        let same = ch.logits.iter().filter(|l| l.identical).count();
        r.check("logits bit-identical at every prompt position", same == ch.logits.len() && !ch.logits.is_empty(), format!("{same} of {} positions (top 32, and full rows where stored)", ch.logits.len()));
    } else {
        r.check("logits NMSE", within(worst_nmse, b.logits_nmse), format!("worst {worst_nmse:.3e}"));
        r.check("logits KL (top 32)", within(worst_kl, b.logits_kl), format!("worst {worst_kl:.3e}"));
    }
    let flips: Vec<(usize, f32)> = ch.logits.iter().filter(|l| l.ours_top1 != l.ref_top1).map(|l| (l.position, l.ref_top2_gap)).collect();
    let top1_bad: Vec<&(usize, f32)> = flips.iter().filter(|f| exact || f.1 >= b.prompt_top1_gap).collect();
    let name = if exact { "top-1 at every prompt position" } else { "top-1 at every prompt position (near-ties excused)" };
    r.check(name, top1_bad.is_empty(), format!("{} of {} differ, (position, llama.cpp gap): {flips:?}", flips.len(), ch.logits.len()));
    // Greedy, teacher-forced (while every step agrees, identical to free-running).
    let hard: Vec<&super::llama::GreedyStep> = ch.greedy.iter().filter(|g| g.ours != g.theirs && (exact || g.gap >= b.near_tie_gap)).collect();
    let flips = ch.greedy.iter().filter(|g| g.ours != g.theirs).count();
    let ok = hard.is_empty() && (flips as f64) <= b.max_tie_flip_fraction * ch.greedy.len() as f64;
    if exact {
        r.check("greedy continuation identical at every step (free-running, no near-tie excuse)", ok && flips == 0, format!("{} of {} steps equal", ch.greedy.len() - flips, ch.greedy.len()));
    } else {
        let gaps: Vec<String> = ch.greedy.iter().filter(|g| g.ours != g.theirs).map(|g| format!("step {} gap {:.3}", g.step, g.gap)).collect();
        r.check("greedy continuation, teacher-forced (near-ties excused)", ok, format!("{flips} of {} steps differ ({gaps:?}), {} not near-ties", ch.greedy.len(), hard.len()));
    }
    if r.first_divergence.is_none() {
        if let Some(g) = hard.first() {
            r.first_divergence = Some(Divergence {
                position: Some(case.prompt_ids.len() - 1 + g.step),
                layer: None,
                tensor: format!("sampling step {}", g.step),
                nmse: None,
                max_abs: None,
                cosine: None,
                bound: b.near_tie_gap as f64,
                before: None,
                detail: format!("argmax {} vs llama.cpp {} (top-2 gap {:.3})", g.ours, g.theirs, g.gap),
            });
        } else if let Some(l) = ch.logits.iter().find(|l| logits_off(l)) {
            r.first_divergence = Some(Divergence {
                position: Some(l.position),
                layer: None,
                tensor: "result_output".into(),
                nmse: l.nmse,
                max_abs: None,
                cosine: None,
                bound: b.logits_nmse,
                before: None,
                detail: format!("KL {:.3e}", l.kl_top32),
            });
        }
    }
    r.finish_curve();
    r
}
