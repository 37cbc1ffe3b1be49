//! Writes GGUF v2/v3 files in the layout ggml's `gguf_write_to_buf` produces:
//! header, metadata, tensor infos, padding to the alignment, then each tensor's
//! data padded to the alignment, offsets assigned in insertion order.
//!
//! Used by tests to build fixtures and by xtask to cut smaller models out of a
//! real one. It does not quantize or convert tensor data (bytes go in as given)
//! and knows nothing about model keys. Misuse (wrong data length, mixed-type
//! arrays, duplicate tensor names) panics: it is a programmer error, not input.

use std::io::{self, Write};
use std::path::Path;

use super::reader::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS, MAX_TENSOR_NAME};
use super::types::{GgmlType, MetadataValue, ValueType};

/// One tensor waiting to be written.
#[derive(Debug, Clone)]
struct PendingTensor {
    name: String,
    shape: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// Accumulates metadata and tensors, then serialises them.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    version: u32,
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// A GGUF v3 writer with the default 32-byte alignment.
    pub fn new() -> Self {
        Self::with_version(3)
    }

    /// Writes `version` into the header. The layout is always the v2/v3 one
    /// (64-bit counts); other numbers are allowed so tests can produce files a
    /// reader must reject.
    pub fn with_version(v: u32) -> Self {
        GgufWriter { version: v, metadata: Vec::new(), tensors: Vec::new() }
    }

    /// Adds a metadata entry, or replaces the value of an existing key in place
    /// (so a copied model's metadata can be overridden without reordering).
    ///
    /// A `general.alignment` value that is a U32 power of two sets the alignment
    /// used for the layout; any other value is written as given but ignored for
    /// layout (so tests can write files with invalid alignments).
    ///
    /// # Panics
    /// If an array mixes element types: the format stores one type per array.
    pub fn add_metadata(&mut self, key: &str, value: MetadataValue) {
        check_homogeneous(key, &value);
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    /// Removes a tensor added before (tests that replace one of a generated model's); true when
    /// there was one of that name.
    pub fn remove_tensor(&mut self, name: &str) -> bool {
        let n = self.tensors.len();
        self.tensors.retain(|t| t.name != name);
        self.tensors.len() != n
    }

    /// Adds a tensor; `shape` is in ggml order (`shape[0]` is the row length)
    /// and `data` its raw bytes in `ty`'s storage format.
    ///
    /// # Panics
    /// If the name is a duplicate or 64 bytes or longer (ggml's limit), the shape
    /// has no or more than 4 dimensions, the row length is not a multiple of the
    /// block size, or `data` is not exactly the size the shape and type imply.
    pub fn add_tensor(&mut self, name: &str, shape: &[u64], ty: GgmlType, data: Vec<u8>) {
        assert!(name.len() < MAX_TENSOR_NAME, "gguf writer: tensor name {name:?} is {} bytes, ggml allows at most {}", name.len(), MAX_TENSOR_NAME - 1);
        assert!(!self.tensors.iter().any(|t| t.name == name), "gguf writer: duplicate tensor name {name:?}");
        assert!(!shape.is_empty() && shape.len() <= MAX_DIMS as usize, "gguf writer: tensor {name:?} has {} dimensions, must be 1..=4", shape.len());
        assert!(
            shape[0].is_multiple_of(ty.block_size() as u64),
            "gguf writer: tensor {name:?} row length {} is not a multiple of the {ty} block size {}",
            shape[0],
            ty.block_size()
        );
        let expected = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).and_then(|n| (n / ty.block_size() as u64).checked_mul(ty.type_size() as u64));
        assert_eq!(expected, Some(data.len() as u64), "gguf writer: tensor {name:?} {shape:?} of type {ty} needs {expected:?} bytes, got {}", data.len());
        self.tensors.push(PendingTensor { name: name.to_string(), shape: shape.to_vec(), ty, data });
    }

