//! The `worker-orcd` command line: `generate`, `tokenize`, `dump`, `serve`, `quantize`,
//! `replay` and `explain`.
//!
//! Raw arguments are parsed by clap and resolved into validated library types here, in one
//! place; the library never sees a flag.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use worker_orcd::backend::cpu::CpuBackend;
use worker_orcd::backend::{Backend, CaptureTap, LogitRows, TapPoint};
use worker_orcd::chat::{self, ChatMessage};
use worker_orcd::engine::{Engine, GenerateRequest};
use worker_orcd::gguf::GgufFile;
use worker_orcd::model::Model;
use worker_orcd::sampler::{self, SamplingParams};
use worker_orcd::tokenizer::Tokenizer;

#[derive(Parser)]
#[command(name = "worker-orcd", version, about = "Deterministic LLM inference worker with record and replay")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it to stdout.
    Generate(GenerateArgs),
    /// Read text from stdin and print its token ids.
    Tokenize(TokenizeArgs),
    /// Run a prompt through the model once and write every layer's output as .npy files.
    Dump(DumpArgs),
    /// Serve generation over HTTP, one request at a time, recording each request.
    Serve(worker_orcd::server::ServeArgs),
    /// Rewrite a GGUF model in another llama.cpp file type (byte-identical to llama-quantize).
    Quantize(worker_orcd::quantize::cli::QuantizeArgs),
    /// Re-run recordings (worker `.wrec` files, llama.cpp references) and name the first
    /// divergence: the same code as `cargo xtask replay`. Exits 1 when a case fails.
    Replay(worker_orcd::replay::cli::ReplayArgs),
    /// Print what recordings hold (request, fingerprint, tokens, trace), running nothing.
    Explain(worker_orcd::replay::cli::ExplainArgs),
}

#[derive(clap::Args)]
struct ModelArgs {
    /// GGUF model file (default: SmolLM2-135M-Instruct Q4_1, fetched and verified on first use).
    #[arg(long)]
    model: Option<PathBuf>,
    /// CPU threads (0 = all cores). Results are identical for any value.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Context size in tokens (at most the model's training context).
    #[arg(long, default_value_t = 2048)]
    ctx: usize,
}

#[derive(clap::Args)]
struct GenerateArgs {
    #[arg(long)]
    prompt: String,
    #[command(flatten)]
    model: ModelArgs,
    /// Seed for sampling (default: a fresh one, reported on stderr and in --json).
    #[arg(long)]
    seed: Option<u64>,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.8, allow_hyphen_values = true)]
    temperature: f32,
    /// 0 disables.
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Treat special-token text in the prompt (e.g. `<|im_start|>`) as special tokens.
    #[arg(long)]
    parse_special: bool,
    /// Apply the model's chat template to the prompt (a single user message).
    #[arg(long)]
    chat: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct TokenizeArgs {
    /// GGUF file (a vocab-only file is enough).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    parse_special: bool,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct DumpArgs {
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    parse_special: bool,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate(a),
        Command::Tokenize(a) => tokenize(a),
        Command::Dump(a) => dump(a),
        Command::Serve(a) => worker_orcd::server::run(a),
        Command::Quantize(a) => worker_orcd::quantize::cli::run(a),
        Command::Replay(a) => match worker_orcd::replay::cli::run(&a, None) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => Err(e),
        },
        Command::Explain(a) => worker_orcd::replay::cli::explain(&a.paths),
    };
    if let Err(e) = result {
        eprintln!("worker-orcd: {e:#}");
        std::process::exit(1);
    }
}

/// `--model`: a GGUF path, or the name of a named test model (`cargo xtask fetch-model --list`),
/// fetched and verified on first use; the default model when absent.
fn model_path(arg: &Option<PathBuf>) -> Result<PathBuf> {
    match arg {
        Some(p) => worker_orcd::fetch::model_arg(p).with_context(|| format!("--model {}", p.display())),
        None => Ok(worker_orcd::fetch::default_model_path()?),
    }
}

struct Loaded {
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
}

fn load(args: &ModelArgs) -> Result<Loaded> {
    let path = model_path(&args.model)?;
    let model = Model::open(&path).with_context(|| format!("loading {}", path.display()))?;
    let tokenizer = Tokenizer::from_gguf(&model.file).with_context(|| format!("tokenizer of {}", path.display()))?;
    Ok(Loaded { model: Arc::new(model), tokenizer: Arc::new(tokenizer) })
}

fn prompt_ids(loaded: &Loaded, prompt: &str, chat_mode: bool, parse_special: bool) -> Result<Vec<u32>> {
    let tok = &loaded.tokenizer;
    let (text, special) = if chat_mode {
        let template = chat::ChatTemplate::of_model(&loaded.model.file)?;
        let bos = loaded.tokenizer.bos_id().and_then(|id| tok.token_text(id)).unwrap_or("");
        let eos = loaded.tokenizer.eos_id().and_then(|id| tok.token_text(id)).unwrap_or("");
        let msgs = [ChatMessage { role: "user".into(), content: prompt.to_string() }];
        (template.render(&msgs, true, bos, eos)?, true)
    } else {
        (prompt.to_string(), parse_special)
    };
    let ids = worker_orcd::chat::prompt_ids(tok, &text, special);
    if ids.is_empty() {
        bail!("--prompt: the prompt encodes to no tokens");
    }
    Ok(ids)
}

