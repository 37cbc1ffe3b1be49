//! Quantized matrix products exactly as ggml's CPU backend computes them for one token: the
//! activation row is first quantized to 8 bits per block of 32 (Q8_1 for Q4_1/Q5_1 weights,
//! Q8_0 for Q4_0/Q5_0/Q8_0/IQ4_NL weights; Q8_K, in `kquant`, for the k-quants; F32 weights
//! take it as is), then each output is one call of the weight
//! type's `ggml_vec_dot_*` kernel: per block, integer products summed in eight lanes of four
//! adjacent elements, each lane scaled and accumulated with a fused multiply-add, the lanes
//! reduced at the end in ggml's fixed order (`lanes::hsum_float_8`).
//!
//! This is the numerical spec for the CUDA kernels of the same names, written lane by lane in
//! plain Rust; `simd` holds the AVX2 twins used when the CPU has AVX2 and FMA (tests prove them
//! bit-identical). It knows block layouts and arithmetic, nothing of models. Every output element
//! is produced by one call of one dot product, so results are bitwise identical for any thread
//! count and any batch size, and equal to llama.cpp's one-token path (`vec_dot`; for n >= 2
//! llama.cpp routes F32 and Q8_0 products through llamafile's tinyBLAS instead, whose order
//! differs: see `replay::bounds`).

use crate::gguf::quant::KVALUES_IQ4NL;
use crate::gguf::GgmlType;
/// The products take the model's matrices as GGUF stores them.
pub use crate::gguf::QMatrix;
use half::{bf16, f16};

use super::kquant::{self, BlockQ8K};
use super::lanes::{hsum_float_8, reduce_f32x8_4, F32x8};

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
#[inline(always)]
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
#[inline(always)]
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

/// The integer part of one 32-block's dot product as ggml's AVX2 kernels form it: eight lanes,
/// lane `k` the sum of the four products of elements `4k..4k+4` (`mul_sum_us8_pairs_float` /
/// `mul_sum_i8_pairs_float`: `maddubs` of adjacent byte pairs, then `madd` of adjacent pairs),
/// converted to float. Exact: the integers are far below 2^24.
#[inline(always)]
pub fn lane_sums(q: &[i8; QK], a: &[i8; QK]) -> F32x8 {
    let mut out = [0.0f32; 8];
    for (k, o) in out.iter_mut().enumerate() {
        let mut s = 0i32;
        for j in 4 * k..4 * k + 4 {
            s += q[j] as i32 * a[j] as i32;
        }
        *o = s as f32;
    }
    out
}

/// Unpacks the 16 bytes of 4-bit quants of one block: low nibbles are elements 0..16, high
/// nibbles 16..32 (ggml's layout for Q4_0 and Q4_1, and `bytes_from_nibbles_32`'s byte order).
#[inline(always)]
fn unpack_nibbles(qs: &[u8], offset: i8) -> [i8; QK] {
    let mut out = [0i8; QK];
    for j in 0..QK / 2 {
        out[j] = (qs[j] & 0x0F) as i8 - offset;
        out[j + QK / 2] = (qs[j] >> 4) as i8 - offset;
    }
    out
}

#[inline(always)]
fn q8_quants(qs: &[u8]) -> [i8; QK] {
    let mut q = [0i8; QK];
    for (dst, &src) in q.iter_mut().zip(qs) {
        *dst = src as i8;
    }
    q
}

/// `acc[k] = fma(d, sums[k], acc[k])` for the eight lanes (`_mm256_fmadd_ps(d, q, acc)`).
#[inline(always)]
fn fma_lanes(acc: &mut F32x8, d: f32, sums: &F32x8) {
    for k in 0..8 {
        acc[k] = d.mul_add(sums[k], acc[k]);
    }
}

/// `ggml_vec_dot_q4_1_q8_1` (ggml-cpu/arch/x86/quants.c, AVX2 path): one Q4_1 weight row (20
/// bytes a block: f16 d, f16 m, 16 bytes of nibbles) against a Q8_1 activation row. Per block
/// the lanes get `fma(d_w * d_a, lane_sum, acc)`; the minimum terms go into a scalar
/// `summs = fma(m_w, s_a, summs)` (GCC contracts `summs += m*s`: `vfmadd231ss` in the reference
/// build); the result is `hsum_float_8(acc) + summs`.
#[inline(always)]
pub fn vec_dot_q4_1_q8_1(w: &[u8], a: &[BlockQ8_1]) -> f32 {
    const BS: usize = 20;
    debug_assert_eq!(w.len(), a.len() * BS);
    let mut acc = [0.0f32; 8];
    let mut summs = 0.0f32;
    for (blk, ab) in w.chunks_exact(BS).zip(a) {
        let (d, m) = (read_f16(blk, 0), read_f16(blk, 2));
        summs = m.mul_add(ab.s, summs);
        let q = unpack_nibbles(&blk[4..20], 0);
        fma_lanes(&mut acc, d * ab.d, &lane_sums(&q, &ab.qs));
    }
    hsum_float_8(acc) + summs
}

