//! Parity with llama.cpp, checked against the committed reference recordings
//! (`recordings/llama.cpp/`, produced by `xtask/python/record_llama.py`): prompt ids; each op
//! fed llama.cpp's own captured inputs; the chained forward pass per layer; greedy runs.
//!
//! Bounds and why (see also ARCHITECTURE.md and FACTS.md):
//! - **Op by op**: with llama.cpp's inputs, our ops reproduce its outputs to float rounding:
//!   NMSE ≤ 1e-10 (measured ~1e-14 for matrix products). The same products in plain float
//!   (no 8-bit activations) miss by ~1e-5: the negative control below proves the bound bites.
//! - **Chained**: 8-bit rounding flips amplify 1-ulp differences layer after layer. The bound
//!   is `CHAINED_LAYER_NMSE` per position and layer, and `CHAINED_LOGITS_NMSE` on logits.
//! - **Greedy**: tokens equal up to the first step where llama.cpp's top-2 logit gap is below
//!   `NEAR_TIE_GAP` (a near-tie may legitimately flip).

use std::collections::BTreeMap;
use std::sync::Arc;

use worker_orcd::backend::cpu::{ops, quant, CpuBackend};
use worker_orcd::backend::{Backend, LogitRows, NoTap, Tap, TapPoint};
use worker_orcd::model::Model;
use worker_orcd::reference::{load_corpus, ReferenceRecording};

use crate::support::{max_row_nmse, model, nmse, tokenizer};

/// Chained through all 30 layers, NMSE over all stored positions of a case, per layer.
/// Measured (2026-11-27): ≤ 3.2e-4 (l_out-10, chat-long); FACTS.md's float64 emulation of
/// ggml's numerics drifted to 2e-5–7e-4 the same way.
const CHAINED_CASE_NMSE: f64 = 1e-3;
/// The same per single position (a row); measured ≤ 6.3e-3 (l_out-29).
const CHAINED_LAYER_NMSE: f64 = 1.5e-2;
/// Logits per position (a full 49,152-row); measured ≤ 8.5e-3.
const CHAINED_LOGITS_NMSE: f64 = 2e-2;
/// A prompt position's top-1 may differ from llama.cpp's only where llama.cpp's top-2 gap is
/// below this (measured: largest excused gap 0.33, at a position whose logits NMSE is 1e-3),
/// and on at most `TOP1_MAX_DISAGREE` of positions (measured 23 of 939, 2.4%).
const TOP1_EXCUSE_GAP: f32 = 0.5;
const TOP1_MAX_DISAGREE: f64 = 0.05;
/// Op by op on llama.cpp's own inputs.
const OP_NMSE: f64 = 1e-10;
/// A greedy step whose llama.cpp top-2 gap is below this may flip.
const NEAR_TIE_GAP: f32 = 0.15;

fn corpus() -> Vec<ReferenceRecording> {
    let cases: Vec<ReferenceRecording> = load_corpus().expect("reference corpus opens").into_iter().map(|(_, r)| r).collect();
    assert!(cases.len() >= 8, "expected at least 8 reference cases, found {}", cases.len());
    cases
}

#[test]
fn prompt_ids_equal_llama_cpp() {
    let tok = tokenizer();
    for rec in corpus() {
        let c = &rec.case;
        assert_eq!(tok.encode(&c.prompt_text, c.parse_special), c.prompt_ids, "case {}", c.name);
    }
}

/// Rows of a captured per-position tensor at the given prompt positions.
fn rows_at(rec: &ReferenceRecording, name: &str, positions: &[usize]) -> Vec<f32> {
    let (shape, data) = rec.f32(name).unwrap_or_else(|e| panic!("{}: {name}: {e}", rec.case.name));
    let width: usize = shape[1..].iter().product();
    let mut out = Vec::with_capacity(positions.len() * width);
    for &p in positions {
        let i = rec.row_index(name, p).unwrap_or_else(|| panic!("{}: {name} has no row for position {p}", rec.case.name));
        out.extend_from_slice(&data[i * width..(i + 1) * width]);
    }
    out
}

