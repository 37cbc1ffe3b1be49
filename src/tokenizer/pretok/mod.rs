//! Pre-tokenization for BPE vocabularies: splits a text fragment into the words that BPE then
//! merges, exactly as llama.cpp's `unicode_regex_split` does for the pre-tokenizer types we
//! support, and the table from `tokenizer.ggml.pre` names to those types and their flags
//! (`llama_vocab::impl::load` in src/llama-vocab.cpp).
//!
//! Pure functions over `&str`; no vocabulary knowledge. llama.cpp applies a list of regexes in
//! turn, each splitting every segment the previous ones produced; a regex either has a
//! hand-written implementation there (GPT-2, llama3, qwen2, qwen35, newlines: mirrored in
//! [`gpt2`] and [`llama3`]) or runs through std::regex (mirrored pattern by pattern in
//! [`patterns`]). Character classes come from llama.cpp's tables ([`super::unicode`]).
//! Not implemented: the pre-types whose std::regex patterns use lookaheads or classes we do not
//! mirror (tekken, gpt-4o, deepseek-v3, kimi-k2, bloom, poro, viking, chameleon, ...); they are
//! refused by name when the tokenizer is built.

mod gpt2;
mod llama3;
mod patterns;

use std::ops::Range;

use llama3::Variant;
use patterns::Pattern;

/// Which list of regexes (llama.cpp `llm_tokenizer_bpe`'s `regex_exprs`) to mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PreKind {
    /// `LLAMA_VOCAB_PRE_TYPE_DEFAULT` (no or "default" pre name): punctuation runs, GPT-2,
    /// number runs, ASCII digit triples.
    Default,
    /// GPT-2's regex alone (gpt-2, mpt, olmo, jais, ...).
    Gpt2,
    /// `\p{N}` first, so every digit is its own word, then GPT-2 (smollm, starcoder, refact,
    /// command-r, codeshell, exaone, minerva, mellum2).
    Smollm,
    /// The llama3 regex: contractions, letters with one leading non-letter, digit triples.
    Llama3,
    /// The qwen2 regex: as llama3, but one digit per word.
    Qwen2,
    /// The qwen3.5 regex: as qwen2, with combining marks joining letter runs.
    Qwen35,
    /// Falcon: punctuation runs, GPT-2, ASCII digit triples.
    Falcon,
    /// deepseek-llm: newlines, letter and punctuation runs from literal classes, trailing
    /// whitespace, CJK runs, number runs.
    DeepseekLlm,
    /// deepseek-coder: newlines, letter runs, punctuation runs, CJK runs, single numbers.
    DeepseekCoder,
    /// Runs of newlines and of other text (gemma4, sarvam-moe: SentencePiece-style BPE).
    Newlines,
    /// Newline runs, then qwen2 (laguna).
    Laguna,
}

/// One step of a pre-tokenizer: how llama.cpp splits each segment with one regex.
#[derive(Clone, Copy, Debug)]
enum Step {
    Gpt2,
    Llama3(Variant),
    Match(Pattern),
}

impl PreKind {
    fn steps(self) -> &'static [Step] {
        use patterns::Class as C;
        use Pattern as P;
        match self {
            PreKind::Default => &[Step::Match(P::Run(C::DefaultPunct)), Step::Gpt2, Step::Match(P::Run(C::Number)), Step::Match(P::AsciiDigitTriple)],
            PreKind::Gpt2 => &[Step::Gpt2],
            PreKind::Smollm => &[Step::Match(P::Single(C::Number)), Step::Gpt2],
            PreKind::Llama3 => &[Step::Llama3(Variant::Llama3)],
            PreKind::Qwen2 => &[Step::Llama3(Variant::Qwen2)],
            PreKind::Qwen35 => &[Step::Llama3(Variant::Qwen35)],
            PreKind::Falcon => &[Step::Match(P::Run(C::FalconPunct)), Step::Gpt2, Step::Match(P::AsciiDigitTriple)],
            PreKind::DeepseekLlm => &[
                Step::Match(P::Single(C::CrLf)),
                Step::Match(P::OptSpaceRun(C::DeepseekLetter)),
                Step::Match(P::OptSpaceRun(C::DeepseekPunct)),
                Step::Match(P::TrailingSpace),
                Step::Match(P::Run(C::DeepseekCjk)),
                Step::Match(P::Run(C::Number)),
            ],
            PreKind::DeepseekCoder => &[
                Step::Match(P::Single(C::CrLf)),
                Step::Match(P::OptSpaceRun(C::Letter)),
                Step::Match(P::OptSpaceRun(C::Punct)),
                Step::Match(P::Run(C::DeepseekCjk)),
                Step::Match(P::Single(C::Number)),
            ],
            PreKind::Newlines => &[Step::Match(P::NewlineRuns)],
            PreKind::Laguna => &[Step::Match(P::NewlineRuns), Step::Llama3(Variant::Qwen2)],
        }
    }
}

