//! WordPiece (`tokenizer.ggml.model = bert`) tokenization of one text fragment, mirroring
//! llama.cpp's `llm_tokenizer_wpm_session` (src/llama-vocab.cpp): BERT-style normalization
//! (optional lower-casing and accent stripping through llama.cpp's NFD base map), splitting at
//! whitespace, punctuation, ASCII symbols and CJK ideographs, then greedy longest-match of
//! `▁word` against the vocabulary, with UNK for a word that cannot be covered.
//!
//! Knows nothing of special tokens, BOS/SEP adding or decoding.

use super::hash::TokenMap;
use super::unicode::{nfd_base, to_lower, Flags};

/// llama.cpp's `normalizer_options` and the vocabulary facts WordPiece needs.
pub(crate) struct WpmVocab<'a> {
    pub(crate) token_to_id: &'a TokenMap,
    /// Longest token text in bytes (llama.cpp `max_token_len`).
    pub(crate) max_token_len: usize,
    pub(crate) lowercase: bool,
    pub(crate) strip_accents: bool,
    pub(crate) unk: Option<u32>,
}

/// llama.cpp's `is_chinese_char` (its ranges, including the one it copies from Hugging Face's
/// Rust code, 0x2B920 rather than 0x2B820).
fn is_chinese_char(cp: u32) -> bool {
    matches!(cp,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B920..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// The words of `text` after normalization (llama.cpp `preprocess`).
fn words(vocab: &WpmVocab, text: &str) -> Vec<String> {
    let mut words = vec![String::new()];
    for c in text.chars() {
        let mut cp = c as u32;
        if vocab.strip_accents {
            cp = nfd_base(cp);
        }
        // The NFD base of a valid char is a valid char; fall back to the original otherwise.
        let c = char::from_u32(cp).unwrap_or(c);
        let f = Flags::of(c);
        if f.is_whitespace() {
            if !words.last().is_some_and(String::is_empty) {
                words.push(String::new());
            }
            continue;
        }
        if cp == 0 || cp == 0xFFFD || f.is_control() {
            continue;
        }
        if vocab.strip_accents && f.is_mark() {
            continue;
        }
        let c = if vocab.lowercase { char::from_u32(to_lower(cp)).unwrap_or(c) } else { c };
        if f.is_punctuation() || (cp < 0x7F && f.is_symbol()) || is_chinese_char(cp) {
            if !words.last().is_some_and(String::is_empty) {
                words.push(String::new());
            }
            if let Some(last) = words.last_mut() {
                last.push(c);
            }
            words.push(String::new());
        } else if let Some(last) = words.last_mut() {
            last.push(c);
        }
    }
    if words.last().is_some_and(String::is_empty) {
        words.pop();
    }
    words
}

/// Appends the token ids of `text` to `out`.
pub(crate) fn encode(vocab: &WpmVocab, text: &str, out: &mut Vec<u32>) {
    for word in words(vocab, text) {
        if word.is_empty() {
            continue;
        }
        let word = format!("\u{2581}{word}");
        let bytes = word.as_bytes();
        let n = bytes.len();
        let start_len = out.len();
        let mut i = 0;
        while i < n {
            // Longest match first, over byte lengths as llama.cpp does; a slice that is not
            // valid UTF-8 cannot be a token.
            let longest = n.min(i + vocab.max_token_len + 1);
            let found = (i + 1..=longest).rev().find_map(|j| {
                let piece = std::str::from_utf8(&bytes[i..j]).ok()?;
                vocab.token_to_id.get(piece).map(|&id| (id, j))
            });
            match found {
                Some((id, j)) => {
                    out.push(id);
                    i = j;
                }
                None => {
                    out.truncate(start_len); // discard the whole word
                    break;
                }
            }
        }
        if out.len() == start_len {
            out.extend(vocab.unk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_splits_like_bert() {
        let map = TokenMap::default();
        let v = WpmVocab { token_to_id: &map, max_token_len: 8, lowercase: true, strip_accents: true, unk: None };
        assert_eq!(words(&v, " Héllo,  WORLD!我想 a$b "), ["hello", ",", "world", "!", "我", "想", "a", "$", "b"]);
        let v = WpmVocab { lowercase: false, strip_accents: false, ..v };
        assert_eq!(words(&v, "Héllo"), ["Héllo"]);
    }

    #[test]
    fn greedy_longest_match_with_unk_for_uncovered_words() {
        let mut map = TokenMap::default();
        for (i, t) in ["[UNK]", "▁hel", "▁hello", "lo", "▁x"].iter().enumerate() {
            map.insert(t.to_string(), i as u32);
        }
        let v = WpmVocab { token_to_id: &map, max_token_len: 8, lowercase: true, strip_accents: true, unk: Some(0) };
        let mut out = Vec::new();
        encode(&v, "hello helo x", &mut out);
        // "▁helo": "▁hel" then "o" has no token, so the word becomes UNK.
        assert_eq!(out, [2, 0, 4]);
    }
}
