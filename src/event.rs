//! The Event object as the API server sends it, and what kube-event makes of it: the
//! occurrence (which repeat of the event this is and when it happened), the Loki line and the
//! stream labels. No I/O here.
//!
//! The types borrow from the frame buffer: strings without escapes are not copied, and fields
//! kube-event never needs (`managedFields`, annotations, …) are skipped by the parser.

use std::borrow::Cow;

use serde::Deserialize;

use crate::time::parse_rfc3339_nanos;

type Str<'a> = Option<Text<'a>>;

/// A JSON string field: borrowed from the frame unless it holds escapes (`\"`, `\n`, …),
/// which only an owned copy can undo. serde borrows a plain `Cow<str>` field with
/// `#[serde(borrow)]`, but not one inside an `Option`: that path always allocated, once per
/// string field per event (18 allocations per event in `bench hotpath`).
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

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// One line of a watch stream: `{"type":"ADDED","object":{…}}`.
#[derive(Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub object: &'a serde_json::value::RawValue,
}

/// A watch frame parsed in one pass, the object straight into an `Event` (a BOOKMARK's and
/// an ERROR's objects fit too: the first has only metadata, the second is a Status whose
/// `reason`, `message` and `code` land in the same-named fields).
#[derive(Deserialize)]
pub struct TypedFrame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub object: Event<'a>,
}

/// A page of `GET /api/v1/events`.
#[derive(Deserialize)]
pub struct List<'a> {
    #[serde(borrow, default)]
    pub metadata: ListMeta<'a>,
    #[serde(borrow, default)]
    pub items: Vec<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize, Default)]
