//! Loki's native push body: the protobuf `PushRequest` of Loki's `pkg/push/push.proto`, the
//! body Promtail and Alloy send, snappy-compressed (`LOKI_COMPRESSION=snappy`, the default;
//! protocols.md 5.2: a body that is not `application/json` is read as snappy protobuf).
//!
//! Why: gzip (zlib-rs's level 1) of a JSON body cost ~11,000 instructions per event, 30 % of
//! kube-event's CPU per event (issue 6); snappy of the same entries as protobuf cost ~4,000,
//! and ~2,700 with `snappy.rs` (benches/README.md has the figures; gzip is now `deflate.rs`'s,
//! ~5,900).
//!
//! `batch.rs` seals a batch as protobuf with [`Sealer`]; [`Encoder`] compresses it. JSON stays
//! the form that re-stamping, `rejected/`, `--show-batch` and `LOKI_COMPRESSION=gzip|none` work
//! on: [`Encoder::transcode`] turns a JSON body into protobuf in one pass (for a batch spooled
//! as JSON, or re-stamped), and [`json_text`] goes back (for a batch Loki refused, or spooled
//! under another setting). Transcoding costs ~4,000 instructions per entry, most of it undoing
//! the escapes of the lines.
//!
//! The messages, with push.proto's field numbers:
//!
//! ```text
//! PushRequest      { repeated StreamAdapter streams = 1; }
//! StreamAdapter    { string labels = 1; repeated EntryAdapter entries = 2; uint64 hash = 3; }
//! EntryAdapter     { google.protobuf.Timestamp timestamp = 1; string line = 2;
//!                    repeated LabelPairAdapter structuredMetadata = 3; }
//! LabelPairAdapter { string name = 1; string value = 2; }
//! Timestamp        { int64 seconds = 1; int32 nanos = 2; }
//! ```
//!
//! `labels` is the stream's label set as Prometheus prints it, `{job="kube-event",
//! namespace="default"}`, names in order, values quoted as Go quotes them (Loki parses it with
//! `strconv.Unquote`'s rules). `hash` is left out (Loki computes it).

use std::ops::Range;

use crate::event::{push_decimal, write_json_str};
/// Why a body could not be transcoded or decoded, and where (a byte offset), as `scan.rs`
/// says it of a frame.
pub use crate::scan::Error;
use crate::scan::Reader;

/// Transcodes sealed JSON push bodies to snappy protobuf, keeping its buffers (and snappy's
/// hash table) from one body to the next.
#[derive(Default)]
pub struct Encoder {
    proto: Vec<u8>,
    /// Label names and values of the stream being read, unescaped, and where each pair is.
    text: Vec<u8>,
    pairs: Vec<(Range<usize>, Range<usize>)>,
    snappy: Option<crate::snappy::Encoder>,
}

impl Encoder {
    /// `json` (a Loki JSON push body) as snappy-compressed protobuf, into `wire` (cleared
    /// first).
    pub fn encode_into(&mut self, json: &[u8], wire: &mut Vec<u8>) -> Result<(), Error> {
        let mut proto = std::mem::take(&mut self.proto);
        let done = self
            .transcode(json, &mut proto)
            .and_then(|()| self.compress_into(&proto, wire));
        self.proto = proto;
        done
    }

    /// A protobuf body (as `batch.rs` seals it) snappy-compressed into `wire` (cleared first).
    pub fn compress_into(&mut self, proto: &[u8], wire: &mut Vec<u8>) -> Result<(), Error> {
        // Only an input over 4 GiB fails, which a push body (BATCH_MAX_BYTES, at most 100 MiB)
        // never is.
        self.snappy
            .get_or_insert_with(Default::default)
            .compress(proto, wire)
            .ok_or(Error {
                at: 0,
                what: "body too large for snappy",
            })
    }

    /// `json` as a protobuf `PushRequest`, into `out` (cleared first).
    pub fn transcode(&mut self, json: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        out.clear();
        out.reserve(json.len());
        let mut r = Reader::new(json);
        r.body_object(|r, key| match key {
            b"streams" => r.body_array(|r| self.stream(r, out)),
            _ => r.err("expected only `streams`"),
        })?;
        r.ws();
        if r.i != json.len() {
            return r.err("trailing characters");
        }
        Ok(())
    }

    /// Gives back the buffers and snappy's table (idle).
    pub fn trim(&mut self) {
        *self = Encoder::default();
    }

    /// One `{"stream":{…},"values":[…]}` as a `StreamAdapter` (field 1 of the request).
    fn stream(&mut self, r: &mut Reader<'_>, out: &mut Vec<u8>) -> Result<(), Error> {
        let at = begin(out, 1, 3);
        self.text.clear();
        self.pairs.clear();
        r.body_object(|r, key| match key {
            b"stream" => {
                r.body_object(|r, name| {
                    let a = self.text.len();
                    self.text.extend_from_slice(name);
                    let b = self.text.len();
                    r.string_into(&mut self.text)?;
                    self.pairs.push((a..b, b..self.text.len()));
                    Ok(())
                })?;
                let text = &self.text;
                self.pairs
                    .sort_by(|x, y| text[x.0.clone()].cmp(&text[y.0.clone()]));
                let pairs = self.pairs.iter();
                label_set(
                    out,
                    pairs.map(|(n, v)| (&text[n.clone()], &text[v.clone()])),
                );
                Ok(())
            }
            b"values" => r.body_array(|r| entry(r, out)),
            _ => r.err("expected `stream` or `values`"),
        })?;
        end(out, at, 3);
        Ok(())
    }
}

