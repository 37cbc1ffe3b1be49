//! BPE merging of one pre-tokenized word, mirroring llama.cpp's
//! `llm_tokenizer_bpe_session::tokenize` (src/llama-vocab.cpp): byte-level words (GPT-2's byte
//! map, the usual case) and raw UTF-8 words (SentencePiece-style BPE such as Gemma 4, whose
//! byte fallback tokens are `<0xXX>`).
//!
//! Pure: builds a merge table from vocab/merge strings once, then encodes words
//! with no allocation beyond the caller's scratch buffers. Knows nothing about
//! GGUF, special tokens or pre-tokenization.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::byte_level::{encode_into, BYTE_TO_CHAR};
use super::hash::{FastMap, TokenMap};

/// Marks a symbol whose text is neither a vocab token nor a part of any merge.
const NO_SYM: u32 = u32::MAX;

/// Merge pair -> (rank, merged symbol); the rank lookup is the hot loop of encoding.
type PairMap = FastMap<(u32, u32), (u32, u32)>;

/// `(rank, left, right, left len, right len)`, smallest first: llama.cpp's
/// queue pops the lowest rank, ties to the leftmost pair.
type Queue = BinaryHeap<Reverse<(u32, u32, u32, u32, u32)>>;

/// Merge ranks keyed by a pair of symbol ids.
///
/// llama.cpp keys `bpe_ranks` by `(left string, right string)` and compares
/// strings in the loop; we intern every string once instead. Interned ids
/// below `n_vocab` are vocab ids; merge parts that are not vocab tokens get
/// ids from `n_vocab` up, so a merge whose result is not in the vocab still
/// happens (as in llama.cpp) and then falls back to byte tokens.
pub(crate) struct Merges {
    /// `(left id, right id) -> (rank, id of left+right)`.
    ranks: PairMap,
    /// Interned id of the one-char string `BYTE_TO_CHAR[b]`, or `NO_SYM`.
    byte_sym: [u32; 256],
    /// Vocab id of the one-char string `BYTE_TO_CHAR[b]` when that char is
    /// ASCII: llama.cpp's fallback for an unknown final symbol looks up each
    /// UTF-8 byte of it as a one-byte string, which only ASCII bytes can match.
    byte_fallback: [u32; 256],
    /// Vocab id of `<0xXX>` for byte `b`: the fallback of raw UTF-8 words.
    hex_byte: [u32; 256],
    /// Interned ids of merge parts that are not vocab tokens (raw words look symbols up here).
    extra: TokenMap,
    n_vocab: u32,
}

/// How words are turned into initial symbols, and what is tried before merging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WordMode {
    /// Words are GPT-2 byte-level encoded (one symbol per byte); else raw UTF-8 (one symbol
    /// per character, `<0xXX>` byte fallback).
    pub(crate) byte_encode: bool,
    /// A word that is itself a token is emitted whole (llama.cpp `ignore_merges`).
    pub(crate) ignore_merges: bool,
    /// Gemma 4: a word of newlines only that is a token is emitted whole.
    pub(crate) newline_words_whole: bool,
}

/// One symbol of the word being merged: bytes `start..start+len` of the word.
#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    len: u32,
    id: u32,
    prev: u32,
    next: u32,
}

/// Reusable buffers for [`Merges::encode_word`].
#[derive(Default)]
pub(crate) struct Scratch {
    syms: Vec<Sym>,
    heap: Queue,
    encoded: String,
}

