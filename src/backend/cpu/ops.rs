//! The element-wise and attention operations of the llama forward pass, as plain functions over
//! slices, in ggml's CPU numerics: each reproduces the operations and their order of the ggml
//! kernel it names (for one token, as the reference build runs them: AVX2 + FMA), built from the
//! lane-by-lane blocks in `lanes`. Each has a CUDA kernel of the same name in `kernels/`.
//!
//! This file is the readable spec: no `std::arch`, no caching tricks. It knows shapes and
//! arithmetic, nothing of GGUF or of the model's configuration (but RoPE's parameters, which
//! `model::Rope` gives).

use half::f16;

use super::lanes::{hsum_float_8, v_expf, v_silu};
use super::quant::vec_dot_f32;

use crate::gguf::GgmlType;

/// The RoPE parameters are the model's (`model::Rope`); this module applies them.
pub use crate::model::{Rope, RopeKind};

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

impl Rope {
    /// cos/sin pairs for one position: `[cos θ0, sin θ0, cos θ1, sin θ1, ...]`, as ggml's
    /// `ggml_rope_cache_init` with `rope_yarn` at `ext_factor = 0` builds them: θ starts at the
    /// position and is multiplied by `theta_scale = powf(base, -2/head_dim)` once per pair (not
    /// `powf` per pair: the two differ in the last bits); pair i takes
    /// `freq_scale * (θ / ff_i)` (ff_i = 1 without factors: both operations are then exact),
    /// then `cosf(·) * mscale`, `sinf(·) * mscale`.
    pub fn cache(&self, pos: usize) -> Vec<f32> {
        let hd = self.head_dim;
        let theta_scale = self.base.powf(-2.0 / hd as f32);
        let mut theta = pos as f32;
        let mut cache = vec![0.0f32; hd];
        for i in (0..hd).step_by(2) {
            let ff = self.freq_factors.as_ref().map_or(1.0, |f| f[i / 2]);
            let t = self.freq_scale * (theta / ff);
            cache[i] = t.cos() * self.attn_factor;
            cache[i + 1] = t.sin() * self.attn_factor;
            theta *= theta_scale;
        }
        cache
    }

    /// Rotates every head of one position of `x` (n_heads, head_dim) in place.
    #[inline(always)]
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let cache = self.cache(pos);
        match self.kind {
            RopeKind::Norm => rope_norm_cached(x, self.head_dim, &cache),
            RopeKind::Neox => rope_neox(x, self.head_dim, &cache),
        }
    }
}

/// ggml's `rotate_pairs` as GCC contracted it in the reference build:
/// `x0' = fma(x0, cos, -(x1·sin))`, `x1' = fma(x0, sin, x1·cos)`, the second products rounded
/// first (established against llama.cpp's captured RoPE inputs and outputs: every element of
/// every head at every position bit-identical, for NORM and for NEOX).
#[inline(always)]
fn rotate(x0: f32, x1: f32, cos: f32, sin: f32) -> (f32, f32) {
    (x0.mul_add(cos, -(x1 * sin)), x0.mul_add(sin, x1 * cos))
}

/// `rope_norm`: rotates adjacent pairs `(x[2i], x[2i+1])` of every head of one position by
/// `pos * base^(-2i/head_dim)` (llama.cpp's `LLAMA_ROPE_TYPE_NORM`, used for the llama
/// architecture). x is (n_heads, head_dim), rotated in place. See [`Rope::cache`] for the
/// angles and [`rotate`] for the arithmetic.
#[inline(always)]
pub fn rope_norm(x: &mut [f32], head_dim: usize, pos: usize, base: f32) {
    Rope::plain(RopeKind::Norm, head_dim, base).apply(x, pos)
}

/// `rope_norm` with the cos/sin pairs given.
#[inline(always)]
pub fn rope_norm_cached(x: &mut [f32], head_dim: usize, cache: &[f32]) {
    assert_eq!(x.len() % head_dim, 0);
    for head in x.chunks_exact_mut(head_dim) {
        for i in (0..head_dim).step_by(2) {
            (head[i], head[i + 1]) = rotate(head[i], head[i + 1], cache[i], cache[i + 1]);
        }
    }
}

