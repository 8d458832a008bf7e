//! The pusher thread: takes sealed batches from the queue, pushes them to Loki oldest first,
//! back to back, and commits their records to the journal once they are safe. A batch is safe
//! when Loki took it or when it is in the spool: it is written there before its first push
//! when it has to wait (batches ahead of it, Loki failing, or Loki slower than the watch for
//! longer than `SPILL_AFTER`), else only if that push fails. While Loki takes every push the
//! pusher takes one batch at a time, and a watcher further ahead waits (`Pusher::room`).
//! Failed pushes are retried with backoff until Loki takes them. Rejected batches are
//! fixed when Loki says how (entries too old for the stream), else kept in
//! `DATA_DIR/rejected/`. The spool is bounded by `SPOOL_MAX_BYTES`: when it is full the oldest
//! batches are dropped, counted and logged.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use log::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::batch::Format;
use crate::batch::Sealed;
use crate::loki::{self, Client, Encoding, Outcome};
use crate::queue::Queue;
use crate::spool::{SpoolFile, Store};
use crate::stats::Stats;
use crate::time::format_rfc3339;

/// The most memory the bodies of batches waiting for Loki may keep (by buffer capacity),
/// spooled or not yet written (`Pusher::defer`: one, whatever its size): two JSON batches
/// of the default size, or about five compressed ones. Further batches are read back from
/// the spool (into recycled buffers, ~0.1 ms a batch) rather than held in memory.
const CACHE_MAX: usize = 2 << 20;

/// How long the watcher may be held back by a Loki that takes every push, but slower than
/// events come (`Pusher::room`), before the batches go through the spool: a burst that Loki
/// digests in seconds never touches the disk, and the watch never lags far behind (events
/// are served from etcd, whose history is about five minutes: further behind, a re-watch
/// would have to list everything again).
const SPILL_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// How many emptied compressed bodies are kept to compress the next batches into. (Emptied
/// JSON bodies go back to the queue, which seals batches into them.)
const WIRE_SPARE_MAX: usize = 2;

/// How long the pipeline is idle before its buffers are released.
const IDLE_TRIM: std::time::Duration = std::time::Duration::from_secs(5);

/// How many times a rejected batch is fixed and pushed again before it is kept aside.
const MAX_FIXES: u32 = 3;

/// A batch waiting for Loki.
struct Item {
    seq: u64,
    entries: usize,
    oldest: i64,
    newest: i64,
    bytes: u64,
    /// Whether the batch is in the spool; if not (not written yet, or the spool could not
    /// be written), `body` holds it.
    spooled: bool,
    /// Not written to the spool yet, on purpose: it is pushed first (`defer`), and written
    /// only if that push fails, or at shutdown. Its body counts in `cached`.
    deferred: bool,
    /// The push body in memory: always when not spooled; for spooled batches while the
    /// cache has room (`CACHE_MAX`), so a healthy pipeline never reads back what it just wrote.
    body: Option<Vec<u8>>,
    /// How the body is held, in memory and in the spool.
    encoding: Encoding,
}

/// A batch whose records are not in the journal yet. Committed in order, once safe.
struct Uncommitted {
    seq: u64,
    records: String,
    list: Vec<(u64, i64, u64)>,
    rv: String,
    safe: bool,
}

pub struct Pusher {
    queue: Arc<Queue>,
    client: Client,
    store: Store,
    stats: Arc<Stats>,
    backlog: VecDeque<Item>,
    uncommitted: VecDeque<Uncommitted>,
    spool_bytes: u64,
    spool_max: u64,
    /// Bytes of spooled batches' bodies kept in memory (their buffers' capacity).
    cached: usize,
    /// Emptied compressed bodies, to compress the next batches into.
    wires: Vec<Vec<u8>>,
    backoff: Backoff,
    failures: u32,
    /// The resourceVersion of the last commit attempt that had nothing before it pending.
    last_rv: String,
}

