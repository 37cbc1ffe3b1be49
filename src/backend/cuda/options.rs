//! The CUDA backend's switches, read from the environment once per process and nowhere else.
//! Every switch changes speed only: results are bit-identical whichever is set. Most are on
//! unless set to `0`; `WORKER_ORCD_CUDA_MMA_EPI` is off unless set to `1`.
//!
//! | variable | default | effect |
//! | --- | --- | --- |
//! | `WORKER_ORCD_CUDA_GRAPHS=0` | on | decode steps launch kernel by kernel instead of as a captured CUDA graph |
//! | `WORKER_ORCD_CUDA_PERSISTENT=0` | on | one-position steps use the per-op kernels instead of the persistent decode kernel |
//! | `WORKER_ORCD_CUDA_MMA=0` | on | products of 16 or more positions stay on the dp4a kernels instead of the tensor cores |
//! | `WORKER_ORCD_CUDA_TILE=N` | 256 | tensor-core products of N or more positions whose tiled grid gives every SM 1.5 blocks stage weight and activation tiles in shared memory (`matvec_tile_*`, `launch::mma_pick`); `0` keeps every product on the per-warp kernels (`matvec_mma_*`) |
//! | `WORKER_ORCD_CUDA_MMA_EPI=1` | off | tensor-core Q\|K\|V and gate\|up products apply RoPE with the K/V cache writes and SwiGLU with its Q8_1 blocks in their epilogues instead of leaving them to `rope_store_kv` and `swiglu_f32` (off by default: measured slower on the H100, BENCHMARKS.md) |
//! | `WORKER_ORCD_CUDA_ATTN_ROWS=0` | on | batch attention runs one block per (position, head) (`attention_f32`) instead of several pairs per block sharing each K/V tile (`attention_rows_f32_p*`) |
//! | `WORKER_ORCD_CUDA_PDL=0` | on (sm_90+) | kernels never overlap their predecessor's tail (programmatic dependent launch) |
//! | `WORKER_ORCD_CUDA_PICK=0` | on | the engine's token choice (`sampler::pick`) runs on the host over downloaded logits instead of on the device (`kernels/sample.cu`) |
//! | `WORKER_ORCD_CUDA_DECODE_FLAGS=N` | 31 (every flag but 32) | the persistent decode kernel's optimizations, a bit mask (`decode_flags`: 1 staged weights, 2 eight-thread norm quantization, 4 attention preload, 8 that preload early, 16 the gate\|up phase split, 32 per-head flags instead of the Q\|K\|V barrier, 64 flag-in-data words instead of the other four barriers, 128 relaxed barrier polls, 256 with 64 flag-in-data words after Q\|K\|V too, bits 12-15 a pause of n x 32 ns between polls) |
//! | `WORKER_ORCD_NVRTC_LINEINFO=1` | off | kernels are compiled with line information (`--generate-line-info`) so Nsight Compute's source page maps instructions to `kernels/` lines; profiling only (the code is the same) |
//! | `WORKER_ORCD_KERNEL_CACHE=DIR` | `$XDG_CACHE_HOME/worker-orcd/kernels`, else `~/.cache/worker-orcd/kernels` | where compiled kernel modules are cached |

use std::path::PathBuf;
use std::sync::OnceLock;

