//! The llama model as typed data: its configuration (the only place llama's GGUF key strings
//! appear) and views of its weight tensors.
//!
//! This module validates shapes and types once, at load, so backends can index weights without
//! checks. It computes nothing.

use std::path::Path;
use std::sync::Arc;

use crate::backend::cpu::quant::{self, QMatrix};
use crate::gguf::{GgmlType, GgufError, GgufFile, TensorInfo};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported architecture {arch:?}: only llama is implemented")]
    UnsupportedArch { arch: String },
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    BadShape { name: String, expected: Vec<u64>, found: Vec<u64> },
    #[error("tensor {name} has type {ty}, which the matrix product does not support")]
    UnsupportedType { name: String, ty: &'static str },
    #[error("tensor {name} has rows of {n} elements, not a multiple of the {block}-element blocks of {ty}")]
    BadRowLength { name: String, ty: &'static str, n: u64, block: usize },
    #[error("invalid configuration: {what}")]
    BadConfig { what: String },
}

/// Hyper-parameters of a llama-architecture model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub n_layers: usize,
    pub dim: usize,
    pub ffn_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
}

impl ModelConfig {
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig, ModelError> {
        let arch = file.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(ModelError::UnsupportedArch { arch: arch.to_string() });
        }
        let n_layers = file.get_u32("llama.block_count")? as usize;
        let dim = file.get_u32("llama.embedding_length")? as usize;
        let ffn_dim = file.get_u32("llama.feed_forward_length")? as usize;
        let n_heads = file.get_u32("llama.attention.head_count")? as usize;
        let n_kv_heads = match file.metadata("llama.attention.head_count_kv") {
            Some(_) => file.get_u32("llama.attention.head_count_kv")? as usize,
            None => n_heads,
        };
        let n_vocab = match file.metadata("llama.vocab_size") {
            Some(_) => file.get_u32("llama.vocab_size")? as usize,
            None => file.tensor_info("token_embd.weight")?.shape.get(1).copied().unwrap_or(0) as usize,
        };
        let rope_base = match file.metadata("llama.rope.freq_base") {
            Some(_) => file.get_f32("llama.rope.freq_base")?,
            None => 10000.0,
        };
        let cfg = ModelConfig {
            n_layers,
            dim,
            ffn_dim,
            n_heads,
            n_kv_heads,
            head_dim: if n_heads == 0 { 0 } else { dim / n_heads },
            n_vocab,
            n_ctx_train: file.get_u32("llama.context_length")? as usize,
            rope_base,
            rms_eps: file.get_f32("llama.attention.layer_norm_rms_epsilon")?,
        };
        cfg.validate()?;
        if let Some(v) = file.metadata("llama.rope.dimension_count") {
            if v.as_u64() != Some(cfg.head_dim as u64) {
                return Err(ModelError::BadConfig { what: format!("partial rope (rope.dimension_count {v:?}) is not supported") });
            }
        }
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let bad = |what: String| Err(ModelError::BadConfig { what });
        if self.n_layers == 0 || self.dim == 0 || self.n_heads == 0 || self.n_kv_heads == 0 || self.n_vocab == 0 {
            return bad(format!("zero-sized dimension in {self:?}"));
        }
        if self.dim % self.n_heads != 0 || self.head_dim % 2 != 0 {
            return bad(format!("embedding {} is not divisible into {} heads of even size", self.dim, self.n_heads));
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return bad(format!("{} heads cannot be grouped over {} kv heads", self.n_heads, self.n_kv_heads));
        }
        if self.dim % quant::QK != 0 || self.ffn_dim % quant::QK != 0 {
            return bad(format!("dimensions {} / {} are not multiples of {}", self.dim, self.ffn_dim, quant::QK));
        }
        if self.dim > 1 << 16 || self.ffn_dim > 1 << 18 || self.n_layers > 1024 || self.n_vocab > 1 << 22 {
            return bad(format!("implausibly large model {self:?}"));
        }
        Ok(())
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// A weight tensor: where it lies in the file and how to read it.
#[derive(Debug, Clone)]
pub struct Weight {
    pub info: TensorInfo,
}

impl Weight {
    pub fn ty(&self) -> GgmlType {
        self.info.ggml_type
    }
}

/// Weights of one transformer block. Biases are optional (llama has none; some derived models
/// and our small test models do).
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: Weight,
    pub wq: Weight,
    pub wk: Weight,
    pub wv: Weight,
    pub bq: Option<Weight>,
    pub bk: Option<Weight>,
    pub bv: Option<Weight>,
    pub wo: Weight,
    pub ffn_norm: Weight,
    pub w_gate: Weight,
    pub w_up: Weight,
    pub w_down: Weight,
}