/// One `["<ns>","<line>"]` or `["<ns>","<line>",{…}]` as an `EntryAdapter` (field 2 of a
/// stream).
fn entry(r: &mut Reader<'_>, out: &mut Vec<u8>) -> Result<(), Error> {
    let at = begin(out, 2, 2);
    r.ws();
    r.eat(b'[', "expected an entry `[`")?;
    r.ws();
    let nanos = r.timestamp()?;
    timestamp(out, nanos);
    r.ws();
    r.eat(b',', "expected `,` after the timestamp")?;
    r.ws();
    let line = begin(out, 2, 2);
    r.string_into(out)?;
    end_string(out, line, 2);
    r.ws();
    if r.peek() == Some(b',') {
        r.i += 1;
        r.ws();
        metadata(r, out)?;
        r.ws();
    }
    r.eat(b']', "expected `]` after an entry")?;
    end(out, at, 2);
    Ok(())
}

/// A stream's labels (field 1) as Prometheus prints a label set, `{a="1", b="2"}`, from
/// name and value pairs in name order.
fn label_set<'l>(out: &mut Vec<u8>, pairs: impl Iterator<Item = (&'l [u8], &'l [u8])>) {
    let at = begin(out, 1, 2);
    out.push(b'{');
    for (i, (name, value)) in pairs.enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b"=\"");
        go_quote_into(value, out);
        out.push(b'"');
    }
    out.push(b'}');
    end(out, at, 2);
}

/// An entry's `Timestamp` (field 1): Unix `nanos` as seconds and nanoseconds.
fn timestamp(out: &mut Vec<u8>, nanos: i64) {
    let (secs, sub) = (
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000),
    );
    key(out, 1, LEN);
    out.push((field_len(secs as u64) + field_len(sub as u64)) as u8);
    if secs != 0 {
        key(out, 1, VARINT);
        varint(out, secs as u64);
    }
    if sub != 0 {
        key(out, 2, VARINT);
        varint(out, sub as u64);
    }
}

/// Structured metadata, a JSON object of strings at the reader, as `LabelPairAdapter`s
/// (field 3 of an entry).
fn metadata(r: &mut Reader<'_>, out: &mut Vec<u8>) -> Result<(), Error> {
    r.body_object(|r, name| {
        let pair = begin(out, 3, 1);
        if !name.is_empty() {
            key(out, 1, LEN);
            varint(out, name.len() as u64);
            out.extend_from_slice(name);
        }
        let value = begin(out, 2, 1);
        r.string_into(out)?;
        end_string(out, value, 1);
        end(out, pair, 1);
        Ok(())
    })
}

/// Writes a `PushRequest` as `batch.rs` seals a batch, without JSON in between: a stream at a
/// time ([`Sealer::stream`]), then its entries ([`Sealer::entry`]), lines as they are.
/// Gives the bytes [`Encoder::transcode`] gives for the JSON body of the same batch.
#[derive(Default)]
pub struct Sealer {
    /// Where the open stream's length goes, and the room left for it.
    stream: Option<(usize, usize)>,
}

impl Sealer {
    pub fn new() -> Sealer {
        Sealer::default()
    }

    /// Starts a stream with `labels` (name and value pairs, in name order, stable for equal
    /// names, as [`Encoder::transcode`] orders them), ending the one before. `size`: about
    /// how many bytes the stream will take, for the room its length gets (a wrong guess
    /// costs a move of the stream when it ends).
    pub fn stream<'l>(
        &mut self,
        out: &mut Vec<u8>,
        labels: impl Iterator<Item = (&'l str, &'l str)>,
        size: usize,
    ) {
        self.finish(out);
        let room = stream_room(size);
        self.stream = Some((begin(out, 1, room), room));
        label_set(out, labels.map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    }

    /// One entry of the open stream: `line` as it is, `metadata` a JSON object of strings (as
    /// `Event::write_metadata` writes it). `Err` only for metadata that is not such an object,
    /// and then `out` is as it was.
    pub fn entry(
        &mut self,
        out: &mut Vec<u8>,
        nanos: i64,
        line: &[u8],
        metadata: Option<&[u8]>,
    ) -> Result<(), Error> {
        let before = out.len();
        let at = begin(out, 2, 2);
        timestamp(out, nanos);
        if !line.is_empty() {
            key(out, 2, LEN);
            varint(out, line.len() as u64);
            out.extend_from_slice(line);
        }
        if let Some(m) = metadata {
            if let Err(e) = self::metadata(&mut Reader::new(m), out) {
                out.truncate(before);
                return Err(e);
            }
        }
        end(out, at, 2);
        Ok(())
    }

    /// Ends the last stream.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some((at, room)) = self.stream.take() {
            end(out, at, room);
        }
    }
}

/// The bytes a stream's length gets for a stream of about `size` bytes: 2 below 16 KiB, with
/// a margin for the guess. Always 3 had moved most streams of a storm's batch by a byte when
/// they ended (~100 instructions per event, callgrind).
fn stream_room(size: usize) -> usize {
    if size < (1 << 14) - 1024 {
        2
    } else {
        varint_len(size as u64 + 1024).max(3)
    }
}

const VARINT: u8 = 0;
const LEN: u8 = 2;

/// A field's key (every field here is below 16, so one byte).
#[inline(always)]
fn key(out: &mut Vec<u8>, field: u8, wire: u8) {
    out.push(field << 3 | wire);
}

/// `v` as a base-128 varint, low 7 bits first: protobuf's, and the length that begins a
/// snappy block (`snappy.rs`).
#[inline(always)]
pub(crate) fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The bytes of a varint field holding `v`, or 0 when it is zero and left out.
fn field_len(v: u64) -> usize {
    if v == 0 {
        0
    } else {
        1 + varint_len(v)
    }
}