fn matmul(m: &Model, w: &worker_orcd::model::Weight, x: &[f32]) -> Vec<f32> {
    let q = m.matrix(w);
    let n = x.len() / q.n_in;
    let mut out = vec![0.0; n * q.n_out];
    quant::matmul(&q, x, n, &mut out);
    out
}

struct OpReport {
    rows: Vec<(String, String, f64)>,
}

impl OpReport {
    fn check(&mut self, case: &str, what: String, ours: &[f32], theirs: &[f32], bound: f64) {
        let e = nmse(ours, theirs);
        self.rows.push((case.to_string(), what.clone(), e));
        assert!(e <= bound, "{case}: {what}: NMSE {e:.3e} exceeds {bound:.0e}");
    }
}

#[test]
fn each_op_reproduces_llama_cpp_on_its_own_inputs() {
    let m = model();
    let c = &m.config;
    let mut report = OpReport { rows: Vec::new() };
    let mut n_cases = 0;
    for rec in corpus() {
        let case = rec.case.name.clone();
        if rec.case.op_layers.is_empty() || rec.tensor(&format!("attn_norm-{}#0", rec.case.op_layers[0])).is_none() {
            continue;
        }
        n_cases += 1;
        let pos = rec.case.row_pos.clone();
        for &l in &rec.case.op_layers {
            let lw = &m.layers[l];
            let t = |n: &str| format!("{n}-{l}#0");
            let input = if l == 0 { rows_at(&rec, "embd", &pos) } else { rows_at(&rec, &format!("l_out-{}", l - 1), &pos) };
            let attn_norm = rows_at(&rec, &t("attn_norm"), &pos);
            let mut ours = vec![0.0; input.len()];
            ops::rmsnorm(&input, &m.f32_vec(&lw.attn_norm), c.rms_eps, &mut ours);
            report.check(&case, t("attn_norm"), &ours, &attn_norm, OP_NMSE);

            let q0 = rows_at(&rec, &t("Qcur"), &pos);
            report.check(&case, t("Qcur"), &matmul(&m, &lw.wq, &attn_norm), &q0, OP_NMSE);
            report.check(&case, format!("Kcur-{l}#0"), &matmul(&m, &lw.wk, &attn_norm), &rows_at(&rec, &format!("Kcur-{l}#0"), &pos), OP_NMSE);
            report.check(&case, format!("Vcur-{l}#0"), &matmul(&m, &lw.wv, &attn_norm), &rows_at(&rec, &format!("Vcur-{l}#0"), &pos), OP_NMSE);

            // Negative control: the same Q product in plain f32 over exactly dequantized weights
            // (no 8-bit activations) must miss by far more than OP_NMSE.
            let dense = m.file.dequantize_tensor(&lw.wq.info.name).unwrap();
            let mut plain = vec![0.0; q0.len()];
            quant::matmul_exact_f32(&dense, c.dim, c.dim, &attn_norm, pos.len(), &mut plain);
            let miss = nmse(&plain, &q0);
            assert!(miss > 1e3 * OP_NMSE, "{case}: plain-f32 Q projection is too close ({miss:.2e}): the op check would not catch wrong numerics");
            report.rows.push((case.clone(), format!("Qcur-{l}#0 plain f32 (control)"), miss));

            // RoPE on llama.cpp's pre-RoPE Q and K.
            let mut q_rope = q0.clone();
            for (i, &p) in pos.iter().enumerate() {
                ops::rope_norm(&mut q_rope[i * c.dim..(i + 1) * c.dim], c.head_dim, p, c.rope_base);
            }
            report.check(&case, format!("Qcur-{l}#2 (rope)"), &q_rope, &rows_at(&rec, &format!("Qcur-{l}#2"), &pos), 1e-8);
            let n = rec.case.prompt_ids.len();
            let all: Vec<usize> = (0..n).collect();
            let k0 = rows_at(&rec, &format!("Kcur-{l}#0"), &all);
            let mut k_rope = k0.clone();
            let kv = c.kv_dim();
            for p in 0..n {
                ops::rope_norm(&mut k_rope[p * kv..(p + 1) * kv], c.head_dim, p, c.rope_base);
            }
            let k_ref = rows_at(&rec, &format!("Kcur-{l}#2"), &all);
            report.check(&case, format!("Kcur-{l}#2 (rope)"), &k_rope, &k_ref, 1e-8);

            // Attention on llama.cpp's RoPE'd Q, K and its V.
            let q_ref = rows_at(&rec, &format!("Qcur-{l}#2"), &pos);
            let v_ref = rows_at(&rec, &format!("Vcur-{l}#0"), &all);
            let mut attn = vec![0.0; pos.len() * c.dim];
            for (i, &p) in pos.iter().enumerate() {
                ops::attention(&q_ref[i * c.dim..(i + 1) * c.dim], &k_ref, &v_ref, p + 1, c.n_heads, c.n_kv_heads, c.head_dim, &mut attn[i * c.dim..(i + 1) * c.dim], None, None);
            }
            let kqv = rows_at(&rec, &t("kqv_out"), &pos);
            report.check(&case, t("kqv_out"), &attn, &kqv, 1e-9);

            let attn_out = rows_at(&rec, &t("attn_out"), &pos);
            report.check(&case, t("attn_out"), &matmul(&m, &lw.wo, &kqv), &attn_out, OP_NMSE);
            let mut ffn_inp = attn_out.clone();
            ops::add(&mut ffn_inp, &input);
            let ffn_inp_ref = rows_at(&rec, &t("ffn_inp"), &pos);
            report.check(&case, t("ffn_inp"), &ffn_inp, &ffn_inp_ref, OP_NMSE);
            let mut ffn_norm = vec![0.0; ffn_inp.len()];
            ops::rmsnorm(&ffn_inp_ref, &m.f32_vec(&lw.ffn_norm), c.rms_eps, &mut ffn_norm);
            let ffn_norm_ref = rows_at(&rec, &t("ffn_norm"), &pos);
            report.check(&case, t("ffn_norm"), &ffn_norm, &ffn_norm_ref, OP_NMSE);
            let gate = rows_at(&rec, &t("ffn_gate"), &pos);
            let up = rows_at(&rec, &t("ffn_up"), &pos);
            report.check(&case, t("ffn_gate"), &matmul(&m, &lw.w_gate, &ffn_norm_ref), &gate, OP_NMSE);
            report.check(&case, t("ffn_up"), &matmul(&m, &lw.w_up, &ffn_norm_ref), &up, OP_NMSE);
            let mut sw = vec![0.0; gate.len()];
            ops::swiglu(&gate, &up, &mut sw);
            let sw_ref = rows_at(&rec, &t("ffn_swiglu"), &pos);
            report.check(&case, t("ffn_swiglu"), &sw, &sw_ref, OP_NMSE);
            let ffn_out = rows_at(&rec, &t("ffn_out"), &pos);
            report.check(&case, t("ffn_out"), &matmul(&m, &lw.w_down, &sw_ref), &ffn_out, OP_NMSE);
            let mut l_out = ffn_out.clone();
            ops::add(&mut l_out, &ffn_inp_ref);
            report.check(&case, t("l_out"), &l_out, &rows_at(&rec, &format!("l_out-{l}"), &pos), OP_NMSE);
        }
        // Output head: result_norm -> logits at the positions with full logit rows.
        let lpos = rec.case.logits_row_pos.clone();
        let rn = rows_at(&rec, "result_norm", &lpos);
        let (_, rows) = rec.f32("logits.rows").unwrap();
        report.check(&case, "result_output".into(), &matmul(&m, &m.output, &rn), rows, OP_NMSE);
    }
    assert!(n_cases >= 2, "expected op captures in at least 2 cases, found {n_cases}");
    // Worst NMSE per op kind, printed for the record (cargo test -- --nocapture).
    let mut worst: BTreeMap<String, f64> = BTreeMap::new();
    for (_, what, e) in &report.rows {
        let kind = what.split(['-', ' ']).next().unwrap_or("").to_string() + if what.contains("control") { " (plain f32 control)" } else { "" };
        let w = worst.entry(kind).or_insert(0.0);
        *w = w.max(*e);
    }
    for (k, e) in &worst {
        println!("op-by-op worst NMSE {k:<32} {e:.3e}");
    }
}

