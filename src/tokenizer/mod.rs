//! Tokenizers rebuilt from GGUF `tokenizer.*` metadata, bit-exact with llama.cpp for
//! `tokenizer.ggml.model = gpt2` (byte-level BPE, with the pre-tokenizers listed in
//! [`pretok`]: gpt-2, smollm, llama3/llama-bpe, qwen2, qwen35, deepseek, falcon, command-r,
//! ...), `gemma4` (SentencePiece-style BPE), `llama` (SentencePiece: scores, byte
//! fallback, `add_space_prefix`) and `bert` (WordPiece).
//!
//! Pure: no I/O beyond reading the metadata of the [`GgufFile`] it is given (tensors are never
//! touched, so vocab-only files work). [`Tokenizer::encode`] never adds BOS/EOS;
//! [`Tokenizer::tokenize`] does when asked, as llama.cpp's `add_special`. Not implemented:
//! Unigram (t5), RWKV, PLaMo-2 vocabularies and the pre-tokenizers not in
//! [`pretok`]'s table; they are refused when the tokenizer is built, naming the model and
//! pre-tokenizer.
//!
//! Pipeline, as in llama.cpp's `llama_vocab::impl::tokenize`:
//! 1. split out special tokens (`tokenizer_st_partition`): control tokens only
//!    with `parse_special`, user-defined tokens always, honouring LSTRIP/RSTRIP;
//! 2. SentencePiece: prefix a space after a special token (or at the start), write spaces as
//!    U+2581 and merge by score ([`spm`]);
//!    BPE: pre-tokenize each fragment into words ([`pretok`]) and merge each word by rank
//!    ([`bpe`]); WordPiece: normalize, split and match longest pieces ([`wpm`]).

mod bpe;
mod byte_level;
mod decode;
mod error;
mod hash;
mod load;
mod pretok;
mod special;
mod spm;
mod unicode;
mod wpm;
#[rustfmt::skip] // generated data tables
mod unicode_data;

use std::borrow::Cow;
use std::ops::Range;

pub use decode::StreamDecoder;
pub use error::TokenizerError;

use hash::TokenMap;

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
    pub const LSTRIP: u16 = 1 << 7;
    pub const RSTRIP: u16 = 1 << 8;
}

/// The merging algorithm and its data.
enum Model {
    /// SentencePiece (`LLAMA_VOCAB_TYPE_SPM`).
    Spm { scores: Vec<f32>, byte_tokens: [Option<u32>; 256] },
    /// BPE (`LLAMA_VOCAB_TYPE_BPE`).
    Bpe {
        merges: bpe::Merges,
        pre: pretok::PreKind,
        mode: bpe::WordMode,
        /// Spaces become U+2581 before pre-tokenization (Gemma 4).
        escape_whitespaces: bool,
    },
    /// WordPiece (`LLAMA_VOCAB_TYPE_WPM`).
    Wpm { max_token_len: usize, lowercase: bool, strip_accents: bool },
}

/// A tokenizer built from GGUF metadata. Immutable and `Sync`; share it by reference.
pub struct Tokenizer {
    tokens: Vec<String>,
    /// `llama_token_attr` per id, after llama.cpp's text-based adjustments.
    attrs: Vec<u16>,
    token_to_id: TokenMap,
    /// Concatenated piece bytes; id `i` is `pieces[piece_offsets[i]..piece_offsets[i+1]]`.
    pieces: Vec<u8>,
    piece_offsets: Vec<u32>,
    /// Ids of control / user-defined / unknown tokens, longest text first.
    special: Vec<u32>,
    model: Model,
    /// `tokenizer.ggml.model` and `tokenizer.ggml.pre` as stored (pre empty when absent).
    model_name: String,
    pre_name: String,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    /// Separator id, appended by WordPiece with `add_special`.
    sep: Option<u32>,
    /// Sorted end-of-generation ids.
    eog: Vec<u32>,
}

/// A piece of the input after special-token partitioning.
enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

