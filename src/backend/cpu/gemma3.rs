//! The gemma3 decoder layers, in llama.cpp's graph order (`src/models/gemma3.cpp`) and ggml's
//! arithmetic: the embeddings scaled by sqrt(dim), per layer the attention norm, the Q/K/V
//! products, RMS norms of each Q and K head, RoPE with the layer's own base, Q scaled by
//! `attn_scale`, attention (through a sliding window of `n_swa` positions on five of every six
//! layers), the output product, its post-attention norm, the residual (`sa_out`), the FFN norm,
//! gate and up products, GEGLU (ggml's f16 GELU table), the down product, its post-FFN norm and
//! the residual (`l_out`). The reference of the CUDA backend's gemma3 path.

use super::{ops, simd, CpuBackend};
use crate::backend::{Tap, TapPoint};

/// Per layer, the gemma3-only norm vectors (f32).
pub(super) struct GemmaNorms {
    pub q_norm: Vec<f32>,
    pub k_norm: Vec<f32>,
    pub attn_post_norm: Vec<f32>,
    pub ffn_post_norm: Vec<f32>,
}

impl CpuBackend {
    /// Scales the embeddings in place (`inp_scaled`: `ggml_scale` by `sqrtf(n_embd)`).
    pub(super) fn gemma3_scale_embeddings(&self, x: &mut [f32]) {
        ops::scale(x, (self.model.config.dim as f32).sqrt());
    }

    /// Every gemma3 decoder layer on the residual stream `x` (n positions from pos0, the scaled
    /// embeddings on entry, l_out of the last layer on exit), then the final norm, returned.
    pub(super) fn gemma3_layers(&mut self, x: &mut [f32], pos0: usize, n: usize, tap: &mut dyn Tap) -> Vec<f32> {
        let c = self.model.config.clone();
        let (dim, kv_dim, hd, q_dim) = (c.dim, c.kv_dim(), c.head_dim, c.q_dim());
        let attn_scale = c.attn_scale.expect("gemma3 configs carry their attention scale");
        let emit = |tap: &mut dyn Tap, p: TapPoint, data: &[f32]| {
            if tap.wants(p) {
                tap.record(p, pos0, n, data);
            }
        };
        let mut xn = vec![0.0f32; n * dim];
        for l in 0..c.n_layers {
            let lw = self.model.layers[l].clone();
            let norms = &self.norms[l];
            let gn = &self.gemma[l];

            ops::rmsnorm(&*x, &norms.attn_norm, c.rms_eps, &mut xn);
            emit(tap, TapPoint::AttnNorm(l), &xn);
            let mut q = self.matmul(&lw.wq, &xn, n);
            let mut k = self.matmul(&lw.wk, &xn, n);
            let v = self.matmul(&lw.wv, &xn, n);
            emit(tap, TapPoint::Q(l), &q);
            emit(tap, TapPoint::K(l), &k);
            emit(tap, TapPoint::V(l), &v);
            // RMS norm of every head (ggml_rms_norm over ne0 = head_dim, then the weight).
            let (q_in, k_in) = (q.clone(), k.clone());
            ops::rmsnorm(&q_in, &gn.q_norm, c.rms_eps, &mut q);
            ops::rmsnorm(&k_in, &gn.k_norm, c.rms_eps, &mut k);
            emit(tap, TapPoint::QNorm(l), &q);
            emit(tap, TapPoint::KNorm(l), &k);
            let rope = &self.layer_ropes[l];
            for t in 0..n {
                let pos = pos0 + t;
                simd::rope(rope, &mut q[t * q_dim..(t + 1) * q_dim], pos);
                simd::rope(rope, &mut k[t * kv_dim..(t + 1) * kv_dim], pos);
            }
            emit(tap, TapPoint::QRope(l), &q);
            emit(tap, TapPoint::KRope(l), &k);
            // Q scaled by f_attention_scale (a power of two, so exact), the softmax scale is 1.
            ops::scale(&mut q, attn_scale);
            let cells = self.cells[l];
            self.store_kv(l, pos0, &k, &v);
            let attn = self.attention_layer(l, &q, pos0, n, tap, &|t, qt, kc, vc, n_kv, out, kq, p| {
                let window = ops::Window { first: c.window_start(l, pos0 + t), cells, scale: 1.0 };
                simd::attention_window(qt, kc, vc, n_kv, &window, c.n_heads, c.n_kv_heads, hd, out, kq, p);
            });
            emit(tap, TapPoint::KqvOut(l), &attn);
            let o = self.matmul(&lw.wo, &attn, n);
            emit(tap, TapPoint::AttnOut(l), &o);
            let mut post = vec![0.0f32; n * dim];
            ops::rmsnorm(&o, &self.gemma[l].attn_post_norm, c.rms_eps, &mut post);
            emit(tap, TapPoint::AttnPostNorm(l), &post);
            // sa_out = attn_post_norm + input (ggml_add(cur, inpL): the same sum either way).
            ops::add(x, &post);
            emit(tap, TapPoint::FfnInp(l), x);

            ops::rmsnorm(&*x, &self.norms[l].ffn_norm, c.rms_eps, &mut xn);
            emit(tap, TapPoint::FfnNorm(l), &xn);
            let g = self.matmul(&lw.w_gate, &xn, n);
            let u = self.matmul(&lw.w_up, &xn, n);
            emit(tap, TapPoint::FfnGate(l), &g);
            emit(tap, TapPoint::FfnUp(l), &u);
            let mut s = vec![0.0f32; g.len()];
            ops::geglu(&g, &u, &mut s);
            emit(tap, TapPoint::FfnGeglu(l), &s);
            let d = self.matmul(&lw.w_down, &s, n);
            emit(tap, TapPoint::FfnOut(l), &d);
            ops::rmsnorm(&d, &self.gemma[l].ffn_post_norm, c.rms_eps, &mut post);
            emit(tap, TapPoint::FfnPostNorm(l), &post);
            ops::add(x, &post);
            emit(tap, TapPoint::LOut(l), x);
        }
        ops::rmsnorm(&*x, &self.output_norm, c.rms_eps, &mut xn);
        emit(tap, TapPoint::ResultNorm, &xn);
        xn
    }
}
