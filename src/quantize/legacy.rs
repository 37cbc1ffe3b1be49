//! ggml's reference quantizers for the 32-element block types: Q4_0, Q4_1, Q5_0,
//! Q5_1 and Q8_0 (`quantize_row_*_ref` in ggml-quants.c, which is what
//! `ggml_quantize_chunk` runs when there is no importance matrix).
//!
//! Each block function is a line-by-line transcription, evaluated in the same f32
//! order (ggml-base is compiled for the baseline x86-64 ISA, so there are no fused
//! multiply-adds to reproduce). Block layouts are those of `gguf::quant`, which
//! dequantizes them. This file does not choose types or walk tensors.

use crate::gguf::quant::{
    f32_to_f16, BLOCK_Q4_0_BYTES, BLOCK_Q4_1_BYTES, BLOCK_Q5_0_BYTES, BLOCK_Q5_1_BYTES, BLOCK_Q8_0_BYTES, QK4_0, QK4_1, QK5_0, QK5_1, QK8_0,
};

use super::round::{c_byte, roundf};

/// The value of largest magnitude (the first one, on ties) and that magnitude, as
/// ggml's `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` loop finds it.
#[inline]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

/// Smallest and largest value, starting from `FLT_MAX` / `-FLT_MAX` like ggml.
#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline]
fn put_f16(y: &mut [u8], at: usize, v: f32) {
    y[at..at + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
}

/// `quantize_row_q4_0_ref` for one block: `d = max / -8`, `q = min(15, (int8)(x/d + 8.5))`.
pub fn quantize_block_q4_0(x: &[f32; QK4_0], y: &mut [u8; BLOCK_Q4_0_BYTES]) {
    let (_, max) = signed_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    for j in 0..QK4_0 / 2 {
        let x0 = x[j] * id;
        let x1 = x[QK4_0 / 2 + j] * id;
        let xi0 = (c_byte(x0 + 8.5) as i8).min(15) as u8;
        let xi1 = (c_byte(x1 + 8.5) as i8).min(15) as u8;
        y[2 + j] = xi0 | (xi1 << 4);
    }
}

/// `quantize_row_q4_1_ref` for one block: `d = (max - min) / 15`, `m = min`.
pub fn quantize_block_q4_1(x: &[f32; QK4_1], y: &mut [u8; BLOCK_Q4_1_BYTES]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    put_f16(y, 2, min);
    for j in 0..QK4_1 / 2 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[QK4_1 / 2 + j] - min) * id;
        let xi0 = (c_byte(x0 + 0.5) as i8).min(15) as u8;
        let xi1 = (c_byte(x1 + 0.5) as i8).min(15) as u8;
        y[4 + j] = xi0 | (xi1 << 4);
    }
}

/// `quantize_row_q5_0_ref` for one block: `d = max / -16`, 5-bit `q` with the
/// fifth bits gathered into the little-endian `qh` word.
pub fn quantize_block_q5_0(x: &[f32; QK5_0], y: &mut [u8; BLOCK_Q5_0_BYTES]) {
    let (_, max) = signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    let mut qh: u32 = 0;
    for j in 0..QK5_0 / 2 {
        let x0 = x[j] * id;
        let x1 = x[QK5_0 / 2 + j] * id;
        let xi0 = (c_byte(x0 + 16.5) as i8).min(31) as u8;
        let xi1 = (c_byte(x1 + 16.5) as i8).min(31) as u8;
        y[6 + j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
        qh |= (((xi0 & 0x10) >> 4) as u32) << j;
        qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK5_0 / 2);
    }
    y[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// `quantize_row_q5_1_ref` for one block: `d = (max - min) / 31`, `m = min`.
pub fn quantize_block_q5_1(x: &[f32; QK5_1], y: &mut [u8; BLOCK_Q5_1_BYTES]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    put_f16(y, 2, min);
    let mut qh: u32 = 0;
    for j in 0..QK5_1 / 2 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[QK5_1 / 2 + j] - min) * id;
        // ggml casts straight to uint8_t here (no MIN(31, ..)).
        let xi0 = c_byte(x0 + 0.5);
        let xi1 = c_byte(x1 + 0.5);
        y[8 + j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
        qh |= (((xi0 & 0x10) >> 4) as u32) << j;
        qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK5_1 / 2);
    }
    y[4..8].copy_from_slice(&qh.to_le_bytes());
}

