//! Model loading: the architectures and variants the worker runs (qwen2, llama with and without
//! `output.weight`, Llama-3 rope factors, linear rope scaling) and the one-line refusals of what
//! it cannot run, on small synthetic GGUF files (`gguf::GgufWriter`); and the qwen2 forward pass
//! wired as llama.cpp's graph is (bias after the product, NEOX RoPE on the biased Q and K).

use std::sync::Arc;

use worker_orcd::backend::cpu::ops::{self, RopeKind};
use worker_orcd::backend::cpu::{simd, CpuBackend};
use worker_orcd::backend::{Backend, CaptureTap, LogitRows};
use worker_orcd::gguf::{GgmlType, GgufFile, GgufWriter, MetadataValue};
use worker_orcd::model::{Arch, Model};

use crate::cuda::{tiny_writer, Variant};

fn open(w: &GgufWriter) -> Result<Model, String> {
    let file = GgufFile::from_bytes(w.to_bytes()).map_err(|e| e.to_string())?;
    Model::from_gguf(Arc::new(file)).map_err(|e| e.to_string())
}

/// The tiny writer with one metadata key set (or replaced).
fn with_key(variant: Variant, key: &str, v: MetadataValue) -> GgufWriter {
    let mut w = tiny_writer(GgmlType::Q8_0, variant);
    w.add_metadata(key, v);
    w
}

#[test]
fn variants_load_with_their_configuration() {
    let q = open(&tiny_writer(GgmlType::Q8_0, Variant::Qwen2)).unwrap();
    let c = &q.config;
    assert_eq!((c.arch, c.rope_kind, c.rms_eps, c.rope_base), (Arch::Qwen2, RopeKind::Neox, 1e-6, 1e6));
    assert_eq!(q.output.info.name, "output.weight", "qwen2 keeps its own output matrix");
    assert!(q.layers.iter().all(|l| l.bq.is_some() && l.bk.is_some() && l.bv.is_some()));
    let l = open(&tiny_writer(GgmlType::Q8_0, Variant::Llama)).unwrap();
    assert_eq!((l.config.arch, l.config.rope_kind), (Arch::Llama, RopeKind::Norm));
    assert_eq!(l.output.info.name, "token_embd.weight", "no output.weight: tied to the embeddings");
    let l3 = open(&tiny_writer(GgmlType::Q8_0, Variant::Llama3)).unwrap();
    let r = l3.rope();
    assert_eq!((r.freq_scale, r.freq_factors.as_ref().map(|f| f.len())), (0.25, Some(16)));
    // A Llama-3 RoPE differs from plain RoPE exactly where the factors and scale apply.
    let plain = ops::Rope::plain(RopeKind::Norm, 32, 10000.0);
    assert_eq!(plain.cache(0), r.cache(0));
    assert_ne!(plain.cache(5), r.cache(5));
}

/// Each file the worker cannot run, with the one line it must say.
#[test]
fn unsupported_files_are_refused_with_one_line_naming_the_cause() {
    let mut cases: Vec<(&str, GgufWriter, &str)> = vec![
        ("architecture", with_key(Variant::Llama, "general.architecture", MetadataValue::String("gemma2".into())), "unsupported architecture \"gemma2\""),
        ("softcap", with_key(Variant::Gemma3, "gemma3.final_logit_softcapping", MetadataValue::F32(30.0)), "gemma3.final_logit_softcapping = 30"),
        (
            "swa array",
            with_key(Variant::Gemma3, "gemma3.attention.sliding_window_pattern", MetadataValue::Array(vec![MetadataValue::Bool(true)])),
            "gemma3.attention.sliding_window_pattern",
        ),
        ("yarn", with_key(Variant::Llama, "llama.rope.scaling.type", MetadataValue::String("yarn".into())), "llama.rope.scaling.type = \"yarn\""),
        ("partial rope", with_key(Variant::Llama, "llama.rope.dimension_count", MetadataValue::U32(16)), "llama.rope.dimension_count = 16"),
        ("value length", with_key(Variant::Qwen2, "qwen2.attention.value_length", MetadataValue::U32(64)), "qwen2.attention.value_length = 64"),
        ("experts", with_key(Variant::Llama, "llama.expert_count", MetadataValue::U32(8)), "llama.expert_count = 8"),
        (
            "missing epsilon",
            {
                let mut w = GgufWriter::new();
                w.add_metadata("general.architecture", MetadataValue::String("qwen2".into()));
                w
            },
            "qwen2.block_count",
        ),
    ];
    let mut extra = tiny_writer(GgmlType::Q8_0, Variant::Llama);
    extra.add_tensor("blk.0.attn_output.bias", &[128], GgmlType::F32, vec![0; 512]);
    cases.push(("unused tensor", extra, "tensor blk.0.attn_output.bias is not part of the llama architecture"));
    let mut freqs = tiny_writer(GgmlType::Q8_0, Variant::Qwen2);
    freqs.add_tensor("rope_freqs.weight", &[16], GgmlType::F32, vec![0; 64]);
    cases.push(("qwen2 rope factors", freqs, "tensor rope_freqs.weight is not part of the qwen2 architecture"));
    // A matrix type without a product: I32 never has one.
    let mut w = tiny_writer(GgmlType::Q8_0, Variant::Llama);
    assert!(w.remove_tensor("blk.1.ffn_up.weight"));
    w.add_tensor("blk.1.ffn_up.weight", &[128, 256], GgmlType::I32, vec![0; 128 * 256 * 4]);
    cases.push(("matrix type", w, "tensor blk.1.ffn_up.weight has type i32"));
    let mut w = tiny_writer(GgmlType::Q8_0, Variant::Qwen2);
    assert!(w.remove_tensor("blk.2.attn_k.bias"));
    w.add_tensor("blk.2.attn_k.bias", &[96], GgmlType::F32, vec![0; 96 * 4]);
    cases.push(("bias shape", w, "tensor blk.2.attn_k.bias has shape [96], expected [64]"));
    for (what, w, want) in cases {
        let err = match open(&w) {
            Ok(_) => panic!("{what}: loaded a file it cannot run"),
            Err(e) => e,
        };
        assert!(err.contains(want), "{what}: {err:?} does not say {want:?}");
        assert!(!err.contains('\n'), "{what}: more than one line: {err:?}");
    }
}

