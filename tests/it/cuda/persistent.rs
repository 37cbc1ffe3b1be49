//! The persistent decode kernel (`kernels/decode.cu`) against the per-op path and the CPU
//! backend, bit for bit: every `decode_flags` set on the full grid and on small grids, repeated
//! runs, and steps past the first attention tile.

use super::*;

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn persistent_decode_step_equals_per_op_path_and_cpu_bitwise() {
    let Some(_g) = gpu() else { return };
    for ty in [GgmlType::Q4_1, GgmlType::Q4_0, GgmlType::Q8_0] {
        let m = tiny_model(ty);
        let prompt: Vec<u32> = (0..9).map(|i| (i * 53 + 5) % 512).collect();
        let steps: Vec<u32> = (0..40).map(|i| (i * 97 + 3) % 512).collect();
        let mut b = CudaBackend::new(Arc::clone(&m), 128).unwrap();
        if let Err(why) = b.persistent_status() {
            panic!("the persistent decode kernel is unavailable on this device: {why}");
        }
        let mut cpu = CpuBackend::new(Arc::clone(&m), 128, 2).unwrap();
        let (want, want_taps) = decode_steps(&mut cpu, &prompt, &steps, false);
        let mut results = Vec::new();
        for (persistent, graphs) in [(true, true), (true, false), (false, true), (false, false)] {
            assert_eq!(b.set_persistent(persistent), persistent);
            b.set_graphs(graphs);
            let (got, taps) = decode_steps(&mut b, &prompt, &steps, false);
            assert_eq!(got, want, "{} persistent {persistent} graphs {graphs}: logits differ from the CPU backend", ty.name());
            for (p, v) in &want_taps.tensors {
                assert_eq!(bits(&taps.tensors[p]), bits(v), "{} persistent {persistent} graphs {graphs}: {} differs from the CPU backend", ty.name(), p.name());
            }
            results.push(got);
        }
        // Without any tap wanted (trace off): the same logits.
        b.set_persistent(true);
        b.set_graphs(true);
        b.truncate(0);
        b.forward(&prompt, 0, LogitRows::Last, &mut NoTap).unwrap();
        let mut plain = Vec::new();
        for (i, &t) in steps.iter().enumerate() {
            plain.extend(b.forward(&[t], prompt.len() + i, LogitRows::Last, &mut NoTap).unwrap());
        }
        assert_eq!(bits(&plain), want, "{}: trace off changes the logits", ty.name());
        for _ in 0..20 {
            assert_eq!(decode_steps(&mut b, &prompt, &steps, false).0, want, "{}: a repeated persistent run differs", ty.name());
        }
        // Each optimization of the persistent kernel alone, some together, all and none, on the
        // full grid and on grids of 3 and 7 blocks (blocks with several items of a phase, and
        // with several heads, attention blocks with products): the same bits.
        use worker_orcd::backend::cuda::decode_flags as f;
        let full = b.set_decode_grid(None);
        let flag_sets = [
            0,
            f::STAGE,
            f::NORM_G8,
            f::PRELOAD,
            f::PRELOAD | f::EARLY,
            f::SPLIT_D,
            f::STAGE | f::SPLIT_D,
            f::HEAD_FLAGS,
            f::PRELOAD | f::HEAD_FLAGS,
            f::ALL & !f::EARLY,
            f::ALL & !f::HEAD_FLAGS,
            f::ALL,
            f::LL,
            f::LL | f::STAGE,
            f::LL | f::HEAD_FLAGS,
            f::DEFAULT,
            f::DEFAULT | f::GENERIC,
            f::DEFAULT | f::LL,
            f::DEFAULT | f::RELAXED,
            f::DEFAULT | f::LL | f::RELAXED,
            f::LL | f::LL_QKV,
            f::LL | f::LL_QKV | f::PRELOAD,
            f::DEFAULT | f::LL | f::LL_QKV,
            f::DEFAULT | (2 << f::BACKOFF_SHIFT),
            f::DEFAULT | f::LL | (4 << f::BACKOFF_SHIFT),
        ];
        for grid in [None, Some(7), Some(3)] {
            assert_eq!(b.set_decode_grid(grid), grid.unwrap_or(full));
            for &fl in &flag_sets {
                assert_eq!(b.set_decode_flags(fl), fl, "decode flags {fl} not taken");
                let (got, taps) = decode_steps(&mut b, &prompt, &steps, false);
                assert_eq!(got, want, "{} decode flags {fl} grid {grid:?}: logits differ from the CPU backend", ty.name());
                for (p, v) in &want_taps.tensors {
                    assert_eq!(bits(&taps.tensors[p]), bits(v), "{} decode flags {fl} grid {grid:?}: {} differs", ty.name(), p.name());
                }
            }
        }
        b.set_decode_grid(None);
        b.set_decode_flags(f::DEFAULT);
        println!(
            "tiny {}: {} decode steps, persistent/per-op x graphs on/off, trace on/off, decode flags {flag_sets:?} on grids {full}/7/3, 20 repeats: bit-identical to the CPU backend ({} taps)",
            ty.name(),
            steps.len(),
            want_taps.tensors.len()
        );
    }
}

/// Past the first 128-cell attention tile (the one DEC_PRELOAD loads ahead): 200 persistent
/// decode steps, every flag combination that matters, against the CPU backend.
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn persistent_decode_past_the_first_attention_tile_equals_cpu() {
    let Some(_g) = gpu() else { return };
    use worker_orcd::backend::cuda::decode_flags as f;
    let m = tiny_model(GgmlType::Q4_1);
    let prompt: Vec<u32> = (0..5).map(|i| (i * 31 + 7) % 512).collect();
    let steps: Vec<u32> = (0..200).map(|i| (i * 89 + 11) % 512).collect();
    let mut cpu = CpuBackend::new(Arc::clone(&m), 256, 2).unwrap();
    let (want, want_taps) = decode_steps(&mut cpu, &prompt, &steps, false);
    let mut b = CudaBackend::new(Arc::clone(&m), 256).unwrap();
    if let Err(why) = b.persistent_status() {
        panic!("the persistent decode kernel is unavailable on this device: {why}");
    }
    let runs = [
        (f::ALL, None),
        (f::ALL, Some(3)),
        (f::ALL & !f::HEAD_FLAGS, None),
        (f::DEFAULT | f::LL, None),
        (f::DEFAULT | f::LL | f::RELAXED, Some(3)),
        (f::LL, Some(7)),
        (f::DEFAULT | f::LL | f::LL_QKV, None),
        (f::LL | f::LL_QKV, Some(3)),
        (f::HEAD_FLAGS, Some(3)),
        (f::PRELOAD | f::EARLY, None),
        (f::PRELOAD, None),
        (0, None),
    ];
    for (fl, grid) in runs {
        assert_eq!(b.set_decode_flags(fl), fl);
        b.set_decode_grid(grid);
        let (got, taps) = decode_steps(&mut b, &prompt, &steps, false);
        assert_eq!(got, want, "decode flags {fl} grid {grid:?}: logits differ from the CPU backend");
        for (p, v) in &want_taps.tensors {
            assert_eq!(bits(&taps.tensors[p]), bits(v), "decode flags {fl} grid {grid:?}: {} differs", p.name());
        }
    }
    println!(
        "tiny Q4_1: {} decode steps to position {}, (decode flags, grid) {runs:?}: bit-identical to the CPU backend",
        steps.len(),
        prompt.len() + steps.len()
    );
}
