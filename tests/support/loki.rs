//! A fake Grafana Loki push endpoint answering like the recordings in
//! `shared/fixtures/loki/push-answers.txt`: 204 with an empty body on success, plain-text
//! `http.Error` bodies otherwise, Loki's validation (content type, encoding, timestamps as
//! strings, label names and count, line size, too old / too new / too far behind) with its
//! partial success (good entries stored, then 400).
//!
//! Unlike Loki it records every stored entry raw, duplicates included, so tests can count
//! what the product sent twice. Tests script failures (`fail_next`, `set_rule`), require
//! headers, and make the server go away and come back on the same port.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::http::{Conn, HttpServer, Request, Response};
use super::pki::TestPki;
use super::util::{go_time_string, now_nanos, rfc3339_secs, Shared};

/// One stored log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub labels: BTreeMap<String, String>,
    /// Unix nanoseconds, as the string that was pushed.
    pub ts: String,
    pub line: String,
    /// Structured metadata (the optional third element), empty if none.
    pub metadata: BTreeMap<String, String>,
}

/// A stream as pushed: its labels and its (timestamp, line) values.
pub type PushedStream = (BTreeMap<String, String>, Vec<(String, String)>);

/// One well-formed push request and how it was answered.
#[derive(Clone, Debug)]
pub struct Push {
    /// Request headers, names lowercased.
    pub headers: Vec<(String, String)>,
    pub streams: Vec<PushedStream>,
    pub status: u16,
}

impl Push {
    /// The value of request header `name` (lowercase), if it was sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every push request (well-formed or not) and its answer.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

type Rule = Arc<dyn Fn(&Entry) -> Option<(u16, String)> + Send + Sync>;

struct Scripted {
    status: u16,
    body: String,
    retry_after: Option<String>,
}

struct State {
    entries: Vec<Entry>,
    pushes: Vec<Push>,
    attempts: Vec<Attempt>,
    failures: VecDeque<Scripted>,
    rule: Option<Rule>,
    required: Vec<(String, String)>,
    /// Highest timestamp per stream (for "entry too far behind").
    highest: HashMap<BTreeMap<String, String>, i128>,
    validate_time: bool,
    /// Push requests wait unanswered while this is set (`hold`).
    hold: bool,
    /// Push requests waiting now.
    held: usize,
    /// How long each push takes before it is answered (`throttle`).
    latency: Duration,
}

/// The longest a held push waits for `release`.
const HOLD_MAX: Duration = Duration::from_secs(60);

/// The fake Loki. Stops on Drop.
pub struct FakeLoki {
    shared: Arc<Shared<State>>,
    http: HttpServer,
    tls: bool,
}

// Loki defaults (pkg/validation/limits.go, v3.7): 7d reject_old_samples_max_age, 10m
// creation_grace_period, 256KB max_line_size, 15 label names, max_chunk_age 2h / 2.
const MAX_AGE_NANOS: i128 = 7 * 24 * 3600 * 1_000_000_000;
const GRACE_NANOS: i128 = 10 * 60 * 1_000_000_000;
const MAX_LINE: usize = 256 * 1024;
const MAX_LABELS: usize = 15;
const BEHIND_NANOS: i128 = 3600 * 1_000_000_000;

/// Labels Loki takes `service_name` from, in order (discover_service_name default).
const SERVICE_LABELS: [&str; 13] = [
    "service",
    "app",
    "application",
    "app_name",
    "name",
    "app_kubernetes_io_name",
    "container",
    "container_name",
    "k8s_container_name",
    "component",
    "workload",
    "job",
    "k8s_job_name",
];

impl Drop for FakeLoki {
    /// A held push is answered, so that its handler does not outlive the test.
    fn drop(&mut self) {
        self.release();
    }
}

impl FakeLoki {
    /// Plain HTTP on 127.0.0.1.
    pub fn start() -> FakeLoki {
        FakeLoki::start_with(None)
    }