/// How a `tokenizer.ggml.pre` name configures a BPE vocabulary in llama.cpp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PreConfig {
    pub(crate) kind: PreKind,
    /// A word that is itself a token is emitted whole, without merging (`ignore_merges`).
    pub(crate) ignore_merges: bool,
    /// Default of `add_bos` before `tokenizer.ggml.add_bos_token` overrides it.
    pub(crate) add_bos: bool,
    /// Detokenization removes spaces before `?!.,` and around apostrophes (`clean_spaces`).
    pub(crate) clean_spaces: bool,
    /// Spaces are written as U+2581 and words are raw UTF-8, not byte-level (gemma4, sarvam).
    pub(crate) spm_style: bool,
    /// The default BOS id (11 for gpt2 vocabs) is dropped (chatglm, glm4).
    pub(crate) no_default_bos: bool,
    /// Gemma 4's quirks: newline-only words that are tokens stay whole; `add_bos` is forced on.
    pub(crate) gemma4: bool,
}

impl PreConfig {
    const fn new(kind: PreKind, clean_spaces: bool) -> PreConfig {
        PreConfig { kind, ignore_merges: false, add_bos: false, clean_spaces, spm_style: false, no_default_bos: false, gemma4: false }
    }

    /// llama.cpp's configuration for pre-tokenizer `name` (`""` when the key is absent), or
    /// `None` for names we do not implement. Names and flags follow the `tokenizer_pre ==`
    /// chain of `llama_vocab::impl::load`.
    pub(crate) fn from_gguf_name(name: &str) -> Option<PreConfig> {
        use PreKind as K;
        let c = PreConfig::new;
        Some(match name {
            "" | "default" => c(K::Default, true),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" | "jina-v5-nano" => {
                PreConfig { ignore_merges: true, add_bos: true, ..c(K::Llama3, true) }
            }
            "dbrx" | "smaug-bpe" => c(K::Llama3, true),
            "chatglm-bpe" => PreConfig { no_default_bos: true, ..c(K::Llama3, true) },
            "glm4" | "glm5" => PreConfig { no_default_bos: true, ignore_merges: true, ..c(K::Llama3, true) },
            "deepseek-llm" => c(K::DeepseekLlm, false),
            "deepseek-coder" => c(K::DeepseekCoder, false),
            "falcon" => c(K::Falcon, true),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" | "mpt"
            | "olmo" | "jais" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" => c(K::Gpt2, true),
            "trillion" | "granite-docling" => c(K::Gpt2, false),
            "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => c(K::Smollm, true),
            "command-r" | "smollm" => c(K::Smollm, false),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open" | "grok-2" => c(K::Qwen2, false),
            "stablelm2" | "megrez" => c(K::Qwen2, true),
            "qwen35" => c(K::Qwen35, false),
            "laguna" => c(K::Laguna, false),
            "gemma4" | "granite-embed-multi-311m" => PreConfig { spm_style: true, gemma4: true, ..c(K::Newlines, true) },
            "sarvam-moe" => PreConfig { spm_style: true, ..c(K::Newlines, false) },
            _ => return None,
        })
    }
}

