//! Each CUDA kernel as a host function of the same name and signature shape as its CPU reference
//! in `backend::cpu::{ops, quant}`: upload, launch, download. For the parity tests and the
//! `cuda-check` tool; the forward pass launches the kernels directly on device buffers.
//!
//! These are slow (synchronous copies every call) and never used on the generation path.

use crate::backend::cpu::kquant::{BlockQ8K, QK_K};
use crate::backend::cpu::ops as cpu_ops;
use crate::backend::cpu::quant::{BlockQ8_1, QMatrix, QK};
use crate::backend::BackendError;
use crate::sampler::{PickArgs, Picked};

use super::device::{Arg, DevBuf, Gpu};
use super::launch::MmaKernel;
use super::weights::{push_stacked, ArenaBuilder};

fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per).max(1) as u32
}

/// Device buffers of quantized activation rows: aq (n_tok, width) int8, ads (n_tok, width/32) (d, s).
pub(crate) struct QAct {
    pub aq: DevBuf,
    pub ads: DevBuf,
}

impl QAct {
    pub fn alloc(gpu: &Gpu, n_tok: usize, width: usize) -> Result<QAct, BackendError> {
        Ok(QAct { aq: gpu.alloc(n_tok * width)?, ads: gpu.alloc(n_tok * width / QK * 8)? })
    }

    /// Downloads as the CPU's block type.
    pub fn read(&self, gpu: &Gpu, n_tok: usize, width: usize) -> Result<Vec<BlockQ8_1>, BackendError> {
        let qs: Vec<i8> = gpu.read(self.aq.ptr(), n_tok * width)?;
        let ds: Vec<f32> = gpu.read(self.ads.ptr(), n_tok * width / QK * 2)?;
        Ok(qs
            .chunks_exact(QK)
            .zip(ds.chunks_exact(2))
            .map(|(q, d)| {
                let mut b = BlockQ8_1 { d: d[0], s: d[1], qs: [0; QK] };
                b.qs.copy_from_slice(q);
                b
            })
            .collect())
    }
}

/// `quantize_row_q8_1` over `n_tok` rows of `x`, on the device (`quantize_q8_1`).
pub fn quantize_row_q8_1(gpu: &Gpu, x: &[f32], n_tok: usize) -> Result<Vec<BlockQ8_1>, BackendError> {
    let width = x.len() / n_tok;
    let xd = gpu.upload(x)?;
    let qa = QAct::alloc(gpu, n_tok, width)?;
    quantize_dev(gpu, xd.ptr(), &qa, n_tok, width)?;
    qa.read(gpu, n_tok, width)
}

pub(crate) fn quantize_dev(gpu: &Gpu, x: u64, qa: &QAct, n_tok: usize, width: usize) -> Result<(), BackendError> {
    gpu.launch(
        "quantize_q8_1",
        (blocks(width / QK, 4), n_tok as u32, 1),
        128,
        0,
        &[Arg::Ptr(x), Arg::Ptr(qa.aq.ptr()), Arg::Ptr(qa.ads.ptr()), Arg::I32(width as i32)],
    )
}

/// `rmsnorm`: x (n_tok, dim) with weight w (dim) -> (n_tok, dim), on the device (`rmsnorm_f32`).
pub fn rmsnorm(gpu: &Gpu, x: &[f32], w: &[f32], eps: f32) -> Result<Vec<f32>, BackendError> {
    let dim = w.len();
    let n_tok = x.len() / dim;
    let (xd, wd, out) = (gpu.upload(x)?, gpu.upload(w)?, gpu.alloc(x.len() * 4)?);
    gpu.launch(
        "rmsnorm_f32",
        (n_tok as u32, 1, 1),
        128,
        0,
        &[Arg::Ptr(xd.ptr()), Arg::Ptr(wd.ptr()), Arg::Ptr(out.ptr()), Arg::I32(dim as i32), Arg::F32(eps)],
    )?;
    gpu.read(out.ptr(), x.len())
}

/// The fused `rmsnorm_q8`: the normalized rows and their Q8_1 blocks.
pub fn rmsnorm_q8(gpu: &Gpu, x: &[f32], w: &[f32], eps: f32) -> Result<(Vec<f32>, Vec<BlockQ8_1>), BackendError> {
    let dim = w.len();
    let n_tok = x.len() / dim;
    let (xd, wd, out) = (gpu.upload(x)?, gpu.upload(w)?, gpu.alloc(x.len() * 4)?);
    let qa = QAct::alloc(gpu, n_tok, dim)?;
    gpu.launch(
        "rmsnorm_q8",
        (n_tok as u32, 1, 1),
        128,
        0,
        &[
            Arg::Ptr(xd.ptr()),
            Arg::Ptr(wd.ptr()),
            Arg::Ptr(out.ptr()),
            Arg::Ptr(0),
            Arg::Ptr(qa.aq.ptr()),
            Arg::Ptr(qa.ads.ptr()),
            Arg::I32(dim as i32),
            Arg::F32(eps),
        ],
    )?;
    Ok((gpu.read(out.ptr(), x.len())?, qa.read(gpu, n_tok, dim)?))
}

