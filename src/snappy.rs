//! A snappy block compressor for the push bodies (`LOKI_COMPRESSION=snappy`). Loki reads any
//! valid snappy block (protocols.md 5.2); this writes one, faster than the `snap` crate's
//! encoder does on event batches, which stays in the build for decoding (`proto::json_text`).
//!
//! Why: compressing was the largest piece of the storm, ~17 % of kube-event's CPU (perf) and
//! ~3,600 instructions per event (callgrind, `snap`'s faithful port of the C++ encoder). On the
//! bodies of the benchmark's storm this takes ~23 % fewer instructions per byte (6.0 against
//! 7.8; 2,680 per event) and runs ~30 % faster, for bodies 0.3 % larger (benches/README.md).
//! The format and the shape of the search are snappy's (64 KiB fragments, a 16 Ki-entry table
//! of positions, the skip that speeds up over bytes that do not compress). What differs:
//!
//! - **Matches are searched at every other byte** and, once found, extended backwards over the
//!   bytes the search stepped past, as LZ4 does. Event lines are JSON: most of what repeats
//!   (keys, label values, prefixes of names) is longer than the step, and most of what does
//!   not (uids, times, counts) costs one probe per two bytes instead of one per byte.
//! - **The table is keyed by 5 bytes, not 4.** A 4-byte coincidence in JSON (`":"1`, `0-4b`)
//!   is rarely worth a copy: it cuts a literal in two for a 2-byte saving. Fewer false starts
//!   also mean fewer branches mispredicted.
//! - **Short literals are copied as one 16-byte move**, into room the output keeps for it
//!   ([`room`]), and nothing is bounds-checked inside the loop: the invariants are stated
//!   where the pointers are used.
//!
//! Format (github.com/google/snappy, format_description.txt): the uncompressed length as a
//! varint, then elements. A literal's tag is `(len-1) << 2` for up to 60 bytes, else 60 or 61
//! followed by `len-1` in 1 or 2 bytes. A copy is `01` (length 4–11, offset < 2048, 2 bytes)
//! or `10` (length 1–64, offset < 65536, 3 bytes). Copies reach back only within their 64 KiB
//! fragment, as the C++ encoder's do.

/// Input is compressed in fragments of this size; the table is cleared between them.
const FRAGMENT: usize = 1 << 16;
/// log2 of the table's entries (u16 positions within a fragment: 32 KiB).
const TABLE_BITS: u32 = 14;
/// The search stops this far before a fragment's end, so that every 8-byte load in it is
/// within the fragment. The last bytes go out as a literal.
const MARGIN: usize = 16;
/// Bytes between two probes of the search, before the skip makes the step longer.
const STEP: usize = 2;
/// A match is at least this long: the table is keyed by this many bytes.
const MIN_MATCH: usize = 5;
/// Room past the end of the output that a short literal's 16-byte move may write into.
const SLACK: usize = 16;

/// The room a fragment of `n` bytes needs in the output: its elements take at most
/// `n + n / 256 + 3` bytes (see `fragment`), and a short literal may write [`SLACK`] past them.
fn room(n: usize) -> usize {
    n + n / 256 + 3 + SLACK
}

/// The largest input a snappy block can hold: its length is a 32-bit varint.
pub const MAX_INPUT: usize = u32::MAX as usize;

/// Keeps the table from one body to the next (32 KiB, cleared per fragment).
pub struct Encoder {
    table: Box<[u16; 1 << TABLE_BITS]>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            table: Box::new([0; 1 << TABLE_BITS]),
        }
    }
}

impl Encoder {
    /// `input` as one snappy block, into `out` (cleared first). `None` if `input` is larger
    /// than [`MAX_INPUT`].
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<()> {
        if input.len() > MAX_INPUT {
            return None;
        }
        out.clear();
        crate::proto::varint(out, input.len() as u64);
        // Room is reserved a fragment at a time, so that the buffer grows with what the body
        // compresses to (a third of it for event batches), not with the worst case: the
        // pusher keeps compressed bodies in memory by their capacity (`pusher::CACHE_MAX`).
        for fragment in input.chunks(FRAGMENT) {
            out.reserve(room(fragment.len()));
            // SAFETY: `out` has room for `room(fragment.len())` bytes after its length, which
            // is `fragment`'s contract; `set_len` covers the bytes it wrote, in order.
            unsafe {
                let d = self.fragment(fragment, out.as_mut_ptr(), out.len());
                out.set_len(d);
            }
        }
        Some(())
    }

