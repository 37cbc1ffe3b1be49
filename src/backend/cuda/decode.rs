//! The persistent decode kernel (`kernels/decode.cu`, `decoder_layers_<type>`): every layer of a
//! one-position step in one cooperative launch, grid barriers instead of ~150 kernel boundaries.
//! Its CPU reference is [`crate::backend::cpu::CpuBackend::decoder_layers`].
//!
//! The kernel runs the per-op kernels' own device functions on the same virtual blocks, so its
//! results are bitwise those of the per-op path (tested on the device in `tests/it/cuda.rs`).
//! It is used for one-position steps when every layer has stacked quantized Q|K|V and gate|up
//! matrices (SmolLM2 does) and the device supports cooperative launches;
//! `WORKER_ORCD_CUDA_PERSISTENT=0` turns it off.

use super::device::{Arg, DevBuf, Gpu};
use super::launch::matvec_smem;
use super::options::decode_flags as flags;
use super::weights::DevMatrix;
use super::LayerDev;
use crate::backend::cpu::quant::QK;
use crate::backend::BackendError;
use crate::gguf::GgmlType;
use crate::model::ModelConfig;

/// Rows per work item of the plain products (decode.cu's DEC_ROWS).
const ROWS: usize = 8;
/// Threads per block (the fused norm's reduction tree and the attention tile assume 128).
const THREADS: u32 = 128;

/// decode.cu's `Mat`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct MatDesc {
    qs: u64,
    dm: u64,
    wt: i32,
    n_in: i32,
    n_out: i32,
    pad: i32,
}

/// decode.cu's `LayerDesc`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LayerDesc {
    qkv: MatDesc,
    wo: MatDesc,
    gate_up: MatDesc,
    down: MatDesc,
    attn_norm: u64,
    ffn_norm: u64,
    bq: u64,
    bk: u64,
    bv: u64,
    k_cache: u64,
    v_cache: u64,
}

fn mat(m: &DevMatrix) -> Option<MatDesc> {
    let wt = match m.ty {
        GgmlType::Q4_0 => 0,
        GgmlType::Q4_1 => 1,
        GgmlType::Q8_0 => 2,
        _ => return None,
    };
    Some(MatDesc { qs: m.qs, dm: m.dm, wt, n_in: m.n_in as i32, n_out: m.n_out as i32, pad: 0 })
}

/// Bytes decode.cu's `stage_item` copies for one item of `rows` rows of `m` (quants and scales).
fn stage_item_bytes(m: &DevMatrix, rows: usize) -> usize {
    let qb = if m.ty == GgmlType::Q8_0 { 32 } else { 16 };
    rows * (m.n_in / QK) * (qb + 4)
}

/// The uploaded layer table, the barrier words and the launch shape.
pub(crate) struct Persistent {
    table: DevBuf,
    bar: DevBuf,
    grid: u32,
    /// The resident limit (one block per SM); `grid` may be set lower for tests.
    max_grid: u32,
    smem: usize,
    /// Shared memory before the staging buffers, and each buffer's size (0: no staging).
    stage_off: usize,
    stage_bytes: usize,
    /// Whether DEC_LL's shared copies fit (else LL is dropped from the flags).
    ll_ok: bool,
    /// decode.cu's `flags` for the next launches (STAGE only where the buffers fit).
    flags: u32,
    n_layers: usize,
    /// The entry point for the layers' weight type.
    kernel: &'static str,
    /// The entry point compiled for [`flags::DEFAULT`] (decode.cu's DEC_DEFAULT).
    kernel_default: &'static str,
    /// Barrier timestamps (profiling only, see decode.cu's grid_barrier).
    prof: Option<DevBuf>,
}

/// Device buffers one step reads and writes (all device pointers).
pub(crate) struct StepBuffers {
    pub x: u64,
    pub q: u64,
    pub attn: (u64, u64, u64),
    /// SwiGLU row: f32 (DEC_SPLIT_D), Q8_1 quants and scales.
    pub sw: (u64, u64, u64),
    pub xn: (u64, u64, u64),
    pub tap: u64,
    pub params: u64,
}

