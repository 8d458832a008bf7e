//! Reads a watch frame (or a list item) into an [`Event`] in one pass over its bytes: the
//! fields kube-event uses are borrowed from the frame, everything else (`managedFields`,
//! annotations, labels, fields that later Kubernetes versions add) is stepped over without
//! building anything or checking more than its nesting.
//!
//! Why not serde_json, which the rest of the program uses: on the benchmark's frames
//! (`bench hotpath`, ~1.2 KB each with `managedFields`) the derived deserializer spent
//! ~23,000 instructions per frame, most of it validating UTF-8 in every key and string it
//! then threw away, and comparing field names through generic visitors; that alone was most
//! of the CPU budget of an event (issue 6: 5 µs). This reader compares each key with the one
//! the API server writes next, 32 bytes at once (and matches other keys as bytes), finds
//! the end of a string 16 bytes at a time, steps over a skipped object or array 64 bytes at a
//! time (SSE2 on x86_64, a `u64` elsewhere: `simd.rs`), and validates UTF-8 only in the
//! strings it keeps: ~5,500 instructions per frame (callgrind, `stage_parse`), down from
//! ~12,300 when it went 8 bytes at a time, stepped over nested values byte by byte and
//! looked for the end of every key.
//!
//! What it accepts is what serde_json accepts for these types, with two liberties that
//! cannot lose or invent an occurrence: a value kube-event skips is only checked for its
//! nesting (brackets matched, strings closed), and `null` stands for an absent object as it
//! does for an absent string or number. A frame it refuses is logged and skipped by the
//! watcher like any malformed frame; the tests compare it with serde_json on the fixtures and
//! on generated frames.

use std::borrow::Cow;
use std::fmt;

use crate::event::{Event, Series, Text};

mod simd;

/// For `event::find_escape`: the bytes that JSON escapes are those that end a plain run in a
/// string.
pub(crate) use simd::string_stops;

/// Why a frame or object could not be read, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Byte offset in the input.
    pub at: usize,
    pub what: &'static str,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

impl std::error::Error for Error {}

type Result<T> = std::result::Result<T, Error>;

/// A key of an object kube-event reads, as the API server writes it: `"name":`, zero-padded
/// to 32 bytes to be compared 16 at a time.
struct Key {
    text: [u8; 32],
    len: usize,
    /// The bits of the 32 that are not part of the key.
    ignored: u32,
}

impl Key {
    const fn new(name: &str) -> Key {
        let name = name.as_bytes();
        let len = name.len() + 3;
        assert!(len <= 32, "a key of at most 29 bytes");
        let mut text = [0u8; 32];
        text[0] = b'"';
        let mut k = 0;
        while k < name.len() {
            text[1 + k] = name[k];
            k += 1;
        }
        text[len - 2] = b'"';
        text[len - 1] = b':';
        Key {
            text,
            len,
            // `len` is at most 32: the bits of 32 after the first `len`.
            ignored: ((u32::MAX as u64) << len) as u32,
        }
    }

    fn name(&self) -> &[u8] {
        &self.text[1..self.len - 2]
    }

    fn head(&self) -> [u8; 16] {
        self.text[..16].try_into().expect("16 bytes")
    }

    fn tail(&self) -> [u8; 16] {
        self.text[16..].try_into().expect("16 bytes")
    }
}

/// Reads an object with the reader `$r`: for each `"key" => action`, the action with `$r` at
/// the key's value (the keys listed in the order the API server writes them, see
/// `Reader::object`); any other key's value is skipped.
///
/// The closure is inlined into `object`'s loop: called out of line, as the compiler chose for
/// an Event's, it saved and restored six registers and reloaded the reader for every member
/// (~500 instructions per frame).
macro_rules! members {
    ($r:ident, { $($key:literal => $read:expr),* $(,)? }) => {{
        const KEYS: &[Key] = &[$(Key::new($key)),*];
        $r.object(KEYS, #[inline(always)] |$r, k| {
            let mut n = 0;
            $(
                if k == n {
                    $read;
                    return Ok(());
                }
                n += 1;
            )*
            let _ = n;
            $r.skip()
        })
    }};
}

/// A watch frame: `{"type":"ADDED","object":{…}}`.
#[derive(Default)]
pub struct Frame<'a> {
    pub kind: Text<'a>,
    /// The object as an Event (a BOOKMARK's object fills only the metadata; an ERROR's
    /// Status fills `code`, `reason` and `message`).
    pub object: Event<'a>,
    /// The object's text exactly as sent (for `LINE_FORMAT=raw`); empty without an object.
    pub raw: &'a [u8],
}

/// Reads one watch frame (without its newline).
pub fn frame(input: &[u8]) -> Result<Frame<'_>> {
    let mut frame = Frame::default();
    frame_into(input, &mut frame)?;
    Ok(frame)
}

/// `frame` into `out`, a `Frame::default()` where the caller keeps it: an `Event` is ~1 KB,
/// and returning the frame moved it twice on the way to the watcher (~245 instructions per
/// event in the storm, callgrind).
pub fn frame_into<'a>(input: &'a [u8], out: &mut Frame<'a>) -> Result<()> {
    let mut r = Reader { b: input, i: 0 };
    let mut kind = None;
    r.ws();
    members!(r, {
        "type" => kind = Some(r.string()?),
        "object" => {
            let start = r.i;
            r.event(&mut out.object)?;
            out.raw = &input[start..r.i];
        }
    })?;
    r.end()?;
    out.kind = kind.ok_or(Error {
        at: 0,
        what: "missing field `type`",
    })?;
    Ok(())
}

/// A page of `GET /api/v1/events`: the items' texts, to be read one by one with [`event`].
pub struct ListPage<'a> {
    pub resource_version: Option<Text<'a>>,
    pub continue_: Option<Text<'a>>,
    pub items: Vec<&'a [u8]>,
}

/// Reads a list page, finding where each item starts and ends (an item is only checked for
/// its nesting here; `event` reads it). For `--check`; the watcher reads its pages in one
/// pass with [`list_each`].
pub fn list(input: &[u8]) -> Result<ListPage<'_>> {
    let mut r = Reader { b: input, i: 0 };
    let mut page = ListPage {
        resource_version: None,
        continue_: None,
        items: Vec::new(),
    };
    r.ws();
    members!(r, {
        "metadata" => members!(r, {
            "resourceVersion" => r.opt_string_into(&mut page.resource_version)?,
            "continue" => r.opt_string_into(&mut page.continue_)?,
        })?,
        "items" => r.items(&mut page.items)?,
    })?;
    r.end()?;
    Ok(page)
}

/// A list page's own fields, and how many items [`list_each`] handed out.
#[derive(Default)]
pub struct ListHead<'a> {
    pub resource_version: Option<Text<'a>>,
    pub continue_: Option<Text<'a>>,
    pub items: usize,
    /// `each` asked to stop: the rest of the page was not read.
    pub stopped: bool,
}

/// Reads a list page in one pass, handing each item to `each` as it is reached: its text and
/// the Event read from it where it stands, or why it is not one (an item that is valid JSON
/// but not an Event as kube-event reads one; the position is within the item). `each` returns
/// `false` to stop. Finding each item's end first and reading it afterwards ([`list`] and
/// [`event`]) read every item twice, and the first pass cost more than the second: ~6,100
/// instructions per item against ~4,700 (callgrind, the benchmark's cold start).
///
/// A page that is not valid JSON is an `Err`, possibly after some of its items were handed
/// out.
pub fn list_each<'a>(
    input: &'a [u8],
    each: &mut dyn FnMut(&'a [u8], Result<&Event<'a>>) -> bool,
) -> Result<ListHead<'a>> {
    let mut r = Reader { b: input, i: 0 };
    let mut head = ListHead::default();
    r.ws();
    let read = members!(r, {
        "metadata" => members!(r, {
            "resourceVersion" => r.opt_string_into(&mut head.resource_version)?,
            "continue" => r.opt_string_into(&mut head.continue_)?,
        })?,
        "items" => r.items_each(&mut head, each)?,
    });
    if head.stopped {
        return Ok(head);
    }
    read?;
    r.end()?;
    Ok(head)
}

/// Reads one Event object (a list item).
pub fn event(input: &[u8]) -> Result<Event<'_>> {
    let mut r = Reader { b: input, i: 0 };
    let mut ev = Event::default();
    r.ws();
    r.event(&mut ev)?;
    r.end()?;
    Ok(ev)
}

/// A cursor over JSON text; `proto.rs` reads push bodies with it too.
pub(crate) struct Reader<'a> {
    pub(crate) b: &'a [u8],
    pub(crate) i: usize,
}