/// Collects what the chained comparison needs: embd, every l_out, result_norm.
struct Collect {
    tensors: BTreeMap<TapPoint, Vec<f32>>,
}

impl Tap for Collect {
    fn wants(&self, p: TapPoint) -> bool {
        matches!(p, TapPoint::Embd | TapPoint::LOut(_) | TapPoint::ResultNorm)
    }
    fn record(&mut self, p: TapPoint, _: usize, _: usize, data: &[f32]) {
        self.tensors.entry(p).or_default().extend_from_slice(data);
    }
}

fn pick_rows(data: &[f32], width: usize, positions: &[usize]) -> Vec<f32> {
    positions.iter().flat_map(|&p| data[p * width..(p + 1) * width].iter().copied()).collect()
}

#[test]
fn chained_forward_pass_stays_within_bounds_of_llama_cpp() {
    let m = model();
    let c = m.config.clone();
    let mut worst_layer = vec![0.0f64; c.n_layers];
    let mut worst_global = vec![0.0f64; c.n_layers];
    let mut worst_logits = 0.0f64;
    let mut top1_disagreements = Vec::new();
    let mut n_positions = 0usize;
    for rec in corpus() {
        let case = &rec.case;
        let n = case.prompt_ids.len();
        let mut b = CpuBackend::new(Arc::clone(&m), n + 1, 2).unwrap();
        let mut tap = Collect { tensors: BTreeMap::new() };
        let logits = b.forward(&case.prompt_ids, 0, LogitRows::All, &mut tap).unwrap();
        let pos = &case.row_pos;
        let e = max_row_nmse(&pick_rows(&tap.tensors[&TapPoint::Embd], c.dim, pos), &rows_at(&rec, "embd", pos), c.dim);
        assert_eq!(e, 0.0, "{}: embeddings differ (NMSE {e:.3e}); get_rows is exact", case.name);
        let mut failures = Vec::new();
        for l in 0..c.n_layers {
            let ours = pick_rows(&tap.tensors[&TapPoint::LOut(l)], c.dim, pos);
            let theirs = rows_at(&rec, &format!("l_out-{l}"), pos);
            let e = max_row_nmse(&ours, &theirs, c.dim);
            worst_layer[l] = worst_layer[l].max(e);
            worst_global[l] = worst_global[l].max(nmse(&ours, &theirs));
            if e > CHAINED_LAYER_NMSE {
                failures.push(format!("l_out-{l}: per-position {e:.3e}"));
            }
            let g = nmse(&ours, &theirs);
            if g > CHAINED_CASE_NMSE {
                failures.push(format!("l_out-{l}: whole-case {g:.3e}"));
            }
        }
        assert!(failures.is_empty(), "{}: NMSE over bounds ({CHAINED_LAYER_NMSE:.0e} per position, {CHAINED_CASE_NMSE:.0e} per case): {failures:?}", case.name);
        let lpos = &case.logits_row_pos;
        let (_, ref_rows) = rec.f32("logits.rows").unwrap();
        let e = max_row_nmse(&pick_rows(&logits, c.n_vocab, lpos), ref_rows, c.n_vocab);
        worst_logits = worst_logits.max(e);
        assert!(e <= CHAINED_LOGITS_NMSE, "{}: logits NMSE {e:.3e} exceeds {CHAINED_LOGITS_NMSE:.0e}", case.name);
        // Top-1 at every prompt position, excused only on near-ties of the reference.
        let (_, top_ids) = rec.i32("logits.top_ids").unwrap();
        let (tshape, top_vals) = rec.f32("logits.top_vals").unwrap();
        let k = tshape[1];
        n_positions += n;
        for p in 0..n {
            let ours = worker_orcd::sampler::argmax(&logits[p * c.n_vocab..(p + 1) * c.n_vocab]);
            let theirs = top_ids[p * k] as u32;
            if ours != theirs {
                let gap = top_vals[p * k] - top_vals[p * k + 1];
                assert!(gap < TOP1_EXCUSE_GAP, "{}: position {p}: top-1 {ours} vs llama.cpp {theirs}, gap {gap:.3}", case.name);
                top1_disagreements.push((case.name.clone(), p, gap));
            }
        }
    }
    for (l, e) in worst_layer.iter().enumerate() {
        println!("chained l_out-{l:<2} worst per-position NMSE {e:.3e}, worst per-case NMSE {:.3e}", worst_global[l]);
    }
    println!("chained worst per-position NMSE logits   {worst_logits:.3e}");
    println!("top-1 disagreements on near-ties: {} of {n_positions} positions: {top1_disagreements:?}", top1_disagreements.len());
    assert!(
        (top1_disagreements.len() as f64) <= TOP1_MAX_DISAGREE * n_positions as f64,
        "top-1 differs from llama.cpp at {} of {n_positions} prompt positions",
        top1_disagreements.len()
    );
}

