//! ggml number formats: f16/bf16 conversion and block dequantization to f32,
//! bit-identical to ggml's reference C code (`dequantize_row_*` in ggml-quants.c,
//! `ggml_compute_fp16_to_fp32` & co. in ggml-impl.h).
//!
//! Exactness notes, because "bit-identical" depends on evaluation order:
//! - every product is computed in f32 exactly as the C expression is written,
//!   left to right, with integers converted to f32 first (C's usual arithmetic
//!   conversions);
//! - `a*b + c` is a separate multiply and add, never a fused multiply-add. The
//!   quantization code lives in ggml-base, which llama.cpp builds for the baseline
//!   ISA even when the CPU backend uses AVX2/FMA (`objdump -d libggml-base.so` of
//!   llama-cpp-python 0.3.36 built with `GGML_NATIVE=OFF` has no `vfmadd` at all),
//!   and gguf-py's numpy reference does not fuse either.
//!
//! This module does not quantize (f32 -> blocks) except for the scalar f16 helper,
//! and knows nothing about which tensors use which type.

use super::error::GgufError;
use super::types::GgmlType;
pub use super::types::QK_K;

pub const QK4_0: usize = 32;
pub const QK4_1: usize = 32;
pub const QK5_0: usize = 32;
pub const QK5_1: usize = 32;
pub const QK8_0: usize = 32;
pub const QK8_1: usize = 32;

/// Bytes of one block of each quantized type (sizes of ggml's `block_*` structs).
pub const BLOCK_Q4_0_BYTES: usize = 18;
pub const BLOCK_Q4_1_BYTES: usize = 20;
pub const BLOCK_Q5_0_BYTES: usize = 22;
pub const BLOCK_Q5_1_BYTES: usize = 24;
pub const BLOCK_Q8_0_BYTES: usize = 34;
pub const BLOCK_Q2_K_BYTES: usize = 84;
pub const BLOCK_Q3_K_BYTES: usize = 110;
pub const BLOCK_Q4_K_BYTES: usize = 144;
pub const BLOCK_Q5_K_BYTES: usize = 176;
pub const BLOCK_Q6_K_BYTES: usize = 210;
pub const BLOCK_Q8_K_BYTES: usize = 292;
pub const BLOCK_IQ4_NL_BYTES: usize = 18;

/// Elements per IQ4_NL block (`QK4_NL`).
pub const QK4_NL: usize = 32;

/// The 16 non-linear levels of IQ4_NL (`kvalues_iq4nl` in ggml-common.h).
pub const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

// ---------------------------------------------------------------------------
// Scalar conversions
// ---------------------------------------------------------------------------

/// IEEE binary16 bits to f32, exact for every finite value and infinity.
///
/// Same result as ggml's `GGML_FP16_TO_FP32` (the Maratyszcza/FP16 algorithm,
/// which is exact). NaNs come out quiet with the payload kept, which is what that
/// algorithm and the F16C instruction produce on x86.
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits as u32) & 0x8000) << 16;
    let exp = ((bits >> 10) & 0x1f) as u32;
    let man = (bits & 0x3ff) as u32;
    let out = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal half: value = man * 2^-24, exactly representable in f32.
            // Normalize by shifting the leading one into the implicit bit.
            let shift = man.leading_zeros() - 21; // man < 2^10, so lz >= 22
            let man = (man << shift) & 0x3ff;
            let exp = 127 - 15 + 1 - shift;
            sign | (exp << 23) | (man << 13)
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(out)
}

