//! llama.cpp's own tokenizer test suite, run against our tokenizer: for each family, the
//! vocab-only `ggml-vocab-FAMILY.gguf` of llama-cpp-python 0.3.36 and its `.inp`/`.out` pair,
//! read exactly as `tests/test-tokenizer-0.cpp` reads them (add_special and parse_special off).
//! The three vocabularies without a pair (aquila, baichuan, gpt-neox) are checked on the
//! recorded corpora only.
//! The files are fetched through `worker_orcd::vocab_fetch` (cached, sha256-verified); a family
//! whose files cannot be fetched fails with the reason, it is never skipped.
//!
//! Beyond the `.out` ids, `recordings/tokenizer/vocab_suite.json` (made by
//! `xtask/python/vocab_suite.py` with llama.cpp itself) holds llama.cpp's detokenization of
//! every case, its ids with add_special and parse_special on, its ids for our own corpus
//! (`recordings/tokenizer/corpus.json`), and each vocabulary's BOS/EOS/EOG facts.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde::Deserialize;
use worker_orcd::gguf::GgufFile;
use worker_orcd::tokenizer::{StreamDecoder, Tokenizer, TokenizerError};
use worker_orcd::vocab_fetch::{self, FAMILIES};

/// One module of tests per family we tokenize bit-exactly (`pairs`: with an `.inp`/`.out`
/// pair; `vocab_only`: without), and `SUPPORTED`, all their names. Every other family of
/// `vocab_fetch::FAMILIES` must be refused when the tokenizer is built (checked by
/// `suite_table`).
macro_rules! families {
    (
        pairs { $($module:ident => $name:literal,)* }
        vocab_only { $($vmodule:ident => $vname:literal,)* }
    ) => {
        const SUPPORTED: &[&str] = &[$($name,)* $($vname,)*];
        $(
            mod $vmodule {
                #[test]
                fn special_tokens_match_llama_cpp() {
                    super::check_special_tokens($vname);
                }
                #[test]
                fn corpus_matches_llama_cpp() {
                    super::check_corpus($vname);
                }
            }
        )*
        $(
            mod $module {
                #[test]
                fn suite_ids_match_llama_cpp() {
                    super::check_suite($name);
                }
                #[test]
                fn round_trip_matches_llama_cpp() {
                    super::check_round_trip($name);
                }
                #[test]
                fn special_tokens_match_llama_cpp() {
                    super::check_special_tokens($name);
                }
                #[test]
                fn corpus_matches_llama_cpp() {
                    super::check_corpus($name);
                }
            }
        )*
    };
}

families! {
    pairs {
    bert_bge => "bert-bge",
    command_r => "command-r",
    deepseek_coder => "deepseek-coder",
    deepseek_llm => "deepseek-llm",
    falcon => "falcon",
    gemma_4 => "gemma-4",
    gpt_2 => "gpt-2",
    llama_bpe => "llama-bpe",
    llama_spm => "llama-spm",
    mpt => "mpt",
    phi_3 => "phi-3",
    qwen2 => "qwen2",
    qwen35 => "qwen35",
    refact => "refact",
    starcoder => "starcoder",
    }
    vocab_only {
    aquila => "aquila",
    baichuan => "baichuan",
    gpt_neox => "gpt-neox",
    }
}

/// One case of a `.inp`/`.out` pair.
struct Case {
    text: String,
    ids: Vec<u32>,
}

