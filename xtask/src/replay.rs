//! `cargo xtask replay` and `cargo xtask record-llama`. Replay is the library's command line
//! (`worker_orcd::replay::cli`, the same code as `worker-orcd replay` in the release binary),
//! run on the checkout's `recordings/` by default; record-llama drives llama.cpp's Python
//! bindings to regenerate the reference recordings.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use worker_orcd::replay::cli::{self, ReplayArgs};

#[derive(Parser, Debug)]
#[command(name = "cargo xtask replay", about = "Replay recordings and name the first divergence")]
struct Args {
    #[command(flatten)]
    replay: ReplayArgs,
}

/// Runs `cargo xtask replay ...`; true when every case passed.
pub fn replay(argv: &[String]) -> Result<bool> {
    let args = Args::parse_from(argv);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").join("recordings");
    cli::run(&args.replay, Some(&root))
}

/// `cargo xtask record-llama [--token] [--model NAME|PATH] [args for the script]`: regenerates
/// the llama.cpp reference recordings of a model (never run in CI; needs `llama-cpp-python`, see
/// recordings/llama.cpp/README.md). The default model's live in `recordings/llama.cpp/`, another
/// named model's in `recordings/llama.cpp/<name>/`, each directory with its `cases.json`; the
/// token-by-token ones in `token/` below.
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
    // `--token`: one token per llama_decode (the exact references under <dir>/token).
    let token = rest.iter().any(|a| a == "--token");
    let mut name: Option<String> = None;
    let mut passed: Vec<&String> = Vec::new();
    let mut it = rest.iter().filter(|a| *a != "--token");
    while let Some(a) = it.next() {
        if a == "--model" {
            name = Some(it.next().context("--model needs a model name or a GGUF path")?.clone());
        } else {
            passed.push(a);
        }
    }
    let (model, dir) = match name.as_deref() {
        None | Some("smollm2") => (worker_orcd::fetch::default_model_path()?, root.join("recordings/llama.cpp")),
        Some(n) if Path::new(n).is_file() => {
            let sha = worker_orcd::fetch::sha256_file(Path::new(n))?;
            let named = worker_orcd::fetch::named_models().into_iter().find(|m| m.sha256 == sha);
            let named = named.with_context(|| format!("--model {n}: sha256 {sha} is no named model's; recordings are kept per named model"))?;
            (PathBuf::from(n), root.join("recordings/llama.cpp").join(named.name))
        }
        Some(n) => (worker_orcd::fetch::fetch_named(n)?, root.join("recordings/llama.cpp").join(n)),
    };
    let cases = dir.join("cases.json");
    if !cases.is_file() {
        bail!("{}: no cases for this model (write one like recordings/llama.cpp/cases.json)", cases.display());
    }
    let (script, out) = if token { ("xtask/python/record_llama_token.py", dir.join("token")) } else { ("xtask/python/record_llama.py", dir) };
    let status = std::process::Command::new("python3")
        .arg(root.join(script))
        .arg("--model")
        .arg(&model)
        .arg("--cases")
        .arg(&cases)
        .arg("--out")
        .arg(out)
        .args(passed)
        .status()
        .with_context(|| format!("running {script}"))?;
    if !status.success() {
        bail!("{script} failed ({status})");
    }
    Ok(())
}
