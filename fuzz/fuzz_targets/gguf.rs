//! Fuzz target `gguf`: `worker_orcd::fuzz::gguf` on arbitrary bytes (`cargo xtask fuzz gguf`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| worker_orcd::fuzz::gguf(data));
