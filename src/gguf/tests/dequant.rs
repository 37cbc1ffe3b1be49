//! Dequantization unit tests: scalar conversions checked exhaustively against the
//! `half` crate, hand-built blocks with known values for each type, and
//! pseudo-random blocks whose checksums were computed independently with gguf-py.

use crate::gguf::quant::{self, bf16_to_f32, dequantize, f16_to_f32, f32_to_bf16, f32_to_f16};
use crate::gguf::{GgmlType, GgufError};

const F16_HALF: u16 = 0x3800; // 0.5
const F16_QUARTER: u16 = 0x3400; // 0.25
const F16_ONE: u16 = 0x3c00;
const F16_MINUS_ONE: u16 = 0xbc00;
const F16_TWO: u16 = 0x4000;

fn deq(ty: GgmlType, data: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n];
    dequantize(ty, data, &mut out).expect("valid size");
    out
}

#[test]
fn f16_to_f32_matches_half_for_every_bit_pattern() {
    for bits in 0..=u16::MAX {
        let ours = f16_to_f32(bits);
        let theirs = half::f16::from_bits(bits).to_f32();
        if theirs.is_nan() {
            assert!(ours.is_nan(), "{bits:#06x}");
            // Quiet NaN, sign and payload kept (what ggml's algorithm and F16C do).
            let expect = ((bits as u32 & 0x8000) << 16) | 0x7fc0_0000 | ((bits as u32 & 0x3ff) << 13);
            assert_eq!(ours.to_bits(), expect, "{bits:#06x}");
        } else {
            assert_eq!(ours.to_bits(), theirs.to_bits(), "{bits:#06x}");
        }
    }
}

#[test]
fn f32_to_f16_rounds_to_nearest_even_like_ggml() {
    // Exact round trip for every finite half.
    for bits in 0..=u16::MAX {
        let f = half::f16::from_bits(bits);
        if !f.is_nan() {
            assert_eq!(f32_to_f16(f.to_f32()), bits, "{bits:#06x}");
        }
    }
    // A sweep of f32 bit patterns against half's round-to-nearest-even.
    let mut bits: u32 = 0;
    loop {
        let x = f32::from_bits(bits);
        if x.is_nan() {
            assert_eq!(f32_to_f16(x), 0x7e00 | ((bits >> 16) as u16 & 0x8000), "{bits:#010x}");
        } else {
            assert_eq!(f32_to_f16(x), half::f16::from_f32(x).to_bits(), "{bits:#010x}");
        }
        match bits.checked_add(997) {
            Some(b) => bits = b,
            None => break,
        }
    }
    // Ties: 1 + 2^-11 is halfway between 1 and the next half; even wins.
    assert_eq!(f32_to_f16(1.0 + f32::powi(2.0, -11)), 0x3c00);
    assert_eq!(f32_to_f16(1.0 + 3.0 * f32::powi(2.0, -11)), 0x3c02);
    assert_eq!(f32_to_f16(65520.0), 0x7c00); // rounds up to infinity
    assert_eq!(f32_to_f16(65519.0), 0x7bff);
    assert_eq!(f32_to_f16(-0.0), 0x8000);
}

#[test]
fn bf16_conversions() {
    assert_eq!(bf16_to_f32(0x3f80), 1.0);
    assert_eq!(bf16_to_f32(0xc040), -3.0);
    assert_eq!(bf16_to_f32(0x0001).to_bits(), 0x0001_0000);
    assert_eq!(f32_to_bf16(1.0), 0x3f80);
    // 1 + 2^-8 is a tie between bf16 1.0 and 1.0078125: even (1.0) wins.
    assert_eq!(f32_to_bf16(1.0 + f32::powi(2.0, -8)), 0x3f80);
    assert_eq!(f32_to_bf16(1.0 + 3.0 * f32::powi(2.0, -8)), 0x3f82);
    assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)), 0x7fc0); // NaN forced quiet
}

