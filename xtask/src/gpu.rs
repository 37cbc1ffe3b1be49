//! `cargo xtask gpu-bundle`: builds everything a GPU machine without Rust needs to run the CUDA
//! backend's tests, parity checks and benchmark, into one folder with a `run.sh`.
//!
//! The folder holds the stripped release binaries (`worker-orcd`, which also replays, and
//! `cuda-check`), the integration test binaries (`it`, whose `cuda::` tests are the per-op
//! parity tests, and `corpus`, the replay corpus case by case; built at the test profile, which
//! is optimized), and optionally the
//! reference corpus and the model split into parts small enough to carry. It builds; it runs
//! nothing on a GPU.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: cargo xtask gpu-bundle [--out DIR] [--model PATH.gguf] [--with-corpus]";

/// Bytes per model part (the device tool carries at most 64 MiB per call, the tree included).
const PART_BYTES: usize = 30 << 20;

const RUN_SH: &str = r#"#!/usr/bin/env bash
# Runs the CUDA backend's checks on a GPU machine from this folder (no Rust needed):
# per-op parity tests, the tiny- and real-model tests, every replay corpus case on CUDA (the
# llama.cpp batch and token-by-token recordings, the worker recordings), parity with the CPU
# backend, determinism, chunking, the benchmark and profile, and the server on the GPU (two
# identical requests, recorded, then the recordings replayed on the GPU and on the CPU), and the
# server's decode rate per trace level (xtask/python/server_bench.py).
# usage: run.sh MODEL.gguf [CORPUS_DIR] [OUT_DIR]   (MODEL may be a folder of parts to join)
# Run it from the root of a checkout (the corpus, the snapshots).
# The server's recordings are copied to OUT_DIR (default: $OUT when set).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
model=${1:?usage: run.sh MODEL.gguf|PARTS_DIR [CORPUS_DIR] [OUT_DIR]}
if [ -d "$model" ]; then
  name=$(cat "$model/name")
  cat "$model"/part-* > "/tmp/$name"
  echo "$(cat "$model/sha256")  /tmp/$name" | sha256sum -c
  model=/tmp/$name
