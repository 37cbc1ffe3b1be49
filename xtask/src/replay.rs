//! `cargo xtask replay` and `cargo xtask record-llama`: the command-line side of
//! `worker_orcd::replay`. Finds cases, runs them with a progress bar (plain lines when not on a
//! terminal), prints a final table and writes JSON, JUnit and per-case SVG error curves. It
//! compares nothing itself: every verdict comes from the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use worker_orcd::replay::{self, BackendChoice, CaseReport};

#[derive(Parser, Debug)]
#[command(name = "cargo xtask replay", about = "Replay recordings and name the first divergence")]
struct Args {
    /// Recordings (`*.wrec`, `*.safetensors.zst`) or directories; default: the corpus under recordings/.
    paths: Vec<PathBuf>,
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Write a JSON report here (SVG error curves go beside it).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write a JUnit XML report here.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Print what each recording holds, without running anything.
    #[arg(long)]
    explain: bool,
    /// Only cases whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Compare two worker recordings of the same request without re-executing.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    diff: Option<Vec<PathBuf>>,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Model file (default: the fetched default model, or $WORKER_ORCD_MODEL).
    #[arg(long)]
    model: Option<PathBuf>,
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
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
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

/// Runs `cargo xtask replay ...`; true when every case passed.
pub fn replay(argv: &[String]) -> Result<bool> {
    let args = Args::parse_from(argv);
    let choice: BackendChoice = args.backend.parse().map_err(anyhow::Error::msg).context("--backend")?;
    if args.explain {
        for p in &args.paths {
            if p.to_string_lossy().ends_with(".safetensors.zst") {
                let r = worker_orcd::reference::ReferenceRecording::open(p).with_context(|| format!("opening {}", p.display()))?;
                let c = &r.case;
                println!("{}: llama.cpp reference recording ({:?}), llama.cpp {}, model sha256 {}", p.display(), c.kind, c.llama_cpp_version, c.model_sha256);
                println!("prompt ({} tokens, parse_special {}): {:?}", c.prompt_ids.len(), c.parse_special, c.prompt_text);
                println!("greedy ({}): {:?}", c.greedy_ids.len(), c.greedy_ids);
                println!("rows at {:?}; logits rows at {:?}; op layers {:?}; {} tensors", c.row_pos, c.logits_row_pos, c.op_layers, r.names().count());
            } else {
                print!("{}", replay::worker::explain(p)?);
            }
        }
        return Ok(true);
    }
    if let Some(d) = &args.diff {
        let r = replay::worker::diff(&d[0], &d[1])?;
        return finish(&args, vec![r], 0.0);
    }
    let mut cases = Vec::new();
    if args.paths.is_empty() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").join("recordings");
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

    let model_path = match &args.model {
        Some(p) => p.clone(),
        None => worker_orcd::fetch::default_model_path().context("default model (cargo xtask fetch-model)")?,
    };
    let model = Arc::new(worker_orcd::model::Model::open(&model_path).with_context(|| format!("loading {}", model_path.display()))?);
    let tok = Arc::new(worker_orcd::tokenizer::Tokenizer::from_gguf(&model.file).context("tokenizer")?);
    let sha = worker_orcd::fetch::sha256_file(&model_path)?;
    // One KV cache big enough for the longest case (prompt + 64 greedy tokens; worker requests
    // up to their max_tokens), reused across cases.
    let n_ctx = 2048.min(model.config.n_ctx_train);
    let backend = replay::open_backend(choice, Arc::clone(&model), n_ctx, args.threads).map_err(|e| anyhow::anyhow!("{e}"))?;
    let here = replay::backend::fingerprint_of(&model, &sha, backend.as_ref(), args.threads);
    eprintln!("replaying {} cases on {} ({}), model {}", cases.len(), backend.kind(), backend.device(), model.name);
    let mut engine = worker_orcd::engine::Engine::new(backend, Arc::clone(&tok));

    let t0 = Instant::now();
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(cases.len() as u64);
        b.set_style(indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}").expect("valid template"));
        b
    });
    let mut reports = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        if let Some(b) = &bar {
            b.set_message(case.name());
        }
        let r = match case {
            Case::Llama(p) => worker_orcd::reference::ReferenceRecording::open(p)
                .map_err(|e| e.to_string())
                .and_then(|rec| replay::llama::replay_case(&model, engine.backend_mut(), &rec, Some(&tok)).map_err(|e| e.to_string())),
            Case::Worker(p) => replay::worker::replay(p, &mut engine, &here).map_err(|e| e.to_string()),
        };
        let r = r.unwrap_or_else(|e| {
            let mut r = CaseReport::new(&case.name(), replay::Mode::Worker, &case.path().display().to_string(), engine.backend().kind(), &model.name);
            r.check("replay runs", false, e);
            r
        });
        let line = format!("[{}/{}] {} {} {:.1}s{}", i + 1, cases.len(), r.name, r.verdict(), r.seconds, if r.passed { String::new() } else { format!(" — first divergence: {}", r.divergence_line()) });
        match &bar {
            Some(b) => {
                b.println(line);
                b.inc(1);
            }
            None => eprintln!("{line}"),
        }
        reports.push(r);
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    finish(&args, reports, t0.elapsed().as_secs_f64())
}

