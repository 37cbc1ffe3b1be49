//! The element-wise and attention operations of the llama forward pass, as plain functions over
//! slices, in ggml's CPU numerics. Each has a CUDA kernel of the same name in `kernels/`.
//!
//! This file is the readable spec: no SIMD, no caching tricks. It knows shapes and arithmetic,
//! nothing of GGUF or of the model's configuration.

use half::f16;

use crate::gguf::GgmlType;

/// `rmsnorm`: x (n_tok, dim) -> out (n_tok, dim), `out = (x * 1/sqrt(mean(x²) + eps)) * w`.
///
/// Matches ggml: the sum of squares is accumulated in f64 (`ggml_float`), the mean and scale
/// in f32, and the weight is a separate multiplication (`ggml_mul`) after scaling.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let dim = w.len();
    assert_eq!(x.len(), out.len());
    assert_eq!(x.len() % dim, 0);
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mut sum = 0.0f64;
        for &v in xr {
            sum += (v * v) as f64;
        }
        let mean = (sum / dim as f64) as f32;
        let scale = 1.0f32 / (mean + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = (v * scale) * g;
        }
    }
}

/// `rope_norm`: rotates adjacent pairs `(x[2i], x[2i+1])` of every head of one position by
/// `pos * base^(-2i/head_dim)` (llama.cpp's `LLAMA_ROPE_TYPE_NORM`, used for the llama
/// architecture). x is (n_heads, head_dim), rotated in place.
///
/// The angle is built as ggml's `ggml_rope_cache_init` does, by repeated f32 multiplication of
/// `theta_scale = powf(base, -2/head_dim)`, not by `powf` per pair: the two differ in the last
/// bits, and matching them keeps RoPE within 1e-8 of llama.cpp.
pub fn rope_norm(x: &mut [f32], head_dim: usize, pos: usize, base: f32) {
    assert_eq!(x.len() % head_dim, 0);
    let cache = rope_cache(head_dim, pos, base);
    for head in x.chunks_exact_mut(head_dim) {
        for i in (0..head_dim).step_by(2) {
            let (cos, sin) = (cache[i], cache[i + 1]);
            let x0 = head[i];
            let x1 = head[i + 1];
            head[i] = x0 * cos - x1 * sin;
            head[i + 1] = x0 * sin + x1 * cos;
        }
    }
}

/// cos/sin pairs for one position: `[cos θ0, sin θ0, cos θ1, sin θ1, ...]`.
pub fn rope_cache(head_dim: usize, pos: usize, base: f32) -> Vec<f32> {
    let theta_scale = base.powf(-2.0 / head_dim as f32);
    let mut theta = pos as f32;
    let mut cache = vec![0.0f32; head_dim];
    for i in (0..head_dim).step_by(2) {
        cache[i] = theta.cos();
        cache[i + 1] = theta.sin();
        theta *= theta_scale;
    }
    cache
}

