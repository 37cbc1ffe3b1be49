//! Replay of llama.cpp reference recordings (`recordings/llama.cpp/`): op by op on llama.cpp's
//! own captured inputs (the CPU spec ops, isolating each op's numerics), and chained (a
//! backend's free-running forward pass, teacher-forced with llama.cpp's greedy tokens, compared
//! per position and tensor, plus logits and the greedy continuation).
//!
//! This file compares; it does not decide how results are shown (see `report`).

use std::collections::BTreeMap;

use crate::backend::cpu::{ops, quant};
use crate::backend::{Backend, LogitRows, Tap, TapPoint};
use crate::model::{Model, Weight};
use crate::reference::{ReferenceRecording, RowSelection};

use super::metrics::{self, RowError};
use super::{bounds, ReplayError};

/// One op checked on llama.cpp's own inputs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OpResult {
    pub layer: Option<usize>,
    /// Stored reference name (`Qcur-0#0`, `kqv_out-1#0`, `result_output`), or a control.
    pub tensor: String,
    pub nmse: f64,
    pub bound: f64,
    /// For a negative control, `passed` means it missed by more than `1e3 × bound`.
    pub control: bool,
    pub passed: bool,
}

/// Rows of a captured per-position tensor at `positions` (token axis 0), or `None` when the
/// recording lacks the tensor or one of the positions.
pub fn rows_at(rec: &ReferenceRecording, name: &str, positions: &[usize]) -> Option<Vec<f32>> {
    let (shape, data) = rec.f32(name).ok()?;
    let width: usize = shape[1..].iter().product();
    let mut out = Vec::with_capacity(positions.len() * width);
    for &p in positions {
        let i = rec.row_index(name, p)?;
        out.extend_from_slice(&data[i * width..(i + 1) * width]);
    }
    Some(out)
}

fn matmul(m: &Model, w: &Weight, x: &[f32]) -> Vec<f32> {
    let q = m.matrix(w);
    let n = x.len() / q.n_in;
    let mut out = vec![0.0; n * q.n_out];
    quant::matmul(&q, x, n, &mut out);
    out
}

struct Ops<'a> {
    out: Vec<OpResult>,
    _m: &'a Model,
}

impl Ops<'_> {
    fn check(&mut self, layer: Option<usize>, tensor: String, ours: &[f32], theirs: &[f32], bound: f64) {
        let e = metrics::nmse(ours, theirs);
        self.out.push(OpResult { layer, tensor, nmse: e, bound, control: false, passed: metrics::within(e, bound) });
    }
}

