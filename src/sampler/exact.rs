//! The sampler's arithmetic, defined so that a GPU computes the same bits (`kernels/sample.cu`
//! implements every function here under the same name).
//!
//! - [`exp_det`]: e^x in f64 from IEEE additions and multiplications only (no libm, no FMA), so
//!   the host and the device round identically.
//! - [`sum_exp`]: Σ exp(lᵢ − max) in a fixed order that a block of threads follows:
//!   [`LANES`] running sums (lane j adds elements j, j + LANES, … in index order), then a
//!   pairwise tree over the lanes.
//! - [`fixed_exp`]: probabilities as integers (`exp_det · 2^FIX_BITS`, truncated), so that
//!   totals and running sums are exact and do not depend on the order of summation.
//! - [`key`]: the candidate order (logit descending by `total_cmp`, then id ascending) as one
//!   integer, so that "the first k in that order" is "the keys at or above a threshold".

/// Running sums of [`sum_exp`] (a block of 1024 threads keeps four each).
pub const LANES: usize = 4096;

/// Fractional bits of a fixed-point probability: `exp(0)` is `1 << FIX_BITS`. With a
/// vocabulary of at most 2^19 tokens a total stays below 2^63.
pub const FIX_BITS: u32 = 44;

/// The largest vocabulary the fixed-point totals allow.
pub const MAX_VOCAB: usize = 1 << 19;

const INV_LN2: f64 = f64::from_bits(0x3ff71547652b82fe);
/// ln 2 split so that `k · LN2_HI` is exact for |k| < 2^11 (fdlibm's constants).
const LN2_HI: f64 = f64::from_bits(0x3fe62e42fee00000);
const LN2_LO: f64 = f64::from_bits(0x3dea39ef35793c76);
/// 1.5 · 2^52: adding and subtracting it rounds an f64 of magnitude < 2^51 to an integer.
const ROUND: f64 = 6755399441055744.0;
/// 1/n! for n = 12 down to 0 (each the correctly rounded quotient).
const INV_FACT: [f64; 13] = [
    f64::from_bits(0x3e21eed8eff8d898),
    f64::from_bits(0x3e5ae64567f544e4),
    f64::from_bits(0x3e927e4fb7789f5c),
    f64::from_bits(0x3ec71de3a556c734),
    f64::from_bits(0x3efa01a01a01a01a),
    f64::from_bits(0x3f2a01a01a01a01a),
    f64::from_bits(0x3f56c16c16c16c17),
    f64::from_bits(0x3f81111111111111),
    f64::from_bits(0x3fa5555555555555),
    f64::from_bits(0x3fc5555555555555),
    f64::from_bits(0x3fe0000000000000),
    f64::from_bits(0x3ff0000000000000),
    f64::from_bits(0x3ff0000000000000),
];

/// e^x for x ≤ 709, within a few ulps: x = k·ln 2 + r with |r| ≤ ln 2 / 2, the degree-12
/// Taylor polynomial of e^r by Horner's rule, times 2^k. Below −708 (and for NaN) it is 0;
/// `exp_det(0.0)` is exactly 1.
#[inline(always)]
pub fn exp_det(x: f64) -> f64 {
    let v = exp_core(x);
    if x >= -708.0 {
        if x > 709.0 {
            f64::INFINITY
        } else {
            v
        }
    } else {
        0.0
    }
}

/// exp_det inside its range (garbage outside, which exp_det discards). Branch-free so that
/// loops over it vectorize: k is read from the rounded sum's low mantissa bits (the same
/// integer as `kf as i64`, without a float-to-integer conversion).
#[inline(always)]
fn exp_core(x: f64) -> f64 {
    let t = x * INV_LN2 + ROUND;
    let kf = t - ROUND;
    let r = (x - kf * LN2_HI) - kf * LN2_LO;
    let mut p = INV_FACT[0];
    for &c in &INV_FACT[1..] {
        p = p * r + c;
    }
    let biased = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(1023);
    p * f64::from_bits(biased << 52)
}

