//! Fuzz target `chat_template`: `worker_orcd::fuzz::chat_template` on arbitrary bytes (`cargo xtask fuzz chat_template`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| worker_orcd::fuzz::chat_template(data));
