//! Which type each tensor gets: llama.cpp's `tensor_allows_quantization`,
//! `llama_tensor_get_type` / `llama_tensor_get_type_impl` (the `_S`/`_M`/`_L`
//! mixes) and `tensor_type_fallback` (src/llama-quant.cpp), with the same
//! stateful counters, visited in the same (sorted) tensor order.
//!
//! Only the branches reachable with default parameters (no importance matrix, no
//! overrides, `quantize_output_tensor` on, not `pure`) and the file types of
//! [`FileType`] are kept; each one cites the condition it copies. This file knows
//! tensor names and shapes, never tensor data.

use crate::gguf::{GgmlType, TensorInfo};

use super::error::QuantizeError;
use super::ftype::FileType;
use super::layout::{n_dims, scan_blk};

/// The model hyperparameters llama.cpp's mix looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixParams {
    /// `general.architecture` (the mix special-cases `falcon`).
    pub arch: String,
    /// `{arch}.block_count`.
    pub n_layer: u32,
    /// `{arch}.attention.head_count` of layer 0.
    pub n_head: u32,
    /// `{arch}.attention.head_count_kv` of layer 0 (defaults to `n_head`).
    pub n_head_kv: u32,
    /// `{arch}.expert_count` (0 when absent).
    pub n_expert: u32,
    /// Whether llama.cpp classifies the model as `LLM_TYPE_70B` (attn_v gets more
    /// bits then).
    pub is_70b: bool,
}

impl MixParams {
    /// `hparams.n_gqa()` of layer 0: heads per KV head, 0 without KV heads.
    pub fn n_gqa(&self) -> u32 {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    fn is_falcon(&self) -> bool {
        self.arch == "falcon"
    }
}

/// `tensor_category` in llama-quant.cpp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttentionQ,
    AttentionV,
    AttentionK,
    AttentionQkv,
    AttentionKvB,
    AttentionOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

fn category(name: &str) -> Category {
    if name == "output.weight" {
        return Category::Output;
    }
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return Category::TokenEmbd;
    }
    let rules = [
        ("attn_qkv.weight", Category::AttentionQkv),
        ("attn_kv_b.weight", Category::AttentionKvB),
        ("attn_v.weight", Category::AttentionV),
        ("attn_k.weight", Category::AttentionK),
        ("attn_q.weight", Category::AttentionQ),
        ("attn_output.weight", Category::AttentionOutput),
        ("ffn_up", Category::FfnUp),
        ("ffn_gate", Category::FfnGate),
        ("ffn_down", Category::FfnDown),
    ];
    rules.iter().find(|(pat, _)| name.contains(pat)).map_or(Category::Other, |&(_, c)| c)
}

/// `category_is_attn_v`: the V-like tensors that are more sensitive to quantization.
fn is_attn_v(c: Category) -> bool {
    matches!(c, Category::AttentionV | Category::AttentionQkv | Category::AttentionKvB)
}

/// `tensor_allows_quantization` with default parameters.
pub fn allows_quantization(arch: &str, t: &TensorInfo) -> bool {
    if n_dims(&t.shape) < 2 {
        return false;
    }
    let name = t.name.as_str();
    // `name.rfind("weight") == name.size() - 6`: with size_t arithmetic a 5-byte
    // name also passes (npos == 5 - 6), and llama.cpp quantizes it.
    let mut quantize = name.ends_with("weight") || name.len() == 5;
    let excluded = [
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ];
    quantize &= !excluded.iter().any(|p| name.contains(p));
    quantize &= name != "position_embd.weight" && name != "token_types.weight";
    if arch == "glm5-next" {
        let glm = [
            "hc_",
            "indexer.attn_q_b",
            "indexer.attn_k",
            "indexer.proj",
            "indexer_compressor_gate",
            "indexer_compressor_ape",
            "ssm_f_a.weight",
            "ssm_f_b.weight",
            "ssm_g_a.weight",
            "ssm_g_b.weight",
            "ssm_beta.weight",
            "attn_kv_a_mqa.weight",
            "attn_k_b.weight",
            "attn_v_b.weight",
        ];
        quantize &= !glm.iter().any(|p| name.contains(p));
    }
    quantize
}

/// `tensor_requires_imatrix` for the types this quantizer can produce.
pub fn requires_imatrix(name: &str, ty: GgmlType, ftype: FileType) -> bool {
    let embd_or_output = matches!(category(name), Category::TokenEmbd | Category::Output);
    !embd_or_output && ty == GgmlType::Q2_K && ftype == FileType::Q2_K_S
}

