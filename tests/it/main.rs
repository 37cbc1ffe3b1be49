//! Integration tests: one binary, a module per area.
mod tokenizer;
mod tokenizer_suite;
mod chat;
mod reference;
mod support;
mod determinism;
mod parity;
mod gguf;
mod server;
mod trace;
mod cuda;
mod replay;
mod faults;
mod cli;
mod ggml_kernels;
mod quantize;
mod model;