impl Persistent {
    /// The persistent kernel's set-up for these layers, or `None` (with the reason) when the
    /// model or device does not fit it; the per-op path is used then.
    pub fn new(gpu: &Gpu, c: &ModelConfig, layers: &[LayerDev], k_cache: u64, v_cache: u64, n_ctx: usize) -> Result<Result<Persistent, String>, BackendError> {
        if layers.is_empty() {
            return Ok(Err("no layers".into()));
        }
        if !super::options::options().persistent {
            return Ok(Err("WORKER_ORCD_CUDA_PERSISTENT=0".into()));
        }
        if !gpu.cooperative {
            return Ok(Err("the device has no cooperative launch".into()));
        }
        let (dim, kv_dim, ffn) = (c.dim, c.kv_dim(), c.ffn_dim);
        if dim % ROWS != 0 || kv_dim % ROWS != 0 || ffn % QK != 0 || !c.head_dim.is_multiple_of(2) {
            return Ok(Err(format!("shapes dim {dim}, kv_dim {kv_dim}, ffn {ffn} do not tile")));
        }
        let layer_kv = (n_ctx * kv_dim * 4) as u64;
        let mut descs = Vec::with_capacity(layers.len());
        let mut smem = super::ops::attention_smem_dual(c.head_dim, n_ctx);
        let mut stage_bytes = 0usize;
        for (l, lw) in layers.iter().enumerate() {
            let (Some(qkv), Some(gate_up)) = (lw.qkv.first().filter(|_| lw.qkv.len() == 1), lw.gate_up.first().filter(|_| lw.gate_up.len() == 1)) else {
                return Ok(Err(format!("layer {l}: Q|K|V or gate|up are not one stacked matrix")));
            };
            let (Some(qkv_d), Some(wo), Some(gu), Some(down)) = (mat(&qkv.m), mat(&lw.wo), mat(&gate_up.m), mat(&lw.down)) else {
                return Ok(Err(format!("layer {l}: a matrix is not Q4_0/Q4_1/Q8_0")));
            };
            smem = smem
                .max(matvec_smem(&qkv.m, ROWS, 1, true))
                .max(matvec_smem(&lw.wo, ROWS, 1, false))
                .max(matvec_smem(&gate_up.m, 64, 1, true))
                .max(matvec_smem(&lw.down, ROWS, 1, false));
            stage_bytes = stage_bytes
                .max(stage_item_bytes(&qkv.m, ROWS))
                .max(stage_item_bytes(&lw.wo, ROWS))
                .max(stage_item_bytes(&gate_up.m, 64))
                .max(stage_item_bytes(&lw.down, ROWS));
            descs.push(LayerDesc {
                qkv: qkv_d,
                wo,
                gate_up: gu,
                down,
                attn_norm: lw.attn_norm,
                ffn_norm: lw.ffn_norm,
                bq: lw.bq,
                bk: lw.bk,
                bv: lw.bv,
                k_cache: k_cache + l as u64 * layer_kv,
                v_cache: v_cache + l as u64 * layer_kv,
            });
        }
        let wt = descs[0].qkv.wt;
        if descs.iter().any(|d| [d.qkv.wt, d.wo.wt, d.gate_up.wt, d.down.wt].iter().any(|&t| t != wt)) {
            return Ok(Err("layer matrices mix weight types".into()));
        }
        let kernel = ["decoder_layers_q4_0", "decoder_layers_q4_1", "decoder_layers_q8_0"][wt as usize];
        let kernel_default = ["decoder_layers_q4_0_default", "decoder_layers_q4_1_default", "decoder_layers_q8_0_default"][wt as usize];
        if smem > gpu.max_dynamic_smem {
            return Ok(Err(format!("needs {smem} bytes of shared memory per block")));
        }
        // The staging buffers go after everything else; without room for two, no staging.
        let stage_off = smem.div_ceil(16) * 16;
        let stage_bytes = stage_bytes.div_ceil(16) * 16;
        let (smem, stage_bytes) = if stage_off + 2 * stage_bytes <= gpu.max_dynamic_smem { (stage_off + 2 * stage_bytes, stage_bytes) } else { (smem, 0) };
        // DEC_LL's shared copies (x, then the attention output, the SwiGLU row or the q rows,
        // then DEC_LL_QKV's k and v rows) after the staging buffers (decode.cu's ll_x, ll_in);
        // without room for them, no DEC_LL.
        let ll_at = stage_off + 2 * stage_bytes;
        let ll_end = ll_at + (dim + ffn.max(dim + 2 * c.head_dim)) * 4;
        let (smem, ll_ok) = if ll_end <= gpu.max_dynamic_smem { (smem.max(ll_end), true) } else { (smem, false) };
        let flags = super::options::options().decode_flags;
        // SAFETY: LayerDesc is repr(C) plain data (u64/i32 fields, no padding holes read).
        let bytes = unsafe { std::slice::from_raw_parts(descs.as_ptr() as *const u8, std::mem::size_of_val(descs.as_slice())) };
        let table = gpu.upload(bytes)?;
        // The barrier counter, then (from word 4) one flag per Q|K|V item (decode.cu's
        // item_flags_set), zero before the first launch.
        let items_a = (dim + 2 * kv_dim).div_ceil(ROWS);
        // Then, from an even word, DEC_LL's flag-in-data words (decode.cu's ll_x0, ll_x1,
        // ll_attn, ll_sw, ll_qkv: 3 dim + ffn + dim + 2 kv_dim u64), epoch 0, which no launch
        // awaits.
        let ll_words = 2 * (4 * dim + ffn + 2 * kv_dim);
        let bar = gpu.upload(&vec![0u32; (4 + items_a).next_multiple_of(2) + ll_words])?;
        let grid = gpu.sm_count as u32;
        let mut p = Persistent {
            table,
            bar,
            grid,
            max_grid: grid,
            smem,
            stage_off,
            stage_bytes,
            ll_ok,
            flags: 0,
            n_layers: layers.len(),
            kernel,
            kernel_default,
            prof: None,
        };
        p.set_flags(flags);
        Ok(Ok(p))
    }

