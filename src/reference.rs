//! Reader for the committed llama.cpp reference recordings (zstd-compressed safetensors of per-layer activations, logits and greedy runs); pure Rust, llama.cpp is not needed at run time.
//!
//! Format (see `recordings/llama.cpp/README.md`): zstd frame → standard
//! safetensors (8-byte little-endian header length, JSON header, raw
//! little-endian data). Only dtypes `F32` and `I32` occur. The header's
//! `__metadata__.case` is a JSON document described by [`ReferenceCase`].
//!
//! Everything read from a file is validated: a truncated, corrupted or
//! inconsistent file yields a [`ReferenceError`] that names the offending
//! field or tensor, never a panic.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Decompressed size limit (the committed files are a few MB each).
const MAX_DECOMPRESSED: u64 = 1 << 30;
/// Header size limit (the committed headers are well under 100 KB).
const MAX_HEADER: u64 = 64 << 20;
/// File name suffix of a recording.
pub const RECORDING_SUFFIX: &str = ".safetensors.zst";

/// Errors from reading a reference recording.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("{path}: I/O error: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: zstd decompression failed: {source}")]
    Zstd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: decompressed data exceeds {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path}: invalid safetensors: {field}: {msg}")]
    Format { path: PathBuf, field: String, msg: String },
    #[error("{path}: invalid `case` metadata: {field}: {msg}")]
    Metadata { path: PathBuf, field: String, msg: String },
    #[error("tensor `{0}` not found")]
    MissingTensor(String),
    #[error("tensor `{name}` has dtype {actual}, expected {expected}")]
    WrongDtype { name: String, expected: &'static str, actual: &'static str },
}

/// `plain` text prompt or `chat` (rendered with the model's chat template).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseKind {
    Plain,
    Chat,
}

/// One chat message of a `chat` case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// llama.cpp context settings the recording was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefSettings {
    pub n_ctx: u32,
    pub n_batch: u32,
    pub n_ubatch: u32,
    /// ggml type of the K cache (0 = F32).
    pub type_k: i32,
    /// ggml type of the V cache (0 = F32).
    pub type_v: i32,
    pub flash_attn: bool,
    pub n_threads: i32,
}

/// Which prompt positions a stored tensor holds along its token axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowSelection {
    /// Every prompt position `0..n_tokens`.
    All,
    /// Only the positions in [`ReferenceCase::row_pos`].
    RowPos,
}

/// One captured ggml node as stored in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedTensor {
    /// Tensor name in the safetensors file (`l_out-3`, `Qcur-0#2`, ...).
    pub stored_name: String,
    /// ggml node name in llama.cpp's graph (`Qcur-0`).
    pub ggml_name: String,
    /// 0-based index among the graph nodes carrying `ggml_name`, in graph order.
    pub occurrence: usize,
    /// ggml op (`ggml_op_desc`): `MUL_MAT`, `RESHAPE`, `ROPE`, `SOFT_MAX`, ...
    pub op: String,
    /// Stored (numpy-order) shape.
    pub shape: Vec<usize>,
    /// ggml `ne[0..4]` of the node as computed (all prompt positions).
    pub ne: Vec<i64>,
    /// ggml names of the node's sources, in `src[]` order.
    pub src: Vec<String>,
    pub rows: RowSelection,
    /// Axis of `shape` that indexes prompt positions.
    pub token_axis: usize,
}

