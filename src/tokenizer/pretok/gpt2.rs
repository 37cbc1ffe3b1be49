//! llama.cpp's hand-written GPT-2 splitter (`unicode_regex_split_custom_gpt2`), for the regex
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`.
//!
//! Its code, not the regex, is the reference: contractions are case-sensitive, and lookups
//! past the end of the segment see "no codepoint". Works on one segment of codepoints; knows
//! nothing of bytes or vocabularies.

use std::ops::Range;

use super::super::unicode::Flags;

/// Splits codepoints `seg` of `chars` into words, appended to `out` as codepoint ranges.
pub(super) fn split(chars: &[char], seg: Range<usize>, out: &mut Vec<Range<usize>>) {
    let end = seg.end;
    let cp = |p: usize| (p < end).then(|| chars[p]);
    let fl = |p: usize| Flags::of_opt(cp(p));
    let mut pos = seg.start;
    while pos < end {
        let c = chars[pos];
        let start = pos;

        // 's|'t|'re|'ve|'m|'ll|'d
        if c == '\'' && pos + 1 < end {
            let next = chars[pos + 1];
            if matches!(next, 's' | 't' | 'm' | 'd') {
                pos += 2;
                out.push(start..pos);
                continue;
            }
            if pos + 2 < end {
                let next2 = chars[pos + 2];
                if matches!((next, next2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                    pos += 3;
                    out.push(start..pos);
                    continue;
                }
            }
        }

        // An optional leading space joins the following letter / number / other run.
        let space = usize::from(c == ' ');
        let f2 = if c == ' ' { fl(pos + 1) } else { fl(pos) };
        let other = |f: Flags| !(f.is_whitespace() || f.is_letter() || f.is_number()) && f.any();
        let run: Option<fn(Flags) -> bool> = if f2.is_letter() {
            Some(Flags::is_letter)
        } else if f2.is_number() {
            Some(Flags::is_number)
        } else if other(f2) {
            Some(|f: Flags| !(f.is_whitespace() || f.is_letter() || f.is_number()) && f.any())
        } else {
            None
        };
        if let Some(in_run) = run {
            pos += space;
            while in_run(fl(pos)) {
                pos += 1;
            }
            out.push(start..pos);
            continue;
        }

        let mut n_ws = 0;
        while fl(pos + n_ws).is_whitespace() {
            n_ws += 1;
        }
        if n_ws > 1 && cp(pos + n_ws).is_some() {
            // \s+(?!\S): leave the last whitespace to prefix the next word.
            pos += n_ws - 1;
        } else if n_ws > 0 {
            pos += n_ws; // \s+
        } else {
            pos += 1; // no match (unreachable with llama.cpp's tables; mirrored anyway)
        }
        out.push(start..pos);
    }
}