#[test]
fn plain_types_are_exact() {
    let vals = [0.0f32, -0.0, 1.5, -2.25, f32::INFINITY, 1e-40];
    let f32_bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let out = deq(GgmlType::F32, &f32_bytes, vals.len());
    assert_eq!(out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), vals.iter().map(|v| v.to_bits()).collect::<Vec<_>>());

    let f16_bits = [F16_ONE, F16_MINUS_ONE, 0x0001, 0x7bff, 0x7c00];
    let bytes: Vec<u8> = f16_bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let out = deq(GgmlType::F16, &bytes, f16_bits.len());
    assert_eq!(out, vec![1.0, -1.0, f32::powi(2.0, -24), 65504.0, f32::INFINITY]);

    let bf16_bits = [0x3f80u16, 0xc040, 0x4049];
    let bytes: Vec<u8> = bf16_bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let out = deq(GgmlType::BF16, &bytes, bf16_bits.len());
    assert_eq!(out, vec![1.0, -3.0, 3.140625]);
}

#[test]
fn q4_0_is_q_minus_8_times_d_low_nibbles_first() {
    let mut block = F16_HALF.to_le_bytes().to_vec();
    // Low nibble j, high nibble 15 - j.
    block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let out = deq(GgmlType::Q4_0, &block, 32);
    for j in 0..16 {
        assert_eq!(out[j], (j as f32 - 8.0) * 0.5, "element {j}");
        assert_eq!(out[j + 16], ((15 - j) as f32 - 8.0) * 0.5, "element {}", j + 16);
    }
}

#[test]
fn q4_1_is_q_times_d_plus_m() {
    let mut block = F16_QUARTER.to_le_bytes().to_vec();
    block.extend(F16_MINUS_ONE.to_le_bytes());
    block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let out = deq(GgmlType::Q4_1, &block, 32);
    for j in 0..16 {
        assert_eq!(out[j], j as f32 * 0.25 - 1.0, "element {j}");
        assert_eq!(out[j + 16], (15 - j) as f32 * 0.25 - 1.0, "element {}", j + 16);
    }
}

#[test]
fn q5_0_and_q5_1_use_the_packed_fifth_bit() {
    // qh bit j is the fifth bit of element j (low nibbles) and bit j+16 that of
    // element j+16 (high nibbles). Set the fifth bit on odd elements only.
    let qh: u32 = 0xaaaa_aaaa;
    let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
    let expected_q = |i: usize| -> i32 {
        let nib = if i < 16 { i as i32 } else { 15 - (i as i32 - 16) };
        nib + if i % 2 == 1 { 16 } else { 0 }
    };

    let mut b0 = F16_TWO.to_le_bytes().to_vec();
    b0.extend(qh.to_le_bytes());
    b0.extend(&qs);
    let out = deq(GgmlType::Q5_0, &b0, 32);
    for (i, v) in out.iter().enumerate() {
        assert_eq!(*v, (expected_q(i) - 16) as f32 * 2.0, "q5_0 element {i}");
    }

    let mut b1 = F16_HALF.to_le_bytes().to_vec();
    b1.extend(F16_ONE.to_le_bytes());
    b1.extend(qh.to_le_bytes());
    b1.extend(&qs);
    let out = deq(GgmlType::Q5_1, &b1, 32);
    for (i, v) in out.iter().enumerate() {
        assert_eq!(*v, expected_q(i) as f32 * 0.5 + 1.0, "q5_1 element {i}");
    }
}

#[test]
fn q8_0_is_q_times_d_over_several_blocks() {
    let mut data = Vec::new();
    for (b, d) in [(0u8, F16_HALF), (1, F16_MINUS_ONE)] {
        data.extend(d.to_le_bytes());
        data.extend((0..32).map(|j| (j as i8 - 16 + b as i8) as u8));
    }
    let out = deq(GgmlType::Q8_0, &data, 64);
    for j in 0..32 {
        assert_eq!(out[j], (j as f32 - 16.0) * 0.5);
        assert_eq!(out[32 + j], 15.0 - j as f32);
    }
    let mut extreme = F16_ONE.to_le_bytes().to_vec();
    extreme.extend([0x80u8; 32]); // -128
    assert!(deq(GgmlType::Q8_0, &extreme, 32).iter().all(|&v| v == -128.0));
}

