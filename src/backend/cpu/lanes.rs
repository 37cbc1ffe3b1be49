//! ggml's x86 vector building blocks written out lane by lane, in plain Rust: the 8-lane
//! accumulators of its AVX2 kernels, their horizontal reductions, and the vectorized `expf`
//! and SiLU approximations (`ggml_v_expf`, `ggml_v_silu`).
//!
//! These are the arithmetic the rest of `backend::cpu` is built from. Each function names the
//! ggml macro or function whose operations, operands and order it reproduces, so that a value
//! computed here is bit for bit the value llama.cpp's CPU backend computes (the build the
//! reference recordings come from: x86-64 with AVX2, FMA and F16C). `f32::mul_add` is a fused
//! multiply-add, exactly `_mm256_fmadd_ps` on one lane (on CPUs without FMA it is computed in
//! software, slowly but with the same result). Nothing here is vectorized: the `std::arch` twins
//! live in `simd`, and tests prove them equal to these.

/// One AVX register of eight f32 lanes (`__m256`).
pub type F32x8 = [f32; 8];

/// `hsum_float_8` (ggml-cpu/arch/x86/quants.c): the high half added to the low half, then
/// `movehl` and `movehdup` folds: `((x0+x4) + (x2+x6)) + ((x1+x5) + (x3+x7))`.
#[inline(always)]
pub fn hsum_float_8(x: F32x8) -> f32 {
    let r = [x[4] + x[0], x[5] + x[1], x[6] + x[2], x[7] + x[3]];
    let s0 = r[0] + r[2];
    let s1 = r[1] + r[3];
    s0 + s1
}

/// `GGML_F32x8_REDUCE` with `GGML_F32_ARR = 4` (ggml-cpu/simd-mappings.h): the four
/// accumulators summed as `(a0+a2) + (a1+a3)`, then the halves added and two `hadd`s:
/// `(t0+t1) + (t2+t3)` with `t_i = x_i + x_{i+4}`.
#[inline(always)]
pub fn reduce_f32x8_4(acc: [F32x8; 4]) -> f32 {
    let mut x0 = [0.0f32; 8];
    let mut x1 = [0.0f32; 8];
    for l in 0..8 {
        x0[l] = acc[0][l] + acc[2][l];
        x1[l] = acc[1][l] + acc[3][l];
    }
    for l in 0..8 {
        x0[l] += x1[l];
    }
    let t = [x0[0] + x0[4], x0[1] + x0[5], x0[2] + x0[6], x0[3] + x0[7]];
    (t[0] + t[1]) + (t[2] + t[3])
}

/// One lane of `ggml_v_expf` (ggml-cpu/vec.h, the AVX2 + FMA version): `exp(x)` as
/// `2^n · (1 + j)` with `n = round(x / ln 2)` found by the 1.5·2^23 rounding trick and `j` a
/// degree-5 polynomial of the reduced argument; arguments with `|n| > 126` take the scaled
/// paths (overflow to infinity, underflow to 0 beyond `|n| > 192`). Accurate to about 1 ulp,
/// but not `expf`: ggml uses it for softmax and SiLU, so we must too.
#[inline(always)]
pub fn v_expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // 0x1.715476p+0 = 1/ln 2
    let n = z - r;
    // b = x - n·ln2_hi - n·ln2_lo, as two fnmadds.
    let b = (-n).mul_add(f32::from_bits(0x35bf_be8e), (-n).mul_add(f32::from_bits(0x3f31_7200), x));
    let e = z.to_bits().wrapping_shl(23);
    let k = f32::from_bits(e.wrapping_add(1.0f32.to_bits()));
    let c = n.abs() > 126.0;
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010)
        .mul_add(b, f32::from_bits(0x3d2b_9f17))
        .mul_add(u, f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)))
        .mul_add(u, f32::from_bits(0x3f7f_fff6) * b);
    if !c {
        return j.mul_add(k, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// One lane of `ggml_v_silu` (ggml-cpu/vec.h): `x / (1 + v_expf(0 - x))`.
#[inline(always)]
pub fn v_silu(x: f32) -> f32 {
    x / (1.0 + v_expf(0.0 - x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_ggmls_hex_floats() {
        // (hex float, its f32 bits), checked with Python's float.fromhex.
        let table: [(f64, u32); 9] = [
            (12582912.0, 0x4b40_0000),            // 0x1.8p23
            (1.4426950216293335, 0x3fb8_aa3b),    // 0x1.715476p+0
            (0.693145751953125, 0x3f31_7200),     // 0x1.62e4p-1
            (1.428606765330187e-06, 0x35bf_be8e), // 0x1.7f7d1cp-20
            (0.008247390389442444, 0x3c07_2010),  // 0x1.0e4020p-7
            (0.04189976677298546, 0x3d2b_9f17),   // 0x1.573e2ep-5
            (0.16668395698070526, 0x3e2a_af33),   // 0x1.555e66p-3
            (0.4999912679195404, 0x3eff_fedb),    // 0x1.fffdb6p-2
            (0.9999994039535522, 0x3f7f_fff6),    // 0x1.ffffecp-1
        ];
        for (v, bits) in table {
            assert_eq!((v as f32).to_bits(), bits, "{v}");
        }
    }

    #[test]
    fn v_expf_is_close_to_exp_and_handles_the_ends() {
        for i in -2000..2000 {
            let x = i as f32 * 0.043;
            let (got, want) = (v_expf(x), x.exp());
            assert!(((got - want) / want).abs() < 4e-7, "x {x}: {got} vs {want}");
        }
        assert_eq!(v_expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(v_expf(-200.0), 0.0);
        assert_eq!(v_expf(0.0), 1.0);
        assert!(v_expf(100.0).is_infinite());
    }

    #[test]
    fn reductions_follow_ggmls_pairing() {
        // Values chosen so that any other pairing rounds differently.
        let x = [1.0e8, 1.0, -1.0e8, 3.0, 0.5, 7.0, 0.25, -2.0];
        assert_eq!(hsum_float_8(x), ((1.0e8f32 + 0.5) + (-1.0e8f32 + 0.25)) + ((1.0 + 7.0) + (3.0 - 2.0)));
        let acc = [x, [0.0; 8], [1.0; 8], [0.0; 8]];
        let mut s = [0.0f32; 8];
        for l in 0..8 {
            s[l] = x[l] + 1.0;
        }
        assert_eq!(reduce_f32x8_4(acc), ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])));
    }
}
