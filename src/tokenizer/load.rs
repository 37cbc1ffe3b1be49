//! Builds a [`Tokenizer`] from GGUF metadata, mirroring `llama_vocab::impl::load`
//! (src/llama-vocab.cpp) for `tokenizer.ggml.model` = `gpt2` (byte-level BPE), `gemma4`
//! (SentencePiece-style BPE), `llama` (SentencePiece) and `bert` (WordPiece): the vocab type
//! and pre-tokenizer
//! with their flags and defaults, token attributes and scores, merges, special ids, and the
//! special-token and token-to-piece caches.
//!
//! Reads only `tokenizer.*` (and `general.name`/`general.architecture`, for llama.cpp's
//! per-model tweaks) of the given file, so vocab-only files work; does no I/O itself. Hostile
//! metadata (wrong types, short arrays, out-of-range ids) is an error or, where llama.cpp
//! ignores it, ignored; never a panic.

use super::bpe::{Merges, WordMode};
use super::decode::render_piece;
use super::hash::TokenMap;
use super::pretok::{PreConfig, SUPPORTED_PRE_NAMES};
use super::special::{self, ModelNames, Slot, Slots, N_SLOTS, SPECIAL_KEYS};
use super::{attr, Model, Tokenizer, TokenizerError};
use crate::gguf::{GgufFile, MetadataValue};

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const KEY_ADD_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const KEY_LOWERCASE: &str = "tokenizer.ggml.normalizer.lowercase";
const KEY_STRIP_ACCENTS: &str = "tokenizer.ggml.normalizer.strip_accents";
const KEY_NAME: &str = "general.name";
const KEY_ARCH: &str = "general.architecture";

/// The `tokenizer.ggml.model` values we implement.
pub(crate) const SUPPORTED_MODELS: &[&str] = &["gpt2", "llama", "gemma4", "bert"];

fn wrong_type(key: &str, expected: &'static str, v: &MetadataValue) -> TokenizerError {
    let found = match v.as_array() {
        Some(items) => match items.iter().find(|x| !elem_matches(expected, x)) {
            Some(bad) => format!("array of {}", bad.type_name()),
            None => "array".to_owned(),
        },
        None => v.type_name().to_owned(),
    };
    TokenizerError::WrongType { key: key.to_owned(), expected, found }
}

fn elem_matches(expected: &str, x: &MetadataValue) -> bool {
    match expected.strip_prefix("array of ") {
        Some("f32 or i32") => matches!(x, MetadataValue::F32(_) | MetadataValue::I32(_)),
        Some(elem) => x.type_name() == elem,
        None => false,
    }
}

fn opt_str<'a>(f: &'a GgufFile, key: &str) -> Result<Option<&'a str>, TokenizerError> {
    match f.metadata(key) {
        None => Ok(None),
        Some(v) => v.as_str().map(Some).ok_or_else(|| wrong_type(key, "string", v)),
    }
}

fn opt_bool(f: &GgufFile, key: &str) -> Result<Option<bool>, TokenizerError> {
    match f.metadata(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| wrong_type(key, "bool", v)),
    }
}

/// Any integer type is accepted for ids (llama.cpp wants u32; converters write u32).
/// Values that do not fit u32 count as out of range, like a too-large u32.
fn opt_id(f: &GgufFile, key: &str) -> Result<Option<u64>, TokenizerError> {
    match f.metadata(key) {
        None => Ok(None),
        Some(v) if v.is_integer() => Ok(Some(v.as_u64().unwrap_or(u64::MAX))),
        Some(v) => Err(wrong_type(key, "integer", v)),
    }
}

fn str_array<'a>(f: &'a GgufFile, key: &str) -> Result<Option<Vec<&'a str>>, TokenizerError> {
    let Some(v) = f.metadata(key) else {
        return Ok(None);
    };
    let items = v.as_array().ok_or_else(|| wrong_type(key, "array of string", v))?;
    items.iter().map(|x| x.as_str().ok_or_else(|| wrong_type(key, "array of string", v))).collect::<Result<Vec<_>, _>>().map(Some)
}