/// The cases of a pair as test-tokenizer-0.cpp reads them: inputs separated by
/// `"\n__ggml_vocab_test__\n"` (a separator at the very end starts no case), one output line
/// per input, stripped and split into ids. It keeps them in a `std::map`, so a repeated input
/// counts once, with the ids of its last occurrence; we keep file order for messages.
fn read_pair(inp: &Path, out: &Path) -> Vec<Case> {
    let raw = std::fs::read_to_string(inp).unwrap_or_else(|e| panic!("{}: {e}", inp.display()));
    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        match raw[pos..].find(sep) {
            Some(p) => {
                inputs.push(raw[pos..pos + p].to_owned());
                pos += p + sep.len();
            }
            None => {
                inputs.push(raw[pos..].to_owned());
                break;
            }
        }
    }
    let out_text = std::fs::read_to_string(out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    let lines: Vec<&str> = out_text.lines().collect();
    assert_eq!(inputs.len(), lines.len(), "{} and {} have different case counts", inp.display(), out.display());
    let mut by_text: BTreeMap<String, usize> = BTreeMap::new();
    let mut cases: Vec<Case> = Vec::new();
    for (text, line) in inputs.into_iter().zip(lines) {
        let ids = line.split_whitespace().map(|t| t.parse().unwrap_or_else(|e| panic!("{}: bad id {t:?}: {e}", out.display()))).collect();
        match by_text.get(&text) {
            Some(&i) => cases[i].ids = ids,
            None => {
                by_text.insert(text.clone(), cases.len());
                cases.push(Case { text, ids });
            }
        }
    }
    cases
}

/// A family's fetched files, suite cases (none without a pair) and tokenizer (or the reason it
/// has none).
struct Family {
    files: vocab_fetch::VocabFiles,
    cases: Vec<Case>,
    tokenizer: Result<Tokenizer, TokenizerError>,
}

/// Loads `name` once per test binary (the large vocabularies take a moment to build).
fn family(name: &'static str) -> Arc<Family> {
    static CACHE: OnceLock<Mutex<HashMap<&'static str, Arc<OnceLock<Arc<Family>>>>>> = OnceLock::new();
    let slot = CACHE.get_or_init(Default::default).lock().unwrap().entry(name).or_default().clone();
    slot.get_or_init(|| {
        let files = vocab_fetch::ensure_vocab(name).unwrap_or_else(|e| panic!("cannot fetch the {name} vocabulary (see README: cargo xtask fetch-vocab): {e}"));
        let cases = match &files.pair {
            Some((inp, out)) => read_pair(inp, out),
            None => Vec::new(),
        };
        let gguf = GgufFile::open(&files.gguf).unwrap_or_else(|e| panic!("{}: {e}", files.gguf.display()));
        let tokenizer = Tokenizer::from_gguf(&gguf);
        Arc::new(Family { files, cases, tokenizer })
    })
    .clone()
}

fn tokenizer<'a>(fam: &'a Family, name: &str) -> &'a Tokenizer {
    fam.tokenizer.as_ref().unwrap_or_else(|e| panic!("{name}: tokenizer of {}: {e}", fam.files.gguf.display()))
}

#[derive(Deserialize)]
struct Recording {
    families: BTreeMap<String, FamilyRecording>,
}

#[derive(Deserialize)]
struct FamilyRecording {
    vocab_sha256: String,
    n_vocab: usize,
    bos: i64,
    eos: i64,
    add_bos: bool,
    add_eos: bool,
    eog_ids: Vec<u32>,
    cases: Vec<RecordedCase>,
    /// Per corpus file name, one entry per string.
    corpora: BTreeMap<String, Vec<RecordedCorpus>>,
}

#[derive(Deserialize)]
struct RecordedCase {
    text: String,
    ids: Vec<u32>,
    ids_special: Vec<u32>,
    detok: Detok,
    detok_special: Detok,
}

#[derive(Deserialize)]
struct RecordedCorpus {
    ids: Vec<u32>,
    ids_special: Vec<u32>,
}

/// Detokenized bytes: text when valid UTF-8, else hex.
#[derive(Deserialize)]
#[serde(untagged)]
enum Detok {
    Text(String),
    Hex { hex: String },
}

impl Detok {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Detok::Text(s) => s.as_bytes().to_vec(),
            Detok::Hex { hex } => (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect(),
        }
    }
}

fn recordings_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("recordings/tokenizer")
}

