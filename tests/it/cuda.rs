//! CUDA parity: every kernel against its CPU reference of the same name on seeded random inputs,
//! then the whole forward pass of a small random model (and of the real model) against the CPU
//! backend, determinism, chunk-independence and graph/no-graph equality.
//!
//! The GPU tests are `#[ignore]`d with a reason, so a test runner without a GPU reports them as
//! skipped (nextest counts them), never as passed. On a GPU machine run them with
//! `--include-ignored` (libtest `--ignored`) and `WORKER_ORCD_EXPECT_GPU=1`, as the GPU bundle's
//! run.sh and the GPU workflow do: then a missing driver, library or device fails every test with
//! the reason. `no_cuda_is_a_clean_unavailable_error` runs everywhere and checks machines without
//! CUDA (it has nothing to check where CUDA works).
//!
//! Expected precision: the kernels reproduce the CPU's arithmetic in the CPU's order, and every
//! check demands bitwise equality.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use worker_orcd::backend::cpu::{ops, quant, simd, CpuBackend};
use worker_orcd::backend::cuda::{self, ops as gops, CudaBackend, Gpu};
use worker_orcd::backend::{Backend, BackendError, CaptureTap, LogitRows, NoTap, Points, Tap, TapPoint};
use worker_orcd::gguf::{GgmlType, GgufFile, GgufWriter, MetadataValue};
use worker_orcd::model::Model;

mod persistent;
mod pick;
mod published;

/// The device shared by all tests in this binary. A GPU test runs only when asked for (they are
/// ignored by default), so a missing driver, library or device fails it with the reason: it
/// never passes having checked nothing.
fn gpu() -> Option<MutexGuard<'static, Gpu>> {
    static GPU: OnceLock<Result<Mutex<Gpu>, String>> = OnceLock::new();
    match GPU.get_or_init(|| Gpu::open(0).map(Mutex::new).map_err(|e| e.to_string())) {
        Ok(g) => Some(g.lock().unwrap_or_else(|e| e.into_inner())),
        Err(reason) => panic!("a GPU test ran but the GPU is unusable: {reason}"),
    }
}

fn gpu_expected() -> bool {
    std::env::var_os("WORKER_ORCD_EXPECT_GPU").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Not ignored: where a GPU is expected (`WORKER_ORCD_EXPECT_GPU=1`, set by the GPU workflow
/// and the bundle's run.sh) the plain test run fails naming why the GPU is unusable, even if the
/// ignored GPU tests were not asked for. Elsewhere it says that the GPU tests are skipped.
#[test]
fn the_gpu_is_usable_where_one_is_expected() {
    if !gpu_expected() {
        println!("WORKER_ORCD_EXPECT_GPU is unset: the GPU tests are skipped (ignored), not run");
        return;
    }
    if let Err(e) = Gpu::open(0) {
        panic!("WORKER_ORCD_EXPECT_GPU is set but the GPU is unusable: {e}");
    }
}

struct Rng(ChaCha8Rng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(ChaCha8Rng::seed_from_u64(seed))
    }
    /// Uniform in [lo, hi).
    fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * (self.0.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }
    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32(lo, hi)).collect()
    }
    fn u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    /// Activations like the model's: mostly small, a few large, some rows scaled up.
    fn activations(&mut self, n_tok: usize, width: usize) -> Vec<f32> {
        let mut v = Vec::with_capacity(n_tok * width);
        for t in 0..n_tok {
            let scale = [1.0, 30.0, 0.01, 1000.0][t % 4];
            for _ in 0..width {
                let mut x = self.f32(-1.0, 1.0) * scale;
                if self.u32().is_multiple_of(97) {
                    x *= 40.0;
                }
                v.push(x);
            }
        }
        v
    }
}

/// Bitwise equality everywhere; prints a one-line summary and the first mismatches with their
/// indices.
fn exact(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<(usize, f32, f32)> =
        got.iter().zip(want).enumerate().filter(|(_, (g, w))| g.to_bits() != w.to_bits()).map(|(i, (&g, &w))| (i, g, w)).collect();
    let max_abs = bad.iter().map(|(_, g, w)| (g - w).abs()).fold(0.0f32, f32::max);
    println!("{what:<40} n={:<8} bit-identical {:<8} max|err| {max_abs:.3e}", got.len(), got.len() - bad.len());
    for (i, g, w) in bad.iter().take(8) {
        println!("  mismatch at {i}: cuda {g:e} cpu {w:e}");
    }
    assert!(bad.is_empty(), "{what}: {} of {} values differ from the CPU", bad.len(), got.len());
}

fn blocks_equal(what: &str, got: &[quant::BlockQ8_1], want: &[quant::BlockQ8_1]) {
    assert_eq!(got.len(), want.len(), "{what}: block count");
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    println!("{what:<40} blocks={:<6} differing {}", got.len(), bad.len());
    for &i in bad.iter().take(4) {
        println!(
            "  block {i}: cuda d {} s {} qs {:?}\n            cpu  d {} s {} qs {:?}",
            got[i].d,
            got[i].s,
            &got[i].qs[..8],
            want[i].d,
            want[i].s,
            &want[i].qs[..8]
        );
    }
    assert!(bad.is_empty(), "{what}: {} blocks differ", bad.len());
}

fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

/// Random weights of `ty` for (n_out, n_in), as GGUF bytes.
fn random_matrix(rng: &mut Rng, ty: GgmlType, n_out: usize, n_in: usize) -> Vec<u8> {
    let nb = n_out * n_in / 32;
    let mut w = Vec::new();
    match ty {
        GgmlType::Q4_1 => (0..nb).for_each(|_| {
            w.extend_from_slice(&f16_bytes(rng.f32(0.001, 0.02)));
            w.extend_from_slice(&f16_bytes(rng.f32(-0.15, 0.0)));
            w.extend((0..16).map(|_| rng.u32() as u8));
        }),
        GgmlType::Q4_0 => (0..nb).for_each(|_| {
            w.extend_from_slice(&f16_bytes(rng.f32(0.001, 0.02)));
            w.extend((0..16).map(|_| rng.u32() as u8));
        }),
        GgmlType::Q8_0 => (0..nb).for_each(|_| {
            w.extend_from_slice(&f16_bytes(rng.f32(0.0005, 0.002)));
            w.extend((0..32).map(|_| rng.u32() as u8));
        }),
        GgmlType::F16 => (0..n_out * n_in).for_each(|_| w.extend_from_slice(&f16_bytes(rng.f32(-0.1, 0.1)))),
        GgmlType::BF16 => (0..n_out * n_in).for_each(|_| w.extend_from_slice(&half::bf16::from_f32(rng.f32(-0.1, 0.1)).to_bits().to_le_bytes())),
        GgmlType::F32 => (0..n_out * n_in).for_each(|_| w.extend_from_slice(&rng.f32(-0.1, 0.1).to_le_bytes())),
        other => panic!("no random {} matrices", other.name()),
    }
    w
}

