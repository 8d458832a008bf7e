//! RFC 3339 timestamps as the API server writes them (`metav1.Time`, to the second, and
//! `metav1.MicroTime`, to the microsecond) -> Unix nanoseconds, which is what Loki wants.
//! A hand-written parser: the formats are fixed, and a date crate would be a dependency for
//! twenty lines.

/// The Unix time in whole seconds (0 if the clock is before 1970).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into nanoseconds since the Unix epoch.
/// Returns `None` for anything else, including dates before 1970 and after 2262.
pub fn parse_rfc3339_nanos(s: &str) -> Option<i64> {
    let (secs, frac) = parse_rfc3339(s)?;
    secs.checked_mul(1_000_000_000)?.checked_add(frac as i64)
}

/// Parses RFC 3339 into seconds since the Unix epoch and nanoseconds, for any year from
/// 1970 to 9999 (credential expiry times like `2999-01-01T00:00:00Z` are real).
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    if let Ok(utc) = <&[u8; 20]>::try_from(s.as_bytes()) {
        if let Some(secs) = parse_utc_seconds(utc) {
            return Some((secs, 0));
        }
    }
    parse_rfc3339_any(s)
}

/// `parse_rfc3339` for every shape RFC 3339 allows.
fn parse_rfc3339_any(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = digits(&b[0..4])? as i64;
    let month = digits(&b[5..7])? as i64;
    let day = digits(&b[8..10])? as i64;
    let hour = digits(&b[11..13])? as i64;
    let min = digits(&b[14..16])? as i64;
    let sec = digits(&b[17..19])? as i64;
    let local = civil_seconds(year, month, day, hour, min, sec)?;
    let mut i = 19;
    let mut frac_nanos: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                frac_nanos = frac_nanos * 10 + (b[i] - b'0') as i64;
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..9 {
            frac_nanos *= 10;
        }
    }
    let offset_secs = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = digits(&b[i + 1..i + 3])? as i64;
            let om = digits(&b[i + 4..i + 6])? as i64;
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let secs = local - offset_secs;
    if secs < 0 {
        return None;
    }
    Some((secs, frac_nanos as u32))
}

/// The seconds since the epoch of a date and a time of day, or `None` when a month, day,
/// hour, minute or second is out of range (a leap second, `:60`, is taken).
fn civil_seconds(year: i64, month: i64, day: i64, hour: i64, min: i64, sec: i64) -> Option<i64> {
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
}

/// `YYYY-MM-DDTHH:MM:SSZ`, the shape of nearly every time the API server writes (its
/// `metav1.Time`), checked and read without a branch per character: the seconds since the
/// epoch, or `None` for anything `parse_rfc3339` would refuse or reads another way (it then
/// decides). The general path took ~240 instructions per event in the storm.
fn parse_utc_seconds(b: &[u8; 20]) -> Option<i64> {
    const DIGITS: [usize; 14] = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18];
    let d = DIGITS.map(|i| b[i].wrapping_sub(b'0'));
    // Every digit place below 10, and the separators, all looked at before one branch.
    let bad = d.iter().fold(0u8, |acc, &v| acc | u8::from(v > 9))
        | u8::from(b[4] != b'-')
        | u8::from(b[7] != b'-')
        | u8::from(b[10] != b'T')
        | u8::from(b[13] != b':')
        | u8::from(b[16] != b':')
        | u8::from(b[19] != b'Z');
    if bad != 0 {
        return None;
    }
    let two = |i: usize| i64::from(d[i]) * 10 + i64::from(d[i + 1]);
    let secs = civil_seconds(
        two(0) * 100 + two(2),
        two(4),
        two(6),
        two(8),
        two(10),
        two(12),
    )?;
    (secs >= 0).then_some(secs)
}

/// Formats Unix nanoseconds as RFC 3339 in UTC with as many fractional digits as needed
/// (none, 3, 6 or 9), the shape the API server uses.
pub fn format_rfc3339(nanos: i64, out: &mut String) {
    use std::fmt::Write;
    let secs = nanos.div_euclid(1_000_000_000);
    let frac = nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if frac != 0 {
        if frac % 1_000_000 == 0 {
            let _ = write!(out, ".{:03}", frac / 1_000_000);
        } else if frac % 1_000 == 0 {
            let _ = write!(out, ".{:06}", frac / 1_000);
        } else {
            let _ = write!(out, ".{frac:09}");
        }
    }
    out.push('Z');
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Some(v)
}

