//! `METRICS_ADDR`: a tiny, strict HTTP/1.1 responder (std only) for `GET /metrics` (the
//! Prometheus text format), `GET /healthz` and `GET /readyz`. Anything else is 404 (405 for
//! other methods); every answer closes the connection.
//!
//! /healthz is 200 while the watch makes progress: a frame, a new watch (the API server ends
//! each one after at most 290 s, so even a quiet cluster shows progress) or a list page within
//! `HEALTH_STALL_SECONDS`. This catches the failure other exporters have, a watch that silently
//! stopped. /readyz is 200 after the first list, while the last push was accepted (or nothing
//! was pushed yet).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use log::{debug, warn};

use crate::stats::{now_ms, Stats, CLASS_NAMES, FRAME_NAMES, LATENCY_BUCKETS, OUTCOME_NAMES};

/// A request line and headers larger than this are refused.
const MAX_REQUEST: usize = 8192;

/// Binds `addr` and serves in the background. Returns the bound address.
pub fn serve(addr: SocketAddr, stats: Arc<Stats>, stall: Duration) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let started_ms = now_ms();
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        let stats = stats.clone();
                        // One short-lived thread per connection: a slow client cannot hold up
                        // the kubelet's probes.
                        let _ = std::thread::Builder::new()
                            .name("metrics-conn".into())
                            .spawn(move || {
                                if let Err(e) = handle(c, &stats, stall, started_ms) {
                                    debug!("metrics connection: {e}");
                                }
                            });
                    }
                    Err(e) => warn!("metrics: cannot accept a connection: {e}"),
                }
            }
        })?;
    Ok(local)
}

fn handle(
    stream: TcpStream,
    stats: &Stats,
    stall: Duration,
    started_ms: u64,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    let mut total = reader.read_line(&mut line)?;
    let request_line = line.trim_end().to_string();
    // Headers are read and ignored, up to the blank line.
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        total += n;
        if n == 0 || line == "\r\n" || line == "\n" || total > MAX_REQUEST {
            break;
        }
    }
    let mut out = stream;
    if total > MAX_REQUEST {
        return respond(&mut out, 431, "text/plain", "request too large\n", false);
    }
    let mut parts = request_line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    if !version.is_some_and(|v| v.starts_with("HTTP/1.")) || parts.next().is_some() {
        return respond(&mut out, 400, "text/plain", "bad request\n", false);
    }
    let head = match method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return respond(&mut out, 405, "text/plain", "only GET and HEAD\n", false),
    };
    let path = target.unwrap_or("").split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            let body = render(stats, started_ms);
            respond(
                &mut out,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
                head,
            )
        }
        "/healthz" => {
            let (ok, why) = healthy(stats, stall, started_ms);
            respond(
                &mut out,
                if ok { 200 } else { 503 },
                "text/plain",
                &why,
                head,
            )
        }
        "/readyz" => {
            let (ok, why) = ready(stats);
            respond(
                &mut out,
                if ok { 200 } else { 503 },
                "text/plain",
                &why,
                head,
            )
        }
        _ => respond(&mut out, 404, "text/plain", "not found\n", head),
    }
}

fn respond(
    out: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &str,
    head: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        resp.push_str("Allow: GET, HEAD\r\n");
    }
    resp.push_str("\r\n");
    if !head {
        resp.push_str(body);
    }
    out.write_all(resp.as_bytes())?;
    out.flush()
}

/// /healthz: the watch showed progress within `stall`.
pub fn healthy(stats: &Stats, stall: Duration, started_ms: u64) -> (bool, String) {
    let last = Stats::get(&stats.last_watch_progress_ms).max(started_ms);
    let idle = now_ms().saturating_sub(last) / 1000;
    if idle < stall.as_secs() {
        (true, format!("ok: the watch made progress {idle}s ago\n"))
    } else {
        (
            false,
            format!(
                "stalled: no watch progress for {idle}s (HEALTH_STALL_SECONDS {})\n",
                stall.as_secs()
            ),
        )
    }
}

/// /readyz: listed once, and Loki accepted the last push (or none was tried yet).
pub fn ready(stats: &Stats) -> (bool, String) {
    use std::sync::atomic::Ordering;
    if !stats.listed.load(Ordering::Relaxed) {
        return (
            false,
            "not ready: the first list has not completed\n".into(),
        );
    }
    if stats.last_push_failed.load(Ordering::Relaxed) {
        return (false, "not ready: the last push to Loki failed\n".into());
    }
    (true, "ok\n".into())
}

