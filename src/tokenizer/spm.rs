//! SentencePiece-style (`tokenizer.ggml.model = llama`) merging of one text fragment, mirroring
//! llama.cpp's `llm_tokenizer_spm_session::tokenize` (src/llama-vocab.cpp).
//!
//! Starts from one symbol per UTF-8 character and repeatedly merges the adjacent pair whose
//! concatenation is the vocab token with the highest score (ties: leftmost pair); characters
//! that end up in no token are emitted as byte-fallback tokens `<0xXX>`. Knows nothing of
//! special tokens, the space prefix or whitespace escaping (the caller applies those).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::hash::TokenMap;

/// The vocabulary facts SPM merging needs.
pub(crate) struct SpmVocab<'a> {
    pub(crate) token_to_id: &'a TokenMap,
    pub(crate) scores: &'a [f32],
    /// Token of each byte for byte fallback (`<0xXX>`, else the one-byte string itself).
    pub(crate) byte_tokens: &'a [Option<u32>; 256],
    /// Emitted for a byte without a token (llama.cpp throws there; we stay total).
    pub(crate) unk: Option<u32>,
}

#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
}

const NONE: u32 = u32::MAX;

/// A candidate merge: llama.cpp's `llm_bigram_spm`, ordered so that the heap pops the highest
/// score first and, among equal scores, the leftmost pair.
struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        // `total_cmp` only differs from llama.cpp's `<` for NaN scores, whose order there is
        // unspecified anyway.
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}

/// Appends the token ids of `text` (already space-prefixed and with spaces escaped as U+2581)
/// to `out`.
pub(crate) fn encode(vocab: &SpmVocab, text: &str, out: &mut Vec<u32>) {
    if text.is_empty() {
        return;
    }
    let bytes = text.as_bytes();
    let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
    for (i, (start, c)) in text.char_indices().enumerate() {
        let len = c.len_utf8() as u32;
        syms.push(Sym {
            start: start as u32,
            len,
            prev: if i == 0 { NONE } else { i as u32 - 1 },
            next: if start + len as usize == text.len() { NONE } else { i as u32 + 1 },
        });
    }
    let token_of = |s: &Sym, t: &Sym| -> Option<(u32, u32)> {
        let (a, b) = (s.start as usize, (t.start + t.len) as usize);
        // Symbols are contiguous, so the pair's text is one slice of `text`.
        let joined = std::str::from_utf8(&bytes[a..b]).ok()?;
        vocab.token_to_id.get(joined).map(|&id| (id, (b - a) as u32))
    };
    let mut heap = BinaryHeap::new();
    let push = |heap: &mut BinaryHeap<Bigram>, syms: &[Sym], l: u32, r: u32| {
        if l == NONE || r == NONE {
            return;
        }
        if let Some((id, size)) = token_of(&syms[l as usize], &syms[r as usize]) {
            let score = vocab.scores.get(id as usize).copied().unwrap_or(0.0);
            heap.push(Bigram { score, left: l, right: r, size });
        }
    };
    for i in 1..syms.len() as u32 {
        push(&mut heap, &syms, i - 1, i);
    }
    while let Some(b) = heap.pop() {
        let (l, r) = (b.left as usize, b.right as usize);
        // Skip bigrams made stale by an earlier merge of either symbol.
        if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != b.size {
            continue;
        }
        syms[l].len += syms[r].len;
        syms[r].len = 0;
        let next = syms[r].next;
        syms[l].next = next;
        if next != NONE {
            syms[next as usize].prev = b.left;
        }
        let prev = syms[l].prev;
        push(&mut heap, &syms, prev, b.left);
        push(&mut heap, &syms, b.left, next);
    }

    let mut i = 0;
    while i != NONE {
        let s = syms[i as usize];
        let piece = &text[s.start as usize..(s.start + s.len) as usize];
        match vocab.token_to_id.get(piece) {
            Some(&id) => out.push(id),
            // Every merged symbol is a token, so this is one character outside the vocab.
            // (llama.cpp's `rev_merge` re-segmentation can only apply to merged symbols.)
            None => {
                for &byte in piece.as_bytes() {
                    if let Some(id) = vocab.byte_tokens[byte as usize].or(vocab.unk) {
                        out.push(id);
                    }
                }
            }
        }
        i = s.next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(tokens: &[(&str, f32)]) -> (TokenMap, Vec<f32>) {
        let mut map = TokenMap::default();
        let mut scores = Vec::new();
        for (i, (t, s)) in tokens.iter().enumerate() {
            map.insert(t.to_string(), i as u32);
            scores.push(*s);
        }
        (map, scores)
    }

    fn run(tokens: &[(&str, f32)], text: &str) -> Vec<u32> {
        let (map, scores) = vocab(tokens);
        let mut bytes = [None; 256];
        bytes[0xE2] = Some(100);
        bytes[0x82] = Some(101);
        bytes[0xAC] = Some(102);
        let v = SpmVocab { token_to_id: &map, scores: &scores, byte_tokens: &bytes, unk: None };
        let mut out = Vec::new();
        encode(&v, text, &mut out);
        out
    }

    #[test]
    fn highest_score_merges_first() {
        let t = [("a", 0.0), ("b", 0.0), ("c", 0.0), ("ab", -1.0), ("bc", -2.0), ("abc", -3.0)];
        assert_eq!(run(&t, "abc"), [5]);
        let t = [("a", 0.0), ("b", 0.0), ("c", 0.0), ("ab", -2.0), ("bc", -1.0)];
        assert_eq!(run(&t, "abc"), [0, 4]);
    }

    #[test]
    fn equal_scores_merge_leftmost_first() {
        let t = [("a", 0.0), ("aa", -1.0)];
        assert_eq!(run(&t, "aaa"), [1, 0]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes() {
        let t = [("a", 0.0)];
        assert_eq!(run(&t, "a€"), [0, 100, 101, 102]);
    }
}