/// llama.cpp's `isspace` in the C locale, used by LSTRIP/RSTRIP.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
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
        self.tokenize(text, false, parse_special)
    }

    /// llama.cpp's `llama_tokenize(text, add_special, parse_special)`: as [`Tokenizer::encode`],
    /// and with `add_special` a BOS first when [`Tokenizer::add_bos`] and an EOS last when
    /// [`Tokenizer::add_eos`] (WordPiece: BOS (CLS) first and SEP last, whatever the flags say,
    /// as llama.cpp does).
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        let wpm = matches!(self.model, Model::Wpm { .. });
        if add_special && (self.add_bos || wpm) {
            out.extend(self.bos);
        }
        let frags = if text.is_empty() { Vec::new() } else { self.partition(text, parse_special) };
        match &self.model {
            Model::Spm { scores, byte_tokens } => {
                let vocab = spm::SpmVocab { token_to_id: &self.token_to_id, scores, byte_tokens, unk: self.unk };
                // A space is prefixed to the first fragment and to every fragment after a
                // special token ("prefix with space if previous is special").
                let mut prev_special = true;
                let mut buf = String::new();
                for frag in frags {
                    match frag {
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                        Fragment::Text(r) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('\u{2581}');
                            }
                            escape_spaces(&text[r], &mut buf);
                            spm::encode(&vocab, &buf, &mut out);
                            prev_special = false;
                        }
                    }
                }
            }
            Model::Bpe { merges, pre, mode, escape_whitespaces } => {
                let mut scratch = bpe::Scratch::default();
                let mut words = Vec::new();
                for frag in frags {
                    match frag {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(r) => {
                            let frag_text: Cow<str> = if *escape_whitespaces {
                                let mut s = String::with_capacity(r.len() + 8);
                                escape_spaces(&text[r], &mut s);
                                Cow::Owned(s)
                            } else {
                                Cow::Borrowed(&text[r])
                            };
                            words.clear();
                            pretok::split_words(*pre, &frag_text, &mut words);
                            for w in &words {
                                merges.encode_word(&frag_text[w.clone()], *mode, &self.token_to_id, &mut scratch, &mut out);
                            }
                        }
                    }
                }
            }
            Model::Wpm { max_token_len, lowercase, strip_accents } => {
                let vocab = wpm::WpmVocab {
                    token_to_id: &self.token_to_id,
                    max_token_len: *max_token_len,
                    lowercase: *lowercase,
                    strip_accents: *strip_accents,
                    unk: self.unk,
                };
                for frag in frags {
                    match frag {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(r) => wpm::encode(&vocab, &text[r], &mut out),
                    }
                }
            }
        }
        if add_special && wpm {
            out.extend(self.sep);
        } else if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// llama.cpp `tokenizer_st_partition`: for each special token, longest
    /// first, split every remaining text fragment at each of its occurrences. A token with
    /// LSTRIP (RSTRIP) also swallows the ASCII whitespace before (after) it.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let bytes = text.as_bytes();
        let mut frags = vec![Fragment::Text(0..text.len())];
        let mut next = Vec::new();
        for &id in &self.special {
            let a = self.attrs[id as usize];
            if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue; // user-defined tokens are split out even without parse_special
            }
            let needle = self.tokens[id as usize].as_str();
            if !frags.iter().any(|f| matches!(f, Fragment::Text(r) if text[r.clone()].contains(needle))) {
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
                    let mut left_end = start + p;
                    if a & attr::LSTRIP != 0 {
                        while left_end > start && is_c_space(bytes[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > start {
                        next.push(Fragment::Text(start..left_end));
                    }
                    next.push(Fragment::Token(id));
                    start += p + needle.len();
                    if a & attr::RSTRIP != 0 {
                        while start < r.end && is_c_space(bytes[start]) {
                            start += 1;
                        }
                    }
                }
                if start < r.end {
                    next.push(Fragment::Text(start..r.end));
                }
            }
            std::mem::swap(&mut frags, &mut next);
        }
        frags
    }

    /// Whether llama.cpp adds a BOS token with `add_special`
    /// (`tokenizer.ggml.add_bos_token`, else the vocab type's default: true for SentencePiece
    /// and llama3-style BPE, false for other BPE). False when the vocab has no BOS id.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether llama.cpp adds an EOS token with `add_special`
    /// (`tokenizer.ggml.add_eos_token`, default false). False when the vocab has no EOS id.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Beginning-of-sequence id (defaults when the key is absent, as in llama.cpp: 11 for
    /// gpt2 vocabs, 1 for SentencePiece).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence id (defaults when the key is absent, as in llama.cpp: 11 for gpt2
    /// vocabs, 2 for SentencePiece).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Unknown-token id (SentencePiece default 0), if any.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk
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

    /// `tokenizer.ggml.model` of the vocabulary (`gpt2`, `llama`, `gemma4`).
    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// `tokenizer.ggml.pre` as stored (empty when absent).
    pub fn pre_name(&self) -> &str {
        &self.pre_name
    }

    /// The raw vocab string of `id` (byte-level encoded for normal BPE tokens, with U+2581
    /// for spaces in SentencePiece vocabularies).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Whether `id` is a control token (e.g. `<|im_start|>`), which
    /// llama.cpp hides when rendering with `special = false`.
    pub fn is_control(&self, id: u32) -> bool {
        self.attrs.get(id as usize).is_some_and(|a| a & attr::CONTROL != 0)
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

    /// The concatenated pieces of `ids`, decoded as UTF-8 lossily: what streaming them one by
    /// one yields (see [`StreamDecoder`]). Unknown ids render as nothing. For llama.cpp's
    /// `llama_detokenize` (leading-space removal, space clean-up) use
    /// [`Tokenizer::detokenize`].
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

    /// Number of distinct BPE merge pairs (0 for SentencePiece).
    pub fn n_merges(&self) -> usize {
        match &self.model {
            Model::Bpe { merges, .. } => merges.len(),
            Model::Spm { .. } | Model::Wpm { .. } => 0,
        }
    }
}

/// Appends `s` to `out` with every space written as U+2581 (llama.cpp
/// `llama_escape_whitespace`).
fn escape_spaces(s: &str, out: &mut String) {
    for (i, part) in s.split(' ').enumerate() {
        if i > 0 {
            out.push('\u{2581}');
        }
        out.push_str(part);
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.model {
            Model::Spm { .. } => "spm".to_owned(),
            Model::Wpm { .. } => "wpm".to_owned(),
            Model::Bpe { pre, .. } => format!("bpe/{pre:?}"),
        };
        f.debug_struct("Tokenizer")
            .field("model", &self.model_name)
            .field("pre", &self.pre_name)
            .field("kind", &kind)
            .field("n_vocab", &self.n_vocab())
            .field("n_merges", &self.n_merges())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish()
    }
}