    /// Compresses `src` (at most `FRAGMENT` bytes) to `dst + d`; returns the new end.
    ///
    /// # Safety
    /// `dst` must be valid for writing `d + room(src.len())` bytes. The elements take at most
    /// `len + len / 256 + 3`: a literal's tag is 1 to 3 bytes, it is 3 only for a literal of
    /// 257 bytes or more, and the copy after a literal saves at least 2 (5 bytes or more as 2
    /// or 3); only the fragment's last literal has no copy after it. A short literal may also
    /// write `SLACK` bytes past its end.
    unsafe fn fragment(&mut self, src: &[u8], dst: *mut u8, mut d: usize) -> usize {
        let len = src.len();
        let p = src.as_ptr();
        // SAFETY (all of this function): every load is of 8 bytes at a position `at` with
        // `at + 8 <= len` (`at <= limit + 7`, or `at <= end8` in the extension, or a candidate
        // that is earlier than such a position), or of one byte below `s` or `cand`, which are
        // both above 0 when it is read, or a short literal's 16 bytes from `next_emit`, which
        // is at most `s <= limit`, so they end by `limit + 16 = len`. Table slots are
        // `hash(..) < 1 << TABLE_BITS`, and the table only holds positions below `len`
        // (written this fragment, or 0 from the fill), so every candidate is a valid position.
        // Writes follow `fragment`'s contract.
        unsafe {
            if len <= MARGIN {
                return tail(dst, d, p, len);
            }
            self.table.fill(0);
            let t = self.table.as_mut_ptr();
            let limit = len - MARGIN;
            let end8 = len - 8;
            let mut next_emit = 0;
            let mut s = 1;
            'fragment: loop {
                // Search: probe every STEP bytes, then longer steps after 32 misses in a row
                // (snappy's skip), until 5 bytes at `s` equal 5 at the table's candidate.
                let mut skip = 32;
                let mut cand;
                loop {
                    if s > limit {
                        break 'fragment;
                    }
                    let cur = key(p.add(s));
                    let h = hash(cur);
                    cand = *t.add(h) as usize;
                    *t.add(h) = s as u16;
                    if key(p.add(cand)) == cur {
                        break;
                    }
                    s += (skip >> 5) * STEP;
                    skip += 1;
                }
                // The bytes the search stepped over may begin the match.
                while s > next_emit && cand > 0 && *p.add(s - 1) == *p.add(cand - 1) {
                    s -= 1;
                    cand -= 1;
                }
                d = literal(dst, d, p.add(next_emit), s - next_emit);
                loop {
                    let start = s;
                    let (mut a, mut b) = (s + MIN_MATCH, cand + MIN_MATCH);
                    loop {
                        if a > end8 {
                            while a < len && *p.add(a) == *p.add(b) {
                                a += 1;
                                b += 1;
                            }
                            break;
                        }
                        let x = u64::from_le(load64(p.add(a)) ^ load64(p.add(b)));
                        if x != 0 {
                            a += (x.trailing_zeros() / 8) as usize;
                            break;
                        }
                        a += 8;
                        b += 8;
                    }
                    s = a;
                    d = copy(dst, d, start - cand, s - start);
                    next_emit = s;
                    if s > limit {
                        break 'fragment;
                    }
                    // As snappy does: remember the byte before, and try a match right here.
                    *t.add(hash(key(p.add(s - 1)))) = (s - 1) as u16;
                    let cur = key(p.add(s));
                    let h = hash(cur);
                    cand = *t.add(h) as usize;
                    *t.add(h) = s as u16;
                    if key(p.add(cand)) != cur {
                        s += 1;
                        break;
                    }
                }
            }
            tail(dst, d, p.add(next_emit), len - next_emit)
        }
    }
}

/// The `MIN_MATCH` bytes at `at`, as the low 40 bits of a little-endian word shifted to the top.
///
/// # Safety
/// `at` must be valid for reading 8 bytes.
#[inline(always)]
unsafe fn key(at: *const u8) -> u64 {
    // SAFETY: the caller's.
    u64::from_le(unsafe { load64(at) }) << (64 - 8 * MIN_MATCH as u32)
}

#[inline(always)]
fn hash(key: u64) -> usize {
    (key.wrapping_mul(0xcf1b_bcdc_b7a5_6463) >> (64 - TABLE_BITS)) as usize
}