fn recording() -> &'static Recording {
    static REC: OnceLock<Recording> = OnceLock::new();
    REC.get_or_init(|| {
        let path = recordings_dir().join("vocab_suite.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    })
}

/// The strings of `recordings/tokenizer/{file}`.
fn corpus(file: &str) -> Vec<String> {
    #[derive(Deserialize)]
    struct Corpus {
        strings: Vec<String>,
    }
    let path = recordings_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str::<Corpus>(&text).expect("parse corpus.json").strings
}

/// The recording of `name`, checked to be of the vocabulary we fetched.
fn family_recording(name: &str) -> &'static FamilyRecording {
    let rec = recording().families.get(name).unwrap_or_else(|| panic!("vocab_suite.json has no {name}: rerun xtask/python/vocab_suite.py"));
    let spec = vocab_fetch::family_by_name(name).unwrap();
    assert_eq!(rec.vocab_sha256, spec.gguf.sha256, "vocab_suite.json's {name} is of another vocabulary");
    rec
}

/// Counts the cases whose ids equal the `.out` ids; the first mismatch, if any, as a message.
fn run_suite(fam: &Family, tok: &Tokenizer) -> (usize, Option<String>) {
    let mut passed = 0;
    let mut first = None;
    for case in &fam.cases {
        let got = tok.encode(&case.text, false);
        if got == case.ids {
            passed += 1;
        } else if first.is_none() {
            first = Some(format!("first differing case {:?}\n  ours:      {got:?}\n  llama.cpp: {:?}", case.text, case.ids));
        }
    }
    (passed, first)
}

/// llama.cpp's test-tokenizer-0: every case's ids equal the `.out` exactly.
fn check_suite(name: &'static str) {
    let fam = family(name);
    let tok = tokenizer(&fam, name);
    assert!(fam.files.pair.is_some(), "{name} has no .inp/.out pair");
    assert!(fam.cases.len() >= 40, "{name}: only {} cases", fam.cases.len());
    let (passed, first) = run_suite(&fam, tok);
    eprintln!("{name}: {passed}/{} cases equal llama.cpp's", fam.cases.len());
    if let Some(msg) = first {
        panic!("{name}: {passed}/{} cases pass; {msg}", fam.cases.len());
    }
}

/// Decoding: our detokenization of each case equals llama.cpp's (`common_detokenize` with
/// special tokens rendered, as test-tokenizer-0 prints it), and streaming the ids yields
/// exactly the concatenated pieces without ever splitting a character.
fn check_round_trip(name: &'static str) {
    let fam = family(name);
    let tok = tokenizer(&fam, name);
    let rec = family_recording(name);
    let texts: Vec<&str> = fam.cases.iter().map(|c| c.text.as_str()).collect();
    let recorded: Vec<&str> = rec.cases.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts, recorded, "{name}: vocab_suite.json is stale: rerun xtask/python/vocab_suite.py");
    let mut failures = Vec::new();
    for rc in &rec.cases {
        let ids = tok.encode(&rc.text, false);
        let ours = tok.detokenize(&ids, false, true);
        let want = rc.detok.bytes();
        if ours != want {
            failures.push(format!("{:?}: ours {:?}, llama.cpp {:?}", rc.text, String::from_utf8_lossy(&ours), String::from_utf8_lossy(&want)));
        }
        let mut dec = StreamDecoder::new(tok);
        let mut streamed = String::new();
        for &id in &ids {
            let chunk = dec.push(id);
            assert!(!chunk.contains('\u{FFFD}'), "{name}: {:?} streamed a broken character", rc.text);
            streamed.push_str(&chunk);
        }
        assert!(dec.pending().is_empty(), "{name}: {:?} left bytes pending", rc.text);
        assert_eq!(streamed, tok.decode(&ids), "{name}: {:?}", rc.text);
    }
    assert!(failures.is_empty(), "{name}: {} detokenizations differ:\n{}", failures.len(), failures.join("\n"));
}