/// Starts a length-delimited field: its key and `room` bytes for the length, which [`end`]
/// writes once the field is written. Guessing the length's size right (2 bytes for a line
/// or an entry; for a stream, `stream_room`) saves moving the field.
#[inline(always)]
fn begin(out: &mut Vec<u8>, field: u8, room: usize) -> usize {
    key(out, field, LEN);
    let at = out.len();
    out.resize(at + room, 0);
    at
}

/// Ends the field [`begin`] started at `at`: writes its length in the fewest bytes (as
/// protobuf encoders do), moving the field when that is not `room` bytes.
#[inline(always)]
fn end(out: &mut Vec<u8>, at: usize, room: usize) {
    let len = out.len() - at - room;
    let need = varint_len(len as u64);
    if need != room {
        let old = out.len();
        if need > room {
            out.resize(old + need - room, 0);
        }
        out.copy_within(at + room..old, at + need);
        out.truncate(old + need - room);
    }
    let mut v = len as u64;
    for b in &mut out[at..at + need] {
        *b = v as u8 | 0x80;
        v >>= 7;
    }
    out[at + need - 1] &= 0x7f;
}

/// Ends a string field as [`end`] does, or removes it when the string is empty: proto3 leaves
/// out fields that hold their default, so the body is the bytes protobuf's own encoders write.
#[inline(always)]
fn end_string(out: &mut Vec<u8>, at: usize, room: usize) {
    if out.len() == at + room {
        out.truncate(at - 1);
    } else {
        end(out, at, room);
    }
}

/// Appends `v` as the inside of a Go string literal (`strconv.Unquote` reads it back):
/// `"` and `\` escaped, control characters as `\n`, `\t`, `\r` or `\xHH`, the rest as is.
fn go_quote_into(v: &[u8], out: &mut Vec<u8>) {
    for &c in v {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'x',
                    HEX[(c >> 4) as usize],
                    HEX[(c & 15) as usize],
                ]);
            }
            _ => out.push(c),
        }
    }
}

/// What each JSON escape `\c` stands for, by `c`; 0 for `u` (done by `Reader::escape`) and
/// for what is not an escape.
const UNESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t[b'/' as usize] = b'/';
    t[b'b' as usize] = 8;
    t[b'f' as usize] = 12;
    t[b'n' as usize] = b'\n';
    t[b'r' as usize] = b'\r';
    t[b't' as usize] = b'\t';
    t
};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `v` that is `c`; only the lowest set bit is exact.
#[inline(always)]
fn bytes_equal(v: u64, c: u8) -> u64 {
    let x = v ^ (ONES * u64::from(c));
    x.wrapping_sub(ONES) & !x & HIGH
}

// A push body is read with `scan.rs`'s reader (its cursor, whitespace, errors and `\u`
// escapes); these are the parts of a push body that a watch frame does not have.
impl<'a> Reader<'a> {
    /// An object, calling `member` with the reader at each value and its key.
    fn body_object(
        &mut self,
        mut member: impl FnMut(&mut Self, &'a [u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.ws();
        if !self.open(b'{', b'}', "expected an object")? {
            return Ok(());
        }
        loop {
            self.ws();
            self.eat(b'"', "expected a key")?;
            let start = self.i;
            let end = self.b[start..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\')
                .map(|n| start + n)
                .filter(|&e| self.b[e] == b'"')
                .ok_or(Error {
                    at: start,
                    what: "expected a key without escapes",
                })?;
            self.i = end + 1;
            self.ws();
            self.eat(b':', "expected `:`")?;
            self.ws();
            member(self, &self.b[start..end])?;
            const WHAT: &str = "expected `,` or `}`";
            if !self.comma_or(b'}', WHAT, WHAT)? {
                return Ok(());
            }
        }
    }

    /// An array, calling `element` with the reader at each element.
    fn body_array(
        &mut self,
        mut element: impl FnMut(&mut Self) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.ws();
        if !self.open(b'[', b']', "expected an array")? {
            return Ok(());
        }
        loop {
            self.ws();
            element(self)?;
            const WHAT: &str = "expected `,` or `]`";
            if !self.comma_or(b']', WHAT, WHAT)? {
                return Ok(());
            }
        }
    }

    /// A timestamp: a string of Unix nanoseconds.
    fn timestamp(&mut self) -> Result<i64, Error> {
        self.eat(b'"', "expected a timestamp string")?;
        let neg = self.peek() == Some(b'-');
        self.i += usize::from(neg);
        let start = self.i;
        let mut v: i64 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(i64::from(d - b'0')))
                .ok_or(Error {
                    at: start,
                    what: "timestamp out of range",
                })?;
            self.i += 1;
        }
        if self.i == start {
            return self.err("expected the digits of a timestamp");
        }
        self.eat(b'"', "expected the end of the timestamp")?;
        Ok(if neg { -v } else { v })
    }

