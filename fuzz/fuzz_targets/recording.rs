//! Fuzz target `recording`: `worker_orcd::fuzz::recording` on arbitrary bytes (`cargo xtask fuzz recording`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| worker_orcd::fuzz::recording(data));