    /// HTTPS with the test PKI's server certificate.
    pub fn start_tls(pki: &TestPki) -> FakeLoki {
        FakeLoki::start_with(Some(pki.server_config(false)))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> FakeLoki {
        let is_tls = tls.is_some();
        let shared = Arc::new(Shared::new(State {
            entries: Vec::new(),
            pushes: Vec::new(),
            attempts: Vec::new(),
            failures: VecDeque::new(),
            rule: None,
            required: Vec::new(),
            highest: HashMap::new(),
            validate_time: true,
            hold: false,
            held: 0,
            latency: Duration::ZERO,
        }));
        let handler_shared = shared.clone();
        let http = HttpServer::start(
            tls,
            Arc::new(move |req: &Request, conn: &mut Conn| {
                let resp = handle(&handler_shared, req);
                let _ = conn.respond(resp);
            }),
        );
        FakeLoki {
            shared,
            http,
            tls: is_tls,
        }
    }

    /// `http://127.0.0.1:PORT` (or https for `start_tls`), without a path.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.http.port())
    }

    /// `url()` + `/loki/api/v1/push`.
    pub fn push_url(&self) -> String {
        format!("{}/loki/api/v1/push", self.url())
    }

    pub fn port(&self) -> u16 {
        self.http.port()
    }

    /// The next `n` push requests are answered `status` with `body` (a newline is added, as
    /// Go's http.Error does) and nothing is stored.
    pub fn fail_next(&self, n: usize, status: u16, body: &str, retry_after: Option<&str>) {
        self.shared.update(|s| {
            for _ in 0..n {
                s.failures.push_back(Scripted {
                    status,
                    body: body.to_string(),
                    retry_after: retry_after.map(str::to_string),
                });
            }
        });
    }

    /// Entries for which `rule` returns `Some((status, message))` are rejected. With a 400
    /// the other entries are stored (Loki's partial success); with any other status the whole
    /// push is rejected and nothing is stored. The body is the first rejection's message.
    pub fn set_rule(&self, rule: impl Fn(&Entry) -> Option<(u16, String)> + Send + Sync + 'static) {
        self.shared.update(|s| s.rule = Some(Arc::new(rule)));
    }

    pub fn clear_rule(&self) {
        self.shared.update(|s| s.rule = None);
    }

    /// Pushes must carry this header with this value. A missing or different
    /// `X-Scope-OrgID` gets 401 `no org id`; any other header 401 `Unauthorized`.
    pub fn require_header(&self, name: &str, value: &str) {
        self.shared.update(|s| {
            s.required
                .push((name.to_ascii_lowercase(), value.to_string()))
        });
    }

    /// Turns off the too old / too new / too far behind checks (they use the real clock).
    pub fn disable_time_checks(&self) {
        self.shared.update(|s| s.validate_time = false);
    }

    /// Push requests are held unanswered until `release` (at most a minute): a Loki that
    /// hangs. A held request's answer is decided when it is released (`fail_next` before
    /// `release` makes it fail, and nothing of it is stored).
    pub fn hold(&self) {
        self.shared.update(|s| s.hold = true);
    }

    /// Each push is answered `latency` after it arrived, as usual otherwise: a Loki that
    /// takes every push, slower than kube-event can read the watch.
    pub fn throttle(&self, latency: Duration) {
        self.shared.update(|s| s.latency = latency);
    }

    /// Answers the held push requests, and the next ones, as usual.
    pub fn release(&self) {
        self.shared.update(|s| s.hold = false);
    }

    /// Waits until `n` push requests are held.
    pub fn wait_for_held(&self, n: usize, timeout: Duration) {
        drop(self.shared.wait_until(
            timeout,
            &format!("{n} held pushes in FakeLoki"),
            |s| s.held >= n,
            describe,
        ));
    }

    /// Refuses connections (and cuts open ones) until `come_back`.
    pub fn go_away(&self) {
        self.http.go_away();
    }

    /// Listens again on the same port.
    pub fn come_back(&self) {
        self.http.come_back();
    }

