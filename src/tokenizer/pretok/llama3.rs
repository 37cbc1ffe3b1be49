//! llama.cpp's hand-written splitters for the llama3 family of regexes
//! (`unicode_regex_split_custom_llama3`, `_qwen2`, `_qwen35` in src/unicode.cpp):
//!
//! ```text
//! llama3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! qwen2:  the same with \p{N} instead of \p{N}{1,3}
//! qwen35: qwen2 with [\p{L}\p{M}]+ for \p{L}+ and [^\s\p{L}\p{M}\p{N}]+ for [^\s\p{L}\p{N}]+
//! ```
//!
//! As for GPT-2, llama.cpp's code is the reference (e.g. a lone trailing space after
//! punctuation, the case-insensitive contractions). Works on one segment of codepoints.

use std::ops::Range;

use super::super::unicode::Flags;

/// Which of the three regexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Variant {
    Llama3,
    Qwen2,
    Qwen35,
}

/// Splits codepoints `seg` of `chars` into words, appended to `out` as codepoint ranges.
pub(super) fn split(chars: &[char], seg: Range<usize>, variant: Variant, out: &mut Vec<Range<usize>>) {
    let end = seg.end;
    let cp = |p: usize| (p < end).then(|| chars[p]);
    let fl = |p: usize| Flags::of_opt(cp(p));
    let marks = variant == Variant::Qwen35;
    // The letter-run class: \p{L}, or [\p{L}\p{M}] for qwen35.
    let letterish = |f: Flags| f.is_letter() || (marks && f.is_mark());
    // [^\s\p{L}\p{N}] (qwen35 also excludes \p{M}); "no codepoint" passes this test.
    let not_lnw = |f: Flags| !(f.is_whitespace() || f.is_letter() || f.is_number() || (marks && f.is_mark()));
    let is_crlf = |c: Option<char>| matches!(c, Some('\r' | '\n'));
    // Contractions compare the ASCII-lower-cased letters; no non-ASCII codepoint lower-cases to
    // one of them in llama.cpp's table (checked by the table generator).
    let lower = |c: char| c.to_ascii_lowercase();

    let mut prev = seg.start; // end of the last word emitted
    let mut pos = seg.start;
    let emit = |to: usize, prev: &mut usize, out: &mut Vec<Range<usize>>| {
        if to > *prev {
            out.push(*prev..to);
        }
        *prev = to;
    };
    while pos < end {
        let c = chars[pos];
        let f = fl(pos);

        // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if c == '\'' && pos + 1 < end {
            let n1 = lower(chars[pos + 1]);
            if matches!(n1, 's' | 't' | 'm' | 'd') {
                pos += 2;
                emit(pos, &mut prev, out);
                continue;
            }
            if pos + 2 < end {
                let n2 = lower(chars[pos + 2]);
                if matches!((n1, n2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                    pos += 3;
                    emit(pos, &mut prev, out);
                    continue;
                }
            }
        }

        // [^\r\n\p{L}\p{N}]?\p{L}+ : one leading non-letter joins a letter run.
        if !(c == '\r' || c == '\n' || f.is_number()) && (letterish(f) || letterish(fl(pos + 1))) {
            pos += 1;
            while letterish(fl(pos)) {
                pos += 1;
            }
            emit(pos, &mut prev, out);
            continue;
        }

        // \p{N}{1,3} (llama3) or \p{N} (qwen)
        if f.is_number() {
            if variant == Variant::Llama3 {
                let mut group = pos;
                while fl(pos).is_number() {
                    pos += 1;
                    if pos - group >= 3 {
                        emit(pos, &mut prev, out);
                        group = pos;
                    }
                }
            } else {
                pos += 1;
            }
            emit(pos, &mut prev, out);
            continue;
        }

        // <space>?[^\s\p{L}\p{N}]+[\r\n]* ; llama.cpp tests the current codepoint, not the one
        // after the space, for "is a codepoint", so a lone final space also lands here.
        let f2 = if c == ' ' { fl(pos + 1) } else { f };
        if not_lnw(f2) && f.any() {
            pos += usize::from(c == ' ');
            while not_lnw(fl(pos)) && fl(pos).any() {
                pos += 1;
            }
            while is_crlf(cp(pos)) {
                pos += 1;
            }
            emit(pos, &mut prev, out);
            continue;
        }

        let mut n_ws = 0;
        let mut last_crlf_end = None;
        while fl(pos + n_ws).is_whitespace() {
            if is_crlf(cp(pos + n_ws)) {
                last_crlf_end = Some(pos + n_ws + 1);
            }
            n_ws += 1;
        }
        if let Some(e) = last_crlf_end {
            pos = e; // \s*[\r\n]+
        } else if n_ws > 1 && cp(pos + n_ws).is_some() {
            pos += n_ws - 1; // \s+(?!\S)
        } else if n_ws > 0 {
            pos += n_ws; // \s+
        } else {
            pos += 1; // no match
        }
        emit(pos, &mut prev, out);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::words;
    use super::super::PreKind;

    #[test]
    fn llama3_groups_digits_by_three_and_ignores_case_in_contractions() {
        assert_eq!(words(PreKind::Llama3, "1234567"), ["123", "456", "7"]);
        assert_eq!(words(PreKind::Llama3, "HE'S x'LL"), ["HE", "'S", " x", "'LL"]);
        // The contraction is taken before the letter run that the apostrophe could lead.
        assert_eq!(words(PreKind::Llama3, "'Sam 'vex"), ["'S", "am", " '", "vex"]);
        assert_eq!(words(PreKind::Llama3, " Hello\n\n  world"), [" Hello", "\n\n", " ", " world"]);
        assert_eq!(words(PreKind::Llama3, "a!!\n\nb"), ["a", "!!\n\n", "b"]);
        assert_eq!(words(PreKind::Llama3, "x ."), ["x", " ."]);
        assert_eq!(words(PreKind::Llama3, "x! "), ["x", "!", " "]);
    }

    #[test]
    fn qwen_splits_single_digits_and_qwen35_keeps_marks() {
        assert_eq!(words(PreKind::Qwen2, "x123"), ["x", "1", "2", "3"]);
        // U+0301 (combining acute) is \p{M}: qwen2 splits it off, qwen35 keeps it in the word.
        assert_eq!(words(PreKind::Qwen2, "e\u{301}t"), ["e", "\u{301}t"]);
        assert_eq!(words(PreKind::Qwen35, "e\u{301}t"), ["e\u{301}t"]);
    }
}
