//! A deflate compressor for the gzip push bodies (`LOKI_COMPRESSION=gzip`): one block with
//! the fixed Huffman codes of RFC 1951, what zlib-ng's and zlib-rs's level 1 (`deflate_quick`)
//! also writes, with the search `snappy.rs` also uses (`lz.rs`). Any inflater reads it
//! (Loki's is Go's `compress/gzip`); the `flate2` crate stays in the build to read gzip back
//! (a spooled body shown as JSON) and for the CRC-32.
//!
//! Why: gzip at level 1 was the largest piece of a gzip storm, ~11,800 instructions per event
//! (callgrind) and ~1.7 µs of the 2-core VM's time per event, against ~2,900 and ~0.6 µs for
//! snappy on the same batches (`bench hotpath`). Bodies of event lines are the same size as
//! zlib-rs's level 1 makes them, within a few percent (benches/README.md): both use the fixed
//! codes, and what differs is only which repeats are found.
//!
//! The search runs over the whole body instead of snappy's 64 KiB fragments, with copies
//! reaching back at most 32 KiB, deflate's window. Bits are gathered in a 64-bit word and
//! stored 8 bytes at a time; eight ASCII literals are coded at once.
//!
//! Format (RFC 1951, 3.2.5–3.2.6): a block header (BFINAL 1, BTYPE 01), symbols, and the end
//! of block (256). Literal and length symbols 0–143 are 8-bit codes from `0x30`, 144–255 9-bit
//! from `0x190`, 256–279 7-bit from 0, 280–287 8-bit from `0xc0`; distances are 5-bit codes.
//! Huffman codes are packed from their most significant bit, extra bits from their least.

use crate::lz::MIN_MATCH;

/// How far back a copy may reach.
const WINDOW: usize = 1 << 15;
/// The longest copy one length symbol can say.
const MAX_COPY: usize = 258;
/// The most bits one copy takes: a length code and its extra bits (8 + 5), a distance code
/// and its extra bits (5 + 13).
const COPY_BITS: usize = 31;
/// Literals gathered before the word is stored: 7 bits left over and 6 codes of up to 9 bits
/// fit in 64.
const LITERALS_PER_STORE: usize = 6;
const _: () = assert!(7 + 9 * LITERALS_PER_STORE <= 64 && 7 + COPY_BITS <= 64);

/// Keeps the search's table from one body to the next (32 KiB, cleared per body).
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
    /// Appends `input` to `out` as a raw deflate stream (one final block). `out` grows as
    /// the output does, from a third of the input (event batches compress 3.3 times).
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() / 3 + 64);
        // BFINAL = 1, then BTYPE = 01 (fixed codes), from the least significant bit.
        let mut w = Writer {
            out,
            bits: 0b011,
            n: 3,
        };
        let next_emit = crate::lz::search::<_, WINDOW>(&mut self.table, input, &mut w);
        w.emit_literals(&input[next_emit..]);
        // End of block: symbol 256, seven 0 bits; then the last partial byte.
        w.room(16);
        w.n += 7;
        w.store();
        if w.n > 0 {
            w.out.push(w.bits as u8);
        }
    }
}

impl crate::lz::Sink for Writer<'_> {
    #[inline(always)]
    fn literals(&mut self, src: &[u8], from: usize, to: usize) {
        self.emit_literals(&src[from..to]);
    }

    #[inline(always)]
    fn copy(&mut self, distance: usize, len: usize) {
        self.emit_copy(distance, len);
    }
}

/// Gathers bits, from the least significant, and stores them into `out` a word at a time.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    /// Bits not yet in `out`: the low `n`.
    bits: u64,
    /// At most 7 between calls.
    n: u32,
}

