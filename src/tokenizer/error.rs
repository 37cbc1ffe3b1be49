//! Errors from building a tokenizer out of GGUF metadata.
//!
//! Only construction can fail: once a [`super::Tokenizer`] exists, encoding and
//! decoding are total (unknown ids decode to nothing, any `&str` encodes).
//! Messages are lowercase and name the metadata key or index involved.

/// Why a [`super::Tokenizer`] could not be built from a GGUF file's metadata.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A key the tokenizer cannot work without is absent.
    #[error("missing gguf metadata key {key}")]
    MissingKey { key: String },

    /// A key is present but holds the wrong type of value (for arrays,
    /// `found` names the offending element's type, e.g. `array of u32`).
    #[error("gguf metadata key {key} has type {found}, expected {expected}")]
    WrongType { key: String, expected: &'static str, found: String },

    /// `tokenizer.ggml.model` names a tokenizer family we do not implement.
    #[error(
        "unsupported tokenizer model {model:?} in tokenizer.ggml.model (tokenizer.ggml.pre \
         {pre:?}); supported models: {supported}"
    )]
    UnsupportedModel { model: String, pre: String, supported: String },

    /// `tokenizer.ggml.pre` names a pre-tokenizer we do not implement (`""` when the key is
    /// absent, which llama.cpp treats as `"default"`).
    #[error(
        "unsupported pre-tokenizer {pre:?} in tokenizer.ggml.pre for tokenizer.ggml.model \
         {model:?}; supported pre-tokenizers: {supported}"
    )]
    UnsupportedPre { pre: String, model: String, supported: String },

    /// A `tokenizer.ggml.merges` entry is not of the form `"left right"`.
    #[error("bad merge at tokenizer.ggml.merges[{index}]: {merge:?} has no space separating two parts")]
    BadMerge { index: usize, merge: String },

    /// `tokenizer.ggml.tokens` is empty.
    #[error("empty vocabulary in tokenizer.ggml.tokens")]
    EmptyVocab,

    /// Two vocab entries have the same text; llama.cpp refuses such a vocab
    /// (it asserts `id_to_token.size() == token_to_id.size()`).
    #[error("duplicate token {text:?} in tokenizer.ggml.tokens at ids {first} and {second}")]
    DuplicateToken { text: String, first: u32, second: u32 },

    /// A per-token array is shorter than `tokenizer.ggml.tokens`.
    #[error("{key} has {found} entries but tokenizer.ggml.tokens has {expected}")]
    LengthMismatch { key: String, expected: usize, found: usize },

    /// `tokenizer.ggml.tokens` has more entries than token ids can address.
    #[error("vocabulary of {n} tokens in tokenizer.ggml.tokens is too large for u32 ids")]
    VocabTooLarge { n: usize },
}
