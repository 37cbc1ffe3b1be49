//! Fuzz target `http_request`: `worker_orcd::fuzz::http_request` on arbitrary bytes (`cargo xtask fuzz http_request`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| worker_orcd::fuzz::http_request(data));
