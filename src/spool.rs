//! What is on disk in `DATA_DIR`: the spool of batches Loki has not accepted yet, and the
//! memory of what was shipped (journal + checkpoint), so that a restart, a crash or a long
//! Loki outage neither loses nor repeats an occurrence. See ARCHITECTURE.md, "On disk".
//!
//! The order of writes is the whole design:
//! 1. a sealed batch is written to `spool/<seq>.batch` (temp file, fsync, rename, fsync dir)
//!    before its first push;
//! 2. then its shipped-occurrence records and the resourceVersion they cover are appended to
//!    the journal and fsynced ("committed"), in batch order;
//! 3. the spool file is deleted after Loki answered 2xx.
//!
//! A crash between 1 and 2 re-ships the batch's occurrences on restart: byte-identical entries,
//! which Loki folds. A crash after 2 pushes the spooled batch again at worst (same bytes). If
//! the spool cannot be written (disk full), the batch is pushed from memory and committed
//! only after Loki accepted it; later batches wait for it, so the resourceVersion never
//! runs ahead of what is safe.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use log::{debug, warn};

use crate::hash::hash64;
use crate::loki::Encoding;
use crate::time::now_secs;

/// Version 3: the records' fingerprints are `hash::fingerprint` of the plain line, as the
/// journal's `F` blocks. Version 2 (the checksum chains `hash64` over the lines, so a
/// checkpoint is written as it is produced) and version 1 (one hash of the whole text) held
/// `hash64` of the line escaped once more, which nothing renders any more: they are still
/// read, as counts without a fingerprint (`Shipped::legacy`).
const CHECKPOINT_MAGIC: &str = "KUBE-EVENT CHECKPOINT 3";
const CHECKPOINT_MAGIC_V2: &str = "KUBE-EVENT CHECKPOINT 2";
const CHECKPOINT_MAGIC_V1: &str = "KUBE-EVENT CHECKPOINT 1";
/// A journal block's first word: `F` (records with `hash::fingerprint`s), or `B`, as
/// kube-event wrote it before (`hash64`s of the escaped line, read as `Shipped::legacy`).
const BLOCK_TAG: &str = "F";
const BLOCK_TAG_LEGACY: &str = "B";
/// Version 2 adds the body's encoding (`json`, `gzip` or `snappy`, `loki::Encoding`) at the
/// end of the header. Version 1 files (JSON bodies) are still read.
///
/// Version 3: the checksum is `hash::fingerprint` of the body, whose four lanes take about
/// a third of the time `hash64`'s one chain of multiplies did over a ~400 KB body (a batch
/// is hashed when it is spooled and again when it is read back; in a storm, ~1 % of
/// kube-event's time each, perf). Versions 2 and 1 (`hash64`) are still read.
const BATCH_MAGIC: &str = "KUBE-EVENT BATCH 3";
const BATCH_MAGIC_V2: &str = "KUBE-EVENT BATCH 2";
const BATCH_MAGIC_V1: &str = "KUBE-EVENT BATCH 1";
/// Compact the journal into a checkpoint when it is this large (and larger than twice the
/// last checkpoint), so a restart replays little.
const COMPACT_AT: u64 = 8 << 20;

/// What kube-event remembers of a shipped event: a fingerprint of its last shipped line (the
/// low 32 bits of its 64-bit hash), its count (up to 65,535), and when (Unix seconds, for the
/// retention). The committed memory keeps it in 8 bytes beside the key (`table.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shipped {
    pub hash: u32,
    pub count: u16,
    pub at: u32,
}

/// The fingerprint of a `Shipped` read from a journal or checkpoint that an older kube-event
/// wrote (`Shipped::legacy`). `Shipped::new` never makes it.
pub const NO_FINGERPRINT: u32 = 0;

impl Shipped {
    /// `hash`: the line's `hash::fingerprint` (its low 32 bits are kept, and 0 is taken as
    /// 1, `NO_FINGERPRINT` being reserved).
    pub fn new(count: i64, hash: u64, at: u64) -> Shipped {
        Shipped {
            hash: (hash as u32).max(1),
            count: count.clamp(0, u16::MAX as i64) as u16,
            at: at.min(u32::MAX as u64) as u32,
        }
    }

    /// An occurrence as a journal or checkpoint of an older kube-event recorded it: its
    /// fingerprint was a hash of the line escaped once more, which is no longer computed,
    /// so only its count is known.
    pub fn legacy(count: i64, at: u64) -> Shipped {
        Shipped {
            hash: NO_FINGERPRINT,
            ..Shipped::new(count, 1, at)
        }
    }

    /// A record read from a journal or checkpoint: `legacy` when an older kube-event wrote
    /// it. A checkpoint holds what the memory holds, `NO_FINGERPRINT` included, so a hash
    /// whose low 32 bits are 0 is read as no fingerprint too. (A line's own fingerprint has
    /// them 0 once in 4.3 billion: it is then compared by its count, as after an upgrade.)
    fn read(count: i64, hash: u64, at: u64, legacy: bool) -> Shipped {
        if legacy || hash as u32 == NO_FINGERPRINT {
            Shipped::legacy(count, at)
        } else {
            Shipped::new(count, hash, at)
        }
    }

    /// Whether an object with this remembered occurrence shows nothing new in `new`: the same
    /// line (fingerprint and count), or a count that went backwards (an older version of the
    /// object, from a lagging API server).
    ///
    /// The count guards the 32-bit fingerprint: a new occurrence nearly always has a higher
    /// count, so two different lines are taken for the same only if the count stayed the same
    /// (or is past 65,535) and their fingerprints collide, one chance in 4.3 billion.
    ///
    /// Remembered without a fingerprint (`legacy`, the first `DEDUP_RETENTION_SECONDS` after
    /// an upgrade), the same count is taken as the same occurrence: a new occurrence raises
    /// the count, and a relist after the upgrade must not ship every event again.
    pub fn covers(&self, new: &Shipped) -> bool {
        new.count < self.count
            || (new.count == self.count && (new.hash == self.hash || self.hash == NO_FINGERPRINT))
    }
}

/// How many records ahead `Store::commit` asks for their slots in the memory.
const COMMIT_AHEAD: usize = 8;

/// The slots of `Memory::pending` kept when it drains while events flow: a storm's few
/// batches in flight (~1 MB at 16 bytes a slot).
const PENDING_KEPT: usize = 1 << 16;

pub use crate::table::Table;

/// The memory of shipped occurrences, one copy shared by the Shipper (watcher thread), which
/// reads it and adds to `pending`, and the Store (pusher thread), which moves what the journal
/// commits into `committed`, the state a restart starts from and a checkpoint holds. `pending`
/// holds only occurrences whose batches are in flight (a few batches), so the memory costs
/// one compact slot per remembered event (16 bytes; 19–28 with the table's spare slots), not
/// two.
///
/// Events are remembered by the 64-bit hash of their uid (`uid_key`), not the uid itself:
/// 8 bytes instead of 36 plus a heap allocation. Two uids colliding in 64 bits is about one
/// chance in 10^7 for a million events in the retention window, and costs at most a
/// re-shipped or skipped repeat of one of the two.
///
/// `pending` is a `Table` too (it was a hashbrown map), so that both of an event's slots can
/// be asked for ahead (`Table::prefetch`): the watcher looks an event up in both and adds it
/// to `pending`, the pusher finds it there again when its batch commits, and each was a
/// cache miss that waited (perf: the pusher's commit spent most of its time on the map's
/// key compare).
#[derive(Default)]
pub struct Memory {
    pub committed: Table,
    pub pending: Table,
}