    /// The alignment the layout will use.
    pub fn alignment(&self) -> u64 {
        match self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            Some((_, MetadataValue::U32(a))) if a.is_power_of_two() => u64::from(*a),
            _ => DEFAULT_ALIGNMENT,
        }
    }

    /// Serialises the whole file into memory.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Writes the file to `path`, creating or truncating it.
    pub fn write_to_path(&self, path: &Path) -> io::Result<()> {
        let mut w = io::BufWriter::new(std::fs::File::create(path)?);
        self.write_to(&mut w)?;
        w.flush()
    }

    /// Streams the file to any writer.
    pub fn write_to<W: Write>(&self, w: &mut W) -> io::Result<()> {
        let alignment = self.alignment();
        let mut w = Counting { inner: w, written: 0 };

        w.put(&GGUF_MAGIC)?;
        w.put(&self.version.to_le_bytes())?;
        w.put(&(self.tensors.len() as u64).to_le_bytes())?;
        w.put(&(self.metadata.len() as u64).to_le_bytes())?;

        for (key, value) in &self.metadata {
            put_string(&mut w, key)?;
            w.put(&value.value_type().id().to_le_bytes())?;
            put_payload(&mut w, value)?;
        }

        // Offsets are assigned like ggml: each tensor starts where the previous
        // one ended, rounded up to the alignment.
        let mut offset = 0u64;
        for t in &self.tensors {
            put_string(&mut w, &t.name)?;
            w.put(&(t.shape.len() as u32).to_le_bytes())?;
            for d in &t.shape {
                w.put(&d.to_le_bytes())?;
            }
            w.put(&t.ty.id().to_le_bytes())?;
            w.put(&offset.to_le_bytes())?;
            offset += padded(t.data.len() as u64, alignment);
        }

        // A file without tensors ends after the metadata (ggml's reader does not
        // require the padding then, and leaving it out means any truncation of
        // such a file is detectable).
        if !self.tensors.is_empty() {
            w.pad(alignment)?;
            for t in &self.tensors {
                w.put(&t.data)?;
                w.pad(alignment)?;
            }
        }
        Ok(())
    }
}

fn padded(n: u64, alignment: u64) -> u64 {
    n.div_ceil(alignment) * alignment
}

/// A writer that knows how many bytes it has written, for padding.
struct Counting<'w, W: Write> {
    inner: &'w mut W,
    written: u64,
}

impl<W: Write> Counting<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self, alignment: u64) -> io::Result<()> {
        const ZEROS: [u8; 64] = [0; 64];
        let mut n = padded(self.written, alignment) - self.written;
        while n > 0 {
            let k = n.min(ZEROS.len() as u64);
            self.put(&ZEROS[..k as usize])?;
            n -= k;
        }
        Ok(())
    }
}

fn put_string<W: Write>(w: &mut Counting<'_, W>, s: &str) -> io::Result<()> {
    w.put(&(s.len() as u64).to_le_bytes())?;
    w.put(s.as_bytes())
}

/// Writes a value without its leading type id (array elements carry none; an
/// array element that is itself an array starts with its element type).
fn put_payload<W: Write>(w: &mut Counting<'_, W>, v: &MetadataValue) -> io::Result<()> {
    match v {
        MetadataValue::U8(x) => w.put(&[*x]),
        MetadataValue::I8(x) => w.put(&x.to_le_bytes()),
        MetadataValue::U16(x) => w.put(&x.to_le_bytes()),
        MetadataValue::I16(x) => w.put(&x.to_le_bytes()),
        MetadataValue::U32(x) => w.put(&x.to_le_bytes()),
        MetadataValue::I32(x) => w.put(&x.to_le_bytes()),
        MetadataValue::U64(x) => w.put(&x.to_le_bytes()),
        MetadataValue::I64(x) => w.put(&x.to_le_bytes()),
        MetadataValue::F32(x) => w.put(&x.to_bits().to_le_bytes()),
        MetadataValue::F64(x) => w.put(&x.to_bits().to_le_bytes()),
        MetadataValue::Bool(x) => w.put(&[u8::from(*x)]),
        MetadataValue::String(s) => put_string(w, s),
        MetadataValue::Array(items) => {
            // An empty array has no element to take a type from; u8 is as good
            // as any (readers ignore the type of an empty array).
            let elem = items.first().map_or(ValueType::U8, MetadataValue::value_type);
            w.put(&elem.id().to_le_bytes())?;
            w.put(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|item| put_payload(w, item))
        }
    }
}

fn check_homogeneous(key: &str, v: &MetadataValue) {
    if let MetadataValue::Array(items) = v {
        if let Some(first) = items.first() {
            let ty = first.value_type();
            if let Some(bad) = items.iter().find(|i| i.value_type() != ty) {
                panic!(
                    "gguf writer: array for key {key:?} mixes {} and {} elements; \
                     gguf arrays hold a single element type",
                    ty.name(),
                    bad.type_name()
                );
            }
        }
        items.iter().for_each(|i| check_homogeneous(key, i));
    }
}