#[test]
fn no_cuda_is_a_clean_unavailable_error() {
    if cuda::check_libraries().is_ok() {
        println!("skipped: a CUDA driver is present here (this test checks machines without one)");
        return;
    }
    match CudaBackend::new(tiny_model(GgmlType::Q4_1), 64) {
        Err(BackendError::Unavailable { backend, reason }) => {
            assert_eq!(backend, "cuda");
            assert!(!reason.is_empty());
            println!("cuda unavailable: {reason}");
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("CUDA backend constructed without CUDA libraries"),
    }
    assert!(matches!(cuda::probe(), Err(BackendError::Unavailable { backend: "cuda", .. })));
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn exp_matches_f32_exp_bitwise() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(1);
    let mut x = rng.vec(1 << 22, -104.0, 89.0);
    x.extend(rng.vec(1 << 20, -1.0, 1.0));
    x.extend([0.0, -0.0, 88.72283, 88.7229, -103.97, -104.0, 1e-30, -1e-30, f32::INFINITY, f32::NEG_INFINITY]);
    let got = gops::exp(&g, &x).unwrap();
    let want: Vec<f32> = x.iter().map(|v| v.exp()).collect();
    exact("exp_f32 vs f32::exp", &got, &want);
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn quantize_q8_1_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(2);
    for (n_tok, width) in [(1, 576), (7, 1536)] {
        let mut x = rng.activations(n_tok, width);
        x[32..64].iter_mut().for_each(|v| *v = 0.0); // an all-zero block
        let got = gops::quantize_row_q8_1(&g, &x, n_tok).unwrap();
        let want: Vec<_> = x.chunks(width).flat_map(quant::quantize_row_q8_1).collect();
        blocks_equal(&format!("quantize_q8_1 {n_tok}x{width}"), &got, &want);
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn rmsnorm_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(3);
    let (n_tok, dim) = (9, 576);
    let mut x = rng.activations(n_tok, dim);
    x[507] = 23_000.0; // the model's position-0 spike
    let w = rng.vec(dim, -2.0, 2.0);
    let mut want = vec![0.0; x.len()];
    ops::rmsnorm(&x, &w, 1e-5, &mut want);
    exact("rmsnorm_f32", &gops::rmsnorm(&g, &x, &w, 1e-5).unwrap(), &want);
    let (out, blocks) = gops::rmsnorm_q8(&g, &x, &w, 1e-5).unwrap();
    exact("rmsnorm_q8 (f32 out)", &out, &want);
    let want_q: Vec<_> = want.chunks(dim).flat_map(quant::quantize_row_q8_1).collect();
    blocks_equal("rmsnorm_q8 (blocks)", &blocks, &want_q);
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn matvec_matches_cpu_for_every_weight_type() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(4);
    for ty in [GgmlType::Q4_1, GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::F16, GgmlType::BF16, GgmlType::F32] {
        // From 16 tokens the tensor-core kernels (n_out % 16 == 0): 2 tokens per warp up to 95
        // (17 and 33 leave a pair half-filled, 40 a block), 4 to 255 (100), then 8 (517); the
        // rest dp4a.
        for (n_out, n_in, n_tok) in
            [(200, 576, 1), (77, 1536, 5), (576, 576, 3), (64, 576, 17), (192, 1536, 33), (192, 1536, 40), (576, 1536, 100), (960, 576, 517)]
        {
            let data = random_matrix(&mut rng, ty, n_out, n_in);
            let m = quant::QMatrix { ty, data: &data, n_in, n_out };
            let x = rng.activations(n_tok, n_in);
            let mut want = vec![0.0; n_tok * n_out];
            simd::matmul(&m, &x, n_tok, &mut want);
            let got = gops::matmul(&g, &m, &x, n_tok).unwrap();
            exact(&format!("matvec {} {n_out}x{n_in} n_tok={n_tok}", ty.name()), &got, &want);
            // Batch independence on the device: the last row alone gives the same bits.
            let last = gops::matmul(&g, &m, &x[(n_tok - 1) * n_in..], 1).unwrap();
            assert_eq!(bits(&last), bits(&got[(n_tok - 1) * n_out..]), "{}: batch-dependent result", ty.name());
        }
    }
}

/// Every tensor-core kernel, whichever `launch_matvec` would pick for the shape: the per-warp
/// kernels (2, 4, 8 tokens per warp) and the tiled ones (32 tokens per block of 64 rows),
/// bitwise the CPU's, on shapes that leave a row tile part-filled (208, 48 rows), a chunk of
/// blocks part-filled (576 and 96 inputs: 18 and 3 blocks of 32, chunks of 4), a token tile
/// and a token pair part-filled (33, 37, 65, 70, 517 tokens).
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn every_tensor_core_kernel_matches_cpu_bitwise() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(41);
    let kernels = [cuda::MmaKernel::Warp(2), cuda::MmaKernel::Warp(4), cuda::MmaKernel::Warp(8), cuda::MmaKernel::Tile(32)];
    for ty in [GgmlType::Q4_1, GgmlType::Q4_0, GgmlType::Q8_0] {
        for (n_out, n_in, n_tok) in [(64, 576, 16), (208, 576, 70), (48, 1536, 33), (64, 96, 65), (3072, 576, 37), (576, 1536, 100), (960, 576, 517)] {
            let data = random_matrix(&mut rng, ty, n_out, n_in);
            let m = quant::QMatrix { ty, data: &data, n_in, n_out };
            let x = rng.activations(n_tok, n_in);
            let mut want = vec![0.0; n_tok * n_out];
            simd::matmul(&m, &x, n_tok, &mut want);
            for k in kernels {
                let (got, _) = gops::matmul_mma(&g, &m, &x, n_tok, k, 1).unwrap();
                exact(&format!("{k:?} {} {n_out}x{n_in} n_tok={n_tok}", ty.name()), &got, &want);
            }
        }
    }
}

/// The tensor-core kernels' fused epilogues, every kernel and weight type, bitwise against the
/// CPU's product followed by its reference ops: Q|K|V (960 = 576 + 2 x 192 rows) with the biases,
/// NORM RoPE and K/V cache writes of `ops::rope_store_kv` at positions from 5 (with and without
/// Qwen-sized biases), and gate|up with `ops::swiglu` and `quantize_row_q8_1` of the result
/// (ffn 1,536 and 96: 48 and 3 SwiGLU blocks). Token counts leave a token pair, a warp's tokens
/// and a 32-token tile part-filled. The activations are clamped to ±2,000: a Q8_1 block of
/// larger values can overflow its f16 sum term to infinity on both sides, and RoPE or SwiGLU
/// of infinities gives NaNs whose bits differ between x86 (negative quiet NaN) and CUDA
/// (0x7fffffff), which says nothing about the epilogues.
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn tensor_core_fused_epilogues_match_cpu_bitwise() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(43);
    let kernels = [cuda::MmaKernel::Warp(2), cuda::MmaKernel::Warp(4), cuda::MmaKernel::Warp(8), cuda::MmaKernel::Tile(32)];
    let (q_dim, kv_dim, n_in, pos0) = (576, 192, 576, 5);
    let width = q_dim + 2 * kv_dim;
    let r = ops::Rope::plain(ops::RopeKind::Norm, 64, 10000.0);
    let biases = [rng.vec(q_dim, -80.0, 80.0), rng.vec(kv_dim, -80.0, 80.0), rng.vec(kv_dim, -8.0, 8.0)];
    for ty in [GgmlType::Q4_1, GgmlType::Q4_0, GgmlType::Q8_0] {
        let data = random_matrix(&mut rng, ty, width, n_in);
        let m = quant::QMatrix { ty, data: &data, n_in, n_out: width };
        for n_tok in [17, 70, 517] {
            let x: Vec<f32> = rng.activations(n_tok, n_in).into_iter().map(|v| v.clamp(-2000.0, 2000.0)).collect();
            let mut raw = vec![0.0; n_tok * width];
            simd::matmul(&m, &x, n_tok, &mut raw);
            for with_bias in [false, true] {
                let b = |i: usize| with_bias.then(|| biases[i].as_slice());
                let (mut wq, mut wk, mut wv) = (Vec::new(), Vec::new(), Vec::new());
                for (t, row) in raw.chunks_exact(width).enumerate() {
                    let (mut q, mut k, mut v) = (row[..q_dim].to_vec(), row[q_dim..q_dim + kv_dim].to_vec(), row[q_dim + kv_dim..].to_vec());
                    ops::rope_store_kv(&mut q, &mut k, &mut v, b(0), b(1), b(2), &r, pos0 + t);
                    wq.extend(q);
                    wk.extend(k);
                    wv.extend(v);
                }
                for k in kernels {
                    let (q, kc, vc) = gops::matmul_mma_qkv(&g, &m, &x, n_tok, k, &r, (q_dim, kv_dim), [b(0), b(1), b(2)], pos0).unwrap();
                    let what = format!("{k:?} {} Q|K|V n_tok={n_tok} bias {with_bias}", ty.name());
                    exact(&format!("{what}: q"), &q, &wq);
                    exact(&format!("{what}: k cache"), &kc, &wk);
                    exact(&format!("{what}: v cache"), &vc, &wv);
                }
            }
        }
        for (ffn, n_tok) in [(1536, 33), (1536, 517), (96, 70), (96, 16)] {
            let data = random_matrix(&mut rng, ty, 2 * ffn, n_in);
            let m = quant::QMatrix { ty, data: &data, n_in, n_out: 2 * ffn };
            let x: Vec<f32> = rng.activations(n_tok, n_in).into_iter().map(|v| v.clamp(-2000.0, 2000.0)).collect();
            let mut raw = vec![0.0; n_tok * 2 * ffn];
            simd::matmul(&m, &x, n_tok, &mut raw);
            let mut want = vec![0.0; n_tok * ffn];
            for (row, out) in raw.chunks_exact(2 * ffn).zip(want.chunks_exact_mut(ffn)) {
                ops::swiglu(&row[..ffn], &row[ffn..], out);
            }
            let want_q: Vec<_> = want.chunks(ffn).flat_map(quant::quantize_row_q8_1).collect();
            for k in kernels {
                let (got, blocks) = gops::matmul_mma_swiglu(&g, &m, &x, n_tok, k).unwrap();
                let what = format!("{k:?} {} gate|up ffn={ffn} n_tok={n_tok}", ty.name());
                exact(&format!("{what}: swiglu"), &got, &want);
                blocks_equal(&format!("{what}: q8_1"), &blocks, &want_q);
            }
        }
    }
}