/// The persistent decode kernel's `flags` (kernels/decode.cu's DEC_*): speed only, every
/// combination computes the same bits.
pub mod decode_flags {
    /// Weights of a block's next items copied into shared memory (cp.async) ahead of use.
    pub const STAGE: u32 = 1;
    /// The fused norms quantize with eight threads per Q8_1 block.
    pub const NORM_G8: u32 = 2;
    /// Attention heads on the last blocks, their cached K/V tile loaded before the barrier.
    pub const PRELOAD: u32 = 4;
    /// With PRELOAD: an attention block without a Q|K|V item preloads the next layer's tile
    /// right after its last item of the layer instead of in the Q|K|V phase.
    pub const EARLY: u32 = 8;
    /// The gate|up phase in twice the items of half the rows, its SwiGLU row quantized by
    /// each item of the down projection.
    pub const SPLIT_D: u32 = 16;
    /// No grid-wide wait between the Q|K|V and attention phases: attention blocks wait on
    /// per-item flags for the rows their heads read. Not in [`DEFAULT`]: on the H200 it
    /// measured slower than the barrier (BENCHMARKS.md).
    pub const HEAD_FLAGS: u32 = 32;
    /// No grid barrier after the attention, output, gate|up and down phases: their outputs
    /// are flag-in-data words (value and epoch in one 64-bit word) that the next phase's
    /// blocks poll. Implies SPLIT_D.
    pub const LL: u32 = 64;
    /// The barrier polls use relaxed loads and one acquire fence instead of acquire loads.
    pub const RELAXED: u32 = 128;
    /// With LL: no barrier after the Q|K|V phase either (its rows as flag-in-data words too;
    /// the attention blocks store this position's K/V cells themselves). Dropped without LL.
    pub const LL_QKV: u32 = 256;
    /// Bits 12..15, a number n: every spin loop of the kernel (barrier, flag and
    /// flag-in-data polls) pauses n x 32 ns between two polls.
    pub const BACKOFF_SHIFT: u32 = 12;
    pub const BACKOFF: u32 = 15 << BACKOFF_SHIFT;
    /// Not a kernel flag: [`DEFAULT`] runs the entry points compiled for it
    /// (`decoder_layers_<type>_default`, the flags known at compile time) unless this bit asks
    /// for the general ones, which read the flags at run time (the same bits either way).
    pub const GENERIC: u32 = 1 << 16;
    /// Every flag (the mask of valid bits).
    pub const ALL: u32 = STAGE | NORM_G8 | PRELOAD | EARLY | SPLIT_D | HEAD_FLAGS | LL | RELAXED | LL_QKV | BACKOFF | GENERIC;
    /// What runs unless `WORKER_ORCD_CUDA_DECODE_FLAGS` says otherwise.
    pub const DEFAULT: u32 = STAGE | NORM_G8 | PRELOAD | EARLY | SPLIT_D;
}

/// `WORKER_ORCD_CUDA_TILE`'s default: below this many positions the tiled products never beat
/// the per-warp ones on the H100 (BENCHMARKS.md, 2026-12-07 second session).
pub const TILE_MIN_DEFAULT: usize = 256;

/// The switches (see the module table). `Default` is every switch on and the default cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaOptions {
    pub graphs: bool,
    pub persistent: bool,
    pub mma: bool,
    /// Positions from which the tensor-core products run tiled (`matvec_tile_*`); 0: never.
    pub tile_min: usize,
    /// The tensor-core products apply RoPE and the K/V cache writes (Q|K|V, NORM pairs) and
    /// SwiGLU with its Q8_1 blocks (gate|up) in their epilogues. Opt-in (on only at `1`).
    pub mma_epi: bool,
    /// Batch attention shares K/V tiles among several (position, head) pairs.
    pub attention_rows: bool,
    pub pdl: bool,
    /// `Backend::forward_pick` chooses on the device.
    pub device_pick: bool,
    /// The persistent decode kernel's `flags` ([`decode_flags`]).
    pub decode_flags: u32,
    /// NVRTC adds line information (profiling; the same instructions).
    pub lineinfo: bool,
    /// `None` when no cache folder is known (then every start compiles).
    pub kernel_cache: Option<PathBuf>,
}

