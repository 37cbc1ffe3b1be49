//! The command line: out-of-range flags are refused naming the flag; tokenize reads stdin and
//! works on a vocabulary-only GGUF; generate --json has the documented fields.

use std::io::Write;
use std::process::{Command, Stdio};

use worker_orcd::gguf::writer::GgufWriter;

fn exe() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_worker-orcd"));
    c.env("WORKER_ORCD_MODEL", worker_orcd::fetch::default_model_path().expect("default model"));
    c
}

fn refused(args: &[&str], flag: &str) {
    let out = exe().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(err.contains(flag), "{args:?}: error does not name {flag}: {err}");
}

#[test]
fn out_of_range_values_are_refused_naming_the_flag() {
    refused(&["generate", "--prompt", "hi", "--temperature", "-0.5"], "--temperature");
    refused(&["generate", "--prompt", "hi", "--top-p", "0"], "--top-p");
    refused(&["generate", "--prompt", "hi", "--top-p", "1.5"], "--top-p");
    refused(&["generate", "--prompt", "hi", "--min-p", "2"], "--min-p");
    refused(&["generate", "--prompt", "hi", "--max-tokens", "0"], "--max-tokens");
    refused(&["generate", "--prompt", "hi", "--max-tokens", "100000"], "--max-tokens");
    refused(&["generate", "--prompt", "hi", "--repeat-penalty", "0"], "--repeat-penalty");
    refused(&["generate", "--prompt", "hi", "--seed", "abc"], "--seed");
    refused(&["generate"], "--prompt");
}

fn tokenize(args: &[&str], model: Option<&std::path::Path>, input: &str) -> serde_json::Value {
    let mut cmd = exe();
    cmd.args(["tokenize", "--json"]).args(args);
    if let Some(m) = model {
        cmd.arg("--model").arg(m);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn tokenize_reads_stdin_with_and_without_parse_special() {
    let text = "<|im_start|>user\nHi";
    let plain = tokenize(&[], None, text);
    let special = tokenize(&["--parse-special"], None, text);
    assert_eq!(special["ids"][0], 1, "parse-special maps <|im_start|> to id 1");
    assert_ne!(plain["ids"][0], 1);
}

#[test]
fn tokenize_works_on_a_vocab_only_gguf() {
    let model = worker_orcd::gguf::GgufFile::open(&worker_orcd::fetch::default_model_path().unwrap()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &model.metadata {
        if k.starts_with("tokenizer.") || k == "general.architecture" {
            w.add_metadata(k, v.clone());
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let vocab = dir.path().join("vocab.gguf");
    w.write_to_path(&vocab).unwrap();
    let text = "Hello, world! 12345 don't";
    assert_eq!(tokenize(&[], Some(&vocab), text), tokenize(&[], None, text));
}

#[test]
fn generate_json_has_the_documented_fields() {
    let out = exe().args(["generate", "--json", "--prompt", "The capital of France is", "--temperature", "0", "--max-tokens", "4"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in ["prompt_tokens", "tokens", "text", "seed", "stop_reason"] {
        assert!(v.get(field).is_some(), "missing {field} in {v}");
    }
    assert_eq!(v["tokens"].as_array().unwrap().len(), 4);
    assert_eq!(v["stop_reason"], "MAX_TOKENS");
}

/// `--model` takes a named test model as well as a path, in every subcommand that loads one; an
/// unknown name is one line listing the known ones.
#[test]
fn model_flag_takes_a_named_model_and_refuses_an_unknown_one_listing_the_names() {
    let out = exe().args(["generate", "--json", "--model", "smollm2", "--prompt", "Hi", "--temperature", "0", "--max-tokens", "2"]).output().unwrap();
    assert!(out.status.success(), "generate --model smollm2: {}", String::from_utf8_lossy(&out.stderr));
    for sub in [&["generate", "--prompt", "hi"][..], &["serve", "--addr", "127.0.0.1:0"], &["dump", "--prompt", "hi", "--out", "/nonexistent-dir"]] {
        let out = exe().args(sub).args(["--model", "no-such-model-or-file"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sub:?} with an unknown model was accepted");
        assert!(err.contains("unknown model \"no-such-model-or-file\"") && err.contains("qwen2.5-coder-0.5b-q4_k_m"), "{sub:?}: {err}");
    }
}
