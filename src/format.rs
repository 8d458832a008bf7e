//! The two other line formats of `LINE_FORMAT`, besides the JSON line of
//! [`Event::write_line`](crate::event::Event::write_line): logfmt (the same keys and values, for
//! people who read lines in a terminal) and raw (the event object as the API server sent it).
//! Pure functions, no I/O. Like the JSON line, each gives the same bytes for the same
//! occurrence every time.

use crate::event::{prefix_fitting, CUT_CLOSE, CUT_OPEN};
use serde_json::Value;

/// `LINE_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// The JSON line of `Event::write_line` (the default).
    Json,
    /// The same keys and values as logfmt: see [`json_to_logfmt`].
    Logfmt,
    /// The event object as the API server sent it, as compact JSON: see [`raw_line`].
    Raw,
}

impl std::str::FromStr for LineFormat {
    type Err = String;

    /// `json`, `logfmt` or `raw`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("json") {
            Ok(LineFormat::Json)
        } else if s.eq_ignore_ascii_case("logfmt") {
            Ok(LineFormat::Logfmt)
        } else if s.eq_ignore_ascii_case("raw") {
            Ok(LineFormat::Raw)
        } else {
            Err(format!("expected json, logfmt or raw, got {s:?}"))
        }
    }
}

/// The JSON line (as written by `Event::write_line`: one flat object, string values and the
/// number `count`, keys in a fixed order) as logfmt: the same keys and values in the same
/// order, `key=value` separated by single spaces. Writes into `out` (cleared first) and
/// allocates nothing per field.
///
/// A value is quoted (`"..."`) when it is empty or contains a space, `=`, `"`, `\`, a control
/// character or another non-printable character (other Unicode spaces and line separators,
/// zero-width and bidi format characters, the BOM). Inside quotes, `"`, `\`, newline, carriage
/// return and tab are escaped as `\"`, `\\`, `\n`, `\r`, `\t`, other control characters as
/// `\u00XX` and other non-printable characters as `\uXXXX` (Go's `strconv.Quote` style).
/// Printable non-ASCII text (`é`, `日本`) is left as it is. Numbers (and `true`, `false`,
/// `null`) stay bare.
///
/// Input that is not such an object is not an error: `out` then holds the fields before the
/// first malformed one.
pub fn json_to_logfmt(json_line: &str, out: &mut String) {
    out.clear();
    let mut p = Scanner { s: json_line, i: 0 };
    p.ws();
    if !p.eat(b'{') {
        return;
    }
    p.ws();
    if p.eat(b'}') {
        return;
    }
    let mut first = true;
    loop {
        p.ws();
        let Some(key) = p.string() else { return };
        p.ws();
        if !p.eat(b':') {
            return;
        }
        p.ws();
        let value = if p.peek() == Some(b'"') {
            match p.string() {
                Some(v) => Token::Str(v),
                None => return,
            }
        } else {
            match p.bare() {
                Some(v) => Token::Bare(v),
                None => return,
            }
        };
        if !first {
            out.push(' ');
        }
        first = false;
        // Keys are plain identifiers; an escaped one is decoded, never quoted.
        out.extend(Unescape::new(key));
        out.push('=');
        match value {
            Token::Bare(v) => out.push_str(v),
            Token::Str(v) => write_logfmt_value(v, out),
        }
        p.ws();
        if p.eat(b',') {
            continue;
        }
        // `}` or malformed: either way, done.
        return;
    }
}

enum Token<'a> {
    /// The inside of a JSON string literal, escapes not yet decoded.
    Str(&'a str),
    /// A number, `true`, `false` or `null`, as written.
    Bare(&'a str),
}

/// A cursor over a flat JSON object. Borrows, never copies.
struct Scanner<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// A string literal: returns its inside (escapes not decoded), or None if there is none.
    fn string(&mut self) -> Option<&'a str> {
        if !self.eat(b'"') {
            return None;
        }
        let bytes = self.s.as_bytes();
        let start = self.i;
        let mut i = start;
        while i < bytes.len() {
            match bytes[i] {
                b'"' => {
                    self.i = i + 1;
                    // `"` and `\` are ASCII, so these are char boundaries.
                    return Some(&self.s[start..i]);
                }
                b'\\' => i += 2,
                _ => i += 1,
            }
        }
        None
    }

    /// A number or literal: everything up to the next `,`, `}` or whitespace.
    fn bare(&mut self) -> Option<&'a str> {
        let bytes = self.s.as_bytes();
        let start = self.i;
        while self.i < bytes.len()
            && !matches!(bytes[self.i], b',' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
        {
            self.i += 1;
        }
        (self.i > start).then(|| &self.s[start..self.i])
    }
}

