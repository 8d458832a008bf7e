//! Counters of what happened to the events, shared by the threads. Issue-4 metrics will
//! expose them; for now they feed the log lines at startup, relist and shutdown.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Stats {
    /// Event objects received (list items and watch frames of type ADDED or MODIFIED).
    pub received: AtomicU64,
    /// Occurrences handed to the output (queued for Loki, or printed).
    pub shipped: AtomicU64,
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

    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