pub type SharedMemory = std::sync::Arc<std::sync::Mutex<Memory>>;

impl Memory {
    pub fn new(committed: Table) -> Memory {
        Memory {
            committed,
            pending: Table::default(),
        }
    }

    /// The newest thing known of `key`: offered (pending) before committed.
    pub fn get(&self, key: u64) -> Option<Shipped> {
        self.pending.get(key).or_else(|| self.committed.get(key))
    }

    /// An occurrence handed to the output; committed later with its batch (or never, if the
    /// process stops first: then a restart does not know it, and ships it again).
    pub fn offer(&mut self, key: u64, s: Shipped) {
        self.pending.insert(key, s);
    }

    /// A journal record: now what a restart would know. The pending entry goes once it says
    /// nothing newer.
    pub fn commit(&mut self, key: u64, s: Shipped) {
        if let Some(p) = self.pending.get(key) {
            if p.hash == s.hash && p.count == s.count {
                self.pending.remove(key);
                // After a spell of batches that could not be made safe (a full disk), give
                // the grown table back once it has drained. Not the few batches of a storm
                // (~8,000 entries): dropped each time it drained, it was grown again, page
                // by page, by the next batch. The idle trim gives those back.
                if self.pending.is_empty() && self.pending.capacity() > PENDING_KEPT {
                    self.pending = Table::default();
                }
            }
        }
        self.committed.insert(key, s);
    }

    /// The event was deleted: it cannot show up again.
    pub fn forget(&mut self, key: u64) {
        self.pending.remove(key);
        self.committed.remove(key);
    }

    /// Forgets events not shipped for `keep_secs`.
    pub fn prune(&mut self, now: u64, keep_secs: u64) {
        let fresh = |s: &Shipped| now.saturating_sub(s.at as u64) < keep_secs;
        self.committed.retain(|_, s| fresh(s));
        self.pending.retain(|_, s| fresh(s));
    }

    /// Events remembered (each counted once).
    pub fn len(&self) -> usize {
        self.committed.len()
            + self
                .pending
                .iter()
                .filter(|&(k, _)| !self.committed.contains_key(k))
                .count()
    }

    pub fn is_empty(&self) -> bool {
        self.committed.is_empty() && self.pending.is_empty()
    }

    /// Bytes the memory has allocated, for the memory-per-event figures: the table's slots,
    /// `pending`'s included.
    pub fn bytes(&self) -> usize {
        self.committed.capacity() * crate::table::SLOT_BYTES
            + self.pending.capacity() * crate::table::SLOT_BYTES
    }

    /// When idle: gives back the memory a storm or a prune left unused.
    pub fn trim(&mut self) {
        self.committed.shrink_to_fit();
        if self.pending.is_empty() {
            self.pending = Table::default();
        }
    }
}

/// The key of an event in the memory (`Memory`) and in the journal.
pub fn uid_key(uid: &str) -> u64 {
    hash64(0, uid.as_bytes())
}

/// A batch in the spool directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolFile {
    pub seq: u64,
    pub entries: usize,
    pub oldest: i64,
    pub newest: i64,
    /// Size of the file.
    pub bytes: u64,
    pub encoding: Encoding,
}

/// What a previous run left.
pub struct Recovered {
    pub rv: Option<String>,
    /// What was shipped, as committed; the Store keeps a handle and commits into it.
    pub memory: SharedMemory,
    /// Oldest first.
    pub batches: Vec<SpoolFile>,
}

#[derive(Debug)]
pub struct OpenError(pub String);

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OpenError {}

pub struct Store {
    dir: PathBuf,
    spool_dir: PathBuf,
    _lock: File,
    gen: u64,
    journal: File,
    journal_bytes: u64,
    checkpoint_bytes: u64,
    /// The memory of shipped occurrences; its `committed` part is what a restart would start
    /// from.
    memory: SharedMemory,
    rv: String,
    next_seq: u64,
    retention_secs: u64,
    /// A journal block is put together here (header, records, checksum) and written with one
    /// call. Kept from one commit to the next: a fresh ~140 KB string per batch was two mmaps,
    /// two munmaps and ~70 page faults with musl's malloc (strace, issue 6). Given back idle.
    block: String,
    /// Files of pushed batches kept to be written over by the next batches (`reuse_batch`),
    /// with their sizes: at most `FREE_FILES_MAX`.
    free: Vec<(PathBuf, u64)>,
}

/// How many pushed batches' files are kept for the next batches to be written into. A new
/// file per batch and its unlink after the push made ext4 allocate and free the blocks and
/// the page cache every time: writing 105 files of 365 KB (fsync, rename, the directory's
/// fsync) took 59–62 ms of CPU that way and 23–32 ms written over old files (a C loop on this
/// VM), ~3 % of the storm's CPU. The pusher may push a few batches back to back before it
/// spools the next: with two kept, 25 of a storm's 105 files were still unlinked.
const FREE_FILES_MAX: usize = 4;