/// f32 to IEEE binary16 bits, round-to-nearest-even, like ggml's
/// `GGML_FP32_TO_FP16` (`ggml_compute_fp32_to_fp16`): overflow goes to infinity,
/// tiny values to (signed) zero through correctly rounded subnormals, and any NaN
/// becomes the canonical quiet NaN `0x7e00` with the sign kept.
///
/// This follows the same float-arithmetic trick as ggml: scaling by 2^112 then
/// 2^-110 lets the FPU do the rounding, and adding a power-of-two bias aligns the
/// mantissa so the rounded half bits can be read off directly.
pub fn f32_to_f16(x: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let mut base = (x.abs() * scale_to_inf) * scale_to_zero;

    let w = x.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let mut bias = shl1_w & 0xff00_0000;
    if bias < 0x7100_0000 {
        bias = 0x7100_0000;
    }
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7c00;
    let mantissa_bits = bits & 0x0000_0fff;
    let nonsign = exp_bits + mantissa_bits;
    let half = if shl1_w > 0xff00_0000 { 0x7e00 } else { nonsign };
    ((sign >> 16) | half) as u16
}

/// bfloat16 bits to f32 (exact: bf16 is the top half of an f32).
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// f32 to bfloat16 bits, like ggml's `GGML_FP32_TO_BF16`: round to nearest even,
/// NaNs forced quiet.
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

#[inline]
fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[inline]
fn le_f16(b: &[u8], at: usize) -> f32 {
    f16_to_f32(le_u16(b, at))
}

// ---------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------

/// Whether [`dequantize`] supports `ty`.
///
/// Q8_1 has no `dequantize_row_q8_1` in ggml (it is only an intermediate for dot
/// products) and the integer / f64 types have no `to_float`, so there is nothing
/// to be bit-identical to; they are reported as unsupported rather than guessed.
pub fn can_dequantize(ty: GgmlType) -> bool {
    !matches!(ty, GgmlType::Q8_1 | GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64 | GgmlType::F64)
}

/// Dequantizes `out.len()` elements of type `ty` stored in `data` into `out`:
/// ggml's `dequantize_row_*` (`to_float`), bit for bit. This is the function to
/// reuse for a row (or a whole tensor) of any supported type; the per-block
/// functions below are public for kernels that walk blocks themselves.
///
/// `out.len()` must be a whole number of blocks and `data` exactly that many
/// blocks long; anything else is an error, never a panic or a partial write.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), GgufError> {
    if !can_dequantize(ty) {
        return Err(GgufError::UnsupportedDequant { ty });
    }
    let n = out.len();
    let expected = ty.row_bytes(n).ok_or(GgufError::DequantNotBlockMultiple { ty, n_elements: n as u64, block_size: ty.block_size() })?;
    if data.len() != expected {
        return Err(GgufError::DequantSizeMismatch {
            ty,
            n_elements: n as u64,
            block_size: ty.block_size(),
            expected_bytes: expected as u64,
            data_len: data.len() as u64,
        });
    }
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(data.as_chunks::<4>().0) {
                *o = f32::from_le_bytes(*b);
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(data.as_chunks::<2>().0) {
                *o = f16_to_f32(u16::from_le_bytes(*b));
            }
        }
        GgmlType::BF16 => {
            for (o, b) in out.iter_mut().zip(data.as_chunks::<2>().0) {
                *o = bf16_to_f32(u16::from_le_bytes(*b));
            }
        }
        GgmlType::Q4_0 => blocks(data, out, dequantize_block_q4_0),
        GgmlType::Q4_1 => blocks(data, out, dequantize_block_q4_1),
        GgmlType::Q5_0 => blocks(data, out, dequantize_block_q5_0),
        GgmlType::Q5_1 => blocks(data, out, dequantize_block_q5_1),
        GgmlType::Q8_0 => blocks(data, out, dequantize_block_q8_0),
        GgmlType::Q2_K => blocks(data, out, dequantize_block_q2_k),
        GgmlType::Q3_K => blocks(data, out, dequantize_block_q3_k),
        GgmlType::Q4_K => blocks(data, out, dequantize_block_q4_k),
        GgmlType::Q5_K => blocks(data, out, dequantize_block_q5_k),
        GgmlType::Q6_K => blocks(data, out, dequantize_block_q6_k),
        GgmlType::Q8_K => blocks(data, out, dequantize_block_q8_k),
        GgmlType::IQ4_NL => blocks(data, out, dequantize_block_iq4_nl),
        GgmlType::Q8_1 | GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64 | GgmlType::F64 => unreachable!("filtered by can_dequantize"),
    }
    Ok(())
}

