//! Fetches llama.cpp's tokenizer test vocabularies: the vocab-only `ggml-vocab-FAMILY.gguf`
//! files with their `.inp`/`.out` pairs (and the few vocab files that have no pair), extracted
//! from the llama-cpp-python 0.3.36 source
//! package (downloaded with pip, sha256-pinned) into the cache directory, each file verified
//! against a pinned sha256; later calls reuse the cache.
//!
//! This module knows where those files come from and where they are cached; it knows nothing of
//! their contents (that is `tokenizer` and the tests). pip is the only network client, as for
//! the model (`fetch`); Python's `tarfile` extracts the members so that no archive crate is
//! needed. The files are test data and are never committed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::fetch::{cache_dir, sha256_file, FetchError};

/// pip requirement of the source package that carries the vocabularies.
pub const SDIST_REQUIREMENT: &str = "llama-cpp-python==0.3.36";
/// File name pip saves the source package under.
pub const SDIST_FILE: &str = "llama_cpp_python-0.3.36.tar.gz";
/// sha256 of [`SDIST_FILE`] (PyPI's published digest).
pub const SDIST_SHA256: &str = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e";
/// Size of [`SDIST_FILE`] in bytes.
pub const SDIST_SIZE: u64 = 76_589_250;
/// Directory of the vocab files inside the source package.
pub const SDIST_MODELS_DIR: &str = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/";
/// Environment variable naming an already-downloaded copy of [`SDIST_FILE`] (verified like a
/// download), for machines without access to PyPI.
pub const SDIST_ENV: &str = "WORKER_ORCD_VOCAB_SDIST";
/// Subdirectory of the cache directory that holds the extracted files.
pub const CACHE_SUBDIR: &str = "llama-cpp-vocab-0.3.36";

/// Size and sha256 of one extracted file.
#[derive(Debug, Clone, Copy)]
pub struct FileSpec {
    pub sha256: &'static str,
    pub size: u64,
}

/// One tokenizer test vocabulary of llama.cpp: `ggml-vocab-{name}.gguf` and, for most, the
/// `.inp`/`.out` pair that test-tokenizer-0 checks it with.
#[derive(Debug, Clone, Copy)]
pub struct VocabFamily {
    pub name: &'static str,
    pub gguf: FileSpec,
    /// `(.inp, .out)`, when llama.cpp ships a pair for this vocabulary.
    pub pair: Option<(FileSpec, FileSpec)>,
}

const fn family(name: &'static str, gguf: (&'static str, u64), inp: (&'static str, u64), out: (&'static str, u64)) -> VocabFamily {
    VocabFamily {
        name,
        gguf: FileSpec { sha256: gguf.0, size: gguf.1 },
        pair: Some((FileSpec { sha256: inp.0, size: inp.1 }, FileSpec { sha256: out.0, size: out.1 })),
    }
}

const fn vocab_only(name: &'static str, gguf: (&'static str, u64)) -> VocabFamily {
    VocabFamily { name, gguf: FileSpec { sha256: gguf.0, size: gguf.1 }, pair: None }
}