/// Every `tokenizer.ggml.pre` name [`PreConfig::from_gguf_name`] accepts, for error messages.
pub(crate) const SUPPORTED_PRE_NAMES: &[&str] = &[
    "default",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "dbrx",
    "smaug-bpe",
    "chatglm-bpe",
    "glm4",
    "glm5",
    "deepseek-llm",
    "deepseek-coder",
    "falcon",
    "gpt-2",
    "phi-2",
    "jina-es",
    "jina-de",
    "gigachat",
    "jina-v2-es",
    "jina-v2-de",
    "a.x-4.0",
    "mellum",
    "modern-bert",
    "exaone4",
    "mpt",
    "olmo",
    "jais",
    "jina-v1-en",
    "jina-v2-code",
    "roberta-bpe",
    "trillion",
    "granite-docling",
    "starcoder",
    "refact",
    "codeshell",
    "exaone",
    "minerva-7b",
    "mellum2",
    "command-r",
    "smollm",
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "hunyuan",
    "solar-open",
    "grok-2",
    "stablelm2",
    "megrez",
    "qwen35",
    "laguna",
    "gemma4",
    "granite-embed-multi-311m",
    "sarvam-moe",
];

/// Appends to `out` the byte ranges (into `text`) of the words of `text`.
/// Words are non-empty, contiguous and cover `text` exactly.
pub(crate) fn split_words(kind: PreKind, text: &str, out: &mut Vec<Range<usize>>) {
    if text.is_empty() {
        return;
    }
    // Codepoints with their byte offsets; llama.cpp works on codepoint indices.
    let mut offs: Vec<usize> = Vec::with_capacity(text.len() + 1);
    let mut chars: Vec<char> = Vec::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        offs.push(i);
        chars.push(c);
    }
    offs.push(text.len());

    let mut segs = vec![0..chars.len()];
    let mut next = Vec::new();
    for step in kind.steps() {
        next.clear();
        for seg in &segs {
            match *step {
                Step::Gpt2 => gpt2::split(&chars, seg.clone(), &mut next),
                Step::Llama3(v) => llama3::split(&chars, seg.clone(), v, &mut next),
                Step::Match(p) => patterns::split(p, &chars, seg.clone(), &mut next),
            }
        }
        std::mem::swap(&mut segs, &mut next);
    }
    out.extend(segs.into_iter().map(|r| offs[r.start]..offs[r.end]));
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn words(kind: PreKind, s: &str) -> Vec<&str> {
        let mut r = Vec::new();
        split_words(kind, s, &mut r);
        r.into_iter().map(|x| &s[x]).collect()
    }

    #[test]
    fn gpt2_splits_like_llama_cpp() {
        assert_eq!(words(PreKind::Gpt2, "Hello world"), ["Hello", " world"]);
        assert_eq!(words(PreKind::Gpt2, "don't HE'S"), ["don", "'t", " HE", "'", "S"]);
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

    #[test]
    fn every_listed_pre_name_is_accepted() {
        for name in SUPPORTED_PRE_NAMES {
            assert!(PreConfig::from_gguf_name(name).is_some(), "{name}");
        }
        assert!(PreConfig::from_gguf_name("tekken").is_none());
        assert!(PreConfig::from_gguf_name("").is_some());
    }

    #[test]
    fn words_cover_the_text() {
        let kinds = [
            PreKind::Default,
            PreKind::Gpt2,
            PreKind::Smollm,
            PreKind::Llama3,
            PreKind::Qwen2,
            PreKind::Qwen35,
            PreKind::Falcon,
            PreKind::DeepseekLlm,
            PreKind::DeepseekCoder,
            PreKind::Newlines,
            PreKind::Laguna,
        ];
        let text = "  Hello, y'all! 1234 ½ 我想在apple工作\r\n\n \t x'LL  !?…\u{3000}Ａ𝟘 \n";
        for kind in kinds {
            let w = words(kind, text);
            assert!(w.iter().all(|s| !s.is_empty()), "{kind:?}: {w:?}");
            assert_eq!(w.concat(), text, "{kind:?}");
        }
    }
}
