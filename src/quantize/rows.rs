//! Rows of f32 to any target type: ggml's `ggml_quantize_chunk(type, src, dst,
//! 0, nrows, n_per_row, NULL)`, i.e. the reference quantizers block after block,
//! plus the plain F32/F16/BF16 conversions llama.cpp's file writer uses.
//!
//! Every row (every block, in fact) is quantized independently of the others, so
//! splitting the rows over threads cannot change a byte; [`convert_tensor`] does
//! that in fixed chunks. This file does not choose types or lay out files.

use rayon::prelude::*;

use crate::gguf::quant::{self, f32_to_bf16, f32_to_f16};
use crate::gguf::GgmlType;

use super::error::QuantizeError;
use super::{iq4nl, kquants, legacy};

/// Whether [`quantize_rows`] can produce `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    use GgmlType as G;
    matches!(ty, G::F32 | G::F16 | G::BF16 | G::Q4_0 | G::Q4_1 | G::Q5_0 | G::Q5_1 | G::Q8_0 | G::Q2_K | G::Q3_K | G::Q4_K | G::Q5_K | G::Q6_K | G::IQ4_NL)
}

/// Applies a per-block quantizer over matching input / output chunks (lengths
/// checked by the caller).
fn blocks<const Q: usize, const B: usize>(src: &[f32], dst: &mut [u8], f: fn(&[f32; Q], &mut [u8; B])) {
    let (xs, _) = src.as_chunks::<Q>();
    let (ys, _) = dst.as_chunks_mut::<B>();
    debug_assert_eq!(xs.len(), ys.len());
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        f(x, y);
    }
}

/// Quantizes `src` (whole rows of `ty`'s block size) into `dst`, which must be
/// exactly `ty.row_bytes(src.len())` long. Bit-identical to ggml without an
/// importance matrix.
pub fn quantize_rows(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantizeError> {
    use GgmlType as G;
    if !can_quantize(ty) {
        return Err(QuantizeError::UnsupportedType { ty });
    }
    let want = ty.row_bytes(src.len());
    if want != Some(dst.len()) {
        return Err(QuantizeError::RowSize { ty, n_elements: src.len() as u64, dst_len: dst.len() as u64 });
    }
    match ty {
        G::F32 => {
            for (o, v) in dst.as_chunks_mut::<4>().0.iter_mut().zip(src) {
                *o = v.to_le_bytes();
            }
        }
        G::F16 => {
            for (o, v) in dst.as_chunks_mut::<2>().0.iter_mut().zip(src) {
                *o = f32_to_f16(*v).to_le_bytes();
            }
        }
        G::BF16 => {
            for (o, v) in dst.as_chunks_mut::<2>().0.iter_mut().zip(src) {
                *o = f32_to_bf16(*v).to_le_bytes();
            }
        }
        G::Q4_0 => blocks(src, dst, legacy::quantize_block_q4_0),
        G::Q4_1 => blocks(src, dst, legacy::quantize_block_q4_1),
        G::Q5_0 => blocks(src, dst, legacy::quantize_block_q5_0),
        G::Q5_1 => blocks(src, dst, legacy::quantize_block_q5_1),
        G::Q8_0 => blocks(src, dst, legacy::quantize_block_q8_0),
        G::Q2_K => blocks(src, dst, kquants::quantize_block_q2_k),
        G::Q3_K => blocks(src, dst, kquants::quantize_block_q3_k),
        G::Q4_K => blocks(src, dst, kquants::quantize_block_q4_k),
        G::Q5_K => blocks(src, dst, kquants::quantize_block_q5_k),
        G::Q6_K => blocks(src, dst, kquants::quantize_block_q6_k),
        G::IQ4_NL => blocks(src, dst, iq4nl::quantize_block_iq4_nl),
        _ => unreachable!("filtered by can_quantize"),
    }
    Ok(())
}

/// Elements converted per parallel task: a fixed amount of work, so the split
/// depends only on the tensor's shape (not that it matters for the bytes).
const CHUNK_ELEMENTS: usize = 32 * 1024;

/// Converts a whole tensor of `n_per_row`-wide rows from `src_ty` (raw bytes
/// `src`) to `dst_ty`, on the current rayon pool: each task dequantizes its rows
/// to f32 exactly as ggml's `to_float` does, checks them (llama.cpp's loader
/// refuses non-finite weights), and quantizes them. Returns the new bytes.
pub fn convert_tensor(name: &str, src_ty: GgmlType, src: &[u8], n_per_row: usize, dst_ty: GgmlType) -> Result<Vec<u8>, QuantizeError> {
    let bad_width = || QuantizeError::RowWidth { tensor: name.to_string(), ty: dst_ty, n_per_row: n_per_row as u64 };
    let src_row = src_ty.row_bytes(n_per_row).filter(|&b| b > 0).ok_or_else(bad_width)?;
    let dst_row = dst_ty.row_bytes(n_per_row).ok_or_else(bad_width)?;
    if !src.len().is_multiple_of(src_row) {
        return Err(QuantizeError::TensorSize { tensor: name.to_string(), len: src.len() as u64, row_bytes: src_row as u64 });
    }
    if !quant::can_dequantize(src_ty) {
        return Err(QuantizeError::CannotDequantize { tensor: name.to_string(), ty: src_ty });
    }
    if !can_quantize(dst_ty) {
        return Err(QuantizeError::UnsupportedTarget { tensor: name.to_string(), ty: dst_ty });
    }
    let n_rows = src.len() / src_row;
    let rows_per_task = (CHUNK_ELEMENTS / n_per_row.max(1)).max(1);
    let mut out = vec![0u8; n_rows * dst_row];
    let results: Vec<Result<(), QuantizeError>> = out
        .par_chunks_mut(rows_per_task * dst_row)
        .zip(src.par_chunks(rows_per_task * src_row))
        .enumerate()
        .map(|(task, (dst, src))| {
            let n = src.len() / src_row * n_per_row;
            let mut x = vec![0f32; n];
            quant::dequantize(src_ty, src, &mut x)?;
            if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                let index = (task * rows_per_task * n_per_row + i) as u64;
                return Err(QuantizeError::NonFinite { tensor: name.to_string(), index, value: x[i] });
            }
            quantize_rows(dst_ty, &x, dst)
        })
        .collect();
    // The first failing chunk in row order, whatever thread finished first.
    results.into_iter().collect::<Result<(), _>>()?;
    Ok(out)
}

