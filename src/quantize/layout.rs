//! The bytes llama.cpp's `llama_model_quantize` lays out around the tensor data:
//! its tensor order (`llama_model_loader::weight_name_comparer`), its metadata
//! (`gguf_set_kv` of the input, then `general.quantization_version` and
//! `general.file_type` re-appended, split keys removed), GGUF v3 tensor infos
//! with `ggml_n_dims` dimensions, and 32-byte alignment of the data section and of
//! every tensor (`GGUF_DEFAULT_ALIGNMENT`; ggml's writer ignores
//! `general.alignment`).
//!
//! This file knows the container layout only; it never looks at tensor values.

use crate::gguf::{GgmlType, GgufFile, TensorInfo};

use super::ftype::FileType;

/// Alignment of the data section and of each tensor in llama.cpp's output.
pub const OUTPUT_ALIGNMENT: u64 = 32;
/// `GGUF_VERSION`: the output is always v3, whatever the input was.
pub const GGUF_VERSION: u32 = 3;
/// `GGML_QNT_VERSION`, written as `general.quantization_version`.
pub const GGML_QNT_VERSION: u32 = 2;

const KEY_QNT_VERSION: &str = "general.quantization_version";
const KEY_FILE_TYPE: &str = "general.file_type";
/// Keys llama.cpp drops (`LLM_KV_SPLIT_*`) or re-appends.
const DROPPED: [&str; 5] = [KEY_QNT_VERSION, KEY_FILE_TYPE, "split.no", "split.count", "split.tensors.count"];

/// `ggml_n_dims`: the number of dimensions up to the last one larger than 1.
pub fn n_dims(shape: &[u64]) -> usize {
    (1..shape.len()).rev().find(|&i| shape[i] > 1).map_or(1, |i| i + 1)
}

/// `sscanf(name, "blk.%d.", &layer)`: the number after `blk.` (spaces skipped, a
/// sign allowed, nothing required after it), `None` when there is none.
pub fn scan_blk(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("blk.")?.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (negative, digits) = match rest.as_bytes().first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    let len = digits.bytes().take_while(u8::is_ascii_digit).count();
    let n: i64 = digits[..len].parse().ok()?;
    Some(if negative { -n } else { n })
}

/// Indexes of `tensors` in llama.cpp's processing (and output) order: tensors
/// outside any `blk.N.` first (layer -1), then by layer, then by name, bytewise.
pub fn processing_order(tensors: &[TensorInfo]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let (na, nb) = (&tensors[a].name, &tensors[b].name);
        let la = scan_blk(na).unwrap_or(-1);
        let lb = scan_blk(nb).unwrap_or(-1);
        la.cmp(&lb).then_with(|| na.as_bytes().cmp(nb.as_bytes()))
    });
    order
}

/// One tensor as it will be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutTensor {
    /// Index into the input file's tensors.
    pub index: usize,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes of data (without padding).
    pub n_bytes: u64,
}

fn pad(n: u64) -> u64 {
    n.div_ceil(OUTPUT_ALIGNMENT) * OUTPUT_ALIGNMENT
}

