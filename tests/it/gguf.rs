//! Integration tests for `worker_orcd::gguf` through its public API only: the
//! signature contract other modules code against, writer -> file -> mmap round
//! trips, checks against the real SmolLM2-135M Q4_1 model, and dequantization of
//! every supported type against gguf-py (llama.cpp's Python reader, which
//! dequantizes exactly like C ggml) on real tensors of the named test models.

use std::path::{Path, PathBuf};

use worker_orcd::gguf::quant::{self, QK4_0, QK4_1, QK8_0, QK8_1};
use worker_orcd::gguf::writer::GgufWriter;
use worker_orcd::gguf::{GgmlType, GgufError, GgufFile, MetadataValue, TensorInfo};

/// Pins the public signatures other engineers code against: this fails to
/// compile if any of them drifts.
#[test]
fn public_api_contract() {
    let _: fn(u32) -> Option<GgmlType> = GgmlType::from_id;
    let _: fn(GgmlType) -> u32 = GgmlType::id;
    let _: fn(GgmlType) -> &'static str = GgmlType::name;
    let _: fn(GgmlType) -> usize = GgmlType::block_size;
    let _: fn(GgmlType) -> usize = GgmlType::type_size;
    let _: fn(GgmlType, usize) -> Option<usize> = GgmlType::row_bytes;
    let _: fn(&MetadataValue) -> &'static str = MetadataValue::type_name;
    let _: fn(&MetadataValue) -> Option<u64> = MetadataValue::as_u64;
    let _: fn(&MetadataValue) -> Option<f32> = MetadataValue::as_f32;
    let _: fn(&MetadataValue) -> Option<&str> = MetadataValue::as_str;
    let _: fn(&TensorInfo) -> u64 = TensorInfo::n_elements;
    let _: fn(&TensorInfo) -> u64 = TensorInfo::n_bytes;
    let _: fn(&TensorInfo) -> u64 = TensorInfo::n_rows;
    let _: fn(&TensorInfo) -> u64 = TensorInfo::row_len;
    let _: fn(&Path) -> Result<GgufFile, GgufError> = GgufFile::open;
    let _: fn(Vec<u8>) -> Result<GgufFile, GgufError> = GgufFile::from_bytes;
    let _: for<'a> fn(&'a GgufFile, &str) -> Option<&'a MetadataValue> = GgufFile::metadata;
    let _: for<'a> fn(&'a GgufFile, &str) -> Result<&'a str, GgufError> = GgufFile::get_str;
    let _: fn(&GgufFile, &str) -> Result<u32, GgufError> = GgufFile::get_u32;
    let _: fn(&GgufFile, &str) -> Result<u64, GgufError> = GgufFile::get_u64;
    let _: fn(&GgufFile, &str) -> Result<f32, GgufError> = GgufFile::get_f32;
    let _: fn(&GgufFile, &str) -> Result<bool, GgufError> = GgufFile::get_bool;
    let _: for<'a> fn(&'a GgufFile, &str) -> Result<Vec<&'a str>, GgufError> = GgufFile::get_str_array;
    let _: fn(&GgufFile, &str) -> Result<Vec<i32>, GgufError> = GgufFile::get_i32_array;
    let _: fn(&GgufFile, &str) -> Result<Vec<f32>, GgufError> = GgufFile::get_f32_array;
    let _: for<'a> fn(&'a GgufFile, &str) -> Result<&'a TensorInfo, GgufError> = GgufFile::tensor_info;
    let _: for<'a> fn(&'a GgufFile, &TensorInfo) -> &'a [u8] = GgufFile::tensor_data;
    let _: fn(&GgufFile, &str) -> Result<Vec<f32>, GgufError> = GgufFile::dequantize_tensor;
    let _: fn(u16) -> f32 = quant::f16_to_f32;
    let _: fn(f32) -> u16 = quant::f32_to_f16;
    let _: fn(u16) -> f32 = quant::bf16_to_f32;
    type Dequantize = fn(GgmlType, &[u8], &mut [f32]) -> Result<(), GgufError>;
    let _: Dequantize = quant::dequantize;
    let _: fn() -> GgufWriter = GgufWriter::new;
    let _: fn(u32) -> GgufWriter = GgufWriter::with_version;
    let _: fn(&mut GgufWriter, &str, MetadataValue) = GgufWriter::add_metadata;
    let _: fn(&mut GgufWriter, &str, &[u64], GgmlType, Vec<u8>) = GgufWriter::add_tensor;
    let _: fn(&GgufWriter) -> Vec<u8> = GgufWriter::to_bytes;
    let _: fn(&GgufWriter, &Path) -> std::io::Result<()> = GgufWriter::write_to_path;
    assert_eq!((QK4_0, QK4_1, QK8_0, QK8_1), (32, 32, 32, 32));
    let f = GgufFile::from_bytes(GgufWriter::new().to_bytes()).unwrap();
    let _: (u32, &Vec<(String, MetadataValue)>, &Vec<TensorInfo>, u64) = (f.version, &f.metadata, &f.tensors, f.alignment);
}

