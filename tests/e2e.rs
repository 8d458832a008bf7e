//! The real `kube-event` binary against the fake API server and the fake Loki, over real
//! sockets and real TLS: one test per promise of the core issue. Each waits for conditions
//! with deadlines; none sleeps to synchronize.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use support::apiserver::now_micro;
use support::rig::{Rig, TOKEN};
use support::util::{now_nanos, rfc3339_secs};
use support::*;

const T: Duration = Duration::from_secs(20);

fn now_secs() -> String {
    rfc3339_secs(now_nanos())
}

fn parse_line(e: &Entry) -> Value {
    serde_json::from_str(&e.line)
        .unwrap_or_else(|err| panic!("line is not JSON ({err}): {}", e.line))
}

fn lines_for<'a>(entries: &'a [Entry], event_name: &str) -> Vec<&'a Entry> {
    entries
        .iter()
        .filter(|e| parse_line(e)["event_name"] == event_name)
        .collect()
}

fn assert_no_duplicates(loki: &FakeLoki) {
    let d = loki.duplicates();
    assert!(
        d.is_empty(),
        "Loki received {} entries twice: {:?}",
        d.len(),
        d.first()
    );
}

/// Creates `n` events named `prefix-i` in namespace `ns`.
fn create_events(api: &FakeApiServer, ns: &str, prefix: &str, n: usize) {
    let ts = now_secs();
    for i in 0..n {
        api.create(core_event(
            ns,
            &format!("{prefix}-{i}.x"),
            "BackOff",
            &format!("restart {i}"),
            1,
            &ts,
        ));
    }
}