/// The qwen2 forward pass on the CPU: Q, K and V are the products plus their biases (one f32
/// addition each), and the RoPE'd Q and K are NEOX rotations of those (llama.cpp's graph;
/// bit-exactness against llama.cpp itself is the recordings' job).
#[test]
fn qwen2_forward_adds_biases_then_rotates_halves() {
    let m = Arc::new(open(&tiny_writer(GgmlType::Q8_0, Variant::Qwen2)).unwrap());
    let tokens = [3u32, 99, 250, 7, 511];
    let mut b = CpuBackend::new(Arc::clone(&m), 64, 2).unwrap();
    let mut tap = CaptureTap::all();
    b.forward(&tokens, 0, LogitRows::All, &mut tap).unwrap();
    let c = &m.config;
    let rope = m.rope();
    for l in 0..c.n_layers {
        let lw = &m.layers[l];
        let xn = &tap.tensors[&worker_orcd::backend::TapPoint::AttnNorm(l)];
        for (w, bias, width, point, roped) in [
            (&lw.wq, &lw.bq, c.q_dim(), worker_orcd::backend::TapPoint::Q(l), Some(worker_orcd::backend::TapPoint::QRope(l))),
            (&lw.wk, &lw.bk, c.kv_dim(), worker_orcd::backend::TapPoint::K(l), Some(worker_orcd::backend::TapPoint::KRope(l))),
            (&lw.wv, &lw.bv, c.kv_dim(), worker_orcd::backend::TapPoint::V(l), None),
        ] {
            let mut want = vec![0.0f32; tokens.len() * width];
            simd::matmul(&m.matrix(w), xn, tokens.len(), &mut want);
            let bias = m.f32_vec(bias.as_ref().unwrap());
            for row in want.chunks_exact_mut(width) {
                ops::add(row, &bias);
            }
            assert_eq!(crate::support::bits(&tap.tensors[&point]), crate::support::bits(&want), "layer {l}: {} is not product + bias", point.name());
            if let Some(rp) = roped {
                for (t, row) in want.chunks_exact_mut(width).enumerate() {
                    rope.apply(row, t);
                }
                assert_eq!(
                    crate::support::bits(&tap.tensors[&rp]),
                    crate::support::bits(&want),
                    "layer {l}: {} is not NEOX RoPE of the biased rows",
                    rp.name()
                );
            }
        }
    }
    // NEOX is not NORM: the same rows rotated as adjacent pairs differ (the test can fail).
    let q = &tap.tensors[&worker_orcd::backend::TapPoint::Q(0)][..c.q_dim()];
    let (mut neox, mut norm) = (q.to_vec(), q.to_vec());
    rope.apply(&mut neox, 3);
    ops::Rope { kind: RopeKind::Norm, ..rope.clone() }.apply(&mut norm, 3);
    assert_ne!(crate::support::bits(&neox), crate::support::bits(&norm));
}