pub struct ListMeta<'a> {
    #[serde(rename = "resourceVersion", borrow, default)]
    pub resource_version: Str<'a>,
    #[serde(rename = "continue", borrow, default)]
    pub continue_: Str<'a>,
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
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Event<'a> {
    #[serde(borrow)]
    pub metadata: Meta<'a>,
    #[serde(borrow)]
    pub involved_object: ObjectRef<'a>,
    #[serde(borrow)]
    pub reason: Str<'a>,
    #[serde(borrow)]
    pub message: Str<'a>,
    #[serde(borrow)]
    pub source: Source<'a>,
    #[serde(borrow)]
    pub first_timestamp: Str<'a>,
    #[serde(borrow)]
    pub last_timestamp: Str<'a>,
    pub count: Option<i64>,
    #[serde(rename = "type", borrow)]
    pub type_: Str<'a>,
    #[serde(borrow)]
    pub event_time: Str<'a>,
    #[serde(borrow)]
    pub series: Option<Series<'a>>,
    #[serde(borrow)]
    pub reporting_component: Str<'a>,
    #[serde(borrow)]
    pub reporting_instance: Str<'a>,
    /// Only in a Status (the object of an ERROR frame).
    pub code: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Meta<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
    #[serde(borrow)]
    pub namespace: Str<'a>,
    #[serde(borrow)]
    pub uid: Str<'a>,
    #[serde(borrow)]
    pub resource_version: Str<'a>,
    #[serde(borrow)]
    pub creation_timestamp: Str<'a>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectRef<'a> {
    #[serde(borrow)]
    pub kind: Str<'a>,
    #[serde(borrow)]
    pub name: Str<'a>,
    #[serde(borrow)]
    pub uid: Str<'a>,
    #[serde(borrow)]
    pub field_path: Str<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Source<'a> {
    #[serde(borrow)]
    pub component: Str<'a>,
    #[serde(borrow)]
    pub host: Str<'a>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Series<'a> {
    pub count: Option<i64>,
    #[serde(borrow)]
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
        self.render(occ, msg, 0, out, Escape::Plain);
        if out.len() <= max || msg.is_empty() {
            return false;
        }
        // Keep the longest prefix of the message whose escaped form, with the marker, fits.
        let others = out.len() - escaped_len(msg);
        let marker = "… [kube-event: ".len() + 20 + " bytes cut]".len();
        let keep = prefix_fitting(msg, max.saturating_sub(others + marker), escaped_len);
        self.render(occ, &msg[..keep], msg.len() - keep, out, Escape::Plain);
        true
    }

    /// The same line as `write_line`, escaped once more: the form a push body holds it in
    /// (inside a JSON string). Written in one pass, so the batch only copies it. Returns
    /// whether the message was cut to keep the (unescaped) line within `max` bytes.
    pub fn write_line_nested(&self, occ: &Occurrence<'_>, out: &mut String, max: usize) -> bool {
        // Escaping makes a byte at most 6; the keys add under 200 bytes. Below that bound the
        // line cannot reach `max`, and there is nothing to measure.
        let values = [
            occ.time,
            s(&self.type_),
            s(&self.reason),
            s(&self.metadata.namespace),
            s(&self.involved_object.kind),
            s(&self.involved_object.name),
            s(&self.involved_object.field_path),
            s(&self.message),
            s(&self.first_timestamp),
            s(&self.event_time),
            s(&self.source.component),
            s(&self.source.host),
            s(&self.reporting_component),
            s(&self.reporting_instance),
            s(&self.metadata.uid),
            s(&self.metadata.name),
            s(&self.involved_object.uid),
        ];
        let raw: usize = values.iter().map(|v| v.len()).sum();
        if raw * 6 + 512 <= max {
            self.render(occ, s(&self.message), 0, out, Escape::Nested);
            return false;
        }
        let mut plain = String::new();
        let cut = self.write_line(occ, &mut plain, max);
        out.clear();
        write_json_chars(&plain, out);
        cut
    }

    /// The line with `message` in place of the event's, and a cut marker when `cut > 0`.
    fn render(
        &self,
        occ: &Occurrence<'_>,
        message: &str,
        cut: usize,
        out: &mut String,
        esc: Escape,
    ) {
        let (component, host) = match non_empty(&self.source.component) {
            Some(c) => (c, s(&self.source.host)),
            None => (s(&self.reporting_component), s(&self.reporting_instance)),
        };
        let first_seen = non_empty(&self.first_timestamp)
            .or(non_empty(&self.event_time))
            .unwrap_or("");
        out.clear();
        out.push('{');
        // `time` is never empty (occurrence() found one): it is first, every later key gets
        // a comma.
        put(out, esc, false, "time", occ.time);
        put(out, esc, true, "type", s(&self.type_));
        put(out, esc, true, "reason", s(&self.reason));
        put(out, esc, true, "namespace", s(&self.metadata.namespace));
        put(out, esc, true, "kind", s(&self.involved_object.kind));
        put(out, esc, true, "name", s(&self.involved_object.name));
        put(
            out,
            esc,
            true,
            "field_path",
            s(&self.involved_object.field_path),
        );
        if cut == 0 {
            put(out, esc, true, "message", message);
        } else {
            out.push(',');
            esc.quoted(out, "message");
            out.push(':');
            esc.quote(out);
            esc.chars(message, out);
            out.push_str("… [kube-event: ");
            out.push_str(itoa_buf(cut as i64).as_str());
            out.push_str(" bytes cut]");
            esc.quote(out);
        }
        out.push(',');
        esc.quoted(out, "count");
        out.push(':');
        out.push_str(itoa_buf(occ.count).as_str());
        put(out, esc, true, "first_seen", first_seen);
        put(out, esc, true, "component", component);
        put(out, esc, true, "host", host);
        put(out, esc, true, "event_uid", s(&self.metadata.uid));
        put(out, esc, true, "event_name", s(&self.metadata.name));
        put(out, esc, true, "object_uid", s(&self.involved_object.uid));
        out.push('}');
    }
}

/// How a line is written: as JSON, or escaped once more to sit inside a JSON string.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Escape {
    Plain,
    Nested,
}

