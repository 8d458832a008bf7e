//! The durability promises, end to end: the real `kube-event` binary against the fake API
//! server and the fake Loki, stopped cleanly, killed with SIGKILL, starved of Loki, given a
//! full spool and damaged state files. Each test waits for conditions with deadlines (the fakes'
//! waits, or `wait_until` polling a condition every 20 ms); none sleeps to synchronize.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::rig::Rig;
use support::util::{go_time_string, now_nanos, parse_rfc3339, rfc3339_secs};
use support::*;

const T: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Helpers

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `timeout`.
fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Names of the entries of a directory, sorted; empty if it does not exist.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// The spool's batch files, oldest (lowest sequence number) first.
fn spool_files(spool: &Path) -> Vec<PathBuf> {
    names_in(spool)
        .into_iter()
        .filter(|n| n.ends_with(".batch"))
        .map(|n| spool.join(n))
        .collect()
}

/// Total size of the spool's batch files.
fn spool_bytes(spool: &Path) -> u64 {
    spool_files(spool)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// The spool's batch files, concatenated (lossy), to look for event names in.
fn spool_text(spool: &Path) -> String {
    spool_files(spool)
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .map(|b| batch_text(&b))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A spool file's header line and push body (lossy), un-gzipped when the header ends in `gzip`,
/// decoded (its streams' debug text) when it ends in `snappy`.
fn batch_text(b: &[u8]) -> String {
    let (header, body) = batch_header(b);
    let mut text = Vec::new();
    if header.ends_with(" gzip") {
        use std::io::Read;
        // A torn file ends early: what decompressed up to there counts.
        let _ = flate2::read::GzDecoder::new(body).read_to_end(&mut text);
    } else if header.ends_with(" snappy") {
        // A torn file does not decode: it shows no entries.
        if let Ok(streams) = support::loki::parse_protobuf_push(body) {
            text = format!("{streams:?}").into_bytes();
        }
    } else {
        text = body.to_vec();
    }
    format!("{header}\n{}", String::from_utf8_lossy(&text))
}

/// A spool file's header line (lossy), and the bytes after it.
fn batch_header(b: &[u8]) -> (String, &[u8]) {
    let end = b.iter().position(|&c| c == b'\n').unwrap_or(b.len());
    let header = String::from_utf8_lossy(&b[..end]).into_owned();
    (header, b.get(end + 1..).unwrap_or_default())
}

/// Waits until every one of `names` is in a spool file.
fn wait_spooled(rig: &Rig, names: &[String]) {
    wait_until(
        T,
        &format!("all {} events in spool files", names.len()),
        || {
            let text = spool_text(&rig.spool());
            names.iter().all(|n| text.contains(n.as_str()))
        },
    );
}

/// Waits until the journal holds `n` records in all, as kube-event's debug log says
/// ("committed batch …: N records"). A batch is spooled or pushed before its records are
/// committed, so neither a spool file nor Loki's entries mean a SIGKILL would find them in
/// the journal: a kill in between ships the batch again at the restart (byte-identical
/// entries, which Loki folds, and which these tests count).
fn wait_committed(ke: &KubeEvent, n: usize) {
    let committed = |log: &str| -> usize {
        log_lines(log, "committed batch ")
            .iter()
            .filter_map(|l| l.split_once("committed batch ")?.1.split_once(": "))
            .filter_map(|(_, rest)| rest.split_once(' ')?.0.parse::<usize>().ok())
            .sum()
    };
    ke.wait_for_stderr_where(
        &format!("{n} records committed"),
        |log| committed(log) >= n,
        T,
    );
}

fn now_secs() -> String {
    rfc3339_secs(now_nanos())
}

fn parse_line(e: &Entry) -> Value {
    serde_json::from_str(&e.line)
        .unwrap_or_else(|err| panic!("line is not JSON ({err}): {}", e.line))
}

/// (event_name, count): which occurrence an entry is.
fn occurrence(e: &Entry) -> (String, u64) {
    let v = parse_line(e);
    (
        v["event_name"].as_str().unwrap_or_default().to_string(),
        v["count"].as_u64().unwrap_or(0),
    )
}

/// Distinct (labels, ts, line) among the entries Loki stored.
fn distinct(entries: &[Entry]) -> BTreeSet<(BTreeMap<String, String>, String, String)> {
    entries
        .iter()
        .map(|e| (e.labels.clone(), e.ts.clone(), e.line.clone()))
        .collect()
}

fn assert_no_duplicates(loki: &FakeLoki) {
    let d = loki.duplicates();
    assert!(
        d.is_empty(),
        "Loki received {} entries twice, e.g. {:?}",
        d.len(),
        d.first()
    );
}

/// Waits until Loki holds every occurrence of `want`; on timeout says which are missing.
fn wait_for_occurrences(
    loki: &FakeLoki,
    want: &BTreeSet<(String, u64)>,
    timeout: Duration,
) -> Vec<Entry> {
    let deadline = Instant::now() + timeout;
    loop {
        let entries = loki.entries();
        let got: BTreeSet<(String, u64)> = entries.iter().map(occurrence).collect();
        let missing: Vec<&(String, u64)> = want.difference(&got).collect();
        if missing.is_empty() {
            return entries;
        }
        if Instant::now() >= deadline {
            let answers: Vec<String> = loki
                .attempts()
                .iter()
                .map(|a| format!("{} {}", a.status, a.body.trim_end()))
                .collect();
            panic!(
                "timed out after {timeout:?}: {} of {} occurrences missing in Loki, e.g. {:?}; \
                 Loki holds {} entries; push answers: {answers:?}",
                missing.len(),
                want.len(),
                &missing[..missing.len().min(10)],
                entries.len()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A core/v1 event at `ts`, count 1.
fn event(ns: &str, name: &str, message: &str, ts: &str) -> Value {
    core_event(ns, name, "BackOff", message, 1, ts)
}

/// Lines of `log` that contain `needle`.
fn log_lines<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

/// The level env_logger printed on a log line (`[2026-… ERROR kube_event::x] …`).
fn level_of(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or("")
}

/// `{a="1", b="2", service_name="…"}` as Loki prints a stream in its answers.
fn loki_stream_string(labels: &BTreeMap<String, String>) -> String {
    let mut all = labels.clone();
    if !all.contains_key("service_name") {
        let service = labels
            .get("job")
            .cloned()
            .unwrap_or("unknown_service".into());
        all.insert("service_name".into(), service);
    }
    let parts: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", parts.join(", "))
}

// ---------------------------------------------------------------------------------------
// 1. A clean restart re-sends nothing.

#[test]
fn a_clean_restart_resumes_from_the_saved_resource_version_and_resends_nothing() {
    let rig = Rig::new();
    let ts = now_secs();
    for i in 0..20 {
        rig.api.create(event(
            "demo",
            &format!("a-{i:02}.x"),
            &format!("a {i}"),
            &ts,
        ));
    }
    let ke = rig.start_watching(&[]);
    rig.loki.wait_for_entries(20, T);
    let rv_at_stop = rig.api.resource_version();
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
    assert!(
        rig.data().join("checkpoint").is_file(),
        "no DATA_DIR/checkpoint after a clean stop: {:?}",
        names_in(&rig.data())
    );
    assert!(
        names_in(&rig.data())
            .iter()
            .any(|n| n.starts_with("journal-")),
        "no DATA_DIR/journal-<gen> after a clean stop: {:?}",
        names_in(&rig.data())
    );
    assert!(spool_files(&rig.spool()).is_empty(), "spool not empty");

    // While it is down: five new events and a repeat of an old one.
    for i in 0..5 {
        rig.api
            .create(event("demo", &format!("b-{i}.x"), &format!("b {i}"), &ts));
    }
    let later = rfc3339_secs(now_nanos() + 1_000_000_000);
    rig.api.update("demo", "a-03.x", |ev| {
        ev["count"] = json!(2);
        ev["lastTimestamp"] = json!(later);
    });

    let before = rig.api.requests().len();
    let ke = rig.start_watching(&[]);
    let log = ke.wait_for_stderr("resuming from resourceVersion", T);
    assert!(
        log_lines(&log, "resuming from resourceVersion")[0].contains(&rv_at_stop),
        "expected to resume from {rv_at_stop}: {log}"
    );
    let reqs = rig.api.requests()[before..].to_vec();
    assert!(
        reqs[0].is_watch() && !reqs.iter().any(|r| r.is_list()),
        "expected a watch and no list after the restart: {reqs:?}"
    );
    assert_eq!(reqs[0].q("resourceVersion"), Some(rv_at_stop.as_str()));
    rig.loki.wait_for_entries(26, T);
    // And after the restart.
    rig.api.create(event("demo", "c-0.x", "c 0", &now_secs()));
    rig.loki.wait_for_entries(27, T);
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
    let entries = rig.loki.entries();
    assert_eq!(
        entries.len(),
        27,
        "{:?}",
        entries.iter().map(occurrence).collect::<Vec<_>>()
    );
    assert_no_duplicates(&rig.loki);
    assert!(entries
        .iter()
        .any(|e| occurrence(e) == ("a-03.x".into(), 2)));
}

#[test]
fn a_restart_after_the_saved_resource_version_was_compacted_relists_and_resends_nothing() {
    let rig = Rig::new();
    let ts = now_secs();
    for i in 0..10 {
        rig.api
            .create(event("demo", &format!("a-{i}.x"), &format!("a {i}"), &ts));
    }
    let ke = rig.start_watching(&[]);
    rig.loki.wait_for_entries(10, T);
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());

    for i in 0..3 {
        rig.api
            .create(event("demo", &format!("b-{i}.x"), &format!("b {i}"), &ts));
    }
    let later = rfc3339_secs(now_nanos() + 1_000_000_000);
    rig.api.update("demo", "a-1.x", |ev| {
        ev["count"] = json!(2);
        ev["lastTimestamp"] = json!(later);
    });
    rig.api.compact();

    let before = rig.api.requests().len();
    let ke = rig.start(&[]);
    rig.loki.wait_for_entries(14, T);
    rig.api
        .wait_for_requests(|r| r[before.min(r.len())..].iter().any(|r| r.is_list()), T);
    rig.api.create(event("demo", "c-0.x", "c 0", &now_secs()));
    rig.loki.wait_for_entries(15, T);
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
    assert_eq!(rig.loki.entries().len(), 15);
    assert_no_duplicates(&rig.loki);
}

// ---------------------------------------------------------------------------------------
// 2. kill -9 at any moment loses nothing.

#[test]
fn sigkill_at_any_moment_loses_no_occurrence_and_duplicates_are_exact_copies() {
    let rig = Rig::new();
    let conf: &[(&str, &str)] = &[("BATCH_MAX_BYTES", "1024")];
    let mut want: BTreeSet<(String, u64)> = BTreeSet::new();
    let ts = now_secs();
    for i in 0..10 {
        let name = format!("seed-{i}.x");
        rig.api
            .create(event("demo", &name, &format!("seed {i}"), &ts));
        want.insert((name, 1));
    }
    for round in 0..3 {
        let ke = rig.start_watching(conf);
        if round == 1 {
            // The next pushes fail: the batches wait in the spool, retried with backoff.
            rig.loki.fail_next(2, 500, "internal error", None);
        }
        for i in 0..20 {
            let name = format!("r{round}-{i:02}.x");
            rig.api.create(event(
                "demo",
                &name,
                &format!("round {round} #{i}"),
                &now_secs(),
            ));
            want.insert((name, 1));
        }
        match round {
            // At once, while the burst is being read.
            0 => {}
            // While a batch is spooled and Loki refuses it.
            1 => wait_until(T, "a batch in the spool", || {
                spool_text(&rig.spool()).contains("r1-")
            }),
            // While batches of this round are being pushed.
            _ => wait_until(T, "an entry of round 2 in Loki", || {
                rig.loki
                    .entries()
                    .iter()
                    .any(|e| e.line.contains("\"event_name\":\"r2-"))
            }),
        }
        ke.sigkill();
        ke.wait_exit(T);
        // While it is down: more events, and repeats of older ones.
        for i in 20..25 {
            let name = format!("r{round}-{i:02}.x");
            rig.api.create(event(
                "demo",
                &name,
                &format!("round {round} #{i}"),
                &now_secs(),
            ));
            want.insert((name, 1));
        }
        let repeat = format!("seed-{round}.x");
        let later = rfc3339_secs(now_nanos() + 1_000_000_000);
        rig.api.update("demo", &repeat, |ev| {
            ev["count"] = json!(2);
            ev["lastTimestamp"] = json!(later);
        });
        want.insert((repeat, 2));
    }
    let ke = rig.start_watching(conf);
    let entries = wait_for_occurrences(&rig.loki, &want, Duration::from_secs(40));
    let got: BTreeSet<(String, u64)> = entries.iter().map(occurrence).collect();
    let unexpected: Vec<_> = got.difference(&want).collect();
    assert!(
        unexpected.is_empty(),
        "occurrences nobody made: {unexpected:?}"
    );
    // Duplicates, if any, are byte-identical: as many distinct entries as occurrences.
    let distinct = distinct(&entries);
    assert_eq!(
        distinct.len(),
        want.len(),
        "some occurrence reached Loki as two different entries"
    );
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
}

// ---------------------------------------------------------------------------------------
// 3. Loki outage, then kill -9: the spool survives and is pushed oldest first.

#[test]
fn batches_spooled_while_loki_is_down_survive_sigkill_and_arrive_oldest_first() {
    let rig = Rig::new();
    rig.loki.go_away();
    let conf: &[(&str, &str)] = &[("BATCH_MAX_BYTES", "1024")];
    let ke = rig.start_watching(conf);
    let base = now_nanos() - 300_000_000_000;
    let mut names = Vec::new();
    for i in 0..30 {
        let name = format!("o-{i:02}.x");
        let ts = rfc3339_secs(base + i as i128 * 1_000_000_000);
        rig.api
            .create(event("demo", &name, &format!("outage {i}"), &ts));
        names.push(name);
    }
    ke.wait_for_stderr("spooled batch", T);
    wait_spooled(&rig, &names);
    assert!(
        spool_files(&rig.spool()).len() >= 3,
        "expected several batches with BATCH_MAX_BYTES=1024: {:?}",
        names_in(&rig.spool())
    );
    for n in names_in(&rig.spool()) {
        let (seq, ext) = n.split_once('.').unwrap_or((&n, ""));
        assert!(
            ext == "batch" && seq.len() == 20 && seq.bytes().all(|b| b.is_ascii_digit()),
            "spool file name {n:?} is not <20 digits>.batch"
        );
    }
    ke.sigkill();
    ke.wait_exit(T);

    // Neither a relist nor a watch replay can show these events again.
    for n in &names {
        rig.api.delete("demo", n);
    }
    rig.api.compact();
    rig.loki.come_back();
    let ke = rig.start(conf);
    let want: BTreeSet<(String, u64)> = names.iter().map(|n| (n.clone(), 1)).collect();
    let entries = wait_for_occurrences(&rig.loki, &want, T);
    assert_eq!(distinct(&entries).len(), 30);
    wait_until(T, "an empty spool", || spool_files(&rig.spool()).is_empty());

    // Oldest first: the first push holds the oldest entry, and timestamps never go back
    // from one accepted push to the next.
    let pushes: Vec<_> = rig
        .loki
        .pushes()
        .into_iter()
        .filter(|p| p.status == 204)
        .collect();
    let first: Vec<&String> = pushes[0]
        .streams
        .iter()
        .flat_map(|(_, v)| v.iter().map(|(_, line)| line))
        .collect();
    assert!(
        first
            .iter()
            .any(|l| l.contains("\"event_name\":\"o-00.x\"")),
        "the first push after the restart lacks the oldest entry: {first:?}"
    );
    let order: Vec<i128> = pushes
        .iter()
        .flat_map(|p| p.streams.iter().flat_map(|(_, v)| v.iter()))
        .map(|(ts, _)| ts.parse().unwrap())
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "pushed out of order: {:?}",
        order
            .iter()
            .map(|t| (t - base) / 1_000_000_000)
            .collect::<Vec<_>>()
    );
    drop(ke);
}

#[test]
fn sigterm_while_loki_is_down_keeps_the_batches_for_the_next_run() {
    let rig = Rig::new();
    rig.loki.go_away();
    let ke = rig.start_watching(&[]);
    let ts = now_secs();
    for i in 0..5 {
        rig.api
            .create(event("demo", &format!("t-{i}.x"), &format!("t {i}"), &ts));
    }
    wait_until(T, "5 events in the spool", || {
        let text = spool_text(&rig.spool());
        (0..5).all(|i| text.contains(&format!("t-{i}.x")))
    });
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
    assert!(
        !spool_files(&rig.spool()).is_empty(),
        "the spool was emptied"
    );
    for i in 0..5 {
        rig.api.delete("demo", &format!("t-{i}.x"));
    }
    rig.api.compact();
    rig.loki.come_back();
    let ke = rig.start(&[]);
    rig.loki.wait_for_entries(5, T);
    wait_until(T, "an empty spool", || spool_files(&rig.spool()).is_empty());
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
    assert_eq!(rig.loki.entries().len(), 5);
    assert_no_duplicates(&rig.loki);
}

/// The spool holds batches as they are pushed (snappy protobuf by default, gzipped JSON with
/// `LOKI_COMPRESSION=gzip`, JSON with `none`). A batch spooled one way and pushed after the
/// setting changed goes out as the setting says, and nothing is lost or repeated.
#[test]
fn spooled_batches_go_out_as_loki_compression_says_even_after_it_changed() {
    let rig = Rig::new();
    let headers = |spool: &Path| -> Vec<String> {
        spool_files(spool)
            .iter()
            .map(|p| batch_header(&std::fs::read(p).unwrap()).0)
            .collect()
    };
    // (spooled with, pushed with, the body's word in the spool file's header)
    let rounds = [
        ("gzip", "none", "gzip"),
        ("none", "gzip", "json"),
        ("snappy", "gzip", "snappy"),
        ("gzip", "snappy", "gzip"),
        ("snappy", "none", "snappy"),
        ("none", "snappy", "json"),
    ];
    for (round, (spooled_with, pushed_with, word)) in rounds.into_iter().enumerate() {
        rig.loki.go_away();
        let ke = rig.start_watching(&[("LOKI_COMPRESSION", spooled_with)]);
        let names: Vec<String> = (0..3).map(|i| format!("c{round}-{i}.x")).collect();
        for n in &names {
            rig.api.create(event("demo", n, "compression", &now_secs()));
        }
        wait_spooled(&rig, &names);
        wait_committed(&ke, names.len());
        // SIGKILL: SIGTERM would wait its 10 s for the absent Loki.
        ke.sigkill();
        ke.wait_exit(T);
        let spooled = headers(&rig.spool());
        assert!(
            !spooled.is_empty() && spooled.iter().all(|h| h.ends_with(&format!(" {word}"))),
            "LOKI_COMPRESSION={spooled_with}: spool headers {spooled:?}"
        );
        // `--show-batch` prints each as Loki's JSON, whatever it was spooled as.
        let mut shown = Vec::new();
        for file in spool_files(&rig.spool()) {
            let show = KubeEvent::spawn_args(
                rig.dir.path(),
                &[],
                &["--show-batch", file.to_str().unwrap()],
            );
            assert!(show.wait_exit(T).success(), "{}", show.stderr_text());
            let body: serde_json::Value = serde_json::from_str(&show.stdout_text())
                .unwrap_or_else(|e| panic!("{e}: {}", show.stdout_text()));
            for stream in body["streams"].as_array().unwrap() {
                assert_eq!(stream["stream"]["job"], "kube-event", "{body}");
                for v in stream["values"].as_array().unwrap() {
                    let line: serde_json::Value =
                        serde_json::from_str(v[1].as_str().unwrap()).unwrap();
                    shown.push(line["event_name"].as_str().unwrap().to_string());
                }
            }
        }
        shown.sort();
        assert_eq!(shown, names, "LOKI_COMPRESSION={spooled_with}");
        rig.loki.come_back();
        let before = rig.loki.pushes().len();
        let ke = rig.start(&[("LOKI_COMPRESSION", pushed_with)]);
        rig.loki.wait_for_entries(3 * (round + 1), T);
        wait_until(T, "an empty spool", || spool_files(&rig.spool()).is_empty());
        ke.sigterm();
        assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
        let pushes = rig.loki.pushes();
        let want = (pushed_with != "none").then_some(pushed_with);
        let got: Vec<Option<&str>> = pushes[before..]
            .iter()
            .map(|p| p.header("content-encoding"))
            .collect();
        assert!(
            got.iter().all(|&e| e == want),
            "LOKI_COMPRESSION={pushed_with}: {got:?}"
        );
    }
    assert_eq!(rig.loki.entries().len(), 3 * rounds.len());
    assert_no_duplicates(&rig.loki);
}

/// A batch goes to Loki before it goes to disk: while Loki takes every push, nothing is
/// written to the spool. A batch whose push fails is in the spool before it is pushed again,
/// and gone once Loki accepted it.
#[test]
fn a_batch_is_spooled_when_its_push_fails_and_gone_once_accepted() {
    let rig = Rig::new();
    let spool = rig.spool();
    let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let seen2 = seen.clone();
    // Runs inside the fake Loki while it handles a push it accepts.
    rig.loki.set_rule(move |e| {
        let name = serde_json::from_str::<Value>(&e.line).unwrap()["event_name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let spooled = spool_text(&spool).contains(&name);
        seen2.lock().unwrap().push((name, spooled));
        None
    });
    let ts = now_secs();
    for i in 0..5 {
        rig.api
            .create(event("demo", &format!("s-{i}.x"), &format!("s {i}"), &ts));
    }
    let ke = rig.start_watching(&[("BATCH_MAX_BYTES", "1024")]);
    rig.loki.wait_for_entries(5, T);
    let first = seen.lock().unwrap().clone();
    assert!(
        first.iter().all(|(_, spooled)| !*spooled),
        "entries written to DATA_DIR/spool though Loki took their first push: {first:?}"
    );
    assert!(
        spool_files(&rig.spool()).is_empty(),
        "{:?}",
        names_in(&rig.spool())
    );

    // Its first push fails: the batch is written, then pushed from the spool.
    rig.loki.fail_next(1, 500, "internal error", None);
    rig.api.create(event("demo", "f-0.x", "f 0", &now_secs()));
    rig.loki.wait_for_entries(6, T);
    let last = seen.lock().unwrap().last().cloned();
    assert_eq!(
        last,
        Some(("f-0.x".to_string(), true)),
        "the batch whose push failed was not in DATA_DIR/spool when it was pushed again"
    );
    wait_until(T, "an empty spool after 2xx", || {
        spool_files(&rig.spool()).is_empty()
    });
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
    assert_no_duplicates(&rig.loki);
}

/// kill -9 while Loki hangs on the first push of a batch that is only in memory: its records
/// and resourceVersion were not committed, so the next start resumes the watch from before
/// it, and every occurrence reaches Loki once, including a repeat made while kube-event was
/// down.
#[test]
fn sigkill_while_loki_hangs_on_a_batch_not_yet_written_loses_nothing() {
    let rig = Rig::new();
    rig.api.create(event("demo", "a-0.x", "a 0", &now_secs()));
    let ke = rig.start_watching(&[]);
    // Taken and committed: the resume point is past it.
    rig.loki.wait_for_entries(1, T);
    rig.loki.hold();
    for i in 0..3 {
        rig.api.create(event(
            "demo",
            &format!("b-{i}.x"),
            &format!("b {i}"),
            &now_secs(),
        ));
    }
    rig.loki.wait_for_held(1, T);
    assert!(
        spool_files(&rig.spool()).is_empty(),
        "a batch was written before its first push: {:?}",
        names_in(&rig.spool())
    );
    ke.sigkill();
    ke.wait_exit(T);
    // The push in flight fails: Loki stored nothing of it.
    rig.loki.fail_next(1, 500, "internal error", None);
    rig.loki.release();
    rig.loki.wait_for_attempts(2, T);
    assert_eq!(rig.loki.entries().len(), 1);
    // While it is down: a repeat of an event of that batch, and a new event.
    let later = rfc3339_secs(now_nanos() + 1_000_000_000);
    rig.api.update("demo", "b-0.x", |ev| {
        ev["count"] = json!(2);
        ev["lastTimestamp"] = json!(later);
    });
    rig.api.create(event("demo", "c-0.x", "c 0", &now_secs()));
    let ke = rig.start_watching(&[]);
    let want: BTreeSet<(String, u64)> = [
        ("a-0.x", 1),
        ("b-0.x", 1),
        ("b-1.x", 1),
        ("b-2.x", 1),
        ("b-0.x", 2),
        ("c-0.x", 1),
    ]
    .iter()
    .map(|(n, c)| (n.to_string(), *c))
    .collect();
    wait_for_occurrences(&rig.loki, &want, T);
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
    let got: Vec<(String, u64)> = rig.loki.entries().iter().map(occurrence).collect();
    assert_eq!(got.len(), want.len(), "{got:?}");
    assert_no_duplicates(&rig.loki);
}

/// Creates `n` events whose ~24 KB messages are letters snappy cannot shorten (push bodies
/// stay as big as their batches), and returns their occurrences.
fn incompressible_storm(rig: &Rig, n: usize) -> BTreeSet<(String, u64)> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = |n: usize| -> String {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect()
    };
    let ts = now_secs();
    (0..n)
        .map(|i| {
            let name = format!("s-{i:03}.x");
            rig.api
                .create(event("demo", &name, &format!("{i} {}", noise(24_000)), &ts));
            (name, 1)
        })
        .collect()
}

/// The two throttled-Loki tests' settings: batches of ~10 of `incompressible_storm`'s events,
/// and the debug log that says when the watcher waits for room and when a batch is spooled.
const THROTTLED_STORM: &[(&str, &str)] = &[("BATCH_MAX_BYTES", "262144"), ("LOG_LEVEL", "debug")];

/// A Loki that takes every push, but slower than the watch brings events: the watcher waits
/// for the pusher (the events wait in the API server) instead of the batches going through
/// the spool, and every occurrence arrives once.
#[test]
fn a_storm_faster_than_a_healthy_loki_waits_in_the_api_server_not_in_the_spool() {
    let rig = Rig::new();
    rig.loki.throttle(Duration::from_millis(100));
    // ~10 lines to a batch: 200 events are ~20 batches, whose bodies would pass the 2 MB
    // the pusher keeps in memory after ~7, were it to take each as it is sealed.
    let ke = rig.start_watching(THROTTLED_STORM);
    let want = incompressible_storm(&rig, 200);
    wait_for_occurrences(&rig.loki, &want, T);
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
    let log = ke.stderr_text();
    assert!(
        !log_lines(&log, "waiting for room").is_empty(),
        "the watcher never waited for the pusher: {} pushes",
        rig.loki.push_count()
    );
    let spooled = log_lines(&log, "spooled batch");
    assert!(
        spooled.is_empty(),
        "{} of {} batches went through the spool though Loki took every push: {:?}",
        spooled.len(),
        rig.loki.push_count(),
        spooled.first()
    );
    assert_eq!(rig.loki.entries().len(), 200);
    assert_no_duplicates(&rig.loki);
}

/// A Loki too slow for long: once the watcher has been held back for 10 s, the batches go
/// through the spool (the events are on disk, not waiting in the API server), and every
/// occurrence arrives once.
#[test]
fn a_loki_too_slow_for_long_has_the_batches_spooled_after_ten_seconds() {
    let rig = Rig::new();
    rig.loki.throttle(Duration::from_millis(600));
    // ~24 batches, 0.6 s a push: ~14 s one at a time.
    let ke = rig.start_watching(THROTTLED_STORM);
    let started = Instant::now();
    let want = incompressible_storm(&rig, 240);
    let log = ke.wait_for_stderr("spooled batch", Duration::from_secs(40));
    let spilled = started.elapsed();
    assert!(
        spilled >= Duration::from_secs(10),
        "spooled after {spilled:?}, though Loki took every push: {:?}",
        log_lines(&log, "spooled batch").first()
    );
    wait_for_occurrences(&rig.loki, &want, Duration::from_secs(40));
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
    assert_eq!(rig.loki.entries().len(), 240);
    assert_no_duplicates(&rig.loki);
    assert!(
        spool_files(&rig.spool()).is_empty(),
        "{:?}",
        names_in(&rig.spool())
    );
}

// ---------------------------------------------------------------------------------------
// 4. A full spool drops its oldest batches.

#[test]
fn a_full_spool_drops_the_oldest_batches_logs_an_error_and_stays_within_its_limit() {
    const MAX: u64 = 20_000;
    const BATCH: u64 = 4096;
    let rig = Rig::new();
    rig.loki.go_away();
    let conf: &[(&str, &str)] = &[("SPOOL_MAX_BYTES", "20000"), ("BATCH_MAX_BYTES", "4096")];
    let ke = rig.start_watching(conf);
    let base = now_nanos() - 600_000_000_000;
    let padding = "p".repeat(200);
    let mut peak = 0;
    for i in 0..300 {
        let ts = rfc3339_secs(base + i as i128 * 1_000_000_000);
        rig.api.create(event(
            "demo",
            &format!("f-{i:03}.x"),
            &format!("{i} {padding}"),
            &ts,
        ));
        if i % 25 == 0 {
            peak = peak.max(spool_bytes(&rig.spool()));
        }
    }
    wait_until(T, "the newest event in the spool", || {
        peak = peak.max(spool_bytes(&rig.spool()));
        spool_text(&rig.spool()).contains("f-299.x")
    });
    let log = ke.wait_for_stderr("spool full", T);
    peak = peak.max(spool_bytes(&rig.spool()));
    assert!(
        peak <= MAX + BATCH,
        "the spool reached {peak} bytes, SPOOL_MAX_BYTES {MAX} + one batch {BATCH}"
    );
    let full = log_lines(&log, "spool full");
    for line in &full {
        assert_eq!(level_of(line), "ERROR", "{line}");
        let msg = line.split_once("] ").map(|(_, m)| m).unwrap_or(line);
        let words: Vec<&str> = msg.split_whitespace().collect();
        assert!(
            words
                .windows(2)
                .any(|w| w[1].starts_with("entries") && w[0].parse::<u64>().is_ok_and(|n| n > 0)),
            "no number of dropped entries (\"<n> entries\") in {line:?}"
        );
    }

    rig.loki.come_back();
    wait_until(Duration::from_secs(40), "the newest event in Loki", || {
        rig.loki
            .entries()
            .iter()
            .any(|e| e.line.contains("\"event_name\":\"f-299.x\""))
    });
    wait_until(T, "an empty spool", || spool_files(&rig.spool()).is_empty());
    let entries = rig.loki.entries();
    let got: BTreeSet<String> = entries.iter().map(|e| occurrence(e).0).collect();
    assert!(
        got.len() < 300,
        "nothing was dropped: {} arrived",
        got.len()
    );
    for i in 295..300 {
        assert!(got.contains(&format!("f-{i:03}.x")), "f-{i:03}.x lost");
    }
    assert_no_duplicates(&rig.loki);
    drop(ke);
}

// ---------------------------------------------------------------------------------------
// 5. Batches Loki refuses: kept with the answer; too far behind: re-stamped.

#[test]
fn a_rejected_batch_is_kept_with_its_answer_and_not_pushed_again() {
    let rig = Rig::new();
    rig.loki.set_rule(|e| {
        if e.line.contains("TOO-LONG") {
            Some((
                400,
                "max entry size '262144' bytes exceeded for stream '{job=\"kube-event\"}' while adding an entry with length '300000' bytes".into(),
            ))
        } else if e.labels.get("namespace").map(String::as_str) == Some("wide") {
            let labels: Vec<String> = (0..12).map(|i| format!("l{i}=\"v\"")).collect();
            Some((
                400,
                format!(
                    "entry for stream '{{job=\"kube-event\", {}, service_name=\"kube-event\"}}' has 16 label names; limit 15",
                    labels.join(", ")
                ),
            ))
        } else {
            None
        }
    });
    let ke = rig.start_watching(&[]);
    rig.api
        .create(event("demo", "bad.1", "TOO-LONG message", &now_secs()));
    ke.wait_for_stderr("max entry size", T);
    rig.api
        .create(event("wide", "wide.1", "many labels", &now_secs()));
    ke.wait_for_stderr("16 label names", T);
    let rejected = rig.data().join("rejected");
    wait_until(T, "two rejected batches with answers", || {
        names_in(&rejected).len() >= 4
    });
    let names = names_in(&rejected);
    let answers: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with(".answer.txt"))
        .collect();
    let bodies: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with(".json") && !n.ends_with(".answer.txt"))
        .collect();
    assert_eq!((answers.len(), bodies.len()), (2, 2), "{names:?}");
    let texts: Vec<String> = answers
        .iter()
        .map(|n| std::fs::read_to_string(rejected.join(n)).unwrap())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("HTTP 400\nmax entry size")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("HTTP 400\nentry for stream") && t.contains("16 label names")),
        "{texts:?}"
    );
    let bodies_text: String = bodies
        .iter()
        .map(|n| std::fs::read_to_string(rejected.join(n)).unwrap())
        .collect();
    assert!(bodies_text.contains("bad.1") && bodies_text.contains("wide.1"));
    for b in &bodies {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(rejected.join(b)).unwrap())
            .unwrap_or_else(|e| panic!("{b} is not a push body: {e}"));
        assert!(v["streams"].is_array(), "{b}: {v}");
    }
    // Out of the spool, and not pushed again by the next run.
    wait_until(T, "an empty spool", || spool_files(&rig.spool()).is_empty());
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
    // The whole log, now that it is complete: each rejection was explained at error level.
    let log = ke.stderr_text();
    let lines = log_lines(&log, "rejected");
    assert!(
        lines.iter().filter(|l| level_of(l) == "ERROR").count() >= 2,
        "{lines:?}"
    );
    let refused = rig
        .loki
        .attempts()
        .iter()
        .filter(|a| a.status == 400)
        .count();
    let ke = rig.start_watching(&[]);
    rig.api.create(event("demo", "good.1", "fine", &now_secs()));
    rig.loki.wait_for_entries(1, T);
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
    assert_eq!(
        rig.loki
            .attempts()
            .iter()
            .filter(|a| a.status == 400)
            .count(),
        refused,
        "a rejected batch was pushed again"
    );
    assert_eq!(names_in(&rejected).len(), 4);
}

