//! AVX2 + FMA twins of the hot kernels in `quant` and `ops`, written with `std::arch` in the
//! instruction order of ggml's own AVX2 kernels, so that they compute exactly what the lane-by-
//! lane spec computes, only faster. Chosen once at run time ([`has_avx2_fma`]); elsewhere the
//! spec runs. Tests (`simd_tests.rs`) prove every twin bit-identical to its spec on seeded random
//! inputs (run on any x86-64 CPU with AVX2 and FMA, as CI's).
//!
//! Nothing here decides arithmetic: a twin that disagrees with its spec is a bug in the twin.

use rayon::prelude::*;

use crate::gguf::GgmlType;

use super::kquant::{self, BlockQ8K};
use super::ops;
use super::quant::{self, BlockQ8_0, BlockQ8_1, QMatrix, QuantizedActivation};

/// A weight-row dot product: one row of a matrix in its GGUF bytes against an activation.
pub type VecDotFn = fn(&[u8], &QuantizedActivation) -> f32;

/// Whether this CPU runs the AVX2 twins: AVX2, FMA and F16C, as the reference build assumes
/// (checked once).
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The dot product `matmul` uses for weights of type `ty`: the AVX2 twin where there is one and
/// the CPU runs it, else the spec [`quant::vec_dot`].
pub fn vec_dot_fn(ty: GgmlType) -> VecDotFn {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        match ty {
            GgmlType::Q4_1 => return x86::dot_q4_1,
            GgmlType::Q4_0 => return x86::dot_q4_0,
            GgmlType::Q8_0 => return x86::dot_q8_0,
            GgmlType::Q5_0 => return x86::dot_q5_0,
            GgmlType::IQ4_NL => return x86::dot_iq4_nl,
            GgmlType::Q4_K => return x86::dot_q4_k,
            GgmlType::Q6_K => return x86::dot_q6_k,
            _ => {}
        }
    }
    spec_dot_fn(ty)
}

/// The spec [`quant::vec_dot`] for weights of type `ty`, as a plain function pointer.
fn spec_dot_fn(ty: GgmlType) -> VecDotFn {
    macro_rules! spec {
        ($($t:ident),*) => {
            match ty {
                $(GgmlType::$t => |w, a| quant::vec_dot(GgmlType::$t, w, a),)*
                other => panic!("no dot product for {} weights (checked at model load)", other.name()),
            }
        };
    }
    spec!(Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, F16, BF16, F32)
}

/// A tile of dot products: `out[r * acts.len() + t] = vec_dot(rows[r], acts[t])` for weight
/// rows of one type, each element bitwise the spec's [`quant::vec_dot`]. Computing several at
/// once only lets independent accumulation chains overlap (and, for several tokens, unpacks a
/// weight block once): every element's own operations and their order are unchanged.
pub type TileFn = fn(rows: &[&[u8]], acts: &[QuantizedActivation], out: &mut [f32]);

/// The tile kernel `matmul` uses for weights of type `ty` (the spec, one element at a time,
/// where there is no twin).
pub fn tile_fn(ty: GgmlType) -> TileFn {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        match ty {
            GgmlType::Q4_1 => return x86::tile_q4_1,
            GgmlType::Q8_0 => return x86::tile_q8_0,
            _ => {}
        }
    }
    match ty {
        GgmlType::Q4_1 => spec_tile_q4_1,
        GgmlType::Q4_0 => spec_tile_q4_0,
        GgmlType::Q5_0 => spec_tile_q5_0,
        GgmlType::Q5_1 => spec_tile_q5_1,
        GgmlType::Q8_0 => spec_tile_q8_0,
        GgmlType::IQ4_NL => spec_tile_iq4_nl,
        GgmlType::Q2_K => spec_tile_q2_k,
        GgmlType::Q3_K => spec_tile_q3_k,
        GgmlType::Q4_K => spec_tile_q4_k,
        GgmlType::Q5_K => spec_tile_q5_k,
        GgmlType::Q6_K => spec_tile_q6_k,
        GgmlType::F16 => spec_tile_f16,
        GgmlType::BF16 => spec_tile_bf16,
        GgmlType::F32 => spec_tile_f32,
        other => panic!("no tile for {} weights (checked at model load)", other.name()),
    }
}

/// The spec's tile: one [`quant::vec_dot`] per element, for weights of one type.
macro_rules! spec_tile {
    ($name:ident, $ty:expr) => {
        fn $name(rows: &[&[u8]], acts: &[QuantizedActivation], out: &mut [f32]) {
            let dot = vec_dot_fn($ty);
            for (r, row) in rows.iter().enumerate() {
                for (t, a) in acts.iter().enumerate() {
                    out[r * acts.len() + t] = dot(row, a);
                }
            }
        }
    };
}
spec_tile!(spec_tile_q4_1, GgmlType::Q4_1);
spec_tile!(spec_tile_q4_0, GgmlType::Q4_0);
spec_tile!(spec_tile_q8_0, GgmlType::Q8_0);
spec_tile!(spec_tile_q5_0, GgmlType::Q5_0);
spec_tile!(spec_tile_q5_1, GgmlType::Q5_1);
spec_tile!(spec_tile_iq4_nl, GgmlType::IQ4_NL);
spec_tile!(spec_tile_q2_k, GgmlType::Q2_K);
spec_tile!(spec_tile_q3_k, GgmlType::Q3_K);
spec_tile!(spec_tile_q4_k, GgmlType::Q4_K);
spec_tile!(spec_tile_q5_k, GgmlType::Q5_K);
spec_tile!(spec_tile_q6_k, GgmlType::Q6_K);
spec_tile!(spec_tile_f16, GgmlType::F16);
spec_tile!(spec_tile_bf16, GgmlType::BF16);
spec_tile!(spec_tile_f32, GgmlType::F32);