/// # Safety
/// `at` must be valid for reading 8 bytes.
#[inline(always)]
unsafe fn load64(at: *const u8) -> u64 {
    // SAFETY: the caller's.
    unsafe { at.cast::<u64>().read_unaligned() }
}

/// A literal of `n` bytes from `src`, at `dst + d`; returns the new end.
///
/// # Safety
/// `src` must be valid for reading `max(n, 16)` bytes, `dst + d` for writing the element and
/// `SLACK` bytes past it.
#[inline(always)]
unsafe fn literal(dst: *mut u8, d: usize, src: *const u8, n: usize) -> usize {
    // SAFETY: the caller's.
    unsafe {
        if n == 0 {
            return d;
        }
        if n <= 16 {
            *dst.add(d) = ((n - 1) as u8) << 2;
            std::ptr::copy_nonoverlapping(src, dst.add(d + 1), 16);
            return d + 1 + n;
        }
        tag_and_bytes(dst, d, src, n)
    }
}

/// A literal of `n` bytes from `src` that may end the input: copies exactly `n` bytes.
///
/// # Safety
/// `src` must be valid for reading `n` bytes, `dst + d` for writing `n + 3`.
unsafe fn tail(dst: *mut u8, d: usize, src: *const u8, n: usize) -> usize {
    // SAFETY: the caller's.
    unsafe {
        if n == 0 {
            return d;
        }
        tag_and_bytes(dst, d, src, n)
    }
}

/// # Safety
/// As [`tail`]; `n` is 1 to `FRAGMENT`.
#[inline(always)]
unsafe fn tag_and_bytes(dst: *mut u8, mut d: usize, src: *const u8, n: usize) -> usize {
    debug_assert!((1..=FRAGMENT).contains(&n));
    let m = n - 1;
    // SAFETY: the caller's.
    unsafe {
        if m < 60 {
            *dst.add(d) = (m as u8) << 2;
            d += 1;
        } else if m < 1 << 8 {
            *dst.add(d) = 60 << 2;
            *dst.add(d + 1) = m as u8;
            d += 2;
        } else {
            *dst.add(d) = 61 << 2;
            *dst.add(d + 1) = m as u8;
            *dst.add(d + 2) = (m >> 8) as u8;
            d += 3;
        }
        std::ptr::copy_nonoverlapping(src, dst.add(d), n);
    }
    d + n
}

/// A copy of `n` bytes (at least `MIN_MATCH`) from `offset` back (1 to 65,535), at `dst + d`.
///
/// # Safety
/// `dst + d` must be valid for writing 3 bytes per 64 of `n`, and 3 more.
#[inline(always)]
unsafe fn copy(dst: *mut u8, mut d: usize, offset: usize, mut n: usize) -> usize {
    debug_assert!((1..FRAGMENT).contains(&offset) && n >= MIN_MATCH);
    // SAFETY: the caller's.
    unsafe {
        // Whole 64-byte copies, keeping at least 4 for the last (a copy is 4 bytes or more).
        while n >= 68 {
            d = copy2(dst, d, offset, 64);
            n -= 64;
        }
        if n > 64 {
            d = copy2(dst, d, offset, 60);
            n -= 60;
        }
        if n <= 11 && offset < 2048 {
            *dst.add(d) = ((offset >> 8) as u8) << 5 | ((n - 4) as u8) << 2 | 1;
            *dst.add(d + 1) = offset as u8;
            return d + 2;
        }
        copy2(dst, d, offset, n)
    }
}