/// A matrix of a type added with the k-quants: the model's own kind of rows (our quantizer,
/// byte-identical to ggml's, on random weights) or random block bytes with random f16 scales of
/// either sign (every quant bit pattern is valid).
fn random_kquant_matrix(rng: &mut Rng, ty: GgmlType, n_out: usize, n_in: usize, quantized: bool) -> Vec<u8> {
    if quantized {
        let x = rng.vec(n_out * n_in, -0.1, 0.1);
        let mut w = vec![0u8; ty.row_bytes(n_in).unwrap() * n_out];
        worker_orcd::quantize::rows::quantize_rows(ty, &x, &mut w).unwrap();
        return w;
    }
    let scale_at: &[usize] = match ty {
        GgmlType::Q5_0 | GgmlType::IQ4_NL => &[0],
        GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        _ => &[208],
    };
    let (bs, nb) = (ty.type_size(), n_out * n_in / ty.block_size());
    let mut w: Vec<u8> = (0..nb * bs).map(|_| rng.u32() as u8).collect();
    for b in 0..nb {
        for &at in scale_at {
            w[b * bs + at..b * bs + at + 2].copy_from_slice(&f16_bytes(rng.f32(-0.02, 0.02)));
        }
    }
    w
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn quantize_q8_k_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(21);
    for (n_tok, width) in [(1, 256), (3, 1536), (5, 4864)] {
        let mut x = rng.activations(n_tok, width);
        x[..256].iter_mut().for_each(|v| *v = 0.0); // an all-zero block
        if n_tok > 1 {
            x[width + 3] = -1e4; // a negative maximum
        }
        let got = gops::quantize_row_q8_K(&g, &x, n_tok).unwrap();
        let want: Vec<_> = x.chunks(width).flat_map(worker_orcd::backend::cpu::kquant::quantize_row_q8_K).collect();
        assert_eq!(got.len(), want.len());
        let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
        println!("{:<40} blocks={:<6} differing {}", format!("quantize_q8_K {n_tok}x{width}"), got.len(), bad.len());
        for &i in bad.iter().take(4) {
            println!(
                "  block {i}: cuda d {} qs {:?} bsums {:?}\n            cpu  d {} qs {:?} bsums {:?}",
                got[i].d,
                &got[i].qs[..8],
                got[i].bsums,
                want[i].d,
                &want[i].qs[..8],
                want[i].bsums
            );
        }
        assert!(bad.is_empty(), "quantize_q8_K {n_tok}x{width}: {} blocks differ", bad.len());
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn kquant_matvec_matches_cpu_for_every_new_type() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(22);
    for ty in [GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::IQ4_NL, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        let k = ty.block_size() == 256;
        // Widths of the named models (SmolLM2 1536, Qwen2.5 896/4864); odd block counts for
        // IQ4_NL's unpaired tail; row counts that leave a partial block of 16 outputs.
        let shapes: &[(usize, usize, usize)] =
            if k { &[(200, 1536, 1), (77, 4864, 3), (64, 256, 2)] } else { &[(200, 576, 1), (77, 896, 3), (33, 32, 2), (48, 96, 5)] };
        for &(n_out, n_in, n_tok) in shapes {
            for quantized in [true, false] {
                let data = random_kquant_matrix(&mut rng, ty, n_out, n_in, quantized);
                let m = quant::QMatrix { ty, data: &data, n_in, n_out };
                let x = rng.activations(n_tok, n_in);
                let mut want = vec![0.0; n_tok * n_out];
                simd::matmul(&m, &x, n_tok, &mut want);
                let got = gops::matmul_kquant(&g, &m, &x, n_tok).unwrap();
                let kind = if quantized { "quantized" } else { "random" };
                exact(&format!("{} {} {n_out}x{n_in} n_tok={n_tok} {kind}", gops::kquant_kernel(ty).unwrap(), ty.name()), &got, &want);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn rope_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(5);
    for (width, pos0) in [(576, 0), (576, 37), (192, 4000)] {
        let n_tok = 4;
        let x = rng.activations(n_tok, width);
        let mut want = x.clone();
        for t in 0..n_tok {
            ops::rope_norm(&mut want[t * width..(t + 1) * width], 64, pos0 + t, 100000.0);
        }
        let got = gops::rope_norm(&g, &x, n_tok, 64, pos0, 100000.0).unwrap();
        exact(&format!("rope_norm width={width} pos0={pos0}"), &got, &want);
        // NEOX (qwen2) and NORM with Llama-3 frequency factors and linear scaling: the table is
        // the CPU's, the pairing and the rotation the kernel's.
        for kind in [ops::RopeKind::Neox, ops::RopeKind::Norm] {
            let r = ops::Rope {
                kind,
                head_dim: 64,
                base: 1e6,
                freq_scale: 0.25,
                attn_factor: 1.0,
                freq_factors: Some((0..32).map(|i| 1.0 + i as f32 * 0.5).collect()),
            };
            let mut want = x.clone();
            for t in 0..n_tok {
                r.apply(&mut want[t * width..(t + 1) * width], pos0 + t);
            }
            let got = gops::rope(&g, &r, &x, n_tok, pos0).unwrap();
            exact(&format!("rope {kind:?} width={width} pos0={pos0}"), &got, &want);
        }
    }
}

/// `rope_store_kv` (bias adds, RoPE, cache writes) against its CPU reference of the same name,
/// for both pairings, with and without biases (Qwen-sized: |bias| up to 80).
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn rope_store_kv_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(11);
    let (q_dim, kv_dim, n_tok, pos0) = (896, 128, 5, 29);
    let qkv = rng.activations(n_tok, q_dim + 2 * kv_dim);
    let biases = [rng.vec(q_dim, -80.0, 80.0), rng.vec(kv_dim, -80.0, 80.0), rng.vec(kv_dim, -8.0, 8.0)];
    for kind in [ops::RopeKind::Neox, ops::RopeKind::Norm] {
        for with_bias in [true, false] {
            let r = ops::Rope::plain(kind, 64, 1e6);
            let b = |i: usize| with_bias.then(|| biases[i].as_slice());
            let (mut wq, mut wk, mut wv) = (Vec::new(), Vec::new(), Vec::new());
            for t in 0..n_tok {
                let row = &qkv[t * (q_dim + 2 * kv_dim)..(t + 1) * (q_dim + 2 * kv_dim)];
                let (mut q, mut k, mut v) = (row[..q_dim].to_vec(), row[q_dim..q_dim + kv_dim].to_vec(), row[q_dim + kv_dim..].to_vec());
                ops::rope_store_kv(&mut q, &mut k, &mut v, b(0), b(1), b(2), &r, pos0 + t);
                wq.extend(q);
                wk.extend(k);
                wv.extend(v);
            }
            let (q, k, v) = gops::rope_store_kv(&g, &r, &qkv, n_tok, q_dim, kv_dim, [b(0), b(1), b(2)], pos0).unwrap();
            let what = format!("rope_store_kv {kind:?} bias {with_bias}");
            exact(&format!("{what}: q"), &q, &wq);
            exact(&format!("{what}: k cache"), &k, &wk);
            exact(&format!("{what}: v cache"), &v, &wv);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn attention_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(6);
    // One position takes attention_f32; batches attention_rows_f32 (3 query heads per KV head:
    // 2 rows a block, 6 pairs; 7: 1 row, the 8-pair kernel; 1: 8 rows), odd counts leaving
    // a block's last row empty, 131 positions crossing a K/V tile.
    for (n_heads, n_kv_heads, n_pos, pos0) in [(9, 3, 1, 0), (9, 3, 50, 45), (9, 3, 700, 690), (9, 3, 131, 0), (14, 2, 133, 0), (4, 4, 77, 60)] {
        let hd = 64;
        let n_tok = n_pos - pos0;
        let q = rng.vec(n_tok * n_heads * hd, -3.0, 3.0);
        let k = rng.vec(n_pos * n_kv_heads * hd, -3.0, 3.0);
        let v = rng.vec(n_pos * n_kv_heads * hd, -2.0, 2.0);
        let mut want = vec![0.0; q.len()];
        let dim = n_heads * hd;
        for t in 0..n_tok {
            ops::attention(&q[t * dim..(t + 1) * dim], &k, &v, pos0 + t + 1, n_heads, n_kv_heads, hd, &mut want[t * dim..(t + 1) * dim], None, None);
        }
        let (got, blocks) = gops::attention(&g, &q, &k, &v, pos0, n_heads, n_kv_heads, hd).unwrap();
        exact(&format!("attention {n_heads}/{n_kv_heads} heads n_kv={n_pos} n_tok={n_tok}"), &got, &want);
        let want_q: Vec<_> = want.chunks(dim).flat_map(quant::quantize_row_q8_1).collect();
        blocks_equal("attention (fused q8_1)", &blocks, &want_q);
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn swiglu_and_add_match_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(7);
    let (n_tok, n) = (3, 1536);
    let gate = rng.activations(n_tok, n);
    let up = rng.activations(n_tok, n);
    let mut want = vec![0.0; gate.len()];
    ops::swiglu(&gate, &up, &mut want);
    let (got, blocks) = gops::swiglu(&g, &gate, &up, n_tok).unwrap();
    exact("swiglu_f32", &got, &want);
    let want_q: Vec<_> = want.chunks(n).flat_map(quant::quantize_row_q8_1).collect();
    blocks_equal("swiglu_f32 (fused q8_1)", &blocks, &want_q);
    let mut sum = gate.clone();
    ops::add(&mut sum, &up);
    exact("add_f32", &gops::add(&g, &gate, &up).unwrap(), &sum);
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn embedding_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(8);
    let (n_vocab, dim) = (300, 576);
    for ty in [GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::Q4_0, GgmlType::F16, GgmlType::F32] {
        let data = random_matrix(&mut rng, ty, n_vocab, dim);
        let m = quant::QMatrix { ty, data: &data, n_in: dim, n_out: n_vocab };
        let tokens: Vec<u32> = (0..17).map(|_| rng.u32() % n_vocab as u32).collect();
        let mut want = vec![0.0; tokens.len() * dim];
        for (t, &id) in tokens.iter().enumerate() {
            ops::embedding(ty, &data, dim, id, &mut want[t * dim..(t + 1) * dim]);
        }
        exact(&format!("embedding {}", ty.name()), &gops::embedding(&g, &m, &tokens).unwrap(), &want);
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---------------------------------------------------------------------------------------------
// The whole forward pass on a small random model (fits any call; no download).
// ---------------------------------------------------------------------------------------------

/// The architecture variants a tiny random model can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// llama, NORM RoPE, output tied to the Q8_0 embeddings, biases on Q/K/V to cover them.
    Llama,
    /// qwen2: NEOX RoPE (base 1e6), RMS epsilon 1e-6, Q/K/V biases, a separate Q8_0 `output.weight`.
    Qwen2,
    /// llama with Llama-3 rope frequency factors (`rope_freqs.weight`) and linear rope scaling.
    Llama3,
    /// gemma3: heads of 64 (Q wider than the model: 4 x 64 = 256 against dim 128), Q/K norms,
    /// post-attention and post-FFN norms, GEGLU, a sliding window of 8 positions on layers 0 and
    /// 1 (pattern 3: layer 2 is global), RoPE base 1e6 global and 1e4 sliding, no biases.
    Gemma3,
}

/// A 3-layer llama with random weights of `ty` (dim 128, 4 heads of 32, 2 KV heads, FFN 256,
/// vocab 512, Q8_0 embeddings tied to the output, biases on Q/K/V to cover them).
pub fn tiny_model(ty: GgmlType) -> Arc<Model> {
    tiny_model_of(ty, Variant::Llama)
}

/// The GGUF writer of [`tiny_model_of`], for tests that edit it further.
pub fn tiny_writer(ty: GgmlType, variant: Variant) -> GgufWriter {
    tiny_writer_mixed(&|name| if name == "token_embd.weight" || name == "output.weight" { GgmlType::Q8_0 } else { ty }, variant, 128, 4)
}

/// Random weights of any type the backends run: the 32-block and float types as random blocks,
/// the types added with the k-quants as our quantizer's rows of random weights.
fn random_weights(rng: &mut Rng, ty: GgmlType, n_out: usize, n_in: usize) -> Vec<u8> {
    if worker_orcd::backend::cuda::ops::kquant_kernel(ty).is_some() {
        random_kquant_matrix(rng, ty, n_out, n_in, true)
    } else {
        random_matrix(rng, ty, n_out, n_in)
    }
}

/// A 3-layer model of `variant`, width `dim` (heads of 32, 2 KV heads, FFN 2 * dim, vocab 512),
/// each tensor of the type `ty_of(name)` gives (norms and biases stay F32).
pub fn tiny_writer_mixed(ty_of: &dyn Fn(&str) -> GgmlType, variant: Variant, dim: usize, n_heads: u32) -> GgufWriter {
    let mut rng = Rng::new(42);
    let (n_layers, n_kv, ffn, vocab) = (3u32, 2u32, 2 * dim, 512usize);
    let gemma = variant == Variant::Gemma3;
    let hd = if gemma { 64 } else { dim / n_heads as usize };
    let kv = hd * n_kv as usize;
    let qd = hd * n_heads as usize;
    let arch = match variant {
        Variant::Qwen2 => "qwen2",
        Variant::Gemma3 => "gemma3",
        _ => "llama",
    };
    let mut w = GgufWriter::new();
    let meta = |w: &mut GgufWriter, k: &str, v: MetadataValue| w.add_metadata(&k.replace("llama.", &format!("{arch}.")), v);
    meta(&mut w, "general.architecture", MetadataValue::String(arch.into()));
    meta(&mut w, "general.name", MetadataValue::String("tiny-random".into()));
    meta(&mut w, "llama.block_count", MetadataValue::U32(n_layers));
    meta(&mut w, "llama.embedding_length", MetadataValue::U32(dim as u32));
    meta(&mut w, "llama.feed_forward_length", MetadataValue::U32(ffn as u32));
    meta(&mut w, "llama.attention.head_count", MetadataValue::U32(n_heads));
    meta(&mut w, "llama.attention.head_count_kv", MetadataValue::U32(n_kv));
    meta(&mut w, "llama.context_length", MetadataValue::U32(if gemma { 4096 } else { 1024 }));
    if gemma {
        meta(&mut w, "llama.attention.key_length", MetadataValue::U32(hd as u32));
        meta(&mut w, "llama.attention.value_length", MetadataValue::U32(hd as u32));
        meta(&mut w, "llama.attention.sliding_window", MetadataValue::U32(8));
        meta(&mut w, "llama.attention.sliding_window_pattern", MetadataValue::U32(3));
    }
    let (eps, base) = if variant == Variant::Qwen2 || gemma { (1e-6, 1e6) } else { (1e-5, 10000.0) };
    meta(&mut w, "llama.attention.layer_norm_rms_epsilon", MetadataValue::F32(eps));
    meta(&mut w, "llama.rope.freq_base", MetadataValue::F32(base));
    if variant == Variant::Llama3 {
        meta(&mut w, "llama.rope.scaling.type", MetadataValue::String("linear".into()));
        meta(&mut w, "llama.rope.scaling.factor", MetadataValue::F32(4.0));
    }
    let f32s = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let et = ty_of("token_embd.weight");
    w.add_tensor("token_embd.weight", &[dim as u64, vocab as u64], et, random_weights(&mut rng, et, vocab, dim));
    for l in 0..n_layers {
        let n = |s: &str| format!("blk.{l}.{s}");
        w.add_tensor(&n("attn_norm.weight"), &[dim as u64], GgmlType::F32, f32s(rng.vec(dim, 0.5, 1.5)));
        w.add_tensor(&n("ffn_norm.weight"), &[dim as u64], GgmlType::F32, f32s(rng.vec(dim, 0.5, 1.5)));
        for (name, n_out) in [("attn_q.weight", qd), ("attn_k.weight", kv), ("attn_v.weight", kv)] {
            let ty = ty_of(name);
            w.add_tensor(&n(name), &[dim as u64, n_out as u64], ty, random_weights(&mut rng, ty, n_out, dim));
        }
        let ot = ty_of("attn_output.weight");
        w.add_tensor(&n("attn_output.weight"), &[qd as u64, dim as u64], ot, random_weights(&mut rng, ot, dim, qd));
        if gemma {
            for (name, len) in [("attn_q_norm.weight", hd), ("attn_k_norm.weight", hd), ("post_attention_norm.weight", dim), ("post_ffw_norm.weight", dim)] {
                w.add_tensor(&n(name), &[len as u64], GgmlType::F32, f32s(rng.vec(len, 0.5, 1.5)));
            }
        }
        for (name, n_out) in [("attn_q.bias", qd), ("attn_k.bias", kv), ("attn_v.bias", kv)].into_iter().filter(|_| !gemma) {
            // Qwen's biases are large (|81| in block 0): cover that range.
            let r = if variant == Variant::Qwen2 { 40.0 } else { 0.1 };
            w.add_tensor(&n(name), &[n_out as u64], GgmlType::F32, f32s(rng.vec(n_out, -r, r)));
        }
        for (name, n_out, n_in) in [("ffn_gate.weight", ffn, dim), ("ffn_up.weight", ffn, dim), ("ffn_down.weight", dim, ffn)] {
            let ty = ty_of(name);
            w.add_tensor(&n(name), &[n_in as u64, n_out as u64], ty, random_weights(&mut rng, ty, n_out, n_in));
        }
    }
    w.add_tensor("output_norm.weight", &[dim as u64], GgmlType::F32, f32s(rng.vec(dim, 0.5, 1.5)));
    match variant {
        Variant::Qwen2 => {
            let ot = ty_of("output.weight");
            w.add_tensor("output.weight", &[dim as u64, vocab as u64], ot, random_weights(&mut rng, ot, vocab, dim))
        }
        Variant::Llama3 => {
            let hd = dim / n_heads as usize;
            w.add_tensor("rope_freqs.weight", &[hd as u64 / 2], GgmlType::F32, f32s((0..hd / 2).map(|i| if i < 4 { 1.0 } else { 1.0 + i as f32 }).collect()))
        }
        Variant::Llama | Variant::Gemma3 => {}
    }
    w
}

/// A 3-layer model of `variant` with random weights of `ty` (see [`tiny_model`] for the sizes).
pub fn tiny_model_of(ty: GgmlType, variant: Variant) -> Arc<Model> {
    let file = GgufFile::from_bytes(tiny_writer(ty, variant).to_bytes()).expect("tiny model parses");
    Arc::new(Model::from_gguf(Arc::new(file)).expect("tiny model loads"))
}

fn compare_taps(what: &str, cuda: &CaptureTap, cpu: &CaptureTap) {
    let mut worst = (0.0f64, None);
    for (p, want) in &cpu.tensors {
        if matches!(p, TapPoint::Kq(_) | TapPoint::KqSoftmax(_)) {
            continue; // never produced by the CUDA backend (Backend::produces)
        }
        let got = cuda.tensors.get(p).unwrap_or_else(|| panic!("{what}: cuda did not record {}", p.name()));
        let e = crate::support::nmse(got, want);
        if e > worst.0 || worst.1.is_none() {
            worst = (e, Some(*p));
        }
        assert_eq!(bits(got), bits(want), "{what}: {} differs from the CPU (NMSE {e:.3e})", p.name());
    }
    let identical = cpu.tensors.iter().filter(|(p, v)| cuda.tensors.get(p).map(|g| bits(g) == bits(v)).unwrap_or(false)).count();
    println!("{what:<40} taps bit-identical {identical}/{}, worst NMSE {:.3e} at {:?}", cpu.tensors.len(), worst.0, worst.1.map(|p| p.name()));
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn tiny_model_forward_matches_cpu_at_every_tap() {
    let Some(_g) = gpu() else { return };
    let cases = [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F16]
        .map(|t| (t, Variant::Llama))
        .into_iter()
        .chain([(GgmlType::Q8_0, Variant::Qwen2), (GgmlType::Q4_1, Variant::Llama3)]);
    for (ty, variant) in cases {
        let m = tiny_model_of(ty, variant);
        let ty_name = format!("{} {variant:?}", ty.name());
        let tokens: Vec<u32> = (0..37).map(|i| (i * 131 + 7) % 512).collect();
        let mut cpu = CpuBackend::new(Arc::clone(&m), 128, 2).unwrap();
        let mut gpu_b = CudaBackend::new(Arc::clone(&m), 128).unwrap();
        for all in [false, true] {
            cpu.truncate(0);
            gpu_b.truncate(0);
            let points = if all { Points::All } else { Points::Recorded };
            let (mut t_cpu, mut t_gpu) = (CaptureTap::new(points.clone()), CaptureTap::new(points));
            let want = cpu.forward(&tokens, 0, LogitRows::All, &mut t_cpu).unwrap();
            let got = gpu_b.forward(&tokens, 0, LogitRows::All, &mut t_gpu).unwrap();
            exact(&format!("tiny {ty_name} logits (debug taps {all})"), &got, &want);
            compare_taps(&format!("tiny {ty_name} taps (debug {all})"), &t_gpu, &t_cpu);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn tiny_model_prefill_is_chunk_independent_and_deterministic() {
    let Some(_g) = gpu() else { return };
    let m = tiny_model(GgmlType::Q4_1);
    let tokens: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 512).collect();
    let mut b = CudaBackend::new(Arc::clone(&m), 128).unwrap();
    let run = |b: &mut CudaBackend, chunk: usize, graphs: bool| -> (Vec<u32>, CaptureTap) {
        b.truncate(0);
        b.set_graphs(graphs);
        let mut tap = CaptureTap::recorded();
        let mut logits = Vec::new();
        let mut pos = 0;
        for c in tokens.chunks(chunk) {
            logits.extend(b.forward(c, pos, LogitRows::All, &mut tap).unwrap());
            pos += c.len();
        }
        (bits(&logits), tap)
    };
    let (one, taps_one) = run(&mut b, tokens.len(), true);
    for (chunk, graphs) in [(1, true), (1, false), (3, true), (7, true), (16, false), (39, true)] {
        let (got, taps) = run(&mut b, chunk, graphs);
        assert_eq!(got, one, "chunks of {chunk} (graphs {graphs}) change the logits");
        for (p, v) in &taps_one.tensors {
            assert_eq!(bits(&taps.tensors[p]), bits(v), "chunks of {chunk}: {} differs", p.name());
        }
    }
    for _ in 0..20 {
        assert_eq!(run(&mut b, 40, true).0, one, "repeated run differs");
    }
    println!("tiny Q4_1: prefill in 1, chunks of 1/3/7/16/39, graphs on/off, 20 repeats: bit-identical");
}

/// Decodes `tokens` one position at a time after a prefill of `prompt`, returning the logits
/// bits and every trace tap of the decode steps.
fn decode_steps(b: &mut dyn Backend, prompt: &[u32], tokens: &[u32], all: bool) -> (Vec<u32>, CaptureTap) {
    b.truncate(0);
    b.forward(prompt, 0, LogitRows::Last, &mut NoTap).unwrap();
    let mut tap = CaptureTap::new(if all { Points::All } else { Points::Recorded });
    let mut logits = Vec::new();
    for (i, &t) in tokens.iter().enumerate() {
        logits.extend(b.forward(&[t], prompt.len() + i, LogitRows::Last, &mut tap).unwrap());
    }
    (bits(&logits), tap)
}

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn context_errors_match_cpu() {
    let Some(_g) = gpu() else { return };
    let m = tiny_model(GgmlType::Q4_1);
    let mut b = CudaBackend::new(m, 8).unwrap();
    assert!(matches!(b.forward(&[1, 2], 1, LogitRows::Last, &mut NoTap), Err(BackendError::NonContiguous { .. })));
    assert!(matches!(b.forward(&[9999], 0, LogitRows::Last, &mut NoTap), Err(BackendError::BadToken { .. })));
    assert!(matches!(b.forward(&[1; 9], 0, LogitRows::Last, &mut NoTap), Err(BackendError::ContextFull { .. })));
    assert_eq!(b.forward(&[1, 2, 3], 0, LogitRows::Last, &mut NoTap).unwrap().len(), 512);
    assert_eq!(b.n_cached(), 3);
}

// ---------------------------------------------------------------------------------------------
// The real model (needs WORKER_ORCD_MODEL or a download; skipped without a GPU before loading).
// ---------------------------------------------------------------------------------------------

#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn real_model_matches_cpu_layer_by_layer() {
    let Some(_g) = gpu() else { return };
    let m = crate::support::model();
    let c = m.config.clone();
    let tok = crate::support::tokenizer();
    let ids = tok.encode("The capital of France is Paris. The capital of Germany is", false);
    let mut cpu = CpuBackend::new(Arc::clone(&m), 256, 0).unwrap();
    let mut gpu_b = CudaBackend::new(Arc::clone(&m), 256).unwrap();
    let (mut t_cpu, mut t_gpu) = (CaptureTap::recorded(), CaptureTap::recorded());
    let want = cpu.forward(&ids, 0, LogitRows::All, &mut t_cpu).unwrap();
    let got = gpu_b.forward(&ids, 0, LogitRows::All, &mut t_gpu).unwrap();
    for l in 0..c.n_layers {
        let p = TapPoint::LOut(l);
        let e = crate::support::max_row_nmse(&t_gpu.tensors[&p], &t_cpu.tensors[&p], c.dim);
        println!("real l_out-{l:<2} max per-position NMSE vs cpu {e:.3e} bit-identical {}", bits(&t_gpu.tensors[&p]) == bits(&t_cpu.tensors[&p]));
        assert!(e < 1e-4, "l_out-{l}: NMSE {e:.3e}");
    }
    let e = crate::support::max_row_nmse(&got, &want, c.n_vocab);
    println!("real logits max per-position NMSE vs cpu {e:.3e}, bit-identical {}", bits(&got) == bits(&want));
    assert!(e < 1e-4);

    // Decode steps (the persistent kernel when available) against the CPU backend.
    let steps: Vec<u32> = tok.encode(" Berlin. The capital of Italy is Rome.", false);
    let (want, want_taps) = decode_steps(&mut cpu, &ids, &steps, false);
    let (got, got_taps) = decode_steps(&mut gpu_b, &ids, &steps, false);
    let same_taps = want_taps.tensors.iter().filter(|(p, v)| bits(&got_taps.tensors[p]) == bits(v)).count();
    println!(
        "real decode {} steps (persistent kernel: {:?}): logits bit-identical {}, taps bit-identical {same_taps}/{}",
        steps.len(),
        gpu_b.persistent_status(),
        got == want,
        want_taps.tensors.len()
    );
    let e = crate::support::max_row_nmse(&f32s(&got), &f32s(&want), c.n_vocab);
    assert!(e < 1e-4, "decode logits NMSE {e:.3e}");
}

fn f32s(bits: &[u32]) -> Vec<f32> {
    bits.iter().map(|&b| f32::from_bits(b)).collect()
}

/// Decode steps of the NEOX / untied / Llama-3 variants (per-op path: the persistent kernel
/// fuses NORM RoPE only and says so) against the CPU backend, bit for bit, graphs on and off.
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn tiny_variant_decode_steps_match_cpu_bitwise() {
    let Some(_g) = gpu() else { return };
    for (ty, variant) in [(GgmlType::Q8_0, Variant::Qwen2), (GgmlType::Q4_1, Variant::Qwen2), (GgmlType::Q4_1, Variant::Llama3)] {
        let m = tiny_model_of(ty, variant);
        let prompt: Vec<u32> = (0..9).map(|i| (i * 53 + 5) % 512).collect();
        let steps: Vec<u32> = (0..24).map(|i| (i * 97 + 3) % 512).collect();
        let mut cpu = CpuBackend::new(Arc::clone(&m), 128, 2).unwrap();
        let mut b = CudaBackend::new(Arc::clone(&m), 128).unwrap();
        if variant == Variant::Qwen2 {
            assert!(b.persistent_status().is_err(), "NEOX models must not take the persistent kernel");
        }
        let (want, want_taps) = decode_steps(&mut cpu, &prompt, &steps, true);
        for graphs in [true, false] {
            b.set_graphs(graphs);
            let (got, taps) = decode_steps(&mut b, &prompt, &steps, true);
            assert_eq!(got, want, "{} {variant:?} graphs {graphs}: logits differ from the CPU backend", ty.name());
            for (p, v) in &want_taps.tensors {
                if matches!(p, TapPoint::Kq(_) | TapPoint::KqSoftmax(_)) {
                    continue;
                }
                assert_eq!(bits(&taps.tensors[p]), bits(v), "{} {variant:?} graphs {graphs}: {} differs", ty.name(), p.name());
            }
        }
        println!("tiny {} {variant:?}: {} decode steps bit-identical to the CPU backend", ty.name(), steps.len());
    }
}

/// Models in the types added with the k-quants (the matrices' GGUF rows through `kquant.cu`, a
/// table of another type dequantized at load): prefill at every tap, chunked prefill and decode
/// steps with graphs on and off, bit for bit the CPU backend's. Includes a Q4_K_M-like mix
/// (Q4_K, Q6_K V and down, Q6_K table and output) and a mix whose Q|K|V and gate|up are fused
/// Q4_0 products feeding k-quant and Q5_0 consumers.
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn kquant_models_match_cpu_bitwise_prefill_chunks_and_decode() {
    let Some(_g) = gpu() else { return };
    type Mix = Box<dyn Fn(&str) -> GgmlType>;
    let mut cases: Vec<(String, Mix, Variant)> = Vec::new();
    for ty in [GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::IQ4_NL, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        let variant = if matches!(ty, GgmlType::Q4_K | GgmlType::Q5_0 | GgmlType::Q6_K) { Variant::Qwen2 } else { Variant::Llama };
        cases.push((format!("all {}", ty.name()), Box::new(move |_| ty), variant));
    }
    cases.push((
        "q4_k_m-like".into(),
        Box::new(|n| match n {
            "attn_v.weight" | "ffn_down.weight" | "token_embd.weight" | "output.weight" => GgmlType::Q6_K,
            _ => GgmlType::Q4_K,
        }),
        Variant::Qwen2,
    ));
    cases.push((
        "fused q4_0 into k-quants".into(),
        Box::new(|n| match n {
            "ffn_down.weight" => GgmlType::Q6_K,
            "attn_output.weight" => GgmlType::Q5_0,
            "token_embd.weight" => GgmlType::Q8_0,
            _ => GgmlType::Q4_0,
        }),
        Variant::Llama,
    ));
    for (name, mix, variant) in &cases {
        let file = GgufFile::from_bytes(tiny_writer_mixed(mix.as_ref(), *variant, 256, 8).to_bytes()).expect("tiny model parses");
        let m = Arc::new(Model::from_gguf(Arc::new(file)).expect("tiny model loads"));
        let tokens: Vec<u32> = (0..37).map(|i| (i * 131 + 7) % 512).collect();
        let mut cpu = CpuBackend::new(Arc::clone(&m), 128, 2).unwrap();
        let mut b = CudaBackend::new(Arc::clone(&m), 128).unwrap_or_else(|e| panic!("{name}: {e}"));
        for all in [false, true] {
            cpu.truncate(0);
            b.truncate(0);
            let (mut t_cpu, mut t_gpu) =
                (CaptureTap::new(if all { Points::All } else { Points::Recorded }), CaptureTap::new(if all { Points::All } else { Points::Recorded }));
            let want = cpu.forward(&tokens, 0, LogitRows::All, &mut t_cpu).unwrap();
            let got = b.forward(&tokens, 0, LogitRows::All, &mut t_gpu).unwrap();
            exact(&format!("{name} {variant:?} logits (debug taps {all})"), &got, &want);
            compare_taps(&format!("{name} {variant:?} taps (debug {all})"), &t_gpu, &t_cpu);
        }
        cpu.truncate(0);
        let want = bits(&cpu.forward(&tokens, 0, LogitRows::All, &mut NoTap).unwrap());
        for chunk in [1, 7, 16] {
            b.truncate(0);
            let mut got = Vec::new();
            for (i, c) in tokens.chunks(chunk).enumerate() {
                got.extend(b.forward(c, i * chunk, LogitRows::All, &mut NoTap).unwrap());
            }
            assert_eq!(bits(&got), want, "{name}: prefill in chunks of {chunk} differs from the CPU backend");
        }
        let (prompt, steps) = (&tokens[..9], &tokens[9..33]);
        let (want, want_taps) = decode_steps(&mut cpu, prompt, steps, false);
        for graphs in [true, false] {
            b.set_graphs(graphs);
            let (got, taps) = decode_steps(&mut b, prompt, steps, false);
            assert_eq!(got, want, "{name} graphs {graphs}: decode logits differ from the CPU backend");
            for (p, v) in &want_taps.tensors {
                assert_eq!(bits(&taps.tensors[p]), bits(v), "{name} graphs {graphs}: decode {} differs", p.name());
            }
        }
        println!("{name:<28} {variant:?}: prefill (all taps), chunks 1/7/16, {} decode steps graphs on/off: bit-identical to the CPU backend", steps.len());
    }
}

/// `geglu_f32` against `ops::geglu` on seeded gates, the table's thresholds (-10, 10) and the
/// values past them included.
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn geglu_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(1729);
    let (n_tok, n) = (3, 2048);
    let gate: Vec<f32> = (0..n_tok * n)
        .map(|i| match i % 101 {
            0 => -10.0,
            1 => 10.0,
            2 => -12.5,
            3 => 14.0,
            4 => 0.0,
            _ => rng.f32(-8.0, 8.0),
        })
        .collect();
    let up = rng.vec(n_tok * n, -3.0, 3.0);
    let mut want = vec![0.0; gate.len()];
    ops::geglu(&gate, &up, &mut want);
    exact("geglu_f32", &gops::geglu(&g, &gate, &up, n_tok).unwrap(), &want);
}

/// The tiny random gemma3 (window 8, heads of 64, Q wider than the model): prefill at every tap
/// (head norms, windowed attention, post-norms, GEGLU), in chunks, and decode steps past the
/// window, bit-identical to the CPU backend.
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn tiny_gemma3_matches_cpu_at_every_tap_in_chunks_and_decoding() {
    let Some(_g) = gpu() else { return };
    for ty in [GgmlType::Q8_0, GgmlType::Q5_0] {
        let m = tiny_model_of(ty, Variant::Gemma3);
        let tokens: Vec<u32> = (0..41).map(|i| (i * 131 + 7) % 512).collect();
        let mut cpu = CpuBackend::new(Arc::clone(&m), 256, 2).unwrap();
        let mut gpu_b = CudaBackend::new(Arc::clone(&m), 256).unwrap();
        let (mut t_cpu, mut t_gpu) = (CaptureTap::all(), CaptureTap::all());
        let want = cpu.forward(&tokens, 0, LogitRows::All, &mut t_cpu).unwrap();
        let got = gpu_b.forward(&tokens, 0, LogitRows::All, &mut t_gpu).unwrap();
        exact(&format!("tiny gemma3 {} logits", ty.name()), &got, &want);
        compare_taps(&format!("tiny gemma3 {} taps", ty.name()), &t_gpu, &t_cpu);
        for chunk in [1, 7, 16] {
            gpu_b.truncate(0);
            let mut got = Vec::new();
            for (i, c) in tokens.chunks(chunk).enumerate() {
                got.extend(gpu_b.forward(c, i * chunk, LogitRows::All, &mut NoTap).unwrap());
            }
            assert_eq!(bits(&got), bits(&want), "tiny gemma3 {}: chunks of {chunk}", ty.name());
        }
        let (want, want_taps) = decode_steps(&mut cpu, &tokens[..5], &tokens[5..30], true);
        let (got, taps) = decode_steps(&mut gpu_b, &tokens[..5], &tokens[5..30], true);
        assert_eq!(got, want, "tiny gemma3 {}: decode logits", ty.name());
        compare_taps(&format!("tiny gemma3 {} decode taps", ty.name()), &taps, &want_taps);
        println!("tiny gemma3 {}: prefill (every tap), chunks 1/7/16, 25 decode steps past the window: bit-identical to the CPU backend", ty.name());
    }
}
