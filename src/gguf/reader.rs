//! Parsing and validation of the GGUF container (header, metadata, tensor infos,
//! data-section layout) from an in-memory byte slice.
//!
//! Built to survive hostile input: every read is bounds-checked and reports the
//! byte offset and field on failure, every count is checked against the bytes
//! that remain before anything is allocated for it, array nesting is bounded, and
//! all layout arithmetic is checked. It never panics on any input.
//!
//! This module only knows the container: it does not interpret keys or tensor
//! names (that is the model loader's job) and does not touch tensor contents.

use std::collections::HashMap;

use super::error::GgufError;
use super::types::{GgmlType, MetadataValue, TensorInfo, ValueType};

/// "GGUF" as bytes.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of each tensor when no `general.alignment`
/// key is present (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Key that overrides the alignment; must be u32 and a power of two.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Deepest array-of-array nesting accepted (a flat array is depth 1). ggml itself
/// rejects nested arrays; we accept a few levels but bound recursion.
pub const MAX_ARRAY_DEPTH: usize = 8;
/// ggml's `GGUF_MAX_STRING_LENGTH` / `GGUF_MAX_ARRAY_ELEMENTS`: 1 GiB.
pub const MAX_STRING_LEN: u64 = 1 << 30;
pub const MAX_ARRAY_LEN: u64 = 1 << 30;
/// Most metadata values (kv pairs plus all array elements) one file may hold.
/// Real vocabularies need a few million at most (tokens, scores, token types,
/// merges); this bounds memory for hostile files that are large but cheap.
pub const MAX_METADATA_VALUES: u64 = 1 << 24;
/// ggml's `GGML_MAX_NAME`: tensor names must be shorter than this (the C struct
/// holds a NUL-terminated 64-byte buffer).
pub const MAX_TENSOR_NAME: usize = 64;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;

/// Smallest possible encoding of one metadata entry: key length (8) + value type
/// (4) + the smallest value (1). (Empty keys are rejected later, by name.)
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Smallest possible tensor info: name length (8) + n_dims (4) + one dim (8) +
/// type (4) + offset (8); the name may be empty.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// Everything parsed out of a file, independent of how its bytes are held.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub version: u32,
    pub metadata: Vec<(String, MetadataValue)>,
    /// File byte range of each kv pair (key, type and value), in file order.
    pub kv_spans: Vec<(u64, u64)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
    pub key_index: HashMap<String, usize>,
    pub tensor_index: HashMap<String, usize>,
}

/// Bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Metadata values (kv pairs plus array elements) admitted so far, against
    /// `MAX_METADATA_VALUES`.
    values: u64,
}

/// Builds an error field name only when an error actually happens, so the happy
/// path over ~100k metadata strings does not format anything.
type Field<'f> = &'f dyn Fn() -> String;

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0, values: 0 }
    }

    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn file_len(&self) -> u64 {
        self.buf.len() as u64
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, field: Field<'_>) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated { offset: self.offset(), field: field(), needed: n, file_len: self.file_len() });
        }
        // n <= remaining <= usize::MAX, so the cast is lossless.
        let out = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: Field<'_>) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, field: Field<'_>) -> Result<u8, GgufError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u16(&mut self, field: Field<'_>) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    fn u32(&mut self, field: Field<'_>) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: Field<'_>) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A GGUF string: u64 byte length, then that many bytes of UTF-8.
    fn string(&mut self, field: Field<'_>) -> Result<&'a str, GgufError> {
        let len = self.u64(&|| format!("{} length", field()))?;
        let start = self.offset();
        let bytes = self.take(len, field)?;
        if len > MAX_STRING_LEN {
            return Err(GgufError::LimitExceeded { offset: start, field: field(), what: "string length", len, max: MAX_STRING_LEN });
        }
        std::str::from_utf8(bytes).map_err(|e| GgufError::InvalidUtf8 { offset: start + e.valid_up_to() as u64, field: field() })
    }

    /// Rejects `count` items of at least `min_each` bytes that cannot possibly
    /// fit in the rest of the file, before the caller allocates for them.
    fn check_count(&self, count: u64, min_each: u64, count_offset: u64, field: Field<'_>) -> Result<(), GgufError> {
        let needed = u128::from(count) * u128::from(min_each);
        if needed > u128::from(self.remaining()) {
            return Err(GgufError::CountTooLarge { offset: count_offset, field: field(), count, min_bytes_each: min_each, remaining: self.remaining() });
        }
        Ok(())
    }
}