/// Every vocabulary of llama-cpp-python 0.3.36's `models/` directory, sorted by name (all but
/// aquila, baichuan, gpt-neox and nomic-bert-moe with an `.inp`/`.out` pair; nomic-bert-moe,
/// a 6.8 MB Unigram vocabulary we do not tokenize, is left out).
#[rustfmt::skip]
pub const FAMILIES: &[VocabFamily] = &[
    vocab_only("aquila", ("7c53c3c516ac67c7ca12977b9690fdea3d2ef13bbaed6378f98191a13ef5ca00", 4825676)),
    vocab_only("baichuan", ("4f5b955697f3bd3108070b1d5936c7eb9fc542b81c6932e59abddec75bca1963", 1340998)),
    family("bert-bge",
        ("fbcbe22278fb302694d5f4a41bfe48c5f90e8e3554eab1c0435387dff654a854", 627549),
        ("be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0", 1943),
        ("8f95b1d4e5680634af06ac5a1b19f15ddeb743d3a6240056625e4345a4b06917", 1636),
    ),
    family("command-r",
        ("a2f8cfea952ef7c391a6d92a1c309d0bd32e36384d9b9230569a7425732f27d9", 10874545),
        ("be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0", 1943),
        ("d2a601336e422b60a264858c01b14c5d37575fe1f9adfcafc2f3b3707903903f", 1905),
    ),
    family("deepseek-coder",
        ("91cb1379f2e33af1c4866b194622b7a0e12e8f0c9dba7ba2f10d55978730bec1", 1156067),
        ("be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0", 1943),
        ("c2cea4584b0487e67fbd81f491bb44f89238722062126120d2c412edb3dbd853", 2096),
    ),
    family("deepseek-llm",
        ("867f77537b54565f0d81d508c04edc41aa1d4ffc1a92745f225b4c1b02755f76", 3970167),
        ("be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0", 1943),
        ("87cfc1a8a9a7ef25d04d28c26a67b6a620af7be938c9bd0feeb4d319b9302832", 1920),
    ),
    family("falcon",
        ("9f0bf8b0733680398b72e652e90f260f43782f326e75545fc0e49611a5ba35ad", 2287728),
        ("be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0", 1943),
        ("f8c80a0483582ef195c2129b69bb2e4e421b0f31ed7b35d84b63511d7ebae7cd", 2002),
    ),
    family("gemma-4",
        ("58b1ba0b57f3b4d7c468ba4ffd91ad85190346a3d7ad7e71d1cabaae8a14bb65", 15776467),
        ("0528aa007b06965f980181d252b5dff7bb170a77af6157bd48bba56885374448", 1922),
        ("ba8c596bcd05e97e62566fa994b42eeaeffd6a4e4b4a4abe7b5b689aa6b43bf3", 2185),
    ),
    family("gpt-2",
        ("cedc56ca6e2e89f63e781696d1fd76b4b1d49e6720dee86463e915f6e90016ac", 1766807),
        ("be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0", 1943),
        ("48e8c4cb3ad5c37915b225f872222567c1c4dd4d66951aa53460c8d152ff6d60", 2147),
    ),
    vocab_only("gpt-neox", ("ae593a7f9b8bb174ed4f5019e41530463e4dac7aa06e42dee8aa650d2bdac53d", 1771431)),
    family("llama-bpe",
        ("97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e", 7818140),
        ("be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0", 1943),
        ("118abf2034a197fc5c9dec5204dfdeee7004c7c70952ae577f66b99e212fab9b", 1739),
    ),
    family("llama-spm",
        ("16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69", 723869),
        ("be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0", 1943),
        ("ad6905c925c49c022974fe67e030382e8a4f56eb4489a0b9481dcedb1ec73b29", 2685),
    ),
    family("mpt",
        ("59dc382612866d1fc6c11ea531318d327598f3412d9c8f8600607cdf3030898f", 1771393),
        ("be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0", 1943),
        ("9d0982a7e7950b81bc2e325fb61bb7e295d2238934ab889737494de2dc4d906b", 1895),
    ),
    family("phi-3",
        ("967d7190d11c4842eab697079d98d56c2116e10eb617be355a2733bfc132e326", 726019),
        ("be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0", 1943),
        ("ad6905c925c49c022974fe67e030382e8a4f56eb4489a0b9481dcedb1ec73b29", 2685),
    ),
    family("qwen2",
        ("44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c", 5928681),
        ("be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0", 1943),
        ("de785bb305cc6fa9d43908ed5da337f853c0b79e971348fcfb9f0915a39c5363", 1765),
    ),
    family("qwen35",
        ("63ed952ff338996cf0bdf24a7b10015124273f75c6dc9bb427356aa3f67ec62c", 5928682),
        ("0fc6547e7876cd5b2ef64a9d319c6e39040eb53986660bd4227ed7ddef017a94", 2651),
        ("5efe225820325303857d0a087a8d59216f0d1e9a9e31133e7a5b44c3c4e1e9ca", 3570),
    ),
    family("refact",
        ("ac3ceda902fed91ccf74312b305d9b86c37e4f8e35fa9cc6ef3ce34fca7d4678", 1720710),
        ("be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0", 1943),
        ("c7e5c1c5dc1dfd3e0d56576bf699d2aca0b760b80779523ea9d323aad6cd1b88", 1918),
    ),
    family("starcoder",
        ("fedb892b4e1bd3c1f2fcdae356440b14fb458f4264d586e5c987ed93df4e174d", 1719346),
        ("be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0", 1943),
        ("3ef12183c57ad076f9defd8e5eb454f509f5f0865cad35646abb4c4b2d2c5764", 1920),
    ),
];

impl VocabFamily {
    /// `(file name, spec)` of the family's files: the `.gguf`, then `.inp` and `.out` if any.
    pub fn files(&self) -> Vec<(String, FileSpec)> {
        let g = format!("ggml-vocab-{}.gguf", self.name);
        let mut files = vec![(g.clone(), self.gguf)];
        if let Some((inp, out)) = self.pair {
            files.push((format!("{g}.inp"), inp));
            files.push((format!("{g}.out"), out));
        }
        files
    }
}