#[test]
fn an_entry_too_far_behind_is_restamped_to_the_oldest_acceptable_time() {
    let rig = Rig::new();
    rig.loki.disable_time_checks();
    let now = now_nanos() / 1_000_000_000 * 1_000_000_000;
    let cutoff = now - 3600 * 1_000_000_000;
    let stale_ts = rfc3339_secs(now - 2 * 3600 * 1_000_000_000);
    let fresh_ts = rfc3339_secs(now);
    rig.loki.set_rule(move |e| {
        let nanos: i128 = e.ts.parse().unwrap();
        (nanos < cutoff).then(|| {
            (
                400,
                format!(
                    "entry with timestamp {} ignored, reason: 'entry too far behind, entry timestamp is: {}, oldest acceptable timestamp is: {}',\nuser 'fake', total ignored: 1 out of 1 for stream: {}",
                    go_time_string(nanos),
                    rfc3339_secs(nanos),
                    rfc3339_secs(cutoff),
                    loki_stream_string(&e.labels)
                ),
            )
        })
    });
    rig.api
        .create(event("demo", "stale.1", "old news", &stale_ts));
    rig.api
        .create(event("demo", "fresh.1", "new news", &fresh_ts));
    let ke = rig.start(&[]);
    wait_until(T, "the stale entry in Loki", || {
        rig.loki
            .entries()
            .iter()
            .any(|e| e.line.contains("\"event_name\":\"stale.1\""))
    });
    let entries = rig.loki.entries();
    let stale: Vec<&Entry> = entries
        .iter()
        .filter(|e| occurrence(e).0 == "stale.1")
        .collect();
    assert_eq!(stale.len(), 1);
    assert_eq!(
        stale[0].ts,
        cutoff.to_string(),
        "not re-stamped to the cutoff"
    );
    assert_eq!(parse_line(stale[0])["time"], stale_ts.as_str());
    let fresh: Vec<&Entry> = entries
        .iter()
        .filter(|e| occurrence(e).0 == "fresh.1")
        .collect();
    assert!(!fresh.is_empty());
    assert!(fresh
        .iter()
        .all(|e| e.ts == parse_rfc3339(&fresh_ts).unwrap().to_string()));
    // Nothing was given up on.
    let rejected = names_in(&rig.data().join("rejected"));
    assert!(rejected.is_empty(), "{rejected:?}");
    drop(ke);
}

