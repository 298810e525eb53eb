//! The hasher of the batch checks' tables ([`super::BatchCheck`]): the objects' keys and
//! cluster IPs of one batch. std's SipHash there was ~10 ms of the agent's 20,000 documents of
//! 10,000 Services (a tenth of decoding them); this is a folded multiply per 8 bytes (as
//! `foldhash`, which the model does not depend on), seeded at random once per process, so
//! which names collide is not known in advance.

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// An odd constant with its bits spread (the golden ratio's).
const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// The high and low halves of the full product, xored: every bit of either input moves
/// about half of the output's.
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Builds [`BatchHasher`]s from the process's seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchHash {
    seed: u64,
}

impl Default for BatchHash {
    fn default() -> Self {
        static SEED: OnceLock<u64> = OnceLock::new();
        let seed = *SEED.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(K));
        Self { seed }
    }
}

impl BuildHasher for BatchHash {
    type Hasher = BatchHasher;
    fn build_hasher(&self) -> BatchHasher {
        BatchHasher(self.seed)
    }
}

/// The state: every word written is folded into it with the constant.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchHasher(u64);

impl BatchHasher {
    fn word(&mut self, w: u64) {
        self.0 = fold(self.0 ^ w, K);
    }
}

impl Hasher for BatchHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.word(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            // The length too: "a" and "a\0" differ.
            self.word(u64::from_le_bytes(b) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.word(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.word(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.word(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.word(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.word(n as u64);
    }

    fn finish(&self) -> u64 {
        fold(self.0, K ^ self.0.rotate_left(32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn equal_values_hash_alike_and_names_spread() {
        let h = BatchHash::default();
        assert_eq!(h.hash_one("svc-1"), BatchHash::default().hash_one("svc-1"));
        assert_ne!(h.hash_one("a"), h.hash_one("a\0"));
        assert_ne!(h.hash_one(("ab", "c")), h.hash_one(("a", "bc")));
        // Names that differ in one character land in different places of a table: the
        // low bits (a table's bucket) and the top 7 (hashbrown's tag) both vary.
        let names: Vec<u64> = (0..10_000)
            .map(|i| h.hash_one(("bench", format!("svc-{i}"))))
            .collect();
        let low: HashSet<u64> = names.iter().map(|x| x & 0x3fff).collect();
        let top: HashSet<u64> = names.iter().map(|x| x >> 57).collect();
        assert!(low.len() > 5_000, "{} of 16,384 buckets", low.len());
        assert_eq!(top.len(), 128);
    }
}
