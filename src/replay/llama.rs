//! Replay of llama.cpp reference recordings (`recordings/llama.cpp/`): op by op on llama.cpp's
//! own captured inputs (the CPU spec ops, isolating each op's numerics), and chained (a
//! backend's free-running forward pass, teacher-forced with llama.cpp's greedy tokens, compared
//! per position and tensor, plus logits and the greedy continuation).
//!
//! This file compares and judges (`judge_llama`: the checks and verdict of a case); how
//! results are shown is `report`'s, `cli`'s and `html`'s.

use std::collections::BTreeMap;

use crate::backend::cpu::{ops, quant, simd};
use crate::backend::{Backend, LogitRows, TapPoint};
use crate::model::{Model, Weight};
use crate::reference::{RecordingMode, ReferenceRecording, RowSelection};
use crate::tokenizer::Tokenizer;

use super::metrics::{self, within, RowError};
use super::report::{token_texts, CaseReport, Divergence, LayerPoint, Mode};
use super::{bounds, ReplayError};

pub use super::report::OpResult;

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
    simd::matmul(&q, x, n, &mut out);
    out
}

struct Ops {
    out: Vec<OpResult>,
    bounds: &'static bounds::Bounds,
}

impl Ops {
    /// Compares one op's output; a bound of 0 demands bit-identity.
    fn check(&mut self, layer: Option<usize>, tensor: String, ours: &[f32], theirs: &[f32]) {
        let bound = self.bounds.op_for(&tensor);
        let e = metrics::nmse(ours, theirs);
        let identical = bits_equal(ours, theirs);
        let passed = if bound == 0.0 { identical } else { metrics::within(e, bound) };
        self.out.push(OpResult { layer, tensor, nmse: e, identical, bound, control: false, passed });
    }

    /// A tensor the op checks need is not in the recording: a failed check, never a silent skip.
    fn missing(&mut self, layer: Option<usize>, what: String) {
        let tensor = format!("{what} missing from the recording");
        self.out.push(OpResult { layer, tensor, nmse: f64::INFINITY, identical: false, bound: 0.0, control: false, passed: false });
    }
}

