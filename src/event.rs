//! The Event object as the API server sends it, and what kube-event makes of it: the
//! occurrence (which repeat of the event this is and when it happened), the Loki line and the
//! stream labels. No I/O here.
//!
//! The types borrow from the frame buffer: strings without escapes are not copied, and fields
//! kube-event never needs (`managedFields`, annotations, …) are skipped by the reader
//! (`scan.rs`, which also cuts list pages into items). API errors (`Status`) are read with
//! serde.

use std::borrow::Cow;

use serde::Deserialize;

use crate::time::parse_rfc3339_nanos;

type Str<'a> = Option<Text<'a>>;

/// A JSON string field as `scan.rs` reads it: borrowed from the frame unless it holds escapes
/// (`\"`, `\n`, …), which only an owned copy can undo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Text<'_> {
    pub fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// `metav1.Status`, the object of an ERROR frame and the body of most API errors.
#[derive(Deserialize, Default, Debug)]
pub struct Status {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

/// A core/v1 Event, only the fields kube-event ships or needs.
#[derive(Default)]
pub struct Event<'a> {
    pub metadata: Meta<'a>,
    pub involved_object: ObjectRef<'a>,
    pub reason: Str<'a>,
    pub message: Str<'a>,
    pub source: Source<'a>,
    pub first_timestamp: Str<'a>,
    pub last_timestamp: Str<'a>,
    pub count: Option<i64>,
    pub type_: Str<'a>,
    pub event_time: Str<'a>,
    pub series: Option<Series<'a>>,
    pub reporting_component: Str<'a>,
    pub reporting_instance: Str<'a>,
    /// Only in a Status (the object of an ERROR frame).
    pub code: Option<u16>,
}

#[derive(Default)]
pub struct Meta<'a> {
    pub name: Str<'a>,
    pub namespace: Str<'a>,
    pub uid: Str<'a>,
    pub resource_version: Str<'a>,
    pub creation_timestamp: Str<'a>,
}

#[derive(Default)]
pub struct ObjectRef<'a> {
    pub kind: Str<'a>,
    pub name: Str<'a>,
    pub uid: Str<'a>,
    pub field_path: Str<'a>,
}

#[derive(Default)]
pub struct Source<'a> {
    pub component: Str<'a>,
    pub host: Str<'a>,
}

#[derive(Default)]
pub struct Series<'a> {
    pub count: Option<i64>,
    pub last_observed_time: Str<'a>,
}

fn s<'b>(v: &'b Str<'_>) -> &'b str {
    v.as_deref().unwrap_or("")
}

fn non_empty<'b>(v: &'b Str<'_>) -> Option<&'b str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// Why an event cannot be shipped.
#[derive(Debug, PartialEq, Eq)]
pub enum Unshippable {
    /// No uid: kube-event could not tell one event from another.
    NoUid,
    /// None of the five timestamps is present and valid.
    NoTime,
}

impl std::fmt::Display for Unshippable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unshippable::NoUid => f.write_str("event has no metadata.uid"),
            Unshippable::NoTime => f.write_str("event has no valid timestamp"),
        }
    }
}

/// Which repeat of an event this object shows, and when that repeat happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occurrence<'e> {
    /// `series.count`, else `count`, else 1 (events.k8s.io events have `count` 0 or absent).
    pub count: i64,
    /// Unix nanoseconds of the occurrence, for Loki.
    pub nanos: i64,
    /// The RFC 3339 text the time came from, copied into the line unchanged.
    pub time: &'e str,
}

impl<'a> Event<'a> {
    pub fn uid(&self) -> &str {
        s(&self.metadata.uid)
    }

