//! Deciding which event objects show a new occurrence, and handing those to the output:
//! the Loki queue, or standard output with `--stdout`.
//!
//! An event object shows a new occurrence when its line (see `event.rs`) differs from the
//! last line shipped for the same uid and its count did not go backwards. So a relist
//! (after a 410 or a restart of the watch) ships nothing already shipped, a MODIFIED that
//! only bumps `count`/`lastTimestamp` ships one new line, and a MODIFIED that changes nothing
//! a user can see (managedFields, annotations) ships nothing. The memory holds a count and a
//! 64-bit hash per uid and forgets an event when it is deleted or not shipped for
//! `DEDUP_RETENTION_SECONDS` (events live one hour after their last update). It starts from
//! what the spool's journal says was shipped before a restart.
//!
//! A line longer than `MAX_LINE_BYTES` has its message cut, with a marker saying how many
//! bytes were cut, so Loki does not refuse it.

use std::io::Write;
use std::sync::Arc;

use log::{info, warn};

use crate::batch::{Format, Line};
use crate::event::{Event, Field};
use crate::filter::Filter;
use crate::format::LineFormat;
use crate::queue::Queue;
use crate::spool::{uid_key, Memory, SharedMemory, Shipped};
use crate::stats::Stats;
use crate::time::now_secs;

/// How often forgotten events are pruned, in seconds.
const PRUNE_EVERY_SECS: u64 = 600;

pub enum Output {
    Stdout,
    Loki(Arc<Queue>),
}

/// Standard output went away (a closed pipe): there is no one left to print to.
#[derive(Debug)]
pub struct OutputClosed(pub std::io::Error);

pub struct Shipper {
    /// Shared with the Store, which commits into it (spool.rs).
    seen: SharedMemory,
    /// The JSON line, for the outputs that need it plain (stdout, logfmt, ENABLE_DETAILED).
    line: String,
    /// The JSON line escaped once more, as a push body holds it.
    nested: String,
    /// The line in another format, and the structured metadata.
    alt: String,
    meta: String,
    output: Output,
    stats: Arc<Stats>,
    s: Settings,
    /// The Unix time in seconds, as of the watcher's last read (`tick`): reading the clock
    /// for every event cost ~2 % of the storm's CPU (perf), and what it stamps (when an
    /// occurrence was shipped, for `DEDUP_RETENTION_SECONDS`) needs no better than the time
    /// its frame arrived.
    now: u64,
    last_prune: u64,
    /// Where the memory's tables (committed, pending) were at the last lookup, for
    /// prefetching without its lock.
    slots: [crate::table::Slots; 2],
}

/// How the Shipper behaves; from the configuration.
pub struct Settings {
    pub detailed: bool,
    pub retention_secs: u64,
    pub max_line_bytes: usize,
    pub filter: Filter,
    /// `LABEL_KEYS`.
    pub fields: Vec<Field>,
    pub format: LineFormat,
    pub structured_metadata: bool,
}

impl Default for Settings {
    /// What the sample kube-event.conf's defaults make (for the benchmark and tests; `run`
    /// builds the real one from the configuration).
    fn default() -> Settings {
        Settings {
            detailed: false,
            retention_secs: 7200,
            max_line_bytes: 256 * 1024,
            filter: Filter::new(crate::config::Filters {
                min_count: 1,
                ..Default::default()
            }),
            fields: vec![Field::Namespace, Field::Kind, Field::Type],
            format: LineFormat::Json,
            structured_metadata: false,
        }
    }
}

impl Shipper {
    pub fn new(output: Output, stats: Arc<Stats>, settings: Settings, seen: SharedMemory) -> Self {
        Shipper {
            seen,
            line: String::with_capacity(4096),
            nested: String::with_capacity(4096),
            alt: String::new(),
            meta: String::new(),
            output,
            stats,
            s: settings,
            now: now_secs(),
            last_prune: now_secs(),
            slots: Default::default(),
        }
    }

    /// The clock, read by the watcher when new bytes arrived (a read from the stream, a list
    /// page); `offer_event` stamps with it.
    pub fn tick(&mut self, now_secs: u64) {
        self.now = now_secs;
    }

    /// Every frame of scope `key` up to `rv` has been offered (the resume point, once safe).
    pub fn advance(&self, key: &str, rv: &str) {
        if let Output::Loki(q) = &self.output {
            q.advance(key, rv);
        }
    }