fn is_leap(y: i64) -> bool {
    y.rem_euclid(4) == 0 && (y.rem_euclid(100) != 0 || y.rem_euclid(400) == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days (public-domain algorithms).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `Z` fast path reads exactly what the general parser reads, and leaves it what
    /// it does not take: every day from 1969 to 2401 (leap years, month ends) at assorted
    /// times, and each character of a few times replaced by each byte that matters.
    #[test]
    fn the_utc_fast_path_agrees_with_the_general_parser() {
        let check = |s: &str| {
            let general = parse_rfc3339_any(s);
            if let Ok(b) = <&[u8; 20]>::try_from(s.as_bytes()) {
                if let Some(secs) = parse_utc_seconds(b) {
                    assert_eq!(Some((secs, 0)), general, "{s}");
                }
            }
            assert_eq!(parse_rfc3339(s), general, "{s}");
        };
        let mut day = days_from_civil(1969, 1, 1);
        let mut n = 0u64;
        while day < days_from_civil(2401, 1, 1) {
            let secs = day * 86_400 + (n * 7919 % 86_400) as i64;
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            let r = secs.rem_euclid(86_400);
            let s = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
                r / 3600,
                r % 3600 / 60,
                r % 60
            );
            check(&s);
            if y >= 1970 {
                assert_eq!(parse_rfc3339(&s), Some((secs, 0)), "{s}");
            }
            day += 1;
            n += 1;
        }
        for base in [
            "2024-02-29T23:59:60Z",
            "2023-12-31T00:00:00Z",
            "1970-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
        ] {
            for i in 0..base.len() {
                for c in [
                    b'0', b'1', b'2', b'3', b'5', b'9', b'/', b':', b'-', b'T', b't', b'Z', b'z',
                    b' ', b'a', 0x80,
                ] {
                    let mut v = base.as_bytes().to_vec();
                    v[i] = c;
                    if let Ok(s) = std::str::from_utf8(&v) {
                        check(s);
                    }
                }
            }
        }
    }

    #[test]
    fn parses_the_api_server_formats() {
        let cases: &[(&str, Option<i64>)] = &[
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2026-11-25T19:40:33Z", Some(1_795_635_633_000_000_000)),
            (
                "2026-11-25T19:40:35.215506Z",
                Some(1_795_635_635_215_506_000),
            ),
            (
                "2026-11-25T20:40:35.215506+01:00",
                Some(1_795_635_635_215_506_000),
            ),
            (
                "2026-11-25T18:40:35.215506123-01:00",
                Some(1_795_635_635_215_506_123),
            ),
            ("2024-02-29T00:00:00Z", Some(1_709_164_800_000_000_000)),
            ("2023-02-29T00:00:00Z", None),
            ("2026-11-25T19:40:33", None),
            ("2026-11-25T19:40:33.Z", None),
            ("2026-13-25T19:40:33Z", None),
            ("1969-12-31T23:59:59Z", None),
            ("", None),
            ("null", None),
            ("2026-11-25T19:40:33Zjunk", None),
            ("2024-02-29t12:34:56z", Some(1_709_210_096_000_000_000)),
            ("2024-02-29T10:04:56-02:30", Some(1_709_210_096_000_000_000)),
            (
                "2024-02-29T12:34:56.123456789123Z",
                Some(1_709_210_096_123_456_789),
            ),
            ("2024-01-01T24:00:00Z", None),
            ("2024-01-01T00:00:00+0200", None),
            ("2024-1-01T00:00:00Z", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_rfc3339_nanos(input), *want, "{input}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for s in [
            "2026-11-25T19:40:33Z",
            "2026-11-25T19:40:35.215506Z",
            "2026-11-25T19:40:35.215Z",
            "2000-02-29T23:59:59.000000001Z",
        ] {
            let mut out = String::new();
            format_rfc3339(parse_rfc3339_nanos(s).unwrap(), &mut out);
            assert_eq!(out, s);
        }
    }
}
