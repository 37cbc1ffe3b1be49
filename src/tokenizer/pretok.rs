//! Pre-tokenization: splits a text fragment into the words that BPE then merges,
//! exactly as llama.cpp's `unicode_regex_split` does for the `smollm` and `gpt-2`
//! pre-tokenizers, plus GPT-2's byte-to-unicode map.
//!
//! Pure functions over `&str`; no vocabulary knowledge. Character classes come
//! from llama.cpp's own tables (`unicode_data.rs`), not Rust's, because a class
//! mismatch on a single codepoint changes the token ids.

use std::ops::Range;

use super::unicode_data::{LETTER_RANGES, NUMBER_RANGES, WHITESPACE};

/// Which llama.cpp regex list (`llm_tokenizer_bpe` in src/llama-vocab.cpp) to mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PreKind {
    /// `LLAMA_VOCAB_PRE_TYPE_SMOLLM` (and starcoder, refact, codeshell):
    /// `"\p{N}"` first, so every digit is its own word, then the GPT-2 regex.
    Smollm,
    /// `LLAMA_VOCAB_PRE_TYPE_GPT2`: the GPT-2 regex alone.
    Gpt2,
}

impl PreKind {
    /// Maps a `tokenizer.ggml.pre` value to the regex list llama.cpp uses for it.
    /// Only names whose llama.cpp `pre_type` has exactly one of our two regex
    /// lists and no other tokenization flag (ignore_merges, add_sep, ...) are accepted.
    pub(crate) fn from_gguf_name(pre: &str) -> Option<PreKind> {
        match pre {
            "smollm" | "starcoder" | "refact" | "codeshell" => Some(PreKind::Smollm),
            "gpt-2" | "phi-2" | "mpt" | "olmo" => Some(PreKind::Gpt2),
            _ => None,
        }
    }
}

/// The subset of llama.cpp's `unicode_cpt_flags` that the GPT-2 splitter reads.
/// Every codepoint below 0x110000 has some category in llama.cpp's table, so
/// "not letter/number/whitespace" is [`Class::Other`], never "no flags".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Letter,
    Number,
    Whitespace,
    Other,
}

fn in_ranges(ranges: &[(u32, u32)], cp: u32) -> bool {
    let i = ranges.partition_point(|&(_, last)| last < cp);
    i < ranges.len() && ranges[i].0 <= cp
}

/// llama.cpp's classification of `c` (`unicode_cpt_flags_from_cpt`).
pub(crate) fn class(c: char) -> Class {
    let cp = c as u32;
    if cp < 0x80 {
        // Fast path; `tests::ascii_fast_path_matches_tables` checks it against the tables.
        return match cp as u8 {
            b'0'..=b'9' => Class::Number,
            b'A'..=b'Z' | b'a'..=b'z' => Class::Letter,
            b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ' => Class::Whitespace,
            _ => Class::Other,
        };
    }
    class_from_tables(cp)
}

fn class_from_tables(cp: u32) -> Class {
    // Whitespace is a separate flag in llama.cpp; no whitespace codepoint is
    // also a letter or number, so checking it first is order-independent.
    if WHITESPACE.binary_search(&cp).is_ok() {
        Class::Whitespace
    } else if in_ranges(LETTER_RANGES, cp) {
        Class::Letter
    } else if in_ranges(NUMBER_RANGES, cp) {
        Class::Number
    } else {
        Class::Other
    }
}

/// Appends to `out` the byte ranges (into `text`) of the words of `text`.
/// Words are non-empty, contiguous and cover `text` exactly.
pub(crate) fn split_words(kind: PreKind, text: &str, out: &mut Vec<Range<usize>>) {
    if text.is_empty() {
        return;
    }
    // Codepoints with their byte offsets; llama.cpp works on codepoint indices.
    let mut offs: Vec<usize> = Vec::with_capacity(text.len() + 1);
    let mut chars: Vec<char> = Vec::with_capacity(text.len());
    let mut classes: Vec<Class> = Vec::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        offs.push(i);
        chars.push(c);
        classes.push(class(c));
    }
    offs.push(text.len());
    let n = chars.len();

    let mut push = |a: usize, b: usize| out.push(offs[a]..offs[b]);
    match kind {
        PreKind::Gpt2 => split_gpt2(&chars, &classes, 0, n, &mut push),
        PreKind::Smollm => {
            // Regex "\p{N}" (llama.cpp runs it through std::regex on a "collapsed"
            // text where every non-ASCII number codepoint becomes one marker byte):
            // each number codepoint is a segment of its own, and the text between
            // matches forms segments too. The GPT-2 regex then runs inside each
            // segment, never across a boundary.
            let mut seg_start = 0;
            for i in 0..n {
                if classes[i] == Class::Number {
                    if seg_start < i {
                        split_gpt2(&chars, &classes, seg_start, i, &mut push);
                    }
                    push(i, i + 1);
                    seg_start = i + 1;
                }
            }
            if seg_start < n {
                split_gpt2(&chars, &classes, seg_start, n, &mut push);
            }
        }
    }
}

