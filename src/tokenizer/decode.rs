//! Token ids back to bytes: the piece of each token (llama.cpp's `token_to_piece` with
//! `special = true`, cached at load), `detokenize` with llama.cpp's leading-space removal and
//! `clean_spaces` passes (`llama_vocab::impl::detokenize`), and a streaming decoder that never
//! splits a UTF-8 character across the chunks it returns.
//!
//! Pure; works from the piece cache and attributes built by `load`.

use super::attr;
use super::byte_level::char_to_byte;
use super::Tokenizer;

/// `token_to_piece(special = true)` of a token with text `text` and attributes `a`.
/// `spm_style` vocabularies (SentencePiece, and BPE with escaped whitespace such as Gemma 4)
/// write spaces as U+2581; byte-level BPE vocabularies use GPT-2's byte map.
pub(crate) fn render_piece(text: &str, a: u16, spm_style: bool, out: &mut Vec<u8>) {
    if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
        out.extend_from_slice(text.as_bytes());
    } else if a & attr::NORMAL != 0 {
        if spm_style {
            out.extend_from_slice(text.replace('\u{2581}', " ").as_bytes());
        } else {
            decode_byte_level(text, out);
        }
    } else if a & attr::BYTE != 0 {
        out.push(byte_token_value(text));
    }
    // UNDEFINED / UNUSED-only tokens render as nothing.
}

/// llama.cpp `llama_decode_text`: undo the GPT-2 byte-to-unicode mapping. A
/// char outside the map becomes `[UNK_BYTE_0x<its utf-8 hex><whole text>]`,
/// verbatim from llama.cpp.
fn decode_byte_level(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

/// llama.cpp `token_to_byte`: `strtol(text.substr(3, 2), 16)`, i.e. the hex digits at
/// bytes 3..5 of `<0xAB>`; anything unparsable gives 0.
fn byte_token_value(text: &str) -> u8 {
    let bytes = text.as_bytes();
    let digits = bytes.get(3..bytes.len().min(5)).unwrap_or(&[]);
    let mut v: u32 = 0;
    for &d in digits {
        match (d as char).to_digit(16) {
            Some(x) => v = v * 16 + x,
            None => break,
        }
    }
    v as u8
}

impl Tokenizer {
    /// The bytes of `ids` as llama.cpp's `llama_detokenize(remove_special, unparse_special)`
    /// produces them: with `remove_special`, a leading BOS and trailing EOS are dropped when
    /// the vocab adds them; without `unparse_special`, control and unknown tokens render as
    /// nothing; the first token loses one leading space when the vocab adds a space prefix
    /// (SentencePiece); vocabs with `clean_spaces` get llama.cpp's three clean-up passes.
    /// Unknown ids render as nothing. Not necessarily valid UTF-8.
    pub fn detokenize(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos && ids.first().is_some_and(|&i| Some(i) == self.bos) {
            remove_space = false;
            ids = &ids[1..];
        }
        if remove_special && self.add_eos && ids.last().is_some_and(|&i| Some(i) == self.eos) {
            ids = &ids[..ids.len() - 1];
        }
        let mut text = Vec::new();
        for &id in ids {
            let a = self.attrs.get(id as usize).copied().unwrap_or(attr::UNDEFINED);
            if unparse_special || a & (attr::UNKNOWN | attr::CONTROL) == 0 {
                let piece = self.token_piece(id);
                let piece = match piece.first() {
                    Some(b' ') if remove_space => &piece[1..],
                    _ => piece,
                };
                text.extend_from_slice(piece);
            }
            remove_space = false;
        }
        if self.clean_spaces {
            clean_spaces(&mut text);
        }
        text
    }
}

/// llama.cpp's `clean_spaces` passes, in place and byte for byte as it runs them: drop the
/// space before `?!.,`; turn `" ' "` into `"'"`; drop the space before `'s`, `'m`, `'re`, `'ve`.
fn clean_spaces(text: &mut Vec<u8>) {
    // Pass 1: " ?", " !", " .", " ,".
    compact(text, |t, i, total| {
        if t[i - 1] == b' ' && matches!(t[i], b'?' | b'!' | b'.' | b',') {
            *total -= 1;
        }
        1
    });
    // Pass 2: a single apostrophe between spaces loses both spaces. llama.cpp overwrites the
    // following space with NUL and skips it, so that NUL (not a space) is what the next
    // position sees as its predecessor.
    compact(text, |t, i, total| {
        let n = t.len();
        if t[i] == b'\'' && i + 1 < n && t[i - 1] == b' ' && t[i + 1] == b' ' {
            *total -= 1;
            t[i + 1] = 0;
            return 2;
        }
        1
    });
    // Pass 3: " 's", " 'm", " 're", " 've" lose the space (" 't", " 'd", " 'll" keep it).
    compact(text, |t, i, total| {
        let n = t.len();
        if t[i - 1] == b' ' && t[i] == b'\'' && i + 1 < n {
            let x1 = t[i + 1];
            let x2 = t.get(i + 2).copied().filter(|_| i + 2 < n);
            let drop = matches!(x1, b's' | b'm') || matches!((x1, x2), (b'r', Some(b'e')) | (b'v', Some(b'e')));
            if drop {
                *total -= 1;
            }
        }
        1
    });
}

/// One llama.cpp clean-up pass: walks positions `1..len`, lets `step` inspect the buffer (and
/// decrement the write cursor `total` to drop the last written byte), then writes the byte at
/// the position to the cursor. `step` returns how many positions to advance (2 skips the next).
fn compact(t: &mut Vec<u8>, mut step: impl FnMut(&mut Vec<u8>, usize, &mut usize) -> usize) {
    let len = t.len();
    if len == 0 {
        return;
    }
    let mut total = 1;
    let mut i = 1;
    while i < len {
        let x = t[i];
        let advance = step(t, i, &mut total);
        t[total] = x;
        total += 1;
        i += advance;
    }
    t.truncate(total);
}

/// Incremental detokenizer for streaming: feeds ids one at a time and returns
/// only complete UTF-8, holding back a multi-byte character whose bytes are
/// split across tokens (byte-level BPE pieces and SentencePiece byte-fallback
/// tokens both do that). The concatenation of every `push` and `finish` equals
/// [`Tokenizer::decode`] of all ids: raw pieces, as llama.cpp's server streams
/// them (no leading-space removal or space clean-up, unlike [`Tokenizer::detokenize`]).
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tok: &'a Tokenizer) -> StreamDecoder<'a> {
        StreamDecoder { tok, pending: Vec::new() }
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
                    out.push_str(std::str::from_utf8(&self.pending[pos..pos + valid]).unwrap_or(""));
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

#[cfg(test)]
mod tests {
    use super::clean_spaces;

    fn clean(s: &str) -> String {
        let mut v = s.as_bytes().to_vec();
        clean_spaces(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn clean_spaces_like_llama_cpp() {
        assert_eq!(clean("Hello , world !"), "Hello, world!");
        assert_eq!(clean("a ' b"), "a'b");
        assert_eq!(clean("it 's I 'm we 're you 've"), "it's I'm we're you've");
        assert_eq!(clean("don 't I 'd we 'll"), "don 't I 'd we 'll");
        assert_eq!(clean(" ?"), "?");
        assert_eq!(clean("? "), "? ");
        assert_eq!(clean(""), "");
        // The space after a " ' " becomes NUL and is skipped; the next apostrophe is not
        // preceded by a space any more.
        assert_eq!(clean("a ' ' b"), "a'' b");
    }
}
