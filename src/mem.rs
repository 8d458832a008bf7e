//! `memcpy`, `memmove`, `memcmp` and `bcmp` for the static musl build on x86_64.
//!
//! musl's x86_64 `memcpy` aligns the destination a byte at a time and then copies with
//! `rep movsq`, whose microcode start-up costs tens of cycles on every call. Copying is done
//! in many small pieces here (a decrypted TLS record into ureq's buffer, a frame into the
//! line buffer, a line into the batch, the batch into the push body), and in the benchmark's
//! storm musl's `memcpy` was 20 % of the watcher thread's samples (perf, benches/README.md).
//! glibc chooses vector moves by size; this does the same with SSE2, which every x86_64 CPU
//! has: up to 32 bytes in two overlapping moves, larger copies 64 bytes per step and the last
//! 16 bytes as one overlapping move loaded before anything is stored.
//!
//! musl's `memcmp` (and `bcmp`, which calls it) compares a byte at a time: ~660 instructions
//! per event in the storm (callgrind), comparing batch label values, resourceVersions and
//! keys. `compare` does eight bytes at a time.
//!
//! Only the musl build exports the symbols (see the bottom of this file). It must export
//! both copies: musl's `memmove` jumps into its `memcpy` object, so keeping musl's `memmove`
//! would link musl's `memcpy` as well. `copy` and `compare` are compiled and tested in every
//! x86_64 build.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_storeu_si128};

/// Copies `n` bytes from `src` to `dst`. The two ranges may overlap (`memmove`).
///
/// # Safety
/// `src` must be valid for reading and `dst` for writing `n` bytes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn copy(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY (all of this function): every access is within `src[..n]` or `dst[..n]`, unaligned
    // loads and stores are used throughout, and in each branch every byte that a store could
    // overwrite before it is read has been loaded into a register first.
    unsafe {
        if n <= 16 {
            if n >= 8 {
                let a = src.cast::<u64>().read_unaligned();
                let b = src.add(n - 8).cast::<u64>().read_unaligned();
                dst.cast::<u64>().write_unaligned(a);
                dst.add(n - 8).cast::<u64>().write_unaligned(b);
            } else if n >= 4 {
                let a = src.cast::<u32>().read_unaligned();
                let b = src.add(n - 4).cast::<u32>().read_unaligned();
                dst.cast::<u32>().write_unaligned(a);
                dst.add(n - 4).cast::<u32>().write_unaligned(b);
            } else if n >= 2 {
                let a = src.cast::<u16>().read_unaligned();
                let b = src.add(n - 2).cast::<u16>().read_unaligned();
                dst.cast::<u16>().write_unaligned(a);
                dst.add(n - 2).cast::<u16>().write_unaligned(b);
            } else if n == 1 {
                *dst = *src;
            }
            return;
        }
        let load = |at: usize| _mm_loadu_si128(src.add(at).cast::<__m128i>());
        let store = |at: usize, v: __m128i| _mm_storeu_si128(dst.add(at).cast::<__m128i>(), v);
        if n <= 32 {
            let (a, b) = (load(0), load(n - 16));
            store(0, a);
            store(n - 16, b);
            return;
        }
        if (dst as usize).wrapping_sub(src as usize) >= n {
            // `dst` is below `src` or past its end: forwards. A store never reaches bytes
            // that are still to be loaded, except the last 16, loaded first.
            let last = load(n - 16);
            let mut i = 0;
            while i + 64 < n {
                let (a, b, c, d) = (load(i), load(i + 16), load(i + 32), load(i + 48));
                store(i, a);
                store(i + 16, b);
                store(i + 32, c);
                store(i + 48, d);
                i += 64;
            }
            while i + 16 < n {
                let a = load(i);
                store(i, a);
                i += 16;
            }
            store(n - 16, last);
        } else {
            // `dst` overlaps the end of `src`: backwards, the first 16 bytes loaded first.
            let first = load(0);
            let mut e = n;
            while e > 64 + 16 {
                e -= 64;
                let (a, b, c, d) = (load(e), load(e + 16), load(e + 32), load(e + 48));
                store(e, a);
                store(e + 16, b);
                store(e + 32, c);
                store(e + 48, d);
            }
            while e > 16 {
                e -= 16;
                let a = load(e);
                store(e, a);
            }
            store(0, first);
        }
    }
}

/// Compares `n` bytes at `a` and `b` as C's `memcmp` does: 0 when equal, else the difference
/// of the first bytes that differ, as unsigned bytes.
///
/// # Safety
/// `a` and `b` must be valid for reading `n` bytes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn compare(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY (all of this function): every read is within `a[..n]` and `b[..n]`: words at
    // `i` while `i + 8 <= n`, then the last word at `n - 8` (overlapping, when `n >= 8`), or
    // single bytes below 8.
    unsafe {
        let differ = |at: usize| -> Option<i32> {
            let x = a.add(at).cast::<u64>().read_unaligned();
            let y = b.add(at).cast::<u64>().read_unaligned();
            // Little-endian: the lowest differing bit is in the first differing byte.
            (x != y).then(|| {
                let k = ((x ^ y).trailing_zeros() / 8) as usize;
                i32::from(*a.add(at + k)) - i32::from(*b.add(at + k))
            })
        };
        if n < 8 {
            for i in 0..n {
                let (x, y) = (*a.add(i), *b.add(i));
                if x != y {
                    return i32::from(x) - i32::from(y);
                }
            }
            return 0;
        }
        let mut i = 0;
        while i + 8 <= n {
            if let Some(d) = differ(i) {
                return d;
            }
            i += 8;
        }
        if i < n {
            if let Some(d) = differ(n - 8) {
                return d;
            }
        }
        0
    }
}