impl Store {
    /// Locks `dir`, creates what is missing, and reads what a previous run left. Damaged
    /// files are moved to `dir/damaged/` with a warning; what can be read is used.
    pub fn open(dir: &Path, retention_secs: u64) -> Result<(Store, Recovered), OpenError> {
        let fail = |what: &str, p: &Path, e: io::Error| {
            OpenError(format!(
                "DATA_DIR {}: {what} {}: {e}",
                dir.display(),
                p.display()
            ))
        };
        fs::create_dir_all(dir).map_err(|e| fail("cannot create", dir, e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| fail("cannot write", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let pid = fs::read_to_string(&lock_path).unwrap_or_default();
                return Err(OpenError(format!(
                    "DATA_DIR {} is already in use by another kube-event (pid {}); \
                     give each instance its own DATA_DIR",
                    dir.display(),
                    pid.trim()
                )));
            }
            Err(fs::TryLockError::Error(e)) => return Err(fail("cannot lock", &lock_path, e)),
        }
        let mut l = &lock;
        lock.set_len(0)
            .and_then(|()| writeln!(l, "{}", std::process::id()))
            .and_then(|()| lock.sync_all())
            .map_err(|e| fail("cannot write", &lock_path, e))?;
        let spool_dir = dir.join("spool");
        fs::create_dir_all(&spool_dir).map_err(|e| fail("cannot create", &spool_dir, e))?;

        // The checkpoint, then the journal of the same generation.
        let cp_path = dir.join("checkpoint");
        let gen;
        let mut shipped = Table::default();
        let mut rv = String::new();
        let mut checkpoint_bytes = 0;
        match fs::read(&cp_path) {
            Ok(bytes) => match parse_checkpoint(&bytes) {
                Ok((g, r, s)) => {
                    gen = g;
                    rv = r;
                    shipped = s;
                    checkpoint_bytes = bytes.len() as u64;
                }
                Err(why) => {
                    let to = move_aside(dir, &cp_path);
                    warn!("checkpoint {} is damaged ({why}); moved aside to {to}; starting from the journal alone", cp_path.display());
                    gen = newest_journal_gen(dir).unwrap_or(0);
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                gen = newest_journal_gen(dir).unwrap_or(0);
            }
            Err(e) => return Err(fail("cannot read", &cp_path, e)),
        }
        let journal_path = dir.join(format!("journal-{gen}"));
        let mut max_seq = 0;
        let mut damaged_journal = false;
        match fs::read(&journal_path) {
            Ok(bytes) => {
                let (used, replay) = replay_journal(&bytes, &mut shipped, &mut rv, &mut max_seq);
                if used < bytes.len() {
                    let to = move_aside(dir, &journal_path);
                    warn!(
                        "journal {} is damaged after byte {used} ({replay}); moved aside to {to}; \
                         using the {used} bytes before it",
                        journal_path.display()
                    );
                    damaged_journal = true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail("cannot read", &journal_path, e)),
        }

        let (batches, max_file_seq) = scan_spool(dir, &spool_dir);
        max_seq = max_seq.max(max_file_seq);
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal_path)
            .map_err(|e| fail("cannot write", &journal_path, e))?;
        let journal_bytes = journal.metadata().map(|m| m.len()).unwrap_or(0);
        let mut store = Store {
            dir: dir.to_path_buf(),
            spool_dir,
            _lock: lock,
            gen,
            journal,
            journal_bytes,
            checkpoint_bytes,
            memory: std::sync::Arc::new(std::sync::Mutex::new(Memory::new(shipped))),
            rv,
            next_seq: max_seq + 1,
            retention_secs,
            block: String::new(),
            free: Vec::new(),
        };
        // A damaged journal is replaced by a fresh checkpoint of what was recovered.
        if damaged_journal || store.journal_bytes > COMPACT_AT {
            store
                .compact()
                .map_err(|e| fail("cannot write", &store.dir.join("checkpoint"), e))?;
        }
        // Old generations left by a crash during compaction.
        remove_old_journals(dir, store.gen);
        store.prune(now_secs());
        let recovered = Recovered {
            rv: (!store.rv.is_empty()).then(|| store.rv.clone()),
            memory: store.memory.clone(),
            batches,
        };
        Ok((store, recovered))
    }

    pub fn next_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    fn batch_path(&self, seq: u64) -> PathBuf {
        self.spool_dir.join(format!("{seq:020}.batch"))
    }

    /// Writes a batch (its push body, held as `encoding`) to the spool durably. Returns the
    /// file size.
    pub fn write_batch(
        &mut self,
        seq: u64,
        entries: usize,
        oldest: i64,
        newest: i64,
        body: &[u8],
        encoding: Encoding,
    ) -> io::Result<u64> {
        let header = format!(
            "{BATCH_MAGIC} {seq} {entries} {oldest} {newest} {} {:016x} {}\n",
            body.len(),
            crate::hash::fingerprint(body),
            encoding.name()
        );
        let path = self.batch_path(seq);
        let len = (header.len() + body.len()) as u64;
        // A pushed batch's file, if one is kept (and still there), is written over where it
        // is (a `.free`) and its old bytes past `len` are cut off before the fsync; else a new
        // `.tmp`. A crash before the rename leaves either, which the next start deletes. The
        // directory is fsynced before a kept file is written over: a crash must not find the
        // new bytes under the pushed batch's old `.batch` name (a file moved aside as damaged,
        // with a warning, though nothing was lost).
        let reused = self.free.pop().and_then(|(free, _)| {
            let f = OpenOptions::new().write(true).open(&free).ok()?;
            Some((free, f))
        });
        let (tmp, kept) = match reused {
            Some((free, f)) => (free, Some(f)),
            None => (path.with_extension("tmp"), None),
        };
        let write = |f: Option<File>| -> io::Result<()> {
            let written_over = f.is_some();
            let mut f = match f {
                Some(f) => {
                    sync_dir(&self.spool_dir)?;
                    f
                }
                None => File::create(&tmp)?,
            };
            f.write_all(header.as_bytes())?;
            f.write_all(body)?;
            if written_over {
                f.set_len(len)?;
            }
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(&self.spool_dir)
        };
        match write(kept) {
            Ok(()) => Ok(len),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Reads a spooled batch's push body and its encoding, checking its checksum, into `buf`
    /// (a spare buffer or an empty one): reading back a batch costs no fresh memory.
    pub fn read_batch(&self, seq: u64, mut buf: Vec<u8>) -> Result<(Vec<u8>, Encoding), String> {
        let path = self.batch_path(seq);
        buf.clear();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let (start, len, encoding) = parse_batch(&buf)
            .map(|(f, body)| {
                let start = body.as_ptr() as usize - buf.as_ptr() as usize;
                (start, body.len(), f.encoding)
            })
            .map_err(|why| format!("{} is damaged: {why}", path.display()))?;
        buf.copy_within(start..start + len, 0);
        buf.truncate(len);
        Ok((buf, encoding))
    }

    /// A pushed batch's file (`bytes` long, as `write_batch` said): kept (renamed `.free`)
    /// for a later batch to be written into, while fewer than `FREE_FILES_MAX` are; else
    /// removed.
    pub fn reuse_batch(&mut self, seq: u64, bytes: u64) {
        if self.free.len() < FREE_FILES_MAX {
            let path = self.batch_path(seq);
            let free = path.with_extension("free");
            if fs::rename(&path, &free).is_ok() {
                self.free.push((free, bytes));
                return;
            }
        }
        self.remove_batch(seq);
    }

    /// The bytes the kept files of pushed batches take (`reuse_batch`).
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|(_, n)| n).sum()
    }

    /// Removes the kept files of pushed batches: the spool needs the room, or the pipeline
    /// is idle.
    pub fn drop_free(&mut self) {
        for (path, _) in self.free.drain(..) {
            remove_or_warn(&path);
        }
    }

    pub fn remove_batch(&self, seq: u64) {
        remove_or_warn(&self.batch_path(seq));
    }

    /// Moves a spooled batch that cannot be read to `damaged/`.
    pub fn set_aside(&self, seq: u64) -> String {
        move_aside(&self.dir, &self.batch_path(seq))
    }

    /// Keeps a batch Loki refused for good, with Loki's answer, in `rejected/`, as a file
    /// with the extension `ext`. Returns a phrase for the log line.
    pub fn keep_rejected(
        &self,
        seq: u64,
        body: &[u8],
        ext: &str,
        status: u16,
        answer: &str,
    ) -> String {
        let dir = self.dir.join("rejected");
        let base = dir.join(format!("{}-{seq:020}", now_secs()));
        let write = || -> io::Result<()> {
            fs::create_dir_all(&dir)?;
            let mut f = File::create(base.with_extension(ext))?;
            f.write_all(body)?;
            f.sync_all()?;
            fs::write(
                base.with_extension("answer.txt"),
                format!("HTTP {status}\n{answer}\n"),
            )
        };
        match write() {
            Ok(()) => format!("kept in {}.{ext}", base.display()),
            Err(e) => format!("could not keep it in {}: {e}", dir.display()),
        }
    }

    /// Appends a batch's records (lines `key count hash`) and the resourceVersion they cover to
    /// the journal, durably, and moves them into the committed memory. `list` holds the same
    /// records as numbers, as the batch kept them: the text is not parsed back.
    pub fn commit(
        &mut self,
        seq: u64,
        records: &str,
        list: &[(u64, i64, u64)],
        rv: &str,
    ) -> io::Result<()> {
        let n = list.len();
        if n == 0 && rv == self.rv {
            return Ok(());
        }
        let at = now_secs();
        let block = &mut self.block;
        block.clear();
        let _ = writeln!(block, "{BLOCK_TAG} {seq} {n} {at} {}", json_str(rv));
        block.push_str(records);
        let sum = hash64(0, block.as_bytes());
        let _ = writeln!(block, "E {sum:016x}");
        self.journal.write_all(block.as_bytes())?;
        self.journal.sync_data()?;
        self.journal_bytes += block.len() as u64;
        // A slice at a time: the watcher takes the same lock for every event.
        for chunk in list.chunks(256) {
            let mut memory = lock(&self.memory);
            // Each record would wait for its slots (pending, then committed), one after the
            // other; asked for `COMMIT_AHEAD` records ahead, they arrive side by side. (All
            // of a slice's at once, before, most still missed: perf found the waits on the
            // insert's first slot and on the pending lookup.)
            let ahead = |memory: &Memory, i: usize| {
                if let Some(&(key, _, _)) = chunk.get(i) {
                    memory.pending.prefetch(key);
                    memory.committed.prefetch(key);
                }
            };
            for i in 0..COMMIT_AHEAD {
                ahead(&memory, i);
            }
            for (i, &(key, count, hash)) in chunk.iter().enumerate() {
                ahead(&memory, i + COMMIT_AHEAD);
                memory.commit(key, Shipped::new(count, hash, at));
            }
        }
        if !rv.is_empty() {
            self.rv = rv.to_string();
        }
        if self.journal_bytes > COMPACT_AT && self.journal_bytes > 2 * self.checkpoint_bytes {
            self.prune(at);
            if let Err(e) = self.compact() {
                warn!("cannot compact the journal into a checkpoint: {e}; will try again");
            }
        }
        Ok(())
    }

    /// Writes the committed state as a checkpoint (at a clean stop: the next start reads one
    /// small file instead of replaying the journal).
    pub fn checkpoint(&mut self) -> io::Result<()> {
        self.prune(now_secs());
        self.compact()
    }

    /// When idle: the memory of shipped occurrences gives back what a storm or a prune left
    /// unused (a table less than 77 % full refits itself to 80 %), the journal's block
    /// buffer goes, and so do the files kept for reuse.
    pub fn trim(&mut self) {
        lock(&self.memory).trim();
        self.block = String::new();
        self.drop_free();
    }

    /// Forgets events not shipped for longer than the retention.
    fn prune(&mut self, now: u64) {
        lock(&self.memory).prune(now, self.retention_secs);
    }

    /// Writes the committed state as a new checkpoint generation and starts a new journal.
    /// The checkpoint is streamed to disk while the memory is locked (the watcher waits
    /// a few milliseconds per 100,000 events), without a copy of the state.
    fn compact(&mut self) -> io::Result<()> {
        let gen = self.gen + 1;
        let path = self.dir.join("checkpoint");
        let tmp = self.dir.join("checkpoint.tmp");
        let mut w = io::BufWriter::with_capacity(64 << 10, File::create(&tmp)?);
        let mut sum = 0u64;
        let mut written = 0u64;
        let mut put = |w: &mut io::BufWriter<File>, line: &str| -> io::Result<()> {
            sum = hash64(sum, line.as_bytes());
            written += line.len() as u64;
            w.write_all(line.as_bytes())
        };
        put(&mut w, &format!("{CHECKPOINT_MAGIC} {gen}\n"))?;
        put(&mut w, &format!("R {}\n", json_str(&self.rv)))?;
        let remembered = {
            let memory = lock(&self.memory);
            let mut line = String::with_capacity(64);
            for (key, s) in memory.committed.iter() {
                line.clear();
                crate::event::push_hex16(&mut line, key);
                line.push(' ');
                crate::event::push_decimal(&mut line, i64::from(s.count));
                line.push(' ');
                crate::event::push_hex16(&mut line, u64::from(s.hash));
                line.push(' ');
                crate::event::push_decimal(&mut line, i64::from(s.at));
                line.push('\n');
                put(&mut w, &line)?;
            }
            memory.committed.len()
        };
        let end = format!("E {sum:016x}\n");
        w.write_all(end.as_bytes())?;
        written += end.len() as u64;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        let journal_path = self.dir.join(format!("journal-{gen}"));
        let journal = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&journal_path)?;
        journal.sync_all()?;
        fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)?;
        let old = self.dir.join(format!("journal-{}", self.gen));
        self.journal = OpenOptions::new().append(true).open(&journal_path)?;
        self.gen = gen;
        self.journal_bytes = 0;
        self.checkpoint_bytes = written;
        let _ = fs::remove_file(old);
        debug!(
            "compacted the journal: checkpoint generation {gen}, {remembered} events remembered"
        );
        Ok(())
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    crate::event::write_json_str(s, &mut out);
    out
}

/// Removes a spool file; one already gone is fine, any other failure a warning.
fn remove_or_warn(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            warn!("cannot remove {}: {e}", path.display());
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Applies `key count hash` lines (the key: `uid_key` in hex); malformed lines were excluded
/// by the checksum. `legacy`: the hashes are an older kube-event's (`Shipped::legacy`).
fn apply_records(records: &str, at: u64, legacy: bool, mut put: impl FnMut(u64, Shipped)) {
    for line in records.lines() {
        let mut parts = line.split(' ');
        let (Some(key), Some(count), Some(hash)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Ok(key), Ok(count), Ok(hash)) = (
            u64::from_str_radix(key, 16),
            count.parse::<i64>(),
            u64::from_str_radix(hash, 16),
        ) else {
            continue;
        };
        put(key, Shipped::read(count, hash, at, legacy));
    }
}

/// The memory, locked, also when a panic elsewhere poisoned the lock (the Shipper and the
/// Store both take it so).
pub(crate) fn lock(memory: &SharedMemory) -> std::sync::MutexGuard<'_, Memory> {
    memory.lock().unwrap_or_else(|e| e.into_inner())
}

/// Replays journal blocks into the state. Returns how many bytes were valid, and why the
/// rest was not.
fn replay_journal(
    bytes: &[u8],
    shipped: &mut Table,
    rv: &mut String,
    max_seq: &mut u64,
) -> (usize, String) {
    let mut pos = 0;
    while pos < bytes.len() {
        match parse_block(&bytes[pos..]) {
            Ok((len, seq, at, block_rv, records, legacy)) => {
                apply_records(records, at, legacy, |key, s| {
                    shipped.insert(key, s);
                });
                if !block_rv.is_empty() {
                    *rv = block_rv;
                }
                *max_seq = (*max_seq).max(seq);
                pos += len;
            }
            Err(why) => return (pos, why),
        }
    }
    (pos, String::new())
}

/// One journal block: `F seq n at rv\n` (`B` for an older kube-event's, whose records are
/// legacy, the last value) + n record lines + `E checksum\n`.
fn parse_block(bytes: &[u8]) -> Result<(usize, u64, u64, String, &str, bool), String> {
    let text_end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("torn block header")?;
    let header = std::str::from_utf8(&bytes[..text_end]).map_err(|_| "header is not UTF-8")?;
    let mut parts = header.splitn(5, ' ');
    let legacy = match parts.next() {
        Some(BLOCK_TAG) => false,
        Some(BLOCK_TAG_LEGACY) => true,
        _ => return Err("not a block header".into()),
    };
    let seq: u64 = num(parts.next())?;
    let n: usize = num(parts.next())?;
    let at: u64 = num(parts.next())?;
    let rv: String = serde_json::from_str(parts.next().ok_or("no resourceVersion")?)
        .map_err(|_| "bad resourceVersion")?;
    let mut pos = text_end + 1;
    for _ in 0..n {
        let end = bytes[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("torn record")?;
        pos += end + 1;
    }
    let records =
        std::str::from_utf8(&bytes[text_end + 1..pos]).map_err(|_| "records are not UTF-8")?;
    let end = bytes[pos..]
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("torn block end")?;
    let trailer = std::str::from_utf8(&bytes[pos..pos + end]).map_err(|_| "bad block end")?;
    let sum = trailer
        .strip_prefix("E ")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or("bad block end")?;
    if hash64(0, &bytes[..pos]) != sum {
        return Err("checksum mismatch".into());
    }
    Ok((pos + end + 1, seq, at, rv, records, legacy))
}

fn num<T: std::str::FromStr>(s: Option<&str>) -> Result<T, String> {
    s.and_then(|s| s.parse().ok())
        .ok_or_else(|| "bad number".to_string())
}

fn parse_checkpoint(bytes: &[u8]) -> Result<(u64, String, Table), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8")?;
    let body_end = text.trim_end_matches('\n').rfind('\n').ok_or("too short")? + 1;
    let sum = text[body_end..]
        .trim_end()
        .strip_prefix("E ")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or("no checksum line")?;
    let body = &text[..body_end];
    let computed = if body.starts_with(CHECKPOINT_MAGIC_V1) {
        hash64(0, body.as_bytes())
    } else {
        body.split_inclusive('\n')
            .fold(0, |h, line| hash64(h, line.as_bytes()))
    };
    if computed != sum {
        return Err("checksum mismatch".into());
    }
    let mut lines = body.lines();
    let gen = lines
        .next()
        .and_then(|l| {
            l.strip_prefix(CHECKPOINT_MAGIC)
                .or_else(|| l.strip_prefix(CHECKPOINT_MAGIC_V2))
                .or_else(|| l.strip_prefix(CHECKPOINT_MAGIC_V1))
        })
        .and_then(|g| g.trim().parse().ok())
        .ok_or("not a kube-event checkpoint")?;
    let legacy = !body.starts_with(CHECKPOINT_MAGIC);
    let rv: String = lines
        .next()
        .and_then(|l| l.strip_prefix("R "))
        .and_then(|r| serde_json::from_str(r).ok())
        .ok_or("no resourceVersion line")?;
    // Sized up front: the records come in the table's own order (`Table::with_capacity`).
    let records = body
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        .saturating_sub(2);
    let mut shipped = Table::with_capacity(records);
    for line in lines {
        let p: Vec<&str> = line.split(' ').collect();
        if p.len() != 4 {
            return Err(format!("bad record {line:?}"));
        }
        let key = u64::from_str_radix(p[0], 16).map_err(|_| "bad key")?;
        let count = p[1].parse().map_err(|_| "bad count")?;
        let hash = u64::from_str_radix(p[2], 16).map_err(|_| "bad hash")?;
        let at = p[3].parse().map_err(|_| "bad time")?;
        let s = Shipped::read(count, hash, at, legacy);
        shipped.insert(key, s);
    }
    Ok((gen, rv, shipped))
}

/// The push body of the spool file at `path` as Loki's JSON, whatever it was spooled as
/// (`kube-event --show-batch`).
pub fn batch_json(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (file, body) =
        parse_batch(&bytes).map_err(|why| format!("{} is damaged: {why}", path.display()))?;
    crate::loki::json_text(body, file.encoding)
        .map(std::borrow::Cow::into_owned)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A spool file: header line + push body. Returns the header fields and the body.
fn parse_batch(bytes: &[u8]) -> Result<(SpoolFile, &[u8]), String> {
    let end = bytes.iter().position(|&b| b == b'\n').ok_or("no header")?;
    let header = std::str::from_utf8(&bytes[..end]).map_err(|_| "bad header")?;
    // The header's fields after the magic, how many, and the function of the checksum.
    type Checksum = fn(&[u8]) -> u64;
    let before_3: Checksum = |b| hash64(0, b);
    let (rest, fields, checksum): (&str, usize, Checksum) =
        if let Some(rest) = header.strip_prefix(BATCH_MAGIC) {
            (rest, 7, crate::hash::fingerprint)
        } else if let Some(rest) = header.strip_prefix(BATCH_MAGIC_V2) {
            (rest, 7, before_3)
        } else {
            let rest = header
                .strip_prefix(BATCH_MAGIC_V1)
                .ok_or("not a kube-event batch")?;
            (rest, 6, before_3)
        };
    let p: Vec<&str> = rest.split_whitespace().collect();
    if p.len() != fields {
        return Err("bad header".into());
    }
    let encoding = match p.get(6) {
        None => Encoding::Json,
        Some(e) => Encoding::from_name(e).ok_or_else(|| format!("unknown encoding {e:?}"))?,
    };
    let seq = num(Some(p[0]))?;
    let entries = num(Some(p[1]))?;
    let oldest = num(Some(p[2]))?;
    let newest = num(Some(p[3]))?;
    let len: usize = num(Some(p[4]))?;
    let sum = u64::from_str_radix(p[5], 16).map_err(|_| "bad checksum")?;
    let body = &bytes[end + 1..];
    if body.len() != len {
        return Err(format!("{} of {len} body bytes (torn write)", body.len()));
    }
    if checksum(body) != sum {
        return Err("checksum mismatch".into());
    }
    Ok((
        SpoolFile {
            seq,
            entries,
            oldest,
            newest,
            bytes: bytes.len() as u64,
            encoding,
        },
        body,
    ))
}

/// The spool files that are whole, oldest first; damaged ones are moved aside. Also the
/// highest sequence number any file was named with, so that none is used twice.
fn scan_spool(dir: &Path, spool_dir: &Path) -> (Vec<SpoolFile>, u64) {
    let mut out = Vec::new();
    let mut max_seq = 0;
    let Ok(rd) = fs::read_dir(spool_dir) else {
        return (out, max_seq);
    };
    for entry in rd.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".tmp") || name.ends_with(".free") {
            // A write that never finished: its batch was never pushed nor committed. Or the
            // file of a pushed batch, kept to be written over (`Store::reuse_batch`).
            let _ = fs::remove_file(&path);
            continue;
        }
        let Some(stem) = name.strip_suffix(".batch") else {
            continue;
        };
        max_seq = max_seq.max(stem.parse().unwrap_or(0));
        let mut bytes = Vec::new();
        let parsed = File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| e.to_string())
            .and_then(|_| parse_batch(&bytes).map(|(h, _)| h));
        match parsed {
            Ok(h) if format!("{:020}.batch", h.seq) == name => out.push(h),
            Ok(_) => {
                let to = move_aside(dir, &path);
                warn!(
                    "spool file {} does not match its name; moved aside to {to}",
                    path.display()
                );
            }
            Err(why) => {
                let to = move_aside(dir, &path);
                warn!(
                    "spool file {} is damaged ({why}); moved aside to {to}",
                    path.display()
                );
            }
        }
    }
    out.sort_by_key(|b| b.seq);
    (out, max_seq)
}