/// Checks a tensor that is copied unchanged the way llama.cpp's loader does
/// (`ggml_validate_row_data`): every value must dequantize to a finite number.
/// Types without a dequantization (integers, f64) are not checked.
pub fn validate_tensor(name: &str, ty: GgmlType, data: &[u8], n_per_row: usize) -> Result<(), QuantizeError> {
    if !quant::can_dequantize(ty) {
        return Ok(());
    }
    let Some(row) = ty.row_bytes(n_per_row).filter(|&b| b > 0) else {
        return Ok(());
    };
    let rows_per_task = (CHUNK_ELEMENTS / n_per_row.max(1)).max(1);
    let firsts: Vec<Result<Option<(u64, f32)>, QuantizeError>> = data
        .par_chunks(rows_per_task * row)
        .enumerate()
        .map(|(task, src)| {
            let mut x = vec![0f32; src.len() / row * n_per_row];
            quant::dequantize(ty, src, &mut x)?;
            Ok(x.iter().position(|v| !v.is_finite()).map(|i| ((task * rows_per_task * n_per_row + i) as u64, x[i])))
        })
        .collect();
    for r in firsts {
        if let Some((index, value)) = r? {
            return Err(QuantizeError::NonFinite { tensor: name.to_string(), index, value });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_sizes_are_errors() {
        let x = [0.5f32; 64];
        let mut y = vec![0u8; 35];
        let err = quantize_rows(GgmlType::Q8_0, &x, &mut y).unwrap_err();
        assert!(err.to_string().contains("q8_0"), "{err}");
        let err = quantize_rows(GgmlType::Q4_K, &x, &mut [0u8; 144]).unwrap_err();
        assert!(matches!(err, QuantizeError::RowSize { .. }), "{err}");
        assert!(matches!(quantize_rows(GgmlType::Q8_1, &x, &mut [0u8; 72]), Err(QuantizeError::UnsupportedType { .. })));
    }

    #[test]
    fn convert_tensor_is_the_same_for_any_thread_count() {
        let x: Vec<f32> = (0..256 * 300).map(|i| ((i * 7919 % 1013) as f32 - 500.0) / 300.0).collect();
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| convert_tensor("t", GgmlType::F32, &bytes, 256, GgmlType::Q4_K).unwrap())
        };
        let one = run(1);
        assert_eq!(one, run(3));
        let mut direct = vec![0u8; one.len()];
        quantize_rows(GgmlType::Q4_K, &x, &mut direct).unwrap();
        assert_eq!(one, direct);
    }

    #[test]
    fn non_finite_weights_are_refused_with_their_index() {
        let mut x = vec![0.25f32; 64];
        x[40] = f32::NAN;
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let err = convert_tensor("blk.0.w", GgmlType::F32, &bytes, 32, GgmlType::Q8_0).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("blk.0.w") && msg.contains("40"), "{msg}");
        assert!(validate_tensor("blk.0.w", GgmlType::F32, &bytes, 32).is_err());
    }
}
