//! Plain data types of the GGUF format: ggml tensor types, metadata values and
//! tensor descriptors.
//!
//! Only the container's vocabulary lives here; parsing is in `reader`, encoding in
//! `writer`, and nothing here knows what any key or tensor means to a model.

use std::fmt;

/// A ggml tensor element type, with ggml's numeric ids (`enum ggml_type` in ggml.h).
///
/// Only the types this worker can plausibly meet are listed: the legacy 32-blocks,
/// the k-quants and IQ4_NL (the 32-block fallback of the IQ4 file types). The
/// other IQ*, the TQ* and the FP4 families are treated as unknown ids and
/// rejected when a file is opened.
// Variant names follow ggml's spelling (Q4_K, not Q4K) so they grep across codebases.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ4_NL,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
}

/// Elements per super-block of the k-quants (`QK_K` in ggml-common.h).
pub const QK_K: usize = 256;

impl GgmlType {
    /// Every supported type, in id order (handy for exhaustive tests).
    pub const ALL: [GgmlType; 21] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ4_NL,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::BF16,
    ];

    /// Maps ggml's numeric id to a type; `None` for removed or unsupported ids.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            // 4 and 5 were Q4_2 / Q4_3, removed from ggml long ago.
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2_K,
            11 => GgmlType::Q3_K,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            15 => GgmlType::Q8_K,
            // 16..=19 are IQ2_XXS, IQ2_XS, IQ3_XXS and IQ1_S (not supported).
            20 => GgmlType::IQ4_NL,
            24 => GgmlType::I8,
            25 => GgmlType::I16,
            26 => GgmlType::I32,
            27 => GgmlType::I64,
            28 => GgmlType::F64,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// ggml's numeric id, as stored in tensor infos.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::Q8_K => 15,
            GgmlType::IQ4_NL => 20,
            GgmlType::I8 => 24,
            GgmlType::I16 => 25,
            GgmlType::I32 => 26,
            GgmlType::I64 => 27,
            GgmlType::F64 => 28,
            GgmlType::BF16 => 30,
        }
    }

    /// The name ggml prints (`ggml_type_name`), e.g. `"q4_1"`, `"q6_K"`.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q4_1 => "q4_1",
            GgmlType::Q5_0 => "q5_0",
            GgmlType::Q5_1 => "q5_1",
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q8_1 => "q8_1",
            GgmlType::Q2_K => "q2_K",
            GgmlType::Q3_K => "q3_K",
            GgmlType::Q4_K => "q4_K",
            GgmlType::Q5_K => "q5_K",
            GgmlType::Q6_K => "q6_K",
            GgmlType::Q8_K => "q8_K",
            GgmlType::IQ4_NL => "iq4_nl",
            GgmlType::I8 => "i8",
            GgmlType::I16 => "i16",
            GgmlType::I32 => "i32",
            GgmlType::I64 => "i64",
            GgmlType::F64 => "f64",
            GgmlType::BF16 => "bf16",
        }
    }

    /// Elements per block (`ggml_blck_size`): 1 for plain types.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => 32,
            GgmlType::Q8_0 | GgmlType::Q8_1 | GgmlType::IQ4_NL => 32,
            GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K | GgmlType::Q8_K => QK_K,
            _ => 1,
        }
    }

    /// Bytes per block (`ggml_type_size`), matching the `block_*` structs in
    /// ggml-common.h, which are packed without padding.
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 => 2,
            GgmlType::Q4_0 => 2 + 16,
            GgmlType::Q4_1 => 2 + 2 + 16,
            GgmlType::Q5_0 => 2 + 4 + 16,
            GgmlType::Q5_1 => 2 + 2 + 4 + 16,
            GgmlType::Q8_0 => 2 + 32,
            GgmlType::Q8_1 => 2 + 2 + 32,
            GgmlType::Q2_K => 16 + 64 + 2 + 2,
            GgmlType::Q3_K => 32 + 64 + 12 + 2,
            GgmlType::Q4_K => 2 + 2 + 12 + 128,
            GgmlType::Q5_K => 2 + 2 + 12 + 32 + 128,
            GgmlType::Q6_K => 128 + 64 + 16 + 2,
            GgmlType::Q8_K => 4 + 256 + 2 * 16,
            GgmlType::IQ4_NL => 2 + 16,
            GgmlType::I8 => 1,
            GgmlType::I16 => 2,
            GgmlType::I32 => 4,
            GgmlType::I64 => 8,
            GgmlType::F64 => 8,
            GgmlType::BF16 => 2,
        }
    }

    /// Bytes taken by `n_elements` consecutive elements; `None` if `n_elements`
    /// is not a whole number of blocks or the size overflows `usize`.
    pub fn row_bytes(self, n_elements: usize) -> Option<usize> {
        if !n_elements.is_multiple_of(self.block_size()) {
            return None;
        }
        (n_elements / self.block_size()).checked_mul(self.type_size())
    }

    /// Whether this is a block-quantized type (as opposed to a plain scalar type).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// GGUF metadata value type ids (`enum gguf_type` in gguf.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<ValueType> {
        Some(match id {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// Smallest number of bytes one value of this type can occupy in a file.
    /// Used to reject element counts that cannot fit before allocating for them:
    /// a string is at least its u64 length, an array at least its u32 element
    /// type plus u64 count.
    pub fn min_encoded_size(self) -> u64 {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 8,
            ValueType::String => 8,
            ValueType::Array => 4 + 8,
        }
    }

    /// Lowercase name used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        }
    }
}