/// Assigns offsets like `gguf_add_tensor` / `gguf_set_tensor_type`: each tensor
/// starts where the previous one's padded data ends. `None` if a size overflows.
pub fn assign_offsets(tensors: &[TensorInfo], order: &[usize], types: &[GgmlType]) -> Option<Vec<OutTensor>> {
    let mut offset = 0u64;
    let mut out = Vec::with_capacity(order.len());
    for (&index, &ty) in order.iter().zip(types) {
        let t = &tensors[index];
        let n_bytes = (t.n_elements() / ty.block_size() as u64).checked_mul(ty.type_size() as u64)?;
        out.push(OutTensor { index, ty, offset, n_bytes });
        let end = offset.checked_add(n_bytes)?;
        offset = end.checked_add(OUTPUT_ALIGNMENT - 1)? / OUTPUT_ALIGNMENT * OUTPUT_ALIGNMENT;
    }
    Some(out)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_u32_kv(out: &mut Vec<u8>, key: &str, v: u32) {
    put_str(out, key);
    out.extend_from_slice(&4u32.to_le_bytes()); // GGUF_TYPE_UINT32
    out.extend_from_slice(&v.to_le_bytes());
}

/// Header, metadata and tensor infos, zero-padded to the alignment: what
/// `gguf_get_meta_data` returns for llama.cpp's output context.
pub fn encode_meta(file: &GgufFile, ftype: FileType, tensors: &[OutTensor]) -> Vec<u8> {
    let kept: Vec<usize> = (0..file.metadata.len()).filter(|&i| !DROPPED.contains(&file.metadata[i].0.as_str())).collect();
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&GGUF_VERSION.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kept.len() as u64 + 2).to_le_bytes());
    for i in kept {
        // The file was parsed from these bytes, so every entry has them.
        out.extend_from_slice(file.metadata_entry_bytes(i).expect("entry parsed from the file"));
    }
    put_u32_kv(&mut out, KEY_QNT_VERSION, GGML_QNT_VERSION);
    put_u32_kv(&mut out, KEY_FILE_TYPE, ftype.id());
    for t in tensors {
        let info = &file.tensors[t.index];
        put_str(&mut out, &info.name);
        let nd = n_dims(&info.shape);
        out.extend_from_slice(&(nd as u32).to_le_bytes());
        for i in 0..nd {
            out.extend_from_slice(&info.shape.get(i).copied().unwrap_or(1).to_le_bytes());
        }
        out.extend_from_slice(&t.ty.id().to_le_bytes());
        out.extend_from_slice(&t.offset.to_le_bytes());
    }
    out.resize(pad(out.len() as u64) as usize, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str) -> TensorInfo {
        TensorInfo { name: name.into(), shape: vec![32, 2], ggml_type: GgmlType::F32, offset: 0 }
    }

    #[test]
    fn order_is_globals_then_layers_numerically_then_names() {
        let names = ["blk.10.a.weight", "output_norm.weight", "blk.2.b.weight", "blk.2.a.weight", "blk.x.weight", "token_embd.weight"];
        let tensors: Vec<TensorInfo> = names.iter().map(|n| info(n)).collect();
        let order: Vec<&str> = processing_order(&tensors).iter().map(|&i| names[i]).collect();
        assert_eq!(order, ["blk.x.weight", "output_norm.weight", "token_embd.weight", "blk.2.a.weight", "blk.2.b.weight", "blk.10.a.weight"]);
    }

    #[test]
    fn scan_blk_is_sscanf() {
        assert_eq!(scan_blk("blk.12.attn_q.weight"), Some(12));
        assert_eq!(scan_blk("blk.3x"), Some(3));
        assert_eq!(scan_blk("blk. -4."), Some(-4));
        assert_eq!(scan_blk("blk..weight"), None);
        assert_eq!(scan_blk("token_embd.weight"), None);
    }

    #[test]
    fn offsets_are_padded_to_32() {
        let tensors = vec![
            TensorInfo { name: "a".into(), shape: vec![32, 1], ggml_type: GgmlType::Q4_0, offset: 0 },
            TensorInfo { name: "b".into(), shape: vec![3], ggml_type: GgmlType::F32, offset: 0 },
            TensorInfo { name: "c".into(), shape: vec![32], ggml_type: GgmlType::F32, offset: 0 },
        ];
        let out = assign_offsets(&tensors, &[0, 1, 2], &[GgmlType::Q4_0, GgmlType::F32, GgmlType::F32]).unwrap();
        let got: Vec<(u64, u64)> = out.iter().map(|t| (t.offset, t.n_bytes)).collect();
        assert_eq!(got, [(0, 18), (32, 12), (64, 128)]);
    }
}
