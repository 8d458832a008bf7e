//! The hand-over between the watcher thread and the pusher thread.
//!
//! The watcher appends each new occurrence to the open batch and, after each frame, says up
//! to which resourceVersion everything is in the queue (`advance`). The open batch is sealed
//! (encoded once, as the push body) when the next line would take it past `BATCH_MAX_BYTES`,
//! or by the pusher when its oldest entry has waited `PUSH_INTERVAL_SECONDS`, or at shutdown.
//! Each sealed batch carries the resourceVersion that was covered when it was sealed: once
//! the batch is safe (spooled or pushed), a restart may resume from there.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::debug;

use crate::batch::{Batch, Line, Schema, Sealed};
use crate::event::Labels;

pub struct Queue {
    state: Mutex<State>,
    /// The pusher waits on it for work.
    cv: Condvar,
    /// The watcher waits on it for room (`SEALED_MAX`).
    room: Condvar,
    interval: Duration,
    max_bytes: usize,
    schema: Schema,
}

struct State {
    open: Batch,
    /// When the first entry of `open` arrived.
    opened_at: Option<Instant>,
    /// Entries appended so far (to `open`): `Queue::wait` sees from it that the stream
    /// paused, without a clock read per event.
    appended: u64,
    /// `open` is to be sealed at the next `take`: it filled at a storm's rate, and the
    /// stream paused (`Queue::wait`).
    flush: bool,
    /// The batch sealed last was full (`BATCH_MAX_BYTES`): `open` is a storm's, whatever
    /// it holds yet.
    after_full: bool,
    sealed: VecDeque<(Sealed, String)>,
    /// Per scope (`""`: the whole cluster, else a namespace): every frame up to this
    /// resourceVersion is in `open` or `sealed` (or needed nothing).
    rvs: BTreeMap<String, String>,
    /// `rvs` encoded as the journal keeps it (`encode_resume`).
    rv: String,
    /// Set at shutdown: seal everything now; the pusher gives up at this instant.
    closing: Option<Instant>,
    /// Push bodies the pusher is done with, to seal the next batches into.
    spare: Vec<Vec<u8>>,
    /// Watchers waiting in `append` for room now (one per watched scope at most).
    waiting: usize,
    /// Since when the watcher has been held back: it waited for room, and at every `take`
    /// since it was waiting again, or had filled the queue again (`held_for`).
    held_since: Option<Instant>,
}

impl State {
    /// Seals the open batch into a spare body buffer, with the resume point it covers.
    /// `full`: because it reached `BATCH_MAX_BYTES`.
    fn seal_open(&mut self, schema: &Schema, full: bool) {
        let buf = self.spare.pop().unwrap_or_default();
        let sealed = self.open.seal(schema, buf);
        self.sealed.push_back((sealed, self.rv.clone()));
        self.opened_at = None;
        self.flush = false;
        self.after_full = full;
    }

    /// Whether `open` belongs to a storm: the batch before it was full, or it filled fast
    /// enough to reach `max_bytes` before it is due, had it gone on as it started (judged
    /// over at least `QUIET`, so that one event is never a storm).
    fn storming(&self, now: Instant, interval: Duration, max_bytes: usize) -> bool {
        let Some(opened) = self.opened_at else {
            return false;
        };
        let open_for = now.saturating_duration_since(opened).max(QUIET);
        self.after_full
            || self.open.encoded_size() as u128 * interval.as_nanos()
                >= max_bytes as u128 * open_for.as_nanos()
    }
}

/// How long the stream pauses before a storm's batch is pushed, instead of
/// `PUSH_INTERVAL_SECONDS` after its first entry (`State::storming`: after a full batch, or
/// filling at `BATCH_MAX_BYTES` per interval or faster, which is ~20 KB in its first `QUIET`
/// by default): the end of a storm or a burst reaches Loki a tenth of a second after it,
/// not up to an interval later (in the benchmark's storm, ~1 s of its ~2). A trickle is
/// batched as before.
pub const QUIET: Duration = Duration::from_millis(100);

/// How many spare body buffers are kept (each up to `BATCH_MAX_BYTES`): the one being filled
/// and the one being pushed, with room for one more.
const SPARE_MAX: usize = 3;

/// How many sealed batches may wait for the pusher before the watcher waits too. In a storm
/// the watcher can seal batches faster than the pusher compresses, spools and pushes them
/// (a push may take up to a minute when Loki is slow); without a bound they would pile up in
/// memory. Waiting leaves the events in the API server, and the watch goes on from its
/// resourceVersion (a relist, if it expired meanwhile, ships nothing twice).
const SEALED_MAX: usize = 2;