    /// Whether `offer_event` needs the object's raw text (`LINE_FORMAT=raw`); otherwise the
    /// watcher parses frames in one pass.
    pub fn needs_raw(&self) -> bool {
        self.s.format == LineFormat::Raw
    }

    /// An object as raw JSON: parses it and offers it. The watcher reads list items where
    /// they stand (`scan::list_each`, `offer_read`); this is for the tests.
    #[cfg(test)]
    pub fn offer(&mut self, raw: &[u8], rv: &mut String) -> Result<(), OutputClosed> {
        match crate::scan::event(raw) {
            Ok(ev) => self.offer_read(raw, Ok(&ev), rv),
            Err(e) => self.offer_read(raw, Err(e), rv),
        }
    }

    /// A list item already read (`scan::list_each`): `parsed` is the Event read from `raw`,
    /// or why `raw` is not one. Offers it, or counts and logs it as malformed.
    pub fn offer_read(
        &mut self,
        raw: &[u8],
        parsed: Result<&Event<'_>, crate::scan::Error>,
        rv: &mut String,
    ) -> Result<(), OutputClosed> {
        let parsed = parsed.and_then(|ev| {
            // The object's text, for LINE_FORMAT=raw.
            let text = if self.needs_raw() {
                Some(std::str::from_utf8(raw).map_err(|e| crate::scan::Error {
                    at: e.valid_up_to(),
                    what: "invalid UTF-8 in the object",
                })?)
            } else {
                None
            };
            Ok((ev, text))
        });
        let (ev, text) = match parsed {
            Ok(ev) => ev,
            Err(e) => {
                Stats::add_shipper(&self.stats.received, 1);
                Stats::add(&self.stats.malformed, 1);
                warn!(
                    "skipping an event that does not parse ({e}): {}",
                    head(&String::from_utf8_lossy(raw))
                );
                return Ok(());
            }
        };
        self.offer_event(ev, text, rv)
    }