/// llama.cpp's hand-written `unicode_regex_split_custom_gpt2` over codepoints
/// `[ini, end)`, for the regex
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`
/// (its code, not the regex, is the reference: e.g. contractions are
/// case-sensitive, and lookups past `end` see "no codepoint").
fn split_gpt2(
    chars: &[char],
    classes: &[Class],
    ini: usize,
    end: usize,
    push: &mut impl FnMut(usize, usize),
) {
    // `None` plays the role of llama.cpp's OUT_OF_RANGE / empty flags.
    let class_at = |p: usize| if p < end { Some(classes[p]) } else { None };
    let mut pos = ini;
    while pos < end {
        let c = chars[pos];
        let start = pos;

        // 's|'t|'re|'ve|'m|'ll|'d
        if c == '\'' && pos + 1 < end {
            let next = chars[pos + 1];
            if matches!(next, 's' | 't' | 'm' | 'd') {
                pos += 2;
                push(start, pos);
                continue;
            }
            if pos + 2 < end {
                let next2 = chars[pos + 2];
                if matches!((next, next2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                    pos += 3;
                    push(start, pos);
                    continue;
                }
            }
        }

        // An optional leading space joins the following letter/number/other run.
        let space = c == ' ';
        let class2 = if space {
            class_at(pos + 1)
        } else {
            Some(classes[pos])
        };
        let run = match class2 {
            Some(Class::Letter) => Some(Class::Letter),
            Some(Class::Number) => Some(Class::Number),
            Some(Class::Other) => Some(Class::Other),
            _ => None,
        };
        if let Some(run) = run {
            pos += usize::from(space);
            while class_at(pos) == Some(run) {
                pos += 1;
            }
            push(start, pos);
            continue;
        }

        let mut n_ws = 0;
        while class_at(pos + n_ws) == Some(Class::Whitespace) {
            n_ws += 1;
        }
        if n_ws > 1 && pos + n_ws < end {
            // \s+(?!\S): leave the last whitespace to prefix the next word.
            pos += n_ws - 1;
        } else if n_ws > 0 {
            pos += n_ws; // \s+
        } else {
            pos += 1; // no match (unreachable with llama.cpp's tables; mirrored anyway)
        }
        push(start, pos);
    }
}

/// GPT-2's `bytes_to_unicode`: byte `b` is written as this char inside
/// byte-level BPE tokens (llama.cpp `unicode_byte_to_utf8_map`).
pub(crate) static BYTE_TO_CHAR: [char; 256] = byte_to_char_table();

const fn byte_is_printable(b: u32) -> bool {
    (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
}

const fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    let mut b = 0u32;
    while b < 256 {
        let cp = if byte_is_printable(b) {
            b
        } else {
            n += 1;
            255 + n
        };
        table[b as usize] = match char::from_u32(cp) {
            Some(c) => c,
            None => panic!("byte map codepoint out of range"),
        };
        b += 1;
    }
    table
}

/// Inverse of [`BYTE_TO_CHAR`] (llama.cpp `unicode_utf8_to_byte`); `None` for
/// chars that no byte maps to.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 && byte_is_printable(cp) {
        return Some(cp as u8);
    }
    if (256..256 + 68).contains(&cp) {
        // The (cp-256)-th non-printable byte, in increasing byte order.
        let k = cp - 256;
        let mut seen = 0;
        for b in 0..256u32 {
            if !byte_is_printable(b) {
                if seen == k {
                    return Some(b as u8);
                }
                seen += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(kind: PreKind, s: &str) -> Vec<&str> {
        let mut r = Vec::new();
        split_words(kind, s, &mut r);
        r.into_iter().map(|x| &s[x]).collect()
    }

    #[test]
    fn ascii_fast_path_matches_tables() {
        for cp in 0u32..0x80 {
            let c = char::from_u32(cp).unwrap();
            assert_eq!(class(c), class_from_tables(cp), "codepoint {cp:#x}");
        }
    }

    #[test]
    fn byte_map_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(BYTE_TO_CHAR[b as usize]), Some(b));
        }
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(char_to_byte('€'), None);
    }

    #[test]
    fn gpt2_splits_like_llama_cpp() {
        assert_eq!(words(PreKind::Gpt2, "Hello world"), ["Hello", " world"]);
        assert_eq!(
            words(PreKind::Gpt2, "don't HE'S"),
            ["don", "'t", " HE", "'", "S"]
        );
        assert_eq!(words(PreKind::Gpt2, "a   b"), ["a", "  ", " b"]);
        assert_eq!(words(PreKind::Gpt2, "a  "), ["a", "  "]);
        assert_eq!(words(PreKind::Gpt2, "x 123!!"), ["x", " 123", "!!"]);
        assert_eq!(words(PreKind::Gpt2, "\n\nhi"), ["\n", "\n", "hi"]);
    }

    #[test]
    fn smollm_isolates_every_digit() {
        assert_eq!(words(PreKind::Smollm, "x 123"), ["x", " ", "1", "2", "3"]);
        assert_eq!(words(PreKind::Smollm, "3.14"), ["3", ".", "1", "4"]);
        assert_eq!(words(PreKind::Smollm, "²½"), ["²", "½"]);
        assert_eq!(words(PreKind::Smollm, ""), Vec::<&str>::new());
    }
}