#[test]
fn greedy_continuations_equal_llama_cpp_up_to_near_ties() {
    let m = model();
    let mut summary = Vec::new();
    let (mut steps_total, mut near_ties, mut tie_flips) = (0usize, 0usize, 0usize);
    for rec in corpus() {
        let case = &rec.case;
        let n = case.prompt_ids.len();
        let steps = case.greedy_ids.len();
        let gap = |i: usize| case.greedy_top2_gap[i];

        // Free-running: our own greedy tokens, equal up to the first near-tie of llama.cpp's.
        let mut b = CpuBackend::new(Arc::clone(&m), n + steps + 1, 2).unwrap();
        let mut logits = b.forward(&case.prompt_ids, 0, LogitRows::Last, &mut NoTap).unwrap();
        let mut free_equal = 0;
        for i in 0..steps {
            if gap(i) < NEAR_TIE_GAP {
                break;
            }
            let ours = worker_orcd::sampler::argmax(&logits);
            assert_eq!(ours, case.greedy_ids[i], "{}: free-running greedy step {i}: ours {ours}, llama.cpp {} (gap {:.3})", case.name, case.greedy_ids[i], gap(i));
            free_equal += 1;
            logits = b.forward(&[ours], n + i, LogitRows::Last, &mut NoTap).unwrap();
        }

        // Teacher-forced: llama.cpp's tokens fed in, our argmax checked at all 64 steps. These
        // are positions like the prompt's, so the same rule applies: a flip only where the
        // reference's gap is under TOP1_EXCUSE_GAP, and rarely. This covers every step even
        // where free-running stopped at an early near-tie.
        let mut b = CpuBackend::new(Arc::clone(&m), n + steps + 1, 2).unwrap();
        let mut logits = b.forward(&case.prompt_ids, 0, LogitRows::Last, &mut NoTap).unwrap();
        let mut flips = Vec::new();
        for i in 0..steps {
            let ours = worker_orcd::sampler::argmax(&logits);
            let theirs = case.greedy_ids[i];
            if gap(i) < NEAR_TIE_GAP {
                near_ties += 1;
            }
            if ours != theirs {
                assert!(gap(i) < TOP1_EXCUSE_GAP, "{}: teacher-forced step {i}: ours {ours}, llama.cpp {theirs} (gap {:.3})", case.name, gap(i));
                flips.push(i);
            }
            if i + 1 < steps {
                logits = b.forward(&[theirs], n + i, LogitRows::Last, &mut NoTap).unwrap();
            }
        }
        steps_total += steps;
        tie_flips += flips.len();
        let flip_gaps: Vec<String> = flips.iter().map(|&i| format!("{i} (gap {:.3})", gap(i))).collect();
        summary.push(format!("{}: free-running {free_equal} equal before the first near-tie; teacher-forced {}/{steps} equal, flips at {flip_gaps:?}", case.name, steps - flips.len()));
    }
    for s in &summary {
        println!("greedy {s}");
    }
    println!("greedy: {near_ties} of {steps_total} steps are near-ties (gap < {NEAR_TIE_GAP}); {tie_flips} teacher-forced steps flipped");
    // Near-ties are common in this small model (see the printout); flips on them must stay rare.
    assert!((tie_flips as f64) <= TOP1_MAX_DISAGREE * steps_total as f64, "{tie_flips} of {steps_total} teacher-forced steps flipped: not rare");
}
