//! The k-quant matrix products exactly as ggml's CPU backend computes them for one token: the
//! activation row is quantized to Q8_K (`quantize_row_q8_K`: 256 values a block, an f32 scale
//! and the sums of each 16 quants), then each output is one call of the weight type's
//! `ggml_vec_dot_*_q8_K` kernel, written here lane by lane after its AVX2 path
//! (ggml-cpu/arch/x86/quants.c).
//!
//! All five kernels share one shape. Per 256-block, the weight quants are multiplied with the
//! activation quants as integers: each 32-element chunk gives eight lanes of four adjacent
//! products (`_mm256_maddubs_epi16`, then `_mm256_madd_epi16` with the chunk's sub-block scales,
//! which pairs the products of elements `4k..4k+4`), and the chunks' lanes are summed as 32-bit
//! integers. That integer part is exact (no intermediate overflows or saturates for any valid
//! block and any Q8_K row; see each kernel), so its internal order is free; what must follow
//! ggml is the float part: which integer lands in which lane, the f32 scales `d` and `dmin`,
//! one fused multiply-add per lane and block, where the minimum terms go, and the final
//! reduction (`hsum_float_8`). This is the spec for the CUDA kernels of the same names.
//!
//! Names keep ggml's capital `K` so each function reads as the ggml function it follows.
#![allow(non_snake_case)]

use half::f16;

use super::lanes::{hsum_float_8, F32x8};

/// Elements per k-quant super-block (`QK_K`).
pub const QK_K: usize = 256;

/// One activation block quantized to Q8_K (ggml `block_q8_K { f32 d; i8 qs[256]; i16
/// bsums[16] }`): `x ≈ d * qs`, `bsums[i]` the sum of `qs[16i..16i+16]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

/// `quantize_row_q8_K`: x (k,) -> k/256 blocks; `k` must be a multiple of 256.
///
/// On x86 ggml-cpu's `quantize_row_q8_K` is `quantize_row_q8_K_ref` (ggml-quants.c, compiled
/// into ggml-base without FMA): `max` is the first element of largest magnitude (sign kept),
/// `iscale = -127/max`, `q = min(127, nearest_int(iscale * x))` (round half to even), and the
/// stored scale is `1/iscale`. An all-zero block gets `d = 0` and zero quants; ggml leaves its
/// `bsums` unwritten there, which cannot matter (every kernel multiplies them by a zero scale
/// and adds the zero to a sum that is already +0 or nonzero), so they are 0 here.
#[inline(always)]
pub fn quantize_row_q8_K(x: &[f32]) -> Vec<BlockQ8K> {
    assert_eq!(x.len() % QK_K, 0, "row length {} is not a multiple of {QK_K}", x.len());
    x.chunks_exact(QK_K)
        .map(|xb| {
            let mut b = BlockQ8K { d: 0.0, qs: [0; QK_K], bsums: [0; QK_K / 16] };
            let (mut amax, mut max) = (0.0f32, 0.0f32);
            for &v in xb {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            if amax == 0.0 {
                return b;
            }
            let iscale = -127.0f32 / max;
            for (q, &v) in b.qs.iter_mut().zip(xb) {
                // ggml's `nearest_int` (x + 1.5·2^23, low mantissa bits) is round-half-even
                // for |x| < 2^22; here |x| <= 127 (plus rounding).
                *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
            }
            for (s, chunk) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
                *s = chunk.iter().map(|&q| q as i16).sum();
            }
            b.d = 1.0 / iscale;
            b
        })
        .collect()
}

