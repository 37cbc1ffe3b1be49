//! Errors of `worker-orcd quantize`: bad input files and tensors, types this
//! quantizer cannot produce, and I/O. Messages are lowercase and name the file,
//! tensor, key or type at fault.

use std::path::PathBuf;

use crate::gguf::{GgmlType, GgufError};

use super::ftype::FileType;

#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: GgufError,
    },

    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("metadata key {key:?}: {source}")]
    Metadata {
        key: String,
        #[source]
        source: GgufError,
    },

    #[error("metadata key {key:?} is {found}, expected an integer or an array of integers")]
    Hyperparameter { key: String, found: String },

    #[error("the output would exceed 2^64 bytes")]
    OutputTooLarge,

    #[error("general.alignment is {alignment}: llama.cpp pads quantized files to 32 bytes whatever the key says, so it would write an inconsistent file; only 32 is supported")]
    Alignment { alignment: u64 },

    #[error("split.count is {count}: split models are not supported (merge the parts first)")]
    Split { count: u64 },

    #[error("tensor {tensor:?}: cannot tell its layer (expected blk.N. with N below {n_layer})")]
    LayerOfTensor { tensor: String, n_layer: u32 },

    #[error("tensor {tensor:?} would become {ty}, which needs an importance matrix in a {ftype} file (llama.cpp refuses too)")]
    RequiresImatrix { tensor: String, ty: GgmlType, ftype: FileType },

    #[error("tensor {tensor:?} of type {ty} cannot be dequantized, so it cannot be requantized")]
    CannotDequantize { tensor: String, ty: GgmlType },

    #[error("tensor {tensor:?} would become {ty}, which this quantizer cannot produce")]
    UnsupportedTarget { tensor: String, ty: GgmlType },

    #[error("tensor {tensor:?}: rows of {n_per_row} elements are not whole blocks of {ty}")]
    RowWidth { tensor: String, ty: GgmlType, n_per_row: u64 },

    #[error("tensor {tensor:?}: {len} bytes of data are not whole rows of {row_bytes} bytes")]
    TensorSize { tensor: String, len: u64, row_bytes: u64 },

    #[error("tensor {tensor:?} has the non-finite value {value} at element {index} (llama.cpp refuses such weights too)")]
    NonFinite { tensor: String, index: u64, value: f32 },

    #[error("cannot quantize to {ty}: not a type this quantizer produces")]
    UnsupportedType { ty: GgmlType },

    #[error("cannot quantize {n_elements} elements to {ty} into {dst_len} bytes: wrong size or not whole blocks")]
    RowSize { ty: GgmlType, n_elements: u64, dst_len: u64 },

    #[error("dequantizing: {0}")]
    Dequantize(#[from] GgufError),

    #[error("cannot start {threads} quantizer threads: {detail}")]
    Threads { threads: usize, detail: String },
}