impl CudaOptions {
    /// Parses the switches from `get` (an environment lookup): a switch is off only when its
    /// variable is exactly `0`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> CudaOptions {
        let on = |k: &str| get(k).is_none_or(|v| v != "0");
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let kernel_cache = nonempty("WORKER_ORCD_KERNEL_CACHE").map(PathBuf::from).or_else(|| {
            let base = nonempty("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(base.join("worker-orcd").join("kernels"))
        });
        CudaOptions {
            graphs: on("WORKER_ORCD_CUDA_GRAPHS"),
            persistent: on("WORKER_ORCD_CUDA_PERSISTENT"),
            mma: on("WORKER_ORCD_CUDA_MMA"),
            tile_min: get("WORKER_ORCD_CUDA_TILE").and_then(|v| v.trim().parse().ok()).unwrap_or(TILE_MIN_DEFAULT),
            mma_epi: get("WORKER_ORCD_CUDA_MMA_EPI").is_some_and(|v| v == "1"),
            attention_rows: on("WORKER_ORCD_CUDA_ATTN_ROWS"),
            pdl: on("WORKER_ORCD_CUDA_PDL"),
            device_pick: on("WORKER_ORCD_CUDA_PICK"),
            decode_flags: get("WORKER_ORCD_CUDA_DECODE_FLAGS").and_then(|v| v.trim().parse().ok()).unwrap_or(decode_flags::DEFAULT),
            lineinfo: get("WORKER_ORCD_NVRTC_LINEINFO").is_some_and(|v| v == "1"),
            kernel_cache,
        }
    }
}

/// This process's switches, read from the environment on first use.
pub fn options() -> &'static CudaOptions {
    static OPTIONS: OnceLock<CudaOptions> = OnceLock::new();
    OPTIONS.get_or_init(|| CudaOptions::from_lookup(|k| std::env::var(k).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_is_off_only_at_zero_and_the_cache_falls_back_in_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        let all_on = CudaOptions::from_lookup(env(&[("HOME", "/h")]));
        assert!(all_on.graphs && all_on.persistent && all_on.mma && all_on.pdl && all_on.device_pick);
        assert!(!all_on.mma_epi, "the fused tensor-core epilogues are opt-in");
        assert!(!all_on.lineinfo && CudaOptions::from_lookup(env(&[("WORKER_ORCD_NVRTC_LINEINFO", "1")])).lineinfo);
        assert!(CudaOptions::from_lookup(env(&[("WORKER_ORCD_CUDA_MMA_EPI", "1")])).mma_epi);
        assert!(!CudaOptions::from_lookup(env(&[("WORKER_ORCD_CUDA_MMA_EPI", "yes")])).mma_epi);
        assert_eq!(all_on.kernel_cache, Some(PathBuf::from("/h/.cache/worker-orcd/kernels")));
        let o = CudaOptions::from_lookup(env(&[
            ("WORKER_ORCD_CUDA_GRAPHS", "0"),
            ("WORKER_ORCD_CUDA_MMA", "1"),
            ("WORKER_ORCD_CUDA_PDL", "no"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ]));
        assert!(!o.graphs && o.mma && o.pdl && o.persistent);
        assert_eq!(o.kernel_cache, Some(PathBuf::from("/x/worker-orcd/kernels")));
        let o = CudaOptions::from_lookup(env(&[("WORKER_ORCD_CUDA_PERSISTENT", "0"), ("WORKER_ORCD_KERNEL_CACHE", "/k"), ("HOME", "/h")]));
        assert!(!o.persistent);
        assert_eq!(o.decode_flags, decode_flags::DEFAULT);
        assert_eq!(CudaOptions::from_lookup(env(&[("WORKER_ORCD_CUDA_DECODE_FLAGS", "2")])).decode_flags, 2);
        assert_eq!(o.tile_min, TILE_MIN_DEFAULT);
        assert_eq!(CudaOptions::from_lookup(env(&[("WORKER_ORCD_CUDA_TILE", "0")])).tile_min, 0);
        assert_eq!(CudaOptions::from_lookup(env(&[("WORKER_ORCD_CUDA_TILE", "256")])).tile_min, 256);
        assert_eq!(o.kernel_cache, Some(PathBuf::from("/k")));
        assert_eq!(CudaOptions::from_lookup(env(&[])).kernel_cache, None);
    }
}