/// Each op of the layers in `rec.case.op_layers`, plus the output head, computed by the CPU
/// spec ops from llama.cpp's captured inputs and compared with llama.cpp's captured output,
/// under the recording mode's bounds (token recordings: bit for bit). Empty for cases without
/// op captures. Includes one negative control per layer: the Q product in plain f32 (no 8-bit
/// activations) must miss by more than 1e-10 NMSE.
pub fn op_by_op(m: &Model, rec: &ReferenceRecording) -> Vec<OpResult> {
    let c = &m.config;
    let mut r = Ops { out: Vec::new(), bounds: bounds::for_arch(rec.case.mode, c.arch) };
    if rec.case.op_layers.is_empty() {
        return r.out;
    }
    let pos = rec.case.row_pos.clone();
    let n = rec.case.prompt_ids.len();
    let all: Vec<usize> = (0..n).collect();
    for &l in &rec.case.op_layers {
        let Some(lw) = m.layers.get(l) else {
            r.missing(Some(l), format!("layer {l} (the model has {})", m.layers.len()));
            continue;
        };
        // Every tensor an op needs, at the positions it needs; a missing one fails the layer.
        // Q/K/V occur several times per layer (the product, plus the bias where the model has
        // one, a reshape, RoPE for Q and K): `node` picks each by its op.
        let t = |name: &str| format!("{name}-{l}#0");
        let input_name = if l == 0 { "embd".to_string() } else { format!("l_out-{}", l - 1) };
        let [q_mm, k_mm, v_mm] = ["Qcur", "Kcur", "Vcur"].map(|b| node(rec, b, l, Occ::Product));
        let [q_pre, k_pre, v_pre] = ["Qcur", "Kcur", "Vcur"].map(|b| node(rec, b, l, Occ::Tap));
        let [q_rope_name, k_rope_name] = ["Qcur", "Kcur"].map(|b| node(rec, b, l, Occ::Rope));
        let mut names = vec![
            (input_name.clone(), &pos),
            (t("attn_norm"), &pos),
            (q_mm.clone(), &pos),
            (k_mm.clone(), &all),
            (v_mm.clone(), &all),
            (q_rope_name.clone(), &pos),
            (k_rope_name.clone(), &all),
            (t("kqv_out"), &pos),
            (t("attn_out"), &pos),
            (t("ffn_inp"), &pos),
            (t("ffn_norm"), &pos),
            (t("ffn_gate"), &pos),
            (t("ffn_up"), &pos),
            (t("ffn_swiglu"), &pos),
            (t("ffn_out"), &pos),
            (format!("l_out-{l}"), &pos),
        ];
        for (pre, mm, p) in [(&q_pre, &q_mm, &pos), (&k_pre, &k_mm, &all), (&v_pre, &v_mm, &all)] {
            if pre != mm {
                names.push((pre.clone(), p));
            }
        }
        let n_names = names.len();
        let mut got = BTreeMap::new();
        for (name, p) in names {
            match rows_at(rec, &name, p) {
                Some(v) => {
                    got.insert(name, v);
                }
                None => r.missing(Some(l), format!("{name} at positions {:?}", &p[..p.len().min(4)])),
            }
        }
        if got.len() < n_names {
            continue;
        }
        let g = |name: &str| &got[name];
        let (input, attn_norm) = (g(&input_name), g(&t("attn_norm")));
        let mut ours = vec![0.0; input.len()];
        ops::rmsnorm(input, &m.f32_vec(&lw.attn_norm), c.rms_eps, &mut ours);
        r.check(Some(l), t("attn_norm"), &ours, attn_norm);
        let q0 = g(&q_mm);
        r.check(Some(l), q_mm.clone(), &matmul(m, &lw.wq, attn_norm), q0);
        let (k0_all, v0_all) = (g(&k_mm), g(&v_mm));
        let kv = c.kv_dim();
        let qd = c.q_dim();
        let at = |rows: &[f32], width: usize| -> Vec<f32> { pos.iter().flat_map(|&p| rows[p * width..(p + 1) * width].iter().copied()).collect() };
        r.check(Some(l), k_mm.clone(), &matmul(m, &lw.wk, attn_norm), &at(k0_all, kv));
        r.check(Some(l), v_mm.clone(), &matmul(m, &lw.wv, attn_norm), &at(v0_all, kv));
        // The bias adds (ggml_add: one f32 addition per element) on llama.cpp's products.
        for (pre, mm, b, width) in [(&q_pre, &q_mm, &lw.bq, qd), (&k_pre, &k_mm, &lw.bk, kv), (&v_pre, &v_mm, &lw.bv, kv)] {
            match (pre != mm, b) {
                (true, Some(b)) => {
                    let bias = m.f32_vec(b);
                    let mut ours = g(mm).clone();
                    for row in ours.chunks_exact_mut(width) {
                        ops::add(row, &bias);
                    }
                    r.check(Some(l), pre.clone(), &ours, g(pre));
                }
                (false, None) => {}
                (true, None) => r.missing(Some(l), format!("the bias that {pre} adds (the model has none)")),
                (false, Some(_)) => r.missing(Some(l), format!("the biased {mm} (the model has a bias)")),
            }
        }
        let (q_pre_v, k_pre_all, v_all) = (g(&q_pre), g(&k_pre), g(&v_pre));
        if let Ok(dense) = m.file.dequantize_tensor(&lw.wq.info.name) {
            let mut plain = vec![0.0; q0.len()];
            quant::matmul_exact_f32(&dense, c.dim, qd, attn_norm, pos.len(), &mut plain);
            let miss = metrics::nmse(&plain, q0);
            let bound = 1e-10;
            r.out.push(OpResult {
                layer: Some(l),
                tensor: format!("{q_mm} plain-f32 control"),
                nmse: miss,
                identical: false,
                bound,
                control: true,
                passed: miss > bound,
            });
        }
        // RoPE on llama.cpp's pre-RoPE Q and K.
        let rope = m.rope();
        let mut q_rope = q_pre_v.clone();
        for (i, &p) in pos.iter().enumerate() {
            rope.apply(&mut q_rope[i * qd..(i + 1) * qd], p);
        }
        let (q_ref, k_ref) = (g(&q_rope_name), g(&k_rope_name));
        r.check(Some(l), q_rope_name.clone(), &q_rope, q_ref);
        let mut k_rope = k_pre_all.clone();
        for p in 0..n {
            rope.apply(&mut k_rope[p * kv..(p + 1) * kv], p);
        }
        r.check(Some(l), k_rope_name.clone(), &k_rope, k_ref);
        // Attention on llama.cpp's RoPE'd Q, K and its V: scores, probabilities, output.
        let mut attn = vec![0.0; pos.len() * qd];
        let (mut kq, mut probs) = (Vec::new(), Vec::new());
        for (i, &p) in pos.iter().enumerate() {
            let (mut s, mut pr) = (vec![0.0; c.n_heads * (p + 1)], vec![0.0; c.n_heads * (p + 1)]);
            ops::attention(
                &q_ref[i * qd..(i + 1) * qd],
                k_ref,
                v_all,
                p + 1,
                c.n_heads,
                c.n_kv_heads,
                c.head_dim,
                &mut attn[i * qd..(i + 1) * qd],
                Some(&mut s),
                Some(&mut pr),
            );
            kq.push((p, s));
            probs.push((p, pr));
        }
        for (name, ours) in [(format!("kq-{l}#0"), &kq), (format!("kq_soft_max-{l}#0"), &probs)] {
            if rec.tensor(&name).is_none() {
                continue; // older batch recordings have these only for some cases
            }
            let theirs: Option<Vec<f32>> = ours.iter().map(|(p, _)| kq_ref_row(rec, &name, *p, p + 1)).collect::<Option<Vec<_>>>().map(|v| v.concat());
            match theirs {
                Some(theirs) => r.check(Some(l), name, &ours.iter().flat_map(|(_, v)| v.iter().copied()).collect::<Vec<_>>(), &theirs),
                None => r.missing(Some(l), name),
            }
        }
        let kqv = g(&t("kqv_out"));
        r.check(Some(l), t("kqv_out"), &attn, kqv);
        let attn_out = g(&t("attn_out"));
        r.check(Some(l), t("attn_out"), &matmul(m, &lw.wo, kqv), attn_out);
        let mut ffn_inp = attn_out.clone();
        ops::add(&mut ffn_inp, input);
        let ffn_inp_ref = g(&t("ffn_inp"));
        r.check(Some(l), t("ffn_inp"), &ffn_inp, ffn_inp_ref);
        let mut ffn_norm = vec![0.0; ffn_inp.len()];
        ops::rmsnorm(ffn_inp_ref, &m.f32_vec(&lw.ffn_norm), c.rms_eps, &mut ffn_norm);
        let ffn_norm_ref = g(&t("ffn_norm"));
        r.check(Some(l), t("ffn_norm"), &ffn_norm, ffn_norm_ref);
        let (gate, up) = (g(&t("ffn_gate")), g(&t("ffn_up")));
        r.check(Some(l), t("ffn_gate"), &matmul(m, &lw.w_gate, ffn_norm_ref), gate);
        r.check(Some(l), t("ffn_up"), &matmul(m, &lw.w_up, ffn_norm_ref), up);
        let mut sw = vec![0.0; gate.len()];
        ops::swiglu(gate, up, &mut sw);
        let sw_ref = g(&t("ffn_swiglu"));
        r.check(Some(l), t("ffn_swiglu"), &sw, sw_ref);
        let ffn_out = g(&t("ffn_out"));
        r.check(Some(l), t("ffn_out"), &matmul(m, &lw.w_down, sw_ref), ffn_out);
        let mut l_out = ffn_out.clone();
        ops::add(&mut l_out, ffn_inp_ref);
        r.check(Some(l), t("l_out"), &l_out, g(&format!("l_out-{l}")));
    }
    // Output head: result_norm -> logits at the positions with full logit rows.
    let lpos = rec.case.logits_row_pos.clone();
    match (rows_at(rec, "result_norm", &lpos), rec.f32("logits.rows")) {
        (Some(rn), Ok((_, rows))) => r.check(None, "result_output".into(), &matmul(m, &m.output, &rn), rows),
        _ => r.missing(None, "result_norm or logits.rows at logits_row_pos".into()),
    }
    r.out
}

