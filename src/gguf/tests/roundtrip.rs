//! Round-trip unit tests: files built with `GgufWriter` read back identically
//! through `GgufFile`, across versions, alignments and every metadata type.

use crate::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetadataValue as V};

/// One value of every scalar type, plus strings and arrays (nested included).
pub(crate) fn every_metadata_type() -> Vec<(&'static str, V)> {
    vec![
        ("t.u8", V::U8(0xfe)),
        ("t.i8", V::I8(-5)),
        ("t.u16", V::U16(0xbeef)),
        ("t.i16", V::I16(-1234)),
        ("t.u32", V::U32(0xdead_beef)),
        ("t.i32", V::I32(-123_456)),
        ("t.u64", V::U64(u64::MAX - 1)),
        ("t.i64", V::I64(i64::MIN + 1)),
        ("t.f32", V::F32(-1.5e-7)),
        ("t.f64", V::F64(std::f64::consts::PI)),
        ("t.bool_t", V::Bool(true)),
        ("t.bool_f", V::Bool(false)),
        ("t.str", V::String("héllo ✓".to_string())),
        ("t.empty_str", V::String(String::new())),
        ("t.arr_u8", V::Array(vec![V::U8(1), V::U8(2), V::U8(255)])),
        ("t.arr_i32", V::Array(vec![V::I32(-1), V::I32(7)])),
        ("t.arr_f32", V::Array(vec![V::F32(0.5), V::F32(-2.0)])),
        ("t.arr_f64", V::Array(vec![V::F64(1e300)])),
        ("t.arr_bool", V::Array(vec![V::Bool(true), V::Bool(false)])),
        ("t.arr_str", V::Array(vec![V::String("a".into()), V::String("".into()), V::String("ç".into())])),
        ("t.arr_u64", V::Array(vec![V::U64(1 << 40)])),
        ("t.arr_i64", V::Array(vec![V::I64(-(1 << 40))])),
        ("t.arr_u16", V::Array(vec![V::U16(9)])),
        ("t.arr_i16", V::Array(vec![V::I16(-9)])),
        ("t.arr_u32", V::Array(vec![V::U32(3), V::U32(4)])),
        ("t.arr_i8", V::Array(vec![V::I8(-128)])),
        ("t.arr_empty", V::Array(vec![])),
        ("t.arr_nested", V::Array(vec![V::Array(vec![V::U32(1), V::U32(2)]), V::Array(vec![]), V::Array(vec![V::U32(3)])])),
        (
            "t.arr_nested_mixed_inner",
            // Each inner array has its own element type.
            V::Array(vec![V::Array(vec![V::String("x".into())]), V::Array(vec![V::Array(vec![V::F32(1.0)])])]),
        ),
    ]
}

fn tiny_tensors(w: &mut GgufWriter) {
    let f32_data: Vec<u8> = [1.0f32, -2.0, 3.5].iter().flat_map(|v| v.to_le_bytes()).collect();
    w.add_tensor("a.f32", &[3], GgmlType::F32, f32_data);
    let mut q8 = 0x3800u16.to_le_bytes().to_vec(); // d = 0.5
    q8.extend((0..32).map(|j| j as u8));
    q8.extend(0x3c00u16.to_le_bytes()); // second block, d = 1
    q8.extend((0..32).map(|j| (j as i8 - 32) as u8));
    w.add_tensor("b.q8_0", &[32, 2], GgmlType::Q8_0, q8);
    w.add_tensor("c.f16", &[2, 1, 1, 2], GgmlType::F16, vec![0, 0x3c, 0, 0xc0, 0, 0x40, 0, 0xbc]);
}