// ---------------------------------------------------------------------------------------
// 6. MAX_LINE_BYTES.

/// Checks a cut message: the kept part is a prefix of `original`, then
/// `… [kube-event: N bytes cut]` with N the bytes removed.
fn assert_cut(message: &str, original: &str) {
    let (kept, marker) = message
        .rsplit_once("… [kube-event: ")
        .unwrap_or_else(|| panic!("no cut marker at the end of …{:?}", tail(message)));
    let n: usize = marker
        .strip_suffix(" bytes cut]")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad cut marker {marker:?}"));
    assert!(original.starts_with(kept), "the kept part is not a prefix");
    assert!(n > 0);
    assert_eq!(
        kept.len() + n,
        original.len(),
        "kept {} bytes + {n} cut != {} bytes",
        kept.len(),
        original.len()
    );
}

fn tail(s: &str) -> &str {
    let mut i = s.len().saturating_sub(80);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

#[test]
fn a_300_kib_message_is_cut_to_max_line_bytes_with_a_marker() {
    let rig = Rig::new();
    let message = "x".repeat(300 * 1024);
    let ts = now_secs();
    rig.api.create(event("demo", "huge.1", &message, &ts));
    let ke = rig.start(&[]);
    let e = rig.loki.wait_for_entries(1, T).remove(0);
    assert!(e.line.len() <= 262_144, "line of {} bytes", e.line.len());
    let v = parse_line(&e);
    assert_cut(v["message"].as_str().unwrap(), &message);
    assert!(v["message"].as_str().unwrap().ends_with(" bytes cut]"));
    assert_eq!(v["event_name"], "huge.1");
    assert_eq!(v["time"], ts.as_str());
    assert_eq!(e.ts, parse_rfc3339(&ts).unwrap().to_string());
    assert!(names_in(&rig.data().join("rejected")).is_empty());
    drop(ke);
}

#[test]
fn max_line_bytes_cuts_multibyte_and_escaped_messages_into_valid_json() {
    let rig = Rig::new();
    // 2-byte characters and characters JSON escapes (quote, backslash, newline).
    let message: String = "é\"\\\n".repeat(2500);
    rig.api
        .create(event("demo", "wide.1", &message, &now_secs()));
    rig.api
        .create(event("demo", "small.1", "short", &now_secs()));
    let ke = rig.start(&[("MAX_LINE_BYTES", "4096")]);
    let entries = rig.loki.wait_for_entries(2, T);
    for e in &entries {
        assert!(e.line.len() <= 4096, "line of {} bytes", e.line.len());
    }
    let wide = entries
        .iter()
        .find(|e| occurrence(e).0 == "wide.1")
        .unwrap();
    assert_cut(parse_line(wide)["message"].as_str().unwrap(), &message);
    let small = entries
        .iter()
        .find(|e| occurrence(e).0 == "small.1")
        .unwrap();
    assert_eq!(parse_line(small)["message"], "short");
    drop(ke);
}

// ---------------------------------------------------------------------------------------
// 7. Damaged files are moved aside.

#[test]
fn a_damaged_checkpoint_is_moved_aside_and_kube_event_keeps_working() {
    let rig = Rig::new();
    rig.api.create(event("demo", "a.1", "a", &now_secs()));
    let ke = rig.start_watching(&[]);
    rig.loki.wait_for_entries(1, T);
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
    let checkpoint = rig.data().join("checkpoint");
    assert!(checkpoint.is_file(), "{:?}", names_in(&rig.data()));
    std::fs::write(&checkpoint, b"\x00\xffnot a checkpoint {{{\n").unwrap();

    let ke = rig.start_watching(&[]);
    let log = ke.wait_for_stderr("moved aside", T);
    let line = log_lines(&log, "moved aside")[0];
    assert_eq!(level_of(line), "WARN", "{line}");
    assert!(line.contains("checkpoint"), "{line}");
    let damaged = names_in(&rig.data().join("damaged"));
    assert!(
        damaged.iter().any(|n| n.contains("checkpoint")),
        "DATA_DIR/damaged: {damaged:?}"
    );
    rig.api.create(event("demo", "b.1", "b", &now_secs()));
    wait_until(T, "the new event in Loki", || {
        rig.loki.entries().iter().any(|e| occurrence(e).0 == "b.1")
    });
    assert!(ke.try_exit().is_none(), "{}", ke.stderr_text());
    // A new, good checkpoint is written.
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
    let ke = rig.start_watching(&[]);
    let log = ke.wait_for_stderr("resuming from resourceVersion", T);
    assert_eq!(log_lines(&log, "moved aside").len(), 0, "{log}");
    drop(ke);
}

#[test]
fn garbage_at_the_end_of_the_journal_is_moved_aside_and_its_good_records_are_kept() {
    let rig = Rig::new();
    for i in 0..5 {
        rig.api
            .create(event("demo", &format!("a-{i}.x"), "a", &now_secs()));
    }
    let ke = rig.start_watching(&[]);
    rig.loki.wait_for_entries(5, T);
    wait_until(T, "an empty spool", || spool_files(&rig.spool()).is_empty());
    wait_committed(&ke, 5);
    // Killed, so that the journal (not a checkpoint) holds what was shipped.
    ke.sigkill();
    ke.wait_exit(T);
    let journals: Vec<String> = names_in(&rig.data())
        .into_iter()
        .filter(|n| n.starts_with("journal-"))
        .collect();
    assert_eq!(journals.len(), 1, "{:?}", names_in(&rig.data()));
    let journal = rig.data().join(&journals[0]);
    assert!(
        std::fs::metadata(&journal).unwrap().len() > 0,
        "empty journal"
    );
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&journal)
            .unwrap();
        f.write_all(b"\x00\x01garbage\xff{{{not a record").unwrap();
    }
    // A relist at the restart: only the journal's good records keep the five old events
    // from being shipped again.
    rig.api.compact();

    let ke = rig.start_watching(&[]);
    let log = ke.wait_for_stderr("moved aside", T);
    let line = log_lines(&log, "moved aside")[0];
    assert_eq!(level_of(line), "WARN", "{line}");
    assert!(line.contains(&journals[0]), "{line}");
    let damaged = names_in(&rig.data().join("damaged"));
    assert!(
        damaged.iter().any(|n| n.starts_with(&journals[0])),
        "DATA_DIR/damaged: {damaged:?}"
    );
    rig.api.create(event("demo", "b.1", "b", &now_secs()));
    let later = rfc3339_secs(now_nanos() + 1_000_000_000);
    rig.api.update("demo", "a-0.x", |ev| {
        ev["count"] = json!(2);
        ev["lastTimestamp"] = json!(later);
    });
    rig.loki.wait_for_entries(7, T);
    assert!(ke.try_exit().is_none(), "{}", ke.stderr_text());
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
    assert_eq!(rig.loki.entries().len(), 7);
    assert_no_duplicates(&rig.loki);
}