    /// An ADDED or MODIFIED object, or a list item: ships it if it shows a new occurrence.
    /// The object's resourceVersion, when it has one, is written to `rv`. `raw` is the
    /// object's text, needed only for `LINE_FORMAT=raw`.
    pub fn offer_event(
        &mut self,
        ev: &Event<'_>,
        raw: Option<&str>,
        rv: &mut String,
    ) -> Result<(), OutputClosed> {
        Stats::add_shipper(&self.stats.received, 1);
        if let Some(v) = ev
            .metadata
            .resource_version
            .as_deref()
            .filter(|v| !v.is_empty())
        {
            rv.clear();
            rv.push_str(v);
        }
        let occ = match ev.occurrence() {
            Ok(o) => o,
            Err(e) => {
                Stats::add(&self.stats.malformed, 1);
                warn!(
                    "skipping event {:?} in namespace {:?}: {e}",
                    ev.metadata.name.as_deref().unwrap_or(""),
                    ev.metadata.namespace.as_deref().unwrap_or("")
                );
                return Ok(());
            }
        };
        if !self.s.filter.pass(ev, occ.count) {
            Stats::add(&self.stats.filtered, 1);
            return Ok(());
        }
        // The event's slots in the memory are fetched while the line is rendered (a miss in
        // a table of 200,000 events was ~2 % of the storm's CPU, perf), where the tables were
        // at the last lookup: taking the memory's lock for it cost more than the miss.
        let key = uid_key(ev.uid());
        for slots in self.slots {
            crate::table::prefetch(slots, key);
        }
        // The JSON line's fingerprint is what the memory of shipped occurrences compares,
        // whatever the output format. A JSON push body (LOKI_COMPRESSION=gzip or none) holds
        // the line escaped once more: both forms are rendered, side by side. A protobuf batch
        // (snappy, the default) and the other outputs take the line as it is.
        let nested = matches!(&self.output, Output::Loki(q) if q.format() == Format::Json)
            && self.s.format == LineFormat::Json
            && !self.s.detailed;
        let cut = if nested {
            ev.write_line_both(
                &occ,
                &mut self.line,
                &mut self.nested,
                self.s.max_line_bytes,
            )
        } else {
            ev.write_line(&occ, &mut self.line, self.s.max_line_bytes)
        };
        let hash = crate::hash::fingerprint(self.line.as_bytes());
        let now = self.now;
        let shipped = Shipped::new(occ.count, hash, now);
        {
            let mut seen = crate::spool::lock(&self.seen);
            self.slots = [seen.committed.where_(), seen.pending.where_()];
            match seen.get(key) {
                Some(s) if s.covers(&shipped) => {
                    Stats::add_shipper(&self.stats.unchanged, 1);
                    return Ok(());
                }
                // DEDUPLICATE=1: the first occurrence was shipped; repeats are left out.
                Some(_) if self.s.filter.deduplicate() => {
                    Stats::add(&self.stats.filtered, 1);
                    return Ok(());
                }
                _ => seen.offer(key, shipped),
            }
        }
        Stats::add_shipper(&self.stats.shipped, 1);
        if cut && self.s.format != LineFormat::Raw {
            Stats::add_shipper(&self.stats.truncated, 1);
        }
        let labels = ev.labels(&self.s.fields);
        let record = Some((key, occ.count, hash));
        if let (LineFormat::Json, false, Output::Loki(q)) =
            (self.s.format, self.s.detailed, &self.output)
        {
            // The common case: the line goes into the batch as it is.
            let meta = self.s.structured_metadata.then(|| {
                ev.write_metadata(&mut self.meta);
                self.meta.as_str()
            });
            let line = if nested {
                Line::Nested(&self.nested)
            } else {
                Line::Plain(&self.line)
            };
            q.append(labels, occ.nanos, line, meta, record);
            if now.abs_diff(self.last_prune) >= PRUNE_EVERY_SECS {
                self.prune(now);
            }
            return Ok(());
        }
        let line = match self.s.format {
            LineFormat::Json => &self.line,
            LineFormat::Logfmt => {
                crate::format::json_to_logfmt(&self.line, &mut self.alt);
                &self.alt
            }
            LineFormat::Raw => {
                let text = raw.unwrap_or("");
                match crate::format::raw_line(text, &mut self.alt, self.s.max_line_bytes) {
                    Ok(true) => Stats::add_shipper(&self.stats.truncated, 1),
                    Ok(false) => {}
                    // It parsed as an Event a moment ago (or the watcher did not keep the raw
                    // text, which it does in this format): ship the JSON line.
                    Err(_) => self.alt.clone_from(&self.line),
                }
                &self.alt
            }
        };
        if self.s.detailed {
            info!("{line}");
        }
        match &self.output {
            Output::Loki(q) => {
                let meta = if self.s.structured_metadata {
                    ev.write_metadata(&mut self.meta);
                    Some(self.meta.as_str())
                } else {
                    None
                };
                q.append(labels, occ.nanos, Line::Plain(line), meta, record)
            }
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes())
                    .and_then(|()| out.write_all(b"\n"))
                    .and_then(|()| out.flush())
                    .map_err(OutputClosed)?;
            }
        }
        if now.abs_diff(self.last_prune) >= PRUNE_EVERY_SECS {
            self.prune(now);
        }
        Ok(())
    }

    /// A DELETED object: the event expired, it cannot show up again.
    pub fn forget(&mut self, uid: &str) {
        self.memory().forget(uid_key(uid));
    }

    /// How many events are remembered.
    pub fn remembered(&self) -> usize {
        self.memory().len()
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        crate::spool::lock(&self.seen)
    }

    fn prune(&mut self, now: u64) {
        self.last_prune = now;
        let keep = self.s.retention_secs;
        self.memory().prune(now, keep);
    }
}