#[inline(always)]
fn read_f16(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// `acc[k] = fma(d, sums[k] as f32, acc[k])`: `_mm256_fmadd_ps(set1(d), cvtepi32_ps(sumi), acc)`.
/// `i32 as f32` rounds to nearest even, as `cvtepi32_ps` does (only Q6_K's extreme random
/// blocks exceed 2^24, where it rounds at all).
#[inline(always)]
fn fma_lanes(acc: &mut F32x8, d: f32, sums: &[i32; 8]) {
    for k in 0..8 {
        acc[k] = d.mul_add(sums[k] as f32, acc[k]);
    }
}

/// The eight lanes of one 32-element chunk: lane `k` is the sum of the products of elements
/// `4k..4k+4` (`maddubs` of adjacent pairs, then `madd` of adjacent pair sums).
#[inline(always)]
fn quad_sums(q: &[i8], a: &[i8]) -> [i32; 8] {
    let mut out = [0i32; 8];
    for (k, o) in out.iter_mut().enumerate() {
        for e in 4 * k..4 * k + 4 {
            *o += q[e] as i32 * a[e] as i32;
        }
    }
    out
}

/// Integer lanes of a super-block whose sub-blocks are 16 elements (Q2_K, Q3_K, Q6_K): chunk
/// `c` (elements `32c..32c+32`) contributes `scales[2c] * quad` to lanes 0..4 (its first 16
/// elements) and `scales[2c+1] * quad` to lanes 4..8 (`get_scale_shuffle_q3k` /
/// `get_scale_shuffle` put the two scales in the two 128-bit halves).
#[inline(always)]
fn scaled_lanes_16(q: &[i8; QK_K], a: &[i8; QK_K], scales: &[i32; 16]) -> [i32; 8] {
    let mut sumi = [0i32; 8];
    for c in 0..QK_K / 32 {
        let quads = quad_sums(&q[32 * c..32 * c + 32], &a[32 * c..32 * c + 32]);
        for k in 0..8 {
            sumi[k] += scales[2 * c + k / 4] * quads[k];
        }
    }
    sumi
}

/// Integer lanes of a super-block whose sub-blocks are 32 elements (Q4_K, Q5_K): chunk `c`
/// contributes `scales[c] * quad` to every lane (`get_scale_shuffle_k4` broadcasts one scale).
#[inline(always)]
fn scaled_lanes_32(q: &[i8; QK_K], a: &[i8; QK_K], scales: &[i32; 8]) -> [i32; 8] {
    let mut sumi = [0i32; 8];
    for c in 0..QK_K / 32 {
        let quads = quad_sums(&q[32 * c..32 * c + 32], &a[32 * c..32 * c + 32]);
        for k in 0..8 {
            sumi[k] += scales[c] * quads[k];
        }
    }
    sumi
}

/// The 8 six-bit scales and 8 mins of Q4_K/Q5_K, unpacked from 12 bytes as ggml's `utmp`
/// shuffle (and `get_scale_min_k4`) does.
#[inline(always)]
fn scales_mins_k4(s: &[u8]) -> ([i32; 8], [i32; 8]) {
    let (mut sc, mut mn) = ([0i32; 8], [0i32; 8]);
    for j in 0..8 {
        let (a, b) = if j < 4 { (s[j] & 63, s[j + 4] & 63) } else { ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4)) };
        sc[j] = a as i32;
        mn[j] = b as i32;
    }
    (sc, mn)
}

/// Block sizes in bytes.
pub const BLOCK_Q2_K: usize = 84;
pub const BLOCK_Q3_K: usize = 110;
pub const BLOCK_Q4_K: usize = 144;
pub const BLOCK_Q5_K: usize = 176;
pub const BLOCK_Q6_K: usize = 210;

/// `ggml_vec_dot_q2_K_q8_K` (AVX2 path). Q2_K block: `u8 scales[16]` (low nibble scale, high
/// nibble min, per 16 elements), `u8 qs[64]` (element `128j + 32l + b` is bits `2l..2l+2` of
/// `qs[32j + b]`), f16 `d`, f16 `dmin`. Per block, first the minimum terms into the same lanes:
/// lane `k` gets `fma(dmin, mins[2k]*bsums[2k] + mins[2k+1]*bsums[2k+1], acc)` with
/// `dmin = -d_a * dmin_w` (`_mm256_madd_epi16(mins, bsums)`); then `fma(d_a * d_w, sumi, acc)`.
/// Integers stay below 2^18.
pub fn vec_dot_q2_K_q8_K(w: &[u8], a: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(w.len(), a.len() * BLOCK_Q2_K);
    let mut acc = [0.0f32; 8];
    for (blk, y) in w.chunks_exact(BLOCK_Q2_K).zip(a) {
        let d = y.d * read_f16(blk, 80);
        let dmin = -y.d * read_f16(blk, 82);
        let (mut scales, mut mins) = ([0i32; 16], [0i32; 16]);
        for i in 0..16 {
            scales[i] = (blk[i] & 0xF) as i32;
            mins[i] = (blk[i] >> 4) as i32;
        }
        let mut prod = [0i32; 8];
        for (k, p) in prod.iter_mut().enumerate() {
            *p = mins[2 * k] * y.bsums[2 * k] as i32 + mins[2 * k + 1] * y.bsums[2 * k + 1] as i32;
        }
        fma_lanes(&mut acc, dmin, &prod);
        let qs = &blk[16..80];
        let mut q = [0i8; QK_K];
        for (e, v) in q.iter_mut().enumerate() {
            let (j, l, b) = (e / 128, (e / 32) % 4, e % 32);
            *v = ((qs[32 * j + b] >> (2 * l)) & 3) as i8;
        }
        fma_lanes(&mut acc, d, &scaled_lanes_16(&q, &y.qs, &scales));
    }
    hsum_float_8(acc)
}