/// Paths of one family's cached files.
#[derive(Debug, Clone)]
pub struct VocabFiles {
    pub gguf: PathBuf,
    /// `(.inp, .out)`, when the family has a pair.
    pub pair: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
pub enum VocabFetchError {
    #[error("unknown tokenizer test family {name:?} (known: {known})")]
    UnknownFamily { name: String, known: String },
    #[error(transparent)]
    Cache(#[from] FetchError),
    #[error("python3 with pip is needed to fetch the tokenizer test vocabularies ({detail}); install it (apt-get install python3-pip) or set {SDIST_ENV} to a copy of {SDIST_FILE}")]
    PipMissing { detail: String },
    #[error("pip could not download {SDIST_REQUIREMENT} (no network access to PyPI?); retry with network access or set {SDIST_ENV} to a copy of {SDIST_FILE}: {detail}")]
    DownloadFailed { detail: String },
    #[error("{path} has {found} bytes, expected {expected}")]
    SizeMismatch { path: PathBuf, expected: u64, found: u64 },
    #[error("{path} has sha256 {found}, expected {expected}")]
    HashMismatch { path: PathBuf, expected: String, found: String },
    #[error("cannot extract the vocab files from {sdist}: {detail}")]
    Extract { sdist: PathBuf, detail: String },
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The directory the vocab files are cached in (`<cache dir>/llama-cpp-vocab-0.3.36`).
pub fn vocab_dir() -> Result<PathBuf, VocabFetchError> {
    Ok(cache_dir()?.join(CACHE_SUBDIR))
}

/// The family named `name` (e.g. `"llama-bpe"`).
pub fn family_by_name(name: &str) -> Result<&'static VocabFamily, VocabFetchError> {
    FAMILIES
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| VocabFetchError::UnknownFamily { name: name.to_owned(), known: FAMILIES.iter().map(|f| f.name).collect::<Vec<_>>().join(", ") })
}

/// Paths of family `name`'s files, fetching and verifying every family's files first if any of
/// this family's is missing or wrong.
pub fn ensure_vocab(name: &str) -> Result<VocabFiles, VocabFetchError> {
    let fam = family_by_name(name)?;
    ensure_families(&[fam])?;
    let dir = vocab_dir()?;
    let g = format!("ggml-vocab-{}.gguf", fam.name);
    Ok(VocabFiles { pair: fam.pair.map(|_| (dir.join(format!("{g}.inp")), dir.join(format!("{g}.out")))), gguf: dir.join(g) })
}

/// Fetches and verifies every family's files; returns the cache directory.
pub fn ensure_all() -> Result<PathBuf, VocabFetchError> {
    ensure_families(&FAMILIES.iter().collect::<Vec<_>>())?;
    vocab_dir()
}

/// Families verified in this process: hashing ~68 MB once per test binary is enough.
static VERIFIED: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

fn ensure_families(fams: &[&'static VocabFamily]) -> Result<(), VocabFetchError> {
    // Tests call this from many threads at once; one download per process is enough (and the
    // final renames are atomic, so concurrent processes never see a partial file).
    let mut verified = VERIFIED.lock().unwrap_or_else(|e| e.into_inner());
    let dir = vocab_dir()?;
    let todo: Vec<_> = fams.iter().filter(|f| !verified.contains(f.name)).collect();
    if todo.is_empty() {
        return Ok(());
    }
    let all_good = todo.iter().all(|f| f.files().iter().all(|(name, spec)| verify(&dir.join(name), spec).is_ok()));
    if !all_good {
        fetch_all(&dir)?;
        for f in &todo {
            for (name, spec) in f.files() {
                verify(&dir.join(name), &spec)?;
            }
        }
    }
    verified.extend(todo.iter().map(|f| f.name));
    Ok(())
}

/// Checks size, then sha256, of `path`.
pub fn verify(path: &Path, spec: &FileSpec) -> Result<(), VocabFetchError> {
    let meta = std::fs::metadata(path).map_err(|source| VocabFetchError::Io { path: path.to_path_buf(), source })?;
    if meta.len() != spec.size {
        return Err(VocabFetchError::SizeMismatch { path: path.to_path_buf(), expected: spec.size, found: meta.len() });
    }
    let found = sha256_file(path)?;
    if found != spec.sha256 {
        return Err(VocabFetchError::HashMismatch { path: path.to_path_buf(), expected: spec.sha256.to_owned(), found });
    }
    Ok(())
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_owned()
}

/// Downloads (or takes from `$WORKER_ORCD_VOCAB_SDIST`) the source package, verifies it, and
/// extracts every family's files into `dir`, each verified before an atomic rename into place.
fn fetch_all(dir: &Path) -> Result<(), VocabFetchError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VocabFetchError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let result = fetch_into(dir, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn fetch_into(dir: &Path, tmp: &Path) -> Result<(), VocabFetchError> {
    let sdist = match std::env::var_os(SDIST_ENV).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => download_sdist(tmp)?,
    };
    verify(&sdist, &FileSpec { sha256: SDIST_SHA256, size: SDIST_SIZE })?;

    let out_dir = tmp.join("extracted");
    std::fs::create_dir_all(&out_dir).map_err(|source| VocabFetchError::Io { path: out_dir.clone(), source })?;
    let names: Vec<String> = FAMILIES.iter().flat_map(|f| f.files().into_iter().map(|(n, _)| n)).collect();
    // Exact member names only: nothing the archive says about paths is trusted.
    let script = "import sys, tarfile, shutil, os\n\
                  sdist, dest, prefix = sys.argv[1:4]\n\
                  want = set(sys.argv[4:])\n\
                  with tarfile.open(sdist, 'r:gz') as t:\n\
                  \x20   for m in t:\n\
                  \x20       name = m.name[len(prefix):] if m.name.startswith(prefix) else None\n\
                  \x20       if name in want and m.isfile():\n\
                  \x20           with t.extractfile(m) as src, open(os.path.join(dest, name), 'wb') as dst:\n\
                  \x20               shutil.copyfileobj(src, dst, 1 << 20)\n\
                  \x20           want.discard(name)\n\
                  if want:\n\
                  \x20   sys.exit('not in the archive: ' + ' '.join(sorted(want)))\n";
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(&sdist)
        .arg(&out_dir)
        .arg(SDIST_MODELS_DIR)
        .args(&names)
        .output()
        .map_err(|e| VocabFetchError::PipMissing { detail: format!("{}: {e}", python()) })?;
    if !out.status.success() {
        return Err(VocabFetchError::Extract { sdist, detail: last_line(&out.stderr) });
    }
    for fam in FAMILIES {
        for (name, spec) in fam.files() {
            let src = out_dir.join(&name);
            verify(&src, &spec)?;
            let dst = dir.join(&name);
            std::fs::rename(&src, &dst).map_err(|source| VocabFetchError::Io { path: dst, source })?;
        }
    }
    Ok(())
}

fn download_sdist(tmp: &Path) -> Result<PathBuf, VocabFetchError> {
    let py = python();
    match Command::new(&py).args(["-m", "pip", "--version"]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => return Err(VocabFetchError::PipMissing { detail: last_line(&out.stderr) }),
        Err(e) => return Err(VocabFetchError::PipMissing { detail: format!("{py}: {e}") }),
    }
    eprintln!("worker-orcd: fetching {SDIST_REQUIREMENT} (source package) from PyPI for the tokenizer test vocabularies");
    let out = Command::new(&py)
        .args(["-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python"])
        .args(["--disable-pip-version-check", "-q", "-d"])
        .arg(tmp)
        .arg(SDIST_REQUIREMENT)
        .output()
        .map_err(|e| VocabFetchError::PipMissing { detail: format!("{py}: {e}") })?;
    if !out.status.success() {
        return Err(VocabFetchError::DownloadFailed { detail: last_line(&out.stderr) });
    }
    Ok(tmp.join(SDIST_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_sorted_unique_and_complete() {
        let names: Vec<_> = FAMILIES.iter().map(|f| f.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
        for required in ["gpt-2", "llama-bpe", "qwen2", "llama-spm", "phi-3"] {
            let f = family_by_name(required).unwrap();
            assert!(f.pair.is_some(), "{required}");
        }
        for f in FAMILIES {
            for (_, spec) in f.files() {
                assert_eq!(spec.sha256.len(), 64);
                assert!(spec.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
            }
        }
    }

    #[test]
    fn unknown_family_is_an_error_naming_the_known_ones() {
        let e = family_by_name("nope").unwrap_err().to_string();
        assert!(e.contains("\"nope\"") && e.contains("llama-spm"), "{e}");
    }

    #[test]
    fn a_wrong_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"abc").unwrap();
        let spec = FileSpec { sha256: SDIST_SHA256, size: 3 };
        let e = verify(&path, &spec).unwrap_err();
        assert!(matches!(e, VocabFetchError::HashMismatch { .. }), "{e}");
        assert!(e.to_string().contains(SDIST_SHA256));
        let spec = FileSpec { sha256: SDIST_SHA256, size: 4 };
        assert!(matches!(verify(&path, &spec), Err(VocabFetchError::SizeMismatch { .. })));
    }
}
