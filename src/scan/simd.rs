//! The bytes `scan.rs` looks for, found 16 or 64 at a time: with SSE2 on x86_64 (every such
//! CPU has it), eight in a `u64` elsewhere. Each function answers one bit per byte (bit k for
//! byte k of its chunk), so the code that uses the bits is the same on every target; the tests
//! hold both versions to a byte-by-byte reference.

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
pub(crate) use sse2::string_stops;
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
pub(super) use sse2::{equal, quotes_backslashes, structure};
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
pub(crate) use swar::string_stops;
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
pub(super) use swar::{equal, quotes_backslashes, structure};

/// The bytes of 64 that matter to a value stepped over (see `Reader::skip_nested`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Structure {
    pub quote: u64,
    pub backslash: u64,
    /// `{`, `[`, `}` and `]`.
    pub bracket: u64,
}

/// The bytes that have an escaping backslash before them, given the backslashes of a block of
/// 64; `carry` is 1 when the block before ended in a backslash that escapes this block's first
/// byte, and is set for the next block. A run of backslashes escapes every other byte from its
/// start, so the run's parity decides whether the byte after it is escaped. simdjson's
/// `escape_scanner::next`: the runs that start on an odd bit are added to the backslashes
/// (carrying each such run's bits past its end), which flips the alternation for them.
#[inline(always)]
pub(super) fn escaped(backslash: u64, carry: &mut u64) -> u64 {
    const EVEN: u64 = 0x5555_5555_5555_5555;
    // A first byte escaped from the block before cannot start a run.
    let backslash = backslash & !*carry;
    let follows = backslash << 1 | *carry;
    let odd_starts = backslash & !EVEN & !follows;
    let (sum, overflow) = odd_starts.overflowing_add(backslash);
    *carry = u64::from(overflow);
    (EVEN ^ (sum << 1)) & follows
}

/// Bit k set when an odd number of the bits 0..=k of `x` are set: with `x` the quotes that
/// open or close a string, the bytes inside strings (opening quote included, closing not).
#[inline(always)]
pub(super) fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        _mm_setzero_si128, _mm_subs_epu8,
    };

    use super::Structure;

    /// The bytes that end a plain run in a string (`"`, `\` and control characters, below
    /// 0x20), the bytes from 0x80, and the quotes.
    #[inline(always)]
    pub(crate) fn string_stops(c: &[u8; 16]) -> (u32, u32, u32) {
        // SAFETY: SSE2 is enabled in this build (the cfg of the module); the load reads the
        // 16 bytes of `c` and has no alignment requirement.
        unsafe {
            let v = _mm_loadu_si128(c.as_ptr().cast());
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            // Below 0x20: subtracting 0x1f (saturating at 0) leaves 0.
            let control =
                _mm_cmpeq_epi8(_mm_subs_epu8(v, _mm_set1_epi8(0x1f)), _mm_setzero_si128());
            let stop = _mm_or_si128(_mm_or_si128(quote, backslash), control);
            (
                _mm_movemask_epi8(stop) as u32,
                _mm_movemask_epi8(v) as u32,
                _mm_movemask_epi8(quote) as u32,
            )
        }
    }

    /// The bytes where `a` and `b` are equal.
    #[inline(always)]
    pub(in crate::scan) fn equal(a: &[u8; 16], b: &[u8; 16]) -> u32 {
        // SAFETY: as in `string_stops`, for the 16 bytes of `a` and of `b`.
        unsafe {
            let a = _mm_loadu_si128(a.as_ptr().cast());
            let b = _mm_loadu_si128(b.as_ptr().cast());
            _mm_movemask_epi8(_mm_cmpeq_epi8(a, b)) as u32
        }
    }

    /// The bytes that are `"` or `\`.
    #[inline(always)]
    pub(in crate::scan) fn quotes_backslashes(c: &[u8; 16]) -> u32 {
        // SAFETY: as in `string_stops`.
        unsafe {
            let v = _mm_loadu_si128(c.as_ptr().cast());
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            _mm_movemask_epi8(_mm_or_si128(quote, backslash)) as u32
        }
    }

    /// Backslashes are rare (none in a typical `managedFields`): their four compares are
    /// joined and tested once, and only a block with one gets their mask: ~24 instructions
    /// per frame less than moving four 16-bit masks into one for every block.
    #[inline(always)]
    pub(in crate::scan) fn structure(c: &[u8; 64]) -> Structure {
        let mut s = Structure {
            quote: 0,
            backslash: 0,
            bracket: 0,
        };
        // SAFETY: as in `string_stops`; each load reads 16 of the 64 bytes of `c`.
        unsafe {
            let v: [__m128i; 4] =
                std::array::from_fn(|k| _mm_loadu_si128(c[16 * k..].as_ptr().cast()));
            let backslash = _mm_set1_epi8(b'\\' as i8);
            let mut any_backslash = _mm_setzero_si128();
            for (k, &v) in v.iter().enumerate() {
                // `[` and `]` are `{` and `}` without 0x20.
                let folded = _mm_or_si128(v, _mm_set1_epi8(0x20));
                let bracket = _mm_or_si128(
                    _mm_cmpeq_epi8(folded, _mm_set1_epi8(b'{' as i8)),
                    _mm_cmpeq_epi8(folded, _mm_set1_epi8(b'}' as i8)),
                );
                let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
                any_backslash = _mm_or_si128(any_backslash, _mm_cmpeq_epi8(v, backslash));
                s.quote |= u64::from(_mm_movemask_epi8(quote) as u32) << (16 * k);
                s.bracket |= u64::from(_mm_movemask_epi8(bracket) as u32) << (16 * k);
            }
            if _mm_movemask_epi8(any_backslash) != 0 {
                for (k, &v) in v.iter().enumerate() {
                    let m = _mm_movemask_epi8(_mm_cmpeq_epi8(v, backslash));
                    s.backslash |= u64::from(m as u32) << (16 * k);
                }
            }
        }
        s
    }
}