/// The first 200 bytes of a frame, for a log line.
pub fn head(s: &str) -> &str {
    match s.char_indices().find(|(i, _)| *i >= 200) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Table;
    use std::time::Duration;

    /// Stats, a queue that never seals on its own, and a Shipper into it remembering `seen`.
    fn rig(seen: Table) -> (Arc<Stats>, Arc<Queue>, Shipper) {
        let stats = Arc::new(Stats::default());
        let q = Arc::new(Queue::new(
            Duration::from_secs(3600),
            usize::MAX,
            Default::default(),
            String::new(),
        ));
        let seen = Arc::new(std::sync::Mutex::new(Memory::new(seen)));
        let s = Shipper::new(Output::Loki(q.clone()), stats.clone(), settings(), seen);
        (stats, q, s)
    }

    fn settings() -> Settings {
        Settings::default()
    }

    fn raw(uid: &str, count: i64, last: &str, extra: &str) -> Vec<u8> {
        format!(
            r#"{{"metadata":{{"uid":"{uid}","namespace":"ns","name":"e","resourceVersion":"{extra}"}},"involvedObject":{{"kind":"Pod","name":"p"}},"reason":"BackOff","type":"Warning","count":{count},"lastTimestamp":"{last}"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn ships_each_occurrence_once() {
        let (stats, q, mut s) = rig(Table::default());
        let mut rv = String::new();
        s.offer(&raw("a", 1, "2026-01-01T00:00:01Z", "1"), &mut rv)
            .unwrap();
        // The same object again (a relist), and a MODIFIED with no visible change.
        s.offer(&raw("a", 1, "2026-01-01T00:00:01Z", "1"), &mut rv)
            .unwrap();
        s.offer(&raw("a", 1, "2026-01-01T00:00:01Z", "2"), &mut rv)
            .unwrap();
        // A repeat.
        s.offer(&raw("a", 2, "2026-01-01T00:00:05Z", "3"), &mut rv)
            .unwrap();
        // An older state seen late never goes backwards.
        s.offer(&raw("a", 1, "2026-01-01T00:00:01Z", "1"), &mut rv)
            .unwrap();
        s.offer(&raw("b", 1, "2026-01-01T00:00:02Z", "4"), &mut rv)
            .unwrap();
        assert_eq!(q.pending(), 3);
        assert_eq!(rv, "4");
        assert_eq!(Stats::get(&stats.shipped), 3);
        assert_eq!(Stats::get(&stats.unchanged), 3);
        s.forget("a");
        assert_eq!(s.remembered(), 1);
    }

    #[test]
    fn the_compact_memory_ships_every_occurrence_exactly_once_and_stays_small() {
        let (stats, q, mut s) = rig(Table::default());
        let mut rv = String::new();
        const EVENTS: i64 = 20_000;
        // Three occurrences of each event; every object is seen twice (a relist, a replayed
        // watch), and the rounds interleave the events.
        for count in 1..=3 {
            for _seen in 0..2 {
                for i in 0..EVENTS {
                    let uid = format!("{:08x}-0000-4000-8000-{i:012x}", i * 7919);
                    let ts = format!("2026-01-01T00:{count:02}:00Z");
                    s.offer(&raw(&uid, count, &ts, "1"), &mut rv).unwrap();
                }
            }
        }
        assert_eq!(Stats::get(&stats.shipped), 3 * EVENTS as u64);
        assert_eq!(Stats::get(&stats.unchanged), 3 * EVENTS as u64);
        assert_eq!(q.pending(), 3 * EVENTS as usize);
        assert_eq!(s.remembered(), EVENTS as usize);
        // The pusher commits what it spooled (here: everything at once), as the journal's
        // records of each batch.
        {
            let mut m = s.memory();
            let pending: Vec<(u64, Shipped)> = m.pending.iter().collect();
            for (k, v) in pending {
                m.commit(k, v);
            }
            assert!(m.pending.is_empty());
        }
        assert_eq!(s.remembered(), EVENTS as usize);
        // The memory of what was shipped: at most 64 bytes per remembered event (issue 6),
        // counting the table's spare slots; at most 20 once it is refitted when idle.
        let bytes = s.memory().bytes();
        let per_event = bytes / s.remembered();
        assert!(per_event <= 64, "{per_event} bytes per remembered event");
        s.memory().trim();
        let bytes = s.memory().bytes();
        let per_event = bytes / s.remembered();
        assert!(
            per_event <= 20,
            "{per_event} bytes per remembered event when idle"
        );
        // After a restart with that memory (what was committed), a relist ships nothing.
        let committed = s.memory().committed.clone();
        let restarted = Shipper::new(
            Output::Loki(q.clone()),
            stats.clone(),
            settings(),
            Arc::new(std::sync::Mutex::new(Memory::new(committed))),
        );
        let mut s2 = restarted;
        for i in 0..EVENTS {
            let uid = format!("{:08x}-0000-4000-8000-{i:012x}", i * 7919);
            s2.offer(&raw(&uid, 3, "2026-01-01T00:03:00Z", "1"), &mut rv)
                .unwrap();
        }
        assert_eq!(Stats::get(&stats.shipped), 3 * EVENTS as u64);
    }

    #[test]
    fn malformed_objects_are_counted_and_skipped() {
        let (stats, q, mut s) = rig(Table::default());
        for bad in [
            r#"{"metadata":{"uid":"x"}}"#,
            r#"{"metadata":"nope"}"#,
            r#"[]"#,
        ] {
            s.offer(bad.as_bytes(), &mut String::new()).unwrap();
        }
        assert_eq!(Stats::get(&stats.malformed), 3);
        assert_eq!(q.pending(), 0);
    }
}