fi
corpus=${2:-$here/recordings/llama.cpp}
[ -d "$corpus" ] || corpus=recordings/llama.cpp
out=${3:-${OUT:-}}
export WORKER_ORCD_MODEL="$model"
export WORKER_ORCD_KERNEL_CACHE=${WORKER_ORCD_KERNEL_CACHE:-/tmp/worker-orcd-kernels}
# A GPU is expected here: a missing driver, library or device fails the GPU tests.
export WORKER_ORCD_EXPECT_GPU=1
# Every step runs (so one failure does not hide the others); the script fails if any did.
failed=()
step() { "$@" || failed+=("$*"); }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
step "$here/it" cuda:: --include-ignored --test-threads=1 --nocapture
# Every corpus case on the CUDA backend (the same library code as cargo xtask replay).
WORKER_ORCD_ROOT=$PWD WORKER_ORCD_REPLAY_BACKEND=cuda step "$here/corpus" --test-threads=1
step "$here/cuda-check" all --model "$model" --corpus "$corpus" --runs 20
step "$here/cuda-check" profile --model "$model"
# The server on the GPU: two identical greedy requests must give the same text; both recordings
# then replay bit-identically on the GPU and on the CPU backend.
rec=$(mktemp -d)
"$here/worker-orcd" serve --backend cuda --model "$model" --addr 127.0.0.1:18080 --record-dir "$rec" --trace summary &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/health >/dev/null && break; sleep 0.1; done
curl -sf http://127.0.0.1:18080/health; echo
body='{"messages":[{"role":"user","content":"Write a haiku about the sea."}],"max_tokens":48,"temperature":0}'
a=$(curl -sf http://127.0.0.1:18080/v1/chat/completions -H 'content-type: application/json' -d "$body")
b=$(curl -sf http://127.0.0.1:18080/v1/chat/completions -H 'content-type: application/json' -d "$body")
echo "$a"
[ "$(echo "$a" | python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])')" = \
  "$(echo "$b" | python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])')" ] \
  && echo "server on the GPU: two identical requests gave identical text"
story='{"job_id":"gpu-sampled-story","prompt":"Once upon a time, in a small village by the sea,","max_tokens":40,"temperature":0.8,"top_p":0.9,"seed":42}'
curl -sfN http://127.0.0.1:18080/execute -H 'content-type: application/json' -d "$story" | tail -2
kill $pid; wait $pid 2>/dev/null || true
trap - EXIT
step "$here/worker-orcd" replay "$rec" --backend cuda --model "$model"
step "$here/worker-orcd" replay "$rec" --backend cpu --model "$model"
# The server's decode rate per trace level through /execute SSE, with dropped frames (BENCHMARKS.md).
if [ -f xtask/python/server_bench.py ]; then
  step python3 xtask/python/server_bench.py --binary "$here/worker-orcd" --model "$model" --runs 3 --max-tokens 256
fi
if [ -n "$out" ]; then cp "$rec"/*.wrec "$out"/ && ls -l "$out"; fi
if [ ${#failed[@]} -gt 0 ]; then printf 'FAILED: %s\n' "${failed[@]}"; exit 1; fi
echo "run.sh: every step passed"
"#;

pub fn gpu_bundle(args: &[String]) -> Result<()> {
    let mut out = PathBuf::from(".gpu/bundle");
    let mut model: Option<PathBuf> = None;
    let mut with_corpus = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = PathBuf::from(it.next().context("--out needs a folder")?),
            "--model" => model = Some(PathBuf::from(it.next().context("--model needs a file")?)),
            "--with-corpus" => with_corpus = true,
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let root = workspace_root()?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    run(Command::new(cargo()).current_dir(&root).args(["build", "--release", "--bin", "worker-orcd", "--bin", "cuda-check"]))?;
    let it_exe = test_executable(&root, "it")?;
    let corpus_exe = test_executable(&root, "corpus")?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    for (src, name) in
        [(target.join("release/worker-orcd"), "worker-orcd"), (target.join("release/cuda-check"), "cuda-check"), (it_exe, "it"), (corpus_exe, "corpus")]
    {
        copy_stripped(&src, &out.join(name))?;
    }
    let run_sh = out.join("run.sh");
    std::fs::write(&run_sh, RUN_SH).with_context(|| format!("writing {}", run_sh.display()))?;
    set_executable(&run_sh)?;
    if with_corpus {
        let dst = out.join("recordings/llama.cpp");
        std::fs::create_dir_all(&dst)?;
        for e in std::fs::read_dir(root.join("recordings/llama.cpp"))? {
            let p = e?.path();
            if p.is_file() {
                std::fs::copy(&p, dst.join(p.file_name().expect("file")))?;
            }
        }
    }
    if let Some(m) = model {
        split_model(&m, &out.join("model-parts"))?;
    }
    println!("bundle in {}: run `{}/run.sh MODEL.gguf` on the GPU machine", out.display(), out.display());
    Ok(())
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest.parent().context("xtask has a parent folder")?.to_path_buf())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Builds the integration test binary `name` in release mode and returns its path.
fn test_executable(root: &Path, name: &str) -> Result<PathBuf> {
    let output = Command::new(cargo())
        .current_dir(root)
        .args(["test", "--test", name, "--no-run", "--message-format=json"])
        .output()
        .context("running cargo test --no-run")?;
    if !output.status.success() {
        bail!("cargo test --no-run failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if v["reason"] == "compiler-artifact" && v["target"]["name"] == name {
            if let Some(exe) = v["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("cargo test --no-run printed no executable for the `{name}` test binary")
}

/// Copies `src` to `dst` without debug information (`strip`, when installed; else a copy).
fn copy_stripped(src: &Path, dst: &Path) -> Result<()> {
    let stripped = Command::new("strip").arg("-o").arg(dst).arg(src).status().map(|s| s.success()).unwrap_or(false);
    if !stripped {
        std::fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
    }
    set_executable(dst)
}

fn set_executable(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut perm = std::fs::metadata(p)?.permissions();
    perm.set_mode(0o755);
    std::fs::set_permissions(p, perm)?;
    Ok(())
}

/// Splits the model into `part-NN` files of 30 MiB plus `sha256` and `name`, which run.sh
/// joins and verifies (for machines that take files of a limited size).
fn split_model(model: &Path, dir: &Path) -> Result<()> {
    use sha2_lite::sha256_hex;
    std::fs::create_dir_all(dir)?;
    let bytes = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    for (i, chunk) in bytes.chunks(PART_BYTES).enumerate() {
        std::fs::write(dir.join(format!("part-{i:02}")), chunk)?;
    }
    std::fs::write(dir.join("sha256"), format!("{}\n", sha256_hex(model)?))?;
    let name = model.file_name().context("model path has a file name")?.to_string_lossy().into_owned();
    std::fs::write(dir.join("name"), format!("{name}\n"))?;
    Ok(())
}

/// sha256 through the system's `sha256sum` (xtask carries no hashing crate of its own).
mod sha2_lite {
    use std::path::Path;
    use std::process::Command;

    use anyhow::{bail, Context, Result};

    pub fn sha256_hex(p: &Path) -> Result<String> {
        let out = Command::new("sha256sum").arg(p).output().context("running sha256sum")?;
        if !out.status.success() {
            bail!("sha256sum {} failed", p.display());
        }
        Ok(String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string())
    }
}
