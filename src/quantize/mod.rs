//! `worker-orcd quantize IN OUT TYPE`: rewrites a GGUF model in another
//! llama.cpp file type, producing the same bytes as llama.cpp's
//! `llama_model_quantize` (llama-cpp-python 0.3.36) with `allow_requantize` on,
//! no importance matrix and default parameters otherwise.
//!
//! Layout, in data-flow order: `ftype` (file type names, ids, default types) →
//! `mix` (which type each tensor gets, `llama_tensor_get_type`) → `layout`
//! (tensor order, metadata, offsets) → `rows` (dequantize to f32 like ggml, then
//! the reference quantizers `legacy`, `kquants`, `iq4nl`, rounding helpers in
//! `round`) → the file, written here. `cli` is the subcommand.
//!
//! Like llama.cpp, a quantized input is dequantized to f32 first and quantized
//! again; a tensor already of its target type is copied. Every row is quantized
//! independently, so the output does not depend on the number of threads.
//! **Invariant:** this module never changes what `gguf` reads; it only writes.
//! What it does not do: importance matrices, tensor-type overrides, `pure`,
//! pruning, split files, and the IQ1/IQ2/IQ3/ternary/MXFP4 file types.

pub mod cli;
mod error;
pub mod ftype;
pub mod iq4nl;
pub mod kquants;
pub mod layout;
pub mod legacy;
pub mod mix;
pub mod round;
pub mod rows;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::gguf::{GgmlType, GgufFile, MetadataValue};

pub use error::QuantizeError;
pub use ftype::FileType;
pub use mix::MixParams;

/// What happened to one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorReport {
    pub name: String,
    pub from: GgmlType,
    pub to: GgmlType,
    pub bytes: u64,
}

/// What `quantize_file` wrote.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    /// In output order.
    pub tensors: Vec<TensorReport>,
    /// Tensors whose row width forced a smaller-block type.
    pub n_fallback: usize,
    pub bytes_out: u64,
    pub seconds: f64,
}

/// The model hyperparameters the mix needs, from the input's metadata.
pub fn mix_params(file: &GgufFile) -> Result<MixParams, QuantizeError> {
    let meta = |key: &str, source| QuantizeError::Metadata { key: key.to_string(), source };
    let arch = file.get_str("general.architecture").map_err(|e| meta("general.architecture", e))?.to_string();
    let key = |k: &str| format!("{arch}.{k}");
    let block_count = key("block_count");
    let n_layer = file.get_u32(&block_count).map_err(|e| meta(&block_count, e))?;
    // Head counts may be per-layer arrays; llama.cpp's n_gqa() reads layer 0.
    let first_u32 = |k: &str| -> Result<Option<u32>, QuantizeError> {
        match file.metadata(k) {
            None => Ok(None),
            Some(MetadataValue::Array(items)) => {
                let v = items.first().and_then(MetadataValue::as_u64).and_then(|v| u32::try_from(v).ok());
                v.map(Some)
                    .ok_or_else(|| QuantizeError::Hyperparameter { key: k.to_string(), found: format!("an array whose first element is {:?}", items.first()) })
            }
            Some(_) => file.get_u32(k).map(Some).map_err(|e| meta(k, e)),
        }
    };
    let n_head = first_u32(&key("attention.head_count"))?.unwrap_or(0);
    let n_head_kv = first_u32(&key("attention.head_count_kv"))?.unwrap_or(n_head);
    let n_expert = first_u32(&key("expert_count"))?.unwrap_or(0);
    // LLM_TYPE_70B as each architecture's load_hparams assigns it (only that size
    // class changes the mix).
    let is_70b = match arch.as_str() {
        "llama" => n_layer == 80 && n_head != n_head_kv,
        "qwen2" | "deci" | "olmo" => n_layer == 80,
        "jais2" => n_layer == 68,
        _ => false,
    };
    Ok(MixParams { arch, n_layer, n_head, n_head_kv, n_expert, is_70b })
}