/// The same answers eight bytes at a time in a `u64`, exact for every byte (not only the
/// first hit), for targets without SSE2; compiled on x86_64 too for the tests.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "sse2"))))]
mod swar {
    use super::Structure;

    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW: u64 = !HIGH;

    fn word(c: &[u8]) -> u64 {
        u64::from_le_bytes(c[..8].try_into().expect("8 bytes"))
    }

    /// The high bit of each byte of `v` below `n` (at most 0x80): the low seven bits plus
    /// `0x80 - n` carry into the high bit exactly when they are `n` or more, and never into
    /// the next byte.
    fn below(v: u64, n: u8) -> u64 {
        !(((v & LOW) + ONES * u64::from(0x80 - n)) | v) & HIGH
    }

    /// The high bit of each byte of `v` that is `c`.
    fn eq(v: u64, c: u8) -> u64 {
        below(v ^ (ONES * u64::from(c)), 1)
    }

    /// The high bits of the eight bytes as eight bits (SSE2's `movemask`): the multiplication
    /// moves byte j's bit to bit 56 + j.
    fn bits(m: u64) -> u32 {
        ((m >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
    }

    fn per_word(c: &[u8], f: impl Fn(u64) -> u64) -> u64 {
        c.chunks_exact(8)
            .enumerate()
            .fold(0, |m, (k, w)| m | u64::from(bits(f(word(w)))) << (8 * k))
    }

    pub(crate) fn string_stops(c: &[u8; 16]) -> (u32, u32, u32) {
        let stop = per_word(c, |v| eq(v, b'"') | eq(v, b'\\') | below(v, 0x20));
        (
            stop as u32,
            per_word(c, |v| v & HIGH) as u32,
            per_word(c, |v| eq(v, b'"')) as u32,
        )
    }

    pub(in crate::scan) fn equal(a: &[u8; 16], b: &[u8; 16]) -> u32 {
        (0..2).fold(0, |m, k| {
            let differ = word(&a[8 * k..]) ^ word(&b[8 * k..]);
            m | bits(below(differ, 1)) << (8 * k)
        })
    }

    pub(in crate::scan) fn quotes_backslashes(c: &[u8; 16]) -> u32 {
        per_word(c, |v| eq(v, b'"') | eq(v, b'\\')) as u32
    }

    pub(in crate::scan) fn structure(c: &[u8; 64]) -> Structure {
        Structure {
            quote: per_word(c, |v| eq(v, b'"')),
            backslash: per_word(c, |v| eq(v, b'\\')),
            bracket: per_word(c, |v| {
                let folded = v | (ONES * 0x20);
                eq(folded, b'{') | eq(folded, b'}')
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answers byte by byte.
    fn reference(c: &[u8]) -> (u64, u64, u64, u64, u64) {
        let mask = |f: &dyn Fn(u8) -> bool| {
            c.iter()
                .enumerate()
                .fold(0u64, |m, (k, &b)| m | u64::from(f(b)) << k)
        };
        (
            mask(&|b| b == b'"' || b == b'\\' || b < 0x20),
            mask(&|b| b >= 0x80),
            mask(&|b| b == b'"'),
            mask(&|b| b == b'\\'),
            mask(&|b| matches!(b, b'{' | b'}' | b'[' | b']')),
        )
    }

    /// Every byte value at every position, among neighbours that are hits or not.
    fn chunks() -> Vec<[u8; 64]> {
        let mut out = Vec::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for byte in 0..=255u8 {
            for fill in [b'a', b'"', 0x00, 0xff, b'\\', b'{', 0x1f, 0x20, 0x80, 0x7f] {
                for at in 0..64 {
                    let mut c = [fill; 64];
                    c[at] = byte;
                    out.push(c);
                }
            }
            let mut c = [0u8; 64];
            for b in &mut c {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            c[seed as usize % 64] = byte;
            out.push(c);
        }
        out
    }

    #[test]
    fn sse2_and_swar_find_exactly_the_bytes_asked_for() {
        for c in chunks() {
            let (stop, high, quote, backslash, bracket) = reference(&c);
            let want = Structure {
                quote,
                backslash,
                bracket,
            };
            assert_eq!(structure(&c), want, "{c:?}");
            assert_eq!(swar::structure(&c), want, "{c:?}");
            for k in 0..4 {
                let c16: &[u8; 16] = c[16 * k..16 * k + 16].try_into().unwrap();
                let part = |m: u64| (m >> (16 * k)) as u32 & 0xffff;
                let stops = (part(stop), part(high), part(quote));
                assert_eq!(string_stops(c16), stops, "{c16:?}");
                assert_eq!(swar::string_stops(c16), stops, "{c16:?}");
                let qb = part(quote | backslash);
                assert_eq!(quotes_backslashes(c16), qb, "{c16:?}");
                assert_eq!(swar::quotes_backslashes(c16), qb, "{c16:?}");
                // Against the chunk after it (its neighbours differ in one byte, or all).
                let other: &[u8; 16] = c[(16 * k + 16) % 64..][..16].try_into().unwrap();
                let same = (0..16).fold(0, |m, j| m | u32::from(c16[j] == other[j]) << j);
                assert_eq!(equal(c16, other), same, "{c16:?} {other:?}");
                assert_eq!(swar::equal(c16, other), same, "{c16:?} {other:?}");
            }
        }
    }

    #[test]
    fn escapes_and_strings_match_a_byte_by_byte_walk() {
        // Blocks of backslashes, quotes and letters, so that runs of backslashes of every
        // length cross the 64-byte edges.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 0..20_000 {
            let len = 64 * (1 + round % 3);
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    match seed % 8 {
                        0..=3 => b'\\',
                        4 | 5 => b'"',
                        _ => b'a',
                    }
                })
                .collect();
            // The walk: a byte is escaped when an unescaped backslash is before it; a
            // string is open after an odd number of unescaped quotes.
            let mut want_escaped = vec![false; len];
            let mut want_inside = vec![false; len];
            let mut inside = false;
            for k in 0..len {
                let escaped = k > 0 && text[k - 1] == b'\\' && !want_escaped[k - 1];
                want_escaped[k] = escaped;
                if text[k] == b'"' && !escaped {
                    inside = !inside;
                }
                want_inside[k] = inside;
            }
            let (mut carry, mut open) = (0u64, 0u64);
            for (n, block) in text.chunks_exact(64).enumerate() {
                let s = structure(block.try_into().unwrap());
                let e = escaped(s.backslash, &mut carry);
                let inside = prefix_xor(s.quote & !e) ^ open;
                open = ((inside as i64) >> 63) as u64;
                for k in 0..64 {
                    let at = 64 * n + k;
                    assert_eq!(e >> k & 1 == 1, want_escaped[at], "escaped at {at}");
                    assert_eq!(inside >> k & 1 == 1, want_inside[at], "inside at {at}");
                }
            }
        }
    }
}
