//! Small helpers the fakes share and tests may use: base64, UTC time formatting without a
//! date crate, percent-decoding of query strings, and the one way this crate waits for a
//! condition (a `Condvar` with a deadline that panics saying what was missing).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const B64_STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_encode_with(data: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 with padding (what kubeconfig `*-data` fields hold).
pub fn base64_encode(data: &[u8]) -> String {
    b64_encode_with(data, B64_STD, true)
}

/// URL-safe base64 without padding (what the apiserver uses for continue tokens).
pub fn base64url_encode(data: &[u8]) -> String {
    b64_encode_with(data, B64_URL, false)
}

/// Decodes standard or URL-safe base64, with or without padding; `None` if malformed.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Decodes `%XX` escapes and `+` (as a space) in a query-string component.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits `a=1&b=2` into decoded pairs, in order.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// (year, month, day) of a count of days since 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a calendar date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Splits nanoseconds since the epoch into calendar fields.
fn fields(unix_nanos: i128) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = unix_nanos.div_euclid(1_000_000_000) as i64;
    let nanos = unix_nanos.rem_euclid(1_000_000_000) as u32;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400) as u32;
    (y, mo, d, sod / 3600, sod / 60 % 60, sod % 60, nanos)
}

/// Nanoseconds since the Unix epoch of `t`.
pub fn unix_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_nanos() -> i128 {
    unix_nanos(SystemTime::now())
}

/// `2026-11-25T19:40:33Z`: a `metav1.Time` (RFC 3339, whole seconds, UTC).
pub fn rfc3339_secs(unix_nanos: i128) -> String {
    let (y, mo, d, h, mi, s, _) = fields(unix_nanos);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `2026-11-25T19:40:35.215506Z`: a `metav1.MicroTime`.
pub fn rfc3339_micros(unix_nanos: i128) -> String {
    let (y, mo, d, h, mi, s, ns) = fields(unix_nanos);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}Z",
        ns / 1000
    )
}

/// Go's `time.Time.String()` for a UTC time: `2026-11-25 17:35:05.29176448 +0000 UTC`.
pub fn go_time_string(unix_nanos: i128) -> String {
    let (y, mo, d, h, mi, s, ns) = fields(unix_nanos);
    let frac = if ns == 0 {
        String::new()
    } else {
        format!(".{ns:09}").trim_end_matches('0').to_string()
    };
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}{frac} +0000 UTC")
}

/// Now as a `metav1.Time` string.
pub fn now_rfc3339() -> String {
    rfc3339_secs(now_nanos())
}

/// Now as a `metav1.MicroTime` string.
pub fn now_rfc3339_micros() -> String {
    rfc3339_micros(now_nanos())
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (UTC only) into nanoseconds since the epoch.
pub fn parse_rfc3339(text: &str) -> Option<i128> {
    let t = text.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-');
    let y: i64 = d.next()?.parse().ok()?;
    let mo: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, b),
        None => (time, ""),
    };
    let mut p = hms.split(':');
    let h: i64 = p.next()?.parse().ok()?;
    let mi: i64 = p.next()?.parse().ok()?;
    let s: i64 = p.next()?.parse().ok()?;
    let mut nanos: i128 = 0;
    if !frac.is_empty() {
        let digits = format!("{frac:0<9}");
        nanos = digits.get(..9)?.parse().ok()?;
    }
    let secs = days_from_civil(y, mo, day) * 86_400 + h * 3600 + mi * 60 + s;
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}

/// A `Mutex` + `Condvar` pair: the state every fake keeps and the signal that it changed.
pub struct Shared<T> {
    pub state: Mutex<T>,
    pub cond: Condvar,
}

impl<T> Shared<T> {
    pub fn new(value: T) -> Self {
        Shared {
            state: Mutex::new(value),
            cond: Condvar::new(),
        }
    }

    /// Locks the state, ignoring poisoning (a panicking handler thread must not hide the
    /// test's own failure message behind a PoisonError).
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state and wakes every waiter.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let r = f(&mut self.lock());
        self.cond.notify_all();
        r
    }

    /// Waits until `done(state)` holds or `timeout` passes. On timeout, panics with
    /// `what` and whatever `describe(state)` says about the state.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&T) -> bool,
        describe: impl FnOnce(&T) -> String,
    ) -> MutexGuard<'_, T> {
        let guard = self.lock();
        let (guard, result) = self
            .cond
            .wait_timeout_while(guard, timeout, |s| !done(s))
            .unwrap_or_else(|e| e.into_inner());
        if result.timed_out() && !done(&guard) {
            let detail = describe(&guard);
            drop(guard);
            panic!("timed out after {timeout:?} waiting for {what}; {detail}");
        }
        guard
    }
}