/// `ggml_vec_dot_q4_0_q8_0` (AVX2 path): Q4_0 (18 bytes a block: f16 d, nibbles offset by 8)
/// against Q8_0; per block `fma(d_w * d_a, lane_sum, acc)`, then `hsum_float_8`.
#[inline(always)]
pub fn vec_dot_q4_0_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    const BS: usize = 18;
    debug_assert_eq!(w.len(), a.len() * BS);
    let mut acc = [0.0f32; 8];
    for (blk, ab) in w.chunks_exact(BS).zip(a) {
        let q = unpack_nibbles(&blk[2..18], 8);
        fma_lanes(&mut acc, read_f16(blk, 0) * ab.d, &lane_sums(&q, &ab.qs));
    }
    hsum_float_8(acc)
}

/// `ggml_vec_dot_q8_0_q8_0` (AVX2 path): Q8_0 (34 bytes a block: f16 d, 32 i8) against Q8_0.
#[inline(always)]
pub fn vec_dot_q8_0_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    const BS: usize = 34;
    debug_assert_eq!(w.len(), a.len() * BS);
    let mut acc = [0.0f32; 8];
    for (blk, ab) in w.chunks_exact(BS).zip(a) {
        fma_lanes(&mut acc, read_f16(blk, 0) * ab.d, &lane_sums(&q8_quants(&blk[2..34]), &ab.qs));
    }
    hsum_float_8(acc)
}

/// The 32 signed 5-bit values of a Q5_0 block (`block_q5_0 { f16 d; u8 qh[4]; u8 qs[16] }`):
/// nibble `j` (low nibbles are elements 0..16, high 16..32) with bit `j` of the little-endian
/// `qh` as its fifth bit, minus 16. ggml's AVX2 kernel builds the same bytes with
/// `bytes_from_bits_32` and `andnot(.., 0xF0)` (`nibble | 0xF0` as i8 is `nibble - 16`).
#[inline(always)]
fn q5_values(qh: u32, qs: &[u8], offset: i8) -> [i8; QK] {
    let mut q = unpack_nibbles(qs, 0);
    for (j, v) in q.iter_mut().enumerate() {
        *v = (*v | ((((qh >> j) & 1) as i8) << 4)) - offset;
    }
    q
}

/// `ggml_vec_dot_q5_0_q8_0` (AVX2 path): Q5_0 (22 bytes a block: f16 d, u32 qh, 16 bytes of
/// nibbles; values -16..15) against Q8_0; per block `fma(d_w * d_a, lane_sum, acc)`
/// (`mul_sum_i8_pairs_float`), then `hsum_float_8`, like Q4_0.
#[inline(always)]
pub fn vec_dot_q5_0_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    const BS: usize = 22;
    debug_assert_eq!(w.len(), a.len() * BS);
    let mut acc = [0.0f32; 8];
    for (blk, ab) in w.chunks_exact(BS).zip(a) {
        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
        let q = q5_values(qh, &blk[6..22], 16);
        fma_lanes(&mut acc, read_f16(blk, 0) * ab.d, &lane_sums(&q, &ab.qs));
    }
    hsum_float_8(acc)
}

/// `ggml_vec_dot_q5_1_q8_1` (AVX2 path): Q5_1 (24 bytes a block: f16 d, f16 m, u32 qh, 16
/// bytes of nibbles; values 0..31) against Q8_1, like Q4_1: per block
/// `acc = fma(lane_sum, d_w * d_a, acc)` (`mul_sum_us8_pairs_float`), the minimum terms in
/// `summs = fma(m_w, s_a, summs)` (GCC contracts `summs += m*s`), `hsum_float_8(acc) + summs`.
#[inline(always)]
pub fn vec_dot_q5_1_q8_1(w: &[u8], a: &[BlockQ8_1]) -> f32 {
    const BS: usize = 24;
    debug_assert_eq!(w.len(), a.len() * BS);
    let mut acc = [0.0f32; 8];
    let mut summs = 0.0f32;
    for (blk, ab) in w.chunks_exact(BS).zip(a) {
        let (d, m) = (read_f16(blk, 0), read_f16(blk, 2));
        summs = m.mul_add(ab.s, summs);
        let qh = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
        let q = q5_values(qh, &blk[8..24], 0);
        fma_lanes(&mut acc, d * ab.d, &lane_sums(&q, &ab.qs));
    }
    hsum_float_8(acc) + summs
}