#[test]
fn a_truncated_spool_file_is_moved_aside_and_the_others_are_pushed() {
    let rig = Rig::new();
    rig.loki.go_away();
    let conf: &[(&str, &str)] = &[("BATCH_MAX_BYTES", "1024")];
    let ke = rig.start_watching(conf);
    let names: Vec<String> = (0..12).map(|i| format!("d-{i:02}.x")).collect();
    for (i, n) in names.iter().enumerate() {
        rig.api
            .create(event("demo", n, &format!("d {i}"), &now_secs()));
    }
    wait_spooled(&rig, &names);
    ke.sigkill();
    ke.wait_exit(T);
    let files = spool_files(&rig.spool());
    assert!(files.len() >= 3, "{files:?}");
    let victim = &files[files.len() / 2];
    let bytes = std::fs::read(victim).unwrap();
    let lost: Vec<&String> = names
        .iter()
        .filter(|n| batch_text(&bytes).contains(n.as_str()))
        .collect();
    std::fs::write(victim, &bytes[..bytes.len() / 2]).unwrap();
    let victim_name = victim.file_name().unwrap().to_string_lossy().into_owned();

    for n in &names {
        rig.api.delete("demo", n);
    }
    rig.api.compact();
    rig.loki.come_back();
    let ke = rig.start(conf);
    let log = ke.wait_for_stderr("moved aside", T);
    assert!(
        log_lines(&log, "moved aside")
            .iter()
            .any(|l| l.contains(&victim_name)),
        "the warning does not name {victim_name}: {log}"
    );
    let want: BTreeSet<(String, u64)> = names
        .iter()
        .filter(|n| !lost.contains(n))
        .map(|n| (n.clone(), 1))
        .collect();
    wait_for_occurrences(&rig.loki, &want, T);
    wait_until(T, "an empty spool", || spool_files(&rig.spool()).is_empty());
    let damaged = names_in(&rig.data().join("damaged"));
    assert!(
        damaged.iter().any(|n| n.contains(&victim_name)),
        "DATA_DIR/damaged: {damaged:?}"
    );
    assert!(ke.try_exit().is_none(), "{}", ke.stderr_text());
    drop(ke);
}

