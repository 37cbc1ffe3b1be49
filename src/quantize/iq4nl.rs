//! ggml's IQ4_NL quantizer as `llama_model_quantize` runs it without an
//! importance matrix: `quantize_iq4_nl` → `quantize_row_iq4_nl_impl(32, 32, ...,
//! ntry = 7)` per block, weights `x*x`. (ggml's `quantize_row_iq4_nl_ref` uses
//! `ntry = -1` and gives different bytes; llama.cpp's file writer does not call it.)
//!
//! Transcribed line by line in the same f32 order. The block layout is the one
//! `gguf::quant::dequantize_block_iq4_nl` reads. This file does not choose types.

use crate::gguf::quant::{f32_to_f16, BLOCK_IQ4_NL_BYTES, KVALUES_IQ4NL, QK4_NL};

/// The `ntry` `quantize_iq4_nl` passes: 15 grid stretches are tried.
const NTRY: i32 = 7;
const GROUP_MAX_EPS: f32 = 1e-15;

/// The levels as f32, as C promotes them in every comparison.
const LEVELS: [f32; 16] = {
    let mut out = [0f32; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = KVALUES_IQ4NL[i] as f32;
        i += 1;
    }
    out
};

/// ggml's `best_index_int8(16, kvalues_iq4nl, x)`: the index of the level nearest
/// to `x`; on an exact tie, the upper one.
///
/// ggml binary-searches for the bracketing pair `val[mu-1] <= x < val[mu]`; with
/// strictly increasing levels that `mu` is the number of levels `<= x`, which is
/// counted here without branches (clamped to 1..=15, which also gives ggml's
/// answers below the first and above the last level). NaN, for which every
/// comparison is false, ends ggml's search at 15.
#[inline(always)]
fn best_index(x: f32) -> usize {
    if x.is_nan() {
        return 15;
    }
    let mut count = 0usize;
    for v in LEVELS {
        count += usize::from(v <= x);
    }
    let mu = count.clamp(1, 15);
    if x - LEVELS[mu - 1] < LEVELS[mu] - x {
        mu - 1
    } else {
        mu
    }
}

/// Steps between consecutive levels, for [`nearest_level`].
const STEPS: [f32; 15] = {
    let mut out = [0f32; 15];
    let mut i = 0;
    while i < 15 {
        out[i] = LEVELS[i + 1] - LEVELS[i];
        i += 1;
    }
    out
};

/// `kvalues_iq4nl[best_index(x)]` without branches or lookups, so that the hot
/// loop vectorizes. `best_index` compares `x` with the bracketing pair
/// `(LEVELS[mu-1], LEVELS[mu])`, `mu` = the number of levels `<= x` clamped to
/// 1..=15; the comparisons `LEVELS[i] <= x` are monotone in `i`, so the pair is
/// `(LEVELS[0], LEVELS[1])` plus one step for each `i` in 1..=14 where it holds
/// (sums of small integers, exact in f32). Then the nearer one, the upper on ties.
/// NaN makes every comparison false, and ggml's search ends at level 15.
#[inline(always)]
fn nearest_level(x: f32) -> f32 {
    let mut lo = LEVELS[0];
    let mut hi = LEVELS[1];
    for i in 1..15 {
        let below = LEVELS[i] <= x;
        lo += if below { STEPS[i - 1] } else { 0.0 };
        hi += if below { STEPS[i] } else { 0.0 };
    }
    let q = if x - lo < hi - x { lo } else { hi };
    if x.is_nan() {
        LEVELS[15]
    } else {
        q
    }
}