#[test]
fn every_metadata_type_round_trips_in_v2_and_v3() {
    for version in [2, 3] {
        let mut w = GgufWriter::with_version(version);
        for (k, v) in every_metadata_type() {
            w.add_metadata(k, v);
        }
        tiny_tensors(&mut w);
        let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
        assert_eq!(f.version, version);
        assert_eq!(f.alignment, 32);
        let want = every_metadata_type();
        assert_eq!(f.metadata.len(), want.len());
        for ((k, v), (gk, gv)) in want.iter().zip(&f.metadata) {
            assert_eq!(k, gk, "order is preserved");
            assert_eq!(v, gv, "{k}");
            assert_eq!(f.metadata(k), Some(v));
        }
        assert_eq!(f.tensors.len(), 3);
    }
}

#[test]
fn nan_and_negative_zero_keep_their_bits() {
    let mut w = GgufWriter::new();
    w.add_metadata("nan", V::F32(f32::from_bits(0x7fc1_2345)));
    w.add_metadata("nz", V::F64(-0.0));
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    match f.metadata("nan") {
        Some(V::F32(x)) => assert_eq!(x.to_bits(), 0x7fc1_2345),
        other => panic!("{other:?}"),
    }
    match f.metadata("nz") {
        Some(V::F64(x)) => assert_eq!(x.to_bits(), (-0.0f64).to_bits()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn tensors_round_trip_at_every_alignment() {
    for alignment in [1u32, 8, 32, 64, 256, 4096] {
        let mut w = GgufWriter::new();
        w.add_metadata("general.alignment", V::U32(alignment));
        w.add_metadata("general.name", V::String("x".repeat(alignment as usize % 7)));
        tiny_tensors(&mut w);
        let bytes = w.to_bytes();
        let f = GgufFile::from_bytes(bytes.clone()).unwrap();
        let a = u64::from(alignment);
        assert_eq!(f.alignment, a);
        assert_eq!(f.data_offset() % a, 0);
        // The file ends with the last tensor padded to the alignment, like ggml.
        assert_eq!((bytes.len() as u64 - f.data_offset()) % a, 0);
        for t in &f.tensors {
            assert_eq!(t.offset % a, 0, "{}", t.name);
        }
        assert_eq!(f.dequantize_tensor("a.f32").unwrap(), vec![1.0, -2.0, 3.5]);
        let q8 = f.dequantize_tensor("b.q8_0").unwrap();
        assert_eq!(q8.len(), 64);
        assert_eq!(q8[3], 1.5);
        assert_eq!(q8[32], -32.0);
        assert_eq!(f.dequantize_tensor("c.f16").unwrap(), vec![1.0, -2.0, 2.0, -1.0]);
        let info = f.tensor_info("b.q8_0").unwrap();
        assert_eq!(info.shape, vec![32, 2]);
        assert_eq!((info.row_len(), info.n_rows(), info.n_elements(), info.n_bytes()), (32, 2, 64, 68));
        assert_eq!(f.tensor_data(info).len(), 68);
        let c = f.tensor_info("c.f16").unwrap();
        assert_eq!((c.row_len(), c.n_rows(), c.n_elements()), (2, 2, 4));
    }
}

#[test]
fn writer_layout_matches_the_format_byte_for_byte() {
    let mut w = GgufWriter::new();
    w.add_metadata("k", V::U8(7));
    w.add_tensor("t", &[1], GgmlType::F32, 1.0f32.to_le_bytes().to_vec());
    let b = w.to_bytes();
    let mut want = Vec::new();
    want.extend(b"GGUF");
    want.extend(3u32.to_le_bytes());
    want.extend(1u64.to_le_bytes()); // tensor_count
    want.extend(1u64.to_le_bytes()); // kv_count
    want.extend(1u64.to_le_bytes());
    want.push(b'k');
    want.extend(0u32.to_le_bytes()); // u8
    want.push(7);
    want.extend(1u64.to_le_bytes());
    want.push(b't');
    want.extend(1u32.to_le_bytes()); // n_dims
    want.extend(1u64.to_le_bytes()); // ne0
    want.extend(0u32.to_le_bytes()); // f32
    want.extend(0u64.to_le_bytes()); // offset
    assert_eq!(want.len(), 71);
    want.resize(96, 0); // pad to 32
    want.extend(1.0f32.to_le_bytes());
    want.resize(128, 0); // trailing tensor padding
    assert_eq!(b, want);
}

#[test]
fn empty_and_metadata_only_files() {
    let f = GgufFile::from_bytes(GgufWriter::new().to_bytes()).unwrap();
    assert!(f.metadata.is_empty() && f.tensors.is_empty());
    assert_eq!(f.data_offset(), 24);

    let mut w = GgufWriter::new();
    w.add_metadata("only", V::Bool(true));
    let bytes = w.to_bytes();
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(f.data_offset() as usize, bytes.len(), "no padding without tensors");
}

#[test]
fn writer_replaces_duplicate_keys_in_place() {
    let mut w = GgufWriter::new();
    w.add_metadata("a", V::U32(1));
    w.add_metadata("b", V::U32(2));
    w.add_metadata("a", V::String("again".into()));
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    let keys: Vec<&str> = f.metadata.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(f.get_str("a").unwrap(), "again");
}

#[test]
#[should_panic(expected = "mixes")]
fn writer_rejects_mixed_arrays() {
    GgufWriter::new().add_metadata("bad", V::Array(vec![V::U8(1), V::I8(1)]));
}

#[test]
#[should_panic(expected = "needs")]
fn writer_rejects_wrong_data_length() {
    GgufWriter::new().add_tensor("t", &[32], GgmlType::Q4_0, vec![0; 17]);
}

#[test]
fn writer_writes_to_a_path_and_open_mmaps_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", V::String("test".into()));
    tiny_tensors(&mut w);
    w.write_to_path(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert!(f.is_mmapped());
    assert_eq!(f.file_bytes(), &w.to_bytes()[..]);
    assert_eq!(f.get_str("general.architecture").unwrap(), "test");

    let missing = dir.path().join("missing.gguf");
    let err = GgufFile::open(&missing).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }));
    assert!(err.to_string().contains("missing.gguf"), "{err}");

    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(GgufFile::open(&empty), Err(GgufError::Truncated { offset: 0, .. })));
}

