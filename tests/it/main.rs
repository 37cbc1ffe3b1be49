//! Integration tests: one binary, a module per area.
mod tokenizer;
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
mod quantize;