/// `matmul`: W (n_out, n_in) @ x (n_tok, n_in)ᵀ -> (n_tok, n_out), on the device: activations
/// quantized by `quantize_q8_1` (quantized weights) then the `matvec_*` kernel of the type.
pub fn matmul(gpu: &Gpu, w: &QMatrix<'_>, x: &[f32], n_tok: usize) -> Result<Vec<f32>, BackendError> {
    let mut arena = ArenaBuilder::default();
    let m = push_stacked(&mut arena, std::slice::from_ref(w));
    let wbuf = arena.upload(gpu)?;
    let m = m.resolve(wbuf.ptr());
    let xd = gpu.upload(x)?;
    let out = gpu.alloc(n_tok * w.n_out * 4)?;
    let qa = QAct::alloc(gpu, n_tok, w.n_in)?;
    if m.is_quantized() {
        quantize_dev(gpu, xd.ptr(), &qa, n_tok, w.n_in)?;
    }
    super::launch::launch_matvec(gpu, &m, xd.ptr(), qa.aq.ptr(), qa.ads.ptr(), n_tok, out.ptr(), w.n_out, super::launch::Epilogue::Store, None)?;
    gpu.read(out.ptr(), n_tok * w.n_out)
}

/// `matmul` through tensor-core kernel `k` whatever `launch_matvec` would pick (n_out % 16 ==
/// 0, a repacked quantized type), launched `reps` times (at least once) back to back: the
/// result of the last and the mean device time per launch in µs (one stream synchronization
/// around all of them, so the host's launch cost overlaps the kernels).
pub fn matmul_mma(gpu: &Gpu, w: &QMatrix<'_>, x: &[f32], n_tok: usize, k: MmaKernel, reps: usize) -> Result<(Vec<f32>, f64), BackendError> {
    let (m, _wbuf) = upload_mma(gpu, w)?;
    let out = gpu.alloc(n_tok * w.n_out * 4)?;
    let qa = quantized_input(gpu, x, n_tok, w.n_in)?;
    let t = std::time::Instant::now();
    for _ in 0..reps.max(1) {
        super::launch::launch_mma(gpu, &m, k, qa.aq.ptr(), qa.ads.ptr(), n_tok, out.ptr(), w.n_out, super::launch::Epilogue::Store)?;
    }
    gpu.sync()?;
    let us = t.elapsed().as_secs_f64() * 1e6 / reps.max(1) as f64;
    Ok((gpu.read(out.ptr(), n_tok * w.n_out)?, us))
}

/// What the Q|K|V epilogue leaves for positions `pos0..`: (RoPE'd Q rows, the K cache rows, the
/// V cache rows).
pub type QkvRows = (Vec<f32>, Vec<f32>, Vec<f32>);

/// The tensor-core product of `w` (Q|K|V stacked: q_dim + 2 kv_dim rows) through kernel `k`
/// with the fused Q|K|V epilogue (biases, NORM RoPE of `rope`, the K/V cache writes) at
/// positions `pos0..pos0 + n_tok`: (RoPE'd Q rows, the K cache rows, the V cache rows) of those
/// positions, as `rope_store_kv` returns them.
#[allow(clippy::too_many_arguments)]
pub fn matmul_mma_qkv(
    gpu: &Gpu,
    w: &QMatrix<'_>,
    x: &[f32],
    n_tok: usize,
    k: MmaKernel,
    rope: &cpu_ops::Rope,
    (q_dim, kv_dim): (usize, usize),
    biases: [Option<&[f32]>; 3],
    pos0: usize,
) -> Result<QkvRows, BackendError> {
    let (m, _wbuf) = upload_mma(gpu, w)?;
    let o = QkvOut::new(gpu, rope, n_tok, (q_dim, kv_dim), biases, pos0)?;
    let qa = quantized_input(gpu, x, n_tok, w.n_in)?;
    let epi = super::launch::Epilogue::Qkv {
        q_out: o.q.ptr(),
        k_cache: o.kc.ptr(),
        v_cache: o.vc.ptr(),
        table: o.table.ptr(),
        params: o.params.ptr(),
        bq: o.bias(0),
        bk: o.bias(1),
        bv: o.bias(2),
        dim: q_dim,
        kv_dim,
        head_dim: rope.head_dim,
    };
    super::launch::launch_mma(gpu, &m, k, qa.aq.ptr(), qa.ads.ptr(), n_tok, 0, 0, epi)?;
    o.read(gpu)
}