/// The output type of every tensor, in output order: `(input tensor index, type)`.
pub fn plan(file: &GgufFile, ftype: FileType) -> Result<(Vec<usize>, Vec<GgmlType>, usize), QuantizeError> {
    let params = mix_params(file)?;
    let order = layout::processing_order(&file.tensors);
    let mut mix = mix::Mix::new(&params, ftype, order.iter().map(|&i| file.tensors[i].name.as_str()));
    let mut types = Vec::with_capacity(order.len());
    for &i in &order {
        let t = &file.tensors[i];
        let ty = mix.target_type(t)?;
        if mix::allows_quantization(&params.arch, t) && mix::requires_imatrix(&t.name, ty, ftype) {
            return Err(QuantizeError::RequiresImatrix { tensor: t.name.clone(), ty, ftype });
        }
        types.push(ty);
    }
    Ok((order, types, mix.n_fallback))
}

/// Quantizes `input` into `output` as file type `ftype` on `threads` threads (0:
/// all cores). The file is written under a temporary name and renamed at the end.
pub fn quantize_file(input: &Path, output: &Path, ftype: FileType, threads: usize) -> Result<QuantizeReport, QuantizeError> {
    let start = Instant::now();
    let file = GgufFile::open(input).map_err(|source| QuantizeError::Open { path: input.to_path_buf(), source })?;
    if file.alignment != layout::OUTPUT_ALIGNMENT {
        return Err(QuantizeError::Alignment { alignment: file.alignment });
    }
    if let Some(count) = file.metadata("split.count").and_then(MetadataValue::as_u64).filter(|&c| c > 1) {
        return Err(QuantizeError::Split { count });
    }
    let (order, types, n_fallback) = plan(&file, ftype)?;
    let out_tensors = layout::assign_offsets(&file.tensors, &order, &types).ok_or(QuantizeError::OutputTooLarge)?;
    let meta = layout::encode_meta(&file, ftype, &out_tensors);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| QuantizeError::Threads { threads, detail: e.to_string() })?;

    let partial = partial_path(output);
    let io = |source| QuantizeError::Io { path: partial.clone(), source };
    let result = (|| {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&partial).map_err(io)?);
        w.write_all(&meta).map_err(io)?;
        let mut written = meta.len() as u64;
        let mut tensors = Vec::with_capacity(out_tensors.len());
        for t in &out_tensors {
            let info = &file.tensors[t.index];
            let data = file.tensor_data(info);
            let n_per_row = info.row_len() as usize;
            let new = pool.install(|| {
                if t.ty == info.ggml_type {
                    rows::validate_tensor(&info.name, info.ggml_type, data, n_per_row).map(|()| None)
                } else {
                    rows::convert_tensor(&info.name, info.ggml_type, data, n_per_row, t.ty).map(Some)
                }
            })?;
            let bytes = new.as_deref().unwrap_or(data);
            debug_assert_eq!(bytes.len() as u64, t.n_bytes);
            w.write_all(bytes).map_err(io)?;
            let padding = (t.n_bytes.div_ceil(32) * 32 - t.n_bytes) as usize;
            w.write_all(&[0u8; 32][..padding]).map_err(io)?;
            written += t.n_bytes + padding as u64;
            tensors.push(TensorReport { name: info.name.clone(), from: info.ggml_type, to: t.ty, bytes: t.n_bytes });
        }
        w.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
        Ok((tensors, written))
    })();
    let (tensors, bytes_out) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, output).map_err(|source| QuantizeError::Io { path: output.to_path_buf(), source })?;
    Ok(QuantizeReport { tensors, n_fallback, bytes_out, seconds: start.elapsed().as_secs_f64() })
}

/// `OUT.partial-PID` next to the output, so a crash never leaves a file under the
/// final name and concurrent runs never share a temporary file.
fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".partial-{}", std::process::id()));
    output.with_file_name(name)
}
