//! Bit-exact comparison with token-by-token llama.cpp recordings: the hash of every tapped
//! tensor at every position against the hash llama.cpp's own tensor had (`hashes` in the
//! recording), the first differing (position, layer, tensor) named, and each op judged on
//! llama.cpp's inputs wherever those inputs are proven bit-identical to ours by their hashes.
//!
//! This file maps llama.cpp's graph node names onto our [`TapPoint`]s and compares hashes; it
//! runs nothing itself (`llama::chained` runs the backend with a [`HashTap`]).

use std::collections::{BTreeMap, HashMap};

use crate::backend::{CaptureTap, Points, Tap, TapPoint};
use crate::reference::ReferenceRecording;

/// xxh3-64 of a row's exact f32 bytes, little-endian: the hash token recordings store.
pub fn row_hash(row: &[f32]) -> u64 {
    let mut bytes = Vec::with_capacity(row.len() * 4);
    for v in row {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// One hash column of a token recording and the tap point that produces it.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// `<ggml name>#<occurrence>`, e.g. `Qcur-3#2`.
    pub name: String,
    /// The ggml op that produced it (`MUL_MAT`, `ROPE`, ...).
    pub op: String,
    pub layer: Option<usize>,
    /// `None` for a node we have no tap for (e.g. a product before its bias is added).
    pub point: Option<TapPoint>,
}

/// Maps the recording's hash columns onto tap points, from ggml node names and ops: within a
/// layer, the RoPE'd `Qcur`/`Kcur` are `QRope`/`KRope` and the last other `Qcur`/`Kcur`/`Vcur`
/// node (the product, or the product plus bias) is `Q`/`K`/`V`.
pub fn columns(rec: &ReferenceRecording) -> Vec<Column> {
    let c = &rec.case;
    let mut out: Vec<Column> = Vec::with_capacity(c.hash_columns.len());
    for (name, op) in c.hash_columns.iter().zip(&c.hash_ops) {
        let node = name.split('#').next().unwrap_or(name);
        let (base, layer) = match node.rsplit_once('-') {
            Some((b, l)) if l.parse::<usize>().is_ok() => (b, l.parse::<usize>().ok()),
            _ => (node, None),
        };
        use TapPoint::*;
        let point = match (base, layer) {
            ("embd", None) => Some(Embd),
            ("inp_scaled", None) => Some(InpScaled),
            ("result_norm", None) => Some(ResultNorm),
            ("result_output", None) => Some(Logits),
            (_, None) => None,
            (b, Some(l)) => match b {
                "attn_norm" => Some(AttnNorm(l)),
                "Qcur" if op == "ROPE" => Some(QRope(l)),
                "Kcur" if op == "ROPE" => Some(KRope(l)),
                "Qcur" => Some(Q(l)),
                "Kcur" => Some(K(l)),
                "Vcur" => Some(V(l)),
                "kq" => Some(Kq(l)),
                "kq_soft_max" => Some(KqSoftmax(l)),
                "kqv_out" => Some(KqvOut(l)),
                "attn_out" => Some(AttnOut(l)),
                "ffn_inp" | "sa_out" => Some(FfnInp(l)),
                "Qcur_normed" => Some(QNorm(l)),
                "Kcur_normed" => Some(KNorm(l)),
                "attn_post_norm" => Some(AttnPostNorm(l)),
                "ffn_geglu" => Some(FfnGeglu(l)),
                "ffn_post_norm" => Some(FfnPostNorm(l)),
                "ffn_norm" => Some(FfnNorm(l)),
                "ffn_gate" => Some(FfnGate(l)),
                "ffn_up" => Some(FfnUp(l)),
                "ffn_swiglu" => Some(FfnSwiglu(l)),
                "ffn_out" => Some(FfnOut(l)),
                "l_out" => Some(LOut(l)),
                _ => None,
            },
        };
        // An earlier column with the same point is an intermediate (the product before its bias
        // is added): only the last one is our tap.
        if let Some(p) = point {
            for prev in out.iter_mut().filter(|c| c.point == Some(p)) {
                prev.point = None;
            }
        }
        out.push(Column { name: name.clone(), op: op.clone(), layer, point });
    }
    out
}

/// The columns whose values an op reads, and whether it reads them at every earlier position
/// too (attention reads all cached keys and values), by llama.cpp's graph for the llama family
/// and gemma3 (whose extra nodes, the scaled embeddings, Q/K norms and post-norms, sit between
/// the llama ones where they are present).
fn inputs(cols: &[Column], i: usize) -> Vec<(usize, bool)> {
    use TapPoint::*;
    let find = |p: TapPoint| cols.iter().position(|c| c.point == Some(p));
    let either = |a: TapPoint, b: TapPoint| find(a).or_else(|| find(b));
    let layer_input = |l: usize| if l == 0 { either(InpScaled, Embd) } else { find(LOut(l - 1)) };
    let Some(p) = cols[i].point else { return Vec::new() };
    let same = |v: Option<usize>| v.map(|j| (j, false));
    let all = |v: Option<usize>| v.map(|j| (j, true));
    let n_layers = cols.iter().filter_map(|c| c.layer).max().map_or(0, |l| l + 1);
    let deps = match p {
        Embd => vec![],
        AttnNorm(l) => vec![same(layer_input(l))],
        Q(l) | K(l) | V(l) => vec![same(find(AttnNorm(l)))],
        QNorm(l) => vec![same(find(Q(l)))],
        KNorm(l) => vec![same(find(K(l)))],
        QRope(l) => vec![same(either(QNorm(l), Q(l)))],
        KRope(l) => vec![same(either(KNorm(l), K(l)))],
        Kq(l) => vec![same(find(QRope(l))), all(find(KRope(l)))],
        KqSoftmax(l) => vec![same(find(Kq(l)))],
        KqvOut(l) => vec![same(find(KqSoftmax(l))), all(find(V(l)))],
        AttnOut(l) => vec![same(find(KqvOut(l)))],
        AttnPostNorm(l) => vec![same(find(AttnOut(l)))],
        FfnInp(l) => vec![same(either(AttnPostNorm(l), AttnOut(l))), same(layer_input(l))],
        FfnNorm(l) => vec![same(find(FfnInp(l)))],
        FfnGate(l) | FfnUp(l) => vec![same(find(FfnNorm(l)))],
        FfnSwiglu(l) => vec![same(find(FfnGate(l))), same(find(FfnUp(l)))],
        FfnGeglu(l) => vec![same(find(FfnGate(l))), same(find(FfnUp(l)))],
        FfnOut(l) => vec![same(either(FfnGeglu(l), FfnSwiglu(l)))],
        FfnPostNorm(l) => vec![same(find(FfnOut(l)))],
        LOut(l) => vec![same(either(FfnPostNorm(l), FfnOut(l))), same(find(FfnInp(l)))],
        InpScaled => vec![same(find(Embd))],
        ResultNorm => vec![same(if n_layers == 0 { None } else { find(LOut(n_layers - 1)) })],
        Logits => vec![same(find(ResultNorm))],
    };
    deps.into_iter().flatten().collect()
}

/// A tap that hashes every row of the points it is asked for (one hash per position; the
/// attention rows `Kq`/`KqSoftmax` over the cells `0..=position` of each head, as llama.cpp's
/// are hashed, on sliding-window layers over the window's cells only) and keeps the values of
/// `keep` points.
pub struct HashTap {
    hash: Vec<TapPoint>,
    n_heads: usize,
    /// The model's window (n_swa, per-layer flags), when it has sliding-window layers.
    window: Option<(usize, Vec<bool>)>,
    /// Per point: position -> hash.
    pub hashes: HashMap<TapPoint, BTreeMap<usize, u64>>,
    /// The values of the `keep` points.
    pub values: CaptureTap,
}

impl HashTap {
    pub fn new(hash: Vec<TapPoint>, keep: Vec<TapPoint>, n_heads: usize) -> HashTap {
        HashTap { hash, n_heads, window: None, hashes: HashMap::new(), values: CaptureTap::new(Points::Only(keep)) }
    }

    /// Hashes the attention rows of `config`'s sliding-window layers over their windows.
    pub fn windowed(mut self, config: &crate::model::ModelConfig) -> HashTap {
        if config.n_swa > 0 {
            self.window = Some((config.n_swa, config.swa_layers.clone()));
        }
        self
    }

    /// The first cell hashed of an attention row of `p` at `pos`.
    fn first_cell(&self, p: TapPoint, pos: usize) -> usize {
        match (&self.window, p.layer()) {
            (Some((n_swa, layers)), Some(l)) if layers.get(l).copied().unwrap_or(false) => (pos + 1).saturating_sub(*n_swa),
            _ => 0,
        }
    }
}

impl Tap for HashTap {
    fn wants(&self, p: TapPoint) -> bool {
        self.hash.contains(&p) || self.values.wants(p)
    }

    fn record(&mut self, p: TapPoint, pos0: usize, n_tok: usize, data: &[f32]) {
        if self.hash.contains(&p) && n_tok > 0 {
            let width = data.len() / n_tok;
            let mut h = std::mem::take(self.hashes.entry(p).or_default());
            for (t, row) in data.chunks_exact(width).enumerate() {
                let pos = pos0 + t;
                let hash = if matches!(p, TapPoint::Kq(_) | TapPoint::KqSoftmax(_)) {
                    let cells = width / self.n_heads;
                    let first = self.first_cell(p, pos);
                    let used: Vec<f32> = (0..self.n_heads).flat_map(|hd| row[hd * cells + first..hd * cells + pos + 1].iter().copied()).collect();
                    row_hash(&used)
                } else {
                    row_hash(row)
                };
                h.insert(pos, hash);
            }
            self.hashes.insert(p, h);
        }
        if self.values.wants(p) {
            self.values.record(p, pos0, n_tok, data);
        }
    }
}

/// One column compared at every hashed position.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ColumnResult {
    pub name: String,
    pub layer: Option<usize>,
    /// Rows compared (positions where both sides have a hash).
    pub compared: usize,
    pub identical: usize,
    pub first_mismatch: Option<usize>,
    /// This backend has no tap for the column (or never produces it).
    pub not_produced: bool,
}