/// `rope_neox` (with the cos/sin pairs of one position given): rotates the pairs `(x[i], x[i + head_dim/2])` of every head by θ_i
/// (`LLAMA_ROPE_TYPE_NEOX`, qwen2; ggml's `rotate_pairs(n_dims, n_dims/2, ...)`: pair i reads
/// `cache[2i]`, `cache[2i+1]`).
#[inline(always)]
pub fn rope_neox(x: &mut [f32], head_dim: usize, cache: &[f32]) {
    assert_eq!(x.len() % head_dim, 0);
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            (head[i], head[i + half]) = rotate(head[i], head[i + half], cache[2 * i], cache[2 * i + 1]);
        }
    }
}

/// `rope_store_kv`: the step after the Q, K and V products of one position, as the forward
/// pass runs it (the CUDA kernel of the same name fuses it): each bias added (`ggml_add`, one
/// f32 addition per element, llama.cpp's `build_qkv`), then RoPE of Q and K. Q is
/// (n_heads, head_dim), K and V (n_kv_heads, head_dim), all in place.
#[allow(clippy::too_many_arguments)]
pub fn rope_store_kv(q: &mut [f32], k: &mut [f32], v: &mut [f32], bq: Option<&[f32]>, bk: Option<&[f32]>, bv: Option<&[f32]>, rope: &Rope, pos: usize) {
    for (t, b) in [(&mut *q, bq), (&mut *k, bk), (&mut *v, bv)] {
        if let Some(b) = b {
            add(t, b);
        }
    }
    rope.apply(q, pos);
    rope.apply(k, pos);
}

/// cos/sin pairs for one position of plain RoPE (see [`Rope::cache`]).
pub fn rope_cache(head_dim: usize, pos: usize, base: f32) -> Vec<f32> {
    Rope::plain(RopeKind::Norm, head_dim, base).cache(pos)
}

/// `ggml_vec_soft_max_f32` (ggml-cpu/vec.cpp, AVX2 + FMA path): `y = exp(x - max)` and their
/// sum. Groups of eight take [`v_expf`], their `hsum_float_8` added to an f64 sum in order;
/// the elements past the last multiple of 8 take glibc's `expf`, each widened and added.
#[inline(always)]
pub fn vec_soft_max_f32(y: &mut [f32], x: &[f32], max: f32) -> f64 {
    let n8 = x.len() / 8 * 8;
    let mut sum = 0.0f64;
    for (yg, xg) in y[..n8].chunks_exact_mut(8).zip(x[..n8].chunks_exact(8)) {
        let mut lanes = [0.0f32; 8];
        for l in 0..8 {
            lanes[l] = v_expf(xg[l] - max);
            yg[l] = lanes[l];
        }
        sum += hsum_float_8(lanes) as f64;
    }
    for (yv, &xv) in y[n8..].iter_mut().zip(&x[n8..]) {
        *yv = (xv - max).exp();
        sum += *yv as f64;
    }
    sum
}

/// `softmax` in place over one row of attention scores, as `ggml_compute_forward_soft_max_f32`
/// computes a row after scaling and masking: the maximum (`ggml_vec_max_f32`), then
/// [`vec_soft_max_f32`], then the row scaled by `(float)(1/sum)`. ggml's rows hold every KV cell
/// of the padded view (a multiple of 256, the masked ones -inf, whose exponentials are exact
/// zeros), so the row here is padded with -inf to a multiple of 8 before the sum: only then do
/// its groups of eight fall where ggml's do.
#[inline(always)]
pub fn softmax(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| if m > v { m } else { v });
    let n = row.len();
    let mut x = row.to_vec();
    x.resize(n.next_multiple_of(8), f32::NEG_INFINITY);
    let mut y = vec![0.0f32; x.len()];
    let sum = vec_soft_max_f32(&mut y, &x, max);
    let inv = (1.0 / sum) as f32;
    for (r, v) in row.iter_mut().zip(&y) {
        *r = v * inv;
    }
}

/// Grouped-query attention for one query position over the first `n_kv` cached positions.
///
/// q (n_heads, head_dim) post-RoPE; k_cache/v_cache (n_ctx, n_kv_heads, head_dim) rows;
/// out (n_heads, head_dim). Query head h reads KV head `h / (n_heads / n_kv_heads)` (ggml's
/// broadcast in `mul_mat`). As llama.cpp without flash attention for one token: `kq` is
/// `ggml_vec_dot_f32(k_j, q)` per cell, scaled by `1/sqrt(head_dim)` (`ggml_vec_scale_f32`),
/// then [`softmax`]; each output channel is `ggml_vec_dot_f32` of the channel's values over
/// the cells (llama.cpp keeps V transposed for exactly this product) with the probabilities,
/// the cells padded with zeros to a multiple of 32 as ggml's padded KV view is. `kq_out` and
/// `probs_out`, when given, receive the (n_heads, n_kv) raw scores (llama.cpp's `kq`) and
/// probabilities (`kq_soft_max`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    n_kv: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    out: &mut [f32],
    kq_out: Option<&mut [f32]>,
    probs_out: Option<&mut [f32]>,
) {
    attention_with(vec_dot_f32, q, k_cache, v_cache, n_kv, n_heads, n_kv_heads, head_dim, out, kq_out, probs_out)
}

