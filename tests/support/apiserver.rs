//! A fake kube-apiserver serving core/v1 Events over HTTPS, answering like the recordings in
//! `shared/fixtures/apiserver/`: paged lists with a consistent snapshot and opaque continue
//! tokens, chunked watch streams of one JSON frame per line, the 200-then-ERROR answer to a
//! watch from a compacted resourceVersion, Status JSON for 401/403/404/410, and plain-text 429s.
//!
//! Tests drive it directly: `create`/`update`/`delete` change events (each change gets the next
//! integer resourceVersion and is kept in a history that watches replay), `compact` forgets
//! history, `end_watches`/`bookmark`/`inject_raw_frame` act on open watch streams, and
//! `fail_next` scripts failures. Every request is logged for assertions.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::http::{Conn, HttpServer, Request as HttpRequest, Response};
use super::pki::TestPki;
use super::util::{base64url_encode, now_nanos, rfc3339_micros, rfc3339_secs, Shared};

/// Who the fake lets in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <token>` must match.
    Token(String),
    /// A client certificate signed by the test CA must have been presented.
    ClientCert,
    /// Anybody.
    None,
}

/// Which requests a scripted failure applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// GET of a collection without `watch`.
    List,
    /// GET of a collection with `watch=1`/`watch=true`.
    Watch,
}