    /// Every stored entry, in arrival order, duplicates included.
    pub fn entries(&self) -> Vec<Entry> {
        self.shared.lock().entries.clone()
    }

    /// Entries whose (labels, ts, line) was stored more than once: one per extra copy.
    pub fn duplicates(&self) -> Vec<Entry> {
        duplicates_of(&self.shared.lock().entries)
    }

    /// Well-formed push requests (successful, partially or wholly rejected by validation).
    pub fn pushes(&self) -> Vec<Push> {
        self.shared.lock().pushes.clone()
    }

    /// Every request to the push endpoint with its answer, including scripted failures.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.shared.lock().attempts.clone()
    }

    /// Number of pushes answered 204.
    pub fn push_count(&self) -> usize {
        self.shared
            .lock()
            .attempts
            .iter()
            .filter(|a| a.status == 204)
            .count()
    }

    /// Waits until at least `n` entries are stored; returns them all.
    pub fn wait_for_entries(&self, n: usize, timeout: Duration) -> Vec<Entry> {
        self.shared
            .wait_until(
                timeout,
                &format!("{n} entries in FakeLoki"),
                |s| s.entries.len() >= n,
                describe,
            )
            .entries
            .clone()
    }

    /// Waits until at least `n` push requests arrived (any answer); returns the attempts.
    pub fn wait_for_attempts(&self, n: usize, timeout: Duration) -> Vec<Attempt> {
        self.shared
            .wait_until(
                timeout,
                &format!("{n} push requests to FakeLoki"),
                |s| s.attempts.len() >= n,
                describe,
            )
            .attempts
            .clone()
    }
}

fn describe(s: &State) -> String {
    let answers: Vec<String> = s
        .attempts
        .iter()
        .map(|a| format!("  {} {}", a.status, a.body.trim_end()))
        .collect();
    format!(
        "{} entries stored; {} push requests answered:\n{}",
        s.entries.len(),
        s.attempts.len(),
        answers.join("\n")
    )
}

/// Entries seen more than once (same labels, ts and line): one per extra copy.
pub fn duplicates_of(entries: &[Entry]) -> Vec<Entry> {
    let mut seen = std::collections::HashSet::new();
    entries
        .iter()
        .filter(|e| !seen.insert((e.labels.clone(), e.ts.clone(), e.line.clone())))
        .cloned()
        .collect()
}

fn handle(shared: &Arc<Shared<State>>, req: &Request) -> Response {
    if req.path == "/ready" {
        return Response::with_body(200, "text/plain; charset=utf-8", "ready\n");
    }
    if req.path != "/loki/api/v1/push" {
        return Response::go_error(404, "404 page not found");
    }
    if req.method != "POST" {
        return Response::go_error(405, "Method Not Allowed");
    }
    let latency = shared.lock().latency;
    if !latency.is_zero() {
        // A slow Loki, not a synchronisation: the push is answered this much later.
        std::thread::sleep(latency);
    }
    {
        let mut s = shared.lock();
        if s.hold {
            s.held += 1;
            shared.cond.notify_all();
            s = shared
                .cond
                .wait_timeout_while(s, HOLD_MAX, |s| s.hold)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            s.held -= 1;
            shared.cond.notify_all();
        }
    }
    let (resp, push, stored) = {
        let mut s = shared.lock();
        answer(&mut s, req)
    };
    shared.update(|s| {
        s.entries.extend(stored);
        if let Some(p) = push {
            s.pushes.push(p);
        }
        s.attempts.push(Attempt {
            status: resp.status,
            body: String::from_utf8_lossy(&resp.body).into_owned(),
            headers: req.headers.clone(),
        });
    });
    resp
}

