//! Quantized matrix products exactly as ggml's CPU backend computes them: the activation row is
//! first quantized to 8 bits per block of 32 (Q8_1 for Q4_1/Q5_1 weights, Q8_0 for Q4_0/Q8_0
//! weights, F16/BF16 for F16/BF16 weights), then each output is an integer dot product per block
//! scaled in float.
//!
//! This is the numerical spec for the CUDA kernels of the same names. It knows block layouts
//! and arithmetic, nothing of models. Every output element is produced by one sequential dot
//! product, so results are bitwise identical for any thread count and any batch size.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::gguf::GgmlType;

/// Elements per quantization block (all 8-bit and 4-bit types used here).
pub const QK: usize = 32;

/// One block of an activation row quantized to Q8_0 (ggml `block_q8_0`): `x ≈ d * qs`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ8_0 {
    /// Scale, rounded to f16 as ggml stores it, widened back to f32.
    pub d: f32,
    pub qs: [i8; QK],
}

/// One block quantized to Q8_1 (ggml `block_q8_1`): like Q8_0 plus `s = d * sum(qs)` (f16).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ8_1 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK],
}

#[inline]
fn f16_round(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Quantizes one block the way ggml's AVX2 `quantize_row_q8_0/q8_1` does: `d = amax/127`
/// (stored as f16), `q = round_half_even(x * (127/amax))` computed with the f32 inverse.
#[inline(always)]
fn quantize_block(x: &[f32]) -> (f32, [i8; QK], i32) {
    debug_assert_eq!(x.len(), QK);
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; QK];
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        // `round_ties_even` matches _mm256_round_ps(_MM_ROUND_NEAREST) (the default MXCSR mode).
        let r = (v * id).round_ties_even() as i32;
        *q = r as i8;
        sum += r;
    }
    (d, qs, sum)
}

/// `quantize_row_q8_0`: x (k,) -> k/32 blocks. `k` must be a multiple of 32.
pub fn quantize_row_q8_0(x: &[f32]) -> Vec<BlockQ8_0> {
    assert_eq!(x.len() % QK, 0, "row length {} is not a multiple of {QK}", x.len());
    x.chunks_exact(QK)
        .map(|b| {
            let (d, qs, _) = quantize_block(b);
            BlockQ8_0 { d: f16_round(d), qs }
        })
        .collect()
}

/// `quantize_row_q8_1`: x (k,) -> k/32 blocks, with `s = f16(d * sum(q))` using the f32 `d`.
pub fn quantize_row_q8_1(x: &[f32]) -> Vec<BlockQ8_1> {
    assert_eq!(x.len() % QK, 0, "row length {} is not a multiple of {QK}", x.len());
    x.chunks_exact(QK)
        .map(|b| {
            let (d, qs, sum) = quantize_block(b);
            BlockQ8_1 { d: f16_round(d), s: f16_round(d * sum as f32), qs }
        })
        .collect()
}