impl Writer<'_> {
    /// Makes room for `bytes` more bytes past the output's end.
    #[inline(always)]
    fn room(&mut self, bytes: usize) {
        if self.out.capacity() - self.out.len() < bytes {
            self.out.reserve(bytes);
        }
    }

    /// Adds `len` bits; the caller stores them before 64 are gathered.
    #[inline(always)]
    fn put(&mut self, code: u32, len: u32) {
        self.bits |= u64::from(code) << self.n;
        self.n += len;
    }

    /// Moves the whole bytes gathered into `out`, leaving at most 7 bits; `room` must have
    /// made room for 8 bytes.
    #[inline(always)]
    fn store(&mut self) {
        let at = self.out.len();
        debug_assert!(self.out.capacity() - at >= 8 && self.n < 64);
        let whole = self.n / 8;
        // SAFETY: there is room for 8 bytes after `at` (the callers' `room`); `set_len`
        // covers the `whole` bytes of the 8 written that hold gathered bits.
        unsafe {
            self.out
                .as_mut_ptr()
                .add(at)
                .cast::<u64>()
                .write_unaligned(self.bits.to_le());
            self.out.set_len(at + whole as usize);
        }
        self.bits >>= whole * 8;
        self.n -= whole * 8;
    }

    #[inline(always)]
    fn emit_literals(&mut self, bytes: &[u8]) {
        // At most 9 bits a byte, and 8 bytes for the last store.
        self.room(bytes.len() + bytes.len() / 8 + 16);
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            if w & 0x8080_8080_8080_8080 == 0 {
                self.ascii(w);
            } else {
                self.codes(&word[..4]);
                self.codes(&word[4..]);
            }
        }
        let rest = words.remainder();
        if rest.is_empty() {
            return;
        }
        let mut w = 0;
        for (i, &b) in rest.iter().enumerate() {
            w |= u64::from(b) << (8 * i);
        }
        if w & 0x8080_8080_8080_8080 == 0 {
            // Up to 7 ASCII bytes: their codes as `ascii` makes them, in one put of 8 bits
            // each (at most 56, with at most 7 gathered).
            let bits = 8 * rest.len() as u32;
            self.bits |= (ascii_codes(w) & ((1 << bits) - 1)) << self.n;
            self.n += bits;
            self.store();
        } else {
            let half = rest.len() / 2;
            self.codes(&rest[..half]);
            self.codes(&rest[half..]);
        }
    }

    /// Eight ASCII bytes (`w`, the first in its low byte): 8-bit codes, `0x30 + b` each, so
    /// the eight codes are the eight bytes, each plus `0x30` and with its bits reversed,
    /// stored as one word. Event lines are mostly ASCII; this takes ~2 instructions a byte
    /// where the table takes ~6.
    #[inline(always)]
    fn ascii(&mut self, w: u64) {
        let x = ascii_codes(w);
        let at = self.out.len();
        debug_assert!(self.out.capacity() - at >= 8 && self.n < 8);
        // SAFETY: `emit_literals` made room for 8 bytes a literal; all 8 written hold bits.
        unsafe {
            self.out
                .as_mut_ptr()
                .add(at)
                .cast::<u64>()
                .write_unaligned((self.bits | x << self.n).to_le());
            self.out.set_len(at + 8);
        }
        // The top `n` bits of the codes did not fit (none when `n` is 0).
        self.bits = x >> 1 >> (63 - self.n);
    }

    /// Up to `LITERALS_PER_STORE` literals by the table, then a store.
    #[inline(always)]
    fn codes(&mut self, bytes: &[u8]) {
        debug_assert!(bytes.len() <= LITERALS_PER_STORE);
        for &b in bytes {
            let code = LITERAL[b as usize];
            self.put(code & 0xffff, code >> 16);
        }
        self.store();
    }

    /// A copy of `n` bytes (at least `MIN_MATCH`) from `distance` back (1 to `WINDOW`).
    #[inline(always)]
    fn emit_copy(&mut self, distance: usize, mut n: usize) {
        debug_assert!((1..=WINDOW).contains(&distance) && n >= MIN_MATCH);
        let d = distance - 1;
        let (dist_code, dist_bits) = if d < 4 {
            (REVERSED5[d], 5)
        } else {
            // Codes 4–29: two per power of two, the bit below the top one picks which;
            // the bits below that are the extra bits.
            let top = usize::BITS - 1 - d.leading_zeros();
            let extra = top - 1;
            let code = 2 * top as usize + (d >> extra & 1);
            let low = (d & ((1 << extra) - 1)) as u32;
            (REVERSED5[code] | low << 5, 5 + extra)
        };
        // Copies longer than one symbol can say go as several, none shorter than 3.
        while n > MAX_COPY {
            let part = if n - MAX_COPY < 3 { n - 3 } else { MAX_COPY };
            self.one_copy(part, dist_code, dist_bits);
            n -= part;
        }
        self.one_copy(n, dist_code, dist_bits);
    }

    #[inline(always)]
    fn one_copy(&mut self, n: usize, dist_code: u32, dist_bits: u32) {
        // One store of 8 bytes: at most 7 bits left over and `COPY_BITS` fit in a word.
        self.room(8);
        let length = LENGTH[n - 3];
        self.put(length & 0xffff, length >> 16);
        self.put(dist_code, dist_bits);
        self.store();
    }
}