/// With add_special and parse_special on (BOS/EOS adding, special-token text), and removing
/// them again when detokenizing; and the vocabulary's special ids.
fn check_special_tokens(name: &'static str) {
    let fam = family(name);
    let tok = tokenizer(&fam, name);
    let rec = family_recording(name);
    assert_eq!(tok.n_vocab(), rec.n_vocab, "{name}");
    let id = |x: Option<u32>| x.map_or(-1, i64::from);
    assert_eq!((id(tok.bos_id()), id(tok.eos_id())), (rec.bos, rec.eos), "{name}: bos, eos");
    assert_eq!((tok.add_bos(), tok.add_eos()), (rec.add_bos, rec.add_eos), "{name}: add_bos, add_eos");
    assert_eq!(tok.eog_ids(), rec.eog_ids.as_slice(), "{name}: eog ids");
    let mut failures = Vec::new();
    for rc in &rec.cases {
        let got = tok.tokenize(&rc.text, true, true);
        if got != rc.ids_special {
            failures.push(format!("{:?}\n  ours:      {got:?}\n  llama.cpp: {:?}", rc.text, rc.ids_special));
        }
        assert_eq!(tok.encode(&rc.text, false), rc.ids, "{name}: {:?}", rc.text);
        let ours = tok.detokenize(&rc.ids_special, true, false);
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&rc.detok_special.bytes()),
            "{name}: detokenize(remove_special, !unparse_special) of {:?}",
            rc.text
        );
    }
    assert!(failures.is_empty(), "{name}: {} cases differ:\n{}", failures.len(), failures.join("\n"));
}

/// Our corpora in both modes: `corpus.json` (code, CJK, emoji, whitespace runs, special-token
/// texts, a 2 KB paragraph) and `special_corpus.json` (each family's special tokens with
/// whitespace around them, which LSTRIP/RSTRIP and the SentencePiece space prefix act on).
fn check_corpus(name: &'static str) {
    let fam = family(name);
    let tok = tokenizer(&fam, name);
    let rec = family_recording(name);
    let mut n = 0;
    let mut failures = Vec::new();
    for file in ["corpus.json", "special_corpus.json"] {
        let strings = corpus(file);
        let recorded = rec.corpora.get(file).unwrap_or_else(|| panic!("{name}: no {file} in vocab_suite.json"));
        assert_eq!(strings.len(), recorded.len(), "{name}: vocab_suite.json's {file} is stale");
        for (text, rc) in strings.iter().zip(recorded) {
            for (add_parse, want) in [(false, &rc.ids), (true, &rc.ids_special)] {
                n += 1;
                let got = tok.tokenize(text, add_parse, add_parse);
                if &got != want {
                    failures.push(format!("{file}: {text:?} add_special=parse_special={add_parse}\n  ours:      {got:?}\n  llama.cpp: {want:?}"));
                }
            }
        }
    }
    eprintln!("{name}: {}/{n} corpus encodings equal llama.cpp's", n - failures.len());
    assert!(failures.is_empty(), "{name}: {} of {n} differ; first:\n{}", failures.len(), failures[0]);
}

/// The per-family table of the report: cases passed / total for every family with a pair, and
/// the error for those we refuse. Fails if a supported family does not pass every case, or if
/// an unsupported one builds (then it belongs in `SUPPORTED` and the tests above).
#[test]
fn suite_table() {
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    for spec in FAMILIES {
        let fam = family(spec.name);
        let supported = SUPPORTED.contains(&spec.name);
        match (&fam.tokenizer, supported) {
            (Ok(_), true) if fam.files.pair.is_none() => {
                lines.push(format!("{:<16} no .inp/.out pair (recorded corpora only)", spec.name));
            }
            (Ok(tok), _) => {
                let (passed, first) = run_suite(&fam, tok);
                let total = fam.cases.len();
                lines.push(format!("{:<16} {passed:>3}/{total}", spec.name));
                if !supported {
                    problems.push(format!("{} builds but is not in SUPPORTED", spec.name));
                } else if let Some(msg) = first {
                    problems.push(format!("{}: {msg}", spec.name));
                }
            }
            (Err(e), false) => lines.push(format!("{:<16} unsupported: {e}", spec.name)),
            (Err(e), true) => problems.push(format!("{}: {e}", spec.name)),
        }
    }
    eprintln!("llama.cpp tokenizer suite:\n{}", lines.join("\n"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
