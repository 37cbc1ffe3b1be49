//! The pre-tokenizer regexes llama.cpp runs through std::regex (`unicode_regex_split_stl`),
//! mirrored one pattern at a time, plus its custom newline splitter
//! (`unicode_regex_split_custom_newlines`).
//!
//! llama.cpp splits each segment at every leftmost, non-overlapping match: the text between
//! matches and each match become segments of their own. Patterns that use `\p{..}` match a
//! "collapsed" text where each non-ASCII codepoint is one byte standing for its category (and
//! non-ASCII whitespace is U+000B); the others match the codepoints with non-ASCII whitespace
//! replaced by U+000B ([`wregex_cp`]). `\s` is the C locale's ASCII whitespace either way, so it
//! equals llama.cpp's whitespace flag. Only the patterns of the supported pre-types exist here.

use std::ops::Range;

use super::super::unicode::{in_ranges, wregex_cp, Flags};
use super::super::unicode_data::{DEEPSEEK_CJK, DEEPSEEK_LLM_LETTERS, DEEPSEEK_LLM_PUNCT};

/// A character class of one of the regexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// `\p{N}` (collapsed).
    Number,
    /// `\p{L}` (collapsed).
    Letter,
    /// `\p{P}` (collapsed).
    Punct,
    /// `[\p{P}\$\+<=>\^~\|]` (collapsed; the default pre-type).
    DefaultPunct,
    /// `[\p{P}\$\+<=>\^~\|`]` (collapsed; falcon).
    FalconPunct,
    /// `[\r\n]`.
    CrLf,
    /// deepseek-llm's literal letter class `[A-Za-zµÀ-ÖØ-ö...]`.
    DeepseekLetter,
    /// deepseek-llm's literal punctuation class `[!-/:-~！-／：-～‘-‟　-。]`.
    DeepseekPunct,
    /// deepseek's `[一-龥ࠀ-一가-퟿]`.
    DeepseekCjk,
}

impl Class {
    fn contains(self, c: char) -> bool {
        match self {
            Class::Number => Flags::of(c).is_number(),
            Class::Letter => Flags::of(c).is_letter(),
            Class::Punct => Flags::of(c).is_punctuation(),
            Class::DefaultPunct => Flags::of(c).is_punctuation() || "$+<=>^~|".contains(c),
            Class::FalconPunct => Flags::of(c).is_punctuation() || "$+<=>^~|`".contains(c),
            Class::CrLf => c == '\r' || c == '\n',
            Class::DeepseekLetter => in_ranges(DEEPSEEK_LLM_LETTERS, wregex_cp(c)),
            Class::DeepseekPunct => in_ranges(DEEPSEEK_LLM_PUNCT, wregex_cp(c)),
            Class::DeepseekCjk => in_ranges(DEEPSEEK_CJK, wregex_cp(c)),
        }
    }
}

/// One regex, as llama.cpp's std::regex sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pattern {
    /// `C`: each codepoint of the class alone.
    Single(Class),
    /// `C+`.
    Run(Class),
    /// `\s?C+`: a run, with one whitespace before it when there is one.
    OptSpaceRun(Class),
    /// `\s+$`: the whitespace that ends the segment.
    TrailingSpace,
    /// `[0-9][0-9][0-9]`.
    AsciiDigitTriple,
    /// `[^\n]+|[\n]+` (custom in llama.cpp): alternating runs of newlines and other text.
    NewlineRuns,
}

fn is_space(c: char) -> bool {
    Flags::of(c).is_whitespace()
}

/// The leftmost match of `p` in `chars[from..end]`, as `(start, end)`.
fn find(p: Pattern, chars: &[char], from: usize, end: usize) -> Option<(usize, usize)> {
    let run_end = |cls: Class, mut i: usize| {
        while i < end && cls.contains(chars[i]) {
            i += 1;
        }
        i
    };
    match p {
        Pattern::Single(cls) => (from..end).find(|&i| cls.contains(chars[i])).map(|i| (i, i + 1)),
        Pattern::Run(cls) => (from..end).find(|&i| cls.contains(chars[i])).map(|i| (i, run_end(cls, i))),
        Pattern::OptSpaceRun(cls) => (from..end).find_map(|i| {
            // The optional \s is tried first; without a class codepoint after it, the engine
            // backtracks to an empty \s, and a whitespace codepoint is in none of the classes.
            if is_space(chars[i]) && i + 1 < end && cls.contains(chars[i + 1]) {
                Some((i, run_end(cls, i + 1)))
            } else if cls.contains(chars[i]) {
                Some((i, run_end(cls, i)))
            } else {
                None
            }
        }),
        Pattern::TrailingSpace => {
            let mut start = end;
            while start > from && is_space(chars[start - 1]) {
                start -= 1;
            }
            (start < end).then_some((start, end))
        }
        Pattern::AsciiDigitTriple => (from..end.saturating_sub(2)).find(|&i| chars[i..i + 3].iter().all(char::is_ascii_digit)).map(|i| (i, i + 3)),
        Pattern::NewlineRuns => (from < end).then(|| {
            let nl = chars[from] == '\n';
            let mut i = from;
            while i < end && (chars[i] == '\n') == nl {
                i += 1;
            }
            (from, i)
        }),
    }
}

/// Splits codepoints `seg` of `chars` at the matches of `p`, appending the pieces (gaps and
/// matches, in order, none empty) to `out`.
pub(super) fn split(p: Pattern, chars: &[char], seg: Range<usize>, out: &mut Vec<Range<usize>>) {
    let mut last = seg.start;
    while let Some((a, b)) = find(p, chars, last, seg.end) {
        if a > last {
            out.push(last..a);
        }
        out.push(a..b);
        last = b;
    }
    if last < seg.end {
        out.push(last..seg.end);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::words;
    use super::super::PreKind;

    #[test]
    fn falcon_splits_punctuation_runs_and_digit_triples() {
        assert_eq!(words(PreKind::Falcon, "a+=b"), ["a", "+=", "b"]);
        assert_eq!(words(PreKind::Falcon, " 12345"), [" ", "123", "45"]);
    }

    #[test]
    fn deepseek_coder_keeps_one_space_before_letter_runs() {
        assert_eq!(words(PreKind::DeepseekCoder, "a  bc\n12"), ["a", " ", " bc", "\n", "1", "2"]);
        assert_eq!(words(PreKind::DeepseekCoder, "我想 ok"), ["我想", " ok"]);
    }

    #[test]
    fn deepseek_llm_splits_trailing_space_and_number_runs() {
        assert_eq!(words(PreKind::DeepseekLlm, "ab  "), ["ab", "  "]);
        assert_eq!(words(PreKind::DeepseekLlm, "x 123"), ["x", " ", "123"]);
    }

    #[test]
    fn newline_runs_alternate() {
        assert_eq!(words(PreKind::Newlines, "a b\n\nc\n"), ["a b", "\n\n", "c", "\n"]);
    }
}