/// The characters a JSON string literal's inside stands for. Invalid escapes and lone
/// surrogates decode as U+FFFD.
#[derive(Clone)]
struct Unescape<'a> {
    chars: std::str::Chars<'a>,
}

impl<'a> Unescape<'a> {
    fn new(inside: &'a str) -> Self {
        Unescape {
            chars: inside.chars(),
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let mut v = 0;
        for _ in 0..4 {
            v = v * 16 + self.chars.next()?.to_digit(16)?;
        }
        Some(v)
    }
}

impl Iterator for Unescape<'_> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c != '\\' {
            return Some(c);
        }
        Some(match self.chars.next() {
            Some('"') => '"',
            Some('\\') => '\\',
            Some('/') => '/',
            Some('b') => '\u{8}',
            Some('f') => '\u{c}',
            Some('n') => '\n',
            Some('r') => '\r',
            Some('t') => '\t',
            Some('u') => match self.hex4() {
                Some(hi @ 0xd800..=0xdbff) => {
                    let mut look = self.clone();
                    let lo = match (look.chars.next(), look.chars.next()) {
                        (Some('\\'), Some('u')) => look.hex4(),
                        _ => None,
                    };
                    match lo {
                        Some(lo @ 0xdc00..=0xdfff) => {
                            *self = look;
                            char::from_u32(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00))
                                .unwrap_or('\u{fffd}')
                        }
                        _ => '\u{fffd}',
                    }
                }
                Some(v) => char::from_u32(v).unwrap_or('\u{fffd}'),
                None => '\u{fffd}',
            },
            _ => '\u{fffd}',
        })
    }
}

/// Whether `c` shows as itself in a terminal: not a control character, not a space other
/// than ' ' (U+00A0, U+2028, …), not an invisible format character. An approximation of Go's
/// `unicode.IsPrint` that needs no tables; unassigned code points count as printable.
fn printable(c: char) -> bool {
    if c.is_ascii() {
        return (' '..='~').contains(&c);
    }
    !(c.is_control()
        || c.is_whitespace()
        || matches!(
            c,
            '\u{ad}'
                | '\u{600}'..='\u{605}'
                | '\u{61c}'
                | '\u{6dd}'
                | '\u{70f}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{e0001}'
                | '\u{e0020}'..='\u{e007f}'
        ))
}

/// Appends the value whose JSON string inside is `inside`, quoted if it needs to be.
fn write_logfmt_value(inside: &str, out: &mut String) {
    let chars = Unescape::new(inside);
    let quote = inside.is_empty()
        || chars
            .clone()
            .any(|c| matches!(c, ' ' | '=' | '"' | '\\') || !printable(c));
    if !quote {
        out.extend(chars);
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in chars {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if printable(c) => out.push(c),
            c => {
                let v = c as u32;
                let digits = if v > 0xffff {
                    out.push_str("\\U");
                    8
                } else {
                    out.push_str("\\u");
                    4
                };
                for k in (0..digits).rev() {
                    out.push(HEX[((v >> (4 * k)) & 0xf) as usize] as char);
                }
            }
        }
    }
    out.push('"');
}