/// The `case` metadata document of a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceCase {
    pub name: String,
    pub kind: CaseKind,
    /// Chat messages (chat cases only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
    /// Exact text that was tokenized (the rendered template for chat cases).
    pub prompt_text: String,
    /// Whether special tokens in `prompt_text` were parsed (chat: true).
    pub parse_special: bool,
    /// Whether llama.cpp tokenized with `add_special` (the model's BOS added: gemma3).
    #[serde(default)]
    pub add_special: bool,
    /// Prompt token ids (BOS only where `add_special`).
    pub prompt_ids: Vec<u32>,
    /// Greedily generated token ids (argmax, ties → lowest id).
    pub greedy_ids: Vec<u32>,
    /// Top-1 minus top-2 logit at each greedy step.
    pub greedy_top2_gap: Vec<f32>,
    pub llama_cpp_version: String,
    pub model_sha256: String,
    pub settings: RefSettings,
    /// Prompt positions stored in `embd`, `l_out-N`, `result_norm` (ascending).
    pub row_pos: Vec<usize>,
    /// Prompt positions stored in `logits.rows` (ascending).
    pub logits_row_pos: Vec<usize>,
    /// Layers with op-by-op captures (empty if none).
    pub op_layers: Vec<usize>,
    /// `all` or `row_pos` for op captures; `None` when there are none.
    #[serde(default)]
    pub op_positions: Option<RowSelection>,
    pub captured: Vec<CapturedTensor>,
    /// How llama.cpp was driven: one batch for the prompt (v1 files) or one token per decode.
    #[serde(default)]
    pub mode: RecordingMode,
    /// How the llama.cpp that made the recording was built (`llama_cpp_python`, `ggml_commit`,
    /// `build_flags`, `system_info`, `cpu`, ...); absent in v1 files.
    #[serde(default)]
    pub build: Option<BTreeMap<String, String>>,
    /// Columns of the `hashes` tensor, `<ggml name>#<occurrence>` in graph order (token mode).
    #[serde(default)]
    pub hash_columns: Vec<String>,
    /// The ggml op of each hash column (`MUL_MAT`, `ROPE`, `ADD`, ...).
    #[serde(default)]
    pub hash_ops: Vec<String>,
}

/// How a reference recording drove llama.cpp.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordingMode {
    /// The prompt in one `llama_decode` (n ≥ 2: llamafile's tinyBLAS for F32 and Q8_0 products).
    #[default]
    Batch,
    /// One token per `llama_decode`: every product through ggml's `vec_dot` kernels.
    Token,
}

impl ReferenceCase {
    /// Number of prompt tokens.
    pub fn n_tokens(&self) -> usize {
        self.prompt_ids.len()
    }

    /// Positions with hashes in a token recording: the prompt, then the greedy tokens that were
    /// decoded (all but the last, which no decode followed).
    pub fn n_hashed_positions(&self) -> usize {
        if self.hash_columns.is_empty() {
            0
        } else {
            self.n_tokens() + self.greedy_ids.len().saturating_sub(1)
        }
    }
}

/// Tensor payload.
#[derive(Debug, Clone, PartialEq)]
pub enum RefData {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

impl RefData {
    fn dtype(&self) -> &'static str {
        match self {
            RefData::F32(_) => "F32",
            RefData::I32(_) => "I32",
        }
    }
}

/// One stored tensor (row-major, numpy-order shape).
#[derive(Debug, Clone, PartialEq)]
pub struct RefTensor {
    pub shape: Vec<usize>,
    pub data: RefData,
}

/// A decoded reference recording: the case metadata plus all tensors.
#[derive(Debug, Clone)]
pub struct ReferenceRecording {
    pub case: ReferenceCase,
    tensors: BTreeMap<String, RefTensor>,
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

impl ReferenceRecording {
    /// Reads, decompresses, parses and validates one recording.
    pub fn open(path: &Path) -> Result<Self, ReferenceError> {
        let compressed = std::fs::read(path).map_err(|source| ReferenceError::Io { path: path.to_path_buf(), source })?;
        let raw = decompress(path, &compressed)?;
        Self::from_safetensors(path, &raw)
    }

    /// Parses an (uncompressed) safetensors image; `path` is only used in errors.
    pub fn from_safetensors(path: &Path, bytes: &[u8]) -> Result<Self, ReferenceError> {
        let fmt = |field: &str, msg: String| ReferenceError::Format { path: path.to_path_buf(), field: field.to_string(), msg };
        if bytes.len() < 8 {
            return Err(fmt("header length", format!("file has {} bytes, need at least 8", bytes.len())));
        }
        let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        let available = (bytes.len() - 8) as u64;
        if header_len > available || header_len > MAX_HEADER {
            return Err(fmt("header length", format!("{header_len} bytes, but only {available} bytes follow (limit {MAX_HEADER})")));
        }
        let header_end = 8 + header_len as usize;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..header_end]).map_err(|e| fmt("header", format!("not a JSON object: {e}")))?;
        let data = &bytes[header_end..];