/// The fixed-point probability weight of a logit `x` below the maximum (x = l − max ≤ 0):
/// `exp_det(x) · 2^FIX_BITS` truncated; 0 below about −30.5 and for NaN.
#[inline]
pub fn fixed_exp(x: f64) -> u64 {
    if !(x >= -32.0) {
        return 0;
    }
    (exp_det(x) * (1u64 << FIX_BITS) as f64) as u64
}

/// The largest logit (NaN ignored, −0 read as +0): the `max` of [`sum_exp`].
pub fn max_logit(logits: &[f32]) -> f32 {
    let m = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if m == 0.0 {
        0.0
    } else {
        m
    }
}

/// Σ exp_det(lᵢ − max) over all logits, in the fixed order described in the module header.
pub fn sum_exp(logits: &[f32], max: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked above).
        return unsafe { sum_exp_avx2(logits, max) };
    }
    sum_exp_lanes(logits, max)
}

/// [`sum_exp`] compiled for AVX2: the same element-wise operations, four lanes at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_exp_avx2(logits: &[f32], max: f32) -> f64 {
    sum_exp_lanes(logits, max)
}

#[inline(always)]
fn sum_exp_lanes(logits: &[f32], max: f32) -> f64 {
    let m = max as f64;
    let mut lanes = [0.0f64; LANES];
    for chunk in logits.chunks(LANES) {
        for (s, &l) in lanes.iter_mut().zip(chunk) {
            *s += exp_det(l as f64 - m);
        }
    }
    let mut width = LANES / 2;
    while width > 0 {
        for j in 0..width {
            lanes[j] += lanes[j + width];
        }
        width /= 2;
    }
    lanes[0]
}