/// Each op of the layers in `rec.case.op_layers`, plus the output head, computed by the CPU
/// spec ops from llama.cpp's captured inputs and compared with llama.cpp's captured output.
/// Empty for cases without op captures. Includes one negative control per layer: the Q
/// product in plain f32 (no 8-bit activations) must miss by far more than the bound.
pub fn op_by_op(m: &Model, rec: &ReferenceRecording) -> Vec<OpResult> {
    let c = &m.config;
    let mut r = Ops { out: Vec::new(), _m: m };
    if rec.case.op_layers.is_empty() || rec.tensor(&format!("attn_norm-{}#0", rec.case.op_layers[0])).is_none() {
        return r.out;
    }
    let pos = rec.case.row_pos.clone();
    let n = rec.case.prompt_ids.len();
    let all: Vec<usize> = (0..n).collect();
    for &l in &rec.case.op_layers {
        let Some(lw) = m.layers.get(l) else { continue };
        let t = |n: &str| format!("{n}-{l}#0");
        let get = |name: &str, p: &[usize]| rows_at(rec, name, p);
        let input = if l == 0 { get("embd", &pos) } else { get(&format!("l_out-{}", l - 1), &pos) };
        let (Some(input), Some(attn_norm)) = (input, get(&t("attn_norm"), &pos)) else { continue };
        let mut ours = vec![0.0; input.len()];
        ops::rmsnorm(&input, &m.f32_vec(&lw.attn_norm), c.rms_eps, &mut ours);
        r.check(Some(l), t("attn_norm"), &ours, &attn_norm, bounds::OP_NMSE);
        let q0 = get(&t("Qcur"), &pos).unwrap_or_default();
        r.check(Some(l), t("Qcur"), &matmul(m, &lw.wq, &attn_norm), &q0, bounds::OP_NMSE);
        if let Some(k) = get(&t("Kcur"), &pos) {
            r.check(Some(l), t("Kcur"), &matmul(m, &lw.wk, &attn_norm), &k, bounds::OP_NMSE);
        }
        if let Some(v) = get(&t("Vcur"), &pos) {
            r.check(Some(l), t("Vcur"), &matmul(m, &lw.wv, &attn_norm), &v, bounds::OP_NMSE);
        }
        if let Ok(dense) = m.file.dequantize_tensor(&lw.wq.info.name) {
            let mut plain = vec![0.0; q0.len()];
            quant::matmul_exact_f32(&dense, c.dim, c.dim, &attn_norm, pos.len(), &mut plain);
            let miss = metrics::nmse(&plain, &q0);
            let bound = bounds::OP_NMSE;
            r.out.push(OpResult { layer: Some(l), tensor: format!("Qcur-{l}#0 plain-f32 control"), nmse: miss, bound, control: true, passed: miss > 1e3 * bound });
        }
        // RoPE on llama.cpp's pre-RoPE Q and K.
        let mut q_rope = q0.clone();
        for (i, &p) in pos.iter().enumerate() {
            ops::rope_norm(&mut q_rope[i * c.dim..(i + 1) * c.dim], c.head_dim, p, c.rope_base);
        }
        let (Some(q_ref), Some(k0), Some(k_ref), Some(v_ref)) =
            (get(&format!("Qcur-{l}#2"), &pos), get(&t("Kcur"), &all), get(&format!("Kcur-{l}#2"), &all), get(&t("Vcur"), &all))
        else {
            continue;
        };
        r.check(Some(l), format!("Qcur-{l}#2"), &q_rope, &q_ref, bounds::OP_ROPE_NMSE);
        let kv = c.kv_dim();
        let mut k_rope = k0.clone();
        for p in 0..n {
            ops::rope_norm(&mut k_rope[p * kv..(p + 1) * kv], c.head_dim, p, c.rope_base);
        }
        r.check(Some(l), format!("Kcur-{l}#2"), &k_rope, &k_ref, bounds::OP_ROPE_NMSE);
        // Attention on llama.cpp's RoPE'd Q, K and its V.
        let mut attn = vec![0.0; pos.len() * c.dim];
        for (i, &p) in pos.iter().enumerate() {
            ops::attention(&q_ref[i * c.dim..(i + 1) * c.dim], &k_ref, &v_ref, p + 1, c.n_heads, c.n_kv_heads, c.head_dim, &mut attn[i * c.dim..(i + 1) * c.dim], None);
        }
        let Some(kqv) = get(&t("kqv_out"), &pos) else { continue };
        r.check(Some(l), t("kqv_out"), &attn, &kqv, bounds::OP_ATTN_NMSE);
        let Some(attn_out) = get(&t("attn_out"), &pos) else { continue };
        r.check(Some(l), t("attn_out"), &matmul(m, &lw.wo, &kqv), &attn_out, bounds::OP_NMSE);
        let mut ffn_inp = attn_out.clone();
        ops::add(&mut ffn_inp, &input);
        let Some(ffn_inp_ref) = get(&t("ffn_inp"), &pos) else { continue };
        r.check(Some(l), t("ffn_inp"), &ffn_inp, &ffn_inp_ref, bounds::OP_NMSE);
        let mut ffn_norm = vec![0.0; ffn_inp.len()];
        ops::rmsnorm(&ffn_inp_ref, &m.f32_vec(&lw.ffn_norm), c.rms_eps, &mut ffn_norm);
        let Some(ffn_norm_ref) = get(&t("ffn_norm"), &pos) else { continue };
        r.check(Some(l), t("ffn_norm"), &ffn_norm, &ffn_norm_ref, bounds::OP_NMSE);
        let (Some(gate), Some(up)) = (get(&t("ffn_gate"), &pos), get(&t("ffn_up"), &pos)) else { continue };
        r.check(Some(l), t("ffn_gate"), &matmul(m, &lw.w_gate, &ffn_norm_ref), &gate, bounds::OP_NMSE);
        r.check(Some(l), t("ffn_up"), &matmul(m, &lw.w_up, &ffn_norm_ref), &up, bounds::OP_NMSE);
        let mut sw = vec![0.0; gate.len()];
        ops::swiglu(&gate, &up, &mut sw);
        let Some(sw_ref) = get(&t("ffn_swiglu"), &pos) else { continue };
        r.check(Some(l), t("ffn_swiglu"), &sw, &sw_ref, bounds::OP_NMSE);
        let Some(ffn_out) = get(&t("ffn_out"), &pos) else { continue };
        r.check(Some(l), t("ffn_out"), &matmul(m, &lw.w_down, &sw_ref), &ffn_out, bounds::OP_NMSE);
        let mut l_out = ffn_out.clone();
        ops::add(&mut l_out, &ffn_inp_ref);
        if let Some(l_ref) = get(&format!("l_out-{l}"), &pos) {
            r.check(Some(l), t("l_out"), &l_out, &l_ref, bounds::OP_NMSE);
        }
    }
    // Output head: result_norm -> logits at the positions with full logit rows.
    let lpos = rec.case.logits_row_pos.clone();
    if let (Some(rn), Ok((_, rows))) = (rows_at(rec, "result_norm", &lpos), rec.f32("logits.rows")) {
        r.check(None, "result_output".into(), &matmul(m, &m.output, &rn), rows, bounds::OP_NMSE);
    }
    r.out
}

