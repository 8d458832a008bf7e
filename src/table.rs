//! The committed memory of shipped occurrences as one compact table: 16 bytes per slot, no
//! control bytes, filled to 85 % before it grows by half, and refitted to 80 % when the
//! pipeline is idle and it is less than 77 % full. hashbrown's map of the same records took
//! 25 bytes a slot at 44–88 % (it doubles): 6.4 MB for 200,000 events against 4 MB here
//! (issue 6, idle RSS).
//!
//! Open addressing with linear probing, Robin Hood ordering (an entry never sits further from
//! its home slot than the entry it passed, so a lookup for a missing key stops early) and
//! backward-shift deletion (no tombstones). A slot holds `mix(key)`, not the key: `mix` is a
//! bijection, and the home slot is the mixed key scaled to the table's length (which need not
//! be a power of two), so a probe computes a distance with one multiplication.
//!
//! What a slot keeps of a `Shipped`: the line's 32-bit fingerprint, the count saturated at
//! 65,535, and the time in whole minutes since the table's `base` (a table rebases itself
//! every two weeks or so, see `rebase`).

use crate::hash::mix;
use crate::spool::Shipped;

/// Grow (by half) when the table would be fuller than this, in per cent. An insert walks to
/// the first empty slot, about (1 + 1/(1 - load)^2)/2 slots: 13 at 80 %, 23 at 85 %, 50 at
/// 90 %.
const GROW_LOAD: usize = 85;
/// When idle, a table less than `SHRINK_BELOW` per cent full is refitted to `FIT_LOAD`: a
/// remembered event costs 19–21 bytes then. The gap to `GROW_LOAD` keeps a quiet cluster's
/// trickle of events from growing and refitting the table again and again: after a refit,
/// 5 % more events fit before it grows (10,000 at 200,000).
const FIT_LOAD: usize = 80;
const SHRINK_BELOW: usize = 77;
/// The smallest table that is allocated.
const MIN_SLOTS: usize = 16;
/// How far back of the first time stored the base starts: longer than any retention
/// (`DEDUP_RETENTION_SECONDS` is at most 30 days), so what a checkpoint holds fits.
const BASE_BACK_SECS: u32 = 32 * 86_400;

#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    /// `mix` of the event's uid key; 0 is an empty slot (`mixed`).
    key: u64,
    hash: u32,
    count: u16,
    /// Minutes since `Table::base`.
    at: u16,
}

#[derive(Clone, Default)]
pub struct Table {
    slots: Vec<Slot>,
    len: usize,
    /// Unix seconds that slots' `at` count from.
    base: u32,
    /// Slots looked at by `place`, for the tests of how much work filling takes.
    #[cfg(test)]
    probes: std::cell::Cell<u64>,
}

/// Bytes per slot (for the memory-per-event figures).
pub const SLOT_BYTES: usize = std::mem::size_of::<Slot>();