#[test]
fn write_to_path_then_open_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let mut w = GgufWriter::with_version(2);
    w.add_metadata("general.architecture", MetadataValue::String("tiny".into()));
    w.add_metadata("tiny.block_count", MetadataValue::U32(2));
    w.add_metadata("tiny.eps", MetadataValue::F32(1e-5));
    w.add_metadata("tokenizer.tokens", MetadataValue::Array(vec![MetadataValue::String("a".into()), MetadataValue::String("b".into())]));
    let norm: Vec<u8> = [0.5f32; 32].iter().flat_map(|v| v.to_le_bytes()).collect();
    w.add_tensor("norm", &[32], GgmlType::F32, norm);
    let mut q41 = Vec::new();
    for row in 0..2u8 {
        q41.extend(quant::f32_to_f16(0.125).to_le_bytes());
        q41.extend(quant::f32_to_f16(row as f32).to_le_bytes());
        q41.extend([0x21u8; 16]); // low nibble 1, high nibble 2
    }
    w.add_tensor("w", &[32, 2], GgmlType::Q4_1, q41);
    w.write_to_path(&path).unwrap();

    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version, 2);
    assert_eq!(f.get_str("general.architecture").unwrap(), "tiny");
    assert_eq!(f.get_u32("tiny.block_count").unwrap(), 2);
    assert_eq!(f.get_f32("tiny.eps").unwrap(), 1e-5);
    assert_eq!(f.get_str_array("tokenizer.tokens").unwrap(), ["a", "b"]);
    let info = f.tensor_info("w").unwrap();
    assert_eq!((info.ggml_type, info.shape.as_slice(), info.n_rows()), (GgmlType::Q4_1, &[32u64, 2][..], 2));
    let v = f.dequantize_tensor("w").unwrap();
    assert_eq!(&v[..2], &[0.125, 0.125]);
    assert_eq!(v[16], 0.25);
    assert_eq!(v[32], 1.125);
    assert_eq!(v[63], 1.25);
    assert_eq!(f.dequantize_tensor("norm").unwrap(), vec![0.5; 32]);
}

/// The default model, fetched and verified (never skipped: without it the tests fail and say
/// why).
fn model_path() -> PathBuf {
    worker_orcd::fetch::fetch_named("smollm2").expect("default model (cargo xtask fetch-model)")
}

/// Order-sensitive checksum of exact f32 bits: sum of bits[i] * (2i+1) mod 2^64.
fn checksum(v: &[f32]) -> u64 {
    v.iter().enumerate().fold(0u64, |acc, (i, x)| acc.wrapping_add(u64::from(x.to_bits()).wrapping_mul(2 * i as u64 + 1)))
}