/// The tap points compared for layer `l`, in data-flow order, with their reference names.
/// Layers with op captures compare every op; the others only the residual stream.
pub fn layer_points(l: usize, with_ops: bool) -> Vec<(TapPoint, String)> {
    use TapPoint::*;
    if !with_ops {
        return vec![(LOut(l), format!("l_out-{l}"))];
    }
    vec![
        (AttnNorm(l), format!("attn_norm-{l}#0")),
        (Q(l), format!("Qcur-{l}#0")),
        (K(l), format!("Kcur-{l}#0")),
        (V(l), format!("Vcur-{l}#0")),
        (QRope(l), format!("Qcur-{l}#2")),
        (KRope(l), format!("Kcur-{l}#2")),
        (KqSoftmax(l), format!("kq_soft_max-{l}#0")),
        (KqvOut(l), format!("kqv_out-{l}#0")),
        (AttnOut(l), format!("attn_out-{l}#0")),
        (FfnInp(l), format!("ffn_inp-{l}#0")),
        (FfnNorm(l), format!("ffn_norm-{l}#0")),
        (FfnGate(l), format!("ffn_gate-{l}#0")),
        (FfnUp(l), format!("ffn_up-{l}#0")),
        (FfnSwiglu(l), format!("ffn_swiglu-{l}#0")),
        (FfnOut(l), format!("ffn_out-{l}#0")),
        (LOut(l), format!("l_out-{l}")),
    ]
}

/// Collects every tapped tensor of one forward call (all positions).
pub struct CaptureTap {
    pub want: Box<dyn Fn(TapPoint) -> bool + Send>,
    /// Per point: (n_tok, data).
    pub data: BTreeMap<TapPoint, (usize, Vec<f32>)>,
}

impl Tap for CaptureTap {
    fn wants(&self, p: TapPoint) -> bool {
        (self.want)(p)
    }
    fn record(&mut self, p: TapPoint, _pos0: usize, n_tok: usize, data: &[f32]) {
        let e = self.data.entry(p).or_insert((0, Vec::new()));
        e.0 += n_tok;
        e.1.extend_from_slice(data);
    }
}

/// One tensor compared per prompt position.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TensorCompare {
    pub layer: Option<usize>,
    /// Reference name (`Qcur-0#2`, `l_out-12`, `embd`, `result_norm`).
    pub tensor: String,
    pub bound: f64,
    /// Our run produced no such tensor (e.g. a skipped op).
    pub missing: bool,
    /// (position, error), ascending positions.
    pub rows: Vec<(usize, RowError)>,
}