/// `ggml_vec_dot_q3_K_q8_K` (AVX2 path). Q3_K block: `u8 hmask[32]`, `u8 qs[64]`, 12 bytes of
/// 6-bit scales (minus 32), f16 `d`. Element `128j + 32l + b` is `((qs[32j+b] >> 2l) & 3) - 4`
/// unless bit `4j + l` of `hmask[b]` is set (then without the `- 4`). ggml forms the two parts
/// with separate `maddubs` and subtracts them in 16 bits, which equals the product with the
/// signed value exactly. Per block `fma(d_a * d_w, sumi, acc)`; integers stay below 2^20.
pub fn vec_dot_q3_K_q8_K(w: &[u8], a: &[BlockQ8K]) -> f32 {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    debug_assert_eq!(w.len(), a.len() * BLOCK_Q3_K);
    let mut acc = [0.0f32; 8];
    for (blk, y) in w.chunks_exact(BLOCK_Q3_K).zip(a) {
        let d = y.d * read_f16(blk, 108);
        let word = |i: usize| u32::from_le_bytes([blk[96 + 4 * i], blk[97 + 4 * i], blk[98 + 4 * i], blk[99 + 4 * i]]);
        let (a0, a1, a2) = (word(0), word(1), word(2));
        let packed = [
            (a0 & KMASK2) | ((a2 & KMASK1) << 4),
            (a1 & KMASK2) | (((a2 >> 2) & KMASK1) << 4),
            ((a0 >> 4) & KMASK2) | (((a2 >> 4) & KMASK1) << 4),
            ((a1 >> 4) & KMASK2) | (((a2 >> 6) & KMASK1) << 4),
        ];
        let mut scales = [0i32; 16];
        for (i, p) in packed.iter().enumerate() {
            for (k, byte) in p.to_le_bytes().iter().enumerate() {
                scales[4 * i + k] = *byte as i32 - 32;
            }
        }
        let (hmask, qs) = (&blk[0..32], &blk[32..96]);
        let mut q = [0i8; QK_K];
        for (e, v) in q.iter_mut().enumerate() {
            let (j, l, b) = (e / 128, (e / 32) % 4, e % 32);
            let low = ((qs[32 * j + b] >> (2 * l)) & 3) as i8;
            let high = if hmask[b] & (1 << (4 * j + l)) != 0 { 0 } else { 4 };
            *v = low - high;
        }
        fma_lanes(&mut acc, d, &scaled_lanes_16(&q, &y.qs, &scales));
    }
    hsum_float_8(acc)
}

/// `ggml_vec_dot_q4_K_q8_K` (AVX2 path). Q4_K block: f16 `d`, f16 `dmin`, 12 bytes of 6-bit
/// scales and mins (one each per 32 elements), `u8 qs[128]` (element `64j + b` is the low
/// nibble of `qs[32j + b]`, `64j + 32 + b` its high nibble). The minimum terms go into a
/// separate 4-lane accumulator: lane `m` gets `fma(dmin, mins[2m]*s[2m] + mins[2m+1]*s[2m+1],
/// acc_m)` where `s[i] = bsums[2i] + bsums[2i+1]` (`_mm_hadd_epi16`) and `dmin = -d_a *
/// dmin_w`; the main lanes `fma(d_a * d_w, sumi, acc)`. The result is `hsum_float_8(acc) +
/// ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]))` (`movehl`, `movehdup`). Integers stay
/// below 2^22.
pub fn vec_dot_q4_K_q8_K(w: &[u8], a: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(w.len(), a.len() * BLOCK_Q4_K);
    let mut acc = [0.0f32; 8];
    let mut acc_m = [0.0f32; 4];
    for (blk, y) in w.chunks_exact(BLOCK_Q4_K).zip(a) {
        let d = y.d * read_f16(blk, 0);
        let dmin = -y.d * read_f16(blk, 2);
        let (scales, mins) = scales_mins_k4(&blk[4..16]);
        let sums32: [i32; 8] = std::array::from_fn(|i| y.bsums[2 * i] as i32 + y.bsums[2 * i + 1] as i32);
        for m in 0..4 {
            let prod = mins[2 * m] * sums32[2 * m] + mins[2 * m + 1] * sums32[2 * m + 1];
            acc_m[m] = dmin.mul_add(prod as f32, acc_m[m]);
        }
        let qs = &blk[16..144];
        let mut q = [0i8; QK_K];
        for (e, v) in q.iter_mut().enumerate() {
            let (j, hi, b) = (e / 64, (e / 32) % 2, e % 32);
            *v = ((qs[32 * j + b] >> (4 * hi)) & 0xF) as i8;
        }
        fma_lanes(&mut acc, d, &scaled_lanes_32(&q, &y.qs, &scales));
    }
    hsum_float_8(acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]))
}

