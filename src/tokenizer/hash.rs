//! A fast, unkeyed hasher for the tokenizer's lookup tables (token text -> id, merge pair ->
//! rank), whose lookups are the hot loops of loading and encoding.
//!
//! SipHash's resistance to collision attacks buys nothing here: every table is built once from
//! the model file and never grows with user input, so a user's text can only choose which
//! fixed bucket chains it probes, not make them longer. Not for tables keyed by user input.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Word-at-a-time multiplicative hashing with a splitmix64 finalizer, so that the low bits
/// the table indexes with depend on every input byte.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(26) ^ word).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 56));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

/// A hash map with [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Token text -> id.
pub(crate) type TokenMap = FastMap<String, u32>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn h<T: Hash + ?Sized>(x: &T) -> u64 {
        BuildHasherDefault::<FastHasher>::default().hash_one(x)
    }

    #[test]
    fn low_bits_depend_on_every_byte() {
        // Strings that share a long prefix must still spread over buckets.
        let mut low: Vec<u64> = (0..1000).map(|i| h(&format!("▁the_common_prefix_{i}")) & 0xFFF).collect();
        low.sort_unstable();
        low.dedup();
        assert!(low.len() > 700, "{} distinct low-bit patterns of 1000", low.len());
        assert_ne!(h("ab"), h("ab\0"));
        assert_ne!(h(&(1u32, 2u32)), h(&(2u32, 1u32)));
    }
}