/// The 8-bit literal codes of the ASCII bytes of `w` (none above 0x7f), each in its byte:
/// `0x30 + b` with its bits reversed.
#[inline(always)]
fn ascii_codes(w: u64) -> u64 {
    // No byte is above 0x7f: none carries into the next.
    let mut x = w + 0x3030_3030_3030_3030;
    x = (x >> 1 & 0x5555_5555_5555_5555) | (x & 0x5555_5555_5555_5555) << 1;
    x = (x >> 2 & 0x3333_3333_3333_3333) | (x & 0x3333_3333_3333_3333) << 2;
    (x >> 4 & 0x0f0f_0f0f_0f0f_0f0f) | (x & 0x0f0f_0f0f_0f0f_0f0f) << 4
}

/// `code`'s `len` bits in the opposite order: Huffman codes are packed from their top bit.
const fn reversed(code: u32, len: u32) -> u32 {
    code.reverse_bits() >> (32 - len)
}

/// The fixed code of literal/length symbol `sym` (0–287), as `len << 16 | reversed code`.
const fn fixed(sym: u32) -> u32 {
    let (code, len) = match sym {
        0..=143 => (0x30 + sym, 8),
        144..=255 => (0x190 + sym - 144, 9),
        256..=279 => (sym - 256, 7),
        _ => (0xc0 + sym - 280, 8),
    };
    len << 16 | reversed(code, len)
}

/// Each byte's literal code: `len << 16 | bits`.
static LITERAL: [u32; 256] = {
    let mut t = [0; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = fixed(b as u32);
        b += 1;
    }
    t
};

/// Each copy length's symbol and extra bits (RFC 1951 3.2.5), indexed by `length - 3`:
/// `bits << 16 | code`, the extra bits above the symbol's code.
static LENGTH: [u32; MAX_COPY - 2] = {
    // The first length of each symbol 257–285, and its extra bits.
    const BASE: [u32; 29] = [
        3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
        131, 163, 195, 227, 258,
    ];
    const EXTRA: [u32; 29] = [
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
    ];
    let mut t = [0; MAX_COPY - 2];
    let mut i = 0;
    while i < 29 {
        let code = fixed(257 + i as u32);
        let (len, bits) = (code >> 16, code & 0xffff);
        let mut n = BASE[i];
        // 258 is symbol 285's alone, though 284's extra bits could also say it.
        let last = if i + 1 < 29 { BASE[i + 1] - 1 } else { 258 };
        let last = if last > 258 { 258 } else { last };
        while n <= last {
            let extra = n - BASE[i];
            t[(n - 3) as usize] = (len + EXTRA[i]) << 16 | bits | extra << len;
            n += 1;
        }
        i += 1;
    }
    t
};