impl Pusher {
    pub fn new(
        queue: Arc<Queue>,
        client: Client,
        store: Store,
        stats: Arc<Stats>,
        spool_max: u64,
        recovered: Vec<SpoolFile>,
        rv: String,
    ) -> Self {
        let backlog: VecDeque<Item> = recovered
            .into_iter()
            .map(|f| Item {
                seq: f.seq,
                entries: f.entries,
                oldest: f.oldest,
                newest: f.newest,
                bytes: f.bytes,
                spooled: true,
                deferred: false,
                body: None,
                encoding: f.encoding,
            })
            .collect();
        let spool_bytes = backlog.iter().map(|i| i.bytes).sum();
        let p = Pusher {
            queue,
            client,
            store,
            stats,
            backlog,
            uncommitted: VecDeque::new(),
            spool_bytes,
            spool_max,
            cached: 0,
            wires: Vec::new(),
            backoff: Backoff::loki(),
            failures: 0,
            last_rv: rv,
        };
        p.publish_spool();
        p
    }

    /// Runs until the queue is closed and everything is pushed, or the shutdown deadline.
    pub fn run(mut self) {
        // When the pipeline last had work; after IDLE_TRIM without any, its buffers go back
        // to the system (a storm's megabytes are not kept for a quiet cluster).
        let mut busy_at = Instant::now();
        let mut trimmed = false;
        loop {
            self.intake();
            if !self.backlog.is_empty() {
                if !self.push_head() {
                    break;
                }
                busy_at = Instant::now();
                trimmed = false;
                continue;
            }
            if self.queue.closing().is_some() {
                break;
            }
            if !trimmed && busy_at.elapsed() >= IDLE_TRIM {
                self.queue.trim();
                self.client.trim();
                self.store.trim();
                self.wires = Vec::new();
                trimmed = true;
                debug!("idle: buffers released");
            }
            self.queue.wait((!trimmed).then(|| busy_at + IDLE_TRIM));
        }
        self.finish();
    }

    /// Takes what the queue sealed (`room`), spools it and commits what is safe.
    fn intake(&mut self) {
        let taken = self.queue.take_up_to(self.room());
        for (sealed, rv) in taken.sealed {
            self.spool(sealed, rv);
        }
        // Stopping: what waits in memory goes to disk before the last pushes.
        if self.queue.closing().is_some() {
            self.spool_deferred();
        }
        // Frames after the last batch that shipped nothing (deletes, unchanged repeats)
        // still move the resume point, once nothing is waiting in the open batch.
        if let Some(rv) = taken
            .idle_rv
            .filter(|rv| !rv.is_empty() && *rv != self.last_rv)
        {
            let seq = self.store.next_seq();
            self.uncommitted.push_back(Uncommitted {
                seq,
                records: String::new(),
                list: Vec::new(),
                rv: rv.clone(),
                safe: true,
            });
            self.last_rv = rv;
        }
        self.commit();
        self.enforce_limit();
    }

    fn spool(&mut self, mut sealed: Sealed, rv: String) {
        // Encoded once, here, as it will be pushed: the spool holds 2-3x more, and neither a
        // retry nor a drain after an outage encodes again. The JSON buffer goes straight
        // back to the queue for the next batch.
        let mut encoding = Encoding::Json;
        if (self.client.encoding(), sealed.format) != (Encoding::Json, Format::Json) {
            let mut wire = self.wires.pop().unwrap_or_default();
            encoding = self
                .client
                .encode_sealed(&sealed.body, sealed.format, &mut wire);
            let sealed_body = std::mem::replace(&mut sealed.body, wire);
            self.queue.recycle(Some(sealed_body));
        }
        let seq = self.store.next_seq();
        let deferred = self.defer();
        let (spooled, body, bytes) = if deferred {
            self.cached += sealed.body.capacity();
            let n = sealed.body.len() as u64;
            (false, Some(sealed.body), n)
        } else {
            // Room first, so the spool never holds more than SPOOL_MAX_BYTES on disk.
            self.make_room(sealed.body.len() as u64 + 128);
            match self.store.write_batch(
                seq,
                sealed.entries,
                sealed.oldest,
                sealed.newest,
                &sealed.body,
                encoding,
            ) {
                Ok(bytes) => {
                    debug!(
                        "spooled batch {seq}: {} entries, {bytes} bytes",
                        sealed.entries
                    );
                    let keep = self.cached + sealed.body.capacity() <= CACHE_MAX;
                    if keep {
                        self.cached += sealed.body.capacity();
                        (true, Some(sealed.body), bytes)
                    } else {
                        self.recycle(Some(sealed.body), encoding);
                        (true, None, bytes)
                    }
                }
                Err(e) => {
                    self.write_failed(seq, sealed.entries, &e);
                    let n = sealed.body.len() as u64;
                    (false, Some(sealed.body), n)
                }
            }
        };
        self.uncommitted.push_back(Uncommitted {
            seq,
            records: sealed.records,
            list: sealed.list,
            rv: rv.clone(),
            safe: spooled,
        });
        self.last_rv = rv;
        self.spool_bytes += bytes;
        self.backlog.push_back(Item {
            seq,
            entries: sealed.entries,
            oldest: sealed.oldest,
            newest: sealed.newest,
            bytes,
            spooled,
            deferred,
            body,
            encoding,
        });
        self.publish_spool();
    }