#[test]
fn q4_k_simple_block() {
    // d = 1, dmin = 0.5; scales j<4: sc = q[j] & 63, min = q[j+4] & 63; j>=4
    // mixes the high bits. Use sc = 2 and min = 3 for every sub-block.
    let mut b = vec![0u8; 144];
    b[0..2].copy_from_slice(&F16_ONE.to_le_bytes());
    b[2..4].copy_from_slice(&F16_HALF.to_le_bytes());
    let scales = &mut b[4..16];
    for j in 0..4 {
        scales[j] = 2;
        scales[j + 4] = 3;
    }
    // Sub-blocks 4..8: low nibble sc, high nibble min.
    scales[8..12].fill(2 | (3 << 4));
    for (l, q) in b[16..].iter_mut().enumerate() {
        *q = (l % 16) as u8 | (((l + 1) % 16) as u8) << 4;
    }
    let out = deq(GgmlType::Q4_K, &b, 256);
    for (i, v) in out.iter().enumerate() {
        let chunk = i / 64;
        let l = i % 32;
        let src = 32 * chunk + l;
        let q = if i % 64 < 32 { src % 16 } else { (src + 1) % 16 };
        assert_eq!(*v, 2.0 * q as f32 - 1.5, "element {i}");
    }
}

#[test]
fn q6_k_simple_block() {
    // All scales 1, d = 0.5; q = 0 in ql/qh encodes -32.
    let mut b = vec![0u8; 210];
    b[192..208].fill(1);
    b[208..210].copy_from_slice(&F16_HALF.to_le_bytes());
    b[0] = 0x21; // element 0: low nibble 1; element 64: high nibble 2
    b[128] = 0b0000_0011; // element 0 gets high bits 3 -> q = 1 | 48 = 49
    let out = deq(GgmlType::Q6_K, &b, 256);
    assert_eq!(out[0], (49.0 - 32.0) * 0.5);
    assert_eq!(out[64], (2.0 - 32.0) * 0.5);
    assert_eq!(out[1], -16.0);
    assert_eq!(out[255], -16.0);
}

#[test]
fn q2_k_simple_block() {
    // scales[j] = min_j << 4 | scale_j; d = 1 at byte 80, dmin = 0.5 at byte 82. Byte l of
    // qs holds elements l, l+32, l+64, l+96 of each 128-half in its bit pairs.
    let mut b = vec![0u8; 84];
    b[0] = 0x21; // group 0 (elements 0..16): scale 1, min 2 -> x = q - 1
    b[2] = 0x03; // group 2 (elements 32..48): scale 3, min 0 -> x = 3q
    b[16] = 0b0000_1011; // element 0: q = 3; element 32: q = 2
    b[80..82].copy_from_slice(&F16_ONE.to_le_bytes());
    b[82..84].copy_from_slice(&F16_HALF.to_le_bytes());
    let out = deq(GgmlType::Q2_K, &b, 256);
    assert_eq!((out[0], out[1], out[15]), (2.0, -1.0, -1.0));
    assert_eq!((out[32], out[33]), (6.0, 0.0));
    assert!(out[16..32].iter().chain(&out[48..]).all(|&v| v == 0.0));
}

#[test]
fn q3_k_simple_block() {
    // hmask bit set means "no -4". Scale of group 0: low nibble of scales[0], high bits 4..5
    // from scales[8] & 3; stored value minus 32 is the scale (here 33 - 32 = 1); d = 1.
    let mut b = vec![0u8; 110];
    b[0..32].fill(0xff);
    b[1] &= !1; // element 1 (hmask[1] bit 0) loses its high bit: q = 0 - 4
    b[32] = 0b11; // element 0: low bits 3
    b[96] = 0x01;
    b[104] = 0x02;
    b[108..110].copy_from_slice(&F16_ONE.to_le_bytes());
    let out = deq(GgmlType::Q3_K, &b, 256);
    assert_eq!((out[0], out[1]), (3.0, -4.0));
    // Every other element has q = 0, whatever its scale (-32 for the others).
    assert!(out[2..].iter().all(|&v| v == 0.0));
}

