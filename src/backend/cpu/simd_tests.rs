//! Tests of the AVX2 twins in `simd`: each twin bit-identical to its lane-by-lane spec on
//! seeded random inputs (run on any x86-64 CPU with AVX2 and FMA, as CI's).

use super::quantize_activation as quantize_activation_simd;
use super::*;
use crate::backend::cpu::quant::{quantize_activation, vec_dot};

/// splitmix64: a seeded generator for test inputs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn random_row(rng: &mut Rng, ty: GgmlType, n_in: usize) -> Vec<u8> {
    match ty {
        GgmlType::F16 => return (0..n_in).flat_map(|_| half::f16::from_f32(rng.f32()).to_bits().to_le_bytes()).collect(),
        GgmlType::BF16 => return (0..n_in).flat_map(|_| half::bf16::from_f32(rng.f32()).to_bits().to_le_bytes()).collect(),
        GgmlType::F32 => return (0..n_in).flat_map(|_| rng.f32().to_le_bytes()).collect(),
        _ => {}
    }
    // The types added with the k-quants: random bytes with random f16 scales (either sign)
    // where the block has them; every byte pattern of the quants is valid.
    let scale_at: &[usize] = match ty {
        GgmlType::Q5_0 | GgmlType::IQ4_NL => &[0],
        GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[],
    };
    if !scale_at.is_empty() {
        let (bs, qk) = (ty.type_size(), ty.block_size());
        let mut w: Vec<u8> = (0..n_in / qk * bs).map(|_| rng.next() as u8).collect();
        for b in 0..n_in / qk {
            for &at in scale_at {
                let d = half::f16::from_f32(rng.f32() * 0.05).to_bits().to_le_bytes();
                w[b * bs + at..b * bs + at + 2].copy_from_slice(&d);
            }
        }
        return w;
    }
    let nb = n_in / 32;
    let mut w = Vec::new();
    for _ in 0..nb {
        let d = half::f16::from_f32(rng.f32() * 0.05).to_bits().to_le_bytes();
        w.extend_from_slice(&d);
        match ty {
            GgmlType::Q4_1 => {
                w.extend_from_slice(&half::f16::from_f32(rng.f32() * 0.1).to_bits().to_le_bytes());
                w.extend((0..16).map(|_| rng.next() as u8));
            }
            GgmlType::Q4_0 => w.extend((0..16).map(|_| rng.next() as u8)),
            _ => w.extend((0..32).map(|_| (rng.next() % 255) as u8 ^ 0x80)),
        }
    }
    w
}

#[test]
fn simd_dot_products_equal_the_spec() {
    if !has_avx2_fma() {
        eprintln!("skipped: this CPU has no AVX2+FMA, so the twins never run here");
        return;
    }
    let mut rng = Rng(7);
    for ty in [GgmlType::Q4_1, GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::IQ4_NL, GgmlType::Q4_K, GgmlType::Q6_K] {
        for n_in in [32, 64, 96, 576, 1536, 256, 4864] {
            if n_in % ty.block_size() != 0 {
                continue;
            }
            for _ in 0..200 {
                let w = random_row(&mut rng, ty, n_in);
                let scale = 10f32.powi((rng.next() % 7) as i32 - 3);
                let x: Vec<f32> = (0..n_in).map(|_| rng.f32() * scale).collect();
                let a = quantize_activation(ty, &x);
                assert!(super::quantize_activation(ty, &x) == a, "{ty:?}: activation twin differs");
                let (want, got) = (vec_dot(ty, &w, &a), vec_dot_fn(ty)(&w, &a));
                assert_eq!(want.to_bits(), got.to_bits(), "{ty:?} n_in {n_in}: spec {want} simd {got}");
            }
        }
    }
}

#[test]
fn compiled_for_avx2_ops_equal_the_spec() {
    let mut rng = Rng(13);
    let (nh, nkv, hd) = (9, 3, 64);
    for n_kv in [1, 7, 33, 100] {
        let q: Vec<f32> = (0..nh * hd).map(|_| rng.f32() * 3.0).collect();
        let k: Vec<f32> = (0..n_kv * nkv * hd).map(|_| rng.f32() * 3.0).collect();
        let v: Vec<f32> = (0..n_kv * nkv * hd).map(|_| rng.f32()).collect();
        let run = |fast: bool| {
            let (mut out, mut kq, mut pr) = (vec![0.0f32; nh * hd], vec![0.0f32; nh * n_kv], vec![0.0f32; nh * n_kv]);
            if fast {
                attention(&q, &k, &v, n_kv, nh, nkv, hd, &mut out, Some(&mut kq), Some(&mut pr));
            } else {
                ops::attention(&q, &k, &v, n_kv, nh, nkv, hd, &mut out, Some(&mut kq), Some(&mut pr));
            }
            [out, kq, pr].concat().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(run(true), run(false), "attention n_kv {n_kv}");
    }
    let g: Vec<f32> = (0..1541).map(|_| rng.f32() * 20.0).collect();
    let u: Vec<f32> = (0..1541).map(|_| rng.f32()).collect();
    let (mut a, mut b) = (vec![0.0; 1541], vec![0.0; 1541]);
    swiglu(&g, &u, &mut a);
    ops::swiglu(&g, &u, &mut b);
    assert_eq!(a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), b.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    for pos in [0, 1, 17, 4000] {
        let mut x: Vec<f32> = (0..576).map(|_| rng.f32()).collect();
        let mut y = x.clone();
        rope_norm(&mut x, 64, pos, 100000.0);
        ops::rope_norm(&mut y, 64, pos, 100000.0);
        assert_eq!(x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "rope pos {pos}");
        // NEOX with Llama-3 style frequency factors and linear scaling.
        let r = ops::Rope {
            kind: ops::RopeKind::Neox,
            head_dim: 64,
            base: 500000.0,
            freq_scale: 0.25,
            attn_factor: 1.0,
            freq_factors: Some((0..32).map(|i| 1.0 + i as f32 * 0.37).collect()),
        };
        let mut x: Vec<f32> = (0..896).map(|_| rng.f32()).collect();
        let mut y = x.clone();
        rope(&r, &mut x, pos);
        r.apply(&mut y, pos);
        assert_eq!(x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "rope neox pos {pos}");
    }
}

#[test]
fn compiled_for_avx2_quantizer_equals_the_spec() {
    let mut rng = Rng(29);
    for (i, scale) in [0.0f32, 1e-30, 1e-3, 1.0, 127.0, 3e4, 1e30].into_iter().enumerate() {
        let mut x: Vec<f32> = (0..576).map(|_| rng.f32() * scale).collect();
        // Values that land exactly on a rounding tie after scaling by 127/amax.
        x[0] = scale;
        x[1] = scale * 0.5 / 127.0;
        x[2] = -scale * 1.5 / 127.0;
        for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::IQ4_NL] {
            let (fast, spec) = (quantize_activation_simd(ty, &x), quantize_activation(ty, &x));
            let same = match (&fast, &spec) {
                (QuantizedActivation::Q8_1(a), QuantizedActivation::Q8_1(b)) => a == b,
                (QuantizedActivation::Q8_0(a), QuantizedActivation::Q8_0(b)) => a == b,
                _ => false,
            };
            assert!(same, "{ty:?} scale {scale} (case {i}): {fast:?} vs {spec:?}");
        }
    }
}