/// `ggml_vec_dot_iq4_nl_q8_0` (AVX2 path): IQ4_NL (18 bytes a block: f16 d, 16 bytes of
/// nibbles indexing `kvalues_iq4nl`) against Q8_0. Unlike the other 32-block kernels it walks
/// the blocks in pairs with two accumulators (even blocks into `acc1`, odd into `acc2`, each
/// `fma(d_a * d_w, lane_sum, acc)`), reduces `hsum_float_8(acc1 + acc2)`, and handles a last
/// unpaired block in the scalar tail: `sumf = fma(d_a * d_w, (sumi1 + sumi2) as f32, sumf)`
/// (GCC contracts `sumf += d * (sumi1 + sumi2)`), the integer sum exact.
#[inline(always)]
pub fn vec_dot_iq4_nl_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    const BS: usize = 18;
    debug_assert_eq!(w.len(), a.len() * BS);
    let values = |blk: &[u8]| -> [i8; QK] {
        let mut q = [0i8; QK];
        for j in 0..QK / 2 {
            q[j] = KVALUES_IQ4NL[(blk[2 + j] & 0x0F) as usize];
            q[j + QK / 2] = KVALUES_IQ4NL[(blk[2 + j] >> 4) as usize];
        }
        q
    };
    let nb = a.len();
    let (mut acc1, mut acc2) = ([0.0f32; 8], [0.0f32; 8]);
    let mut ib = 0;
    while ib + 1 < nb {
        for (acc, i) in [(&mut acc1, ib), (&mut acc2, ib + 1)] {
            let blk = &w[i * BS..(i + 1) * BS];
            fma_lanes(acc, a[i].d * read_f16(blk, 0), &lane_sums(&values(blk), &a[i].qs));
        }
        ib += 2;
    }
    let mut both = [0.0f32; 8];
    for k in 0..8 {
        both[k] = acc1[k] + acc2[k];
    }
    let mut sumf = hsum_float_8(both);
    if ib < nb {
        let blk = &w[ib * BS..(ib + 1) * BS];
        let q = values(blk);
        let sumi: i32 = q.iter().zip(&a[ib].qs).map(|(&x, &y)| x as i32 * y as i32).sum();
        sumf = (a[ib].d * read_f16(blk, 0)).mul_add(sumi as f32, sumf);
    }
    sumf
}

/// `ggml_vec_dot_f32` (ggml-cpu/vec.cpp, AVX: `GGML_F32_STEP` 32, `GGML_F32_EPR` 8): four
/// 8-lane accumulators over each 32 elements, `acc[j][l] = fma(x, y, acc[j][l])` for element
/// `32i + 8j + l`, reduced by `GGML_F32x8_REDUCE`. The `n % 32` leftovers are added to the
/// reduced sum as GCC compiled the scalar loop `sumf += x[i]*y[i]` in the reference build: by
/// eights and then fours with products rounded and added in order (its in-order vectorized
/// reduction), the last `n % 4` with fused multiply-adds.
#[inline(always)]
pub fn vec_dot_f32(x: &[f32], y: &[f32]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let n = x.len();
    let np = n & !31;
    let mut acc = [[0.0f32; 8]; 4];
    for i in (0..np).step_by(32) {
        for (j, a) in acc.iter_mut().enumerate() {
            for l in 0..8 {
                let e = i + 8 * j + l;
                a[l] = x[e].mul_add(y[e], a[l]);
            }
        }
    }
    let mut sum = reduce_f32x8_4(acc);
    let mut i = np;
    while n - i >= 8 {
        for e in i..i + 8 {
            sum += x[e] * y[e];
        }
        i += 8;
    }
    if n - i >= 4 {
        for e in i..i + 4 {
            sum += x[e] * y[e];
        }
        i += 4;
    }
    for e in i..n {
        sum = x[e].mul_add(y[e], sum);
    }
    sum
}

/// F16 weights · activation rounded to F16, accumulated in f32 in index order. Not yet
/// ggml's `ggml_vec_dot_f16` order (no model used here has F16 matrices; see `supports`).
#[inline(always)]
pub fn vec_dot_f16(w: &[u8], a: &[f32]) -> f32 {
    let mut acc = 0.0f32;
    for (j, &x) in a.iter().enumerate() {
        acc += read_f16(w, 2 * j) * x;
    }
    acc
}

/// BF16 weights · activation rounded to BF16, accumulated in f32 in index order. Not yet
/// ggml's `ggml_vec_dot_bf16` order (see `supports`).
#[inline(always)]
pub fn vec_dot_bf16(w: &[u8], a: &[f32]) -> f32 {
    let mut acc = 0.0f32;
    for (j, &x) in a.iter().enumerate() {
        let wv = bf16::from_bits(u16::from_le_bytes([w[2 * j], w[2 * j + 1]])).to_f32();
        acc += wv * x;
    }
    acc
}