    /// The occurrence this object shows. The time is the first valid one of
    /// `series.lastObservedTime`, `lastTimestamp`, `eventTime`, `firstTimestamp`,
    /// `metadata.creationTimestamp`: when it happened, never when kube-event saw it.
    pub fn occurrence(&self) -> Result<Occurrence<'_>, Unshippable> {
        if self.uid().is_empty() {
            return Err(Unshippable::NoUid);
        }
        let series = self.series.as_ref();
        let count = series
            .and_then(|s| s.count)
            .filter(|c| *c > 0)
            .or(self.count.filter(|c| *c > 0))
            .unwrap_or(1);
        let candidates = [
            series.and_then(|s| non_empty(&s.last_observed_time)),
            non_empty(&self.last_timestamp),
            non_empty(&self.event_time),
            non_empty(&self.first_timestamp),
            non_empty(&self.metadata.creation_timestamp),
        ];
        for time in candidates.into_iter().flatten() {
            if let Some(nanos) = parse_rfc3339_nanos(time) {
                return Ok(Occurrence { count, nanos, time });
            }
        }
        Err(Unshippable::NoTime)
    }

    /// The component that reported the event: `source.component`, else `reportingComponent`.
    pub fn component(&self) -> &str {
        non_empty(&self.source.component).unwrap_or(s(&self.reporting_component))
    }

    /// The value of a field that can be a stream label.
    pub fn field(&self, f: Field) -> &str {
        match f {
            Field::Namespace => s(&self.metadata.namespace),
            Field::Kind => s(&self.involved_object.kind),
            Field::Type => s(&self.type_),
            Field::Reason => s(&self.reason),
            Field::Component => self.component(),
            Field::Host => match non_empty(&self.source.component) {
                Some(_) => s(&self.source.host),
                None => s(&self.reporting_instance),
            },
        }
    }

    /// The stream labels of this event for the chosen `fields` (`LABEL_KEYS`), besides `job`
    /// and the static `LABELS`.
    pub fn labels(&self, fields: &[Field]) -> Labels<'_> {
        let mut l = Labels {
            values: [""; 6],
            len: fields.len().min(6),
        };
        for (i, f) in fields.iter().take(6).enumerate() {
            l.values[i] = self.field(*f);
        }
        l
    }

    /// `{"event_uid":…,"object_uid":…,"name":…}`: Loki structured metadata (empty ones left
    /// out), written into `out` (cleared first).
    pub fn write_metadata(&self, out: &mut String) {
        out.clear();
        out.push('{');
        let mut first = true;
        for (k, v) in [
            ("event_uid", s(&self.metadata.uid)),
            ("object_uid", s(&self.involved_object.uid)),
            ("name", s(&self.involved_object.name)),
        ] {
            if v.is_empty() {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            write_json_str(k, out);
            out.push(':');
            write_json_str(v, out);
        }
        out.push('}');
    }

    /// Writes the Loki line of `occ` into `out` (cleared first): one JSON object, keys in a
    /// fixed order, empty values left out, so the same occurrence always gives the same bytes.
    /// A line longer than `max` bytes has its message cut to fit, ending with
    /// `… [kube-event: N bytes cut]`; returns whether that happened.
    pub fn write_line(&self, occ: &Occurrence<'_>, out: &mut String, max: usize) -> bool {
        let msg = s(&self.message);
        self.render(occ, msg, 0, &mut Plain(out));
        if out.len() <= max || msg.is_empty() {
            return false;
        }
        // Keep the longest prefix of the message whose escaped form, with the marker, fits.
        let others = out.len() - escaped_len(msg);
        let marker = CUT_OPEN.len() + 20 + CUT_CLOSE.len();
        let keep = prefix_fitting(msg, max.saturating_sub(others + marker), escaped_len);
        self.render(occ, &msg[..keep], msg.len() - keep, &mut Plain(out));
        true
    }

    /// `write_line` into `plain`, and the same line escaped once more into `nested` (the
    /// form a JSON push body holds it in, inside a JSON string), in one pass: for a JSON
    /// batch, which holds the nested form, while the memory of shipped occurrences
    /// fingerprints the plain one. Escaping a rendered line whole instead cost ~8,700
    /// instructions per event (an escape every few bytes); rendering both forms side by side
    /// escapes only the values.
    pub fn write_line_both(
        &self,
        occ: &Occurrence<'_>,
        plain: &mut String,
        nested: &mut String,
        max: usize,
    ) -> bool {
        let msg = s(&self.message);
        if msg.len() <= max / 8 {
            self.render(occ, msg, 0, &mut Both { plain, nested });
            if plain.len() <= max {
                return false;
            }
        }
        let cut = self.write_line(occ, plain, max);
        nested.clear();
        write_json_chars(plain, nested);
        cut
    }

    /// The line with `message` in place of the event's, and a cut marker when `cut > 0`,
    /// into `out`: as it is, escaped once more, or both (`LineOut`).
    #[inline(always)]
    fn render(&self, occ: &Occurrence<'_>, message: &str, cut: usize, out: &mut impl LineOut) {
        let (component, host) = match non_empty(&self.source.component) {
            Some(c) => (c, s(&self.source.host)),
            None => (s(&self.reporting_component), s(&self.reporting_instance)),
        };
        let first_seen = non_empty(&self.first_timestamp)
            .or(non_empty(&self.event_time))
            .unwrap_or("");
        out.clear();
        // `time` is never empty (occurrence() found one): it is first, every later member
        // starts with a comma.
        if occ.time.is_empty() {
            out.raw(&["{", "{"]);
        } else {
            put(out, &member!("{", "time"), occ.time);
        }
        put(out, &member!("type"), s(&self.type_));
        put(out, &member!("reason"), s(&self.reason));
        put(out, &member!("namespace"), s(&self.metadata.namespace));
        put(out, &member!("kind"), s(&self.involved_object.kind));
        put(out, &member!("name"), s(&self.involved_object.name));
        put(
            out,
            &member!("field_path"),
            s(&self.involved_object.field_path),
        );
        if cut == 0 {
            put(out, &member!("message"), message);
        } else {
            out.raw(&member!("message"));
            out.text(message);
            out.raw(&[CUT_OPEN, CUT_OPEN]);
            out.decimal(cut as i64);
            out.raw(&[CUT_CLOSE, CUT_CLOSE]);
            out.raw(&QUOTE);
        }
        out.raw(&[",\"count\":", ",\\\"count\\\":"]);
        out.decimal(occ.count);
        put(out, &member!("first_seen"), first_seen);
        put(out, &member!("component"), component);
        put(out, &member!("host"), host);
        put(out, &member!("event_uid"), s(&self.metadata.uid));
        put(out, &member!("event_name"), s(&self.metadata.name));
        put(out, &member!("object_uid"), s(&self.involved_object.uid));
        out.raw(&["}", "}"]);
    }
}