fn answer(s: &mut State, req: &Request) -> (Response, Option<Push>, Vec<Entry>) {
    for (name, value) in &s.required {
        if req.header(name) != Some(value.as_str()) {
            let text = if name == "x-scope-orgid" {
                "no org id"
            } else {
                "Unauthorized"
            };
            return (Response::go_error(401, text), None, Vec::new());
        }
    }
    if let Some(f) = s.failures.pop_front() {
        let mut resp = Response::go_error(f.status, &f.body);
        if let Some(ra) = f.retry_after {
            resp = resp.header("Retry-After", &ra);
        }
        return (resp, None, Vec::new());
    }
    let bad = |text: &str| (Response::go_error(400, text), None, Vec::new());
    // Gzipped JSON is accepted since Loki 2.2 (protocols.md 5.2); deflate too, not used here.
    // `snappy` is passed on: a protobuf body is snappy-decoded below, whatever the header says.
    let body: std::borrow::Cow<[u8]> = match req.header("content-encoding").unwrap_or("") {
        "" | "snappy" => std::borrow::Cow::Borrowed(&req.body),
        "gzip" => {
            use std::io::Read;
            let mut out = Vec::new();
            if let Err(e) = flate2::read::GzDecoder::new(&req.body[..]).read_to_end(&mut out) {
                return bad(&format!("gzip: {e}"));
            }
            std::borrow::Cow::Owned(out)
        }
        other => return bad(&format!("Content-Encoding \"{other}\" not supported")),
    };
    let content_type = req.header("content-type").unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if media.is_empty() {
        return bad("mime: no media type");
    }
    // Only `application/json` is JSON; anything else is snappy protobuf (protocols.md 5.2).
    let parsed = if media.eq_ignore_ascii_case("application/json") {
        parse_push(&body)
    } else {
        parse_protobuf_push(&body)
    };
    let parsed = match parsed {
        Ok(p) => p,
        Err(msg) => return bad(&msg),
    };
    // Loki's answer to a push without streams (protocols.md 5.3).
    if parsed.is_empty() {
        return (
            Response::go_error(
                422,
                "error at least one valid stream is required for ingestion",
            ),
            None,
            Vec::new(),
        );
    }
    let tenant = req.header("x-scope-orgid").unwrap_or("fake").to_string();
    let now = now_nanos();
    let mut stored = Vec::new();
    let mut errors: Vec<(u16, String)> = Vec::new();
    for (labels, values) in &parsed {
        let stream = stream_string(labels);
        if let Some((pos, ch)) = bad_label_char(labels) {
            errors.push((
                400,
                format!("couldn't parse labels: 1:{pos}: parse error: unexpected character inside braces: '{ch}'"),
            ));
            continue;
        }
        let names = labels.len() + usize::from(!labels.contains_key("service_name"));
        if names > MAX_LABELS {
            errors.push((
                400,
                format!("entry for stream '{stream}' has {names} label names; limit {MAX_LABELS}"),
            ));
            continue;
        }
        let total = values.len();
        let mut behind: Vec<(i128, i128)> = Vec::new();
        for (ts, line, metadata) in values {
            let nanos: i128 = ts.parse().unwrap_or(0);
            let entry = Entry {
                labels: labels.clone(),
                ts: ts.clone(),
                line: line.clone(),
                metadata: metadata.clone(),
            };
            if let Some(rule) = &s.rule {
                if let Some(rejection) = rule(&entry) {
                    errors.push(rejection);
                    continue;
                }
            }
            if line.len() > MAX_LINE {
                errors.push((400, format!("max entry size '{MAX_LINE}' bytes exceeded for stream '{stream}' while adding an entry with length '{}' bytes", line.len())));
                continue;
            }
            if s.validate_time {
                if nanos < now - MAX_AGE_NANOS {
                    errors.push((400, format!("entry for stream '{stream}' has timestamp too old: {}, oldest acceptable timestamp is: {}", rfc3339_secs(nanos), rfc3339_secs(now - MAX_AGE_NANOS))));
                    continue;
                }
                if nanos > now + GRACE_NANOS {
                    errors.push((
                        400,
                        format!(
                            "entry for stream '{stream}' has timestamp too new: {}",
                            rfc3339_secs(nanos)
                        ),
                    ));
                    continue;
                }
                let highest = s.highest.get(labels).copied().unwrap_or(i128::MIN);
                if highest != i128::MIN && nanos < highest - BEHIND_NANOS {
                    behind.push((nanos, highest - BEHIND_NANOS));
                    continue;
                }
                if nanos > highest {
                    s.highest.insert(labels.clone(), nanos);
                }
            }
            stored.push(entry);
        }
        if let Some((first, cutoff)) = behind.first() {
            errors.push((400, format!(
                "entry with timestamp {} ignored, reason: 'entry too far behind, entry timestamp is: {}, oldest acceptable timestamp is: {}',\nuser '{tenant}', total ignored: {} out of {total} for stream: {stream}",
                go_time_string(*first), rfc3339_secs(*first), rfc3339_secs(*cutoff), behind.len()
            )));
        }
    }
    let streams = parsed
        .iter()
        .map(|(l, v)| {
            (
                l.clone(),
                v.iter()
                    .map(|(t, line, _)| (t.clone(), line.clone()))
                    .collect(),
            )
        })
        .collect();
    let mut push = Push {
        headers: req.headers.clone(),
        streams,
        status: 204,
    };
    match errors.first() {
        None => (Response::new(204), Some(push), stored),
        Some((status, _)) => {
            let status = *status;
            let text: Vec<&str> = errors
                .iter()
                .filter(|(st, _)| *st == status)
                .map(|(_, m)| m.as_str())
                .collect();
            push.status = status;
            // A 400 is a partial success: the valid entries were written first.
            let kept = if status == 400 { stored } else { Vec::new() };
            (
                Response::go_error(status, &text.join("\n")),
                Some(push),
                kept,
            )
        }
    }
}

