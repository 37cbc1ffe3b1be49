//! `cargo xtask fuzz TARGET [--seconds N] [--runs N]`: runs one coverage-guided fuzz target
//! (cargo-fuzz with libFuzzer, on the nightly toolchain) for a set time, starting from the
//! committed seeds (`fuzz/seeds/TARGET/`), growing a corpus in `target/fuzz-corpus/TARGET/`.
//! Crashes land in `fuzz/artifacts/TARGET/`; copy each into `fuzz/regressions/TARGET/` and
//! `tests/it/fuzz_seeds.rs` runs it on every `cargo test`.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

pub const TARGETS: &[&str] = &["gguf", "recording", "http_request", "chat_template"];

pub fn fuzz(args: &[String]) -> anyhow::Result<()> {
    let Some(target) = args.first().filter(|t| TARGETS.contains(&t.as_str())) else {
        bail!("usage: cargo xtask fuzz <{}> [--seconds N] [--runs N]", TARGETS.join("|"));
    };
    let mut seconds = 60u64;
    let mut runs: Option<u64> = None;
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let v = || it.clone().next().cloned().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--seconds" => seconds = v()?.parse().with_context(|| "--seconds: not a number")?,
            "--runs" => runs = Some(v()?.parse().with_context(|| "--runs: not a number")?),
            other => bail!("unknown argument {other}"),
        }
        it.next();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask has a parent directory")?;
    let ok = Command::new("cargo").args(["+nightly", "fuzz", "--version"]).current_dir(root).output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        bail!("cargo-fuzz on the nightly toolchain is needed: rustup toolchain install nightly && cargo install cargo-fuzz");
    }
    let corpus = root.join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    let seeds = root.join("fuzz/seeds").join(target);
    let mut cmd = Command::new("cargo");
    // -s none: no AddressSanitizer (safe Rust: panics, aborts, timeouts and memory blow-ups
    // are what can go wrong, and libFuzzer catches all of them); several times the executions.
    cmd.args(["+nightly", "fuzz", "run", "--fuzz-dir", "fuzz", "-O", "-s", "none", target])
        .arg(&corpus)
        .arg(&seeds)
        .args(["--", &format!("-max_total_time={seconds}"), "-timeout=10", "-rss_limit_mb=2048", "-max_len=65536", "-print_final_stats=1"])
        .current_dir(root);
    if let Some(r) = runs {
        cmd.arg(format!("-runs={r}"));
    }
    let status = cmd.status().context("running cargo fuzz")?;
    let artifacts = root.join("fuzz/artifacts").join(target);
    let crashes: Vec<String> =
        std::fs::read_dir(&artifacts).map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    if !crashes.is_empty() {
        eprintln!("{} inputs in {}: copy each into fuzz/regressions/{target}/ (a regression test) and fix it", crashes.len(), artifacts.display());
    }
    if !status.success() {
        bail!("fuzz target {target} failed");
    }
    Ok(())
}