fn finish(args: &Args, reports: Vec<CaseReport>, seconds: f64) -> Result<bool> {
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
            let svg = dir.join(format!("{}.svg", sanitize(&r.name)));
            plot(r, &svg).with_context(|| format!("plotting {}", svg.display()))?;
        }
        eprintln!("wrote {} and {} plots beside it", path.display(), reports.len());
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, junit(&reports, seconds)).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(passed == reports.len())
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' }).collect()
}

fn print_table(reports: &[CaseReport]) {
    println!("{:<28} {:<9} {:<7} {:>7} {:>7} {:<18} first divergence", "case", "mode", "verdict", "tokens", "secs", "worst layer");
    for r in reports {
        let worst = r.worst_layer.as_ref().map(|w| format!("{} {:.0e}", w.label, w.worst_nmse.unwrap_or(f64::NAN))).unwrap_or_default();
        let mode = match r.mode {
            replay::Mode::LlamaCpp => "llama.cpp",
            replay::Mode::Worker => "worker",
            replay::Mode::Diff => "diff",
        };
        let div = if r.first_divergence.is_some() { r.divergence_line() } else { "-".into() };
        println!("{:<28} {:<9} {:<7} {:>7} {:>7.1} {:<18} {}", r.name, mode, r.verdict(), r.tokens_replayed, r.seconds, worst, div);
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn junit(reports: &[CaseReport], seconds: f64) -> String {
    let failures = reports.iter().filter(|r| !r.passed).count();
    let mut s = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites tests=\"{}\" failures=\"{failures}\" time=\"{seconds:.3}\">\n<testsuite name=\"replay\" tests=\"{}\" failures=\"{failures}\" time=\"{seconds:.3}\">\n", reports.len(), reports.len());
    for r in reports {
        let class = format!("replay.{}", serde_json::to_value(r.mode).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default());
        s += &format!("  <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\">", xml(&r.name), xml(&class), r.seconds);
        if !r.passed {
            let details: Vec<String> = r.checks.iter().filter(|c| !c.passed).map(|c| format!("{}: {}", c.name, c.detail)).chain(r.notes.iter().cloned()).collect();
            s += &format!("\n    <failure message=\"first divergence: {}\">{}</failure>\n  ", xml(&r.divergence_line()), xml(&details.join("\n")));
        }
        s += "</testcase>\n";
    }
    s + "</testsuite>\n</testsuites>\n"
}

/// The per-layer error curve (log10 NMSE per site, and the bound) as an SVG.
fn plot(r: &CaseReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let pts: Vec<(i32, f64)> = r.curve.iter().enumerate().filter_map(|(i, p)| p.worst_nmse.map(|e| (i as i32, e.max(1e-20).log10()))).collect();
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (lo, hi) = pts.iter().fold((-12.0f64, 0.0f64), |(lo, hi), p| (lo.min(p.1.floor()), hi.max(p.1.ceil())));
    let n = r.curve.len().max(2) as i32;
    let labels: Vec<String> = r.curve.iter().map(|p| p.label.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{}: worst per-position NMSE by site ({})", r.name, r.verdict()), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(50)
        .y_label_area_size(50)
        .build_cartesian_2d(0..n - 1, lo..hi.max(lo + 1.0))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_labels(16)
        .x_label_formatter(&|i| labels.get(*i as usize).cloned().unwrap_or_default())
        .y_desc("log10 NMSE")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart.draw_series(LineSeries::new(pts.clone(), &BLUE)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let bound: Vec<(i32, f64)> = r.curve.iter().enumerate().filter(|(_, p)| p.bound > 0.0).map(|(i, p)| (i as i32, p.bound.log10())).collect();
    chart.draw_series(LineSeries::new(bound, &RED)).map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// `cargo xtask record-llama`: regenerates `recordings/llama.cpp/` with llama.cpp (never run in
/// CI; needs `llama-cpp-python`, see recordings/llama.cpp/README.md).
pub fn record_llama(rest: &[String]) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let probe = std::process::Command::new("python3").args(["-c", "import llama_cpp, numpy, zstandard, xxhash"]).output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => bail!(
            "llama_cpp is not importable by python3 ({}): install it with CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install llama-cpp-python==0.3.36 numpy zstandard jinja2 xxhash",
            String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").trim()
        ),
        Err(e) => bail!("python3 not found ({e}); record-llama needs python3 with llama-cpp-python"),
    }
    let model = worker_orcd::fetch::default_model_path()?;
    // `--token`: one token per llama_decode (the exact references under recordings/llama.cpp/token).
    let token = rest.iter().any(|a| a == "--token");
    let rest: Vec<&String> = rest.iter().filter(|a| *a != "--token").collect();
    let (script, out) = if token {
        ("xtask/python/record_llama_token.py", root.join("recordings/llama.cpp/token"))
    } else {
        ("xtask/python/record_llama.py", root.join("recordings/llama.cpp"))
    };
    let status = std::process::Command::new("python3")
        .arg(root.join(script))
        .arg("--model")
        .arg(&model)
        .arg("--cases")
        .arg(root.join("recordings/llama.cpp/cases.json"))
        .arg("--out")
        .arg(out)
        .args(rest)
        .status()
        .with_context(|| format!("running {script}"))?;
    if !status.success() {
        bail!("{script} failed ({status})");
    }
    Ok(())
}
