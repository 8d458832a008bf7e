//! Everything that knows Loki: the queue between the watcher and the pusher, the push
//! request, and which answers mean success, retry or rejection. Only this file knows Loki's
//! status codes (see protocols.md 5).
//!
//! The watcher appends occurrences to the open batch of a `Queue`. A batch is sealed (encoded
//! once, as the push body) when it reaches `BATCH_MAX_BYTES` or when its oldest entry has
//! waited `PUSH_INTERVAL_SECONDS`; the pusher thread pushes sealed batches oldest first and
//! back to back, so a backlog drains at full speed. A failed push is retried with backoff
//! until it succeeds or the shutdown deadline passes; meanwhile the watcher keeps appending.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use log::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::batch::{Batch, Sealed};
use crate::config;
use crate::event::Labels;
use crate::stats::Stats;

/// The batches between the watcher and the pusher.
pub struct Queue {
    state: Mutex<State>,
    cv: Condvar,
    interval: Duration,
    max_bytes: usize,
    static_labels: Vec<(String, String)>,
}

struct State {
    open: Batch,
    /// When the first entry of `open` arrived.
    opened_at: Option<Instant>,
    sealed: VecDeque<Sealed>,
    /// Set at shutdown: push everything, then stop; give up at this instant.
    closing: Option<Instant>,
}