    /// How many sealed batches to take from the queue. While Loki takes every push and
    /// nothing is in the spool: one at a time, when the last is done. The next ones wait in
    /// the queue, and a watcher further ahead waits too (`queue::SEALED_MAX`), so a storm
    /// that outruns Loki, or the journal's fsync, waits in the API server for a while
    /// instead of going through the spool, at three fsyncs and a read per batch. (Taking
    /// every batch, the pusher spooled all it could not hold in `CACHE_MAX`, fell further
    /// behind, and spooled the rest: with `BATCH_MAX_BYTES=131072`, the benchmark's storm
    /// wrote and read back 610 of 980 batches, at 8.85 µs per event instead of 4.00.)
    /// Every batch, to the spool: once a push fails, at shutdown, while the spool drains,
    /// and once the watcher has been held back for `SPILL_AFTER`, so that a Loki away or too
    /// slow for long finds the events on disk, not in the API server, whose TTL deletes
    /// them, and the watch never falls far behind.
    fn room(&self) -> usize {
        if self.failures == 0
            && self.queue.closing().is_none()
            && self.backlog.iter().all(|i| i.deferred)
            && self.queue.held_for() < SPILL_AFTER
        {
            usize::from(self.backlog.is_empty())
        } else {
            usize::MAX
        }
    }

    /// Whether a new batch is pushed before it is written to the spool: while Loki takes
    /// every push, and no batch is ahead of it (`room` takes one at a time then), whatever
    /// its size (before, a body had to fit in `CACHE_MAX`: with `BATCH_MAX_BYTES` of 4 MB
    /// every batch was written and read back). It is written only if its push fails
    /// (`spool_deferred`), so a healthy pipeline writes nothing to disk but the journal.
    /// Until it is safe (pushed, or spooled) its records and resourceVersion are not
    /// committed: a crash meanwhile loses nothing that a batch waiting in the queue would
    /// not, as the next start resumes the watch from before it.
    fn defer(&self) -> bool {
        self.failures == 0 && self.queue.closing().is_none() && self.backlog.is_empty()
    }

    /// Writes the batches kept in memory for their first push to the spool: a push failed
    /// (they will wait), or kube-event is stopping.
    fn spool_deferred(&mut self) {
        let mut safe = Vec::new();
        for i in 0..self.backlog.len() {
            if !self.backlog[i].deferred {
                continue;
            }
            let (seq, entries) = (self.backlog[i].seq, self.backlog[i].entries);
            match self.write_kept(i) {
                Ok(bytes) => {
                    debug!("spooled batch {seq}: {entries} entries, {bytes} bytes");
                    safe.push(seq);
                }
                Err(e) => {
                    // Kept in memory, as a batch whose first write failed.
                    let item = &mut self.backlog[i];
                    item.deferred = false;
                    self.cached -= item.body.as_ref().map_or(0, Vec::capacity);
                    self.write_failed(seq, entries, &e);
                }
            }
        }
        for seq in safe {
            self.mark_safe(seq);
        }
        self.publish_spool();
    }