/// [`quant::quantize_activation`] in AVX2 where the CPU has it: ggml's own AVX2 quantizer
/// instructions for Q8_0/Q8_1 (the scalar spec's `round_ties_even` is a call into libm per
/// element, which cost more than the quantization itself), and `quantize_row_q8_K` compiled for
/// AVX2 (the same code: its rounding and comparisons vectorize without changing a bit). Same
/// rounding, same bits (tested below).
pub fn quantize_activation(ty: GgmlType, x: &[f32]) -> QuantizedActivation {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        if matches!(ty, GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K) {
            // SAFETY: AVX2 and FMA are present (checked above).
            return QuantizedActivation::Q8K(unsafe { x86::quantize_row_q8_K(x) });
        }
        // SAFETY: AVX2, FMA and F16C are present (checked above).
        return unsafe { x86::quantize_activation(ty, x) };
    }
    quant::quantize_activation(ty, x)
}

/// Output features computed per parallel task. Fixed, so work splitting never depends on the
/// thread count (and results never do: each element is one call of one dot product).
const ROWS_PER_TASK: usize = 64;

/// `matmul`: W (n_out, n_in) @ x (n_tok, n_in)ᵀ -> out (n_tok, n_out), ggml numerics.
///
/// Runs on the current rayon pool; results are bitwise independent of its size, of `n_tok` and
/// of the CPU's vector extensions: every element is one [`quant::vec_dot`] (or its AVX2 twin,
/// equal bit for bit) of one weight row with one quantized activation row.
pub fn matmul(w: &QMatrix<'_>, x: &[f32], n_tok: usize, out: &mut [f32]) {
    assert_eq!(x.len(), n_tok * w.n_in, "matmul input has wrong length");
    assert_eq!(out.len(), n_tok * w.n_out, "matmul output has wrong length");
    let acts: Vec<QuantizedActivation> = (0..n_tok).into_par_iter().map(|t| quantize_activation(w.ty, &x[t * w.n_in..(t + 1) * w.n_in])).collect();
    let tile = tile_fn(w.ty);
    // Transposed scratch: tasks own disjoint ranges of output features for all tokens, computed
    // as (rows, tokens) tiles; every element is still one dot product of one row and one token.
    let mut scratch = vec![0.0f32; w.n_out * n_tok];
    scratch.par_chunks_mut(ROWS_PER_TASK * n_tok).enumerate().for_each(|(task, chunk)| {
        let first = task * ROWS_PER_TASK;
        let rows: Vec<&[u8]> = (first..first + chunk.len() / n_tok).map(|r| w.row(r)).collect();
        tile(&rows, &acts, chunk);
    });
    if n_tok == 1 {
        out.copy_from_slice(&scratch);
        return;
    }
    for t in 0..n_tok {
        for o in 0..w.n_out {
            out[t * w.n_out + o] = scratch[o * n_tok + t];
        }
    }
}

/// `ggml_vec_dot_f32` on two f32 rows: the AVX2 twin where the CPU runs it, else the spec.
pub fn vec_dot_f32(x: &[f32], y: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() && x.len().is_multiple_of(32) {
        // SAFETY: AVX2 and FMA are present (checked above); lengths are checked inside.
        return unsafe { x86::vec_dot_f32(x, y) };
    }
    quant::vec_dot_f32(x, y)
}

/// [`ops::attention`] compiled for AVX2 + FMA where the CPU has them, its products through the
/// AVX2 `ggml_vec_dot_f32` (`ops::attention_with`): the same operations in the same order, so
/// not a bit changes (LLVM never reassociates floating-point operations).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    n_kv: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    out: &mut [f32],
    kq_out: Option<&mut [f32]>,
    probs_out: Option<&mut [f32]>,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2 and FMA are present (checked above).
        return unsafe { x86::attention(q, k_cache, v_cache, n_kv, n_heads, n_kv_heads, head_dim, out, kq_out, probs_out) };
    }
    ops::attention(q, k_cache, v_cache, n_kv, n_heads, n_kv_heads, head_dim, out, kq_out, probs_out)
}

