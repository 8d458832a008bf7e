//! Golden-file tests of the three line formats (`LINE_FORMAT`): for an old-style core/v1
//! event and an `events.k8s.io` event, the json, logfmt and raw lines must equal
//! `tests/golden/<name>.<format>` (the line plus a final newline).
//!
//! To regenerate the golden files after a deliberate change of a format, run
//! `UPDATE_GOLDEN=1 cargo test --test formats`: the files are then written instead of
//! compared. Read the diff before committing it: the golden files are the specification.

use std::path::PathBuf;

use kube_event::format::{json_to_logfmt, raw_line};
use kube_event::scan;

const MAX_LINE_BYTES: usize = 262_144;

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/../shared/fixtures/apiserver/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The three lines of the event whose object text is `object`: (json, logfmt, raw).
fn render(object: &str) -> [String; 3] {
    let ev = scan::event(object.as_bytes()).expect("the fixture is an event");
    let occ = ev.occurrence().expect("the fixture is shippable");
    let mut json = String::new();
    assert!(!ev.write_line(&occ, &mut json, MAX_LINE_BYTES));
    let mut logfmt = String::new();
    json_to_logfmt(&json, &mut logfmt);
    let mut raw = String::new();
    assert!(!raw_line(object, &mut raw, MAX_LINE_BYTES).unwrap());
    [json, logfmt, raw]
}

fn check_golden(name: &str, object: &str) {
    let lines = render(object);
    assert_eq!(
        render(object),
        lines,
        "{name}: every format renders byte-identically twice"
    );
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    // UPDATE_GOLDEN=1 writes the golden files instead of comparing with them.
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    for (ext, line) in ["json", "logfmt", "raw"].iter().zip(&lines) {
        assert!(!line.contains('\n'), "{name}.{ext}: one line");
        let path = dir.join(format!("{name}.{ext}"));
        let text = format!("{line}\n");
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
            eprintln!("wrote {}", path.display());
        } else {
            let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (UPDATE_GOLDEN=1 cargo test --test formats writes it)",
                    path.display()
                )
            });
            assert_eq!(text, want, "{} differs", path.display());
        }
    }
}

#[test]
fn legacy_core_v1_event() {
    // web-0.seed1 at its MODIFIED state: the first line of the watch stream.
    let stream = fixture("watch-stream.ndjson");
    let first = stream.lines().next().unwrap();
    let frame = scan::frame(first.as_bytes()).unwrap();
    assert_eq!(&*frame.kind, "MODIFIED");
    check_golden("web-0.seed1", std::str::from_utf8(frame.raw).unwrap());
}

#[test]
fn events_k8s_io_event() {
    // Pretty-printed, as it comes through /api/v1/events.
    check_golden(
        "web.scaled1",
        &fixture("event-eventsv1-through-corev1.json"),
    );
}

#[test]
fn raw_is_the_same_from_the_watch_stream_and_the_pretty_printed_object() {
    // The same event state, once compact in a watch frame, once pretty-printed.
    let stream = fixture("watch-stream.ndjson");
    let second = stream.lines().nth(1).unwrap();
    let frame = scan::frame(second.as_bytes()).unwrap();
    let (mut a, mut b) = (String::new(), String::new());
    raw_line(
        std::str::from_utf8(frame.raw).unwrap(),
        &mut a,
        MAX_LINE_BYTES,
    )
    .unwrap();
    raw_line(
        &fixture("event-eventsv1-through-corev1.json"),
        &mut b,
        MAX_LINE_BYTES,
    )
    .unwrap();
    assert_eq!(a, b);
}