/// The resume points of several scopes as one string for the journal: a plain
/// resourceVersion for the cluster-wide scope alone (what every version of the journal holds),
/// else a JSON object `{"namespace": "rv", …}`.
pub fn encode_resume(rvs: &BTreeMap<String, String>) -> String {
    match rvs.len() {
        0 => String::new(),
        1 if rvs.contains_key("") => rvs[""].clone(),
        _ => serde_json::to_string(rvs).unwrap_or_default(),
    }
}

/// The inverse of `encode_resume`.
pub fn decode_resume(rv: &str) -> BTreeMap<String, String> {
    if rv.starts_with('{') {
        serde_json::from_str(rv).unwrap_or_default()
    } else if rv.is_empty() {
        BTreeMap::new()
    } else {
        BTreeMap::from([(String::new(), rv.to_string())])
    }
}

/// What the pusher takes from the queue.
pub struct Taken {
    /// Sealed batches with the resourceVersion each covers, oldest first.
    pub sealed: Vec<(Sealed, String)>,
    /// When the open batch will be due, if it has entries.
    pub next_due: Option<Instant>,
    /// The shutdown deadline, once closing.
    pub closing: Option<Instant>,
    /// The covered resourceVersion, when nothing is left in the open batch: then a restart
    /// may resume from it even though no batch carries it.
    pub idle_rv: Option<String>,
}

impl Queue {
    /// How sealed batches are encoded.
    pub fn format(&self) -> crate::batch::Format {
        self.schema.format
    }