    /// A string, unescaped into `out`. (What is in it is not checked: the body is
    /// kube-event's own JSON.)
    ///
    /// A line in a push body is a JSON document inside a JSON string: it has an escape every
    /// ten bytes or so (`\"` around every key and value). Copying each run between escapes
    /// with `extend_from_slice` cost a `memcpy` call and the `Vec` bookkeeping per run, ~100
    /// instructions per escape (callgrind, `bench hotpath`). Here every 8 bytes read are
    /// stored whole at the end of `out` and the end moves past those before the first `"`
    /// or `\`, and the common escapes are written in the same loop.
    fn string_into(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        self.eat(b'"', "expected a string")?;
        let b = self.b;
        let n = b.len();
        let mut i = self.i;
        // Room for the rest of the body, unescaped (never longer), and one 8-byte store more.
        out.reserve(n - i + 8);
        loop {
            let mut d = out.len();
            // SAFETY: `out` has room for `len0 + (n - start) + 8` bytes, where `len0` was its
            // length when the string started at `start`. Every byte stored past `len0` stands
            // for a byte of `b` read before `i` (an escape turns two bytes into one; `\u`
            // escapes, 6 or 12 bytes into at most 4, go through `escape`, which pushes), so
            // `d - len0 <= i - start`: an 8-byte store at `d` while `i + 8 <= n`, or a 1-byte
            // store while `i < n`, stays within the room. Reads are at `i + 8 <= n` or
            // `i < n`. `read_unaligned`/`write_unaligned` need no alignment. `set_len(d)`
            // covers only bytes written here.
            let stop = unsafe {
                let src = b.as_ptr();
                let dst = out.as_mut_ptr();
                let stop = loop {
                    if i + 8 <= n {
                        let v = std::ptr::read_unaligned(src.add(i).cast::<u64>());
                        std::ptr::write_unaligned(dst.add(d).cast::<u64>(), v);
                        let m = bytes_equal(v, b'"') | bytes_equal(v, b'\\');
                        if m == 0 {
                            i += 8;
                            d += 8;
                            continue;
                        }
                        let k = m.trailing_zeros() as usize / 8;
                        i += k;
                        d += k;
                    } else {
                        while i < n && *src.add(i) != b'"' && *src.add(i) != b'\\' {
                            *dst.add(d) = *src.add(i);
                            i += 1;
                            d += 1;
                        }
                        if i == n {
                            break None;
                        }
                    }
                    // At a `"` or a `\`.
                    if *src.add(i) == b'"' {
                        break Some(true);
                    }
                    let c = if i + 1 < n {
                        UNESCAPE[*src.add(i + 1) as usize]
                    } else {
                        0
                    };
                    if c == 0 {
                        // `\u`, or not an escape: `escape` says which.
                        break Some(false);
                    }
                    *dst.add(d) = c;
                    d += 1;
                    i += 2;
                };
                out.set_len(d);
                stop
            };
            self.i = i;
            match stop {
                Some(true) => {
                    self.i += 1;
                    return Ok(());
                }
                Some(false) => {
                    self.escape_into(out)?;
                    i = self.i;
                }
                None => return self.err("EOF in a string"),
            }
        }
    }

    /// The `\u` escape at the reader (its `\`), unescaped into `out`; anything else there is
    /// not an escape.
    #[cold]
    fn escape_into(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        // The one-character escapes are done in `string_into` (`UNESCAPE`).
        if self.b.get(self.i + 1) != Some(&b'u') {
            return self.err("invalid escape");
        }
        self.i += 2;
        let ch = self.unicode_escape()?;
        let mut buf = [0; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        Ok(())
    }
}

/// The largest body [`json_text`] decompresses: far above any push body (BATCH_MAX_BYTES is
/// at most 100 MiB), low enough that a damaged length cannot ask for gigabytes.
const MAX_DECOMPRESSED: usize = 256 << 20;

/// The JSON push body that a snappy protobuf `body` holds (for re-stamping a batch Loki
/// refused, keeping it readable in `rejected/`, or pushing it under another setting).
pub fn json_text(body: &[u8]) -> Result<Vec<u8>, String> {
    let len = snap::raw::decompress_len(body)
        .map_err(|e| format!("cannot decompress the snappy body: {e}"))?;
    if len > MAX_DECOMPRESSED {
        return Err(format!(
            "cannot decompress the snappy body: it says {len} bytes, more than any push body"
        ));
    }
    let proto = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("cannot decompress the snappy body: {e}"))?;
    to_json(&proto).map_err(|e| format!("cannot read the protobuf body: {e}"))
}

/// A protobuf `PushRequest` as the JSON push body it stands for.
pub fn to_json(proto: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = String::with_capacity(proto.len() + proto.len() / 4);
    out.push_str("{\"streams\":[");
    json_list(proto, 1, &mut out, stream_json)?;
    out.push_str("]}");
    Ok(out.into_bytes())
}

/// The fields numbered `tag` of `msg` (embedded messages), each written by `item`, separated
/// by commas.
fn json_list(
    msg: &[u8],
    tag: u64,
    out: &mut String,
    item: fn(&[u8], &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut first = true;
    for field in Fields::new(msg) {
        if let (t, Value::Bytes(b)) = field? {
            if t == tag {
                if !first {
                    out.push(',');
                }
                first = false;
                item(b, out)?;
            }
        }
    }
    Ok(())
}

/// `"name":"value"` members, separated by commas (the inside of an object).
fn json_members<'s>(pairs: impl Iterator<Item = (&'s str, &'s str)>, out: &mut String) {
    for (i, (name, value)) in pairs.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_str(name, out);
        out.push(':');
        write_json_str(value, out);
    }
}

fn stream_json(stream: &[u8], out: &mut String) -> Result<(), Error> {
    let mut labels: &[u8] = b"{}";
    for field in Fields::new(stream) {
        if let (1, Value::Bytes(l)) = field? {
            labels = l;
        }
    }
    out.push_str("{\"stream\":{");
    let labels = std::str::from_utf8(labels).map_err(|e| Error {
        at: e.valid_up_to(),
        what: "labels are not UTF-8",
    })?;
    let labels = parse_labels(labels)?;
    json_members(labels.iter().map(|(n, v)| (*n, v.as_str())), out);
    out.push_str("},\"values\":[");
    json_list(stream, 2, out, entry_json)?;
    out.push_str("]}");
    Ok(())
}