#[inline(always)]
fn read_f16(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

#[inline(always)]
fn dot_i8(a: &[i8; QK], b: &[i8; QK]) -> i32 {
    let mut s = 0i32;
    for j in 0..QK {
        s += a[j] as i32 * b[j] as i32;
    }
    s
}

/// Unpacks the 16 bytes of 4-bit quants of one block: low nibbles are elements 0..16, high
/// nibbles 16..32 (ggml's layout for Q4_0 and Q4_1).
#[inline(always)]
fn unpack_nibbles(qs: &[u8], offset: i8) -> [i8; QK] {
    let mut out = [0i8; QK];
    for j in 0..QK / 2 {
        out[j] = (qs[j] & 0x0F) as i8 - offset;
        out[j + QK / 2] = (qs[j] >> 4) as i8 - offset;
    }
    out
}

/// `ggml_vec_dot_q4_1_q8_1`: one Q4_1 weight row (20 bytes a block: f16 d, f16 m, 16 bytes of
/// nibbles) against a Q8_1 activation row. Per block: `d_w*d_a*Σ q_w q_a + m_w*s_a`.
#[inline(always)]
pub fn vec_dot_q4_1_q8_1(w: &[u8], a: &[BlockQ8_1]) -> f32 {
    const BS: usize = 20;
    debug_assert_eq!(w.len(), a.len() * BS);
    let mut acc = 0.0f32;
    let mut summs = 0.0f32;
    for (blk, ab) in w.chunks_exact(BS).zip(a) {
        let d = read_f16(blk, 0);
        let m = read_f16(blk, 2);
        let q = unpack_nibbles(&blk[4..20], 0);
        acc += (d * ab.d) * dot_i8(&q, &ab.qs) as f32;
        summs += m * ab.s;
    }
    acc + summs
}

/// `ggml_vec_dot_q4_0_q8_0`: Q4_0 (18 bytes a block: f16 d, nibbles offset by 8) · Q8_0.
#[inline(always)]
pub fn vec_dot_q4_0_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    const BS: usize = 18;
    debug_assert_eq!(w.len(), a.len() * BS);
    let mut acc = 0.0f32;
    for (blk, ab) in w.chunks_exact(BS).zip(a) {
        let d = read_f16(blk, 0);
        let q = unpack_nibbles(&blk[2..18], 8);
        acc += (d * ab.d) * dot_i8(&q, &ab.qs) as f32;
    }
    acc
}

/// `ggml_vec_dot_q8_0_q8_0`: Q8_0 (34 bytes a block: f16 d, 32 i8) · Q8_0.
#[inline(always)]
pub fn vec_dot_q8_0_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    const BS: usize = 34;
    debug_assert_eq!(w.len(), a.len() * BS);
    let mut acc = 0.0f32;
    for (blk, ab) in w.chunks_exact(BS).zip(a) {
        let d = read_f16(blk, 0);
        let mut q = [0i8; QK];
        for (dst, &src) in q.iter_mut().zip(&blk[2..34]) {
            *dst = src as i8;
        }
        acc += (d * ab.d) * dot_i8(&q, &ab.qs) as f32;
    }
    acc
}

/// `ggml_vec_dot_f16`: F16 weights · activation rounded to F16, accumulated in f32.
#[inline(always)]
pub fn vec_dot_f16(w: &[u8], a: &[f32]) -> f32 {
    let mut acc = 0.0f32;
    for (j, &x) in a.iter().enumerate() {
        acc += read_f16(w, 2 * j) * x;
    }
    acc
}

/// `ggml_vec_dot_bf16`: BF16 weights · activation rounded to BF16, accumulated in f32.
#[inline(always)]
pub fn vec_dot_bf16(w: &[u8], a: &[f32]) -> f32 {
    let mut acc = 0.0f32;
    for (j, &x) in a.iter().enumerate() {
        let wv = bf16::from_bits(u16::from_le_bytes([w[2 * j], w[2 * j + 1]])).to_f32();
        acc += wv * x;
    }
    acc
}

/// `ggml_vec_dot_f32`: plain f32 dot product in index order.
#[inline(always)]
pub fn vec_dot_f32(w: &[u8], a: &[f32]) -> f32 {
    let mut acc = 0.0f32;
    for (j, &x) in a.iter().enumerate() {
        let o = 4 * j;
        acc += f32::from_le_bytes([w[o], w[o + 1], w[o + 2], w[o + 3]]) * x;
    }
    acc
}

/// A weight matrix as stored in GGUF: `n_out` rows of `n_in` elements, row-major, in `ty`.
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    pub ty: GgmlType,
    pub data: &'a [u8],
    pub n_in: usize,
    pub n_out: usize,
}

impl<'a> QMatrix<'a> {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.n_in / self.ty.block_size() * self.ty.type_size()
    }

    pub fn row(&self, i: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[i * rb..(i + 1) * rb]
    }
}

/// An activation row in the form the weight type's dot product consumes (ggml's `vec_dot_type`).
#[derive(Debug, Clone)]
pub enum QuantizedActivation {
    Q8_0(Vec<BlockQ8_0>),
    Q8_1(Vec<BlockQ8_1>),
    /// F16 or BF16 activations, kept as the rounded f32 values.
    Rounded(Vec<f32>),
    F32(Vec<f32>),
}

