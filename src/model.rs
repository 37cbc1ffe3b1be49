//! The model as typed data: its configuration (the only place GGUF key strings appear) and
//! views of its weight tensors, for the architectures the forward pass implements: `llama`
//! (with or without `output.weight`, Llama-3 rope frequency factors, linear rope scaling,
//! `attention.key_length`), `qwen2` (Q/K/V biases, NEOX RoPE) and `gemma3` (embeddings scaled
//! by sqrt(dim), per-head RMS norms on Q and K, norms after attention and after the FFN, a
//! GELU-gated FFN, sliding-window attention on most layers with their own RoPE base).
//!
//! This module validates shapes and types once, at load, from tensor infos only (no weight is
//! read), so backends can index weights without checks, and a file the worker cannot run is
//! refused with one error naming the architecture, key, tensor or type. It computes nothing.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use crate::gguf::{GgmlType, GgufError, GgufFile, QMatrix, TensorInfo};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported architecture {arch:?} (general.architecture): llama, qwen2 and gemma3 are implemented")]
    UnsupportedArch { arch: String },
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    BadShape { name: String, expected: Vec<u64>, found: Vec<u64> },
    #[error("tensor {name} has type {ty}, which the matrix product does not support")]
    UnsupportedType { name: String, ty: &'static str },
    #[error("tensor {name} is not part of the {arch} architecture as implemented here (llama.cpp would refuse it too, or it needs an op this worker lacks)")]
    UnsupportedTensor { name: String, arch: &'static str },
    #[error("{key} = {value}: {why}")]
    UnsupportedKey { key: String, value: String, why: &'static str },
    #[error("tensor {name} has rows of {n} elements, not a multiple of the {block}-element blocks of {ty}")]
    BadRowLength { name: String, ty: &'static str, n: u64, block: usize },
    #[error("invalid configuration: {what}")]
    BadConfig { what: String },
}

/// The architectures the forward pass implements (`general.architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Qwen2,
    Gemma3,
}

impl Arch {
    pub fn name(&self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3",
        }
    }

    /// llama.cpp's `llama_model_rope_type`: NORM (adjacent pairs) for llama, NEOX (halves) for
    /// qwen2 and gemma3.
    pub fn rope_kind(&self) -> RopeKind {
        match self {
            Arch::Llama => RopeKind::Norm,
            Arch::Qwen2 | Arch::Gemma3 => RopeKind::Neox,
        }
    }
}

/// Which elements RoPE rotates together (llama.cpp's `llama_rope_type`): `Norm` adjacent
/// pairs `(x[2i], x[2i+1])` (`LLAMA_ROPE_TYPE_NORM`: llama), `Neox` the halves of a head,
/// `(x[i], x[i + head_dim/2])` (`LLAMA_ROPE_TYPE_NEOX`: qwen2). Pair i turns by angle θ_i in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeKind {
    Norm,
    Neox,
}

/// Everything RoPE depends on besides the position: ggml_rope_ext's `mode`, `n_dims` (the
/// whole head here), `freq_base`, `freq_scale`, `attn_factor` (its `mscale`) and the optional
/// frequency factors (`src2`, Llama-3's `rope_freqs.weight`). `ext_factor` is 0 (no YaRN).
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub kind: RopeKind,
    pub head_dim: usize,
    pub base: f32,
    pub freq_scale: f32,
    pub attn_factor: f32,
    pub freq_factors: Option<Vec<f32>>,
}

impl Rope {
    /// Plain RoPE of `kind`: no scaling, no frequency factors.
    pub fn plain(kind: RopeKind, head_dim: usize, base: f32) -> Rope {
        Rope { kind, head_dim, base, freq_scale: 1.0, attn_factor: 1.0, freq_factors: None }
    }
}

/// The matrix types the forward pass has products for (`backend::cpu::quant::vec_dot`, with
/// ggml's arithmetic for every quantized type and F32; F16 and BF16 computed, not yet in ggml's
/// order). A matrix of another type is refused at load.
pub const MATRIX_TYPES: &[GgmlType] = {
    use GgmlType::*;
    &[Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, F16, BF16, F32]
};

fn default_arch() -> Arch {
    Arch::Llama
}
fn default_rope_kind() -> RopeKind {
    RopeKind::Norm
}
fn one() -> f32 {
    1.0
}
fn rope_base_swa_default() -> f32 {
    10000.0
}

