//! The search for repeats that both push-body encoders share: `snappy.rs` (snappy's format,
//! 64 KiB fragments) and `deflate.rs` (RFC 1951's fixed codes, a 32 KiB window). Each gives
//! a [`Sink`] that writes what is found in its own format.
//!
//! The shape is snappy's (a 16 Ki-entry table of positions, the skip that speeds up over
//! bytes that do not compress), with what made kube-event's snappy encoder faster than the
//! `snap` crate's on event batches (benches/README.md):
//!
//! - **Matches are searched at every other byte** and, once found, extended backwards over the
//!   bytes the search stepped past, as LZ4 does. Event lines are JSON: most of what repeats
//!   (keys, label values, prefixes of names) is longer than the step, and most of what does
//!   not (uids, times, counts) costs one probe per two bytes instead of one per byte.
//! - **The table is keyed by 5 bytes, not 4.** A 4-byte coincidence in JSON (`":"1`, `0-4b`)
//!   is rarely worth a copy: it cuts a literal in two for a 2-byte saving. Fewer false starts
//!   also mean fewer branches mispredicted.
//! - **The table holds the low 16 bits of positions** (32 KiB, which stays in L1 as snappy's
//!   does; deflate's search was ~15 % slower with u32 positions). Within a snappy fragment
//!   they are the positions; over a whole deflate body a slot may name a position 64 KiB
//!   away from the one it was written for, which is still a position, and its bytes are
//!   compared.
//! - Nothing is bounds-checked inside the loop: the invariants are stated where the pointers
//!   are used.

/// log2 of the table's entries.
const TABLE_BITS: u32 = 14;
/// The search stops this far before the input's end, so that every 8-byte load in it is
/// within the input. The last bytes are the caller's to write as literals.
pub const MARGIN: usize = 16;
/// Bytes between two probes of the search, before the skip makes the step longer.
const STEP: usize = 2;
/// A match is at least this long: the table is keyed by this many bytes.
pub const MIN_MATCH: usize = 5;

/// The longest window: 64 KiB, as far as a table slot can say.
pub const WHOLE: usize = 1 << 16;

/// The table of positions, kept from one body to the next (cleared per search).
pub type Table = [u16; 1 << TABLE_BITS];

/// A new, cleared table, on the heap.
pub fn table() -> Box<Table> {
    Box::new([0; 1 << TABLE_BITS])
}

/// Where a search's findings go, in the order of the input.
pub trait Sink {
    /// `src[from..to]` goes as literals. `from + MARGIN <= src.len()`: the 16 bytes from
    /// `from` are within `src`, whatever `to` is.
    fn literals(&mut self, src: &[u8], from: usize, to: usize);
    /// A copy of `len` bytes (at least [`MIN_MATCH`]) from `distance` back (1 to the
    /// search's `WINDOW`, and below 65,536).
    fn copy(&mut self, distance: usize, len: usize);
}

/// Searches `src` for repeats at most `WINDOW` bytes back, giving `sink` the literals and
/// copies of `src[..x]` in order, and returns `x`: the bytes from `x` on (at most the last
/// `MARGIN` and a few; all of an input of `MARGIN` bytes or fewer, which is not searched)
/// are the caller's to write as literals. With `WINDOW` = [`WHOLE`], `src` must be at most
/// that long (a snappy fragment) and the table's slots are the positions themselves: no
/// distance to work out or check, which cost snappy ~20 % more instructions.
#[inline(always)]
pub fn search<S: Sink, const WINDOW: usize>(table: &mut Table, src: &[u8], sink: &mut S) -> usize {
    assert!(WINDOW <= WHOLE && (WINDOW < WHOLE || src.len() <= WHOLE));
    if src.len() <= MARGIN {
        return 0;
    }
    let len = src.len();
    let p = src.as_ptr();
    // SAFETY (all of this function): every load is of 8 bytes at a position `at` with
    // `at + 8 <= len` (`at <= limit + 7`, or `at <= end8` in the extension, or a candidate
    // that is not after such a position), or of one byte below `s` or `cand`, which are both
    // above 0 when it is read. Table slots are `hash(..) < 1 << TABLE_BITS`.
    //
    // A slot holds the low 16 bits of a position `r` at or below `s` (written this search
    // before `s` was probed, or 0 from the fill), so `back`, `s - r` modulo 2^16, is at most
    // `s - r` and the candidate `s - back` is a position from 0 to `s`. It need not be `r`
    // (when `r` is 64 KiB back or more): any position is a valid candidate, since its bytes
    // are compared. `back` from 1 to `WINDOW` is a copy's distance. With `WINDOW` = `WHOLE`,
    // every position fits in 16 bits, the slot is `r`, below `s`.
    unsafe {
        table.fill(0);
        let t = table.as_mut_ptr();
        let limit = len - MARGIN;
        let end8 = len - 8;
        let mut next_emit = 0;
        let mut s = 1;
        'input: loop {
            // Search: probe every STEP bytes, then longer steps after 32 misses in a row
            // (snappy's skip), until 5 bytes at `s` equal 5 at a candidate in the window.
            let mut skip = 32;
            let mut cand = loop {
                if s > limit {
                    break 'input;
                }
                if let Some(cand) = probe::<WINDOW>(t, p, s) {
                    break cand;
                }
                s += (skip >> 5) * STEP;
                skip += 1;
            };
            // The bytes the search stepped over may begin the match.
            while s > next_emit && cand > 0 && *p.add(s - 1) == *p.add(cand - 1) {
                s -= 1;
                cand -= 1;
            }
            sink.literals(src, next_emit, s);
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
                sink.copy(start - cand, s - start);
                next_emit = s;
                if s > limit {
                    break 'input;
                }
                // As snappy does: remember the byte before, and try a match right here.
                *t.add(hash(key(p.add(s - 1)))) = (s - 1) as u16;
                match probe::<WINDOW>(t, p, s) {
                    Some(c) => cand = c,
                    None => {
                        s += 1;
                        break;
                    }
                }
            }
        }
        next_emit
    }
}

/// Looks `s` up in the table and puts it there: the candidate the slot named, if the 5 bytes
/// there equal those at `s` and it is at most `WINDOW` back.
///
/// # Safety
/// `t` must be the table, `p + s` valid for reading 8 bytes, and the slots hold positions
/// as `search` says.
#[inline(always)]
unsafe fn probe<const WINDOW: usize>(t: *mut u16, p: *const u8, s: usize) -> Option<usize> {
    // SAFETY: the caller's; the candidate is a position from 0 to `s` (`search`).
    unsafe {
        let cur = key(p.add(s));
        let h = hash(cur);
        let slot = *t.add(h);
        *t.add(h) = s as u16;
        if WINDOW == WHOLE {
            let cand = slot as usize;
            return (key(p.add(cand)) == cur).then_some(cand);
        }
        let back = (s as u16).wrapping_sub(slot) as usize;
        let cand = s - back;
        (back.wrapping_sub(1) < WINDOW && key(p.add(cand)) == cur).then_some(cand)
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
