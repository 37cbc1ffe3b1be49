//! Determinism: the same request gives the same bytes in one process, across processes, for
//! any thread count and any prefill chunking; seeds change samples and nothing else does.

use std::sync::atomic::AtomicBool;

use worker_orcd::backend::cpu::CpuBackend;
use worker_orcd::backend::{Backend, LogitRows, NoTap};
use worker_orcd::engine::{Engine, GenerateRequest};
use worker_orcd::sampler::SamplingParams;

use crate::support::{bits, model, tokenizer};

const PROMPT: &str = "The quick brown fox jumps over the lazy dog. In 1969, 3 astronauts";

fn prompt_ids() -> Vec<u32> {
    tokenizer().encode(PROMPT, false)
}

fn all_logits(threads: usize, chunk: usize) -> Vec<f32> {
    let mut b = CpuBackend::new(model(), 256, threads).unwrap();
    let ids = prompt_ids();
    let mut out = Vec::new();
    for (i, c) in ids.chunks(chunk).enumerate() {
        out.extend(b.forward(c, i * chunk, LogitRows::All, &mut NoTap).unwrap());
    }
    out
}

#[test]
fn logits_bytes_identical_for_1_2_and_4_threads() {
    let one = bits(&all_logits(1, usize::MAX));
    for t in [2, 4] {
        assert!(one == bits(&all_logits(t, usize::MAX)), "logits differ between 1 and {t} threads");
    }
}

#[test]
fn prefill_in_one_pass_in_chunks_or_token_by_token_gives_identical_bytes() {
    let whole = bits(&all_logits(2, usize::MAX));
    for chunk in [1, 3, 7] {
        assert!(whole == bits(&all_logits(2, chunk)), "logits differ with prefill chunks of {chunk}");
    }
}

fn run(seed: u64, params: SamplingParams, max_tokens: usize) -> Vec<u32> {
    let backend = CpuBackend::new(model(), 512, 2).unwrap();
    let mut engine = Engine::new(Box::new(backend), tokenizer());
    let req = GenerateRequest { prompt_ids: prompt_ids(), params, seed, max_tokens, stop: vec![], top_logprobs: 0, prefill_chunk: 0 };
    engine.generate(&req, &mut NoTap, &AtomicBool::new(false), &mut |_| {}).unwrap().tokens
}

#[test]
fn same_request_twice_in_one_process_gives_identical_tokens() {
    let p = SamplingParams::greedy();
    assert_eq!(run(1, p.clone(), 12), run(1, p, 12));
    // And one engine serving two requests in a row: the second is unaffected by the first.
    let backend = CpuBackend::new(model(), 512, 2).unwrap();
    let mut engine = Engine::new(Box::new(backend), tokenizer());
    let sampled = SamplingParams { temperature: 0.8, top_p: 0.9, ..Default::default() };
    let req =
        |seed| GenerateRequest { prompt_ids: prompt_ids(), params: sampled.clone(), seed, max_tokens: 10, stop: vec![], top_logprobs: 0, prefill_chunk: 0 };
    let cancel = AtomicBool::new(false);
    let first = engine.generate(&req(7), &mut NoTap, &cancel, &mut |_| {}).unwrap().tokens;
    let _other = engine.generate(&req(8), &mut NoTap, &cancel, &mut |_| {}).unwrap();
    let again = engine.generate(&req(7), &mut NoTap, &cancel, &mut |_| {}).unwrap().tokens;
    assert_eq!(first, again);
}

#[test]
fn seeded_sampling_repeats_and_depends_on_the_seed() {
    let p = SamplingParams { temperature: 0.8, top_p: 0.9, ..Default::default() };
    let a = run(42, p.clone(), 16);
    assert_eq!(a, run(42, p.clone(), 16), "same seed, different tokens");
    let others: Vec<Vec<u32>> = [43u64, 44, 45].iter().map(|&s| run(s, p.clone(), 16)).collect();
    assert!(others.iter().any(|o| *o != a), "three other seeds all gave the tokens of seed 42: {a:?}");
}

#[test]
fn two_processes_give_identical_tokens_and_logits_bytes() {
    let exe = env!("CARGO_BIN_EXE_worker-orcd");
    let model_path = worker_orcd::fetch::default_model_path().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for i in 0..2 {
        let out_dir = dir.path().join(format!("run{i}"));
        let status = std::process::Command::new(exe)
            .args(["dump", "--prompt", PROMPT, "--threads", "2", "--out"])
            .arg(&out_dir)
            .arg("--model")
            .arg(&model_path)
            .status()
            .unwrap();
        assert!(status.success());
        let gen = std::process::Command::new(exe)
            .args(["generate", "--json", "--prompt", PROMPT, "--seed", "9", "--temperature", "0.8", "--max-tokens", "8", "--model"])
            .arg(&model_path)
            .output()
            .unwrap();
        assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
        let v: serde_json::Value = serde_json::from_slice(&gen.stdout).unwrap();
        outputs.push((std::fs::read(out_dir.join("result_output.npy")).unwrap(), v["tokens"].clone(), v["seed"].clone()));
    }
    assert!(outputs[0].0 == outputs[1].0, "logits bytes differ between processes");
    assert_eq!(outputs[0].1, outputs[1].1);
    assert_eq!(outputs[0].2, 9);
}

#[test]
fn engine_reports_every_token_as_it_is_produced() {
    let backend = CpuBackend::new(model(), 512, 2).unwrap();
    let mut engine = Engine::new(Box::new(backend), tokenizer());
    let req =
        GenerateRequest { prompt_ids: prompt_ids(), params: SamplingParams::greedy(), seed: 0, max_tokens: 6, stop: vec![], top_logprobs: 3, prefill_chunk: 0 };
    let mut seen = Vec::new();
    let out = engine.generate(&req, &mut NoTap, &AtomicBool::new(false), &mut |ev| seen.push(ev.clone())).unwrap();
    assert_eq!(seen.iter().map(|e| e.id).collect::<Vec<_>>(), out.tokens);
    assert_eq!(seen.iter().map(|e| e.text.as_str()).collect::<String>(), out.text);
    assert!(seen.iter().enumerate().all(|(i, e)| e.index == i && e.top_logprobs.len() == 3));
    // Greedy picks the most likely token, so its logprob is the top alternative's.
    assert!(seen.iter().all(|e| e.top_logprobs[0].0 == e.id && e.top_logprobs[0].1 == e.logprob));
}