impl Cursor<'_> {
    /// Counts `n` more metadata values against the global budget. Each value
    /// costs far more in memory (a 32-byte enum, a heap string) than its
    /// smallest encoding, so the per-count byte check alone would still let a
    /// large hostile file amplify ~30x; the budget caps that.
    fn admit_values(&mut self, n: u64, offset: u64, field: Field<'_>) -> Result<(), GgufError> {
        match self.values.checked_add(n) {
            Some(total) if total <= MAX_METADATA_VALUES => {
                self.values = total;
                Ok(())
            }
            _ => Err(GgufError::LimitExceeded {
                offset,
                field: field(),
                what: "total metadata values",
                len: self.values.saturating_add(n),
                max: MAX_METADATA_VALUES,
            }),
        }
    }
}

/// Quotes and shortens a name from the file for use in error field names, so a
/// hostile megabyte-long key cannot turn into a megabyte-long message.
fn quoted(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return format!("{s:?}");
    }
    let mut cut = MAX;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{:?}...", &s[..cut])
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    // alignment is a validated power of two.
    x.checked_add(alignment - 1).map(|v| v & !(alignment - 1))
}

pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed, GgufError> {
    let mut cur = Cursor::new(bytes);

    let magic = cur.array::<4>(&|| "magic".to_string())?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }

    let version = cur.u32(&|| "version".to_string())?;
    check_version(version)?;

    let tensor_count_off = cur.offset();
    let tensor_count = cur.u64(&|| "tensor_count".to_string())?;
    let kv_count_off = cur.offset();
    let kv_count = cur.u64(&|| "kv_count".to_string())?;
    // Each count is checked right before the section it sizes is parsed (and
    // allocated): the metadata follows the header immediately, the tensor infos
    // follow the metadata.
    cur.check_count(kv_count, MIN_KV_BYTES, kv_count_off, &|| "kv_count".to_string())?;
    cur.admit_values(kv_count, kv_count_off, &|| "kv_count".to_string())?;

    let (metadata, key_index, value_offsets, kv_spans) = parse_metadata(&mut cur, kv_count)?;
    let alignment = alignment_from(&metadata, &key_index, &value_offsets)?;

    cur.check_count(tensor_count, MIN_TENSOR_INFO_BYTES, tensor_count_off, &|| "tensor_count".to_string())?;
    let (tensors, tensor_index, offset_fields) = parse_tensor_infos(&mut cur, tensor_count)?;

    // Like ggml, the data section is padded to the alignment only when there are
    // tensors; a metadata-only file may end right after the last kv pair.
    let data_offset = if tensors.is_empty() {
        cur.offset()
    } else {
        let d = align_up(cur.offset(), alignment).unwrap_or(u64::MAX);
        if d > cur.file_len() {
            return Err(GgufError::DataSectionOutOfBounds { data_offset: d, alignment, file_len: cur.file_len() });
        }
        d
    };
    check_tensor_layout(&tensors, &offset_fields, data_offset, alignment, cur.file_len())?;

    Ok(Parsed { version, metadata, kv_spans, tensors, alignment, data_offset, key_index, tensor_index })
}