#[test]
fn q5_k_simple_block() {
    // d = dmin = 1; group 0: scale 2, min 1. qh bit 0 of byte l adds 16 to element l.
    let mut b = vec![0u8; 176];
    b[0..2].copy_from_slice(&F16_ONE.to_le_bytes());
    b[2..4].copy_from_slice(&F16_ONE.to_le_bytes());
    b[4] = 2;
    b[8] = 1;
    b[16] = 0x01; // qh: element 0 gets +16
    b[48] = 0x03; // qs: element 0 low nibble 3 (high nibble: element 32, group 1)
    let out = deq(GgmlType::Q5_K, &b, 256);
    assert_eq!(out[0], 2.0 * 19.0 - 1.0);
    assert!(out[1..32].iter().all(|&v| v == -1.0));
    assert!(out[32..].iter().all(|&v| v == 0.0));
}

#[test]
fn iq4_nl_looks_up_the_non_linear_levels() {
    // d = 0.5; byte j holds level j (low nibble, element j) and level 15 - j (high
    // nibble, element j + 16).
    let mut block = Vec::from(quant::f32_to_f16(0.5).to_le_bytes());
    block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let out = deq(GgmlType::IQ4_NL, &block, 32);
    for j in 0..16 {
        assert_eq!(out[j], quant::KVALUES_IQ4NL[j] as f32 * 0.5, "element {j}");
        assert_eq!(out[j + 16], quant::KVALUES_IQ4NL[15 - j] as f32 * 0.5, "element {}", j + 16);
    }
    assert_eq!((out[0], out[16]), (-63.5, 56.5));
}

#[test]
fn size_mismatches_are_errors_not_panics() {
    let mut out = vec![0f32; 32];
    for ty in GgmlType::ALL {
        if !quant::can_dequantize(ty) {
            assert!(matches!(dequantize(ty, &[], &mut []), Err(GgufError::UnsupportedDequant { .. })));
            continue;
        }
        let n = ty.block_size();
        let mut out_n = vec![0f32; n];
        let good = vec![0u8; ty.type_size()];
        dequantize(ty, &good, &mut out_n).unwrap();
        let short = vec![0u8; ty.type_size() - 1];
        assert!(matches!(dequantize(ty, &short, &mut out_n), Err(GgufError::DequantSizeMismatch { .. })));
        if n > 1 {
            assert!(matches!(dequantize(ty, &good, &mut out_n[..n - 1]), Err(GgufError::DequantNotBlockMultiple { .. })));
        }
    }
    let err = dequantize(GgmlType::Q4_1, &[0u8; 21], &mut out).unwrap_err();
    assert_eq!(err.to_string(), "cannot dequantize q4_1: 32 elements need 20 bytes (block size 32), got 21");
    assert!(quant::dequantize_to_vec(GgmlType::Q8_0, &[0u8; 34], usize::MAX / 2).is_err());
}