/// The deepest nesting accepted in a skipped value (serde_json's recursion limit).
const MAX_DEPTH: u32 = 128;

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b, i: 0 }
    }

    pub(crate) fn err<T>(&self, what: &'static str) -> Result<T> {
        Err(Error { at: self.i, what })
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    pub(crate) fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    pub(crate) fn eat(&mut self, c: u8, what: &'static str) -> Result<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else if self.i >= self.b.len() {
            self.err("EOF while parsing")
        } else {
            self.err(what)
        }
    }

    /// `open` (else `what`), whitespace, and `false`, the reader after it, when `close`
    /// follows at once: an empty object or array.
    pub(crate) fn open(&mut self, open: u8, close: u8, what: &'static str) -> Result<bool> {
        self.eat(open, what)?;
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
            return Ok(false);
        }
        Ok(true)
    }

    /// After a member or an element, past whitespace: `true` at a `,` (another follows),
    /// `false` at `close`, the reader after either; else the error `eof` at the end of the
    /// input and `what` elsewhere.
    pub(crate) fn comma_or(
        &mut self,
        close: u8,
        eof: &'static str,
        what: &'static str,
    ) -> Result<bool> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                Ok(true)
            }
            Some(c) if c == close => {
                self.i += 1;
                Ok(false)
            }
            None => self.err(eof),
            Some(_) => self.err(what),
        }
    }

    fn end(&mut self) -> Result<()> {
        self.ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            self.err("trailing characters")
        }
    }

    /// An object, calling `member` with the reader at each value and the index of its key in
    /// `keys` (`keys.len()` for a key not there). `null` is an empty object.
    ///
    /// Each key is first compared, 32 bytes at once, with the three of `keys` that come after
    /// the key before it, as the API server writes it (`"name":`, no escapes, no whitespace):
    /// three, so that the fields it leaves out when empty, and `kind` and `apiVersion`
    /// (absent in the benchmark's frames), cost a compare, not a lookup. Only if none is
    /// there is the key's end looked for and its bytes looked up in `keys`. That was ~60
    /// instructions per key: finding its end, the `:`, and a `match` that compared it a byte
    /// at a time.
    #[inline(always)]
    fn object(
        &mut self,
        keys: &[Key],
        mut member: impl FnMut(&mut Self, usize) -> Result<()>,
    ) -> Result<()> {
        match self.peek() {
            Some(b'{') => self.i += 1,
            _ if self.literal(b"null") => return Ok(()),
            None => return self.err("EOF while parsing"),
            Some(_) => return self.err("expected an object"),
        }
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        let mut next = 0;
        loop {
            let k = match self.expected_key(keys, next) {
                Some(k) => k,
                None => self.any_key(keys)?,
            };
            next = k + 1;
            self.ws();
            member(self, k)?;
            // No whitespace before the `,` in frames from the API server either.
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    continue;
                }
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => {}
            }
            if !self.comma_or(b'}', "EOF while parsing an object", "expected `,` or `}`")? {
                return Ok(());
            }
        }
    }

    /// The index of `keys[next]`, `keys[next + 1]` or `keys[next + 2]` if the reader is at
    /// it, as `"name":`; the reader then after it.
    #[inline(always)]
    fn expected_key(&mut self, keys: &[Key], next: usize) -> Option<usize> {
        for k in next..next + 3 {
            let key = keys.get(k)?;
            if self.at_key(key) {
                self.i += key.len;
                return Some(k);
            }
        }
        None
    }

    /// Whether the input at the reader starts with `key.text[..key.len]`: the 32 bytes there
    /// compared at once, when there are 32. (The first sixteen first, then the rest when the
    /// key is longer, cost ~10 instructions more per key in bounds checks and branches.)
    #[inline(always)]
    fn at_key(&self, key: &Key) -> bool {
        let rest = &self.b[self.i..];
        match rest.get(..32) {
            Some(c) => {
                let head = simd::equal(c[..16].try_into().expect("16 bytes"), &key.head());
                let tail = simd::equal(c[16..].try_into().expect("16 bytes"), &key.tail());
                head | tail << 16 | key.ignored == u32::MAX
            }
            None => rest.starts_with(&key.text[..key.len]),
        }
    }

    /// Any key, from the whitespace before it to the `:` after it: its index in `keys`, or
    /// `keys.len()`.
    fn any_key(&mut self, keys: &[Key]) -> Result<usize> {
        self.ws();
        let unescaped: Vec<u8>;
        let key = match self.key()? {
            Some(key) => key,
            None => {
                unescaped = self.escaped_key()?;
                &unescaped
            }
        };
        // Frames from the API server have no whitespace: `:` right after the key.
        if self.peek() == Some(b':') {
            self.i += 1;
        } else {
            self.ws();
            self.eat(b':', "expected `:`")?;
        }
        Ok(keys
            .iter()
            .position(|k| k.name() == key)
            .unwrap_or(keys.len()))
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            true
        } else {
            false
        }
    }

    /// An array of objects (or `null`): `item` is called with the reader at each object's
    /// `{` and its position, leaves the reader past the object, and returns `false` to stop.
    #[inline(always)]
    fn objects(&mut self, mut item: impl FnMut(&mut Self, usize) -> Result<bool>) -> Result<()> {
        let r = self;
        if r.literal(b"null") || !r.open(b'[', b']', "expected an array")? {
            return Ok(());
        }
        loop {
            r.ws();
            let start = r.i;
            if r.peek() != Some(b'{') {
                return r.err("expected an object");
            }
            if !item(r, start)? {
                return Ok(());
            }
            if !r.comma_or(b']', "EOF while parsing a list", "expected `,` or `]`")? {
                return Ok(());
            }
        }
    }

    /// A list page's `items`: where each starts and ends.
    fn items(&mut self, items: &mut Vec<&'a [u8]>) -> Result<()> {
        let b = self.b;
        self.objects(|r, start| {
            r.skip()?;
            items.push(&b[start..r.i]);
            Ok(true)
        })
    }

    /// `items`, each item read as an Event where it stands and handed to `each` (see
    /// [`list_each`]). When `each` asks to stop, the reader is left at the end of the input,
    /// `head.stopped` set.
    fn items_each(
        &mut self,
        head: &mut ListHead<'a>,
        each: &mut dyn FnMut(&'a [u8], Result<&Event<'a>>) -> bool,
    ) -> Result<()> {
        let b = self.b;
        self.objects(|r, start| {
            let mut ev = Event::default();
            let go_on = match r.event(&mut ev) {
                Ok(()) => each(&b[start..r.i], Ok(&ev)),
                Err(e) => {
                    // Not an Event as kube-event reads one: past it as any value (an error
                    // here is the page's), and the item's own error, from its start.
                    r.i = start;
                    r.skip()?;
                    let at = e.at.saturating_sub(start);
                    each(&b[start..r.i], Err(Error { at, what: e.what }))
                }
            };
            head.items += 1;
            if !go_on {
                head.stopped = true;
                r.i = b.len();
            }
            Ok(go_on)
        })
    }

    fn event(&mut self, ev: &mut Event<'a>) -> Result<()> {
        let r = self;
        // In the order of the Go struct the API server writes (k8s.io/api/core/v1 Event).
        members!(r, {
            "kind" => r.skip()?,
            "apiVersion" => r.skip()?,
            "metadata" => members!(r, {
                "name" => r.opt_string_into(&mut ev.metadata.name)?,
                "namespace" => r.opt_string_into(&mut ev.metadata.namespace)?,
                "uid" => r.opt_string_into(&mut ev.metadata.uid)?,
                "resourceVersion" => r.opt_string_into(&mut ev.metadata.resource_version)?,
                "creationTimestamp" => r.opt_string_into(&mut ev.metadata.creation_timestamp)?,
                "managedFields" => r.skip()?,
            })?,
            "involvedObject" => members!(r, {
                "kind" => r.opt_string_into(&mut ev.involved_object.kind)?,
                "namespace" => r.skip()?,
                "name" => r.opt_string_into(&mut ev.involved_object.name)?,
                "uid" => r.opt_string_into(&mut ev.involved_object.uid)?,
                "apiVersion" => r.skip()?,
                "resourceVersion" => r.skip()?,
                "fieldPath" => r.opt_string_into(&mut ev.involved_object.field_path)?,
            })?,
            "reason" => r.opt_string_into(&mut ev.reason)?,
            "message" => r.opt_string_into(&mut ev.message)?,
            "source" => members!(r, {
                "component" => r.opt_string_into(&mut ev.source.component)?,
                "host" => r.opt_string_into(&mut ev.source.host)?,
            })?,
            "firstTimestamp" => r.opt_string_into(&mut ev.first_timestamp)?,
            "lastTimestamp" => r.opt_string_into(&mut ev.last_timestamp)?,
            "count" => ev.count = r.opt_int()?,
            "type" => r.opt_string_into(&mut ev.type_)?,
            "eventTime" => r.opt_string_into(&mut ev.event_time)?,
            "series" => {
                if r.literal(b"null") {
                    ev.series = None;
                } else {
                    let mut s = Series::default();
                    members!(r, {
                        "count" => s.count = r.opt_int()?,
                        "lastObservedTime" => r.opt_string_into(&mut s.last_observed_time)?,
                    })?;
                    ev.series = Some(s);
                }
            },
            "reportingComponent" => r.opt_string_into(&mut ev.reporting_component)?,
            "reportingInstance" => r.opt_string_into(&mut ev.reporting_instance)?,
            "code" => {
                let at = r.i;
                ev.code = match r.opt_int()? {
                    None => None,
                    Some(c) => Some(u16::try_from(c).map_err(|_| Error {
                        at,
                        what: "code out of range",
                    })?),
                }
            }
        })
    }

    /// A key: its bytes as sent (compared, never shown, so not checked for UTF-8); `None`,
    /// with the reader still at its opening quote, when it has escapes (`escaped_key`). A
    /// `Cow` key cost ~30 instructions more per key than a slice, in moves and matches.
    #[inline(always)]
    fn key(&mut self) -> Result<Option<&'a [u8]>> {
        if self.peek() != Some(b'"') {
            return self.err("expected a key");
        }
        self.i += 1;
        let start = self.i;
        let (end, _) = self.string_end()?;
        if self.b[end] == b'"' {
            self.i = end + 1;
            let b = self.b;
            return Ok(Some(&b[start..end]));
        }
        self.i -= 1;
        Ok(None)
    }

    /// A key with escapes, from its opening quote, unescaped.
    #[cold]
    fn escaped_key(&mut self) -> Result<Vec<u8>> {
        self.i += 1;
        let start = self.i;
        let (end, _) = self.string_end()?;
        self.i = end;
        Ok(self.escaped_string(start)?.into_owned().into_bytes())
    }

    /// A string or `null`, stored in `to` (left as it was if the value is refused). The plain
    /// strings inlined: out of line, the call and its result cost ~15 instructions per
    /// field; and stored in place, not returned: moving the `Result<Option<Text>>` through
    /// the stack to the field cost ~10 more.
    #[inline(always)]
    fn opt_string_into(&mut self, to: &mut Option<Text<'a>>) -> Result<()> {
        match self.plain_str() {
            Some(Ok(s)) => *to = Some(Text(Cow::Borrowed(s))),
            Some(Err(e)) => return Err(e),
            // `null` (an Event's `eventTime`) here too: out of line, ~40 instructions more.
            None if self.literal(b"null") => *to = None,
            None => *to = self.opt_string_rest()?,
        }
        Ok(())
    }

    /// `opt_string` when it is not at a plain string.
    #[inline(never)]
    fn opt_string_rest(&mut self) -> Result<Option<Text<'a>>> {
        match self.peek() {
            Some(b'"') => self.quoted_string().map(Some),
            Some(b'n') if self.literal(b"null") => Ok(None),
            None => self.err("EOF while parsing a value"),
            _ => self.err("expected a string"),
        }
    }

    /// A whole number (`count`, `code`), or `null`.
    fn opt_int(&mut self) -> Result<Option<i64>> {
        if self.literal(b"null") {
            return Ok(None);
        }
        let start = self.i;
        let fail = |what| Err(Error { at: start, what });
        let neg = self.peek() == Some(b'-');
        if neg {
            self.i += 1;
        }
        let digits = self.i;
        let mut v: i64 = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            v = match v
                .checked_mul(10)
                .and_then(|v| v.checked_sub(i64::from(c - b'0')))
            {
                Some(v) => v,
                None => return fail("number out of range"),
            };
            self.i += 1;
        }
        let n = self.i - digits;
        // serde_json reads `-0` as a float, which is not a whole number either.
        if n == 0 || (neg && v == 0) {
            return fail("expected a whole number");
        }
        if n > 1 && self.b[digits] == b'0' {
            return fail("leading zero in a number");
        }
        if let Some(b'.' | b'e' | b'E') = self.peek() {
            return fail("expected a whole number");
        }
        // Accumulated negatively so that i64::MIN fits.
        if neg {
            Ok(Some(v))
        } else {
            v.checked_neg()
                .map(Some)
                .map_or(fail("number out of range"), Ok)
        }
    }

    /// A string without escapes or control characters, read in one loop, if the reader is at
    /// one and the input has sixteen bytes; else `None`, the reader where it
    /// was, for `string` (which looks for the end of the string in `string_end`, calls
    /// `string_end_from` past the first sixteen bytes, and then looks at the byte it stopped
    /// at: ~25 instructions more per string, and a frame keeps about twenty).
    #[inline(always)]
    fn plain_string(&mut self) -> Option<Result<Text<'a>>> {
        self.plain_str().map(|s| s.map(|s| Text(Cow::Borrowed(s))))
    }

    /// `plain_string`'s text.
    #[inline(always)]
    fn plain_str(&mut self) -> Option<Result<&'a str>> {
        let (b, i) = (self.b, self.i);
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let start = i + 1;
        let mut at = start;
        let mut high = 0;
        loop {
            let (stop, hi, quote) = match b.get(at..at + 16) {
                Some(chunk) => simd::string_stops(chunk.try_into().expect("16 bytes")),
                None => {
                    // The last bytes: the input's last sixteen, without those before `at`
                    // (at most 16: `at` is at most the length). The last string of a frame
                    // ends there; without a stop in them, `string` reports the error.
                    let from = b.len().checked_sub(16)?;
                    let last = simd::string_stops(b[from..].try_into().expect("16 bytes"));
                    let skip = at - from;
                    let stop = last.0 >> skip;
                    if stop == 0 {
                        return None;
                    }
                    (stop, last.1 >> skip, last.2 >> skip)
                }
            };
            if stop == 0 {
                high |= hi;
                at += 16;
                continue;
            }
            let first = stop & stop.wrapping_neg();
            if first & quote == 0 {
                return None;
            }
            high |= hi & (first - 1);
            let end = at + first.trailing_zeros() as usize;
            self.i = end + 1;
            let bytes = &b[start..end];
            if high == 0 {
                // SAFETY: every byte is below 0x80 (`high`), and ASCII is UTF-8.
                return Some(Ok(unsafe { std::str::from_utf8_unchecked(bytes) }));
            }
            return Some(match std::str::from_utf8(bytes) {
                Ok(s) => Ok(s),
                Err(e) => Err(Error {
                    at: start + e.valid_up_to(),
                    what: "invalid UTF-8 in a string",
                }),
            });
        }
    }

    /// A string: borrowed when it has no escapes.
    #[inline(always)]
    fn string(&mut self) -> Result<Text<'a>> {
        match self.plain_string() {
            Some(s) => s,
            None => self.quoted_string(),
        }
    }

    /// `string` for any string.
    #[inline(always)]
    fn quoted_string(&mut self) -> Result<Text<'a>> {
        if self.peek() != Some(b'"') {
            return self.err("expected a string");
        }
        self.i += 1;
        let start = self.i;
        let (end, ascii) = self.string_end()?;
        if self.b[end] == b'"' {
            self.i = end + 1;
            let bytes = &self.b[start..end];
            if ascii {
                // SAFETY: every byte is below 0x80 (string_end checked), and ASCII is UTF-8.
                // std's from_utf8 costs ~100 instructions per call even for short ASCII
                // strings, and a frame has ~20 of them.
                return Ok(Text(Cow::Borrowed(unsafe {
                    std::str::from_utf8_unchecked(bytes)
                })));
            }
            return match std::str::from_utf8(bytes) {
                Ok(s) => Ok(Text(Cow::Borrowed(s))),
                Err(e) => Err(Error {
                    at: start + e.valid_up_to(),
                    what: "invalid UTF-8 in a string",
                }),
            };
        }
        self.i = end;
        self.escaped_string(start)
    }

    /// The rest of a string that has escapes, unescaped into an owned copy.
    #[cold]
    fn escaped_string(&mut self, start: usize) -> Result<Text<'a>> {
        // Where the string ends, to allocate once: unescaped, it is never longer.
        let at = self.i;
        self.i = start - 1;
        self.skip_string()?;
        let raw_end = self.i;
        self.i = at;
        let mut out: Vec<u8> = Vec::with_capacity(raw_end - start);
        out.extend_from_slice(&self.b[start..self.i]);
        loop {
            // At a backslash.
            self.i += 1;
            let Some(c) = self.peek() else {
                return self.err("EOF while parsing a string");
            };
            self.i += 1;
            match c {
                b'"' | b'\\' | b'/' => out.push(c),
                b'b' => out.push(0x08),
                b'f' => out.push(0x0c),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'u' => {
                    let ch = self.unicode_escape()?;
                    let mut tmp = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
                }
                _ => {
                    self.i -= 1;
                    return self.err("invalid escape");
                }
            }
            let from = self.i;
            let (end, _) = self.string_end()?;
            out.extend_from_slice(&self.b[from..end]);
            self.i = end;
            if self.b[end] == b'"' {
                self.i = end + 1;
                return match String::from_utf8(out) {
                    Ok(s) => Ok(Text(Cow::Owned(s))),
                    Err(_) => Err(Error {
                        at: start,
                        what: "invalid UTF-8 in a string",
                    }),
                };
            }
        }
    }

    /// After `\u`: the character, joining a surrogate pair. A lone surrogate is an error,
    /// as it is for serde_json.
    pub(crate) fn unicode_escape(&mut self) -> Result<char> {
        let at = self.i;
        let lone = Error {
            at,
            what: "lone surrogate in a \\u escape",
        };
        let hi = self.hex4()?;
        if (0xDC00..0xE000).contains(&hi) {
            return Err(lone);
        }
        if !(0xD800..0xDC00).contains(&hi) {
            // Not a surrogate: always a char.
            return char::from_u32(u32::from(hi)).ok_or(lone);
        }
        if !self.b[self.i..].starts_with(b"\\u") {
            return Err(lone);
        }
        self.i += 2;
        let lo = self.hex4()?;
        if !(0xDC00..0xE000).contains(&lo) {
            return Err(lone);
        }
        let c = 0x10000 + ((u32::from(hi) - 0xD800) << 10) + (u32::from(lo) - 0xDC00);
        char::from_u32(c).ok_or(lone)
    }

    fn hex4(&mut self) -> Result<u16> {
        let Some(h) = self.b.get(self.i..self.i + 4) else {
            return self.err("EOF while parsing a string");
        };
        let mut v = 0u16;
        for &c in h {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return self.err("invalid \\u escape"),
            };
            v = v << 4 | u16::from(d);
        }
        self.i += 4;
        Ok(v)
    }

    /// From `self.i` inside a string: the index of its closing quote or of the next
    /// backslash, and whether every byte before it is ASCII. A control character or the end
    /// of input is an error.
    ///
    /// Inlined for the first sixteen bytes, which hold most keys: called out of line, this
    /// cost ~50 instructions per string when every key and string of a frame came here
    /// (about fifty). Now expected keys (`at_key`) and plain strings (`plain_str`) do not;
    /// keys not expected, strings with escapes, and inputs shorter than sixteen bytes do.
    #[inline(always)]
    fn string_end(&self) -> Result<(usize, bool)> {
        let (b, i) = (self.b, self.i);
        if let Some(chunk) = b.get(i..i + 16) {
            let chunk: &[u8; 16] = chunk.try_into().expect("16 bytes");
            let (stop, high, _) = simd::string_stops(chunk);
            if stop == 0 {
                return self.string_end_from(i + 16, high);
            }
            let n = stop.trailing_zeros();
            if chunk[n as usize & 15] >= 0x20 {
                return Ok((i + n as usize, high & ((1 << n) - 1) == 0));
            }
        }
        self.string_end_from(i, 0)
    }

    /// `string_end` from `i`, with `high` for the bytes before.
    #[inline(never)]
    fn string_end_from(&self, mut i: usize, mut high: u32) -> Result<(usize, bool)> {
        let b = self.b;
        // Sixteen bytes at a time.
        while let Some(chunk) = b.get(i..i + 16) {
            let (stop, hi, _) = simd::string_stops(chunk.try_into().expect("16 bytes"));
            if stop != 0 {
                let n = stop.trailing_zeros();
                return self.string_stop(i + n as usize, high | hi & ((1 << n) - 1));
            }
            high |= hi;
            i += 16;
        }
        // The last bytes: the input's last sixteen, without those before `i`.
        if let Some(from) = b.len().checked_sub(16) {
            let (stop, hi, _) = simd::string_stops(b[from..].try_into().expect("16 bytes"));
            // At most 16 (`i` is at most the length): the bits of a u32 above 15 are clear.
            let skip = i - from;
            let (stop, hi) = (stop >> skip, hi >> skip);
            if stop != 0 {
                let n = stop.trailing_zeros();
                return self.string_stop(i + n as usize, high | hi & ((1 << n) - 1));
            }
            return Err(Error {
                at: b.len(),
                what: "EOF while parsing a string",
            });
        }
        // An input shorter than sixteen bytes.
        while let Some(&c) = b.get(i) {
            if c == b'"' || c == b'\\' || c < 0x20 {
                return self.string_stop(i, high);
            }
            high |= u32::from(c & 0x80);
            i += 1;
        }
        Err(Error {
            at: i,
            what: "EOF while parsing a string",
        })
    }

    /// `string_end`'s answer at `i`, a quote, a backslash or a control character; `high` is
    /// not zero if a byte before it is not ASCII.
    #[inline(always)]
    fn string_stop(&self, i: usize, high: u32) -> Result<(usize, bool)> {
        if self.b[i] < 0x20 {
            return Err(Error {
                at: i,
                what: "control character in a string",
            });
        }
        Ok((i, high == 0))
    }

    /// Steps over any value without keeping it. Inlined (with `skip_nested` out of line):
    /// called, it saved six registers for each value a frame skips (~50 instructions per
    /// frame).
    #[inline(always)]
    fn skip(&mut self) -> Result<()> {
        match self.peek() {
            Some(b'"') => self.skip_quoted()?,
            Some(b'{' | b'[') => self.skip_nested()?,
            Some(b't') if self.literal(b"true") => {}
            Some(b'f') if self.literal(b"false") => {}
            Some(b'n') if self.literal(b"null") => {}
            Some(b'-' | b'0'..=b'9') => {
                self.i += 1;
                while let Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') = self.peek() {
                    self.i += 1;
                }
            }
            None => return self.err("EOF while parsing a value"),
            Some(_) => return self.err("expected a value"),
        }
        Ok(())
    }

    fn skip_string(&mut self) -> Result<()> {
        self.i += 1;
        loop {
            let (end, _) = self.string_end()?;
            if self.b[end] == b'"' {
                self.i = end + 1;
                return Ok(());
            }
            // A backslash: the escaped byte cannot end the string.
            self.i = end + 2;
            if self.i > self.b.len() {
                self.i = self.b.len();
                return self.err("EOF while parsing a string");
            }
        }
    }

    /// A string in a value kube-event skips, from its opening quote: only its end is looked
    /// for, sixteen bytes at a time, `"` and `\` alone (its content is not checked: control
    /// characters and UTF-8 are the business of whoever reads it). `skip_string`, which checks
    /// control characters on the way, cost ~86 instructions for a typical `managedFields` key;
    /// a frame has about 23 of them. Inlined in `skip` (with `skip_nested` out of line):
    /// ~17 instructions less for each string a frame skips (`kind`, `apiVersion`, three in
    /// `involvedObject`).
    #[inline(always)]
    fn skip_quoted(&mut self) -> Result<()> {
        let b = self.b;
        let mut i = self.i + 1;
        loop {
            let hits = if let Some(chunk) = b.get(i..i + 16) {
                simd::quotes_backslashes(chunk.try_into().expect("16 bytes"))
            } else if let Some(from) = b.len().checked_sub(16).filter(|&from| from <= i) {
                // The last bytes: the input's last sixteen, without those before `i`.
                simd::quotes_backslashes(b[from..].try_into().expect("16 bytes")) >> (i - from)
            } else {
                // An input shorter than sixteen bytes, or a backslash at its very end.
                let rest = b.get(i..).unwrap_or_default();
                rest.iter()
                    .take(16)
                    .enumerate()
                    .fold(0, |m, (k, &c)| m | u32::from(c == b'"' || c == b'\\') << k)
            };
            if hits == 0 {
                if i + 16 >= b.len() {
                    self.i = b.len();
                    return self.err("EOF while parsing a string");
                }
                i += 16;
                continue;
            }
            i += hits.trailing_zeros() as usize;
            if b[i] == b'"' {
                self.i = i + 1;
                return Ok(());
            }
            // A backslash: the escaped byte cannot end the string.
            i += 2;
        }
    }

    /// An object or array: brackets matched (kinds and nesting), strings closed; the
    /// commas and colons in between are not checked.
    ///
    /// Sixteen bytes at a time in `skip_quoted` and a byte at a time between strings, this
    /// was ~2,300 instructions for a frame's `managedFields` (~560 bytes, 23 strings, 30
    /// brackets). So it goes 64 bytes at a time first: masks of the quotes, backslashes and
    /// brackets; the escaped bytes and the bytes inside strings from them (as simdjson
    /// finds them); then only the brackets outside strings, one by one (their depth alone
    /// when the kinds of the brackets allow it: `nested_end`). Whatever that finds
    /// unusual (a mismatched bracket, too deep, the end of the input, a backslash outside a
    /// string) it leaves to `skip_nested_bytewise`, from the start, for the same answer and
    /// the same error.
    ///
    /// Out of line, so that `skip` is small for the strings it steps over.
    #[inline(never)]
    fn skip_nested(&mut self) -> Result<()> {
        match nested_end(self.b, self.i) {
            Some(end) => {
                self.i = end;
                Ok(())
            }
            None => self.skip_nested_bytewise(),
        }
    }

    /// `skip_nested` a byte at a time.
    #[cold]
    fn skip_nested_bytewise(&mut self) -> Result<()> {
        // The open brackets, innermost last (a u128 of kinds cost ~28 instructions per
        // bracket in shifts; a frame's managedFields has about twenty).
        let mut open = [0u8; MAX_DEPTH as usize];
        let mut depth = 0usize;
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b'"' => {
                    self.skip_quoted()?;
                    continue;
                }
                b'{' | b'[' => {
                    let Some(slot) = open.get_mut(depth) else {
                        return self.err("nested too deep");
                    };
                    *slot = c;
                    depth += 1;
                }
                b'}' | b']' => {
                    // `}` and `]` are two above `{` and `[`.
                    if depth == 0 || open[depth - 1] + 2 != c {
                        return self.err("mismatched bracket");
                    }
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Ok(());
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
        self.err("EOF while parsing a value")
    }
}