/// One logged request.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub authorization: Option<String>,
    pub client_cn: Option<String>,
    /// When the request arrived, to check backoff and Retry-After between requests.
    pub at: std::time::Instant,
    /// `Some(kind)` for collection GETs of events.
    pub kind: Option<Kind>,
    /// The status the fake answered with (200 for watches that started streaming).
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn is_watch(&self) -> bool {
        self.kind == Some(Kind::Watch)
    }

    pub fn is_list(&self) -> bool {
        self.kind == Some(Kind::List)
    }

    pub fn q(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

/// Plain-text body of an apiserver 429 (`http.Error` adds the newline).
pub const TOO_MANY_REQUESTS_BODY: &str = "Too many requests, please try again later.\n";

/// Message of the ERROR frame for a watch from a compacted resourceVersion (etcd path).
pub const WATCH_TOO_OLD_MESSAGE: &str = "The resourceVersion for the provided watch is too old.";

/// Message of the 410 for an expired continue token.
pub const CONTINUE_EXPIRED_MESSAGE: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

/// A `metav1.Status` failure in the apiserver's field order, compact, newline-terminated.
pub fn status_json(code: u16, reason: &str, message: &str, details_kind: Option<&str>) -> String {
    let details = match details_kind {
        Some(kind) => format!(r#","details":{{"kind":{}}}"#, js(kind)),
        None => String::new(),
    };
    format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":{},"reason":{}{details},"code":{code}}}"#,
        js(message),
        js(reason)
    ) + "\n"
}

/// The 403 message the apiserver writes for `user` lacking `verb` on events, cluster-wide
/// (`namespace: None`) or in a namespace.
pub fn forbidden_message(user: &str, verb: &str, namespace: Option<&str>) -> String {
    let scope = match namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    format!("events is forbidden: User \"{user}\" cannot {verb} resource \"events\" in API group \"\" {scope}")
}

/// The 403 Status body for [`forbidden_message`] (shape of fixtures/apiserver/resp-403.json).
pub fn forbidden_body(user: &str, verb: &str, namespace: Option<&str>) -> String {
    status_json(
        403,
        "Forbidden",
        &forbidden_message(user, verb, namespace),
        Some("events"),
    )
}

/// The exact ERROR frame line of fixtures/apiserver/watch-410.ndjson (without the newline).
pub fn watch_expired_frame() -> String {
    format!(
        r#"{{"type":"ERROR","object":{}}}"#,
        status_json(410, "Expired", WATCH_TOO_OLD_MESSAGE, None).trim_end()
    )
}

fn js(text: &str) -> String {
    serde_json::to_string(text).expect("string to JSON")
}

/// A scripted failure answer.
#[derive(Clone, Debug)]
struct Failure {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Failure {
    fn response(&self) -> Response {
        let mut resp = Response::new(self.status).body(self.body.clone());
        let has_ct = self
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if !has_ct {
            let ct = if self.body.trim_start().starts_with('{') {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
            resp = resp.header("Content-Type", ct);
            if ct.starts_with("text/plain") {
                resp = resp.header("X-Content-Type-Options", "nosniff");
            }
        }
        resp = resp.header("Cache-Control", "no-cache, private");
        for (k, v) in &self.headers {
            resp = resp.header(k, v);
        }
        resp
    }
}

/// What open watch streams are told, in order.
#[derive(Clone, Debug)]
enum LogItem {
    Change {
        rv: u64,
        typ: &'static str,
        object: Value,
    },
    Bookmark(u64),
    Raw(String),
    End,
}

struct Snapshot {
    rv: u64,
    items: Vec<Value>,
}

struct State {
    auth: Auth,
    rv: u64,
    events: BTreeMap<(String, String), Value>,
    log: Vec<LogItem>,
    compacted_rv: u64,
    snapshots: HashMap<u64, Snapshot>,
    next_snapshot: u64,
    failures: HashMap<KindKey, VecDeque<Failure>>,
    sticky: HashMap<KindKey, Failure>,
    pending_raw: Vec<String>,
    requests: Vec<Request>,
    open_watches: usize,
    watch_count: usize,
    stopped: bool,
    /// Set by `forbid_cluster_scope`: the user named here may not list or watch events across
    /// the cluster, only inside namespaces.
    cluster_forbidden_for: Option<String>,
}

#[derive(Clone, Copy, Hash, PartialEq, Eq)]
enum KindKey {
    List,
    Watch,
}

impl From<Kind> for KindKey {
    fn from(k: Kind) -> Self {
        match k {
            Kind::List => KindKey::List,
            Kind::Watch => KindKey::Watch,
        }
    }
}

/// The fake API server. Stops (refusing connections, ending watches) on Drop.
pub struct FakeApiServer {
    shared: Arc<Shared<State>>,
    http: HttpServer,
}

/// The resourceVersion `start` begins after.
pub const DEFAULT_START_RV: u64 = 1000;

static UID_COUNTER: AtomicU64 = AtomicU64::new(1);

/// A fresh uid in the usual 8-4-4-4-12 shape.
pub fn new_uid() -> String {
    let mut x = (now_nanos() as u64) ^ (u64::from(std::process::id()) << 32);
    x ^= UID_COUNTER
        .fetch_add(1, Ordering::SeqCst)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut next = || {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let (a, b) = (next(), next());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

impl FakeApiServer {
    /// Starts on 127.0.0.1 with TLS from `pki`; resourceVersions start after 1000.
    pub fn start(pki: &TestPki, auth: Auth) -> FakeApiServer {
        FakeApiServer::start_at(pki, auth, DEFAULT_START_RV)
    }

    /// Like `start`, with the current resourceVersion set to `rv` (the first change gets rv+1).
    pub fn start_at(pki: &TestPki, auth: Auth, rv: u64) -> FakeApiServer {
        let shared = Arc::new(Shared::new(State {
            auth,
            rv,
            events: BTreeMap::new(),
            log: Vec::new(),
            compacted_rv: 0,
            snapshots: HashMap::new(),
            next_snapshot: 1,
            failures: HashMap::new(),
            sticky: HashMap::new(),
            pending_raw: Vec::new(),
            requests: Vec::new(),
            open_watches: 0,
            watch_count: 0,
            stopped: false,
            cluster_forbidden_for: None,
        }));
        let handler_shared = shared.clone();
        let http = HttpServer::start(
            Some(pki.server_config_optional_client_auth()),
            Arc::new(move |req: &HttpRequest, conn: &mut Conn| handle(&handler_shared, req, conn)),
        );
        FakeApiServer { shared, http }
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.http.port())
    }

    pub fn port(&self) -> u16 {
        self.http.port()
    }

    pub fn set_auth(&self, auth: Auth) {
        self.shared.update(|s| s.auth = auth);
    }

    /// Switches to (or changes) token auth: only `token` is accepted from now on.
    pub fn set_token(&self, token: &str) {
        self.set_auth(Auth::Token(token.to_string()));
    }

    /// The current resourceVersion (of the last change, or the start value).
    pub fn resource_version(&self) -> String {
        self.shared.lock().rv.to_string()
    }

    /// Stores a new event (ADDED). Sets `metadata.resourceVersion`, and `uid` and
    /// `creationTimestamp` when missing; drops `kind`/`apiVersion`. Returns the new RV.
    pub fn create(&self, mut event: Value) -> String {
        let (ns, name) = key_of(&event);
        if event.get("kind").is_some() || event.get("apiVersion").is_some() {
            let obj = event.as_object_mut().expect("event is an object");
            obj.remove("kind");
            obj.remove("apiVersion");
        }
        self.shared.update(|s| {
            assert!(
                !s.events.contains_key(&(ns.clone(), name.clone())),
                "FakeApiServer::create: event {ns}/{name} already exists"
            );
            s.rv += 1;
            let rv = s.rv;
            let meta = event["metadata"].as_object_mut().expect("metadata object");
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
            if !meta.contains_key("uid") {
                meta.insert("uid".into(), Value::String(new_uid()));
            }
            if !meta.contains_key("creationTimestamp") {
                meta.insert(
                    "creationTimestamp".into(),
                    Value::String(rfc3339_secs(now_nanos())),
                );
            }
            s.events.insert((ns, name), event.clone());
            s.log.push(LogItem::Change {
                rv,
                typ: "ADDED",
                object: event,
            });
            rv.to_string()
        })
    }

    /// Changes a stored event with `f` (MODIFIED, new RV). Returns the new RV.
    pub fn update(&self, ns: &str, name: &str, f: impl FnOnce(&mut Value)) -> String {
        self.shared.update(|s| {
            let key = (ns.to_string(), name.to_string());
            let mut event = s
                .events
                .get(&key)
                .unwrap_or_else(|| panic!("FakeApiServer::update: no event {ns}/{name}"))
                .clone();
            f(&mut event);
            s.rv += 1;
            let rv = s.rv;
            event["metadata"]["resourceVersion"] = Value::String(rv.to_string());
            s.events.insert(key, event.clone());
            s.log.push(LogItem::Change {
                rv,
                typ: "MODIFIED",
                object: event,
            });
            rv.to_string()
        })
    }

    /// Removes a stored event (DELETED, carrying a new RV, as etcd does). Returns the new RV.
    pub fn delete(&self, ns: &str, name: &str) -> String {
        self.shared.update(|s| {
            let mut event = s
                .events
                .remove(&(ns.to_string(), name.to_string()))
                .unwrap_or_else(|| panic!("FakeApiServer::delete: no event {ns}/{name}"));
            s.rv += 1;
            let rv = s.rv;
            event["metadata"]["resourceVersion"] = Value::String(rv.to_string());
            s.log.push(LogItem::Change {
                rv,
                typ: "DELETED",
                object: event,
            });
            rv.to_string()
        })
    }

    /// A stored event, as the server holds it (no kind/apiVersion).
    pub fn get(&self, ns: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .events
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Forgets history before the current RV: a watch from an older RV gets 200 and the ERROR
    /// frame of fixtures/apiserver/watch-410.ndjson, then the stream ends.
    pub fn compact(&self) {
        self.shared.update(|s| s.compacted_rv = s.rv);
    }

    /// Makes every continue token handed out so far expire (next use: HTTP 410 Expired).
    pub fn expire_continue_tokens(&self) {
        self.shared.update(|s| s.snapshots.clear());
    }

    /// Sends a BOOKMARK at the current RV to the open watches.
    pub fn bookmark(&self) {
        self.shared.update(|s| {
            let rv = s.rv;
            s.log.push(LogItem::Bookmark(rv));
        });
    }

    /// Ends the open watch streams cleanly (final zero-length chunk, no frame).
    pub fn end_watches(&self) {
        self.shared.update(|s| s.log.push(LogItem::End));
    }

    /// The next watch line, sent verbatim (a newline is added): to the open watches, or if
    /// none is open, to the next watch once it has replayed its history.
    pub fn inject_raw_frame(&self, line: &str) {
        let line = line.trim_end_matches('\n').to_string();
        self.shared.update(|s| {
            if s.open_watches > 0 {
                s.log.push(LogItem::Raw(line));
            } else {
                s.pending_raw.push(line);
            }
        });
    }

    /// Answers the next request of `kind` with this instead (queued, one use each).
    /// Without a Content-Type header, one is chosen from the body (JSON or text/plain).
    pub fn fail_next(&self, kind: Kind, status: u16, headers: &[(&str, &str)], body: &str) {
        let failure = failure(status, headers, body);
        self.shared.update(|s| {
            s.failures
                .entry(kind.into())
                .or_default()
                .push_back(failure)
        });
    }

    /// Answers every request of `kind` with this until `clear_failures` (after queued ones).
    pub fn fail_always(&self, kind: Kind, status: u16, headers: &[(&str, &str)], body: &str) {
        let failure = failure(status, headers, body);
        self.shared.update(|s| {
            s.sticky.insert(kind.into(), failure);
        });
    }

    /// From now on `/api/v1/events` (list and watch) answers 403 as the real server does for
    /// `user` without cluster-wide RBAC; `/api/v1/namespaces/NS/events` still works.
    pub fn forbid_cluster_scope(&self, user: &str) {
        let user = user.to_string();
        self.shared.update(|s| s.cluster_forbidden_for = Some(user));
    }

    pub fn clear_failures(&self) {
        self.shared.update(|s| {
            s.failures.clear();
            s.sticky.clear();
        });
    }

    /// The apiserver's 429: `Retry-After: 1`, plain-text body.
    pub fn fail_next_429(&self, kind: Kind) {
        self.fail_next(kind, 429, &[("Retry-After", "1")], TOO_MANY_REQUESTS_BODY);
    }

    /// A Status JSON failure (e.g. 500 InternalError, 410 Expired, 403 Forbidden).
    pub fn fail_next_status(&self, kind: Kind, code: u16, reason: &str, message: &str) {
        self.fail_next(kind, code, &[], &status_json(code, reason, message, None));
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// The list requests so far (GET of a collection without `watch`), oldest first.
    pub fn lists(&self) -> Vec<Request> {
        let s = self.shared.lock();
        s.requests.iter().filter(|r| r.is_list()).cloned().collect()
    }

    /// Waits until `pred(log)` holds for the request log; returns the log. Panics after
    /// `timeout` listing every request received.
    pub fn wait_for_requests(
        &self,
        pred: impl Fn(&[Request]) -> bool,
        timeout: Duration,
    ) -> Vec<Request> {
        self.shared
            .wait_until(
                timeout,
                "FakeApiServer requests matching the test's predicate",
                |s| pred(&s.requests),
                |s| describe_requests(&s.requests),
            )
            .requests
            .clone()
    }

    /// Waits until at least `n` watch requests have arrived in total.
    pub fn wait_for_watches(&self, n: usize, timeout: Duration) {
        drop(self.shared.wait_until(
            timeout,
            &format!("{n} watch requests"),
            |s| s.watch_count >= n,
            |s| describe_requests(&s.requests),
        ));
    }

    /// Waits until at least `n` watch streams are open (replayed history, waiting for news).
    pub fn wait_for_open_watches(&self, n: usize, timeout: Duration) {
        drop(self.shared.wait_until(
            timeout,
            &format!("{n} open watch streams"),
            |s| s.open_watches >= n,
            |s| {
                format!(
                    "{} open; {}",
                    s.open_watches,
                    describe_requests(&s.requests)
                )
            },
        ));
    }

    /// Waits until no watch stream is open (the client hung up or the streams ended).
    pub fn wait_for_no_open_watches(&self, timeout: Duration) {
        drop(self.shared.wait_until(
            timeout,
            "all watch streams to close",
            |s| s.open_watches == 0,
            |s| format!("{} still open", s.open_watches),
        ));
    }

    /// Number of watch requests that got past auth and scripted failures.
    pub fn watch_count(&self) -> usize {
        self.shared.lock().watch_count
    }

    /// Number of watch streams currently open.
    pub fn open_watches(&self) -> usize {
        self.shared.lock().open_watches
    }

    /// Stops listening and cuts open connections (watches included); `come_back` listens
    /// again on the same port with the same state.
    pub fn go_away(&self) {
        self.http.go_away();
    }

    pub fn come_back(&self) {
        self.http.come_back();
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.update(|s| s.stopped = true);
        self.http.stop();
    }
}

fn failure(status: u16, headers: &[(&str, &str)], body: &str) -> Failure {
    Failure {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.to_string(),
    }
}

fn describe_requests(reqs: &[Request]) -> String {
    let lines: Vec<String> = reqs
        .iter()
        .map(|r| {
            let q: Vec<String> = r.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("  {} {} {} -> {}", r.method, r.path, q.join("&"), r.status)
        })
        .collect();
    format!("{} requests so far:\n{}", reqs.len(), lines.join("\n"))
}

fn key_of(event: &Value) -> (String, String) {
    let meta = &event["metadata"];
    let ns = meta["namespace"]
        .as_str()
        .expect("event needs metadata.namespace");
    let name = meta["name"].as_str().expect("event needs metadata.name");
    (ns.to_string(), name.to_string())
}

/// The object with `kind`/`apiVersion` first, as the apiserver writes watch objects.
fn with_kind(object: &Value) -> String {
    let body = serde_json::to_string(object).expect("event to JSON");
    let rest = body.strip_prefix('{').expect("object");
    if rest == "}" {
        r#"{"kind":"Event","apiVersion":"v1"}"#.to_string()
    } else {
        format!(r#"{{"kind":"Event","apiVersion":"v1",{rest}"#)
    }
}

fn frame(typ: &str, object: &Value) -> String {
    format!(r#"{{"type":"{typ}","object":{}}}"#, with_kind(object))
}

fn bookmark_frame(rv: u64) -> String {
    format!(
        r#"{{"type":"BOOKMARK","object":{{"kind":"Event","apiVersion":"v1","metadata":{{"resourceVersion":"{rv}"}}}}}}"#
    )
}

fn json_response(status: u16, body: String) -> Response {
    Response::with_body(status, "application/json", body)
        .header("Cache-Control", "no-cache, private")
}

/// Splits `/api/v1/events` and `/api/v1/namespaces/NS/events[/NAME]`.
enum Route {
    Collection(Option<String>),
    Item(String, String),
    Version,
    Other,
}

fn route(path: &str) -> Route {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match parts.as_slice() {
        ["", "api", "v1", "events"] => Route::Collection(None),
        ["", "api", "v1", "namespaces", ns, "events"] => Route::Collection(Some(ns.to_string())),
        ["", "api", "v1", "namespaces", ns, "events", name] => {
            Route::Item(ns.to_string(), name.to_string())
        }
        ["", "version"] => Route::Version,
        _ => Route::Other,
    }
}

fn is_true(v: Option<&str>) -> bool {
    matches!(v, Some("1") | Some("true"))
}

fn handle(shared: &Arc<Shared<State>>, req: &HttpRequest, conn: &mut Conn) {
    let route = route(&req.path);
    let kind = match &route {
        Route::Collection(_) if is_true(req.query_param("watch")) => Some(Kind::Watch),
        Route::Collection(_) => Some(Kind::List),
        _ => None,
    };
    let mut logged = Request {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.iter().cloned().collect(),
        authorization: req.header("authorization").map(str::to_string),
        client_cn: req.peer_cn.clone(),
        at: std::time::Instant::now(),
        kind,
        status: 0,
        headers: req.headers.clone(),
    };

    // Authentication, then scripted failures, then the real answer.
    let early: Option<Response> = {
        let mut s = shared.lock();
        let authed = match &s.auth {
            Auth::Token(t) => req.header("authorization") == Some(&format!("Bearer {t}")),
            Auth::ClientCert => req.peer_cn.is_some(),
            Auth::None => true,
        };
        let cluster_wide = matches!(route, Route::Collection(None));
        if !authed {
            Some(json_response(
                401,
                status_json(401, "Unauthorized", "Unauthorized", None),
            ))
        } else if let (true, Some(user)) = (cluster_wide, &s.cluster_forbidden_for) {
            let verb = if kind == Some(Kind::Watch) {
                "watch"
            } else {
                "list"
            };
            Some(json_response(403, forbidden_body(user, verb, None)))
        } else if let Some(kind) = kind {
            let key = KindKey::from(kind);
            let queued = s.failures.get_mut(&key).and_then(VecDeque::pop_front);
            queued
                .or_else(|| s.sticky.get(&key).cloned())
                .map(|f| f.response())
        } else {
            None
        }
    };
    if let Some(resp) = early {
        logged.status = resp.status;
        shared.update(|s| s.requests.push(logged));
        let _ = conn.respond(resp);
        return;
    }

    if req.method != "GET" {
        let resp = json_response(
            405,
            status_json(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
                None,
            ),
        );
        logged.status = 405;
        shared.update(|s| s.requests.push(logged));
        let _ = conn.respond(resp);
        return;
    }

    match route {
        Route::Collection(ns) if kind == Some(Kind::Watch) => {
            watch(shared, req, conn, ns, logged);
        }
        Route::Collection(ns) => {
            let resp = list(shared, req, ns);
            logged.status = resp.status;
            shared.update(|s| s.requests.push(logged));
            let _ = conn.respond(resp);
        }
        Route::Item(ns, name) => {
            let resp = match shared.lock().events.get(&(ns, name.clone())) {
                Some(ev) => json_response(200, with_kind(ev) + "\n"),
                None => json_response(
                    404,
                    status_json(
                        404,
                        "NotFound",
                        &format!("events \"{name}\" not found"),
                        Some("events"),
                    )
                    .replace(
                        r#""details":{"kind":"events"}"#,
                        &format!(r#""details":{{"name":{},"kind":"events"}}"#, js(&name)),
                    ),
                ),
            };
            logged.status = resp.status;
            shared.update(|s| s.requests.push(logged));
            let _ = conn.respond(resp);
        }
        Route::Version => {
            let body = json!({
                "major": "1", "minor": "36", "gitVersion": "v1.36.2",
                "goVersion": "go1.25.5", "compiler": "gc", "platform": "linux/amd64"
            });
            logged.status = 200;
            shared.update(|s| s.requests.push(logged));
            let _ = conn.respond(json_response(200, body.to_string() + "\n"));
        }
        Route::Other => {
            logged.status = 404;
            shared.update(|s| s.requests.push(logged));
            let _ = conn.respond(json_response(
                404,
                status_json(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                    None,
                )
                .replace(r#","code":404"#, r#","details":{},"code":404"#),
            ));
        }
    }
}

fn list(shared: &Arc<Shared<State>>, req: &HttpRequest, ns: Option<String>) -> Response {
    let limit: usize = match req.query_param("limit").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return json_response(
                400,
                status_json(
                    400,
                    "BadRequest",
                    "limit: Invalid value: must be an integer",
                    None,
                ),
            )
        }
    };
    let mut s = shared.lock();
    let (snap_id, offset) = match req.query_param("continue").filter(|c| !c.is_empty()) {
        Some(token) => match decode_continue(token) {
            Some((id, offset)) => (id, offset),
            None => {
                return json_response(
                    400,
                    status_json(
                        400,
                        "BadRequest",
                        "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
                        None,
                    ),
                )
            }
        },
        None => {
            let items: Vec<Value> = s
                .events
                .iter()
                .filter(|((n, _), _)| ns.as_deref().is_none_or(|want| want == n))
                .map(|(_, v)| v.clone())
                .collect();
            let id = s.next_snapshot;
            s.next_snapshot += 1;
            let rv = s.rv;
            s.snapshots.insert(id, Snapshot { rv, items });
            (id, 0)
        }
    };
    let Some(snap) = s.snapshots.get(&snap_id) else {
        return json_response(
            410,
            status_json(410, "Expired", CONTINUE_EXPIRED_MESSAGE, None),
        );
    };
    let total = snap.items.len();
    let start = offset.min(total);
    let end = if limit == 0 {
        total
    } else {
        (start + limit).min(total)
    };
    let page: Vec<String> = snap.items[start..end]
        .iter()
        .map(|v| serde_json::to_string(v).expect("item to JSON"))
        .collect();
    let mut meta = format!(r#"{{"resourceVersion":"{}""#, snap.rv);
    if end < total {
        let last = &snap.items[end - 1];
        let token = encode_continue(snap.rv, last, snap_id, end);
        meta.push_str(&format!(
            r#","continue":"{token}","remainingItemCount":{}"#,
            total - end
        ));
    } else {
        s.snapshots.remove(&snap_id);
    }
    meta.push('}');
    let body = format!(
        r#"{{"kind":"EventList","apiVersion":"v1","metadata":{meta},"items":[{}]}}"#,
        page.join(",")
    ) + "\n";
    json_response(200, body)
}

/// Opaque to clients; shaped like the real one (base64url JSON with rv and start key).
fn encode_continue(rv: u64, last: &Value, snap: u64, offset: usize) -> String {
    let start = format!(
        "{}/{}\u{0}",
        last["metadata"]["namespace"].as_str().unwrap_or(""),
        last["metadata"]["name"].as_str().unwrap_or("")
    );
    let token =
        json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start, "snap": snap, "off": offset});
    base64url_encode(token.to_string().as_bytes())
}

fn decode_continue(token: &str) -> Option<(u64, usize)> {
    let bytes = super::util::base64_decode(token)?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some((
        v["snap"].as_u64()?,
        usize::try_from(v["off"].as_u64()?).ok()?,
    ))
}

const WATCH_HEADERS: [(&str, &str); 2] = [
    ("Cache-Control", "no-cache, private"),
    ("Content-Type", "application/json"),
];

/// How often an idle watch checks whether its client went away.
const PEER_CHECK: Duration = Duration::from_millis(100);

fn watch(
    shared: &Arc<Shared<State>>,
    req: &HttpRequest,
    conn: &mut Conn,
    ns: Option<String>,
    mut logged: Request,
) {
    let in_ns = |obj: &Value| match &ns {
        Some(want) => obj["metadata"]["namespace"].as_str() == Some(want.as_str()),
        None => true,
    };
    let rv_param = req.query_param("resourceVersion").unwrap_or("");
    let from_rv: Option<u64> = match rv_param {
        "" | "0" => None,
        text => match text.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                let msg = format!("resourceVersion: Invalid value: \"{text}\": strconv.ParseUint: parsing \"{text}\": invalid syntax");
                logged.status = 400;
                shared.update(|s| s.requests.push(logged));
                let _ = conn.respond(json_response(
                    400,
                    status_json(400, "BadRequest", &msg, None),
                ));
                return;
            }
        },
    };
    if is_true(req.query_param("sendInitialEvents")) {
        let msg = "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled";
        logged.status = 422;
        shared.update(|s| s.requests.push(logged));
        let _ = conn.respond(json_response(422, status_json(422, "Invalid", msg, None)));
        return;
    }
    // Real servers pick [1800, 3600) s when unset; 1800 here (tests stop the fake anyway).
    let timeout = req
        .query_param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .unwrap_or(1800);
    let deadline = Instant::now() + Duration::from_secs(timeout);

    // Register and take the replay atomically, so no change is missed or sent twice.
    let (mut frames, mut cursor, expired) = {
        let mut s = shared.lock();
        logged.status = 200;
        s.requests.push(logged);
        s.watch_count += 1;
        let expired = from_rv.is_some_and(|rv| rv < s.compacted_rv);
        let mut frames = Vec::new();
        if !expired {
            match from_rv {
                Some(rv) => {
                    for item in &s.log {
                        if let LogItem::Change {
                            rv: crv,
                            typ,
                            object,
                        } = item
                        {
                            if *crv > rv && in_ns(object) {
                                frames.push(frame(typ, object));
                            }
                        }
                    }
                }
                // "Start at most recent" / "any": synthetic ADDED for the current state.
                None => {
                    for object in s.events.values().filter(|o| in_ns(o)) {
                        frames.push(frame("ADDED", object));
                    }
                }
            }
            frames.append(&mut s.pending_raw);
            s.open_watches += 1;
        }
        let cursor = s.log.len();
        shared.cond.notify_all();
        (frames, cursor, expired)
    };

    if conn.start_chunked(200, &WATCH_HEADERS).is_err() {
        if !expired {
            shared.update(|s| s.open_watches -= 1);
        }
        return;
    }
    if expired {
        let _ = conn.send_chunk(format!("{}\n", watch_expired_frame()).as_bytes());
        let _ = conn.finish_chunked();
        return;
    }

    let mut ok = true;
    'stream: loop {
        for f in frames.drain(..) {
            if conn.send_chunk(format!("{f}\n").as_bytes()).is_err() {
                break 'stream;
            }
        }
        let mut end = false;
        {
            let mut s = shared.lock();
            loop {
                if s.stopped {
                    ok = false;
                    break;
                }
                if s.log.len() > cursor {
                    for item in &s.log[cursor..] {
                        match item {
                            LogItem::Change { typ, object, .. } if in_ns(object) => {
                                frames.push(frame(typ, object))
                            }
                            LogItem::Change { .. } => {}
                            LogItem::Bookmark(rv) => frames.push(bookmark_frame(*rv)),
                            LogItem::Raw(line) => frames.push(line.clone()),
                            LogItem::End => {
                                end = true;
                                break;
                            }
                        }
                    }
                    cursor = s.log.len();
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    end = true;
                    break;
                }
                let wait = (deadline - now).min(PEER_CHECK);
                let (guard, _) = shared
                    .cond
                    .wait_timeout(s, wait)
                    .unwrap_or_else(|e| e.into_inner());
                s = guard;
                if s.log.len() == cursor && !s.stopped && conn.peer_closed() {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            break;
        }
        if end {
            for f in frames.drain(..) {
                if conn.send_chunk(format!("{f}\n").as_bytes()).is_err() {
                    break;
                }
            }
            let _ = conn.finish_chunked();
            break;
        }
    }
    shared.update(|s| s.open_watches -= 1);
}

// ---- event builders ----

/// Directory of the recorded fixtures (`../shared/fixtures` next to the crate).
pub fn fixtures_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

/// A fixture file as text, e.g. `fixture_text("apiserver/watch-410.ndjson")`; a bare file
/// name is also looked up in `apiserver/` and `loki/`.
pub fn fixture_text(name: &str) -> String {
    let dir = fixtures_dir();
    let path = [
        dir.join(name),
        dir.join("apiserver").join(name),
        dir.join("loki").join(name),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .unwrap_or_else(|| dir.join(name));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read fixture {path:?}: {e}"))
}

/// A JSON fixture, e.g. `fixture("apiserver/list-page1.json")`.
pub fn fixture(name: &str) -> Value {
    serde_json::from_str(&fixture_text(name))
        .unwrap_or_else(|e| panic!("parse fixture {name}: {e}"))
}

/// A legacy-recorder (core/v1) Event like those in list-page1.json: source, first/last
/// timestamps, count, a managedFields entry, `eventTime: null`. `last_ts` is a `metav1.Time`
/// (`2026-11-25T19:40:33Z`), also used as firstTimestamp and creationTimestamp.
pub fn core_event(
    ns: &str,
    name: &str,
    reason: &str,
    message: &str,
    count: u64,
    last_ts: &str,
) -> Value {
    let pod = name.split('.').next().unwrap_or(name);
    json!({
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": new_uid(),
            "creationTimestamp": last_ts,
            "managedFields": [{
                "manager": "kubelet",
                "operation": "Update",
                "apiVersion": "v1",
                "time": last_ts,
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:count": {}, "f:firstTimestamp": {}, "f:involvedObject": {},
                    "f:lastTimestamp": {}, "f:message": {}, "f:reason": {},
                    "f:source": {"f:component": {}, "f:host": {}}, "f:type": {}
                }
            }]
        },
        "involvedObject": {
            "kind": "Pod",
            "namespace": ns,
            "name": pod,
            "uid": new_uid(),
            "apiVersion": "v1",
            "fieldPath": format!("spec.containers{{{pod}}}")
        },
        "reason": reason,
        "message": message,
        "source": {"component": "kubelet", "host": "node-1"},
        "firstTimestamp": last_ts,
        "lastTimestamp": last_ts,
        "count": count,
        "type": "Warning",
        "eventTime": null,
        "reportingComponent": "",
        "reportingInstance": ""
    })
}

/// An events.k8s.io/v1 Event as seen through core/v1 (event-eventsv1-through-corev1.json):
/// first/lastTimestamp null, no count, empty source, `eventTime` (a MicroTime such as
/// `2026-11-25T19:40:35.215506Z`), reportingComponent/Instance, optional series.
pub fn events_v1_event(
    ns: &str,
    name: &str,
    event_time_micro: &str,
    series: Option<(u64, &str)>,
) -> Value {
    let regarding = name.split('.').next().unwrap_or(name);
    let created = event_time_micro
        .split('.')
        .next()
        .map(|s| format!("{}Z", s.trim_end_matches('Z')))
        .unwrap_or_default();
    let mut ev = json!({
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": new_uid(),
            "creationTimestamp": created,
            "managedFields": [{
                "manager": "deployment-controller",
                "operation": "Update",
                "apiVersion": "events.k8s.io/v1",
                "time": created,
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:action": {}, "f:eventTime": {}, "f:note": {}, "f:reason": {},
                    "f:regarding": {}, "f:reportingController": {}, "f:reportingInstance": {},
                    "f:type": {}
                }
            }]
        },
        "involvedObject": {
            "kind": "Deployment",
            "namespace": ns,
            "name": regarding,
            "apiVersion": "apps/v1"
        },
        "reason": "ScalingReplicaSet",
        "message": format!("Scaled up replica set {regarding}-7d9f8c6b5 to 3"),
        "source": {},
        "firstTimestamp": null,
        "lastTimestamp": null,
        "type": "Normal",
        "eventTime": event_time_micro,
        "action": "Scaling",
        "reportingComponent": "deployment-controller",
        "reportingInstance": "deployment-controller-node-1"
    });
    if let Some((count, last_observed)) = series {
        ev["series"] = json!({"count": count, "lastObservedTime": last_observed});
        ev["metadata"]["managedFields"][0]["fieldsV1"]["f:series"] =
            json!({".": {}, "f:count": {}, "f:lastObservedTime": {}});
    }
    ev
}

/// Now as a MicroTime, for `events_v1_event`.
pub fn now_micro() -> String {
    rfc3339_micros(now_nanos())
}