/// splitmix64 byte stream, mirrored in the throwaway Python script that produced
/// the reference checksums below.
fn pseudo_random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend(z.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Order-sensitive checksum of the exact bit patterns: sum of bits[i] * (2i+1)
/// mod 2^64.
pub(crate) fn checksum(v: &[f32]) -> u64 {
    v.iter().enumerate().fold(0u64, |acc, (i, x)| acc.wrapping_add(u64::from(x.to_bits()).wrapping_mul(2 * i as u64 + 1)))
}

/// 16 pseudo-random blocks per type, with the f16 scale fields masked with
/// 0xbbff (and f32 / bf16 fields likewise) so they stay finite: NaN payloads are
/// not what we want to compare.
///
/// Reference checksums and values were computed with gguf-py's
/// `gguf.quants.dequantize` (vendor/llama.cpp/gguf-py, a numpy port of ggml's
/// dequantize_row_* that evaluates in the same f32 order) on the same bytes;
/// Q8_K, which gguf-py lacks, with numpy `d * q.astype(float32)`. IQ4_NL with
/// gguf-py 0.19 (pip), same recipe.
#[test]
fn pseudo_random_blocks_match_gguf_py_bit_for_bit() {
    type Case = (GgmlType, &'static [usize], u64, [u32; 3]);
    let cases: [Case; 14] = [
        (GgmlType::F16, &[], 0x9ba8e16000, [0x3b182000, 0xb9204000, 0x3d3d8000]),
        (GgmlType::BF16, &[], 0x6ab5d50000, [0x0dce0000, 0xb2720000, 0x177a0000]),
        (GgmlType::Q4_0, &[0], 0x1e7a0ca1d9000, [0xba59c000, 0x3b59c000, 0x3ba35000]),
        (GgmlType::Q4_1, &[0, 2], 0x1ebf9d6dde828, [0xbb8fc400, 0xbb8fc400, 0xbbc73f00]),
        (GgmlType::Q5_0, &[0], 0x1fba6d64c9200, [0xbd000000, 0xbdd00000, 0xbd900000]),
        (GgmlType::Q5_1, &[0, 2], 0x2274b28f3e0f3, [0x3b993400, 0x3b6c5400, 0x3bf6a400]),
        (GgmlType::Q8_0, &[0], 0x1fea553caf880, [0xc1a62480, 0xc0532c00, 0xc1787000]),
        (GgmlType::Q2_K, &[80, 82], 0x5bfac10f8b3323, [0xbec09300, 0xbf3a4980, 0xbcc93000]),
        (GgmlType::Q3_K, &[108], 0x75f7fabdbe26c0, [0x80000000, 0x3c2b7e00, 0x3c64a800]),
        (GgmlType::Q4_K, &[0, 2], 0x9b932335cc2c1a, [0xbde92b80, 0xbc368c00, 0xbe01bb60]),
        (GgmlType::Q5_K, &[0, 2], 0x62e88e30793fdf, [0x41e474a8, 0x41e4ece7, 0x41e2abb9]),
        (GgmlType::Q6_K, &[208], 0x7f73852ad73946, [0xc1a91a00, 0xc3896520, 0xc35df220]),
        (GgmlType::IQ4_NL, &[0], 0x1eaa4eab83880, [0x3a082000, 0xb7c60000, 0x3b447400]),
        (GgmlType::Q8_K, &[], 0x58850a98606b84, [0xacd6a604, 0x2ed0e624, 0xaeae66e4]),
    ];
    const NB: usize = 16;
    for (ty, f16_fields, want_sum, want_first) in cases {
        let ts = ty.type_size();
        let mut data = pseudo_random_bytes(u64::from(ty.id()), NB * ts);
        let mask16 = |d: &mut [u8], at: usize, m: u16| {
            let v = u16::from_le_bytes([d[at], d[at + 1]]) & m;
            d[at..at + 2].copy_from_slice(&v.to_le_bytes());
        };
        match ty {
            GgmlType::F16 => (0..data.len()).step_by(2).for_each(|i| mask16(&mut data, i, 0xbbff)),
            GgmlType::BF16 => (0..data.len()).step_by(2).for_each(|i| mask16(&mut data, i, 0xbfff)),
            GgmlType::Q8_K => {
                for b in 0..NB {
                    let at = b * ts;
                    let v = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) & 0xbf7f_ffff;
                    data[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            _ => {
                for b in 0..NB {
                    for &f in f16_fields {
                        mask16(&mut data, b * ts + f, 0xbbff);
                    }
                }
            }
        }
        let out = deq(ty, &data, NB * ty.block_size());
        let first: Vec<u32> = out[..3].iter().map(|v| v.to_bits()).collect();
        assert_eq!(first, want_first, "{ty}: first elements");
        assert_eq!(checksum(&out), want_sum, "{ty}: checksum");
    }
}
