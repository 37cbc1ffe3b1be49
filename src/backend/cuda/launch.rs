//! Host-side launches of the product and embedding kernels (`kernels/matvec.cu`,
//! `kernels/embedding.cu`): argument lists, launch shapes and shared-memory sizes, shared by the
//! forward pass (`forward`), the persistent kernel's sizing (`decode`) and the per-op host
//! functions (`ops`).

use super::device::{Arg, Gpu};
use super::weights::DevMatrix;
use crate::backend::cpu::quant::QK;
use crate::backend::BackendError;
use crate::gguf::GgmlType;

const F32: usize = 4;
/// What a quantized matvec does with its results (see `kernels/matvec.cu`, `mode`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Epilogue {
    /// out[t*stride + r] = v.
    Store,
    /// out[t*stride + r] += v, copied to `tap` (same layout) when not 0.
    Add { tap: u64 },
    /// Q|K|V stacked: bias, RoPE, Q to `q_out`, K/V into the caches (rope_store_kv).
    Qkv { q_out: u64, k_cache: u64, v_cache: u64, table: u64, params: u64, bq: u64, bk: u64, bv: u64, dim: usize, kv_dim: usize, head_dim: usize },
    /// gate|up stacked: swiglu and its Q8_1 blocks (swiglu_f32); `out` may be 0.
    Swiglu { out: u64, aq: u64, ads: u64, ffn: usize },
}

impl Epilogue {
    /// The kernels' `mode` argument (`kernels/matvec.cu`, `kernels/kquant.cu`) and the tap
    /// pointer (0 unless `Add` copies to one).
    pub(crate) fn mode(&self) -> (i32, u64) {
        match *self {
            Epilogue::Store => (0, 0),
            Epilogue::Add { tap } => (1, tap),
            Epilogue::Qkv { .. } => (2, 0),
            Epilogue::Swiglu { .. } => (3, 0),
        }
    }
}

/// Rows per block of the quantized matvec (MODE_SWIGLU uses 64: 32 gate and 32 up rows).
pub(crate) const MV_ROWS: usize = 16;
/// Rows per block for one position: twice the blocks, half the chain per block (a one-position
/// product is latency-bound). Results do not depend on it.
const MV_ROWS_ONE: usize = 8;
/// Tokens per block: each weight block is loaded once per this many tokens.
const MV_TOKENS: usize = 8;
/// Rows per block of the lean one-token kernel (matvec.cu's matvec_one).
const ONE_ROWS: usize = 16;

/// Positions from which quantized products run on the tensor cores (`matvec_mma_*`, the same
/// bits); `WORKER_ORCD_CUDA_MMA=0` keeps every product on the dp4a kernels.
const MMA_MIN_TOKENS: usize = 16;

pub(crate) fn mma_tokens(n_tok: usize) -> bool {
    n_tok >= MMA_MIN_TOKENS && super::options::options().mma
}

/// Whether the tensor-core product of `m` over `n_tok` positions runs a fused Q|K|V or SwiGLU
/// epilogue (`WORKER_ORCD_CUDA_MMA_EPI`): it takes the tensor cores there and the switch is on.
pub(crate) fn mma_fuses(m: &DevMatrix, n_tok: usize) -> bool {
    mma_tokens(n_tok) && super::options::options().mma_epi && has_mma(m)
}

/// Whether `m` has tensor-core kernels: a repacked 32-block type in whole 16-row tiles.
fn has_mma(m: &DevMatrix) -> bool {
    m.n_out.is_multiple_of(16) && m.mma_kernel(2).is_some()
}

/// Tokens per warp of the tensor-core products (matvec.cu's `_t2`/`_t4`/`_t8` kernels): more
/// tokens per warp reuse each weight fragment more, fewer put more warps on a short prompt
/// (a 32-token prompt at 8 per warp would leave most of the grid idle). Results do not depend
/// on it.
pub(crate) fn mma_tokens_per_warp(n_tok: usize) -> usize {
    match n_tok {
        0..=95 => 2,
        96..=255 => 4,
        _ => 8,
    }
}