fn i32_array(f: &GgufFile, key: &str) -> Result<Option<Vec<i32>>, TokenizerError> {
    let Some(v) = f.metadata(key) else {
        return Ok(None);
    };
    let items = v.as_array().ok_or_else(|| wrong_type(key, "array of i32", v))?;
    items
        .iter()
        .map(|x| match x {
            MetadataValue::I32(i) => Ok(*i),
            _ => Err(wrong_type(key, "array of i32", v)),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Scores are f32 (or, as llama.cpp also accepts, i32) per token.
fn score_array(f: &GgufFile, key: &str) -> Result<Option<Vec<f32>>, TokenizerError> {
    let Some(v) = f.metadata(key) else {
        return Ok(None);
    };
    let expected = "array of f32 or i32";
    let items = v.as_array().ok_or_else(|| wrong_type(key, expected, v))?;
    // llama.cpp takes the array's element type from the array, so a mix is malformed.
    let first_is_f32 = matches!(items.first(), Some(MetadataValue::F32(_)));
    items
        .iter()
        .map(|x| match x {
            MetadataValue::F32(s) if first_is_f32 => Ok(*s),
            MetadataValue::I32(i) if !first_is_f32 => Ok(*i as f32),
            _ => Err(wrong_type(key, expected, v)),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn check_len(key: &str, found: usize, expected: usize) -> Result<(), TokenizerError> {
    if found < expected {
        return Err(TokenizerError::LengthMismatch { key: key.to_owned(), expected, found });
    }
    Ok(())
}

/// `llama_token_attr` for a GGUF `token_type` value (`LLAMA_TOKEN_TYPE_*`).
fn attr_from_type(t: i32) -> u16 {
    match t {
        1 => attr::NORMAL,
        2 => attr::UNKNOWN,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        5 => attr::UNUSED,
        6 => attr::BYTE,
        _ => attr::UNDEFINED,
    }
}

/// The vocab type llama.cpp picks from `tokenizer.ggml.model`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum VocabType {
    /// `LLAMA_VOCAB_TYPE_SPM`.
    Spm,
    /// `LLAMA_VOCAB_TYPE_BPE`.
    Bpe,
    /// `LLAMA_VOCAB_TYPE_WPM`.
    Wpm,
}

/// Type-level flags before metadata overrides (llama.cpp's members of `llama_vocab::impl`).
struct TypeDefaults {
    slots: Slots,
    add_space_prefix: bool,
    add_bos: bool,
    clean_spaces: bool,
}

pub(super) fn from_gguf(f: &GgufFile) -> Result<Tokenizer, TokenizerError> {
    let model_name = opt_str(f, KEY_MODEL)?.ok_or_else(|| TokenizerError::MissingKey { key: KEY_MODEL.to_owned() })?;
    let stored_pre = opt_str(f, KEY_PRE)?.unwrap_or("");
    let (vtype, pre) = match model_name {
        "llama" => (VocabType::Spm, None),
        "bert" => (VocabType::Wpm, None),
        "gpt2" | "gemma4" => {
            // The gemma4 model type forces its own pre-tokenizer.
            let pre_name = if model_name == "gemma4" { "gemma4" } else { stored_pre };
            let cfg = PreConfig::from_gguf_name(pre_name).ok_or_else(|| TokenizerError::UnsupportedPre {
                pre: pre_name.to_owned(),
                model: model_name.to_owned(),
                supported: SUPPORTED_PRE_NAMES.join(", "),
            })?;
            (VocabType::Bpe, Some(cfg))
        }
        _ => return Err(TokenizerError::UnsupportedModel { model: model_name.to_owned(), pre: stored_pre.to_owned(), supported: SUPPORTED_MODELS.join(", ") }),
    };

    let mut defaults = type_defaults(vtype, model_name, pre.as_ref());
    // Merges are read (and required) first, as in llama.cpp.
    let merges = match vtype {
        VocabType::Bpe => Some(str_array(f, KEY_MERGES)?.ok_or_else(|| TokenizerError::MissingKey { key: KEY_MERGES.to_owned() })?),
        VocabType::Spm | VocabType::Wpm => None,
    };
    if let Some(p) = opt_bool(f, KEY_ADD_PREFIX)? {
        defaults.add_space_prefix = p;
    }

    let raw_tokens = str_array(f, KEY_TOKENS)?.ok_or_else(|| TokenizerError::MissingKey { key: KEY_TOKENS.to_owned() })?;
    let n = raw_tokens.len();
    if n == 0 {
        return Err(TokenizerError::EmptyVocab);
    }
    if n >= u32::MAX as usize / 2 {
        return Err(TokenizerError::VocabTooLarge { n });
    }
    let scores = score_array(f, KEY_SCORES)?;
    if let Some(s) = &scores {
        check_len(KEY_SCORES, s.len(), n)?;
    }
    let types = i32_array(f, KEY_TOKEN_TYPE)?;
    if let Some(t) = &types {
        check_len(KEY_TOKEN_TYPE, t.len(), n)?;
    }

    let mut tokens = Vec::with_capacity(n);
    let mut token_to_id = TokenMap::with_capacity_and_hasher(n, Default::default());
    let mut attrs = Vec::with_capacity(n);
    for (i, &text) in raw_tokens.iter().enumerate() {
        // llama.cpp renames empty tokens so that they cannot match anything.
        let text = if text.is_empty() { format!("[EMPTY_{i}]") } else { text.to_owned() };
        if let Some(&first) = token_to_id.get(&text) {
            return Err(TokenizerError::DuplicateToken { text, first, second: i as u32 });
        }
        token_to_id.insert(text.clone(), i as u32);
        tokens.push(text);
        attrs.push(types.as_ref().map_or(attr::NORMAL, |t| attr_from_type(t[i])));
    }
    let scores = scores.map(|mut s| {
        s.truncate(n);
        s
    });

    // Special ids: type defaults, then metadata; ids outside the vocab are ignored.
    let mut slots = defaults.slots;
    for (key, slot) in SPECIAL_KEYS {
        let cur = &mut slots[slot as usize];
        if cur.is_some_and(|id| id as usize >= n) {
            *cur = None;
        }
        if let Some(id) = opt_id(f, key)? {
            if id < n as u64 {
                *cur = Some(id as u32);
            }
        }
    }
    let mut add_bos = opt_bool(f, KEY_ADD_BOS)?.unwrap_or(defaults.add_bos);
    let add_eos = opt_bool(f, KEY_ADD_EOS)?.unwrap_or(false);
    if pre.as_ref().is_some_and(|p| p.gemma4) {
        add_bos = true; // llama.cpp's "workaround for Gemma 4"
    }

    let eog = special::detect(&tokens, &token_to_id, &mut attrs, &mut slots);
    let special = special::special_cache(&tokens, &attrs);

    // Token-to-piece cache (llama.cpp builds it with special = true, before the per-model
    // attribute tweaks, which only touch LSTRIP/RSTRIP).
    let spm_style = vtype != VocabType::Bpe || pre.as_ref().is_some_and(|p| p.spm_style);
    let mut pieces = Vec::new();
    let mut piece_offsets = Vec::with_capacity(n + 1);
    piece_offsets.push(0u32);
    for i in 0..n {
        render_piece(&tokens[i], attrs[i], spm_style, &mut pieces);
        let end = u32::try_from(pieces.len()).map_err(|_| TokenizerError::VocabTooLarge { n })?;
        piece_offsets.push(end);
    }

    let names = ModelNames { name: opt_str(f, KEY_NAME)?.unwrap_or(""), pre: stored_pre, arch: opt_str(f, KEY_ARCH)?.unwrap_or("") };
    special::per_model_attrs(&names, &token_to_id, &special, &mut attrs);

    let model = match (vtype, pre, merges) {
        (VocabType::Bpe, Some(cfg), Some(merges)) => {
            let mut pairs = Vec::with_capacity(merges.len());
            for (index, m) in merges.iter().enumerate() {
                // "left right", split at the first space after the first byte (llama.cpp
                // `word.find(' ', 1)`), so a left part may itself be " ". llama.cpp keeps a
                // merge without such a space as a pair that never matches; we refuse the file.
                match m.bytes().skip(1).position(|b| b == b' ') {
                    Some(p) => pairs.push((&m[..p + 1], &m[p + 2..])),
                    None => return Err(TokenizerError::BadMerge { index, merge: (*m).to_owned() }),
                }
            }
            let mode = WordMode { byte_encode: !cfg.spm_style, ignore_merges: cfg.ignore_merges, newline_words_whole: cfg.gemma4 };
            Model::Bpe { merges: Merges::new(&token_to_id, n as u32, pairs.into_iter()), pre: cfg.kind, mode, escape_whitespaces: cfg.spm_style }
        }
        (VocabType::Wpm, _, _) => {
            // BertNormalizer options: strip_accents defaults to lowercase.
            let lowercase = opt_bool(f, KEY_LOWERCASE)?.unwrap_or(true);
            let strip_accents = opt_bool(f, KEY_STRIP_ACCENTS)?.unwrap_or(lowercase);
            Model::Wpm { max_token_len: tokens.iter().map(String::len).max().unwrap_or(0), lowercase, strip_accents }
        }
        _ => Model::Spm { scores: scores.unwrap_or_else(|| vec![0.0; n]), byte_tokens: spm_byte_tokens(&token_to_id) },
    };

    let bos = slots[Slot::Bos as usize];
    let eos = slots[Slot::Eos as usize];
    Ok(Tokenizer {
        tokens,
        attrs,
        token_to_id,
        pieces,
        piece_offsets,
        special,
        model,
        model_name: model_name.to_owned(),
        pre_name: stored_pre.to_owned(),
        // llama.cpp asserts that the id exists when it adds one; we report "no" instead.
        add_bos: add_bos && bos.is_some(),
        add_eos: add_eos && eos.is_some(),
        add_space_prefix: defaults.add_space_prefix,
        clean_spaces: defaults.clean_spaces,
        bos,
        eos,
        unk: slots[Slot::Unk as usize],
        sep: slots[Slot::Sep as usize],
        eog,
    })
}

/// llama.cpp's per-type defaults (special ids and flags) for `vtype`.
fn type_defaults(vtype: VocabType, model_name: &str, pre: Option<&PreConfig>) -> TypeDefaults {
    let mut slots: Slots = [None; N_SLOTS];
    match vtype {
        VocabType::Spm => {
            slots[Slot::Bos as usize] = Some(1);
            slots[Slot::Eos as usize] = Some(2);
            slots[Slot::Unk as usize] = Some(0);
            TypeDefaults { slots, add_space_prefix: true, add_bos: true, clean_spaces: false }
        }
        VocabType::Wpm => {
            slots[Slot::Bos as usize] = Some(101);
            slots[Slot::Unk as usize] = Some(100);
            slots[Slot::Sep as usize] = Some(102);
            slots[Slot::Pad as usize] = Some(0);
            slots[Slot::Mask as usize] = Some(103);
            TypeDefaults { slots, add_space_prefix: false, add_bos: true, clean_spaces: true }
        }
        VocabType::Bpe => {
            // gpt2 vocabs default BOS = EOS = 11; gemma4 reads every id from metadata.
            if model_name == "gpt2" {
                if !pre.is_some_and(|p| p.no_default_bos) {
                    slots[Slot::Bos as usize] = Some(11);
                }
                slots[Slot::Eos as usize] = Some(11);
            }
            TypeDefaults { slots, add_space_prefix: false, add_bos: pre.is_some_and(|p| p.add_bos), clean_spaces: pre.is_none_or(|p| p.clean_spaces) }
        }
    }
}

/// llama.cpp `byte_to_token` for SPM: `<0xXX>`, else the byte itself as a one-byte token
/// (only ASCII bytes can be one-byte UTF-8 strings).
fn spm_byte_tokens(token_to_id: &TokenMap) -> [Option<u32>; 256] {
    let mut t = [None; 256];
    for (b, slot) in t.iter_mut().enumerate() {
        *slot = token_to_id.get(&format!("<0x{b:02X}>")).copied().or_else(|| {
            let c = char::from(b as u8);
            (b < 0x80).then(|| token_to_id.get(c.encode_utf8(&mut [0; 4]) as &str).copied())?
        });
    }
    t
}