impl Table {
    /// A table that holds `n` entries without growing. Entries that come in the table's own
    /// order (a checkpoint read back: `iter` walks the slots, which are in the order of the
    /// keys' homes) must go into a table of their final size: inserted into a smaller one,
    /// they would all have their homes in its first part and pile up there, every insert
    /// walking the whole pile (a 200,000-event checkpoint took 13 s to read that way).
    pub fn with_capacity(n: usize) -> Table {
        let mut t = Table::default();
        if n > 0 {
            t.slots = vec![Slot::default(); (n * 100).div_ceil(FIT_LOAD).max(MIN_SLOTS)];
        }
        t
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots allocated.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Asks the CPU to bring `key`'s home slot and the next 64 bytes into the cache: a lookup
    /// or insert of a key prefetched a while before does not wait for memory (a table of
    /// 200,000 events is 3 MB; its misses were ~4 % of the storm's CPU, perf).
    pub fn prefetch(&self, key: u64) {
        prefetch(self.where_(), key);
    }

    /// Where the slots are, for `prefetch` without the table at hand (`Shipper` keeps it from
    /// its last lookup, so that it need not take the memory's lock to prefetch).
    pub fn where_(&self) -> Slots {
        Slots {
            at: self.slots.as_ptr() as usize,
            len: self.slots.len(),
        }
    }

    pub fn get(&self, key: u64) -> Option<Shipped> {
        self.find(mixed(key)).map(|i| self.shipped(self.slots[i]))
    }

    pub fn contains_key(&self, key: u64) -> bool {
        self.find(mixed(key)).is_some()
    }

    /// Adds or replaces what is known of `key`.
    pub fn insert(&mut self, key: u64, s: Shipped) {
        if self.len == 0 {
            self.base = minute_floor(s.at.saturating_sub(BASE_BACK_SECS));
        } else if s.at >= self.base && (s.at - self.base) / 60 > u16::MAX as u32 {
            self.rebase(s.at);
        }
        if (self.len + 1) * 100 > self.slots.len() * GROW_LOAD {
            self.resize((self.slots.len() * 3 / 2).max(MIN_SLOTS));
        }
        let slot = self.slot(mixed(key), s);
        if self.place(slot) {
            self.len += 1;
        }
    }

    pub fn remove(&mut self, key: u64) -> bool {
        match self.find(mixed(key)) {
            Some(i) => {
                self.remove_at(i);
                true
            }
            None => false,
        }
    }

    /// Keeps the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(u64, &Shipped) -> bool) {
        let n = self.slots.len();
        // From an empty slot (there is one: the table is never full) once around: a removal
        // shifts back only entries of the same run, which comes later in this order, and
        // never fills the empty slot it started from.
        let Some(start) = self.slots.iter().position(|s| s.key == 0) else {
            return;
        };
        let mut k = 1;
        while k < n {
            let i = (start + k) % n;
            let s = self.slots[i];
            if s.key != 0 && !keep(unmix(s.key), &self.shipped(s)) {
                // Look at slot i again: the next entry of the run moved into it.
                self.remove_at(i);
                continue;
            }
            k += 1;
        }
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Shipped)> + '_ {
        self.slots
            .iter()
            .filter(|s| s.key != 0)
            .map(|s| (unmix(s.key), self.shipped(*s)))
    }

    /// Gives back what a storm or a prune left unused: a table less than 77 % full refits
    /// itself to 80 % (one pass, a few milliseconds for 200,000 events).
    pub fn shrink_to_fit(&mut self) {
        if self.len * 100 >= self.slots.len() * SHRINK_BELOW {
            return;
        }
        let fit = if self.len == 0 {
            0
        } else {
            (self.len * 100).div_ceil(FIT_LOAD).max(MIN_SLOTS)
        };
        if fit < self.slots.len() {
            self.resize(fit);
        }
    }

    fn slot(&self, key: u64, s: Shipped) -> Slot {
        Slot {
            key,
            hash: s.hash,
            count: s.count,
            at: (s.at.saturating_sub(self.base) / 60).min(u16::MAX as u32) as u16,
        }
    }

    fn shipped(&self, s: Slot) -> Shipped {
        Shipped {
            hash: s.hash,
            count: s.count,
            at: self.base.saturating_add(s.at as u32 * 60),
        }
    }

    /// Moves the base forward so that `at` fits: every slot's minutes go down by as much
    /// (those older than the new base, older than any retention, stay at the base).
    fn rebase(&mut self, at: u32) {
        let base = minute_floor(at.saturating_sub(BASE_BACK_SECS)).max(self.base);
        let shift = ((base - self.base) / 60).min(u16::MAX as u32) as u16;
        for s in self.slots.iter_mut().filter(|s| s.key != 0) {
            s.at = s.at.saturating_sub(shift);
        }
        self.base += shift as u32 * 60;
    }

    fn home(&self, key: u64) -> usize {
        home(key, self.slots.len())
    }

    /// How far slot `i` is from the home of the key in it.
    fn distance(&self, key: u64, i: usize) -> usize {
        let h = self.home(key);
        if i >= h {
            i - h
        } else {
            i + self.slots.len() - h
        }
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() {
            0
        } else {
            i + 1
        }
    }

    fn find(&self, key: u64) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mut i = self.home(key);
        let mut dist = 0;
        loop {
            let s = self.slots[i];
            if s.key == key {
                return Some(i);
            }
            // Robin Hood: `key` would have taken the place of an entry nearer its home.
            if s.key == 0 || self.distance(s.key, i) < dist {
                return None;
            }
            i = self.next(i);
            dist += 1;
        }
    }

    /// Puts `slot` in the table, in place of its key's slot if there is one (then returns
    /// false); there is room. One pass: until `slot` would pass an entry nearer its home, its
    /// key may still be found; from there on, it is not in the table (Robin Hood).
    fn place(&mut self, mut slot: Slot) -> bool {
        let mut i = self.home(slot.key);
        let mut dist = 0;
        let mut searching = true;
        loop {
            #[cfg(test)]
            self.probes.set(self.probes.get() + 1);
            let s = self.slots[i];
            if s.key == 0 {
                self.slots[i] = slot;
                return true;
            }
            if searching && s.key == slot.key {
                self.slots[i] = slot;
                return false;
            }
            let d = self.distance(s.key, i);
            if d < dist {
                self.slots[i] = slot;
                slot = s;
                dist = d;
                searching = false;
            }
            i = self.next(i);
            dist += 1;
        }
    }

    fn remove_at(&mut self, mut i: usize) {
        loop {
            let j = self.next(i);
            let s = self.slots[j];
            if s.key == 0 || self.distance(s.key, j) == 0 {
                self.slots[i] = Slot::default();
                break;
            }
            self.slots[i] = s;
            i = j;
        }
        self.len -= 1;
    }

    fn resize(&mut self, n: usize) {
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); n]);
        // From an empty slot once around, the entries come in the order of their homes (Robin
        // Hood keeps each run sorted by home), which are in the same order in the new table:
        // each goes at or just after the end of what was placed before it, and the new table
        // is written front to back instead of at random (a refit of 200,000 entries took
        // 8 ms at random).
        let start = old.iter().position(|s| s.key == 0).unwrap_or(0);
        let (before, after) = old.split_at(start);
        for &s in after.iter().chain(before).filter(|s| s.key != 0) {
            self.place(s);
        }
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Where a table's slots were (`Table::where_`): an address and a length, not a borrow. The
/// table may have moved since; a prefetch of where it was is only a wasted hint.
#[derive(Clone, Copy, Default)]
pub struct Slots {
    at: usize,
    len: usize,
}