/// Which tensor-core kernel runs a product: `Warp(t)` is `matvec_mma_*_t{t}` (t tokens per
/// warp, every warp loading its own operands), `Tile(t)` is `matvec_tile_*_t{t}` (64 rows x t
/// tokens per block of 8 warps, staged in shared memory; t = 32). Results do not depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmaKernel {
    Warp(usize),
    Tile(usize),
}

/// Blocks per stage and stages of the tiled products (matvec.cu's TILE_KC, TILE_STAGES).
const TILE_KC: usize = 4;
const TILE_STAGES: usize = 3;
/// Rows and tokens per block of the tiled products (matvec.cu's TILE_ROWS, 4 NP).
const TILE_ROWS: usize = 64;
const TILE_TOKENS: usize = 32;

/// Dynamic shared memory of a tiled product block (matvec.cu's TILE_STAGES *
/// TileLayout::STAGE): per stage 64 weight rows and `toks` activation rows of TILE_KC blocks,
/// each quant row padded by 16 bytes, and their scales.
pub(crate) fn tile_smem(m: &DevMatrix, toks: usize) -> usize {
    let qb = if m.ty == GgmlType::Q8_0 { 32 } else { 16 };
    let stage = TILE_ROWS * (TILE_KC * qb + 16) + TILE_ROWS * TILE_KC * 4 + toks * (TILE_KC * QK + 16) + toks * TILE_KC * 8;
    TILE_STAGES * stage
}

/// The tensor-core kernel `launch_matvec` runs for `m` over `n_tok` positions of the Q8_1
/// rows at `aq`/`ads` (None: the dp4a kernels). The tiled kernels copy 16-byte pieces, so they
/// need 16-byte aligned quants.
pub(crate) fn mma_choice(gpu: &Gpu, m: &DevMatrix, n_tok: usize, aq: u64, ads: u64) -> Option<MmaKernel> {
    if !has_mma(m) {
        return None;
    }
    let aligned = m.qs.is_multiple_of(16) && m.dm.is_multiple_of(4) && aq.is_multiple_of(16) && ads.is_multiple_of(8);
    match mma_pick(n_tok, m.n_out, gpu.sm_count)? {
        MmaKernel::Tile(_) if !aligned => Some(MmaKernel::Warp(mma_tokens_per_warp(n_tok))),
        k => Some(k),
    }
}

/// The tensor-core kernel for a product of `n_out` rows over `n_tok` positions that can take
/// any (None: the dp4a kernels), under this process's switches, on a GPU of `sm_count` SMs.
/// The tiled kernel runs from `WORKER_ORCD_CUDA_TILE` positions (`options().tile_min`, default
/// 256; 0: never) where its grid gives every SM at least 1.5 blocks: it has a quarter of the
/// per-warp kernels' blocks, and on the H100 it beat them by 6-14% on 960- and 3,072-row
/// products at 256 and 512 positions (240-768 blocks) and lost 20-30% on 576-row ones (72-144
/// blocks; BENCHMARKS.md, 2026-12-07 second session).
pub fn mma_pick(n_tok: usize, n_out: usize, sm_count: usize) -> Option<MmaKernel> {
    if !mma_tokens(n_tok) {
        return None;
    }
    let min = super::options::options().tile_min;
    let blocks = n_out.div_ceil(TILE_ROWS) * n_tok.div_ceil(TILE_TOKENS);
    Some(if min != 0 && n_tok >= min && 2 * blocks >= 3 * sm_count { MmaKernel::Tile(TILE_TOKENS) } else { MmaKernel::Warp(mma_tokens_per_warp(n_tok)) })
}

