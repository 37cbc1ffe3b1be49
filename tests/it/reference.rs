//! The committed llama.cpp reference recordings open, are self-consistent, and
//! damaged files are rejected with errors instead of panics.

use std::path::{Path, PathBuf};

use worker_orcd::reference::{corpus_dir, load_corpus, recordings_in, ReferenceError, ReferenceRecording, RowSelection};

const N_EMBD: usize = 576;
const N_VOCAB: usize = 49152;
const N_LAYER: usize = 30;
const N_GREEDY: usize = 64;
const TOP_LOGITS: usize = 32;
const TOP_GREEDY: usize = 8;

fn corpus() -> Vec<(PathBuf, ReferenceRecording)> {
    load_corpus().unwrap_or_else(|e| panic!("loading the reference corpus: {e}"))
}

fn cases_json() -> serde_json::Value {
    let text = std::fs::read_to_string(corpus_dir().join("cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("cases.json parses")
}

#[test]
fn every_case_in_cases_json_is_recorded_and_opens() {
    let corpus = corpus();
    let cases = cases_json();
    let names: Vec<&str> = cases["cases"].as_array().expect("cases array").iter().map(|c| c["name"].as_str().expect("case name")).collect();
    assert!(names.len() >= 10, "expected at least 10 cases, got {}", names.len());
    assert_eq!(corpus.len(), names.len(), "one recording per case");
    for name in &names {
        let (path, rec) = corpus.iter().find(|(_, r)| r.case.name == *name).unwrap_or_else(|| panic!("case {name} has no recording"));
        assert_eq!(path.file_name().unwrap().to_str().unwrap(), format!("{name}.safetensors.zst"));
        assert_eq!(rec.case.model_sha256, cases["model_sha256"].as_str().unwrap());
    }
    let kinds: Vec<_> = corpus.iter().map(|(_, r)| r.case.kind).collect();
    assert!(kinds.contains(&worker_orcd::reference::CaseKind::Plain));
    assert!(kinds.contains(&worker_orcd::reference::CaseKind::Chat));
}

#[test]
fn settings_and_prompts() {
    for (path, rec) in corpus() {
        let c = &rec.case;
        let p = path.display();
        assert!(!c.prompt_ids.is_empty(), "{p}: empty prompt");
        assert!(c.prompt_ids.iter().all(|&t| (t as usize) < N_VOCAB), "{p}");
        let s = &c.settings;
        assert_eq!((s.n_ctx, s.n_batch, s.n_ubatch), (1024, 1024, 1024), "{p}");
        assert_eq!((s.type_k, s.type_v, s.flash_attn, s.n_threads), (0, 0, false, 2), "{p}");
        match c.kind {
            worker_orcd::reference::CaseKind::Chat => {
                assert!(c.parse_special, "{p}");
                assert!(c.messages.as_ref().is_some_and(|m| !m.is_empty()), "{p}");
                assert!(c.prompt_text.ends_with("<|im_start|>assistant\n"), "{p}");
            }
            worker_orcd::reference::CaseKind::Plain => {
                assert!(!c.parse_special && c.messages.is_none(), "{p}");
            }
        }
    }
}

#[test]
fn greedy_has_64_consistent_steps() {
    for (path, rec) in corpus() {
        let c = &rec.case;
        let p = path.display();
        assert_eq!(c.greedy_ids.len(), N_GREEDY, "{p}");
        assert_eq!(c.greedy_top2_gap.len(), N_GREEDY, "{p}");
        let (shape, ids) = rec.i32("greedy.top_ids").unwrap();
        assert_eq!(shape, [N_GREEDY, TOP_GREEDY], "{p}");
        let (shape, vals) = rec.f32("greedy.top_vals").unwrap();
        assert_eq!(shape, [N_GREEDY, TOP_GREEDY], "{p}");
        for step in 0..N_GREEDY {
            let ids = &ids[step * TOP_GREEDY..(step + 1) * TOP_GREEDY];
            let vals = &vals[step * TOP_GREEDY..(step + 1) * TOP_GREEDY];
            assert_eq!(ids[0] as u32, c.greedy_ids[step], "{p} step {step}");
            assert_eq!(vals[0] - vals[1], c.greedy_top2_gap[step], "{p} step {step}");
            assert!(c.greedy_top2_gap[step] >= 0.0);
            for k in 1..TOP_GREEDY {
                assert!(vals[k - 1] > vals[k] || (vals[k - 1] == vals[k] && ids[k - 1] < ids[k]), "{p} step {step}: top-8 not sorted");
            }
        }
        // step 0 is the argmax of the last prompt position
        let n = c.n_tokens();
        let (_, top) = rec.i32("logits.top_ids").unwrap();
        assert_eq!(top[(n - 1) * TOP_LOGITS] as u32, c.greedy_ids[0], "{p}: greedy step 0 vs last prompt logits");
    }
}

#[test]
fn shapes_match_metadata() {
    for (path, rec) in corpus() {
        let c = &rec.case;
        let p = path.display();
        let n = c.n_tokens();
        let rows = c.row_pos.len();

        // row-sampled residual stream
        let mut row_names = vec!["embd".to_string(), "result_norm".to_string()];
        row_names.extend((0..N_LAYER).map(|l| format!("l_out-{l}")));
        for name in &row_names {
            let (shape, _) = rec.f32(name).unwrap_or_else(|e| panic!("{p}: {e}"));
            assert_eq!(shape, [rows, N_EMBD], "{p}: {name}");
            let cap = rec.captured(name).unwrap_or_else(|| panic!("{p}: {name} not in captured"));
            assert_eq!(cap.rows, RowSelection::RowPos);
            for &pos in &c.row_pos {
                assert_eq!(rec.row(name, pos).map(<[f32]>::len), Some(N_EMBD), "{p}: {name}@{pos}");
            }
            if rows < n {
                let missing = (0..n).find(|q| !c.row_pos.contains(q)).unwrap();
                assert!(rec.row(name, missing).is_none(), "{p}: {name}@{missing}");
            }
            assert!(rec.row(name, n).is_none());
        }
        assert_eq!(*c.row_pos.last().unwrap(), n - 1, "{p}: last position always stored");

        // logits
        let (shape, top_ids) = rec.i32("logits.top_ids").unwrap();
        assert_eq!(shape, [n, TOP_LOGITS], "{p}");
        let (shape, top_vals) = rec.f32("logits.top_vals").unwrap();
        assert_eq!(shape, [n, TOP_LOGITS], "{p}");
        let (shape, lse) = rec.f32("logits.logsumexp").unwrap();
        assert_eq!(shape, [n], "{p}");
        let (shape, _) = rec.f32("logits.rows").unwrap();
        assert_eq!(shape, [c.logits_row_pos.len(), N_VOCAB], "{p}");
        assert_eq!(*c.logits_row_pos.last().unwrap(), n - 1, "{p}");
        for pos in 0..n {
            let vals = &top_vals[pos * TOP_LOGITS..(pos + 1) * TOP_LOGITS];
            let ids = &top_ids[pos * TOP_LOGITS..(pos + 1) * TOP_LOGITS];
            assert!(lse[pos] >= vals[0], "{p}@{pos}: logsumexp below max");
            assert!(vals.windows(2).all(|w| w[0] >= w[1]), "{p}@{pos}: not sorted");
            if let Some(row) = rec.row("logits.rows", pos) {
                // the stored full row agrees with the top-k summary
                for k in 0..TOP_LOGITS {
                    assert_eq!(row[ids[k] as usize], vals[k], "{p}@{pos} k={k}");
                }
                let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(max, vals[0], "{p}@{pos}");
                let lse64 = {
                    let m = max as f64;
                    m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
                };
                assert!((lse64 - lse[pos] as f64).abs() <= 1e-5 * lse64.abs().max(1.0), "{p}@{pos}: logsumexp");
            } else {
                assert!(!c.logits_row_pos.contains(&pos));
            }
        }

        // every captured entry (checked on open too; re-checked here explicitly)
        for cap in &c.captured {
            let t = rec.tensor(&cap.stored_name).unwrap();
            assert_eq!(t.shape, cap.shape, "{p}: {}", cap.stored_name);
            let want = match cap.rows {
                RowSelection::All => n,
                RowSelection::RowPos => rows,
            };
            assert_eq!(cap.shape[cap.token_axis], want, "{p}: {}", cap.stored_name);
            let ne_numel: i64 = cap.ne.iter().product();
            let numel: usize = cap.shape.iter().product();
            assert_eq!(ne_numel as usize * want / n, numel, "{p}: {}", cap.stored_name);
        }
    }
}

#[test]
fn op_captures_cover_the_op_layers() {
    let corpus = corpus();
    let op_cases: Vec<_> = corpus.iter().filter(|(_, r)| !r.case.op_layers.is_empty()).collect();
    let mut op_names: Vec<String> = op_cases.iter().map(|(_, r)| r.case.name.clone()).collect();
    op_names.sort();
    assert_eq!(op_names, ["chat-haiku", "chat-math", "plain-capital", "plain-story"]);
    for (path, rec) in op_cases {
        let c = &rec.case;
        let p = path.display();
        assert_eq!(c.op_layers, [0, 1, 15, 29], "{p}");
        for &l in &c.op_layers {
            // (ggml name, number of occurrences, ops in graph order)
            let expect: [(&str, &[&str]); 15] = [
                ("attn_norm", &["MUL"]),
                ("Qcur", &["MUL_MAT", "RESHAPE", "ROPE"]),
                ("Kcur", &["MUL_MAT", "RESHAPE", "ROPE"]),
                ("Vcur", &["MUL_MAT", "RESHAPE"]),
                ("kq", &["MUL_MAT"]),
                ("kq_soft_max", &["SOFT_MAX"]),
                ("kqv_out", &["CONT"]),
                ("attn_out", &["MUL_MAT"]),
                ("ffn_inp", &["ADD"]),
                ("ffn_norm", &["MUL"]),
                ("ffn_gate", &["MUL_MAT"]),
                ("ffn_up", &["MUL_MAT"]),
                ("ffn_swiglu", &["SWIGLU"]),
                ("ffn_out", &["MUL_MAT"]),
                ("l_out", &["ADD"]),
            ];
            for (base, ops) in expect {
                let ggml = format!("{base}-{l}");
                // (the row-sampled `l_out-N` also has ggml_name `l_out-N`; skip it)
                let caps: Vec<_> = c.captured.iter().filter(|x| x.ggml_name == ggml && x.stored_name.contains('#')).collect();
                let got: Vec<&str> = caps.iter().map(|x| x.op.as_str()).collect();
                assert_eq!(got, ops, "{p}: {ggml}");
                for (k, cap) in caps.iter().enumerate() {
                    assert_eq!(cap.occurrence, k);
                    assert_eq!(cap.stored_name, format!("{ggml}#{k}"));
                }
            }
            // a reshape is a view: identical bytes to the matmul it reshapes
            for base in ["Qcur", "Kcur", "Vcur"] {
                let (_, a) = rec.f32(&format!("{base}-{l}#0")).unwrap();
                let (_, b) = rec.f32(&format!("{base}-{l}#1")).unwrap();
                assert_eq!(a, b, "{p}: {base}-{l}");
            }
            // the op-level l_out equals the row-sampled residual stream
            let cap = rec.captured(&format!("l_out-{l}#0")).unwrap();
            for (i, &pos) in c.row_pos.iter().enumerate() {
                let stored_idx = match cap.rows {
                    RowSelection::All => pos,
                    RowSelection::RowPos => i,
                };
                let (_, op) = rec.f32(&format!("l_out-{l}#0")).unwrap();
                assert_eq!(&op[stored_idx * N_EMBD..(stored_idx + 1) * N_EMBD], rec.row(&format!("l_out-{l}"), pos).unwrap(), "{p}: l_out-{l}@{pos}");
            }
            // K and V always at every position (attention needs all of them)
            for name in [format!("Kcur-{l}#2"), format!("Vcur-{l}#1")] {
                assert_eq!(rec.captured(&name).unwrap().rows, RowSelection::All, "{p}: {name}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// damaged files
// ---------------------------------------------------------------------------

fn smallest_recording() -> PathBuf {
    let mut files = recordings_in(&corpus_dir()).unwrap();
    files.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    files.remove(0)
}

fn open_bytes(dir: &Path, name: &str, bytes: &[u8]) -> Result<ReferenceRecording, ReferenceError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    ReferenceRecording::open(&path)
}

/// Decompressed safetensors image of a real recording, split into header JSON and data.
fn real_image() -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let raw = zstd::decode_all(&std::fs::read(smallest_recording()).unwrap()[..]).unwrap();
    let hl = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&raw[8..8 + hl]).unwrap();
    (header, raw[8 + hl..].to_vec())
}

fn image(header: &serde_json::Map<String, serde_json::Value>, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    zstd::encode_all(&out[..], 1).unwrap()
}

#[test]
fn truncated_files_are_errors() {
    let bytes = std::fs::read(smallest_recording()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for cut in [0, 1, 4, 8, 100, 1000, bytes.len() / 2, bytes.len() - 4, bytes.len() - 1] {
        let err = open_bytes(dir.path(), "t.safetensors.zst", &bytes[..cut]).expect_err(&format!("truncated at {cut} must fail"));
        assert!(matches!(err, ReferenceError::Zstd { .. }), "cut {cut}: {err}");
    }
    // truncated *inside* a valid zstd frame: the safetensors layer must catch it
    let raw = zstd::decode_all(&bytes[..]).unwrap();
    for cut in [0, 7, 8, 20, raw.len() / 2, raw.len() - 1] {
        let z = zstd::encode_all(&raw[..cut], 1).unwrap();
        let err = open_bytes(dir.path(), "u.safetensors.zst", &z).expect_err(&format!("safetensors truncated at {cut} must fail"));
        assert!(matches!(err, ReferenceError::Format { .. }), "cut {cut}: {err}");
    }
}

#[test]
fn corrupted_compressed_bytes_are_errors() {
    let bytes = std::fs::read(smallest_recording()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for at in [0, 5, 64, bytes.len() / 3, bytes.len() / 2, bytes.len() - 2] {
        let mut b = bytes.clone();
        b[at] ^= 0x5a;
        // must not panic; a flipped bit is caught by the zstd frame checksum
        // or by safetensors / metadata validation
        assert!(open_bytes(dir.path(), "c.safetensors.zst", &b).is_err(), "flip at {at}");
    }
    assert!(open_bytes(dir.path(), "g.safetensors.zst", b"garbage, not zstd").is_err());
    let missing = ReferenceRecording::open(&dir.path().join("nope.safetensors.zst")).unwrap_err();
    assert!(matches!(missing, ReferenceError::Io { .. }));
}

#[test]
fn corrupted_safetensors_fields_are_named_in_errors() {
    let (header, data) = real_image();
    let dir = tempfile::tempdir().unwrap();
    let check = |what: &str, h: &serde_json::Map<String, serde_json::Value>, d: &[u8], needle: &str| {
        let err = open_bytes(dir.path(), "f.safetensors.zst", &image(h, d)).expect_err(&format!("{what} must fail"));
        let msg = err.to_string();
        assert!(msg.contains(needle), "{what}: error `{msg}` should mention `{needle}`");
    };
    // sanity: the unmodified image opens
    open_bytes(dir.path(), "ok.safetensors.zst", &image(&header, &data)).unwrap();

    let mut h = header.clone();
    h["embd"]["dtype"] = "F16".into();
    check("bad dtype", &h, &data, "embd");

    let mut h = header.clone();
    h["embd"]["shape"] = serde_json::json!([1, 1]);
    check("bad shape", &h, &data, "embd");

    let mut h = header.clone();
    h["logits.rows"]["data_offsets"] = serde_json::json!([0, u64::MAX]);
    check("offsets out of range", &h, &data, "logits.rows");

    let mut h = header.clone();
    h["embd"]["shape"] = serde_json::json!([usize::MAX, 4]);
    check("overflowing shape", &h, &data, "embd");

    let mut h = header.clone();
    h.remove("embd");
    check("missing tensor (hole)", &h, &data, "offsets");

    let mut d = data.clone();
    d.extend_from_slice(&[0; 4]);
    check("trailing bytes", &header, &d, "trailing");

    let mut h = header.clone();
    h.remove("__metadata__");
    check("no metadata", &h, &data, "__metadata__");

    let mut h = header.clone();
    h["__metadata__"]["case"] = "{not json".into();
    check("bad case json", &h, &data, "case");

    let mut h = header.clone();
    let mut case: serde_json::Value = serde_json::from_str(h["__metadata__"]["case"].as_str().unwrap()).unwrap();
    case.as_object_mut().unwrap().remove("greedy_ids");
    h["__metadata__"]["case"] = case.to_string().into();
    check("missing case field", &h, &data, "greedy_ids");

    let mut h = header.clone();
    let mut case: serde_json::Value = serde_json::from_str(h["__metadata__"]["case"].as_str().unwrap()).unwrap();
    case["row_pos"] = serde_json::json!([0, 1_000_000]);
    h["__metadata__"]["case"] = case.to_string().into();
    check("row_pos out of range", &h, &data, "row_pos");

    let mut h = header.clone();
    let mut case: serde_json::Value = serde_json::from_str(h["__metadata__"]["case"].as_str().unwrap()).unwrap();
    case["captured"][0]["shape"] = serde_json::json!([3, 3]);
    h["__metadata__"]["case"] = case.to_string().into();
    check("captured shape mismatch", &h, &data, "captured[0]");

    // a bogus header length
    let mut raw = 1u64 << 40;
    let mut bytes = raw.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    let err = open_bytes(dir.path(), "h.safetensors.zst", &zstd::encode_all(&bytes[..], 1).unwrap()).unwrap_err();
    assert!(err.to_string().contains("header length"), "{err}");
    raw = 2;
    let mut bytes = raw.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"[]");
    let err = open_bytes(dir.path(), "j.safetensors.zst", &zstd::encode_all(&bytes[..], 1).unwrap()).unwrap_err();
    assert!(err.to_string().contains("header"), "{err}");
}

#[test]
fn accessors_report_missing_and_wrong_dtype() {
    let rec = ReferenceRecording::open(&smallest_recording()).unwrap();
    assert!(matches!(rec.f32("no-such-tensor"), Err(ReferenceError::MissingTensor(_))));
    assert!(matches!(rec.f32("logits.top_ids"), Err(ReferenceError::WrongDtype { .. })));
    assert!(matches!(rec.i32("embd"), Err(ReferenceError::WrongDtype { .. })));
    assert!(rec.row("logits.top_ids", 0).is_none(), "I32 tensors have no f32 rows");
    assert!(rec.names().any(|n| n == "result_norm"));
    assert!(rec.names().count() >= 2 + N_LAYER + 6);
}