/// The inputs and outputs of a Q|K|V epilogue at positions `pos0..pos0 + n_tok` on the device
/// (`rope_store_kv` and the fused tensor-core one): the RoPE table and params, the biases, the
/// Q rows and caches of `pos0 + n_tok` positions.
struct QkvOut {
    table: DevBuf,
    params: DevBuf,
    biases: Vec<Option<DevBuf>>,
    q: DevBuf,
    kc: DevBuf,
    vc: DevBuf,
    n_tok: usize,
    pos0: usize,
    q_dim: usize,
    kv_dim: usize,
}

impl QkvOut {
    fn new(
        gpu: &Gpu,
        rope: &cpu_ops::Rope,
        n_tok: usize,
        (q_dim, kv_dim): (usize, usize),
        biases: [Option<&[f32]>; 3],
        pos0: usize,
    ) -> Result<QkvOut, BackendError> {
        let n_pos = pos0 + n_tok;
        Ok(QkvOut {
            table: gpu.upload(&rope_table(rope, n_pos))?,
            params: gpu.upload(&[pos0 as i32, 0, 0, 0])?,
            biases: biases.iter().map(|b| b.map(|b| gpu.upload(b)).transpose()).collect::<Result<_, _>>()?,
            q: gpu.alloc(n_tok * q_dim * 4)?,
            kc: gpu.alloc(n_pos * kv_dim * 4)?,
            vc: gpu.alloc(n_pos * kv_dim * 4)?,
            n_tok,
            pos0,
            q_dim,
            kv_dim,
        })
    }

    /// Bias `i` (Q, K, V) on the device, 0 where there is none.
    fn bias(&self, i: usize) -> u64 {
        self.biases[i].as_ref().map_or(0, |d| d.ptr())
    }

    /// The Q rows and the caches' rows of positions `pos0..`.
    fn read(&self, gpu: &Gpu) -> Result<QkvRows, BackendError> {
        let (n_pos, off) = (self.pos0 + self.n_tok, self.pos0 * self.kv_dim);
        let k: Vec<f32> = gpu.read(self.kc.ptr(), n_pos * self.kv_dim)?;
        let v: Vec<f32> = gpu.read(self.vc.ptr(), n_pos * self.kv_dim)?;
        Ok((gpu.read(self.q.ptr(), self.n_tok * self.q_dim)?, k[off..].to_vec(), v[off..].to_vec()))
    }
}

/// The tensor-core product of `w` (gate|up stacked: 2 ffn rows) through kernel `k` with the
/// fused SwiGLU epilogue: the SwiGLU rows (n_tok, ffn) and their Q8_1 blocks, as `swiglu`
/// returns them.
pub fn matmul_mma_swiglu(gpu: &Gpu, w: &QMatrix<'_>, x: &[f32], n_tok: usize, k: MmaKernel) -> Result<(Vec<f32>, Vec<BlockQ8_1>), BackendError> {
    let (m, _wbuf) = upload_mma(gpu, w)?;
    let ffn = w.n_out / 2;
    let qa = quantized_input(gpu, x, n_tok, w.n_in)?;
    let out = gpu.alloc(n_tok * ffn * 4)?;
    let sw = QAct::alloc(gpu, n_tok, ffn)?;
    let epi = super::launch::Epilogue::Swiglu { out: out.ptr(), aq: sw.aq.ptr(), ads: sw.ads.ptr(), ffn };
    super::launch::launch_mma(gpu, &m, k, qa.aq.ptr(), qa.ads.ptr(), n_tok, 0, 0, epi)?;
    Ok((gpu.read(out.ptr(), n_tok * ffn)?, sw.read(gpu, n_tok, ffn)?))
}

/// `w` on the device for the tensor-core kernels (n_out % 16 == 0, a repacked quantized type).
fn upload_mma(gpu: &Gpu, w: &QMatrix<'_>) -> Result<(super::weights::DevMatrix, DevBuf), BackendError> {
    let mut arena = ArenaBuilder::default();
    let m = push_stacked(&mut arena, std::slice::from_ref(w));
    let wbuf = arena.upload(gpu)?;
    let m = m.resolve(wbuf.ptr());
    if !m.is_quantized() || !m.n_out.is_multiple_of(16) {
        return Err(BackendError::Device(format!("no tensor-core product for {} x {} {} weights", m.n_out, m.n_in, m.ty.name())));
    }
    Ok((m, wbuf))
}