/// The Prometheus text exposition of `stats`.
pub fn render(s: &Stats, started_ms: u64) -> String {
    use std::fmt::Write;
    let mut o = String::with_capacity(4096);
    let g = Stats::get;
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut o,
        "kube_event_received_total",
        "counter",
        "Event objects received, by watch frame type (list: items of list pages).",
    );
    for (i, f) in FRAME_NAMES.iter().enumerate() {
        let _ = writeln!(
            o,
            "kube_event_received_total{{frame=\"{f}\"}} {}",
            g(&s.frames[i])
        );
    }
    let counters: [(&str, &str, u64); 11] = [
        (
            "kube_event_shipped_total",
            "Occurrences handed to Loki's queue (or printed with --stdout).",
            g(&s.shipped),
        ),
        (
            "kube_event_unchanged_total",
            "Objects that showed no new occurrence (relists, invisible changes).",
            g(&s.unchanged),
        ),
        (
            "kube_event_filtered_total",
            "Occurrences left out by filters.",
            g(&s.filtered),
        ),
        (
            "kube_event_malformed_total",
            "Frames or objects that could not be parsed and were skipped.",
            g(&s.malformed),
        ),
        (
            "kube_event_pushed_total",
            "Entries Loki accepted.",
            g(&s.pushed),
        ),
        (
            "kube_event_rejected_total",
            "Entries in batches Loki refused for good (kept in DATA_DIR/rejected).",
            g(&s.rejected),
        ),
        (
            "kube_event_restamped_total",
            "Entries re-stamped because Loki found them too old for their stream.",
            g(&s.restamped),
        ),
        (
            "kube_event_truncated_total",
            "Lines whose message was cut to MAX_LINE_BYTES.",
            g(&s.truncated),
        ),
        (
            "kube_event_watch_restarts_total",
            "Watches that ended or failed and were started again.",
            g(&s.watch_restarts),
        ),
        (
            "kube_event_relists_total",
            "Lists after the first one.",
            g(&s.relists),
        ),
        (
            "kube_event_watch_expired_total",
            "Watches or lists the API server answered with 410 Expired.",
            g(&s.watch_expired),
        ),
    ];
    for (name, help, v) in counters {
        family(&mut o, name, "counter", help);
        let _ = writeln!(o, "{name} {v}");
    }
    family(
        &mut o,
        "kube_event_dropped_total",
        "counter",
        "Entries lost, by reason.",
    );
    for (reason, v) in [
        ("spool_full", g(&s.dropped_spool_full)),
        ("damaged", g(&s.dropped_damaged)),
        ("shutdown", g(&s.abandoned)),
    ] {
        let _ = writeln!(o, "kube_event_dropped_total{{reason=\"{reason}\"}} {v}");
    }
    family(
        &mut o,
        "kube_event_spool_write_errors_total",
        "counter",
        "Failed writes of the spool or the journal (each is retried).",
    );
    let _ = writeln!(
        o,
        "kube_event_spool_write_errors_total {}",
        g(&s.spool_write_errors)
    );
    family(
        &mut o,
        "kube_event_push_attempts_total",
        "counter",
        "Push requests to Loki, by outcome and HTTP status class (error: no answer).",
    );
    for (oi, outcome) in OUTCOME_NAMES.iter().enumerate() {
        for (ci, class) in CLASS_NAMES.iter().enumerate() {
            let _ = writeln!(
                o,
                "kube_event_push_attempts_total{{outcome=\"{outcome}\",status_class=\"{class}\"}} {}",
                g(&s.push_attempts[oi][ci])
            );
        }
    }
    family(
        &mut o,
        "kube_event_push_duration_seconds",
        "histogram",
        "Time of one push request to Loki.",
    );
    let mut cumulative = 0;
    for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += g(&s.push_latency[i]);
        let _ = writeln!(
            o,
            "kube_event_push_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    cumulative += g(&s.push_latency[LATENCY_BUCKETS.len()]);
    let _ = writeln!(
        o,
        "kube_event_push_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(
        o,
        "kube_event_push_duration_seconds_sum {}",
        g(&s.push_latency_sum_us) as f64 / 1e6
    );
    let _ = writeln!(o, "kube_event_push_duration_seconds_count {cumulative}");
    let now = now_ms();
    let since = |ms: u64| now.saturating_sub(if ms == 0 { started_ms } else { ms }) as f64 / 1000.0;
    let gauges: [(&str, &str, f64); 4] = [
        (
            "kube_event_spool_bytes",
            "Bytes of batches waiting for Loki.",
            g(&s.spool_bytes) as f64,
        ),
        (
            "kube_event_spool_batches",
            "Batches waiting for Loki.",
            g(&s.spool_batches) as f64,
        ),
        (
            "kube_event_seconds_since_last_push",
            "Seconds since Loki last accepted a push (since start if never).",
            since(g(&s.last_push_ok_ms)),
        ),
        (
            "kube_event_seconds_since_last_watch_frame",
            "Seconds since the last watch frame (since start if none).",
            since(g(&s.last_frame_ms)),
        ),
    ];
    for (name, help, v) in gauges {
        family(&mut o, name, "gauge", help);
        let _ = writeln!(o, "{name} {v}");
    }
    family(&mut o, "kube_event_up", "gauge", "1 while kube-event runs.");
    let _ = writeln!(o, "kube_event_up 1");
    family(
        &mut o,
        "kube_event_build_info",
        "gauge",
        "The version and git commit of this build.",
    );
    let _ = writeln!(
        o,
        "kube_event_build_info{{version=\"{}\",commit=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        option_env!("KUBE_EVENT_GIT_COMMIT").unwrap_or("unknown")
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::atomic::Ordering;

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_health_and_readiness_and_nothing_else() {
        let stats = Arc::new(Stats::default());
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            stats.clone(),
            Duration::from_secs(60),
        )
        .unwrap();
        stats.frame(crate::stats::FRAME_ADDED, crate::stats::now_ms());
        stats.push_attempt(0, Some(204), Duration::from_millis(30));
        stats.push_attempt(1, None, Duration::from_secs(100));
        Stats::add(&stats.dropped_spool_full, 3);
        Stats::add(&stats.filtered, 2);

        let m = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        assert!(m.contains("Content-Type: text/plain; version=0.0.4"));
        for line in [
            "kube_event_received_total{frame=\"added\"} 1",
            "kube_event_push_attempts_total{outcome=\"accepted\",status_class=\"2xx\"} 1",
            "kube_event_push_attempts_total{outcome=\"retry\",status_class=\"error\"} 1",
            "kube_event_push_duration_seconds_bucket{le=\"0.025\"} 0",
            "kube_event_push_duration_seconds_bucket{le=\"0.05\"} 1",
            "kube_event_push_duration_seconds_bucket{le=\"30\"} 1",
            "kube_event_push_duration_seconds_bucket{le=\"+Inf\"} 2",
            "kube_event_push_duration_seconds_count 2",
            "kube_event_dropped_total{reason=\"spool_full\"} 3",
            "kube_event_filtered_total 2",
            "kube_event_up 1",
        ] {
            assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
        }
        // Every sample line is `name{labels} number` and every family has HELP and TYPE.
        let body = m.split("\r\n\r\n").nth(1).unwrap();
        for l in body.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = l.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{l}");
            let family = name.split('{').next().unwrap();
            let base = family
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(body.contains(&format!("# TYPE {base} ")), "{l}");
        }

        // Not ready before the first list; ready after; not ready after a failed push.
        assert!(get(addr, "GET /readyz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 503"));
        stats.listed.store(true, Ordering::Relaxed);
        assert!(
            get(addr, "GET /readyz HTTP/1.1\r\n\r\n").contains("503"),
            "the last push failed"
        );
        stats.push_attempt(0, Some(204), Duration::from_millis(1));
        assert!(get(addr, "GET /readyz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        assert!(get(addr, "GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        assert!(get(addr, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(get(addr, "garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
        let head = get(addr, "HEAD /healthz HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
    }

    #[test]
    fn health_fails_after_a_stall() {
        let stats = Stats::default();
        let now = now_ms();
        stats
            .last_watch_progress_ms
            .store(now - 120_000, Ordering::Relaxed);
        assert!(!healthy(&stats, Duration::from_secs(60), now - 200_000).0);
        assert!(healthy(&stats, Duration::from_secs(600), now - 200_000).0);
        // Never any progress: counted from the start.
        let stats = Stats::default();
        assert!(healthy(&stats, Duration::from_secs(60), now).0);
        assert!(!healthy(&stats, Duration::from_secs(60), now - 61_000).0);
    }
}
