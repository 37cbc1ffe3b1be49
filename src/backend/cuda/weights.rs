//! Weights on the device: GGUF matrices repacked into the layout of `kernels/matvec.cu`
//! (quants and scales in separate aligned arrays, values unchanged), norm vectors, biases and the
//! RoPE table, all in one device allocation.
//!
//! Repacking never changes a number: a Q4_1 block's f16 `d`, f16 `m` and 16 bytes of nibbles
//! are the file's bytes, moved. Matrices that feed the same input (Q|K|V, gate|up) are stacked
//! row-wise into one matrix when their types agree, so one launch computes all of them.

use crate::backend::cpu::quant::QMatrix;
use crate::gguf::GgmlType;

use super::device::{DevBuf, Gpu};
use crate::backend::BackendError;

/// Alignment of every array in the arena (16-byte vector loads need 16; 256 is cudaMalloc's).
const ALIGN: usize = 256;

/// Host-side staging of the weight arena: arrays appended at aligned offsets.
#[derive(Default)]
pub struct ArenaBuilder {
    bytes: Vec<u8>,
}

impl ArenaBuilder {
    pub fn push(&mut self, data: &[u8]) -> usize {
        let off = self.bytes.len().div_ceil(ALIGN) * ALIGN;
        self.bytes.resize(off, 0);
        self.bytes.extend_from_slice(data);
        off
    }

    pub fn push_f32(&mut self, v: &[f32]) -> usize {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.push(&bytes)
    }

    pub fn upload(self, gpu: &Gpu) -> Result<DevBuf, BackendError> {
        gpu.upload(&self.bytes)
    }
}

/// A matrix in device memory: offsets into the arena until `resolve`d into pointers.
#[derive(Debug, Clone, Copy)]
pub struct DevMatrix {
    pub ty: GgmlType,
    pub n_in: usize,
    pub n_out: usize,
    /// Quantized types: the qs array; float types: the raw rows.
    pub qs: u64,
    /// Quantized types: the (d, m) array; float types: 0.
    pub dm: u64,
}

impl DevMatrix {
    pub fn is_quantized(&self) -> bool {
        matches!(self.ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
    }

    /// A type whose product runs on the GGUF rows as they are (`kernels/kquant.cu`).
    pub fn is_raw_quant(&self) -> bool {
        kquant_kernel(self.ty).is_some()
    }

    /// Bytes of one row in the GGUF layout.
    pub fn row_bytes(&self) -> usize {
        self.n_in / self.ty.block_size() * self.ty.type_size()
    }

    pub fn resolve(mut self, base: u64) -> DevMatrix {
        self.qs += base;
        if self.is_quantized() {
            self.dm += base;
        }
        self
    }

    /// The matvec kernel for this weight type.
    pub fn kernel(&self) -> &'static str {
        match self.ty {
            GgmlType::Q4_1 => "matvec_q4_1_q8_1",
            GgmlType::Q4_0 => "matvec_q4_0_q8_0",
            GgmlType::Q8_0 => "matvec_q8_0_q8_0",
            GgmlType::F16 => "matvec_f16",
            GgmlType::BF16 => "matvec_bf16",
            GgmlType::F32 => "matvec_f32",
            other => kquant_kernel(other).unwrap_or_else(|| unreachable!("model loading rejects {} matrices", other.name())),
        }
    }

    /// The lean one-token kernel (`matvec_one_*`: no fused epilogue or norm; quantized
    /// repacked types only).
    pub fn one_kernel(&self) -> Option<&'static str> {
        match self.ty {
            GgmlType::Q4_1 => Some("matvec_one_q4_1_q8_1"),
            GgmlType::Q4_0 => Some("matvec_one_q4_0_q8_0"),
            GgmlType::Q8_0 => Some("matvec_one_q8_0_q8_0"),
            _ => None,
        }
    }

    /// The tensor-core matvec kernel for many tokens (quantized types only), by tokens per
    /// warp (2, 4 or 8: see `launch::mma_tokens_per_warp`).
    pub fn mma_kernel(&self, tokens_per_warp: usize) -> Option<&'static str> {
        Some(match (self.ty, tokens_per_warp) {
            (GgmlType::Q4_1, 2) => "matvec_mma_q4_1_q8_1_t2",
            (GgmlType::Q4_1, 4) => "matvec_mma_q4_1_q8_1_t4",
            (GgmlType::Q4_1, 8) => "matvec_mma_q4_1_q8_1_t8",
            (GgmlType::Q4_0, 2) => "matvec_mma_q4_0_q8_0_t2",
            (GgmlType::Q4_0, 4) => "matvec_mma_q4_0_q8_0_t4",
            (GgmlType::Q4_0, 8) => "matvec_mma_q4_0_q8_0_t8",
            (GgmlType::Q8_0, 2) => "matvec_mma_q8_0_q8_0_t2",
            (GgmlType::Q8_0, 4) => "matvec_mma_q8_0_q8_0_t4",
            (GgmlType::Q8_0, 8) => "matvec_mma_q8_0_q8_0_t8",
            _ => return None,
        })
    }

    /// The tiled tensor-core kernel (quantized types only), by tokens per block (32: see
    /// `launch::mma_pick`).
    pub fn tile_kernel(&self, tokens_per_block: usize) -> Option<&'static str> {
        Some(match (self.ty, tokens_per_block) {
            (GgmlType::Q4_1, 32) => "matvec_tile_q4_1_q8_1_t32",
            (GgmlType::Q4_0, 32) => "matvec_tile_q4_0_q8_0_t32",
            (GgmlType::Q8_0, 32) => "matvec_tile_q8_0_q8_0_t32",
            _ => return None,
        })
    }

    /// The embedding kernel reading rows of this matrix as a table.
    pub fn embedding_kernel(&self) -> &'static str {
        match self.ty {
            GgmlType::Q4_1 => "embedding_q4_1",
            GgmlType::Q4_0 => "embedding_q4_0",
            GgmlType::Q8_0 => "embedding_q8_0",
            GgmlType::F16 => "embedding_f16",
            GgmlType::BF16 => "embedding_bf16",
            GgmlType::F32 => "embedding_f32",
            other => unreachable!("model loading rejects {} embeddings", other.name()),
        }
    }
}