/// [`ops::attention_window`] with the AVX2 `ggml_vec_dot_f32` where the CPU has it.
#[allow(clippy::too_many_arguments)]
pub fn attention_window(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    n_kv: usize,
    window: &ops::Window,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    out: &mut [f32],
    kq_out: Option<&mut [f32]>,
    probs_out: Option<&mut [f32]>,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2 and FMA are present (checked above).
        return unsafe { x86::attention_window(q, k_cache, v_cache, n_kv, window, n_heads, n_kv_heads, head_dim, out, kq_out, probs_out) };
    }
    ops::attention_window(quant::vec_dot_f32, q, k_cache, v_cache, n_kv, window, n_heads, n_kv_heads, head_dim, out, kq_out, probs_out)
}

/// [`ops::swiglu`] compiled for AVX2 + FMA where the CPU has them (see [`attention`]).
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2 and FMA are present (checked above).
        return unsafe { x86::swiglu(gate, up, out) };
    }
    ops::swiglu(gate, up, out)
}

/// [`ops::rope_norm`] compiled for AVX2 + FMA where the CPU has them (see [`attention`]).
pub fn rope_norm(x: &mut [f32], head_dim: usize, pos: usize, base: f32) {
    rope(&ops::Rope::plain(ops::RopeKind::Norm, head_dim, base), x, pos)
}

/// [`ops::Rope::apply`] compiled for AVX2 + FMA where the CPU has them (see [`attention`]).
pub fn rope(r: &ops::Rope, x: &mut [f32], pos: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2 and FMA are present (checked above).
        return unsafe { x86::rope(r, x, pos) };
    }
    r.apply(x, pos)
}