impl TensorCompare {
    pub fn worst(&self) -> f64 {
        if self.missing {
            return f64::INFINITY;
        }
        self.rows.iter().map(|r| r.1.nmse).fold(0.0, |m, e| if e.is_nan() || m.is_nan() { f64::NAN } else { m.max(e) })
    }
    /// The first position over the bound.
    pub fn first_over(&self) -> Option<&(usize, RowError)> {
        self.rows.iter().find(|r| !metrics::within(r.1.nmse, self.bound))
    }
    pub fn passed(&self) -> bool {
        !self.missing && self.first_over().is_none()
    }
}

/// Logits at one prompt position.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LogitsRow {
    pub position: usize,
    /// NMSE over the full row, where the recording keeps it.
    pub nmse: Option<f64>,
    /// KL(llama.cpp ‖ ours) over llama.cpp's top 32 tokens.
    pub kl_top32: f64,
    pub ours_top1: u32,
    pub ref_top1: u32,
    pub ref_top2_gap: f32,
}

/// One greedy step, teacher-forced.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GreedyStep {
    pub step: usize,
    pub ours: u32,
    pub theirs: u32,
    pub gap: f32,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChainedResult {
    /// Causal order: `embd`, then per layer its points in data-flow order, then `result_norm`.
    pub tensors: Vec<TensorCompare>,
    /// Tensors the recording lacks at every prompt position (nothing to compare).
    pub uncompared: Vec<String>,
    /// Reference tensors this backend never records (e.g. the CUDA backend's kq_soft_max).
    pub not_produced: Vec<String>,
    pub logits: Vec<LogitsRow>,
    pub greedy: Vec<GreedyStep>,
    /// Positions run through the backend (prompt + teacher-forced greedy tokens).
    pub tokens_run: usize,
}

/// The rows of `kq_soft_max-L#0` (stored `[head, row, kv_cell]`) at prompt position `p`, as
/// `[head][0..n]`, matching our `(n_tok, n_heads, n_kv)` tap layout.
fn kq_ref_row(rec: &ReferenceRecording, name: &str, p: usize, n: usize) -> Option<Vec<f32>> {
    let cap = rec.captured(name)?;
    let (shape, data) = rec.f32(name).ok()?;
    if shape.len() != 3 || shape[2] < n {
        return None;
    }
    let r = match cap.rows {
        RowSelection::All => p,
        RowSelection::RowPos => rec.case.row_pos.binary_search(&p).ok()?,
    };
    let (heads, rows, cells) = (shape[0], shape[1], shape[2]);
    (r < rows).then(|| (0..heads).flat_map(|h| data[(h * rows + r) * cells..(h * rows + r) * cells + n].iter().copied()).collect())
}