fn generate(a: GenerateArgs) -> Result<()> {
    let params = SamplingParams { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, min_p: a.min_p, repetition_penalty: a.repeat_penalty };
    if let Err(e) = params.validate() {
        let flag = match e.field {
            "repetition_penalty" => "repeat-penalty".to_string(),
            f => f.replace('_', "-"),
        };
        bail!("--{flag}: {}", e.reason);
    }
    if a.max_tokens == 0 {
        bail!("--max-tokens: must be at least 1");
    }
    let loaded = load(&a.model)?;
    let backend = CpuBackend::new(Arc::clone(&loaded.model), a.model.ctx, a.model.threads)?;
    let ids = prompt_ids(&loaded, &a.prompt, a.chat, a.parse_special)?;
    if ids.len() + a.max_tokens > backend.n_ctx() {
        bail!(
            "--max-tokens: {} prompt tokens + {} new tokens exceed the context of {} (raise --ctx, at most {})",
            ids.len(),
            a.max_tokens,
            backend.n_ctx(),
            loaded.model.config.n_ctx_train
        );
    }
    let seed = a.seed.unwrap_or_else(sampler::fresh_seed);
    if a.seed.is_none() && !a.json {
        eprintln!("worker-orcd: seed {seed}");
    }
    let req = GenerateRequest { prompt_ids: ids.clone(), params, seed, max_tokens: a.max_tokens, stop: Vec::new(), top_logprobs: 0, prefill_chunk: 0 };
    let mut engine = Engine::new(Box::new(backend), Arc::clone(&loaded.tokenizer));
    let stdout = std::io::stdout();
    let json = a.json;
    let cancel = AtomicBool::new(false);
    let outcome = engine.generate(&req, &mut worker_orcd::backend::NoTap, &cancel, &mut |ev| {
        if !json {
            let mut out = stdout.lock();
            let _ = out.write_all(ev.text.as_bytes());
            let _ = out.flush();
        }
    })?;
    let n = outcome.tokens.len();
    if json {
        let obj = serde_json::json!({
            "prompt_tokens": ids,
            "tokens": outcome.tokens,
            "text": outcome.text,
            "seed": seed,
            "stop_reason": outcome.stop_reason.as_str(),
            "prefill_ms": outcome.prefill_ms,
            "decode_ms": outcome.decode_ms,
            "decode_tokens_per_sec": if outcome.decode_ms > 0.0 { n as f64 / (outcome.decode_ms / 1000.0) } else { 0.0 },
        });
        println!("{obj}");
    } else {
        println!();
        eprintln!(
            "worker-orcd: {} prompt tokens in {:.0} ms, {} tokens in {:.0} ms ({:.1} tok/s), stop {}",
            ids.len(),
            outcome.prefill_ms,
            n,
            outcome.decode_ms,
            n as f64 / (outcome.decode_ms / 1000.0).max(1e-9),
            outcome.stop_reason.as_str()
        );
    }
    Ok(())
}

fn tokenize(a: TokenizeArgs) -> Result<()> {
    let path = model_path(&a.model)?;
    let file = GgufFile::open(&path).with_context(|| format!("loading {}", path.display()))?;
    let tok = Tokenizer::from_gguf(&file)?;
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).context("reading stdin")?;
    // The text as given (llama.cpp's `llama_tokenize` with add_special off): no BOS/EOS.
    let ids = tok.encode(&text, a.parse_special);
    if a.json {
        println!("{}", serde_json::json!({ "ids": ids }));
    } else {
        let parts: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        println!("{}", parts.join(" "));
    }
    Ok(())
}

fn dump(a: DumpArgs) -> Result<()> {
    let loaded = load(&a.model)?;
    let mut backend = CpuBackend::new(Arc::clone(&loaded.model), a.model.ctx, a.model.threads)?;
    let ids = prompt_ids(&loaded, &a.prompt, false, a.parse_special)?;
    let c = loaded.model.config.clone();
    // The tensors `dump` writes: `embd`, every `l_out-N`, `result_norm`, logits.
    let mut tap = CaptureTap::recorded();
    backend.forward(&ids, 0, LogitRows::All, &mut tap)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("--out {}", a.out.display()))?;
    for (p, data) in &tap.tensors {
        let width = if *p == TapPoint::Logits { c.n_vocab } else { c.dim };
        let path = a.out.join(format!("{}.npy", p.llama_name()));
        worker_orcd::npy::write_f32(&path, &[data.len() / width, width], data).with_context(|| format!("writing {}", path.display()))?;
    }
    std::fs::write(a.out.join("tokens.json"), serde_json::to_string(&ids)?)?;
    eprintln!("worker-orcd: wrote {} tensors for {} positions to {}", tap.tensors.len(), ids.len(), a.out.display());
    Ok(())
}
