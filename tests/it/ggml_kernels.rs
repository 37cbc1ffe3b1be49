//! The CPU backend's spec kernels against ggml's own: `recordings/ggml/kernels.json` holds the
//! outputs (bit patterns) of the kernels exported by llama-cpp-python 0.3.36's libggml-cpu on
//! seeded inputs (`xtask/python/ggml_kernels.py`); these tests regenerate the same inputs with
//! the same splitmix64 stream and demand the same bits, from the lane-by-lane spec and from its
//! `simd` twin. No llama.cpp needed.

use serde_json::Value;
use worker_orcd::backend::cpu::{kquant, ops, quant, simd};
use worker_orcd::gguf::GgmlType;

/// splitmix64, as the generator's `Rng`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn f32(&mut self, scale: f32) -> f32 {
        let u = (self.next() >> 40) as f32 / 16_777_216.0;
        (u * 2.0 - 1.0) * scale
    }
    fn f16_bits(&mut self) -> u16 {
        let r = self.next();
        (((r & 1) << 15) | ((6 + (r >> 1) % 8) << 10) | ((r >> 8) & 0x3ff)) as u16
    }
    fn floats(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32(scale)).collect()
    }
}

fn golden() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recordings/ggml/kernels.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("kernels.json parses")
}

fn cases<'a>(g: &'a Value, kernel: &str) -> &'a Vec<Value> {
    let c = g["kernels"][kernel].as_array().unwrap_or_else(|| panic!("kernels.json has no {kernel}"));
    assert!(!c.is_empty(), "{kernel}: no cases");
    c
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("case field {k}"))
}

fn weights(rng: &mut Rng, ty: GgmlType, nb: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..nb {
        out.extend_from_slice(&rng.f16_bits().to_le_bytes());
        match ty {
            GgmlType::Q4_1 => {
                out.extend_from_slice(&rng.f16_bits().to_le_bytes());
                out.extend((0..16).map(|_| rng.next() as u8));
            }
            GgmlType::Q4_0 => out.extend((0..16).map(|_| rng.next() as u8)),
            _ => out.extend((0..32).map(|_| ((rng.next() % 255) as i64 - 127) as i8 as u8)),
        }
    }
    out
}

fn q8_0_bytes(b: &[quant::BlockQ8_0]) -> Vec<u8> {
    b.iter()
        .flat_map(|b| {
            let mut v = half::f16::from_f32(b.d).to_bits().to_le_bytes().to_vec();
            v.extend(b.qs.iter().map(|&q| q as u8));
            v
        })
        .collect()
}

