//! The replay command line, shared by `worker-orcd replay` / `worker-orcd explain` (the release
//! binary, so a GPU runner or a production host with only the binary can replay a recording)
//! and `cargo xtask replay` (the developer's entry point): finds cases, runs them one by one
//! with a progress line each, prints the final table and writes the JSON, JUnit and HTML
//! reports and the per-case SVG error curves. Every verdict comes from the library
//! ([`super::llama`], [`super::worker`]); this file only resolves flags and renders.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{html, BackendChoice, CaseReport, Mode};

#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    /// Recordings (`*.wrec`, `*.safetensors.zst`) or directories (default: ./recordings).
    pub paths: Vec<PathBuf>,
    /// Backend to replay on: auto (CUDA where it starts, else CPU), cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Write a JSON report here (an SVG error curve per case goes beside it).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write a JUnit XML report here.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Write a self-contained HTML report here: the verdict table, and for each failing case
    /// its first divergence and per-layer error curve.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Print what each recording holds, without running anything.
    #[arg(long)]
    pub explain: bool,
    /// Only cases whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// Compare two worker recordings of the same request without re-executing.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub diff: Option<Vec<PathBuf>>,
    /// CPU threads (0 = all cores). Results are identical for any value.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Model file or named model for every case (default: each llama.cpp recording's own model,
    /// found by its sha256 among the named models; the default model for worker recordings).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ExplainArgs {
    /// Recordings to describe.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

enum Case {
    Llama(PathBuf),
    Worker(PathBuf),
}

impl Case {
    fn path(&self) -> &Path {
        match self {
            Case::Llama(p) | Case::Worker(p) => p,
        }
    }
    fn name(&self) -> String {
        let n = self.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        n.trim_end_matches(".safetensors.zst").trim_end_matches(".partial").trim_end_matches(".wrec").to_string()
    }
}

fn collect(path: &Path, out: &mut Vec<Case>) -> Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for e in entries {
            let n = e.to_string_lossy();
            if e.is_dir() || n.ends_with(".safetensors.zst") || n.ends_with(".wrec") || n.ends_with(".wrec.partial") {
                collect(&e, out)?;
            }
        }
        return Ok(());
    }
    let n = path.to_string_lossy();
    if n.ends_with(".safetensors.zst") {
        out.push(Case::Llama(path.to_path_buf()));
    } else if n.ends_with(".wrec") || n.ends_with(".wrec.partial") {
        out.push(Case::Worker(path.to_path_buf()));
    } else if path.exists() {
        out.push(Case::Worker(path.to_path_buf())); // let the reader say what it is
    } else {
        bail!("{}: no such file or directory", path.display());
    }
    Ok(())
}

/// A model, its tokenizer, its file's sha256 and an engine on the chosen backend.
struct Loaded {
    path: PathBuf,
    model: Arc<crate::model::Model>,
    tok: Arc<crate::tokenizer::Tokenizer>,
    sha: String,
    engine: crate::engine::Engine,
}

impl Loaded {
    fn open(path: &Path, choice: BackendChoice, threads: usize) -> Result<Loaded> {
        let model = Arc::new(crate::model::Model::open(path).with_context(|| format!("loading {}", path.display()))?);
        let tok = Arc::new(crate::tokenizer::Tokenizer::from_gguf(&model.file).context("tokenizer")?);
        let sha = crate::fetch::sha256_file(path)?;
        // One KV cache big enough for the longest case (prompt + 64 greedy tokens; worker
        // requests up to their max_tokens), reused across cases.
        let n_ctx = 2048.min(model.config.n_ctx_train);
        let backend = super::open_backend(choice, Arc::clone(&model), n_ctx, threads).map_err(|e| anyhow::anyhow!("{e}"))?;
        let engine = crate::engine::Engine::new(backend, Arc::clone(&tok));
        Ok(Loaded { path: path.to_path_buf(), model, tok, sha, engine })
    }
}