pub type ParsedStream = (
    BTreeMap<String, String>,
    Vec<(String, String, BTreeMap<String, String>)>,
);

/// Error text in the style of Loki's jsoniter decoder, with its context excerpts.
fn decoder_error(body: &[u8], at: usize, what: &str) -> String {
    let end = (at + 10).min(body.len());
    let near = String::from_utf8_lossy(&body[at.min(end)..end]).into_owned();
    let ctx_start = at.saturating_sub(40);
    let ctx_end = (at + 10).min(body.len());
    let bigger = String::from_utf8_lossy(&body[ctx_start..ctx_end]).into_owned();
    format!("loghttp.PushRequest.Streams: []loghttp.LogProtoStream: unmarshalerDecoder: {what}, error found in #10 byte of ...|{near}|..., bigger context ...|{bigger}|...")
}

fn parse_push(body: &[u8]) -> Result<Vec<ParsedStream>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        let at = e.column().min(body.len());
        decoder_error(body, at.saturating_sub(1), &format!("{e}"))
    })?;
    let streams = match v.get("streams") {
        Some(Value::Array(a)) => a.clone(),
        Some(Value::Null) | None => Vec::new(),
        Some(_) => return Err(
            "loghttp.PushRequest.Streams: []loghttp.LogProtoStream: decode slice: expect [ or n"
                .into(),
        ),
    };
    let find = |needle: &str| {
        let text = String::from_utf8_lossy(body);
        text.find(needle).unwrap_or(0)
    };
    let mut out = Vec::new();
    for stream in streams {
        let mut labels = BTreeMap::new();
        if let Some(obj) = stream.get("stream").and_then(Value::as_object) {
            for (k, val) in obj {
                let Some(text) = val.as_str() else {
                    return Err(decoder_error(body, find(k), "ReadString: expects \" or n"));
                };
                labels.insert(k.clone(), text.to_string());
            }
        }
        let mut values = Vec::new();
        for value in stream
            .get("values")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let arr = value.as_array().cloned().unwrap_or_default();
            let ts = match arr.first() {
                Some(Value::String(t)) => t.clone(),
                Some(other) => {
                    let text = other.to_string();
                    return Err(decoder_error(
                        body,
                        find(&text) + text.len(),
                        "Value looks like Number/Boolean/None, but can't find its end: ',' or '}' symbol",
                    ));
                }
                None => return Err("loghttp.PushRequest.Streams: []loghttp.LogProtoStream: unmarshalerDecoder: Value is array, but can't find closing ']' symbol".into()),
            };
            if ts.parse::<i64>().is_err() {
                return Err(format!("loghttp.PushRequest.Streams: []loghttp.LogProtoStream: unmarshalerDecoder: strconv.ParseInt: parsing \"{ts}\": invalid syntax"));
            }
            let line = match arr.get(1) {
                Some(Value::String(l)) => l.clone(),
                _ => {
                    return Err(decoder_error(
                        body,
                        find(&ts),
                        "Value is string, but can't find closing '\"' symbol",
                    ))
                }
            };
            let mut metadata = BTreeMap::new();
            if let Some(sm) = arr.get(2) {
                let Some(obj) = sm.as_object() else {
                    return Err(decoder_error(
                        body,
                        find(&line),
                        "Value is object, but can't find closing '}' symbol",
                    ));
                };
                for (k, val) in obj {
                    let Some(text) = val.as_str() else {
                        let at = find(&format!("\"{k}\"")) + k.len() + 4;
                        return Err(decoder_error(
                            body,
                            at,
                            "Value is string, but can't find closing '\"' symbol",
                        ));
                    };
                    metadata.insert(k.clone(), text.to_string());
                }
            }
            values.push((ts, line, metadata));
        }
        out.push((labels, values));
    }
    Ok(out)
}