impl Queue {
    pub fn new(interval: Duration, max_bytes: usize, static_labels: Vec<(String, String)>) -> Self {
        Queue {
            state: Mutex::new(State {
                open: Batch::default(),
                opened_at: None,
                sealed: VecDeque::new(),
                closing: None,
            }),
            cv: Condvar::new(),
            interval,
            max_bytes,
            static_labels,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds one occurrence. Seals the open batch first if this line would take it past
    /// `BATCH_MAX_BYTES`.
    pub fn append(&self, labels: Labels<'_>, nanos: i64, line: &str) {
        let mut st = self.lock();
        if !st.open.is_empty() && st.open.encoded_size() + line.len() + 64 > self.max_bytes {
            let sealed = st.open.seal(&self.static_labels);
            st.sealed.push_back(sealed);
            st.opened_at = None;
            self.cv.notify_all();
        }
        if st.open.is_empty() {
            st.opened_at = Some(Instant::now());
            self.cv.notify_all();
        }
        st.open.push(labels, nanos, line);
    }

    /// Entries not yet accepted by Loki that are still in memory (open and sealed batches).
    pub fn pending(&self) -> usize {
        let st = self.lock();
        st.open.len() + st.sealed.iter().map(|b| b.entries).sum::<usize>()
    }

    /// Starts the final flush: the pusher pushes what is queued and stops, giving up at
    /// `deadline`.
    pub fn close(&self, deadline: Instant) {
        self.lock().closing = Some(deadline);
        self.cv.notify_all();
    }

    /// The next batch to push, waiting for one. `None`: closing and nothing left.
    fn next(&self) -> Option<Sealed> {
        let mut st = self.lock();
        loop {
            if let Some(b) = st.sealed.pop_front() {
                return Some(b);
            }
            let due = st.opened_at.map(|t| t + self.interval);
            let now = Instant::now();
            if !st.open.is_empty() && (st.closing.is_some() || due.is_some_and(|d| d <= now)) {
                st.opened_at = None;
                return Some(st.open.seal(&self.static_labels));
            }
            if st.closing.is_some() {
                return None;
            }
            let wait = due.map(|d| d - now).unwrap_or(Duration::from_secs(3600));
            st = self
                .cv
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sleeps `d`, or until the queue is closed. Returns the closing deadline, if closing.
    fn sleep(&self, d: Duration) -> Option<Instant> {
        let until = Instant::now() + d;
        let mut st = self.lock();
        loop {
            if let Some(deadline) = st.closing {
                return Some(deadline);
            }
            let now = Instant::now();
            if now >= until {
                return None;
            }
            st = self
                .cv
                .wait_timeout(st, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn closing(&self) -> Option<Instant> {
        self.lock().closing
    }

    /// Drops what is left (the shutdown deadline passed) and says how many entries that was.
    fn abandon(&self) -> usize {
        let mut st = self.lock();
        let n = st.open.len() + st.sealed.iter().map(|b| b.entries).sum::<usize>();
        st.sealed.clear();
        if !st.open.is_empty() {
            st.open.seal(&[]);
        }
        n
    }
}

/// What a push answer means.
#[derive(Debug, PartialEq, Eq)]
pub enum Class {
    /// Any 2xx (204 normally; 260 when ingestion is blocked, which Loki counts as accepted).
    Accepted,
    /// Try the same batch again later: 429, 5xx, connection errors, and the answers that mean
    /// kube-event or the proxy in front of Loki is misconfigured (401, 403, 404), which an
    /// operator fixes without the data having to be thrown away.
    Retry,
    /// Loki will never take this batch as it is (400, 413, 422, other 4xx): keep it aside.
    Reject,
}

pub fn classify(status: u16) -> Class {
    match status {
        200..=299 => Class::Accepted,
        401 | 403 | 404 | 408 | 429 => Class::Retry,
        500..=599 => Class::Retry,
        _ => Class::Reject,
    }
}

/// An HTTP client for one Loki push URL, with its tenant and credentials.
pub struct Client {
    agent: ureq::Agent,
    url: String,
    tenant: Option<String>,
    basic: Option<String>,
    bearer: Option<BearerFile>,
}

struct BearerFile {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
    header: String,
}

#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The result of one push attempt.
pub enum Outcome {
    Accepted,
    Retry {
        why: String,
        retry_after: Option<Duration>,
    },
    Reject {
        status: u16,
        body: String,
    },
}

impl Client {
    pub fn new(cfg: &config::Loki) -> Result<Client, Error> {
        let url = cfg
            .url
            .clone()
            .ok_or_else(|| Error("LOKI_URL is not set (it is required unless --stdout)".into()))?;
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| Error(format!("cannot read {}: {e}", p.display())))
        };
        let ca = cfg.ca_file.as_deref().map(read).transpose()?;
        let cert = cfg.client_cert_file.as_deref().map(read).transpose()?;
        let key = cfg.client_key_file.as_deref().map(read).transpose()?;
        let client = cert.as_deref().zip(key.as_deref());
        let tls = crate::tls::config(ca.as_deref(), cfg.insecure_skip_verify, client)
            .map_err(|e| Error(format!("Loki TLS: {e}")))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(60)))
            .user_agent(concat!("kube-event/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let basic = match (&cfg.username, &cfg.password) {
            (Some(u), Some(p)) => Some(format!(
                "Basic {}",
                crate::base64::encode(format!("{u}:{p}").as_bytes())
            )),
            _ => None,
        };
        let mut bearer = cfg.bearer_token_file.as_ref().map(|p| BearerFile {
            path: p.clone(),
            stamp: None,
            header: String::new(),
        });
        if let Some(b) = &mut bearer {
            b.refresh().map_err(Error)?;
        }
        Ok(Client {
            agent,
            url,
            tenant: cfg.tenant_id.clone(),
            basic,
            bearer,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// One push attempt.
    pub fn push(&mut self, body: &[u8]) -> Outcome {
        let mut req = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json");
        if let Some(t) = &self.tenant {
            req = req.header("X-Scope-OrgID", t);
        }
        if let Some(b) = &self.basic {
            req = req.header("Authorization", b);
        }
        if let Some(b) = &mut self.bearer {
            if let Err(e) = b.refresh() {
                warn!("{e}; using the token read before");
            }
            req = req.header("Authorization", &b.header);
        }
        let mut resp = match req.send(body) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    why: format!("cannot reach Loki at {}: {e}", self.url),
                    retry_after: None,
                }
            }
        };
        let status = resp.status().as_u16();
        let (retry_after, answer) = crate::http::error_answer(&mut resp);
        let answer = answer.trim().to_string();
        match classify(status) {
            Class::Accepted => Outcome::Accepted,
            Class::Retry => Outcome::Retry {
                why: format!("Loki answered {status}: {}", shorten(&answer, 300)),
                retry_after,
            },
            Class::Reject => Outcome::Reject {
                status,
                body: answer,
            },
        }
    }
}

impl BearerFile {
    /// Re-reads the token file when its modification time or size changed.
    fn refresh(&mut self) -> Result<(), String> {
        let meta = std::fs::metadata(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        if self.stamp == Some(stamp) {
            return Ok(());
        }
        let token = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(format!("{} is empty", self.path.display()));
        }
        if self.stamp.is_some() {
            info!("re-read the Loki bearer token from {}", self.path.display());
        }
        self.header = format!("Bearer {token}");
        self.stamp = Some(stamp);
        Ok(())
    }
}

fn shorten(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The pusher thread: pushes sealed batches until the queue is closed and drained, or the
/// shutdown deadline passes.
pub fn run_pusher(queue: &Queue, mut client: Client, stats: &Stats, rejected_dir: &Path) {
    let mut backoff = Backoff::loki();
    let mut failures: u32 = 0;
    while let Some(batch) = queue.next() {
        loop {
            let started = Instant::now();
            match client.push(&batch.body) {
                Outcome::Accepted => {
                    Stats::add(&stats.pushed, batch.entries as u64);
                    if failures > 0 {
                        info!("Loki accepts pushes again after {failures} failed attempts");
                    }
                    failures = 0;
                    backoff.reset();
                    debug!(
                        "pushed {} entries ({} bytes) in {:?}",
                        batch.entries,
                        batch.body.len(),
                        started.elapsed()
                    );
                    break;
                }
                Outcome::Reject { status, body } => {
                    Stats::add(&stats.rejected, batch.entries as u64);
                    let kept = keep_rejected(rejected_dir, &batch, status, &body);
                    error!(
                        "Loki rejected a batch of {} entries with {status}: {}; {kept}",
                        batch.entries,
                        shorten(&body, 1000)
                    );
                    break;
                }
                Outcome::Retry { why, retry_after } => {
                    failures += 1;
                    let delay = backoff.failure(retry_after);
                    warn!(
                        "push of {} entries failed: {why}; retrying in {:.1}s ({} more entries queued)",
                        batch.entries,
                        delay.as_secs_f64(),
                        queue.pending()
                    );
                    match queue.closing() {
                        // Ends early when shutdown starts: then retry at once.
                        None => drop(queue.sleep(delay)),
                        Some(deadline) => {
                            let now = Instant::now();
                            if now >= deadline {
                                let lost = batch.entries + queue.abandon();
                                Stats::add(&stats.abandoned, lost as u64);
                                error!(
                                    "shutdown deadline passed: {lost} entries were not pushed to Loki"
                                );
                                return;
                            }
                            std::thread::sleep(delay.min(deadline - now));
                        }
                    }
                }
            }
        }
    }
}

/// Writes a rejected batch and Loki's answer to `dir`, so that nothing is lost silently.
/// Returns a phrase for the log line saying where it went.
fn keep_rejected(dir: &Path, batch: &Sealed, status: u16, answer: &str) -> String {
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let base = dir.join(format!("{stamp}-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut f = std::fs::File::create(base.with_extension("json"))?;
        f.write_all(&batch.body)?;
        f.sync_all()?;
        std::fs::write(
            base.with_extension("answer.txt"),
            format!("HTTP {status}\n{answer}\n"),
        )
    };
    match write() {
        Ok(()) => format!("kept in {}.json", base.display()),
        Err(e) => format!("could not keep it in {}: {e}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        let cases = [
            (204, Class::Accepted),
            (200, Class::Accepted),
            (260, Class::Accepted),
            (400, Class::Reject),
            (413, Class::Reject),
            (422, Class::Reject),
            (401, Class::Retry),
            (403, Class::Retry),
            (404, Class::Retry),
            (429, Class::Retry),
            (500, Class::Retry),
            (503, Class::Retry),
            (301, Class::Reject),
        ];
        for (status, class) in cases {
            assert_eq!(classify(status), class, "{status}");
        }
    }

    fn labels() -> Labels<'static> {
        Labels {
            namespace: "ns",
            kind: "Pod",
            type_: "Normal",
        }
    }

    #[test]
    fn queue_seals_at_max_bytes_and_on_close() {
        let q = Queue::new(Duration::from_secs(3600), 2048, vec![]);
        let line = "x".repeat(500);
        for i in 0..10 {
            q.append(labels(), i, &line);
        }
        assert_eq!(q.pending(), 10);
        let first = q.next().unwrap();
        assert!(first.body.len() <= 2048, "{}", first.body.len());
        assert!(first.entries >= 2);
        q.close(Instant::now() + Duration::from_secs(10));
        let mut total = first.entries;
        while let Some(b) = q.next() {
            assert!(b.body.len() <= 2048);
            total += b.entries;
        }
        assert_eq!(total, 10);
    }

    #[test]
    fn queue_seals_after_the_interval() {
        let q = Queue::new(Duration::from_millis(50), 1 << 20, vec![]);
        q.append(labels(), 1, "a");
        let t = Instant::now();
        let b = q.next().unwrap();
        assert_eq!(b.entries, 1);
        assert!(t.elapsed() >= Duration::from_millis(40));
    }
}
