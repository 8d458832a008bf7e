//! Grouping occurrences into Loki streams and encoding the push body. No I/O here.
//!
//! A `Batch` keeps every line in one byte arena and each stream's entries as
//! `(timestamp, range)` triples, so adding an occurrence copies its line once and allocates
//! nothing per field. `encode` sorts each stream by time (Loki wants a stream's entries in
//! order within a push) and writes the JSON body `{"streams":[{"stream":{…},"values":[…]}]}`.

use std::collections::HashMap;

use crate::event::{write_json_str, Labels};

/// Occurrences waiting to be pushed, grouped by stream.
#[derive(Default)]
pub struct Batch {
    streams: Vec<Stream>,
    /// hash(labels) -> indexes into `streams` with that hash.
    index: HashMap<u64, Vec<usize>>,
    arena: String,
    entries: usize,
    /// Journal records of the occurrences in this batch: `uid count hash` lines (spool.rs).
    records: String,
    n_records: usize,
    /// Estimated size of the encoded body, for `BATCH_MAX_BYTES`.
    encoded_estimate: usize,
}

struct Stream {
    values: Vec<String>,
    entries: Vec<Entry>,
}

#[derive(Clone, Copy)]
struct Entry {
    nanos: i64,
    start: usize,
    end: usize,
    /// Structured metadata (an encoded JSON object) in the arena, `meta_start..end`; empty
    /// when `meta_start == end`.
    meta_start: usize,
}

/// How streams are labelled: `job`, the static `LABELS`, then the `LABEL_KEYS` names in the
/// order of `Labels::values`.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    pub job: String,
    pub static_labels: Vec<(String, String)>,
    pub keys: Vec<String>,
}

