//! Grouping occurrences into Loki streams and encoding the push body. No I/O here.
//!
//! A `Batch` keeps every line in one byte arena and each stream's entries as
//! `(timestamp, range)` triples, so adding an occurrence copies its line once and allocates
//! nothing per field. `seal` groups the entries by stream, orders each stream by time (Loki
//! wants a stream's entries in order within a push) and writes the JSON body
//! `{"streams":[{"stream":{…},"values":[…]}]}`, or (`Format::Protobuf`, for
//! `LOKI_COMPRESSION=snappy`) the same streams as Loki's protobuf `PushRequest` (`proto.rs`),
//! which the pusher only has to compress.

use std::collections::HashMap;

use crate::event::{push_decimal, push_hex16, write_json_str, Labels};

/// Occurrences waiting to be pushed, grouped by stream. Every buffer is kept (cleared, not
/// freed) from one batch to the next, so a batch in a steady state allocates nothing.
#[derive(Default)]
pub struct Batch {
    /// How `seal` encodes the batch, and so how the arena holds lines: escaped for a JSON
    /// string, or as they are.
    format: Format,
    streams: Vec<Stream>,
    /// The label values of every stream, back to back (`Stream::values` are ranges here).
    label_text: String,
    /// hash(labels) -> the first stream with that hash (others chain through `Stream::next`).
    index: HashMap<u64, u32, std::hash::BuildHasherDefault<crate::hash::KeyHasher>>,
    /// Every occurrence in arrival order; grouped by stream and ordered by time at `seal`.
    entries: Vec<Entry>,
    /// `seal`'s working space for that ordering: the entries grouped, and where each
    /// stream's group starts.
    grouped: Vec<Entry>,
    starts: Vec<u32>,
    /// A protobuf `seal`'s working space: the labels in name order (indices as in
    /// `Batch::label_name`).
    label_order: Vec<usize>,
    arena: String,
    /// Journal records of the occurrences in this batch: `uid count hash` lines (spool.rs).
    records: String,
    /// The same records as numbers (`key, count, hash`), for the memory of shipped occurrences.
    list: Vec<(u64, i64, u64)>,
    /// The records of batches the pusher has committed, emptied (`Batch::give_records`): the
    /// next batches', so that sealing does not allocate them anew. In the static musl build a
    /// fresh buffer of this size is a new mapping, faulted in page by page and unmapped
    /// after the commit. Up to `RECORD_SPARES` of each.
    spare_records: Vec<String>,
    spare_list: Vec<Vec<(u64, i64, u64)>>,
    /// Estimated size of the encoded body, for `BATCH_MAX_BYTES`.
    encoded_estimate: usize,
}

struct Stream {
    /// `label_text` ranges of the values, in `Labels::values` order.
    values: [(u32, u32); 6],
    len: u8,
    /// The next stream whose labels have the same hash, or `NO_STREAM`.
    next: u32,
}

const NO_STREAM: u32 = u32::MAX;

/// How many entries ahead `seal` asks for a line's bytes (`Batch::prefetch_entry`).
const PREFETCH_AHEAD: usize = 4;

/// How many committed batches' record buffers are kept for the next ones: as many as can be
/// sealed and not yet committed at once (the queue's two sealed batches and the one the
/// pusher is spooling). With one, a storm still allocated fresh records for one batch in
/// seven (strace).
const RECORD_SPARES: usize = 3;

const EMPTY_ENTRY: Entry = Entry {
    stream: 0,
    nanos: 0,
    start: 0,
    end: 0,
    meta_start: 0,
};

#[derive(Clone, Copy)]
struct Entry {
    stream: u32,
    nanos: i64,
    start: usize,
    end: usize,
    /// Structured metadata (an encoded JSON object) in the arena, `meta_start..end`; empty
    /// when `meta_start == end`.
    meta_start: usize,
}

/// How streams are labelled: `job`, the static `LABELS`, then the `LABEL_KEYS` names in the
/// order of `Labels::values`; and how batches are encoded.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    pub job: String,
    pub static_labels: Vec<(String, String)>,
    pub keys: Vec<String>,
    pub format: Format,
}

