//! `cargo bench --bench recorder`: runs [`worker_orcd::trace::bench::bench_trace`] on the
//! default model and prints a Markdown table for BENCHMARKS.md.
//!
//! A benchmark entry point, not a library module and not a test: it asserts nothing. Knobs:
//! `WORKER_ORCD_BENCH_TOKENS` (default 128), `WORKER_ORCD_BENCH_REPEATS` (default 3),
//! `WORKER_ORCD_BENCH_THREADS` (default 0 = all cores).

use worker_orcd::trace::bench::{bench_trace, format_markdown, BenchOptions};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let model = worker_orcd::fetch::default_model_path()?;
    let dir = std::env::temp_dir().join(format!("worker-orcd-bench-{}", std::process::id()));
    let mut opts = BenchOptions::new(model, dir.clone());
    opts.max_tokens = env_usize("WORKER_ORCD_BENCH_TOKENS", 128);
    opts.repeats = env_usize("WORKER_ORCD_BENCH_REPEATS", 3);
    opts.threads = env_usize("WORKER_ORCD_BENCH_THREADS", 0);
    let rows = bench_trace(&opts)?;
    let _ = std::fs::remove_dir_all(&dir);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!(
        "Machine: {cpu}, {cores} cores; {} threads; SmolLM2-135M Q4_1, greedy, {} prompt tokens, {} generated tokens, {} runs per configuration (interleaved), median shown.\n",
        if opts.threads == 0 { cores } else { opts.threads },
        rows.first().map(|r| r.prompt_tokens).unwrap_or(0),
        rows.first().map(|r| r.tokens).unwrap_or(0),
        opts.repeats
    );
    println!("{}", format_markdown(&rows));
    Ok(())
}
