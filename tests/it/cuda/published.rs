//! The published models beyond the default (fetched and cached like it), on the device against
//! the CPU backend, bit for bit.

use super::*;

/// The Qwen2.5-Coder-0.5B Q4_K_M file as published (Q4_K, Q5_0, Q6_K, Q8_0 inside): prefill at
/// every trace tap and decode steps bit-identical to the CPU backend, which is bit-identical to
/// llama.cpp (recordings/llama.cpp/qwen2.5-coder-0.5b-q4_k_m/).
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn qwen_q4_k_m_matches_cpu_bitwise() {
    let Some(_g) = gpu() else { return };
    named_model_matches_cpu_bitwise("qwen2.5-coder-0.5b-q4_k_m");
}

fn named_model_matches_cpu_bitwise(name: &str) {
    let path = worker_orcd::fetch::fetch_named(name).unwrap_or_else(|e| panic!("cargo xtask fetch-model {name}: {e}"));
    let m = Arc::new(Model::open(&path).unwrap());
    let tok = worker_orcd::tokenizer::Tokenizer::from_gguf(&m.file).unwrap();
    let ids = tok.encode("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n", false);
    let mut cpu = CpuBackend::new(Arc::clone(&m), 256, 0).unwrap();
    let mut gpu_b = CudaBackend::new(Arc::clone(&m), 256).unwrap();
    let (mut t_cpu, mut t_gpu) = (CaptureTap::recorded(), CaptureTap::recorded());
    let want = cpu.forward(&ids, 0, LogitRows::All, &mut t_cpu).unwrap();
    let got = gpu_b.forward(&ids, 0, LogitRows::All, &mut t_gpu).unwrap();
    compare_taps(&format!("{name} prefill"), &t_gpu, &t_cpu);
    exact(&format!("{name} prefill logits"), &got, &want);
    let steps: Vec<u32> = tok.encode("    if n < 2:\n        return n\n", false);
    let (want, want_taps) = decode_steps(&mut cpu, &ids, &steps, false);
    let (got, got_taps) = decode_steps(&mut gpu_b, &ids, &steps, false);
    compare_taps(&format!("{name} decode"), &got_taps, &want_taps);
    assert_eq!(got, want, "{name} decode logits differ from the CPU backend");
    println!("{name}: prefill of {} tokens and {} decode steps bit-identical to the CPU backend", ids.len(), steps.len());
}

/// Qwen2.5-Coder-0.5B requantized to Q8_0 (qwen2: biases, NEOX, untied output; the products the
/// CUDA backend has today): prefill and decode bit-identical to the CPU backend, which is
/// bit-identical to llama.cpp (recordings/llama.cpp/qwen2.5-coder-0.5b-q8_0/).
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn qwen_q8_0_matches_cpu_bitwise() {
    let Some(_g) = gpu() else { return };
    named_model_matches_cpu_bitwise("qwen2.5-coder-0.5b-q8_0");
}

// ---------------------------------------------------------------------------------------------
// gemma3 (CPU reference: backend::cpu::gemma3)
// ---------------------------------------------------------------------------------------------

/// Gemma-3-270M Q4_K_M as published: a 527-token prefill (past the 512-position window) at the
/// recorded taps and 16 decode steps, bit-identical to the CPU backend (which is bit-identical
/// to llama.cpp: recordings/llama.cpp/gemma3-270m-q4_k_m/token).
#[test]
#[ignore = "needs a CUDA GPU: run with --include-ignored and WORKER_ORCD_EXPECT_GPU=1"]
fn gemma3_270m_matches_cpu_bitwise_past_the_window() {
    let Some(_g) = gpu() else { return };
    let path = worker_orcd::fetch::fetch_named("gemma3-270m-q4_k_m").unwrap_or_else(|e| panic!("cargo xtask fetch-model gemma3-270m-q4_k_m: {e}"));
    let m = Arc::new(Model::open(&path).unwrap());
    let tokens: Vec<u32> = (0..560u32).map(|i| (i * 7919 + 13) % 262_000).collect();
    let (prompt, steps) = (&tokens[..527], &tokens[527..543]);
    let mut cpu = CpuBackend::new(Arc::clone(&m), 1024, 0).unwrap();
    let mut gpu_b = CudaBackend::new(Arc::clone(&m), 1024).unwrap();
    let (mut t_cpu, mut t_gpu) = (CaptureTap::recorded(), CaptureTap::recorded());
    let want = cpu.forward(prompt, 0, LogitRows::Last, &mut t_cpu).unwrap();
    let got = gpu_b.forward(prompt, 0, LogitRows::Last, &mut t_gpu).unwrap();
    exact("gemma3-270m prefill logits", &got, &want);
    compare_taps("gemma3-270m prefill taps", &t_gpu, &t_cpu);
    let (want, _) = decode_steps(&mut cpu, prompt, steps, false);
    let (got, _) = decode_steps(&mut gpu_b, prompt, steps, false);
    assert_eq!(got, want, "gemma3-270m decode logits");
    println!("gemma3-270m: 527-token prefill (taps, logits) and 16 decode steps: bit-identical to the CPU backend");
}