/// Quantizes one activation row for a product with weights of type `ty`.
pub fn quantize_activation(ty: GgmlType, x: &[f32]) -> QuantizedActivation {
    match ty {
        GgmlType::Q4_1 => QuantizedActivation::Q8_1(quantize_row_q8_1(x)),
        GgmlType::Q4_0 | GgmlType::Q8_0 => QuantizedActivation::Q8_0(quantize_row_q8_0(x)),
        GgmlType::F16 => QuantizedActivation::Rounded(x.iter().map(|&v| f16_round(v)).collect()),
        GgmlType::BF16 => {
            QuantizedActivation::Rounded(x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect())
        }
        GgmlType::F32 => QuantizedActivation::F32(x.to_vec()),
        other => panic!("matmul on {} weights is not supported (checked at model load)", other.name()),
    }
}

/// Whether `matmul` supports weights of this type. Model loading checks this so that
/// `quantize_activation` never meets an unsupported type.
pub fn supports(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_1 | GgmlType::Q4_0 | GgmlType::Q8_0 | GgmlType::F16 | GgmlType::BF16 | GgmlType::F32)
}

/// Dot product of weight row `w` (type `ty`) with a quantized activation.
#[inline(always)]
pub fn vec_dot(ty: GgmlType, w: &[u8], a: &QuantizedActivation) -> f32 {
    match (ty, a) {
        (GgmlType::Q4_1, QuantizedActivation::Q8_1(b)) => vec_dot_q4_1_q8_1(w, b),
        (GgmlType::Q4_0, QuantizedActivation::Q8_0(b)) => vec_dot_q4_0_q8_0(w, b),
        (GgmlType::Q8_0, QuantizedActivation::Q8_0(b)) => vec_dot_q8_0_q8_0(w, b),
        (GgmlType::F16, QuantizedActivation::Rounded(b)) => vec_dot_f16(w, b),
        (GgmlType::BF16, QuantizedActivation::Rounded(b)) => vec_dot_bf16(w, b),
        (GgmlType::F32, QuantizedActivation::F32(b)) => vec_dot_f32(w, b),
        _ => unreachable!("activation quantized for a different weight type"),
    }
}

/// Output features computed per parallel task. Fixed, so work splitting never depends on the
/// thread count (and results never do: each element is one sequential dot product).
const ROWS_PER_TASK: usize = 64;

/// `matmul`: W (n_out, n_in) @ x (n_tok, n_in)ᵀ -> out (n_tok, n_out), ggml numerics.
///
/// Runs on the current rayon pool; results are bitwise independent of its size, of `n_tok`
/// and of the CPU's vector extensions: the integer dot products are exact, and the float
/// arithmetic per block is the same scalar sequence as in [`vec_dot_q4_1_q8_1`] and friends
/// (Rust never contracts `a * b + c` into an FMA).
pub fn matmul(w: &QMatrix<'_>, x: &[f32], n_tok: usize, out: &mut [f32]) {
    assert_eq!(x.len(), n_tok * w.n_in, "matmul input has wrong length");
    assert_eq!(out.len(), n_tok * w.n_out, "matmul output has wrong length");
    let acts: Vec<QuantizedActivation> = (0..n_tok)
        .into_par_iter()
        .map(|t| quantize_activation(w.ty, &x[t * w.n_in..(t + 1) * w.n_in]))
        .collect();
    // Transposed scratch: tasks own disjoint ranges of output features for all tokens.
    let mut scratch = vec![0.0f32; w.n_out * n_tok];
    scratch
        .par_chunks_mut(ROWS_PER_TASK * n_tok)
        .enumerate()
        .for_each(|(task, chunk)| matmul_task(w, &acts, task * ROWS_PER_TASK, chunk, n_tok));
    for t in 0..n_tok {
        for o in 0..w.n_out {
            out[t * w.n_out + o] = scratch[o * n_tok + t];
        }
    }
}

