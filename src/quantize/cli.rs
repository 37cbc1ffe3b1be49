//! The `worker-orcd quantize IN OUT TYPE` subcommand: arguments, and a summary on
//! stderr. The work is `quantize::quantize_file`; this file only resolves flags.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;

use super::{quantize_file, FileType};

#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// Input GGUF model (any supported type; quantized tensors are dequantized first).
    pub input: PathBuf,
    /// Output GGUF file (written under a temporary name, then renamed).
    pub output: PathBuf,
    /// llama.cpp file type: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K_S, Q3_K_M, Q3_K_L,
    /// Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K, IQ4_NL, F16, BF16, F32 (Q2_K_S needs an imatrix).
    #[arg(value_name = "TYPE")]
    pub file_type: String,
    /// Threads (0 = all cores). The output is identical for any value.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn run(a: QuantizeArgs) -> anyhow::Result<()> {
    let ftype: FileType = a.file_type.parse().context("TYPE")?;
    let report = quantize_file(&a.input, &a.output, ftype, a.threads).with_context(|| format!("quantizing {} to {ftype}", a.input.display()))?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &report.tensors {
        *counts.entry(t.to.name()).or_default() += 1;
    }
    let mix: Vec<String> = counts.iter().map(|(ty, n)| format!("{ty} x{n}")).collect();
    eprintln!(
        "worker-orcd: wrote {} ({ftype}, {} tensors: {}; {} fell back to a 32-block type) in {:.1} s, {} bytes",
        a.output.display(),
        report.tensors.len(),
        mix.join(", "),
        report.n_fallback,
        report.seconds,
        report.bytes_out
    );
    Ok(())
}
