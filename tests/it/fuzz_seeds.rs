//! The fuzz targets' entry points (`worker_orcd::fuzz`) on every committed seed and every
//! input a fuzzer ever crashed on (`fuzz/regressions/TARGET/`): each must return, quickly.

use std::path::Path;
use std::time::{Duration, Instant};

fn each_input(target: &str, f: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in [root.join("seeds").join(target), root.join("regressions").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            if p.file_name().is_some_and(|n| n == ".keep") {
                continue;
            }
            let data = std::fs::read(&p).unwrap();
            let t0 = Instant::now();
            f(&data);
            assert!(t0.elapsed() < Duration::from_secs(10), "{}: took {:?}", p.display(), t0.elapsed());
            n += 1;
        }
    }
    assert!(n > 0, "no seeds for {target}");
}

#[test]
fn gguf_reader_seeds_and_regressions() {
    each_input("gguf", worker_orcd::fuzz::gguf);
}

#[test]
fn recording_reader_seeds_and_regressions() {
    each_input("recording", worker_orcd::fuzz::recording);
}

#[test]
fn http_request_seeds_and_regressions() {
    each_input("http_request", worker_orcd::fuzz::http_request);
}

#[test]
fn chat_template_seeds_and_regressions() {
    each_input("chat_template", worker_orcd::fuzz::chat_template);
}