#[test]
fn tiles_equal_the_spec_element_by_element() {
    let mut rng = Rng(17);
    for ty in [
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::F32,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::IQ4_NL,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        for (n_rows, n_tok) in [(1, 1), (4, 1), (7, 1), (1, 4), (3, 5), (2, 9)] {
            let n_in = if ty.block_size() == 256 { 512 } else { 576 };
            let rows: Vec<Vec<u8>> = (0..n_rows).map(|_| random_row(&mut rng, ty, n_in)).collect();
            let acts: Vec<QuantizedActivation> = (0..n_tok).map(|_| quantize_activation(ty, &(0..n_in).map(|_| rng.f32() * 4.0).collect::<Vec<_>>())).collect();
            let refs: Vec<&[u8]> = rows.iter().map(|r| r.as_slice()).collect();
            let mut out = vec![0.0f32; n_rows * n_tok];
            tile_fn(ty)(&refs, &acts, &mut out);
            for r in 0..n_rows {
                for t in 0..n_tok {
                    let want = vec_dot(ty, &rows[r], &acts[t]);
                    assert_eq!(out[r * n_tok + t].to_bits(), want.to_bits(), "{ty:?} {n_rows}x{n_tok} at ({r}, {t})");
                }
            }
        }
    }
}

#[test]
fn simd_q8_k_quantizer_equals_the_spec() {
    let mut rng = Rng(23);
    for n in [256, 512, 4864] {
        for case in 0..100 {
            let scale = 10f32.powi((rng.next() % 9) as i32 - 4);
            let mut x: Vec<f32> = (0..n).map(|_| rng.f32() * scale).collect();
            if case % 5 == 0 {
                x[..256].iter_mut().for_each(|v| *v = 0.0);
            }
            if case % 7 == 0 {
                x[3] = -x[3].abs() * 1e4;
            }
            let want = QuantizedActivation::Q8K(kquant::quantize_row_q8_K(&x));
            assert!(super::quantize_activation(GgmlType::Q4_K, &x) == want, "n {n} case {case}");
        }
    }
}

#[test]
fn simd_vec_dot_f32_equals_the_spec() {
    let mut rng = Rng(11);
    for n in [32, 64, 256, 512, 768] {
        for _ in 0..200 {
            let x: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
            let y: Vec<f32> = (0..n).map(|_| rng.f32() * 30.0).collect();
            let (want, got) = (quant::vec_dot_f32(&x, &y), vec_dot_f32(&x, &y));
            assert_eq!(want.to_bits(), got.to_bits(), "n {n}");
        }
    }
}

fn f16_le(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

#[test]
fn matmul_is_independent_of_thread_count() {
    let n_in = 64;
    let n_out = 200;
    let mut w = Vec::new();
    for r in 0..n_out * n_in / 32 {
        w.extend_from_slice(&f16_le(0.01 * (r % 7) as f32 + 0.001));
        w.extend_from_slice(&f16_le(-0.02));
        w.extend((0..16).map(|j| ((r * 31 + j * 7) % 256) as u8));
    }
    let m = QMatrix { ty: GgmlType::Q4_1, data: &w, n_in, n_out };
    let x: Vec<f32> = (0..3 * n_in).map(|i| ((i * 7919) % 1000) as f32 / 333.0 - 1.5).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut out = vec![0.0f32; 3 * n_out];
        pool.install(|| matmul(&m, &x, 3, &mut out));
        out
    };
    let one = run(1);
    for t in [2, 3, 4] {
        assert_eq!(one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), run(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }
    // Every element equals the reference dot product bit for bit.
    for t in 0..3 {
        let a = quantize_activation(GgmlType::Q4_1, &x[t * n_in..(t + 1) * n_in]);
        for o in 0..n_out {
            assert_eq!(one[t * n_out + o].to_bits(), vec_dot(GgmlType::Q4_1, m.row(o), &a).to_bits());
        }
    }
    // Batch independence: token 1 alone gives the same bits as inside the batch of 3.
    let mut single = vec![0.0f32; n_out];
    matmul(&m, &x[n_in..2 * n_in], 1, &mut single);
    assert_eq!(&one[n_out..2 * n_out], &single[..]);
}