/// A line to add: as JSON, or already escaped to sit inside a JSON string
/// (`Event::write_line_nested`), which the batch then only copies.
#[derive(Clone, Copy)]
pub enum Line<'a> {
    Plain(&'a str),
    Nested(&'a str),
}

/// A batch encoded for Loki, ready to push (and, later, to spool).
pub struct Sealed {
    pub body: Vec<u8>,
    pub entries: usize,
    /// The journal records of its occurrences, and how many.
    pub records: String,
    pub n_records: usize,
    /// Oldest and newest occurrence time in the batch (Unix ns), for log lines.
    pub oldest: i64,
    pub newest: i64,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    /// The size the encoded body will roughly have.
    pub fn encoded_size(&self) -> usize {
        self.encoded_estimate
    }

    /// Remembers that the occurrence `count` of the event with key `key` (`spool::uid_key`),
    /// whose line hashes to `hash`, is in this batch (for the journal, once the batch is safe).
    pub fn record(&mut self, key: u64, count: i64, hash: u64) {
        use std::fmt::Write;
        let _ = writeln!(self.records, "{key:016x} {count} {hash:016x}");
        self.n_records += 1;
    }

    /// Adds one line (and its structured metadata, an encoded JSON object) to the stream of
    /// `labels`.
    pub fn push(&mut self, labels: Labels<'_>, nanos: i64, line: Line<'_>, metadata: Option<&str>) {
        let h = labels_hash(&labels);
        let slot = self.index.entry(h).or_default();
        let existing = slot.iter().copied().find(|&i| {
            let s = &self.streams[i];
            s.values
                .iter()
                .map(String::as_str)
                .eq(labels.values().iter().copied())
        });
        let idx = match existing {
            Some(i) => i,
            None => {
                self.streams.push(Stream {
                    values: labels.values().iter().map(|v| v.to_string()).collect(),
                    entries: Vec::new(),
                });
                slot.push(self.streams.len() - 1);
                // {"stream":{...},"values":[]}, job, the static labels and these
                self.encoded_estimate +=
                    128 + labels.values().iter().map(|v| v.len() + 16).sum::<usize>();
                self.streams.len() - 1
            }
        };
        let start = self.arena.len();
        match line {
            Line::Plain(l) => crate::event::write_json_chars(l, &mut self.arena),
            Line::Nested(l) => self.arena.push_str(l),
        }
        let meta_start = self.arena.len();
        if let Some(m) = metadata {
            self.arena.push_str(m);
            self.encoded_estimate += m.len() + 1;
        }
        self.streams[idx].entries.push(Entry {
            nanos,
            start,
            end: self.arena.len(),
            meta_start,
        });
        self.entries += 1;
        // ["<19 digits>","<line>"],
        self.encoded_estimate += 28 + (meta_start - start);
    }

    /// Encodes the batch as a Loki push body and empties it.
    pub fn seal(&mut self, schema: &Schema) -> Sealed {
        let mut out = String::with_capacity(self.encoded_estimate + 16);
        let mut oldest = i64::MAX;
        let mut newest = i64::MIN;
        out.push_str("{\"streams\":[");
        for (si, stream) in self.streams.iter_mut().enumerate() {
            if si > 0 {
                out.push(',');
            }
            out.push_str("{\"stream\":{\"job\":");
            write_json_str(&schema.job, &mut out);
            for (k, v) in &schema.static_labels {
                label(&mut out, k, v);
            }
            for (k, v) in schema.keys.iter().zip(&stream.values) {
                label(&mut out, k, v);
            }
            out.push_str("},\"values\":[");
            // Stable: occurrences with the same time keep the order they arrived in.
            stream.entries.sort_by_key(|e| e.nanos);
            for (ei, e) in stream.entries.iter().enumerate() {
                if ei > 0 {
                    out.push(',');
                }
                oldest = oldest.min(e.nanos);
                newest = newest.max(e.nanos);
                out.push_str("[\"");
                out.push_str(itoa(e.nanos).as_str());
                out.push_str("\",\"");
                out.push_str(&self.arena[e.start..e.meta_start]);
                out.push('"');
                if e.meta_start < e.end {
                    out.push(',');
                    out.push_str(&self.arena[e.meta_start..e.end]);
                }
                out.push(']');
            }
            out.push_str("]}");
        }
        out.push_str("]}");
        let sealed = Sealed {
            body: out.into_bytes(),
            entries: self.entries,
            records: std::mem::take(&mut self.records),
            n_records: std::mem::replace(&mut self.n_records, 0),
            oldest,
            newest,
        };
        self.streams.clear();
        self.index.clear();
        self.arena.clear();
        self.entries = 0;
        self.encoded_estimate = 0;
        sealed
    }
}

/// Empty label values are left out: Loki treats `l=""` as no label at all.
fn label(out: &mut String, key: &str, value: &str) {
    if value.is_empty() {
        return;
    }
    out.push(',');
    write_json_str(key, out);
    out.push(':');
    write_json_str(value, out);
}

fn itoa(v: i64) -> String {
    // Timestamps only; one small allocation per entry at seal time is not on the event path.
    v.to_string()
}

fn labels_hash(l: &Labels<'_>) -> u64 {
    l.values()
        .iter()
        .fold(0, |h, v| crate::hash::hash64(h, v.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels<'a>(ns: &'a str, kind: &'a str, t: &'a str) -> Labels<'a> {
        Labels {
            values: [ns, kind, t, "", "", ""],
            len: 3,
        }
    }

    fn schema(statics: Vec<(String, String)>) -> Schema {
        Schema {
            job: "kube-event".into(),
            static_labels: statics,
            keys: vec!["namespace".into(), "kind".into(), "type".into()],
        }
    }

    #[test]
    fn groups_by_stream_and_orders_by_time() {
        let mut b = Batch::default();
        b.push(
            labels("a", "Pod", "Warning"),
            30,
            Line::Plain("third"),
            None,
        );
        b.push(labels("b", "Node", "Normal"), 5, Line::Plain("other"), None);
        b.push(
            labels("a", "Pod", "Warning"),
            10,
            Line::Plain("first"),
            None,
        );
        b.push(
            labels("a", "Pod", "Warning"),
            10,
            Line::Plain("first-too"),
            None,
        );
        b.push(
            labels("", "Node", "Normal"),
            7,
            Line::Plain("quote\"d"),
            None,
        );
        assert_eq!(b.len(), 5);
        let statics = vec![("cluster".to_string(), "prod".to_string())];
        let sealed = b.seal(&schema(statics));
        let body = String::from_utf8(sealed.body).unwrap();
        assert_eq!(
            body,
            concat!(
                r#"{"streams":["#,
                r#"{"stream":{"job":"kube-event","cluster":"prod","namespace":"a","kind":"Pod","type":"Warning"},"values":[["10","first"],["10","first-too"],["30","third"]]},"#,
                r#"{"stream":{"job":"kube-event","cluster":"prod","namespace":"b","kind":"Node","type":"Normal"},"values":[["5","other"]]},"#,
                r#"{"stream":{"job":"kube-event","cluster":"prod","kind":"Node","type":"Normal"},"values":[["7","quote\"d"]]}"#,
                "]}"
            )
        );
        assert_eq!((sealed.entries, sealed.oldest, sealed.newest), (5, 5, 30));
        assert!(b.is_empty());
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["streams"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn structured_metadata_is_the_third_element_and_label_keys_are_chosen() {
        let mut b = Batch::default();
        let l = Labels {
            values: ["BackOff", "", "", "", "", ""],
            len: 1,
        };
        b.push(l, 1, Line::Plain("line"), Some(r#"{"event_uid":"u"}"#));
        b.push(l, 2, Line::Plain("plain"), None);
        let s = Schema {
            job: "events".into(),
            static_labels: vec![],
            keys: vec!["reason".into()],
        };
        let body = String::from_utf8(b.seal(&s).body).unwrap();
        assert_eq!(
            body,
            r#"{"streams":[{"stream":{"job":"events","reason":"BackOff"},"values":[["1","line",{"event_uid":"u"}],["2","plain"]]}]}"#
        );
    }

    #[test]
    fn estimate_is_close_to_the_real_size() {
        let mut b = Batch::default();
        let line =
            r#"{"time":"2026-11-25T19:40:33Z","type":"Warning","message":"Back-off restarting"}"#;
        for i in 0..1000 {
            b.push(
                labels("ns", "Pod", "Warning"),
                1_795_635_633_000_000_000 + i,
                Line::Plain(line),
                None,
            );
        }
        let est = b.encoded_size();
        let real = b.seal(&schema(vec![])).body.len();
        assert!(
            est >= real && est < real + real / 4,
            "estimate {est}, real {real}"
        );
    }
}