        // __metadata__.case
        let metadata = header.get("__metadata__").ok_or_else(|| fmt("__metadata__", "missing".into()))?;
        let metadata: BTreeMap<String, String> =
            serde_json::from_value(metadata.clone()).map_err(|e| fmt("__metadata__", format!("not a string→string map: {e}")))?;
        let case_json = metadata.get("case").ok_or_else(|| fmt("__metadata__.case", "missing".into()))?;
        let case: ReferenceCase = serde_json::from_str(case_json).map_err(|e| ReferenceError::Metadata {
            path: path.to_path_buf(),
            field: format!("line {} column {}", e.line(), e.column()),
            msg: e.to_string(),
        })?;

        // tensors
        let mut tensors = BTreeMap::new();
        let mut spans: Vec<(u64, u64, &str)> = Vec::new();
        for (name, value) in &header {
            if name == "__metadata__" {
                continue;
            }
            let entry: RawEntry = serde_json::from_value(value.clone()).map_err(|e| fmt(&format!("tensor `{name}`"), format!("bad header entry: {e}")))?;
            let [begin, end] = entry.data_offsets;
            if begin > end || end > data.len() as u64 {
                return Err(fmt(&format!("tensor `{name}`.data_offsets"), format!("[{begin}, {end}] outside the {} data bytes", data.len())));
            }
            let numel = entry
                .shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| fmt(&format!("tensor `{name}`.shape"), "element count overflows".into()))?;
            let want_bytes = numel.checked_mul(4).ok_or_else(|| fmt(&format!("tensor `{name}`.shape"), "byte size overflows".into()))?;
            if (end - begin) as usize != want_bytes {
                return Err(fmt(
                    &format!("tensor `{name}`.data_offsets"),
                    format!("span of {} bytes, but shape {:?} of {} needs {want_bytes}", end - begin, entry.shape, entry.dtype),
                ));
            }
            let chunk = &data[begin as usize..end as usize];
            let data = match entry.dtype.as_str() {
                "F32" => RefData::F32(chunk.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
                "I32" => RefData::I32(chunk.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
                other => return Err(fmt(&format!("tensor `{name}`.dtype"), format!("unsupported dtype `{other}` (only F32 and I32)"))),
            };
            spans.push((begin, end, name));
            tensors.insert(name.clone(), RefTensor { shape: entry.shape, data });
        }
        // The data section must be exactly covered, without holes or overlaps.
        spans.sort();
        let mut cursor = 0u64;
        for (begin, end, name) in &spans {
            if *begin != cursor {
                return Err(fmt(&format!("tensor `{name}`.data_offsets"), format!("starts at {begin}, expected {cursor} (hole or overlap)")));
            }
            cursor = *end;
        }
        if cursor != data.len() as u64 {
            return Err(fmt("data", format!("{} trailing bytes not covered by any tensor", data.len() as u64 - cursor)));
        }

        let rec = ReferenceRecording { case, tensors };
        rec.validate(path)?;
        Ok(rec)
    }