/// `quantize_row_q8_0_ref` for one block: `d = amax / 127`, `q = roundf(x / d)`
/// (half away from zero, unlike the k-quants' `nearest_int`).
pub fn quantize_block_q8_0(x: &[f32; QK8_0], y: &mut [u8; BLOCK_Q8_0_BYTES]) {
    let mut amax = 0.0f32;
    for &v in x {
        // MAX(a, b) is `a > b ? a : b`.
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    for j in 0..QK8_0 {
        y[2 + j] = c_byte(roundf(x[j] * id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::quant::{dequantize, f16_to_f32};
    use crate::gguf::GgmlType;

    fn ramp(scale: f32, offset: f32) -> [f32; 32] {
        std::array::from_fn(|i| (i as f32 - offset) * scale)
    }

    #[test]
    fn q4_0_of_its_own_grid_is_exact_and_clamps_above() {
        // Values (i % 16 - 8) * 0.5: max by magnitude is -4 (first at i=0), d = 0.5.
        let x: [f32; 32] = std::array::from_fn(|i| ((i % 16) as f32 - 8.0) * 0.5);
        let mut y = [0u8; 18];
        quantize_block_q4_0(&x, &mut y);
        assert_eq!(f16_to_f32(u16::from_le_bytes([y[0], y[1]])), 0.5);
        let mut back = [0f32; 32];
        dequantize(GgmlType::Q4_0, &y, &mut back).unwrap();
        assert_eq!(back, x);
        // +4 would need q = 16: it clamps to 15 (3.5).
        let mut x = x;
        x[20] = 4.0;
        quantize_block_q4_0(&x, &mut y);
        dequantize(GgmlType::Q4_0, &y, &mut back).unwrap();
        assert_eq!(back[20], 3.5);
    }

    #[test]
    fn zero_blocks_quantize_to_zero_scales() {
        let x = [0f32; 32];
        let mut y4 = [0u8; 18];
        quantize_block_q4_0(&x, &mut y4);
        // d = 0.0 / -8 is -0.0 in C too: its f16 is 0x8000.
        assert_eq!(&y4[..2], &[0x00, 0x80]);
        assert!(y4[2..].iter().all(|&b| b == 0x88), "q = 8 means zero for q4_0");
        let mut y8 = [0u8; 34];
        quantize_block_q8_0(&x, &mut y8);
        assert!(y8.iter().all(|&b| b == 0));
        let mut y51 = [0u8; 24];
        quantize_block_q5_1(&x, &mut y51);
        assert!(y51.iter().all(|&b| b == 0));
    }

    #[test]
    fn q8_0_rounds_half_away_from_zero() {
        // amax 127 gives d = 1 exactly, so x * id = x and roundf applies to the halves.
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 0.5;
        let mut y = [0u8; 34];
        quantize_block_q8_0(&x, &mut y);
        assert_eq!([y[2] as i8, y[3] as i8, y[4] as i8, y[5] as i8], [127, 3, -3, 1]);
    }

    #[test]
    fn q5_0_and_q5_1_round_trip_their_own_grid() {
        let x = ramp(0.25, 16.0); // -4 .. 3.75: max by magnitude -4, d = 0.25
        let mut y = [0u8; 22];
        quantize_block_q5_0(&x, &mut y);
        let mut back = [0f32; 32];
        dequantize(GgmlType::Q5_0, &y, &mut back).unwrap();
        assert_eq!(back, x);
        let x = ramp(1.0, 0.0); // 0..31: min 0, d = 1
        let mut y = [0u8; 24];
        quantize_block_q5_1(&x, &mut y);
        dequantize(GgmlType::Q5_1, &y, &mut back).unwrap();
        assert_eq!(back, x);
        let mut y = [0u8; 20];
        let x16: [f32; 32] = std::array::from_fn(|i| (i % 16) as f32);
        quantize_block_q4_1(&x16, &mut y);
        dequantize(GgmlType::Q4_1, &y, &mut back).unwrap();
        assert_eq!(back, x16);
    }

    #[test]
    fn a_subnormal_block_does_not_panic_and_matches_cs_conversions() {
        // d = max / -8 is subnormal, 1/d overflows to inf: x * inf is +-inf (or NaN
        // for zeros), which C converts to the indefinite integer, low byte 0.
        let mut x = [0f32; 32];
        x[0] = 1e-39;
        x[5] = -1e-40;
        let mut y = [0u8; 18];
        quantize_block_q4_0(&x, &mut y);
        let mut y8 = [0u8; 34];
        quantize_block_q8_0(&x, &mut y8);
        assert_eq!(y8[2], 0);
    }
}