/// `ggml_vec_dot_q5_K_q8_K` (AVX2 path). Q5_K block: like Q4_K plus `u8 qh[32]` (element
/// `64j + b` gets bit `2j` of `qh[b]` as its fifth bit, `64j + 32 + b` bit `2j + 1`). Unlike
/// Q4_K the minimum terms are summed as one integer per block and go into a scalar:
/// `summs = fma(dmin, Σ mins[i] * s[i], summs)` (GCC contracts `summs += dmin * int`); the
/// result is `hsum_float_8(acc) + summs`. Integers stay below 2^23.
pub fn vec_dot_q5_K_q8_K(w: &[u8], a: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(w.len(), a.len() * BLOCK_Q5_K);
    let mut acc = [0.0f32; 8];
    let mut summs = 0.0f32;
    for (blk, y) in w.chunks_exact(BLOCK_Q5_K).zip(a) {
        let d = y.d * read_f16(blk, 0);
        let dmin = -y.d * read_f16(blk, 2);
        let (scales, mins) = scales_mins_k4(&blk[4..16]);
        let mut min_sum = 0i32;
        for i in 0..8 {
            min_sum += mins[i] * (y.bsums[2 * i] as i32 + y.bsums[2 * i + 1] as i32);
        }
        summs = dmin.mul_add(min_sum as f32, summs);
        let (qh, qs) = (&blk[16..48], &blk[48..176]);
        let mut q = [0i8; QK_K];
        for (e, v) in q.iter_mut().enumerate() {
            let (j, hi, b) = (e / 64, (e / 32) % 2, e % 32);
            let low = (qs[32 * j + b] >> (4 * hi)) & 0xF;
            let high = (qh[b] >> (2 * j + hi)) & 1;
            *v = (low | (high << 4)) as i8;
        }
        fma_lanes(&mut acc, d, &scaled_lanes_32(&q, &y.qs, &scales));
    }
    hsum_float_8(acc) + summs
}