/// `llama_tensor_get_type` over a whole model: feed tensors in llama.cpp's
/// processing order, one call each.
#[derive(Debug)]
pub struct Mix<'p> {
    params: &'p MixParams,
    ftype: FileType,
    n_attention_wv: u32,
    i_attention_wv: u32,
    i_ffn_down: u32,
    i_ffn_gate: u32,
    i_ffn_up: u32,
    has_tied_embeddings: bool,
    /// Tensors whose row width forced a fallback type (llama.cpp warns for each).
    pub n_fallback: usize,
}

impl<'p> Mix<'p> {
    /// `init_quantize_state_counters` over every tensor name of the model.
    pub fn new<'n>(params: &'p MixParams, ftype: FileType, names: impl IntoIterator<Item = &'n str>) -> Self {
        let mut n_attention_wv = 0;
        let mut has_tied_embeddings = true;
        for name in names {
            let c = category(name);
            if is_attn_v(c) {
                n_attention_wv += 1;
            }
            if c == Category::Output {
                has_tied_embeddings = false;
            }
        }
        Mix { params, ftype, n_attention_wv, i_attention_wv: 0, i_ffn_down: 0, i_ffn_gate: 0, i_ffn_up: 0, has_tied_embeddings, n_fallback: 0 }
    }

    /// The type `t` is written as (its own type when it may not be quantized).
    pub fn target_type(&mut self, t: &TensorInfo) -> Result<GgmlType, QuantizeError> {
        if !allows_quantization(&self.params.arch, t) {
            return Ok(t.ggml_type);
        }
        let default = self.ftype.default_type();
        if !default.is_quantized() {
            return Ok(default);
        }
        let ty = self.get_type_impl(default, t)?;
        Ok(self.fallback(t, ty))
    }

    /// `tensor_type_fallback`: a row width that is not a multiple of the block
    /// size demotes a 256-block type to a 32-block one (F16 if even that fails).
    fn fallback(&mut self, t: &TensorInfo, target: GgmlType) -> GgmlType {
        let ncols = t.row_len();
        if ncols.is_multiple_of(target.block_size() as u64) {
            return target;
        }
        self.n_fallback += 1;
        let ty = match target {
            GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
            GgmlType::Q4_K => GgmlType::Q5_0,
            GgmlType::Q5_K => GgmlType::Q5_1,
            GgmlType::Q6_K => GgmlType::Q8_0,
            // A 32-block target has nothing smaller to demote to; the check below
            // makes it F16. (No other 256-block type is reachable here.)
            other => other,
        };
        if ncols.is_multiple_of(ty.block_size() as u64) {
            ty
        } else {
            GgmlType::F16
        }
    }

    /// `layer_info`: the layer of an FFN tensor, counted for dense models and
    /// parsed from `blk.N.` for mixtures of experts.
    fn layer_info(&self, counter: u32, name: &str) -> Result<(u32, u32), QuantizeError> {
        let n_layer = self.params.n_layer;
        if self.params.n_expert <= 1 {
            return Ok((counter, n_layer));
        }
        let bad = || QuantizeError::LayerOfTensor { tensor: name.to_string(), n_layer };
        // `sscanf(name, "blk.%d.", &i_layer) != 1`, then the range check.
        let layer = scan_blk(name).ok_or_else(bad)?;
        if layer < 0 || layer >= i64::from(n_layer) {
            return Err(bad());
        }
        let layer = layer as u32;
        Ok((layer, n_layer))
    }

    /// `llama_tensor_get_type_impl` for the file types of [`FileType`] (the IQ1,
    /// IQ2, IQ3, ternary and MXFP4 branches are unreachable and left out).
    // Some branches have the same body; they stay separate so that each one reads like
    // the llama.cpp condition it copies.
    #[allow(clippy::if_same_then_else)]
    fn get_type_impl(&mut self, mut new_type: GgmlType, t: &TensorInfo) -> Result<GgmlType, QuantizeError> {
        use FileType as F;
        use GgmlType as G;
        let ftype = self.ftype;
        let p = self.params;
        let name = t.name.as_str();
        let cat = category(name);
        // `i < n/8 || i >= 7*n/8 || (i - n/8) % 3 == 2`; the last term only
        // matters when the first is false, so its left side is never negative.
        let use_more_bits = |i: u32, n: u32| i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;

        if p.arch == "glm5-next" && (name.contains("attn_q_a") || name.contains("attn_q_b") || name.contains("nextn.eh_proj")) {
            return Ok(match new_type {
                G::F32 | G::BF16 | G::F16 => new_type,
                _ => G::Q8_0,
            });
        }

        if cat == Category::Output || (self.has_tied_embeddings && cat == Category::TokenEmbd) {
            let nx = t.row_len();
            if p.is_falcon() || !nx.is_multiple_of(new_type.block_size() as u64) {
                new_type = G::Q8_0;
            } else if new_type != G::Q8_0 {
                new_type = G::Q6_K;
            }
        } else if cat == Category::TokenEmbd {
            // Only the IQ/ternary file types change an untied token embedding.
        } else if is_attn_v(cat) {
            let gqa = p.n_gqa();
            if ftype == F::Q2_K {
                new_type = if gqa >= 4 { G::Q4_K } else { G::Q3_K };
            } else if ftype == F::Q2_K_S && gqa >= 4 {
                new_type = G::Q4_K;
            } else if ftype == F::Q3_K_M {
                new_type = if self.i_attention_wv < 2 { G::Q5_K } else { G::Q4_K };
            } else if ftype == F::Q3_K_L {
                new_type = G::Q5_K;
            } else if ftype == F::IQ4_NL && gqa >= 4 {
                new_type = G::Q5_K;
            } else if (ftype == F::Q4_K_M || ftype == F::Q5_K_M) && use_more_bits(self.i_attention_wv, self.n_attention_wv) {
                new_type = G::Q6_K;
            } else if ftype == F::Q4_K_S && self.i_attention_wv < 4 {
                new_type = G::Q5_K;
            }
            if p.is_70b && (new_type == G::Q3_K || new_type == G::Q4_K) {
                new_type = G::Q5_K;
            }
            if p.n_expert == 8 {
                new_type = G::Q8_0;
            }
            self.i_attention_wv += 1;
        } else if cat == Category::AttentionK {
            if p.n_expert == 8 {
                new_type = G::Q8_0;
            }
        } else if cat == Category::AttentionQ {
            // Only IQ3 file types change attn_q.
        } else if cat == Category::FfnDown {
            let (i_layer, n_layer) = self.layer_info(self.i_ffn_down, name)?;
            if ftype == F::Q2_K {
                new_type = G::Q3_K;
            } else if ftype == F::Q2_K_S {
                if i_layer < n_layer / 8 {
                    new_type = G::Q4_K;
                }
            } else if ftype == F::Q3_K_M {
                new_type = if i_layer < n_layer / 16 {
                    G::Q5_K
                } else if !p.is_falcon() || use_more_bits(i_layer, n_layer) {
                    G::Q4_K
                } else {
                    G::Q3_K
                };
            } else if ftype == F::Q3_K_L {
                new_type = if p.is_falcon() { G::Q4_K } else { G::Q5_K };
            } else if ftype == F::Q4_K_M {
                if p.is_falcon() {
                    new_type = if i_layer < n_layer / 16 {
                        G::Q6_K
                    } else if use_more_bits(i_layer, n_layer) {
                        G::Q5_K
                    } else {
                        G::Q4_K
                    };
                } else if use_more_bits(i_layer, n_layer) {
                    new_type = G::Q6_K;
                }
            } else if i_layer < n_layer / 8 && ftype == F::IQ4_NL {
                // `&& !qs.has_imatrix`: there is never an imatrix here.
                new_type = G::Q5_K;
            } else if ftype == F::Q5_K_M && use_more_bits(i_layer, n_layer) {
                new_type = G::Q6_K;
            } else if ftype == F::Q4_K_S && !p.is_falcon() && i_layer < n_layer / 8 {
                new_type = G::Q5_K;
            }
            // (The Q4_0/Q5_0 guard of the first layers needs an imatrix.)
            self.i_ffn_down += 1;
        } else if cat == Category::AttentionOutput {
            if !p.is_falcon() {
                if p.n_expert == 8 {
                    let bumped = [F::Q2_K, F::Q3_K_S, F::Q3_K_M, F::IQ4_NL, F::Q4_K_S, F::Q4_K_M];
                    if bumped.contains(&ftype) {
                        new_type = G::Q5_K;
                    }
                } else if ftype == F::Q2_K {
                    new_type = G::Q3_K;
                } else if ftype == F::Q3_K_M {
                    new_type = G::Q4_K;
                } else if ftype == F::Q3_K_L {
                    new_type = G::Q5_K;
                }
            } else if ftype == F::Q3_K_L {
                new_type = G::Q4_K;
            }
        } else if cat == Category::AttentionQkv {
            if ftype == F::Q3_K_M || ftype == F::Q3_K_L {
                new_type = G::Q4_K;
            } else if ftype == F::Q4_K_M {
                new_type = G::Q5_K;
            } else if ftype == F::Q5_K_M {
                new_type = G::Q6_K;
            }
        } else if cat == Category::FfnGate {
            // `layer_info` can fail for experts even though only IQ3_XS uses it.
            self.layer_info(self.i_ffn_gate, name)?;
            self.i_ffn_gate += 1;
        } else if cat == Category::FfnUp {
            self.layer_info(self.i_ffn_up, name)?;
            self.i_ffn_up += 1;
        }
        Ok(new_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, shape: &[u64]) -> TensorInfo {
        TensorInfo { name: name.into(), shape: shape.to_vec(), ggml_type: GgmlType::Q4_1, offset: 0 }
    }

    fn smollm2() -> MixParams {
        MixParams { arch: "llama".into(), n_layer: 30, n_head: 9, n_head_kv: 3, n_expert: 0, is_70b: false }
    }

    #[test]
    fn n_dims_ignores_trailing_ones() {
        assert_eq!(n_dims(&[576]), 1);
        assert_eq!(n_dims(&[576, 1]), 1);
        assert_eq!(n_dims(&[576, 2]), 2);
        assert_eq!(n_dims(&[1, 1, 3]), 3);
    }

    #[test]
    fn norms_biases_and_vectors_are_never_quantized() {
        assert!(!allows_quantization("llama", &t("blk.0.attn_norm.weight", &[576])));
        assert!(!allows_quantization("llama", &t("blk.0.attn_q.bias", &[896, 2])));
        assert!(!allows_quantization("llama", &t("blk.0.ffn_norm.weight", &[576, 2])));
        assert!(allows_quantization("llama", &t("blk.0.attn_q.weight", &[576, 576])));
        assert!(allows_quantization("llama", &t("abcde", &[32, 32])), "llama.cpp's size_t quirk");
    }

    #[test]
    fn q4_k_m_on_576_wide_rows_falls_back_like_llama_cpp() {
        let p = smollm2();
        let names: Vec<String> = (0..30).map(|i| format!("blk.{i}.attn_v.weight")).chain(["token_embd.weight".to_string()]).collect();
        let mut mix = Mix::new(&p, FileType::Q4_K_M, names.iter().map(String::as_str));
        // Tied embeddings take the output rule: 576 % 256 != 0 -> Q8_0.
        assert_eq!(mix.target_type(&t("token_embd.weight", &[576, 49152])).unwrap(), GgmlType::Q8_0);
        // The first three attn_v visited (i < 30/8) want Q6_K, which falls back to Q8_0; the
        // fourth does not use more bits ((3 - 3) % 3 != 2): Q4_K, falling back to Q5_0.
        for i in 0..3 {
            assert_eq!(mix.target_type(&t(&format!("blk.{i}.attn_v.weight"), &[576, 192])).unwrap(), GgmlType::Q8_0);
        }
        assert_eq!(mix.target_type(&t("blk.3.attn_v.weight", &[576, 192])).unwrap(), GgmlType::Q5_0);
        assert_eq!(mix.target_type(&t("blk.0.attn_q.weight", &[576, 576])).unwrap(), GgmlType::Q5_0);
        // ffn_down rows are 1536 wide: layer 0 uses more bits.
        assert_eq!(mix.target_type(&t("blk.0.ffn_down.weight", &[1536, 576])).unwrap(), GgmlType::Q6_K);
        assert_eq!(mix.target_type(&t("blk.0.attn_norm.weight", &[576])).unwrap(), GgmlType::Q4_1);
        assert_eq!(mix.n_fallback, 5);
    }

    #[test]
    fn a_row_width_not_a_multiple_of_32_becomes_f16() {
        let p = smollm2();
        let mut mix = Mix::new(&p, FileType::Q4_0, ["w.weight"]);
        assert_eq!(mix.target_type(&t("blk.0.attn_q.weight", &[48, 4])).unwrap(), GgmlType::F16);
        let mut mix = Mix::new(&p, FileType::Q6_K, ["w.weight"]);
        assert_eq!(mix.target_type(&t("blk.0.attn_q.weight", &[48, 4])).unwrap(), GgmlType::F16);
    }

    #[test]
    fn expert_layers_come_from_the_name_and_bad_names_are_errors() {
        let p = MixParams { n_expert: 8, ..smollm2() };
        let mut mix = Mix::new(&p, FileType::Q4_K_M, ["blk.3.ffn_down.weight"]);
        assert!(mix.target_type(&t("blk.3.ffn_down_exps.weight", &[1536, 576, 8])).is_ok());
        let err = mix.target_type(&t("ffn_down_exps.weight", &[1536, 576, 8])).unwrap_err();
        assert!(err.to_string().contains("ffn_down_exps.weight"), "{err}");
        let err = mix.target_type(&t("blk.99.ffn_up_exps.weight", &[1536, 576, 8])).unwrap_err();
        assert!(err.to_string().contains("blk.99"), "{err}");
    }
}
