//! Parity with llama.cpp beyond what each corpus case checks (`tests/corpus.rs` replays every
//! recording through `worker_orcd::replay`): prompt ids of both corpora, free-running greedy
//! generation step by step against the token-by-token recordings, and the batch bounds of
//! `replay::bounds` recomputed from llama.cpp's own data (its batch recordings against its
//! token-by-token recordings of the same prompts, same build), without running our engine.

use std::collections::BTreeMap;
use std::sync::Arc;

use worker_orcd::backend::cpu::CpuBackend;
use worker_orcd::backend::{Backend, LogitRows, NoTap};
use worker_orcd::reference::{load_corpus, load_token_corpus, RecordingMode, ReferenceRecording};
use worker_orcd::replay::{bounds, exact, metrics};

use crate::support::{model, tokenizer};

fn cases(token: bool) -> Vec<ReferenceRecording> {
    let c = if token { load_token_corpus() } else { load_corpus() };
    let c: Vec<ReferenceRecording> = c.expect("reference corpus opens").into_iter().map(|(_, r)| r).collect();
    assert!(c.len() >= 10, "expected at least 10 cases, found {}", c.len());
    c
}

#[test]
fn prompt_ids_equal_llama_cpp() {
    let tok = tokenizer();
    for rec in cases(false).into_iter().chain(cases(true)) {
        let c = &rec.case;
        assert_eq!(tok.encode(&c.prompt_text, c.parse_special), c.prompt_ids, "case {}", c.name);
    }
}

/// Free-running greedy, one token per forward call as a server generates: every step's token
/// and every step's logits (by hash) equal llama.cpp's token-by-token run, for all 64 steps of
/// every case. No near-tie is excused.
#[test]
fn free_running_greedy_equals_llama_cpp_token_by_token() {
    let m = model();
    let logits_col = |rec: &ReferenceRecording| rec.case.hash_columns.iter().position(|c| c == "result_output#0").expect("result_output hashed");
    let mut total = 0;
    for rec in cases(true) {
        let case = &rec.case;
        let (n, steps) = (case.prompt_ids.len(), case.greedy_ids.len());
        let col = logits_col(&rec);
        let mut b = CpuBackend::new(Arc::clone(&m), n + steps + 1, 2).unwrap();
        let mut logits = b.forward(&case.prompt_ids, 0, LogitRows::Last, &mut NoTap).unwrap();
        for i in 0..steps {
            let pos = n - 1 + i;
            assert_eq!(
                Some(exact::row_hash(&logits)),
                rec.row_hash(pos, col),
                "{}: logits at position {pos} (greedy step {i}) differ from llama.cpp's",
                case.name
            );
            let ours = worker_orcd::sampler::argmax(&logits);
            assert_eq!(ours, case.greedy_ids[i], "{}: greedy step {i}: ours {ours}, llama.cpp {}", case.name, case.greedy_ids[i]);
            if i + 1 < steps {
                logits = b.forward(&[ours], n + i, LogitRows::Last, &mut NoTap).unwrap();
            }
        }
        total += steps;
    }
    println!("free-running greedy: {total} of {total} steps equal to llama.cpp's, logits bit-identical at each");
}

/// llama.cpp against itself: per stored tensor, the worst per-position NMSE of its batch
/// recording against its token-by-token recording of the same prompt.
#[derive(Default)]
struct Spread {
    /// By tensor kind (`l_out`, `attn_out`, ...), then by layer.
    tensors: BTreeMap<String, BTreeMap<Option<usize>, f64>>,
    logits_nmse: f64,
    /// (case, position, batch top-2 gap) where the prompt position's top-1 differs.
    top1_flips: Vec<(String, usize, f32)>,
    positions: usize,
    /// (case, first greedy step whose token differs, batch top-2 gap there).
    greedy_split: Vec<(String, Option<usize>, f32)>,
}

fn rows_of(rec: &ReferenceRecording, name: &str, positions: &[usize]) -> Option<Vec<Vec<f32>>> {
    let (shape, data) = rec.f32(name).ok()?;
    let cap = rec.captured(name)?;
    if cap.token_axis != 0 {
        return None;
    }
    let width: usize = shape[1..].iter().product();
    positions.iter().map(|&p| rec.row_index(name, p).map(|i| data[i * width..(i + 1) * width].to_vec())).collect()
}