/// `ggml_vec_dot_q6_K_q8_K` (AVX2 path). Q6_K block: `u8 ql[128]`, `u8 qh[64]`, `i8
/// scales[16]`, f16 `d`; element `128j + 32l + b` is the unsigned 6-bit value of nibble
/// `l / 2` of `ql[64j + 32(l % 2) + b]` with bits `2l..2l+2` of `qh[32j + b]` on top. ggml
/// multiplies the unsigned values (0..63) and subtracts the offset 32 afterwards per lane, from
/// the activation sums: lane `k` loses `32 * (bsums[2k]*scales[2k] + bsums[2k+1]*scales[2k+1])`
/// (`_mm256_madd_epi16(bsums, scales) << 5`), i.e. lane `k` of the offset covers elements
/// `32k..32k+32`, not the elements of lane `k` of the products. Then `fma(d_a * d_w, sumi,
/// acc)`. Integers stay below 2^26; with valid real data far below 2^24.
pub fn vec_dot_q6_K_q8_K(w: &[u8], a: &[BlockQ8K]) -> f32 {
    debug_assert_eq!(w.len(), a.len() * BLOCK_Q6_K);
    let mut acc = [0.0f32; 8];
    for (blk, y) in w.chunks_exact(BLOCK_Q6_K).zip(a) {
        let d = y.d * read_f16(blk, 208);
        let (ql, qh) = (&blk[0..128], &blk[128..192]);
        let scales: [i32; 16] = std::array::from_fn(|i| blk[192 + i] as i8 as i32);
        let mut q = [0i8; QK_K];
        for (e, v) in q.iter_mut().enumerate() {
            let (j, l, b) = (e / 128, (e / 32) % 4, e % 32);
            let low = (ql[64 * j + 32 * (l % 2) + b] >> (4 * (l / 2))) & 0xF;
            let high = (qh[32 * j + b] >> (2 * l)) & 3;
            *v = (low | (high << 4)) as i8;
        }
        let mut sumi = scaled_lanes_16(&q, &y.qs, &scales);
        for (k, s) in sumi.iter_mut().enumerate() {
            *s -= 32 * (y.bsums[2 * k] as i32 * scales[2 * k] + y.bsums[2 * k + 1] as i32 * scales[2 * k + 1]);
        }
        fma_lanes(&mut acc, d, &sumi);
    }
    hsum_float_8(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{quant, GgmlType};

    /// Each kernel against the plain sum of dequantized weights times dequantized activations
    /// (f64), on activations that quantize exactly: a check of the block layouts independent
    /// of ggml's lane order (the golden tests in tests/it/ggml_kernels.rs check the bits).
    #[test]
    fn k_dots_match_dequantized_products() {
        let mut state = 12345u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        for (ty, bs, dot) in [
            (GgmlType::Q2_K, BLOCK_Q2_K, vec_dot_q2_K_q8_K as fn(&[u8], &[BlockQ8K]) -> f32),
            (GgmlType::Q3_K, BLOCK_Q3_K, vec_dot_q3_K_q8_K),
            (GgmlType::Q4_K, BLOCK_Q4_K, vec_dot_q4_K_q8_K),
            (GgmlType::Q5_K, BLOCK_Q5_K, vec_dot_q5_K_q8_K),
            (GgmlType::Q6_K, BLOCK_Q6_K, vec_dot_q6_K_q8_K),
        ] {
            for _ in 0..20 {
                let nb = 2;
                let mut w: Vec<u8> = (0..nb * bs).map(|_| next() as u8).collect();
                // Sane f16 scales (0.01 .. 0.02) where the block has them.
                let scale_at: &[usize] = match ty {
                    GgmlType::Q2_K => &[80, 82],
                    GgmlType::Q3_K => &[108],
                    GgmlType::Q6_K => &[208],
                    _ => &[0, 2],
                };
                for b in 0..nb {
                    for &at in scale_at {
                        let v = f16::from_f32(0.01 + (next() % 100) as f32 * 1e-4).to_bits().to_le_bytes();
                        w[b * bs + at..b * bs + at + 2].copy_from_slice(&v);
                    }
                }
                // Integer activations in -127..=127 with a -127 in each block: |d| = 1 exactly.
                let mut x: Vec<f32> = (0..nb * QK_K).map(|_| (next() % 255) as f32 - 127.0).collect();
                for b in 0..nb {
                    x[b * QK_K + 7] = -127.0;
                }
                let a = quantize_row_q8_K(&x);
                assert!(a.iter().all(|b| b.d.abs() == 1.0), "d = -max/127 keeps the sign of max");
                let mut dq = vec![0.0f32; nb * QK_K];
                quant::dequantize(ty, &w, &mut dq).unwrap();
                let want: f64 = dq.iter().zip(&x).map(|(&p, &q)| p as f64 * q as f64).sum();
                let got = dot(&w, &a) as f64;
                assert!((got - want).abs() <= 1e-3 * want.abs().max(1.0), "{ty:?}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn q8_K_keeps_the_signed_maximum() {
        let mut x = vec![0.5f32; QK_K];
        x[3] = -2.0;
        x[9] = 2.0; // same magnitude later: the first one wins
        let b = &quantize_row_q8_K(&x)[0];
        assert_eq!(b.qs[3], -127);
        assert_eq!(b.qs[9], 127);
        assert_eq!(b.d, 1.0 / (-127.0f32 / -2.0));
        assert_eq!(b.bsums[0], (-127 + 127 + 14 * 32) as i16);
        assert!(quantize_row_q8_K(&[0.0; QK_K])[0] == BlockQ8K { d: 0.0, qs: [0; QK_K], bsums: [0; 16] });
    }
}
