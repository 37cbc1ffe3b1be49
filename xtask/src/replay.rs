//! `cargo xtask replay` and `cargo xtask record-llama`. Replay is the library's command line
//! (`worker_orcd::replay::cli`, the same code as `worker-orcd replay` in the release binary),
//! run on the checkout's `recordings/` by default; record-llama drives llama.cpp's Python
//! bindings to regenerate the reference recordings.

use std::path::Path;

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