fn matmul_task(w: &QMatrix<'_>, acts: &[QuantizedActivation], first: usize, chunk: &mut [f32], n_tok: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { matmul_task_avx2(w, acts, first, chunk, n_tok) };
            return;
        }
    }
    matmul_task_generic(w, acts, first, chunk, n_tok)
}

/// The same code as [`matmul_task_generic`], compiled with AVX2 enabled so the integer dot
/// products vectorize. Bitwise identical results (see [`matmul`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn matmul_task_avx2(w: &QMatrix<'_>, acts: &[QuantizedActivation], first: usize, chunk: &mut [f32], n_tok: usize) {
    matmul_task_generic(w, acts, first, chunk, n_tok)
}

/// One weight row unpacked once for all tokens: per block the weight scale, the Q4_1 minimum
/// (0 otherwise) and 32 signed 8-bit quants.
struct UnpackedRow {
    d: Vec<f32>,
    m: Vec<f32>,
    q: Vec<[i8; QK]>,
}

#[inline(always)]
fn unpack_row(ty: GgmlType, row: &[u8], into: &mut UnpackedRow) -> bool {
    let (bs, off) = match ty {
        GgmlType::Q4_1 => (20, 4),
        GgmlType::Q4_0 => (18, 2),
        GgmlType::Q8_0 => (34, 2),
        _ => return false,
    };
    into.d.clear();
    into.m.clear();
    into.q.clear();
    for blk in row.chunks_exact(bs) {
        into.d.push(read_f16(blk, 0));
        match ty {
            GgmlType::Q4_1 => {
                into.m.push(read_f16(blk, 2));
                into.q.push(unpack_nibbles(&blk[off..bs], 0));
            }
            GgmlType::Q4_0 => into.q.push(unpack_nibbles(&blk[off..bs], 8)),
            _ => {
                let mut q = [0i8; QK];
                for (dst, &src) in q.iter_mut().zip(&blk[off..bs]) {
                    *dst = src as i8;
                }
                into.q.push(q);
            }
        }
    }
    true
}

#[inline(always)]
fn matmul_task_generic(w: &QMatrix<'_>, acts: &[QuantizedActivation], first: usize, chunk: &mut [f32], n_tok: usize) {
    let mut row_buf = UnpackedRow { d: Vec::new(), m: Vec::new(), q: Vec::new() };
    for (r, dst) in chunk.chunks_mut(n_tok).enumerate() {
        let row = w.row(first + r);
        // One token (decode): dot straight from the packed row. Several (prefill): unpack the
        // row once and reuse it for every token.
        if acts.len() == 1 || !unpack_row(w.ty, row, &mut row_buf) {
            for (t, a) in acts.iter().enumerate() {
                dst[t] = vec_dot(w.ty, row, a);
            }
            continue;
        }
        let u = &row_buf;
        for (t, a) in acts.iter().enumerate() {
            // The same per-block arithmetic, in the same order, as vec_dot_q4_1_q8_1,
            // vec_dot_q4_0_q8_0 and vec_dot_q8_0_q8_0.
            dst[t] = match a {
                QuantizedActivation::Q8_1(b) => {
                    let (mut acc, mut summs) = (0.0f32, 0.0f32);
                    for i in 0..b.len() {
                        acc += (u.d[i] * b[i].d) * dot_i8(&u.q[i], &b[i].qs) as f32;
                        summs += u.m[i] * b[i].s;
                    }
                    acc + summs
                }
                QuantizedActivation::Q8_0(b) => {
                    let mut acc = 0.0f32;
                    for i in 0..b.len() {
                        acc += (u.d[i] * b[i].d) * dot_i8(&u.q[i], &b[i].qs) as f32;
                    }
                    acc
                }
                _ => unreachable!("quantized weights always get 8-bit activations"),
            };
        }
    }
}