impl Escape {
    // Single chars, not `push_str`: a tiny `push_str` is a memcpy call, and musl's memcpy is
    // slow for a byte or two (it showed in the profile of the static build).
    #[inline]
    fn quote(self, out: &mut String) {
        if self == Escape::Nested {
            out.push('\\');
        }
        out.push('"');
    }

    /// A key: ASCII letters and `_`, never escaped.
    fn quoted(self, out: &mut String, key: &str) {
        self.quote(out);
        out.push_str(key);
        self.quote(out);
    }

    fn chars(self, v: &str, out: &mut String) {
        match self {
            Escape::Plain => write_json_chars(v, out),
            Escape::Nested => write_json_chars_nested(v, out),
        }
    }
}

/// Appends `key` and `value` as a JSON member (after a comma if `comma`), unless `value` is
/// empty.
#[inline]
fn put(out: &mut String, esc: Escape, comma: bool, key: &str, value: &str) {
    if !value.is_empty() {
        if comma {
            out.push(',');
        }
        esc.quoted(out, key);
        out.push(':');
        esc.quote(out);
        esc.chars(value, out);
        esc.quote(out);
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

/// A small stack buffer for an integer, so the hot path does not allocate for `count`.
struct ItoaBuf {
    buf: [u8; 20],
    start: usize,
}

impl ItoaBuf {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or("0")
    }
}

fn itoa_buf(v: i64) -> ItoaBuf {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = v.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    ItoaBuf { buf, start: i }
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

/// Appends `v` escaped twice: as `write_json_chars` would, and that escaped again, for a JSON
/// document that sits inside a JSON string.
fn write_json_chars_nested(v: &str, out: &mut String) {
    write_escaped::<true>(v, out)
}

/// Appends `v` escaped for the inside of a JSON string literal.
pub fn write_json_chars(v: &str, out: &mut String) {
    write_escaped::<false>(v, out)
}

/// The escaping loop of both: runs of plain bytes are copied whole.
#[inline]
fn write_escaped<const NESTED: bool>(v: &str, out: &mut String) {
    let bytes = v.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
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
            (0..=0x1f, _) => "",
            _ => continue,
        };
        out.push_str(&v[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str(if NESTED { "\\\\u00" } else { "\\u00" });
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&v[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(json: &str) -> (String, i64, i64) {
        let ev: Event = serde_json::from_str(json).unwrap();
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
            let ev: Event = serde_json::from_str(json).unwrap();
            let occ = ev.occurrence().unwrap();
            assert_eq!((occ.time, occ.count), (time, count), "{json}");
        }
        let ev: Event = serde_json::from_str(r#"{"metadata":{"uid":"u"}}"#).unwrap();
        assert_eq!(ev.occurrence(), Err(Unshippable::NoTime));
        let ev: Event =
            serde_json::from_str(r#"{"metadata":{"creationTimestamp":"2026-01-01T00:00:05Z"}}"#)
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
        let ev: Event = serde_json::from_str(&json).unwrap();
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
            let kept = m.find("… [kube-event: ").unwrap();
            let cut: usize = m[kept..]
                .trim_start_matches("… [kube-event: ")
                .trim_end_matches(" bytes cut]")
                .parse()
                .unwrap();
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
        let ev: Event = serde_json::from_str(json).unwrap();
        let occ = ev.occurrence().unwrap();
        let (mut plain, mut nested) = (String::new(), String::new());
        for max in [262_144, 300] {
            let cut_plain = ev.write_line(&occ, &mut plain, max);
            let cut_nested = ev.write_line_nested(&occ, &mut nested, max);
            assert_eq!(cut_plain, cut_nested, "{max}");
            let mut want = String::new();
            write_json_chars(&plain, &mut want);
            assert_eq!(nested, want, "{max}");
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

    #[test]
    fn integers_format_without_allocating() {
        for v in [0i64, 1, 9, 10, 12345, -7, i64::MAX, i64::MIN] {
            assert_eq!(itoa_buf(v).as_str(), v.to_string());
        }
    }
}
