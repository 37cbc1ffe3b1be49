//! llama.cpp's classification of codepoints (`unicode_cpt_flags_from_cpt` in src/unicode.cpp):
//! one general category per codepoint plus a whitespace bit, read from the generated tables in
//! `unicode_data.rs`.
//!
//! Pure lookups; knows nothing of regexes or vocabularies. Deliberately not Rust's `char`
//! predicates: a class mismatch on one codepoint changes token ids.

use super::unicode_data::{CATEGORY_RUNS, LOWERCASE, NFD_RANGES, WHITESPACE};

/// The flags llama.cpp's pre-tokenizers read for one codepoint. `Flags::NONE` (all bits clear)
/// stands for "no codepoint" (a position outside the text being split), which llama.cpp's
/// splitters test with `as_uint() == 0`; every real codepoint has exactly one category bit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flags(u16);

impl Flags {
    pub(crate) const NONE: Flags = Flags(0);
    const NUMBER: u16 = 0x02;
    const LETTER: u16 = 0x04;
    const MARK: u16 = 0x10;
    const PUNCTUATION: u16 = 0x20;
    const SYMBOL: u16 = 0x40;
    const CONTROL: u16 = 0x80;
    const WHITESPACE: u16 = 0x100;

    /// llama.cpp's flags of `c`.
    pub(crate) fn of(c: char) -> Flags {
        let cp = c as u32;
        if cp < 0x80 {
            return ASCII[cp as usize];
        }
        from_tables(cp)
    }

    /// Flags of an optional codepoint: `None` (out of range) has no flags.
    pub(crate) fn of_opt(c: Option<char>) -> Flags {
        c.map_or(Flags::NONE, Flags::of)
    }

    /// Whether this is a real codepoint (llama.cpp's `as_uint() != 0`).
    pub(crate) fn any(self) -> bool {
        self.0 != 0
    }
    pub(crate) fn is_letter(self) -> bool {
        self.0 & Flags::LETTER != 0
    }
    pub(crate) fn is_number(self) -> bool {
        self.0 & Flags::NUMBER != 0
    }
    pub(crate) fn is_whitespace(self) -> bool {
        self.0 & Flags::WHITESPACE != 0
    }
    pub(crate) fn is_mark(self) -> bool {
        self.0 & Flags::MARK != 0
    }
    pub(crate) fn is_punctuation(self) -> bool {
        self.0 & Flags::PUNCTUATION != 0
    }
    pub(crate) fn is_symbol(self) -> bool {
        self.0 & Flags::SYMBOL != 0
    }
    pub(crate) fn is_control(self) -> bool {
        self.0 & Flags::CONTROL != 0
    }
}

const fn category_of(cp: u32) -> u8 {
    // Binary search for the last run starting at or before `cp` (const-friendly loop).
    let (mut lo, mut hi) = (0usize, CATEGORY_RUNS.len());
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if CATEGORY_RUNS[mid].0 <= cp {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    CATEGORY_RUNS[lo].1
}

const fn is_whitespace_cp(cp: u32) -> bool {
    let mut i = 0;
    while i < WHITESPACE.len() {
        if WHITESPACE[i] == cp {
            return true;
        }
        i += 1;
    }
    false
}

const fn flags_from_tables(cp: u32) -> Flags {
    let ws = if is_whitespace_cp(cp) { Flags::WHITESPACE } else { 0 };
    Flags(category_of(cp) as u16 | ws)
}

fn from_tables(cp: u32) -> Flags {
    // Whitespace is a short sorted list; a binary search beats the const loop at run time.
    let ws = if WHITESPACE.binary_search(&cp).is_ok() { Flags::WHITESPACE } else { 0 };
    Flags(category_of(cp) as u16 | ws)
}

/// Flags of the ASCII codepoints, computed from the same tables at compile time.
static ASCII: [Flags; 128] = {
    let mut t = [Flags::NONE; 128];
    let mut cp = 0;
    while cp < 128 {
        t[cp] = flags_from_tables(cp as u32);
        cp += 1;
    }
    t
};

/// llama.cpp's `unicode_tolower`: the simple lower-case mapping of its table, else `cp`.
pub(crate) fn to_lower(cp: u32) -> u32 {
    match LOWERCASE.binary_search_by_key(&cp, |&(from, _)| from) {
        Ok(i) => LOWERCASE[i].1,
        Err(_) => cp,
    }
}

/// llama.cpp's `unicode_cpts_normalize_nfd` for one codepoint: the first codepoint of its NFD
/// decomposition (`é` -> `e`), else `cp`.
pub(crate) fn nfd_base(cp: u32) -> u32 {
    let i = NFD_RANGES.partition_point(|&(first, _, _)| first <= cp);
    match i.checked_sub(1).map(|i| NFD_RANGES[i]) {
        Some((first, last, base)) if first <= cp && cp <= last => base,
        _ => cp,
    }
}

/// Whether `cp` lies in one of the sorted inclusive `ranges`.
pub(crate) fn in_ranges(ranges: &[(u32, u32)], cp: u32) -> bool {
    let i = ranges.partition_point(|&(_, last)| last < cp);
    i < ranges.len() && ranges[i].0 <= cp
}

/// The codepoint llama.cpp's std::wregex fallback sees for `c`: it replaces every non-ASCII
/// whitespace codepoint by U+000B before matching, so that `\s` (ASCII-only in the C locale)
/// still matches it, and literal classes no longer do.
pub(crate) fn wregex_cp(c: char) -> u32 {
    let cp = c as u32;
    if cp > 0x7F && Flags::of(c).is_whitespace() {
        0x0B
    } else {
        cp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_table_matches_lookup() {
        for cp in 0u32..0x80 {
            assert_eq!(ASCII[cp as usize], from_tables(cp), "codepoint {cp:#x}");
        }
    }

    #[test]
    fn categories_of_known_codepoints() {
        assert!(Flags::of('a').is_letter() && Flags::of('Z').is_letter());
        assert!(Flags::of('7').is_number() && Flags::of('½').is_number());
        assert!(Flags::of(' ').is_whitespace() && Flags::of('\u{3000}').is_whitespace());
        assert!(Flags::of('\u{0301}').is_mark());
        assert!(Flags::of('!').is_punctuation() && !Flags::of('$').is_punctuation());
        assert_eq!(Flags::of('\u{0378}'), Flags(0x01)); // unassigned: llama.cpp's UNDEFINED
        assert!(Flags::of('\u{10FFFF}').any());
        assert!(!Flags::of_opt(None).any());
        assert_eq!(wregex_cp('\u{3000}'), 0x0B);
        assert_eq!(wregex_cp('a'), 'a' as u32);
        assert_eq!((to_lower('Ä' as u32), to_lower('a' as u32)), ('ä' as u32, 'a' as u32));
        assert_eq!((nfd_base('é' as u32), nfd_base('e' as u32)), ('e' as u32, 'e' as u32));
        assert!(Flags::of('\u{7}').is_control() && Flags::of('$').is_symbol());
    }
}