    pub fn new(interval: Duration, max_bytes: usize, schema: Schema, rv: String) -> Self {
        Queue {
            state: Mutex::new(State {
                open: Batch::new(schema.format),
                opened_at: None,
                appended: 0,
                flush: false,
                after_full: false,
                sealed: VecDeque::new(),
                rvs: decode_resume(&rv),
                rv,
                closing: None,
                spare: Vec::new(),
                waiting: 0,
                held_since: None,
            }),
            cv: Condvar::new(),
            room: Condvar::new(),
            interval,
            max_bytes,
            schema,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds one occurrence (its line, structured metadata, and journal record). Seals the open
    /// batch first if this line would take it past `BATCH_MAX_BYTES`.
    pub fn append(
        &self,
        labels: Labels<'_>,
        nanos: i64,
        line: Line<'_>,
        metadata: Option<&str>,
        record: Option<(u64, i64, u64)>,
    ) {
        let mut st = self.lock();
        let len = match line {
            Line::Plain(l) | Line::Nested(l) => l.len(),
        };
        if !st.open.is_empty() && st.open.encoded_size() + len + 64 > self.max_bytes {
            st.seal_open(&self.schema, true);
            self.cv.notify_all();
            if st.sealed.len() > SEALED_MAX && st.closing.is_none() {
                debug!(
                    "{} batches wait for the pusher; waiting for room",
                    st.sealed.len()
                );
                st.held_since.get_or_insert_with(Instant::now);
                st.waiting += 1;
                st = self
                    .room
                    .wait_while(st, |st| {
                        st.sealed.len() > SEALED_MAX && st.closing.is_none()
                    })
                    .unwrap_or_else(|e| e.into_inner());
                st.waiting -= 1;
            }
        }
        if st.open.is_empty() {
            st.opened_at = Some(Instant::now());
            self.cv.notify_all();
        }
        st.open.push(labels, nanos, line, metadata);
        st.appended += 1;
        if let Some((key, count, hash)) = record {
            st.open.record(key, count, hash);
        }
    }

    /// Everything of scope `key` up to `rv` has been appended.
    pub fn advance(&self, key: &str, rv: &str) {
        let mut st = self.lock();
        let st = &mut *st;
        if key.is_empty() && st.rvs.len() <= 1 {
            // The common case, one cluster-wide scope: no map, no allocation.
            if st.rv != rv {
                st.rv.clear();
                st.rv.push_str(rv);
                st.rvs.clear();
            }
            return;
        }
        if st.rvs.get(key).map(String::as_str) != Some(rv) {
            st.rvs.insert(key.to_string(), rv.to_string());
            st.rv = encode_resume(&st.rvs);
        }
    }

    /// Entries appended but not yet taken by the pusher.
    pub fn pending(&self) -> usize {
        let st = self.lock();
        st.open.len() + st.sealed.iter().map(|(b, _)| b.entries).sum::<usize>()
    }

    /// Gives back a push body the pusher is done with: the next batch is sealed into it, so
    /// a steady stream of batches reuses the same memory instead of mapping (and faulting in)
    /// a fresh megabyte for each one.
    pub fn recycle(&self, body: Option<Vec<u8>>) {
        let Some(mut body) = body.filter(|b| b.capacity() > 0) else {
            return;
        };
        let mut st = self.lock();
        if st.spare.len() < SPARE_MAX && body.capacity() <= self.max_bytes.saturating_mul(2) {
            body.clear();
            st.spare.push(body);
        }
    }

    /// The records of a sealed batch, committed to the journal: kept for the next batch.
    pub fn recycle_records(&self, records: String, list: Vec<(u64, i64, u64)>) {
        self.lock().open.give_records(records, list);
    }

    /// Releases spare buffers and the open batch's unused capacity (the pusher calls this
    /// when the pipeline has been idle for a while).
    pub fn trim(&self) {
        let mut st = self.lock();
        st.spare = Vec::new();
        st.open.shrink();
    }

    /// A spare buffer (or a new empty one) to read a spooled batch into.
    pub fn spare(&self) -> Vec<u8> {
        self.lock().spare.pop().unwrap_or_default()
    }

    /// Starts the final flush: everything is sealed at once, and the pusher gives up at
    /// `deadline`.
    pub fn close(&self, deadline: Instant) {
        self.lock().closing = Some(deadline);
        self.cv.notify_all();
        self.room.notify_all();
    }

    pub fn closing(&self) -> Option<Instant> {
        self.lock().closing
    }

    /// Takes the sealed batches, sealing the open one first if it is due (or closing).
    pub fn take(&self) -> Taken {
        self.take_up_to(usize::MAX)
    }

    /// Takes at most `max` of the sealed batches, oldest first, sealing the open one first if
    /// it is due (or closing). Those left wait here, and so does a watcher that gets further
    /// ahead (`SEALED_MAX`).
    pub fn take_up_to(&self, max: usize) -> Taken {
        let mut st = self.lock();
        if st.waiting == 0 && st.sealed.len() <= SEALED_MAX {
            // The watcher kept up since the last take.
            st.held_since = None;
        }
        let now = Instant::now();
        let due = st.opened_at.map(|t| t + self.interval);
        if !st.open.is_empty()
            && (st.closing.is_some() || st.flush || due.is_some_and(|d| d <= now))
        {
            st.seal_open(&self.schema, false);
        }
        st.flush = false;
        let n = st.sealed.len().min(max);
        if n > 0 {
            self.room.notify_all();
        }
        let sealed = st.sealed.drain(..n).collect();
        Taken {
            sealed,
            next_due: st.opened_at.map(|t| t + self.interval),
            closing: st.closing,
            // Not while sealed batches wait here: it would run ahead of them.
            idle_rv: (st.open.is_empty() && st.sealed.is_empty()).then(|| st.rv.clone()),
        }
    }

    /// How long the watcher has been held back by the pusher: it waited for room, and at
    /// every `take` since it was waiting again or had filled the queue again. Zero when it
    /// keeps up.
    pub fn held_for(&self) -> Duration {
        self.lock()
            .held_since
            .map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Waits until `until` (or for ever), or until there is something to take: a sealed
    /// batch, an open batch that became due, or closing.
    pub fn wait(&self, until: Option<Instant>) {
        let mut st = self.lock();
        // The entries appended as of when, to see the stream pause.
        let mut seen = (st.appended, Instant::now());
        loop {
            let now = Instant::now();
            let due = st.opened_at.map(|t| t + self.interval);
            if st.appended != seen.0 {
                seen = (st.appended, now);
            }
            let storming = st.storming(now, self.interval, self.max_bytes);
            if storming && now >= seen.1 + QUIET {
                st.flush = true;
            }
            if !st.sealed.is_empty()
                || st.closing.is_some()
                || st.flush
                || due.is_some_and(|d| d <= now)
                || until.is_some_and(|u| u <= now)
            {
                return;
            }
            let paused = storming.then(|| seen.1 + QUIET);
            let wake = [due, until, paused].into_iter().flatten().min();
            let timeout = wake.map(|w| w - now).unwrap_or(Duration::from_secs(3600));
            st = self
                .cv
                .wait_timeout(st, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Labels<'static> {
        Labels {
            values: ["ns", "Pod", "Normal", "", "", ""],
            len: 3,
        }
    }

    #[test]
    fn seals_at_max_bytes_with_the_covered_resource_version() {
        let q = Queue::new(
            Duration::from_secs(3600),
            2048,
            Schema::default(),
            "1".into(),
        );
        let line = "x".repeat(500);
        // Taken on the way, as the pusher does: more than SEALED_MAX waiting would block.
        let mut early = Vec::new();
        for i in 0..10 {
            q.append(labels(), i, Line::Plain(&line), None, Some((42, i, 7)));
            q.advance("", &format!("{}", i + 10));
            if i == 5 {
                early = q.take().sealed;
            }
        }
        let taken: usize = early.iter().map(|(b, _)| b.entries).sum();
        assert!(taken > 0);
        assert_eq!(q.pending() + taken, 10);
        let mut t = q.take();
        t.sealed.splice(0..0, early);
        assert!(!t.sealed.is_empty());
        // The first batch was sealed when the line of frame n arrived: it covers frame n-1.
        let (first, rv) = &t.sealed[0];
        assert!(first.body.len() <= 2048, "{}", first.body.len());
        assert_eq!(rv, &format!("{}", 10 + first.entries - 1));
        assert_eq!(first.list.len(), first.entries);
        q.close(Instant::now() + Duration::from_secs(10));
        let t2 = q.take();
        let total: usize = t
            .sealed
            .iter()
            .chain(&t2.sealed)
            .map(|(b, _)| b.entries)
            .sum();
        assert_eq!(total, 10);
        assert_eq!(t2.idle_rv.as_deref(), Some("19"));
        assert!(
            t.idle_rv.is_none() || t.sealed.iter().map(|(b, _)| b.entries).sum::<usize>() == 10
        );
    }

    #[test]
    fn resume_points_of_several_namespaces() {
        let q = Queue::new(
            Duration::from_secs(60),
            1 << 20,
            Schema::default(),
            String::new(),
        );
        q.advance("", "5");
        assert_eq!(q.take().idle_rv.as_deref(), Some("5"));
        let q = Queue::new(
            Duration::from_secs(60),
            1 << 20,
            Schema::default(),
            String::new(),
        );
        q.advance("b", "7");
        q.advance("a", "3");
        let rv = q.take().idle_rv.unwrap();
        assert_eq!(rv, r#"{"a":"3","b":"7"}"#);
        let m = decode_resume(&rv);
        assert_eq!(m["a"], "3");
        assert_eq!(decode_resume("42")[""], "42");
        assert!(decode_resume("").is_empty());
        // Restarting from a saved map keeps the other namespaces' points.
        let q = Queue::new(Duration::from_secs(60), 1 << 20, Schema::default(), rv);
        q.advance("a", "4");
        assert_eq!(q.take().idle_rv.unwrap(), r#"{"a":"4","b":"7"}"#);
    }

    /// Polls `cond` every millisecond until it holds, for at most 10 s.
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_watcher_waits_while_sealed_batches_pile_up_until_taken_or_closing() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        for release in ["take", "close"] {
            // Every line fills a batch: each append seals the one before.
            let q = Arc::new(Queue::new(
                Duration::from_secs(3600),
                64,
                Schema::default(),
                String::new(),
            ));
            let done = Arc::new(AtomicUsize::new(0));
            let (q2, done2) = (q.clone(), done.clone());
            let line = "x".repeat(40);
            let appender = std::thread::spawn(move || {
                for _ in 0..SEALED_MAX + 3 {
                    q2.append(labels(), 1, Line::Plain(&line), None, None);
                    done2.fetch_add(1, Ordering::SeqCst);
                }
            });
            let sealed = || q.lock().sealed.len();
            eventually("the queue to fill", || sealed() > SEALED_MAX);
            // Nothing can be awaited for "still waiting": give it time to run ahead, if it would.
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(sealed(), SEALED_MAX + 1, "{release}");
            assert_eq!(done.load(Ordering::SeqCst), SEALED_MAX + 1, "{release}");
            assert!(!appender.is_finished());
            match release {
                "take" => {
                    let mut taken = 0;
                    while !appender.is_finished() {
                        taken += q.take().sealed.len();
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    taken += q.take().sealed.len();
                    assert_eq!(taken, SEALED_MAX + 2, "the last line is still open");
                }
                _ => {
                    q.close(Instant::now());
                    eventually("the appender to finish", || appender.is_finished());
                }
            }
            appender.join().unwrap();
            assert_eq!(done.load(Ordering::SeqCst), SEALED_MAX + 3);
        }
    }

    /// The end of a storm: after a full batch, what is left is pushed once the stream has
    /// paused for `QUIET`, not a whole interval after its first entry.
    #[test]
    fn a_storm_s_last_batch_goes_when_the_stream_pauses() {
        let q = Queue::new(
            Duration::from_secs(30),
            4096,
            Schema::default(),
            String::new(),
        );
        let line = "x".repeat(500);
        let mut sealed = 0;
        for _ in 0..12 {
            q.append(labels(), 1, Line::Plain(&line), None, None);
            sealed += q.take().sealed.len();
        }
        assert!(sealed >= 1, "a batch filled up");
        let start = Instant::now();
        q.wait(None);
        let waited = start.elapsed();
        assert!(waited >= QUIET, "{waited:?}");
        assert!(waited < Duration::from_secs(10), "{waited:?}");
        assert_eq!(q.take().sealed.len(), 1);
    }

    /// A burst that fills its batch at `BATCH_MAX_BYTES` per interval or faster goes once it
    /// is over; a single event waits for the interval.
    #[test]
    fn a_burst_goes_when_it_is_over_and_a_trickle_waits() {
        let q = Queue::new(
            Duration::from_secs(30),
            1 << 20,
            Schema::default(),
            String::new(),
        );
        // 1 MiB per 30 s is ~3.5 KB per QUIET: 20 lines of 500 bytes are a burst.
        let line = "x".repeat(500);
        for _ in 0..20 {
            q.append(labels(), 1, Line::Plain(&line), None, None);
        }
        assert!(q.take().sealed.is_empty());
        let start = Instant::now();
        q.wait(None);
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(q.take().sealed.len(), 1);
        // One event (after a batch that was not full): nothing before `until`.
        q.append(labels(), 1, Line::Plain("a"), None, None);
        let until = Instant::now() + 3 * QUIET;
        q.wait(Some(until));
        assert!(Instant::now() >= until);
        assert!(q.take().sealed.is_empty());
    }

    /// `held_for` counts from when the watcher first waits for room, as long as it waits
    /// again (or has filled the queue again) at every take, and is zero once a take finds it
    /// keeping up.
    #[test]
    fn held_for_counts_while_the_watcher_waits_for_room_and_stops_once_it_keeps_up() {
        let q = std::sync::Arc::new(Queue::new(
            Duration::from_secs(3600),
            1024,
            Schema::default(),
            String::new(),
        ));
        assert_eq!(q.held_for(), Duration::ZERO);
        let watcher = {
            let q = q.clone();
            std::thread::spawn(move || {
                let line = "x".repeat(500);
                for i in 0..12 {
                    q.append(labels(), i, Line::Plain(&line), None, None);
                }
            })
        };
        eventually("the watcher to wait for room", || {
            q.held_for() > Duration::ZERO
        });
        // It was waiting when one batch was taken: still held back, from the same moment.
        let before = q.held_for();
        assert_eq!(q.take_up_to(1).sealed.len(), 1);
        assert!(q.held_for() >= before);
        while !watcher.is_finished() {
            q.take_up_to(usize::MAX);
            std::thread::yield_now();
        }
        watcher.join().unwrap();
        q.take_up_to(usize::MAX);
        assert_eq!(q.held_for(), Duration::ZERO);
    }

    /// The pusher takes one batch at a time while Loki is healthy: the others stay queued,
    /// oldest first, and the resume point does not run ahead of them.
    #[test]
    fn take_up_to_leaves_the_rest_queued_and_no_resume_point_ahead_of_them() {
        let q = Queue::new(
            Duration::from_secs(3600),
            1024,
            Schema::default(),
            String::new(),
        );
        let line = "x".repeat(400);
        // Closing: more than SEALED_MAX sealed batches do not make `append` wait.
        q.close(Instant::now() + Duration::from_secs(10));
        for i in 0..6 {
            q.append(
                labels(),
                i,
                Line::Plain(&line),
                None,
                Some((i as u64, 1, 7)),
            );
            q.advance("", &format!("{}", i + 1));
        }
        let mut firsts = Vec::new();
        loop {
            let t = q.take_up_to(1);
            if t.sealed.is_empty() {
                assert_eq!(t.idle_rv.as_deref(), Some("6"));
                break;
            }
            assert_eq!(t.sealed.len(), 1);
            let (batch, _) = &t.sealed[0];
            firsts.push(batch.list[0].0);
            let left = q.pending() > 0;
            assert_eq!(t.idle_rv.is_none(), left, "{:?}", t.idle_rv);
        }
        assert!(firsts.len() >= 3, "{firsts:?}");
        assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{firsts:?}");
        assert!(q.take_up_to(0).sealed.is_empty());
    }

    #[test]
    fn the_open_batch_is_due_after_the_interval() {
        let q = Queue::new(
            Duration::from_millis(50),
            1 << 20,
            Schema::default(),
            String::new(),
        );
        q.append(labels(), 1, Line::Plain("a"), None, None);
        let t = q.take();
        assert!(t.sealed.is_empty() && t.next_due.is_some());
        let start = Instant::now();
        q.wait(None);
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(q.take().sealed.len(), 1);
    }
}