fn check_version(version: u32) -> Result<(), GgufError> {
    let reason = match version {
        2 | 3 => return Ok(()),
        0 => "version 0 is invalid",
        1 => "gguf v1 is no longer supported (it used 32-bit counts); convert the file to v3",
        // A v3 file written big-endian reads as 0x03000000 here.
        v if v & 0xffff == 0 => "this looks like a big-endian file, only little-endian gguf is supported",
        _ => "only versions 2 and 3 are supported",
    };
    Err(GgufError::UnsupportedVersion { version, reason })
}

type MetadataList = Vec<(String, MetadataValue)>;
/// Parsed kv pairs, their name index, the file offset of each value, and the
/// file byte range of each whole pair.
type ParsedMetadata = (MetadataList, HashMap<String, usize>, Vec<u64>, Vec<(u64, u64)>);
/// Parsed tensor infos, their name index, and the file offset of each `offset` field.
type ParsedTensors = (Vec<TensorInfo>, HashMap<String, usize>, Vec<u64>);

/// Parses the kv pairs. Also returns, per pair, the file offset of its value
/// (after the type id) so later semantic checks can still name an offset.
fn parse_metadata(cur: &mut Cursor<'_>, kv_count: u64) -> Result<ParsedMetadata, GgufError> {
    // kv_count was checked against the remaining bytes, so this is bounded.
    let mut metadata = Vec::with_capacity(kv_count as usize);
    let mut index = HashMap::with_capacity(kv_count as usize);
    let mut value_offsets = Vec::with_capacity(kv_count as usize);
    let mut spans = Vec::with_capacity(kv_count as usize);
    for i in 0..kv_count {
        let key_off = cur.offset();
        let key = cur.string(&|| format!("kv[{i}].key"))?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey { offset: key_off, field: format!("kv[{i}].key") });
        }
        if index.contains_key(key) {
            return Err(GgufError::DuplicateKey { offset: key_off, field: format!("kv[{i}].key"), key: key.to_string() });
        }
        let what = || format!("kv[{i}] {}", quoted(key));
        let type_off = cur.offset();
        let type_id = cur.u32(&|| format!("{} value type", what()))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::InvalidValueType {
            offset: type_off,
            field: format!("{} value type", what()),
            id: type_id,
        })?;
        let mut path = Vec::new();
        value_offsets.push(cur.offset());
        let value = read_value(cur, ty, 0, &mut path, &what)?;
        spans.push((key_off, cur.offset()));
        index.insert(key.to_string(), metadata.len());
        metadata.push((key.to_string(), value));
    }
    Ok((metadata, index, value_offsets, spans))
}

/// Formats `kv[3] "key" value[2][7]` from the kv prefix and the array indices.
fn value_field(what: &dyn Fn() -> String, path: &[u64], suffix: &str) -> String {
    let mut s = format!("{} value", what());
    for i in path {
        s.push_str(&format!("[{i}]"));
    }
    s.push_str(suffix);
    s
}