/// One IQ4_NL block (`f16 d; u8 qs[16]`, low nibbles elements 0..16).
///
/// On x86-64 with AVX2 the same code is compiled a second time for AVX2 (twice
/// the vector width for the 15-way search below). That changes no result: Rust
/// never contracts `a*b + c` into a fused multiply-add, and every other f32
/// operation is correctly rounded whatever the instruction set.
pub fn quantize_block_iq4_nl(x: &[f32; QK4_NL], y: &mut [u8; BLOCK_IQ4_NL_BYTES]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { quantize_block_avx2(x, y) };
    }
    quantize_block(x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_block_avx2(x: &[f32; QK4_NL], y: &mut [u8; BLOCK_IQ4_NL_BYTES]) {
    quantize_block(x, y)
}

#[inline(always)]
fn quantize_block(x: &[f32; QK4_NL], y: &mut [u8; BLOCK_IQ4_NL_BYTES]) {
    let values = &KVALUES_IQ4NL;
    let v0 = LEVELS[0];
    let mut weight = [0f32; QK4_NL];
    for (w, v) in weight.iter_mut().zip(x) {
        *w = v * v;
    }
    let mut l = [0u8; QK4_NL];
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    // With one block per "super-block" the scale found here is stored directly.
    let scale = if amax < GROUP_MAX_EPS {
        0.0
    } else {
        let mut d = -max / v0; // ntry > 0
        let id = 1.0 / d;
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for j in 0..QK4_NL {
            let q = nearest_level(id * x[j]);
            let w = weight[j];
            sumqx += w * q * x[j];
            sumq2 += w * q * q;
        }
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        // The 2*NTRY+1 stretches are independent until they are compared, so their
        // sums are accumulated side by side, 16 lanes wide (the last one unused),
        // each in ggml's element order so every f32 sum is ggml's; then they are
        // compared in ggml's order.
        const N: usize = 2 * NTRY as usize + 1;
        const LANES: usize = 16;
        let ids: [f32; LANES] = std::array::from_fn(|t| (t.min(N - 1) as i32 - NTRY + values[0] as i32) as f32 / max);
        let mut sqx = [0f32; LANES];
        let mut sq2 = [0f32; LANES];
        for j in 0..QK4_NL {
            let (xj, w) = (x[j], weight[j]);
            let mut q = [0f32; LANES];
            for t in 0..LANES {
                q[t] = nearest_level(ids[t] * xj);
            }
            for t in 0..LANES {
                sqx[t] += w * q[t] * xj;
                sq2[t] += w * q[t] * q[t];
            }
        }
        for t in 0..N {
            if sq2[t] > 0.0 && sqx[t] * sqx[t] > best * sq2[t] {
                d = sqx[t] / sq2[t];
                best = d * sqx[t];
            }
        }
        d
    };
    y[0..2].copy_from_slice(&f32_to_f16(scale).to_le_bytes());
    let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    for j in 0..QK4_NL {
        l[j] = best_index(id * x[j]) as u8;
    }
    for j in 0..16 {
        y[2 + j] = l[j] | (l[16 + j] << 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::quant::dequantize;
    use crate::gguf::GgmlType;

    #[test]
    fn best_index_picks_the_nearest_level_lower_on_ties() {
        assert_eq!(best_index(-1000.0), 0);
        assert_eq!(best_index(1000.0), 15);
        assert_eq!(best_index(1.0), 8);
        assert_eq!(best_index(7.0), 9); // between 1 and 13: tie goes to the upper (x - 1 < 13 - x is false)
        assert_eq!(best_index(6.9), 8);
        assert_eq!(best_index(-10.0), 7);
        assert_eq!(best_index(f32::NAN), 15);
    }

    #[test]
    fn nearest_level_is_the_level_best_index_picks() {
        let mut xs: Vec<f32> = vec![f32::NAN, f32::INFINITY, -f32::INFINITY, 0.0, -0.0, f32::MAX, -f32::MAX];
        for v in KVALUES_IQ4NL {
            let v = v as f32;
            xs.extend([v, v.next_up(), v.next_down(), v + 0.5, v - 0.5]);
        }
        for w in KVALUES_IQ4NL.windows(2) {
            let mid = (w[0] as f32 + w[1] as f32) / 2.0;
            xs.extend([mid, mid.next_up(), mid.next_down()]);
        }
        for i in -3000..3000 {
            xs.push(i as f32 * 0.0517);
        }
        for x in xs {
            let want = LEVELS[best_index(x)];
            assert_eq!(nearest_level(x).to_bits(), want.to_bits(), "x = {x}");
        }
    }

    #[test]
    fn a_block_on_the_grid_round_trips() {
        // x = level * 0.01: the best scale is exactly the grid's.
        let x: [f32; 32] = std::array::from_fn(|i| KVALUES_IQ4NL[i % 16] as f32 / 64.0);
        let mut y = [0u8; 18];
        quantize_block_iq4_nl(&x, &mut y);
        let mut back = [0f32; 32];
        dequantize(GgmlType::IQ4_NL, &y, &mut back).unwrap();
        let err: f32 = back.iter().zip(&x).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(err < 2e-3, "max error {err}");
        let zeros = [0f32; 32];
        quantize_block_iq4_nl(&zeros, &mut y);
        assert_eq!(&y[..2], &[0, 0]);
    }
}
