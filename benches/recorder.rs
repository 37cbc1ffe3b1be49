//! `cargo bench --bench recorder`: the recorder benchmark: decode tokens/s with no recorder and with each trace level, trace
//! bytes per token before and after compression, and the recorder's peak buffer memory.
//!
//! A benchmark, not a test: it asserts nothing about speed and prints figures for
//! BENCHMARKS.md. It drives the engine directly (no HTTP) exactly as the server does.
//!
//! Knobs: `WORKER_ORCD_BENCH_TOKENS` (default 128), `WORKER_ORCD_BENCH_REPEATS` (default 3),
//! `WORKER_ORCD_BENCH_THREADS` (default 0 = all cores). Prints a Markdown table for
//! BENCHMARKS.md.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use worker_orcd::backend::cpu::CpuBackend;
use worker_orcd::backend::{NoTap, Tap};
use worker_orcd::engine::{Engine, GenerateRequest};
use worker_orcd::model::Model;
use worker_orcd::sampler::SamplingParams;
use worker_orcd::tokenizer::Tokenizer;

use worker_orcd::trace::{Fingerprint, Footer, Header, ModelDims, RecordedParams, ResolvedRequest, Timings, TokenFrame, TraceLevel};
use worker_orcd::trace::{Recorder, RecorderConfig};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot load model {path}: {source}")]
    Model { path: PathBuf, source: worker_orcd::model::ModelError },
    #[error(transparent)]
    Tokenizer(#[from] worker_orcd::tokenizer::TokenizerError),
    #[error(transparent)]
    Backend(#[from] worker_orcd::backend::BackendError),
    #[error(transparent)]
    Engine(#[from] worker_orcd::engine::EngineError),
    #[error(transparent)]
    Recorder(#[from] worker_orcd::trace::RecorderError),
    #[error("cannot use bench dir {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
}

/// One recorder configuration to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    /// `None` is "no recorder at all".
    pub level: Option<TraceLevel>,
    pub shuffle: bool,
    pub zstd_level: Option<i32>,
}

impl BenchConfig {
    pub fn name(&self) -> String {
        match self.level {
            None => "no recorder".into(),
            Some(l) => {
                let mut n = l.to_string();
                if l == TraceLevel::Full && !self.shuffle {
                    n.push_str(", no shuffle");
                }
                match self.zstd_level {
                    None => n.push_str(", no zstd"),
                    Some(1) => {}
                    Some(z) => n.push_str(&format!(", zstd {z}")),
                }
                n
            }
        }
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub model_path: PathBuf,
    /// Raw prompt (special tokens parsed).
    pub prompt: String,
    pub max_tokens: usize,
    pub threads: usize,
    /// Runs per configuration; configurations are interleaved and the median is reported.
    pub repeats: usize,
    pub configs: Vec<BenchConfig>,
    /// Where recordings go.
    pub dir: PathBuf,
}

impl BenchOptions {
    /// The default set: no recorder, then off, hashes, summary and full (zstd 1, shuffled),
    /// and full without shuffling and without zstd, to show what each costs and saves.
    pub fn new(model_path: PathBuf, dir: PathBuf) -> BenchOptions {
        let c = |level, shuffle, zstd_level| BenchConfig { level, shuffle, zstd_level };
        BenchOptions {
            model_path,
            prompt: "<|im_start|>user\nTell me a long story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n".into(),
            max_tokens: 128,
            threads: 0,
            repeats: 3,
            configs: vec![
                c(None, true, Some(1)),
                c(Some(TraceLevel::Off), true, Some(1)),
                c(Some(TraceLevel::Hashes), true, Some(1)),
                c(Some(TraceLevel::Summary), true, Some(1)),
                c(Some(TraceLevel::Full), true, Some(1)),
                c(Some(TraceLevel::Full), false, Some(1)),
                c(Some(TraceLevel::Full), true, None),
            ],
            dir,
        }
    }
}

/// Figures for one configuration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    pub config: String,
    pub tokens: usize,
    pub prompt_tokens: usize,
    /// Median over repeats.
    pub decode_tok_s: f64,
    pub decode_tok_s_all: Vec<f64>,
    /// Raw f32 bytes traced per decode step (what `full` keeps losslessly).
    pub value_bytes_per_token: f64,
    /// Trace frame bytes per decode step before compression (postcard).
    pub trace_raw_bytes_per_token: f64,
    /// Trace frame bytes per decode step on disk (frame header included).
    pub trace_stored_bytes_per_token: f64,
    /// Whole recording file size (last run).
    pub file_bytes: u64,
    /// Peak bytes of trace buffers held by the pool, and of the writer's scratch buffers.
    pub pool_peak_bytes: u64,
    pub writer_scratch_peak_bytes: u64,
    pub dropped_frames: u64,
    /// Time the tap spent on the inference thread, per generated token (prefill included).
    pub tap_us_per_token: f64,
    /// The writer thread's CPU time per generated token (prefill included).
    pub writer_cpu_ms_per_token: f64,
}

/// Runs the benchmark. Prints one line per run to stderr as it goes.
pub fn bench_trace(opts: &BenchOptions) -> Result<Vec<BenchRow>, BenchError> {
    let model = Arc::new(Model::open(&opts.model_path).map_err(|source| BenchError::Model { path: opts.model_path.clone(), source })?);
    let tok = Arc::new(Tokenizer::from_gguf(&model.file)?);
    let backend = CpuBackend::new(Arc::clone(&model), 2048, opts.threads)?;
    let threads = backend_threads(&backend);
    let mut engine = Engine::new(Box::new(backend), Arc::clone(&tok));
    let prompt_ids = tok.encode(&opts.prompt, true);
    let req = GenerateRequest {
        prompt_ids: prompt_ids.clone(),
        params: SamplingParams::greedy(),
        seed: 1,
        max_tokens: opts.max_tokens,
        stop: Vec::new(),
        top_logprobs: 5,
        prefill_chunk: 128,
    };
    let c = &model.config;
    let dims = ModelDims { n_layers: c.n_layers as u32, dim: c.dim as u32, n_vocab: c.n_vocab as u32 };
    // Warm-up (page in the weights).
    engine.generate(&GenerateRequest { max_tokens: 8, ..req.clone() }, &mut NoTap, &AtomicBool::new(false), &mut |_| {})?;

    let n = opts.configs.len();
    let mut recorders: Vec<Option<Recorder>> = Vec::new();
    for (i, cfg) in opts.configs.iter().enumerate() {
        recorders.push(match cfg.level {
            None => None,
            Some(level) => {
                let dir = opts.dir.join(format!("{i}-{level}"));
                let _ = std::fs::remove_dir_all(&dir);
                let mut rc = RecorderConfig::new(&dir, level);
                rc.zstd_level = cfg.zstd_level;
                rc.shuffle = cfg.shuffle;
                Some(Recorder::start(rc, dims)?)
            }
        });
    }
    let mut speeds: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut tokens = vec![0usize; n];
    let mut last_file: Vec<Option<PathBuf>> = vec![None; n];
    for rep in 0..opts.repeats.max(1) {
        for (i, rec) in recorders.iter_mut().enumerate() {
            let cancel = AtomicBool::new(false);
            let outcome = match rec {
                None => engine.generate(&req, &mut NoTap, &cancel, &mut |_| {})?,
                Some(rec) => {
                    let header = bench_header(&req, rec.level(), dims, &model.name, threads);
                    let active = rec.begin(&format!("bench-{rep}"), header).expect("the bench never has 64 recordings open");
                    let t0 = Instant::now();
                    let (outcome, dropped) = {
                        let mut tap = rec.tap(&active);
                        let out = engine.generate(&req, &mut tap as &mut dyn Tap, &cancel, &mut |ev| {
                            active.token(TokenFrame {
                                index: ev.index as u32,
                                id: ev.id,
                                text: ev.text.clone(),
                                logprob: ev.logprob,
                                top: ev.top_logprobs.clone(),
                            })
                        })?;
                        (out, tap.finish())
                    };
                    last_file[i] = Some(active.path().to_path_buf());
                    rec.end(active, bench_footer(&outcome, dropped, t0));
                    // Not timed: let the writer finish before the next configuration runs.
                    rec.flush();
                    outcome
                }
            };
            let n_tok = outcome.tokens.len();
            let tps = n_tok.saturating_sub(1) as f64 / (outcome.decode_ms / 1000.0).max(1e-9);
            eprintln!("bench: run {rep} {:>24}: {n_tok} tokens, decode {tps:.1} tok/s", opts.configs[i].name());
            speeds[i].push(tps);
            tokens[i] = n_tok;
        }
    }
    let mut rows = Vec::new();
    for (i, cfg) in opts.configs.iter().enumerate() {
        let mut s = speeds[i].clone();
        s.sort_by(f64::total_cmp);
        let median = s[s.len() / 2];
        let snap = recorders[i].as_ref().map(|r| r.status().snapshot());
        let (mut raw, mut stored, mut steps, mut file_bytes) = (0u64, 0u64, 0u64, 0u64);
        if let Some(Ok(r)) = last_file[i].as_ref().map(|p| worker_orcd::trace::Recording::open(p)) {
            file_bytes = r.file_len;
            let trace_frames = r.frame_index.iter().filter(|f| f.kind == worker_orcd::trace::FrameKind::Trace as u8);
            for (f, t) in trace_frames.zip(&r.traces) {
                if t.n_tok == 1 {
                    raw += f.raw_len as u64;
                    stored += f.stored_len as u64 + worker_orcd::trace::FRAME_HEADER_LEN as u64;
                    steps += 1;
                }
            }
        }
        let total_tokens = (tokens[i] * opts.repeats.max(1)).max(1) as f64;
        let per_step = |v: u64| if steps == 0 { 0.0 } else { v as f64 / steps as f64 };
        let value_bytes = if cfg.level.is_some_and(|l| l != TraceLevel::Off) { worker_orcd::trace::decode_step_floats(dims) as f64 * 4.0 } else { 0.0 };
        rows.push(BenchRow {
            config: cfg.name(),
            tokens: tokens[i],
            prompt_tokens: prompt_ids.len(),
            decode_tok_s: median,
            decode_tok_s_all: speeds[i].clone(),
            value_bytes_per_token: value_bytes,
            trace_raw_bytes_per_token: per_step(raw),
            trace_stored_bytes_per_token: per_step(stored),
            file_bytes,
            pool_peak_bytes: snap.as_ref().map(|s| s.pool_peak_bytes).unwrap_or(0),
            writer_scratch_peak_bytes: snap.as_ref().map(|s| s.writer_scratch_peak_bytes).unwrap_or(0),
            dropped_frames: snap.as_ref().map(|s| s.dropped_frames).unwrap_or(0),
            tap_us_per_token: snap.as_ref().map(|s| s.tap_ns as f64 / 1000.0 / total_tokens).unwrap_or(0.0),
            writer_cpu_ms_per_token: snap.as_ref().map(|s| s.writer_cpu_ms as f64 / total_tokens).unwrap_or(0.0),
        });
    }
    for r in recorders.into_iter().flatten() {
        r.shutdown();
    }
    Ok(rows)
}

fn backend_threads(b: &CpuBackend) -> u32 {
    use worker_orcd::backend::Backend;
    b.device().split('(').nth(1).and_then(|s| s.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn bench_header(req: &GenerateRequest, level: TraceLevel, dims: ModelDims, model: &str, threads: u32) -> Header {
    Header {
        job_id: "bench".into(),
        endpoint: "bench".into(),
        request_json: "{}".into(),
        started_at: String::new(),
        resolved: ResolvedRequest {
            prompt_text: String::new(),
            parse_special: true,
            prompt_ids: req.prompt_ids.clone(),
            params: RecordedParams::from(&req.params),
            seed: req.seed,
            seed_generated: false,
            max_tokens: req.max_tokens as u32,
            stop_ids: Vec::new(),
            stop_strings: Vec::new(),
            top_logprobs: req.top_logprobs as u32,
            prefill_chunk: req.prefill_chunk as u32,
        },
        fingerprint: Fingerprint {
            model_name: model.into(),
            model_sha256: String::new(),
            worker_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: String::new(),
            backend: "cpu".into(),
            device: String::new(),
            driver: None,
            kernel_source_hash: None,
            threads,
            numerics: String::new(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            cpu: String::new(),
        },
        trace: level,
        dims,
        projection: worker_orcd::trace::projection_spec(),
    }
}

fn bench_footer(o: &worker_orcd::engine::GenerateOutcome, dropped: u32, t0: Instant) -> Footer {
    let timings = Timings { queue_ms: 0.0, prefill_ms: o.prefill_ms, decode_ms: o.decode_ms, total_ms: t0.elapsed().as_secs_f64() * 1000.0 };
    Footer { stop_reason: o.stop_reason.as_str().into(), eog_token: o.eog_token, tokens: o.tokens.clone(), text: o.text.clone(), ..ok_footer(timings, dropped) }
}

/// A finished run's footer with no tokens.
fn ok_footer(timings: Timings, dropped: u32) -> Footer {
    Footer {
        outcome: "ok".into(),
        error: None,
        stop_reason: "MAX_TOKENS".into(),
        stop_sequence: None,
        stop_sequence_matched: None,
        eog_token: None,
        tokens: Vec::new(),
        text: String::new(),
        timings,
        dropped_trace_frames: dropped,
        ended_at: String::new(),
    }
}

/// The figures as Markdown tables: speed and cost, then sizes and memory.
pub fn format_markdown(rows: &[BenchRow]) -> String {
    let mut s = String::from(
        "| recorder | decode tok/s, median | runs | tap time on the inference thread, µs/token | writer CPU, ms/token | dropped frames |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let runs: Vec<String> = r.decode_tok_s_all.iter().map(|v| format!("{v:.1}")).collect();
        s.push_str(&format!(
            "| {} | {:.1} | {} | {:.0} | {:.2} | {} |\n",
            r.config,
            r.decode_tok_s,
            runs.join(", "),
            r.tap_us_per_token,
            r.writer_cpu_ms_per_token,
            r.dropped_frames
        ));
    }
    s.push_str(
        "\n| recorder | traced f32 bytes/token | trace frame bytes/token, before compression | on disk | recording file bytes | pool peak | writer scratch peak |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {} | {:.1} MiB | {:.1} MiB |\n",
            r.config,
            r.value_bytes_per_token,
            r.trace_raw_bytes_per_token,
            r.trace_stored_bytes_per_token,
            r.file_bytes,
            r.pool_peak_bytes as f64 / (1 << 20) as f64,
            r.writer_scratch_peak_bytes as f64 / (1 << 20) as f64,
        ));
    }
    s
}

/// How fast the recorder writes `full` decode-step frames of `dims` with `encoders` encoder
/// threads: `frames` frames fed through the tap as fast as it takes them (a budget that holds
/// them all, so none is dropped), timed until the writer has written the last one. Returns
/// (frames per second, recorder CPU ms per frame). The values are synthetic: a fixed
/// pseudo-random draw shaped like hidden states (sums of uniforms), new for every frame.
pub fn writer_throughput(dims: ModelDims, frames: usize, encoders: usize, dir: &std::path::Path) -> Result<(f64, f64), BenchError> {
    use worker_orcd::backend::TapPoint;
    let step = worker_orcd::trace::decode_step_floats(dims);
    let mut rc = RecorderConfig::new(dir, TraceLevel::Full);
    rc.encoders = encoders;
    rc.budget_bytes = (frames + 16) * step * 4;
    let mut rec = Recorder::start(rc, dims)?;
    let req = GenerateRequest {
        prompt_ids: vec![1],
        params: SamplingParams::greedy(),
        seed: 1,
        max_tokens: frames,
        stop: Vec::new(),
        top_logprobs: 0,
        prefill_chunk: 128,
    };
    let active = rec.begin(&format!("throughput-{encoders}"), bench_header(&req, TraceLevel::Full, dims, "synthetic", 0)).expect("one recording");
    let (dim, vocab) = (dims.dim as usize, dims.n_vocab as usize);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut draw = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                let mut v = 0.0f32;
                for _ in 0..4 {
                    state = worker_orcd::trace::splitmix64(state);
                    v += (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                }
                v * 3.0
            })
            .collect()
    };
    // Eight steps of values: (embd, l_out per layer, result_norm, logits).
    type Step = (Vec<f32>, Vec<Vec<f32>>, Vec<f32>, Vec<f32>);
    let inputs: Vec<Step> = (0..8).map(|_| (draw(dim), (0..dims.n_layers).map(|_| draw(dim)).collect(), draw(dim), draw(vocab))).collect();
    let t0 = Instant::now();
    let dropped = {
        let mut tap = rec.tap(&active);
        for f in 0..frames {
            let (embd, louts, norm, logits) = &inputs[f % inputs.len()];
            tap.record(TapPoint::Embd, f, 1, embd);
            for (l, v) in louts.iter().enumerate() {
                tap.record(TapPoint::LOut(l), f, 1, v);
            }
            tap.record(TapPoint::ResultNorm, f, 1, norm);
            tap.record(TapPoint::Logits, f, 1, logits);
        }
        tap.finish()
    };
    rec.flush();
    let secs = t0.elapsed().as_secs_f64();
    let snap = rec.status().snapshot();
    rec.end(active, ok_footer(Timings { queue_ms: 0.0, prefill_ms: 0.0, decode_ms: secs * 1e3, total_ms: secs * 1e3 }, dropped));
    rec.shutdown();
    assert_eq!(dropped, 0, "the throughput budget holds every frame");
    Ok((frames as f64 / secs, snap.writer_cpu_ms as f64 / frames as f64))
}

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

    // The writer alone and with encoder threads, at `full`, SmolLM2's decode-step frames.
    let frames = env_usize("WORKER_ORCD_BENCH_WRITER_FRAMES", 512);
    let dims = ModelDims { n_layers: 30, dim: 576, n_vocab: 49152 };
    println!("\n`full` decode-step frames through the recorder as fast as it takes them ({frames} frames, synthetic values):\n");
    println!("| encoder threads | frames/s | recorder CPU ms/frame |\n|---|---:|---:|");
    for encoders in [0usize, 1, 2, 4] {
        let d = dir.join(format!("throughput-{encoders}"));
        let (fps, cpu) = writer_throughput(dims, frames, encoders, &d)?;
        println!("| {encoders} | {fps:.0} | {cpu:.2} |");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
