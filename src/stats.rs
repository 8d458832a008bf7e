//! Counters of what happened to the events, shared by the threads: `metrics.rs` serves them,
//! the shutdown line sums them up, and /healthz and /readyz are decided from them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Indexes of `Stats::frames`.
pub const FRAME_ADDED: usize = 0;
pub const FRAME_MODIFIED: usize = 1;
pub const FRAME_DELETED: usize = 2;
pub const FRAME_BOOKMARK: usize = 3;
pub const FRAME_ERROR: usize = 4;
/// Items of a list page (not a watch frame, but received all the same).
pub const FRAME_LIST: usize = 5;
pub const FRAME_NAMES: [&str; 6] = ["added", "modified", "deleted", "bookmark", "error", "list"];

/// Indexes of `Stats::push_attempts`: outcome, then status class.
pub const OUTCOME_NAMES: [&str; 3] = ["accepted", "retry", "rejected"];
pub const CLASS_NAMES: [&str; 4] = ["2xx", "4xx", "5xx", "error"];

/// Upper bounds of the push latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
pub struct Stats {
    /// Objects received, by frame type (`FRAME_*`).
    pub frames: [AtomicU64; 6],
    /// Push attempts by outcome (`OUTCOME_NAMES`) and status class (`CLASS_NAMES`).
    pub push_attempts: [[AtomicU64; 4]; 3],
    /// Push latency: one counter per bucket of `LATENCY_BUCKETS` (not cumulative), the
    /// overflow, and the sum in microseconds.
    pub push_latency: [AtomicU64; 13],
    pub push_latency_sum_us: AtomicU64,
    /// Watches that ended or failed and were started again.
    pub watch_restarts: AtomicU64,
    /// Lists after the first one.
    pub relists: AtomicU64,
    /// Watches or lists the API server said were too old (410).
    pub watch_expired: AtomicU64,
    /// Unix ms of the last push Loki accepted (0: none yet).
    pub last_push_ok_ms: AtomicU64,
    /// Whether the last push attempt failed (retry or rejection).
    pub last_push_failed: AtomicBool,
    /// Unix ms of the last sign of a working watch: a frame, a watch opened, a list page.
    pub last_watch_progress_ms: AtomicU64,
    /// Unix ms of the last watch frame (0: none yet).
    pub last_frame_ms: AtomicU64,
    /// The first list has completed.
    pub listed: AtomicBool,
    /// Event objects received (list items and watch frames of type ADDED or MODIFIED).
    /// Written only by the Shipper (`add_shipper`), as are `shipped`, `unchanged` and
    /// `truncated`.
    pub received: AtomicU64,
    /// Occurrences handed to the output (queued for Loki, or printed).
    pub shipped: AtomicU64,
    /// Occurrences left out by the filters (and repeats, with `DEDUPLICATE=1`).
    pub filtered: AtomicU64,
    /// Objects that showed nothing new (a relisted event, a MODIFIED with no visible change).
    pub unchanged: AtomicU64,
    /// Watch frames or list items that could not be parsed or had no uid/time.
    pub malformed: AtomicU64,
    /// Entries Loki accepted (2xx).
    pub pushed: AtomicU64,
    /// Entries in batches Loki refused for good.
    pub rejected: AtomicU64,
    /// Entries lost at shutdown: not pushed, and not in the spool either.
    pub abandoned: AtomicU64,
    /// Entries not pushed at shutdown but safe in the spool.
    pub left_in_spool: AtomicU64,
    /// Entries dropped because the spool was full (the oldest go first).
    pub dropped_spool_full: AtomicU64,
    /// Entries lost because their spool file was damaged.
    pub dropped_damaged: AtomicU64,
    /// Entries re-stamped because Loki found them too old for their stream.
    pub restamped: AtomicU64,
    /// Lines cut to `MAX_LINE_BYTES`.
    pub truncated: AtomicU64,
    /// Failed writes of the spool or the journal (each is retried).
    pub spool_write_errors: AtomicU64,
    /// Gauges: bytes and batches in the spool.
    pub spool_bytes: AtomicU64,
    pub spool_batches: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// `add` for a counter that only the Shipper writes, under its lock (one writer at a
    /// time, ordered by that lock): a load and a store instead of a locked read-modify-write,
    /// which on x86 waits for every store before it (a frame's, a line's) to drain.
    pub fn add_shipper(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Records a push attempt: its outcome index, HTTP status (`None`: no answer) and time.
    pub fn push_attempt(&self, outcome: usize, status: Option<u16>, took: std::time::Duration) {
        let class = match status {
            Some(200..=299) => 0,
            Some(400..=499) => 1,
            Some(500..=599) => 2,
            _ => 3,
        };
        Self::add(&self.push_attempts[outcome][class], 1);
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        Self::add(&self.push_latency[bucket], 1);
        Self::add(&self.push_latency_sum_us, took.as_micros() as u64);
        self.last_push_failed.store(outcome != 0, Ordering::Relaxed);
        if outcome == 0 {
            Self::set(&self.last_push_ok_ms, now_ms());
        }
    }

    /// The watch showed it works (a frame, a new watch, a list page).
    pub fn watch_progress(&self) {
        Self::set(&self.last_watch_progress_ms, now_ms());
    }

    /// A frame of `kind`, which arrived at `now` (`now_ms`, read once per read from the
    /// stream rather than once per frame).
    pub fn frame(&self, kind: usize, now: u64) {
        Self::add(&self.frames[kind], 1);
        Self::set(&self.last_frame_ms, now);
        Self::set(&self.last_watch_progress_ms, now);
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