/// Runs `backend` (from an empty cache) over the prompt followed by llama.cpp's greedy tokens,
/// in one batch (on every backend a batch equals token-by-token decoding up to its documented
/// tolerance; on the CPU bit for bit), and compares every captured tensor per prompt position,
/// the logits at every prompt position, and the argmax at every greedy step.
pub fn chained(backend: &mut dyn Backend, rec: &ReferenceRecording) -> Result<ChainedResult, ReplayError> {
    let case = &rec.case;
    let c = backend.config().clone();
    let n = case.prompt_ids.len();
    let steps = case.greedy_ids.len();
    let mut tokens = case.prompt_ids.clone();
    tokens.extend_from_slice(&case.greedy_ids[..steps.saturating_sub(1)]);
    let op_layers = case.op_layers.clone();
    let with_ops = rec.tensor(&format!("attn_norm-{}#0", op_layers.first().copied().unwrap_or(0))).is_some();
    let ol = op_layers.clone();
    let mut tap = CaptureTap {
        want: Box::new(move |p| match p.layer() {
            None => !matches!(p, TapPoint::Logits),
            Some(l) => matches!(p, TapPoint::LOut(_)) || (with_ops && ol.contains(&l)),
        }),
        data: BTreeMap::new(),
    };
    backend.truncate(0);
    let logits = backend.forward(&tokens, 0, LogitRows::All, &mut tap).map_err(|source| ReplayError::Backend { case: case.name.clone(), source })?;

    let mut out = Vec::new();
    let mut uncompared = Vec::new();
    let mut not_produced = Vec::new();
    let mut compare = |layer: Option<usize>, p: TapPoint, name: String| {
        let bound = bounds::chained_nmse(p);
        if !backend.produces(p) {
            not_produced.push(name);
            return;
        }
        let Some((n_tok, data)) = tap.data.get(&p) else {
            out.push(TensorCompare { layer, tensor: name, bound, missing: true, rows: Vec::new() });
            return;
        };
        let width = data.len() / (*n_tok).max(1);
        let mut rows = Vec::new();
        for pos in 0..n {
            let theirs = if matches!(p, TapPoint::KqSoftmax(_)) {
                kq_ref_row(rec, &name, pos, n)
            } else {
                rows_at(rec, &name, &[pos])
            };
            let Some(theirs) = theirs else { continue };
            let ours: Vec<f32> = if let TapPoint::KqSoftmax(_) = p {
                let n_total = width / c.n_heads;
                (0..c.n_heads).flat_map(|h| data[pos * width + h * n_total..pos * width + h * n_total + n].iter().copied()).collect()
            } else {
                data[pos * width..(pos + 1) * width].to_vec()
            };
            if ours.len() == theirs.len() {
                rows.push((pos, metrics::row_error(&ours, &theirs)));
            }
        }
        if rows.is_empty() {
            uncompared.push(name);
        } else {
            out.push(TensorCompare { layer, tensor: name, bound, missing: false, rows });
        }
    };
    compare(None, TapPoint::Embd, "embd".into());
    for l in 0..c.n_layers {
        for (p, name) in layer_points(l, with_ops && op_layers.contains(&l)) {
            compare(Some(l), p, name);
        }
    }
    compare(None, TapPoint::ResultNorm, "result_norm".into());

    // Logits at every prompt position.
    let v = c.n_vocab;
    let (top_ids, top_vals, lse) = (rec.i32("logits.top_ids"), rec.f32("logits.top_vals"), rec.f32("logits.logsumexp"));
    let full = rec.f32("logits.rows").ok();
    let mut lrows = Vec::new();
    if let (Ok((tshape, ids)), Ok((_, vals)), Ok((_, lse))) = (top_ids, top_vals, lse) {
        let k = tshape[1];
        for pos in 0..n {
            let ours = &logits[pos * v..(pos + 1) * v];
            let nmse = full.and_then(|(_, rows)| rec.row_index("logits.rows", pos).map(|i| metrics::nmse(ours, &rows[i * v..(i + 1) * v])));
            let (ri, rv) = (&ids[pos * k..(pos + 1) * k], &vals[pos * k..(pos + 1) * k]);
            lrows.push(LogitsRow {
                position: pos,
                nmse,
                kl_top32: metrics::kl_topk(ours, ri, rv, lse[pos] as f64),
                ours_top1: crate::sampler::argmax(ours),
                ref_top1: ri[0] as u32,
                ref_top2_gap: rv[0] - rv[1],
            });
        }
    }
    let greedy = (0..steps)
        .map(|i| {
            let row = &logits[(n - 1 + i) * v..(n + i) * v];
            GreedyStep { step: i, ours: crate::sampler::argmax(row), theirs: case.greedy_ids[i], gap: case.greedy_top2_gap[i] }
        })
        .collect();
    Ok(ChainedResult { tensors: out, uncompared, not_produced, logits: lrows, greedy, tokens_run: tokens.len() })
}

/// Op by op (CPU spec ops) and chained (on `backend`) for one reference case, judged.
pub fn replay_case(m: &Model, backend: &mut dyn Backend, rec: &ReferenceRecording, tok: Option<&crate::tokenizer::Tokenizer>) -> Result<super::CaseReport, ReplayError> {
    let t0 = std::time::Instant::now();
    let ops = op_by_op(m, rec);
    let ch = chained(backend, rec)?;
    let mut r = super::report::judge_llama(rec, ops, &ch, backend.kind(), &m.name, tok);
    r.seconds = t0.elapsed().as_secs_f64();
    Ok(r)
}