/// How a sealed body is encoded: Loki's JSON, or its protobuf `PushRequest` (which
/// `LOKI_COMPRESSION=snappy` sends, snappy-compressed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Json,
    Protobuf,
}

/// A line to add: as JSON, or already escaped to sit inside a JSON string
/// (`Event::write_line_both`), which the batch then only copies.
#[derive(Clone, Copy)]
pub enum Line<'a> {
    Plain(&'a str),
    Nested(&'a str),
}

/// A batch encoded for Loki, ready to push (and, later, to spool).
pub struct Sealed {
    pub body: Vec<u8>,
    pub format: Format,
    pub entries: usize,
    /// The journal records of its occurrences, as text and as numbers.
    pub records: String,
    pub list: Vec<(u64, i64, u64)>,
    /// Oldest and newest occurrence time in the batch (Unix ns), for log lines.
    pub oldest: i64,
    pub newest: i64,
}

impl Batch {
    /// An empty batch that seals as `format`.
    pub fn new(format: Format) -> Batch {
        Batch {
            format,
            ..Batch::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Takes back the records of a sealed batch once they are committed, emptied, for the
    /// next batches to be sealed (`RECORD_SPARES` pairs are kept).
    pub fn give_records(&mut self, mut records: String, mut list: Vec<(u64, i64, u64)>) {
        if records.capacity() > 0 && self.spare_records.len() < RECORD_SPARES {
            records.clear();
            self.spare_records.push(records);
        }
        if list.capacity() > 0 && self.spare_list.len() < RECORD_SPARES {
            list.clear();
            self.spare_list.push(list);
        }
    }

    /// Gives back the capacity the buffers do not use.
    pub fn shrink(&mut self) {
        self.spare_records = Vec::new();
        self.spare_list = Vec::new();
        self.streams.shrink_to_fit();
        self.label_text.shrink_to_fit();
        self.index.shrink_to_fit();
        self.entries.shrink_to_fit();
        self.grouped = Vec::new();
        self.starts = Vec::new();
        self.arena.shrink_to_fit();
        self.records.shrink_to_fit();
    }

    /// The size the encoded body will roughly have.
    pub fn encoded_size(&self) -> usize {
        self.encoded_estimate
    }

    /// Remembers that the occurrence `count` of the event with key `key` (`spool::uid_key`),
    /// whose line hashes to `hash`, is in this batch (for the journal, once the batch is safe).
    pub fn record(&mut self, key: u64, count: i64, hash: u64) {
        push_hex16(&mut self.records, key);
        self.records.push(' ');
        push_decimal(&mut self.records, count);
        self.records.push(' ');
        push_hex16(&mut self.records, hash);
        self.records.push('\n');
        self.list.push((key, count, hash));
    }

    /// Adds one line (and its structured metadata, an encoded JSON object) to the stream of
    /// `labels`.
    pub fn push(&mut self, labels: Labels<'_>, nanos: i64, line: Line<'_>, metadata: Option<&str>) {
        let stream = self.stream_of(&labels);
        let start = self.arena.len();
        match (self.format, line) {
            (Format::Json, Line::Plain(l)) => crate::event::write_json_chars(l, &mut self.arena),
            (Format::Json, Line::Nested(l)) | (Format::Protobuf, Line::Plain(l)) => {
                self.arena.push_str(l)
            }
            // The Shipper gives a protobuf batch plain lines; this is for completeness, and
            // tested. A nested line is the inside of a JSON string, which always reads back;
            // were it not one, its text would go as it is rather than not at all.
            (Format::Protobuf, Line::Nested(l)) => {
                match serde_json::from_str::<String>(&format!("\"{l}\"")) {
                    Ok(plain) => self.arena.push_str(&plain),
                    Err(_) => self.arena.push_str(l),
                }
            }
        }
        let meta_start = self.arena.len();
        if let Some(m) = metadata {
            self.arena.push_str(m);
            self.encoded_estimate += m.len() + 1;
        }
        self.entries.push(Entry {
            stream,
            nanos,
            start,
            end: self.arena.len(),
            meta_start,
        });
        // ["<19 digits>","<line>"],
        self.encoded_estimate += 28 + (meta_start - start);
    }

    /// Asks for the bytes of entry `i` (line and metadata), if there is one, ahead of its
    /// copy into the body. `seal` takes the entries by stream, so it reads the arena out of
    /// order, and by then the start of a 1 MB arena has left the watcher's 512 KB L2: the
    /// hardware prefetcher cannot guess the next line, and each one waited for its first
    /// cache lines. Asked for four entries ahead, a 2,000-entry batch sealed from a cold
    /// cache takes 146–154 instead of 216–278 ns per entry (`bench memory`, benches/README.md);
    /// in the storm, the seal's copies had been ~3 % of kube-event's time (perf).
    #[inline(always)]
    fn prefetch_entry(&self, i: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(e) = self.entries.get(i) {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let line = &self.arena.as_bytes()[e.start..e.end];
            for at in (0..line.len()).step_by(64) {
                // SAFETY: `at` is within `line`; a prefetch only hints, it reads nothing
                // into the program and cannot fault.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().add(at).cast()) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }

    /// Orders the entries as the body lists them: streams in the order they first appeared
    /// (their indices), each stream's entries by time, in arrival order for the same time.
    /// That is a stable sort by `(stream, nanos)`; done as a counting sort by stream and then
    /// a sort of each stream only where it is out of order (in a storm, entries come in time
    /// order), which cost ~50 instead of ~900 instructions per entry (callgrind, issue 6).
    fn order(&mut self) {
        let n = self.streams.len();
        self.starts.clear();
        self.starts.resize(n + 1, 0);
        for e in &self.entries {
            self.starts[e.stream as usize + 1] += 1;
        }
        for i in 1..=n {
            self.starts[i] += self.starts[i - 1];
        }
        self.grouped.clear();
        self.grouped.resize(self.entries.len(), EMPTY_ENTRY);
        // `starts[s]` is where stream `s` begins; it moves on as the stream's entries are
        // placed, and ends where the stream ends.
        for e in &self.entries {
            let at = &mut self.starts[e.stream as usize];
            self.grouped[*at as usize] = *e;
            *at += 1;
        }
        let mut begin = 0;
        for s in 0..n {
            let end = self.starts[s] as usize;
            let group = &mut self.grouped[begin..end];
            if !group.is_sorted_by_key(|e| e.nanos) {
                group.sort_by_key(|e| e.nanos);
            }
            begin = end;
        }
        std::mem::swap(&mut self.entries, &mut self.grouped);
    }

    /// The index of the stream with these labels, added if it is new.
    fn stream_of(&mut self, labels: &Labels<'_>) -> u32 {
        let h = labels_hash(labels);
        let first = *self.index.get(&h).unwrap_or(&NO_STREAM);
        let mut i = first;
        while i != NO_STREAM {
            let s = &self.streams[i as usize];
            let same = s.values[..s.len as usize]
                .iter()
                .map(|&(a, b)| &self.label_text[a as usize..b as usize])
                .eq(labels.values().iter().copied());
            if same {
                return i;
            }
            i = s.next;
        }
        let mut values = [(0u32, 0u32); 6];
        for (slot, v) in values.iter_mut().zip(labels.values()) {
            let a = self.label_text.len() as u32;
            self.label_text.push_str(v);
            *slot = (a, self.label_text.len() as u32);
        }
        let idx = self.streams.len() as u32;
        self.streams.push(Stream {
            values,
            len: labels.values().len() as u8,
            next: first,
        });
        self.index.insert(h, idx);
        // {"stream":{...},"values":[]}, job, the static labels and these
        self.encoded_estimate += 128 + labels.values().iter().map(|v| v.len() + 16).sum::<usize>();
        idx
    }

    /// Encodes the batch as a Loki push body, into `buf` (a spare one, or empty), and
    /// empties it.
    pub fn seal(&mut self, schema: &Schema, mut buf: Vec<u8>) -> Sealed {
        buf.clear();
        buf.reserve(self.encoded_estimate + 16);
        self.order();
        let (body, oldest, newest) = match self.format {
            Format::Json => self.json(schema, buf),
            Format::Protobuf => {
                let mut order = std::mem::take(&mut self.label_order);
                let sealed = self.protobuf(schema, buf, &mut order);
                self.label_order = order;
                sealed
            }
        };
        let sealed = Sealed {
            body,
            format: self.format,
            entries: self.entries.len(),
            records: {
                let next = self
                    .spare_records
                    .pop()
                    .unwrap_or_else(|| String::with_capacity(self.records.len()));
                std::mem::replace(&mut self.records, next)
            },
            list: {
                let next = self
                    .spare_list
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(self.list.len()));
                std::mem::replace(&mut self.list, next)
            },
            oldest,
            newest,
        };
        self.streams.clear();
        self.label_text.clear();
        self.index.clear();
        self.entries.clear();
        self.arena.clear();
        self.encoded_estimate = 0;
        sealed
    }

    /// The ordered entries as Loki's protobuf `PushRequest`, and their oldest and newest time.
    /// `order` is working space for the labels' order.
    fn protobuf(
        &self,
        schema: &Schema,
        mut out: Vec<u8>,
        order: &mut Vec<usize>,
    ) -> (Vec<u8>, i64, i64) {
        use crate::proto::Sealer;
        let statics = schema.static_labels.len();
        // Label `i`: `job`, the static labels, then the `LABEL_KEYS`.
        let name = |i: usize| -> &str {
            match i {
                0 => "job",
                i if i <= statics => &schema.static_labels[i - 1].0,
                i => &schema.keys[i - 1 - statics],
            }
        };
        // By name, as `proto::Encoder::transcode` orders a JSON body's labels (stable).
        order.clear();
        order.extend(0..1 + statics + schema.keys.len());
        order.sort_by_key(|&i| name(i));
        let mut sealer = Sealer::new();
        let (mut oldest, mut newest) = (i64::MAX, i64::MIN);
        let mut current = NO_STREAM;
        for (i, e) in self.entries.iter().enumerate() {
            self.prefetch_entry(i + PREFETCH_AHEAD);
            if e.stream != current {
                current = e.stream;
                // The stream's entries follow: their lines and metadata, ~24 bytes each of
                // protobuf around them (entry, timestamp, line), and its labels.
                let size: usize = self.entries[i..]
                    .iter()
                    .take_while(|n| n.stream == current)
                    .map(|n| n.end - n.start + 24)
                    .sum::<usize>()
                    + 256;
                let stream = &self.streams[current as usize];
                let value = |i: usize| -> &str {
                    match i {
                        0 => &schema.job,
                        i if i <= statics => &schema.static_labels[i - 1].1,
                        i => match stream.values[..stream.len as usize].get(i - 1 - statics) {
                            Some(&(a, b)) => &self.label_text[a as usize..b as usize],
                            None => "",
                        },
                    }
                };
                // As the JSON body: `job` always, other labels only when not empty.
                let labels = order
                    .iter()
                    .filter(|&&i| i == 0 || !value(i).is_empty())
                    .map(|&i| (name(i), value(i)));
                sealer.stream(&mut out, labels, size);
            }
            oldest = oldest.min(e.nanos);
            newest = newest.max(e.nanos);
            let metadata =
                (e.meta_start < e.end).then(|| &self.arena.as_bytes()[e.meta_start..e.end]);
            let line = &self.arena.as_bytes()[e.start..e.meta_start];
            if sealer.entry(&mut out, e.nanos, line, metadata).is_err() {
                // Metadata that is not an object of strings, which `Event::write_metadata`
                // never writes: the entry goes without it rather than not at all.
                sealer
                    .entry(&mut out, e.nanos, line, None)
                    .unwrap_or_default();
            }
        }
        sealer.finish(&mut out);
        (out, oldest, newest)
    }

    /// The ordered entries as Loki's JSON push body, and their oldest and newest time.
    fn json(&self, schema: &Schema, buf: Vec<u8>) -> (Vec<u8>, i64, i64) {
        // An empty Vec is valid UTF-8.
        let mut out = String::from_utf8(buf).unwrap_or_default();
        let mut oldest = i64::MAX;
        let mut newest = i64::MIN;
        out.push_str("{\"streams\":[");
        let mut current = NO_STREAM;
        for (i, e) in self.entries.iter().enumerate() {
            self.prefetch_entry(i + PREFETCH_AHEAD);
            if e.stream != current {
                if current != NO_STREAM {
                    out.push_str("]},");
                }
                current = e.stream;
                let stream = &self.streams[current as usize];
                out.push_str("{\"stream\":{\"job\":");
                write_json_str(&schema.job, &mut out);
                for (k, v) in &schema.static_labels {
                    label(&mut out, k, v);
                }
                for (k, &(a, b)) in schema
                    .keys
                    .iter()
                    .zip(&stream.values[..stream.len as usize])
                {
                    label(&mut out, k, &self.label_text[a as usize..b as usize]);
                }
                out.push_str("},\"values\":[");
            } else {
                out.push(',');
            }
            oldest = oldest.min(e.nanos);
            newest = newest.max(e.nanos);
            out.push_str("[\"");
            push_decimal(&mut out, e.nanos);
            out.push_str("\",\"");
            out.push_str(&self.arena[e.start..e.meta_start]);
            out.push('"');
            if e.meta_start < e.end {
                out.push(',');
                out.push_str(&self.arena[e.meta_start..e.end]);
            }
            out.push(']');
        }
        if current != NO_STREAM {
            out.push_str("]}");
        }
        out.push_str("]}");
        (out.into_bytes(), oldest, newest)
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
            format: Format::Json,
        }
    }

    /// One entry with the record `key 1 key`, sealed.
    fn seal(b: &mut Batch, key: u64) -> Sealed {
        b.push(labels("a", "Pod", "Normal"), 1, Line::Plain("l"), None);
        b.record(key, 1, key);
        b.seal(&schema(vec![]), Vec::new())
    }

    /// Records given back after their commit are the buffers of a later batch, emptied.
    #[test]
    fn committed_records_are_reused_by_a_later_batch() {
        let mut b = Batch::default();
        let first = seal(&mut b, 1);
        let (text, numbers) = (first.records.as_ptr(), first.list.as_ptr());
        b.give_records(first.records, first.list);
        let second = seal(&mut b, 2);
        b.give_records(second.records, second.list);
        // The first batch's buffers were the spare while the third was filled.
        let third = seal(&mut b, 3);
        assert_eq!(
            (third.records.as_ptr(), third.list.as_ptr()),
            (text, numbers)
        );
        assert_eq!(third.list, vec![(3, 1, 3)]);
        assert_eq!(third.records, "0000000000000003 1 0000000000000003\n");
    }

    /// Batches sealed while earlier ones wait for their commit: each committed one's buffers
    /// are kept, up to `RECORD_SPARES`, and the batches after them are filled in those.
    #[test]
    fn records_of_several_committed_batches_are_kept() {
        let mut b = Batch::default();
        let sealed: Vec<Sealed> = (1..=RECORD_SPARES as u64 + 2)
            .map(|k| seal(&mut b, k))
            .collect();
        let mut kept = Vec::new();
        for s in sealed {
            kept.push(s.records.as_ptr());
            b.give_records(s.records, s.list);
        }
        assert_eq!(b.spare_records.len(), RECORD_SPARES);
        assert_eq!(b.spare_list.len(), RECORD_SPARES);
        // The batch being filled is in a fresh buffer; the ones after it take the spares.
        seal(&mut b, 10);
        for k in 0..RECORD_SPARES as u64 {
            let s = seal(&mut b, 11 + k);
            assert!(kept.contains(&s.records.as_ptr()), "batch {k}");
            assert_eq!(s.list, vec![(11 + k, 1, 11 + k)]);
        }
        assert!(b.spare_records.is_empty());
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
        let sealed = b.seal(&schema(statics), Vec::new());
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

    /// `order` is the stable sort by `(stream, nanos)` it stands for: streams interleaved,
    /// in order and out of order, ties in time, batch after batch in the same buffers.
    #[test]
    fn order_is_a_stable_sort_by_stream_and_time() {
        let mut b = Batch::default();
        let kinds = ["Pod", "Node", "Job", "Service", "Deployment"];
        let mut x = 7u64;
        for round in 0..4 {
            for i in 0..500 {
                x = crate::hash::mix(x + i);
                let kind = kinds[(x % kinds.len() as u64) as usize];
                // Rounds 0 and 2 in time order per stream; 1 and 3 with times out of order.
                let nanos = if round % 2 == 0 {
                    i as i64 / 3
                } else {
                    (x >> 8) as i64 % 50
                };
                b.push(labels("ns", kind, "Normal"), nanos, Line::Plain("l"), None);
            }
            let mut want: Vec<_> = b
                .entries
                .iter()
                .map(|e| (e.stream, e.nanos, e.start))
                .collect();
            want.sort_by_key(|&(s, n, _)| (s, n));
            b.order();
            let got: Vec<_> = b
                .entries
                .iter()
                .map(|e| (e.stream, e.nanos, e.start))
                .collect();
            assert_eq!(got, want, "round {round}");
            b.seal(&schema(vec![]), Vec::new());
        }
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
            format: Format::Json,
        };
        let body = String::from_utf8(b.seal(&s, Vec::new()).body).unwrap();
        assert_eq!(
            body,
            r#"{"streams":[{"stream":{"job":"events","reason":"BackOff"},"values":[["1","line",{"event_uid":"u"}],["2","plain"]]}]}"#
        );
    }

    #[test]
    fn journal_records_and_timestamps_are_written_as_fmt_would() {
        let mut b = Batch::default();
        let cases = [
            (0u64, 1i64, 0u64),
            (u64::MAX, i64::MAX, 0x0123_4567_89ab_cdef),
            (0xdead_beef, -5, u64::MAX),
            (42, 0, 7),
        ];
        let mut want = String::new();
        for (k, c, h) in cases {
            b.record(k, c, h);
            want.push_str(&format!("{k:016x} {c} {h:016x}\n"));
        }
        assert_eq!(b.records, want);
        for v in [0, 9, 10, -1, i64::MIN, i64::MAX, 1_795_635_633_123_456_789] {
            let mut out = String::new();
            push_decimal(&mut out, v);
            assert_eq!(out, v.to_string());
        }
    }

    #[test]
    fn streams_with_the_same_label_hash_stay_apart() {
        // Force every stream into one hash chain: the labels still decide.
        let mut b = Batch::default();
        let l1 = labels("a", "Pod", "Warning");
        let l2 = labels("b", "Pod", "Warning");
        let s1 = b.stream_of(&l1);
        b.index.insert(labels_hash(&l2), s1);
        let s2 = b.stream_of(&l2);
        assert_ne!(s1, s2);
        assert_eq!(b.stream_of(&l1), s1);
        assert_eq!(b.stream_of(&l2), s2);
        assert_eq!(b.streams[s2 as usize].next, s1);
    }

    #[test]
    fn a_batch_reused_after_seal_encodes_the_same() {
        let mut b = Batch::default();
        let mut bodies = Vec::new();
        for _ in 0..3 {
            b.push(labels("a", "Pod", "Warning"), 2, Line::Plain("x"), None);
            b.push(labels("b", "Pod", "Normal"), 1, Line::Plain("y"), None);
            b.push(labels("a", "Pod", "Warning"), 1, Line::Plain("z"), None);
            b.record(1, 1, 1);
            let sealed = b.seal(&schema(vec![]), Vec::new());
            assert_eq!(sealed.list.len(), 1);
            bodies.push(String::from_utf8(sealed.body).unwrap());
        }
        assert_eq!(bodies[0], bodies[1]);
        assert_eq!(bodies[1], bodies[2]);
        assert_eq!(
            bodies[0],
            r#"{"streams":[{"stream":{"job":"kube-event","namespace":"a","kind":"Pod","type":"Warning"},"values":[["1","z"],["2","x"]]},{"stream":{"job":"kube-event","namespace":"b","kind":"Pod","type":"Normal"},"values":[["1","y"]]}]}"#
        );
        // An empty batch is a valid (empty) body.
        assert_eq!(
            b.seal(&schema(vec![]), Vec::new()).body,
            br#"{"streams":[]}"#
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
        let real = b.seal(&schema(vec![]), Vec::new()).body.len();
        assert!(
            est >= real && est < real + real / 4,
            "estimate {est}, real {real}"
        );
    }
}