/// A snappy-compressed protobuf `logproto.PushRequest` (Loki's `pkg/push/push.proto`: streams
/// = 1; a stream's labels = 1, entries = 2, hash = 3; an entry's timestamp = 1 {seconds = 1,
/// nanos = 2}, line = 2, structuredMetadata = 3 {name = 1, value = 2}), read with a decoder of
/// its own, not the product's.
pub fn parse_protobuf_push(body: &[u8]) -> Result<Vec<ParsedStream>, String> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|_| "snappy: corrupt input".to_string())?;
    let mut out = Vec::new();
    for (field, stream) in pb_fields(&raw)? {
        let PbValue::Bytes(stream) = stream else {
            continue;
        };
        if field != 1 {
            continue;
        }
        let mut labels = BTreeMap::new();
        let mut values = Vec::new();
        for (field, value) in pb_fields(stream)? {
            match (field, value) {
                (1, PbValue::Bytes(text)) => {
                    let text = std::str::from_utf8(text).map_err(|e| format!("proto: {e}"))?;
                    labels = parse_label_string(text)
                        .map_err(|e| format!("error parsing labels '{text}' with error: {e}"))?;
                }
                (2, PbValue::Bytes(entry)) => {
                    let (mut secs, mut nanos, mut line) = (0i64, 0i64, String::new());
                    let mut metadata = BTreeMap::new();
                    for (field, value) in pb_fields(entry)? {
                        match (field, value) {
                            (1, PbValue::Bytes(ts)) => {
                                for (field, value) in pb_fields(ts)? {
                                    match (field, value) {
                                        (1, PbValue::Varint(v)) => secs = v as i64,
                                        (2, PbValue::Varint(v)) => nanos = i64::from(v as i32),
                                        _ => {}
                                    }
                                }
                            }
                            (2, PbValue::Bytes(l)) => {
                                line = String::from_utf8(l.to_vec())
                                    .map_err(|e| format!("proto: line: {e}"))?;
                            }
                            (3, PbValue::Bytes(pair)) => {
                                let (mut name, mut value) = (String::new(), String::new());
                                for (field, v) in pb_fields(pair)? {
                                    if let PbValue::Bytes(b) = v {
                                        let b = String::from_utf8_lossy(b).into_owned();
                                        match field {
                                            1 => name = b,
                                            2 => value = b,
                                            _ => {}
                                        }
                                    }
                                }
                                metadata.insert(name, value);
                            }
                            _ => {}
                        }
                    }
                    let ts = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
                    values.push((ts.to_string(), line, metadata));
                }
                _ => {}
            }
        }
        out.push((labels, values));
    }
    Ok(out)
}