/// A loaded model: configuration, the memory-mapped file and validated weight views.
pub struct Model {
    pub config: ModelConfig,
    pub file: Arc<GgufFile>,
    pub token_embd: Weight,
    pub layers: Vec<LayerWeights>,
    pub output_norm: Weight,
    /// The output projection: `output.weight`, or `token_embd.weight` when tied.
    pub output: Weight,
    /// Display name (`general.name`, else the file name).
    pub name: String,
}

impl Model {
    pub fn open(path: &Path) -> Result<Model, ModelError> {
        let file = GgufFile::open(path)?;
        let mut model = Model::from_gguf(Arc::new(file))?;
        if model.name.is_empty() {
            model.name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        }
        Ok(model)
    }

    pub fn from_gguf(file: Arc<GgufFile>) -> Result<Model, ModelError> {
        let c = ModelConfig::from_gguf(&file)?;
        let (dim, kv, ffn) = (c.dim as u64, c.kv_dim() as u64, c.ffn_dim as u64);
        let get = |name: String, shape: &[u64], matrix: bool| -> Result<Weight, ModelError> {
            let info = file.tensor_info(&name)?.clone();
            if info.shape != shape {
                return Err(ModelError::BadShape { name, expected: shape.to_vec(), found: info.shape });
            }
            if matrix && !quant::supports(info.ggml_type) {
                return Err(ModelError::UnsupportedType { name, ty: info.ggml_type.name() });
            }
            // A row must hold whole blocks (256 elements for the k-quants).
            if matrix && info.shape[0] % info.ggml_type.block_size() as u64 != 0 {
                return Err(ModelError::BadRowLength { name, ty: info.ggml_type.name(), n: info.shape[0], block: info.ggml_type.block_size() });
            }
            if !matrix && info.ggml_type != GgmlType::F32 {
                return Err(ModelError::UnsupportedType { name, ty: info.ggml_type.name() });
            }
            Ok(Weight { info })
        };
        let opt = |name: String, shape: &[u64]| -> Result<Option<Weight>, ModelError> {
            if file.tensor_info(&name).is_ok() {
                get(name, shape, false).map(Some)
            } else {
                Ok(None)
            }
        };
        let token_embd = get("token_embd.weight".into(), &[dim, c.n_vocab as u64], true)?;
        // Embedding rows are dequantized with `gguf::quant` (`ops::embedding`).
        if !crate::gguf::quant::can_dequantize(token_embd.ty()) {
            return Err(ModelError::UnsupportedType { name: "token_embd.weight".into(), ty: token_embd.ty().name() });
        }
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let n = |s: &str| format!("blk.{l}.{s}");
            layers.push(LayerWeights {
                attn_norm: get(n("attn_norm.weight"), &[dim], false)?,
                wq: get(n("attn_q.weight"), &[dim, dim], true)?,
                wk: get(n("attn_k.weight"), &[dim, kv], true)?,
                wv: get(n("attn_v.weight"), &[dim, kv], true)?,
                bq: opt(n("attn_q.bias"), &[dim])?,
                bk: opt(n("attn_k.bias"), &[kv])?,
                bv: opt(n("attn_v.bias"), &[kv])?,
                wo: get(n("attn_output.weight"), &[dim, dim], true)?,
                ffn_norm: get(n("ffn_norm.weight"), &[dim], false)?,
                w_gate: get(n("ffn_gate.weight"), &[dim, ffn], true)?,
                w_up: get(n("ffn_up.weight"), &[dim, ffn], true)?,
                w_down: get(n("ffn_down.weight"), &[ffn, dim], true)?,
            });
        }
        let output_norm = get("output_norm.weight".into(), &[dim], false)?;
        let output = match file.tensor_info("output.weight") {
            Ok(_) => get("output.weight".into(), &[dim, c.n_vocab as u64], true)?,
            Err(_) => token_embd.clone(),
        };
        let name = file.get_str("general.name").unwrap_or("").to_string();
        Ok(Model { config: c, file, token_embd, layers, output_norm, output, name })
    }

    /// Raw bytes of a weight.
    pub fn bytes(&self, w: &Weight) -> &[u8] {
        self.file.tensor_data(&w.info)
    }

    /// An F32 vector weight (norms, biases) as a slice of floats (copied: GGUF data is only
    /// 32-byte aligned relative to the data section and may not be aligned for f32 in memory).
    pub fn f32_vec(&self, w: &Weight) -> Vec<f32> {
        self.bytes(w).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    /// A 2-D weight as a matrix of `shape[1]` rows of `shape[0]` elements.
    pub fn matrix(&self, w: &Weight) -> QMatrix<'_> {
        QMatrix { ty: w.ty(), data: self.bytes(w), n_in: w.info.shape[0] as usize, n_out: w.info.shape[1] as usize }
    }
}