/// Hyper-parameters of a model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    #[serde(default = "default_arch")]
    pub arch: Arch,
    pub n_layers: usize,
    pub dim: usize,
    pub ffn_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// Per head, of Q, K and V alike (`attention.key_length`, else `dim / n_heads`).
    pub head_dim: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    #[serde(default = "default_rope_kind")]
    pub rope_kind: RopeKind,
    /// `1 / rope.scaling.factor` for linear scaling, 1 otherwise (llama.cpp's `freq_scale`).
    #[serde(default = "one")]
    pub rope_freq_scale: f32,
    /// `rope.scaling.attn_factor` (llama.cpp's `attn_factor`, the cos/sin scale), 1 when absent.
    #[serde(default = "one")]
    pub rope_attn_factor: f32,
    /// Sliding-window attention (`attention.sliding_window`, gemma3): a position attends to the
    /// `n_swa` most recent positions, itself included, on the layers `swa_layers` marks
    /// (llama.cpp's `LLAMA_SWA_TYPE_STANDARD`: cell p0 is masked for query p1 when
    /// `p1 - p0 >= n_swa`). 0: every layer attends to every earlier position.
    #[serde(default)]
    pub n_swa: usize,
    /// Per layer, whether it is a sliding-window layer (empty when `n_swa` is 0).
    #[serde(default)]
    pub swa_layers: Vec<bool>,
    /// RoPE base of the sliding-window layers (`rope.freq_base_swa`, llama.cpp's default 10000).
    #[serde(default = "rope_base_swa_default")]
    pub rope_base_swa: f32,
    /// The scale of Q·K before the softmax: `1/sqrt(head_dim)` for llama and qwen2; gemma3
    /// multiplies Q by it (`f_attention_scale`) and softmaxes with scale 1, the same bits
    /// because it is a power of two for every gemma3 head size.
    #[serde(default)]
    pub attn_scale: Option<f32>,
}

/// `<arch>.<key>`: the architecture-prefixed metadata keys.
struct Keys<'a> {
    file: &'a GgufFile,
    arch: &'static str,
}

impl Keys<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }
    fn u32(&self, k: &str) -> Result<usize, ModelError> {
        Ok(self.file.get_u32(&self.key(k))? as usize)
    }
    fn opt_u32(&self, k: &str) -> Result<Option<usize>, ModelError> {
        match self.file.metadata(&self.key(k)) {
            Some(_) => self.u32(k).map(Some),
            None => Ok(None),
        }
    }
    fn opt_f32(&self, k: &str) -> Result<Option<f32>, ModelError> {
        match self.file.metadata(&self.key(k)) {
            Some(_) => Ok(Some(self.file.get_f32(&self.key(k))?)),
            None => Ok(None),
        }
    }
    fn opt_str(&self, k: &str) -> Result<Option<&str>, ModelError> {
        match self.file.metadata(&self.key(k)) {
            Some(_) => Ok(Some(self.file.get_str(&self.key(k))?)),
            None => Ok(None),
        }
    }
}