/// Which occurrence of a `Qcur`/`Kcur`/`Vcur` node of a layer: the matrix product, our tap
/// (the last one before RoPE that is not a view: the product, or the product plus its bias),
/// or the RoPE'd one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occ {
    Product,
    Tap,
    Rope,
}

/// The stored name of occurrence `which` of node `<base>-<l>`, found by op in the recording's
/// `captured` list (llama: `#0` product, `#2` RoPE; qwen2: `#0` product, `#1` plus bias, `#3`
/// RoPE); the llama names when the recording does not list the node.
pub fn node(rec: &ReferenceRecording, base: &str, l: usize, which: Occ) -> String {
    let gname = format!("{base}-{l}");
    let mut occ: Vec<(usize, &str, &str)> =
        rec.case.captured.iter().filter(|c| c.ggml_name == gname).map(|c| (c.occurrence, c.op.as_str(), c.stored_name.as_str())).collect();
    occ.sort();
    let view = |op: &str| matches!(op, "RESHAPE" | "VIEW" | "PERMUTE" | "TRANSPOSE" | "CONT");
    let hit = match which {
        Occ::Product => occ.iter().find(|o| o.1 == "MUL_MAT"),
        Occ::Rope => occ.iter().find(|o| o.1 == "ROPE"),
        Occ::Tap => occ.iter().take_while(|o| o.1 != "ROPE").filter(|o| !view(o.1)).last(),
    };
    match (hit, which) {
        (Some(o), _) => o.2.to_string(),
        (None, Occ::Rope) => format!("{gname}#2"),
        (None, _) => format!("{gname}#0"),
    }
}