/// Launches tensor-core kernel `k` with epilogue `epi` (`Qkv`: NORM pairs, `head_dim` even;
/// `Swiglu`: `m` is gate|up stacked, `m.n_out == 2 * ffn`, `ffn % 32 == 0`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_mma(
    gpu: &Gpu,
    m: &DevMatrix,
    k: MmaKernel,
    aq: u64,
    ads: u64,
    n_tok: usize,
    out: u64,
    out_stride: usize,
    epi: Epilogue,
) -> Result<(), BackendError> {
    let mut args = product_args(m, aq, ads, out, out_stride, epi, n_tok);
    epi_args(&mut args, epi);
    // MODE_SWIGLU: one block per SwiGLU block of 32 gate and 32 up rows.
    let sw_blocks = match epi {
        Epilogue::Swiglu { ffn, .. } => {
            debug_assert!(m.n_out == 2 * ffn && ffn.is_multiple_of(QK));
            Some(ffn / QK)
        }
        _ => None,
    };
    let missing = || BackendError::Device(format!("no tensor-core kernel {k:?} for {} weights", m.ty.name()));
    match k {
        MmaKernel::Warp(tw) => {
            let kernel = m.mma_kernel(tw).ok_or_else(missing)?;
            let grid = match sw_blocks {
                Some(b) => (b as u32, n_tok.div_ceil(tw) as u32, 1),
                None => ((m.n_out / 16) as u32, n_tok.div_ceil(4 * tw) as u32, 1),
            };
            gpu.launch(kernel, grid, 128, 0, &args)
        }
        MmaKernel::Tile(tt) => {
            let kernel = m.tile_kernel(tt).ok_or_else(missing)?;
            let grid = (sw_blocks.unwrap_or(m.n_out.div_ceil(TILE_ROWS)) as u32, n_tok.div_ceil(tt) as u32, 1);
            gpu.launch(kernel, grid, 256, tile_smem(m, tt) as u32, &args)
        }
    }
}

/// Every quantized product kernel's first arguments (matvec.cu): the matrix, the Q8_1
/// activations, the output, its tap and the shape.
fn matrix_args(m: &DevMatrix, aq: u64, ads: u64, out: u64, tap: u64) -> Vec<Arg> {
    vec![Arg::Ptr(m.qs), Arg::Ptr(m.dm), Arg::Ptr(aq), Arg::Ptr(ads), Arg::Ptr(out), Arg::Ptr(tap), Arg::I32(m.n_in as i32), Arg::I32(m.n_out as i32)]
}

/// The tensor-core and dp4a product kernels' first arguments: `matrix_args`, then the output
/// stride, the mode and the positions.
fn product_args(m: &DevMatrix, aq: u64, ads: u64, out: u64, out_stride: usize, epi: Epilogue, n_tok: usize) -> Vec<Arg> {
    let (mode, tap) = epi.mode();
    let mut args = matrix_args(m, aq, ads, out, tap);
    args.extend([Arg::I32(out_stride as i32), Arg::I32(mode), Arg::I32(n_tok as i32)]);
    args
}

/// The fused epilogues' kernel arguments (matvec.cu's QkvEpi, then SwigluEpi; null / 0 for
/// the modes that do not use them).
fn epi_args(args: &mut Vec<Arg>, epi: Epilogue) {
    match epi {
        Epilogue::Qkv { q_out, k_cache, v_cache, table, params, bq, bk, bv, dim, kv_dim, head_dim } => args.extend([
            Arg::Ptr(q_out),
            Arg::Ptr(k_cache),
            Arg::Ptr(v_cache),
            Arg::Ptr(table),
            Arg::Ptr(params),
            Arg::Ptr(bq),
            Arg::Ptr(bk),
            Arg::Ptr(bv),
            Arg::I32(dim as i32),
            Arg::I32(kv_dim as i32),
            Arg::I32(head_dim as i32),
        ]),
        _ => args.extend([Arg::Ptr(0); 8].into_iter().chain([Arg::I32(0); 3])),
    }
    match epi {
        Epilogue::Swiglu { out, aq, ads, ffn } => args.extend([Arg::Ptr(out), Arg::Ptr(aq), Arg::Ptr(ads), Arg::I32(ffn as i32)]),
        _ => args.extend([Arg::Ptr(0), Arg::Ptr(0), Arg::Ptr(0), Arg::I32(0)]),
    }
}

/// A matvec's input normalized inside the kernel: rows of the residual stream `x` and the norm
/// weight `w` (rmsnorm_q8's arithmetic), instead of precomputed Q8_1 rows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NormIn {
    pub x: u64,
    pub w: u64,
    pub eps: f32,
}