/// The event object exactly as the API server sent it, as compact JSON, into `out` (cleared
/// first). Normalised so that the same object state always gives the same bytes, whether it
/// came from a list page (items have no `kind`/`apiVersion`, and may be pretty-printed) or a
/// watch frame (`"kind":"Event"`, `"apiVersion":"v1"`): `kind` and `apiVersion` are set to
/// those values when absent, whitespace is dropped, and the keys of every object are sorted
/// (serde_json's map is ordered by key, as the crate does not enable `preserve_order`; the
/// objects are sorted explicitly too, so that this holds even if some dependency enables it).
///
/// If the line is longer than `max` bytes, `message` is cut to the longest prefix (on a char
/// boundary) that fits with the marker `… [kube-event: N bytes cut]`, N being the bytes of the
/// message removed, as `Event::write_line` does; returns `Ok(true)` when it was cut. A line
/// that is too long without a message to cut (or still too long with all of it cut) is left
/// as it is. `Err` when `object_json` is not a JSON object.
pub fn raw_line(object_json: &str, out: &mut String, max: usize) -> Result<bool, String> {
    let mut v: Value =
        serde_json::from_str(object_json).map_err(|e| format!("event object: {e}"))?;
    let Value::Object(obj) = &mut v else {
        return Err("event object: not a JSON object".into());
    };
    obj.entry("kind")
        .or_insert_with(|| Value::String("Event".into()));
    obj.entry("apiVersion")
        .or_insert_with(|| Value::String("v1".into()));
    v.sort_all_objects();
    write_compact(&v, out)?;
    if out.len() <= max {
        return Ok(false);
    }
    let Some(Value::String(msg)) = v.get_mut("message") else {
        return Ok(false);
    };
    if msg.is_empty() {
        return Ok(false);
    }
    let others = out.len() - serde_escaped_len(msg) - 2;
    let fixed = others + 2 + CUT_OPEN.len() + CUT_CLOSE.len();
    // N has at most as many digits as the message's length; fewer digits leave more room.
    // Take the fewest digits that N (for the prefix that room allows) really fits in.
    let mut keep = 0;
    for digits in 1..=decimal_digits(msg.len()) {
        keep = prefix_fitting(msg, max.saturating_sub(fixed + digits), serde_escaped_len);
        if decimal_digits(msg.len() - keep) <= digits {
            break;
        }
    }
    let cut = msg.len() - keep;
    msg.truncate(keep);
    msg.push_str(CUT_OPEN);
    msg.push_str(&cut.to_string());
    msg.push_str(CUT_CLOSE);
    write_compact(&v, out)?;
    Ok(true)
}

/// Serialises `v` compactly into `out`, reusing its buffer.
fn write_compact(v: &Value, out: &mut String) -> Result<(), String> {
    let mut buf = std::mem::take(out).into_bytes();
    buf.clear();
    serde_json::to_writer(&mut buf, v).map_err(|e| format!("event object: {e}"))?;
    *out = String::from_utf8(buf).map_err(|e| format!("event object: {e}"))?;
    Ok(())
}