// ---------------------------------------------------------------------------------------
// 8, 9. DATA_DIR problems at startup.

#[test]
fn a_data_dir_that_cannot_be_created_exits_2_naming_it() {
    let rig = Rig::new();
    rig.dir.write("a-file", "not a directory\n");
    for (dir, shown) in [
        ("/proc/kube-event-test", "/proc/kube-event-test"),
        ("a-file/data", "a-file/data"),
    ] {
        let ke = rig.start(&[("DATA_DIR", dir)]);
        let status = ke.wait_exit(T);
        let err = ke.stderr_text();
        assert_eq!(status.code(), Some(2), "DATA_DIR={dir}: {err}");
        assert!(err.contains(shown), "DATA_DIR={dir}: {err}");
    }
}

#[test]
fn a_second_instance_on_the_same_data_dir_exits_2_and_the_first_keeps_running() {
    let rig = Rig::new();
    let first = rig.start_watching(&[]);
    let lock = rig.data().join("lock");
    let pid = std::fs::read_to_string(&lock).unwrap_or_else(|e| panic!("{lock:?}: {e}"));
    assert_eq!(pid.trim(), first.pid().to_string(), "DATA_DIR/lock content");

    let second = rig.start(&[]);
    let status = second.wait_exit(T);
    let err = second.stderr_text();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("already in use"), "{err}");
    assert!(first.try_exit().is_none(), "{}", first.stderr_text());
    rig.api.create(event("demo", "a.1", "a", &now_secs()));
    rig.loki.wait_for_entries(1, T);
    // Committed, so that the next instance does not ship it again.
    wait_committed(&first, 1);

    // A lock left behind by SIGKILL does not block the next instance.
    first.sigkill();
    first.wait_exit(T);
    let third = rig.start_watching(&[]);
    rig.api.create(event("demo", "b.1", "b", &now_secs()));
    let entries = rig.loki.wait_for_entries(2, T);
    assert!(
        entries.iter().any(|e| occurrence(e).0 == "b.1"),
        "{entries:?}"
    );
    assert!(!third.stderr_text().contains("already in use"));
    assert!(third.try_exit().is_none());
    assert_no_duplicates(&rig.loki);
    drop(third);
}