/// # Safety
/// As C's `memcmp`.
#[cfg(all(target_arch = "x86_64", target_env = "musl", not(test)))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the caller's promise, as for C's memcmp.
    unsafe { compare(a, b, n) }
}

/// # Safety
/// As C's `bcmp` (0 when equal, non-zero otherwise).
#[cfg(all(target_arch = "x86_64", target_env = "musl", not(test)))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the caller's promise, as for C's bcmp.
    unsafe { compare(a, b, n) }
}

/// # Safety
/// As C's `memcpy`.
#[cfg(all(target_arch = "x86_64", target_env = "musl", not(test)))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's promise, as for C's memcpy.
    unsafe { copy(dst, src, n) };
    dst
}

/// # Safety
/// As C's `memmove`.
#[cfg(all(target_arch = "x86_64", target_env = "musl", not(test)))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's promise, as for C's memmove.
    unsafe { copy(dst, src, n) };
    dst
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::{compare, copy};

    #[test]
    fn compares_as_memcmp_at_every_size_offset_and_byte() {
        let base = pattern(200);
        for n in 0..100 {
            for off in 0..3 {
                let a = &base[off..off + n];
                // SAFETY: both slices hold n bytes.
                let same = unsafe { compare(a.as_ptr(), base[off..].as_ptr(), n) };
                assert_eq!(same, 0, "{n}");
                for at in 0..n {
                    for (x, y) in [(0u8, 1u8), (1, 0), (0x7f, 0x80), (0xff, 0x00), (0x41, 0x61)] {
                        let mut l = a.to_vec();
                        let mut r = a.to_vec();
                        l[at] = x;
                        r[at] = y;
                        // A later difference must not count.
                        if at + 1 < n {
                            r[n - 1] ^= 0xff;
                        }
                        // SAFETY: both vectors hold n bytes.
                        let got = unsafe { compare(l.as_ptr(), r.as_ptr(), n) };
                        assert_eq!(got, i32::from(x) - i32::from(y), "{n} {at}");
                        assert_eq!(got.signum(), l.cmp(&r) as i32, "{n} {at}");
                    }
                }
            }
        }
    }

    /// The bytes of a buffer after copying `n` bytes from `from` to `to` within it, done one
    /// byte at a time in the direction that is right for the overlap.
    fn expected(buf: &[u8], from: usize, to: usize, n: usize) -> Vec<u8> {
        let mut b = buf.to_vec();
        let src: Vec<u8> = buf[from..from + n].to_vec();
        b[to..to + n].copy_from_slice(&src);
        b
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 + 7) as u8).collect()
    }

    #[test]
    fn copies_every_size_and_alignment_between_separate_buffers() {
        let src = pattern(1200);
        for n in 0..=700 {
            for s in 0..17 {
                for d in 0..17 {
                    let mut dst = vec![0xAAu8; 1200];
                    // SAFETY: s + n and d + n are within both buffers of 1200 bytes.
                    unsafe { copy(dst.as_mut_ptr().add(d), src.as_ptr().add(s), n) };
                    assert_eq!(&dst[d..d + n], &src[s..s + n], "n={n} s={s} d={d}");
                    assert!(dst[..d].iter().all(|&b| b == 0xAA), "before, n={n}");
                    assert!(dst[d + n..].iter().all(|&b| b == 0xAA), "after, n={n}");
                }
            }
        }
    }

    #[test]
    fn moves_within_one_buffer_in_both_directions_at_every_overlap() {
        let buf = pattern(600);
        let check = |from: usize, to: usize, n: usize| {
            if from + n > buf.len() || to + n > buf.len() {
                return;
            }
            let mut b = buf.clone();
            // SAFETY: both ranges are within `b`.
            unsafe { copy(b.as_mut_ptr().add(to), b.as_ptr().add(from), n) };
            assert_eq!(b, expected(&buf, from, to, n), "n={n} from={from} to={to}");
        };
        for n in [
            0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 79, 80, 81, 95, 96, 97,
            127, 128, 129, 200, 255, 256, 257, 300,
        ] {
            for from in 0..40 {
                for to in 0..40 {
                    check(from, to, n);
                }
            }
            // Far overlaps too: the destination a little below or above the source.
            for shift in [1usize, 15, 16, 17, 63, 64, 65, 150] {
                check(shift, 0, n);
                check(0, shift, n);
            }
        }
    }

    #[test]
    fn large_copies() {
        let src = pattern(1 << 20);
        for n in [4096, 65536 + 5, (1 << 20) - 3] {
            let mut dst = vec![0u8; 1 << 20];
            // SAFETY: n is within both buffers.
            unsafe { copy(dst.as_mut_ptr().add(1), src.as_ptr().add(2), n - 2) };
            assert_eq!(&dst[1..n - 1], &src[2..n]);
        }
    }
}
