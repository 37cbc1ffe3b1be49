//! `cuda-check`: the CUDA backend's device-side checks and benchmark as one binary, for GPU
//! machines without a Rust toolchain (built by `cargo xtask gpu-bundle`).
//!
//! `info` prints the device and the fingerprint; `parity` compares the CUDA backend with the CPU
//! backend layer by layer and with the llama.cpp reference recordings; `determinism` checks
//! repeated runs and chunked prefill for bit-identity; `bench` measures decode and prefill speed.
//! It only reads the model and the recordings; it writes nothing but its report.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use worker_orcd::backend::cpu::CpuBackend;
use worker_orcd::backend::cuda::{self, CudaBackend};
use worker_orcd::backend::{Backend, CaptureTap, LogitRows, NoTap, Tap, TapPoint};
use worker_orcd::model::Model;
use worker_orcd::reference::ReferenceRecording;
use worker_orcd::replay::metrics::nmse;
use worker_orcd::sampler::{argmax, draw_bits, PickArgs, SamplingParams};

const USAGE: &str = "usage: cuda-check <info|parity|determinism|bench|profile|prefill|matvec|all> [--model PATH] [--corpus DIR] [--runs N]";

struct Args {
    cmd: String,
    model: Option<PathBuf>,
    corpus: PathBuf,
    runs: usize,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().unwrap_or_default();
    let mut a = Args { cmd, model: None, corpus: PathBuf::from("recordings/llama.cpp"), runs: 20 };
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = Some(PathBuf::from(val()?)),
            "--corpus" => a.corpus = PathBuf::from(val()?),
            "--runs" => a.runs = val()?.parse().context("--runs")?,
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let a = parse_args()?;
    match a.cmd.as_str() {
        "info" => info(),
        "parity" => parity(&load_model(&a)?, &a),
        "determinism" => determinism(&load_model(&a)?, &a),
        "bench" => bench(&load_model(&a)?),
        "profile" => profile(&load_model(&a)?),
        "prefill" => prefill(&load_model(&a)?),
        "matvec" => matvec(a.model.is_some().then(|| load_model(&a)).transpose()?.as_deref()),
        "all" => {
            info()?;
            let m = load_model(&a)?;
            parity(&m, &a)?;
            determinism(&m, &a)?;
            bench(&m)
        }
        _ => bail!("{USAGE}"),
    }
}

fn load_model(a: &Args) -> Result<Arc<Model>> {
    let path = match &a.model {
        Some(p) => p.clone(),
        None => worker_orcd::fetch::default_model_path()?,
    };
    Ok(Arc::new(Model::open(&path).with_context(|| format!("opening {}", path.display()))?))
}

fn info() -> Result<()> {
    let info = cuda::probe()?;
    println!("device: {}", info.describe());
    println!("{}", serde_json::to_string_pretty(&info)?);
    Ok(())
}

/// The recordings directly in `dir`, by the one corpus loader (`reference::load_dir`).
fn corpus(dir: &Path) -> Result<Vec<ReferenceRecording>> {
    let recs = worker_orcd::reference::load_dir(dir).with_context(|| format!("reading the corpus in {}", dir.display()))?;
    Ok(recs.into_iter().map(|(_, r)| r).collect())
}