/// `ggml_vec_dot_f32` on a weight row stored as little-endian bytes.
#[inline(always)]
pub fn vec_dot_f32_bytes(w: &[u8], a: &[f32]) -> f32 {
    let row: Vec<f32> = w.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    vec_dot_f32(&row, a)
}

/// An activation row in the form the weight type's dot product consumes (ggml's `vec_dot_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum QuantizedActivation {
    Q8_0(Vec<BlockQ8_0>),
    Q8_1(Vec<BlockQ8_1>),
    /// 256-element blocks for the k-quants (`kquant::quantize_row_q8_K`).
    Q8K(Vec<BlockQ8K>),
    /// F16 or BF16 activations, kept as the rounded f32 values.
    Rounded(Vec<f32>),
    F32(Vec<f32>),
}

/// Quantizes one activation row for a product with weights of type `ty`.
#[inline(always)]
pub fn quantize_activation(ty: GgmlType, x: &[f32]) -> QuantizedActivation {
    match ty {
        // ggml-cpu.c `type_traits_cpu[..].vec_dot_type`.
        GgmlType::Q4_1 | GgmlType::Q5_1 => QuantizedActivation::Q8_1(quantize_row_q8_1(x)),
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4_NL => QuantizedActivation::Q8_0(quantize_row_q8_0(x)),
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => QuantizedActivation::Q8K(kquant::quantize_row_q8_K(x)),
        GgmlType::F16 => QuantizedActivation::Rounded(x.iter().map(|&v| f16_round(v)).collect()),
        GgmlType::BF16 => QuantizedActivation::Rounded(x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()),
        GgmlType::F32 => QuantizedActivation::F32(x.to_vec()),
        other => panic!("matmul on {} weights is not supported (checked at model load)", other.name()),
    }
}

/// Whether `simd::matmul` supports weights of this type: one of [`crate::model::MATRIX_TYPES`],
/// which model loading checks so that `quantize_activation` never meets an unsupported type. A
/// matrix's row length must also be a multiple of the type's block size (256 for the k-quants),
/// which model loading checks too.
pub fn supports(ty: GgmlType) -> bool {
    crate::model::MATRIX_TYPES.contains(&ty)
}

/// Dot product of weight row `w` (type `ty`) with a quantized activation: the spec, lane by
/// lane. `simd::matmul` calls the AVX2 twin where the CPU has one.
#[inline(always)]
pub fn vec_dot(ty: GgmlType, w: &[u8], a: &QuantizedActivation) -> f32 {
    match (ty, a) {
        (GgmlType::Q4_1, QuantizedActivation::Q8_1(b)) => vec_dot_q4_1_q8_1(w, b),
        (GgmlType::Q4_0, QuantizedActivation::Q8_0(b)) => vec_dot_q4_0_q8_0(w, b),
        (GgmlType::Q8_0, QuantizedActivation::Q8_0(b)) => vec_dot_q8_0_q8_0(w, b),
        (GgmlType::Q5_0, QuantizedActivation::Q8_0(b)) => vec_dot_q5_0_q8_0(w, b),
        (GgmlType::Q5_1, QuantizedActivation::Q8_1(b)) => vec_dot_q5_1_q8_1(w, b),
        (GgmlType::IQ4_NL, QuantizedActivation::Q8_0(b)) => vec_dot_iq4_nl_q8_0(w, b),
        (GgmlType::Q2_K, QuantizedActivation::Q8K(b)) => kquant::vec_dot_q2_K_q8_K(w, b),
        (GgmlType::Q3_K, QuantizedActivation::Q8K(b)) => kquant::vec_dot_q3_K_q8_K(w, b),
        (GgmlType::Q4_K, QuantizedActivation::Q8K(b)) => kquant::vec_dot_q4_K_q8_K(w, b),
        (GgmlType::Q5_K, QuantizedActivation::Q8K(b)) => kquant::vec_dot_q5_K_q8_K(w, b),
        (GgmlType::Q6_K, QuantizedActivation::Q8K(b)) => kquant::vec_dot_q6_K_q8_K(w, b),
        (GgmlType::F16, QuantizedActivation::Rounded(b)) => vec_dot_f16(w, b),
        (GgmlType::BF16, QuantizedActivation::Rounded(b)) => vec_dot_bf16(w, b),
        (GgmlType::F32, QuantizedActivation::F32(b)) => vec_dot_f32_bytes(w, b),
        _ => unreachable!("activation quantized for a different weight type"),
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
    fn every_matrix_type_the_model_accepts_has_a_product() {
        for &ty in crate::model::MATRIX_TYPES {
            let x = vec![0.5f32; 256];
            let a = quantize_activation(ty, &x);
            let row = vec![0u8; 256 / ty.block_size() * ty.type_size()];
            assert_eq!(vec_dot(ty, &row, &a), 0.0, "{}", ty.name());
        }
    }
}