/// Reads one value of type `ty`. `depth` is the number of arrays enclosing it;
/// `path` holds their element indices, for error messages.
fn read_value(cur: &mut Cursor<'_>, ty: ValueType, depth: usize, path: &mut Vec<u64>, what: &dyn Fn() -> String) -> Result<MetadataValue, GgufError> {
    let field = || value_field(what, path, "");
    Ok(match ty {
        ValueType::U8 => MetadataValue::U8(cur.u8(&field)?),
        ValueType::I8 => MetadataValue::I8(cur.u8(&field)? as i8),
        ValueType::U16 => MetadataValue::U16(cur.u16(&field)?),
        ValueType::I16 => MetadataValue::I16(cur.u16(&field)? as i16),
        ValueType::U32 => MetadataValue::U32(cur.u32(&field)?),
        ValueType::I32 => MetadataValue::I32(cur.u32(&field)? as i32),
        ValueType::U64 => MetadataValue::U64(cur.u64(&field)?),
        ValueType::I64 => MetadataValue::I64(cur.u64(&field)? as i64),
        ValueType::F32 => MetadataValue::F32(f32::from_bits(cur.u32(&field)?)),
        ValueType::F64 => MetadataValue::F64(f64::from_bits(cur.u64(&field)?)),
        ValueType::Bool => {
            let off = cur.offset();
            match cur.u8(&field)? {
                0 => MetadataValue::Bool(false),
                1 => MetadataValue::Bool(true),
                value => return Err(GgufError::InvalidBool { offset: off, field: field(), value }),
            }
        }
        ValueType::String => MetadataValue::String(cur.string(&field)?.to_string()),
        ValueType::Array => {
            let depth = depth + 1;
            let type_off = cur.offset();
            let elem_id = cur.u32(&|| value_field(what, path, " array element type"))?;
            let elem = ValueType::from_id(elem_id).ok_or_else(|| GgufError::InvalidValueType {
                offset: type_off,
                field: value_field(what, path, " array element type"),
                id: elem_id,
            })?;
            if elem == ValueType::Array && depth >= MAX_ARRAY_DEPTH {
                return Err(GgufError::NestingTooDeep { offset: type_off, field: value_field(what, path, " array element type"), max_depth: MAX_ARRAY_DEPTH });
            }
            let count_off = cur.offset();
            let count = cur.u64(&|| value_field(what, path, " array length"))?;
            cur.check_count(count, elem.min_encoded_size(), count_off, &|| value_field(what, path, " array length"))?;
            if count > MAX_ARRAY_LEN {
                return Err(GgufError::LimitExceeded {
                    offset: count_off,
                    field: value_field(what, path, " array length"),
                    what: "array length",
                    len: count,
                    max: MAX_ARRAY_LEN,
                });
            }
            cur.admit_values(count, count_off, &|| value_field(what, path, " array length"))?;
            // Bounded by check_count: count * min size <= remaining bytes.
            let mut items = Vec::with_capacity(count as usize);
            path.push(0);
            for j in 0..count {
                *path.last_mut().expect("pushed above") = j;
                items.push(read_value(cur, elem, depth, path, what)?);
            }
            path.pop();
            MetadataValue::Array(items)
        }
    })
}