/// Where `Event::render` writes a line: as it is (`Plain`), or side by side with the same
/// line escaped once more for a JSON string (`Both`). Text that is the same escaped or not
/// comes as a pair, `[plain, nested]`; each is a constant, so each `push_str` is inlined.
trait LineOut {
    fn clear(&mut self);
    fn raw(&mut self, text: &[&str; 2]);
    /// A value, escaped as the line needs it.
    fn text(&mut self, v: &str);
    fn decimal(&mut self, v: i64);
}

struct Plain<'a>(&'a mut String);

impl LineOut for Plain<'_> {
    #[inline(always)]
    fn clear(&mut self) {
        self.0.clear();
    }
    #[inline(always)]
    fn raw(&mut self, text: &[&str; 2]) {
        self.0.push_str(text[0]);
    }
    #[inline(always)]
    fn text(&mut self, v: &str) {
        write_escaped::<false>(v, self.0);
    }
    #[inline(always)]
    fn decimal(&mut self, v: i64) {
        push_decimal(self.0, v);
    }
}

struct Both<'a> {
    plain: &'a mut String,
    nested: &'a mut String,
}

impl LineOut for Both<'_> {
    #[inline(always)]
    fn clear(&mut self) {
        self.plain.clear();
        self.nested.clear();
    }
    #[inline(always)]
    fn raw(&mut self, text: &[&str; 2]) {
        self.plain.push_str(text[0]);
        self.nested.push_str(text[1]);
    }
    #[inline(always)]
    fn text(&mut self, v: &str) {
        // Most values need no escaping: looked for once, copied twice.
        if find_escape(v.as_bytes(), 0) == v.len() {
            self.plain.push_str(v);
            self.nested.push_str(v);
        } else {
            write_escaped::<false>(v, self.plain);
            write_escaped::<true>(v, self.nested);
        }
    }
    #[inline(always)]
    fn decimal(&mut self, v: i64) {
        push_decimal(self.plain, v);
        push_decimal(self.nested, v);
    }
}

/// The start of a string member, `,"key":"`, as a plain line has it (`[0]`) and as a nested
/// one does (`[1]`, `,\"key\":\"`): one `push_str` instead of six pushes. Keys are ASCII
/// letters and `_`, never escaped. `member!("{", key)` starts the object instead.
macro_rules! member {
    ($key:literal) => {
        member!(",", $key)
    };
    ($before:literal, $key:literal) => {
        [
            concat!($before, "\"", $key, "\":\""),
            concat!($before, "\\\"", $key, "\\\":\\\""),
        ]
    };
}
use member;

/// A closing quote, `"` or `\"`: a `push_str` of a constant length, which the compiler
/// writes inline (a tiny `push_str` of a length known only at run time is a memcpy call,
/// and musl's memcpy is slow for a byte or two: it showed in the profile of the static build).
const QUOTE: [&str; 2] = ["\"", "\\\""];

/// Appends the string member `member` (`member!`) with `value`, unless `value` is empty.
#[inline(always)]
fn put(out: &mut impl LineOut, member: &[&str; 2], value: &str) {
    if !value.is_empty() {
        out.raw(member);
        out.text(value);
        out.raw(&QUOTE);
    }
}

/// An event field that `LABEL_KEYS` can make a stream label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Namespace,
    Kind,
    Type,
    Reason,
    Component,
    Host,
}

impl Field {
    pub fn parse(name: &str) -> Option<Field> {
        Some(match name {
            "namespace" => Field::Namespace,
            "kind" => Field::Kind,
            "type" => Field::Type,
            "reason" => Field::Reason,
            "component" => Field::Component,
            "host" => Field::Host,
            _ => return None,
        })
    }
}

/// The per-event stream label values, in the order of `LABEL_KEYS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Labels<'e> {
    pub values: [&'e str; 6],
    pub len: usize,
}

impl<'e> Labels<'e> {
    pub fn values(&self) -> &[&'e str] {
        &self.values[..self.len]
    }
}

/// What ends a cut message: `CUT_OPEN`, the number of bytes cut, `CUT_CLOSE` (every line
/// format writes the same marker).
pub(crate) const CUT_OPEN: &str = "… [kube-event: ";
pub(crate) const CUT_CLOSE: &str = " bytes cut]";

