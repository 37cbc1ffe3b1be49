//! Builds a [`Tokenizer`] from GGUF metadata, mirroring `llama_vocab::impl::load`
//! (src/llama-vocab.cpp) for `tokenizer.ggml.model = gpt2`: token attributes,
//! special ids and their defaults, text-detected EOT/FIM tokens, the EOG set,
//! the special-token cache and the token-to-piece cache.
//!
//! Reads only `tokenizer.*` metadata of the given file (works on vocab-only
//! files); does no I/O itself.

use std::collections::{BTreeSet, HashMap};

use super::bpe::Merges;
use super::pretok::{char_to_byte, PreKind};
use super::{attr, Tokenizer, TokenizerError};
use crate::gguf::{GgufFile, MetadataValue};

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";

/// Special-token slots in llama.cpp's `special_token_types` order.
#[derive(Clone, Copy)]
enum Slot {
    Bos,
    Eos,
    Eot,
    Eom,
    Unk,
    Sep,
    Pad,
    Mask,
    FimPre,
    FimSuf,
    FimMid,
    FimPad,
    FimRep,
    FimSep,
}
const N_SLOTS: usize = 14;

/// `(key, slot)` in llama.cpp's order; the deprecated prefix/suffix/middle keys
/// come last and so win over fim_pre/suf/mid when both are present.
const SPECIAL_KEYS: [(&str, Slot); 17] = [
    ("tokenizer.ggml.bos_token_id", Slot::Bos),
    ("tokenizer.ggml.eos_token_id", Slot::Eos),
    ("tokenizer.ggml.eot_token_id", Slot::Eot),
    ("tokenizer.ggml.eom_token_id", Slot::Eom),
    ("tokenizer.ggml.unknown_token_id", Slot::Unk),
    ("tokenizer.ggml.seperator_token_id", Slot::Sep), // sic, as in llama-arch.cpp
    ("tokenizer.ggml.padding_token_id", Slot::Pad),
    ("tokenizer.ggml.mask_token_id", Slot::Mask),
    ("tokenizer.ggml.fim_pre_token_id", Slot::FimPre),
    ("tokenizer.ggml.fim_suf_token_id", Slot::FimSuf),
    ("tokenizer.ggml.fim_mid_token_id", Slot::FimMid),
    ("tokenizer.ggml.fim_pad_token_id", Slot::FimPad),
    ("tokenizer.ggml.fim_rep_token_id", Slot::FimRep),
    ("tokenizer.ggml.fim_sep_token_id", Slot::FimSep),
    ("tokenizer.ggml.prefix_token_id", Slot::FimPre),
    ("tokenizer.ggml.suffix_token_id", Slot::FimSuf),
    ("tokenizer.ggml.middle_token_id", Slot::FimMid),
];

/// Token texts llama.cpp recognises when the slot has no id from metadata.
#[rustfmt::skip]
const TEXT_DETECTED: [(Slot, &[&str]); 8] = [
    (
        Slot::Eot,
        &[
            "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
            "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
            "<end_of_utterance>",
        ],
    ),
    (Slot::Eom, &["<|eom_id|>"]),
    (
        Slot::FimPre,
        &[
            "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
            "▁<PRE>", "<|code_prefix|>", "<|prefix|>",
        ],
    ),
    (
        Slot::FimSuf,
        &[
            "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
            "▁<SUF>", "<|code_suffix|>", "<|suffix|>",
        ],
    ),
    (
        Slot::FimMid,
        &[
            "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
            "▁<MID>", "<|code_middle|>", "<|middle|>",
        ],
    ),
    (Slot::FimPad, &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"]),
    (
        Slot::FimRep,
        &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"],
    ),
    (Slot::FimSep, &["<|file_sep|>"]),
];

/// Token texts that end generation (llama.cpp's `special_eog_ids` text list).
#[rustfmt::skip]
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
];

fn wrong_type(key: &str, expected: &'static str, v: &MetadataValue) -> TokenizerError {
    let found = match v.as_array() {
        Some(items) => match items.iter().find(|x| x.type_name() != elem_name(expected)) {
            Some(bad) => format!("array of {}", bad.type_name()),
            None => "array".to_owned(),
        },
        None => v.type_name().to_owned(),
    };
    TokenizerError::WrongType {
        key: key.to_owned(),
        expected,
        found,
    }
}

fn elem_name(expected: &str) -> &str {
    expected.strip_prefix("array of ").unwrap_or("")
}

fn opt_str<'a>(f: &'a GgufFile, key: &str) -> Result<Option<&'a str>, TokenizerError> {
    match f.metadata(key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| wrong_type(key, "string", v)),
    }
}

