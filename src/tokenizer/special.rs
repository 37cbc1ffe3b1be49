//! Special tokens as llama.cpp's `llama_vocab::impl::load` derives them: the special-id slots
//! (BOS, EOS, EOT, FIM, ...) with their per-type defaults and metadata overrides, the tokens it
//! recognises by text (making them CONTROL), the end-of-generation set, the `unused` marking,
//! and the per-model attribute tweaks (phi-3's RSTRIP, jina/nomic's `<mask>` LSTRIP).
//!
//! Works on token texts and attributes already read from metadata; does no I/O and never
//! fails on odd vocabularies (missing tokens are skipped where llama.cpp would throw).

use std::collections::BTreeSet;

use super::attr;
use super::hash::TokenMap;

/// Special-token slots in llama.cpp's `special_token_types` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
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
pub(crate) const N_SLOTS: usize = 14;

/// `(key, slot)` in llama.cpp's order; the deprecated prefix/suffix/middle keys
/// come last and so win over fim_pre/suf/mid when both are present.
pub(crate) const SPECIAL_KEYS: [(&str, Slot); 17] = [
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

/// The special-id slots after metadata overrides.
pub(crate) type Slots = [Option<u32>; N_SLOTS];

/// Applies llama.cpp's text-based detection, `unused` marking and EOG rules to `attrs`, and
/// returns the sorted end-of-generation ids. `slots` are updated with detected ids.
pub(crate) fn detect(tokens: &[String], token_to_id: &TokenMap, attrs: &mut [u16], slots: &mut Slots) -> Vec<u32> {
    // Every rule names token texts, so each is a lookup rather than a scan of the vocab.
    let ids_of = |texts: &[&str]| -> Vec<u32> {
        let mut ids: Vec<u32> = texts.iter().filter_map(|t| token_to_id.get(*t).copied()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    // Text-based detection for slots still empty. llama.cpp walks an
    // unordered_map, so with several candidates its pick is unspecified; we
    // take the lowest id. Either way the token becomes CONTROL.
    for (slot, texts) in TEXT_DETECTED {
        if slots[slot as usize].is_some() {
            continue;
        }
        if let Some(&id) = ids_of(texts).first() {
            slots[slot as usize] = Some(id);
            attrs[id as usize] |= attr::CONTROL;
        }
    }
    // "auto-detect unused tokens": control tokens whose text contains "unused".
    for (a, t) in attrs.iter_mut().zip(tokens) {
        if *a & attr::CONTROL != 0 && t.contains("unused") {
            *a |= attr::UNUSED;
        }
    }

    let mut eog: BTreeSet<u32> = BTreeSet::new();
    for slot in [Slot::FimPad, Slot::FimRep, Slot::FimSep] {
        eog.extend(slots[slot as usize]);
    }
    for id in ids_of(EOG_TEXTS) {
        eog.insert(id);
        attrs[id as usize] |= attr::CONTROL;
    }
    // "quick hack for gpt-oss, always render these tokens"
    for id in ids_of(&["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"]) {
        attrs[id as usize] = attr::USER_DEFINED;
    }
    for slot in [Slot::Eos, Slot::Eot, Slot::Eom] {
        eog.extend(slots[slot as usize]);
    }
    let find_eog = |eog: &BTreeSet<u32>, text: &str| token_to_id.get(text).copied().filter(|id| eog.contains(id));
    // o200k_harmony / solar-open: "<|end|>" is not EOG when "<|return|>"+"<|call|>"
    // (or "<|calls|>"+"<|flush|>") are present.
    let has_call = find_eog(&eog, "<|call|>").is_some() || find_eog(&eog, "<|calls|>").is_some();
    let has_ret_or_flush = find_eog(&eog, "<|return|>").is_some() || find_eog(&eog, "<|flush|>").is_some();
    if let (true, true, Some(end)) = (has_call, has_ret_or_flush, find_eog(&eog, "<|end|>")) {
        eog.remove(&end);
        attrs[end as usize] = attr::USER_DEFINED;
    }
    // gemma4 / plamo: "</s>" is a normal token there.
    let s_marker = find_eog(&eog, "<|tool_response>").is_some() || find_eog(&eog, "<|plamo:eos|>").is_some();
    if let (true, Some(s)) = (s_marker, find_eog(&eog, "</s>")) {
        eog.remove(&s);
        attrs[s as usize] = attr::NORMAL;
    }
    eog.into_iter().collect()
}

/// Ids of control / user-defined / unknown tokens, longest text first: the order in which
/// llama.cpp splits special tokens out of the text. llama.cpp uses an unstable sort; ties
/// (equal lengths) cannot both match at one position, so the order among them only matters
/// for overlapping matches; we break ties by id to stay deterministic.
pub(crate) fn special_cache(tokens: &[String], attrs: &[u16]) -> Vec<u32> {
    let mut special: Vec<u32> = (0..tokens.len() as u32).filter(|&i| attrs[i as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0).collect();
    special.sort_by(|&a, &b| {
        let (la, lb) = (tokens[a as usize].len(), tokens[b as usize].len());
        lb.cmp(&la).then(a.cmp(&b))
    });
    special
}

/// What llama.cpp's per-model attribute tweaks key on.
pub(crate) struct ModelNames<'a> {
    /// `general.name`, any case.
    pub(crate) name: &'a str,
    /// `tokenizer.ggml.pre` as stored (empty when absent).
    pub(crate) pre: &'a str,
    /// `general.architecture` (empty when absent).
    pub(crate) arch: &'a str,
}

/// llama.cpp's "set attributes by model/tokenizer/architecture name" step, applied after the
/// special cache is built. Tokens it names that are absent from the vocab are skipped (llama.cpp
/// throws from `token_to_id.at`).
pub(crate) fn per_model_attrs(names: &ModelNames, token_to_id: &TokenMap, special: &[u32], attrs: &mut [u16]) {
    let name = names.name.to_ascii_lowercase();
    let contains_any = |s: &str, subs: &[&str]| subs.iter().any(|x| s.contains(x));
    let set = |attrs: &mut [u16], text: &str, bit: u16, on: bool| {
        if let Some(&id) = token_to_id.get(text) {
            let a = &mut attrs[id as usize];
            *a = if on { *a | bit } else { *a & !bit };
        }
    };
    if contains_any(names.pre, &["jina-v2-de", "jina-v2-es", "jina-v2-code"]) || contains_any(names.arch, &["nomic-bert-moe", "jina-bert-v3"]) {
        set(attrs, "<mask>", attr::LSTRIP, true);
    } else if contains_any(&name, &["phi-3", "phi3"]) {
        for &id in special {
            attrs[id as usize] |= attr::RSTRIP;
        }
        set(attrs, "</s>", attr::RSTRIP, true);
        for text in ["<unk>", "<s>", "<|endoftext|>"] {
            set(attrs, text, attr::RSTRIP, false);
        }
    } else if name.contains("modern-bert") {
        set(attrs, "[MASK]", attr::LSTRIP, true);
    }
}