/// Rows `x` (n_tok, width) quantized to Q8_1 on the device.
fn quantized_input(gpu: &Gpu, x: &[f32], n_tok: usize, width: usize) -> Result<QAct, BackendError> {
    let xd = gpu.upload(x)?;
    let qa = QAct::alloc(gpu, n_tok, width)?;
    quantize_dev(gpu, xd.ptr(), &qa, n_tok, width)?;
    gpu.sync()?;
    Ok(qa)
}

/// A RoPE table for positions `0..n_pos`: `ops::Rope::cache` per position, concatenated.
pub fn rope_table(rope: &cpu_ops::Rope, n_pos: usize) -> Vec<f32> {
    (0..n_pos).flat_map(|p| rope.cache(p)).collect()
}

/// `rope_norm` (NORM pairs) or `rope_neox` (NEOX pairs), as `rope.kind` says, on rows `x`
/// (n_tok, width) at positions `pos0..pos0 + n_tok`, on the device.
pub fn rope(gpu: &Gpu, rope: &cpu_ops::Rope, x: &[f32], n_tok: usize, pos0: usize) -> Result<Vec<f32>, BackendError> {
    let width = x.len() / n_tok;
    let table = gpu.upload(&rope_table(rope, pos0 + n_tok))?;
    let params = gpu.upload(&[pos0 as i32, 0, 0, 0])?;
    let xd = gpu.upload(x)?;
    let kernel = match rope.kind {
        cpu_ops::RopeKind::Norm => "rope_norm",
        cpu_ops::RopeKind::Neox => "rope_neox",
    };
    gpu.launch(
        kernel,
        (n_tok as u32, 1, 1),
        256,
        0,
        &[Arg::Ptr(xd.ptr()), Arg::Ptr(table.ptr()), Arg::Ptr(params.ptr()), Arg::I32(width as i32), Arg::I32(rope.head_dim as i32)],
    )?;
    gpu.read(xd.ptr(), x.len())
}

/// `rope_norm` on rows `x` (n_tok, width) at positions `pos0..pos0 + n_tok`, on the device.
pub fn rope_norm(gpu: &Gpu, x: &[f32], n_tok: usize, head_dim: usize, pos0: usize, base: f32) -> Result<Vec<f32>, BackendError> {
    rope(gpu, &cpu_ops::Rope::plain(cpu_ops::RopeKind::Norm, head_dim, base), x, n_tok, pos0)
}

/// The `rope_store_kv` kernel on rows `qkv` (n_tok, q_dim + 2 kv_dim) at positions
/// `pos0..pos0 + n_tok`, with optional biases: returns (RoPE'd Q rows, the K cache rows, the V
/// cache rows) of those positions.
#[allow(clippy::too_many_arguments)]
pub fn rope_store_kv(
    gpu: &Gpu,
    rope: &cpu_ops::Rope,
    qkv: &[f32],
    n_tok: usize,
    q_dim: usize,
    kv_dim: usize,
    biases: [Option<&[f32]>; 3],
    pos0: usize,
) -> Result<QkvRows, BackendError> {
    let o = QkvOut::new(gpu, rope, n_tok, (q_dim, kv_dim), biases, pos0)?;
    let src = gpu.upload(qkv)?;
    gpu.launch(
        "rope_store_kv",
        (n_tok as u32, 1, 1),
        256,
        0,
        &[
            Arg::Ptr(src.ptr()),
            Arg::Ptr(o.bias(0)),
            Arg::Ptr(o.bias(1)),
            Arg::Ptr(o.bias(2)),
            Arg::Ptr(o.q.ptr()),
            Arg::Ptr(o.kc.ptr()),
            Arg::Ptr(o.vc.ptr()),
            Arg::Ptr(o.table.ptr()),
            Arg::Ptr(o.params.ptr()),
            Arg::I32(q_dim as i32),
            Arg::I32(kv_dim as i32),
            Arg::I32(rope.head_dim as i32),
            Arg::I32((rope.kind == cpu_ops::RopeKind::Neox) as i32),
        ],
    )?;
    o.read(gpu)
}