    /// Cross-checks the `case` metadata against the stored tensors.
    fn validate(&self, path: &Path) -> Result<(), ReferenceError> {
        let meta = |field: &str, msg: String| ReferenceError::Metadata { path: path.to_path_buf(), field: field.to_string(), msg };
        let c = &self.case;
        let n = c.n_tokens();
        if n == 0 {
            return Err(meta("prompt_ids", "empty".into()));
        }
        for (field, pos) in [("row_pos", &c.row_pos), ("logits_row_pos", &c.logits_row_pos)] {
            if pos.is_empty() {
                return Err(meta(field, "empty".into()));
            }
            if pos.windows(2).any(|w| w[0] >= w[1]) {
                return Err(meta(field, "not strictly increasing".into()));
            }
            if pos[pos.len() - 1] >= n {
                return Err(meta(field, format!("position {} >= n_tokens {n}", pos[pos.len() - 1])));
            }
        }
        if c.greedy_ids.len() != c.greedy_top2_gap.len() {
            return Err(meta("greedy_top2_gap", format!("{} entries for {} greedy_ids", c.greedy_top2_gap.len(), c.greedy_ids.len())));
        }
        if c.hash_columns.len() != c.hash_ops.len() {
            return Err(meta("hash_ops", format!("{} ops for {} hash_columns", c.hash_ops.len(), c.hash_columns.len())));
        }
        if !c.hash_columns.is_empty() {
            let want = vec![c.n_hashed_positions(), c.hash_columns.len(), 2];
            match self.tensors.get("hashes") {
                Some(RefTensor { shape, data: RefData::I32(_) }) if *shape == want => {}
                Some(t) => return Err(meta("hashes", format!("shape {:?} ({}), expected {want:?} (I32)", t.shape, t.data.dtype()))),
                None => return Err(meta("hashes", "hash_columns given but no `hashes` tensor".into())),
            }
        }
        if c.op_layers.is_empty() != c.op_positions.is_none() {
            return Err(meta("op_positions", "must be set exactly when op_layers is non-empty".into()));
        }
        for (i, cap) in c.captured.iter().enumerate() {
            let field = format!("captured[{i}] (`{}`)", cap.stored_name);
            let t = self.tensors.get(&cap.stored_name).ok_or_else(|| meta(&field, "no such tensor in the file".into()))?;
            if t.shape != cap.shape {
                return Err(meta(&field, format!("shape {:?} but tensor has {:?}", cap.shape, t.shape)));
            }
            if !matches!(t.data, RefData::F32(_)) {
                return Err(meta(&field, format!("tensor dtype {}, expected F32", t.data.dtype())));
            }
            if cap.token_axis >= cap.shape.len() {
                return Err(meta(&field, format!("token_axis {} out of range", cap.token_axis)));
            }
            let want = match cap.rows {
                RowSelection::All => n,
                RowSelection::RowPos => c.row_pos.len(),
            };
            if cap.shape[cap.token_axis] != want {
                return Err(meta(&field, format!("token axis {} has length {}, expected {want} ({:?})", cap.token_axis, cap.shape[cap.token_axis], cap.rows)));
            }
        }
        Ok(())
    }

    /// The tensor stored under `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&RefTensor> {
        self.tensors.get(name)
    }

    /// Shape and data of an `F32` tensor.
    pub fn f32(&self, name: &str) -> Result<(&[usize], &[f32]), ReferenceError> {
        let t = self.tensors.get(name).ok_or_else(|| ReferenceError::MissingTensor(name.to_string()))?;
        match &t.data {
            RefData::F32(v) => Ok((&t.shape, v)),
            other => Err(ReferenceError::WrongDtype { name: name.to_string(), expected: "F32", actual: other.dtype() }),
        }
    }

    /// Shape and data of an `I32` tensor.
    pub fn i32(&self, name: &str) -> Result<(&[usize], &[i32]), ReferenceError> {
        let t = self.tensors.get(name).ok_or_else(|| ReferenceError::MissingTensor(name.to_string()))?;
        match &t.data {
            RefData::I32(v) => Ok((&t.shape, v)),
            other => Err(ReferenceError::WrongDtype { name: name.to_string(), expected: "I32", actual: other.dtype() }),
        }
    }

    /// xxh3-64 of the exact f32 bytes of hash column `col` at position `pos` (token recordings;
    /// see `recordings/llama.cpp/README.md`), `None` outside the stored range.
    pub fn row_hash(&self, pos: usize, col: usize) -> Option<u64> {
        let Some(RefTensor { shape, data: RefData::I32(v) }) = self.tensors.get("hashes") else { return None };
        if shape.len() != 3 || pos >= shape[0] || col >= shape[1] {
            return None;
        }
        let i = (pos * shape[1] + col) * 2;
        Some(v[i] as u32 as u64 | ((v[i + 1] as u32 as u64) << 32))
    }

    /// All stored tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Metadata of a captured ggml node, by stored name.
    pub fn captured(&self, stored_name: &str) -> Option<&CapturedTensor> {
        self.case.captured.iter().find(|c| c.stored_name == stored_name)
    }

    /// Index along the first axis of the 2-D tensor `name` that holds prompt
    /// position `position`, or `None` if that position is not stored.
    ///
    /// Position lists: `logits.rows` → `logits_row_pos`; `logits.top_ids`,
    /// `logits.top_vals` → every position; captured tensors → `row_pos` or
    /// every position, per their [`CapturedTensor::rows`] (only when their
    /// token axis is 0).
    pub fn row_index(&self, name: &str, position: usize) -> Option<usize> {
        let c = &self.case;
        let positions: Option<&[usize]> = match name {
            "logits.rows" => Some(&c.logits_row_pos),
            "logits.top_ids" | "logits.top_vals" => None,
            _ => {
                let cap = self.captured(name)?;
                if cap.token_axis != 0 {
                    return None;
                }
                match cap.rows {
                    RowSelection::All => None,
                    RowSelection::RowPos => Some(&c.row_pos),
                }
            }
        };
        match positions {
            Some(p) => p.binary_search(&position).ok(),
            None => (position < c.n_tokens()).then_some(position),
        }
    }

    /// The row of 2-D F32 tensor `name` for prompt position `position`
    /// (mapped through `row_pos` / `logits_row_pos`, see [`Self::row_index`]).
    pub fn row(&self, name: &str, position: usize) -> Option<&[f32]> {
        let t = self.tensors.get(name)?;
        let RefData::F32(v) = &t.data else {
            return None;
        };
        if t.shape.len() != 2 {
            return None;
        }
        let idx = self.row_index(name, position)?;
        let width = t.shape[1];
        if idx >= t.shape[0] {
            return None;
        }
        v.get(idx * width..(idx + 1) * width)
    }
}