    /// Sets decode.cu's `flags` for the next launches (see [`flags`]); STAGE is dropped where
    /// the staging buffers did not fit, LL where its shared copies did not. Returns the flags
    /// in force.
    pub fn set_flags(&mut self, f: u32) -> u32 {
        let mut f = f & flags::ALL;
        if self.stage_bytes == 0 {
            f &= !flags::STAGE;
        }
        if !self.ll_ok {
            f &= !flags::LL;
        }
        if f & flags::LL == 0 {
            f &= !flags::LL_QKV;
        }
        self.flags = f;
        self.flags
    }

    /// Turns barrier timestamps on or off (costs a little; for `cuda-check profile`).
    pub fn set_profiling(&mut self, gpu: &Gpu, on: bool) -> Result<(), BackendError> {
        // Sized for the largest grid, so that set_grid needs no reallocation.
        self.prof = if on { Some(gpu.alloc(self.prof_words(self.max_grid) * 8)?) } else { None };
        Ok(())
    }

    /// Timestamp words for `grid` blocks: (arrived, left) per barrier and block, then a row of
    /// start times, then per phase and block four sub-phase stamps of the block's first
    /// product item (input ready, products done, epilogue done, unused; decode.cu's `sub`).
    fn prof_words(&self, grid: u32) -> usize {
        2 * (5 * self.n_layers + 1) * grid as usize + 4 * 5 * self.n_layers * grid as usize
    }

    /// Runs the next launches on `n` blocks (clamped to 1..=the resident limit; `None`: the
    /// limit, the default). Results are the same bits for every grid (decode.cu: block b takes
    /// items b, b + grid, ...); tests use small grids so that blocks take several items of a
    /// phase and attention blocks have products too. Returns the grid in force.
    pub fn set_grid(&mut self, n: Option<usize>) -> usize {
        self.grid = n.map_or(self.max_grid, |n| (n as u32).clamp(1, self.max_grid));
        self.grid as usize
    }

