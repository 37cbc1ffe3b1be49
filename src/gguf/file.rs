//! `GgufFile`: an opened, fully validated GGUF file (memory-mapped or owned bytes)
//! with typed metadata accessors and tensor data access.
//!
//! All validation happens in `open`/`from_bytes`; afterwards tensor data slices
//! are known to be in bounds. Typed getters are lenient about integer widths but
//! strict about kinds (a string is never coerced to a number). This module knows
//! no key names beyond `general.alignment`; model semantics live elsewhere.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::Path;

use super::error::GgufError;
use super::quant;
use super::reader;
use super::types::{array_type_name, MetadataValue, TensorInfo};

/// Where the file's bytes live.
enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// An opened GGUF file. Metadata and tensor infos are parsed eagerly; tensor
/// data stays in the mapping until asked for.
///
/// The public fields are a snapshot of what was parsed. Lookups go through
/// private name indexes built at open time (and fall back to a scan if the
/// public vectors were modified).
pub struct GgufFile {
    pub version: u32,
    pub metadata: Vec<(String, MetadataValue)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    data_offset: u64,
    kv_spans: Vec<(u64, u64)>,
    bytes: Backing,
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("file_len", &self.bytes.bytes().len())
            .field("metadata_len", &self.metadata.len())
            .field("tensors_len", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Memory-maps and validates the file at `path`.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            // Mapping an empty file fails on some platforms; an empty buffer
            // gives the same "truncated magic" error everywhere.
            return Self::from_backing(Backing::Owned(Vec::new()));
        }
        // SAFETY: the mapping is read-only and private to this process. As with
        // every mmap-based loader (llama.cpp included), another process
        // truncating or rewriting the file while it is mapped is outside what we
        // can defend against; model files are treated as immutable.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::from_backing(Backing::Mmap(map))
    }

    /// Validates a GGUF image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::from_backing(Backing::Owned(bytes))
    }

    fn from_backing(bytes: Backing) -> Result<GgufFile, GgufError> {
        let p = reader::parse(bytes.bytes())?;
        Ok(GgufFile {
            version: p.version,
            metadata: p.metadata,
            tensors: p.tensors,
            alignment: p.alignment,
            data_offset: p.data_offset,
            kv_spans: p.kv_spans,
            bytes,
            key_index: p.key_index,
            tensor_index: p.tensor_index,
        })
    }

    /// Absolute file offset where the data section (tensor offset 0) starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The whole file image.
    pub fn file_bytes(&self) -> &[u8] {
        self.bytes.bytes()
    }

    /// Whether the bytes are memory-mapped (as opposed to owned in memory).
    pub fn is_mmapped(&self) -> bool {
        matches!(self.bytes, Backing::Mmap(_))
    }

    // -- metadata ----------------------------------------------------------

    /// The encoded bytes (key, value type, value) of the `index`-th metadata
    /// entry as it was parsed from the file, for tools that copy metadata
    /// verbatim (an empty array keeps its element type this way, which
    /// [`MetadataValue`] cannot hold). Indexes follow the file's order, which is
    /// that of the public `metadata` vector as opened.
    pub fn metadata_entry_bytes(&self, index: usize) -> Option<&[u8]> {
        let &(start, end) = self.kv_spans.get(index)?;
        // Spans were produced by the parser over these very bytes.
        self.bytes.bytes().get(start as usize..end as usize)
    }

    /// The raw value of `key`, if present.
    pub fn metadata(&self, key: &str) -> Option<&MetadataValue> {
        let hit = self.key_index.get(key).and_then(|&i| self.metadata.get(i)).filter(|(k, _)| k == key);
        match hit {
            Some((_, v)) => Some(v),
            None => self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v),
        }
    }

    fn require(&self, key: &str) -> Result<&MetadataValue, GgufError> {
        self.metadata(key).ok_or_else(|| GgufError::MissingKey { key: key.to_string() })
    }

    fn wrong_type(key: &str, expected: &'static str, v: &MetadataValue) -> GgufError {
        let found = match v {
            MetadataValue::Array(items) => array_type_name(items),
            other => other.type_name(),
        };
        GgufError::WrongType { key: key.to_string(), expected, found }
    }

    fn out_of_range(key: &str, v: &MetadataValue, target: &'static str) -> GgufError {
        GgufError::OutOfRange { key: key.to_string(), value: v.describe(), target }
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| Self::wrong_type(key, "string", v))
    }

    /// Any integer type whose value fits in a u32.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        let v = self.require(key)?;
        if !v.is_integer() {
            return Err(Self::wrong_type(key, "u32", v));
        }
        v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| Self::out_of_range(key, v, "u32"))
    }

    /// Any integer type holding a non-negative value.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        if !v.is_integer() {
            return Err(Self::wrong_type(key, "u64", v));
        }
        v.as_u64().ok_or_else(|| Self::out_of_range(key, v, "u64"))
    }

    /// Any integer type whose value fits in an i64.
    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        let v = self.require(key)?;
        if !v.is_integer() {
            return Err(Self::wrong_type(key, "i64", v));
        }
        v.as_i64().ok_or_else(|| Self::out_of_range(key, v, "i64"))
    }

    /// F32 as is, F64 rounded to nearest.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.require(key)?;
        v.as_f32().ok_or_else(|| Self::wrong_type(key, "f32", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| Self::wrong_type(key, "bool", v))
    }

    /// The elements of an array value, whatever their type.
    pub fn get_array(&self, key: &str) -> Result<&[MetadataValue], GgufError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| Self::wrong_type(key, "array", v))
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let v = self.require(key)?;
        let items = v.as_array().ok_or_else(|| Self::wrong_type(key, "array<string>", v))?;
        items.iter().map(|e| e.as_str().ok_or_else(|| Self::wrong_type(key, "array<string>", v))).collect()
    }

    /// Array of any integer type whose values all fit in an i32.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        let v = self.require(key)?;
        let items = v.as_array().ok_or_else(|| Self::wrong_type(key, "array<i32>", v))?;
        items
            .iter()
            .map(|e| {
                if !e.is_integer() {
                    return Err(Self::wrong_type(key, "array<i32>", v));
                }
                e.as_i64().and_then(|n| i32::try_from(n).ok()).ok_or_else(|| Self::out_of_range(key, e, "i32"))
            })
            .collect()
    }

    /// Array of F32 (or F64, rounded to nearest f32).
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        let v = self.require(key)?;
        let items = v.as_array().ok_or_else(|| Self::wrong_type(key, "array<f32>", v))?;
        items.iter().map(|e| e.as_f32().ok_or_else(|| Self::wrong_type(key, "array<f32>", v))).collect()
    }

    // -- tensors -----------------------------------------------------------

    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        let hit = self.tensor_index.get(name).and_then(|&i| self.tensors.get(i)).filter(|t| t.name == name);
        hit.or_else(|| self.tensors.iter().find(|t| t.name == name)).ok_or_else(|| GgufError::TensorNotFound { name: name.to_string() })
    }

    /// The raw bytes of a tensor (exactly `info.n_bytes()` long).
    ///
    /// Bounds were validated when the file was opened, so for any `TensorInfo`
    /// obtained from this file this cannot fail.
    ///
    /// # Panics
    /// If `info` was not obtained from this file and points outside it.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = self.data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(info.n_bytes()));
        let range = start.zip(end).and_then(|(s, e)| Some(usize::try_from(s).ok()?..usize::try_from(e).ok()?));
        match range.and_then(|r| self.bytes.bytes().get(r)) {
            Some(data) => data,
            None => panic!(
                "tensor_data: tensor {:?} (offset {}, {} bytes) is not inside this file; \
                 was its TensorInfo taken from another GgufFile?",
                info.name,
                info.offset,
                info.n_bytes()
            ),
        }
    }

    /// The raw bytes of the named tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], GgufError> {
        Ok(self.tensor_data(self.tensor_info(name)?))
    }

    /// The named tensor as f32 values, in storage order (row-major over ggml's
    /// shape, `shape[0]` fastest), bit-identical to ggml's `to_float`.
    pub fn dequantize_tensor(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor_info(name)?;
        if !quant::can_dequantize(info.ggml_type) {
            return Err(GgufError::UnsupportedDequant { ty: info.ggml_type });
        }
        // The element count is bounded by the validated byte size, so this
        // allocation is proportional to the file, not to a hostile field.
        let n = usize::try_from(info.n_elements()).map_err(|_| GgufError::ElementCountOverflow {
            offset: 0,
            tensor: info.name.clone(),
            shape: info.shape.clone(),
        })?;
        quant::dequantize_to_vec(info.ggml_type, self.tensor_data(info), n)
    }
}
