//! Filters and shaping with the real binary: what is shipped, what the API server is asked
//! to do itself, per-namespace watches when cluster-wide listing is forbidden, labels, line
//! formats, structured metadata and gzip.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::rig::Rig;
use support::util::{now_nanos, rfc3339_secs};
use support::*;

const T: Duration = Duration::from_secs(20);

/// An event with the fields the filters look at.
fn ev(
    ns: &str,
    name: &str,
    type_: &str,
    reason: &str,
    kind: &str,
    component: &str,
    count: u64,
) -> Value {
    let mut e = core_event(
        ns,
        name,
        reason,
        "a message",
        count,
        &rfc3339_secs(now_nanos()),
    );
    e["type"] = json!(type_);
    e["involvedObject"]["kind"] = json!(kind);
    e["source"]["component"] = json!(component);
    e
}

fn names(entries: &[Entry]) -> Vec<String> {
    let mut n: Vec<String> = entries
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(&e.line).unwrap()["event_name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    n.sort();
    n
}

#[test]
fn only_matching_occurrences_are_shipped_and_the_rest_are_counted_as_filtered() {
    let rig = Rig::new();
    let api = &rig.api;
    api.create(ev(
        "shop", "keep.1", "Warning", "BackOff", "Pod", "kubelet", 2,
    ));
    api.create(ev(
        "shop", "normal.1", "Normal", "BackOff", "Pod", "kubelet", 2,
    ));
    api.create(ev(
        "kube-system",
        "system.1",
        "Warning",
        "BackOff",
        "Pod",
        "kubelet",
        2,
    ));
    api.create(ev(
        "shop", "reason.1", "Warning", "Pulled", "Pod", "kubelet", 2,
    ));
    api.create(ev(
        "shop", "node.1", "Warning", "BackOff", "Node", "kubelet", 2,
    ));
    api.create(ev(
        "shop",
        "comp.1",
        "Warning",
        "BackOff",
        "Pod",
        "noisy-operator",
        2,
    ));
    api.create(ev(
        "shop", "once.1", "Warning", "BackOff", "Pod", "kubelet", 1,
    ));
    let ke = rig.start(&[
        ("TYPES", "Warning"),
        ("EXCLUDE_NAMESPACES", "kube-*"),
        ("REASONS", "Back*"),
        ("EXCLUDE_KINDS", "Node"),
        ("EXCLUDE_COMPONENTS", "noisy-*"),
        ("MIN_COUNT", "2"),
    ]);
    rig.loki.wait_for_entries(1, T);
    rig.api.wait_for_open_watches(1, T);
    // A repeat makes once.1 reach MIN_COUNT.
    rig.api.update("shop", "once.1", |e| e["count"] = json!(2));
    let entries = rig.loki.wait_for_entries(2, T);
    assert_eq!(names(&entries), ["keep.1", "once.1"]);
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0));
    assert_eq!(rig.loki.entries().len(), 2);
    let log = ke.stderr_text();
    // 6 list items left out, and once.1's first occurrence.
    assert!(log.contains("shipped 2, filtered 6,"), "{log}");
    // What the API server could do was asked of it.
    let list = rig.api.lists().remove(0);
    assert_eq!(list.path, "/api/v1/events");
    assert_eq!(
        list.q("fieldSelector"),
        Some("type=Warning,involvedObject.kind!=Node")
    );
}

#[test]
fn a_single_namespace_is_watched_through_its_own_path_with_a_field_selector() {
    let rig = Rig::new();
    rig.api
        .create(ev("shop", "a.1", "Warning", "BackOff", "Pod", "kubelet", 1));
    rig.api.create(ev(
        "other", "b.1", "Warning", "BackOff", "Pod", "kubelet", 1,
    ));
    let _ke = rig.start(&[
        ("NAMESPACES", "shop"),
        ("KINDS", "Pod"),
        ("EXCLUDE_REASONS", "Pulled,Created"),
    ]);
    let entries = rig.loki.wait_for_entries(1, T);
    rig.api.wait_for_open_watches(1, T);
    assert_eq!(names(&entries), ["a.1"]);
    let reqs = rig.api.requests();
    let selector = "involvedObject.kind=Pod,reason!=Pulled,reason!=Created";
    for r in reqs.iter().filter(|r| r.kind.is_some()) {
        assert_eq!(r.path, "/api/v1/namespaces/shop/events", "{r:?}");
        assert_eq!(r.q("fieldSelector"), Some(selector), "{r:?}");
    }
    assert!(reqs.iter().any(|r| r.is_watch()));
}

