//! The result of replaying one case: verdict, checks, first divergence, worst layer and the
//! per-layer error curve, plus the readable summary that insta snapshots. Serializable to JSON
//! (`--report`); rendering to tables, JUnit, HTML and plots lives in `cli` and `html`.

use std::fmt::Write;

use serde::Serialize;

use super::metrics::bucket;
use crate::tokenizer::Tokenizer;

/// One op checked on llama.cpp's own inputs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpResult {
    pub layer: Option<usize>,
    /// Stored reference name (`Qcur-0#0`, `kqv_out-1#0`, `result_output`), or a control.
    pub tensor: String,
    pub nmse: f64,
    /// Every element bit-identical to llama.cpp's.
    pub identical: bool,
    pub bound: f64,
    /// For a negative control, `passed` means it missed by more than `1e3 × bound`.
    pub control: bool,
    pub passed: bool,
}

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
        let rel = |p: &LayerPoint| {
            p.worst_nmse.map(|e| {
                if p.bound > 0.0 {
                    e / p.bound
                } else if e > 0.0 {
                    f64::INFINITY
                } else {
                    0.0
                }
            })
        };
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
        let _ = writeln!(
            s,
            "first divergence: {}",
            self.first_divergence
                .as_ref()
                .map(|d| {
                    format!(
                        "{}{}{}",
                        d.position.map(|p| format!("position {p}, ")).unwrap_or_default(),
                        d.layer.map(|l| format!("layer {l}, ")).unwrap_or_default(),
                        d.tensor
                    )
                })
                .unwrap_or_else(|| "none".into())
        );
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