/// `softmax` in place over one row after scaling, ggml's `soft_max_ext` without mask: the
/// maximum is subtracted, the sum is accumulated in f64 and the row scaled by `1/sum`.
pub fn softmax(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f64;
    for v in row.iter_mut() {
        let e = (*v - max).exp();
        *v = e;
        sum += e as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Grouped-query attention for one query position over the first `n_kv` cached positions.
///
/// q (n_heads, head_dim) post-RoPE; k_cache/v_cache (n_ctx, n_kv_heads, head_dim) rows;
/// out (n_heads, head_dim). Query head h reads KV head `h / (n_heads / n_kv_heads)` (ggml's
/// broadcast in `mul_mat`). Scores are `q·k * 1/sqrt(head_dim)`, softmax as above, then the
/// weighted sum of V in position order. `probs_out`, when given, receives the (n_heads, n_kv)
/// softmax (llama.cpp's `kq_soft_max`).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    n_kv: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    out: &mut [f32],
    mut probs_out: Option<&mut [f32]>,
) {
    let group = n_heads / n_kv_heads;
    let kv_stride = n_kv_heads * head_dim;
    let scale = 1.0f32 / (head_dim as f32).sqrt();
    let mut scores = vec![0.0f32; n_kv];
    for h in 0..n_heads {
        let kvh = h / group;
        let qh = &q[h * head_dim..(h + 1) * head_dim];
        for (j, s) in scores.iter_mut().enumerate() {
            let kr = &k_cache[j * kv_stride + kvh * head_dim..][..head_dim];
            let mut dot = 0.0f32;
            for d in 0..head_dim {
                dot += kr[d] * qh[d];
            }
            *s = dot * scale;
        }
        softmax(&mut scores);
        if let Some(p) = probs_out.as_deref_mut() {
            p[h * n_kv..(h + 1) * n_kv].copy_from_slice(&scores);
        }
        let oh = &mut out[h * head_dim..(h + 1) * head_dim];
        for d in 0..head_dim {
            let mut acc = 0.0f32;
            for (j, &p) in scores.iter().enumerate() {
                acc += v_cache[j * kv_stride + kvh * head_dim + d] * p;
            }
            oh[d] = acc;
        }
    }
}

/// `silu(x) = x / (1 + e^-x)`, as ggml's `ggml_silu_f32`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `swiglu`: out = silu(gate) * up, element-wise (ggml's `ggml_vec_swiglu_f32`).
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
}

/// `add`: x += y, element-wise (the residual connection).
pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `embedding`: copies row `token` of an embedding table (n_vocab, dim) in type `ty`,
/// dequantized as ggml's `get_rows` does (Q8_0: `q * d` with d widened from f16).
pub fn embedding(ty: GgmlType, table: &[u8], dim: usize, token: u32, out: &mut [f32]) {
    let row_bytes = dim / ty.block_size() * ty.type_size();
    let row = &table[token as usize * row_bytes..][..row_bytes];
    crate::gguf::quant::dequantize(ty, row, out).expect("embedding row type checked at model load");
}

/// f32 -> nearest f16 -> f32, as ggml's FP32_TO_FP16 then back.
pub fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_position_zero_is_identity() {
        let mut x: Vec<f32> = (0..128).map(|i| i as f32 * 0.1).collect();
        let orig = x.clone();
        rope_norm(&mut x, 64, 0, 100000.0);
        assert_eq!(x, orig);
    }

    #[test]
    fn rope_rotates_adjacent_pairs_and_keeps_norms() {
        let mut x = vec![0.0f32; 64];
        x[0] = 1.0;
        rope_norm(&mut x, 64, 3, 100000.0);
        // The first pair rotates by exactly 3 radians (theta_scale^0 = 1).
        assert!((x[0] - 3.0f32.cos()).abs() < 1e-7 && (x[1] - 3.0f32.sin()).abs() < 1e-7);
        assert!(x[2..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn softmax_is_stable_for_large_inputs() {
        let mut row = vec![1000.0, 1001.0, 999.0];
        softmax(&mut row);
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6 && row[1] > row[0] && row[0] > row[2]);
    }

    #[test]
    fn rmsnorm_unit_weight_gives_unit_rms() {
        let x: Vec<f32> = (0..576).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let mut out = vec![0.0; 576];
        rmsnorm(&x, &vec![1.0; 576], 1e-5, &mut out);
        let rms = (out.iter().map(|v| (v * v) as f64).sum::<f64>() / 576.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-4, "rms {rms}");
    }

    #[test]
    fn attention_single_position_returns_v() {
        let (nh, nkv, hd) = (4, 2, 8);
        let q: Vec<f32> = (0..nh * hd).map(|i| i as f32).collect();
        let k = vec![0.5f32; nkv * hd];
        let v: Vec<f32> = (0..nkv * hd).map(|i| i as f32 * 2.0).collect();
        let mut out = vec![0.0; nh * hd];
        attention(&q, &k, &v, 1, nh, nkv, hd, &mut out, None);
        for h in 0..nh {
            assert_eq!(&out[h * hd..(h + 1) * hd], &v[(h / 2) * hd..(h / 2 + 1) * hd]);
        }
    }
}