fn max_row_nmse(a: &[f32], b: &[f32], width: usize) -> f64 {
    a.chunks(width).zip(b.chunks(width)).map(|(x, y)| nmse(x, y)).fold(0.0, f64::max)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The CUDA backend against the CPU backend on the corpus prompts: every tap and logit of the
/// prefill, and a greedy continuation, bit for bit. (Against llama.cpp, every corpus case is
/// replayed on CUDA by the shared replay code: `WORKER_ORCD_REPLAY_BACKEND=cuda corpus`.)
fn parity(m: &Arc<Model>, a: &Args) -> Result<()> {
    let c = m.config.clone();
    let cases = corpus(&a.corpus)?;
    println!("\n== parity: CUDA vs CPU backend, {} cases ==", cases.len());
    let mut gpu = CudaBackend::new(Arc::clone(m), 1024)?;
    let mut cpu = CpuBackend::new(Arc::clone(m), 1024, 0)?;
    let (mut identical_cases, mut failures) = (0, Vec::new());
    let (mut greedy_equal, mut greedy_total) = (0usize, 0usize);
    for rec in &cases {
        let case = &rec.case;
        let n = case.prompt_ids.len();
        gpu.truncate(0);
        cpu.truncate(0);
        let (mut tg, mut tc) = (CaptureTap::recorded(), CaptureTap::recorded());
        let lg = gpu.forward(&case.prompt_ids, 0, LogitRows::All, &mut tg)?;
        let lc = cpu.forward(&case.prompt_ids, 0, LogitRows::All, &mut tc)?;
        let mut differing = Vec::new();
        if bits(&lg) != bits(&lc) {
            differing.push(format!("logits (worst row NMSE {:.3e})", max_row_nmse(&lg, &lc, c.n_vocab)));
        }
        for (p, v) in &tc.tensors {
            if bits(&tg.tensors[p]) != bits(v) {
                differing.push(format!("{} (worst row NMSE {:.3e})", p.name(), max_row_nmse(&tg.tensors[p], v, c.dim)));
            }
        }
        if differing.is_empty() {
            identical_cases += 1;
        } else {
            failures.push(format!("{}: {differing:?}", case.name));
        }
        let steps = case.greedy_ids.len();
        gpu.truncate(0);
        cpu.truncate(0);
        let mut lg = gpu.forward(&case.prompt_ids, 0, LogitRows::Last, &mut NoTap)?;
        let mut lc = cpu.forward(&case.prompt_ids, 0, LogitRows::Last, &mut NoTap)?;
        let mut same = 0;
        for i in 0..steps {
            let (ours, cpu_tok) = (argmax(&lg), argmax(&lc));
            greedy_total += 1;
            if ours == cpu_tok && bits(&lg) == bits(&lc) {
                same += 1;
                greedy_equal += 1;
            }
            lg = gpu.forward(&[ours], n + i, LogitRows::Last, &mut NoTap)?;
            lc = cpu.forward(&[cpu_tok], n + i, LogitRows::Last, &mut NoTap)?;
        }
        println!(
            "{:<22} n={n:<4} prefill taps and logits cuda==cpu bitwise: {:<5} greedy steps with identical logits {same}/{steps}",
            case.name,
            differing.is_empty()
        );
    }
    println!("cases with every tap and logit bit-identical to the CPU backend: {identical_cases}/{}", cases.len());
    println!("greedy steps with bit-identical logits and tokens: {greedy_equal}/{greedy_total}");
    if !failures.is_empty() || greedy_equal != greedy_total {
        bail!("CUDA differs from the CPU backend: {failures:?}");
    }
    Ok(())
}

/// Hash of everything a run produced (tokens, every tap, every logit row), as bits.
fn run_hash(b: &mut CudaBackend, prompt: &[u32], steps: usize, chunk: usize) -> Result<(u64, Vec<u32>, CaptureTap)> {
    b.truncate(0);
    let mut tap = CaptureTap::recorded();
    let mut logits = Vec::new();
    let mut pos = 0;
    for c in prompt.chunks(chunk) {
        let rows = if pos + c.len() == prompt.len() { LogitRows::Last } else { LogitRows::None };
        logits = b.forward(c, pos, rows, &mut tap)?;
        pos += c.len();
    }
    let mut toks = Vec::new();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for _ in 0..steps {
        let t = argmax(&logits);
        toks.push(t);
        logits = b.forward(&[t], pos, LogitRows::Last, &mut tap)?;
        pos += 1;
    }
    for (p, v) in &tap.tensors {
        h.update(p.name().as_bytes());
        for x in v {
            h.update(&x.to_bits().to_le_bytes());
        }
    }
    for t in &toks {
        h.update(&t.to_le_bytes());
    }
    Ok((h.digest(), toks, tap))
}

fn determinism(m: &Arc<Model>, a: &Args) -> Result<()> {
    let cases = corpus(&a.corpus)?;
    println!("\n== determinism: {} runs per prompt, prefill + 32 greedy steps, all taps hashed ==", a.runs);
    let mut b = CudaBackend::new(Arc::clone(m), 1024)?;
    for rec in cases.iter().take(4) {
        let p = &rec.case.prompt_ids;
        let (h0, toks, _) = run_hash(&mut b, p, 32, p.len())?;
        let mut same = 1;
        for _ in 1..a.runs {
            if run_hash(&mut b, p, 32, p.len())?.0 == h0 {
                same += 1;
            }
        }
        // The same run with one-position steps on the per-op kernels instead of the persistent one.
        let persistent = b.persistent_status().is_ok();
        b.set_persistent(false);
        let per_op = run_hash(&mut b, p, 32, p.len())?.0;
        b.set_persistent(true);
        println!(
            "{:<22} {same}/{} runs bit-identical (hash {h0:016x}, tokens {:?}...); persistent kernel {persistent}, per-op path hash {per_op:016x} ({})",
            rec.case.name,
            a.runs,
            &toks[..6],
            if per_op == h0 { "same" } else { "DIFF" }
        );
        if same != a.runs || per_op != h0 {
            bail!("{}: runs differ", rec.case.name);
        }
    }
    println!("\n== chunk independence: prefill in one pass vs chunks vs token by token, graphs on/off ==");
    for rec in cases.iter().take(4) {
        let p = &rec.case.prompt_ids;
        // Logits at every prompt position, prefilled in one pass.
        let all_rows = |b: &mut CudaBackend, chunk: usize| -> Result<(Vec<u32>, CaptureTap)> {
            b.truncate(0);
            let mut tap = CaptureTap::recorded();
            let mut logits = Vec::new();
            let mut pos = 0;
            for c in p.chunks(chunk) {
                logits.extend(b.forward(c, pos, LogitRows::All, &mut tap)?);
                pos += c.len();
            }
            Ok((bits(&logits), tap))
        };
        let (one, taps_one) = all_rows(&mut b, p.len())?;
        let mut report = Vec::new();
        for (chunk, graphs) in [(1, true), (1, false), (2, true), (3, true), (5, false), (8, true), (13, true), (64, true)] {
            b.set_graphs(graphs);
            let (got, taps) = all_rows(&mut b, chunk)?;
            let taps_same = taps_one.tensors.iter().all(|(k, v)| bits(&taps.tensors[k]) == bits(v));
            report.push(format!("{chunk}{}:{}", if graphs { "" } else { "(no graph)" }, if got == one && taps_same { "same" } else { "DIFF" }));
            if got != one || !taps_same {
                bail!("{}: chunks of {chunk} differ from one pass", rec.case.name);
            }
        }
        b.set_graphs(true);
        println!("{:<22} n={:<4} chunk sizes {}", rec.case.name, p.len(), report.join(" "));
    }
    Ok(())
}

/// A tap that copies what a recorder keeps (Embd, LOut, ResultNorm, Logits) into preallocated
/// buffers, as the recorder's `TraceTap` does on the forward thread.
struct CopyTap {
    buf: Vec<f32>,
    used: usize,
}

impl Tap for CopyTap {
    fn wants(&self, p: TapPoint) -> bool {
        matches!(p, TapPoint::Embd | TapPoint::LOut(_) | TapPoint::ResultNorm | TapPoint::Logits)
    }
    fn record(&mut self, _: TapPoint, _: usize, _: usize, data: &[f32]) {
        if self.used + data.len() > self.buf.len() {
            self.used = 0;
        }
        let n = data.len().min(self.buf.len());
        self.buf[self.used..self.used + n].copy_from_slice(&data[..n]);
        self.used += n;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Two 512-token prefills (trace off), for a kernel profiler (`ncu`) to time each launch.
fn prefill(m: &Arc<Model>) -> Result<()> {
    let mut b = CudaBackend::new(Arc::clone(m), 2048)?;
    let prompt: Vec<u32> = (0..512u32).map(|i| (i * 7919 + 13) % m.config.n_vocab as u32).collect();
    // The time to first token's shape (32 positions) and pp512, a warm-up and two timed runs
    // each: short enough to run under Nsight Compute (`ncu cuda-check prefill`).
    for n in [32usize, 512] {
        for _ in 0..3 {
            b.truncate(0);
            let t = Instant::now();
            b.forward(&prompt[..n], 0, LogitRows::Last, &mut NoTap)?;
            println!("prefill pp{n}: {:.2} ms", t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(())
}

/// Every tensor-core product kernel on the model's four product shapes (Q|K|V, output, gate|up,
/// down; random weights of the layers' type quantized by our quantizer, random activations) at
/// prompt lengths 32 to 512: µs per launch (mean of 50 back to back after a warm-up) and
/// whether each result is bitwise the CPU's, with the kernel `launch_matvec` picks marked.
/// Without `--model`, the default model's shapes (576 wide, K/V 192, FFN 1536) in Q4_1.
fn matvec(m: Option<&Model>) -> Result<()> {
    use worker_orcd::backend::cpu::quant::QMatrix;
    use worker_orcd::backend::cuda::{ops as gops, Gpu, MmaKernel};
    use worker_orcd::gguf::GgmlType;
    let (dim, kv_dim, ffn, ty) = match m {
        Some(m) => (m.config.dim, m.config.kv_dim(), m.config.ffn_dim, m.layers.first().context("a model without layers")?.w_down.ty()),
        None => (576, 192, 1536, GgmlType::Q4_1),
    };
    let gpu = Gpu::open(0)?;
    let kernels = [MmaKernel::Warp(2), MmaKernel::Warp(4), MmaKernel::Warp(8), MmaKernel::Tile(32)];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    println!("\n== tensor-core products, {} weights: µs per launch (* = launch_matvec's pick; every result checked bitwise against the CPU) ==", ty.name());
    println!("| product | n_out x n_in | tokens | {} |", kernels.map(|k| format!("{k:?}")).join(" | "));
    println!("|---|---|---:|{}", "---:|".repeat(kernels.len()));
    let shapes = [("Q|K|V", dim + 2 * kv_dim, dim), ("output", dim, dim), ("gate|up", 2 * ffn, dim), ("down", dim, ffn)];
    for (name, n_out, n_in) in shapes {
        let src: Vec<f32> = (0..n_out * n_in).map(|_| uniform() * 0.05).collect();
        let mut data = vec![0u8; ty.row_bytes(n_in).context("row size")? * n_out];
        worker_orcd::quantize::rows::quantize_rows(ty, &src, &mut data)?;
        let w = QMatrix { ty, data: &data, n_in, n_out };
        for n in [32usize, 64, 128, 256, 512] {
            let x: Vec<f32> = (0..n * n_in).map(|_| uniform()).collect();
            let mut want = vec![0.0; n * n_out];
            worker_orcd::backend::cpu::simd::matmul(&w, &x, n, &mut want);
            let pick = cuda::mma_pick(n, n_out, gpu.sm_count);
            let mut cells = Vec::new();
            for k in kernels {
                gops::matmul_mma(&gpu, &w, &x, n, k, 3)?;
                let (got, us) = gops::matmul_mma(&gpu, &w, &x, n, k, 50)?;
                if bits(&got) != bits(&want) {
                    bail!("{k:?} {name} {n_out}x{n_in} n={n}: differs from the CPU");
                }
                cells.push(format!("{}{us:.1}", if Some(k) == pick { "*" } else { "" }));
            }
            println!("| {name} | {n_out} x {n_in} | {n} | {} |", cells.join(" | "));
        }
    }
    Ok(())
}

/// Where a persistent decode step spends its time: per phase of a layer, the work (last block's
/// arrival at the barrier minus the first block's departure from the previous one) and the
/// barrier (last departure minus last arrival), averaged over layers and 64 steps.
fn profile(m: &Arc<Model>) -> Result<()> {
    use worker_orcd::backend::cuda::decode_flags as f;
    // The default, with the flag-in-data words (and after Q|K|V too), the earlier default 7,
    // none.
    for fl in [f::DEFAULT, f::DEFAULT | f::LL, f::DEFAULT | f::LL | f::LL_QKV, f::STAGE | f::NORM_G8 | f::PRELOAD, 0] {
        profile_flags(m, fl)?;
    }
    Ok(())
}

fn profile_flags(m: &Arc<Model>, fl: u32) -> Result<()> {
    println!("\n== profile: persistent decode step ==");
    let mut b = CudaBackend::new(Arc::clone(m), 2048)?;
    let got = b.set_decode_flags(fl);
    println!("decode flags {got} (asked {fl})");
    if got & worker_orcd::backend::cuda::decode_flags::HEAD_FLAGS != 0 {
        println!("(per-head flags: A's barrier is the attention blocks' wait for their heads' Q|K|V items; the other blocks leave A at once, so B's work starts from their early departure)");
    }
    if got & worker_orcd::backend::cuda::decode_flags::LL != 0 {
        println!("(flag-in-data words: after B, C, D and E a block 'leaves' once it has polled the next phase's inputs into shared memory, at once where it has no item there; 'barrier' is then the last block's wait for its inputs)");
    }
    b.set_persistent_profiling(true)?;
    let n_layers = m.config.n_layers;
    let mut work = [0.0f64; 5];
    let mut wait = [0.0f64; 5];
    // Additive: from the last block's departure from the previous barrier to the last departure
    // from this one (the spans of every barrier plus the time from the last departure to the end
    // sum to the kernel total; work and barrier overlap where blocks leave at different times).
    let mut span = [0.0f64; 5];
    // Inside the product phases (decode.cu's sub-phase stamps of a block's first item): from the
    // block's departure from the previous phase to its input in shared memory, the products,
    // the epilogue, and from there to its arrival; the mean over the blocks with an item, and
    // the block that arrives last (the one the barrier waits for).
    let mut sub_mean = [[0.0f64; 4]; 5];
    let mut sub_n = [0.0f64; 5];
    let mut sub_last = [[0.0f64; 4]; 5];
    let mut sub_last_n = [0.0f64; 5];
    let (mut total, mut norm, mut launch_to_first, mut wall) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let steps = 64;
    let mut logits = b.forward(&[1], 0, LogitRows::Last, &mut NoTap)?;
    for i in 0..steps {
        let t = argmax(&logits);
        let w = Instant::now();
        logits = b.forward(&[t], 1 + i, LogitRows::Last, &mut NoTap)?;
        wall += w.elapsed().as_secs_f64();
        let Some((p, g)) = b.persistent_profile()? else { bail!("the persistent kernel is not in use") };
        let at = |k: usize, blk: usize, w: usize| p[2 * (k * g + blk) + w] as f64;
        let starts = 5 * n_layers;
        let first_start = (0..g).map(|blk| at(starts, blk, 0)).fold(f64::MAX, f64::min);
        let last_start = (0..g).map(|blk| at(starts, blk, 0)).fold(0.0, f64::max);
        launch_to_first += last_start - first_start;
        let mut prev_leave = first_start;
        let mut prev_leave_max = first_start;
        let end = at(starts, 0, 1);
        let sub0 = 2 * (starts + 1) * g;
        let stamp = |k: usize, blk: usize, j: usize| p[sub0 + 4 * (k * g + blk) + j] as f64;
        for k in 0..starts {
            // Sub-phase stamps of this step only (the buffer keeps older ones for blocks with no item).
            let left_before = |blk: usize| if k == 0 { at(starts, blk, 0) } else { at(k - 1, blk, 1) };
            let parts = |blk: usize| -> Option<[f64; 4]> {
                let (s0, s1, s2) = (stamp(k, blk, 0), stamp(k, blk, 1), stamp(k, blk, 2));
                let (l, a) = (left_before(blk), at(k, blk, 0));
                (s0 >= l && s0 <= s1 && s1 <= s2 && s2 <= a && a <= end).then_some([s0 - l, s1 - s0, s2 - s1, a - s2])
            };
            for blk in 0..g {
                if let Some(v) = parts(blk) {
                    for j in 0..4 {
                        sub_mean[k % 5][j] += v[j];
                    }
                    sub_n[k % 5] += 1.0;
                }
            }
            let last_blk = (0..g).max_by(|&x, &y| at(k, x, 0).total_cmp(&at(k, y, 0))).unwrap_or(0);
            if let Some(v) = parts(last_blk) {
                for j in 0..4 {
                    sub_last[k % 5][j] += v[j];
                }
                sub_last_n[k % 5] += 1.0;
            }
            let arrive_max = (0..g).map(|blk| at(k, blk, 0)).fold(0.0, f64::max);
            let leave_max = (0..g).map(|blk| at(k, blk, 1)).fold(0.0, f64::max);
            let leave_min = (0..g).map(|blk| at(k, blk, 1)).fold(f64::MAX, f64::min);
            work[k % 5] += arrive_max - prev_leave;
            wait[k % 5] += leave_max - arrive_max;
            span[k % 5] += leave_max - prev_leave_max;
            prev_leave = leave_min;
            prev_leave_max = leave_max;
        }
        norm += end - prev_leave;
        total += end - first_start;
    }
    let per = |v: f64| v / 1e3 / (steps * n_layers) as f64;
    println!("grid {} blocks; per layer, averaged over {n_layers} layers x {steps} steps (µs):", b.persistent_profile()?.map(|x| x.1).unwrap_or(0));
    println!("| phase | work | barrier | span (additive) |\n|---|---|---|---|");
    for (i, name) in ["A qkv+norm+rope", "B attention", "C wo+add", "D gate_up+norm+swiglu", "E down+add"].iter().enumerate() {
        println!("| {name} | {:.2} | {:.2} | {:.2} |", per(work[i]), per(wait[i]), per(span[i]));
    }
    println!("inside the product phases, per block (µs; mean over the blocks with an item / the block that arrives last, where it has one):");
    println!("| phase | leave to input in shared memory | products | epilogue | epilogue end to arrival |\n|---|---|---|---|---|");
    for (i, name) in ["A qkv+norm+rope", "B attention", "C wo+add", "D gate_up+norm+swiglu", "E down+add"].iter().enumerate() {
        if sub_n[i] == 0.0 {
            continue;
        }
        let cell = |j: usize| {
            let last = if sub_last_n[i] > 0.0 { format!("{:.2}", sub_last[i][j] / sub_last_n[i] / 1e3) } else { "-".into() };
            format!("{:.2} / {last}", sub_mean[i][j] / sub_n[i] / 1e3)
        };
        println!("| {name} | {} | {} | {} | {} |", cell(0), cell(1), cell(2), cell(3));
    }
    println!(
        "block start spread {:.2} µs, final norm {:.2} µs, kernel total {:.1} µs per step; Backend::forward wall {:.1} µs per step",
        launch_to_first / 1e3 / steps as f64,
        norm / 1e3 / steps as f64,
        total / 1e3 / steps as f64,
        wall * 1e6 / steps as f64
    );
    // The same steps without the logits (no output product, no download) and without profiling.
    b.set_persistent_profiling(false)?;
    for rows in [LogitRows::Last, LogitRows::None] {
        b.truncate(0);
        b.forward(&[1], 0, LogitRows::Last, &mut NoTap)?;
        let w = Instant::now();
        for i in 0..steps {
            b.forward(&[(i % 1000) as u32], 1 + i, rows, &mut NoTap)?;
        }
        println!("Backend::forward wall without profiling, logits {rows:?}: {:.1} µs per step", w.elapsed().as_secs_f64() * 1e6 / steps as f64);
    }
    Ok(())
}

fn bench(m: &Arc<Model>) -> Result<()> {
    println!("\n== bench ==");
    let t0 = Instant::now();
    let mut b = CudaBackend::new(Arc::clone(m), 2048)?;
    let load_s = t0.elapsed().as_secs_f64();
    println!("device: {}", b.device());
    println!("backend start (context, kernels {:.2} s compile, weight upload): {load_s:.2} s", b.gpu().compile_seconds);
    let prompt: Vec<u32> = (0..512u32).map(|i| (i * 7919 + 13) % m.config.n_vocab as u32).collect();
    // Rate of the step itself (Backend::forward: upload, kernels, logits download, taps), the
    // figure llama-bench's tg128 measures; the host argmax between steps is excluded here and
    // reported separately (the whole loop) below.
    let loop_rate = std::cell::Cell::new(0.0f64);
    let decode = |b: &mut CudaBackend, tap: &mut dyn Tap, n: usize| -> Result<f64> {
        b.truncate(0);
        let mut logits = b.forward(&prompt[..1], 0, LogitRows::Last, tap)?;
        let t = Instant::now();
        let mut in_forward = 0.0;
        for i in 0..n {
            let tok = argmax(&logits);
            let f = Instant::now();
            logits = b.forward(&[tok], 1 + i, LogitRows::Last, tap)?;
            in_forward += f.elapsed().as_secs_f64();
        }
        loop_rate.set(n as f64 / t.elapsed().as_secs_f64());
        Ok(n as f64 / in_forward)
    };
    // A ring of 16 MiB, written once before timing: the recorder's pool buffers are reused and
    // warm, while a fresh zeroed 256 MiB buffer (as before 2026-12-02) took a page fault on
    // every new page, ~66 per decode step, and billed them to the trace.
    let mut copy = CopyTap { buf: vec![1.0; 4 << 20], used: 0 };
    let mut rows = Vec::new();
    println!("persistent decode kernel: {:?}", b.persistent_status());
    for (label, persistent, graphs) in [
        ("persistent kernel, graph", true, true),
        ("persistent kernel, no graph", true, false),
        ("per-op kernels, graph", false, true),
        ("per-op kernels, no graph", false, false),
    ] {
        if b.set_persistent(persistent) != persistent {
            continue;
        }
        b.set_graphs(graphs);
        decode(&mut b, &mut NoTap, 16)?; // warm-up, graph capture
        decode(&mut b, &mut copy, 16)?;
        let mut loops = Vec::new();
        let off = median(
            (0..5)
                .map(|_| {
                    let r = decode(&mut b, &mut NoTap, 128);
                    loops.push(loop_rate.get());
                    r
                })
                .collect::<Result<Vec<_>>>()?,
        );
        let off_loop = median(loops);
        let on = median((0..5).map(|_| decode(&mut b, &mut copy, 128)).collect::<Result<Vec<_>>>()?);
        rows.push(format!("| decode tg128 ({label}), trace off | {off:.0} tok/s | {:.1} µs/token |", 1e6 / off));
        rows.push(format!("| decode tg128 ({label}), trace off, loop incl. host argmax | {off_loop:.0} tok/s | {:.1} µs/token |", 1e6 / off_loop));
        rows.push(format!("| decode tg128 ({label}), trace summary/full taps | {on:.0} tok/s | {:.1} µs/token |", 1e6 / on));
    }
    b.set_graphs(true);
    b.set_persistent(true);
    // The persistent kernel's optimizations one by one (decode_flags), trace off.
    if b.persistent_status().is_ok() {
        use worker_orcd::backend::cuda::decode_flags as f;
        let s7 = f::STAGE | f::NORM_G8 | f::PRELOAD;
        for fl in [
            0,
            f::STAGE,
            f::NORM_G8,
            f::PRELOAD,
            f::STAGE | f::NORM_G8,
            s7,
            s7 | f::EARLY,
            s7 | f::SPLIT_D,
            f::DEFAULT,
            f::DEFAULT | f::GENERIC,
            f::DEFAULT | f::RELAXED,
            f::DEFAULT | f::LL,
            f::DEFAULT | f::LL | f::RELAXED,
            f::DEFAULT | f::LL | f::HEAD_FLAGS,
            f::DEFAULT | f::LL | f::LL_QKV,
            f::DEFAULT | (1 << f::BACKOFF_SHIFT),
            f::DEFAULT | (2 << f::BACKOFF_SHIFT),
            f::DEFAULT | (4 << f::BACKOFF_SHIFT),
            f::DEFAULT | (8 << f::BACKOFF_SHIFT),
            f::DEFAULT | f::RELAXED | (2 << f::BACKOFF_SHIFT),
            f::DEFAULT | f::LL | (2 << f::BACKOFF_SHIFT),
            f::DEFAULT | f::LL | (8 << f::BACKOFF_SHIFT),
            f::DEFAULT | f::LL | f::LL_QKV | (4 << f::BACKOFF_SHIFT),
            f::ALL & !f::EARLY & !f::BACKOFF,
            f::ALL & !f::BACKOFF,
        ] {
            let got = b.set_decode_flags(fl);
            decode(&mut b, &mut NoTap, 16)?;
            let r = median((0..5).map(|_| decode(&mut b, &mut NoTap, 128)).collect::<Result<Vec<_>>>()?);
            rows.push(format!("| decode tg128 (persistent kernel, graph, decode flags {got}), trace off | {r:.0} tok/s | {:.1} µs/token |", 1e6 / r));
        }
        // Back to the flags in force for the rows below (WORKER_ORCD_CUDA_DECODE_FLAGS or the default).
        b.set_decode_flags(worker_orcd::backend::cuda::options().decode_flags);
    }
    // The engine's step (Backend::forward_pick): forward, then the token choice and the top-5
    // log-probabilities a recording keeps, on the device (280 bytes downloaded) or on the host
    // over the downloaded logits.
    let pick_decode = |b: &mut CudaBackend, params: &SamplingParams, n: usize| -> Result<f64> {
        b.truncate(0);
        let mut history = vec![prompt[0]];
        let mut p = b.forward_pick(&prompt[..1], 0, &mut NoTap, &PickArgs { params, history: &history, coin: draw_bits(1, 0), top_n: 5 })?;
        let t = Instant::now();
        for i in 0..n {
            history.push(p.id);
            p = b.forward_pick(&[p.id], 1 + i, &mut NoTap, &PickArgs { params, history: &history, coin: draw_bits(1, i as u64 + 1), top_n: 5 })?;
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    };
    let sampled = SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.9, min_p: 0.0, repetition_penalty: 1.1 };
    // No top-k: the server's default.
    let no_top_k = SamplingParams { top_k: 0, ..sampled };
    for (what, params) in [
        ("greedy", SamplingParams::greedy()),
        ("sampled t 0.8 top-k 40 top-p 0.9 penalty 1.1", sampled),
        ("sampled t 0.8 top-p 0.9 penalty 1.1, no top-k", no_top_k),
    ] {
        for (place, on) in [("device", true), ("host", false)] {
            b.set_device_pick(on);
            pick_decode(&mut b, &params, 16)?;
            let r = median((0..5).map(|_| pick_decode(&mut b, &params, 128)).collect::<Result<Vec<_>>>()?);
            rows.push(format!(
                "| decode tg128 + token choice and top-5 logprobs on the {place} ({what}), trace off | {r:.0} tok/s | {:.1} µs/token |",
                1e6 / r
            ));
        }
    }
    b.set_device_pick(true);
    // The server bench's shape (xtask/python/server_bench.py): 256 tokens after a 24-token
    // prompt, so that attention spans the same positions as its requests.
    let long_decode = |b: &mut CudaBackend, n_prompt: usize, n: usize| -> Result<f64> {
        b.truncate(0);
        let params = SamplingParams::greedy();
        let mut history = prompt[..n_prompt].to_vec();
        let mut p = b.forward_pick(&prompt[..n_prompt], 0, &mut NoTap, &PickArgs { params: &params, history: &history, coin: 0, top_n: 5 })?;
        let t = Instant::now();
        for i in 0..n {
            history.push(p.id);
            p = b.forward_pick(&[p.id], n_prompt + i, &mut NoTap, &PickArgs { params: &params, history: &history, coin: 0, top_n: 5 })?;
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    };
    long_decode(&mut b, 24, 32)?;
    let r = median((0..5).map(|_| long_decode(&mut b, 24, 255)).collect::<Result<Vec<_>>>()?);
    rows.push(format!("| decode 255 tokens after a 24-token prompt + choice on the device (greedy, top 5; the server bench's shape), trace off | {r:.0} tok/s | {:.1} µs/token |", 1e6 / r));
    for n in [128usize, 512] {
        let mut times = Vec::new();
        for _ in 0..6 {
            b.truncate(0);
            let t = Instant::now();
            b.forward(&prompt[..n], 0, LogitRows::Last, &mut NoTap)?;
            times.push(t.elapsed().as_secs_f64());
        }
        let tt = median(times[1..].to_vec());
        rows.push(format!("| prefill pp{n}, trace off | {:.0} tok/s | {:.2} ms |", n as f64 / tt, tt * 1e3));
        let mut times = Vec::new();
        for _ in 0..6 {
            b.truncate(0);
            let t = Instant::now();
            b.forward(&prompt[..n], 0, LogitRows::Last, &mut copy)?;
            times.push(t.elapsed().as_secs_f64());
        }
        let tt = median(times[1..].to_vec());
        rows.push(format!("| prefill pp{n}, trace taps | {:.0} tok/s | {:.2} ms |", n as f64 / tt, tt * 1e3));
    }
    // Time to first token: a 32-token prompt, prefill + argmax, warm backend; with graphs (a
    // captured graph from the second run) and without (what a length met once costs).
    let ttft_of = |b: &mut CudaBackend, graphs: bool| -> Result<f64> {
        b.set_graphs(graphs);
        let mut times = Vec::new();
        for _ in 0..11 {
            b.truncate(0);
            let t = Instant::now();
            let l = b.forward(&prompt[..32], 0, LogitRows::Last, &mut NoTap)?;
            let _tok = argmax(&l);
            times.push(t.elapsed().as_secs_f64());
        }
        b.set_graphs(true);
        Ok(median(times))
    };
    let ttft = ttft_of(&mut b, true)?;
    let ttft_once = ttft_of(&mut b, false)?;
    rows.push(format!("| time to first token, 32-token prompt (warm: from the second run, a captured graph) | {:.2} ms | |", ttft * 1e3));
    rows.push(format!("| time to first token, 32-token prompt, kernel by kernel (a length met once) | {:.2} ms | |", ttft_once * 1e3));
    rows.push(format!("| time to first token incl. backend start | {:.2} s | |", load_s + ttft));
    rows.push(format!("| device memory allocated by the backend (n_ctx 2048) | {:.1} MiB | |", b.device_bytes() as f64 / (1u64 << 20) as f64));
    rows.push(format!("| device memory in use on the card (cuMemGetInfo) | {:.1} MiB | |", b.gpu().device_used_bytes() as f64 / (1u64 << 20) as f64));
    println!("| what | rate | per unit |\n|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