/// `f32::total_cmp` order as an unsigned integer: a < b (total_cmp) iff ord(a) < ord(b).
#[inline]
pub fn ord(v: f32) -> u32 {
    let b = v.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The candidate order as one integer: larger keys come first (higher logit, then lower id).
#[inline]
pub fn key(v: f32, id: u32) -> u64 {
    ((ord(v) as u64) << 32) | (!id) as u64
}

/// The id a [`key`] was made from.
#[inline]
pub fn key_id(k: u64) -> u32 {
    !(k as u32)
}

/// ⌈p · total⌉ for an f32 `p` in (0, 1], exactly (in 128-bit integers).
pub fn ceil_mul(p: f32, total: u64) -> u64 {
    let bits = p.to_bits();
    let e = (bits >> 23) & 0xff;
    let f = (bits & 0x7f_ffff) as u128;
    // p = mant · 2^-shift
    let (mant, shift) = if e == 0 { (f, 149u32) } else { (f | (1 << 23), 150 - e) };
    let prod = mant * total as u128;
    if shift >= 128 {
        return (prod > 0) as u64;
    }
    ((prod + (1u128 << shift) - 1) >> shift) as u64
}

/// The running-sum threshold of the draw: the first candidate whose running sum `cum` has
/// `cum · 2^53 > coin · total` (coin a 53-bit integer, see `sampler::draw_bits`), that is
/// `cum ≥ ⌊coin · total / 2^53⌋ + 1`.
pub fn draw_threshold(coin: u64, total: u64) -> u64 {
    ((coin as u128 * total as u128) >> 53) as u64 + 1
}

/// ⌈min_p · 2^FIX_BITS⌉: the smallest weight min-p keeps (the most likely token weighs
/// exactly 2^FIX_BITS).
pub fn min_p_threshold(min_p: f32) -> u64 {
    (min_p as f64 * (1u64 << FIX_BITS) as f64).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_det_is_close_to_libm_and_exact_at_zero() {
        assert_eq!(exp_det(0.0), 1.0);
        assert_eq!(exp_det(-0.0), 1.0);
        let mut worst = 0.0f64;
        let mut x = -707.9f64;
        while x < 0.0 {
            let (a, b) = (exp_det(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 1e-15, "relative error {worst}");
        assert_eq!(exp_det(-708.5), 0.0);
        assert_eq!(exp_det(f64::NAN), 0.0);
        assert_eq!(exp_det(f64::NEG_INFINITY), 0.0);
    }

    #[test]
    fn fixed_exp_is_one_at_zero_and_zero_far_below() {
        assert_eq!(fixed_exp(0.0), 1 << FIX_BITS);
        assert_eq!(fixed_exp(-31.0), 0);
        assert!(fixed_exp(-30.0) > 0);
        assert_eq!(fixed_exp(f64::NAN), 0);
    }

    #[test]
    fn key_orders_like_total_cmp_then_id() {
        let vals = [f32::NEG_INFINITY, -3.5, -0.0, 0.0, 1e-40, 2.0, f32::INFINITY, f32::NAN];
        for (i, &a) in vals.iter().enumerate() {
            for &b in &vals[i + 1..] {
                assert!(ord(a) < ord(b), "{a} {b}");
            }
        }
        assert!(key(1.0, 3) > key(1.0, 4));
        assert!(key(1.5, 9) > key(1.0, 0));
        assert_eq!(key_id(key(-2.0, 77)), 77);
    }

    #[test]
    fn ceil_mul_is_exact() {
        assert_eq!(ceil_mul(1.0, 12345), 12345);
        assert_eq!(ceil_mul(0.5, 5), 3);
        assert_eq!(ceil_mul(0.5, 4), 2);
        assert_eq!(ceil_mul(f32::from_bits(1), 1 << 62), 1);
        // 0.9f32 is 15099494 · 2^-24.
        let t = 1u64 << 50;
        assert_eq!(ceil_mul(0.9, t), ((15099494u128 * t as u128).div_ceil(1 << 24)) as u64);
    }

    #[test]
    fn draw_threshold_bounds() {
        assert_eq!(draw_threshold(0, 1000), 1);
        assert_eq!(draw_threshold((1 << 53) - 1, 1000), 1000);
    }

    #[test]
    fn exp_det_is_the_plain_formula() {
        // The written-out definition (branches, a float-to-integer conversion).
        fn plain(x: f64) -> f64 {
            if !(x >= -708.0) {
                return 0.0;
            }
            if x > 709.0 {
                return f64::INFINITY;
            }
            let kf = (x * INV_LN2 + ROUND) - ROUND;
            let r = (x - kf * LN2_HI) - kf * LN2_LO;
            let mut p = INV_FACT[0];
            for &c in &INV_FACT[1..] {
                p = p * r + c;
            }
            p * f64::from_bits(((kf as i64 + 1023) as u64) << 52)
        }
        let mut x = -720.0f64;
        while x < 712.0 {
            assert_eq!(exp_det(x).to_bits(), plain(x).to_bits(), "{x}");
            x += 0.00731;
        }
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 0.0, -708.0, 709.0] {
            assert_eq!(exp_det(x).to_bits(), plain(x).to_bits(), "{x}");
        }
    }

    #[test]
    fn sum_exp_twins_agree_bitwise() {
        let logits: Vec<f32> = (0..50_000).map(|i| ((i * 7919 % 2003) as f32) * 0.013 - 13.0).collect();
        let m = max_logit(&logits);
        assert_eq!(sum_exp(&logits, m).to_bits(), sum_exp_lanes(&logits, m).to_bits());
    }

    #[test]
    fn sum_exp_matches_a_plain_sum_closely() {
        let logits: Vec<f32> = (0..10_000).map(|i| ((i * 7919 % 1000) as f32) * 0.01 - 5.0).collect();
        let m = max_logit(&logits);
        let plain: f64 = logits.iter().map(|&l| (l as f64 - m as f64).exp()).sum();
        let s = sum_exp(&logits, m);
        assert!(((s - plain) / plain).abs() < 1e-13);
    }
}