/// Dequantizes into a fresh vector of `n_elements` values.
pub fn dequantize_to_vec(ty: GgmlType, data: &[u8], n_elements: usize) -> Result<Vec<f32>, GgufError> {
    // Validate before allocating, so a bogus n_elements cannot trigger a huge
    // allocation: the byte length must match exactly.
    match ty.row_bytes(n_elements) {
        Some(expected) if expected == data.len() => {}
        Some(expected) => {
            return Err(GgufError::DequantSizeMismatch {
                ty,
                n_elements: n_elements as u64,
                block_size: ty.block_size(),
                expected_bytes: expected as u64,
                data_len: data.len() as u64,
            })
        }
        None => return Err(GgufError::DequantNotBlockMultiple { ty, n_elements: n_elements as u64, block_size: ty.block_size() }),
    }
    if !can_dequantize(ty) {
        return Err(GgufError::UnsupportedDequant { ty });
    }
    let mut out = vec![0f32; n_elements];
    dequantize(ty, data, &mut out)?;
    Ok(out)
}

/// Applies a per-block decoder over matching block / output chunks. Sizes were
/// checked by the caller, so the chunkings line up exactly.
#[inline]
fn blocks<const B: usize, const Q: usize>(data: &[u8], out: &mut [f32], f: fn(&[u8; B], &mut [f32; Q])) {
    let (inb, _) = data.as_chunks::<B>();
    let (outb, _) = out.as_chunks_mut::<Q>();
    debug_assert_eq!(inb.len(), outb.len());
    for (b, o) in inb.iter().zip(outb.iter_mut()) {
        f(b, o);
    }
}

// ---------------------------------------------------------------------------
// 32-element blocks
// ---------------------------------------------------------------------------

/// `block_q4_0 { f16 d; u8 qs[16]; }`: x = (q - 8) * d, low nibbles are
/// elements 0..16 and high nibbles 16..32.
pub fn dequantize_block_q4_0(b: &[u8; BLOCK_Q4_0_BYTES], y: &mut [f32; QK4_0]) {
    let d = le_f16(b, 0);
    let qs = &b[2..18];
    for j in 0..QK4_0 / 2 {
        let x0 = (qs[j] & 0x0f) as i32 - 8;
        let x1 = (qs[j] >> 4) as i32 - 8;
        y[j] = x0 as f32 * d;
        y[j + QK4_0 / 2] = x1 as f32 * d;
    }
}

/// `block_q4_1 { f16 d; f16 m; u8 qs[16]; }`: x = q * d + m.
pub fn dequantize_block_q4_1(b: &[u8; BLOCK_Q4_1_BYTES], y: &mut [f32; QK4_1]) {
    let d = le_f16(b, 0);
    let m = le_f16(b, 2);
    let qs = &b[4..20];
    for j in 0..QK4_1 / 2 {
        let x0 = (qs[j] & 0x0f) as i32;
        let x1 = (qs[j] >> 4) as i32;
        y[j] = x0 as f32 * d + m;
        y[j + QK4_1 / 2] = x1 as f32 * d + m;
    }
}