fn newest_journal_gen(dir: &Path) -> Option<u64> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("journal-")?
                .parse::<u64>()
                .ok()
        })
        .max()
}

fn remove_old_journals(dir: &Path, keep: u64) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(gen) = name
            .to_str()
            .and_then(|n| n.strip_prefix("journal-"))
            .and_then(|g| g.parse::<u64>().ok())
        else {
            continue;
        };
        if gen < keep {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Moves `path` into `dir/damaged/`, keeping its name with a time suffix. Returns where it
/// went (or why it could not be moved, in which case it is deleted so it cannot stop a
/// restart again).
fn move_aside(dir: &Path, path: &Path) -> String {
    let damaged = dir.join("damaged");
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "file".into());
    let to = damaged.join(format!("{name}.{}", now_secs()));
    match fs::create_dir_all(&damaged).and_then(|()| fs::rename(path, &to)) {
        Ok(()) => to.display().to_string(),
        Err(e) => {
            let _ = fs::remove_file(path);
            format!("nowhere ({e}; deleted)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    /// Commits journal text, parsing the numbers out of it (the pusher has both).
    fn commit_text(s: &mut Store, seq: u64, records: &str, rv: &str) -> io::Result<()> {
        let mut list = Vec::new();
        apply_records(records, 0, false, |key, r| {
            list.push((key, i64::from(r.count), u64::from(r.hash)))
        });
        s.commit(seq, records, &list, rv)
    }

    /// Writes `dir/checkpoint` as versions 2 and 3 are: `lines`, then the checksum chained
    /// over them.
    fn write_checkpoint(dir: &Path, lines: &[String]) {
        let sum = lines.iter().fold(0, |h, l| hash64(h, l.as_bytes()));
        let text = format!("{}E {sum:016x}\n", lines.concat());
        fs::write(dir.join("checkpoint"), text).unwrap();
    }

    fn rec(uid: &str, count: i64, hash: u64) -> String {
        format!("{:016x} {count} {hash:016x}\n", uid_key(uid))
    }

    #[test]
    fn journal_survives_a_restart_and_a_torn_tail() {
        let t = TempDir::new("spool-journal");
        let dir = t.join("data");
        {
            let (mut s, r) = Store::open(&dir, 7200).unwrap();
            assert!(r.rv.is_none() && lock(&r.memory).is_empty() && r.batches.is_empty());
            let seq = s.next_seq();
            commit_text(&mut s, seq, &(rec("a", 1, 7) + &rec("b", 2, 8)), "100").unwrap();
            let seq = s.next_seq();
            commit_text(&mut s, seq, &rec("a", 3, 9), "105").unwrap();
        }
        let (_, r) = Store::open(&dir, 7200).unwrap();
        assert_eq!(r.rv.as_deref(), Some("105"));
        assert_eq!(
            lock(&r.memory).committed.get(uid_key("a")).unwrap().count,
            3
        );
        assert_eq!(lock(&r.memory).committed.get(uid_key("b")).unwrap().hash, 8);
        drop(r);
        // A torn write at the end of the journal: the whole blocks before it are used.
        let j = dir.join("journal-0");
        let mut f = OpenOptions::new().append(true).open(&j).unwrap();
        f.write_all(b"B 3 1 0 \"110\"\n00000000000000c 1 00000000000000")
            .unwrap();
        drop(f);
        let (_, r) = Store::open(&dir, 7200).unwrap();
        assert_eq!(r.rv.as_deref(), Some("105"));
        assert_eq!(lock(&r.memory).len(), 2);
        assert_eq!(fs::read_dir(dir.join("damaged")).unwrap().count(), 1);
    }

    /// A pushed batch's file is written over by a later batch, whose bytes alone it then
    /// holds; at most `FREE_FILES_MAX` are kept, and what is left of them goes at the idle
    /// trim and at the next start.
    #[test]
    fn files_of_pushed_batches_are_written_over_by_later_ones() {
        let t = TempDir::new("spool-reuse");
        let dir = t.join("data");
        let spool = dir.join("spool");
        let names = || {
            let mut v: Vec<String> = fs::read_dir(&spool)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let (mut s, _) = Store::open(&dir, 7200).unwrap();
        let long = vec![b'l'; 10_000];
        let seqs: Vec<u64> = (0..FREE_FILES_MAX + 1).map(|_| s.next_seq()).collect();
        let sizes: Vec<u64> = seqs
            .iter()
            .map(|&q| s.write_batch(q, 1, 1, 1, &long, Encoding::Gzip).unwrap())
            .collect();
        for (&q, &n) in seqs.iter().zip(&sizes) {
            s.reuse_batch(q, n);
        }
        // `FREE_FILES_MAX` kept, the last one removed.
        let free = FREE_FILES_MAX;
        assert_eq!(
            names().iter().filter(|n| n.ends_with(".free")).count(),
            free
        );
        assert_eq!(names().len(), free);
        assert_eq!(s.free_bytes(), sizes[..free].iter().sum::<u64>());

        // A shorter batch in a kept file: exactly its bytes, read back and after a restart.
        let short = b"\x1f\x8bshort".to_vec();
        let c = s.next_seq();
        let len = s.write_batch(c, 1, 2, 2, &short, Encoding::Gzip).unwrap();
        let file = spool.join(format!("{c:020}.batch"));
        assert_eq!(fs::metadata(&file).unwrap().len(), len);
        assert_eq!(
            s.read_batch(c, Vec::new()).unwrap(),
            (short.clone(), Encoding::Gzip)
        );
        assert_eq!(
            names().iter().filter(|n| n.ends_with(".free")).count(),
            free - 1
        );
        drop(s);
        let (mut s, r) = Store::open(&dir, 7200).unwrap();
        assert_eq!(r.batches.iter().map(|b| b.seq).collect::<Vec<_>>(), [c]);
        // The kept file left by the run before is gone.
        assert_eq!(names(), [format!("{c:020}.batch")]);

        // Kept again, then the idle trim.
        s.reuse_batch(c, len);
        assert_eq!(names(), [format!("{c:020}.free")]);
        s.trim();
        assert!(names().is_empty());
        assert_eq!(s.free_bytes(), 0);
        // A kept file that went missing: the next batch gets a new one.
        let d = s.next_seq();
        let n = s.write_batch(d, 1, 3, 3, &short, Encoding::Gzip).unwrap();
        s.reuse_batch(d, n);
        fs::remove_file(spool.join(format!("{d:020}.free"))).unwrap();
        let e = s.next_seq();
        s.write_batch(e, 1, 4, 4, &short, Encoding::Gzip).unwrap();
        assert_eq!(
            s.read_batch(e, Vec::new()).unwrap(),
            (short, Encoding::Gzip)
        );
    }

    #[test]
    fn spool_files_round_trip_and_damaged_ones_are_set_aside() {
        let t = TempDir::new("spool-files");
        let dir = t.join("data");
        let (mut s, _) = Store::open(&dir, 7200).unwrap();
        let a = s.next_seq();
        let b = s.next_seq();
        s.write_batch(a, 2, 10, 20, b"{\"streams\":[]}", Encoding::Json)
            .unwrap();
        s.write_batch(b, 1, 30, 30, b"\x1f\x8bgzip", Encoding::Gzip)
            .unwrap();
        let json = (b"{\"streams\":[]}".to_vec(), Encoding::Json);
        let gzip = (b"\x1f\x8bgzip".to_vec(), Encoding::Gzip);
        assert_eq!(s.read_batch(a, Vec::new()).unwrap(), json);
        assert_eq!(s.read_batch(b, Vec::new()).unwrap(), gzip);
        // Into a used buffer, longer than the body.
        let used = vec![b'x'; 4096];
        assert_eq!(s.read_batch(b, used).unwrap(), gzip);
        // A version 1 file (kube-event before the encoding was written) holds JSON.
        let c = s.next_seq();
        let body = b"{\"streams\":[2]}";
        let v1 = format!(
            "KUBE-EVENT BATCH 1 {c} 3 40 50 {} {:016x}\n",
            body.len(),
            hash64(0, body)
        );
        fs::write(
            dir.join(format!("spool/{c:020}.batch")),
            [v1.as_bytes(), body].concat(),
        )
        .unwrap();
        assert_eq!(
            s.read_batch(c, Vec::new()).unwrap(),
            (body.to_vec(), Encoding::Json)
        );
        fs::remove_file(dir.join(format!("spool/{c:020}.batch"))).unwrap();
        // A version 2 file (kube-event before the fingerprint checksum): `hash64`. The same
        // header as version 3 with that checksum is refused.
        let d = s.next_seq();
        let body = b"\x1f\x8bv2";
        for (magic, ok) in [(BATCH_MAGIC_V2, true), (BATCH_MAGIC, false)] {
            let header = format!(
                "{magic} {d} 4 60 70 {} {:016x} gzip\n",
                body.len(),
                hash64(0, body)
            );
            fs::write(
                dir.join(format!("spool/{d:020}.batch")),
                [header.as_bytes(), body].concat(),
            )
            .unwrap();
            let read = s.read_batch(d, Vec::new());
            assert_eq!(read.is_ok(), ok, "{magic}: {read:?}");
            if ok {
                assert_eq!(read.unwrap(), (body.to_vec(), Encoding::Gzip));
            }
        }
        fs::remove_file(dir.join(format!("spool/{d:020}.batch"))).unwrap();
        drop(s);
        // Tear the second file.
        let p = dir.join(format!("spool/{b:020}.batch"));
        let bytes = fs::read(&p).unwrap();
        fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let (mut s, r) = Store::open(&dir, 7200).unwrap();
        assert_eq!(r.batches.len(), 1);
        assert_eq!((r.batches[0].seq, r.batches[0].entries), (a, 2));
        assert!(s.next_seq() > b, "sequence numbers are not reused");
        assert_eq!(fs::read_dir(dir.join("damaged")).unwrap().count(), 1);
    }

    #[test]
    fn compaction_keeps_the_state_and_a_damaged_checkpoint_is_set_aside() {
        let t = TempDir::new("spool-compact");
        let dir = t.join("data");
        let (mut s, _) = Store::open(&dir, 7200).unwrap();
        for i in 0..5 {
            let seq = s.next_seq();
            commit_text(
                &mut s,
                seq,
                &rec(&format!("u{i}"), i, i as u64),
                &format!("{i}"),
            )
            .unwrap();
        }
        s.compact().unwrap();
        let seq = s.next_seq();
        commit_text(&mut s, seq, &rec("u9", 9, 9), "9").unwrap();
        drop(s);
        let (_, r) = Store::open(&dir, 7200).unwrap();
        assert_eq!(lock(&r.memory).len(), 6);
        assert_eq!(r.rv.as_deref(), Some("9"));
        assert!(!dir.join("journal-0").exists() && dir.join("journal-1").exists());
        drop(r);
        fs::write(dir.join("checkpoint"), "garbage").unwrap();
        let (_, r) = Store::open(&dir, 7200).unwrap();
        // The journal of the newest generation still holds u9.
        assert_eq!(lock(&r.memory).len(), 1);
        assert!(dir.join("damaged").read_dir().unwrap().count() == 1);
    }

    #[test]
    fn memory_keeps_what_is_in_flight_until_its_batch_commits() {
        let mut m = Memory::default();
        // Whole minutes: both tables keep times to the minute.
        let v1 = Shipped::new(1, 11, 6_000);
        let v2 = Shipped::new(2, 22, 6_060);
        m.offer(7, v1);
        m.offer(7, v2);
        assert_eq!(m.get(7), Some(v2));
        // The batch with the first occurrence commits: the second is still in flight.
        m.commit(7, Shipped::new(1, 11, 200));
        assert_eq!(m.get(7), Some(v2));
        assert_eq!(m.committed.get(7).unwrap().hash, 11);
        assert_eq!(m.len(), 1);
        // Then its own batch: nothing is pending any more.
        m.commit(7, Shipped::new(2, 22, 201));
        assert!(m.pending.is_empty());
        assert_eq!(m.get(7).map(|s| (s.count, s.hash)), Some((2, 22)));
        m.forget(7);
        assert!(m.is_empty());
    }

    #[test]
    fn a_version_1_checkpoint_is_still_read() {
        let t = TempDir::new("spool-v1");
        let dir = t.join("data");
        fs::create_dir_all(&dir).unwrap();
        let now = now_secs();
        let body = format!(
            "{CHECKPOINT_MAGIC_V1} 3\nR \"42\"\n{:016x} 2 {:016x} {now}\n",
            uid_key("a"),
            99u64
        );
        let sum = hash64(0, body.as_bytes());
        fs::write(dir.join("checkpoint"), format!("{body}E {sum:016x}\n")).unwrap();
        let (_, r) = Store::open(&dir, 7200).unwrap();
        assert_eq!(r.rv.as_deref(), Some("42"));
        // Its hash is of the line escaped once more: the count is what is known.
        let known = lock(&r.memory).committed.get(uid_key("a")).unwrap();
        assert_eq!((known.count, known.hash), (2, NO_FINGERPRINT));
        assert!(!dir.join("damaged").exists());
    }

    /// Checkpoints (versions 1 and 2) and journal blocks (`B`) of a kube-event before format
    /// 3 hold hashes of the line escaped once more. After an upgrade, what they recorded
    /// still covers the same occurrence, whatever its new fingerprint, and no newer one; and
    /// written into a new checkpoint it stays a count without a fingerprint.
    #[test]
    fn an_older_kube_event_state_covers_by_count_after_an_upgrade() {
        let t = TempDir::new("spool-legacy");
        let dir = t.join("data");
        fs::create_dir_all(&dir).unwrap();
        let now = now_secs();
        let old = 0xfeed_face_dead_beef_u64;
        write_checkpoint(
            &dir,
            &[
                format!("{CHECKPOINT_MAGIC_V2} 1\n"),
                "R \"1\"\n".to_string(),
                format!("{:016x} 5 {old:016x} {now}\n", uid_key("a")),
            ],
        );
        // A journal block as the build before wrote it.
        let block = format!("B 1 1 {now} \"2\"\n{}", rec("b", 3, old));
        let sum = hash64(0, block.as_bytes());
        fs::write(dir.join("journal-1"), format!("{block}E {sum:016x}\n")).unwrap();
        let check = |m: &Memory| {
            for (uid, count) in [("a", 5), ("b", 3)] {
                let known = m.get(uid_key(uid)).unwrap();
                assert_eq!(known.hash, NO_FINGERPRINT, "{uid}");
                let line = crate::hash::fingerprint(uid.as_bytes());
                assert!(known.covers(&Shipped::new(count, line, now)), "{uid}");
                assert!(known.covers(&Shipped::new(count - 1, line, now)), "{uid}");
                assert!(!known.covers(&Shipped::new(count + 1, line, now)), "{uid}");
            }
        };
        {
            let (mut s, r) = Store::open(&dir, 7200).unwrap();
            assert_eq!(r.rv.as_deref(), Some("2"));
            check(&lock(&r.memory));
            s.checkpoint().unwrap();
        }
        let text = fs::read_to_string(dir.join("checkpoint")).unwrap();
        assert!(text.starts_with(CHECKPOINT_MAGIC), "{text}");
        let (_s, r) = Store::open(&dir, 7200).unwrap();
        check(&lock(&r.memory));
        assert!(!dir.join("damaged").exists());
    }

    /// Journals hold the line's full 64-bit fingerprint, and so may checkpoints (as those
    /// written before the compact memory did); the memory keeps 32 bits of it and a count
    /// up to 65,535. What they recorded still covers the same occurrence after a restart,
    /// and only that.
    #[test]
    fn full_hashes_on_disk_still_say_what_was_shipped() {
        let t = TempDir::new("spool-full-hashes");
        let dir = t.join("data");
        fs::create_dir_all(&dir).unwrap();
        let now = now_secs();
        let full = 0xfeed_face_dead_beef_u64;
        // A checkpoint with a 64-bit fingerprint, then a journal block of the same
        // generation.
        write_checkpoint(
            &dir,
            &[
                format!("{CHECKPOINT_MAGIC} 1\n"),
                "R \"1\"\n".to_string(),
                format!("{:016x} 70000 {full:016x} {now}\n", uid_key("a")),
            ],
        );
        fs::write(dir.join("journal-1"), "").unwrap();
        {
            let (mut s, _) = Store::open(&dir, 7200).unwrap();
            let seq = s.next_seq();
            commit_text(&mut s, seq, &rec("b", 3, full), "2").unwrap();
        }
        let (_s, r) = Store::open(&dir, 7200).unwrap();
        assert_eq!(r.rv.as_deref(), Some("2"));
        let m = lock(&r.memory);
        for (uid, count) in [("a", 70_000), ("b", 3)] {
            let known = m.get(uid_key(uid)).unwrap();
            assert!(known.covers(&Shipped::new(count, full, now)), "{uid}");
            // The next occurrence (another line), and the same count with another line.
            assert!(
                !known.covers(&Shipped::new(count + 1, full ^ 1, now)),
                "{uid}"
            );
            assert!(
                !known.covers(&Shipped::new(count, full ^ 1 << 3, now)),
                "{uid}"
            );
        }
        // An older version of the object (a lagging API server) is not new either.
        assert!(m
            .get(uid_key("b"))
            .unwrap()
            .covers(&Shipped::new(2, 7, now)));
    }

    /// A checkpoint holds the records in the table's own order; it is read into a table of
    /// its final size (`Table::with_capacity`), or reading it would take quadratic time.
    #[test]
    fn a_checkpoint_is_read_into_a_table_of_its_size() {
        let t = TempDir::new("spool-checkpoint-size");
        let dir = t.join("data");
        let n = 5_000;
        {
            let (mut s, _) = Store::open(&dir, 7200).unwrap();
            let records: String = (0..n).map(|i| rec(&format!("u{i}"), 1, i)).collect();
            let seq = s.next_seq();
            commit_text(&mut s, seq, &records, "1").unwrap();
            s.checkpoint().unwrap();
        }
        let (_s, r) = Store::open(&dir, 7200).unwrap();
        let m = lock(&r.memory);
        assert_eq!(m.committed.len(), n as usize);
        assert_eq!(
            m.committed.capacity(),
            Table::with_capacity(n as usize).capacity()
        );
    }

    #[test]
    fn retention_forgets_old_events() {
        let t = TempDir::new("spool-retention");
        let dir = t.join("data");
        let (mut s, _) = Store::open(&dir, 7200).unwrap();
        let seq = s.next_seq();
        commit_text(&mut s, seq, &rec("old", 1, 1), "1").unwrap();
        {
            let mut m = lock(&s.memory);
            let mut old = m.committed.get(uid_key("old")).unwrap();
            old.at -= 7201;
            m.committed.insert(uid_key("old"), old);
        }
        s.prune(now_secs());
        assert!(lock(&s.memory).is_empty());
    }

    #[test]
    fn a_second_store_on_the_same_directory_is_refused() {
        let t = TempDir::new("spool-lock");
        let dir = t.join("data");
        let (_s, _) = Store::open(&dir, 7200).unwrap();
        let e = Store::open(&dir, 7200).err().unwrap().to_string();
        assert!(e.contains("already in use"), "{e}");
        assert!(e.contains(&std::process::id().to_string()), "{e}");
    }
}
