//! Errors for reading, validating and dequantizing GGUF files.
//!
//! Every variant that comes from parsing names the byte offset and the field it
//! was reading, so a bad file can be diagnosed with a hex dump alone. This module
//! knows nothing about what the metadata means (no llama knowledge).

use std::path::PathBuf;

use super::types::GgmlType;

/// Everything that can go wrong when opening a GGUF file or reading values from it.
///
/// Messages are lowercase, carry no trailing period and name the byte offset and
/// the field involved. Field names look like `tensor_count`, `kv[3].key`,
/// `kv[3] "general.name" value`, `tensor[7] "blk.0.attn_q.weight" dims[1]`.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read gguf file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("truncated gguf: need {needed} bytes for {field} at offset {offset}, file has {file_len}")]
    Truncated { offset: u64, field: String, needed: u64, file_len: u64 },

    /// A count (of tensors, metadata entries or array elements) that could not
    /// possibly fit in the rest of the file; rejected before anything is allocated.
    #[error(
        "{field} {count} at offset {offset} is impossible: each needs at least {min_bytes_each} \
         bytes but only {remaining} bytes remain (truncated or corrupt file)"
    )]
    CountTooLarge { offset: u64, field: String, count: u64, min_bytes_each: u64, remaining: u64 },

    #[error("bad gguf magic at offset 0: expected \"GGUF\", found {found:02x?}")]
    BadMagic { found: [u8; 4] },

    #[error("unsupported gguf version {version} at offset 4: {reason}")]
    UnsupportedVersion { version: u32, reason: &'static str },

    #[error("invalid metadata value type {id} for {field} at offset {offset}")]
    InvalidValueType { offset: u64, field: String, id: u32 },

    #[error("metadata array nesting deeper than {max_depth} for {field} at offset {offset}")]
    NestingTooDeep { offset: u64, field: String, max_depth: usize },

    #[error("invalid utf-8 in {field} at offset {offset}")]
    InvalidUtf8 { offset: u64, field: String },

    #[error("invalid bool value {value} for {field} at offset {offset}: must be 0 or 1")]
    InvalidBool { offset: u64, field: String, value: u8 },

    #[error("{what} {len} for {field} at offset {offset} exceeds the limit of {max}")]
    LimitExceeded { offset: u64, field: String, what: &'static str, len: u64, max: u64 },

    #[error("empty metadata key for {field} at offset {offset}")]
    EmptyKey { offset: u64, field: String },

    #[error("duplicate metadata key {key:?} for {field} at offset {offset}")]
    DuplicateKey { offset: u64, field: String, key: String },

    #[error("general.alignment must be u32 but is {found} ({field} at offset {offset})")]
    AlignmentWrongType { offset: u64, field: String, found: &'static str },

    #[error("invalid general.alignment {alignment} ({field} at offset {offset}): must be a non-zero power of two")]
    BadAlignment { offset: u64, field: String, alignment: u64 },

    #[error("tensor name of {len} bytes for {field} at offset {offset} is too long (ggml allows at most {max})")]
    TensorNameTooLong { offset: u64, field: String, len: u64, max: usize },

    #[error("duplicate tensor name {name:?} for {field} at offset {offset}")]
    DuplicateTensor { offset: u64, field: String, name: String },

    #[error("invalid n_dims {n_dims} for tensor {tensor:?} at offset {offset}: must be 1..=4")]
    InvalidDims { offset: u64, tensor: String, n_dims: u32 },

    #[error("dimension {dim} of tensor {tensor:?} at offset {offset} is {value}, larger than i64::MAX")]
    DimTooLarge { offset: u64, tensor: String, dim: usize, value: u64 },

    #[error("shape {shape:?} of tensor {tensor:?} (dims at offset {offset}) overflows the element count")]
    ElementCountOverflow { offset: u64, tensor: String, shape: Vec<u64> },

    #[error("invalid ggml type id {id} for tensor {tensor:?} at offset {offset}")]
    InvalidTensorType { offset: u64, tensor: String, id: u32 },

    #[error(
        "tensor {tensor:?} of type {ty} (type at offset {offset}) has rows of {row_len} elements, \
         not a multiple of the block size {block_size}"
    )]
    RowNotBlockMultiple { offset: u64, tensor: String, ty: GgmlType, row_len: u64, block_size: usize },

    #[error(
        "tensor {tensor:?} data offset {offset} (field at offset {field_offset}) is not a multiple \
         of the alignment {alignment}"
    )]
    MisalignedTensor { field_offset: u64, tensor: String, offset: u64, alignment: u64 },

    #[error(
        "data section starts at offset {data_offset} (after padding to {alignment}) but the file \
         has only {file_len} bytes"
    )]
    DataSectionOutOfBounds { data_offset: u64, alignment: u64, file_len: u64 },

    #[error(
        "tensor {tensor:?} data at file offsets {start}..{end} (padded to the alignment; offset \
         field at offset {field_offset}) extends past the end of the file ({file_len} bytes)"
    )]
    TensorOutOfBounds { field_offset: u64, tensor: String, start: u64, end: u64, file_len: u64 },

    #[error(
        "tensor {second:?} data at data offset {second_offset} (field at offset {field_offset}) \
         overlaps tensor {first:?} which ends at data offset {first_end}"
    )]
    OverlappingTensors { field_offset: u64, first: String, first_end: u64, second: String, second_offset: u64 },

    #[error("metadata key {key:?} not found")]
    MissingKey { key: String },

    #[error("metadata key {key:?} has type {found}, expected {expected}")]
    WrongType { key: String, expected: &'static str, found: &'static str },

    #[error("metadata key {key:?} value {value} does not fit in {target}")]
    OutOfRange { key: String, value: String, target: &'static str },

    #[error("tensor {name:?} not found")]
    TensorNotFound { name: String },

    #[error("dequantization of {ty} is not supported")]
    UnsupportedDequant { ty: GgmlType },

    #[error("cannot dequantize {ty}: {n_elements} elements is not a multiple of the block size {block_size}")]
    DequantNotBlockMultiple { ty: GgmlType, n_elements: u64, block_size: usize },

    #[error(
        "cannot dequantize {ty}: {n_elements} elements need {expected_bytes} bytes \
         (block size {block_size}), got {data_len}"
    )]
    DequantSizeMismatch { ty: GgmlType, n_elements: u64, block_size: usize, expected_bytes: u64, data_len: u64 },
}