/// `block_q5_0 { f16 d; u8 qh[4]; u8 qs[16]; }`: 5-bit q with the fifth bits
/// packed in a little-endian u32; x = (q - 16) * d.
pub fn dequantize_block_q5_0(b: &[u8; BLOCK_Q5_0_BYTES], y: &mut [f32; QK5_0]) {
    let d = le_f16(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..QK5_0 / 2 {
        let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
        let x0 = ((qs[j] & 0x0f) | xh_0) as i32 - 16;
        let x1 = ((qs[j] >> 4) | xh_1) as i32 - 16;
        y[j] = x0 as f32 * d;
        y[j + QK5_0 / 2] = x1 as f32 * d;
    }
}

/// `block_q5_1 { f16 d; f16 m; u8 qh[4]; u8 qs[16]; }`: x = q * d + m.
pub fn dequantize_block_q5_1(b: &[u8; BLOCK_Q5_1_BYTES], y: &mut [f32; QK5_1]) {
    let d = le_f16(b, 0);
    let m = le_f16(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..QK5_1 / 2 {
        let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
        let x0 = ((qs[j] & 0x0f) | xh_0) as i32;
        let x1 = ((qs[j] >> 4) | xh_1) as i32;
        y[j] = x0 as f32 * d + m;
        y[j + QK5_1 / 2] = x1 as f32 * d + m;
    }
}

/// `block_q8_0 { f16 d; i8 qs[32]; }`: x = q * d.
pub fn dequantize_block_q8_0(b: &[u8; BLOCK_Q8_0_BYTES], y: &mut [f32; QK8_0]) {
    let d = le_f16(b, 0);
    for j in 0..QK8_0 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

// ---------------------------------------------------------------------------
// 256-element super-blocks (k-quants)
// ---------------------------------------------------------------------------

/// `block_q2_K { u8 scales[16]; u8 qs[64]; f16 d; f16 dmin; }`.
pub fn dequantize_block_q2_k(b: &[u8; BLOCK_Q2_K_BYTES], y: &mut [f32; QK_K]) {
    let scales = &b[0..16];
    let d = le_f16(b, 80);
    let min = le_f16(b, 82);
    let mut out = 0;
    let mut is = 0;
    for n in 0..QK_K / 128 {
        let q = &b[16 + 32 * n..16 + 32 * n + 32];
        let mut shift = 0;
        for _ in 0..4 {
            for half in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * (sc & 0xf) as f32;
                let ml = min * (sc >> 4) as f32;
                for l in 0..16 {
                    let qv = ((q[l + 16 * half] >> shift) & 3) as i8;
                    y[out] = dl * qv as f32 - ml;
                    out += 1;
                }
            }
            shift += 2;
        }
    }
}

/// `block_q3_K { u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d; }`: 6-bit
/// signed scales packed in 12 bytes, 3-bit quants as 2 low bits + 1 high bit.
pub fn dequantize_block_q3_k(b: &[u8; BLOCK_Q3_K_BYTES], y: &mut [f32; QK_K]) {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let hm = &b[0..32];
    let d_all = le_f16(b, 108);

    // Unpack the 16 scales exactly as ggml does: reinterpret the 12 scale bytes
    // as three little-endian u32 words and shuffle them into four.
    let sb = &b[96..108];
    let a0 = u32::from_le_bytes([sb[0], sb[1], sb[2], sb[3]]);
    let a1 = u32::from_le_bytes([sb[4], sb[5], sb[6], sb[7]]);
    let tmp = u32::from_le_bytes([sb[8], sb[9], sb[10], sb[11]]);
    let aux = [
        (a0 & KMASK2) | (((tmp) & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut scales = [0i8; 16];
    for (i, w) in aux.iter().enumerate() {
        for (k, byte) in w.to_le_bytes().iter().enumerate() {
            scales[4 * i + k] = *byte as i8;
        }
    }

    let mut out = 0;
    let mut is = 0;
    let mut m: u8 = 1;
    for n in 0..QK_K / 128 {
        let q = &b[32 + 32 * n..32 + 32 * n + 32];
        let mut shift = 0;
        for _ in 0..4 {
            for half in 0..2 {
                let dl = d_all * (scales[is] as i32 - 32) as f32;
                is += 1;
                for l in 0..16 {
                    let idx = l + 16 * half;
                    let low = ((q[idx] >> shift) & 3) as i8;
                    let high: i8 = if hm[idx] & m != 0 { 0 } else { 4 };
                    y[out] = dl * (low as i32 - high as i32) as f32;
                    out += 1;
                }
            }
            shift += 2;
            m <<= 1;
        }
    }
}

/// ggml's `get_scale_min_k4`: 6-bit scale and min number `j` of the 8 packed
/// into 12 bytes for q4_K / q5_K.
#[inline]
fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// `block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }`.
pub fn dequantize_block_q4_k(b: &[u8; BLOCK_Q4_K_BYTES], y: &mut [f32; QK_K]) {
    let d = le_f16(b, 0);
    let min = le_f16(b, 2);
    let scales = &b[4..16];
    let mut out = 0;
    for (chunk, is) in (0..QK_K / 64).map(|c| (c, 2 * c)) {
        let q = &b[16 + 32 * chunk..16 + 32 * chunk + 32];
        let (sc1, m1) = get_scale_min_k4(is, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (sc2, m2) = get_scale_min_k4(is + 1, scales);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        for &b in q {
            y[out] = d1 * (b & 0xf) as f32 - m1;
            out += 1;
        }
        for &b in q {
            y[out] = d2 * (b >> 4) as f32 - m2;
            out += 1;
        }
    }
}

/// `block_q5_K { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }`.
pub fn dequantize_block_q5_k(b: &[u8; BLOCK_Q5_K_BYTES], y: &mut [f32; QK_K]) {
    let d = le_f16(b, 0);
    let min = le_f16(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let mut out = 0;
    let (mut u1, mut u2): (u8, u8) = (1, 2);
    for (chunk, is) in (0..QK_K / 64).map(|c| (c, 2 * c)) {
        let ql = &b[48 + 32 * chunk..48 + 32 * chunk + 32];
        let (sc1, m1) = get_scale_min_k4(is, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (sc2, m2) = get_scale_min_k4(is + 1, scales);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        for l in 0..32 {
            let q = (ql[l] & 0xf) as i32 + if qh[l] & u1 != 0 { 16 } else { 0 };
            y[out] = d1 * q as f32 - m1;
            out += 1;
        }
        for l in 0..32 {
            let q = (ql[l] >> 4) as i32 + if qh[l] & u2 != 0 { 16 } else { 0 };
            y[out] = d2 * q as f32 - m2;
            out += 1;
        }
        // u1/u2 walk bit pairs 0/1, 2/3, 4/5, 6/7; the last shift overflows out
        // of the byte, which is harmless because the loop ends.
        u1 = u1.wrapping_shl(2);
        u2 = u2.wrapping_shl(2);
    }
}

/// `block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }`:
/// x = d * scale * (q - 32), evaluated as `(d * scale) * q` like ggml.
pub fn dequantize_block_q6_k(b: &[u8; BLOCK_Q6_K_BYTES], y: &mut [f32; QK_K]) {
    let d = le_f16(b, 208);
    for n in 0..QK_K / 128 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let yo = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i8 as i32 - 32;
            let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i8 as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 as i32 - 32;
            yo[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            yo[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            yo[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            yo[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// `block_q8_K { f32 d; i8 qs[256]; i16 bsums[16]; }`: x = d * q (bsums unused).
pub fn dequantize_block_q8_k(b: &[u8; BLOCK_Q8_K_BYTES], y: &mut [f32; QK_K]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for j in 0..QK_K {
        y[j] = d * (b[4 + j] as i8) as f32;
    }
}

// ---------------------------------------------------------------------------
// Non-linear 4-bit
// ---------------------------------------------------------------------------

/// `block_iq4_nl { f16 d; u8 qs[16]; }`: x = d * kvalues_iq4nl[q], low nibbles
/// are elements 0..16 and high nibbles 16..32 (like Q4_0, with a lookup table
/// instead of `q - 8`).
pub fn dequantize_block_iq4_nl(b: &[u8; BLOCK_IQ4_NL_BYTES], y: &mut [f32; QK4_NL]) {
    let d = le_f16(b, 0);
    let qs = &b[2..18];
    for j in 0..QK4_NL / 2 {
        y[j] = d * KVALUES_IQ4NL[(qs[j] & 0xf) as usize] as f32;
        y[j + QK4_NL / 2] = d * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
    }
}
