//! Hostile-file unit tests: truncation at every byte, bit flips, random
//! mutations, and hand-crafted malformed files, each expected to produce a
//! specific error (naming offset and field) and never a panic or a huge
//! allocation.

use super::roundtrip::every_metadata_type;
use crate::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetadataValue as V, MAX_ARRAY_DEPTH};

/// Little-endian byte builder for files the writer refuses to produce.
#[derive(Default, Clone)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        Raw::default().bytes(b"GGUF").u32(version).u64(n_tensors).u64(n_kv)
    }
    fn bytes(mut self, b: &[u8]) -> Raw {
        self.0.extend_from_slice(b);
        self
    }
    fn u8(self, v: u8) -> Raw {
        self.bytes(&[v])
    }
    fn u32(self, v: u32) -> Raw {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> Raw {
        self.bytes(&v.to_le_bytes())
    }
    fn str(self, s: &[u8]) -> Raw {
        self.u64(s.len() as u64).bytes(s)
    }
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Raw {
        let mut r = self.str(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    fn pad(mut self, a: usize) -> Raw {
        while !self.0.len().is_multiple_of(a) {
            self.0.push(0);
        }
        self
    }
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn open(self) -> Result<GgufFile, GgufError> {
        GgufFile::from_bytes(self.0)
    }
}

/// A valid file exercising every metadata type and several tensor types.
fn rich_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in every_metadata_type() {
        w.add_metadata(k, v);
    }
    w.add_tensor("f32", &[3], GgmlType::F32, vec![0; 12]);
    w.add_tensor("q4_1", &[32, 2], GgmlType::Q4_1, vec![0; 40]);
    w.add_tensor("q8_0", &[32], GgmlType::Q8_0, vec![1; 34]);
    w.to_bytes()
}

#[test]
fn truncation_message_names_field_offset_and_file_size() {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend([0, 0]);
    let err = GgufFile::from_bytes(b).unwrap_err();
    assert_eq!(err.to_string(), "truncated gguf: need 8 bytes for tensor_count at offset 8, file has 10");
    assert!(matches!(
        err,
        GgufError::Truncated { offset: 8, needed: 8, file_len: 10, ref field } if field == "tensor_count"
    ));
}

#[test]
fn truncation_at_every_byte_is_an_error() {
    let full = rich_file();
    assert!(GgufFile::from_bytes(full.clone()).is_ok());
    for len in 0..full.len() {
        let err = match GgufFile::from_bytes(full[..len].to_vec()) {
            Ok(_) => panic!("truncation to {len} of {} bytes was accepted", full.len()),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(msg.contains("offset"), "no offset in {msg:?} (len {len})");
        assert!(!msg.ends_with('.'), "{msg:?}");
        assert!(msg.starts_with(|c: char| c.is_lowercase()), "{msg:?}");
    }
}

#[test]
fn truncation_names_the_field_being_read() {
    // Layout: header 0..24; kv key length 24..32, key 32..44, type 44..48,
    // string length 48..56, "abc" 56..59; tensor name length 59..67, "t" 67,
    // n_dims 68..72, dim 72..80, type 80..84, offset 84..92; padding to 96;
    // data 96..112; padding to 128.
    let mut w = GgufWriter::new();
    w.add_metadata("general.name", V::String("abc".into()));
    w.add_tensor("t", &[4], GgmlType::F32, vec![0; 16]);
    let full = w.to_bytes();
    assert_eq!(full.len(), 128);
    let cut = |n: usize| GgufFile::from_bytes(full[..n].to_vec()).unwrap_err().to_string();
    assert_eq!(cut(2), "truncated gguf: need 4 bytes for magic at offset 0, file has 2");
    assert_eq!(cut(40), "truncated gguf: need 12 bytes for kv[0].key at offset 32, file has 40");
    assert_eq!(cut(58), "truncated gguf: need 3 bytes for kv[0] \"general.name\" value at offset 56, file has 58");
    assert_eq!(cut(91), "truncated gguf: need 8 bytes for tensor[0] \"t\" offset at offset 84, file has 91");
    // Too little left for even one minimal tensor info: reported on the count.
    assert_eq!(
        cut(75),
        "tensor_count 1 at offset 8 is impossible: each needs at least 32 bytes but only 16 bytes \
         remain (truncated or corrupt file)"
    );
    assert!(cut(95).starts_with("data section starts at offset 96"), "{}", cut(95));
    assert!(cut(127).contains("past the end of the file (127 bytes)"), "{}", cut(127));
}

#[test]
fn single_bit_flips_never_panic() {
    let full = rich_file();
    let mut ok = 0;
    for i in 0..full.len() {
        for bit in 0..8 {
            let mut b = full.clone();
            b[i] ^= 1 << bit;
            if GgufFile::from_bytes(b).is_ok() {
                ok += 1;
            }
        }
    }
    // Flips in values and tensor data are legitimately fine; flips in structure
    // are not. Both must happen.
    assert!(ok > 0 && ok < full.len() * 8, "{ok}");
}

#[test]
fn random_mutations_never_panic() {
    let full = rich_file();
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut b = full.clone();
        for _ in 0..1 + next() % 4 {
            let pos = (next() % b.len() as u64) as usize;
            match next() % 4 {
                0 => b[pos] = next() as u8,
                1 => {
                    // Drop a huge little-endian number somewhere (counts, lengths).
                    let v = [u64::MAX, 1 << 62, 1 << 40, u32::MAX as u64, next()][(next() % 5) as usize];
                    let end = (pos + 8).min(b.len());
                    b[pos..end].copy_from_slice(&v.to_le_bytes()[..end - pos]);
                }
                2 => b.truncate(pos),
                _ => b.insert(pos, next() as u8),
            }
            if b.is_empty() {
                break;
            }
        }
        if let Ok(f) = GgufFile::from_bytes(b) {
            // Whatever was accepted must be fully usable without panics.
            for t in f.tensors.clone() {
                assert_eq!(f.tensor_data(&t).len() as u64, t.n_bytes());
                let _ = f.dequantize_tensor(&t.name);
            }
        }
    }
}

#[test]
fn bad_magic_and_versions() {
    let err = Raw::default().bytes(b"GGML").u32(3).u64(0).u64(0).open().unwrap_err();
    assert!(matches!(err, GgufError::BadMagic { found } if &found == b"GGML"));
    assert!(err.to_string().contains("offset 0"), "{err}");

    for (v, needle) in [(0u32, "invalid"), (1, "v1"), (4, "2 and 3"), (0x0300_0000, "big-endian")] {
        let err = Raw::header(v, 0, 0).open().unwrap_err();
        assert!(matches!(err, GgufError::UnsupportedVersion { version, .. } if version == v));
        assert!(err.to_string().contains(needle), "{err}");
        assert!(err.to_string().contains("offset 4"), "{err}");
    }
    assert!(Raw::header(2, 0, 0).open().is_ok());
    assert!(Raw::header(3, 0, 0).open().is_ok());
}

#[test]
fn huge_counts_are_rejected_before_allocating() {
    let err = Raw::header(3, u64::MAX, 0).open().unwrap_err();
    assert!(matches!(err, GgufError::CountTooLarge { offset: 8, count: u64::MAX, ref field, .. } if field == "tensor_count"));
    let err = Raw::header(3, 0, 1 << 62).open().unwrap_err();
    assert!(matches!(err, GgufError::CountTooLarge { offset: 16, ref field, .. } if field == "kv_count"));
    // kv_count = 2 but only room for one entry.
    let err = Raw::header(3, 0, 2).str(b"k").u32(0).u8(1).open().unwrap_err();
    assert!(matches!(err, GgufError::CountTooLarge { offset: 16, .. }), "{err}");

    // An array claiming 2^40 u8 elements in a 60-byte file.
    let err = Raw::header(3, 0, 1).str(b"k").u32(9).u32(0).u64(1 << 40).u8(1).open().unwrap_err();
    assert!(matches!(err, GgufError::CountTooLarge { offset: 41, count, .. } if count == 1 << 40), "{err}");
    assert!(err.to_string().contains("kv[0] \"k\" value array length"), "{err}");
    // Strings need at least 8 bytes each: 4 strings cannot fit in 31 bytes.
    let err = Raw::header(3, 0, 1).str(b"k").u32(9).u32(8).u64(4).bytes(&[0; 31]).open().unwrap_err();
    assert!(matches!(err, GgufError::CountTooLarge { min_bytes_each: 8, .. }), "{err}");

    // A key length of u64::MAX.
    let err = Raw::header(3, 0, 1).u64(u64::MAX).bytes(&[0; 8]).open().unwrap_err();
    assert!(matches!(err, GgufError::Truncated { offset: 32, needed: u64::MAX, .. }), "{err}");
    // A string value length pointing past the end.
    let err = Raw::header(3, 0, 1).str(b"k").u32(8).u64(100).bytes(b"abc").open().unwrap_err();
    assert!(matches!(err, GgufError::Truncated { offset: 45, needed: 100, .. }), "{err}");
}

#[test]
fn invalid_value_types() {
    let err = Raw::header(3, 0, 1).str(b"k").u32(13).u8(0).open().unwrap_err();
    assert!(matches!(err, GgufError::InvalidValueType { offset: 33, id: 13, .. }), "{err}");
    assert_eq!(err.to_string(), "invalid metadata value type 13 for kv[0] \"k\" value type at offset 33");
    let err = Raw::header(3, 0, 1).str(b"k").u32(9).u32(u32::MAX).u64(0).open().unwrap_err();
    assert!(matches!(err, GgufError::InvalidValueType { offset: 37, id: u32::MAX, .. }), "{err}");
}

fn nested(depth: usize) -> Raw {
    let mut r = Raw::header(3, 0, 1).str(b"n").u32(9);
    for _ in 1..depth {
        r = r.u32(9).u64(1);
    }
    r.u32(0).u64(1).u8(5)
}

#[test]
fn array_nesting_is_bounded() {
    let f = nested(MAX_ARRAY_DEPTH).open().unwrap();
    let mut v = f.metadata("n").unwrap();
    for _ in 0..MAX_ARRAY_DEPTH {
        v = &v.as_array().unwrap()[0];
    }
    assert_eq!(v, &V::U8(5));
    let err = nested(MAX_ARRAY_DEPTH + 1).open().unwrap_err();
    assert!(matches!(err, GgufError::NestingTooDeep { .. }), "{err}");
    // Very deep nesting must not recurse without bound (no stack overflow).
    let err = nested(100_000).open().unwrap_err();
    assert!(matches!(err, GgufError::NestingTooDeep { .. }), "{err}");
}

#[test]
fn invalid_utf8_names_the_offset_of_the_bad_byte() {
    let err = Raw::header(3, 0, 1).str(&[0xff]).u32(0).u8(0).open().unwrap_err();
    assert!(matches!(err, GgufError::InvalidUtf8 { offset: 32, ref field } if field == "kv[0].key"), "{err}");
    let err = Raw::header(3, 0, 1).str(b"k").u32(8).str(b"ab\xc3").open().unwrap_err();
    assert!(matches!(err, GgufError::InvalidUtf8 { offset: 47, .. }), "{err}");
    let err = Raw::header(3, 1, 0).str(b"t\xff").u32(1).u64(1).u32(0).u64(0).open().unwrap_err();
    assert!(matches!(err, GgufError::InvalidUtf8 { offset: 33, ref field } if field == "tensor[0].name"), "{err}");
}

#[test]
fn bools_must_be_zero_or_one() {
    let err = Raw::header(3, 0, 1).str(b"b").u32(7).u8(2).open().unwrap_err();
    assert!(matches!(err, GgufError::InvalidBool { offset: 37, value: 2, .. }), "{err}");
    let err = Raw::header(3, 0, 1).str(b"b").u32(9).u32(7).u64(2).u8(1).u8(0xff).open().unwrap_err();
    assert!(matches!(err, GgufError::InvalidBool { offset: 50, value: 0xff, ref field } if field.ends_with("value[1]")), "{err}");
}

#[test]
fn empty_and_duplicate_keys() {
    let err = Raw::header(3, 0, 1).str(b"").u32(0).u8(0).open().unwrap_err();
    assert!(matches!(err, GgufError::EmptyKey { offset: 24, .. }), "{err}");
    let err = Raw::header(3, 0, 2).str(b"k").u32(0).u8(0).str(b"k").u32(0).u8(1).open().unwrap_err();
    assert!(matches!(err, GgufError::DuplicateKey { offset: 38, ref key, .. } if key == "k"), "{err}");
}

#[test]
fn alignment_must_be_a_u32_power_of_two() {
    let with = |v: V| {
        let mut w = GgufWriter::new();
        w.add_metadata("general.alignment", v);
        w.add_tensor("t", &[1], GgmlType::F32, vec![0; 4]);
        GgufFile::from_bytes(w.to_bytes())
    };
    assert!(matches!(with(V::U64(32)), Err(GgufError::AlignmentWrongType { found: "u64", .. })));
    assert!(matches!(with(V::U32(0)), Err(GgufError::BadAlignment { alignment: 0, .. })));
    let err = with(V::U32(48)).unwrap_err();
    assert!(matches!(err, GgufError::BadAlignment { alignment: 48, offset: 53, .. }), "{err}");
    assert_eq!(with(V::U32(1)).unwrap().alignment, 1);
    // A huge (valid) alignment pushes the data section past the end of the file.
    let err = Raw::header(3, 1, 1).str(b"general.alignment").u32(4).u32(1 << 31).tensor("t", &[1], 0, 0).pad(32).bytes(&[0; 32]).open().unwrap_err();
    assert!(matches!(err, GgufError::DataSectionOutOfBounds { data_offset, .. } if data_offset == 1 << 31), "{err}");
}

fn one_tensor(dims: &[u64], ty: u32, offset: u64, data: usize) -> Raw {
    Raw::header(3, 1, 0).tensor("t", dims, ty, offset).pad(32).bytes(&vec![0; data])
}

#[test]
fn tensor_shape_and_type_validation() {
    assert!(one_tensor(&[4], 0, 0, 32).open().is_ok());
    for n in [0u32, 5] {
        let err = Raw::header(3, 1, 0).str(b"t").u32(n).bytes(&[0; 64]).open().unwrap_err();
        assert!(matches!(err, GgufError::InvalidDims { offset: 33, n_dims, .. } if n_dims == n), "{err}");
    }
    let err = one_tensor(&[1 << 63], 0, 0, 0).open().unwrap_err();
    assert!(matches!(err, GgufError::DimTooLarge { offset: 37, dim: 0, .. }), "{err}");
    let err = one_tensor(&[1 << 32, 1 << 32], 0, 0, 0).open().unwrap_err();
    assert!(matches!(err, GgufError::ElementCountOverflow { .. }), "{err}");
    let err = one_tensor(&[1 << 31, 1 << 31, 4], 0, 0, 0).open().unwrap_err();
    assert!(matches!(err, GgufError::ElementCountOverflow { .. }), "{err}");
    for id in [4u32, 5, 16, 31, 99, u32::MAX] {
        let err = one_tensor(&[32], id, 0, 128).open().unwrap_err();
        assert!(matches!(err, GgufError::InvalidTensorType { offset: 45, id: got, .. } if got == id), "{err}");
    }
    let err = one_tensor(&[16], GgmlType::Q4_0.id(), 0, 32).open().unwrap_err();
    assert!(matches!(err, GgufError::RowNotBlockMultiple { row_len: 16, block_size: 32, .. }), "{err}");
    // Zero-sized tensors are legal (ggml allows ne = 0).
    let f = one_tensor(&[0, 7], 0, 0, 0).open().unwrap();
    assert_eq!(f.tensors[0].n_bytes(), 0);
    assert_eq!(f.dequantize_tensor("t").unwrap(), Vec::<f32>::new());
}

#[test]
fn tensor_names_must_be_unique_and_short() {
    let err = Raw::header(3, 2, 0).tensor("a", &[1], 0, 0).tensor("a", &[1], 0, 32).pad(32).bytes(&[0; 64]).open().unwrap_err();
    assert!(matches!(err, GgufError::DuplicateTensor { offset: 57, ref name, .. } if name == "a"), "{err}");
    let ok = "x".repeat(63);
    assert!(Raw::header(3, 1, 0).tensor(&ok, &[1], 0, 0).pad(32).bytes(&[0; 32]).open().is_ok());
    let long = "x".repeat(64);
    let err = Raw::header(3, 1, 0).tensor(&long, &[1], 0, 0).pad(32).bytes(&[0; 32]).open().unwrap_err();
    assert!(matches!(err, GgufError::TensorNameTooLong { len: 64, .. }), "{err}");
}

#[test]
fn tensor_data_layout_validation() {
    let err = one_tensor(&[4], 0, 4, 64).open().unwrap_err();
    assert!(matches!(err, GgufError::MisalignedTensor { offset: 4, alignment: 32, field_offset: 49, .. }), "{err}");
    // Data running past the end of the file, including offsets chosen to make
    // naive `data_offset + offset + size` arithmetic overflow.
    for off in [32u64, 1 << 40, !31, !31 - 64] {
        let err = one_tensor(&[4], 0, off, 32).open().unwrap_err();
        assert!(matches!(err, GgufError::TensorOutOfBounds { .. }), "{off}: {err}");
    }
    // One byte short of the padded end (16 data bytes + 16 padding).
    let err = one_tensor(&[4], 0, 0, 31).open().unwrap_err();
    assert!(matches!(err, GgufError::TensorOutOfBounds { .. }), "{err}");
    // Overlap: b starts inside a.
    let err = Raw::header(3, 2, 0).tensor("a", &[16], 0, 0).tensor("b", &[8], 0, 32).pad(32).bytes(&[0; 128]).open().unwrap_err();
    assert!(matches!(err, GgufError::OverlappingTensors { ref first, ref second, .. } if first == "a" && second == "b"), "{err}");
    // Out-of-order but disjoint tensors are accepted.
    let f = Raw::header(3, 2, 0).tensor("a", &[8], 0, 32).tensor("b", &[8], 0, 0).pad(32).bytes(&[0; 64]).open().unwrap();
    assert_eq!(f.tensor_info("a").unwrap().offset, 32);
    // Tensor infos ending right at EOF: the padded data section lies beyond it.
    let r = Raw::header(3, 1, 0).tensor("t", &[0], 0, 0);
    assert_ne!(r.len() % 32, 0);
    let err = r.open().unwrap_err();
    assert!(matches!(err, GgufError::DataSectionOutOfBounds { data_offset: 64, .. }), "{err}");
}

#[test]
fn tensor_data_is_the_exact_slice() {
    let mut data = vec![0u8; 32];
    data[..16].copy_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]);
    let f = Raw::header(3, 1, 0).tensor("t", &[4], 26, 0).pad(32).bytes(&data).open().unwrap();
    let t = f.tensor_info("t").unwrap();
    assert_eq!(t.ggml_type, GgmlType::I32);
    assert_eq!(f.tensor_data(t), &data[..16]);
    assert!(matches!(f.dequantize_tensor("t"), Err(GgufError::UnsupportedDequant { ty: GgmlType::I32 })));
}

#[test]
fn total_metadata_values_are_bounded() {
    use crate::gguf::reader::MAX_METADATA_VALUES;
    // The bytes are all there, so only the global budget can reject it, and it
    // must do so before allocating the element vector.
    let n = MAX_METADATA_VALUES; // plus the kv pair itself: one over the budget
    let err = Raw::header(3, 0, 1).str(b"big").u32(9).u32(0).u64(n).bytes(&vec![0; n as usize]).open().unwrap_err();
    assert!(matches!(err, GgufError::LimitExceeded { what: "total metadata values", offset: 43, .. }), "{err}");
}
