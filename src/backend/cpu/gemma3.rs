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
            for t in 0..n {
                let slot = (pos0 + t) % cells;
                self.k_cache[l][slot * kv_dim..(slot + 1) * kv_dim].copy_from_slice(&k[t * kv_dim..(t + 1) * kv_dim]);
                self.v_cache[l][slot * kv_dim..(slot + 1) * kv_dim].copy_from_slice(&v[t * kv_dim..(t + 1) * kv_dim]);
            }
            let n_kv_total = pos0 + n;
            let row_len = c.n_heads * n_kv_total;
            let want = [tap.wants(TapPoint::Kq(l)), tap.wants(TapPoint::KqSoftmax(l))];
            let mut scores = if want[0] { vec![0.0f32; n * row_len] } else { Vec::new() };
            let mut probs = if want[1] { vec![0.0f32; n * row_len] } else { Vec::new() };
            let mut attn = vec![0.0f32; n * q_dim];
            {
                let (kc, vc) = (&self.k_cache[l], &self.v_cache[l]);
                let qs = &q;
                let cfg = &c;
                let (mut kq_rows, mut p_rows) = (super::per_row(&mut scores, row_len, n), super::per_row(&mut probs, row_len, n));
                self.pool.install(|| {
                    use rayon::prelude::*;
                    let work = attn.par_chunks_mut(q_dim).zip(kq_rows.par_iter_mut()).zip(p_rows.par_iter_mut()).enumerate();
                    work.for_each(|(t, ((out, kq_dst), p_dst))| {
                        let pos = pos0 + t;
                        let n_kv = pos + 1;
                        let window = ops::Window { first: cfg.window_start(l, pos), cells, scale: 1.0 };
                        let mut kq_local = kq_dst.as_ref().map(|_| vec![0.0f32; cfg.n_heads * n_kv]);
                        let mut p_local = p_dst.as_ref().map(|_| vec![0.0f32; cfg.n_heads * n_kv]);
                        let qt = &qs[t * q_dim..(t + 1) * q_dim];
                        simd::attention_window(
                            qt,
                            kc,
                            vc,
                            n_kv,
                            &window,
                            cfg.n_heads,
                            cfg.n_kv_heads,
                            hd,
                            out,
                            kq_local.as_deref_mut(),
                            p_local.as_deref_mut(),
                        );
                        for (dst, src) in [(kq_dst, kq_local), (p_dst, p_local)] {
                            if let (Some(dst), Some(src)) = (dst.as_deref_mut(), src) {
                                for h in 0..cfg.n_heads {
                                    dst[h * n_kv_total..h * n_kv_total + n_kv].copy_from_slice(&src[h * n_kv..(h + 1) * n_kv]);
                                }
                            }
                        }
                    });
                });
            }
            if want[0] {
                tap.record(TapPoint::Kq(l), pos0, n, &scores);
            }
            if want[1] {
                tap.record(TapPoint::KqSoftmax(l), pos0, n, &probs);
            }
            emit(tap, TapPoint::KqvOut(l), &attn);
            let o = self.matmul(&lw.wo, &attn, n);
            emit(tap, TapPoint::AttnOut(l), &o);
            let mut post = vec![0.0f32; n * dim];
            ops::rmsnorm(&o, &gn.attn_post_norm, c.rms_eps, &mut post);
            emit(tap, TapPoint::AttnPostNorm(l), &post);
            // sa_out = attn_post_norm + input (ggml_add(cur, inpL): the same sum either way).
            ops::add(x, &post);
            emit(tap, TapPoint::FfnInp(l), x);

            ops::rmsnorm(&*x, &norms.ffn_norm, c.rms_eps, &mut xn);
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
            ops::rmsnorm(&d, &gn.ffn_post_norm, c.rms_eps, &mut post);
            emit(tap, TapPoint::FfnPostNorm(l), &post);
            ops::add(x, &post);
            emit(tap, TapPoint::LOut(l), x);
        }
        ops::rmsnorm(&*x, &self.output_norm, c.rms_eps, &mut xn);
        emit(tap, TapPoint::ResultNorm, &xn);
        xn
    }
}