/// `Table::prefetch` of the table that was at `slots`.
pub fn prefetch(slots: Slots, key: u64) {
    #[cfg(target_arch = "x86_64")]
    if slots.len > 0 {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let at = slots
            .at
            .wrapping_add(home(mixed(key), slots.len).wrapping_mul(std::mem::size_of::<Slot>()));
        // SAFETY: a prefetch is a hint: it never faults, reads nothing into the program and
        // writes nothing, whatever the address (here one that held the table's slots, which
        // may have been freed since).
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(std::ptr::without_provenance(at));
            _mm_prefetch::<_MM_HINT_T0>(std::ptr::without_provenance(at.wrapping_add(64)));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (slots, key);
}

/// The slot where a table of `len` slots starts looking for the key held as `key` (`mixed`):
/// its place scaled from the 64-bit range to the table's.
fn home(key: u64, len: usize) -> usize {
    ((key as u128 * len as u128) >> 64) as usize
}

/// What a slot holds for `key`: `mix(key)`, 0 for an empty slot. `mix(0)` is 0, so the key 0
/// (one chance in 2^64: keys are hashes) shares the key 1's slot.
fn mixed(key: u64) -> u64 {
    mix(key.max(1))
}

/// The inverse of `mix` (splitmix64's finaliser): each xor-shift undone by shifting again,
/// each multiplication by the constant's inverse modulo 2^64.
fn unmix(mut z: u64) -> u64 {
    z ^= (z >> 31) ^ (z >> 62);
    z = z.wrapping_mul(0x3196_42b2_d24d_8ec3);
    z ^= (z >> 27) ^ (z >> 54);
    z = z.wrapping_mul(0x96de_1b17_3f11_9089);
    z ^ (z >> 30) ^ (z >> 60)
}

fn minute_floor(secs: u32) -> u32 {
    secs - secs % 60
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A prefetch is only a hint: where a table was (freed since), nowhere, or the top of the
    /// address space, it neither faults nor changes anything.
    #[test]
    fn prefetching_where_a_table_was_or_anywhere_is_harmless() {
        let mut t = Table::default();
        for k in 0..1000u64 {
            t.insert(k, Shipped::new(1, k, 1_800_000_000));
        }
        let was = t.where_();
        t.prefetch(7);
        drop(t);
        for key in [0, 7, u64::MAX] {
            prefetch(was, key);
            prefetch(Slots { at: 0, len: 5 }, key);
            prefetch(
                Slots {
                    at: usize::MAX - 8,
                    len: usize::MAX,
                },
                key,
            );
            prefetch(Slots::default(), key);
        }
    }

    fn s(count: u16, hash: u32, at: u32) -> Shipped {
        Shipped { hash, count, at }
    }

    /// The table against std's HashMap, through inserts, replacements, removals, prunes and
    /// refits, with keys that are hashes (as uid keys are) and keys that are small numbers
    /// (long runs of neighbouring homes).
    #[test]
    fn behaves_as_a_map() {
        for small_keys in [false, true] {
            let mut t = Table::default();
            let mut m: HashMap<u64, Shipped> = HashMap::new();
            let mut x = 0x1234_5678_9abc_def0u64;
            let mut rand = || {
                x = mix(x.wrapping_add(0x9e37_79b9_7f4a_7c15));
                x
            };
            let t0 = 1_800_000_000u32;
            for step in 0..60_000u32 {
                let r = rand();
                let key = if small_keys {
                    r % 5_000
                } else {
                    mix(r % 20_000)
                };
                match r >> 60 {
                    0..=9 => {
                        let v = s((r >> 8) as u16, (r >> 24) as u32, t0 + step * 60);
                        t.insert(key, v);
                        m.insert(key.max(1), v);
                    }
                    10..=13 => assert_eq!(t.remove(key), m.remove(&key.max(1)).is_some()),
                    14 => {
                        let cut = t0 + step * 60 - 20_000 * 60;
                        t.retain(|_, v| v.at >= cut);
                        m.retain(|_, v| v.at >= cut);
                    }
                    _ => t.shrink_to_fit(),
                }
                assert_eq!(t.len(), m.len());
                assert_eq!(t.get(key), m.get(&key.max(1)).copied(), "step {step}");
                // Never fuller than it grows at: there is always an empty slot.
                assert!(t.len() * 100 <= t.capacity() * GROW_LOAD);
            }
            let mut all: Vec<_> = t.iter().collect();
            all.sort_by_key(|e| e.0);
            let mut want: Vec<_> = m.into_iter().collect();
            want.sort_by_key(|e| e.0);
            assert_eq!(all, want);
        }
    }

    #[test]
    fn unmix_undoes_mix() {
        let mut x = 1u64;
        for k in [0, 1, 2, 7, u64::MAX, 1 << 63, 0x0123_4567_89ab_cdef] {
            assert_eq!(unmix(mix(k)), k);
        }
        for _ in 0..100_000 {
            x = x
                .wrapping_mul(0x5851_f42d_4c95_7f2d)
                .wrapping_add(1442695040888963407);
            assert_eq!(unmix(mix(x)), x);
            assert_eq!(mix(unmix(x)), x);
        }
    }

    /// A checkpoint is written in the table's own order and read back in it: sized up front,
    /// the table fills with a few probes per entry, as it does with keys in any order.
    #[test]
    fn fills_in_its_own_order_in_linear_time() {
        let mut t = Table::default();
        for k in 0..100_000u64 {
            t.insert(mix(k), s(1, 1, 1_800_000_000));
        }
        let mut read_back = Table::with_capacity(t.len());
        for (k, v) in t.iter() {
            read_back.insert(k, v);
        }
        assert_eq!(read_back.len(), t.len());
        let probes = read_back.probes.get() as f64 / t.len() as f64;
        assert!(probes < 4.0, "{probes} probes per entry");
        // Keys in no particular order, growing the table on the way: ~11 per entry.
        let random = t.probes.get() as f64 / t.len() as f64;
        assert!(random < 16.0, "{random} probes per entry");
        assert_eq!(read_back.capacity(), t.len() * 100 / FIT_LOAD);
    }

    #[test]
    fn keeps_times_to_the_minute_and_counts_to_65535() {
        let mut t = Table::default();
        let now = 1_800_000_000;
        t.insert(1, s(3, 9, now + 59));
        t.insert(2, s(u16::MAX, 9, now - 29 * 86_400));
        assert_eq!(t.get(1), Some(s(3, 9, now)));
        assert_eq!(t.get(2), Some(s(u16::MAX, 9, now - 29 * 86_400)));
        // 90 days later, one rebase after another: recent times stay exact.
        let mut at = now;
        for _ in 0..90 {
            at += 86_400;
            t.insert(3, s(1, 1, at));
            assert_eq!(t.get(3).map(|v| v.at), Some(at));
        }
        // What is older than the base now (older than any retention) reads as the base.
        assert!(t.get(1).unwrap().at <= at - BASE_BACK_SECS);
    }

    #[test]
    fn refits_when_idle() {
        let mut t = Table::default();
        for k in 0..200_000u64 {
            t.insert(mix(k), s(1, k as u32, 1_800_000_000));
        }
        t.shrink_to_fit();
        assert!(
            t.capacity() * SLOT_BYTES <= t.len() * 20,
            "{}",
            t.capacity()
        );
        for k in 0..200_000u64 {
            assert_eq!(t.get(mix(k)).map(|v| v.hash), Some(k as u32));
        }
        // A quiet cluster's trickle after a refit: no growth, and no refit again.
        let cap = t.capacity();
        for k in 0..2_000u64 {
            t.insert(mix(1 << 40 | k), s(1, 1, 1_800_000_000));
            t.shrink_to_fit();
        }
        assert_eq!(t.capacity(), cap);
        t.retain(|_, v| v.hash % 4 == 0);
        t.shrink_to_fit();
        assert_eq!(t.len(), 50_000);
        assert!(t.capacity() <= 50_000 * 100 / FIT_LOAD + 1);
        t.retain(|_, _| false);
        t.shrink_to_fit();
        assert_eq!(t.capacity(), 0);
        assert_eq!(t.get(mix(4)), None);
        assert_eq!(SLOT_BYTES, 16);
    }
}