#[test]
fn typed_getters_are_lenient_on_width_strict_on_kind() {
    let mut w = GgufWriter::new();
    for (k, v) in every_metadata_type() {
        w.add_metadata(k, v);
    }
    w.add_metadata("neg", V::I32(-1));
    w.add_metadata("big_i64", V::I64(i64::MAX));
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();

    assert_eq!(f.get_u32("t.u8").unwrap(), 0xfe);
    assert_eq!(f.get_u32("t.u16").unwrap(), 0xbeef);
    assert_eq!(f.get_u32("t.u32").unwrap(), 0xdead_beef);
    assert_eq!(f.get_u64("t.u64").unwrap(), u64::MAX - 1);
    assert_eq!(f.get_u64("big_i64").unwrap(), i64::MAX as u64);
    assert_eq!(f.get_i64("t.i64").unwrap(), i64::MIN + 1);
    assert!(matches!(f.get_u32("t.u64"), Err(GgufError::OutOfRange { .. })));
    assert!(matches!(f.get_u32("neg"), Err(GgufError::OutOfRange { .. })));
    assert!(matches!(f.get_u64("neg"), Err(GgufError::OutOfRange { .. })));
    assert!(matches!(f.get_u32("t.f32"), Err(GgufError::WrongType { .. })));
    assert!(matches!(f.get_u32("t.str"), Err(GgufError::WrongType { .. })));

    assert_eq!(f.get_f32("t.f32").unwrap(), -1.5e-7);
    assert_eq!(f.get_f32("t.f64").unwrap(), std::f64::consts::PI as f32);
    assert!(matches!(f.get_f32("t.u8"), Err(GgufError::WrongType { .. })));

    assert!(f.get_bool("t.bool_t").unwrap());
    assert!(!f.get_bool("t.bool_f").unwrap());
    assert!(matches!(f.get_bool("t.u8"), Err(GgufError::WrongType { .. })));

    assert_eq!(f.get_str("t.str").unwrap(), "héllo ✓");
    let err = f.get_str("t.u32").unwrap_err();
    assert_eq!(err.to_string(), "metadata key \"t.u32\" has type u32, expected string");
    let err = f.get_str("nope").unwrap_err();
    assert!(matches!(&err, GgufError::MissingKey { key } if key == "nope"));
    assert_eq!(err.to_string(), "metadata key \"nope\" not found");

    assert_eq!(f.get_str_array("t.arr_str").unwrap(), vec!["a", "", "ç"]);
    assert_eq!(f.get_str_array("t.arr_empty").unwrap(), Vec::<&str>::new());
    let err = f.get_str_array("t.arr_u8").unwrap_err();
    assert_eq!(err.to_string(), "metadata key \"t.arr_u8\" has type array<u8>, expected array<string>");
    assert!(matches!(f.get_str_array("t.str"), Err(GgufError::WrongType { .. })));

    assert_eq!(f.get_i32_array("t.arr_i32").unwrap(), vec![-1, 7]);
    assert_eq!(f.get_i32_array("t.arr_u8").unwrap(), vec![1, 2, 255]);
    assert!(matches!(f.get_i32_array("t.arr_u64"), Err(GgufError::OutOfRange { .. })));
    assert!(matches!(f.get_i32_array("t.arr_f32"), Err(GgufError::WrongType { .. })));

    assert_eq!(f.get_f32_array("t.arr_f32").unwrap(), vec![0.5, -2.0]);
    assert_eq!(f.get_f32_array("t.arr_f64").unwrap(), vec![f32::INFINITY]);
    assert!(matches!(f.get_f32_array("t.arr_i32"), Err(GgufError::WrongType { .. })));

    assert_eq!(f.get_array("t.arr_nested").unwrap().len(), 3);
    assert!(matches!(
        f.tensor_info("nope"),
        Err(GgufError::TensorNotFound { name }) if name == "nope"
    ));
    assert!(matches!(f.dequantize_tensor("nope"), Err(GgufError::TensorNotFound { .. })));
}