/// The length of `v` inside a JSON string literal as serde_json writes it.
fn serde_escaped_len(v: &str) -> usize {
    v.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

fn decimal_digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logfmt(json: &str) -> String {
        let mut out = String::from("left over");
        json_to_logfmt(json, &mut out);
        out
    }

    #[test]
    fn logfmt_quotes_only_what_needs_quoting() {
        let cases: &[(&str, &str)] = &[
            (r#"{"k":"plain"}"#, "k=plain"),
            (r#"{"k":""}"#, r#"k="""#),
            (r#"{"k":"two words"}"#, r#"k="two words""#),
            (r#"{"k":"a=b"}"#, r#"k="a=b""#),
            (r#"{"k":"say \"hi\""}"#, r#"k="say \"hi\"""#),
            (r#"{"k":"C:\\dir"}"#, r#"k="C:\\dir""#),
            (r#"{"k":"l1\nl2"}"#, r#"k="l1\nl2""#),
            (r#"{"k":"a\r\tb"}"#, r#"k="a\r\tb""#),
            (r#"{"k":"bell\u0007"}"#, r#"k="bell\u0007""#),
            (r#"{"k":"del\u007f"}"#, r#"k="del\u007f""#),
            (r#"{"k":"ff\f bs\b"}"#, r#"k="ff\u000c bs\u0008""#),
            // Printable Unicode stays bare and unescaped, even when the JSON escaped it.
            (r#"{"k":"café-日本"}"#, "k=café-日本"),
            (r#"{"k":"caf\u00e9"}"#, "k=café"),
            (r#"{"k":"\ud83d\ude00"}"#, "k=😀"),
            (r#"{"k":"\/path"}"#, "k=/path"),
            // Non-printable Unicode is quoted and escaped.
            ("{\"k\":\"nb\u{a0}sp\"}", r#"k="nb\u00a0sp""#),
            ("{\"k\":\"zw\u{200b}\"}", r#"k="zw\u200b""#),
            ("{\"k\":\"ls\u{2028}\"}", r#"k="ls\u2028""#),
            ("{\"k\":\"c1\u{85}\"}", r#"k="c1\u0085""#),
            ("{\"k\":\"tag\u{e0041}\"}", r#"k="tag\U000e0041""#),
            (r#"{"k":"lone\ud800"}"#, "k=lone\u{fffd}"),
            // A value that only looks like a number is still a string, unquoted.
            (r#"{"k":"12"}"#, "k=12"),
            (r#"{"k":"x:y{z}/,"}"#, "k=x:y{z}/,"),
        ];
        for (json, want) in cases {
            assert_eq!(&logfmt(json), want, "{json}");
        }
    }

    #[test]
    fn logfmt_keeps_numbers_bare_and_the_order() {
        assert_eq!(
            logfmt(r#"{"time":"2026-01-01T00:00:00Z","zeta":"z","count":7,"alpha":"","neg":-3}"#),
            r#"time=2026-01-01T00:00:00Z zeta=z count=7 alpha="" neg=-3"#
        );
        assert_eq!(
            logfmt(" { \"a\" : 1 , \"b\" : \"x y\" } "),
            r#"a=1 b="x y""#
        );
        assert_eq!(logfmt("{}"), "");
    }

    #[test]
    fn logfmt_of_malformed_input_keeps_what_came_before() {
        for (json, want) in [
            ("", ""),
            ("[1]", ""),
            (r#"{"a":1,"b":"unterminated"#, "a=1"),
            (r#"{"a":1,"b"}"#, "a=1"),
            (r#"{"a":"x\"#, ""),
        ] {
            assert_eq!(logfmt(json), want, "{json}");
        }
    }

    #[test]
    fn logfmt_of_a_real_line_round_trips_the_values() {
        let ev = crate::scan::event(
            r#"{"metadata":{"uid":"u","name":"n"},"lastTimestamp":"2026-01-01T00:00:00Z","count":3,
                "reason":"BackOff","message":"Back-off \"x\" = y\\z\n\u0001é"}"#
                .as_bytes(),
        )
        .unwrap();
        let occ = ev.occurrence().unwrap();
        let mut line = String::new();
        ev.write_line(&occ, &mut line, 1 << 20);
        assert_eq!(
            logfmt(&line),
            r#"time=2026-01-01T00:00:00Z reason=BackOff message="Back-off \"x\" = y\\z\n\u0001é" count=3 event_uid=u event_name=n"#
        );
    }

    /// The watch frame object of an event and the same state as a list item (pretty-printed,
    /// no kind/apiVersion, another key order).
    const WATCH_OBJECT: &str = r#"{"kind":"Event","apiVersion":"v1","metadata":{"name":"web-0.a","namespace":"demo","uid":"u1","resourceVersion":"7","managedFields":[{"manager":"curl","fieldsV1":{"f:count":{}}}]},"involvedObject":{"kind":"Pod","name":"web-0"},"reason":"BackOff","message":"Back-off \"x\"\né","source":{"component":"kubelet"},"lastTimestamp":"2026-01-01T00:00:00Z","count":2,"eventTime":null}"#;
    const LIST_ITEM: &str = r#"{
        "metadata": {
            "name": "web-0.a",
            "namespace": "demo",
            "uid": "u1",
            "resourceVersion": "7",
            "managedFields": [
                {
                    "manager": "curl",
                    "fieldsV1": {
                        "f:count": {}
                    }
                }
            ]
        },
        "involvedObject": {
            "name": "web-0",
            "kind": "Pod"
        },
        "reason": "BackOff",
        "message": "Back-off \"x\"\n\u00e9",
        "source": {
            "component": "kubelet"
        },
        "count": 2,
        "lastTimestamp": "2026-01-01T00:00:00Z",
        "eventTime": null
    }"#;

    #[test]
    fn raw_line_is_the_same_for_a_list_item_and_a_watch_object() {
        let (mut a, mut b) = (String::new(), String::new());
        assert!(!raw_line(WATCH_OBJECT, &mut a, 1 << 20).unwrap());
        assert!(!raw_line(LIST_ITEM, &mut b, 1 << 20).unwrap());
        assert_eq!(a, b);
        assert_eq!(
            a,
            r#"{"apiVersion":"v1","count":2,"eventTime":null,"involvedObject":{"kind":"Pod","name":"web-0"},"kind":"Event","lastTimestamp":"2026-01-01T00:00:00Z","message":"Back-off \"x\"\né","metadata":{"managedFields":[{"fieldsV1":{"f:count":{}},"manager":"curl"}],"name":"web-0.a","namespace":"demo","resourceVersion":"7","uid":"u1"},"reason":"BackOff","source":{"component":"kubelet"}}"#
        );
        // Present kind/apiVersion are kept as they are.
        raw_line(
            r#"{"kind":"X","apiVersion":"events.k8s.io/v1"}"#,
            &mut a,
            100,
        )
        .unwrap();
        assert_eq!(a, r#"{"apiVersion":"events.k8s.io/v1","kind":"X"}"#);
    }

    #[test]
    fn raw_line_refuses_what_is_not_an_object() {
        let mut out = String::new();
        for bad in ["", "{", "[1]", "\"s\"", "{} x"] {
            assert!(raw_line(bad, &mut out, 100).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn raw_line_cuts_a_long_message_with_a_marker() {
        for (msg, max) in [
            ("é\"x\u{1}".repeat(50_000), 4096usize),
            ("é\"x\u{1}".repeat(50_000), 10_000),
            ("ab".repeat(200_000), 262_144),
            ("a".repeat(1_000), 900),
            ("a".repeat(1_000), 300),
        ] {
            let json = format!(
                r#"{{"metadata":{{"uid":"u","name":"n"}},"lastTimestamp":"2026-01-01T00:00:00Z","message":{}}}"#,
                serde_json::to_string(&msg).unwrap()
            );
            let mut out = String::new();
            assert!(raw_line(&json, &mut out, max).unwrap(), "{max}");
            assert!(out.len() <= max, "{max}: {}", out.len());
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            let m = v["message"].as_str().unwrap();
            let (kept, cut) = crate::testutil::cut_marker(m);
            assert_eq!(kept + cut, msg.len(), "{max}");
            assert_eq!(&m[..kept], &msg[..kept]);
            // The longest prefix: one more char would not fit.
            let next = msg[kept..].chars().next().unwrap();
            let one_more = serde_escaped_len(&msg[kept..kept + next.len_utf8()]);
            assert!(out.len() + one_more > max, "{max}: {}", out.len());
            let again = out.clone();
            raw_line(&json, &mut out, max).unwrap();
            assert_eq!(out, again);
        }
    }

    #[test]
    fn raw_line_keeps_the_longest_prefix_across_digit_counts() {
        // Around N = 9/10 and 99/100 the marker changes length; every max must keep exactly
        // the longest prefix that fits.
        let msg = "m".repeat(150);
        let json = format!(r#"{{"reason":"r","message":"{msg}"}}"#);
        let mut whole = String::new();
        assert!(!raw_line(&json, &mut whole, usize::MAX).unwrap());
        let others = whole.len() - msg.len();
        let mut out = String::new();
        for max in whole.len() - 115..whole.len() {
            assert!(raw_line(&json, &mut out, max).unwrap());
            let best = (0..=msg.len())
                .rev()
                .find(|&keep| {
                    let marker = format!("… [kube-event: {} bytes cut]", msg.len() - keep);
                    others + keep + marker.len() <= max
                })
                .unwrap();
            let want = format!(
                r#"{{"apiVersion":"v1","kind":"Event","message":"{}… [kube-event: {} bytes cut]","reason":"r"}}"#,
                &msg[..best],
                msg.len() - best
            );
            assert_eq!(out, want, "{max}");
        }
    }

    #[test]
    fn raw_line_without_a_message_to_cut_stays_whole() {
        let mut out = String::new();
        let json = r#"{"metadata":{"uid":"a-long-uid-value"},"message":""}"#;
        assert!(!raw_line(json, &mut out, 10).unwrap());
        assert!(out.len() > 10);
        assert!(!raw_line(r#"{"message":null,"reason":"long enough"}"#, &mut out, 10).unwrap());
        // Cutting everything is still not enough: cut anyway, said so.
        assert!(raw_line(r#"{"message":"m","reason":"long enough"}"#, &mut out, 10).unwrap());
        assert!(
            out.contains(r#""message":"… [kube-event: 1 bytes cut]""#),
            "{out}"
        );
    }

    #[test]
    fn line_format_parses_case_insensitively() {
        for (s, want) in [
            ("json", Ok(LineFormat::Json)),
            ("JSON", Ok(LineFormat::Json)),
            ("logfmt", Ok(LineFormat::Logfmt)),
            ("LogFmt", Ok(LineFormat::Logfmt)),
            ("raw", Ok(LineFormat::Raw)),
            ("Raw", Ok(LineFormat::Raw)),
            (
                "x",
                Err("expected json, logfmt or raw, got \"x\"".to_string()),
            ),
            (
                "",
                Err("expected json, logfmt or raw, got \"\"".to_string()),
            ),
            (
                " json",
                Err("expected json, logfmt or raw, got \" json\"".to_string()),
            ),
        ] {
            assert_eq!(s.parse::<LineFormat>(), want, "{s:?}");
        }
    }
}