/// Appends `v` in decimal, two digits per step, in one `push_str`: no `fmt` machinery on the
/// event path (counts, timestamps of push bodies, journal records). Pushing digit by digit
/// cost ~400 instructions for a 19-digit timestamp, three numbers per event.
pub(crate) fn push_decimal(out: &mut String, v: i64) {
    /// "00", "01", … "99".
    const PAIRS: [u8; 200] = {
        let mut t = [0u8; 200];
        let mut i = 0;
        while i < 100 {
            t[2 * i] = b'0' + (i / 10) as u8;
            t[2 * i + 1] = b'0' + (i % 10) as u8;
            i += 1;
        }
        t
    };
    let mut buf = [0u8; 21];
    let mut i = buf.len();
    let mut n = v.unsigned_abs();
    while n >= 100 {
        let d = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[d..d + 2]);
    }
    if n >= 10 {
        let d = n as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[d..d + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + n as u8;
    }
    if v < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    push_ascii(out, &buf[i..]);
}

/// Appends digits (ASCII) without checking them as UTF-8 again: `str::from_utf8` cost ~85
/// instructions per number, 600 per event (callgrind, issue 6).
fn push_ascii(out: &mut String, digits: &[u8]) {
    debug_assert!(digits.is_ascii());
    // SAFETY: the callers pass ASCII digits (and '-'), and ASCII is valid UTF-8: the String
    // stays UTF-8.
    unsafe { out.as_mut_vec() }.extend_from_slice(digits);
}

/// Appends `v` as 16 lowercase hex digits (the journal's keys and hashes). Eight digits at
/// a time: each nibble is spread into a byte and turned into its digit with a few word
/// operations (a table lookup per digit cost ~330 instructions per number, two per event).
pub(crate) fn push_hex16(out: &mut String, v: u64) {
    /// The eight nibbles of `x` (32 bits), most significant first, as ASCII hex digits.
    fn digits(x: u64) -> [u8; 8] {
        const NIBBLES: u64 = 0x0F0F_0F0F_0F0F_0F0F;
        let x = (x | x << 16) & 0x0000_FFFF_0000_FFFF;
        let x = (x | x << 8) & 0x00FF_00FF_00FF_00FF;
        let x = (x | x << 4) & NIBBLES;
        // 1 in each byte whose nibble is 10 or more ('a' is 0x27 past '0' + 10).
        let letters = (x + 0x0606_0606_0606_0606) >> 4 & 0x0101_0101_0101_0101;
        let ascii = x + 0x3030_3030_3030_3030 + letters * 0x27;
        // The spreading put the most significant nibble in the highest byte.
        ascii.to_be_bytes()
    }
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&digits(v >> 32));
    buf[8..].copy_from_slice(&digits(v & 0xFFFF_FFFF));
    push_ascii(out, &buf);
}

/// The length of the longest prefix of `msg` (in bytes, on a char boundary) whose escaped
/// form, as `escaped` measures it, is at most `budget` bytes.
pub fn prefix_fitting(msg: &str, budget: usize, escaped: impl Fn(&str) -> usize) -> usize {
    let mut keep = 0;
    let mut used = 0;
    for (i, c) in msg.char_indices() {
        let mut buf = [0u8; 4];
        let w = escaped(c.encode_utf8(&mut buf));
        if used + w > budget {
            break;
        }
        used += w;
        keep = i + c.len_utf8();
    }
    keep
}

/// The length of `v` escaped for the inside of a JSON string literal.
pub fn escaped_len(v: &str) -> usize {
    v.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

/// Appends `v` as a JSON string literal (quotes included).
pub fn write_json_str(v: &str, out: &mut String) {
    out.push('"');
    write_json_chars(v, out);
    out.push('"');
}

/// Appends `v` escaped for the inside of a JSON string literal.
pub fn write_json_chars(v: &str, out: &mut String) {
    write_escaped::<false>(v, out)
}

/// Appends `v` escaped for the inside of a JSON string literal, or (`NESTED`) escaped twice:
/// that escaped again, for a JSON document that sits inside a JSON string. Runs of bytes that
/// need no escaping are found 8 at a time and copied whole.
///
/// Byte-wise on `str`: every byte JSON escapes (`"`, `\`, below 0x20) is ASCII, and no byte
/// of a multi-byte UTF-8 character is ASCII, so every cut falls on a char boundary.
#[inline(always)]
fn write_escaped<const NESTED: bool>(v: &str, out: &mut String) {
    let bytes = v.as_bytes();
    let mut start = 0;
    loop {
        let i = find_escape(bytes, start);
        if i == bytes.len() {
            break;
        }
        out.push_str(&v[start..i]);
        push_escape::<NESTED>(bytes[i], out);
        start = i + 1;
    }
    if start < bytes.len() {
        out.push_str(&v[start..]);
    }
}

/// Appends the escaped form of `b`, a byte that JSON escapes.
#[cold]
fn push_escape<const NESTED: bool>(b: u8, out: &mut String) {
    let esc: &str = match (b, NESTED) {
        (b'"', false) => "\\\"",
        (b'\\', false) => "\\\\",
        (b'\n', false) => "\\n",
        (b'\r', false) => "\\r",
        (b'\t', false) => "\\t",
        (b'"', true) => "\\\\\\\"",
        (b'\\', true) => "\\\\\\\\",
        (b'\n', true) => "\\\\n",
        (b'\r', true) => "\\\\r",
        (b'\t', true) => "\\\\t",
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str(if NESTED { "\\\\u00" } else { "\\u00" });
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
            return;
        }
    };
    out.push_str(esc);
}