impl Merges {
    /// Builds the table. `merges` are `(index, left, right)` as split by the
    /// caller; duplicates keep the first (lowest) rank like `bpe_ranks.emplace`.
    pub(crate) fn new<'a>(token_to_id: &TokenMap, n_vocab: u32, merges: impl Iterator<Item = (&'a str, &'a str)>) -> Merges {
        let mut extra = TokenMap::default();
        let intern = |s: &str, extra: &mut TokenMap| -> u32 {
            if let Some(&id) = token_to_id.get(s) {
                return id;
            }
            let next = n_vocab + extra.len() as u32;
            *extra.entry(s.to_owned()).or_insert(next)
        };
        let mut ranks = PairMap::default();
        let mut joined = String::new();
        for (rank, (left, right)) in merges.enumerate() {
            let l = intern(left, &mut extra);
            let r = intern(right, &mut extra);
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            let m = intern(&joined, &mut extra);
            ranks.entry((l, r)).or_insert((rank as u32, m));
        }
        let mut byte_sym = [NO_SYM; 256];
        let mut byte_fallback = [NO_SYM; 256];
        let mut hex_byte = [NO_SYM; 256];
        let mut buf = [0u8; 4];
        for b in 0..256 {
            hex_byte[b] = token_to_id.get(&format!("<0x{b:02X}>")).copied().unwrap_or(NO_SYM);
            let c = BYTE_TO_CHAR[b];
            let s: &str = c.encode_utf8(&mut buf);
            byte_sym[b] = token_to_id.get(s).or_else(|| extra.get(s)).copied().unwrap_or(NO_SYM);
            if c.is_ascii() {
                byte_fallback[b] = token_to_id.get(s).copied().unwrap_or(NO_SYM);
            }
        }
        Merges { ranks, byte_sym, byte_fallback, hex_byte, extra, n_vocab }
    }

    /// Number of distinct merge pairs.
    pub(crate) fn len(&self) -> usize {
        self.ranks.len()
    }

    fn rank(&self, l: u32, r: u32) -> Option<(u32, u32)> {
        if l == NO_SYM || r == NO_SYM {
            return None;
        }
        self.ranks.get(&(l, r)).copied()
    }

    /// Appends the token ids of one pre-tokenized word (raw UTF-8 bytes, before any byte-level
    /// encoding) to `out`. `token_to_id` is the vocabulary the table was built from.
    pub(crate) fn encode_word(&self, word: &str, mode: WordMode, token_to_id: &TokenMap, scratch: &mut Scratch, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        let whole = if mode.byte_encode {
            scratch.encoded.clear();
            encode_into(word.as_bytes(), &mut scratch.encoded);
            scratch.encoded.as_str()
        } else {
            word
        };
        let try_whole = mode.ignore_merges || (mode.newline_words_whole && word.bytes().all(|b| b == b'\n'));
        if try_whole {
            if let Some(&id) = token_to_id.get(whole) {
                out.push(id);
                return;
            }
        }
        // One symbol per character of the encoded word: for byte-level words that is one per
        // byte of the raw word (each byte maps to one char).
        let syms = &mut scratch.syms;
        syms.clear();
        if mode.byte_encode {
            let n = word.len();
            for (i, &b) in word.as_bytes().iter().enumerate() {
                syms.push(Sym {
                    start: i as u32,
                    len: 1,
                    id: self.byte_sym[b as usize],
                    prev: if i == 0 { NO_SYM } else { i as u32 - 1 },
                    next: if i + 1 == n { NO_SYM } else { i as u32 + 1 },
                });
            }
        } else {
            for (i, (start, c)) in word.char_indices().enumerate() {
                let len = c.len_utf8();
                let text = &word[start..start + len];
                syms.push(Sym {
                    start: start as u32,
                    len: len as u32,
                    id: self.sym_id(text, token_to_id),
                    prev: if i == 0 { NO_SYM } else { i as u32 - 1 },
                    next: if start + len == word.len() { NO_SYM } else { i as u32 + 1 },
                });
            }
        }
        self.merge(syms, &mut scratch.heap);
        for s in syms.iter().filter(|s| s.len > 0) {
            if s.id < self.n_vocab {
                out.push(s.id);
                continue;
            }
            // Not a vocab token: llama.cpp emits the token of each byte of the symbol that has
            // one, silently dropping the others. Byte-level symbols look up each UTF-8 byte of
            // their encoded text as a one-byte string (only ASCII chars can match); raw ones
            // look up `<0xXX>`.
            let bytes = &word.as_bytes()[s.start as usize..(s.start + s.len) as usize];
            let table = if mode.byte_encode { &self.byte_fallback } else { &self.hex_byte };
            out.extend(bytes.iter().map(|&b| table[b as usize]).filter(|&id| id != NO_SYM));
        }
    }

    /// Interned id of a symbol's text, or `NO_SYM` when it is neither a token nor a merge part.
    fn sym_id(&self, text: &str, token_to_id: &TokenMap) -> u32 {
        token_to_id.get(text).or_else(|| self.extra.get(text)).copied().unwrap_or(NO_SYM)
    }

    /// Merges adjacent symbols by rank until no ranked pair is left.
    fn merge(&self, syms: &mut [Sym], heap: &mut Queue) {
        let n = syms.len();
        if n < 2 {
            return;
        }
        heap.clear();
        for i in 1..n {
            self.add_bigram(syms, heap, i as u32 - 1, i as u32);
        }
        while let Some(Reverse((_, l, r, llen, rlen))) = heap.pop() {
            let (li, ri) = (l as usize, r as usize);
            // llama.cpp skips outdated bigrams by comparing texts; symbols
            // only ever grow (or empty), so equal lengths mean equal texts.
            if syms[li].len != llen || syms[ri].len != rlen {
                continue;
            }
            let Some((_, merged)) = self.rank(syms[li].id, syms[ri].id) else {
                continue; // unreachable: only ranked pairs are queued
            };
            syms[li].len += rlen;
            syms[li].id = merged;
            syms[ri].len = 0;
            let next = syms[ri].next;
            syms[li].next = next;
            if next != NO_SYM {
                syms[next as usize].prev = l;
            }
            let prev = syms[li].prev;
            if prev != NO_SYM {
                self.add_bigram(syms, heap, prev, l);
            }
            if next != NO_SYM {
                self.add_bigram(syms, heap, l, next);
            }
        }
    }

    fn add_bigram(&self, syms: &[Sym], heap: &mut Queue, l: u32, r: u32) {
        let (ls, rs) = (&syms[l as usize], &syms[r as usize]);
        if let Some((rank, _)) = self.rank(ls.id, rs.id) {
            heap.push(Reverse((rank, l, r, ls.len, rs.len)));
        }
    }
}