    /// Counts and logs a batch that could not be written to the spool: it stays in memory
    /// and is pushed from there.
    fn write_failed(&self, seq: u64, entries: usize, e: &std::io::Error) {
        Stats::add(&self.stats.spool_write_errors, 1);
        error!(
            "cannot write batch {seq} ({entries} entries) to the spool: {e}; keeping it in \
             memory and pushing from there"
        );
    }

    /// Writes `backlog[i]`, a batch held in memory (deferred, or whose write failed), to the
    /// spool. It keeps its body, now counted in `cached`. Returns the bytes written.
    fn write_kept(&mut self, i: usize) -> std::io::Result<u64> {
        let item = &mut self.backlog[i];
        let body = item.body.as_deref().unwrap_or_default();
        let bytes = self.store.write_batch(
            item.seq,
            item.entries,
            item.oldest,
            item.newest,
            body,
            item.encoding,
        )?;
        self.spool_bytes = self.spool_bytes - item.bytes + bytes;
        item.bytes = bytes;
        item.spooled = true;
        if !item.deferred {
            self.cached += item.body.as_ref().map_or(0, Vec::capacity);
        }
        item.deferred = false;
        Ok(bytes)
    }

    /// Appends the records of safe batches to the journal, in order.
    fn commit(&mut self) {
        while let Some(u) = self.uncommitted.front() {
            if !u.safe {
                return;
            }
            if let Err(e) = self.store.commit(u.seq, &u.records, &u.list, &u.rv) {
                Stats::add(&self.stats.spool_write_errors, 1);
                error!("cannot write the journal: {e}; will try again");
                return;
            }
            debug!(
                "committed batch {}: {} records, up to resourceVersion {:?}",
                u.seq,
                u.list.len(),
                u.rv
            );
            if let Some(u) = self.uncommitted.pop_front() {
                self.queue.recycle_records(u.records, u.list);
            }
        }
    }

    fn mark_safe(&mut self, seq: u64) {
        if let Some(u) = self.uncommitted.iter_mut().find(|u| u.seq == seq) {
            u.safe = true;
        }
        self.commit();
    }

    /// Drops the oldest batches while the spool is over `SPOOL_MAX_BYTES` (keeping at least
    /// the newest batch).
    fn enforce_limit(&mut self) {
        if self.backlog.len() > 1 {
            self.make_room(0);
        }
    }

    /// Drops the oldest batches until `extra` more bytes fit under `SPOOL_MAX_BYTES`.
    fn make_room(&mut self, extra: u64) {
        // The files kept for reuse count: they go first.
        if self.spool_bytes + self.store.free_bytes() + extra > self.spool_max {
            self.store.drop_free();
        }
        while self.spool_bytes + extra > self.spool_max && !self.backlog.is_empty() {
            let Some(item) = self.backlog.pop_front() else {
                break;
            };
            self.forget_item(&item, false);
            self.mark_safe(item.seq);
            Stats::add(&self.stats.dropped_spool_full, item.entries as u64);
            error!(
                "spool full ({} bytes, SPOOL_MAX_BYTES {}): dropped the oldest batch, {} entries \
                 from {} to {}; {} entries dropped so far",
                self.spool_bytes + item.bytes,
                self.spool_max,
                item.entries,
                rfc3339(item.oldest),
                rfc3339(item.newest),
                Stats::get(&self.stats.dropped_spool_full)
            );
        }
        self.publish_spool();
    }

    fn publish_spool(&self) {
        Stats::set(&self.stats.spool_bytes, self.spool_bytes);
        Stats::set(&self.stats.spool_batches, self.backlog.len() as u64);
    }