impl ModelConfig {
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig, ModelError> {
        let arch_name = file.get_str("general.architecture")?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gemma3" => Arch::Gemma3,
            other => return Err(ModelError::UnsupportedArch { arch: other.to_string() }),
        };
        let k = Keys { file, arch: arch.name() };
        let unsupported = |key: &str, value: String, why: &'static str| ModelError::UnsupportedKey { key: k.key(key), value, why };
        if let Some(n) = k.opt_u32("expert_count")? {
            if n > 0 {
                return Err(unsupported("expert_count", n.to_string(), "mixture-of-experts layers are not implemented"));
            }
        }
        let n_layers = k.u32("block_count")?;
        let dim = k.u32("embedding_length")?;
        let ffn_dim = k.u32("feed_forward_length")?;
        let n_heads = k.u32("attention.head_count")?;
        let n_kv_heads = k.opt_u32("attention.head_count_kv")?.unwrap_or(n_heads);
        let n_vocab = match k.opt_u32("vocab_size")? {
            Some(n) => n,
            None => file.tensor_info("token_embd.weight")?.shape.get(1).copied().unwrap_or(0) as usize,
        };
        let head_dim = match k.opt_u32("attention.key_length")? {
            Some(n) => n,
            None if n_heads == 0 => 0,
            None => dim / n_heads,
        };
        if let Some(v) = k.opt_u32("attention.value_length")? {
            if v != head_dim {
                return Err(unsupported(
                    "attention.value_length",
                    v.to_string(),
                    "differs from attention.key_length (llama.cpp asserts they are equal for this architecture)",
                ));
            }
        }
        if let Some(r) = k.opt_u32("rope.dimension_count")? {
            if r != head_dim {
                return Err(unsupported(
                    "rope.dimension_count",
                    r.to_string(),
                    "partial RoPE (fewer rotated dimensions than the head size) is not implemented",
                ));
            }
        }
        // llama.cpp's defaults: scaling "linear" with factor 0 (= none) when the keys are absent.
        let scaling = k.opt_str("rope.scaling.type")?.unwrap_or("linear");
        let factor = match k.opt_f32("rope.scaling.factor")? {
            Some(f) => Some(f),
            None => k.opt_f32("rope.scale_linear")?,
        };
        let rope_freq_scale = match scaling {
            "none" => 1.0,
            "linear" => match factor {
                Some(f) if f != 0.0 => 1.0 / f,
                _ => 1.0,
            },
            other => {
                return Err(unsupported(
                    "rope.scaling.type",
                    format!("{other:?}"),
                    "only none and linear rope scaling are implemented (YaRN and LongRoPE are not)",
                ))
            }
        };
        let rope_attn_factor = k.opt_f32("rope.scaling.attn_factor")?.unwrap_or(1.0);
        let (mut n_swa, mut swa_layers, mut rope_base_swa, mut attn_scale) = (0, Vec::new(), 10000.0, None);
        if arch == Arch::Gemma3 {
            // llama_model_gemma3::load_arch_hparams: a window when `sliding_window` > 0, the
            // pattern "5 sliding : 1 global" (layer l slides when l % 6 < 5) unless the file
            // gives its own, and no final logit soft-capping for gemma3.
            n_swa = k.opt_u32("attention.sliding_window")?.unwrap_or(0);
            if n_swa > 0 {
                let period = match file.metadata(&k.key("attention.sliding_window_pattern")) {
                    None => 6,
                    Some(v) => match v.as_u64() {
                        Some(n) => n as usize,
                        None => {
                            return Err(unsupported(
                                "attention.sliding_window_pattern",
                                format!("{v:?}").chars().take(80).collect(),
                                "only a period is implemented, not a per-layer array",
                            ))
                        }
                    },
                };
                swa_layers = (0..n_layers).map(|l| period == 0 || l % period < period - 1).collect();
                rope_base_swa = k.opt_f32("rope.freq_base_swa")?.unwrap_or(10000.0);
            }
            if let Some(cap) = k.opt_f32("final_logit_softcapping")? {
                if cap != 0.0 {
                    return Err(unsupported("final_logit_softcapping", cap.to_string(), "logit soft-capping is not implemented"));
                }
            }
            if scaling != "linear" || rope_freq_scale != 1.0 {
                return Err(unsupported("rope.scaling.type", format!("{scaling:?}"), "rope scaling on gemma3 is not implemented"));
            }
            // f_attention_scale: 1/sqrt(n_embd_head_k), except 1/sqrt(n_embd/n_head) for the 27B.
            let d = if n_layers == 62 { dim / n_heads.max(1) } else { head_dim };
            attn_scale = Some(1.0 / (d as f32).sqrt());
        }
        let cfg = ModelConfig {
            arch,
            n_layers,
            dim,
            ffn_dim,
            n_heads,
            n_kv_heads,
            head_dim,
            n_vocab,
            n_ctx_train: k.u32("context_length")?,
            rope_base: k.opt_f32("rope.freq_base")?.unwrap_or(10000.0),
            rms_eps: file.get_f32(&k.key("attention.layer_norm_rms_epsilon"))?,
            rope_kind: arch.rope_kind(),
            rope_freq_scale,
            rope_attn_factor,
            n_swa,
            swa_layers,
            rope_base_swa,
            attn_scale,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let bad = |what: String| Err(ModelError::BadConfig { what });
        if self.n_layers == 0 || self.dim == 0 || self.n_heads == 0 || self.n_kv_heads == 0 || self.n_vocab == 0 || self.head_dim == 0 {
            return bad(format!("zero-sized dimension in {self:?}"));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head size {} is odd: RoPE rotates pairs", self.head_dim));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!("{} heads cannot be grouped over {} kv heads", self.n_heads, self.n_kv_heads));
        }
        // Activations are quantized in blocks of 32 (Q8_0/Q8_1) before every product.
        let qk = GgmlType::Q8_0.block_size();
        if !self.dim.is_multiple_of(qk) || !self.ffn_dim.is_multiple_of(qk) || !self.q_dim().is_multiple_of(qk) {
            return bad(format!("dimensions {} / {} / {} are not multiples of {qk}", self.dim, self.ffn_dim, self.q_dim()));
        }
        if self.dim > 1 << 16 || self.ffn_dim > 1 << 18 || self.n_layers > 1024 || self.n_vocab > 1 << 22 || self.q_dim() > 1 << 16 {
            return bad(format!("implausibly large model {self:?}"));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0 && self.rope_base.is_finite() && self.rope_base > 0.0) {
            return bad(format!("rms epsilon {} / rope base {} out of range", self.rms_eps, self.rope_base));
        }
        if let Some(s) = self.attn_scale {
            let scaled = s * (self.head_dim as f32).sqrt();
            if scaled != 1.0 || s.to_bits() & 0x007f_ffff != 0 {
                return bad(format!("attention scale {s} is not 1/sqrt(head_dim) = a power of two (head size {})", self.head_dim));
            }
        }
        if self.n_swa > 0 && self.swa_layers.len() != self.n_layers {
            return bad(format!("{} sliding-window flags for {} layers", self.swa_layers.len(), self.n_layers));
        }
        if !(self.rope_base_swa.is_finite() && self.rope_base_swa > 0.0) {
            return bad(format!("sliding-window rope base {} out of range", self.rope_base_swa));
        }
        if !(self.rope_freq_scale.is_finite() && self.rope_freq_scale > 0.0 && self.rope_attn_factor.is_finite()) {
            return bad(format!("rope freq scale {} / attn factor {} out of range", self.rope_freq_scale, self.rope_attn_factor));
        }
        Ok(())
    }

