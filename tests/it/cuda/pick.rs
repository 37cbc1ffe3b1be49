//! The token choice on the device (`kernels/sample.cu`, `Backend::forward_pick`) against
//! `sampler::pick` and the CPU backend, bit for bit.

use super::*;

/// Bit patterns of a `Picked`, for exact comparison (f64 `==` would equate -0 and 0).
fn picked_bits(p: &worker_orcd::sampler::Picked) -> (u32, u32, u32, u64, Vec<(u32, u32)>) {
    (p.id, p.logit.to_bits(), p.max.to_bits(), p.sum.to_bits(), p.top.iter().map(|&(i, l)| (i, l.to_bits())).collect())
}

/// Rows of logits that stress the choice: model-like, flat, tied, peaked, with infinities.
fn pick_rows(rng: &mut Rng, n: usize) -> Vec<(&'static str, Vec<f32>)> {
    let normal: Vec<f32> = (0..n).map(|_| rng.f32(-1.0, 1.0) + rng.f32(-1.0, 1.0) + rng.f32(-1.0, 1.0)).map(|x| x * 4.0).collect();
    let mut peaked = rng.vec(n, -12.0, 2.0);
    for _ in 0..5 {
        let i = rng.u32() as usize % n;
        peaked[i] = rng.f32(14.0, 18.0);
    }
    let tied: Vec<f32> = (0..n).map(|_| (rng.f32(-4.0, 4.0) * 2.0).round() / 2.0).collect();
    let mut inf = rng.vec(n, -30.0, 30.0);
    for _ in 0..(n / 7).max(1) {
        let i = rng.u32() as usize % n;
        inf[i] = f32::NEG_INFINITY;
    }
    let mut zeros = vec![0.0f32; n];
    if n > 2 {
        zeros[1] = -0.0;
    }
    // The device searches only the tokens within 32 of the first (sample.cu's PickCand): rows
    // where few are (wide), where all are (flat: a list longer than pick_choose's shared copy),
    // and NaNs of both signs and infinities (the list's edges).
    let wide = rng.vec(n, -80.0, 10.0);
    let flat = rng.vec(n, -0.5, 0.5);
    let mut odd = rng.vec(n, -40.0, 40.0);
    for v in [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let i = rng.u32() as usize % n;
        odd[i] = v;
    }
    let mut neg_nan = rng.vec(n, -5.0, 5.0);
    neg_nan[rng.u32() as usize % n] = -f32::NAN;
    vec![
        ("model-like", normal),
        ("peaked", peaked),
        ("tied", tied),
        ("neg-infinities", inf),
        ("all-equal", zeros),
        ("wide", wide),
        ("flat", flat),
        ("nan-inf", odd),
        ("neg-nan", neg_nan),
    ]
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn pick_matches_the_cpu_sampler_bitwise() {
    use worker_orcd::backend::cuda::ops::Picker;
    use worker_orcd::sampler::{draw_bits, pick, PickArgs, SamplingParams};
    let Some(g) = gpu() else { return };
    let sp = |t: f32, k: usize, p: f32, m: f32, r: f32| SamplingParams { temperature: t, top_k: k, top_p: p, min_p: m, repetition_penalty: r };
    let params = [
        sp(0.0, 0, 1.0, 0.0, 1.0),
        sp(0.0, 0, 1.0, 0.0, 1.7),
        sp(1.0, 0, 1.0, 0.0, 1.0),
        sp(0.7, 40, 0.9, 0.0, 1.1),
        sp(1.3, 0, 1.0, 0.05, 1.0),
        sp(2.0, 0, 0.5, 0.0, 1.3),
        sp(0.8, 1, 1.0, 0.0, 1.0),
        sp(1.0, 100_000_000, 0.95, 0.1, 0.8),
        sp(1.0, 0, f32::from_bits(1), 0.0, 1.0),
        sp(0.5, 5000, 0.999, 1.0, 1.0),
        sp(1e-4, 0, 1.0, 0.0, 1.0),
    ];
    let mut rng = Rng::new(77);
    let (mut cases, mut sampled) = (0, 0);
    for n in [7usize, 4097, 49_152, 151_936] {
        let mut picker = Picker::new(&g, n).unwrap();
        for (what, row) in pick_rows(&mut rng, n) {
            // A history that grows call by call (the device marks only the new ids), with
            // repeats and ids past the vocabulary (ignored by both).
            let mut history: Vec<u32> = (0..20).map(|_| rng.u32() % (n as u32 + 3)).collect();
            for (pi, p) in params.iter().enumerate() {
                for (ci, coin) in [draw_bits(pi as u64, n as u64), 0, (1 << 53) - 1, draw_bits(9, 1)].into_iter().enumerate() {
                    let top_n = [0usize, 5, 32, 1][ci];
                    let args = PickArgs { params: p, history: &history, coin, top_n };
                    assert!(picker.supports(&args));
                    let want = pick(&row, &args);
                    let got = picker.pick(&g, &row, &args).unwrap();
                    assert_eq!(picked_bits(&got), picked_bits(&want), "n={n} {what} params {p:?} coin {coin} top_n {top_n}");
                    cases += 1;
                    sampled += (p.temperature > 0.0) as usize;
                    history.push(got.id);
                }
            }
            // A history that does not continue the marked one: the bitmap starts again.
            history.truncate(3);
            let p = sp(0.0, 0, 1.0, 0.0, 3.0);
            let args = PickArgs { params: &p, history: &history, coin: 0, top_n: 2 };
            assert_eq!(picked_bits(&picker.pick(&g, &row, &args).unwrap()), picked_bits(&pick(&row, &args)), "n={n} {what} after a reset");
        }
    }
    println!("pick: {cases} cases ({sampled} sampled) bitwise equal to sampler::pick");
}

/// `forward_pick` on the device (trace off, and with the logits tap that makes the backend
/// download them too) and on the host (`set_device_pick(false)`) against the CPU backend's,
/// step by step through a sampled and a greedy generation with a repetition penalty.
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn forward_pick_on_the_device_equals_the_cpu_backend() {
    use worker_orcd::sampler::{draw_bits, PickArgs, SamplingParams};
    let Some(_g) = gpu() else { return };
    let m = tiny_model(GgmlType::Q4_1);
    let prompt: Vec<u32> = (0..11).map(|i| (i * 61 + 7) % 512).collect();
    let run = |b: &mut dyn Backend, params: &SamplingParams, tap: &mut dyn Tap| {
        b.truncate(0);
        let mut history = prompt.clone();
        let mut out = Vec::new();
        let mut args = PickArgs { params, history: &history, coin: draw_bits(5, 0), top_n: 5 };
        let mut p = b.forward_pick(&prompt, 0, tap, &args).unwrap();
        for i in 0..40 {
            out.push(picked_bits(&p));
            history.push(p.id);
            args = PickArgs { params, history: &history, coin: draw_bits(5, i + 1), top_n: 5 };
            p = b.forward_pick(&[p.id], prompt.len() + i as usize, tap, &args).unwrap();
        }
        out
    };
    let sampled = SamplingParams { temperature: 0.9, top_k: 50, top_p: 0.95, min_p: 0.02, repetition_penalty: 1.2 };
    let greedy = SamplingParams { repetition_penalty: 1.5, ..SamplingParams::greedy() };
    let mut cpu = CpuBackend::new(Arc::clone(&m), 128, 2).unwrap();
    let mut b = CudaBackend::new(Arc::clone(&m), 128).unwrap();
    for params in [&sampled, &greedy] {
        let want = run(&mut cpu, params, &mut NoTap);
        assert_eq!(run(&mut b, params, &mut NoTap), want, "device choice, trace off: {params:?}");
        let mut logits_tap = CaptureTap::new(Points::Only(vec![TapPoint::Logits]));
        assert_eq!(run(&mut b, params, &mut logits_tap), want, "device choice with the logits tapped: {params:?}");
        assert_eq!(logits_tap.rows[&TapPoint::Logits], 41, "the tap got every step's logits");
        b.set_device_pick(false);
        assert_eq!(run(&mut b, params, &mut NoTap), want, "host choice: {params:?}");
        b.set_device_pick(true);
        let distinct: std::collections::BTreeSet<u32> = want.iter().map(|w| w.0).collect();
        println!("{params:?}: 41 choices bitwise equal to the CPU backend's ({} distinct tokens)", distinct.len());
    }
}
