//! Helpers for the unit tests inside `src/` (the integration tests have `tests/support/`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A cut message's marker read back: (bytes of the message kept, bytes cut as the marker says).
pub fn cut_marker(message: &str) -> (usize, usize) {
    use crate::event::{CUT_CLOSE, CUT_OPEN};
    let kept = message.find(CUT_OPEN).expect("a cut marker");
    let cut = message[kept + CUT_OPEN.len()..]
        .strip_suffix(CUT_CLOSE)
        .expect("the marker ends the message")
        .parse()
        .expect("a number of bytes");
    (kept, cut)
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kube-event-unit-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `contents` to `name` (creating directories) and returns the path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64: the same pseudo-random bytes on every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The compressors' 400 random round trips, the same on every run (`random_mixture`).
pub fn random_mixtures() -> impl Iterator<Item = Vec<u8>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..400).map(move |case| random_mixture(&mut rng, case))
}

/// Bytes for the compressors' round trips: literals from a small or full alphabet, mixed with
/// repeats of earlier bytes (overlapping themselves, from up to 70,000 back: beyond a snappy
/// fragment and deflate's window); every 50th case 150,000 bytes long, the others under 3,000.
fn random_mixture(rng: &mut Rng, case: usize) -> Vec<u8> {
    let target = if case.is_multiple_of(50) {
        150_000
    } else {
        rng.below(3000)
    };
    let alphabet = [2, 4, 16, 256][rng.below(4)];
    let mut v: Vec<u8> = Vec::with_capacity(target);
    while v.len() < target {
        if v.len() > 8 && rng.below(3) > 0 {
            let offset = 1 + rng.below(v.len().min(70_000));
            let n = 1 + rng.below(600);
            for _ in 0..n {
                v.push(v[v.len() - offset]);
            }
        } else {
            for _ in 0..1 + rng.below(80) {
                v.push((rng.next() % alphabet) as u8);
            }
        }
    }
    v
}

/// Lines like the benchmark's storm: JSON with the same keys, varied values and uids.
pub fn event_lines(n: usize, rng: &mut Rng) -> Vec<u8> {
    let reasons = [
        "BackOff",
        "Pulled",
        "Created",
        "Started",
        "Unhealthy",
        "Killing",
    ];
    let names = ["web", "api", "cache", "worker", "gateway", "postgres"];
    let mut out = Vec::new();
    for i in 0..n {
        let (reason, name) = (reasons[rng.below(6)], names[rng.below(6)]);
        let uid = |r: &mut Rng| {
            let (a, b) = (r.next(), r.next());
            format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                a >> 32,
                a >> 16 & 0xffff,
                a & 0xffff,
                b >> 48,
                b & 0xffff_ffff_ffff
            )
        };
        let line = format!(
            "{{\"time\":\"2026-11-26T13:{:02}:{:02}Z\",\"type\":\"Normal\",\"reason\":\"{reason}\",\
             \"namespace\":\"shop-{}\",\"kind\":\"Pod\",\"name\":\"{name}-{:x}\",\"message\":\
             \"{reason} container {name} in pod {name}-{:x}\",\"count\":{},\"component\":\"kubelet\",\
             \"host\":\"node-{:02}\",\"event_uid\":\"{}\",\"object_uid\":\"{}\"}}",
            i / 60 % 60,
            i % 60,
            rng.below(8),
            rng.next() >> 40,
            rng.next() >> 40,
            rng.below(60),
            rng.below(40),
            uid(rng),
            uid(rng),
        );
        // As in a protobuf body: a varint length before each line.
        out.extend_from_slice(&[0x12, line.len() as u8 | 0x80, (line.len() >> 7) as u8]);
        out.extend_from_slice(line.as_bytes());
    }
    out
}