fn entry_json(entry: &[u8], out: &mut String) -> Result<(), Error> {
    let mut nanos: i64 = 0;
    let mut line = "";
    let mut meta: Vec<(&str, &str)> = Vec::new();
    for field in Fields::new(entry) {
        match field? {
            (1, Value::Bytes(ts)) => {
                let (mut secs, mut sub) = (0i64, 0i64);
                for f in Fields::new(ts) {
                    match f? {
                        (1, Value::Varint(v)) => secs = v as i64,
                        (2, Value::Varint(v)) => sub = i64::from(v as i32),
                        _ => {}
                    }
                }
                nanos = secs.saturating_mul(1_000_000_000).saturating_add(sub);
            }
            (2, Value::Bytes(l)) => line = utf8(l)?,
            (3, Value::Bytes(pair)) => {
                let (mut name, mut value) = ("", "");
                for f in Fields::new(pair) {
                    match f? {
                        (1, Value::Bytes(n)) => name = utf8(n)?,
                        (2, Value::Bytes(v)) => value = utf8(v)?,
                        _ => {}
                    }
                }
                meta.push((name, value));
            }
            _ => {}
        }
    }
    out.push_str("[\"");
    push_decimal(out, nanos);
    out.push_str("\",");
    write_json_str(line, out);
    if !meta.is_empty() {
        out.push_str(",{");
        json_members(meta.into_iter(), out);
        out.push('}');
    }
    out.push(']');
    Ok(())
}

fn utf8(b: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(b).map_err(|e| Error {
        at: e.valid_up_to(),
        what: "a string is not UTF-8",
    })
}

/// A label set as Prometheus prints it, `{name="value", …}`, as pairs. Values are Go string
/// literals (double-quoted) with the escapes `strconv.Unquote` knows.
pub fn parse_labels(text: &str) -> Result<Vec<(&str, String)>, Error> {
    let b = text.as_bytes();
    let bad = |at: usize, what: &'static str| Error { at, what };
    let mut i = 0;
    let ws = |i: &mut usize| {
        while b.get(*i).is_some_and(|c| c.is_ascii_whitespace()) {
            *i += 1;
        }
    };
    let mut pairs = Vec::new();
    ws(&mut i);
    if b.get(i) != Some(&b'{') {
        return Err(bad(i, "expected `{` to open the labels"));
    }
    i += 1;
    loop {
        ws(&mut i);
        if b.get(i) == Some(&b'}') && pairs.is_empty() {
            i += 1;
            break;
        }
        let start = i;
        while b
            .get(i)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            i += 1;
        }
        if i == start {
            return Err(bad(i, "expected a label name"));
        }
        let name = &text[start..i];
        ws(&mut i);
        if b.get(i) != Some(&b'=') {
            return Err(bad(i, "expected `=` after a label name"));
        }
        i += 1;
        ws(&mut i);
        let value;
        (value, i) = go_unquote(text, i)?;
        pairs.push((name, value));
        ws(&mut i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => {
                i += 1;
                break;
            }
            _ => return Err(bad(i, "expected `,` or `}` in the labels")),
        }
    }
    ws(&mut i);
    if i != b.len() {
        return Err(bad(i, "trailing characters after the labels"));
    }
    Ok(pairs)
}

/// The Go string literal at `text[i..]` (opening `"` included): its value and the index after it.
fn go_unquote(text: &str, mut i: usize) -> Result<(String, usize), Error> {
    let b = text.as_bytes();
    let bad = |at: usize, what: &'static str| Error { at, what };
    if b.get(i) != Some(&b'"') {
        return Err(bad(i, "expected a quoted label value"));
    }
    i += 1;
    let mut out = String::new();
    loop {
        let start = i;
        while b
            .get(i)
            .is_some_and(|&c| c != b'"' && c != b'\\' && c != b'\n')
        {
            i += 1;
        }
        out.push_str(&text[start..i]);
        match b.get(i) {
            Some(b'"') => return Ok((out, i + 1)),
            Some(b'\\') => {}
            _ => return Err(bad(i, "unterminated label value")),
        }
        let hex = |from: usize, n: usize| -> Result<u32, Error> {
            text.get(from..from + n)
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .ok_or(bad(from, "invalid escape in a label value"))
        };
        let (c, next) = match b.get(i + 1) {
            Some(b'a') => ('\x07', i + 2),
            Some(b'b') => ('\x08', i + 2),
            Some(b'f') => ('\x0c', i + 2),
            Some(b'n') => ('\n', i + 2),
            Some(b'r') => ('\r', i + 2),
            Some(b't') => ('\t', i + 2),
            Some(b'v') => ('\x0b', i + 2),
            Some(b'\\') => ('\\', i + 2),
            Some(b'"') => ('"', i + 2),
            Some(b'\'') => ('\'', i + 2),
            Some(b'x') => (char::from(hex(i + 2, 2)? as u8), i + 4),
            Some(b'u') => (
                char::from_u32(hex(i + 2, 4)?).ok_or(bad(i, "invalid \\u escape"))?,
                i + 6,
            ),
            Some(b'U') => (
                char::from_u32(hex(i + 2, 8)?).ok_or(bad(i, "invalid \\U escape"))?,
                i + 10,
            ),
            Some(b'0'..=b'7') => {
                let v = text
                    .get(i + 1..i + 4)
                    .and_then(|o| u32::from_str_radix(o, 8).ok())
                    .filter(|&v| v < 256)
                    .ok_or(bad(i, "invalid octal escape in a label value"))?;
                (char::from(v as u8), i + 4)
            }
            _ => return Err(bad(i, "invalid escape in a label value")),
        };
        out.push(c);
        i = next;
    }
}

