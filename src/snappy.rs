//! A snappy block compressor for the push bodies (`LOKI_COMPRESSION=snappy`). Loki reads any
//! valid snappy block (protocols.md 5.2); this writes one, faster than the `snap` crate's
//! encoder does on event batches, which stays in the build for decoding (`proto::json_text`).
//!
//! Why: compressing was the largest piece of the storm, ~17 % of kube-event's CPU (perf) and
//! ~3,600 instructions per event (callgrind, `snap`'s faithful port of the C++ encoder). On the
//! bodies of the benchmark's storm this takes ~23 % fewer instructions per byte (6.0 against
//! 7.8; 2,680 per event) and runs ~30 % faster, for bodies 0.3 % larger (benches/README.md).
//! The format and the shape of the search are snappy's (64 KiB fragments, a 16 Ki-entry table
//! of positions, the skip that speeds up over bytes that do not compress); the search, shared
//! with `deflate.rs`, is `lz.rs`, which says what differs from snappy's. Short literals are
//! copied as one 16-byte move, into room the output keeps for it ([`room`]), and nothing is
//! bounds-checked: the invariants are stated where the pointers are used.
//!
//! Format (github.com/google/snappy, format_description.txt): the uncompressed length as a
//! varint, then elements. A literal's tag is `(len-1) << 2` for up to 60 bytes, else 60 or 61
//! followed by `len-1` in 1 or 2 bytes. A copy is `01` (length 4–11, offset < 2048, 2 bytes)
//! or `10` (length 1–64, offset < 65536, 3 bytes). Copies reach back only within their 64 KiB
//! fragment, as the C++ encoder's do.

/// Input is compressed in fragments of this size; the table is cleared between them.
const FRAGMENT: usize = crate::lz::WHOLE;
use crate::lz::{MARGIN, MIN_MATCH};
/// Room past the end of the output that a short literal's 16-byte move may write into.
const SLACK: usize = 16;

/// The room a fragment of `n` bytes needs in the output: its elements take at most
/// `n + n / 256 + 3` bytes (see `fragment`), and a short literal may write [`SLACK`] past them.
fn room(n: usize) -> usize {
    n + n / 256 + 3 + SLACK
}

/// The largest input a snappy block can hold: its length is a 32-bit varint.
pub const MAX_INPUT: usize = u32::MAX as usize;

/// Keeps the search's table from one body to the next (32 KiB, cleared per fragment).
pub struct Encoder {
    table: Box<crate::lz::Table>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            table: crate::lz::table(),
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
    unsafe fn fragment(&mut self, src: &[u8], dst: *mut u8, d: usize) -> usize {
        let len = src.len();
        // SAFETY: the elements written are this function's contract; `Elements` writes
        // nothing else.
        unsafe {
            let mut e = Elements { dst, d };
            let next_emit = crate::lz::search::<_, FRAGMENT>(&mut self.table, src, &mut e);
            tail(e.dst, e.d, src.as_ptr().add(next_emit), len - next_emit)
        }
    }
}

/// Writes the search's findings as snappy elements at `dst + d`. Made only by `fragment`,
/// whose contract is the room they need, and private to this file: only `lz::search` calls
/// its methods, with what `lz::Sink` promises.
struct Elements {
    dst: *mut u8,
    d: usize,
}

impl crate::lz::Sink for Elements {
    #[inline(always)]
    fn literals(&mut self, src: &[u8], from: usize, to: usize) {
        debug_assert!(from <= to && from + MARGIN <= src.len());
        // SAFETY: `fragment`'s room; the 16 bytes from `from` are within `src` (`Sink`).
        self.d = unsafe { literal(self.dst, self.d, src.as_ptr().add(from), to - from) };
    }

    #[inline(always)]
    fn copy(&mut self, distance: usize, len: usize) {
        // SAFETY: `fragment`'s room; distances are within the fragment.
        self.d = unsafe { copy(self.dst, self.d, distance, len) };
    }
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
    use crate::testutil::{event_lines, random_mixtures, Rng};

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
        for v in random_mixtures() {
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