#[test]
fn stdout_mode_neither_creates_nor_locks_the_data_dir() {
    let rig = Rig::new();
    rig.api.create(event("demo", "a.1", "a", &now_secs()));
    let conf = rig.conf(&[("DATA_DIR", "elsewhere")]);
    let ke = KubeEvent::spawn(&conf, &[], &["--stdout"]);
    ke.wait_for_stdout_lines(1, T);
    assert!(
        !rig.dir.join("elsewhere").exists(),
        "--stdout created DATA_DIR"
    );
    drop(ke);
    // And it runs beside an instance that holds the lock.
    let daemon = rig.start_watching(&[]);
    let conf = rig.conf(&[]);
    let ke = KubeEvent::spawn(&conf, &[], &["--stdout"]);
    ke.wait_for_stdout_lines(1, T);
    assert!(daemon.try_exit().is_none());
}

#[test]
fn the_new_keys_are_validated_naming_file_line_and_key() {
    let rig = Rig::new();
    for key in [
        "SPOOL_MAX_BYTES",
        "DEDUP_RETENTION_SECONDS",
        "MAX_LINE_BYTES",
    ] {
        let conf = rig.conf(&[(key, "lots")]);
        let ke = KubeEvent::spawn(&conf, &[], &[]);
        let status = ke.wait_exit(T);
        let err = ke.stderr_text();
        assert_eq!(status.code(), Some(2), "{key}: {err}");
        // The error names the line the bad key is on.
        let text = std::fs::read_to_string(&conf).unwrap();
        let line = text
            .lines()
            .position(|l| l.starts_with(&format!("{key}=")))
            .unwrap()
            + 1;
        assert!(
            err.contains(&format!("kube-event.conf:{line}: {key}")),
            "{err}"
        );
    }
    // And good values are accepted.
    let ke = rig.start_watching(&[
        ("SPOOL_MAX_BYTES", "1048576"),
        ("DEDUP_RETENTION_SECONDS", "600"),
        ("MAX_LINE_BYTES", "65536"),
    ]);
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
    let log = ke.stderr_text();
    assert!(!log.contains("unknown key"), "{log}");
}