/// `attention` for query rows q (n_tok, n_heads*head_dim) at positions `pos0..pos0 + n_tok`
/// over caches (n_pos, n_kv_heads*head_dim), n_pos >= pos0 + n_tok; query t sees positions
/// 0..=pos0 + t. Returns the f32 output and its Q8_1 blocks.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    gpu: &Gpu,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    pos0: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
) -> Result<(Vec<f32>, Vec<BlockQ8_1>), BackendError> {
    let dim = n_heads * head_dim;
    let n_tok = q.len() / dim;
    let n_pos = k_cache.len() / (n_kv_heads * head_dim);
    assert!(n_pos >= pos0 + n_tok, "the caches must hold every position attended to");
    let (qd, kd, vd) = (gpu.upload(q)?, gpu.upload(k_cache)?, gpu.upload(v_cache)?);
    let params = gpu.upload(&[pos0 as i32, 0, 0, 0])?;
    let out = gpu.alloc(q.len() * 4)?;
    let qa = QAct::alloc(gpu, n_tok, dim)?;
    launch_attention(gpu, qd.ptr(), kd.ptr(), vd.ptr(), out.ptr(), qa.aq.ptr(), qa.ads.ptr(), params.ptr(), n_tok, n_pos, n_heads, n_kv_heads, head_dim)?;
    Ok((gpu.read(out.ptr(), q.len())?, qa.read(gpu, n_tok, dim)?))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_attention(
    gpu: &Gpu,
    q: u64,
    k: u64,
    v: u64,
    out: u64,
    aq: u64,
    ads: u64,
    params: u64,
    n_tok: usize,
    n_ctx: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
) -> Result<(), BackendError> {
    let scale = 1.0f32 / (head_dim as f32).sqrt();
    // Both kernels' arguments begin alike: the tensors, the positions, the head counts.
    let args = |tail: &[Arg]| -> Vec<Arg> {
        let head = [
            Arg::Ptr(q),
            Arg::Ptr(k),
            Arg::Ptr(v),
            Arg::Ptr(out),
            Arg::Ptr(aq),
            Arg::Ptr(ads),
            Arg::Ptr(params),
            Arg::I32(n_heads as i32),
            Arg::I32(n_kv_heads as i32),
        ];
        head.into_iter().chain(tail.iter().copied()).collect()
    };
    if let Some((kernel, rows, stride, smem)) = attention_rows_plan(gpu, n_tok, n_ctx, n_heads, n_kv_heads, head_dim) {
        let tail = [Arg::F32(scale), Arg::I32(stride as i32), Arg::I32(rows as i32), Arg::I32(n_tok as i32)];
        return gpu.launch(kernel, (n_kv_heads as u32, n_tok.div_ceil(rows) as u32, 1), ATTENTION_THREADS as u32, smem as u32, &args(&tail));
    }
    let tail = [Arg::I32(head_dim as i32), Arg::F32(scale), Arg::I32(n_ctx as i32)];
    gpu.launch("attention_f32", (n_heads as u32, n_tok as u32, 1), ATTENTION_THREADS as u32, attention_smem(head_dim, n_ctx) as u32, &args(&tail))
}

/// `attention_window_f32` (gemma3): attention over the window of each query position (n_swa 0:
/// every earlier position), scores times `scale`, one channel per thread (head_dim <= 256).
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_attention_window(
    gpu: &Gpu,
    q: u64,
    (k, v): (u64, u64),
    (out, aq, ads): (u64, u64, u64),
    params: u64,
    n_tok: usize,
    n_ctx: usize,
    (n_heads, n_kv_heads, head_dim): (usize, usize, usize),
    scale: f32,
    n_swa: i32,
) -> Result<(), BackendError> {
    let threads = head_dim.next_multiple_of(32).max(128) as u32;
    let smem = ((head_dim + n_ctx + n_ctx / 8 + 16) * 4) as u32;
    gpu.launch(
        "attention_window_f32",
        (n_heads as u32, n_tok as u32, 1),
        threads,
        smem,
        &[
            Arg::Ptr(q),
            Arg::Ptr(k),
            Arg::Ptr(v),
            Arg::Ptr(out),
            Arg::Ptr(aq),
            Arg::Ptr(ads),
            Arg::Ptr(params),
            Arg::I32(n_heads as i32),
            Arg::I32(n_kv_heads as i32),
            Arg::I32(head_dim as i32),
            Arg::F32(scale),
            Arg::I32(n_swa),
        ],
    )
}

/// `scale`: x *= s on the device (`scale_f32`).
pub(crate) fn launch_scale(gpu: &Gpu, x: u64, s: f32, n: usize) -> Result<(), BackendError> {
    gpu.launch("scale_f32", (blocks(n, 256), 1, 1), 256, 0, &[Arg::Ptr(x), Arg::F32(s), Arg::I32(n as i32)])
}

/// `rmsnorm` of every head in place (`head_rmsnorm_f32`): rows (t, h) of `head_dim` at
/// x[t * stride + off + h * head_dim].
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_head_rmsnorm(
    gpu: &Gpu,
    x: u64,
    stride: usize,
    off: usize,
    n_tok: usize,
    heads: usize,
    head_dim: usize,
    w: u64,
    eps: f32,
) -> Result<(), BackendError> {
    gpu.launch(
        "head_rmsnorm_f32",
        (n_tok as u32, heads as u32, 1),
        128,
        0,
        &[Arg::Ptr(x), Arg::I32(stride as i32), Arg::I32(off as i32), Arg::I32(head_dim as i32), Arg::Ptr(w), Arg::F32(eps)],
    )
}

/// `geglu`: gelu(gate) * up through ggml's table (`geglu_f32`), gate|up rows of `gu`, the f32
/// result to `out` and its Q8_1 blocks to (aq, ads).
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_geglu(gpu: &Gpu, gu: u64, n_tok: usize, ffn: usize, out: u64, aq: u64, ads: u64, table: u64) -> Result<(), BackendError> {
    gpu.launch(
        "geglu_f32",
        ((ffn / QK).div_ceil(4) as u32, n_tok as u32, 1),
        128,
        0,
        &[Arg::Ptr(gu), Arg::I32(2 * ffn as i32), Arg::I32(ffn as i32), Arg::Ptr(out), Arg::Ptr(aq), Arg::Ptr(ads), Arg::I32(ffn as i32), Arg::Ptr(table)],
    )
}

/// `geglu` on the device (`geglu_f32` with the CPU's GELU table uploaded), f32 results.
pub fn geglu(gpu: &Gpu, gate: &[f32], up: &[f32], n_tok: usize) -> Result<Vec<f32>, BackendError> {
    let n = gate.len() / n_tok;
    let mut gu = Vec::with_capacity(2 * gate.len());
    for t in 0..n_tok {
        gu.extend_from_slice(&gate[t * n..(t + 1) * n]);
        gu.extend_from_slice(&up[t * n..(t + 1) * n]);
    }
    let gud = gpu.upload(&gu)?;
    let table: Vec<f32> = cpu_ops::gelu_table().chunks_exact(2).map(|p| f32::from_bits(p[0] as u32 | (p[1] as u32) << 16)).collect();
    let td = gpu.upload(&table)?;
    let out = gpu.alloc(gate.len() * 4)?;
    let qa = QAct::alloc(gpu, n_tok, n)?;
    launch_geglu(gpu, gud.ptr(), n_tok, n, out.ptr(), qa.aq.ptr(), qa.ads.ptr(), td.ptr())?;
    gpu.read(out.ptr(), gate.len())
}

/// Threads of `attention_f32`, which is also its K/V tile length in positions.
pub const ATTENTION_THREADS: usize = 128;

/// Dynamic shared memory of `attention_f32`: q and output of one head, a padded K/V tile and
/// one score per position.
pub fn attention_smem(head_dim: usize, n_ctx: usize) -> usize {
    // q, the output, one K/V tile, the row of scores and its group sums of eight.
    (2 * head_dim + ATTENTION_THREADS * (head_dim + 1) + n_ctx + n_ctx / 8 + 16) * 4
}

/// How `attention_rows_f32_p*` runs a batch, where it can: (kernel, query rows per block, the
/// score row stride, dynamic shared memory). It takes several positions (one goes to
/// `attention_f32`), heads of 64 and at most 8 query heads per KV head; the rows per block are
/// the most that fit 8 pairs, fewer where the context's score rows would not fit in shared
/// memory (none: `attention_f32`). Results do not depend on the choice.
pub(crate) fn attention_rows_plan(
    gpu: &Gpu,
    n_tok: usize,
    n_ctx: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
) -> Option<(&'static str, usize, usize, usize)> {
    let g = n_heads / n_kv_heads;
    if n_tok < 2 || head_dim != 64 || g == 0 || g > 8 || !super::options::options().attention_rows {
        return None;
    }
    let stride = n_ctx.next_multiple_of(8);
    let smem = |np: usize| (np * head_dim + ATTENTION_THREADS * (head_dim + 1) + np * stride + np * stride / 8) * 4;
    // The most rows whose pairs fit the larger kernel, then the smaller kernel where they fit it.
    let mut rows = (8 / g).min(n_tok);
    while rows > 0 {
        let np = if g * rows <= 6 { 6 } else { 8 };
        if smem(np) <= gpu.max_dynamic_smem {
            return Some((if np == 6 { "attention_rows_f32_p6" } else { "attention_rows_f32_p8" }, rows, stride, smem(np)));
        }
        rows -= 1;
    }
    None
}

/// Dynamic shared memory of `attention_head` with `dual` (a second K/V tile), as the persistent
/// decode kernel runs it.
pub fn attention_smem_dual(head_dim: usize, n_ctx: usize) -> usize {
    attention_smem(head_dim, n_ctx) + ATTENTION_THREADS * (head_dim + 1) * 4
}

/// `swiglu`: silu(gate) * up, on the device (`swiglu_f32`), with its Q8_1 blocks.
pub fn swiglu(gpu: &Gpu, gate: &[f32], up: &[f32], n_tok: usize) -> Result<(Vec<f32>, Vec<BlockQ8_1>), BackendError> {
    let n = gate.len() / n_tok;
    let mut gu = Vec::with_capacity(2 * gate.len());
    for t in 0..n_tok {
        gu.extend_from_slice(&gate[t * n..(t + 1) * n]);
        gu.extend_from_slice(&up[t * n..(t + 1) * n]);
    }
    let gud = gpu.upload(&gu)?;
    let out = gpu.alloc(gate.len() * 4)?;
    let qa = QAct::alloc(gpu, n_tok, n)?;
    gpu.launch(
        "swiglu_f32",
        (blocks(n / QK, 4), n_tok as u32, 1),
        128,
        0,
        &[
            Arg::Ptr(gud.ptr()),
            Arg::I32(2 * n as i32),
            Arg::I32(n as i32),
            Arg::Ptr(out.ptr()),
            Arg::Ptr(qa.aq.ptr()),
            Arg::Ptr(qa.ads.ptr()),
            Arg::I32(n as i32),
        ],
    )?;
    Ok((gpu.read(out.ptr(), gate.len())?, qa.read(gpu, n_tok, n)?))
}

/// `add`: x + y element-wise, on the device (`add_f32`).
pub fn add(gpu: &Gpu, x: &[f32], y: &[f32]) -> Result<Vec<f32>, BackendError> {
    let (xd, yd) = (gpu.upload(x)?, gpu.upload(y)?);
    launch_add(gpu, xd.ptr(), yd.ptr(), x.len())?;
    gpu.read(xd.ptr(), x.len())
}

pub(crate) fn launch_add(gpu: &Gpu, x: u64, y: u64, n: usize) -> Result<(), BackendError> {
    gpu.launch("add_f32", (blocks(n, 256), 1, 1), 256, 0, &[Arg::Ptr(x), Arg::Ptr(y), Arg::I32(n as i32)])
}

/// `f32::exp` element-wise through the kernels' port of glibc's expf (`exp_f32`).
pub fn exp(gpu: &Gpu, x: &[f32]) -> Result<Vec<f32>, BackendError> {
    let xd = gpu.upload(x)?;
    let out = gpu.alloc(x.len() * 4)?;
    gpu.launch("exp_f32", (blocks(x.len(), 256), 1, 1), 256, 0, &[Arg::Ptr(xd.ptr()), Arg::Ptr(out.ptr()), Arg::I32(x.len() as i32)])?;
    gpu.read(out.ptr(), x.len())
}

/// `embedding` of `tokens` from a table given as a matrix (n_vocab rows of dim), on the device.
pub fn embedding(gpu: &Gpu, table: &QMatrix<'_>, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
    let mut arena = ArenaBuilder::default();
    let m = push_stacked(&mut arena, std::slice::from_ref(table));
    let wbuf = arena.upload(gpu)?;
    let m = m.resolve(wbuf.ptr());
    let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let idd = gpu.upload(&ids)?;
    let out = gpu.alloc(tokens.len() * table.n_in * 4)?;
    super::launch::launch_embedding(gpu, &m, idd.ptr(), out.ptr(), 0, tokens.len())?;
    gpu.read(out.ptr(), tokens.len() * table.n_in)
}

/// `kquant::quantize_row_q8_K` over `n_tok` rows of `x`, on the device (`quantize_q8_K`).
#[allow(non_snake_case)]
pub fn quantize_row_q8_K(gpu: &Gpu, x: &[f32], n_tok: usize) -> Result<Vec<BlockQ8K>, BackendError> {
    let width = x.len() / n_tok;
    let (xd, aq, ad, bs) = (gpu.upload(x)?, gpu.alloc(x.len())?, gpu.alloc(x.len() / QK_K * 4)?, gpu.alloc(x.len() / 16 * 2)?);
    quantize_q8_k_dev(gpu, xd.ptr(), aq.ptr(), ad.ptr(), bs.ptr(), n_tok, width)?;
    let qs: Vec<i8> = gpu.read(aq.ptr(), x.len())?;
    let ds: Vec<f32> = gpu.read(ad.ptr(), x.len() / QK_K)?;
    let sums: Vec<i16> = gpu.read(bs.ptr(), x.len() / 16)?;
    Ok((0..x.len() / QK_K)
        .map(|b| {
            let mut blk = BlockQ8K { d: ds[b], qs: [0; QK_K], bsums: [0; QK_K / 16] };
            blk.qs.copy_from_slice(&qs[b * QK_K..(b + 1) * QK_K]);
            blk.bsums.copy_from_slice(&sums[b * 16..(b + 1) * 16]);
            blk
        })
        .collect())
}

pub(crate) fn quantize_q8_k_dev(gpu: &Gpu, x: u64, aq: u64, ad: u64, bs: u64, n_tok: usize, width: usize) -> Result<(), BackendError> {
    gpu.launch(
        "quantize_q8_K",
        ((width / QK_K) as u32, n_tok as u32, 1),
        QK_K as u32,
        0,
        &[Arg::Ptr(x), Arg::Ptr(aq), Arg::Ptr(ad), Arg::Ptr(bs), Arg::I32(width as i32)],
    )
}

pub use super::weights::kquant_kernel;

/// `simd::matmul` for weights of a type added with the k-quants, on the device: the rows of
/// `x` (n_tok, n_in) quantized there (`quantize_q8_1` or `quantize_q8_K`, the type's
/// `vec_dot_type`), then the type's matvec kernel on the GGUF rows as they are. out (n_tok, n_out).
pub fn matmul_kquant(gpu: &Gpu, w: &QMatrix<'_>, x: &[f32], n_tok: usize) -> Result<Vec<f32>, BackendError> {
    let name = kquant_kernel(w.ty).ok_or_else(|| BackendError::Device(format!("no kquant.cu kernel for {} weights", w.ty.name())))?;
    let n_in = w.n_in;
    let (wd, xd, out) = (gpu.upload(w.data)?, gpu.upload(x)?, gpu.alloc(n_tok * w.n_out * 4)?);
    let grid = (blocks(w.n_out, 16), n_tok as u32, 1);
    let dims = [Arg::Ptr(out.ptr()), Arg::I32(n_in as i32), Arg::I32(w.n_out as i32), Arg::Ptr(0), Arg::I32(w.n_out as i32), Arg::I32(0)];
    if w.ty.block_size() == QK_K {
        let (aq, ad, bs) = (gpu.alloc(x.len())?, gpu.alloc(x.len() / QK_K * 4)?, gpu.alloc(x.len() / 16 * 2)?);
        quantize_q8_k_dev(gpu, xd.ptr(), aq.ptr(), ad.ptr(), bs.ptr(), n_tok, n_in)?;
        let mut args = vec![Arg::Ptr(wd.ptr()), Arg::I32(w.row_bytes() as i32), Arg::Ptr(aq.ptr()), Arg::Ptr(ad.ptr()), Arg::Ptr(bs.ptr())];
        args.extend(dims);
        gpu.launch(name, grid, 128, 0, &args)?;
    } else {
        let qa = QAct::alloc(gpu, n_tok, n_in)?;
        quantize_dev(gpu, xd.ptr(), &qa, n_tok, n_in)?;
        let mut args = vec![Arg::Ptr(wd.ptr()), Arg::I32(w.row_bytes() as i32), Arg::Ptr(qa.aq.ptr()), Arg::Ptr(qa.ads.ptr())];
        args.extend(dims);
        gpu.launch(name, grid, 128, 0, &args)?;
    }
    gpu.read(out.ptr(), n_tok * w.n_out)
}

/// `sampler::pick` of rows of logits on the device (`kernels/sample.cu`), keeping the
/// seen-token bitmap between calls as the backend does (a history that continues the last
/// call's marks only its new ids).
pub struct Picker {
    inner: super::pick::DevicePick,
    logits: DevBuf,
    n_vocab: usize,
}

impl Picker {
    pub fn new(gpu: &Gpu, n_vocab: usize) -> Result<Picker, BackendError> {
        Ok(Picker { inner: super::pick::DevicePick::new(gpu, n_vocab, 16)?, logits: gpu.alloc(n_vocab * 4)?, n_vocab })
    }

    /// Whether the device computes these arguments (else `forward_pick` leaves them to the host).
    pub fn supports(&self, args: &PickArgs) -> bool {
        self.inner.supports(args)
    }

    pub fn pick(&mut self, gpu: &Gpu, logits: &[f32], args: &PickArgs) -> Result<Picked, BackendError> {
        assert_eq!(logits.len(), self.n_vocab, "one row of the vocabulary");
        gpu.write(&self.logits, 0, logits)?;
        self.inner.enqueue(gpu, self.logits.ptr(), args)?;
        gpu.sync()?;
        Ok(self.inner.result())
    }
}