/// `explain`: what each recording holds, without running anything.
pub fn explain(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        if p.to_string_lossy().ends_with(".safetensors.zst") {
            let r = crate::reference::ReferenceRecording::open(p).with_context(|| format!("opening {}", p.display()))?;
            let c = &r.case;
            println!("{}: llama.cpp reference recording ({:?}), llama.cpp {}, model sha256 {}", p.display(), c.kind, c.llama_cpp_version, c.model_sha256);
            println!("prompt ({} tokens, parse_special {}): {:?}", c.prompt_ids.len(), c.parse_special, c.prompt_text);
            println!("greedy ({}): {:?}", c.greedy_ids.len(), c.greedy_ids);
            println!("rows at {:?}; logits rows at {:?}; op layers {:?}; {} tensors", c.row_pos, c.logits_row_pos, c.op_layers, r.names().count());
        } else {
            print!("{}", super::worker::explain(p)?);
        }
    }
    Ok(())
}

/// Runs a replay; `Ok(true)` when every case passed. `default_root` is where the corpus lives
/// when no path is given (the checkout's `recordings/` for `cargo xtask replay`).
pub fn run(args: &ReplayArgs, default_root: Option<&Path>) -> Result<bool> {
    let choice: BackendChoice = args.backend.parse().map_err(anyhow::Error::msg).context("--backend")?;
    if args.explain {
        explain(&args.paths)?;
        return Ok(true);
    }
    if let Some(d) = &args.diff {
        let r = super::worker::diff(&d[0], &d[1])?;
        return finish(args, vec![r], 0.0);
    }
    let mut cases = Vec::new();
    if args.paths.is_empty() {
        let root = default_root.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("recordings"));
        if !root.is_dir() {
            bail!("no recordings given, and no {} directory here", root.display());
        }
        collect(&root, &mut cases)?;
    }
    for p in &args.paths {
        collect(p, &mut cases)?;
    }
    if let Some(f) = &args.filter {
        cases.retain(|c| c.name().contains(f.as_str()));
    }
    if cases.is_empty() {
        bail!("no recordings to replay (looked for *.safetensors.zst and *.wrec)");
    }

    // The model: `--model` (a file or a named model) for every case, a llama.cpp recording made
    // with another file refused with one line; else each llama.cpp recording's own, found by
    // the sha256 it carries among the named models, and the default model for worker
    // recordings (whose replay checks the sha256 they carry).
    let fixed = match &args.model {
        Some(p) => Some(crate::fetch::model_arg(p).with_context(|| format!("--model {}", p.display()))?),
        None => None,
    };
    let default_path = match &fixed {
        Some(p) => p.clone(),
        None => crate::fetch::default_model_path().context("default model (cargo xtask fetch-model)")?,
    };
    let mut cur = Loaded::open(&default_path, choice, args.threads)?;
    let fixed_sha = fixed.as_ref().map(|_| cur.sha.clone());
    eprintln!("replaying {} cases on {} ({}), model {}", cases.len(), cur.engine.backend().kind(), cur.engine.backend().device(), cur.model.name);

    let t0 = Instant::now();
    let mut reports = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let r = match case {
            Case::Llama(p) => crate::reference::ReferenceRecording::open(p).map_err(|e| e.to_string()).and_then(|rec| {
                let want = rec.case.model_sha256.clone();
                if let Some(sha) = &fixed_sha {
                    if *sha != want {
                        let named = crate::fetch::named_by_sha256(&want).map_or(String::new(), |m| format!(" ({})", m.name));
                        return Err(format!("recorded with model sha256 {want}{named}, but --model has sha256 {sha}: replay refuses a different file"));
                    }
                } else if cur.sha != want {
                    let m = crate::fetch::named_by_sha256(&want)
                        .ok_or_else(|| format!("recorded with model sha256 {want}, which is no named model's: pass --model"))?;
                    let path = crate::fetch::fetch_named(&m.name).map_err(|e| e.to_string())?;
                    cur = Loaded::open(&path, choice, args.threads).map_err(|e| format!("{e:#}"))?;
                    eprintln!("model {} for {}", cur.model.name, case.name());
                }
                super::llama::replay_case(&cur.model, cur.engine.backend_mut(), &rec, Some(&cur.tok)).map_err(|e| e.to_string())
            }),
            Case::Worker(p) => (|| {
                if fixed_sha.is_none() && cur.path != default_path {
                    cur = Loaded::open(&default_path, choice, args.threads).map_err(|e| format!("{e:#}"))?;
                }
                let here = super::backend::fingerprint_of(&cur.model, &cur.sha, cur.engine.backend(), args.threads);
                super::worker::replay(p, &mut cur.engine, &here).map_err(|e| e.to_string())
            })(),
        };
        let r = r.unwrap_or_else(|e| {
            let mut r = CaseReport::new(&case.name(), Mode::Worker, &case.path().display().to_string(), cur.engine.backend().kind(), &cur.model.name);
            r.check("replay runs", false, e);
            r
        });
        let tail = if r.passed { String::new() } else { format!(" — first divergence: {}", r.divergence_line()) };
        eprintln!("[{}/{}] {} {} {:.1}s{tail}", i + 1, cases.len(), r.name, r.verdict(), r.seconds);
        reports.push(r);
    }
    finish(args, reports, t0.elapsed().as_secs_f64())
}