/// The same product in plain f32 over exactly dequantized weights (no activation rounding):
/// a second reference used to show what the 8-bit activation step contributes.
pub fn matmul_exact_f32(w_dequant: &[f32], n_in: usize, n_out: usize, x: &[f32], n_tok: usize, out: &mut [f32]) {
    for t in 0..n_tok {
        let xr = &x[t * n_in..(t + 1) * n_in];
        for o in 0..n_out {
            let wr = &w_dequant[o * n_in..(o + 1) * n_in];
            out[t * n_out + o] = wr.iter().zip(xr).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>() as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_bits().to_le_bytes()
    }

    #[test]
    fn q8_1_block_matches_hand_computation() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 15.0).collect();
        let b = &quantize_row_q8_1(&x)[0];
        // amax 16 -> q(-15) = round(-15 * 127/16) = round(-119.06) = -119; q(16) = 127
        assert_eq!(b.qs[0], -119);
        assert_eq!(b.qs[31], 127);
        assert_eq!(b.d, f16_round(16.0 / 127.0));
        let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
        assert_eq!(b.s, f16_round(16.0 / 127.0 * sum as f32));
    }

    #[test]
    fn zero_block_quantizes_to_zero() {
        let b = &quantize_row_q8_0(&[0.0; 32])[0];
        assert_eq!(b.d, 0.0);
        assert!(b.qs.iter().all(|&q| q == 0));
    }

    #[test]
    fn q4_1_dot_matches_dequantized_dot_on_exact_activations() {
        // Activations that quantize exactly (integers up to 127 with amax 127 -> d = 1).
        let x: Vec<f32> = (0..32).map(|i| ((i * 37) % 255) as f32 - 127.0).collect();
        let mut xs = x.clone();
        xs[0] = 127.0;
        let a = quantize_row_q8_1(&xs);
        assert_eq!(a[0].d, 1.0);
        let mut blk = Vec::new();
        blk.extend_from_slice(&f16_bytes(0.5));
        blk.extend_from_slice(&f16_bytes(-2.0));
        let nibbles: Vec<u8> = (0..16).map(|j| (j as u8) | (((15 - j) as u8) << 4)).collect();
        blk.extend_from_slice(&nibbles);
        let got = vec_dot_q4_1_q8_1(&blk, &a);
        let mut want = 0.0f64;
        for j in 0..32 {
            let q = if j < 16 { j as f64 } else { (15 - (j - 16)) as f64 };
            want += (q * 0.5 - 2.0) * xs[j] as f64;
        }
        assert!((got as f64 - want).abs() < 1e-3, "got {got}, want {want}");
    }

    #[test]
    fn matmul_is_independent_of_thread_count() {
        let n_in = 64;
        let n_out = 200;
        let mut w = Vec::new();
        for r in 0..n_out * n_in / 32 {
            w.extend_from_slice(&f16_bytes(0.01 * (r % 7) as f32 + 0.001));
            w.extend_from_slice(&f16_bytes(-0.02));
            w.extend((0..16).map(|j| ((r * 31 + j * 7) % 256) as u8));
        }
        let m = QMatrix { ty: GgmlType::Q4_1, data: &w, n_in, n_out };
        let x: Vec<f32> = (0..3 * n_in).map(|i| ((i * 7919) % 1000) as f32 / 333.0 - 1.5).collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut out = vec![0.0f32; 3 * n_out];
            pool.install(|| matmul(&m, &x, 3, &mut out));
            out
        };
        let one = run(1);
        for t in [2, 3, 4] {
            assert_eq!(one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), run(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }
        // Every element equals the reference dot product bit for bit.
        for t in 0..3 {
            let a = quantize_activation(GgmlType::Q4_1, &x[t * n_in..(t + 1) * n_in]);
            for o in 0..n_out {
                assert_eq!(one[t * n_out + o].to_bits(), vec_dot(GgmlType::Q4_1, m.row(o), &a).to_bits());
            }
        }
        // Batch independence: token 1 alone gives the same bits as inside the batch of 3.
        let mut single = vec![0.0f32; n_out];
        matmul(&m, &x[n_in..2 * n_in], 1, &mut single);
        assert_eq!(&one[n_out..2 * n_out], &single[..]);
    }
}