fn q8_1_bytes(b: &[quant::BlockQ8_1]) -> Vec<u8> {
    b.iter()
        .flat_map(|b| {
            let mut v = half::f16::from_f32(b.d).to_bits().to_le_bytes().to_vec();
            v.extend_from_slice(&half::f16::from_f32(b.s).to_bits().to_le_bytes());
            v.extend(b.qs.iter().map(|&q| q as u8));
            v
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn activation_quantizers_equal_ggml() {
    let g = golden();
    for (kernel, q1) in [("quantize_row_q8_0", false), ("quantize_row_q8_1", true)] {
        for c in cases(&g, kernel) {
            let mut rng = Rng(u(c, "seed"));
            let n = u(c, "n") as usize;
            let mut x = rng.floats(n, c["scale"].as_f64().unwrap() as f32);
            // The generator zeroes the first block of every 7th case (seed = 1000 + case).
            if (u(c, "seed") - 1000) % 7 == 3 {
                x[5] = 0.0;
                x[..32].iter_mut().for_each(|v| *v = 0.0);
            }
            let got = if q1 { q8_1_bytes(&quant::quantize_row_q8_1(&x)) } else { q8_0_bytes(&quant::quantize_row_q8_0(&x)) };
            assert_eq!(hex(&got), c["bytes"].as_str().unwrap(), "{kernel} seed {}", u(c, "seed"));
        }
    }
}

#[test]
fn quantized_dot_products_equal_ggml() {
    let g = golden();
    for (kernel, ty) in [("vec_dot_q4_0", GgmlType::Q4_0), ("vec_dot_q4_1", GgmlType::Q4_1), ("vec_dot_q8_0", GgmlType::Q8_0)] {
        let mut checked = 0;
        for c in cases(&g, kernel) {
            let mut rng = Rng(u(c, "seed"));
            let n = u(c, "n") as usize;
            let w = weights(&mut rng, ty, n / 32);
            let x = rng.floats(n, c["scale"].as_f64().unwrap() as f32);
            let a = quant::quantize_activation(ty, &x);
            let want = u(c, "out") as u32;
            let spec = quant::vec_dot(ty, &w, &a);
            let fast = simd::vec_dot_fn(ty)(&w, &a);
            assert_eq!(spec.to_bits(), want, "{kernel} seed {} n {n}: spec {spec} vs ggml {}", u(c, "seed"), f32::from_bits(want));
            assert_eq!(fast.to_bits(), want, "{kernel} seed {} n {n}: simd {fast} vs ggml {}", u(c, "seed"), f32::from_bits(want));
            checked += 1;
        }
        eprintln!("{kernel}: {checked} cases bit-identical to ggml");
    }
}

fn q8_k_bytes(b: &[kquant::BlockQ8K]) -> Vec<u8> {
    b.iter()
        .flat_map(|b| {
            let mut v = b.d.to_le_bytes().to_vec();
            v.extend(b.qs.iter().map(|&q| q as u8));
            v.extend(b.bsums.iter().flat_map(|s| s.to_le_bytes()));
            v
        })
        .collect()
}

#[test]
fn q8_k_quantizer_equals_ggml() {
    let g = golden();
    for c in cases(&g, "quantize_row_q8_K") {
        let (seed, n) = (u(c, "seed"), u(c, "n") as usize);
        let scale = c["scale"].as_f64().unwrap() as f32;
        let mut rng = Rng(seed);
        let mut x = rng.floats(n, scale);
        // The generator's edge cases (case = seed - 3000).
        if (seed - 3000) % 5 == 3 {
            x[..256].iter_mut().for_each(|v| *v = 0.0);
        }
        if (seed - 3000) % 7 == 2 {
            x[17] = -1e5 * scale;
        }
        let got = q8_k_bytes(&kquant::quantize_row_q8_K(&x));
        assert_eq!(hex(&got), c["bytes"].as_str().unwrap(), "quantize_row_q8_K seed {seed} n {n}");
    }
}

/// The types added with the k-quants, in the generator's order (`NEW_TYPES`), with their block
/// elements, block bytes and the offsets of their f16 scales.
const NEW_TYPES: [(&str, GgmlType, usize, usize, &[usize]); 8] = [
    ("q5_0", GgmlType::Q5_0, 32, 22, &[0]),
    ("q5_1", GgmlType::Q5_1, 32, 24, &[0, 2]),
    ("iq4_nl", GgmlType::IQ4_NL, 32, 18, &[0]),
    ("q2_K", GgmlType::Q2_K, 256, 84, &[80, 82]),
    ("q3_K", GgmlType::Q3_K, 256, 110, &[108]),
    ("q4_K", GgmlType::Q4_K, 256, 144, &[0, 2]),
    ("q5_K", GgmlType::Q5_K, 256, 176, &[0, 2]),
    ("q6_K", GgmlType::Q6_K, 256, 210, &[208]),
];

/// One case of a new type, drawn exactly as the generator's `new_type_case` draws it: the
/// weight row (mode 0: our quantizer, byte-identical to ggml's, on random floats; 1: random
/// blocks with random f16 scales of either sign; 2: the same with a zero first block and large
/// scales) and the activations (with an all-zero first block or a large spike in some cases).
fn new_type_case(index: usize, case: u64) -> (u64, Vec<u8>, Vec<f32>) {
    let (_, ty, qk, bs, scale_at) = NEW_TYPES[index];
    let seed = 20000 + 1000 * index as u64 + case;
    let mut rng = Rng(seed);
    let nb = if qk == 32 { [1, 2, 3, 5, 18, 28, 48][(case % 7) as usize] } else { [1, 2, 3, 6, 19][(case % 5) as usize] };
    let n = nb * qk;
    let mode = case % 3;
    let w = if mode == 0 {
        let wf = rng.floats(n, [0.02, 1.0, 50.0][((case / 3) % 3) as usize]);
        let mut w = vec![0u8; nb * bs];
        worker_orcd::quantize::rows::quantize_rows(ty, &wf, &mut w).expect("quantizes");
        w
    } else {
        let mut w: Vec<u8> = (0..nb * bs).map(|_| rng.next() as u8).collect();
        for b in 0..nb {
            for &at in scale_at {
                let mut h = rng.f16_bits();
                if mode == 2 {
                    h = (h & 0x83ff) | ((18 + (h >> 10) % 8) << 10);
                }
                w[b * bs + at..b * bs + at + 2].copy_from_slice(&h.to_le_bytes());
            }
        }
        if mode == 2 {
            w[..bs].iter_mut().for_each(|v| *v = 0);
        }
        w
    };
    let scale = [1e-3f32, 0.1, 1.0, 7.5, 300.0][((case / 3) % 5) as usize];
    let mut x = rng.floats(n, scale);
    if case % 4 == 1 {
        x[..qk].iter_mut().for_each(|v| *v = 0.0);
    }
    if case % 5 == 2 {
        x[1] = 1e4 * scale;
    }
    (seed, w, x)
}

fn sha16(b: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(b)[..8])
}

#[test]
fn new_type_dot_products_equal_ggml() {
    let g = golden();
    let mut report = Vec::new();
    for (index, &(name, ty, ..)) in NEW_TYPES.iter().enumerate() {
        let kernel = format!("vec_dot_{name}");
        let mut checked = 0;
        for (case, c) in cases(&g, &kernel).iter().enumerate() {
            let (seed, w, x) = new_type_case(index, case as u64);
            assert_eq!(seed, u(c, "seed"), "{kernel}: case order");
            assert_eq!(x.len() as u64, u(c, "n"), "{kernel} seed {seed}: length");
            if let Some(want) = c["wsha"].as_str() {
                assert_eq!(sha16(&w), want, "{kernel} seed {seed}: our quantizer's weights differ from ggml's");
            }
            let a = quant::quantize_activation(ty, &x);
            let want = u(c, "out") as u32;
            let spec = quant::vec_dot(ty, &w, &a);
            let fast = simd::vec_dot_fn(ty)(&w, &a);
            let n = x.len();
            assert_eq!(spec.to_bits(), want, "{kernel} seed {seed} n {n} mode {}: spec {spec} vs ggml {}", u(c, "mode"), f32::from_bits(want));
            assert_eq!(fast.to_bits(), want, "{kernel} seed {seed} n {n}: simd {fast} vs ggml {}", f32::from_bits(want));
            checked += 1;
        }
        report.push(format!("{kernel}: {checked}"));
    }
    eprintln!("bit-identical to ggml: {}", report.join(", "));
}

#[test]
fn vec_dot_f32_equals_ggml() {
    let g = golden();
    for c in cases(&g, "vec_dot_f32") {
        let mut rng = Rng(u(c, "seed"));
        let n = u(c, "n") as usize;
        let x = rng.floats(n, 1.0);
        let y = rng.floats(n, c["scale"].as_f64().unwrap() as f32);
        let want = u(c, "out") as u32;
        let spec = quant::vec_dot_f32(&x, &y);
        assert_eq!(spec.to_bits(), want, "vec_dot_f32 n {n} seed {}: {spec} vs {}", u(c, "seed"), f32::from_bits(want));
        assert_eq!(simd::vec_dot_f32(&x, &y).to_bits(), want, "simd vec_dot_f32 n {n}");
    }
}

fn bits_of(v: &Value, k: &str) -> Vec<u32> {
    v[k].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u32).collect()
}

#[test]
fn softmax_equals_ggml() {
    let g = golden();
    for c in cases(&g, "vec_soft_max_f32") {
        let mut rng = Rng(u(c, "seed"));
        let n = u(c, "n") as usize;
        let mut x = rng.floats(n, c["scale"].as_f64().unwrap() as f32);
        for (j, v) in x.iter_mut().enumerate() {
            if j % 5 == 4 || j >= n - n / 4 {
                *v = f32::NEG_INFINITY;
            }
        }
        let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut y = vec![0.0f32; n];
        let sum = ops::vec_soft_max_f32(&mut y, &x, max);
        assert_eq!(y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), bits_of(c, "y"), "softmax n {n} seed {}", u(c, "seed"));
        assert_eq!(sum.to_bits(), u(c, "sum"), "softmax sum n {n}");
    }
}

#[test]
fn swiglu_equals_ggml() {
    let g = golden();
    for c in cases(&g, "vec_swiglu_f32") {
        let mut rng = Rng(u(c, "seed"));
        let n = u(c, "n") as usize;
        let gate = rng.floats(n, c["scale"].as_f64().unwrap() as f32);
        let up = rng.floats(n, 2.0);
        let mut y = vec![0.0f32; n];
        ops::swiglu(&gate, &up, &mut y);
        let want = bits_of(c, "y");
        for i in 0..n {
            assert_eq!(y[i].to_bits(), want[i], "swiglu n {n} seed {} at {i}: gate {} -> {} vs {}", u(c, "seed"), gate[i], y[i], f32::from_bits(want[i]));
        }
    }
}
