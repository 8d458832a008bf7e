//! Exercises the fakes in `tests/support/` directly with ureq over real sockets and real TLS,
//! so that when a product test fails, the fakes are known to answer like the recordings in
//! `shared/fixtures/` and the failure is the product's.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::apiserver::{
    fixture_text, forbidden_body, watch_expired_frame, TOO_MANY_REQUESTS_BODY,
};
use support::pki::{CLIENT_EC_CN, CLIENT_RSA_CN};
use support::util::{base64_decode, base64_encode, now_nanos, parse_rfc3339, rfc3339_secs};
use support::*;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
use ureq::Agent;

const T: Duration = Duration::from_secs(5);

fn agent(ca_pem: &str, client: Option<(&str, &str)>) -> Agent {
    let ca = Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM");
    let client_cert = client.map(|(cert, key)| {
        let cert = Certificate::from_pem(cert.as_bytes()).expect("client cert PEM");
        let key = PrivateKey::from_pem(key.as_bytes()).expect("client key PEM");
        ClientCert::new_with_certs(&[cert], key)
    });
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::new_with_certs(&[ca]))
        .client_cert(client_cert)
        .build();
    Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(T))
        .build()
        .into()
}

fn plain_agent() -> Agent {
    Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(T))
        .build()
        .into()
}

fn get(agent: &Agent, url: &str, token: Option<&str>) -> (u16, Vec<(String, String)>, String) {
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp.body_mut().read_to_string().expect("body");
    (resp.status().as_u16(), headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn ev(ns: &str, name: &str) -> Value {
    core_event(
        ns,
        name,
        "BackOff",
        "Back-off restarting failed container",
        1,
        &rfc3339_secs(now_nanos()),
    )
}

#[test]
fn tls_verifies_against_ip_san() {
    let pki = TestPki::new();
    let api = FakeApiServer::start(&pki, Auth::None);
    assert!(api.url().starts_with("https://127.0.0.1:"));
    let (status, headers, body) = get(
        &agent(&pki.ca_pem, None),
        &format!("{}/api/v1/events", api.url()),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "EventList");
    assert_eq!(list["metadata"]["resourceVersion"], "1000");
    assert_eq!(list["items"], json!([]));
}

#[test]
fn wrong_ca_fails_verification() {
    let pki = TestPki::new();
    let api = FakeApiServer::start(&pki, Auth::None);
    let err = agent(&pki.other_ca_pem, None)
        .get(&format!("{}/api/v1/events", api.url()))
        .call()
        .expect_err("must not trust the server");
    let text = err.to_string();
    assert!(
        text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"),
        "{text}"
    );
}

#[test]
fn token_auth_answers_401_like_the_fixture() {
    let pki = TestPki::new();
    let api = FakeApiServer::start(&pki, Auth::Token("good".into()));
    let a = agent(&pki.ca_pem, None);
    let url = format!("{}/api/v1/events", api.url());
    let (status, headers, body) = get(&a, &url, Some("bad"));
    assert_eq!(status, 401);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got, fixture("apiserver/resp-401.json"));
    assert_eq!(got, fixture("resp-401.json"));
    assert_eq!(get(&a, &url, None).0, 401);
    assert_eq!(get(&a, &url, Some("good")).0, 200);

    api.set_token("rotated");
    assert_eq!(get(&a, &url, Some("good")).0, 401);
    assert_eq!(get(&a, &url, Some("rotated")).0, 200);
    let log = api.requests();
    assert_eq!(log.len(), 5);
    assert_eq!(log[0].authorization.as_deref(), Some("Bearer bad"));
    assert_eq!(log[0].status, 401);
    assert!(log[4].is_list());
}

#[test]
fn client_certs_ec_and_rsa_accepted_missing_and_foreign_rejected() {
    let pki = TestPki::new();
    assert!(pki
        .client_ec_key_pem
        .starts_with("-----BEGIN EC PRIVATE KEY-----"));
    assert!(pki
        .client_rsa_key_pem
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let api = FakeApiServer::start(&pki, Auth::ClientCert);
    let url = format!("{}/api/v1/events", api.url());

    let ec = agent(
        &pki.ca_pem,
        Some((&pki.client_ec_cert_pem, &pki.client_ec_key_pem)),
    );
    assert_eq!(get(&ec, &url, None).0, 200);
    let rsa = agent(
        &pki.ca_pem,
        Some((&pki.client_rsa_cert_pem, &pki.client_rsa_key_pem)),
    );
    assert_eq!(get(&rsa, &url, None).0, 200);
    let (status, _, body) = get(&agent(&pki.ca_pem, None), &url, None);
    assert_eq!(status, 401);
    assert!(body.contains(r#""reason":"Unauthorized""#), "{body}");

    let foreign = agent(
        &pki.ca_pem,
        Some((&pki.foreign_client_cert_pem, &pki.foreign_client_key_pem)),
    );
    assert!(
        foreign.get(&url).call().is_err(),
        "a foreign client cert must fail the handshake"
    );

    let cns: Vec<Option<String>> = api.requests().into_iter().map(|r| r.client_cn).collect();
    assert_eq!(
        cns,
        vec![
            Some(CLIENT_EC_CN.to_string()),
            Some(CLIENT_RSA_CN.to_string()),
            None
        ]
    );
}

#[test]
fn list_pages_share_one_snapshot_and_resource_version() {
    let pki = TestPki::new();
    let api = FakeApiServer::start(&pki, Auth::None);
    for name in ["c.3", "a.1", "b.2"] {
        api.create(ev("demo", name));
    }
    api.create(ev("other", "x.1"));
    let a = agent(&pki.ca_pem, None);
    let base = format!("{}/api/v1/namespaces/demo/events?limit=1", api.url());

    let page1: Value = serde_json::from_str(&get(&a, &base, None).2).unwrap();
    // A change after the first page must not show in the later pages.
    api.create(ev("demo", "a.0"));
    let c1 = page1["metadata"]["continue"].as_str().unwrap().to_string();
    let page2: Value =
        serde_json::from_str(&get(&a, &format!("{base}&continue={c1}"), None).2).unwrap();
    let c2 = page2["metadata"]["continue"].as_str().unwrap().to_string();
    let page3: Value =
        serde_json::from_str(&get(&a, &format!("{base}&continue={c2}"), None).2).unwrap();

    let fx1 = fixture("apiserver/list-page1.json");
    let fx2 = fixture("apiserver/list-page2.json");
    let keys = |v: &Value| {
        let mut k: Vec<String> = v["metadata"].as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&page1), keys(&fx1));
    assert_eq!(keys(&page3), keys(&fx2));
    for p in [&page1, &page2, &page3] {
        assert_eq!(p["kind"], "EventList");
        assert_eq!(p["apiVersion"], "v1");
        assert_eq!(p["metadata"]["resourceVersion"], "1004");
        assert_eq!(p["items"].as_array().unwrap().len(), 1);
        assert!(p["items"][0].get("kind").is_none());
        assert!(p["items"][0].get("apiVersion").is_none());
    }
    assert_eq!(page1["metadata"]["remainingItemCount"], 2);
    assert_eq!(page2["metadata"]["remainingItemCount"], 1);
    let names: Vec<&str> = [&page1, &page2, &page3]
        .iter()
        .map(|p| p["items"][0]["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a.1", "b.2", "c.3"]);
    assert!(base64_decode(&c1).is_some());

    // Expired continue token: 410 Status Expired.
    let again: Value = serde_json::from_str(&get(&a, &base, None).2).unwrap();
    api.expire_continue_tokens();
    let c = again["metadata"]["continue"].as_str().unwrap();
    let (status, _, body) = get(&a, &format!("{base}&continue={c}"), None);
    assert_eq!(status, 410);
    assert!(body.contains(r#""reason":"Expired""#), "{body}");
}

fn read_frames(reader: &mut impl BufRead) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    while reader.read_line(&mut line).expect("read watch line") > 0 {
        lines.push(line.trim_end().to_string());
        line.clear();
    }
    lines
}

#[test]
fn watch_replays_then_streams_live_and_ends_at_timeout() {
    let pki = TestPki::new();
    let api = FakeApiServer::start(&pki, Auth::None);
    let a = agent(&pki.ca_pem, None);
    let list: Value =
        serde_json::from_str(&get(&a, &format!("{}/api/v1/events", api.url()), None).2).unwrap();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    api.create(ev("demo", "web.1"));

    let url = format!(
        "{}/api/v1/events?watch=1&allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds=1",
        api.url()
    );
    let started = Instant::now();
    let mut resp = a.get(&url).call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers().get("transfer-encoding").unwrap(), "chunked");
    let mut reader = BufReader::new(resp.body_mut().as_reader());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    let added: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(added["type"], "ADDED");
    assert!(first.starts_with(r#"{"type":"ADDED","object":{"kind":"Event","apiVersion":"v1","#));
    assert_eq!(added["object"]["metadata"]["resourceVersion"], "1001");

    api.wait_for_open_watches(1, T);
    api.update("demo", "web.1", |e| {
        e["count"] = json!(2);
    });
    let rest = read_frames(&mut reader);
    let elapsed = started.elapsed();
    assert_eq!(rest.len(), 1, "{rest:?}");
    let modified: Value = serde_json::from_str(&rest[0]).unwrap();
    assert_eq!(modified["type"], "MODIFIED");
    assert_eq!(modified["object"]["count"], 2);
    assert_eq!(modified["object"]["metadata"]["resourceVersion"], "1002");
    assert_eq!(
        modified["object"]["metadata"]["uid"],
        added["object"]["metadata"]["uid"]
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );

    let log = api.requests();
    let w = log.iter().find(|r| r.is_watch()).unwrap();
    assert_eq!(w.q("timeoutSeconds"), Some("1"));
    assert_eq!(w.q("allowWatchBookmarks"), Some("true"));
    assert_eq!(api.watch_count(), 1);
    api.wait_for_no_open_watches(T);
    let lists = api.wait_for_requests(|r| r.iter().any(|r| r.is_list()), T);
    assert_eq!(lists[0].q("watch"), None);
}

#[test]
fn watch_from_compacted_rv_gets_the_fixture_error_frame() {
    let pki = TestPki::new();
    let api = FakeApiServer::start(&pki, Auth::None);
    api.create(ev("demo", "a.1"));
    api.create(ev("demo", "a.2"));
    api.compact();
    let url = format!(
        "{}/api/v1/events?watch=true&resourceVersion=1001",
        api.url()
    );
    let (status, headers, body) = get(&agent(&pki.ca_pem, None), &url, None);
    assert_eq!(status, 200);
    let fx_headers = fixture_text("apiserver/watch-410.headers.txt");
    for line in fx_headers.lines().skip(1).filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(": ").unwrap();
        assert_eq!(header(&headers, k), Some(v), "header {k}");
    }
    assert_eq!(body, fixture_text("apiserver/watch-410.ndjson"));
    assert_eq!(body, format!("{}\n", watch_expired_frame()));
    // From the compaction point itself, the watch is fine.
    let (status, _, body) = get(
        &agent(&pki.ca_pem, None),
        &format!(
            "{}/api/v1/events?watch=1&resourceVersion=1002&timeoutSeconds=1",
            api.url()
        ),
        None,
    );
    assert_eq!((status, body.as_str()), (200, ""));
}

#[test]
fn bookmark_raw_frame_and_end_watches_reach_open_streams() {
    let pki = TestPki::new();
    let api = FakeApiServer::start(&pki, Auth::None);
    let a = agent(&pki.ca_pem, None);
    let url = format!(
        "{}/api/v1/namespaces/demo/events?watch=1&resourceVersion=1000",
        api.url()
    );
    let mut resp = a.get(&url).call().unwrap();
    api.wait_for_open_watches(1, T);
    api.create(ev("elsewhere", "x.1")); // other namespace: not sent
    api.bookmark();
    api.inject_raw_frame("this is not json");
    api.end_watches();
    let frames = read_frames(&mut BufReader::new(resp.body_mut().as_reader()));
    assert_eq!(
        frames,
        vec![
            r#"{"type":"BOOKMARK","object":{"kind":"Event","apiVersion":"v1","metadata":{"resourceVersion":"1001"}}}"#.to_string(),
            "this is not json".to_string(),
        ]
    );
    api.wait_for_no_open_watches(T);
    assert_eq!(api.requests().len(), 1);
}

#[test]
fn scripted_failures_429_and_403() {
    let pki = TestPki::new();
    let api = FakeApiServer::start(&pki, Auth::None);
    let a = agent(&pki.ca_pem, None);
    api.fail_next_429(Kind::List);
    api.fail_next(
        Kind::List,
        403,
        &[],
        &forbidden_body("events-exporter", "list", None),
    );
    let url = format!("{}/api/v1/events?limit=500", api.url());
    let (status, headers, body) = get(&a, &url, None);
    assert_eq!(status, 429);
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(body, TOO_MANY_REQUESTS_BODY);
    let (status, _, body) = get(&a, &url, None);
    assert_eq!(status, 403);
    let got: Value = serde_json::from_str(&body).unwrap();
    let mut want = fixture("apiserver/resp-403.json");
    want["message"] = json!("events is forbidden: User \"events-exporter\" cannot list resource \"events\" in API group \"\" at the cluster scope");
    want["details"]["kind"] = json!("events");
    assert_eq!(got, want);
    assert_eq!(get(&a, &url, None).0, 200);
}

// ---- Loki ----

fn push(
    agent: &Agent,
    url: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, String, Vec<(String, String)>) {
    let mut req = agent.post(url);
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    let mut resp = req
        .send(body.as_bytes())
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    (
        resp.status().as_u16(),
        resp.body_mut().read_to_string().unwrap(),
        headers,
    )
}

fn body(ts: &str, line: &str) -> String {
    json!({"streams": [{"stream": {"job": "kube-event", "namespace": "demo"}, "values": [[ts, line]]}]}).to_string()
}

#[test]
fn loki_records_pushes_and_rejects_like_loki() {
    let loki = FakeLoki::start();
    let a = plain_agent();
    let ts = now_nanos().to_string();
    let (status, text, _) = push(
        &a,
        &loki.push_url(),
        Some("application/json"),
        &body(&ts, "hello"),
    );
    assert_eq!((status, text.as_str()), (204, ""));
    let entries = loki.wait_for_entries(1, T);
    assert_eq!(entries[0].line, "hello");
    assert_eq!(entries[0].ts, ts);
    assert_eq!(entries[0].labels["namespace"], "demo");
    assert_eq!(
        loki.pushes()[0].streams[0].1,
        vec![(ts.clone(), "hello".to_string())]
    );

    let (status, text, _) = push(&a, &loki.push_url(), None, &body(&ts, "x"));
    assert_eq!((status, text.as_str()), (400, "mime: no media type\n"));
    let numeric = format!(r#"{{"streams":[{{"stream":{{"job":"x"}},"values":[[{ts},"n"]]}}]}}"#);
    let (status, text, _) = push(&a, &loki.push_url(), Some("application/json"), &numeric);
    assert_eq!(status, 400);
    assert!(
        text.contains("Value looks like Number/Boolean/None"),
        "{text}"
    );

    // Same entry twice: both answered 204, both recorded, reported as a duplicate.
    push(
        &a,
        &loki.push_url(),
        Some("application/json; charset=utf-8"),
        &body(&ts, "hello"),
    );
    assert_eq!(loki.duplicates().len(), 1);
    assert_eq!(loki.push_count(), 2);

    // Too old (8 days) is a 400 naming the stream with service_name.
    let old = (now_nanos() - 8 * 86_400 * 1_000_000_000).to_string();
    let (status, text, _) = push(
        &a,
        &loki.push_url(),
        Some("application/json"),
        &body(&old, "old"),
    );
    assert_eq!(status, 400);
    assert!(
        text.starts_with(r#"entry for stream '{job="kube-event", namespace="demo", service_name="kube-event"}' has timestamp too old: "#),
        "{text}"
    );
    let t = text
        .split("too old: ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    assert!(parse_rfc3339(t).is_some(), "{t}");
}

/// A protobuf `PushRequest` of one stream, written by hand (push.proto's field numbers).
fn protobuf_push(labels: &str, secs: u64, nanos: u64, line: &str) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, key: u8, bytes: &[u8]) {
        out.push(key);
        let mut n = bytes.len();
        while n >= 0x80 {
            out.push(n as u8 | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(bytes);
    }
    fn varint(out: &mut Vec<u8>, key: u8, mut v: u64) {
        out.push(key);
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut ts = Vec::new();
    varint(&mut ts, 0x08, secs);
    varint(&mut ts, 0x10, nanos);
    let mut entry = Vec::new();
    field(&mut entry, 0x0a, &ts);
    field(&mut entry, 0x12, line.as_bytes());
    let mut stream = Vec::new();
    field(&mut stream, 0x0a, labels.as_bytes());
    field(&mut stream, 0x12, &entry);
    let mut req = Vec::new();
    field(&mut req, 0x0a, &stream);
    req
}

#[test]
fn loki_reads_snappy_protobuf_like_loki() {
    let loki = FakeLoki::start();
    let a = plain_agent();
    let post = |content_type: &str, body: &[u8]| {
        let mut resp = a
            .post(&loki.push_url())
            .header("Content-Type", content_type)
            .header("Content-Encoding", "snappy")
            .send(body)
            .unwrap();
        (
            resp.status().as_u16(),
            resp.body_mut().read_to_string().unwrap(),
        )
    };
    let now = now_nanos() as u64;
    let (secs, nanos) = (now / 1_000_000_000, now % 1_000_000_000);
    let raw = protobuf_push(
        r#"{job="kube-event", namespace="de\"mo"}"#,
        secs,
        nanos,
        "a line",
    );
    let body = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
    assert_eq!(post("application/x-protobuf", &body), (204, String::new()));
    let entries = loki.wait_for_entries(1, T);
    assert_eq!(entries[0].line, "a line");
    assert_eq!(entries[0].ts, now.to_string());
    assert_eq!(entries[0].labels["namespace"], "de\"mo");
    // Not snappy, or not protobuf, or labels Loki cannot parse: 400.
    let (status, text) = post("application/x-protobuf", &raw);
    assert_eq!((status, text.as_str()), (400, "snappy: corrupt input\n"));
    let cut = snap::raw::Encoder::new()
        .compress_vec(&raw[..raw.len() - 3])
        .unwrap();
    let (status, text) = post("application/x-protobuf", &cut);
    assert_eq!(status, 400);
    assert!(text.starts_with("proto: "), "{text}");
    let bad = protobuf_push("{job=kube-event}", secs, nanos, "x");
    let (status, text) = post(
        "application/x-protobuf",
        &snap::raw::Encoder::new().compress_vec(&bad).unwrap(),
    );
    assert_eq!(status, 400);
    assert!(
        text.starts_with("error parsing labels '{job=kube-event}' with error"),
        "{text}"
    );
    assert_eq!(loki.entries().len(), 1);
}

#[test]
fn loki_scripted_failures_rule_and_tenant() {
    let loki = FakeLoki::start();
    let a = plain_agent();
    let ts = now_nanos().to_string();
    loki.fail_next(1, 500, "internal", None);
    loki.fail_next(
        1,
        429,
        "ingestion rate limit exceeded for user fake",
        Some("3"),
    );
    let (status, text, _) = push(
        &a,
        &loki.push_url(),
        Some("application/json"),
        &body(&ts, "a"),
    );
    assert_eq!((status, text.as_str()), (500, "internal\n"));
    let (status, _, headers) = push(
        &a,
        &loki.push_url(),
        Some("application/json"),
        &body(&ts, "a"),
    );
    assert_eq!(status, 429);
    assert_eq!(header(&headers, "retry-after"), Some("3"));
    assert_eq!(
        push(
            &a,
            &loki.push_url(),
            Some("application/json"),
            &body(&ts, "a")
        )
        .0,
        204
    );
    assert_eq!(loki.entries().len(), 1);
    assert_eq!(loki.attempts().len(), 3);

    // Partial success: the good entry is stored, the bad one named in a 400.
    loki.set_rule(|e| (e.line == "bad").then(|| (400, "bad line".to_string())));
    let mixed =
        json!({"streams": [{"stream": {"job": "j"}, "values": [[ts, "good"], [ts, "bad"]]}]})
            .to_string();
    let (status, text, _) = push(&a, &loki.push_url(), Some("application/json"), &mixed);
    assert_eq!((status, text.as_str()), (400, "bad line\n"));
    let lines: Vec<String> = loki.entries().into_iter().map(|e| e.line).collect();
    assert_eq!(lines, ["a", "good"]);

    loki.require_header("X-Scope-OrgID", "tenant-1");
    let (status, text, _) = push(
        &a,
        &loki.push_url(),
        Some("application/json"),
        &body(&ts, "t"),
    );
    assert_eq!((status, text.as_str()), (401, "no org id\n"));
    let mut resp = a
        .post(&loki.push_url())
        .header("Content-Type", "application/json")
        .header("X-Scope-OrgID", "tenant-1")
        .send(body(&ts, "t").as_bytes())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(resp.body_mut().read_to_string().unwrap(), "");
    let last = loki.pushes().pop().unwrap();
    assert!(last
        .headers
        .contains(&("x-scope-orgid".to_string(), "tenant-1".to_string())));
}

#[test]
fn loki_goes_away_and_comes_back_on_the_same_port() {
    let loki = FakeLoki::start();
    let a = plain_agent();
    let ts = now_nanos().to_string();
    let url = loki.push_url();
    assert_eq!(
        push(&a, &url, Some("application/json"), &body(&ts, "1")).0,
        204
    );
    loki.go_away();
    let addr = format!("127.0.0.1:{}", loki.port());
    let refused = TcpStream::connect(&addr).expect_err("connection must be refused");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(a
        .post(&url)
        .header("Content-Type", "application/json")
        .send(body(&ts, "2").as_bytes())
        .is_err());
    loki.come_back();
    assert_eq!(
        push(&a, &url, Some("application/json"), &body(&ts, "3")).0,
        204
    );
    let lines: Vec<String> = loki
        .wait_for_entries(2, T)
        .into_iter()
        .map(|e| e.line)
        .collect();
    assert_eq!(lines, ["1", "3"]);
}

#[test]
fn loki_over_tls() {
    let pki = TestPki::new();
    let loki = FakeLoki::start_tls(&pki);
    assert!(loki.url().starts_with("https://127.0.0.1:"));
    let ts = now_nanos().to_string();
    let a = agent(&pki.ca_pem, None);
    assert_eq!(
        push(
            &a,
            &loki.push_url(),
            Some("application/json"),
            &body(&ts, "tls")
        )
        .0,
        204
    );
}

// ---- PKI, kubeconfig, process harness ----

#[test]
fn pki_files_and_kubeconfig_text() {
    let pki = TestPki::new();
    let dir = TempDir::new();
    let files = pki.write_to(dir.path());
    assert_eq!(
        std::fs::read_to_string(&files.client_rsa_key).unwrap(),
        pki.client_rsa_key_pem
    );
    let yaml = kubeconfig_yaml(
        "https://127.0.0.1:6443",
        CaRef::Data(&pki.ca_pem),
        UserAuth::CertPaths {
            cert: &files.client_ec_cert,
            key: &files.client_ec_key,
        },
    );
    assert!(yaml.contains(&format!(
        "certificate-authority-data: {}",
        base64_encode(pki.ca_pem.as_bytes())
    )));
    assert!(yaml.contains("current-context: kubernetes-admin@kubernetes"));
    assert!(yaml.contains("client-key: \""));
    let yaml = kubeconfig_yaml(
        "https://x",
        CaRef::InsecureSkipVerify,
        UserAuth::Token("abc"),
    );
    assert!(yaml.contains("insecure-skip-tls-verify: true") && yaml.contains("token: \"abc\""));
    assert_eq!(
        base64_decode(&base64_encode(b"any carnal pleas")).unwrap(),
        b"any carnal pleas"
    );
    let kept = dir.path().to_path_buf();
    drop(dir);
    assert!(!kept.exists());
}

#[test]
fn binary_harness_captures_output_and_exit() {
    let dir = TempDir::new();
    let conf = write_conf(dir.path(), &[("LOKI_URL", "http://127.0.0.1:9")]);
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "LOKI_URL=http://127.0.0.1:9\n"
    );
    // Whatever the CLI grows into, an unknown flag makes it exit promptly.
    let proc = KubeEvent::spawn_args(dir.path(), &[], &["--no-such-flag-for-selftest"]);
    let status = proc.wait_exit(Duration::from_secs(10));
    assert!(status.code().is_some(), "{status:?}");
    assert!(proc.output_dir().join("stderr.txt").exists());
}

#[test]
fn watch_notices_a_client_that_hangs_up() {
    let pki = TestPki::new();
    let api = FakeApiServer::start(&pki, Auth::None);
    let a = agent(&pki.ca_pem, None);
    let url = format!("{}/api/v1/events?watch=1&resourceVersion=1000", api.url());
    let resp = a.get(&url).call().unwrap();
    api.wait_for_open_watches(1, T);
    drop(resp);
    api.wait_for_no_open_watches(T);
    assert_eq!(api.watch_count(), 1);
}
