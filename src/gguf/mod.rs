//! GGUF container format: a validating reader (memory-mapped or in-memory), a
//! writer, and ggml-exact dequantization of tensor data to f32.
//!
//! This module knows the file format and ggml's number formats only. It does not
//! know what any metadata key or tensor name means (no llama, no tokenizer): the
//! model loader interprets those.
//!
//! Layout: `types` (GgmlType, MetadataValue, TensorInfo), `error` (GgufError),
//! `reader` (parsing and validation), `file` (GgufFile and its accessors),
//! `quant` (f16/bf16 and block dequantization), `writer` (GgufWriter).

mod error;
mod file;
pub mod quant;
pub mod reader;
mod types;
pub mod writer;

#[cfg(test)]
mod tests;

pub use error::GgufError;
pub use file::GgufFile;
pub use reader::{DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH};
pub use types::{GgmlType, MetadataValue, QMatrix, TensorInfo, ValueType, QK_K};
pub use writer::GgufWriter;
