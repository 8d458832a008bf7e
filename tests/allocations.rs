//! The event path does not allocate per field (DEVELOPERS.md, issue 6): reading a frame,
//! deciding it is a new occurrence, rendering its line and adding it to a batch reuse the
//! same buffers event after event. Counted with a global allocator in this test binary, on
//! this thread only, in a steady state (after the buffers have grown). A count, not a time:
//! it cannot flake on a busy machine.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube_event::batch::Format;
use kube_event::queue::Queue;
use kube_event::ship::{Output, Settings, Shipper};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: thread-locals may be gone while a thread exits.
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A recorded-style frame (managedFields and all) for event `i`.
fn frame(i: usize, message: &str) -> String {
    format!(
        r#"{{"type":"ADDED","object":{{"kind":"Event","apiVersion":"v1","metadata":{{"name":"web-{i}.seed","namespace":"team-{ns}","uid":"0b1db011-e0d1-49b6-a091-{i:012x}","resourceVersion":"{rv}","creationTimestamp":"2026-11-25T19:40:33Z","managedFields":[{{"manager":"kubelet","operation":"Update","apiVersion":"v1","time":"2026-11-25T19:40:35Z","fieldsType":"FieldsV1","fieldsV1":{{"f:count":{{}},"f:firstTimestamp":{{}},"f:involvedObject":{{}},"f:lastTimestamp":{{}},"f:message":{{}},"f:reason":{{}},"f:source":{{"f:component":{{}},"f:host":{{}}}},"f:type":{{}}}}}}]}},"involvedObject":{{"kind":"Pod","namespace":"team-{ns}","name":"web-{i}","uid":"0b6f5c2e-1111-4c1e-9d2a-{i:012x}","apiVersion":"v1","fieldPath":"spec.containers{{web}}"}},"reason":"BackOff","message":"{message}","source":{{"component":"kubelet","host":"node-{node}"}},"firstTimestamp":"2026-11-25T19:40:33Z","lastTimestamp":"2026-11-25T19:40:35Z","count":{count},"type":"Warning","eventTime":null,"reportingComponent":"","reportingInstance":""}}}}"#,
        ns = i % 20,
        rv = 1000 + i,
        node = i % 7,
        count = 1 + i % 9,
    )
}

/// Offers `frames` as the watcher does, hands sealed batches back as the pusher does, and
/// returns the allocations per event over the last `measured` frames.
fn allocations_per_event(frames: &[String], measured: usize, format: Format) -> f64 {
    ALLOCS.with(|a| a.set(0));
    let schema = kube_event::batch::Schema {
        job: "kube-event".into(),
        static_labels: vec![("cluster".into(), "test".into())],
        keys: vec!["namespace".into(), "kind".into(), "type".into()],
        format,
    };
    // Small batches, so that the measured part seals and recycles many of them.
    let q = Arc::new(Queue::new(
        Duration::from_secs(3600),
        64 * 1024,
        schema,
        String::new(),
    ));
    let settings = Settings::default();
    let stats = Arc::new(kube_event::stats::Stats::default());
    let mut shipper = Shipper::new(Output::Loki(q.clone()), stats, settings, Default::default());
    let mut rv = String::with_capacity(64);
    let start_counting = frames.len() - measured;
    let mut taken = Vec::with_capacity(16);
    for (i, f) in frames.iter().enumerate() {
        if i == start_counting {
            COUNTING.with(|c| c.set(true));
        }
        let frame = kube_event::scan::frame(f.as_bytes()).expect("a valid frame");
        shipper
            .offer_event(&frame.object, None, &mut rv)
            .expect("not stdout");
        shipper.advance("", &rv);
        if i % 64 == 63 {
            // What the pusher does with each sealed batch, once pushed.
            COUNTING.with(|c| c.set(false));
            taken.extend(q.take().sealed);
            COUNTING.with(|c| c.set(i >= start_counting));
            for (sealed, _) in taken.drain(..) {
                q.recycle(Some(sealed.body));
                q.recycle_records(sealed.records, sealed.list);
            }
        }
    }
    COUNTING.with(|c| c.set(false));
    q.close(Instant::now());
    ALLOCS.with(|a| a.get()) as f64 / measured as f64
}

#[test]
fn the_event_path_allocates_nothing_per_event_in_a_steady_state() {
    // Warm up on 20,000 events (buffers and the memory of shipped events grow), then count
    // 5,000 more. What may still allocate, a few times per window and hence the allowance:
    // the map of shipped events when it grows, and a records buffer that the pusher has not
    // given back yet when a batch is sealed.
    let frames: Vec<String> = (0..25_000)
        .map(|i| frame(i, "Back-off restarting failed container web in pod web-0"))
        .collect();
    // Batches sealed as JSON (LOKI_COMPRESSION=gzip or none) and as protobuf (snappy).
    for format in [Format::Json, Format::Protobuf] {
        let per_event = allocations_per_event(&frames, 5_000, format);
        assert!(
            per_event <= 0.05,
            "{per_event:.3} allocations per event without escapes ({format:?})"
        );
    }
}

#[test]
fn a_message_with_escapes_costs_one_allocation() {
    // `\"` in a message: the reader unescapes it into one owned string, and nothing else.
    let frames: Vec<String> = (0..25_000)
        .map(|i| {
            frame(
                i,
                r#"Readiness probe failed: Get \"http://10.0.0.1:8080/healthz\""#,
            )
        })
        .collect();
    for format in [Format::Json, Format::Protobuf] {
        let per_event = allocations_per_event(&frames, 5_000, format);
        assert!(
            (1.0..=1.05).contains(&per_event),
            "{per_event:.3} allocations per event with one escaped string ({format:?})"
        );
    }
}