/// One metadata value. Arrays hold values of a single type (the format stores
/// one element type per array); arrays of arrays are allowed, each inner array
/// with its own element type.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetadataValue>),
}

impl MetadataValue {
    /// The format's value type of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            MetadataValue::U8(_) => ValueType::U8,
            MetadataValue::I8(_) => ValueType::I8,
            MetadataValue::U16(_) => ValueType::U16,
            MetadataValue::I16(_) => ValueType::I16,
            MetadataValue::U32(_) => ValueType::U32,
            MetadataValue::I32(_) => ValueType::I32,
            MetadataValue::U64(_) => ValueType::U64,
            MetadataValue::I64(_) => ValueType::I64,
            MetadataValue::F32(_) => ValueType::F32,
            MetadataValue::F64(_) => ValueType::F64,
            MetadataValue::Bool(_) => ValueType::Bool,
            MetadataValue::String(_) => ValueType::String,
            MetadataValue::Array(_) => ValueType::Array,
        }
    }

    /// `"u8"`, `"i32"`, `"f32"`, `"bool"`, `"string"`, `"array"`, ...
    pub fn type_name(&self) -> &'static str {
        self.value_type().name()
    }

    /// Any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetadataValue::U8(v) => Some(v.into()),
            MetadataValue::U16(v) => Some(v.into()),
            MetadataValue::U32(v) => Some(v.into()),
            MetadataValue::U64(v) => Some(v),
            MetadataValue::I8(v) => u64::try_from(v).ok(),
            MetadataValue::I16(v) => u64::try_from(v).ok(),
            MetadataValue::I32(v) => u64::try_from(v).ok(),
            MetadataValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type whose value fits in an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetadataValue::U8(v) => Some(v.into()),
            MetadataValue::U16(v) => Some(v.into()),
            MetadataValue::U32(v) => Some(v.into()),
            MetadataValue::U64(v) => i64::try_from(v).ok(),
            MetadataValue::I8(v) => Some(v.into()),
            MetadataValue::I16(v) => Some(v.into()),
            MetadataValue::I32(v) => Some(v.into()),
            MetadataValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// F32 as is, F64 rounded to the nearest f32.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            MetadataValue::F32(v) => Some(v),
            MetadataValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetadataValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            MetadataValue::Array(v) => Some(v),
            _ => None,
        }
    }

    /// Whether this is an integer of any width or signedness.
    pub fn is_integer(&self) -> bool {
        matches!(
            self,
            MetadataValue::U8(_)
                | MetadataValue::I8(_)
                | MetadataValue::U16(_)
                | MetadataValue::I16(_)
                | MetadataValue::U32(_)
                | MetadataValue::I32(_)
                | MetadataValue::U64(_)
                | MetadataValue::I64(_)
        )
    }

    /// Short human rendering for error messages (numbers in full, strings and
    /// arrays summarised so a hostile value cannot blow up a message).
    pub(crate) fn describe(&self) -> String {
        match self {
            MetadataValue::U8(v) => v.to_string(),
            MetadataValue::I8(v) => v.to_string(),
            MetadataValue::U16(v) => v.to_string(),
            MetadataValue::I16(v) => v.to_string(),
            MetadataValue::U32(v) => v.to_string(),
            MetadataValue::I32(v) => v.to_string(),
            MetadataValue::U64(v) => v.to_string(),
            MetadataValue::I64(v) => v.to_string(),
            MetadataValue::F32(v) => v.to_string(),
            MetadataValue::F64(v) => v.to_string(),
            MetadataValue::Bool(v) => v.to_string(),
            MetadataValue::String(s) => format!("string of {} bytes", s.len()),
            MetadataValue::Array(a) => format!("array of {} elements", a.len()),
        }
    }
}