/// Whether JSON escapes the byte (`"`, `\`, the control characters below 0x20).
const NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// The index of the first byte at or after `from` that JSON escapes, or `bytes.len()`.
/// 16 bytes a step with `scan.rs`'s `string_stops` (the bytes that end a plain run in a JSON
/// string are exactly those JSON escapes; SSE2 on x86_64), the last 16 in one overlapping
/// look: rendering both lines cost 2,847 instructions per event in the storm with only the
/// eight-byte words of `find_escape_words`, 2,444 with this (callgrind). Fewer than 16 bytes
/// go to the words.
#[inline(always)]
fn find_escape(bytes: &[u8], from: usize) -> usize {
    let n = bytes.len();
    if n < 16 {
        return find_escape_words(bytes, from);
    }
    let stops = |c: &[u8]| crate::scan::string_stops(c.try_into().expect("16 bytes")).0;
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + 16) {
        let m = stops(chunk);
        if m != 0 {
            return i + m.trailing_zeros() as usize;
        }
        i += 16;
    }
    if i >= n {
        return n;
    }
    // The last 16 bytes, without the stops of those before `i` (a shift by less than 16:
    // `n - 16 < i`).
    match stops(&bytes[n - 16..]) >> (i - (n - 16)) {
        0 => n,
        m => i + m.trailing_zeros() as usize,
    }
}