/// Dynamic shared memory of one quantized matvec block (see matvec.cu's matvec_q_block): the
/// block's results, then (fused norm or one token) the staged activation rows.
pub(crate) fn matvec_smem(m: &DevMatrix, rows: usize, toks: usize, norm: bool) -> usize {
    let base = rows * toks * F32;
    if !norm && toks != 1 {
        return base;
    }
    base.div_ceil(16) * 16 + (toks * m.n_in).div_ceil(16) * 16 + toks * (m.n_in / QK) * 8 + 32
}

/// Launches the matvec kernel of `m` for `n_tok` rows of an activation (f32 rows at `x`, or
/// Q8_1 rows at `aq`/`ads`), writing `out` with row stride `out_stride` as `epi` says. Float
/// weight types support only `Store` and `Add`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_matvec(
    gpu: &Gpu,
    m: &DevMatrix,
    x: u64,
    aq: u64,
    ads: u64,
    n_tok: usize,
    out: u64,
    out_stride: usize,
    epi: Epilogue,
    norm: Option<NormIn>,
) -> Result<(), BackendError> {
    let (mode, tap) = epi.mode();
    if !m.is_quantized() {
        assert!(mode <= 1 && norm.is_none(), "fused epilogues and norms need quantized weights");
        let args = [
            Arg::Ptr(m.qs),
            Arg::Ptr(x),
            Arg::Ptr(out),
            Arg::Ptr(tap),
            Arg::I32(m.n_in as i32),
            Arg::I32(m.n_out as i32),
            Arg::I32(out_stride as i32),
            Arg::I32(mode),
        ];
        return gpu.launch(m.kernel(), (m.n_out.div_ceil(128) as u32, n_tok as u32, 1), 128, 0, &args);
    }
    if let (Some(k), None, true) = (mma_choice(gpu, m, n_tok, aq, ads), norm, mode <= 1 || super::options::options().mma_epi) {
        return launch_mma(gpu, m, k, aq, ads, n_tok, out, out_stride, epi);
    }
    if let (Some(kernel), 1, None, true) = (m.one_kernel(), n_tok, norm, mode <= 1) {
        let mut args = matrix_args(m, aq, ads, out, tap);
        args.push(Arg::I32(mode));
        return gpu.launch(kernel, (m.n_out.div_ceil(ONE_ROWS) as u32, 1, 1), 128, 0, &args);
    }
    let toks = n_tok.min(MV_TOKENS);
    let (rows, grid_x) = match epi {
        Epilogue::Swiglu { ffn, .. } => (64, ffn / 32),
        _ => {
            let r = if n_tok == 1 { MV_ROWS_ONE } else { MV_ROWS };
            (r, m.n_out.div_ceil(r))
        }
    };
    let mut args = product_args(m, aq, ads, out, out_stride, epi, n_tok);
    args.extend([Arg::I32(rows as i32), Arg::I32(toks as i32)]);
    epi_args(&mut args, epi);
    match norm {
        Some(n) => args.extend([Arg::Ptr(n.x), Arg::Ptr(n.w), Arg::F32(n.eps)]),
        None => args.extend([Arg::Ptr(0), Arg::Ptr(0), Arg::F32(0.0)]),
    }
    let smem = matvec_smem(m, rows, toks, norm.is_some());
    gpu.launch(m.kernel(), (grid_x as u32, n_tok.div_ceil(toks) as u32, 1), 128, smem as u32, &args)
}

pub(crate) fn launch_embedding(gpu: &Gpu, table: &DevMatrix, tokens: u64, x: u64, tap: u64, n_tok: usize) -> Result<(), BackendError> {
    gpu.launch(
        table.embedding_kernel(),
        (n_tok as u32, 1, 1),
        256,
        0,
        &[Arg::Ptr(table.qs), Arg::Ptr(table.dm), Arg::Ptr(tokens), Arg::Ptr(x), Arg::Ptr(tap), Arg::I32(table.n_in as i32)],
    )
}
