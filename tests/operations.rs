//! Operating kube-event: `--check`, the metrics/health endpoint, systemd readiness and the
//! log file, with the real binary against the fake servers.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use support::rig::{Rig, TOKEN};
use support::util::{now_nanos, rfc3339_secs};
use support::*;

const T: Duration = Duration::from_secs(20);

/// `kube-event --check` with the rig's conf: the exit code and what it printed.
fn check(rig: &Rig, extra: &[(&str, &str)]) -> (i32, String) {
    let ke = KubeEvent::spawn(&rig.conf(extra), &[], &["--check"]);
    let code = ke.wait_exit(T).code().unwrap_or(-1);
    (code, ke.stdout_text())
}

fn create(api: &FakeApiServer, name: &str) {
    api.create(core_event(
        "demo",
        name,
        "BackOff",
        "back-off",
        1,
        &rfc3339_secs(now_nanos()),
    ));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut resp = agent.get(url).call().unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap())
}

/// The value of the sample `line` (`name{labels}`) in a Prometheus text body.
fn sample(body: &str, line: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn check_passes_when_everything_works_and_changes_nothing() {
    let rig = Rig::new();
    create(&rig.api, "a.1");
    let (code, out) = check(&rig, &[]);
    assert_eq!(code, 0, "{out}");
    for what in [
        "config",
        "cluster access",
        "list events",
        "watch events",
        "Loki",
        "DATA_DIR",
    ] {
        assert!(out.contains(&format!("OK    {what}: ")), "{what} in\n{out}");
    }
    assert!(out.trim_end().ends_with("all checks passed"), "{out}");
    assert!(
        rig.loki.entries().is_empty(),
        "--check stored something in Loki"
    );
    let list = rig.api.lists().remove(0);
    assert_eq!(list.q("limit"), Some("1"));
}

#[test]
fn check_names_each_failure_and_its_fix() {
    let rig = Rig::new();
    // The API server forbids listing events.
    let body = support::apiserver::forbidden_body("system:serviceaccount:x:y", "list", None);
    rig.api.fail_always(Kind::List, 403, &[], &body);
    let (code, out) = check(&rig, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  list events: HTTP 403 Forbidden"),
        "{out}"
    );
    assert!(
        out.contains("fix: grant get, list and watch on events"),
        "{out}"
    );
    assert!(out.contains("1 check(s) failed"), "{out}");
    rig.api.clear_failures();

    // Wrong credentials.
    rig.api.set_token("another");
    let (code, out) = check(&rig, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  list events: HTTP 401"), "{out}");
    assert!(
        out.contains("fix: the API server refused the credentials"),
        "{out}"
    );
    rig.api.set_token(TOKEN);

    // Loki wants a tenant, then Loki is gone.
    rig.loki.require_header("X-Scope-OrgID", "team-a");
    let (code, out) = check(&rig, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  Loki: "), "{out}");
    assert!(out.contains("LOKI_TENANT_ID"), "{out}");
    let (code, out) = check(&rig, &[("LOKI_TENANT_ID", "team-a")]);
    assert_eq!(code, 0, "{out}");
    rig.loki.go_away();
    let (code, out) = check(&rig, &[("LOKI_TENANT_ID", "team-a")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("fix: check LOKI_URL, that Loki runs"), "{out}");
    rig.loki.come_back();

    // DATA_DIR under a regular file, and a kubeconfig that is not there.
    rig.dir.write("a-file", "x");
    let (code, out) = check(
        &rig,
        &[("LOKI_TENANT_ID", "team-a"), ("DATA_DIR", "a-file/data")],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  DATA_DIR: "), "{out}");
    let (code, out) = check(
        &rig,
        &[("LOKI_TENANT_ID", "team-a"), ("KUBECONFIG", "missing.yaml")],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  cluster access: "), "{out}");

    // A bad value: reported, exit 2.
    let (code, out) = check(&rig, &[("PUSH_INTERVAL_SECONDS", "soon")]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("FAIL  config: ") && out.contains("PUSH_INTERVAL_SECONDS"),
        "{out}"
    );
}

#[test]
fn metrics_health_and_readiness_are_served() {
    let rig = Rig::new();
    for i in 0..3 {
        create(&rig.api, &format!("m.{i}"));
    }
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let ke = KubeEvent::spawn(&rig.conf(&[("METRICS_ADDR", &addr)]), &[], &[]);
    rig.loki.wait_for_entries(3, T);
    let base = format!("http://{addr}");
    // kube-event counts the push once it has Loki's answer: poll until it has.
    let deadline = std::time::Instant::now() + T;
    let (status, body) = loop {
        let (status, body) = http_get(&format!("{base}/metrics"));
        if sample(&body, "kube_event_pushed_total") == Some(3.0) {
            break (status, body);
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status, 200);
    assert_eq!(
        sample(&body, "kube_event_received_total{frame=\"list\"}"),
        Some(3.0),
        "{body}"
    );
    assert_eq!(sample(&body, "kube_event_shipped_total"), Some(3.0));
    assert_eq!(sample(&body, "kube_event_pushed_total"), Some(3.0));
    assert_eq!(
        sample(
            &body,
            "kube_event_push_attempts_total{outcome=\"accepted\",status_class=\"2xx\"}"
        ),
        Some(1.0)
    );
    assert_eq!(sample(&body, "kube_event_spool_batches"), Some(0.0));
    assert_eq!(
        sample(&body, "kube_event_push_duration_seconds_count"),
        Some(1.0)
    );
    assert!(body.contains("kube_event_build_info{version=\""), "{body}");
    assert_eq!(http_get(&format!("{base}/healthz")).0, 200);
    assert_eq!(http_get(&format!("{base}/readyz")).0, 200);
    assert_eq!(http_get(&format!("{base}/other")).0, 404);

    // Loki fails: not ready, and the failure is counted.
    rig.loki.go_away();
    create(&rig.api, "m.9");
    ke.wait_for_stderr("cannot reach Loki", T);
    assert_eq!(http_get(&format!("{base}/readyz")).0, 503);
    let (_, body) = http_get(&format!("{base}/metrics"));
    assert!(
        sample(
            &body,
            "kube_event_push_attempts_total{outcome=\"retry\",status_class=\"error\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(&body, "kube_event_received_total{frame=\"added\"}"),
        Some(1.0)
    );
    rig.loki.come_back();
    rig.loki.wait_for_entries(4, T);
}

#[test]
fn healthz_fails_when_the_watch_stalls() {
    let rig = Rig::new();
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    // The fake's watch stays open and silent: no frame, no new watch.
    let ke = KubeEvent::spawn(
        &rig.conf(&[("METRICS_ADDR", &addr), ("HEALTH_STALL_SECONDS", "5")]),
        &[],
        &[],
    );
    rig.api.wait_for_open_watches(1, T);
    let url = format!("http://{addr}/healthz");
    assert_eq!(http_get(&url).0, 200);
    // Poll until it turns: within the stall time plus a margin.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = http_get(&url);
        if status == 503 {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still healthy: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(body.contains("no watch progress"), "{body}");
    // A frame is progress again.
    create(&rig.api, "h.1");
    rig.loki.wait_for_entries(1, T);
    assert_eq!(http_get(&url).0, 200);
    drop(ke);
}

#[test]
fn systemd_hears_ready_after_the_first_list_and_stopping_at_shutdown() {
    let rig = Rig::new();
    create(&rig.api, "s.1");
    rig.api
        .fail_always(Kind::List, 500, &[], "etcdserver: leader changed");
    let sock_path = rig.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(T)).unwrap();
    let ke = KubeEvent::spawn(
        &rig.conf(&[]),
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
        &[],
    );
    let mut buf = [0u8; 256];
    // While every list fails, kube-event is not ready and must not say so.
    rig.api
        .wait_for_requests(|r| r.iter().filter(|r| r.is_list()).count() >= 2, T);
    sock.set_nonblocking(true).unwrap();
    let early = sock.recv(&mut buf);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "notified before any list succeeded: {:?}",
        early.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    );
    sock.set_nonblocking(false).unwrap();
    rig.api.clear_failures();
    let n = sock.recv(&mut buf).expect("READY=1 from kube-event");
    assert_eq!(&buf[..n], b"READY=1");
    ke.wait_for_stderr("first list done", T);
    ke.sigterm();
    let n = sock.recv(&mut buf).expect("STOPPING=1 from kube-event");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(ke.wait_exit(T).code(), Some(0));
}

#[test]
fn log_file_receives_the_log_instead_of_stderr() {
    let rig = Rig::new();
    create(&rig.api, "l.1");
    let ke = KubeEvent::spawn(&rig.conf(&[("LOG_FILE", "logs/kube-event.log")]), &[], &[]);
    rig.loki.wait_for_entries(1, T);
    let log = rig.dir.join("logs/kube-event.log");
    let deadline = std::time::Instant::now() + T;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("kube-event is up")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0));
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("shut down: "));
    assert_eq!(ke.stderr_text(), "", "with LOG_FILE, stderr stays empty");
}