fn measure(batch: &ReferenceRecording, token: &ReferenceRecording, s: &mut Spread) {
    let name = &batch.case.name;
    assert_eq!(batch.case.prompt_ids, token.case.prompt_ids, "{name}: the two recordings have different prompts");
    for cap in &batch.case.captured {
        let common: Vec<usize> =
            (0..batch.case.n_tokens()).filter(|&p| batch.row_index(&cap.stored_name, p).is_some() && token.row_index(&cap.stored_name, p).is_some()).collect();
        let (Some(a), Some(b)) = (rows_of(batch, &cap.stored_name, &common), rows_of(token, &cap.stored_name, &common)) else { continue };
        let worst = a.iter().zip(&b).map(|(x, y)| metrics::nmse(y, x)).fold(0.0, f64::max);
        let (kind, layer) = match cap.ggml_name.rsplit_once('-') {
            Some((k, l)) if l.parse::<usize>().is_ok() => (k.to_string(), l.parse().ok()),
            _ => (cap.ggml_name.clone(), None),
        };
        let kind = if cap.op == "ROPE" { format!("{kind} (rope)") } else { kind };
        let e = s.tensors.entry(kind).or_default().entry(layer).or_insert(0.0);
        *e = e.max(worst);
    }
    let n = batch.case.n_tokens();
    if let (Some(a), Some(b)) = (batch.row("logits.rows", n - 1), token.row("logits.rows", n - 1)) {
        s.logits_nmse = s.logits_nmse.max(metrics::nmse(b, a));
    }
    let (Ok((shape, bi)), Ok((_, ti)), Ok((_, bv))) = (batch.i32("logits.top_ids"), token.i32("logits.top_ids"), batch.f32("logits.top_vals")) else {
        panic!("{name}: top logits missing")
    };
    let k = shape[1];
    for p in 0..n {
        if bi[p * k] != ti[p * k] {
            s.top1_flips.push((name.clone(), p, bv[p * k] - bv[p * k + 1]));
        }
    }
    s.positions += n;
    let split = batch.case.greedy_ids.iter().zip(&token.case.greedy_ids).position(|(a, b)| a != b);
    s.greedy_split.push((name.clone(), split, split.map_or(f32::NAN, |i| batch.case.greedy_top2_gap[i])));
}

/// `replay::bounds::BATCH` must hold llama.cpp's own batch-versus-token spread: if a bound were
/// tighter, llama.cpp itself would fail it. Printed as the documented table
/// (`cargo test --test it parity::batch -- --nocapture`).
#[test]
fn batch_bounds_cover_llama_cpps_own_spread() {
    spread_within_bounds("SmolLM2 (llama)", cases(false), cases(true), &bounds::BATCH);
}

/// The same for Gemma-3-270M, against its own bounds (`bounds::BATCH_GEMMA3`): its four norms per
/// layer spread llama.cpp's two modes further apart than the llama family's.
#[test]
fn gemma3_batch_bounds_cover_llama_cpps_own_spread() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recordings/llama.cpp/gemma3-270m-q4_k_m");
    let load = |d: &std::path::Path| worker_orcd::reference::load_dir(d).unwrap().into_iter().map(|(_, r)| r).collect::<Vec<_>>();
    let (batch, token) = (load(&dir), load(&dir.join("token")));
    assert!(batch.len() >= 5 && batch.len() == token.len(), "gemma3 recordings of both modes");
    spread_within_bounds("Gemma-3-270M (gemma3)", batch, token, bounds::for_arch(RecordingMode::Batch, worker_orcd::model::Arch::Gemma3));
}

fn spread_within_bounds(what: &str, batch_cases: Vec<ReferenceRecording>, token_cases: Vec<ReferenceRecording>, b: &bounds::Bounds) {
    let token: BTreeMap<String, ReferenceRecording> = token_cases.into_iter().map(|r| (r.case.name.clone(), r)).collect();
    let mut s = Spread::default();
    for batch in batch_cases {
        let t = token.get(&batch.case.name).unwrap_or_else(|| panic!("no token-by-token recording of {}", batch.case.name));
        measure(&batch, t, &mut s);
    }
    println!("{what}: llama.cpp batch vs token-by-token, worst per-position NMSE over the corpus:");
    let mut over = Vec::new();
    for (kind, by_layer) in &s.tensors {
        let worst = by_layer.values().copied().fold(0.0, f64::max);
        let layers: Vec<String> = by_layer.iter().map(|(l, e)| format!("{}:{e:.1e}", l.map_or("-".into(), |l| l.to_string()))).collect();
        for (layer, e) in by_layer {
            let bound = match (kind.as_str(), layer) {
                ("embd", _) => 0.0,
                (_, Some(0)) => b.chained_layer0,
                (_, Some(1)) => b.chained_layer1,
                ("l_out" | "result_norm", _) => b.chained_residual,
                _ => b.chained_op,
            };
            if *e > bound {
                over.push(format!("{kind} layer {layer:?}: {e:.3e} > {bound:.0e}"));
            }
        }
        println!("  {kind:<18} worst {worst:.3e}  {}", layers.join(" "));
    }
    println!("  logits (last prompt position) worst {:.3e} (bound {:.0e})", s.logits_nmse, b.logits_nmse);
    if s.logits_nmse > b.logits_nmse {
        over.push(format!("logits {:.3e}", s.logits_nmse));
    }
    let worst_flip_gap = s.top1_flips.iter().map(|f| f.2).fold(0.0f32, f32::max);
    println!(
        "  prompt top-1 differs at {} of {} positions, largest batch gap there {worst_flip_gap:.3} (bound {})",
        s.top1_flips.len(),
        s.positions,
        b.prompt_top1_gap
    );
    if worst_flip_gap >= b.prompt_top1_gap {
        over.push(format!("prompt top-1 flip at gap {worst_flip_gap}"));
    }
    for (case, split, gap) in &s.greedy_split {
        println!(
            "  greedy {case:<20} batch and token runs equal for {} steps{}",
            split.map_or("all".into(), |i| i.to_string()),
            split.map_or(String::new(), |_| format!(", then split at a batch top-2 gap of {gap:.3}"))
        );
    }
    println!(
        "  bounds: layer 0 {:.0e}, layer 1 {:.0e}, residual {:.0e}, other tensors {:.0e}",
        b.chained_layer0, b.chained_layer1, b.chained_residual, b.chained_op
    );
    let worst_split_gap = s.greedy_split.iter().filter(|g| g.1.is_some()).map(|g| g.2).fold(0.0f32, f32::max);
    if worst_split_gap >= b.near_tie_gap {
        over.push(format!("greedy split at gap {worst_split_gap}"));
    }
    assert!(over.is_empty(), "bounds tighter than llama.cpp's own spread: {over:?}");
}