#[test]
fn forbidden_cluster_listing_falls_back_to_one_watch_per_namespace_and_resumes_each() {
    let rig = Rig::new();
    rig.api
        .forbid_cluster_scope("system:serviceaccount:team:kube-event");
    rig.api
        .create(ev("a", "a.1", "Warning", "BackOff", "Pod", "kubelet", 1));
    rig.api
        .create(ev("b", "b.1", "Normal", "Pulled", "Pod", "kubelet", 1));
    rig.api
        .create(ev("c", "c.1", "Warning", "BackOff", "Pod", "kubelet", 1));
    let conf: &[(&str, &str)] = &[("NAMESPACES", "a,b")];
    let ke = rig.start(conf);
    ke.wait_for_stderr("watching the namespaces of NAMESPACES one by one: a, b", T);
    let entries = rig.loki.wait_for_entries(2, T);
    assert_eq!(names(&entries), ["a.1", "b.1"]);
    rig.api.wait_for_open_watches(2, T);
    ke.wait_for_stderr("kube-event is up", T);
    rig.api
        .create(ev("b", "b.2", "Normal", "Pulled", "Pod", "kubelet", 1));
    rig.loki.wait_for_entries(3, T);
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());

    // While it is down: one more event in each namespace.
    rig.api
        .create(ev("a", "a.2", "Warning", "BackOff", "Pod", "kubelet", 1));
    rig.api
        .create(ev("b", "b.3", "Warning", "BackOff", "Pod", "kubelet", 1));
    let before = rig.api.requests().len();
    let ke = rig.start(conf);
    let entries = rig.loki.wait_for_entries(5, T);
    assert_eq!(names(&entries), ["a.1", "a.2", "b.1", "b.2", "b.3"]);
    // Each namespace resumed from its own resourceVersion: watches, no list.
    let after: Vec<_> = rig.api.requests().into_iter().skip(before).collect();
    let ns_requests: Vec<_> = after
        .iter()
        .filter(|r| r.path.starts_with("/api/v1/namespaces/"))
        .collect();
    assert!(ns_requests.iter().all(|r| r.is_watch()), "{ns_requests:?}");
    for ns in ["a", "b"] {
        let w = ns_requests
            .iter()
            .find(|r| r.path == format!("/api/v1/namespaces/{ns}/events"))
            .unwrap_or_else(|| panic!("no watch of namespace {ns}"));
        assert!(w.q("resourceVersion").is_some_and(|v| !v.is_empty()));
    }
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0));
    assert!(rig.loki.duplicates().is_empty());
}

#[test]
fn deduplicate_ships_each_event_once_on_its_first_occurrence() {
    let rig = Rig::new();
    rig.api
        .create(ev("shop", "a.1", "Warning", "BackOff", "Pod", "kubelet", 1));
    let ke = rig.start(&[("DEDUPLICATE", "1")]);
    rig.loki.wait_for_entries(1, T);
    rig.api.wait_for_open_watches(1, T);
    for n in 2..5 {
        rig.api.update("shop", "a.1", |e| e["count"] = json!(n));
    }
    rig.api
        .create(ev("shop", "b.1", "Warning", "BackOff", "Pod", "kubelet", 1));
    let entries = rig.loki.wait_for_entries(2, T);
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0));
    assert_eq!(names(&entries), ["a.1", "b.1"]);
    assert_eq!(rig.loki.entries().len(), 2);
    assert!(
        ke.stderr_text().contains("filtered 3,"),
        "{}",
        ke.stderr_text()
    );
}

#[test]
fn label_keys_and_job_choose_the_stream_labels() {
    let rig = Rig::new();
    rig.api
        .create(ev("shop", "a.1", "Warning", "BackOff", "Pod", "kubelet", 1));
    let ke = rig.start(&[
        ("LABEL_KEYS", "namespace,reason"),
        ("JOB", "k8s-events"),
        ("LABELS", "cluster=prod"),
    ]);
    let e = &rig.loki.wait_for_entries(1, T)[0];
    let want: Vec<(&str, &str)> = vec![
        ("cluster", "prod"),
        ("job", "k8s-events"),
        ("namespace", "shop"),
        ("reason", "BackOff"),
    ];
    let got: Vec<(&str, &str)> = e
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(got, want);
    ke.wait_for_stderr("LABEL_KEYS: \"reason\" has many values", T);
}

#[test]
fn label_configurations_loki_would_refuse_are_refused_at_startup() {
    let rig = Rig::new();
    for (extra, want) in [
        (
            vec![("LABEL_KEYS", "namespace,name")],
            "LABEL_KEYS: unknown field \"name\"",
        ),
        (
            vec![("LABELS", "reason=x"), ("LABEL_KEYS", "reason")],
            "LABELS: \"reason\" is set by kube-event itself",
        ),
        (
            vec![
                ("LABEL_KEYS", "namespace,kind,type,reason,component,host"),
                ("LABELS", "a=1,b=1,c=1,d=1,e=1,f=1,g=1,h=1,i=1"),
            ],
            "exceed Loki's default limit of 15 labels",
        ),
        (
            vec![("LINE_FORMAT", "xml")],
            "LINE_FORMAT: expected json, logfmt or raw",
        ),
        (
            vec![("LOKI_COMPRESSION", "zstd")],
            "LOKI_COMPRESSION: expected snappy, gzip or none",
        ),
        (vec![("DEDUPLICATE", "2")], "DEDUPLICATE: expected 0"),
    ] {
        let ke = rig.start(&extra);
        assert_eq!(ke.wait_exit(T).code(), Some(2), "{extra:?}");
        let err = ke.stderr_text();
        assert!(
            err.contains("kube-event.conf:") && err.contains(want),
            "{extra:?}: {err}"
        );
    }
}

