//! The float-to-integer conversions ggml's reference quantizers use, reproduced
//! bit for bit for every input (including the out-of-range ones a hostile or
//! degenerate block can produce).
//!
//! This file knows nothing about block formats; `legacy`, `kquants` and `iq4nl`
//! call these helpers.

/// ggml's `nearest_int` (ggml-quants.c): adds 1.5 * 2^23 so the FPU rounds to the
/// nearest integer, ties to even, and reads the integer out of the mantissa bits.
///
/// ggml asserts `|x| <= 4194303` in debug builds only; release builds (the ones
/// that write model files) apply the same bit formula to anything, so this does
/// too rather than rounding "properly" out of range.
#[inline]
pub fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    ((val.to_bits() as i32) & 0x007f_ffff) - 0x0040_0000
}

/// C's `(int)x` as x86-64 compiles it (`cvttss2si`): truncation toward zero, and
/// the "integer indefinite" value `i32::MIN` for NaN and anything out of range
/// (Rust's `as` saturates instead, which would give different bytes).
#[inline]
pub fn c_int(x: f32) -> i32 {
    if (-2_147_483_648.0..2_147_483_648.0).contains(&x) {
        x as i32
    } else {
        // NaN is outside every range too.
        i32::MIN
    }
}

/// C's `(int8_t)x` / `(uint8_t)x` for a float: the 32-bit truncation above, then
/// the low byte (GCC's conversion to a narrower integer is modular).
#[inline]
pub fn c_byte(x: f32) -> u8 {
    c_int(x) as u8
}

/// C's `roundf`: half away from zero (not `nearest_int`'s half to even).
#[inline]
pub fn roundf(x: f32) -> f32 {
    x.round()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        let cases = [(0.5, 0), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (-2.5, -2), (2.49, 2), (-7.51, -8)];
        for (x, want) in cases {
            assert_eq!(nearest_int(x), want, "nearest_int({x})");
        }
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
        assert_eq!(nearest_int(-4_194_303.0), -4_194_303);
    }

    #[test]
    fn nearest_int_out_of_range_follows_the_bit_formula() {
        // 2^23 + 1.5 * 2^23 = 2.5 * 2^23: exponent 24, mantissa bits 0x200000
        // (the ulp there is 2), so the formula gives 0x200000 - 0x400000.
        assert_eq!(nearest_int(8_388_608.0), 0x20_0000 - 0x40_0000);
        // NaN stays NaN after the add; its mantissa bits are read as they are.
        let nan_bits = (f32::NAN + 12_582_912.0).to_bits() as i32;
        assert_eq!(nearest_int(f32::NAN), (nan_bits & 0x7f_ffff) - 0x40_0000);
    }

    #[test]
    fn c_conversions_truncate_and_use_the_indefinite_value() {
        assert_eq!(c_int(2.9), 2);
        assert_eq!(c_int(-2.9), -2);
        assert_eq!(c_int(f32::NAN), i32::MIN);
        assert_eq!(c_int(f32::INFINITY), i32::MIN);
        assert_eq!(c_int(-f32::INFINITY), i32::MIN);
        assert_eq!(c_int(3e9), i32::MIN);
        assert_eq!(c_int(-2_147_483_648.0), i32::MIN);
        assert_eq!(c_byte(16.5), 16);
        assert_eq!(c_byte(300.0), 44);
        assert_eq!(c_byte(-1.5) as i8, -1);
        assert_eq!(c_byte(f32::NAN), 0);
        assert_eq!(roundf(2.5), 3.0);
        assert_eq!(roundf(-2.5), -3.0);
    }
}
