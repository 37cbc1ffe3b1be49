//! Unit tests for the gguf module: round trips through the writer, hostile and
//! truncated files, and dequantization against hand-computed values.

mod dequant;
mod hostile;
mod roundtrip;