/// Reference numbers below were computed independently with the Python `gguf`
/// package from vendor/llama.cpp/gguf-py (GGUFReader + gguf.quants.dequantize,
/// numpy float32), in a throwaway script: value bits at a few indices, and the
/// same order-sensitive checksum over the whole dequantized tensor.
#[test]
fn real_model_matches_gguf_py() {
    let path = model_path();
    let f = GgufFile::open(&path).unwrap();

    assert_eq!(f.version, 3);
    assert_eq!(f.tensors.len(), 272);
    assert_eq!(f.metadata.len(), 33);
    assert_eq!(f.alignment, 32);
    assert_eq!(f.data_offset(), 1_785_664);
    assert_eq!(f.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(f.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(f.get_u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(f.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(f.get_u64("llama.context_length").unwrap(), 8192);
    assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(f.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(), 1e-5);
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert!(!f.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(f.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 1);
    assert_eq!(f.get_u32("tokenizer.ggml.eos_token_id").unwrap(), 2);

    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49_152);
    assert_eq!(tokens[0], "<|endoftext|>");
    assert_eq!(tokens[49_151], "ectable");
    let merges = f.get_str_array("tokenizer.ggml.merges").unwrap();
    assert_eq!(merges.len(), 48_900);
    assert_eq!(merges[0], "Ġ t");
    let types = f.get_i32_array("tokenizer.ggml.token_type").unwrap();
    assert_eq!(types.len(), 49_152);
    assert_eq!(&types[..5], &[3, 3, 3, 3, 3]);

    let count = |ty| f.tensors.iter().filter(|t| t.ggml_type == ty).count();
    assert_eq!((count(GgmlType::Q8_0), count(GgmlType::F32), count(GgmlType::Q4_1)), (1, 61, 210));

    let emb = f.tensor_info("token_embd.weight").unwrap();
    assert_eq!(emb.ggml_type, GgmlType::Q8_0);
    assert_eq!(emb.shape, vec![576, 49_152]);
    assert_eq!((emb.row_len(), emb.n_rows(), emb.offset), (576, 49_152, 0));
    assert_eq!(emb.n_bytes(), 30_081_024);
    assert_eq!(f.tensor_data(emb).len(), 30_081_024);
    let q = f.tensor_info("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.ggml_type, GgmlType::Q4_1);
    assert_eq!(q.shape, vec![576, 576]);
    let down = f.tensor_info("blk.0.ffn_down.weight").unwrap();
    assert_eq!((down.shape.as_slice(), down.offset), (&[1536u64, 576][..], 30_083_328));

    type Case = (&'static str, &'static [(usize, u32)], u64);
    let cases: [Case; 4] = [
        (
            "token_embd.weight",
            &[(0, 0xbdda3400), (1, 0x3d071400), (31, 0xbe4d3700), (32, 0xbdbf7600), (576, 0xbcc30000), (28_311_551, 0xbd2ad000)],
            0xee6fa1c00885e840,
        ),
        (
            "blk.0.attn_q.weight",
            &[
                (0, 0xbdc54000),
                (1, 0x3e212000),
                (15, 0x3f09b000),
                (16, 0xbe648000),
                (17, 0x3e918000),
                (31, 0xbdc54000),
                (32, 0xbeb14000),
                (577, 0xbdf04000),
                (331_775, 0xbe830000),
            ],
            0x9308b2b13a947200,
        ),
        ("blk.29.ffn_down.weight", &[], 0x77afc6edc381ae00),
        ("output_norm.weight", &[(0, 0x3fe10000), (575, 0x3ffe0000)], 0x144868d320000),
    ];
    for (name, values, sum) in cases {
        let v = f.dequantize_tensor(name).unwrap();
        assert_eq!(v.len() as u64, f.tensor_info(name).unwrap().n_elements(), "{name}");
        for &(i, bits) in values {
            assert_eq!(v[i].to_bits(), bits, "{name}[{i}] = {}, want {}", v[i], f32::from_bits(bits));
        }
        assert_eq!(checksum(&v), sum, "{name}: checksum");
    }
    // Human-readable spot checks of the same numbers.
    let v = f.dequantize_tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(v[0], -0.096_313_48);
    assert_eq!(f.dequantize_tensor("output_norm.weight").unwrap()[0], 1.757_812_5);
}

/// The xtask use case: cut a smaller model out of the real one with the writer
/// and check the copy is faithful.
#[test]
fn cut_a_small_model_from_the_real_one() {
    let path = model_path();
    let src = GgufFile::open(&path).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &src.metadata {
        w.add_metadata(k, v.clone());
    }
    w.add_metadata("llama.block_count", MetadataValue::U32(1));
    let keep: Vec<&TensorInfo> = src.tensors.iter().filter(|t| !t.name.starts_with("blk.") || t.name.starts_with("blk.0.")).collect();
    for t in &keep {
        w.add_tensor(&t.name, &t.shape, t.ggml_type, src.tensor_data(t).to_vec());
    }
    let cut = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(cut.get_u32("llama.block_count").unwrap(), 1);
    assert_eq!(cut.metadata.len(), src.metadata.len());
    assert_eq!(cut.tensors.len(), keep.len());
    assert_eq!(cut.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 49_152);
    for t in &keep {
        let c = cut.tensor_info(&t.name).unwrap();
        assert_eq!((&c.shape, c.ggml_type), (&t.shape, t.ggml_type));
        assert_eq!(cut.tensor_data(c), src.tensor_data(t), "{}", t.name);
    }
}

#[derive(serde::Deserialize)]
struct DequantEntry {
    #[serde(rename = "type")]
    ty: String,
    sha256: String,
}

#[derive(serde::Deserialize)]
struct DequantTable {
    files: std::collections::BTreeMap<String, std::collections::BTreeMap<String, DequantEntry>>,
    rows: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

fn dequant_table() -> DequantTable {
    serde_json::from_str(include_str!("../../recordings/quantize/dequant_sha256.json")).expect("dequant_sha256.json parses")
}

fn f32_sha256(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    crate::quantize::sha256_hex(&bytes)
}

/// Real tensors of every type in the named models (Qwen2.5-Coder Q4_K_M for Q5_0/Q8_0/Q4_K/Q6_K,
/// the project's own SmolLM2 files for the rest), dequantized bit for bit like gguf-py
/// (xtask/python/dequant_oracle.py recorded the sha256 of its f32 output).
#[test]
fn real_tensors_dequantize_like_gguf_py() {
    let table = dequant_table();
    let mut types = std::collections::HashSet::new();
    let mut failures = Vec::new();
    for (name, tensors) in &table.files {
        let path = worker_orcd::fetch::fetch_named(name).unwrap_or_else(|e| panic!("fetch {name}: {e}"));
        let f = GgufFile::open(&path).unwrap();
        for (tensor, want) in tensors {
            let info = f.tensor_info(tensor).unwrap();
            // gguf-py spells the types in upper case, ggml as q4_K.
            assert!(info.ggml_type.name().eq_ignore_ascii_case(&want.ty), "{name} {tensor}: {} is not {}", info.ggml_type, want.ty);
            types.insert(info.ggml_type);
            let v = f.dequantize_tensor(tensor).unwrap();
            if f32_sha256(&v) != want.sha256 {
                failures.push(format!("{name} {tensor} ({})", want.ty));
            }
        }
    }
    assert!(failures.is_empty(), "differ from gguf-py: {failures:?}");
    let expected = [
        GgmlType::F32,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_NL,
    ];
    for ty in expected {
        assert!(types.contains(&ty), "no real {ty} tensor was checked");
    }
}

/// The rows of recordings/quantize/rows_sha256.json in every block type (Q2_K included, which no
/// SmolLM2 file type contains), quantized by our quantizer (checked byte for byte against
/// ggml there) and dequantized here, against gguf-py's dequantization of ggml's bytes.
#[test]
fn quantized_rows_of_every_type_dequantize_like_gguf_py() {
    let table = dequant_table();
    let mut failures = Vec::new();
    let mut n = 0;
    for (name, case) in crate::quantize::rows_table() {
        let x = crate::quantize::case_rows(&name, &case);
        for (ty, want) in &table.rows[&name] {
            let ty = crate::quantize::ggml_type(ty);
            let mut q = vec![0u8; ty.row_bytes(x.len()).unwrap()];
            worker_orcd::quantize::rows::quantize_rows(ty, &x, &mut q).unwrap();
            assert_eq!(&crate::quantize::sha256_hex(&q), &case.types[ty.name()], "{name} {ty}: not ggml's bytes");
            let mut back = vec![0f32; x.len()];
            quant::dequantize(ty, &q, &mut back).unwrap();
            n += 1;
            if &f32_sha256(&back) != want {
                failures.push(format!("{name} {ty}"));
            }
        }
    }
    assert!(failures.is_empty(), "differ from gguf-py: {failures:?}");
    assert!(n >= 40, "only {n} cases");
}