/// [`attention`] with the `ggml_vec_dot_f32` implementation passed in: the spec's, or a twin
/// proven bit-identical to it (`simd` passes its AVX2 one).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn attention_with(
    vec_dot_f32: impl Fn(&[f32], &[f32]) -> f32,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    n_kv: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    out: &mut [f32],
    kq_out: Option<&mut [f32]>,
    probs_out: Option<&mut [f32]>,
) {
    let window = Window { first: 0, cells: usize::MAX, scale: 1.0f32 / (head_dim as f32).sqrt() };
    attention_window(vec_dot_f32, q, k_cache, v_cache, n_kv, &window, n_heads, n_kv_heads, head_dim, out, kq_out, probs_out)
}

/// Which cached positions a query attends to and how its scores are scaled.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// The first position attended to (0, or the start of a sliding window: llama.cpp masks the
    /// cells before it with -inf, so they add exact zeros to every sum).
    pub first: usize,
    /// Cells of the cache: position p is kept in cell `p % cells` (a ring for sliding-window
    /// layers; `usize::MAX` or the context size otherwise, where the cell is the position).
    pub cells: usize,
    /// The factor of the scores in the softmax (`ggml_soft_max_ext`'s `scale`).
    pub scale: f32,
}

/// Attention of one query position over the positions `window.first..n_kv`, the rest masked:
/// as [`attention`], with every reduction laid out over *positions* exactly as ggml lays it out
/// over the cells of a cache that keeps every position (llama.cpp's cell = position there):
/// the softmax's groups of eight and the value products' 32-lane chunks start at the same
/// multiples of 8 and 32, and the masked positions before the window, whose exponentials and
/// products are exact zeros, are skipped. A ring of `cells` cells therefore gives the bits of a
/// full cache. `kq_out`/`probs_out` rows are (n_heads, n_kv), masked positions left 0.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn attention_window(
    vec_dot_f32: impl Fn(&[f32], &[f32]) -> f32,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    n_kv: usize,
    window: &Window,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    out: &mut [f32],
    mut kq_out: Option<&mut [f32]>,
    mut probs_out: Option<&mut [f32]>,
) {
    let group = n_heads / n_kv_heads;
    let kv_stride = n_kv_heads * head_dim;
    let first = window.first.min(n_kv.saturating_sub(1));
    let base = first / 32 * 32;
    let padded = n_kv.next_multiple_of(32);
    let width = padded - base;
    let cell = |j: usize| j % window.cells;
    // probs[i] is position base + i.
    let mut probs = vec![0.0f32; width];
    // V transposed for this KV head, one zero-padded column of `width` positions per element
    // (ggml keeps V transposed in its cache, so its `vec_dot_f32` reads such columns): built
    // once per KV head and shared by the heads of its group. Only where the values sit changes.
    let mut v_t = vec![0.0f32; head_dim * width];
    for h in 0..n_heads {
        let kvh = h / group;
        if h % group == 0 {
            for j in first..n_kv {
                let row = &v_cache[cell(j) * kv_stride + kvh * head_dim..][..head_dim];
                for (d, &v) in row.iter().enumerate() {
                    v_t[d * width + j - base] = v;
                }
            }
        }
        let qh = &q[h * head_dim..(h + 1) * head_dim];
        let live = first - base..n_kv - base;
        for (i, s) in probs[live.clone()].iter_mut().enumerate() {
            *s = vec_dot_f32(&k_cache[cell(first + i) * kv_stride + kvh * head_dim..][..head_dim], qh);
        }
        if let Some(k) = kq_out.as_deref_mut() {
            k[h * n_kv + first..(h + 1) * n_kv].copy_from_slice(&probs[live.clone()]);
        }
        if window.scale != 1.0 {
            for s in probs[live.clone()].iter_mut() {
                *s *= window.scale;
            }
        }
        // The masked positions of the group of eight the window starts in are -inf in ggml's row.
        for s in probs[..first - base].iter_mut() {
            *s = f32::NEG_INFINITY;
        }
        softmax(&mut probs[first / 8 * 8 - base..n_kv - base]);
        if let Some(p) = probs_out.as_deref_mut() {
            p[h * n_kv + first..(h + 1) * n_kv].copy_from_slice(&probs[live.clone()]);
        }
        // Masked positions carry probability 0 into the value products (the cells after n_kv
        // were never written).
        probs[..first - base].fill(0.0);
        let oh = &mut out[h * head_dim..(h + 1) * head_dim];
        for (d, o) in oh.iter_mut().enumerate() {
            *o = vec_dot_f32(&v_t[d * width..(d + 1) * width], &probs);
        }
    }
}