    /// The last step's timestamps: per barrier k (5 per layer, then one row of start times),
    /// per block, (arrived, left) in ns.
    pub fn profile(&self, gpu: &Gpu) -> Result<Option<Vec<u64>>, BackendError> {
        match &self.prof {
            None => Ok(None),
            Some(b) => Ok(Some(gpu.read(b.ptr(), self.prof_words(self.grid))?)),
        }
    }

    /// How far one launch moves the barrier counter (5 barriers per layer, 1 with LL, none
    /// with LL and LL_QKV; one arrival per block).
    pub fn counter_advance(&self) -> u32 {
        let per_layer = match (self.flags & flags::LL != 0, self.flags & flags::LL_QKV != 0) {
            (false, _) => 5,
            (true, false) => 1,
            (true, true) => 0,
        };
        (per_layer * self.n_layers as u32).wrapping_mul(self.grid)
    }

    /// How far one launch moves DEC_LL's epoch base (params[2]): one epoch per layer, so no
    /// flag-in-data word left from an earlier launch carries an epoch a later one awaits.
    pub fn epoch_advance(&self) -> u32 {
        self.n_layers as u32
    }

    pub fn grid(&self) -> usize {
        self.grid as usize
    }

    /// Launches `decoder_layers` for one position (x holds its embedding; params[1] holds the
    /// barrier counter's value before the launch, see decode.cu's grid_barrier).
    pub fn launch(&self, gpu: &Gpu, c: &ModelConfig, n_layers: usize, output_norm: u64, rope_table: u64, b: &StepBuffers) -> Result<(), BackendError> {
        let args = [
            Arg::Ptr(self.table.ptr()),
            Arg::I32(n_layers as i32),
            Arg::Ptr(b.x),
            Arg::Ptr(b.q),
            Arg::Ptr(b.attn.0),
            Arg::Ptr(b.attn.1),
            Arg::Ptr(b.attn.2),
            Arg::Ptr(b.sw.0),
            Arg::Ptr(b.sw.1),
            Arg::Ptr(b.sw.2),
            Arg::Ptr(b.xn.0),
            Arg::Ptr(b.xn.1),
            Arg::Ptr(b.xn.2),
            Arg::Ptr(output_norm),
            Arg::Ptr(b.tap),
            Arg::Ptr(rope_table),
            Arg::Ptr(b.params),
            Arg::I32(c.dim as i32),
            Arg::I32(c.kv_dim() as i32),
            Arg::I32(c.head_dim as i32),
            Arg::I32(c.n_heads as i32),
            Arg::I32(c.n_kv_heads as i32),
            Arg::I32(c.ffn_dim as i32),
            Arg::F32(c.rms_eps),
            Arg::F32(1.0f32 / (c.head_dim as f32).sqrt()),
            Arg::Ptr(self.bar.ptr()),
            Arg::Ptr(self.prof.as_ref().map_or(0, |b| b.ptr())),
            Arg::I32((self.flags & !flags::GENERIC) as i32),
            Arg::I32(self.stage_off as i32),
            Arg::I32(self.stage_bytes as i32),
        ];
        // The default set runs the entry point compiled for it (decode.cu's DEC_DEFAULT).
        let kernel = if self.flags == flags::DEFAULT { self.kernel_default } else { self.kernel };
        gpu.launch_cooperative(kernel, self.grid, THREADS, self.smem as u32, &args)
    }
}

#[cfg(test)]
mod default_entry_tests {
    use super::flags;

    #[test]
    fn decode_cu_compiles_the_default_flags_into_their_own_entry_points() {
        let src = include_str!("../../../kernels/decode.cu");
        assert!(src.contains(&format!("#define DEC_DEFAULT {}\n", flags::DEFAULT)), "decode.cu's DEC_DEFAULT must equal decode_flags::DEFAULT");
        assert_eq!(flags::DEFAULT & flags::GENERIC, 0);
    }
}
