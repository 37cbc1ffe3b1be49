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

const USAGE: &str =
    "usage: cargo xtask gpu-bundle [--out DIR] [--model PATH.gguf] [--part-mib N] [--with-corpus] [--pack FILE.tar.xz] [--llama-src SDIST.tar.gz]";

/// MiB per model part by default (the device tool carries at most 64 MiB per call, the tree
/// included; `--part-mib` sets it).
const PART_MIB: usize = 30;

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
  # lease.sh's model stage joins the parts and checks the sha256 (into $LEASE_TMP/model).
  LEASE_TMP=/tmp "$here/lease.sh" model "$model"
  model=/tmp/model/$(cat "$model/name")
  [ -f "$model" ] || { echo "run.sh: not every part of $model is in the folder" >&2; exit 1; }
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

/// A lease's stages, one device call each (a lease is a few back-to-back calls on a machine that
/// goes back after 30 s idle; what a call writes under /tmp is there for the next). Written into
/// the bundle as `lease.sh`; README.md ("GPU", "A device lease step by step") gives the order.
const LEASE_SH: &str = r#"#!/usr/bin/env bash
# One stage of a device lease per call; every stage logs with timestamps and copies its log to
# $OUT when set. Run from the checkout's root on the GPU machine.
#   lease.sh info                            the card and the bundle (unpacked into $LEASE_TMP/b)
#   lease.sh model PARTS_DIR                 add the parts carried this call to $LEASE_TMP/model;
#                                            joins and checks the file once all are there
#   lease.sh llama-build LLAMA_SRC.tar.xz    llama.cpp's CUDA build in the background
#   lease.sh tests                           it cuda:: but the real model (per-op, persistent)
#   lease.sh model-checks                    real-model tests, determinism, profile
#   lease.sh corpus                          the replay corpus on CUDA, parity (needs recordings/)
#   lease.sh bench [FLAGS..]                 cuda-check bench, once per decode flag set
#   lease.sh both                            ours, llama-bench, ours, llama-bench (back to back)
#   lease.sh server                          server_bench.py per trace level
#   lease.sh ab OTHER_BUNDLE_DIR [ROUNDS]    cuda-check bench of this bundle and OTHER, alternating
set -uo pipefail
# LEASE_TMP (default /tmp) holds the bundle, the model, llama.cpp and the log between calls.
export T=${LEASE_TMP:-/tmp}
b=$T/b
log=$T/lease.log
stamp() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$log"; }
model_file() {
  [ -f $T/model/name ] && [ -f "$T/model/$(cat $T/model/name)" ] || { stamp "no model in $T/model (run: lease.sh model PARTS_DIR)" >&2; exit 2; }
  echo "$T/model/$(cat $T/model/name)"
}
export WORKER_ORCD_KERNEL_CACHE=${WORKER_ORCD_KERNEL_CACHE:-$T/worker-orcd-kernels}
export WORKER_ORCD_EXPECT_GPU=1
failed=()
step() { stamp "run: $*"; "$@" 2>&1 | tee -a "$log"; local rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || { failed+=("$* (rc $rc)"); stamp "FAILED rc=$rc: $*"; }; }
# Waits at most LLAMA_WAIT_S (default 240) seconds for the background build: a device call
# has 600 s in all.
llama_wait() {
  for _ in $(seq $(( ${LLAMA_WAIT_S:-240} / 5 ))); do grep -q '^rc=' $T/lc/build.log 2>/dev/null && break; sleep 5; done
  grep '^rc=0' $T/lc/build.log >/dev/null || { stamp "llama.cpp build not done: $(tail -3 $T/lc/build.log 2>/dev/null)"; return 1; }
}
cmd=${1:-}; shift || true
case "$cmd" in
  info)
    ls -l "$b" | tee -a "$log"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee -a "$log" ;;
  model)
    parts=${1:?lease.sh model PARTS_DIR}
    mkdir -p $T/model && cp "$parts"/* $T/model/ || exit 2
    name=$(cat $T/model/name); have=$(ls $T/model/part-* 2>/dev/null | wc -l)
    if [ ! -f "$T/model/$name" ] && [ "$have" = "$(cat $T/model/count)" ]; then
      cat $T/model/part-* > "$T/model/$name" && rm $T/model/part-*
    fi
    if [ -f "$T/model/$name" ]; then
      echo "$(cat $T/model/sha256)  $T/model/$name" | sha256sum -c | tee -a "$log"
      [ "${PIPESTATUS[1]}" = 0 ] || { stamp "model: the joined file's sha256 is wrong"; exit 1; }
    else
      stamp "model: $have of $(cat $T/model/count) parts here"
    fi ;;
  llama-build)
    mkdir -p $T/lc && tar xJf "${1:?lease.sh llama-build LLAMA_SRC.tar.xz}" -C $T/lc
    (cd $T/lc/llama.cpp && setsid nohup bash -c 'cmake -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release >$T/lc/cmake.log 2>&1 && cmake --build build -j 14 --target llama-bench >$T/lc/build.log 2>&1; echo rc=$? >>$T/lc/build.log' >/dev/null 2>&1 </dev/null &)
    stamp "llama.cpp build started in the background ($T/lc/build.log)" ;;
  tests)
    # The real-model test needs the whole model: model-checks runs it once it is joined.
    step "$b/it" cuda:: --include-ignored --test-threads=1 --skip real_model ;;
  model-checks)
    m=$(model_file) || exit 2
    WORKER_ORCD_MODEL=$m step "$b/it" real_model_matches_cpu tiny_model --include-ignored --test-threads=1
    step "$b/cuda-check" determinism --model "$m" --runs 20
    step "$b/cuda-check" profile --model "$m" ;;
  corpus)
    m=$(model_file) || exit 2
    WORKER_ORCD_MODEL=$m WORKER_ORCD_ROOT=$PWD WORKER_ORCD_REPLAY_BACKEND=cuda step "$b/corpus" --test-threads=1
    step "$b/cuda-check" parity --model "$m" --corpus recordings/llama.cpp ;;
  bench)
    m=$(model_file) || exit 2
    [ $# -gt 0 ] || set -- 31
    for f in "$@"; do WORKER_ORCD_CUDA_DECODE_FLAGS=$f step "$b/cuda-check" bench --model "$m"; done ;;
  both)
    m=$(model_file) || exit 2
    llama_wait || failed+=("llama.cpp build")
    lb=$T/lc/llama.cpp/build/bin/llama-bench
    step "$b/cuda-check" bench --model "$m"
    [ -x "$lb" ] && step "$lb" -m "$m" -ngl 99 -fa 0,1 -p 512,32 -n 128 -r 3 -o md
    step "$b/cuda-check" bench --model "$m"
    [ -x "$lb" ] && step "$lb" -m "$m" -ngl 99 -fa 0,1 -p 512 -n 128 -r 3 -o md ;;
  server)
    m=$(model_file) || exit 2
    step python3 xtask/python/server_bench.py --binary "$b/worker-orcd" --model "$m" --runs 2 --max-tokens 256 ;;
  ab)
    m=$(model_file) || exit 2
    other=${1:?lease.sh ab OTHER_BUNDLE_DIR [ROUNDS]}; rounds=${2:-2}
    for _ in $(seq "$rounds"); do
      for x in "$b" "$other"; do stamp "ab: $x"; step "$x/cuda-check" bench --model "$m"; done
    done ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
[ -n "${OUT:-}" ] && cp "$log" "$OUT/" 2>/dev/null
if [ ${#failed[@]} -gt 0 ]; then printf 'FAILED: %s\n' "${failed[@]}"; exit 1; fi
stamp "lease.sh $cmd: done"
"#;

pub fn gpu_bundle(args: &[String]) -> Result<()> {
    let mut out = PathBuf::from(".gpu/bundle");
    let mut model: Option<PathBuf> = None;
    let mut with_corpus = false;
    let mut pack: Option<PathBuf> = None;
    let mut llama_src: Option<PathBuf> = None;
    let mut part_mib = PART_MIB;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = PathBuf::from(it.next().context("--out needs a folder")?),
            "--model" => model = Some(PathBuf::from(it.next().context("--model needs a file")?)),
            "--part-mib" => {
                part_mib = it.next().context("--part-mib needs a number")?.parse().context("--part-mib needs a number")?;
                if !(1..=60).contains(&part_mib) {
                    bail!("--part-mib {part_mib}: a part must be 1 to 60 MiB (a device call carries 64 MiB, the tree included)");
                }
            }
            "--with-corpus" => with_corpus = true,
            "--pack" => pack = Some(PathBuf::from(it.next().context("--pack needs a file")?)),
            "--llama-src" => llama_src = Some(PathBuf::from(it.next().context("--llama-src needs the llama-cpp-python sdist")?)),
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
    for (name, text) in [("run.sh", RUN_SH), ("lease.sh", LEASE_SH)] {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        set_executable(&path)?;
    }
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
        split_model(&m, &out.join("model-parts"), part_mib << 20)?;
    }
    if let Some(p) = &pack {
        // The bundle without the model parts, which travel one call each.
        run(Command::new("tar").arg("cJf").arg(p).arg("--exclude=./model-parts").arg("-C").arg(&out).arg("."))?;
        println!("packed {} ({} bytes)", p.display(), std::fs::metadata(p)?.len());
    }
    if let Some(sdist) = &llama_src {
        let dst = out.with_file_name("llama-src.tar.xz");
        pack_llama_src(sdist, &dst)?;
        println!("llama.cpp source in {} ({} bytes)", dst.display(), std::fs::metadata(&dst)?.len());
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

/// Packs llama-cpp-python's vendored llama.cpp tree (without its models, docs and web UI, which
/// the CUDA build does not need) as `llama.cpp/...` into `dst`, for `lease.sh llama-build`.
fn pack_llama_src(sdist: &Path, dst: &Path) -> Result<()> {
    let tmp = dst.with_extension("unpack");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    run(Command::new("tar").arg("xzf").arg(sdist).arg("-C").arg(&tmp).args(["--wildcards", "*/vendor/llama.cpp/*"]))?;
    let top = std::fs::read_dir(&tmp)?.next().context("the sdist unpacked to nothing")??.path();
    let vendor = top.join("vendor");
    for skip in ["llama.cpp/models", "llama.cpp/docs", "llama.cpp/tools/server/webui"] {
        let p = vendor.join(skip);
        if p.exists() {
            std::fs::remove_dir_all(&p)?;
        }
    }
    run(Command::new("tar").arg("cJf").arg(dst).arg("-C").arg(&vendor).arg("llama.cpp"))?;
    std::fs::remove_dir_all(&tmp)?;
    Ok(())
}

/// Splits the model into `part-NN` files of `part_bytes` plus `sha256`, `name` and `count`,
/// which run.sh and lease.sh join and verify (for machines that take files of a limited size).
fn split_model(model: &Path, dir: &Path, part_bytes: usize) -> Result<()> {
    use sha2_lite::sha256_hex;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let bytes = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let mut count = 0;
    for (i, chunk) in bytes.chunks(part_bytes).enumerate() {
        std::fs::write(dir.join(format!("part-{i:02}")), chunk)?;
        count += 1;
    }
    std::fs::write(dir.join("count"), format!("{count}\n"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write_script(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        set_executable(&p).unwrap();
        p
    }

    fn lease(script: &Path, tmp: &Path, args: &[&str]) -> std::process::Output {
        Command::new("bash").arg(script).args(args).env("LEASE_TMP", tmp).env_remove("OUT").output().unwrap()
    }

    #[test]
    fn the_bundle_scripts_parse() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (name, text) in [("run.sh", RUN_SH), ("lease.sh", LEASE_SH)] {
            let p = write_script(d, name, text);
            let out = Command::new("bash").arg("-n").arg(&p).output().unwrap();
            assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    /// The model travels in parts over several calls; lease.sh joins it once the last part is
    /// there, checks its sha256, and refuses a part that was damaged on the way.
    #[test]
    fn lease_joins_a_model_carried_over_several_calls_and_checks_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let script = write_script(d, "lease.sh", LEASE_SH);
        let model: Vec<u8> = (0..10_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let file = d.join("m.gguf");
        std::fs::write(&file, &model).unwrap();
        let parts = d.join("parts");
        split_model(&file, &parts, 3_000).unwrap();
        assert_eq!(std::fs::read_to_string(parts.join("count")).unwrap().trim(), "4");
        // Two calls, each carrying two parts and the three small files.
        let calls = [d.join("call1"), d.join("call2")];
        for (k, call) in calls.iter().enumerate() {
            std::fs::create_dir_all(call).unwrap();
            for f in ["count", "sha256", "name"] {
                std::fs::copy(parts.join(f), call.join(f)).unwrap();
            }
            for i in [2 * k, 2 * k + 1] {
                let n = format!("part-{i:02}");
                std::fs::copy(parts.join(&n), call.join(&n)).unwrap();
            }
        }
        let tmp = d.join("device-tmp");
        let no_model = lease(&script, &tmp, &["bench"]);
        assert_eq!(no_model.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&no_model.stderr).contains("no model"), "{no_model:?}");
        let first = lease(&script, &tmp, &["model", calls[0].to_str().unwrap()]);
        assert!(first.status.success(), "{first:?}");
        assert!(String::from_utf8_lossy(&first.stdout).contains("2 of 4 parts"), "{first:?}");
        assert!(!tmp.join("model/m.gguf").exists());
        let second = lease(&script, &tmp, &["model", calls[1].to_str().unwrap()]);
        assert!(second.status.success(), "{second:?}");
        assert_eq!(std::fs::read(tmp.join("model/m.gguf")).unwrap(), model);
        // A damaged part: the join fails with a message and a non-zero status.
        let tmp2 = d.join("device-tmp2");
        let mut bad = std::fs::read(calls[1].join("part-03")).unwrap();
        bad[7] ^= 1;
        std::fs::write(calls[1].join("part-03"), bad).unwrap();
        assert!(lease(&script, &tmp2, &["model", calls[0].to_str().unwrap()]).status.success());
        let damaged = lease(&script, &tmp2, &["model", calls[1].to_str().unwrap()]);
        assert_eq!(damaged.status.code(), Some(1), "{damaged:?}");
        assert!(String::from_utf8_lossy(&damaged.stdout).contains("sha256 is wrong"), "{damaged:?}");
        let unknown = lease(&script, &tmp, &["no-such-stage"]);
        assert_eq!(unknown.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&unknown.stdout).contains("lease.sh model PARTS_DIR"));
    }

    /// `--llama-src` keeps the vendored llama.cpp tree as `llama.cpp/...` and drops what the CUDA
    /// build does not need (models, docs, the web UI).
    #[test]
    fn the_llama_source_is_packed_without_models_docs_and_web_ui() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let root = d.join("llama_cpp_python-0.3.36/vendor/llama.cpp");
        for f in
            ["CMakeLists.txt", "ggml/src/ggml.c", "models/ggml-vocab-gpt-2.gguf", "docs/build.md", "tools/server/webui/index.html", "tools/server/server.cpp"]
        {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f).unwrap();
        }
        std::fs::write(d.join("llama_cpp_python-0.3.36/setup.py"), "x").unwrap();
        let sdist = d.join("sdist.tar.gz");
        run(Command::new("tar").arg("czf").arg(&sdist).arg("-C").arg(d).arg("llama_cpp_python-0.3.36")).unwrap();
        let dst = d.join("out/llama-src.tar.xz");
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        pack_llama_src(&sdist, &dst).unwrap();
        let list = Command::new("tar").arg("tJf").arg(&dst).output().unwrap();
        let mut files: Vec<String> = String::from_utf8_lossy(&list.stdout).lines().filter(|l| !l.ends_with('/')).map(str::to_string).collect();
        files.sort();
        assert_eq!(files, ["llama.cpp/CMakeLists.txt", "llama.cpp/ggml/src/ggml.c", "llama.cpp/tools/server/server.cpp"]);
        assert!(!dst.with_extension("unpack").exists(), "the unpacked tree is removed");
    }
}