#[test]
fn lists_every_page_then_watches_and_ships_each_event_once() {
    let rig = Rig::new();
    // 1001 events: three pages of 500.
    create_events(&rig.api, "demo", "web", 1001);
    let ke = rig.start(&[]);
    let entries = rig.loki.wait_for_entries(1001, T);
    rig.api.wait_for_watches(1, T);
    let reqs = rig.api.requests();
    let lists: Vec<_> = reqs.iter().filter(|r| r.is_list()).collect();
    assert_eq!(lists.len(), 3, "{lists:?}");
    assert!(
        lists.iter().all(|r| r.q("limit") == Some("500")),
        "{lists:?}"
    );
    assert!(lists[0].q("continue").is_none() && lists[1].q("continue").is_some());
    let watch = reqs.iter().find(|r| r.is_watch()).unwrap();
    assert_eq!(watch.q("allowWatchBookmarks"), Some("true"));
    let timeout: u64 = watch.q("timeoutSeconds").unwrap().parse().unwrap();
    assert!(timeout > 0 && timeout <= 290, "{timeout}");
    assert_eq!(
        watch.q("resourceVersion"),
        Some(rig.api.resource_version().as_str())
    );
    assert_eq!(watch.path, "/api/v1/events");
    assert!(reqs
        .iter()
        .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {TOKEN}")[..])));
    // No gzip asked for: an API server gzips list pages over 128 KiB for a client that
    // accepts it, which next to it costs both sides CPU and saves nothing (kubernetes#80919).
    let asked: Vec<_> = reqs
        .iter()
        .flat_map(|r| &r.headers)
        .filter(|(k, _)| k.eq_ignore_ascii_case("accept-encoding"))
        .collect();
    assert!(asked.is_empty(), "{asked:?}");

    // Then a new event through the watch.
    create_events(&rig.api, "other", "db", 1);
    let entries2 = rig.loki.wait_for_entries(1002, T);
    assert_eq!(lines_for(&entries2, "db-0.x").len(), 1);
    assert_eq!(entries.len(), 1001);
    assert_no_duplicates(&rig.loki);
    ke.sigterm();
    assert!(ke.wait_exit(T).success());
    // The complete log, after exit.
    let stderr = ke.stderr_text();
    assert!(!stderr.contains(TOKEN), "the token reached the log");
}

#[test]
fn line_labels_and_timestamp_are_those_of_the_occurrence() {
    let rig = Rig::new();
    let ts = now_secs();
    rig.api.create(core_event(
        "demo",
        "web-0.a",
        "BackOff",
        "Back-off \"restarting\" web",
        3,
        &ts,
    ));
    let _ke = rig.start(&[("LABELS", "cluster=prod,region=eu-1")]);
    let e = &rig.loki.wait_for_entries(1, T)[0];
    let want: BTreeMap<String, String> = [
        ("job", "kube-event"),
        ("cluster", "prod"),
        ("region", "eu-1"),
        ("namespace", "demo"),
        ("kind", "Pod"),
        ("type", "Warning"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(e.labels, want);
    assert_eq!(
        e.ts,
        (support::util::parse_rfc3339(&ts).unwrap()).to_string()
    );
    let v = parse_line(e);
    // serde_json sorts keys: read their order from the raw line.
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort_by_key(|k| e.line.find(&format!("\"{k}\":")).unwrap());
    assert_eq!(keys, support::schema::LINE_KEYS);
    assert_eq!(v["time"], ts.as_str());
    assert_eq!(v["message"], "Back-off \"restarting\" web");
    assert_eq!(v["count"], 3);
    assert_eq!(v["component"], "kubelet");
}

#[test]
fn an_events_k8s_io_event_gets_its_event_time() {
    let rig = Rig::new();
    let t = now_micro();
    rig.api
        .create(events_v1_event("demo", "web.scaled1", &t, None));
    let _ke = rig.start(&[]);
    let e = &rig.loki.wait_for_entries(1, T)[0];
    let want = support::util::parse_rfc3339(&t).unwrap();
    assert_eq!(e.ts, want.to_string(), "microseconds kept");
    assert_ne!(want % 1_000_000_000, 0, "the test needs a fractional time");
    let v = parse_line(e);
    assert_eq!(v["time"], t.as_str());
    assert_eq!(v["count"], 1);
    assert_eq!(v["component"], "deployment-controller");
    assert_eq!(v["host"], "deployment-controller-node-1");
    assert_eq!(e.labels["kind"], "Deployment");
}

#[test]
fn a_modified_repeat_ships_a_new_line_and_an_invisible_change_ships_none() {
    let rig = Rig::new();
    let t1 = now_secs();
    rig.api
        .create(core_event("demo", "web-0.a", "BackOff", "back-off", 1, &t1));
    let t = now_micro();
    rig.api
        .create(events_v1_event("demo", "web.s", &t, Some((2, &t))));
    let ke = rig.start(&[]);
    rig.loki.wait_for_entries(2, T);
    rig.api.wait_for_open_watches(1, T);

    // Only managedFields and an annotation change: nothing a user can see.
    rig.api.update("demo", "web-0.a", |ev| {
        ev["metadata"]["annotations"] = json!({"touched": "yes"});
    });
    // A repeat: count 2, a later lastTimestamp.
    let t2 = rfc3339_secs(now_nanos() + 2_000_000_000);
    rig.api.update("demo", "web-0.a", |ev| {
        ev["count"] = json!(2);
        ev["lastTimestamp"] = json!(t2);
    });
    // A series repeat of the events.k8s.io event.
    let t3 = support::util::rfc3339_micros(now_nanos() + 3_000_000_000);
    rig.api.update("demo", "web.s", |ev| {
        ev["series"] = json!({"count": 3, "lastObservedTime": t3});
    });
    let entries = rig.loki.wait_for_entries(4, T);
    let web = lines_for(&entries, "web-0.a");
    assert_eq!(web.len(), 2, "{web:?}");
    let counts: Vec<Value> = web.iter().map(|e| parse_line(e)["count"].clone()).collect();
    assert_eq!(counts, [json!(1), json!(2)]);
    assert_eq!(parse_line(web[1])["time"], t2.as_str());
    let s = lines_for(&entries, "web.s");
    assert_eq!(s.len(), 2);
    assert_eq!(parse_line(s[1])["count"], 3);
    assert_eq!(
        s[1].ts,
        support::util::parse_rfc3339(&t3).unwrap().to_string()
    );
    // DELETED (TTL expiry) ships nothing.
    rig.api.delete("demo", "web-0.a");
    ke.sigterm();
    assert!(ke.wait_exit(T).success());
    assert_eq!(rig.loki.entries().len(), 4);
    assert_no_duplicates(&rig.loki);
}

#[test]
fn a_relist_after_410_ships_no_duplicate() {
    let rig = Rig::new();
    create_events(&rig.api, "demo", "old", 20);
    let ke = rig.start(&[]);
    rig.loki.wait_for_entries(20, T);
    rig.api.wait_for_open_watches(1, T);
    // The stream ends and the next watch fails, so kube-event is away for a moment while
    // five events arrive and history is compacted: its re-watch from the old resourceVersion
    // gets the recorded 410 ERROR frame, and it must list again.
    rig.api
        .fail_next_status(Kind::Watch, 500, "InternalError", "etcd leader changed");
    rig.api.end_watches();
    rig.api
        .wait_for_requests(|r| r.iter().filter(|r| r.is_watch()).count() >= 2, T);
    create_events(&rig.api, "demo", "new", 5);
    rig.api.compact();
    let entries = rig.loki.wait_for_entries(25, T);
    ke.wait_for_stderr("listing again", T);
    rig.api
        .wait_for_requests(|r| r.iter().filter(|r| r.is_list()).count() >= 2, T);
    rig.api.wait_for_open_watches(1, T);
    // And an HTTP 410 at watch start does the same.
    rig.api.fail_next_status(
        Kind::Watch,
        410,
        "Expired",
        "too old resource version: 1 (2)",
    );
    rig.api.end_watches();
    rig.api
        .wait_for_requests(|r| r.iter().filter(|r| r.is_list()).count() >= 3, T);
    create_events(&rig.api, "demo", "last", 1);
    rig.loki.wait_for_entries(26, T);
    ke.sigterm();
    assert!(ke.wait_exit(T).success());
    assert_eq!(entries.len(), 25);
    assert_eq!(rig.loki.entries().len(), 26);
    assert_no_duplicates(&rig.loki);
}

#[test]
fn the_end_of_a_watch_resumes_from_the_last_resource_version_without_a_relist() {
    let rig = Rig::new();
    create_events(&rig.api, "demo", "a", 2);
    let ke = rig.start(&[]);
    rig.api.wait_for_open_watches(1, T);
    create_events(&rig.api, "demo", "b", 1);
    rig.loki.wait_for_entries(3, T);
    let rv = rig.api.resource_version();
    rig.api.bookmark();
    rig.api.end_watches();
    let reqs = rig
        .api
        .wait_for_requests(|r| r.iter().filter(|r| r.is_watch()).count() >= 2, T);
    let second = reqs.iter().filter(|r| r.is_watch()).nth(1).unwrap();
    assert_eq!(second.q("resourceVersion"), Some(rv.as_str()));
    assert_eq!(reqs.iter().filter(|r| r.is_list()).count(), 1);
    drop(ke);
}

#[test]
fn a_malformed_frame_is_logged_and_skipped() {
    let rig = Rig::new();
    let ke = rig.start(&[]);
    rig.api.wait_for_open_watches(1, T);
    rig.api
        .inject_raw_frame("{\"type\":\"ADDED\",\"object\":{\"metadata\":");
    rig.api.inject_raw_frame("not json at all");
    create_events(&rig.api, "demo", "after", 1);
    rig.loki.wait_for_entries(1, T);
    let log = ke.wait_for_stderr("skipping a watch frame that does not parse", T);
    assert!(log.contains("not json at all"), "{log}");
    assert_eq!(rig.api.lists().len(), 1);
}

/// Stops kube-event (it pushes what it holds), then the `event_name` of every entry Loki
/// has, sorted.
fn names_after_sigterm(rig: &Rig, ke: &support::proc::KubeEvent) -> Vec<String> {
    ke.sigterm();
    assert!(ke.wait_exit(T).success());
    let mut names: Vec<String> = rig
        .loki
        .entries()
        .iter()
        .map(|e| parse_line(e)["event_name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn a_list_item_that_is_not_an_event_is_logged_and_the_rest_of_its_page_ships() {
    let rig = Rig::new();
    create_events(&rig.api, "demo", "a", 3);
    let mut bad = core_event("demo", "bad.x", "BackOff", "odd", 1, &now_secs());
    bad["count"] = json!("seven");
    rig.api.create(bad);
    create_events(&rig.api, "demo", "b", 3);
    let ke = rig.start(&[]);
    rig.api.wait_for_open_watches(1, T);
    let log = ke.wait_for_stderr("skipping an event that does not parse", T);
    assert!(log.contains(r#"{"count":"seven""#), "{log}");
    let names = names_after_sigterm(&rig, &ke);
    assert_eq!(
        names,
        ["a-0.x", "a-1.x", "a-2.x", "b-0.x", "b-1.x", "b-2.x"]
    );
    // One list: the item did not make the page be listed again.
    assert_eq!(rig.api.lists().len(), 1);
}

#[test]
fn a_list_page_that_breaks_off_is_listed_again_and_ships_nothing_twice() {
    let rig = Rig::new();
    create_events(&rig.api, "demo", "a", 3);
    // The first list answers a page that holds the first event whole and then breaks off:
    // the event is offered as the page is read, before the fault shows.
    let first = rig.api.get("demo", "a-0.x").unwrap();
    let broken = format!(
        r#"{{"kind":"EventList","apiVersion":"v1","metadata":{{"resourceVersion":"{}"}},"items":[{first},{{"metadata":"#,
        rig.api.resource_version()
    );
    rig.api.fail_next(Kind::List, 200, &[], &broken);
    let ke = rig.start(&[]);
    ke.wait_for_stderr("the API server sent a list that does not parse", T);
    rig.api.wait_for_open_watches(1, T);
    rig.loki.wait_for_entries(3, T);
    let names = names_after_sigterm(&rig, &ke);
    assert_eq!(names, ["a-0.x", "a-1.x", "a-2.x"]);
    assert_eq!(rig.api.lists().len(), 2);
}

#[test]
fn loki_failing_then_recovering_loses_nothing() {
    let rig = Rig::new();
    create_events(&rig.api, "demo", "a", 10);
    rig.loki.fail_next(2, 500, "internal error", None);
    rig.loki.fail_next(
        1,
        429,
        "ingestion rate limit exceeded for user fake",
        Some("1"),
    );
    let ke = rig.start(&[]);
    rig.loki.wait_for_attempts(4, T);
    rig.loki.wait_for_entries(10, T);
    // Only once kube-event has Loki's answer: going away with a push in flight would make it
    // re-send that batch (byte-identical, which real Loki folds but the fake counts).
    ke.wait_for_stderr("pushed batch", T);
    // Loki goes away; events keep coming; it comes back.
    rig.loki.go_away();
    create_events(&rig.api, "demo", "b", 10);
    ke.wait_for_stderr("cannot reach Loki", T);
    rig.loki.come_back();
    rig.loki.wait_for_entries(20, T);
    ke.sigterm();
    assert!(ke.wait_exit(T).success());
    assert_eq!(rig.loki.entries().len(), 20);
    assert_no_duplicates(&rig.loki);
    let attempts = rig.loki.attempts();
    assert!(attempts.iter().any(|a| a.status == 429) && attempts.iter().any(|a| a.status == 500));
}

#[test]
fn sigterm_pushes_what_is_pending_and_exits_0() {
    let rig = Rig::new();
    create_events(&rig.api, "demo", "a", 3);
    // A push interval far longer than the test, and a trickle's batch: only the shutdown can
    // push these. (A batch filling at BATCH_MAX_BYTES per interval or faster, judged over its
    // first 0.1 s, is a burst's, pushed once the stream pauses for 0.1 s: ~2.9 KB with these
    // settings, where 3 events are ~1.2 KB; 50 events were a burst with the default 1 MiB.)
    let ke = rig.start(&[
        ("PUSH_INTERVAL_SECONDS", "3600"),
        ("BATCH_MAX_BYTES", "104857600"),
    ]);
    ke.wait_for_stderr("first list done (3 events)", T);
    assert_eq!(rig.loki.push_count(), 0);
    ke.sigterm();
    let status = ke.wait_exit(T);
    assert_eq!(status.code(), Some(0), "{}", ke.stderr_text());
    assert_eq!(rig.loki.entries().len(), 3);
    assert!(
        ke.stderr_text().contains("pushed 3"),
        "{}",
        ke.stderr_text()
    );
}

#[test]
fn sigint_also_stops_cleanly_and_a_second_signal_exits_at_once() {
    let rig = Rig::new();
    create_events(&rig.api, "demo", "a", 3);
    rig.loki.go_away();
    let ke = rig.start(&[("PUSH_INTERVAL_SECONDS", "1")]);
    ke.wait_for_stderr("cannot reach Loki", T);
    ke.sigint();
    ke.wait_for_stderr("stopping; pushing what is queued", T);
    ke.sigterm();
    let status = ke.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "{}", ke.stderr_text());
    assert!(ke.stderr_text().contains("second signal"));
}

#[test]
fn a_client_certificate_kubeconfig_with_an_ec_key_works_against_an_ip_address() {
    let pki = TestPki::new();
    let api = FakeApiServer::start(&pki, Auth::ClientCert);
    assert!(api.url().starts_with("https://127.0.0.1:"), "{}", api.url());
    let loki = FakeLoki::start();
    let dir = TempDir::new();
    assert!(pki.client_ec_key_pem.contains("BEGIN EC PRIVATE KEY"));
    let yaml = kubeconfig_yaml(
        &api.url(),
        CaRef::Data(&pki.ca_pem),
        UserAuth::CertData {
            cert_pem: &pki.client_ec_cert_pem,
            key_pem: &pki.client_ec_key_pem,
        },
    );
    dir.write("admin.conf", &yaml);
    api.create(core_event(
        "kube-system",
        "etcd.1",
        "Unhealthy",
        "probe failed",
        1,
        &now_secs(),
    ));
    let conf = write_conf(
        dir.path(),
        &[
            ("LOKI_URL", &loki.url()),
            ("KUBECONFIG", "admin.conf"),
            ("PUSH_INTERVAL_SECONDS", "1"),
        ],
    );
    let ke = KubeEvent::spawn(&conf, &[], &[]);
    loki.wait_for_entries(1, T);
    let reqs = api.requests();
    assert_eq!(reqs[0].client_cn.as_deref(), Some("kubernetes-admin"));
    let log = ke.stderr_text();
    assert!(log.contains("client certificate"), "{log}");
    assert!(!log.contains("PRIVATE KEY"));
}

#[test]
fn an_rsa_client_key_in_files_works_too() {
    let pki = TestPki::new();
    let api = FakeApiServer::start(&pki, Auth::ClientCert);
    let loki = FakeLoki::start();
    let dir = TempDir::new();
    let files = pki.write_to(dir.path());
    let yaml = kubeconfig_yaml(
        &api.url(),
        CaRef::Path(&files.ca),
        UserAuth::CertPaths {
            cert: &files.client_rsa_cert,
            key: &files.client_rsa_key,
        },
    );
    dir.write("kc.yaml", &yaml);
    api.create(core_event(
        "default",
        "n.1",
        "Rebooted",
        "node rebooted",
        1,
        &now_secs(),
    ));
    let conf = write_conf(
        dir.path(),
        &[("LOKI_URL", &loki.url()), ("KUBECONFIG", "kc.yaml")],
    );
    let _ke = KubeEvent::spawn(&conf, &[], &[]);
    loki.wait_for_entries(1, T);
}

#[test]
fn a_server_certificate_from_another_ca_is_refused() {
    let rig = Rig::new();
    let yaml = kubeconfig_yaml(
        &rig.api.url(),
        CaRef::Data(&rig.pki.other_ca_pem),
        UserAuth::Token(TOKEN),
    );
    rig.dir.write("kubeconfig.yaml", &yaml);
    let ke = rig.start(&[]);
    ke.wait_for_stderr("cannot list events", T);
    assert!(rig.api.requests().is_empty());
}

#[test]
fn a_rotated_token_file_is_read_again_after_a_401() {
    let rig = Rig::new();
    let token_file = rig.dir.write("token", "first-token\n");
    rig.api.set_token("first-token");
    rig.kubeconfig(UserAuth::TokenFile(&token_file));
    create_events(&rig.api, "demo", "a", 1);
    let ke = rig.start(&[]);
    rig.loki.wait_for_entries(1, T);
    rig.api.wait_for_open_watches(1, T);
    // The token rotates: the server accepts only the new one, the file holds the new one.
    rig.dir.write("token", "second-token\n");
    rig.api.set_token("second-token");
    rig.api.end_watches();
    create_events(&rig.api, "demo", "b", 1);
    rig.loki.wait_for_entries(2, T);
    let reqs = rig.api.requests();
    assert!(reqs
        .iter()
        .any(|r| r.authorization.as_deref() == Some("Bearer second-token")));
    assert!(!ke.stderr_text().contains("second-token"));
}

#[test]
fn too_many_requests_and_server_errors_back_off_and_retry() {
    let rig = Rig::new();
    create_events(&rig.api, "demo", "a", 1);
    rig.api.fail_next_429(Kind::List);
    rig.api
        .fail_next_status(Kind::List, 500, "InternalError", "etcd is sad");
    rig.api.fail_next_429(Kind::Watch);
    let ke = rig.start(&[]);
    rig.loki.wait_for_entries(1, T);
    rig.api.wait_for_open_watches(1, T);
    let reqs = rig.api.requests();
    let lists: Vec<_> = reqs.iter().filter(|r| r.is_list()).collect();
    assert_eq!(lists.len(), 3);
    // Retry-After: 1 was honoured between the 429 and the next list.
    let gap = lists[1].at.duration_since(lists[0].at);
    assert!(gap >= Duration::from_millis(900), "{gap:?}");
    assert!(ke.stderr_text().contains("Too many requests"));
}

#[test]
fn forbidden_names_the_missing_permission() {
    let rig = Rig::new();
    let body = support::apiserver::forbidden_body("system:serviceaccount:x:y", "list", None);
    rig.api.fail_always(Kind::List, 403, &[], &body);
    let ke = rig.start(&[]);
    let log = ke.wait_for_stderr("needs get, list and watch", T);
    assert!(
        log.contains("cannot list resource \\\"events\\\"")
            || log.contains("cannot list resource \"events\""),
        "{log}"
    );
    rig.api.clear_failures();
    create_events(&rig.api, "demo", "a", 1);
    rig.loki.wait_for_entries(1, Duration::from_secs(60));
}

#[test]
fn stdout_prints_each_line_and_needs_no_loki() {
    let rig = Rig::new();
    create_events(&rig.api, "demo", "a", 3);
    let conf = write_conf(rig.dir.path(), &[("KUBECONFIG", "kubeconfig.yaml")]);
    let ke = KubeEvent::spawn(&conf, &[], &["--stdout"]);
    let lines = ke.wait_for_stdout_lines(3, T);
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["namespace"], "demo");
    }
    rig.api.wait_for_open_watches(1, T);
    rig.api.update("demo", "a-0.x", |ev| ev["count"] = json!(2));
    let lines = ke.wait_for_stdout_lines(4, T);
    assert_eq!(
        serde_json::from_str::<Value>(&lines[3]).unwrap()["count"],
        2
    );
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0));
    assert_eq!(rig.loki.push_count(), 0);
}

#[test]
fn tenant_and_basic_auth_reach_loki() {
    let rig = Rig::new();
    rig.loki.require_header("X-Scope-OrgID", "team-a");
    create_events(&rig.api, "demo", "a", 1);
    let pw = rig.dir.write("loki-password", "hunter2\n");
    let _ke = rig.start(&[
        ("LOKI_TENANT_ID", "team-a"),
        ("LOKI_USERNAME", "12345"),
        ("LOKI_PASSWORD_FILE", pw.to_str().unwrap()),
    ]);
    rig.loki.wait_for_entries(1, T);
    let push = &rig.loki.pushes()[0];
    assert_eq!(
        push.header("authorization"),
        Some(format!("Basic {}", support::util::base64_encode(b"12345:hunter2")).as_str())
    );
    assert_eq!(push.header("content-type"), Some("application/x-protobuf"));
}

#[test]
fn a_bearer_token_file_for_loki_is_read_again_when_it_changes() {
    let rig = Rig::new();
    let tok = rig.dir.write("loki-token", "one\n");
    create_events(&rig.api, "demo", "a", 1);
    let _ke = rig.start(&[("LOKI_BEARER_TOKEN_FILE", tok.to_str().unwrap())]);
    rig.loki.wait_for_entries(1, T);
    std::fs::write(&tok, "two-longer\n").unwrap();
    rig.api.wait_for_open_watches(1, T);
    create_events(&rig.api, "demo", "b", 1);
    rig.loki.wait_for_entries(2, T);
    let heads: Vec<String> = rig
        .loki
        .pushes()
        .iter()
        .filter_map(|p| p.header("authorization").map(str::to_string))
        .collect();
    assert_eq!(heads.first().map(String::as_str), Some("Bearer one"));
    assert_eq!(heads.last().map(String::as_str), Some("Bearer two-longer"));
}

#[test]
fn loki_over_tls_with_its_own_ca() {
    let rig = Rig::new();
    let tls_loki = FakeLoki::start_tls(&rig.pki);
    let files = rig.pki.write_to(rig.dir.path());
    create_events(&rig.api, "demo", "a", 1);
    let url = tls_loki.url();
    let _ke = rig.start(&[
        ("LOKI_URL", &url),
        ("LOKI_CA_FILE", files.ca.to_str().unwrap()),
    ]);
    tls_loki.wait_for_entries(1, T);
}

#[test]
fn a_batch_loki_rejects_is_kept_with_its_answer() {
    let rig = Rig::new();
    let too_long = "y".repeat(1000);
    rig.loki.set_rule(move |e| {
        e.line
            .contains("TOO-LONG")
            .then(|| (400, "max entry size '262144' bytes exceeded".to_string()))
    });
    let ts = now_secs();
    rig.api.create(core_event(
        "demo",
        "bad.1",
        "BackOff",
        &format!("TOO-LONG {too_long}"),
        1,
        &ts,
    ));
    let ke = rig.start(&[("DATA_DIR", "state")]);
    ke.wait_for_stderr("(1 entries) with 400", T);
    let dir = rig.dir.join("state/rejected");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let answer = names.iter().find(|n| n.ends_with(".answer.txt")).unwrap();
    let text = std::fs::read_to_string(dir.join(answer)).unwrap();
    assert!(text.starts_with("HTTP 400\nmax entry size"), "{text}");
    // The pusher goes on with the next batch.
    create_events(&rig.api, "demo", "good", 1);
    rig.loki.wait_for_entries(1, T);
}

#[test]
fn bad_configuration_exits_2_naming_file_line_and_key() {
    let dir = TempDir::new();
    let conf = dir.write(
        "kube-event.conf",
        "# x\nLOKI_URL=http://127.0.0.1:1\nPUSH_INTERVAL_SECONDS=abc\n",
    );
    let ke = KubeEvent::spawn(&conf, &[], &[]);
    assert_eq!(ke.wait_exit(T).code(), Some(2));
    let err = ke.stderr_text();
    assert!(
        err.contains("kube-event.conf:3: PUSH_INTERVAL_SECONDS: expected a whole number of seconds, got \"abc\""),
        "{err}"
    );
    // No LOKI_URL without --stdout.
    let conf = dir.write("kube-event.conf", "LOG_LEVEL=info\n");
    let ke = KubeEvent::spawn(&conf, &[], &[]);
    assert_eq!(ke.wait_exit(T).code(), Some(2));
    assert!(ke.stderr_text().contains("LOKI_URL is not set"));
    // A usage error.
    let ke = KubeEvent::spawn_args(dir.path(), &[], &["--bogus"]);
    assert_eq!(ke.wait_exit(T).code(), Some(2));
    // An environment variable overrides the file, and is named when bad.
    let conf = dir.write("kube-event.conf", "LOKI_URL=http://127.0.0.1:1\n");
    let ke = KubeEvent::spawn(&conf, &[("BATCH_MAX_BYTES", "lots")], &[]);
    assert_eq!(ke.wait_exit(T).code(), Some(2));
    assert!(ke
        .stderr_text()
        .contains("environment variable BATCH_MAX_BYTES"));
    // A kubeconfig that does not exist is a configuration error too.
    let conf = dir.write(
        "kube-event.conf",
        "LOKI_URL=http://127.0.0.1:1\nKUBECONFIG=missing.yaml\n",
    );
    let ke = KubeEvent::spawn(&conf, &[], &[]);
    assert_eq!(ke.wait_exit(T).code(), Some(2), "{}", ke.stderr_text());
}

#[test]
fn config_is_found_through_the_environment_and_the_current_directory() {
    let rig = Rig::new();
    create_events(&rig.api, "demo", "a", 1);
    let conf = rig.conf(&[]);
    // $KUBE_EVENT_CONFIG, from another directory.
    let elsewhere = TempDir::new();
    let ke = KubeEvent::spawn_args(
        elsewhere.path(),
        &[("KUBE_EVENT_CONFIG", conf.to_str().unwrap())],
        &["--stdout"],
    );
    ke.wait_for_stdout_lines(1, T);
    drop(ke);
    // ./kube-event.conf.
    let ke = KubeEvent::spawn_args(rig.dir.path(), &[], &["--stdout"]);
    ke.wait_for_stdout_lines(1, T);
    assert!(
        ke.stderr_text().contains("config kube-event.conf"),
        "{}",
        ke.stderr_text()
    );
}

#[test]
fn the_legacy_config_json_is_accepted() {
    let rig = Rig::new();
    create_events(&rig.api, "demo", "a", 1);
    let json = format!(
        "{{\n  \"LOKI_URL\": \"{}\",\n  \"KUBECONFIG\": \"kubeconfig.yaml\",\n  \"PUSH_INTERVAL_SECONDS\": 1,\n  \"ENABLE_DETAILED\": true\n}}\n",
        rig.loki.url()
    );
    let conf = rig.dir.write("config.json", &json);
    let ke = KubeEvent::spawn(&conf, &[], &[]);
    rig.loki.wait_for_entries(1, T);
    // ENABLE_DETAILED logs each shipped line.
    ke.wait_for_stderr("\"event_name\":\"a-0.x\"", T);
}

#[test]
fn version_and_help() {
    let dir = TempDir::new();
    let ke = KubeEvent::spawn_args(dir.path(), &[], &["--version"]);
    assert!(ke.wait_exit(T).success());
    assert!(ke
        .stdout_text()
        .starts_with(&format!("kube-event {}", env!("CARGO_PKG_VERSION"))));
    let ke = KubeEvent::spawn_args(dir.path(), &[], &["--help"]);
    assert!(ke.wait_exit(T).success());
    assert!(ke.stdout_text().contains("--stdout"));
    assert!(ke.stdout_text().contains("--show-batch"));
    // A file that is not a spooled batch: exit 1, and why.
    let not_a_batch = dir.write("x.batch", "KUBE-EVENT BATCH 2 1 1 1 1 5 0 snappy\nhello");
    for (file, why) in [
        (
            not_a_batch.to_str().unwrap(),
            "is damaged: checksum mismatch",
        ),
        ("/nonexistent/1.batch", "cannot read /nonexistent/1.batch"),
    ] {
        let ke = KubeEvent::spawn_args(dir.path(), &[], &["--show-batch", file]);
        assert_eq!(ke.wait_exit(T).code(), Some(1));
        assert!(ke.stderr_text().contains(why), "{}", ke.stderr_text());
    }
}

#[test]
fn sigterm_with_loki_down_gives_up_after_the_grace_period_and_exits_0() {
    let rig = Rig::new();
    create_events(&rig.api, "demo", "a", 5);
    rig.loki.go_away();
    let ke = rig.start(&[]);
    ke.wait_for_stderr("cannot reach Loki", T);
    let asked = std::time::Instant::now();
    ke.sigterm();
    let status = ke.wait_exit(T);
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0), "{}", ke.stderr_text());
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(13),
        "{took:?}"
    );
    let log = ke.stderr_text();
    assert!(
        log.contains("shutdown deadline passed: 5 entries were not pushed"),
        "{log}"
    );
}