enum PbValue<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// The fields of one protobuf message, in order.
fn pb_fields(mut b: &[u8]) -> Result<Vec<(u64, PbValue<'_>)>, String> {
    fn varint(b: &mut &[u8]) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&c, rest) = b.split_first().ok_or("proto: unexpected EOF")?;
            *b = rest;
            v |= u64::from(c & 0x7f) << (7 * i);
            if c & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("proto: integer overflow".into())
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let value = match key & 7 {
            0 => PbValue::Varint(varint(&mut b)?),
            2 => {
                let n = varint(&mut b)? as usize;
                if n > b.len() {
                    return Err("proto: unexpected EOF".into());
                }
                let (v, rest) = b.split_at(n);
                b = rest;
                PbValue::Bytes(v)
            }
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                if n > b.len() {
                    return Err("proto: unexpected EOF".into());
                }
                b = &b[n..];
                PbValue::Other
            }
            w => return Err(format!("proto: illegal wireType {w}")),
        };
        out.push((key >> 3, value));
    }
    Ok(out)
}

/// `{a="1", b="2"}`: a stream's labels as a protobuf push carries them, values quoted as in
/// Go (`strconv.Unquote`).
pub fn parse_label_string(text: &str) -> Result<BTreeMap<String, String>, String> {
    let inner = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or("expected {…}")?;
    let mut labels = BTreeMap::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut name = String::new();
        while let Some(&c) = chars
            .peek()
            .filter(|c| c.is_ascii_alphanumeric() || **c == '_')
        {
            name.push(c);
            chars.next();
        }
        if name.is_empty() || chars.next() != Some('=') || chars.next() != Some('"') {
            return Err(format!("unexpected character after {name:?}"));
        }
        let mut value = String::new();
        loop {
            match chars.next().ok_or("unterminated string")? {
                '"' => break,
                '\\' => match chars.next().ok_or("unterminated escape")? {
                    'n' => value.push('\n'),
                    't' => value.push('\t'),
                    'r' => value.push('\r'),
                    'x' => {
                        let hex: String = chars.by_ref().take(2).collect();
                        let b = u8::from_str_radix(&hex, 16).map_err(|e| e.to_string())?;
                        value.push(char::from(b));
                    }
                    c @ ('"' | '\\') => value.push(c),
                    c => return Err(format!("unknown escape \\{c}")),
                },
                c => value.push(c),
            }
        }
        if labels.insert(name.clone(), value).is_some() {
            return Err(format!("duplicate label name {name}"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            Some(',') | None => {}
            Some(c) => return Err(format!("unexpected {c:?}")),
        }
    }
    Ok(labels)
}

/// `{a="1", b="2", service_name="x"}` as Loki prints streams in its errors.
fn stream_string(labels: &BTreeMap<String, String>) -> String {
    let mut all = labels.clone();
    if !all.contains_key("service_name") {
        let service = SERVICE_LABELS
            .iter()
            .find_map(|l| labels.get(*l))
            .cloned()
            .unwrap_or_else(|| "unknown_service".to_string());
        all.insert("service_name".into(), service);
    }
    label_string(&all)
}

fn label_string(labels: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", serde_json::to_string(v).expect("string")))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// Position (1-based, in the label string) and character of the first invalid label-name
/// character, as Loki's label parser reports it.
fn bad_label_char(labels: &BTreeMap<String, String>) -> Option<(usize, char)> {
    let mut offset = 1; // the '{'
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            offset += 2; // ", "
        }
        for (j, ch) in k.chars().enumerate() {
            let ok = ch == '_' || ch.is_ascii_alphabetic() || (j > 0 && ch.is_ascii_digit());
            if !ok {
                return Some((offset + j + 1, ch));
            }
        }
        offset += k.len() + 1 + serde_json::to_string(v).expect("string").len();
    }
    None
}