#[test]
fn logfmt_and_raw_lines() {
    let rig = Rig::new();
    rig.api
        .create(ev("shop", "a.1", "Warning", "BackOff", "Pod", "kubelet", 1));
    let ke = rig.start(&[("LINE_FORMAT", "logfmt")]);
    let e = rig.loki.wait_for_entries(1, T)[0].clone();
    assert!(
        e.line.starts_with("time=") && e.line.contains(" message=\"a message\" count=1 "),
        "{}",
        e.line
    );
    ke.sigterm();
    ke.wait_exit(T);

    let rig = Rig::new();
    rig.api
        .create(ev("shop", "a.1", "Warning", "BackOff", "Pod", "kubelet", 1));
    let _ke = rig.start(&[("LINE_FORMAT", "raw")]);
    let e = rig.loki.wait_for_entries(1, T)[0].clone();
    let v: Value = serde_json::from_str(&e.line).unwrap();
    // What queries written for kubernetes-event-exporter read with `| json`.
    assert_eq!(v["involvedObject"]["kind"], "Pod");
    assert_eq!(v["metadata"]["namespace"], "shop");
    assert_eq!(v["kind"], "Event");
}

#[test]
fn structured_metadata_and_a_loki_that_refuses_it() {
    let rig = Rig::new();
    rig.api
        .create(ev("shop", "a.1", "Warning", "BackOff", "Pod", "kubelet", 1));
    let _ke = rig.start(&[("STRUCTURED_METADATA", "true")]);
    let e = rig.loki.wait_for_entries(1, T)[0].clone();
    assert_eq!(e.metadata["name"], "a");
    assert!(e.metadata.contains_key("event_uid") && e.metadata.contains_key("object_uid"));

    let rig = Rig::new();
    rig.loki.set_rule(|e| {
        (!e.metadata.is_empty()).then(|| {
            (400, "stream '{job=\"kube-event\"}' includes structured metadata, but this feature is disallowed. Please see `limits_config.structured_metadata` or contact your Loki administrator to enable it.".to_string())
        })
    });
    rig.api
        .create(ev("shop", "a.1", "Warning", "BackOff", "Pod", "kubelet", 1));
    let ke = rig.start(&[("STRUCTURED_METADATA", "true")]);
    ke.wait_for_stderr("set STRUCTURED_METADATA=false", T);
}

/// Snappy protobuf (Loki's native push, what Promtail and Alloy send) unless told otherwise;
/// every setting delivers the same entries, labels (a value with a quote, a backslash and a
/// newline among them) and structured metadata.
#[test]
fn pushes_are_snappy_protobuf_unless_told_otherwise() {
    let mut odd = ev(
        "kube-system",
        "b.2",
        "Normal",
        "Pulled",
        "Pod",
        "kubelet",
        3,
    );
    odd["message"] =
        json!("a \"quoted\" C:\\path, a tab\t, a newline\n, é, 日本, \u{1F600}, \u{1}");
    odd["reason"] = json!("Pulled \"x\" C:\\y\nz é");
    let events = [
        ev("shop", "a.1", "Warning", "BackOff", "Pod", "kubelet", 1),
        odd,
    ];
    let mut seen = Vec::new();
    for (setting, content_type, encoding) in [
        (None, "application/x-protobuf", Some("snappy")),
        (Some("gzip"), "application/json", Some("gzip")),
        (Some("none"), "application/json", None),
        (Some("SNAPPY"), "application/x-protobuf", Some("snappy")),
    ] {
        let rig = Rig::new();
        for e in &events {
            rig.api.create(e.clone());
        }
        let mut vars = vec![
            ("STRUCTURED_METADATA", "true"),
            ("LABEL_KEYS", "namespace,kind,type,reason"),
        ];
        vars.extend(setting.map(|s| ("LOKI_COMPRESSION", s)));
        let _ke = rig.start(&vars);
        rig.loki.wait_for_entries(2, T);
        let push = &rig.loki.pushes()[0];
        assert_eq!(
            push.header("content-type"),
            Some(content_type),
            "{setting:?}"
        );
        assert_eq!(push.header("content-encoding"), encoding, "{setting:?}");
        let mut entries = rig.loki.entries();
        entries.sort_by(|a, b| a.line.cmp(&b.line));
        seen.push(entries);
    }
    assert!(seen.windows(2).all(|w| w[0].len() == w[1].len()));
    let odd = seen[0].iter().find(|e| e.line.contains("b.2")).unwrap();
    assert_eq!(odd.labels["reason"], "Pulled \"x\" C:\\y\nz é");
    assert!(!odd.metadata.is_empty(), "{odd:?}");
    for entries in &seen[1..] {
        for (a, b) in entries.iter().zip(&seen[0]) {
            assert_eq!((&a.labels, &a.metadata), (&b.labels, &b.metadata));
            assert_eq!(a.line, b.line);
            assert_eq!(a.ts, b.ts);
        }
    }
}