/// `find_escape` eight bytes at a time, for fewer than 16 bytes.
#[inline(always)]
fn find_escape_words(bytes: &[u8], from: usize) -> usize {
    let n = bytes.len();
    let mut i = from;
    while let Some(w) = bytes.get(i..i + 8) {
        let m = escape_mask(u64::from_le_bytes(w.try_into().unwrap_or([0; 8])));
        if m != 0 {
            // The lowest flag is a true one (see `escape_mask`).
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    if i == n {
        return n;
    }
    // Fewer than 8 bytes left: one word that covers them (and maybe bytes before `i`, some
    // already escaped) says whether any needs a look; most often none does.
    let look = if n >= 8 {
        escape_mask(u64::from_le_bytes(
            bytes[n - 8..].try_into().unwrap_or([0; 8]),
        )) != 0
    } else if n - i >= 4 {
        let lo = u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap_or([0; 4]));
        let hi = u32::from_le_bytes(bytes[n - 4..].try_into().unwrap_or([0; 4]));
        escape_mask(u64::from(lo) | (u64::from(hi) << 32)) != 0
    } else {
        true
    };
    if !look {
        return n;
    }
    while i < n && !NEEDS_ESCAPE[usize::from(bytes[i])] {
        i += 1;
    }
    i
}

/// The high bit of each byte of `w` that JSON escapes (little-endian: byte 0 is the lowest),
/// and possibly of bytes above such a byte: a subtraction borrows into the next byte only
/// from a byte that matched. So the mask is 0 exactly when no byte needs escaping, and its
/// lowest flag is always a true one.
#[inline(always)]
fn escape_mask(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // A byte below 0x20 goes below 0 minus 0x20; a quote or backslash goes to 0 after the
    // xor, then below 0 minus 1. The xors keep the high bit, so `!w` drops bytes >= 0x80
    // (UTF-8 beyond ASCII) for all three.
    let control = w.wrapping_sub(ONES * 0x20);
    let quote = (w ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES);
    let backslash = (w ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES);
    (control | quote | backslash) & !w & (ONES * 0x80)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(json: &str) -> (String, i64, i64) {
        let ev = crate::scan::event(json.as_bytes()).unwrap();
        let occ = ev.occurrence().unwrap();
        let mut out = String::new();
        assert!(!ev.write_line(&occ, &mut out, 256 * 1024));
        (out, occ.nanos, occ.count)
    }

    #[test]
    fn legacy_event_line_has_every_field_in_order() {
        let json = r#"{"metadata":{"name":"web-0.seed1","namespace":"demo","uid":"u1","resourceVersion":"404","creationTimestamp":"2026-11-25T19:40:33Z","managedFields":[{"manager":"curl"}]},
            "involvedObject":{"kind":"Pod","namespace":"demo","name":"web-0","uid":"o1","fieldPath":"spec.containers{web}"},
            "reason":"BackOff","message":"Back-off \"restarting\"\n","source":{"component":"kubelet","host":"node-1"},
            "firstTimestamp":"2026-11-25T19:40:33Z","lastTimestamp":"2026-11-25T19:40:35Z","count":2,"type":"Warning","eventTime":null,
            "reportingComponent":"","reportingInstance":""}"#;
        let (line, nanos, count) = line_of(json);
        assert_eq!(
            line,
            r#"{"time":"2026-11-25T19:40:35Z","type":"Warning","reason":"BackOff","namespace":"demo","kind":"Pod","name":"web-0","field_path":"spec.containers{web}","message":"Back-off \"restarting\"\n","count":2,"first_seen":"2026-11-25T19:40:33Z","component":"kubelet","host":"node-1","event_uid":"u1","event_name":"web-0.seed1","object_uid":"o1"}"#
        );
        assert_eq!(nanos, 1_795_635_635_000_000_000);
        assert_eq!(count, 2);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["message"], "Back-off \"restarting\"\n");
    }

    #[test]
    fn events_k8s_io_event_gets_its_series_time_and_reporting_component() {
        let json = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/apiserver/event-eventsv1-through-corev1.json"
        ))
        .unwrap();
        let (line, nanos, count) = line_of(&json);
        assert_eq!(nanos, 1_795_635_635_215_506_000);
        assert_eq!(count, 2);
        assert!(
            line.starts_with(r#"{"time":"2026-11-25T19:40:35.215506Z","type":"Normal""#),
            "{line}"
        );
        assert!(
            line.contains(
                r#""component":"deployment-controller","host":"deployment-controller-node-1""#
            ),
            "{line}"
        );
        assert!(
            line.contains(r#""first_seen":"2026-11-25T19:40:35.215506Z""#),
            "{line}"
        );
        assert!(!line.contains("field_path"), "{line}");
    }

    #[test]
    fn time_falls_back_in_order() {
        let cases = [
            (
                r#"{"metadata":{"uid":"u","creationTimestamp":"2026-01-01T00:00:05Z"},"firstTimestamp":"2026-01-01T00:00:04Z","eventTime":"2026-01-01T00:00:03.000001Z","lastTimestamp":"2026-01-01T00:00:02Z","series":{"count":3,"lastObservedTime":"2026-01-01T00:00:01.5Z"}}"#,
                "2026-01-01T00:00:01.5Z",
                3,
            ),
            (
                r#"{"metadata":{"uid":"u","creationTimestamp":"2026-01-01T00:00:05Z"},"firstTimestamp":"2026-01-01T00:00:04Z","eventTime":"2026-01-01T00:00:03.000001Z","lastTimestamp":"2026-01-01T00:00:02Z","count":7}"#,
                "2026-01-01T00:00:02Z",
                7,
            ),
            (
                r#"{"metadata":{"uid":"u","creationTimestamp":"2026-01-01T00:00:05Z"},"firstTimestamp":"2026-01-01T00:00:04Z","eventTime":"2026-01-01T00:00:03.000001Z","lastTimestamp":null,"count":0}"#,
                "2026-01-01T00:00:03.000001Z",
                1,
            ),
            (
                r#"{"metadata":{"uid":"u","creationTimestamp":"2026-01-01T00:00:05Z"},"firstTimestamp":"2026-01-01T00:00:04Z"}"#,
                "2026-01-01T00:00:04Z",
                1,
            ),
            (
                r#"{"metadata":{"uid":"u","creationTimestamp":"2026-01-01T00:00:05Z"},"lastTimestamp":"garbage"}"#,
                "2026-01-01T00:00:05Z",
                1,
            ),
        ];
        for (json, time, count) in cases {
            let ev = crate::scan::event(json.as_bytes()).unwrap();
            let occ = ev.occurrence().unwrap();
            assert_eq!((occ.time, occ.count), (time, count), "{json}");
        }
        let ev = crate::scan::event(r#"{"metadata":{"uid":"u"}}"#.as_bytes()).unwrap();
        assert_eq!(ev.occurrence(), Err(Unshippable::NoTime));
        let ev =
            crate::scan::event(br#"{"metadata":{"creationTimestamp":"2026-01-01T00:00:05Z"}}"#)
                .unwrap();
        assert_eq!(ev.occurrence(), Err(Unshippable::NoUid));
    }

    #[test]
    fn a_long_message_is_cut_with_a_marker_and_the_line_stays_json() {
        let msg = "é\"x".repeat(100_000);
        let json = format!(
            r#"{{"metadata":{{"uid":"u","name":"n"}},"lastTimestamp":"2026-01-01T00:00:00Z","message":{}}}"#,
            serde_json::to_string(&msg).unwrap()
        );
        let ev = crate::scan::event(json.as_bytes()).unwrap();
        let occ = ev.occurrence().unwrap();
        let mut out = String::new();
        for max in [4096usize, 10_000, 262_144] {
            assert!(ev.write_line(&occ, &mut out, max));
            assert!(
                out.len() <= max && out.len() > max - 200,
                "{max}: {}",
                out.len()
            );
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            let m = v["message"].as_str().unwrap();
            let (kept, cut) = crate::testutil::cut_marker(m);
            assert_eq!(kept + cut, msg.len());
            assert_eq!(v["count"], 1);
        }
        let again = out.clone();
        ev.write_line(&occ, &mut out, 262_144);
        assert_eq!(out, again, "the same occurrence gives the same bytes");
    }

    #[test]
    fn the_nested_line_is_the_line_escaped_once_more() {
        let json = r#"{"metadata":{"uid":"u\"1","name":"n\\x"},"lastTimestamp":"2026-01-01T00:00:00Z",
            "message":"quote \" backslash \\ newline \n tab \t cr \r ctl \u0001 é ☃","reason":"R","type":"Warning","count":3,
            "source":{"component":"kubelet","host":"h"},"involvedObject":{"kind":"Pod","name":"p","fieldPath":"spec{x}"}}"#;
        let ev = crate::scan::event(json.as_bytes()).unwrap();
        let occ = ev.occurrence().unwrap();
        let mut plain = String::new();
        for max in [262_144, 300] {
            let cut_plain = ev.write_line(&occ, &mut plain, max);
            let mut nested = String::new();
            write_json_chars(&plain, &mut nested);
            // Both at once, into buffers that held something else.
            let (mut p2, mut n2) = ("old".to_string(), "old".to_string());
            assert_eq!(ev.write_line_both(&occ, &mut p2, &mut n2, max), cut_plain);
            assert_eq!((p2, n2), (plain.clone(), nested.clone()), "{max}");
            // And it decodes back to the line.
            let back: String = serde_json::from_str(&format!("\"{nested}\"")).unwrap();
            assert_eq!(back, plain);
        }
    }

    #[test]
    fn json_strings_escape_control_characters() {
        let mut out = String::new();
        write_json_str("a\u{1}b\"c\\d\u{7f}é", &mut out);
        assert_eq!(out, "\"a\\u0001b\\\"c\\\\d\u{7f}é\"");
    }

    /// The oracle: escaping as JSON defines it, one char at a time.
    fn reference_escape(v: &str) -> String {
        let mut out = String::new();
        for c in v.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out
    }

    /// The oracle of `prefix_fitting(msg, budget, escaped_len)`.
    fn reference_prefix(msg: &str, budget: usize) -> usize {
        let mut keep = 0;
        for (i, c) in msg.char_indices() {
            let end = i + c.len_utf8();
            if reference_escape(&msg[..end]).len() > budget {
                break;
            }
            keep = end;
        }
        keep
    }

    /// Strings with escapes and multi-byte characters at every position around the 8-byte
    /// words the fast path reads, plus a few fixed ones.
    fn tricky_strings() -> Vec<String> {
        let specials: Vec<String> = (0u8..0x20)
            .map(|b| char::from(b).to_string())
            .chain(
                [
                    "\"", "\\", "é", "😀", "\u{2028}", "\u{7f}", " ", "!", "#", "[", "]",
                ]
                .map(String::from),
            )
            .collect();
        let mut all = vec![
            String::new(),
            "\"".into(),
            "\\".into(),
            "\"\\\"".into(),
            (0u8..0x20).map(char::from).collect(),
            "é\"😀\\\u{2028}\n".into(),
            "\u{2028}\u{2028}\"\u{2028}".into(),
            "a\u{0}\u{20}b".into(),
            "\"\"\"\"\"\"\"\"\"".into(),
        ];
        for len in 1..=24 {
            for pos in 0..len {
                for sp in &specials {
                    let mut v = "x".repeat(pos);
                    v.push_str(sp);
                    v.push_str(&"y".repeat(len - pos - 1));
                    all.push(v);
                }
            }
        }
        // Two escapes, the second right after or near the first (the borrow of one byte's
        // test must not flag its neighbour), and escapes next to multi-byte characters.
        for gap in 0..10 {
            for (a, b) in [
                ("\u{0}", " "),
                ("\"", "#"),
                ("\\", "]"),
                ("\n", "\\"),
                ("é", "\""),
                ("\"", "😀"),
                ("\u{1f}", "\u{2028}"),
            ] {
                for lead in [0, 5, 7, 8, 9, 15, 16] {
                    all.push(format!(
                        "{}{a}{}{b}{}",
                        "-".repeat(lead),
                        "z".repeat(gap),
                        "q".repeat(gap % 4)
                    ));
                }
            }
        }
        all
    }

    #[test]
    fn fast_escaping_matches_the_reference_plain_and_nested() {
        for v in tricky_strings() {
            let want = reference_escape(&v);
            let mut out = String::from("<");
            write_json_chars(&v, &mut out);
            assert_eq!(out, format!("<{want}"), "{v:?}");
            let mut out = String::from("<");
            write_escaped::<true>(&v, &mut out);
            assert_eq!(out, format!("<{}", reference_escape(&want)), "nested {v:?}");
            assert_eq!(escaped_len(&v), want.len(), "{v:?}");
        }
    }

    #[test]
    fn find_escape_finds_the_first_escape_from_any_start() {
        // Both searches, from every start, against a byte-by-byte one.
        let check = |bytes: &[u8]| {
            for from in 0..=bytes.len() {
                let want = (from..bytes.len())
                    .find(|&i| matches!(bytes[i], 0..=0x1f | b'"' | b'\\'))
                    .unwrap_or(bytes.len());
                assert_eq!(find_escape(bytes, from), want, "{bytes:?} from {from}");
                assert_eq!(
                    find_escape_words(bytes, from),
                    want,
                    "{bytes:?} from {from}"
                );
            }
        };
        // Raw bytes, not only UTF-8: every byte value at every position of short and
        // word-sized buffers, after a byte that needs escaping or not.
        for len in 1..=20usize {
            for pos in 0..len {
                for b in 0..=255u8 {
                    for before in [b'a', 0, b'"', 0xff] {
                        let mut bytes = vec![b'a'; len];
                        if pos > 0 {
                            bytes[pos - 1] = before;
                        }
                        bytes[pos] = b;
                        check(&bytes);
                    }
                }
            }
        }
        // Longer: several 16-byte steps and every overlap of the last load, with the byte
        // values at the edges of what is escaped.
        for len in [31, 32, 33, 40, 47, 48, 49, 64, 70] {
            for pos in 0..len {
                for b in [
                    0, 0x1f, 0x20, b'"', b'\\', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xff,
                ] {
                    let mut bytes = vec![b'a'; len];
                    bytes[pos] = b;
                    check(&bytes);
                }
            }
        }
    }

    #[test]
    fn prefix_fitting_matches_the_reference() {
        for v in tricky_strings().iter().step_by(7) {
            let full = reference_escape(v).len();
            for budget in 0..=full + 1 {
                assert_eq!(
                    prefix_fitting(v, budget, escaped_len),
                    reference_prefix(v, budget),
                    "{v:?} within {budget}"
                );
            }
        }
    }

    #[test]
    fn cut_lines_are_the_reference_lines_escaped_once_more() {
        let base = r#"{"metadata":{"uid":"u","name":"n\"x"},"lastTimestamp":"2026-01-01T00:00:00Z","reason":"R","involvedObject":{"kind":"Pod","name":"p\\q"}}"#;
        for msg in [
            "é\"😀\\\u{2028}\n\u{1}".repeat(40),
            "abcdefg\"".repeat(60),
            "\u{0}".repeat(100),
        ] {
            let mut ev = crate::scan::event(base.as_bytes()).unwrap();
            ev.message = Some(Text(Cow::Borrowed(&msg)));
            let occ = ev.occurrence().unwrap();
            let mut plain = String::new();
            for max in [0, 100, 150, 200, 250, 300, 333, 400, 512, 700, 1000, 4096] {
                let cut = ev.write_line(&occ, &mut plain, max);
                let nested = reference_escape(&plain);
                let (mut p2, mut n2) = (String::new(), String::new());
                assert_eq!(
                    ev.write_line_both(&occ, &mut p2, &mut n2, max),
                    cut,
                    "{max}"
                );
                assert_eq!((&p2, &n2), (&plain, &nested), "{max}");
                let v: serde_json::Value = serde_json::from_str(&plain).unwrap();
                let m = v["message"].as_str().unwrap();
                if cut {
                    let (kept, _) = crate::testutil::cut_marker(m);
                    assert!(msg.starts_with(&m[..kept]), "{max}");
                    assert!(plain.len() <= max || kept == 0, "{max}: {}", plain.len());
                    // The longest prefix whose escaped form fits beside the other members
                    // and a marker with room for 20 digits.
                    let mut full = String::new();
                    assert!(!ev.write_line(&occ, &mut full, usize::MAX));
                    let others = full.len() - reference_escape(&msg).len();
                    let marker = CUT_OPEN.len() + 20 + CUT_CLOSE.len();
                    let budget = max.saturating_sub(others + marker);
                    assert_eq!(kept, reference_prefix(&msg, budget), "{max}");
                } else {
                    assert_eq!(m, msg, "{max}");
                    assert!(plain.len() <= max, "{max}");
                }
            }
        }
    }

    #[test]
    fn hex16_agrees_with_format() {
        let mut values = vec![0u64, 1, 9, 10, 15, 16, u64::MAX, 0x0123_4567_89ab_cdef];
        // Every nibble value at every position.
        for shift in 0..16 {
            for n in 0..16u64 {
                values.push(n << (4 * shift));
                values.push(!(n << (4 * shift)));
            }
        }
        let mut rng = crate::testutil::Rng(0x9e37_79b9_7f4a_7c15);
        values.extend((0..1000).map(|_| rng.next()));
        for v in values {
            let mut out = String::from("x");
            push_hex16(&mut out, v);
            assert_eq!(out, format!("x{v:016x}"));
        }
    }

    #[test]
    fn integers_format_without_allocating() {
        let mut values = vec![i64::MAX, i64::MIN, i64::MIN + 1];
        // Every length of digits, and the numbers around each power of ten.
        let mut p = 1i64;
        for _ in 0..19 {
            for d in [-1, 0, 1] {
                values.extend([p + d, -(p + d)]);
            }
            p = p.saturating_mul(10);
        }
        values.extend(0..1000);
        values.extend([1_764_115_235_123_456_789, 12345, -7]);
        for v in values {
            let mut out = String::from("x");
            push_decimal(&mut out, v);
            assert_eq!(out, format!("x{v}"));
        }
    }
}
