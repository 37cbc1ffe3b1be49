//! GPT-2's byte-to-unicode map (`bytes_to_unicode`), which byte-level BPE vocabularies use to
//! write every byte as one printable char, and its inverse (llama.cpp's
//! `unicode_byte_to_utf8_map` / `unicode_utf8_to_byte_map` in src/unicode.cpp).
//!
//! Pure tables; knows nothing of vocabularies or merges.

/// Byte `b` is written as this char inside byte-level BPE tokens.
pub(crate) static BYTE_TO_CHAR: [char; 256] = byte_to_char_table();

const fn byte_is_printable(b: u32) -> bool {
    (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
}

const fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    let mut b = 0u32;
    while b < 256 {
        let cp = if byte_is_printable(b) {
            b
        } else {
            n += 1;
            255 + n
        };
        table[b as usize] = match char::from_u32(cp) {
            Some(c) => c,
            None => panic!("byte map codepoint out of range"),
        };
        b += 1;
    }
    table
}

/// Inverse of [`BYTE_TO_CHAR`]; `None` for chars that no byte maps to.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 && byte_is_printable(cp) {
        return Some(cp as u8);
    }
    if (256..256 + 68).contains(&cp) {
        // The (cp-256)-th non-printable byte, in increasing byte order.
        let k = cp - 256;
        let mut seen = 0;
        for b in 0..256u32 {
            if !byte_is_printable(b) {
                if seen == k {
                    return Some(b as u8);
                }
                seen += 1;
            }
        }
    }
    None
}

/// Appends the byte-level form of `bytes` (each byte as its [`BYTE_TO_CHAR`] char) to `out`.
pub(crate) fn encode_into(bytes: &[u8], out: &mut String) {
    out.extend(bytes.iter().map(|&b| BYTE_TO_CHAR[b as usize]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(BYTE_TO_CHAR[b as usize]), Some(b));
        }
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(char_to_byte('€'), None);
        let mut s = String::new();
        encode_into(b" a\n", &mut s);
        assert_eq!(s, "ĠaĊ");
    }
}