/// `"array<u32>"` style name of an array, from its first element (an empty array
/// has lost its element type and is reported as `"array<empty>"`).
pub(crate) fn array_type_name(elems: &[MetadataValue]) -> &'static str {
    match elems.first().map(MetadataValue::value_type) {
        None => "array<empty>",
        Some(ValueType::U8) => "array<u8>",
        Some(ValueType::I8) => "array<i8>",
        Some(ValueType::U16) => "array<u16>",
        Some(ValueType::I16) => "array<i16>",
        Some(ValueType::U32) => "array<u32>",
        Some(ValueType::I32) => "array<i32>",
        Some(ValueType::F32) => "array<f32>",
        Some(ValueType::Bool) => "array<bool>",
        Some(ValueType::String) => "array<string>",
        Some(ValueType::Array) => "array<array>",
        Some(ValueType::U64) => "array<u64>",
        Some(ValueType::I64) => "array<i64>",
        Some(ValueType::F64) => "array<f64>",
    }
}

/// Where a tensor lives and how it is laid out. Produced by the reader after
/// validation; if you build one yourself, the helpers saturate rather than
/// overflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `shape[0]` (ne0) is the contiguous row length.
    pub shape: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Product of all dimensions (1 for an empty shape).
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Bytes of tensor data: whole blocks of `ggml_type`.
    pub fn n_bytes(&self) -> u64 {
        let blocks = self.n_elements() / self.ggml_type.block_size() as u64;
        blocks.saturating_mul(self.ggml_type.type_size() as u64)
    }

    /// Number of rows: product of every dimension after the first.
    pub fn n_rows(&self) -> u64 {
        self.shape.iter().skip(1).fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Elements per row (`ne0`).
    pub fn row_len(&self) -> u64 {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> u64 {
        let blocks = self.row_len() / self.ggml_type.block_size() as u64;
        blocks.saturating_mul(self.ggml_type.type_size() as u64)
    }
}

/// A weight matrix as stored in GGUF: `n_out` rows of `n_in` elements, row-major, in `ty`.
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    pub ty: GgmlType,
    pub data: &'a [u8],
    pub n_in: usize,
    pub n_out: usize,
}

impl<'a> QMatrix<'a> {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.n_in / self.ty.block_size() * self.ty.type_size()
    }

    pub fn row(&self, i: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[i * rb..(i + 1) * rb]
    }
}