/// The other named models' recordings (`recordings/llama.cpp/<name>/`, see tests/corpus.rs):
/// prompt ids of both modes, and free-running greedy generation against the token-by-token
/// recordings, as above, for every model whose matrix types the CPU backend has products for.
/// At least one model (Qwen2.5-Coder Q8_0, qwen2 architecture) is always checked.
#[test]
fn other_models_prompt_ids_and_free_running_greedy_equal_llama_cpp() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recordings/llama.cpp");
    let mut checked = Vec::new();
    for dir in worker_orcd::reference::model_corpus_dirs(&root).unwrap() {
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
        let name = cfg["named_model"].as_str().expect("cases.json names its model");
        let types: Vec<String> =
            cfg["weight_types"].as_array().expect("cases.json lists weight_types").iter().map(|v| v.as_str().unwrap().to_lowercase()).collect();
        let supported = |t: &String| {
            (0..64).filter_map(worker_orcd::gguf::GgmlType::from_id).any(|g| g.name().to_lowercase() == *t && worker_orcd::backend::cpu::quant::supports(g))
        };
        if !types.iter().all(supported) {
            println!("{name}: not run, no CPU product for one of {types:?} yet");
            continue;
        }
        let path = worker_orcd::fetch::fetch_named(name).unwrap();
        let m = Arc::new(worker_orcd::model::Model::open(&path).unwrap());
        let tok = worker_orcd::tokenizer::Tokenizer::from_gguf(&m.file).unwrap();
        let sha = worker_orcd::fetch::sha256_file(&path).unwrap();
        let batch = worker_orcd::reference::load_dir(&dir).unwrap();
        let token = worker_orcd::reference::load_dir(&dir.join("token")).unwrap();
        assert!(!batch.is_empty() && !token.is_empty(), "{name}: recordings missing");
        for (_, rec) in batch.iter().chain(&token) {
            let c = &rec.case;
            assert_eq!(c.model_sha256, sha, "{name}/{}: recorded with another file", c.name);
            assert_eq!(tok.tokenize(&c.prompt_text, c.add_special, c.parse_special), c.prompt_ids, "{name}/{}: prompt ids", c.name);
            // What `generate`/`dump` send: llama.cpp's tokenize with add_special (no BOS for these
            // vocabularies, which say add_bos_token = false).
            assert_eq!(worker_orcd::chat::prompt_ids(&tok, &c.prompt_text, c.parse_special), c.prompt_ids, "{name}/{}: prompt ids with add_special", c.name);
        }
        let mut total = 0;
        for (_, rec) in &token {
            let case = &rec.case;
            let (n, steps) = (case.prompt_ids.len(), case.greedy_ids.len());
            let col = case.hash_columns.iter().position(|c| c == "result_output#0").expect("result_output hashed");
            let mut b = CpuBackend::new(Arc::clone(&m), n + steps + 1, 2).unwrap();
            let mut logits = b.forward(&case.prompt_ids, 0, LogitRows::Last, &mut NoTap).unwrap();
            for i in 0..steps {
                let pos = n - 1 + i;
                assert_eq!(
                    Some(exact::row_hash(&logits)),
                    rec.row_hash(pos, col),
                    "{name}/{}: logits at position {pos} (greedy step {i}) differ from llama.cpp's",
                    case.name
                );
                let ours = worker_orcd::sampler::argmax(&logits);
                assert_eq!(ours, case.greedy_ids[i], "{name}/{}: greedy step {i}", case.name);
                if i + 1 < steps {
                    logits = b.forward(&[ours], n + i, LogitRows::Last, &mut NoTap).unwrap();
                }
            }
            total += steps;
        }
        println!("{name}: free-running greedy {total} of {total} steps equal to llama.cpp's, logits bit-identical at each");
        checked.push(name.to_string());
    }
    assert!(checked.iter().any(|n| n == "qwen2.5-coder-0.5b-q8_0"), "the qwen2 architecture was not checked: {checked:?}");
}