fn alignment_from(metadata: &[(String, MetadataValue)], index: &HashMap<String, usize>, value_offsets: &[u64]) -> Result<u64, GgufError> {
    let Some(&i) = index.get(ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let offset = value_offsets[i];
    let field = || format!("kv[{i}] {:?} value", ALIGNMENT_KEY);
    match metadata[i].1 {
        MetadataValue::U32(a) if a != 0 && a.is_power_of_two() => Ok(u64::from(a)),
        MetadataValue::U32(a) => Err(GgufError::BadAlignment { offset, field: field(), alignment: u64::from(a) }),
        ref other => Err(GgufError::AlignmentWrongType { offset, field: field(), found: other.type_name() }),
    }
}

/// Parses the tensor infos. Also returns the file offset of each tensor's
/// `offset` field, for layout errors found later.
fn parse_tensor_infos(cur: &mut Cursor<'_>, tensor_count: u64) -> Result<ParsedTensors, GgufError> {
    // tensor_count was checked against the remaining bytes by the caller.
    let mut tensors = Vec::with_capacity(tensor_count as usize);
    let mut index = HashMap::with_capacity(tensor_count as usize);
    let mut offset_fields = Vec::with_capacity(tensor_count as usize);
    for i in 0..tensor_count {
        let name_off = cur.offset();
        let name = cur.string(&|| format!("tensor[{i}].name"))?;
        if name.len() >= MAX_TENSOR_NAME {
            return Err(GgufError::TensorNameTooLong {
                offset: name_off,
                field: format!("tensor[{i}].name"),
                len: name.len() as u64,
                max: MAX_TENSOR_NAME - 1,
            });
        }
        if index.contains_key(name) {
            return Err(GgufError::DuplicateTensor { offset: name_off, field: format!("tensor[{i}].name"), name: name.to_string() });
        }
        let what = || format!("tensor[{i}] {}", quoted(name));

        let dims_off = cur.offset();
        let n_dims = cur.u32(&|| format!("{} n_dims", what()))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::InvalidDims { offset: dims_off, tensor: name.to_string(), n_dims });
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for j in 0..n_dims as usize {
            let off = cur.offset();
            let d = cur.u64(&|| format!("{} dims[{j}]", what()))?;
            // ggml reads dims as int64 and rejects negatives.
            if d > i64::MAX as u64 {
                return Err(GgufError::DimTooLarge { offset: off, tensor: name.to_string(), dim: j, value: d });
            }
            shape.push(d);
        }
        let n_elements = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| GgufError::ElementCountOverflow { offset: dims_off, tensor: name.to_string(), shape: shape.clone() })?;

        let type_off = cur.offset();
        let type_id = cur.u32(&|| format!("{} type", what()))?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::InvalidTensorType { offset: type_off, tensor: name.to_string(), id: type_id })?;
        if !shape[0].is_multiple_of(ggml_type.block_size() as u64) {
            return Err(GgufError::RowNotBlockMultiple {
                offset: type_off,
                tensor: name.to_string(),
                ty: ggml_type,
                row_len: shape[0],
                block_size: ggml_type.block_size(),
            });
        }
        // Byte size must be representable too (type_size/block_size <= 8, so this
        // only trips for absurd shapes).
        (n_elements / ggml_type.block_size() as u64).checked_mul(ggml_type.type_size() as u64).ok_or_else(|| GgufError::ElementCountOverflow {
            offset: dims_off,
            tensor: name.to_string(),
            shape: shape.clone(),
        })?;

        offset_fields.push(cur.offset());
        let offset = cur.u64(&|| format!("{} offset", what()))?;
        index.insert(name.to_string(), tensors.len());
        tensors.push(TensorInfo { name: name.to_string(), shape, ggml_type, offset });
    }
    Ok((tensors, index, offset_fields))
}

/// Every tensor must be aligned, lie (with its padding) inside the file, and not
/// overlap another tensor. ggml is stricter still (tensors must be packed in
/// order); we accept any non-overlapping aligned layout.
fn check_tensor_layout(tensors: &[TensorInfo], offset_fields: &[u64], data_offset: u64, alignment: u64, file_len: u64) -> Result<(), GgufError> {
    for (t, &field_offset) in tensors.iter().zip(offset_fields) {
        if !t.offset.is_multiple_of(alignment) {
            return Err(GgufError::MisalignedTensor { field_offset, tensor: t.name.clone(), offset: t.offset, alignment });
        }
        // n_bytes cannot saturate here: parse_tensor_infos checked it.
        let padded_end = t.offset.checked_add(t.n_bytes()).and_then(|e| align_up(e, alignment)).and_then(|e| e.checked_add(data_offset));
        let start = data_offset.saturating_add(t.offset);
        match padded_end {
            Some(end) if end <= file_len => {}
            other => return Err(GgufError::TensorOutOfBounds { field_offset, tensor: t.name.clone(), start, end: other.unwrap_or(u64::MAX), file_len }),
        }
    }

    let mut order: Vec<(&TensorInfo, u64)> = tensors.iter().zip(offset_fields.iter().copied()).filter(|(t, _)| t.n_bytes() > 0).collect();
    order.sort_by_key(|(t, _)| t.offset);
    for pair in order.windows(2) {
        let ((a, _), (b, field_offset)) = (pair[0], pair[1]);
        let a_end = a.offset + a.n_bytes(); // in bounds, checked above
        if b.offset < a_end {
            return Err(GgufError::OverlappingTensors {
                field_offset,
                first: a.name.clone(),
                first_end: a_end,
                second: b.name.clone(),
                second_offset: b.offset,
            });
        }
    }
    Ok(())
}