fn opt_bool(f: &GgufFile, key: &str) -> Result<Option<bool>, TokenizerError> {
    match f.metadata(key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| wrong_type(key, "bool", v)),
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
    let items = v
        .as_array()
        .ok_or_else(|| wrong_type(key, "array of string", v))?;
    items
        .iter()
        .map(|x| {
            x.as_str()
                .ok_or_else(|| wrong_type(key, "array of string", v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn i32_array(f: &GgufFile, key: &str) -> Result<Option<Vec<i32>>, TokenizerError> {
    let Some(v) = f.metadata(key) else {
        return Ok(None);
    };
    let items = v
        .as_array()
        .ok_or_else(|| wrong_type(key, "array of i32", v))?;
    items
        .iter()
        .map(|x| match x {
            MetadataValue::I32(i) => Ok(*i),
            _ => Err(wrong_type(key, "array of i32", v)),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
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

pub(super) fn from_gguf(f: &GgufFile) -> Result<Tokenizer, TokenizerError> {
    let model = opt_str(f, KEY_MODEL)?.ok_or_else(|| TokenizerError::MissingKey {
        key: KEY_MODEL.to_owned(),
    })?;
    if model != "gpt2" {
        return Err(TokenizerError::UnsupportedModel {
            model: model.to_owned(),
        });
    }
    // llama.cpp falls back to its "default" regexes (with a loud warning)
    // when the key is absent; we do not implement those.
    let pre_name = opt_str(f, KEY_PRE)?.unwrap_or("default");
    let pre = PreKind::from_gguf_name(pre_name).ok_or_else(|| TokenizerError::UnsupportedPre {
        pre: pre_name.to_owned(),
    })?;

    let merges = str_array(f, KEY_MERGES)?.ok_or_else(|| TokenizerError::MissingKey {
        key: KEY_MERGES.to_owned(),
    })?;
    let raw_tokens = str_array(f, KEY_TOKENS)?.ok_or_else(|| TokenizerError::MissingKey {
        key: KEY_TOKENS.to_owned(),
    })?;
    let n = raw_tokens.len();
    if n == 0 {
        return Err(TokenizerError::EmptyVocab);
    }
    if n >= u32::MAX as usize / 2 {
        return Err(TokenizerError::VocabTooLarge { n });
    }
    let types = i32_array(f, KEY_TOKEN_TYPE)?;
    if let Some(t) = &types {
        if t.len() < n {
            return Err(TokenizerError::LengthMismatch {
                key: KEY_TOKEN_TYPE.to_owned(),
                expected: n,
                found: t.len(),
            });
        }
    }

    let mut tokens = Vec::with_capacity(n);
    let mut token_to_id: HashMap<String, u32> = HashMap::with_capacity(n);
    let mut attrs = Vec::with_capacity(n);
    for (i, &text) in raw_tokens.iter().enumerate() {
        // llama.cpp renames empty tokens so that they cannot match anything.
        let text = if text.is_empty() {
            format!("[EMPTY_{i}]")
        } else {
            text.to_owned()
        };
        if let Some(&first) = token_to_id.get(&text) {
            return Err(TokenizerError::DuplicateToken {
                text,
                first,
                second: i as u32,
            });
        }
        token_to_id.insert(text.clone(), i as u32);
        tokens.push(text);
        attrs.push(
            types
                .as_ref()
                .map_or(attr::NORMAL, |t| attr_from_type(t[i])),
        );
    }

    // Merges are "left right", split at the first space after the first byte
    // (llama.cpp `word.find(' ', 1)`), so a left part may itself be " ".
    let mut pairs = Vec::with_capacity(merges.len());
    for (index, m) in merges.iter().enumerate() {
        match m.bytes().skip(1).position(|b| b == b' ') {
            Some(p) => pairs.push((&m[..p + 1], &m[p + 2..])),
            None => {
                return Err(TokenizerError::BadMerge {
                    index,
                    merge: (*m).to_owned(),
                })
            }
        }
    }
    let bpe = Merges::new(&token_to_id, n as u32, pairs.into_iter());

    // Special ids: gpt2 defaults (bos = eos = 11, as llama.cpp sets for
    // "gpt2" models), then metadata; ids outside the vocab are ignored.
    let mut slots: [Option<u32>; N_SLOTS] = [None; N_SLOTS];
    slots[Slot::Bos as usize] = Some(11);
    slots[Slot::Eos as usize] = Some(11);
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
    let add_bos = opt_bool(f, KEY_ADD_BOS)?.unwrap_or(false);

    // Text-based detection for slots still empty. llama.cpp walks an
    // unordered_map, so with several candidates its pick is unspecified; we
    // take the lowest id. Either way the token becomes CONTROL.
    for (slot, texts) in TEXT_DETECTED {
        if slots[slot as usize].is_some() {
            continue;
        }
        if let Some(id) = (0..n).find(|&i| texts.contains(&tokens[i].as_str())) {
            slots[slot as usize] = Some(id as u32);
            attrs[id] |= attr::CONTROL;
        }
    }

    let mut eog: BTreeSet<u32> = BTreeSet::new();
    for slot in [Slot::FimPad, Slot::FimRep, Slot::FimSep] {
        eog.extend(slots[slot as usize]);
    }
    for (i, t) in tokens.iter().enumerate() {
        if EOG_TEXTS.contains(&t.as_str()) {
            eog.insert(i as u32);
            attrs[i] |= attr::CONTROL;
        }
    }
    // "quick hack for gpt-oss, always render these tokens"
    for (i, t) in tokens.iter().enumerate() {
        if matches!(
            t.as_str(),
            "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>"
        ) {
            attrs[i] = attr::USER_DEFINED;
        }
    }
    for slot in [Slot::Eos, Slot::Eot, Slot::Eom] {
        eog.extend(slots[slot as usize]);
    }
    let find_eog = |eog: &BTreeSet<u32>, text: &str| {
        eog.iter().copied().find(|&id| tokens[id as usize] == text)
    };
    // o200k_harmony / solar-open: "<|end|>" is not EOG when "<|return|>"+"<|call|>"
    // (or "<|calls|>"+"<|flush|>") are present.
    let has_call = find_eog(&eog, "<|call|>").is_some() || find_eog(&eog, "<|calls|>").is_some();
    let has_ret_or_flush =
        find_eog(&eog, "<|return|>").is_some() || find_eog(&eog, "<|flush|>").is_some();
    if let (true, true, Some(end)) = (has_call, has_ret_or_flush, find_eog(&eog, "<|end|>")) {
        eog.remove(&end);
        attrs[end as usize] = attr::USER_DEFINED;
    }
    // gemma4 / plamo: "</s>" is a normal token there.
    let s_marker =
        find_eog(&eog, "<|tool_response>").is_some() || find_eog(&eog, "<|plamo:eos|>").is_some();
    if let (true, Some(s)) = (s_marker, find_eog(&eog, "</s>")) {
        eog.remove(&s);
        attrs[s as usize] = attr::NORMAL;
    }

    // Special-token cache: longest text first. llama.cpp uses an unstable
    // std::sort; ties (equal lengths) cannot both match at one position, so
    // the order among them only matters for overlapping matches; we break
    // ties by id to stay deterministic.
    let mut special: Vec<u32> = (0..n as u32)
        .filter(|&i| attrs[i as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0)
        .collect();
    special.sort_by(|&a, &b| {
        let (la, lb) = (tokens[a as usize].len(), tokens[b as usize].len());
        lb.cmp(&la).then(a.cmp(&b))
    });

    // Token-to-piece cache (llama.cpp builds the same with special = true).
    let mut pieces = Vec::new();
    let mut piece_offsets = Vec::with_capacity(n + 1);
    piece_offsets.push(0u32);
    for i in 0..n {
        render_piece(&tokens[i], attrs[i], &mut pieces);
        piece_offsets.push(pieces.len() as u32);
    }

    Ok(Tokenizer {
        tokens,
        attrs,
        token_to_id,
        pieces,
        piece_offsets,
        special,
        bpe,
        pre,
        add_bos,
        bos: slots[Slot::Bos as usize],
        eos: slots[Slot::Eos as usize],
        eog: eog.into_iter().collect(),
    })
}

/// `llama_vocab::impl::token_to_piece(special = true)` for a BPE vocab.
fn render_piece(text: &str, a: u16, out: &mut Vec<u8>) {
    if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
        out.extend_from_slice(text.as_bytes());
    } else if a & attr::NORMAL != 0 {
        decode_byte_level(text, out);
    } else if a & attr::BYTE != 0 {
        out.push(byte_token_value(text));
    }
    // UNDEFINED / UNUSED-only tokens render as nothing.
}

/// llama.cpp `llama_decode_text`: undo the GPT-2 byte-to-unicode mapping. A
/// char outside the map becomes `[UNK_BYTE_0x<its utf-8 hex><whole text>]`,
/// verbatim from llama.cpp.
fn decode_byte_level(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

/// llama.cpp `token_to_byte` for BPE: `strtol(text.substr(3, 2), 16)`, i.e.
/// the hex digits at bytes 3..5 of `<0xAB>`; anything unparsable gives 0.
fn byte_token_value(text: &str) -> u8 {
    let bytes = text.as_bytes();
    let digits = bytes.get(3..bytes.len().min(5)).unwrap_or(&[]);
    let mut v: u32 = 0;
    for &d in digits {
        match (d as char).to_digit(16) {
            Some(x) => v = v * 16 + x,
            None => break,
        }
    }
    v as u8
}
