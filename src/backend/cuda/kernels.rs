//! The CUDA kernel sources (`kernels/*.cu`, embedded at build time) as a typed table, and their
//! run-time compilation with NVRTC for the device's compute capability, cached on disk.
//!
//! This module knows source text, kernel names and compile options; it launches nothing. The
//! hash of all sources plus the options is the kernel part of a recording's fingerprint.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// Prepended to every module: types, f16 conversions, glibc's expf, fixed-order reductions.
const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// Options that make the device arithmetic the CPU reference's: no FMA contraction, IEEE
/// division and square root, no flush of denormals. Part of the fingerprint.
pub const NVRTC_OPTIONS: &[&str] = &["--fmad=false", "--ftz=false", "--prec-div=true", "--prec-sqrt=true", "--std=c++17"];

/// The options added to [`NVRTC_OPTIONS`] by this process's switches: line information with
/// `WORKER_ORCD_NVRTC_LINEINFO=1` (profiling only: the same instructions, a larger CUBIN).
pub fn extra_options() -> &'static [&'static str] {
    if super::options::options().lineinfo {
        &["--generate-line-info"]
    } else {
        &[]
    }
}

/// One `.cu` file of `kernels/`, named after the CPU reference it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelModule {
    Embedding,
    Rmsnorm,
    Quantize,
    Matvec,
    Kquant,
    Rope,
    Attention,
    Swiglu,
    Add,
    Decode,
    Sample,
}

/// The persistent decode kernel's entry points (kernels/decode.cu): per weight type, the
/// runtime-flag form and the default flags compiled in.
pub(crate) const DECODER_LAYERS: &[&str] = &[
    "decoder_layers_q4_1",
    "decoder_layers_q4_0",
    "decoder_layers_q8_0",
    "decoder_layers_q4_1_default",
    "decoder_layers_q4_0_default",
    "decoder_layers_q8_0_default",
];

impl KernelModule {
    pub const ALL: [KernelModule; 11] = [
        KernelModule::Embedding,
        KernelModule::Rmsnorm,
        KernelModule::Quantize,
        KernelModule::Matvec,
        KernelModule::Kquant,
        KernelModule::Rope,
        KernelModule::Attention,
        KernelModule::Swiglu,
        KernelModule::Add,
        KernelModule::Decode,
        KernelModule::Sample,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            KernelModule::Embedding => "embedding.cu",
            KernelModule::Rmsnorm => "rmsnorm.cu",
            KernelModule::Quantize => "quantize.cu",
            KernelModule::Matvec => "matvec.cu",
            KernelModule::Kquant => "kquant.cu",
            KernelModule::Rope => "rope.cu",
            KernelModule::Attention => "attention.cu",
            KernelModule::Swiglu => "swiglu.cu",
            KernelModule::Add => "add.cu",
            KernelModule::Decode => "decode.cu",
            KernelModule::Sample => "sample.cu",
        }
    }

    pub fn source(self) -> &'static str {
        match self {
            KernelModule::Embedding => include_str!("../../../kernels/embedding.cu"),
            KernelModule::Rmsnorm => include_str!("../../../kernels/rmsnorm.cu"),
            KernelModule::Quantize => include_str!("../../../kernels/quantize.cu"),
            KernelModule::Matvec => include_str!("../../../kernels/matvec.cu"),
            KernelModule::Kquant => include_str!("../../../kernels/kquant.cu"),
            KernelModule::Rope => include_str!("../../../kernels/rope.cu"),
            KernelModule::Attention => include_str!("../../../kernels/attention.cu"),
            KernelModule::Swiglu => include_str!("../../../kernels/swiglu.cu"),
            KernelModule::Add => include_str!("../../../kernels/add.cu"),
            KernelModule::Decode => include_str!("../../../kernels/decode.cu"),
            KernelModule::Sample => include_str!("../../../kernels/sample.cu"),
        }
    }

    /// The `extern "C"` kernels the module defines (each named after its CPU reference).
    pub fn functions(self) -> &'static [&'static str] {
        match self {
            KernelModule::Embedding => &["embedding_q4_0", "embedding_q4_1", "embedding_q8_0", "embedding_f16", "embedding_bf16", "embedding_f32"],
            KernelModule::Rmsnorm => &["rmsnorm_f32", "rmsnorm_q8", "head_rmsnorm_f32"],
            KernelModule::Quantize => &["quantize_q8_1"],
            KernelModule::Matvec => &[
                "matvec_q4_1_q8_1",
                "matvec_q4_0_q8_0",
                "matvec_q8_0_q8_0",
                "matvec_mma_q4_1_q8_1_t2",
                "matvec_mma_q4_1_q8_1_t4",
                "matvec_mma_q4_1_q8_1_t8",
                "matvec_mma_q4_0_q8_0_t2",
                "matvec_mma_q4_0_q8_0_t4",
                "matvec_mma_q4_0_q8_0_t8",
                "matvec_mma_q8_0_q8_0_t2",
                "matvec_mma_q8_0_q8_0_t4",
                "matvec_mma_q8_0_q8_0_t8",
                "matvec_tile_q4_1_q8_1_t32",
                "matvec_tile_q4_0_q8_0_t32",
                "matvec_tile_q8_0_q8_0_t32",
                "matvec_one_q4_1_q8_1",
                "matvec_one_q4_0_q8_0",
                "matvec_one_q8_0_q8_0",
                "matvec_f16",
                "matvec_bf16",
                "matvec_f32",
            ],
            KernelModule::Kquant => &[
                "quantize_q8_K",
                "matvec_q5_0_q8_0",
                "matvec_q5_1_q8_1",
                "matvec_iq4_nl_q8_0",
                "matvec_q2_K_q8_K",
                "matvec_q3_K_q8_K",
                "matvec_q4_K_q8_K",
                "matvec_q5_K_q8_K",
                "matvec_q6_K_q8_K",
            ],
            KernelModule::Rope => &["rope_norm", "rope_neox", "rope_store_kv"],
            KernelModule::Attention => &["attention_f32", "attention_window_f32", "attention_rows_f32_p6", "attention_rows_f32_p8"],
            KernelModule::Swiglu => &["swiglu_f32", "geglu_f32"],
            KernelModule::Add => &["add_f32", "exp_f32", "scale_f32"],
            KernelModule::Decode => DECODER_LAYERS,
            KernelModule::Sample => &["pick_mark", "pick_prepare", "pick_lanes", "pick_choose"],
        }
    }

    /// Modules whose device functions this one calls: compiled into it, before its own text.
    pub fn includes(self) -> &'static [KernelModule] {
        match self {
            KernelModule::Decode => &[KernelModule::Rmsnorm, KernelModule::Matvec, KernelModule::Attention],
            _ => &[],
        }
    }

    /// The full text handed to NVRTC: the common header, the included modules, then the file
    /// (each after a `#line` so compiler messages name the right file and line).
    pub fn full_source(self) -> String {
        let mut s = COMMON.to_string();
        for m in self.includes().iter().chain([&self]) {
            s.push_str(&format!("\n#line 1 \"{}\"\n{}", m.file_name(), m.source()));
        }
        s
    }
}