/// The bit-exact verdict over every hash column and position.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ExactResult {
    pub columns: Vec<ColumnResult>,
    /// Rows (position, column) compared and bit-identical, over all columns.
    pub rows_compared: usize,
    pub rows_identical: usize,
    /// The first differing row in causal order: lowest position, then graph order.
    pub first: Option<(usize, String, Option<usize>)>,
    /// Ops whose inputs are all proven bit-identical to llama.cpp's (op by op on llama.cpp's
    /// own inputs), and how many of those produced llama.cpp's output bit for bit.
    pub ops_isolated: usize,
    pub ops_identical: usize,
    /// The first isolated op that differs: (position, column).
    pub first_op: Option<(usize, String)>,
}

/// Compares the hashes a [`HashTap`] collected with the recording's. `produces` says whether
/// the backend ever records a point.
pub fn compare(rec: &ReferenceRecording, cols: &[Column], tap: &HashTap, produces: &dyn Fn(TapPoint) -> bool) -> ExactResult {
    let n_pos = rec.case.n_hashed_positions();
    // matches[col][pos]: Some(true) identical, Some(false) differs, None not compared.
    let mut matches: Vec<Vec<Option<bool>>> = vec![vec![None; n_pos]; cols.len()];
    let mut results = Vec::with_capacity(cols.len());
    for (ci, col) in cols.iter().enumerate() {
        let produced = col.point.is_some_and(produces);
        let ours = col.point.and_then(|p| tap.hashes.get(&p));
        let mut r = ColumnResult { name: col.name.clone(), layer: col.layer, compared: 0, identical: 0, first_mismatch: None, not_produced: !produced };
        if let (true, Some(ours)) = (produced, ours) {
            for pos in 0..n_pos {
                let (Some(theirs), Some(&mine)) = (rec.row_hash(pos, ci), ours.get(&pos)) else { continue };
                let same = theirs == mine;
                matches[ci][pos] = Some(same);
                r.compared += 1;
                if same {
                    r.identical += 1;
                } else if r.first_mismatch.is_none() {
                    r.first_mismatch = Some(pos);
                }
            }
        } else if produced {
            // A point the backend produces but did not record: every row differs.
            r.first_mismatch = Some(0);
            r.compared = n_pos;
            for m in matches[ci].iter_mut() {
                *m = Some(false);
            }
        }
        results.push(r);
    }
    let mut first = None;
    'outer: for pos in 0..n_pos {
        for (ci, col) in cols.iter().enumerate() {
            if matches[ci][pos] == Some(false) {
                first = Some((pos, col.name.clone(), col.layer));
                break 'outer;
            }
        }
    }
    let (mut ops_isolated, mut ops_identical, mut first_op) = (0, 0, None);
    for (ci, col) in cols.iter().enumerate() {
        let deps = inputs(cols, ci);
        for pos in 0..n_pos {
            let Some(out) = matches[ci][pos] else { continue };
            let isolated = deps.iter().all(|&(d, prior)| {
                let range = if prior { 0..pos + 1 } else { pos..pos + 1 };
                range.into_iter().all(|q| matches[d][q] == Some(true))
            });
            if isolated {
                ops_isolated += 1;
                if out {
                    ops_identical += 1;
                } else if first_op.as_ref().is_none_or(|(p, _)| pos < *p) {
                    first_op = Some((pos, col.name.clone()));
                }
            }
        }
    }
    let rows_compared = results.iter().map(|r| r.compared).sum();
    let rows_identical = results.iter().map(|r| r.identical).sum();
    ExactResult { columns: results, rows_compared, rows_identical, first, ops_isolated, ops_identical, first_op }
}
