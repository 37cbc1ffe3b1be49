//! `worker-orcd quantize` against llama.cpp, without llama.cpp: the committed sha256 of
//! `llama_model_quantize`'s output for every file type (recordings/quantize/
//! llama_cpp_sha256.json) and of `ggml_quantize_chunk` on real and synthetic rows
//! (rows_sha256.json), both made by xtask/python/quantize_reference.py, and of requantizing
//! Qwen2.5-Coder and Gemma-3 (llama_cpp_extra_sha256.json). Plus thread-count
//! independence, the subcommand, and refusals of inputs llama.cpp also refuses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rstest::rstest;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use worker_orcd::gguf::writer::GgufWriter;
use worker_orcd::gguf::{GgmlType, GgufFile, MetadataValue};
use worker_orcd::quantize::{quantize_file, rows, FileType, QuantizeError};

const TABLE: &str = include_str!("../../recordings/quantize/llama_cpp_sha256.json");
const ROWS: &str = include_str!("../../recordings/quantize/rows_sha256.json");
const EXTRA: &str = include_str!("../../recordings/quantize/llama_cpp_extra_sha256.json");

#[derive(Deserialize)]
struct Entry {
    size: u64,
    sha256: String,
}

#[derive(Deserialize)]
struct Input {
    sha256: String,
}