    /// Pushes the oldest batch until Loki takes it (or rejects it for good). Returns false
    /// when the shutdown deadline passed.
    fn push_head(&mut self) -> bool {
        let Some(head) = self.backlog.front() else {
            return true;
        };
        let seq = head.seq;
        // A batch kept in memory because its write failed: try the spool again first.
        if !head.spooled && !head.deferred && head.body.is_some() && self.write_kept(0).is_ok() {
            info!("batch {seq} is in the spool now");
            self.mark_safe(seq);
        }
        let head = &self.backlog[0];
        // The body comes from the item (kept in memory), else from the spool; `own` also
        // holds a re-stamped body.
        let mut encoding = head.encoding;
        let mut own: Option<Vec<u8>> = match &head.body {
            Some(_) => None,
            None => match self.store.read_batch(seq, self.queue.spare()) {
                Ok((b, enc)) => {
                    encoding = enc;
                    Some(b)
                }
                Err(e) => {
                    let to = self.store.set_aside(seq);
                    error!(
                        "{e}; moved aside to {to}; its {} entries are lost",
                        head.entries
                    );
                    Stats::add(&self.stats.dropped_damaged, head.entries as u64);
                    self.done(seq);
                    return true;
                }
            },
        };
        let entries = head.entries;
        let mut fixes = 0;
        loop {
            let started = Instant::now();
            let body: &[u8] = match (&own, &self.backlog[0].body) {
                (Some(b), _) | (None, Some(b)) => b,
                (None, None) => &[],
            };
            let outcome = self.client.push(body, encoding);
            let took = started.elapsed();
            match &outcome {
                Outcome::Accepted { status } => self.stats.push_attempt(0, Some(*status), took),
                Outcome::Retry { status, .. } => self.stats.push_attempt(1, *status, took),
                Outcome::Reject { status, .. } => self.stats.push_attempt(2, Some(*status), took),
            }
            match outcome {
                Outcome::Accepted { .. } => {
                    if self.failures > 0 {
                        info!(
                            "Loki accepts pushes again after {} failed attempts",
                            self.failures
                        );
                    }
                    self.failures = 0;
                    self.backoff.reset();
                    debug!(
                        "pushed batch {seq}: {entries} entries, {} bytes in {took:?}",
                        body.len()
                    );
                    // Counted once handled: whoever reads `pushed_total` also sees the
                    // batch gone from `spool_batches` (and, if it was pushed from memory,
                    // committed to the journal).
                    self.done(seq);
                    Stats::add(&self.stats.pushed, entries as u64);
                    self.queue.recycle(own);
                    return true;
                }
                Outcome::Reject {
                    status,
                    body: answer,
                } => {
                    // The JSON text, for re-stamping and for keeping it readable.
                    let text = loki::json_text(body, encoding);
                    if fixes < MAX_FIXES {
                        if let Some((fixed, moved)) = loki::oldest_acceptable(&answer)
                            .zip(text.as_deref().ok())
                            .and_then(|(t, text)| loki::restamp(text, t))
                        {
                            fixes += 1;
                            Stats::add(&self.stats.restamped, moved as u64);
                            warn!(
                                "Loki refused entries of batch {seq} as too old for their stream \
                                 ({}); re-stamped {moved} entries to the oldest time it accepts \
                                 (their lines keep the real time) and pushing again",
                                loki::shorten(&answer, 300)
                            );
                            own = Some(fixed);
                            encoding = Encoding::Json;
                            continue;
                        }
                    }
                    Stats::add(&self.stats.rejected, entries as u64);
                    if answer.contains("structured metadata") {
                        error!(
                            "Loki refuses structured metadata (it needs Loki 3 with schema v13 and \
                             allow_structured_metadata): set STRUCTURED_METADATA=false in \
                             kube-event.conf"
                        );
                    }
                    let kept = match &text {
                        Ok(text) => self.store.keep_rejected(seq, text, "json", status, &answer),
                        // Kept as it is, then: never lost.
                        Err(_) => self.store.keep_rejected(
                            seq,
                            body,
                            match encoding {
                                Encoding::Snappy => "pb.snappy",
                                _ => "json.gz",
                            },
                            status,
                            &answer,
                        ),
                    };
                    error!(
                        "Loki rejected batch {seq} ({entries} entries) with {status}: {}; {kept}",
                        loki::shorten(&answer, 1000)
                    );
                    self.done(seq);
                    self.queue.recycle(own);
                    return true;
                }
                Outcome::Retry {
                    why, retry_after, ..
                } => {
                    self.failures += 1;
                    // It and the batches after it will wait: to disk with them.
                    self.spool_deferred();
                    let delay = self.backoff.failure(retry_after);
                    warn!(
                        "push of batch {seq} ({entries} entries) failed: {why}; retrying in \
                         {:.1}s ({} batches, {} bytes waiting)",
                        delay.as_secs_f64(),
                        self.backlog.len(),
                        self.spool_bytes
                    );
                    let retry_at = Instant::now() + delay;
                    loop {
                        // Keep sealing and spooling while Loki is away.
                        self.intake();
                        if self.backlog.front().map(|i| i.seq) != Some(seq) {
                            // Dropped to make room in the spool.
                            return true;
                        }
                        if let Some(deadline) = self.queue.closing() {
                            if Instant::now() >= deadline {
                                return false;
                            }
                            if retry_at >= deadline {
                                std::thread::sleep(
                                    deadline.saturating_duration_since(Instant::now()),
                                );
                                return false;
                            }
                        }
                        if Instant::now() >= retry_at {
                            break;
                        }
                        self.queue.wait(Some(retry_at));
                    }
                }
            }
        }
    }