/// sha256 over every module's full source and the compile options, hex. Changes whenever a
/// kernel's arithmetic could.
pub fn source_hash() -> String {
    let mut h = Sha256::new();
    for m in KernelModule::ALL {
        h.update(m.file_name().as_bytes());
        h.update([0]);
        h.update(m.full_source().as_bytes());
        h.update([0]);
    }
    for o in NVRTC_OPTIONS {
        h.update(o.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where compiled modules are cached: `$WORKER_ORCD_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/worker-orcd/kernels`, else `~/.cache/worker-orcd/kernels`. `None` if no
/// home is known (then every start compiles).
pub fn cache_dir() -> Option<PathBuf> {
    super::options::options().kernel_cache.clone()
}

/// The cache key of one module for one architecture and NVRTC version.
pub fn cache_key(module: KernelModule, arch: &str, nvrtc_version: (i32, i32)) -> String {
    let mut h = Sha256::new();
    h.update(module.full_source().as_bytes());
    for o in NVRTC_OPTIONS.iter().chain(extra_options()) {
        h.update(o.as_bytes());
    }
    h.update(arch.as_bytes());
    h.update(format!("{nvrtc_version:?}").as_bytes());
    format!("{}-{}-{}.cubin", module.file_name().trim_end_matches(".cu"), arch, &hex(&h.finalize())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_declared_function_is_defined_in_its_source() {
        for m in KernelModule::ALL {
            for f in m.functions() {
                // `void f(`, `void __launch_bounds__(..) f(`, or a macro instance `(f, ...)`.
                let src = m.source();
                let defined = src.contains(&format!("void {f}(")) || src.contains(&format!(") {f}(")) || src.contains(&format!("({f},"));
                assert!(defined, "{} does not define {f}", m.file_name());
            }
        }
    }

    #[test]
    fn source_hash_is_stable_within_a_build() {
        assert_eq!(source_hash(), source_hash());
        assert_eq!(source_hash().len(), 64);
    }
}