/// The 5-bit distance codes 0–29, reversed.
static REVERSED5: [u32; 30] = {
    let mut t = [0; 30];
    let mut c = 0;
    while c < 30 {
        t[c] = reversed(c as u32, 5);
        c += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{event_lines, random_mixtures, Rng};
    use std::io::Read;

    /// Compresses `input`, checks the bound the output grows by, and inflates it with the
    /// `flate2` crate (miniz_oxide, an inflater written apart from this). Returns the size.
    fn round_trip(input: &[u8]) -> usize {
        let mut out = vec![0xaa];
        Encoder::default().compress(input, &mut out);
        assert_eq!(out[0], 0xaa, "the output is appended");
        let out = &out[1..];
        // 9 bits a literal at most, the 3-bit header and the 7-bit end.
        let bound = (input.len() * 9 + 10).div_ceil(8);
        assert!(
            out.len() <= bound,
            "{} bytes compressed to {}, over the bound {bound}",
            input.len(),
            out.len()
        );
        let mut back = Vec::new();
        flate2::read::DeflateDecoder::new(out)
            .read_to_end(&mut back)
            .unwrap_or_else(|e| panic!("{} bytes: not a deflate stream: {e}", input.len()));
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
    fn the_tables_say_what_rfc_1951_says() {
        // Literal 0: 00110000 (8 bits), sent from its top bit.
        assert_eq!(LITERAL[0], 8 << 16 | 0b0000_1100);
        // Literal 255: 111111111 (9 bits).
        assert_eq!(LITERAL[255], 9 << 16 | 0x1ff);
        // Length 3: symbol 257, 0000001 (7 bits).
        assert_eq!(LENGTH[0], 7 << 16 | 0b100_0000);
        // Length 12: symbol 265 (0001001), extra bit 1.
        assert_eq!(LENGTH[9], 8 << 16 | 1 << 7 | 0b100_1000);
        // Length 227: symbol 284 (11000100, 8 bits), 5 extra bits 0; 257: extra 30.
        assert_eq!(LENGTH[224], 13 << 16 | 0b0010_0011);
        assert_eq!(LENGTH[254], 13 << 16 | 30 << 8 | 0b0010_0011);
        // Length 258: symbol 285 (11000101), no extra bits.
        assert_eq!(LENGTH[255], 8 << 16 | 0b1010_0011);
        assert_eq!(REVERSED5[1], 0b10000);
    }

    #[test]
    fn round_trips_edge_sizes_and_shapes() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let text = event_lines(700, &mut rng);
        assert!(text.len() > 3 * WINDOW);
        for n in (0..=70).chain([
            255, 256, 257, 258, 4096, 32767, 32768, 32769, 65537, 131_089,
        ]) {
            // Incompressible: every literal code length.
            round_trip(&rng.bytes(n));
            // Text, cut at every size around the margin.
            round_trip(&text[..n.min(text.len())]);
        }
        round_trip(&text);
        // One byte repeated: copies of distance 1 that overlap what they make, split in 258s.
        round_trip(&vec![0; 200_000]);
        for n in 255..=270 {
            let mut v = rng.bytes(100);
            v.extend(std::iter::repeat_n(7, n));
            v.extend(rng.bytes(100));
            round_trip(&v);
        }
        // Every copy length from 5 to 600, with varied distances.
        for n in 5..=600 {
            let word = rng.bytes(n);
            let mut v = word.clone();
            let gap = 1 + rng.below(3000);
            v.extend(rng.bytes(gap));
            v.extend(&word);
            v.extend(rng.bytes(20));
            round_trip(&v);
        }
        // A match reaching back exactly as far as the window allows, and one byte farther.
        for gap in [
            WINDOW - 20,
            WINDOW - 17,
            WINDOW - 16,
            WINDOW - 15,
            WINDOW - 1,
        ] {
            let word = rng.bytes(17);
            let mut v = rng.bytes(3);
            v.extend(&word);
            v.extend(rng.bytes(gap));
            v.extend(&word);
            v.extend(rng.bytes(40));
            round_trip(&v);
        }
    }

    #[test]
    fn copies_reach_every_distance_code_and_no_farther_than_the_window() {
        let mut rng = Rng(0x51_7cc1_b727_220a);
        // One distance in each code's range, at its ends: 1..=4, 5, 6, 7, 8, ... 32768.
        let mut distances: Vec<usize> = (1..=4).collect();
        let mut base = 5;
        for extra in 1..=13 {
            for _ in 0..2 {
                distances.extend([base, base + (1 << extra) - 1]);
                base += 1 << extra;
            }
        }
        assert_eq!(distances.last(), Some(&WINDOW));
        for d in distances {
            // `d` bytes apart: a word, then other bytes, then the word again.
            let word = rng.bytes(12);
            let mut v = word.clone();
            if d >= 12 {
                v.extend(rng.bytes(d - 12));
                v.extend(&word);
            } else {
                // A period of `d`: the copy overlaps what it makes.
                v.truncate(d);
                for i in 0..60 {
                    v.push(v[i]);
                }
            }
            v.extend(rng.bytes(30));
            let size = round_trip(&v);
            assert!(
                size < v.len() + v.len() / 8 - 3,
                "distance {d}: no copy found ({} bytes to {size})",
                v.len()
            );
        }
    }

    #[test]
    fn round_trips_random_mixtures_of_literals_and_repeats() {
        for v in random_mixtures() {
            round_trip(&v);
        }
    }

    #[test]
    fn compresses_event_lines_about_as_well_as_zlib_level_1() {
        // What the change was measured on: it must still compress (a literal-only block would
        // pass the round trips). These lines, with their random uids, shrink 2.7 times, and
        // by a fifth less than with miniz_oxide's level 1, which builds Huffman codes for each
        // block (the storm's bodies: 3.3 times, against 3.4 with zlib-rs's level 1, which
        // uses the fixed codes, and 3.9 with miniz_oxide's; benches/README.md).
        let text = event_lines(2000, &mut Rng(7));
        let ours = round_trip(&text);
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut z, &text).unwrap();
        let theirs = z.finish().unwrap().len();
        assert!(
            ours * 5 < text.len() * 2 && ours * 10 < theirs * 13,
            "{} bytes compressed to {ours} (miniz_oxide level 1: {theirs})",
            text.len()
        );
        // The buffer grows with the output, not with the worst case (the pusher counts cached
        // bodies by capacity).
        let mut out = Vec::new();
        Encoder::default().compress(&text, &mut out);
        assert!(
            out.capacity() <= 2 * out.len() + 64,
            "{} bytes in a buffer of {}",
            out.len(),
            out.capacity()
        );
    }

    #[test]
    fn an_empty_body_is_an_empty_final_block() {
        let mut out = Vec::new();
        Encoder::default().compress(b"", &mut out);
        // 1, 01, then the 7 zero bits of symbol 256: 0x03 0x00, as zlib writes it.
        assert_eq!(out, [0x03, 0x00]);
    }
}