/// # Safety
/// `dst + d` must be valid for writing 3 bytes.
#[inline(always)]
unsafe fn copy2(dst: *mut u8, d: usize, offset: usize, n: usize) -> usize {
    // SAFETY: the caller's.
    unsafe {
        *dst.add(d) = ((n - 1) as u8) << 2 | 2;
        dst.add(d + 1)
            .cast::<[u8; 2]>()
            .write_unaligned((offset as u16).to_le_bytes());
    }
    d + 3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64: the same pseudo-random bytes on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// Compresses `input`, checks the bound, and decodes it with the `snap` crate (the decoder
    /// Loki's Go snappy agrees with). Returns the compressed size.
    fn round_trip(input: &[u8]) -> usize {
        let mut out = Vec::new();
        Encoder::default().compress(input, &mut out).unwrap();
        // The bound the unsafe writes rely on (`room`, per fragment, without the slack).
        let bound = 5 + input
            .chunks(FRAGMENT)
            .map(|f| room(f.len()) - SLACK)
            .sum::<usize>();
        assert!(
            out.len() <= bound,
            "{} bytes compressed to {}, over the bound {bound}",
            input.len(),
            out.len()
        );
        let back = snap::raw::Decoder::new()
            .decompress_vec(&out)
            .unwrap_or_else(|e| panic!("{} bytes: not a snappy block: {e}", input.len()));
        if back != input {
            let at = back.iter().zip(input).position(|(a, b)| a != b);
            panic!(
                "{} bytes came back as {} bytes, first difference at {at:?}",
                input.len(),
                back.len()
            );
        }
        out.len()
    }

    /// Lines like the benchmark's storm: JSON with the same keys, varied values and uids.
    fn event_lines(n: usize, rng: &mut Rng) -> Vec<u8> {
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

    #[test]
    fn round_trips_edge_sizes_and_shapes() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let text = event_lines(700, &mut rng);
        assert!(text.len() > 3 * FRAGMENT);
        for n in (0..=70).chain([255, 256, 257, 258, 4096, 65535, 65536, 65537, 131_089]) {
            // Incompressible: literals of every tag form (1-byte lengths to 2-byte ones).
            round_trip(&rng.bytes(n));
            // Text, cut at every size around the margin and the fragment's end.
            round_trip(&text[..n.min(text.len())]);
        }
        round_trip(&text);
        // One byte repeated: copies of offset 1 that overlap what they make, split in 64s.
        round_trip(&vec![0; 200_000]);
        for n in 64..=70 {
            let mut v = rng.bytes(100);
            v.extend(std::iter::repeat_n(7, n));
            v.extend(rng.bytes(100));
            round_trip(&v);
        }
        // A short period, and a match reaching back exactly 2047 and 2048 bytes (the two copy
        // forms' boundary).
        round_trip(&b"abcde".repeat(30_000));
        for gap in [2030, 2031, 2032, 2033, 2047, 2048] {
            let word = rng.bytes(17);
            let mut v = word.clone();
            v.extend(rng.bytes(gap));
            v.extend(&word);
            v.extend(rng.bytes(40));
            round_trip(&v);
        }
    }

    #[test]
    fn round_trips_random_mixtures_of_literals_and_repeats() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..400 {
            let target = if case % 50 == 0 {
                150_000
            } else {
                rng.below(3000)
            };
            let alphabet = [2, 4, 16, 256][rng.below(4)];
            let mut v: Vec<u8> = Vec::with_capacity(target);
            while v.len() < target {
                if v.len() > 8 && rng.below(3) > 0 {
                    // A repeat of earlier bytes, possibly overlapping itself.
                    let offset = 1 + rng.below(v.len().min(70_000));
                    let n = 1 + rng.below(300);
                    for _ in 0..n {
                        v.push(v[v.len() - offset]);
                    }
                } else {
                    for _ in 0..1 + rng.below(80) {
                        v.push((rng.next() % alphabet) as u8);
                    }
                }
            }
            round_trip(&v);
        }
    }

    #[test]
    fn compresses_event_lines_as_well_as_snap() {
        // What the change was measured on: it must still compress (a literal-only block would
        // pass the round trips), and not much less than the `snap` encoder it replaced.
        let text = event_lines(2000, &mut Rng(7));
        let ours = round_trip(&text);
        // The buffer grows with the output, not with the worst case (the pusher counts cached
        // bodies by capacity).
        let mut out = Vec::new();
        Encoder::default().compress(&text, &mut out).unwrap();
        assert!(
            out.capacity() <= 2 * (out.len() + room(FRAGMENT)),
            "{} bytes in a buffer of {}",
            out.len(),
            out.capacity()
        );
        let theirs = snap::raw::Encoder::new().compress_vec(&text).unwrap().len();
        assert!(
            ours * 2 < text.len(),
            "{} bytes compressed to only {ours}",
            text.len()
        );
        assert!(
            ours * 100 < theirs * 102,
            "{ours} bytes, against {theirs} with snap"
        );
    }

    #[test]
    fn refuses_nothing_a_push_body_can_be() {
        let mut out = vec![1, 2, 3];
        assert_eq!(Encoder::default().compress(b"", &mut out), Some(()));
        assert_eq!(out, [0]);
    }
}
