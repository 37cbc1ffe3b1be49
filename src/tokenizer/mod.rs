//! GPT-2 style byte-level BPE tokenizer built from GGUF `tokenizer.*` metadata,
//! bit-exact with llama.cpp for `tokenizer.ggml.model = gpt2` with the `smollm`
//! (and plain `gpt-2`) pre-tokenizers.
//!
//! Pure: no I/O beyond reading the metadata of the [`GgufFile`] it is given
//! (tensors are never touched, so vocab-only files work). It never adds BOS or
//! EOS by itself; callers consult [`Tokenizer::add_bos`]. Not implemented:
//! SentencePiece/WordPiece/other vocab types, other pre-tokenizers, and the
//! per-model LSTRIP/RSTRIP attribute hacks llama.cpp applies to phi-3/jina.
//!
//! Pipeline, as in llama.cpp's `llama_vocab::impl::tokenize`:
//! 1. split out special tokens (`tokenizer_st_partition`): control tokens only
//!    with `parse_special`, user-defined tokens always;
//! 2. pre-tokenize each remaining text fragment into words ([`pretok`]);
//! 3. byte-level BPE each word by merge rank ([`bpe`]).

mod bpe;
mod error;
mod load;
mod pretok;
#[rustfmt::skip] // generated data tables
mod unicode_data;

use std::collections::HashMap;
use std::ops::Range;

pub use error::TokenizerError;

use crate::gguf::GgufFile;

/// llama.cpp's `llama_token_attr` bits (include/llama.h).
pub(crate) mod attr {
    pub const UNDEFINED: u16 = 0;
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
}

/// A byte-level BPE tokenizer. Immutable and `Sync`; share it by reference.
pub struct Tokenizer {
    tokens: Vec<String>,
    /// `llama_token_attr` per id, after llama.cpp's text-based adjustments.
    attrs: Vec<u16>,
    token_to_id: HashMap<String, u32>,
    /// Concatenated piece bytes; id `i` is `pieces[piece_offsets[i]..piece_offsets[i+1]]`.
    pieces: Vec<u8>,
    piece_offsets: Vec<u32>,
    /// Ids of control / user-defined / unknown tokens, longest text first.
    special: Vec<u32>,
    bpe: bpe::Merges,
    pre: pretok::PreKind,
    add_bos: bool,
    bos: Option<u32>,
    eos: Option<u32>,
    /// Sorted end-of-generation ids.
    eog: Vec<u32>,
}

/// A piece of the input after special-token partitioning.
enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