    /// The batch at the head is handled (pushed, rejected, or unreadable).
    fn done(&mut self, seq: u64) {
        if let Some(mut item) = self.backlog.pop_front() {
            debug_assert_eq!(item.seq, seq);
            self.forget_item(&item, true);
            self.recycle(item.body.take(), item.encoding);
        }
        self.publish_spool();
        self.mark_safe(seq);
    }

    /// Keeps an emptied body for reuse: a gzipped one for the next compression, a JSON one
    /// for the queue to seal into.
    fn recycle(&mut self, body: Option<Vec<u8>>, encoding: Encoding) {
        match (body, encoding) {
            (Some(mut b), Encoding::Gzip | Encoding::Snappy) => {
                if self.wires.len() < WIRE_SPARE_MAX && b.capacity() > 0 {
                    b.clear();
                    self.wires.push(b);
                }
            }
            (body, _) => self.queue.recycle(body),
        }
    }

    /// A batch leaves the backlog: its spool file and cached body go. `reuse`: the file may
    /// be kept for a later batch to be written into (`Store::reuse_batch`).
    fn forget_item(&mut self, item: &Item, reuse: bool) {
        self.spool_bytes -= item.bytes;
        if item.spooled {
            if reuse {
                self.store.reuse_batch(item.seq, item.bytes);
            } else {
                self.store.remove_batch(item.seq);
            }
        }
        if item.spooled || item.deferred {
            if let Some(b) = &item.body {
                self.cached -= b.capacity();
            }
        }
    }

    /// At shutdown: says what is left, and where.
    fn finish(&mut self) {
        self.spool_deferred();
        self.commit();
        self.store.drop_free();
        if let Err(e) = self.store.checkpoint() {
            warn!("cannot write the checkpoint: {e}; the next start replays the journal");
        }
        let in_memory: usize = self
            .backlog
            .iter()
            .filter(|i| !i.spooled)
            .map(|i| i.entries)
            .sum();
        let spooled: usize = self
            .backlog
            .iter()
            .filter(|i| i.spooled)
            .map(|i| i.entries)
            .sum();
        if spooled > 0 {
            warn!(
                "shutdown deadline passed: {spooled} entries were not pushed to Loki yet; they are \
                 in the spool and will be pushed at the next start"
            );
            Stats::add(&self.stats.left_in_spool, spooled as u64);
        }
        if in_memory > 0 {
            Stats::add(&self.stats.abandoned, in_memory as u64);
            error!(
                "shutdown deadline passed: {in_memory} entries that could not be written to the \
                 spool were not pushed to Loki"
            );
        }
    }
}

fn rfc3339(nanos: i64) -> String {
    let mut s = String::new();
    format_rfc3339(nanos, &mut s);
    s
}