#[cfg(target_arch = "x86_64")]
#[allow(non_snake_case)]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::quant::QK;
    use super::*;

    /// An f16 at `at` widened exactly (F16C `vcvtph2ps`, inline: no call per conversion).
    #[inline(always)]
    unsafe fn f16_at(bytes: &[u8], at: usize) -> f32 {
        let h = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
    }

    /// `hsum_float_8`, as ggml writes it.
    #[inline(always)]
    unsafe fn hsum_float_8(x: __m256) -> f32 {
        let mut res = _mm256_extractf128_ps(x, 1);
        res = _mm_add_ps(res, _mm256_castps256_ps128(x));
        res = _mm_add_ps(res, _mm_movehl_ps(res, res));
        res = _mm_add_ss(res, _mm_movehdup_ps(res));
        _mm_cvtss_f32(res)
    }

    /// `bytes_from_nibbles_32`: 16 bytes of nibbles -> 32 bytes, low nibbles first.
    #[inline(always)]
    unsafe fn bytes_from_nibbles_32(p: *const u8) -> __m256i {
        let tmp = _mm_loadu_si128(p as *const __m128i);
        let bytes = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
        _mm256_and_si256(_mm256_set1_epi8(0x0F), bytes)
    }

    /// `mul_sum_us8_pairs_float`: unsigned x signed bytes, pairs then quads, as 8 floats.
    #[inline(always)]
    unsafe fn mul_sum_us8_pairs_float(ax: __m256i, sy: __m256i) -> __m256 {
        let dot = _mm256_maddubs_epi16(ax, sy);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), dot))
    }

    /// `mul_sum_i8_pairs_float`: signed x signed bytes through the sign trick.
    #[inline(always)]
    unsafe fn mul_sum_i8_pairs_float(x: __m256i, y: __m256i) -> __m256 {
        let ax = _mm256_sign_epi8(x, x);
        let sy = _mm256_sign_epi8(y, x);
        mul_sum_us8_pairs_float(ax, sy)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn vec_dot_q4_1_q8_1(w: &[u8], a: &[BlockQ8_1]) -> f32 {
        assert_eq!(w.len(), a.len() * 20);
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0.0f32;
        for (i, ab) in a.iter().enumerate() {
            let blk = &w[i * 20..i * 20 + 20];
            let (d0, m) = (f16_at(blk, 0), f16_at(blk, 2));
            summs = m.mul_add(ab.s, summs);
            let d0d1 = _mm256_set1_ps(d0 * ab.d);
            let qx = bytes_from_nibbles_32(blk.as_ptr().add(4));
            let qy = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
            acc = _mm256_fmadd_ps(d0d1, mul_sum_us8_pairs_float(qx, qy), acc);
        }
        hsum_float_8(acc) + summs
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn vec_dot_q4_0_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
        assert_eq!(w.len(), a.len() * 18);
        let mut acc = _mm256_setzero_ps();
        for (i, ab) in a.iter().enumerate() {
            let blk = &w[i * 18..i * 18 + 18];
            let d = _mm256_set1_ps(f16_at(blk, 0) * ab.d);
            let qx = _mm256_sub_epi8(bytes_from_nibbles_32(blk.as_ptr().add(2)), _mm256_set1_epi8(8));
            let qy = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
            acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), acc);
        }
        hsum_float_8(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn vec_dot_q8_0_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
        assert_eq!(w.len(), a.len() * 34);
        let mut acc = _mm256_setzero_ps();
        for (i, ab) in a.iter().enumerate() {
            let blk = &w[i * 34..i * 34 + 34];
            let d = _mm256_set1_ps(f16_at(blk, 0) * ab.d);
            let qx = _mm256_loadu_si256(blk.as_ptr().add(2) as *const __m256i);
            let qy = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
            acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), acc);
        }
        hsum_float_8(acc)
    }

    /// `ggml_vec_dot_f32` for lengths that are multiples of 32 (no leftovers).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_f32(x: &[f32], y: &[f32]) -> f32 {
        assert!(x.len() == y.len() && x.len().is_multiple_of(32));
        let mut sum = [_mm256_setzero_ps(); 4];
        for i in (0..x.len()).step_by(32) {
            for (j, s) in sum.iter_mut().enumerate() {
                let ax = _mm256_loadu_ps(x.as_ptr().add(i + 8 * j));
                let ay = _mm256_loadu_ps(y.as_ptr().add(i + 8 * j));
                *s = _mm256_fmadd_ps(ax, ay, *s);
            }
        }
        let x0 = _mm256_add_ps(sum[0], sum[2]);
        let x1 = _mm256_add_ps(sum[1], sum[3]);
        let x0 = _mm256_add_ps(x0, x1);
        let t0 = _mm_add_ps(_mm256_castps256_ps128(x0), _mm256_extractf128_ps(x0, 1));
        let t1 = _mm_hadd_ps(t0, t0);
        _mm_cvtss_f32(_mm_hadd_ps(t1, t1))
    }

    /// `bytes_from_bits_32`: bit `j` of the little-endian u32 at `p` spread to byte `j` (0xFF or 0).
    #[inline(always)]
    unsafe fn bytes_from_bits_32(p: *const u8) -> __m256i {
        let x32 = u32::from_le_bytes(*(p as *const [u8; 4]));
        let shuf_mask = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x32 as i32), shuf_mask);
        let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
        _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
    }

    /// `ggml_vec_dot_q5_0_q8_0`'s AVX2 path.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn vec_dot_q5_0_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
        assert_eq!(w.len(), a.len() * 22);
        let mut acc = _mm256_setzero_ps();
        for (i, ab) in a.iter().enumerate() {
            let blk = &w[i * 22..i * 22 + 22];
            let d = _mm256_set1_ps(f16_at(blk, 0) * ab.d);
            let bxhi = _mm256_andnot_si256(bytes_from_bits_32(blk.as_ptr().add(2)), _mm256_set1_epi8(0xF0u8 as i8));
            let qx = _mm256_or_si256(bytes_from_nibbles_32(blk.as_ptr().add(6)), bxhi);
            let qy = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
            acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), acc);
        }
        hsum_float_8(acc)
    }

    /// `ggml_vec_dot_iq4_nl_q8_0`'s AVX2 path: blocks in pairs into two accumulators, their
    /// sum reduced, an unpaired last block in the scalar tail (see the spec).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn vec_dot_iq4_nl_q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
        assert_eq!(w.len(), a.len() * 18);
        let values128 = _mm_loadu_si128(crate::gguf::quant::KVALUES_IQ4NL.as_ptr() as *const __m128i);
        let m4b = _mm_set1_epi8(0x0f);
        let mone = _mm256_set1_epi16(1);
        let lookup = |p: *const u8| {
            let bits = _mm_loadu_si128(p as *const __m128i);
            _mm256_set_m128i(_mm_shuffle_epi8(values128, _mm_and_si128(_mm_srli_epi16(bits, 4), m4b)), _mm_shuffle_epi8(values128, _mm_and_si128(bits, m4b)))
        };
        let (mut accum1, mut accum2) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let nb = a.len();
        let mut ib = 0;
        while ib + 1 < nb {
            let (x0, x1) = (&w[ib * 18..ib * 18 + 18], &w[ib * 18 + 18..ib * 18 + 36]);
            let q4b_1 = lookup(x0.as_ptr().add(2));
            let q4b_2 = lookup(x1.as_ptr().add(2));
            let q8b_1 = _mm256_loadu_si256(a[ib].qs.as_ptr() as *const __m256i);
            let q8b_2 = _mm256_loadu_si256(a[ib + 1].qs.as_ptr() as *const __m256i);
            let p_1 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(q4b_1, q4b_1), _mm256_sign_epi8(q8b_1, q4b_1)), mone);
            let p_2 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(q4b_2, q4b_2), _mm256_sign_epi8(q8b_2, q4b_2)), mone);
            accum1 = _mm256_fmadd_ps(_mm256_set1_ps(a[ib].d * f16_at(x0, 0)), _mm256_cvtepi32_ps(p_1), accum1);
            accum2 = _mm256_fmadd_ps(_mm256_set1_ps(a[ib + 1].d * f16_at(x1, 0)), _mm256_cvtepi32_ps(p_2), accum2);
            ib += 2;
        }
        let mut sumf = hsum_float_8(_mm256_add_ps(accum1, accum2));
        if ib < nb {
            let x = &w[ib * 18..ib * 18 + 18];
            let mut sumi = 0i32;
            for j in 0..16 {
                sumi += a[ib].qs[j] as i32 * crate::gguf::quant::KVALUES_IQ4NL[(x[2 + j] & 0xf) as usize] as i32;
                sumi += a[ib].qs[j + 16] as i32 * crate::gguf::quant::KVALUES_IQ4NL[(x[2 + j] >> 4) as usize] as i32;
            }
            sumf = (a[ib].d * f16_at(x, 0)).mul_add(sumi as f32, sumf);
        }
        sumf
    }

    /// `get_scale_shuffle_k4(i)`: every 16-bit lane takes scale `i`.
    #[inline(always)]
    unsafe fn scale_shuffle_k4(i: usize) -> __m256i {
        _mm256_set1_epi16((((2 * i + 1) << 8) | (2 * i)) as i16)
    }

    /// `ggml_vec_dot_q4_K_q8_K`'s AVX2 path.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn vec_dot_q4_K_q8_K(w: &[u8], a: &[BlockQ8K]) -> f32 {
        const KMASK1: u32 = 0x3f3f3f3f;
        const KMASK2: u32 = 0x0f0f0f0f;
        const KMASK3: u32 = 0x03030303;
        assert_eq!(w.len(), a.len() * kquant::BLOCK_Q4_K);
        let m4 = _mm256_set1_epi8(0xF);
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = _mm_setzero_ps();
        for (i, y) in a.iter().enumerate() {
            let x = &w[i * 144..(i + 1) * 144];
            let d = y.d * f16_at(x, 0);
            let dmin = -y.d * f16_at(x, 2);
            let word = |k: usize| u32::from_le_bytes([x[4 + 4 * k], x[5 + 4 * k], x[6 + 4 * k], x[7 + 4 * k]]);
            let mut utmp = [word(0), word(1), word(2), 0];
            utmp[3] = ((utmp[2] >> 4) & KMASK2) | (((utmp[1] >> 6) & KMASK3) << 4);
            let uaux = utmp[1] & KMASK1;
            utmp[1] = (utmp[2] & KMASK2) | (((utmp[0] >> 6) & KMASK3) << 4);
            utmp[2] = uaux;
            utmp[0] &= KMASK1;
            let mins_and_scales = _mm256_cvtepu8_epi16(_mm_set_epi32(utmp[3] as i32, utmp[2] as i32, utmp[1] as i32, utmp[0] as i32));
            let q8sums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
            let q8s = _mm_hadd_epi16(_mm256_extracti128_si256(q8sums, 0), _mm256_extracti128_si256(q8sums, 1));
            let prod = _mm_madd_epi16(_mm256_extracti128_si256(mins_and_scales, 1), q8s);
            acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);
            let sc128 = _mm256_extracti128_si256(mins_and_scales, 0);
            let scales = _mm256_set_m128i(sc128, sc128);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..4 {
                let scale_l = _mm256_shuffle_epi8(scales, scale_shuffle_k4(2 * j));
                let scale_h = _mm256_shuffle_epi8(scales, scale_shuffle_k4(2 * j + 1));
                let q4bits = _mm256_loadu_si256(x.as_ptr().add(16 + 32 * j) as *const __m256i);
                let q4l = _mm256_and_si256(q4bits, m4);
                let q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
                let q8l = _mm256_loadu_si256(y.qs.as_ptr().add(64 * j) as *const __m256i);
                let p16l = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q4l, q8l));
                let q8h = _mm256_loadu_si256(y.qs.as_ptr().add(64 * j + 32) as *const __m256i);
                let p16h = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q4h, q8h));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16l, p16h));
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        acc_m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
        acc_m = _mm_add_ss(acc_m, _mm_movehdup_ps(acc_m));
        hsum_float_8(acc) + _mm_cvtss_f32(acc_m)
    }

    /// `get_scale_shuffle(i)`: bytes 0..8 take scale `2i`, bytes 8..16 scale `2i + 1`.
    #[inline(always)]
    unsafe fn scale_shuffle(i: usize) -> __m128i {
        let splat = |b: usize| (b as u64).wrapping_mul(0x0101010101010101) as i64;
        _mm_set_epi64x(splat(2 * i + 1), splat(2 * i))
    }

    /// `ggml_vec_dot_q6_K_q8_K`'s AVX2 path.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn vec_dot_q6_K_q8_K(w: &[u8], a: &[BlockQ8K]) -> f32 {
        assert_eq!(w.len(), a.len() * kquant::BLOCK_Q6_K);
        let m3 = _mm256_set1_epi8(3);
        let m15 = _mm256_set1_epi8(15);
        let mut acc = _mm256_setzero_ps();
        for (i, y) in a.iter().enumerate() {
            let x = &w[i * 210..(i + 1) * 210];
            let d = y.d * f16_at(x, 208);
            let q8sums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
            let scales = _mm_loadu_si128(x.as_ptr().add(192) as *const __m128i);
            let q8sclsub = _mm256_slli_epi32(_mm256_madd_epi16(q8sums, _mm256_cvtepi8_epi16(scales)), 5);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..2 {
                let q4bits1 = _mm256_loadu_si256(x.as_ptr().add(64 * j) as *const __m256i);
                let q4bits2 = _mm256_loadu_si256(x.as_ptr().add(64 * j + 32) as *const __m256i);
                let q4bits_h = _mm256_loadu_si256(x.as_ptr().add(128 + 32 * j) as *const __m256i);
                let q4h_0 = _mm256_slli_epi16(_mm256_and_si256(q4bits_h, m3), 4);
                let q4h_1 = _mm256_slli_epi16(_mm256_and_si256(q4bits_h, _mm256_set1_epi8(12)), 2);
                let q4h_2 = _mm256_and_si256(q4bits_h, _mm256_set1_epi8(48));
                let q4h_3 = _mm256_srli_epi16(_mm256_and_si256(q4bits_h, _mm256_set1_epi8(-64)), 2);
                let q4 = [
                    _mm256_or_si256(_mm256_and_si256(q4bits1, m15), q4h_0),
                    _mm256_or_si256(_mm256_and_si256(q4bits2, m15), q4h_1),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits1, 4), m15), q4h_2),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits2, 4), m15), q4h_3),
                ];
                let mut p16 = [_mm256_setzero_si256(); 4];
                for l in 0..4 {
                    let q8 = _mm256_loadu_si256(y.qs.as_ptr().add(128 * j + 32 * l) as *const __m256i);
                    let scale = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, scale_shuffle(4 * j + l)));
                    p16[l] = _mm256_madd_epi16(scale, _mm256_maddubs_epi16(q4[l], q8));
                }
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16[0], p16[1]));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16[2], p16[3]));
            }
            sumi = _mm256_sub_epi32(sumi, q8sclsub);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_float_8(acc)
    }

    /// `kquant::quantize_row_q8_K` compiled for AVX2 (see [`super::quantize_activation`]).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_row_q8_K(x: &[f32]) -> Vec<BlockQ8K> {
        kquant::quantize_row_q8_K(x)
    }

    const _: () = assert!(QK == 32);

    /// Four Q4_1 rows against one Q8_1 activation, interleaved: each row's operations are
    /// exactly `vec_dot_q4_1_q8_1`'s.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_1_rows4(rows: [&[u8]; 4], a: &[BlockQ8_1]) -> [f32; 4] {
        for r in &rows {
            assert_eq!(r.len(), a.len() * 20);
        }
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut summs = [0.0f32; 4];
        let row_len = a.len() * 20;
        for (i, ab) in a.iter().enumerate() {
            let qy = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
            // The next four rows follow these in memory: pull them into L1 while these compute
            // (a hint only: it never faults and changes no value).
            let next = rows[0].as_ptr().wrapping_add(4 * row_len + i * 80);
            _mm_prefetch::<_MM_HINT_T0>(next as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(64) as *const i8);
            for r in 0..4 {
                let blk = rows[r].get_unchecked(i * 20..i * 20 + 20);
                let (d0, m) = (f16_at(blk, 0), f16_at(blk, 2));
                summs[r] = m.mul_add(ab.s, summs[r]);
                let qx = bytes_from_nibbles_32(blk.as_ptr().add(4));
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * ab.d), mul_sum_us8_pairs_float(qx, qy), acc[r]);
            }
        }
        [hsum_float_8(acc[0]) + summs[0], hsum_float_8(acc[1]) + summs[1], hsum_float_8(acc[2]) + summs[2], hsum_float_8(acc[3]) + summs[3]]
    }

    /// One Q4_1 row against four Q8_1 activations, the weight block unpacked once.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_1_toks4(w: &[u8], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
        for t in &a {
            assert_eq!(w.len(), t.len() * 20);
        }
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut summs = [0.0f32; 4];
        for i in 0..a[0].len() {
            // The next row follows this one in memory.
            _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().wrapping_add(w.len() + i * 20) as *const i8);
            let blk = w.get_unchecked(i * 20..i * 20 + 20);
            let (d0, m) = (f16_at(blk, 0), f16_at(blk, 2));
            let qx = bytes_from_nibbles_32(blk.as_ptr().add(4));
            for t in 0..4 {
                let ab = a[t].get_unchecked(i);
                summs[t] = m.mul_add(ab.s, summs[t]);
                let qy = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * ab.d), mul_sum_us8_pairs_float(qx, qy), acc[t]);
            }
        }
        [hsum_float_8(acc[0]) + summs[0], hsum_float_8(acc[1]) + summs[1], hsum_float_8(acc[2]) + summs[2], hsum_float_8(acc[3]) + summs[3]]
    }

    /// Four Q8_0 rows against one Q8_0 activation (`vec_dot_q8_0_q8_0` each).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_rows4(rows: [&[u8]; 4], a: &[BlockQ8_0]) -> [f32; 4] {
        for r in &rows {
            assert_eq!(r.len(), a.len() * 34);
        }
        let mut acc = [_mm256_setzero_ps(); 4];
        let row_len = a.len() * 34;
        for (i, ab) in a.iter().enumerate() {
            let qy = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
            // The next four rows, as in q4_1_rows4 (136 bytes of them per block here).
            let next = rows[0].as_ptr().wrapping_add(4 * row_len + i * 136);
            _mm_prefetch::<_MM_HINT_T0>(next as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(64) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(128) as *const i8);
            for r in 0..4 {
                let blk = rows[r].get_unchecked(i * 34..i * 34 + 34);
                let qx = _mm256_loadu_si256(blk.as_ptr().add(2) as *const __m256i);
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(blk, 0) * ab.d), mul_sum_i8_pairs_float(qx, qy), acc[r]);
            }
        }
        [hsum_float_8(acc[0]), hsum_float_8(acc[1]), hsum_float_8(acc[2]), hsum_float_8(acc[3])]
    }

    /// One Q8_0 row against four Q8_0 activations.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_toks4(w: &[u8], a: [&[BlockQ8_0]; 4]) -> [f32; 4] {
        for t in &a {
            assert_eq!(w.len(), t.len() * 34);
        }
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in 0..a[0].len() {
            _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().wrapping_add(w.len() + i * 34) as *const i8);
            let blk = w.get_unchecked(i * 34..i * 34 + 34);
            let d0 = f16_at(blk, 0);
            let qx = _mm256_loadu_si256(blk.as_ptr().add(2) as *const __m256i);
            for t in 0..4 {
                let ab = a[t].get_unchecked(i);
                let qy = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * ab.d), mul_sum_i8_pairs_float(qx, qy), acc[t]);
            }
        }
        [hsum_float_8(acc[0]), hsum_float_8(acc[1]), hsum_float_8(acc[2]), hsum_float_8(acc[3])]
    }

    /// Walks a tile four rows (one token) or four tokens (several) at a time; leftovers one by one.
    macro_rules! tile {
        ($name:ident, $variant:ident, $block:ty, $rows4:ident, $toks4:ident, $one:ident) => {
            pub fn $name(rows: &[&[u8]], acts: &[QuantizedActivation], out: &mut [f32]) {
                let blocks: Vec<&[$block]> = acts
                    .iter()
                    .map(|a| match a {
                        QuantizedActivation::$variant(b) => b.as_slice(),
                        _ => unreachable!("activation quantized for another weight type"),
                    })
                    .collect();
                let n_t = blocks.len();
                // SAFETY (all calls): only handed out by `tile_fn` after `has_avx2_fma`.
                if n_t == 1 {
                    let mut r = 0;
                    while r + 4 <= rows.len() {
                        let v = unsafe { $rows4([rows[r], rows[r + 1], rows[r + 2], rows[r + 3]], blocks[0]) };
                        out[r..r + 4].copy_from_slice(&v);
                        r += 4;
                    }
                    for r in r..rows.len() {
                        out[r] = unsafe { $one(rows[r], blocks[0]) };
                    }
                    return;
                }
                // Tokens in groups of 16 so their activations stay in L1 across the rows.
                for t0 in (0..n_t).step_by(16) {
                    let t1 = (t0 + 16).min(n_t);
                    for (r, row) in rows.iter().enumerate() {
                        let o = &mut out[r * n_t..(r + 1) * n_t];
                        let mut t = t0;
                        while t + 4 <= t1 {
                            let v = unsafe { $toks4(row, [blocks[t], blocks[t + 1], blocks[t + 2], blocks[t + 3]]) };
                            o[t..t + 4].copy_from_slice(&v);
                            t += 4;
                        }
                        for t in t..t1 {
                            o[t] = unsafe { $one(row, blocks[t]) };
                        }
                    }
                }
            }
        };
    }
    tile!(tile_q4_1, Q8_1, BlockQ8_1, q4_1_rows4, q4_1_toks4, vec_dot_q4_1_q8_1);
    tile!(tile_q8_0, Q8_0, BlockQ8_0, q8_0_rows4, q8_0_toks4, vec_dot_q8_0_q8_0);

    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn attention(
        q: &[f32],
        k_cache: &[f32],
        v_cache: &[f32],
        n_kv: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        out: &mut [f32],
        kq_out: Option<&mut [f32]>,
        probs_out: Option<&mut [f32]>,
    ) {
        // The products take the AVX2 `ggml_vec_dot_f32` where the length allows (equal to the
        // spec's bit for bit: `simd_vec_dot_f32_equals_the_spec`).
        let dot = |x: &[f32], y: &[f32]| if x.len().is_multiple_of(32) { vec_dot_f32(x, y) } else { quant::vec_dot_f32(x, y) };
        ops::attention_with(dot, q, k_cache, v_cache, n_kv, n_heads, n_kv_heads, head_dim, out, kq_out, probs_out)
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attention_window(
        q: &[f32],
        k_cache: &[f32],
        v_cache: &[f32],
        n_kv: usize,
        window: &ops::Window,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        out: &mut [f32],
        kq_out: Option<&mut [f32]>,
        probs_out: Option<&mut [f32]>,
    ) {
        let dot = |x: &[f32], y: &[f32]| if x.len().is_multiple_of(32) { vec_dot_f32(x, y) } else { quant::vec_dot_f32(x, y) };
        ops::attention_window(dot, q, k_cache, v_cache, n_kv, window, n_heads, n_kv_heads, head_dim, out, kq_out, probs_out)
    }

    /// An f32 rounded to f16 and widened back (F16C, round to nearest even as `half`'s).
    #[inline(always)]
    unsafe fn f16_round(x: f32) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x))))
    }

    /// One 32-block of `quantize_row_q8_0/q8_1` in ggml's AVX2 instructions: `amax` by
    /// `max_ps` of the absolute values, `d = amax / 127`, `id = 127 / amax` (0 for a zero
    /// block), `q = cvtps_epi32(round_ps(x * id, nearest))`, and the integer sum for Q8_1.
    #[inline(always)]
    unsafe fn quantize_block(x: &[f32]) -> (f32, [i8; QK], i32) {
        let p = x.as_ptr();
        let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for vi in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
        }
        let mut m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mul = _mm256_set1_ps(id);
        let mut qs = [0i8; QK];
        let mut sum = _mm256_setzero_si256();
        for (k, vi) in v.iter().enumerate() {
            let r = _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(*vi, mul)));
            sum = _mm256_add_epi32(sum, r);
            let mut lanes = [0i32; 8];
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, r);
            for (j, &l) in lanes.iter().enumerate() {
                qs[8 * k + j] = l as i8;
            }
        }
        let mut sums = [0i32; 8];
        _mm256_storeu_si256(sums.as_mut_ptr() as *mut __m256i, sum);
        (d, qs, sums.iter().sum())
    }

    /// [`quant::quantize_activation`] for the 8-bit activation types, block by block as above;
    /// the other types take the spec.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_activation(ty: GgmlType, x: &[f32]) -> QuantizedActivation {
        if !x.len().is_multiple_of(QK) {
            return quant::quantize_activation(ty, x);
        }
        match ty {
            GgmlType::Q4_1 | GgmlType::Q5_1 => {
                let mut out = Vec::with_capacity(x.len() / QK);
                for b in x.chunks_exact(QK) {
                    let (d, qs, sum) = quantize_block(b);
                    out.push(BlockQ8_1 { d: f16_round(d), s: f16_round(d * sum as f32), qs });
                }
                QuantizedActivation::Q8_1(out)
            }
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4_NL => {
                let mut out = Vec::with_capacity(x.len() / QK);
                for b in x.chunks_exact(QK) {
                    let (d, qs, _) = quantize_block(b);
                    out.push(BlockQ8_0 { d: f16_round(d), qs });
                }
                QuantizedActivation::Q8_0(out)
            }
            _ => quant::quantize_activation(ty, x),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
        ops::swiglu(gate, up, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rope(r: &ops::Rope, x: &mut [f32], pos: usize) {
        r.apply(x, pos)
    }

    pub fn dot_q4_1(w: &[u8], a: &QuantizedActivation) -> f32 {
        let QuantizedActivation::Q8_1(b) = a else { unreachable!("Q4_1 takes Q8_1 activations") };
        // SAFETY: only handed out by `vec_dot_fn` after `has_avx2_fma`.
        unsafe { vec_dot_q4_1_q8_1(w, b) }
    }

    pub fn dot_q4_0(w: &[u8], a: &QuantizedActivation) -> f32 {
        let QuantizedActivation::Q8_0(b) = a else { unreachable!("Q4_0 takes Q8_0 activations") };
        // SAFETY: as above.
        unsafe { vec_dot_q4_0_q8_0(w, b) }
    }

    pub fn dot_q5_0(w: &[u8], a: &QuantizedActivation) -> f32 {
        let QuantizedActivation::Q8_0(b) = a else { unreachable!("Q5_0 takes Q8_0 activations") };
        // SAFETY: only handed out by `vec_dot_fn` after `has_avx2_fma`.
        unsafe { vec_dot_q5_0_q8_0(w, b) }
    }

    pub fn dot_iq4_nl(w: &[u8], a: &QuantizedActivation) -> f32 {
        let QuantizedActivation::Q8_0(b) = a else { unreachable!("IQ4_NL takes Q8_0 activations") };
        // SAFETY: only handed out by `vec_dot_fn` after `has_avx2_fma`.
        unsafe { vec_dot_iq4_nl_q8_0(w, b) }
    }

    pub fn dot_q4_k(w: &[u8], a: &QuantizedActivation) -> f32 {
        let QuantizedActivation::Q8K(b) = a else { unreachable!("Q4_K takes Q8_K activations") };
        // SAFETY: as above.
        unsafe { vec_dot_q4_K_q8_K(w, b) }
    }

    pub fn dot_q6_k(w: &[u8], a: &QuantizedActivation) -> f32 {
        let QuantizedActivation::Q8K(b) = a else { unreachable!("Q6_K takes Q8_K activations") };
        // SAFETY: as above.
        unsafe { vec_dot_q6_K_q8_K(w, b) }
    }

    pub fn dot_q8_0(w: &[u8], a: &QuantizedActivation) -> f32 {
        let QuantizedActivation::Q8_0(b) = a else { unreachable!("Q8_0 takes Q8_0 activations") };
        // SAFETY: as above.
        unsafe { vec_dot_q8_0_q8_0(w, b) }
    }
}

#[cfg(test)]
#[path = "simd_tests.rs"]
mod tests;