/// Raw block size and quant bytes per block for the repacked quantized types (the others are
/// uploaded as the file's rows).
fn block_layout(ty: GgmlType) -> Option<(usize, usize, bool)> {
    // (bytes per GGUF block, bytes of quants, has m)
    match ty {
        GgmlType::Q4_0 => Some((18, 16, false)),
        GgmlType::Q4_1 => Some((20, 16, true)),
        GgmlType::Q8_0 => Some((34, 32, false)),
        _ => None,
    }
}

/// Appends `mats` stacked row-wise (same type and n_in) to the arena as one matrix.
pub fn push_stacked(arena: &mut ArenaBuilder, mats: &[QMatrix<'_>]) -> DevMatrix {
    let ty = mats[0].ty;
    let n_in = mats[0].n_in;
    assert!(mats.iter().all(|m| m.ty == ty && m.n_in == n_in), "stacked matrices must agree in type and width");
    let n_out: usize = mats.iter().map(|m| m.n_out).sum();
    match block_layout(ty) {
        Some((bs, qb, has_m)) => {
            let nb = n_in / 32;
            let mut qs = Vec::with_capacity(n_out * nb * qb);
            let mut dm = Vec::with_capacity(n_out * nb * 4);
            for m in mats {
                for blk in m.data.chunks_exact(bs) {
                    let d = u16::from_le_bytes([blk[0], blk[1]]) as u32;
                    let (mm, q) = if has_m { (u16::from_le_bytes([blk[2], blk[3]]) as u32, &blk[4..]) } else { (0, &blk[2..]) };
                    qs.extend_from_slice(q);
                    dm.extend_from_slice(&(d | (mm << 16)).to_le_bytes());
                }
            }
            let qs_off = arena.push(&qs);
            let dm_off = arena.push(&dm);
            DevMatrix { ty, n_in, n_out, qs: qs_off as u64, dm: dm_off as u64 }
        }
        None => {
            let mut raw = Vec::new();
            for m in mats {
                raw.extend_from_slice(m.data);
            }
            let off = arena.push(&raw);
            DevMatrix { ty, n_in, n_out, qs: off as u64, dm: 0 }
        }
    }
}

/// One product writing columns `out_offset..out_offset + m.n_out` of a wider output row.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub m: DevMatrix,
    pub out_offset: usize,
}

/// Appends matrices that share an input: stacked into one segment when their types agree,
/// else one segment each (still writing into one output row at their offsets).
pub fn push_group(arena: &mut ArenaBuilder, mats: &[QMatrix<'_>]) -> Vec<Segment> {
    if mats.iter().all(|m| m.ty == mats[0].ty) {
        return vec![Segment { m: push_stacked(arena, mats), out_offset: 0 }];
    }
    let mut off = 0;
    mats.iter()
        .map(|m| {
            let s = Segment { m: push_stacked(arena, std::slice::from_ref(m)), out_offset: off };
            off += m.n_out;
            s
        })
        .collect()
}

pub fn resolve_group(segs: &mut [Segment], base: u64) {
    for s in segs {
        s.m = s.m.resolve(base);
    }
}

/// The device kernel (`kernels/kquant.cu`) of the weight types added with the k-quants, named
/// after the CPU function it matches bit for bit; `None` for the other types.
pub fn kquant_kernel(ty: GgmlType) -> Option<&'static str> {
    Some(match ty {
        GgmlType::Q5_0 => "matvec_q5_0_q8_0",
        GgmlType::Q5_1 => "matvec_q5_1_q8_1",
        GgmlType::IQ4_NL => "matvec_iq4_nl_q8_0",
        GgmlType::Q2_K => "matvec_q2_K_q8_K",
        GgmlType::Q3_K => "matvec_q3_K_q8_K",
        GgmlType::Q4_K => "matvec_q4_K_q8_K",
        GgmlType::Q5_K => "matvec_q5_K_q8_K",
        GgmlType::Q6_K => "matvec_q6_K_q8_K",
        _ => return None,
    })
}