fn decompress(path: &Path, compressed: &[u8]) -> Result<Vec<u8>, ReferenceError> {
    let zerr = |source| ReferenceError::Zstd { path: path.to_path_buf(), source };
    let decoder = zstd::stream::read::Decoder::new(compressed).map_err(zerr)?;
    let mut out = Vec::new();
    decoder.take(MAX_DECOMPRESSED + 1).read_to_end(&mut out).map_err(zerr)?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(ReferenceError::TooLarge { path: path.to_path_buf(), limit: MAX_DECOMPRESSED });
    }
    Ok(out)
}

/// `<crate root>/recordings/llama.cpp`: the batch recordings.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("recordings").join("llama.cpp")
}

/// `<crate root>/recordings/llama.cpp/token`: the token-by-token recordings.
pub fn token_corpus_dir() -> PathBuf {
    corpus_dir().join("token")
}

/// Opens every batch recording ([`corpus_dir`]), sorted by file name.
pub fn load_corpus() -> Result<Vec<(PathBuf, ReferenceRecording)>, ReferenceError> {
    load_dir(&corpus_dir())
}

/// Opens every token-by-token recording ([`token_corpus_dir`]), sorted by file name.
pub fn load_token_corpus() -> Result<Vec<(PathBuf, ReferenceRecording)>, ReferenceError> {
    load_dir(&token_corpus_dir())
}

/// The `*.safetensors.zst` files directly in `dir`, sorted by file name.
pub fn recordings_in(dir: &Path) -> Result<Vec<PathBuf>, ReferenceError> {
    let io = |source| ReferenceError::Io { path: dir.to_path_buf(), source };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(RECORDING_SUFFIX)) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Opens every recording directly in `dir`, sorted by file name.
pub fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, ReferenceRecording)>, ReferenceError> {
    recordings_in(dir)?.into_iter().map(|p| ReferenceRecording::open(&p).map(|r| (p, r))).collect()
}

/// The other named models' corpora in `dir` (`recordings/llama.cpp`): its subdirectories that
/// hold a `cases.json`, sorted. Each holds batch recordings and, in `token/`, token-by-token ones.
pub fn model_corpus_dirs(dir: &Path) -> Result<Vec<PathBuf>, ReferenceError> {
    let io = |source| ReferenceError::Io { path: dir.to_path_buf(), source };
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.join("cases.json").is_file() {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}