    /// Whether layer `l` attends through a sliding window of `n_swa` positions.
    pub fn is_swa(&self, l: usize) -> bool {
        self.n_swa > 0 && self.swa_layers.get(l).copied().unwrap_or(false)
    }

    /// The first cached position a query at `pos` attends to in layer `l`.
    pub fn window_start(&self, l: usize, pos: usize) -> usize {
        if self.is_swa(l) {
            (pos + 1).saturating_sub(self.n_swa)
        } else {
            0
        }
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Width of Q and of the attention output: `n_heads * head_dim` (equal to `dim` unless
    /// `attention.key_length` says otherwise).
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
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

/// Weights of one transformer block. Biases are optional (llama has none, qwen2 has all three;
/// llama.cpp creates them `TENSOR_NOT_REQUIRED` for both).
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
    /// gemma3: RMS norms of each Q and K head (head_dim), and the norms after attention and
    /// after the FFN (dim).
    pub attn_q_norm: Option<Weight>,
    pub attn_k_norm: Option<Weight>,
    pub attn_post_norm: Option<Weight>,
    pub ffn_post_norm: Option<Weight>,
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
    /// Llama-3 rope frequency factors (`rope_freqs.weight`, head_dim / 2 f32), one for all layers.
    pub rope_freqs: Option<Weight>,
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

    /// Validates the configuration and every tensor's presence, shape and type from the tensor
    /// infos alone (nothing is read from the data section here), and refuses a file with a
    /// tensor the architecture does not use: llama.cpp refuses those too ("wrong number of
    /// tensors"), and ignoring one (an `attn_output.bias`, a fused `attn_qkv`) would compute
    /// something else than the file means.
    pub fn from_gguf(file: Arc<GgufFile>) -> Result<Model, ModelError> {
        let c = ModelConfig::from_gguf(&file)?;
        let (dim, kv, ffn, qd) = (c.dim as u64, c.kv_dim() as u64, c.ffn_dim as u64, c.q_dim() as u64);
        let used = std::cell::RefCell::new(BTreeSet::<String>::new());
        let get = |name: String, shape: &[u64], matrix: bool| -> Result<Weight, ModelError> {
            let info = file.tensor_info(&name)?.clone();
            used.borrow_mut().insert(name.clone());
            if info.shape != shape {
                return Err(ModelError::BadShape { name, expected: shape.to_vec(), found: info.shape });
            }
            if matrix && !MATRIX_TYPES.contains(&info.ggml_type) {
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
        let tied = file.tensor_info("output.weight").is_err();
        // The embedding is read a row at a time (ggml's get_rows dequantizes), and used as the
        // output matrix too when tied.
        let token_embd = {
            let name = "token_embd.weight".to_string();
            let info = file.tensor_info(&name)?.clone();
            used.borrow_mut().insert(name.clone());
            if info.shape != [dim, c.n_vocab as u64] {
                return Err(ModelError::BadShape { name, expected: vec![dim, c.n_vocab as u64], found: info.shape });
            }
            let ty = info.ggml_type;
            if !crate::gguf::quant::can_dequantize(ty) || (tied && !MATRIX_TYPES.contains(&ty)) {
                return Err(ModelError::UnsupportedType { name, ty: ty.name() });
            }
            if info.shape[0] % ty.block_size() as u64 != 0 {
                return Err(ModelError::BadRowLength { name, ty: ty.name(), n: info.shape[0], block: ty.block_size() });
            }
            Weight { info }
        };
        let gemma = c.arch == Arch::Gemma3;
        let hd = c.head_dim as u64;
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let n = |s: &str| format!("blk.{l}.{s}");
            let gemma_norm = |s: &str, len: u64| if gemma { get(n(s), &[len], false).map(Some) } else { Ok(None) };
            layers.push(LayerWeights {
                attn_q_norm: gemma_norm("attn_q_norm.weight", hd)?,
                attn_k_norm: gemma_norm("attn_k_norm.weight", hd)?,
                attn_post_norm: gemma_norm("post_attention_norm.weight", dim)?,
                ffn_post_norm: gemma_norm("post_ffw_norm.weight", dim)?,
                attn_norm: get(n("attn_norm.weight"), &[dim], false)?,
                wq: get(n("attn_q.weight"), &[dim, qd], true)?,
                wk: get(n("attn_k.weight"), &[dim, kv], true)?,
                wv: get(n("attn_v.weight"), &[dim, kv], true)?,
                bq: opt(n("attn_q.bias"), &[qd])?,
                bk: opt(n("attn_k.bias"), &[kv])?,
                bv: opt(n("attn_v.bias"), &[kv])?,
                wo: get(n("attn_output.weight"), &[qd, dim], true)?,
                ffn_norm: get(n("ffn_norm.weight"), &[dim], false)?,
                w_gate: get(n("ffn_gate.weight"), &[dim, ffn], true)?,
                w_up: get(n("ffn_up.weight"), &[dim, ffn], true)?,
                w_down: get(n("ffn_down.weight"), &[ffn, dim], true)?,
            });
        }
        let output_norm = get("output_norm.weight".into(), &[dim], false)?;
        let output = if tied { token_embd.clone() } else { get("output.weight".into(), &[dim, c.n_vocab as u64], true)? };
        // llama.cpp reads rope_freqs only for llama (`get_rope_factors`); qwen2's graph passes
        // none, so the unused-tensor check below refuses one there.
        let rope_freqs = match c.arch {
            Arch::Llama => opt("rope_freqs.weight".into(), &[c.head_dim as u64 / 2])?,
            Arch::Qwen2 | Arch::Gemma3 => None,
        };
        let used = used.into_inner();
        if let Some(t) = file.tensors.iter().find(|t| !used.contains(&t.name)) {
            return Err(ModelError::UnsupportedTensor { name: t.name.clone(), arch: c.arch.name() });
        }
        let name = file.get_str("general.name").unwrap_or("").to_string();
        Ok(Model { config: c, file, token_embd, layers, output_norm, output, rope_freqs, name })
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

    /// The RoPE of this model (kind, base, scaling, frequency factors), as the backends apply it
    /// (of its global-attention layers where sliding-window ones differ, see [`Model::layer_rope`]).
    pub fn rope(&self) -> Rope {
        self.rope_with_base(self.config.rope_base)
    }

    /// The RoPE of layer `l`: sliding-window layers take `rope.freq_base_swa` (llama.cpp's
    /// `get_rope_freq_base`) and no scaling (`rope_freq_scale_train_swa` is 1).
    pub fn layer_rope(&self, l: usize) -> Rope {
        let c = &self.config;
        if c.is_swa(l) {
            Rope { freq_scale: 1.0, ..self.rope_with_base(c.rope_base_swa) }
        } else {
            self.rope()
        }
    }

    fn rope_with_base(&self, base: f32) -> Rope {
        let c = &self.config;
        Rope {
            kind: c.rope_kind,
            head_dim: c.head_dim,
            base,
            freq_scale: c.rope_freq_scale,
            attn_factor: c.rope_attn_factor,
            freq_factors: self.rope_freqs.as_ref().map(|w| self.f32_vec(w)),
        }
    }
}