/// ggml's GELU in f32 (`ggml_gelu_f32`, the tanh approximation), with the one contraction GCC
/// makes of it where FMA is enabled (ggml-cpu is built with `-mfma` and GNU C's default
/// `-ffp-contract=fast`): `1 + a*x*x` becomes `fma(a*x, x, 1)`. `tanhf` is the C library's.
pub fn gelu_f32(x: f32) -> f32 {
    const GELU_COEF_A: f32 = 0.044715;
    const SQRT_2_OVER_PI: f32 = 0.797_884_560_802_865_4;
    let inner = (GELU_COEF_A * x).mul_add(x, 1.0);
    0.5 * x * (1.0 + libm_tanhf(SQRT_2_OVER_PI * x * inner))
}

/// The C library's `tanhf` (glibc on the reference machine: ggml calls it, and Rust's
/// `f32::tanh` calls the same symbol).
#[inline(always)]
fn libm_tanhf(x: f32) -> f32 {
    x.tanh()
}

/// ggml's GELU table (`ggml_table_gelu_f16`, built by `ggml_cpu_init`): for every f16 bit
/// pattern, the f16 of [`gelu_f32`] of its value. 128 KB, built once. A NaN input gives the
/// quiet NaN of its sign without payload (0x7e00 / 0xfe00), as the compiled C does: x86 carries
/// the first operand's NaN through a product, and there that operand is `1 + tanhf(NaN)`.
pub fn gelu_table() -> &'static [u16; 1 << 16] {
    static TABLE: std::sync::OnceLock<Box<[u16; 1 << 16]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0u16; 1 << 16]);
        for (i, e) in t.iter_mut().enumerate() {
            let x = f16::from_bits(i as u16);
            *e = if x.is_nan() { 0x7e00 | (i as u16 & 0x8000) } else { f16::from_f32(gelu_f32(x.to_f32())).to_bits() };
        }
        t
    })
}

/// `geglu`: out = gelu(gate) * up, element-wise, as `ggml_vec_geglu_f32` with `GGML_GELU_FP16`
/// (ggml's build): gate <= -10 gives 0, gate >= 10 gives gate * up, otherwise the table entry of
/// gate rounded to f16 (round to nearest even), widened, times up.
pub fn geglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let table = gelu_table();
    for ((o, &x), &g) in out.iter_mut().zip(gate).zip(up) {
        *o = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * g
        } else {
            f16::from_bits(table[f16::from_f32(x).to_bits() as usize]).to_f32() * g
        };
    }
}

/// `scale`: x *= s, element-wise (`ggml_scale` with no bias: `ggml_vec_scale_f32`).
pub fn scale(x: &mut [f32], s: f32) {
    for v in x.iter_mut() {
        *v *= s;
    }
}

/// `silu(x) = x / (1 + e^-x)` with glibc's `expf`, as ggml's scalar `ggml_silu_f32` (used for
/// the elements past the last multiple of 8).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `swiglu`: out = silu(gate) * up, element-wise, as `ggml_vec_swiglu_f32` (AVX2 + FMA path):
/// groups of 8 take the vectorized [`v_silu`], the remainder the scalar [`silu`].
#[inline(always)]
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n8 = gate.len() / 8 * 8;
    for i in 0..gate.len() {
        let s = if i < n8 { v_silu(gate[i]) } else { silu(gate[i]) };
        out[i] = s * up[i];
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
        attention(&q, &k, &v, 1, nh, nkv, hd, &mut out, None, None);
        for h in 0..nh {
            assert_eq!(&out[h * hd..(h + 1) * hd], &v[(h / 2) * hd..(h / 2 + 1) * hd]);
        }
    }
}