/// A field's value, by wire type.
#[derive(Debug, PartialEq, Eq)]
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of one message, in order: `(field number, value)`.
struct Fields<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Fields<'a> {
    fn new(b: &'a [u8]) -> Fields<'a> {
        Fields { b, i: 0 }
    }

    fn varint(&mut self) -> Result<u64, Error> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&c) = self.b.get(self.i) else {
                return Err(Error {
                    at: self.i,
                    what: "message ends inside a varint",
                });
            };
            self.i += 1;
            v |= u64::from(c & 0x7f) << shift;
            if c < 0x80 {
                return Ok(v);
            }
        }
        Err(Error {
            at: self.i,
            what: "varint longer than 10 bytes",
        })
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], Error> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.i.checked_add(n))
            .filter(|&e| e <= self.b.len())
            .ok_or(Error {
                at: self.i,
                what: "field runs past the end of its message",
            })?;
        let v = &self.b[self.i..end];
        self.i = end;
        Ok(v)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.i >= self.b.len() {
            return None;
        }
        let field = (|| {
            let k = self.varint()?;
            let value = match k & 7 {
                0 => Value::Varint(self.varint()?),
                1 => {
                    self.take(8)?;
                    Value::Fixed
                }
                2 => {
                    let n = self.varint()?;
                    Value::Bytes(self.take(n)?)
                }
                5 => {
                    self.take(4)?;
                    Value::Fixed
                }
                _ => {
                    return Err(Error {
                        at: self.i,
                        what: "unknown wire type",
                    })
                }
            };
            Ok((k >> 3, value))
        })();
        if field.is_err() {
            // One error ends the iteration.
            self.i = self.b.len();
        }
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Batch, Format, Line, Schema};
    use crate::event::Labels;
    use serde_json::Value;

    /// A body with escapes, non-ASCII text, a control character, structured metadata, lines
    /// on both sides of a 1-byte length, and timestamps around a second and below zero.
    const GOLDEN_JSON: &str = r#"{"streams":[{"stream":{"job":"kube-event","namespace":"de\"mo\\x\nq é","cluster":"c1"},"values":[["1764129600123456789","{\"time\": \"2026-11-26T04:00:00Z\", \"message\": \"a \\\"q\\\" \\\\ é 日本 😀 \\u0001 tab\\t nl\\n\", \"count\": 3}"],["1764129600000000000","xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",{"reason":"BackOff","uid":"u-1"}]]},{"stream":{"job":"kube-event","namespace":"kube-system"},"values":[["0",""],["5",""],["999999999","a"],["1000000000","b"],["-1","neg"],["-1000000001","neg2"]]}]}"#;

    /// `GOLDEN_JSON` as protobuf: checked against Google's protobuf runtime (Python
    /// `protobuf` 7.36.2, with the messages of Loki's `pkg/push/push.proto` compiled by
    /// `grpcio-tools`), which decodes it to the expected message and encodes that message to
    /// these same bytes; its snappy form decoded by `python-snappy` to them too.
    const GOLDEN_PROTO: &str = concat!(
        "0ae5020a3d7b636c75737465723d226331222c206a6f623d226b7562652d6576656e74222c206e61",
        "6d6573706163653d2264655c226d6f5c5c785c6e7120c3a9227d12750a0b08c0f699c90610959aef",
        "3a12667b2274696d65223a2022323032362d31312d32365430343a30303a30305a222c20226d6573",
        "73616765223a202261205c22715c22205c5c20c3a920e697a5e69cac20f09f9880205c7530303031",
        "207461625c74206e6c5c6e222c2022636f756e74223a20337d12ac010a0608c0f699c90612820178",
        "78787878787878787878787878787878787878787878787878787878787878787878787878787878",
        "78787878787878787878787878787878787878787878787878787878787878787878787878787878",
        "78787878787878787878787878787878787878787878787878787878787878787878787878787878",
        "7878787878787878781a110a06726561736f6e12074261636b4f66661a0a0a037569641203752d31",
        "0a82010a2b7b6a6f623d226b7562652d6576656e74222c206e616d6573706163653d226b7562652d",
        "73797374656d227d12020a0012040a021005120b0a0610ff93ebdc0312016112070a020801120162",
        "12180a1108ffffffffffffffffff0110ff93ebdc0312036e656712190a1108feffffffffffffffff",
        "0110ff93ebdc0312046e656732",
    );

    fn unhex(h: &str) -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    }

    fn json(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
    }

    /// snappy writes into a buffer kept at the largest size so far: a smaller body after a
    /// larger one gets its own bytes only, and every body reads back.
    #[test]
    fn bodies_of_any_size_in_any_order_compress_to_what_decompresses_back() {
        let mut e = Encoder::default();
        let mut wire = vec![9; 7];
        for n in [1 << 20, 0, 3, 100_000, 17, 1 << 20, 64 << 10] {
            let body: Vec<u8> = (0..n)
                .map(|i| (i * 7 % 251) as u8 ^ (i / 999) as u8)
                .collect();
            e.compress_into(&body, &mut wire).unwrap();
            assert_eq!(
                snap::raw::Decoder::new().decompress_vec(&wire).unwrap(),
                body,
                "{n} bytes"
            );
        }
    }

    #[test]
    fn a_body_is_the_protobuf_that_protobufs_own_encoder_writes() {
        let mut e = Encoder::default();
        let mut out = vec![1, 2, 3];
        e.transcode(GOLDEN_JSON.as_bytes(), &mut out).unwrap();
        assert_eq!(out, unhex(GOLDEN_PROTO));
        let mut wire = Vec::new();
        e.encode_into(GOLDEN_JSON.as_bytes(), &mut wire).unwrap();
        assert_eq!(
            snap::raw::Decoder::new().decompress_vec(&wire).unwrap(),
            out
        );
        // And back: the same streams, labels (in name order), entries and metadata.
        assert_eq!(
            json(&json_text(&wire).unwrap()),
            json(GOLDEN_JSON.as_bytes())
        );
    }

    /// Strings with every kind of byte a line or a label value can hold.
    fn text(rng: &mut u64, max: usize) -> String {
        const PIECES: [&str; 14] = [
            "a",
            "Pod",
            " ",
            "\"",
            "\\",
            "\\\"",
            "\n",
            "\t",
            "\u{1}",
            "\u{1f}",
            "é",
            "日本",
            "\u{1F600}",
            "{\"k\":\"v\\n\"}",
        ];
        let mut next = || {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng
        };
        let n = next() as usize % (max + 1);
        let mut s = String::new();
        while s.len() < n {
            s.push_str(PIECES[next() as usize % PIECES.len()]);
        }
        s
    }

    /// Bodies as `Batch::seal` writes them (the pusher's input), with lines of lengths around
    /// every varint size, go through protobuf and come back as the same JSON.
    #[test]
    fn sealed_bodies_go_to_protobuf_and_back_unchanged() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let schema = Schema {
            job: "kube-event".into(),
            static_labels: vec![("cluster".into(), "c\"1\\".into())],
            keys: vec!["namespace".into(), "kind".into()],
            format: Format::Json,
        };
        let mut e = Encoder::default();
        let (mut proto, mut wire) = (Vec::new(), Vec::new());
        for round in 0..300 {
            // The same occurrences, sealed as JSON and as protobuf.
            let mut batch = Batch::new(Format::Json);
            let mut direct = Batch::new(Format::Protobuf);
            let streams: Vec<(String, String)> = (0..1 + round % 4)
                .map(|_| (text(&mut rng, 12), text(&mut rng, 6)))
                .collect();
            for i in 0..1 + round % 7 {
                let (ns, kind) = &streams[i % streams.len()];
                let line = match (round + i) % 5 {
                    0 => "x".repeat([0, 1, 127, 128, 16_383, 16_384, 20_000][round % 7]),
                    _ => text(&mut rng, 300),
                };
                let meta = (i % 3 == 0).then(|| {
                    let mut m = String::from("{\"reason\":");
                    crate::event::write_json_str(&text(&mut rng, 10), &mut m);
                    m.push('}');
                    m
                });
                let nanos = match i % 4 {
                    0 => 1_764_129_600_123_456_789,
                    1 => 0,
                    2 => -1_000_000_001,
                    _ => (rng % 2_000_000_000_000_000_000) as i64,
                };
                let labels = Labels {
                    values: [ns, kind, "", "", "", ""],
                    len: 2,
                };
                batch.push(labels, nanos, Line::Plain(&line), meta.as_deref());
                if i % 2 == 0 {
                    direct.push(labels, nanos, Line::Plain(&line), meta.as_deref());
                } else {
                    // What the Shipper gives a JSON batch: the line escaped once more.
                    let mut nested = String::new();
                    crate::event::write_json_chars(&line, &mut nested);
                    direct.push(labels, nanos, Line::Nested(&nested), meta.as_deref());
                }
            }
            let body = batch.seal(&schema, Vec::new()).body;
            e.transcode(&body, &mut proto).unwrap();
            // Sealing protobuf directly writes the same bytes as transcoding the JSON body.
            let sealed = direct.seal(&schema, Vec::new());
            assert_eq!(sealed.format, Format::Protobuf);
            assert!(sealed.body == proto, "{}", String::from_utf8_lossy(&body));
            e.encode_into(&body, &mut wire).unwrap();
            assert_eq!(
                snap::raw::Decoder::new().decompress_vec(&wire).unwrap(),
                proto
            );
            let back = to_json(&proto).unwrap();
            assert_eq!(
                json(&back),
                json(&body),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn the_empty_request_and_whitespace() {
        let mut e = Encoder::default();
        let mut out = Vec::new();
        e.transcode(br#"{"streams":[]}"#, &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(to_json(&out).unwrap(), br#"{"streams":[]}"#);
        let spaced = " { \"streams\" : [ { \"values\" : [ [ \"7\" , \"l\" , { } ] ] , \"stream\" : { \"job\" : \"j\" } } ] } ";
        e.transcode(spaced.as_bytes(), &mut out).unwrap();
        assert_eq!(
            json(&to_json(&out).unwrap()),
            json(br#"{"streams":[{"stream":{"job":"j"},"values":[["7","l"]]}]}"#)
        );
    }

    /// A body that is not a push body, or is cut anywhere, is an error, never a panic or a
    /// short body; so is a damaged snappy body.
    #[test]
    fn damaged_input_is_an_error_not_a_panic() {
        let mut e = Encoder::default();
        let mut out = Vec::new();
        let body = GOLDEN_JSON.as_bytes();
        for cut in 0..body.len() {
            assert!(e.transcode(&body[..cut], &mut out).is_err(), "{cut}");
        }
        for bad in [
            &br#"{"streams":{}}"#[..],
            br#"{"other":[]}"#,
            br#"{"streams":[{"values":[[1,"l"]]}]}"#,
            br#"{"streams":[{"values":[["1","l\q"]]}]}"#,
            br#"{"streams":[{"values":[["1","\ud800"]]}]}"#,
            br#"{"streams":[{"values":[["99999999999999999999","l"]]}]}"#,
            br#"{"streams":[]} x"#,
        ] {
            assert!(
                e.transcode(bad, &mut out).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut wire = Vec::new();
        e.encode_into(body, &mut wire).unwrap();
        for cut in 0..wire.len() {
            let _ = json_text(&wire[..cut]);
        }
        let mut flipped = wire.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0x55;
            let _ = json_text(&flipped);
            flipped[i] ^= 0x55;
        }
        // A length that asks for gigabytes.
        assert!(json_text(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        let proto = unhex(GOLDEN_PROTO);
        for cut in 0..proto.len() {
            let _ = to_json(&proto[..cut]);
        }
    }

    /// A stream's length is right whatever room its size hint gave it: streams around each
    /// varint size, with hints too small, right and too large.
    #[test]
    fn streams_of_every_size_whatever_the_hint() {
        for n in [0usize, 1, 30, 31, 32, 33, 250, 251, 252, 253, 4000, 70_000] {
            let line = vec![b'x'; 60];
            let (mut one, mut other) = (Vec::new(), Vec::new());
            for (hint, out) in [(0, &mut one), (1 << 22, &mut other)] {
                let mut s = Sealer::new();
                s.stream(out, [("job", "j")].into_iter(), hint);
                for i in 0..n {
                    s.entry(out, i as i64, &line, None).unwrap();
                }
                // A one-entry stream after it, with a hint of about its size.
                s.stream(out, [("job", "k")].into_iter(), 32);
                s.entry(out, 7, b"last", None).unwrap();
                s.finish(out);
            }
            assert_eq!(one, other, "{n} entries");
            let text = to_json(&one).unwrap();
            let v = json(&text);
            assert_eq!(v["streams"][0]["values"].as_array().unwrap().len(), n);
            assert_eq!(v["streams"][1]["values"][0][1], "last");
        }
        assert_eq!(stream_room(100), 2);
        assert_eq!(stream_room(20_000), 3);
        assert_eq!(stream_room(3_000_000), 4);
    }

    /// Metadata that is not an object of strings (which `Event::write_metadata` never
    /// writes) leaves the body as it was: the batch then adds the entry without it.
    #[test]
    fn an_entry_that_fails_leaves_nothing_behind() {
        let mut s = Sealer::new();
        let mut out = Vec::new();
        s.stream(&mut out, [("job", "j")].into_iter(), 0);
        s.entry(&mut out, 1, b"a", Some(br#"{"k":"v"}"#)).unwrap();
        let before = out.clone();
        for bad in [&b"[1]"[..], b"{\"k\":1}", b"{\"k\":\"v", b""] {
            assert!(s.entry(&mut out, 2, b"b", Some(bad)).is_err());
            assert_eq!(out, before);
        }
        s.entry(&mut out, 2, b"b", None).unwrap();
        s.finish(&mut out);
        assert_eq!(
            json(&to_json(&out).unwrap()),
            json(
                br#"{"streams":[{"stream":{"job":"j"},"values":[["1","a",{"k":"v"}],["2","b"]]}]}"#
            )
        );
    }

    #[test]
    fn labels_read_back_with_go_escapes() {
        let pairs =
            parse_labels(r#"{a="x\"y\\z\n\t\r", b="\x41\u00e9\U0001F600\101\a\b\f\v\'", c=""}"#)
                .unwrap();
        assert_eq!(
            pairs,
            vec![
                ("a", "x\"y\\z\n\t\r".to_string()),
                ("b", "Aé\u{1F600}A\u{7}\u{8}\u{c}\u{b}'".to_string()),
                ("c", String::new()),
            ]
        );
        assert_eq!(parse_labels("{}").unwrap(), vec![]);
        for bad in [
            "",
            "{",
            "{a}",
            "{a=x}",
            "{a=\"x}",
            "{a=\"x\" b=\"y\"}",
            "{a=\"\\q\"}",
        ] {
            assert!(parse_labels(bad).is_err(), "{bad}");
        }
        // What `go_quote_into` writes, `parse_labels` reads.
        let value = "q\"b\\n\nt\tr\rc\u{1}\u{7f}é";
        let mut quoted = b"{v=\"".to_vec();
        go_quote_into(value.as_bytes(), &mut quoted);
        quoted.extend_from_slice(b"\"}");
        let quoted = String::from_utf8(quoted).unwrap();
        assert_eq!(
            parse_labels(&quoted).unwrap(),
            vec![("v", value.to_string())]
        );
    }

    #[test]
    fn varint_lengths_at_every_size_boundary() {
        for len in [
            0usize, 1, 127, 128, 129, 16_383, 16_384, 2_097_151, 2_097_152,
        ] {
            for room in 1..=3 {
                let mut out = vec![7u8];
                let at = begin(&mut out, 2, room);
                out.extend(std::iter::repeat_n(b'z', len));
                end(&mut out, at, room);
                let mut f = Fields::new(&out[1..]);
                match f.next() {
                    Some(Ok((2, super::Value::Bytes(b)))) => assert_eq!(b.len(), len),
                    other => panic!("{len} {room}: {other:?}"),
                }
                assert!(f.next().is_none());
                assert_eq!(out.len(), 1 + 1 + varint_len(len as u64) + len);
            }
        }
    }
}