#[test]
fn metadata_value_helpers() {
    assert_eq!(V::I8(-1).as_u64(), None);
    assert_eq!(V::I64(5).as_u64(), Some(5));
    assert_eq!(V::U64(u64::MAX).as_i64(), None);
    assert_eq!(V::F64(0.5).as_f32(), Some(0.5));
    assert_eq!(V::U8(1).as_f32(), None);
    assert_eq!(V::String("s".into()).as_str(), Some("s"));
    assert_eq!(V::Array(vec![]).type_name(), "array");
    assert_eq!(V::Bool(true).type_name(), "bool");
    for ty in GgmlType::ALL {
        assert_eq!(GgmlType::from_id(ty.id()), Some(ty));
        assert_eq!(ty.row_bytes(ty.block_size() * 3), Some(ty.type_size() * 3));
        assert_eq!(ty.to_string(), ty.name());
    }
    assert_eq!(GgmlType::Q4_1.row_bytes(576), Some(18 * 20));
    assert_eq!(GgmlType::Q4_1.row_bytes(33), None);
    assert_eq!(GgmlType::Q8_0.type_size(), 34);
    assert_eq!(GgmlType::Q6_K.name(), "q6_K");
    assert_eq!(GgmlType::from_id(4), None);
    assert_eq!(GgmlType::from_id(31), None);
}

#[test]
fn lookups_survive_edits_to_the_public_fields() {
    let mut w = GgufWriter::new();
    w.add_metadata("a", V::U32(1));
    tiny_tensors(&mut w);
    let mut f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    f.metadata.insert(0, ("z".into(), V::U32(9)));
    f.tensors.reverse();
    assert_eq!(f.get_u32("a").unwrap(), 1);
    assert_eq!(f.get_u32("z").unwrap(), 9);
    assert_eq!(f.dequantize_tensor("a.f32").unwrap(), vec![1.0, -2.0, 3.5]);
}