/// The blocks of 64 bytes of a value stepped over, from `at`: for each, where it starts and
/// its brackets outside strings (bit k for the byte at `at + k`).
struct Blocks<'b> {
    b: &'b [u8],
    at: usize,
    /// All ones while a string is open across the edge of a block.
    inside_before: u64,
    escape_carry: u64,
}

impl<'b> Blocks<'b> {
    fn new(b: &'b [u8], at: usize) -> Blocks<'b> {
        Blocks {
            b,
            at,
            inside_before: 0,
            escape_carry: 0,
        }
    }

    /// The next block; `None` at the end of the input, or after a backslash outside a
    /// string (nothing to `skip_nested_bytewise`, but it would escape a quote here).
    #[inline(always)]
    fn next(&mut self) -> Option<(usize, u64)> {
        let (b, at) = (self.b, self.at);
        if at >= b.len() {
            return None;
        }
        let s = match b.get(at..at + 64) {
            Some(block) => simd::structure(block.try_into().expect("64 bytes")),
            None => {
                // The last bytes: the input's last 64, without those before `at` (a shift
                // by less than 64); or, in a shorter input, a copy padded with spaces.
                match b.len().checked_sub(64) {
                    Some(from) => {
                        let s = simd::structure(b[from..].try_into().expect("64 bytes"));
                        let skip = at - from;
                        simd::Structure {
                            quote: s.quote >> skip,
                            backslash: s.backslash >> skip,
                            bracket: s.bracket >> skip,
                        }
                    }
                    None => {
                        let mut padded = [b' '; 64];
                        padded[..b.len() - at].copy_from_slice(&b[at..]);
                        simd::structure(&padded)
                    }
                }
            }
        };
        let escaped = if s.backslash | self.escape_carry == 0 {
            0
        } else {
            simd::escaped(s.backslash, &mut self.escape_carry)
        };
        let inside = simd::prefix_xor(s.quote & !escaped) ^ self.inside_before;
        self.inside_before = ((inside as i64) >> 63) as u64;
        if s.backslash & !inside != 0 {
            return None;
        }
        self.at = at + 64;
        Some((at, s.bracket & !inside))
    }
}

/// Where the object or array that starts at `b[start]` ends (after its closing bracket), if
/// it is well nested, not deeper than `MAX_DEPTH`, and has no backslash outside its strings;
/// else `None` (see `Reader::skip_nested`).
///
/// First counting the depth alone, with the kinds of the brackets checked at the end, when
/// that is enough: the brackets inside are all `{` and `}` (one kind balanced by its depth
/// alone is matched) and the last closes the first (a `managedFields` is `[{…},{…}]`,
/// labels and annotations have no `[`). That cost ~11 instructions per bracket, not ~19
/// with the stack of kinds (`nested_end_exact`), which does the rest.
fn nested_end(b: &[u8], start: usize) -> Option<usize> {
    nested_end_by_depth(b, start).or_else(|| nested_end_exact(b, start))
}

/// `nested_end` when counting the depth is enough; else `None`.
#[inline(always)]
fn nested_end_by_depth(b: &[u8], start: usize) -> Option<usize> {
    let first = *b.get(start)?;
    let mut blocks = Blocks::new(b, start + 1);
    let mut depth = 1usize;
    // The bits the brackets inside have in common: 0x20 if they are all `{` or `}`.
    let mut inner = 0xffff_ffffu32;
    // At most 64 brackets open in a block: never deeper than MAX_DEPTH.
    while depth <= (MAX_DEPTH - 64) as usize {
        let (at, mut brackets) = blocks.next()?;
        while brackets != 0 {
            let at = at + brackets.trailing_zeros() as usize;
            brackets &= brackets - 1;
            let c = b[at];
            // `{` and `[` are 0x7b and 0x5b; `}` and `]` two above.
            if c & 0x04 == 0 {
                depth += 1;
            } else {
                depth -= 1;
                if depth == 0 {
                    let matched = inner & 0x20 != 0 && c == first + 2;
                    return matched.then_some(at + 1);
                }
            }
            inner &= u32::from(c);
        }
    }
    None
}

/// `nested_end` with a stack of the kinds of the brackets open.
#[cold]
fn nested_end_exact(b: &[u8], start: usize) -> Option<usize> {
    let mut open = [0u8; MAX_DEPTH as usize];
    let mut depth = 0usize;
    let mut blocks = Blocks::new(b, start);
    while let Some((at, mut brackets)) = blocks.next() {
        while brackets != 0 {
            let at = at + brackets.trailing_zeros() as usize;
            brackets &= brackets - 1;
            let c = b[at];
            if c & 0x04 == 0 {
                *open.get_mut(depth)? = c;
                depth += 1;
            } else {
                if depth == 0 || open[depth - 1] + 2 != c {
                    return None;
                }
                depth -= 1;
                if depth == 0 {
                    return Some(at + 1);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// What kube-event reads from an event, as comparable text.
    type Fields = Vec<(&'static str, Option<String>)>;

    fn fields(ev: &Event<'_>) -> Fields {
        let s = |v: &Option<Text<'_>>| v.as_deref().map(str::to_string);
        vec![
            ("metadata.name", s(&ev.metadata.name)),
            ("metadata.namespace", s(&ev.metadata.namespace)),
            ("metadata.uid", s(&ev.metadata.uid)),
            ("metadata.resourceVersion", s(&ev.metadata.resource_version)),
            (
                "metadata.creationTimestamp",
                s(&ev.metadata.creation_timestamp),
            ),
            ("involvedObject.kind", s(&ev.involved_object.kind)),
            ("involvedObject.name", s(&ev.involved_object.name)),
            ("involvedObject.uid", s(&ev.involved_object.uid)),
            (
                "involvedObject.fieldPath",
                s(&ev.involved_object.field_path),
            ),
            ("reason", s(&ev.reason)),
            ("message", s(&ev.message)),
            ("source.component", s(&ev.source.component)),
            ("source.host", s(&ev.source.host)),
            ("firstTimestamp", s(&ev.first_timestamp)),
            ("lastTimestamp", s(&ev.last_timestamp)),
            ("count", ev.count.map(|c| c.to_string())),
            ("type", s(&ev.type_)),
            ("eventTime", s(&ev.event_time)),
            ("series", ev.series.as_ref().map(|_| "{}".to_string())),
            (
                "series.count",
                ev.series
                    .as_ref()
                    .and_then(|s| s.count)
                    .map(|c| c.to_string()),
            ),
            (
                "series.lastObservedTime",
                ev.series
                    .as_ref()
                    .and_then(|s| s.last_observed_time.as_deref().map(str::to_string)),
            ),
            ("reportingComponent", s(&ev.reporting_component)),
            ("reportingInstance", s(&ev.reporting_instance)),
            ("code", ev.code.map(|c| c.to_string())),
        ]
    }

    /// The oracle: the same fields read from serde_json's `Value`, with the same rules (a
    /// string or null; a whole number or null; an object or null).
    fn oracle(obj: &Value) -> std::result::Result<Fields, String> {
        let empty = serde_json::Map::new();
        let object = |v: Option<&Value>| -> std::result::Result<Option<serde_json::Map<String, Value>>, String> {
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Object(m)) => Ok(Some(m.clone())),
                Some(other) => Err(format!("not an object: {other}")),
            }
        };
        let top = object(Some(obj))?.unwrap_or_default();
        let string = |m: &serde_json::Map<String, Value>, k: &str| match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("{k}: not a string: {other}")),
        };
        let int = |m: &serde_json::Map<String, Value>, k: &str, max: i64| match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) if n <= max && (max == i64::MAX || n >= 0) => Ok(Some(n.to_string())),
                _ => Err(format!("{k}: not a whole number in range: {v}")),
            },
        };
        let meta = object(top.get("metadata"))?.unwrap_or_default();
        let io = object(top.get("involvedObject"))?.unwrap_or_default();
        let source = object(top.get("source"))?.unwrap_or_default();
        let series = object(top.get("series"))?;
        let se = series.as_ref().unwrap_or(&empty);
        Ok(vec![
            ("metadata.name", string(&meta, "name")?),
            ("metadata.namespace", string(&meta, "namespace")?),
            ("metadata.uid", string(&meta, "uid")?),
            (
                "metadata.resourceVersion",
                string(&meta, "resourceVersion")?,
            ),
            (
                "metadata.creationTimestamp",
                string(&meta, "creationTimestamp")?,
            ),
            ("involvedObject.kind", string(&io, "kind")?),
            ("involvedObject.name", string(&io, "name")?),
            ("involvedObject.uid", string(&io, "uid")?),
            ("involvedObject.fieldPath", string(&io, "fieldPath")?),
            ("reason", string(&top, "reason")?),
            ("message", string(&top, "message")?),
            ("source.component", string(&source, "component")?),
            ("source.host", string(&source, "host")?),
            ("firstTimestamp", string(&top, "firstTimestamp")?),
            ("lastTimestamp", string(&top, "lastTimestamp")?),
            ("count", int(&top, "count", i64::MAX)?),
            ("type", string(&top, "type")?),
            ("eventTime", string(&top, "eventTime")?),
            ("series", series.as_ref().map(|_| "{}".to_string())),
            ("series.count", int(se, "count", i64::MAX)?),
            ("series.lastObservedTime", string(se, "lastObservedTime")?),
            ("reportingComponent", string(&top, "reportingComponent")?),
            ("reportingInstance", string(&top, "reportingInstance")?),
            ("code", int(&top, "code", i64::from(u16::MAX))?),
        ])
    }

    /// A frame as the oracle reads it: (type, fields of the object).
    fn oracle_frame(text: &[u8]) -> std::result::Result<(String, Fields), String> {
        let v: Value = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        let Value::Object(m) = &v else {
            return Err("not an object".into());
        };
        let kind = match m.get("type") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err("no type".into()),
        };
        let obj = m.get("object").cloned().unwrap_or(Value::Null);
        Ok((kind, oracle(&obj)?))
    }

    fn scanned_frame(text: &[u8]) -> std::result::Result<(String, Fields), Error> {
        let f = frame(text)?;
        Ok((f.kind.to_string(), fields(&f.object)))
    }

    /// Whether `text` read as serde_json reads it (`true`) or both refused it (`false`);
    /// panics when they disagree.
    fn agrees_with_serde_json(text: &[u8]) -> bool {
        let want = oracle_frame(text);
        let got = scanned_frame(text);
        match (&want, &got) {
            (Ok(w), Ok(g)) => {
                assert_eq!(g, w, "{}", String::from_utf8_lossy(text));
                true
            }
            (Err(_), Err(_)) => false,
            _ => panic!(
                "serde_json: {want:?}\nscan: {got:?}\nframe: {}",
                String::from_utf8_lossy(text)
            ),
        }
    }

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/../shared/fixtures/apiserver/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn recorded_frames_and_list_items_read_as_serde_json_reads_them() {
        let mut frames = 0;
        for name in ["watch-stream.ndjson", "watch-410.ndjson"] {
            for line in fixture(name).lines().filter(|l| !l.trim().is_empty()) {
                let want = oracle_frame(line.as_bytes()).expect("a recorded frame is valid");
                let got = scanned_frame(line.as_bytes()).unwrap_or_else(|e| panic!("{e}: {line}"));
                assert_eq!(got, want, "{line}");
                // The object's text is exactly what was sent.
                let raw = frame(line.as_bytes()).unwrap().raw;
                let v: Value = serde_json::from_slice(line.as_bytes()).unwrap();
                let reparsed: Value = serde_json::from_slice(raw).unwrap();
                assert_eq!(reparsed, v["object"]);
                frames += 1;
            }
        }
        assert!(frames >= 4, "{frames} frames in the fixtures");
        let mut items = 0;
        for name in [
            "list-page1.json",
            "list-page2.json",
            "event-eventsv1-through-corev1.json",
        ] {
            let v: Value = serde_json::from_str(&fixture(name)).unwrap();
            let objects: Vec<Value> = match v.get("items") {
                Some(Value::Array(a)) => a.clone(),
                _ => vec![v.clone()],
            };
            for o in objects {
                let text = serde_json::to_string(&o).unwrap();
                let ev = event(text.as_bytes()).unwrap_or_else(|e| panic!("{e}: {text}"));
                assert_eq!(fields(&ev), oracle(&o).unwrap(), "{text}");
                items += 1;
            }
        }
        assert!(items >= 3);
    }

    /// xorshift64*: generated cases that are the same on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// Characters a string is made of: plain ASCII, JSON's specials, controls, multi-byte.
    const CHARS: &[char] = &[
        'a', 'Z', '0', ' ', '-', ':', '/', '"', '\\', '\n', '\t', '\r', '\u{8}', '\u{c}', '\u{0}',
        '\u{1f}', '\u{7f}', 'é', 'ß', '€', '\u{2028}', '😀', '{', '}', '[', ']', ',',
    ];

    fn random_string(rng: &mut Rng) -> String {
        let len = match rng.below(10) {
            0 => 0,
            1..=6 => rng.below(12),
            _ => rng.below(80),
        };
        (0..len)
            .map(|_| CHARS[rng.below(CHARS.len() as u64) as usize])
            .collect()
    }

    /// Writes `s` as a JSON string, choosing among the valid ways to write each character.
    fn write_string(rng: &mut Rng, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            let escape_anyway = rng.chance(10);
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' if !escape_anyway => out.push_str("\\n"),
                '\t' if !escape_anyway => out.push_str("\\t"),
                '\r' if !escape_anyway => out.push_str("\\r"),
                '\u{8}' if !escape_anyway => out.push_str("\\b"),
                '\u{c}' if !escape_anyway => out.push_str("\\f"),
                '/' if escape_anyway => out.push_str("\\/"),
                c if (c as u32) < 0x20 || escape_anyway => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        if rng.chance(50) {
                            out.push_str(&format!("\\u{u:04x}"));
                        } else {
                            out.push_str(&format!("\\u{u:04X}"));
                        }
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }

    fn ws(rng: &mut Rng, out: &mut String) {
        if rng.chance(15) {
            for _ in 0..rng.below(3) + 1 {
                out.push([' ', '\n', '\t', '\r'][rng.below(4) as usize]);
            }
        }
    }

    /// Any JSON value (for the fields kube-event skips), nested up to `depth`.
    fn random_value(rng: &mut Rng, depth: u32, out: &mut String) {
        let pick = if depth == 0 {
            rng.below(5)
        } else {
            rng.below(7)
        };
        match pick {
            0 => out.push_str("null"),
            1 => out.push_str(["true", "false"][rng.below(2) as usize]),
            2 => out.push_str(
                ["0", "-1", "3.25", "1e10", "-2.5E-3", "123456789012"][rng.below(6) as usize],
            ),
            3 | 4 => {
                let s = random_string(rng);
                write_string(rng, &s, out)
            }
            5 => {
                out.push('[');
                for i in 0..rng.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    ws(rng, out);
                    random_value(rng, depth - 1, out);
                    ws(rng, out);
                }
                out.push(']');
            }
            _ => {
                let n = rng.below(4);
                let members: Vec<Member> = (0..n)
                    .map(|_| {
                        let k = random_string(rng);
                        let f: Writer = Box::new(move |rng, out| random_value(rng, depth - 1, out));
                        (k, f)
                    })
                    .collect();
                write_object(rng, members, out);
            }
        }
    }

    /// Writes a value.
    type Writer = Box<dyn Fn(&mut Rng, &mut String)>;
    type Member = (String, Writer);

    fn write_object(rng: &mut Rng, members: Vec<Member>, out: &mut String) {
        out.push('{');
        ws(rng, out);
        for (i, (k, value)) in members.iter().enumerate() {
            if i > 0 {
                out.push(',');
                ws(rng, out);
            }
            write_string(rng, k, out);
            ws(rng, out);
            out.push(':');
            ws(rng, out);
            value(rng, out);
            ws(rng, out);
        }
        out.push('}');
    }

    fn string_member(name: &str) -> Member {
        (
            name.to_string(),
            Box::new(|rng: &mut Rng, out: &mut String| {
                if rng.chance(10) {
                    out.push_str("null");
                } else {
                    let s = random_string(rng);
                    write_string(rng, &s, out);
                }
            }),
        )
    }

    fn int_member(name: &str) -> Member {
        (
            name.to_string(),
            Box::new(|rng: &mut Rng, out: &mut String| {
                let v = match rng.below(8) {
                    0 => "null".to_string(),
                    1 => "-0".to_string(),
                    2 => i64::MAX.to_string(),
                    3 => i64::MIN.to_string(),
                    4 => "65535".to_string(),
                    _ => rng.below(100_000).to_string(),
                };
                out.push_str(&v);
            }),
        )
    }

    fn junk_member(rng: &mut Rng) -> Member {
        let k = random_string(rng);
        (
            k,
            Box::new(|rng: &mut Rng, out: &mut String| random_value(rng, 4, out)),
        )
    }

    fn object_member(name: &str, members: Vec<Member>) -> Member {
        let members = std::cell::RefCell::new(Some(members));
        (
            name.to_string(),
            Box::new(move |rng: &mut Rng, out: &mut String| {
                let m = members.borrow_mut().take().unwrap_or_default();
                write_object(rng, m, out)
            }),
        )
    }

    /// Some fields left out, some unknown ones added, in any order; or, `in_order`, in the
    /// order given (the API server's), unknown ones anywhere.
    fn shuffled(rng: &mut Rng, mut members: Vec<Member>, in_order: bool) -> Vec<Member> {
        members.retain(|_| !rng.chance(10));
        if in_order {
            for _ in 0..rng.below(3) {
                let at = rng.below(members.len() as u64 + 1) as usize;
                let junk = junk_member(rng);
                members.insert(at, junk);
            }
            return members;
        }
        for _ in 0..rng.below(3) {
            members.push(junk_member(rng));
        }
        for i in (1..members.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            members.swap(i, j);
        }
        members
    }

    /// A member the scanner skips, named.
    fn skipped_member(name: &str) -> Member {
        (
            name.to_string(),
            Box::new(|rng: &mut Rng, out: &mut String| random_value(rng, 2, out)),
        )
    }

    /// An Event object: its fields shuffled or, `in_order`, in the order the API server
    /// writes them (with the fields it skips that the API server writes too).
    fn random_event(rng: &mut Rng, in_order: bool) -> String {
        let meta = {
            let m = vec![
                string_member("name"),
                string_member("namespace"),
                string_member("uid"),
                string_member("resourceVersion"),
                string_member("creationTimestamp"),
                junk_member(rng),
                (
                    "managedFields".to_string(),
                    Box::new(|rng: &mut Rng, out: &mut String| random_value(rng, 6, out)) as Writer,
                ),
            ];
            shuffled(rng, m, in_order)
        };
        let mut io = vec![
            string_member("kind"),
            string_member("name"),
            string_member("uid"),
            string_member("fieldPath"),
        ];
        if in_order {
            io.insert(1, skipped_member("namespace"));
            io.insert(4, skipped_member("apiVersion"));
            io.insert(5, skipped_member("resourceVersion"));
        }
        let io = shuffled(rng, io, in_order);
        let source = shuffled(
            rng,
            vec![string_member("component"), string_member("host")],
            in_order,
        );
        let series = shuffled(
            rng,
            vec![int_member("count"), string_member("lastObservedTime")],
            in_order,
        );
        let mut top = vec![
            object_member("metadata", meta),
            object_member("involvedObject", io),
            string_member("reason"),
            string_member("message"),
            object_member("source", source),
            string_member("firstTimestamp"),
            string_member("lastTimestamp"),
            int_member("count"),
            string_member("type"),
            string_member("eventTime"),
            string_member("reportingComponent"),
            string_member("reportingInstance"),
        ];
        if rng.chance(30) {
            top.push(object_member("series", series));
        } else if rng.chance(10) {
            top.push((
                "series".into(),
                Box::new(|_: &mut Rng, out: &mut String| out.push_str("null")),
            ));
        }
        if rng.chance(5) {
            top.push(int_member("code"));
        }
        if in_order {
            top.insert(0, skipped_member("kind"));
            top.insert(1, skipped_member("apiVersion"));
        }
        let top = shuffled(rng, top, in_order);
        let mut out = String::new();
        write_object(rng, top, &mut out);
        out
    }

    #[test]
    fn generated_frames_read_as_serde_json_reads_them() {
        let mut rng = Rng(0x5eed_cafe_f00d_0001);
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..3000 {
            let object = random_event(&mut rng, false);
            let mut text = String::new();
            ws(&mut rng, &mut text);
            let kind = ["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"][rng.below(5) as usize];
            if rng.chance(50) {
                text.push_str(&format!(r#"{{"type":"{kind}","object":{object}}}"#));
            } else {
                text.push_str(&format!(r#"{{"object":{object},"type":"{kind}"}}"#));
            }
            ws(&mut rng, &mut text);
            if agrees_with_serde_json(text.as_bytes()) {
                ok += 1;
            } else {
                refused += 1;
            }
        }
        // Most generated frames are valid; some are refused by both (a number out of range).
        assert!(ok > 2000, "{ok} read, {refused} refused");
    }

    #[test]
    fn frames_in_the_api_servers_order_read_as_serde_json_reads_them() {
        // The keys `Reader::object` expects, whole or cut, with escapes or whitespace now and
        // then (`write_object`), and unknown keys among them.
        let mut rng = Rng(0x5eed_cafe_f00d_0004);
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..3000 {
            let object = random_event(&mut rng, true);
            let text = format!(r#"{{"type":"ADDED","object":{object}}}"#);
            let cut = if rng.chance(20) {
                rng.below(text.len() as u64) as usize
            } else {
                text.len()
            };
            if agrees_with_serde_json(&text.as_bytes()[..cut]) {
                ok += 1;
            } else {
                refused += 1;
            }
        }
        assert!(ok > 1500, "{ok} read, {refused} refused");
    }

    #[test]
    fn expected_keys_are_found_as_starts_with_finds_them() {
        // Keys of every length up to 29 bytes, each byte of `"name":` changed in turn, at
        // every offset of the input, followed by nothing or a few bytes or many.
        let mut checked = 0;
        for n in 1..=29 {
            let name: String = (0..n).map(|k| (b'a' + k as u8 % 26) as char).collect();
            let key = Key::new(&name);
            assert_eq!(key.name(), name.as_bytes());
            let text = &key.text[..key.len];
            for change in 0..=text.len() {
                for (start, extra) in [(0, 0), (0, 1), (3, 5), (1, 16), (7, 40), (0, 40)] {
                    let mut b = vec![b' '; start];
                    b.extend_from_slice(text);
                    if let Some(c) = b.get_mut(start + change) {
                        *c ^= 0x20;
                    }
                    b.extend(std::iter::repeat_n(b'"', extra));
                    for cut in [b.len(), start + text.len() - 1] {
                        let b = &b[..cut];
                        let r = Reader { b, i: start };
                        assert_eq!(
                            r.at_key(&key),
                            b[start..].starts_with(text),
                            "{name} in {b:?}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 3000);
    }

    #[test]
    fn list_pages_are_cut_into_the_items_serde_json_sees() {
        for name in ["list-page1.json", "list-page2.json"] {
            let text = fixture(name);
            let page = list(text.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            let v: Value = serde_json::from_str(&text).unwrap();
            let items = v["items"].as_array().unwrap();
            assert_eq!(page.items.len(), items.len(), "{name}");
            for (got, want) in page.items.iter().zip(items) {
                let got: Value = serde_json::from_slice(got).unwrap();
                assert_eq!(&got, want);
            }
            let s = |v: &Value| v.as_str().map(str::to_string);
            assert_eq!(
                page.resource_version.as_deref().map(str::to_string),
                s(&v["metadata"]["resourceVersion"])
            );
            assert_eq!(
                page.continue_.as_deref().map(str::to_string),
                s(&v["metadata"]["continue"])
            );
        }
        let empty =
            list(br#"{"kind":"EventList","metadata":{"resourceVersion":"9"},"items":null}"#)
                .unwrap();
        assert!(empty.items.is_empty());
        assert_eq!(empty.resource_version.as_deref(), Some("9"));
        for bad in [
            &br#"{"items":[{"a":1}"#[..],
            br#"{"items":[1]}"#,
            br#"{"items":{}}"#,
            br#"{"metadata":{"resourceVersion":5},"items":[]}"#,
        ] {
            assert!(list(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// What `list_each` hands out: each item's text and its fields, or the item's error.
    type Handed = Vec<(Vec<u8>, std::result::Result<Fields, Error>)>;

    fn one_pass(text: &[u8]) -> (Result<ListHead<'_>>, Handed) {
        let mut got = Vec::new();
        let head = list_each(text, &mut |raw, ev| {
            got.push((raw.to_vec(), ev.map(fields)));
            true
        });
        (head, got)
    }

    #[test]
    fn a_page_read_in_one_pass_gives_what_cutting_it_and_reading_each_item_gives() {
        for name in ["list-page1.json", "list-page2.json"] {
            let text = fixture(name);
            let page = list(text.as_bytes()).unwrap();
            let (head, got) = one_pass(text.as_bytes());
            let head = head.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!head.stopped);
            assert_eq!(head.items, page.items.len(), "{name}");
            assert_eq!(head.resource_version, page.resource_version);
            assert_eq!(head.continue_, page.continue_);
            assert_eq!(got.len(), page.items.len());
            for ((raw, ev), item) in got.iter().zip(&page.items) {
                assert_eq!(raw.as_slice(), *item);
                assert_eq!(ev, &event(item).map(|e| fields(&e)), "{name}");
            }
            // Cut anywhere, the page is refused and nothing past the cut was handed out;
            // what was handed out is what the whole page gives.
            for cut in 0..text.trim_end().len() {
                let (head, part) = one_pass(&text.as_bytes()[..cut]);
                assert!(head.is_err(), "{name} cut at {cut}");
                assert!(part.len() <= got.len());
                assert_eq!(part[..], got[..part.len()], "{name} cut at {cut}");
            }
        }

        // Items that are JSON but not Events: handed out with the error `event` gives for
        // their text alone, and the page goes on.
        let text = br#"{"metadata":{"resourceVersion":"7"},"items":[{"metadata":{"uid":"a"}},{"metadata":5},{"count":"x","n":[1,{}]},{"metadata":{"uid":"b"}}]}"#;
        let (head, got) = one_pass(text);
        let head = head.unwrap();
        assert_eq!(head.items, 4);
        assert_eq!(head.resource_version.as_deref(), Some("7"));
        assert_eq!(head.continue_, None);
        for (raw, ev) in &got {
            assert_eq!(ev, &event(raw).map(|e| fields(&e)));
        }
        let errors: Vec<&[u8]> = got
            .iter()
            .filter(|(_, ev)| ev.is_err())
            .map(|(raw, _)| raw.as_slice())
            .collect();
        assert_eq!(
            errors,
            [&br#"{"metadata":5}"#[..], br#"{"count":"x","n":[1,{}]}"#]
        );

        // Asked to stop, it stops: the rest of the page is not read, even where it is broken.
        let text = br#"{"items":[{"metadata":{"uid":"a"}},{"metadata":{"uid":"b"}},oops"#;
        let mut n = 0;
        let head = list_each(text, &mut |_, _| {
            n += 1;
            false
        })
        .unwrap();
        assert!(head.stopped);
        assert_eq!((head.items, n), (1, 1));

        for empty in [&br#"{"items":null}"#[..], br#"{"items":[]}"#, br#"{}"#] {
            let (head, got) = one_pass(empty);
            assert_eq!(head.unwrap().items, 0);
            assert!(got.is_empty());
        }
        for bad in [
            &br#"{"items":[1]}"#[..],
            br#"{"items":{}}"#,
            br#"{"items":[{"metadata":{"uid":"a"}}"#,
            br#"{"metadata":{"resourceVersion":5},"items":[]}"#,
            br#"{"items":[]} x"#,
        ] {
            assert!(one_pass(bad).0.is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn keys_with_escapes_are_matched_by_their_value() {
        let text =
            r#"{"type":"ADDED","object":{"re\u0061son":"BackOff","metad\u0061ta":{"uid":"u"}}}"#;
        let f = frame(text.as_bytes()).unwrap();
        assert_eq!(f.object.reason.as_deref(), Some("BackOff"));
        assert_eq!(f.object.metadata.uid.as_deref(), Some("u"));
    }

    #[test]
    fn every_truncation_of_a_frame_is_refused_without_panicking() {
        let line = fixture("watch-stream.ndjson")
            .lines()
            .find(|l| l.contains("managedFields") || l.len() > 400)
            .expect("a long recorded frame")
            .to_string();
        for cut in 0..line.len() {
            let head = &line.as_bytes()[..cut];
            assert!(
                frame(head).is_err(),
                "accepted a frame cut at {cut}: {}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn damaged_frames_never_panic_and_valid_ones_still_agree() {
        let mut rng = Rng(0xdead_beef_0000_0002);
        let lines: Vec<String> = fixture("watch-stream.ndjson")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        const BYTES: &[u8] = b"{}[]\",:\\ 0-.enutrfl\x00\x1f\x80\xff";
        for _ in 0..20_000 {
            let mut b = lines[rng.below(lines.len() as u64) as usize]
                .clone()
                .into_bytes();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(b.len() as u64) as usize;
                let c = BYTES[rng.below(BYTES.len() as u64) as usize];
                match rng.below(3) {
                    0 => b[at] = c,
                    1 => b.insert(at, c),
                    _ => {
                        b.remove(at);
                    }
                }
            }
            let got = scanned_frame(&b);
            // Where serde_json reads the damaged frame as valid JSON, both must agree; where
            // it does not, the scanner may still accept damage in a value it skips.
            if let Ok(want) = oracle_frame(&b) {
                assert_eq!(got.ok(), Some(want), "{}", String::from_utf8_lossy(&b));
            }
        }
    }

    #[test]
    fn errors_say_what_and_where() {
        for (text, what) in [
            (
                r#"{"type":"ADDED","object":{"reason":5}}"#,
                "expected a string at byte 35",
            ),
            (
                r#"{"type":"ADDED","object":{"count":1.5}}"#,
                "expected a whole number at byte 34",
            ),
            (
                r#"{"type":"ADDED","object":{"code":70000}}"#,
                "code out of range at byte 33",
            ),
            (
                r#"{"type":"ADDED","object":{"metadata":[]}}"#,
                "expected an object at byte 37",
            ),
            (
                r#"{"type":"ADDED","object":{}} x"#,
                "trailing characters at byte 29",
            ),
            (r#"{"object":{}}"#, "missing field `type` at byte 0"),
            (
                r#"{"type":"ADDED","object":{"x":[}]}}"#,
                "mismatched bracket at byte 31",
            ),
            (
                r#"{"type":"A\u0000DDED"}"#,
                "control character in a string at byte 10",
            ),
            (
                "{\"type\":\"A\x01\"}",
                "control character in a string at byte 10",
            ),
            (
                r#"{"type":"\ud800"}"#,
                "lone surrogate in a \\u escape at byte 11",
            ),
            (r#"{"type":"\q"}"#, "invalid escape at byte 10"),
        ] {
            match frame(text.as_bytes()) {
                Err(e) => assert_eq!(e.to_string(), what, "{text}"),
                Ok(_) if text.contains("\\u0000") => {}
                Ok(_) => panic!("accepted {text}"),
            }
        }
    }

    /// `Reader::string_end` a byte at a time, as it was before it went sixteen at a time.
    fn string_end_bytewise(b: &[u8], mut i: usize) -> Result<(usize, bool)> {
        let mut ascii = true;
        while let Some(&c) = b.get(i) {
            match c {
                b'"' | b'\\' => return Ok((i, ascii)),
                0..=0x1f => {
                    return Err(Error {
                        at: i,
                        what: "control character in a string",
                    })
                }
                _ => ascii &= c < 0x80,
            }
            i += 1;
        }
        Err(Error {
            at: i,
            what: "EOF while parsing a string",
        })
    }

    /// `Reader::skip_quoted` a byte at a time: where the string that opens at `i` ends.
    fn quoted_end_bytewise(b: &[u8], mut i: usize) -> Result<usize> {
        i += 1;
        loop {
            match b.get(i) {
                Some(b'"') => return Ok(i + 1),
                Some(b'\\') => i += 2,
                Some(_) => i += 1,
                None => {
                    return Err(Error {
                        at: b.len(),
                        what: "EOF while parsing a string",
                    })
                }
            }
        }
    }

    #[test]
    fn string_ends_are_found_as_a_byte_at_a_time_finds_them() {
        // A run of plain bytes (ASCII or not) with one byte that stops it at every offset,
        // the run starting at every offset of a 16-byte chunk, in inputs that end right after
        // it or a little later (the last-sixteen-bytes path) or are shorter than sixteen.
        let mut checked = 0;
        for stop in [b'"', b'\\', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xff, b'a'] {
            for plain in [b'a', 0xc3] {
                for start in 0..18 {
                    for len in 0..40 {
                        for extra in [0, 1, 5, 15, 16, 17, 40] {
                            let mut b = vec![b'x'; start];
                            b.extend(std::iter::repeat_n(plain, len));
                            b.push(stop);
                            b.extend(std::iter::repeat_n(b'y', extra));
                            for cut in [b.len(), start + len + 1, start + len] {
                                let b = &b[..cut];
                                let r = Reader { b, i: start };
                                assert_eq!(
                                    r.string_end(),
                                    string_end_bytewise(b, start),
                                    "{b:?} from {start}"
                                );
                                let q = start.saturating_sub(1);
                                let mut r = Reader { b, i: q };
                                let got = r.skip_quoted().map(|()| r.i);
                                assert_eq!(got, quoted_end_bytewise(b, q), "{b:?} from {q}");
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 100_000);
    }

    #[test]
    fn plain_strings_read_as_any_string_reads_them() {
        // Runs of ASCII or not (valid UTF-8 or cut), with one byte that stops them at every
        // offset of the 16-byte chunks, the input ending right after it or a little later.
        let mut checked = 0;
        for stop in [b'"', b'\\', 0x00, 0x1f, 0x80, 0xc3] {
            for plain in [&b"a"[..], "é".as_bytes(), &[0xe2, 0x82]] {
                for start in 0..3 {
                    for len in 0..50 {
                        for extra in [0, 1, 15, 16, 17, 40] {
                            let mut b = vec![b'x'; start];
                            b.push(b'"');
                            b.extend(plain.iter().cycle().take(len));
                            b.push(stop);
                            b.extend_from_slice(
                                &b"\"y\"..........................................."[..extra],
                            );
                            let mut fast = Reader { b: &b, i: start };
                            let mut any = Reader { b: &b, i: start };
                            let answers = fast.plain_string();
                            // A plain string ended by its quote is read here, in the input's
                            // last sixteen bytes too.
                            if stop == b'"' && b.len() >= 16 {
                                assert!(answers.is_some(), "{b:?}");
                            }
                            match answers {
                                Some(got) => {
                                    let want = any.quoted_string();
                                    assert_eq!(got, want, "{b:?}");
                                    assert_eq!(fast.i, any.i, "{b:?}");
                                    checked += 1;
                                }
                                None => assert_eq!(fast.i, start),
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 2000, "{checked}");
    }

    /// A value to step over made of brackets, strings (with escapes, runs of backslashes,
    /// control characters, brackets and quotes inside) and filler, sometimes broken; inside
    /// the first bracket only `{` opens unless `mixed` (as in a `managedFields`).
    fn random_nested(rng: &mut Rng, out: &mut Vec<u8>, mixed: bool) {
        let mut open = vec![if rng.chance(50) { b'{' } else { b'[' }];
        out.push(open[0]);
        while !open.is_empty() && out.len() < 400 {
            match rng.below(12) {
                0 | 1 if open.len() < 140 => {
                    let c = if mixed {
                        [b'{', b'['][rng.below(2) as usize]
                    } else {
                        b'{'
                    };
                    open.push(c);
                    out.push(c);
                }
                2 | 3 => {
                    let c = open.pop().expect("open") + 2;
                    // Now and then the other kind, or one too many.
                    out.push(match rng.below(40) {
                        0 => c ^ 0x20,
                        _ => c,
                    });
                    if rng.chance(2) {
                        out.push(b']');
                    }
                }
                4..=6 => {
                    out.push(b'"');
                    for _ in 0..rng.below(40) {
                        match rng.below(10) {
                            0 => {
                                for _ in 0..1 + rng.below(5) {
                                    out.push(b'\\');
                                }
                            }
                            1 => out.extend_from_slice(b"\\\""),
                            2 => out
                                .push([b'{', b'}', b'[', b']', 0x01, 0xe2][rng.below(6) as usize]),
                            _ => out.push(b'a' + rng.below(26) as u8),
                        }
                    }
                    // An odd run of backslashes before the end escapes the quote: the string
                    // goes on, as it does for the scanner.
                    out.push(b'"');
                }
                7 if rng.chance(5) => out.push(b'\\'),
                _ => out.extend_from_slice(
                    [&b","[..], b":", b" ", b"1", b"null"][rng.below(5) as usize],
                ),
            }
        }
        for c in open.into_iter().rev() {
            out.push(c + 2);
        }
    }

    /// Generated values, moved across the 64-byte blocks by what comes before them, whole or
    /// cut: `skip_nested` ends each where the byte-at-a-time skip does (same end, same error),
    /// and so does `fast` when it answers, which it must for more than a third of them.
    /// `any_brackets`: `[` and `]` inside too, else `{` and `}` with now and then a bracket of
    /// the other kind (inside, or closing the first), one too many, or the value cut.
    fn skips_agree(seed: u64, any_brackets: bool, fast: fn(&[u8], usize) -> Option<usize>) {
        let mut rng = Rng(seed);
        let (mut answered, mut total) = (0, 0);
        for round in 0..20_000 {
            let start = round % 70;
            let mut b = vec![b' '; start];
            random_nested(&mut rng, &mut b, any_brackets);
            b.extend_from_slice(&b",\"reason\":\"R\"}"[..rng.below(15) as usize]);
            let cuts = [
                b.len(),
                start + rng.below((b.len() - start) as u64) as usize,
            ];
            for cut in cuts {
                let b = &b[..cut];
                let mut r = Reader { b, i: start };
                let want = r.skip_nested_bytewise().map(|()| r.i);
                if let Some(end) = fast(b, start) {
                    assert_eq!(Ok(end), want, "{}", String::from_utf8_lossy(b));
                    answered += 1;
                }
                let mut r = Reader { b, i: start };
                let got = r.skip_nested().map(|()| r.i);
                assert_eq!(got, want, "{}", String::from_utf8_lossy(b));
                total += 1;
            }
        }
        assert!(answered > total / 3, "{answered} of {total}");
    }

    #[test]
    fn skipped_values_end_where_a_byte_at_a_time_ends_them() {
        skips_agree(0x0b1e_c7ed_0000_0003, true, nested_end);
    }

    #[test]
    fn skipped_values_counted_by_depth_end_where_a_byte_at_a_time_ends_them() {
        skips_agree(0x0b1e_c7ed_0000_0005, false, nested_end_by_depth);
    }

    #[test]
    fn skipped_values_are_checked_for_nesting_only() {
        let with = |skipped: &str| {
            format!(r#"{{"type":"ADDED","object":{{"x":{skipped},"reason":"R"}}}}"#)
        };
        let reason =
            |text: &str| frame(text.as_bytes()).map(|f| f.object.reason.map(|r| r.0.into_owned()));
        // As deep as MAX_DEPTH, and no deeper.
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let max = MAX_DEPTH as usize;
        assert_eq!(reason(&with(&deep(max))), Ok(Some("R".into())));
        assert_eq!(
            reason(&with(&deep(max + 1))).unwrap_err().what,
            "nested too deep"
        );
        // The same with `{` inside (counted by depth alone), in an array or an object, the
        // deepest bracket at every offset of a 64-byte block.
        for first in ["[", "{"] {
            for pad in 0..64 {
                let curly = |n: usize| {
                    let last = if first == "[" { "]" } else { "}" };
                    let (open, close) = ("{".repeat(n - 1), "}".repeat(n - 1));
                    format!("{first}{}{open}{close}{last}", " ".repeat(pad))
                };
                assert_eq!(reason(&with(&curly(max))), Ok(Some("R".into())));
                let too_deep = with(&curly(max + 1));
                // The bracket after the first MAX_DEPTH.
                let at = too_deep.find(r#""x":"#).unwrap() + 4 + pad + max;
                let e = frame(too_deep.as_bytes()).map(|_| ()).unwrap_err();
                assert_eq!((e.what, e.at), ("nested too deep", at), "{first} {pad}");
            }
        }
        // `levels` levels of an object holding an array (or the other way round), each
        // opening two brackets, around a number.
        let nest = |levels: usize| {
            let mut text: String = (0..levels)
                .map(|d| if d % 2 == 0 { "{\"k\":[" } else { "[{\"k\":" })
                .collect();
            text.push('1');
            for d in (0..levels).rev() {
                text.push_str(if d % 2 == 0 { "]}" } else { "}]" });
            }
            text
        };
        // Twice MAX_DEPTH brackets is too deep; MAX_DEPTH is not.
        assert_eq!(
            reason(&with(&nest(max))).unwrap_err().what,
            "nested too deep"
        );
        assert_eq!(reason(&with(&nest(max / 2))), Ok(Some("R".into())));
        for (skipped, ok) in [
            // Brackets inside strings, escaped quotes and backslashes, at every offset of
            // the eight-byte steps.
            (r#"["]}", "\"]", "\\", "a\"b\\\"c]"]"#, true),
            (r#"{"k":"0123456789abcdef\"}]0123456789"}"#, true),
            (r#"{"k":"\\"}"#, true),
            // Content is not checked: a control character in a skipped string passes.
            ("[\"a\u{1}b\"]", true),
            (r#"[}"#, false),
            (r#"{]"#, false),
            (r#"[[]"#, false),
            (r#"["abc]"#, false),
            (r#"["abc\"]"#, false),
        ] {
            for pad in 0..9 {
                // Padding after the first quote moves the rest across the eight-byte steps.
                let skipped =
                    skipped.replacen('"', &format!("\"{}", "p".repeat(pad)), usize::from(pad > 0));
                let got = reason(&with(&skipped));
                assert_eq!(got.is_ok(), ok, "{skipped}: {got:?}");
                if ok {
                    assert_eq!(got, Ok(Some("R".into())), "{skipped}");
                }
            }
        }
    }
}