impl Tokenizer {
    /// Builds the tokenizer from `file`'s `tokenizer.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        load::from_gguf(file)
    }

    /// Token ids of `text`. With `parse_special`, the text of control tokens
    /// (e.g. `<|im_start|>`) becomes their id; without it, it is tokenized as
    /// plain text. Never adds BOS/EOS (llama.cpp `add_special = false`).
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        if text.is_empty() {
            return out;
        }
        let mut scratch = bpe::Scratch::default();
        let mut words = Vec::new();
        for frag in self.partition(text, parse_special) {
            match frag {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(r) => {
                    let frag_text = &text[r];
                    words.clear();
                    pretok::split_words(self.pre, frag_text, &mut words);
                    for w in &words {
                        self.bpe.encode_word(
                            &frag_text.as_bytes()[w.clone()],
                            &mut scratch,
                            &mut out,
                        );
                    }
                }
            }
        }
        out
    }

    /// llama.cpp `tokenizer_st_partition`: for each special token, longest
    /// first, split every remaining text fragment at each of its occurrences.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = vec![Fragment::Text(0..text.len())];
        let mut next = Vec::new();
        for &id in &self.special {
            if !parse_special && self.attrs[id as usize] & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue; // user-defined tokens are split out even without parse_special
            }
            let needle = self.tokens[id as usize].as_str();
            if !frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(r) if text[r.clone()].contains(needle)))
            {
                continue;
            }
            next.clear();
            for f in frags.drain(..) {
                let Fragment::Text(r) = f else {
                    next.push(f);
                    continue;
                };
                let mut start = r.start;
                while let Some(p) = text[start..r.end].find(needle) {
                    if p > 0 {
                        next.push(Fragment::Text(start..start + p));
                    }
                    next.push(Fragment::Token(id));
                    start += p + needle.len();
                }
                if start < r.end {
                    next.push(Fragment::Text(start..r.end));
                }
            }
            std::mem::swap(&mut frags, &mut next);
        }
        frags
    }

    /// Whether a BOS token should be prepended to prompts
    /// (`tokenizer.ggml.add_bos_token`; llama.cpp's default for gpt2 vocabs
    /// with our pre-tokenizers is false).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Beginning-of-sequence id (gpt2 default 11 when the key is absent, as in llama.cpp).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence id (gpt2 default 11 when the key is absent, as in llama.cpp).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// All ids that end generation, sorted (llama.cpp `special_eog_ids`).
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Whether `id` ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    /// The raw vocab string of `id` (byte-level encoded for normal tokens).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Whether `id` is a control token (e.g. `<|im_start|>`), which
    /// llama.cpp hides when rendering with `special = false`.
    pub fn is_control(&self, id: u32) -> bool {
        self.attrs
            .get(id as usize)
            .is_some_and(|a| a & attr::CONTROL != 0)
    }

    /// The bytes `id` renders to, as `llama_token_to_piece(special = true)`;
    /// empty for unknown ids. Not necessarily valid UTF-8 on its own.
    pub fn token_piece(&self, id: u32) -> &[u8] {
        let i = id as usize;
        match (self.piece_offsets.get(i), self.piece_offsets.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.pieces[a as usize..b as usize],
            _ => &[],
        }
    }

    /// Owned copy of [`Tokenizer::token_piece`].
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.token_piece(id).to_vec()
    }

    /// The concatenated pieces of `ids`, decoded as UTF-8 lossily. Unknown ids
    /// render as nothing.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.token_piece(id));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The id whose vocab string is exactly `text` (raw vocab form, e.g. `Ġthe`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// Number of distinct BPE merge pairs.
    pub fn n_merges(&self) -> usize {
        self.bpe.len()
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_vocab", &self.n_vocab())
            .field("n_merges", &self.n_merges())
            .field("pre", &self.pre)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

/// Incremental detokenizer for streaming: feeds ids one at a time and returns
/// only complete UTF-8, holding back a multi-byte character whose bytes are
/// split across tokens. The concatenation of every `push` and `finish` equals
/// [`Tokenizer::decode`] of all ids.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tok: &'a Tokenizer) -> StreamDecoder<'a> {
        StreamDecoder {
            tok,
            pending: Vec::new(),
        }
    }

    /// Appends `id`'s piece and returns the text that is now complete.
    /// Invalid bytes are replaced by U+FFFD exactly where
    /// `String::from_utf8_lossy` on the whole stream would put them; only a
    /// trailing *incomplete* sequence is held back.
    pub fn push(&mut self, id: u32) -> String {
        self.pending.extend_from_slice(self.tok.token_piece(id));
        let mut out = String::new();
        let mut pos = 0;
        loop {
            match std::str::from_utf8(&self.pending[pos..]) {
                Ok(s) => {
                    out.push_str(s);
                    pos = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `valid_up_to` bytes were just validated, so this cannot fail.
                    out.push_str(
                        std::str::from_utf8(&self.pending[pos..pos + valid]).unwrap_or(""),
                    );
                    pos += valid;
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            pos += bad;
                        }
                        None => break, // incomplete tail: wait for more bytes
                    }
                }
            }
        }
        self.pending.drain(..pos);
        out
    }

    /// Bytes held back so far (an incomplete UTF-8 sequence), if any.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Flushes whatever is held back, lossily.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}
