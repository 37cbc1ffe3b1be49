//! The default model requantized into each file type whose matrices use the types added with
//! the k-quants (Q5_0, Q5_1, IQ4_NL, Q2_K..Q6_K): each loads, generates readable greedy text
//! (snapshotted), and gives bitwise the same logits for 1 and 2 threads and for any prefill
//! chunking. The files are made by `fetch` (`smollm2-<type>`: `worker-orcd quantize` on the
//! cached default model, checked against llama.cpp's sha256), never committed.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rstest::rstest;
use worker_orcd::backend::cpu::CpuBackend;
use worker_orcd::backend::{Backend, LogitRows, NoTap};
use worker_orcd::engine::{Engine, GenerateRequest};
use worker_orcd::gguf::GgmlType;
use worker_orcd::model::Model;
use worker_orcd::sampler::SamplingParams;
use worker_orcd::tokenizer::Tokenizer;

use worker_orcd::gguf::{GgufFile, GgufWriter};
use worker_orcd::quantize::rows;

use crate::support::{self, bits};

const PROMPT: &str = "The capital of France is Paris. The capital of Germany is";

/// `smollm2-<ftype>`; `Q2_K_ffn_down` is the default model with every `ffn_down` (the only
/// matrices whose rows are a multiple of 256; llama.cpp's Q2_K mix gives them Q3_K, so no file
/// type of this model has a Q2_K matrix) requantized to Q2_K from its dequantized values.
fn load(ftype: &str) -> (Arc<Model>, Arc<Tokenizer>) {
    let q2_down = ftype == "Q2_K_ffn_down";
    let name = if q2_down { "smollm2".to_string() } else { format!("smollm2-{}", ftype.to_lowercase()) };
    let path = worker_orcd::fetch::fetch_named(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    if q2_down {
        let mut w = GgufWriter::new();
        for (k, v) in &file.metadata {
            if k != "general.alignment" {
                w.add_metadata(k, v.clone());
            }
        }
        for t in &file.tensors {
            if t.name.ends_with("ffn_down.weight") {
                let x = file.dequantize_tensor(&t.name).unwrap();
                let mut q = vec![0u8; GgmlType::Q2_K.row_bytes(x.len()).unwrap()];
                rows::quantize_rows(GgmlType::Q2_K, &x, &mut q).unwrap();
                w.add_tensor(&t.name, &t.shape, GgmlType::Q2_K, q);
            } else {
                w.add_tensor(&t.name, &t.shape, t.ggml_type, file.tensor_bytes(&t.name).unwrap().to_vec());
            }
        }
        file = GgufFile::from_bytes(w.to_bytes()).expect("rewritten model parses");
    }
    let model = Arc::new(Model::from_gguf(Arc::new(file)).unwrap_or_else(|e| panic!("{ftype} loads: {e}")));
    let tok = Arc::new(Tokenizer::from_gguf(&model.file).expect("tokenizer"));
    (model, tok)
}

fn logits(model: &Arc<Model>, ids: &[u32], threads: usize, chunk: usize) -> Vec<f32> {
    let mut b = CpuBackend::new(model.clone(), 128, threads).unwrap();
    let mut out = Vec::new();
    for (i, c) in ids.chunks(chunk).enumerate() {
        out.extend(b.forward(c, i * chunk, LogitRows::All, &mut NoTap).unwrap());
    }
    out
}

#[rstest]
#[case::q4_k_m("Q4_K_M", &[GgmlType::Q4_K, GgmlType::Q5_0, GgmlType::Q6_K])]
#[case::q5_k_m("Q5_K_M", &[GgmlType::Q5_K, GgmlType::Q5_1, GgmlType::Q6_K])]
#[case::q6_k("Q6_K", &[GgmlType::Q6_K])]
#[case::q5_0("Q5_0", &[GgmlType::Q5_0])]
#[case::q5_1("Q5_1", &[GgmlType::Q5_1])]
#[case::q2_k("Q2_K", &[GgmlType::Q3_K])]
#[case::q2_k_ffn_down("Q2_K_ffn_down", &[GgmlType::Q2_K])]
#[case::q3_k_m("Q3_K_M", &[GgmlType::Q4_K, GgmlType::Q5_K])]
#[case::iq4_nl("IQ4_NL", &[GgmlType::IQ4_NL])]
fn requantized_model_runs_deterministically(#[case] ftype: &str, #[case] expect: &[GgmlType]) {
    let (model, tok) = load(ftype);
    // The file really has matrices of the types this case is about.
    let mut types: Vec<GgmlType> = model
        .layers
        .iter()
        .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down])
        .chain([&model.output, &model.token_embd])
        .map(|w| w.ty())
        .collect();
    types.sort_by_key(|t| t.id());
    types.dedup();
    for t in expect {
        assert!(types.contains(t), "{ftype}: no {} matrix (types {types:?})", t.name());
    }

    let ids = tok.encode(PROMPT, false);
    let whole = bits(&logits(&model, &ids, 1, usize::MAX));
    assert!(whole == bits(&logits(&model, &ids, 2, 3)), "{ftype}: logits differ between 1 thread whole and 2 threads in chunks of 3");
    assert!(whole == bits(&logits(&model, &ids, 2, 1)), "{ftype}: logits differ when the prompt is fed token by token");

    let backend = CpuBackend::new(model.clone(), 256, 2).unwrap();
    let mut engine = Engine::new(Box::new(backend), tok.clone());
    let req =
        GenerateRequest { prompt_ids: ids.clone(), params: SamplingParams::greedy(), seed: 1, max_tokens: 12, stop: vec![], top_logprobs: 0, prefill_chunk: 0 };
    let out = engine.generate(&req, &mut NoTap, &AtomicBool::new(false), &mut |_| {}).unwrap();
    eprintln!("{ftype}: {:?}", out.text);
    // Sensible: the first greedy token is among the default model's ten most likely next tokens
    // (a wrong kernel gives noise; a coarser type may rank the candidates differently).
    let default = logits(&support::model(), &ids, 2, usize::MAX);
    let last = &default[(ids.len() - 1) * model.config.n_vocab..];
    let mut order: Vec<usize> = (0..last.len()).collect();
    order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
    assert!(order[..10].contains(&(out.tokens[0] as usize)), "{ftype}: greedy text {:?} starts with a token the default model ranks low", out.text);
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    s.set_prepend_module_to_snapshot(false);
    s.set_info(
        &serde_json::json!({"model": format!("smollm2-{}", ftype.to_lowercase()), "backend": "cpu", "threads": 2, "sampling": "greedy", "prompt": PROMPT}),
    );
    s.bind(|| insta::assert_snapshot!(format!("types-{}", ftype.to_lowercase()), format!("tokens: {:?}\ntext: {:?}\n", out.tokens, out.text)));
}