#[derive(Deserialize)]
struct Table {
    input: Input,
    files: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct ExtraModel {
    input_sha256: String,
    files: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct ExtraTable {
    models: BTreeMap<String, ExtraModel>,
}

#[derive(Deserialize)]
pub struct RowCase {
    pub rows: usize,
    pub n_per_row: usize,
    pub input_sha256: String,
    pub types: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RowsTable {
    cases: BTreeMap<String, RowCase>,
}

fn table() -> Table {
    serde_json::from_str(TABLE).expect("llama_cpp_sha256.json parses")
}

pub fn rows_table() -> BTreeMap<String, RowCase> {
    serde_json::from_str::<RowsTable>(ROWS).expect("rows_sha256.json parses").cases
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_file(path: &Path) -> String {
    worker_orcd::fetch::sha256_file(path).expect("hash the output")
}

/// The real default model, whatever WORKER_ORCD_MODEL says (the table is for its bytes).
fn smollm2() -> PathBuf {
    let path = worker_orcd::fetch::fetch_named("smollm2").expect("fetch the default model (cargo xtask fetch-model)");
    assert_eq!(sha256_file(&path), table().input.sha256, "the committed table was made from this file");
    path
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Quantizes the default model into `ftype` in a temporary directory and compares the file's
/// size and sha256 with llama.cpp's output.
fn assert_like_llama_cpp(ftype: &str, threads: usize) -> Vec<u8> {
    let want = &table().files[ftype];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(format!("{ftype}.gguf"));
    let t0 = std::time::Instant::now();
    let report = quantize_file(&smollm2(), &out, ftype.parse().unwrap(), threads).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let bytes = std::fs::read(&out).unwrap();
    eprintln!("{ftype}: {} bytes in {secs:.1} s ({threads} threads)", bytes.len());
    assert_eq!(bytes.len() as u64, want.size, "{ftype}: size differs from llama.cpp's");
    assert_eq!(report.bytes_out, want.size);
    assert_eq!(sha256_hex(&bytes), want.sha256, "{ftype}: bytes differ from llama.cpp's output");
    bytes
}

#[rstest]
#[case::q4_k_m("Q4_K_M")]
#[case::q5_k_m("Q5_K_M")]
#[case::q6_k("Q6_K")]
#[case::q5_0("Q5_0")]
#[case::q8_0("Q8_0")]
#[case::q2_k("Q2_K")]
#[case::iq4_nl("IQ4_NL")]
#[case::q4_0("Q4_0")]
#[case::q4_1("Q4_1")]
#[case::q5_1("Q5_1")]
#[case::q3_k_s("Q3_K_S")]
#[case::q3_k_m("Q3_K_M")]
#[case::q3_k_l("Q3_K_L")]
#[case::q4_k_s("Q4_K_S")]
#[case::q5_k_s("Q5_K_S")]
#[case::f16("F16")]
#[case::bf16("BF16")]
#[case::f32("F32")]
fn smollm2_quantizes_byte_identically_to_llama_cpp(#[case] ftype: &str) {
    assert_like_llama_cpp(ftype, 2);
}

/// Every file type in the committed table has a case above, and every case is in the table.
#[test]
fn every_recorded_file_type_is_tested() {
    let src = include_str!("quantize.rs");
    for name in table().files.keys() {
        assert!(src.contains(&format!("#[case::{}(\"{name}\")]", name.to_lowercase())), "{name} has no test case");
        assert!(name.parse::<FileType>().is_ok(), "{name} is not a FileType");
    }
}

/// Requantizing the other named models (qwen2 and gemma3, untied and tied embeddings, K-quant
/// inputs) gives llama.cpp's bytes too (llama_cpp_extra_sha256.json).
#[rstest]
#[case::qwen_q4_k_m("qwen2.5-coder-0.5b-q4_k_m", "Q4_K_M")]
#[case::qwen_q8_0("qwen2.5-coder-0.5b-q4_k_m", "Q8_0")]
#[case::qwen_q5_k_m("qwen2.5-coder-0.5b-q4_k_m", "Q5_K_M")]
#[case::qwen_q2_k("qwen2.5-coder-0.5b-q4_k_m", "Q2_K")]
#[case::qwen_iq4_nl("qwen2.5-coder-0.5b-q4_k_m", "IQ4_NL")]
#[case::gemma_q4_k_m("gemma3-270m-q4_k_m", "Q4_K_M")]
#[case::gemma_q8_0("gemma3-270m-q4_k_m", "Q8_0")]
#[case::gemma_q5_k_m("gemma3-270m-q4_k_m", "Q5_K_M")]
#[case::gemma_q2_k("gemma3-270m-q4_k_m", "Q2_K")]
#[case::gemma_iq4_nl("gemma3-270m-q4_k_m", "IQ4_NL")]
fn other_models_requantize_byte_identically_to_llama_cpp(#[case] model: &str, #[case] ftype: &str) {
    let table: ExtraTable = serde_json::from_str(EXTRA).expect("llama_cpp_extra_sha256.json parses");
    let m = &table.models[model];
    let want = &m.files[ftype];
    let input = worker_orcd::fetch::fetch_named(model).unwrap_or_else(|e| panic!("fetch {model}: {e}"));
    assert_eq!(sha256_file(&input), m.input_sha256, "{model}: not the input llama.cpp quantized");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    quantize_file(&input, &out, ftype.parse().unwrap(), 2).unwrap();
    let found = std::fs::metadata(&out).unwrap().len();
    assert_eq!(found, want.size, "{model} {ftype}: size differs from llama.cpp's");
    assert_eq!(sha256_file(&out), want.sha256, "{model} {ftype}: bytes differ from llama.cpp's output");
}

#[test]
fn every_recorded_extra_model_and_type_is_tested() {
    let table: ExtraTable = serde_json::from_str(EXTRA).unwrap();
    let src = include_str!("quantize.rs");
    for (model, m) in &table.models {
        for ftype in m.files.keys() {
            let case = format!("(\"{model}\", \"{ftype}\")]");
            assert!(src.contains(&case), "{model} {ftype} has no test case");
        }
    }
}

#[test]
fn output_is_the_same_for_any_thread_count() {
    let one = assert_like_llama_cpp("Q4_K_M", 1);
    let three = assert_like_llama_cpp("Q4_K_M", 3);
    assert!(one == three, "1 and 3 threads gave different bytes");
}

/// `synthetic_rows` of xtask/python/quantize_reference.py, rebuilt from the same bit recipe.
pub fn synthetic_rows(n_per_row: usize) -> Vec<f32> {
    let mut state: u64 = 0x5eed;
    let mut uni = vec![0f32; n_per_row];
    let mut ties = vec![0f32; n_per_row];
    for i in 0..n_per_row {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let u = z ^ (z >> 31);
        uni[i] = ((u >> 40) as f32 / 16_777_216.0) * 2.0 - 1.0;
        ties[i] = ((u >> 60) as f32 - 8.0) / 4.0;
    }
    let mut rows = vec![0f32; 10 * n_per_row];
    let mut row = |r: usize, f: &dyn Fn(usize) -> f32| {
        for i in 0..n_per_row {
            rows[r * n_per_row + i] = f(i);
        }
    };
    row(1, &|_| 0.25);
    row(2, &|_| -3.0);
    row(3, &|i| uni[i]);
    row(4, &|i| uni[i] * 1e-20);
    row(5, &|i| if i % 37 == 0 { 40.0 } else { uni[i] });
    row(6, &|i| ties[i]);
    row(7, &|i| uni[i] * 3e4);
    row(8, &|i| uni[i].abs());
    row(9, &|i| -uni[i].abs());
    rows
}

/// The f32 rows of one case of rows_sha256.json, checked against the recorded input hash.
pub fn case_rows(name: &str, case: &RowCase) -> Vec<f32> {
    let x = if name.starts_with("synthetic-") {
        synthetic_rows(case.n_per_row)
    } else {
        let model = GgufFile::open(&smollm2()).unwrap();
        model.dequantize_tensor(name).unwrap()
    };
    assert_eq!(x.len(), case.rows * case.n_per_row, "{name}: shape");
    assert_eq!(sha256_hex(&f32_bytes(&x)), case.input_sha256, "{name}: not the rows llama.cpp quantized");
    x
}

pub fn ggml_type(name: &str) -> GgmlType {
    GgmlType::ALL.into_iter().find(|t| t.name() == name).unwrap_or_else(|| panic!("no ggml type {name}"))
}

/// Every block quantizer, including those no SmolLM2 file type reaches (Q2_K) and the edge
/// cases of synthetic rows, against `ggml_quantize_chunk`.
#[test]
fn rows_quantize_like_ggml_quantize_chunk() {
    let mut failures = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (name, case) in rows_table() {
        let x = case_rows(&name, &case);
        for (ty, want) in &case.types {
            let ty = ggml_type(ty);
            let mut out = vec![0u8; ty.row_bytes(x.len()).unwrap()];
            rows::quantize_rows(ty, &x, &mut out).unwrap();
            seen.insert(ty);
            if &sha256_hex(&out) != want {
                failures.push(format!("{name} -> {ty}"));
            }
        }
    }
    assert!(failures.is_empty(), "differ from ggml: {failures:?}");
    let all = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_NL,
    ];
    assert_eq!(seen.len(), all.len(), "types covered: {seen:?}");
}

#[test]
fn the_subcommand_writes_the_file_and_names_a_bad_type() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q8.gguf");
    let run = |args: &[&std::ffi::OsStr]| std::process::Command::new(env!("CARGO_BIN_EXE_worker-orcd")).args(args).output().unwrap();
    let input = smollm2();
    let ok = run(&["quantize".as_ref(), input.as_os_str(), out.as_os_str(), "q8_0".as_ref(), "--threads".as_ref(), "2".as_ref()]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(sha256_file(&out), table().files["Q8_0"].sha256);
    let bad = run(&["quantize".as_ref(), input.as_os_str(), out.as_os_str(), "Q9_K".as_ref()]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("TYPE") && err.contains("Q9_K"), "{err}");
}

/// A tiny llama-shaped model: one 2-D weight of `ty` and a norm.
fn tiny(dir: &Path, weight_ty: GgmlType, data: Vec<u8>, extra: &[(&str, MetadataValue)]) -> PathBuf {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", MetadataValue::String("llama".into()));
    w.add_metadata("llama.block_count", MetadataValue::U32(1));
    w.add_metadata("llama.attention.head_count", MetadataValue::U32(1));
    for (k, v) in extra {
        w.add_metadata(k, v.clone());
    }
    w.add_tensor("blk.0.attn_q.weight", &[32, 2], weight_ty, data);
    w.add_tensor("blk.0.attn_norm.weight", &[32], GgmlType::F32, f32_bytes(&[1.0; 32]));
    let path = dir.join("tiny.gguf");
    w.write_to_path(&path).unwrap();
    path
}

#[test]
fn inputs_llama_cpp_refuses_are_errors_naming_the_culprit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    // A NaN weight (llama.cpp's loader validates tensor data).
    let mut x = vec![0.5f32; 64];
    x[33] = f32::NAN;
    let p = tiny(dir.path(), GgmlType::F32, f32_bytes(&x), &[]);
    let err = quantize_file(&p, &out, FileType::Q8_0, 1).unwrap_err();
    assert!(matches!(err, QuantizeError::NonFinite { index: 33, .. }), "{err}");
    assert!(err.to_string().contains("blk.0.attn_q.weight"), "{err}");
    assert!(!out.exists(), "no output after an error");
    // An integer matrix has no dequantization, so it cannot be requantized.
    let p = tiny(dir.path(), GgmlType::I32, vec![0u8; 256], &[]);
    let err = quantize_file(&p, &out, FileType::Q8_0, 1).unwrap_err();
    assert!(matches!(err, QuantizeError::CannotDequantize { .. }), "{err}");
    // Missing hyperparameters.
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", MetadataValue::String("llama".into()));
    let p = dir.path().join("nohp.gguf");
    w.write_to_path(&p).unwrap();
    let err = quantize_file(&p, &out, FileType::Q8_0, 1).unwrap_err();
    assert!(err.to_string().contains("llama.block_count"), "{err}");
    // Not a GGUF file at all.
    std::fs::write(&p, b"not gguf").unwrap();
    let err = quantize_file(&p, &out, FileType::Q8_0, 1).unwrap_err();
    assert!(err.to_string().contains("nohp.gguf"), "{err}");
    // An alignment llama.cpp would not honour.
    let p = tiny(dir.path(), GgmlType::F32, f32_bytes(&[0.5; 64]), &[("general.alignment", MetadataValue::U32(64))]);
    let err = quantize_file(&p, &out, FileType::Q8_0, 1).unwrap_err();
    assert!(matches!(err, QuantizeError::Alignment { alignment: 64 }), "{err}");
    // Q2_K_S without an importance matrix (the real model has 1536-wide ffn_down rows).
    let err = quantize_file(&smollm2(), &out, FileType::Q2_K_S, 1).unwrap_err();
    assert!(matches!(err, QuantizeError::RequiresImatrix { .. }), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_tiny_model_quantizes_into_a_file_our_reader_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let x: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) / 16.0).collect();
    let p = tiny(dir.path(), GgmlType::F32, f32_bytes(&x), &[("general.file_type", MetadataValue::U32(0))]);
    let out = dir.path().join("out.gguf");
    quantize_file(&p, &out, FileType::Q4_K_M, 1).unwrap();
    let f = GgufFile::open(&out).unwrap();
    // Globals first (none here), then blk.0 by name; 32-wide rows fall back from Q4_K to Q5_0.
    let names: Vec<(&str, GgmlType)> = f.tensors.iter().map(|t| (t.name.as_str(), t.ggml_type)).collect();
    assert_eq!(names, [("blk.0.attn_norm.weight", GgmlType::F32), ("blk.0.attn_q.weight", GgmlType::Q5_0)]);
    let keys: Vec<&str> = f.metadata.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys.last_chunk::<2>().unwrap(), &["general.quantization_version", "general.file_type"]);
    assert_eq!(f.get_u32("general.file_type").unwrap(), 15);
    assert_eq!(f.get_u32("general.quantization_version").unwrap(), 2);
    let back = f.dequantize_tensor("blk.0.attn_q.weight").unwrap();
    let err = back.iter().zip(&x).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(err < 0.07, "q5_0 round trip error {err}");
}
