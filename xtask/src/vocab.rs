//! `cargo xtask fetch-vocab`: fetches llama.cpp's tokenizer test vocabularies (every family of
//! `worker_orcd::vocab_fetch::FAMILIES`, sha256-verified) into the cache and prints where.
//!
//! Only automation around `worker_orcd::vocab_fetch`; the fetching itself lives there so that
//! the tests use the same code.

use anyhow::Context;

pub fn fetch_vocab() -> anyhow::Result<()> {
    let dir = worker_orcd::vocab_fetch::ensure_all().context("fetching the tokenizer test vocabularies")?;
    for fam in worker_orcd::vocab_fetch::FAMILIES {
        println!("{}", dir.join(format!("ggml-vocab-{}.gguf", fam.name)).display());
    }
    Ok(())
}