// ---------------------------------------------------------------------------------------
// A write failure at run time (disk full, I/O error): logged, pushed from memory, retried.

#[test]
fn a_spool_that_cannot_be_written_pushes_from_memory_and_recovers_when_it_can() {
    let rig = Rig::new();
    rig.loki.go_away();
    let ke = rig.start_watching(&[]);
    // The spool directory turns into a file: every write to it fails from now on (as root,
    // permissions would not stop a write, so the failure is made by the file system layout).
    let spool = rig.spool();
    let real = rig.data().join("spool.real");
    std::fs::rename(&spool, &real).unwrap();
    std::fs::write(&spool, b"not a directory").unwrap();
    rig.api
        .create(event("demo", "a.1", "while the disk fails", &now_secs()));
    let log = ke.wait_for_stderr("to the spool", T);
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("cannot write batch")),
        "{log}"
    );
    // Loki comes back: the batch is pushed from memory.
    rig.loki.come_back();
    rig.loki.wait_for_entries(1, T);
    // The disk recovers: the next batch whose push fails is spooled again.
    std::fs::remove_file(&spool).unwrap();
    std::fs::rename(&real, &spool).unwrap();
    rig.loki.fail_next(1, 500, "internal error", None);
    rig.api
        .create(event("demo", "b.1", "after the disk is back", &now_secs()));
    rig.loki.wait_for_entries(2, T);
    ke.wait_for_stderr("spooled batch", T);
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
    // What was pushed from memory was committed once Loki took it: a restart sends nothing.
    let ke = rig.start_watching(&[]);
    rig.api
        .create(event("demo", "c.1", "after the restart", &now_secs()));
    rig.loki.wait_for_entries(3, T);
    ke.sigterm();
    assert_eq!(ke.wait_exit(T).code(), Some(0), "{}", ke.stderr_text());
    assert_eq!(rig.loki.entries().len(), 3);
    assert_no_duplicates(&rig.loki);
}