/// The tap points compared for layer `l`, in data-flow order, with their reference names.
/// Layers with op captures compare every op; the others only the residual stream.
pub fn layer_points(rec: &ReferenceRecording, l: usize, with_ops: bool) -> Vec<(TapPoint, String)> {
    use TapPoint::*;
    if !with_ops {
        return vec![(LOut(l), format!("l_out-{l}"))];
    }
    vec![
        (AttnNorm(l), format!("attn_norm-{l}#0")),
        (Q(l), node(rec, "Qcur", l, Occ::Tap)),
        (K(l), node(rec, "Kcur", l, Occ::Tap)),
        (V(l), node(rec, "Vcur", l, Occ::Tap)),
        (QRope(l), node(rec, "Qcur", l, Occ::Rope)),
        (KRope(l), node(rec, "Kcur", l, Occ::Rope)),
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
    /// Our logits at llama.cpp's top 32 ids, and the full row where stored, bit-identical.
    pub identical: bool,
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
    /// Token recordings: every hashed tap at every position, bit for bit.
    pub exact: Option<super::exact::ExactResult>,
    /// The architecture run (the batch bounds are per architecture).
    pub arch: crate::model::Arch,
}

/// Every element the same bits (and the same length).
pub fn bits_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
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
    let arch = c.arch;
    let n = case.prompt_ids.len();
    let steps = case.greedy_ids.len();
    let mut tokens = case.prompt_ids.clone();
    tokens.extend_from_slice(&case.greedy_ids[..steps.saturating_sub(1)]);
    let op_layers = case.op_layers.clone();
    let with_ops = rec.tensor(&format!("attn_norm-{}#0", op_layers.first().copied().unwrap_or(0))).is_some();
    // Values of what the recording stores (the residual stream everywhere, every op of the
    // op-capture layers); hashes of every point a token recording hashes.
    let mut keep: Vec<TapPoint> = vec![TapPoint::Embd, TapPoint::ResultNorm];
    for l in 0..c.n_layers {
        keep.extend(layer_points(rec, l, with_ops && op_layers.contains(&l)).into_iter().map(|(p, _)| p));
    }
    let cols = super::exact::columns(rec);
    let hashed: Vec<TapPoint> = cols.iter().filter_map(|c| c.point).collect();
    let mut tap = super::exact::HashTap::new(hashed, keep, c.n_heads).windowed(&c);
    backend.truncate(0);
    let logits = backend.forward(&tokens, 0, LogitRows::All, &mut tap).map_err(|source| ReplayError::Backend { case: case.name.clone(), source })?;
    let exact = (!cols.is_empty()).then(|| {
        let produces = |p: TapPoint| backend.produces(p);
        super::exact::compare(rec, &cols, &tap, &produces)
    });
    let tap = &tap.values;

    let mut out = Vec::new();
    let mut uncompared = Vec::new();
    let mut not_produced = Vec::new();
    let mut compare = |layer: Option<usize>, p: TapPoint, name: String| {
        let bound = bounds::for_arch(case.mode, arch).chained(p);
        if !backend.produces(p) {
            not_produced.push(name);
            return;
        }
        let Some((n_tok, data)) = tap.get(p) else {
            out.push(TensorCompare { layer, tensor: name, bound, missing: true, rows: Vec::new() });
            return;
        };
        let width = data.len() / n_tok.max(1);
        let mut rows = Vec::new();
        for pos in 0..n {
            let theirs = if matches!(p, TapPoint::KqSoftmax(_)) { kq_ref_row(rec, &name, pos, n) } else { rows_at(rec, &name, &[pos]) };
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
        for (p, name) in layer_points(rec, l, with_ops && op_layers.contains(&l)) {
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
            let full_same = full.and_then(|(_, rows)| rec.row_index("logits.rows", pos).map(|i| bits_equal(ours, &rows[i * v..(i + 1) * v])));
            let top_same = ri.iter().zip(rv).all(|(&id, &val)| ours.get(id as usize).is_some_and(|o| o.to_bits() == val.to_bits()));
            lrows.push(LogitsRow {
                position: pos,
                nmse,
                kl_top32: metrics::kl_topk(ours, ri, rv, lse[pos] as f64),
                identical: top_same && full_same != Some(false),
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
    Ok(ChainedResult { tensors: out, uncompared, not_produced, logits: lrows, greedy, tokens_run: tokens.len(), exact, arch })
}

/// Op by op (CPU spec ops) and chained (on `backend`) for one reference case, judged.
pub fn replay_case(
    m: &Model,
    backend: &mut dyn Backend,
    rec: &ReferenceRecording,
    tok: Option<&crate::tokenizer::Tokenizer>,
) -> Result<super::CaseReport, ReplayError> {
    let t0 = std::time::Instant::now();
    let ops = op_by_op(m, rec);
    let ch = chained(backend, rec)?;
    let mut r = judge_llama(rec, ops, &ch, backend.kind(), &m.name, tok);
    r.seconds = t0.elapsed().as_secs_f64();
    Ok(r)
}

/// Judges a llama.cpp case from its op-by-op and chained results, under the bounds of the
/// recording's mode (token recordings: every check is bit-identity).
pub fn judge_llama(rec: &ReferenceRecording, ops: Vec<OpResult>, ch: &ChainedResult, backend: &str, model: &str, tok: Option<&Tokenizer>) -> CaseReport {
    let case = &rec.case;
    let b = bounds::for_arch(case.mode, ch.arch);
    let exact = case.mode == RecordingMode::Token;
    let dir = if exact { "recordings/llama.cpp/token" } else { "recordings/llama.cpp" };
    let mut r = CaseReport::new(&case.name, Mode::LlamaCpp, &format!("{dir}/{}.safetensors.zst", case.name), backend, model);
    r.tokens = token_texts(tok, &case.greedy_ids);
    r.stop_reason = format!("{} greedy steps (teacher-forced)", case.greedy_ids.len());
    r.tokens_replayed = ch.tokens_run;
    r.notes
        .push(format!("llama.cpp recording mode: {}", if exact { "token by token (exact)" } else { "batch (bounds: llama.cpp's batch-versus-token spread)" }));
    if let Some(t) = tok {
        let ok = t.tokenize(&case.prompt_text, case.add_special, case.parse_special) == case.prompt_ids;
        r.check("prompt ids equal llama.cpp's", ok, String::new());
    }
    if !ops.is_empty() {
        let bad: Vec<&OpResult> = ops.iter().filter(|o| !o.passed).collect();
        let real: Vec<&OpResult> = ops.iter().filter(|o| !o.control).collect();
        let same = real.iter().filter(|o| o.identical).count();
        let worst = real.iter().map(|o| o.nmse).fold(0.0, f64::max);
        let name = if exact { "op by op on llama.cpp's captured inputs, bit-identical" } else { "op by op on llama.cpp's captured inputs" };
        let inexact: Vec<String> = real.iter().filter(|o| !o.identical).map(|o| format!("{} {:.1e}", o.tensor, o.nmse)).collect();
        r.check(
            name,
            bad.is_empty(),
            format!(
                "{same} of {} ops bit-identical, worst NMSE {worst:.3e} (not identical: {inexact:?}); failing: {:?}",
                real.len(),
                bad.iter().map(|o| &o.tensor).collect::<Vec<_>>()
            ),
        );
    }
    r.ops = ops;
    if let Some(ex) = &ch.exact {
        let not_produced: Vec<&str> = ex.columns.iter().filter(|c| c.not_produced).map(|c| c.name.as_str()).collect();
        let n_pos = case.n_hashed_positions();
        r.check(
            "every tap at every position bit-identical",
            ex.rows_compared > 0 && ex.rows_identical == ex.rows_compared,
            format!(
                "{} of {} rows ({} taps at {n_pos} positions; {} taps this backend never produces)",
                ex.rows_identical,
                ex.rows_compared,
                ex.columns.len() - not_produced.len(),
                not_produced.len()
            ),
        );
        r.check(
            "op by op on llama.cpp's inputs at every layer and position (by hash)",
            ex.ops_isolated > 0 && ex.ops_isolated == ex.ops_identical,
            format!("{} of {} ops whose inputs are bit-identical to llama.cpp's gave its output bit for bit", ex.ops_identical, ex.ops_isolated),
        );
        if !not_produced.is_empty() {
            r.notes.push(format!(
                "{} hashed taps never recorded by this backend, not compared (e.g. {:?})",
                not_produced.len(),
                &not_produced[..not_produced.len().min(3)]
            ));
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
                detail: format!(
                    "hash differs{}",
                    ex.first_op.as_ref().map(|(p, n)| format!("; first op wrong on llama.cpp's own inputs: {n} at position {p}")).unwrap_or_default()
                ),
            });
        }
    }
    // Chained tensors with stored values, in causal order (a one-batch prefill: layer by layer).
    let mut prev: Option<&TensorCompare> = None;
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
    let logits_off = |l: &LogitsRow| if exact { !l.identical } else { l.nmse.is_some_and(|e| !within(e, b.logits_nmse)) || !within(l.kl_top32, b.logits_kl) };
    if exact {
        let same = ch.logits.iter().filter(|l| l.identical).count();
        r.check(
            "logits bit-identical at every prompt position",
            same == ch.logits.len() && !ch.logits.is_empty(),
            format!("{same} of {} positions (top 32, and full rows where stored)", ch.logits.len()),
        );
    } else {
        r.check("logits NMSE", within(worst_nmse, b.logits_nmse), format!("worst {worst_nmse:.3e}"));
        r.check("logits KL (top 32)", within(worst_kl, b.logits_kl), format!("worst {worst_kl:.3e}"));
    }
    let flips: Vec<(usize, f32)> = ch.logits.iter().filter(|l| l.ours_top1 != l.ref_top1).map(|l| (l.position, l.ref_top2_gap)).collect();
    let top1_bad: Vec<&(usize, f32)> = flips.iter().filter(|f| exact || f.1 >= b.prompt_top1_gap).collect();
    let name = if exact { "top-1 at every prompt position" } else { "top-1 at every prompt position (near-ties excused)" };
    r.check(name, top1_bad.is_empty(), format!("{} of {} differ, (position, llama.cpp gap): {flips:?}", flips.len(), ch.logits.len()));
    // Greedy, teacher-forced (while every step agrees, identical to free-running).
    let hard: Vec<&GreedyStep> = ch.greedy.iter().filter(|g| g.ours != g.theirs && (exact || g.gap >= b.near_tie_gap)).collect();
    let flips = ch.greedy.iter().filter(|g| g.ours != g.theirs).count();
    let ok = hard.is_empty() && (flips as f64) <= b.max_tie_flip_fraction * ch.greedy.len() as f64;
    if exact {
        r.check(
            "greedy continuation identical at every step (free-running, no near-tie excuse)",
            ok && flips == 0,
            format!("{} of {} steps equal", ch.greedy.len() - flips, ch.greedy.len()),
        );
    } else {
        let gaps: Vec<String> = ch.greedy.iter().filter(|g| g.ours != g.theirs).map(|g| format!("step {} gap {:.3}", g.step, g.gap)).collect();
        r.check(
            "greedy continuation, teacher-forced (near-ties excused)",
            ok,
            format!("{flips} of {} steps differ ({gaps:?}), {} not near-ties", ch.greedy.len(), hard.len()),
        );
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