fn finish(args: &ReplayArgs, reports: Vec<CaseReport>, seconds: f64) -> Result<bool> {
    let tokens: usize = reports.iter().map(|r| r.tokens_replayed).sum();
    print_table(&reports);
    let tps = if seconds > 0.0 { tokens as f64 / seconds } else { 0.0 };
    let passed = reports.iter().filter(|r| r.passed).count();
    println!("{passed}/{} passed in {seconds:.1}s, {tokens} positions replayed ({tps:.0} tokens/s)", reports.len());
    for r in reports.iter().filter(|r| !r.passed) {
        println!("\n{} FAILED", r.name);
        for c in r.checks.iter().filter(|c| !c.passed) {
            println!("  check failed: {} {}", c.name, c.detail);
        }
        println!("  first divergence: {}", r.divergence_line());
        if let Some(w) = &r.worst_layer {
            println!("  worst layer: {} (NMSE {:.3e})", w.label, w.worst_nmse.unwrap_or(f64::NAN));
        }
        for n in &r.notes {
            println!("  note: {n}");
        }
    }
    if let Some(path) = &args.report {
        let doc = serde_json::json!({ "seconds": seconds, "tokens_replayed": tokens, "tokens_per_second": tps, "passed": passed, "cases": reports });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        for r in &reports {
            let svg = dir.join(format!("{}.svg", html::sanitize(&r.name)));
            std::fs::write(&svg, html::curve_svg_document(r)).with_context(|| format!("writing {}", svg.display()))?;
        }
        eprintln!("wrote {} and {} plots beside it", path.display(), reports.len());
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, junit(&reports, seconds)).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html::page(&reports, seconds, "worker-orcd replay")).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(passed == reports.len())
}

fn print_table(reports: &[CaseReport]) {
    println!("{:<28} {:<9} {:<10} {:>7} {:>7} {:<18} first divergence", "case", "mode", "verdict", "tokens", "secs", "worst layer");
    for r in reports {
        let worst = r.worst_layer.as_ref().map(|w| format!("{} {:.0e}", w.label, w.worst_nmse.unwrap_or(f64::NAN))).unwrap_or_default();
        let div = if r.first_divergence.is_some() { r.divergence_line() } else { "-".into() };
        println!("{:<28} {:<9} {:<10} {:>7} {:>7.1} {:<18} {}", r.name, html::mode_name(r.mode), r.verdict(), r.tokens_replayed, r.seconds, worst, div);
    }
}

/// The JUnit XML report: one testcase per replayed case.
pub fn junit(reports: &[CaseReport], seconds: f64) -> String {
    let xml = html::escape;
    let failures = reports.iter().filter(|r| !r.passed).count();
    let mut s = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites tests=\"{}\" failures=\"{failures}\" time=\"{seconds:.3}\">\n<testsuite name=\"replay\" tests=\"{}\" failures=\"{failures}\" time=\"{seconds:.3}\">\n", reports.len(), reports.len());
    for r in reports {
        let class = format!("replay.{}", serde_json::to_value(r.mode).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default());
        s += &format!("  <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\">", xml(&r.name), xml(&class), r.seconds);
        if !r.passed {
            let details: Vec<String> =
                r.checks.iter().filter(|c| !c.passed).map(|c| format!("{}: {}", c.name, c.detail)).chain(r.notes.iter().cloned()).collect();
            s += &format!("\n    <failure message=\"first divergence: {}\">{}</failure>\n  ", xml(&r.divergence_line()), xml(&details.join("\n")));
        }
        s += "</testcase>\n";
    }
    s + "</testsuite>\n</testsuites>\n"
}
