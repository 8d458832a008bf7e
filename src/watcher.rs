//! The list-then-watch state machine over `/api/v1/events` (protocols.md 1 and "Implications").
//!
//! ```text
//! Empty ──list page──▶ Listing{continue, rv} ──last page──▶ Watching{rv}
//!   ▲                        │ 410 (continue expired)            │ frames move rv forward
//!   └────────────────────────┘                                    │ end of stream: watch again from rv
//!   ▲                                                             │
//!   └──────────── ERROR frame 410 / HTTP 410: relist ◀────────────┘
//! ```
//! Any other failure keeps the state and waits a backoff (800 ms doubling to 30 s, with
//! jitter, honouring `Retry-After`); 401 first makes the credentials be read again. The
//! resourceVersion is an opaque string: it is stored and sent back, never compared.
//! The HTTP calls live in `kube::client`; the occurrence logic in `ship`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::filter::Scope;
use crate::kube::client::{self, Client, WATCH_TIMEOUT_SECS};
use crate::scan;
use crate::ship::{head, OutputClosed, Shipper};
use crate::shutdown::Shutdown;
use crate::stats::{
    now_ms, Stats, FRAME_ADDED, FRAME_BOOKMARK, FRAME_DELETED, FRAME_ERROR, FRAME_LIST,
    FRAME_MODIFIED,
};

/// Where the watcher is. Each variant says how it is left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Nothing is known: list from the first page (quorum read). Left for `Listing` or
    /// `Watching` after the first page.
    Empty,
    /// Between list pages: `continue_` fetches the next one of the snapshot at `rv`. A 410
    /// (the token expired) goes back to `Empty`.
    Listing { continue_: String, rv: String },
    /// Watch from `rv`. The end of a stream re-enters this state with the last rv seen; an
    /// ERROR frame or HTTP 410 goes to `Empty`.
    Watching { rv: String },
    /// Shutdown was requested, or the output closed.
    Stopped,
}

/// Called after every complete list with the number of events (`Some`), and when a watch
/// resumed from a saved resourceVersion opened (`None`): kube-event is up either way (used for
/// readiness, systemd's READY=1 and the startup log).
pub type OnListed = Box<dyn FnMut(Option<usize>) + Send>;

pub struct Watcher {
    client: Arc<Client>,
    scope: Scope,
    shipper: Arc<Mutex<Shipper>>,
    shutdown: Shutdown,
    backoff: Backoff,
    line: Vec<u8>,
    /// The body of the list page being read (reused while listing).
    page: Vec<u8>,
    listed: usize,
    /// Complete lists so far (the ones after the first are relists).
    lists: u64,
    on_listed: OnListed,
    stats: Arc<Stats>,
}

/// A watch that ends within this time without a single frame counts as a failure, so that a
/// server closing streams at once cannot make kube-event reconnect in a tight loop
/// (client-go's reflector does the same).
const SHORT_WATCH: Duration = Duration::from_secs(1);

impl Watcher {
    pub fn new(
        client: Arc<Client>,
        scope: Scope,
        shipper: Arc<Mutex<Shipper>>,
        shutdown: Shutdown,
        stats: Arc<Stats>,
        on_listed: OnListed,
    ) -> Self {
        Watcher {
            client,
            scope,
            shipper,
            shutdown,
            backoff: Backoff::apiserver(),
            line: Vec::with_capacity(64 * 1024),
            page: Vec::new(),
            listed: 0,
            lists: 0,
            on_listed,
            stats,
        }
    }

    /// Runs until shutdown. Returns `Err` only when the output is gone (`--stdout` into a
    /// closed pipe).
    pub fn run(mut self, start: State) -> Result<(), OutputClosed> {
        let mut state = start;
        loop {
            if self.shutdown.is_set() {
                return Ok(());
            }
            debug!("watcher state: {state:?}");
            state = match self.step(state)? {
                State::Stopped => return Ok(()),
                next => next,
            };
        }
    }

    /// Does the I/O of one state and returns the next.
    pub fn step(&mut self, state: State) -> Result<State, OutputClosed> {
        match state {
            State::Empty => self.list(None, None),
            State::Listing { continue_, rv } => self.list(Some(&continue_), Some(rv)),
            State::Watching { rv } => self.watch(rv),
            State::Stopped => Ok(State::Stopped),
        }
    }

    fn list(&mut self, continue_: Option<&str>, rv: Option<String>) -> Result<State, OutputClosed> {
        let mut page = std::mem::take(&mut self.page);
        let next = self.list_page(&mut page, continue_, rv);
        // Kept for the next page; given back once the list is complete.
        if let Ok(State::Listing { .. }) = next {
            self.page = page;
        }
        next
    }

    fn list_page(
        &mut self,
        body: &mut Vec<u8>,
        continue_: Option<&str>,
        rv: Option<String>,
    ) -> Result<State, OutputClosed> {
        if continue_.is_none() {
            self.listed = 0;
        }
        match self.client.list_page(
            &self.scope.path,
            self.scope.field_selector.as_deref(),
            continue_,
            body,
        ) {
            Ok(()) => {}
            Err(client::Error::Status {
                code: 410, message, ..
            }) => {
                info!("list continue token expired ({message}); listing again from the start");
                return Ok(State::Empty);
            }
            Err(e) => {
                self.failed("list events", &e);
                return Ok(match (continue_, rv) {
                    (Some(c), Some(rv)) => State::Listing {
                        continue_: c.to_string(),
                        rv,
                    },
                    _ => State::Empty,
                });
            }
        };
        // Each item is offered as the page is read (one pass over it). A page that turns out
        // not to be JSON is listed again from the start; what it offered before the fault
        // is in the memory of shipped occurrences and is not shipped twice.
        let mut item_rv = String::new();
        let mut closed = None;
        self.shipper().tick(now_ms() / 1000);
        let read = scan::list_each(body, &mut |raw, ev| {
            let offered = self.shipper().offer_read(raw, ev, &mut item_rv);
            if let Err(e) = offered {
                closed = Some(e);
            }
            closed.is_none()
        });
        if let Some(e) = closed {
            return Err(e);
        }
        let list = match read {
            Ok(l) => l,
            Err(e) => {
                error!(
                    "the API server sent a list that does not parse ({e}): {}",
                    head(&String::from_utf8_lossy(body))
                );
                self.pause(None);
                return Ok(State::Empty);
            }
        };
        self.stats.watch_progress();
        Stats::add(&self.stats.frames[FRAME_LIST], list.items as u64);
        self.listed += list.items;
        let page_rv = list.resource_version.as_deref().unwrap_or("");
        let rv = rv.unwrap_or_else(|| page_rv.to_string());
        match list.continue_.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => Ok(State::Listing {
                continue_: c.to_string(),
                rv,
            }),
            None => {
                info!(
                    "listed {} events{} at resourceVersion {rv}; watching",
                    self.listed,
                    scope_note(&self.scope)
                );
                if self.lists > 0 {
                    Stats::add(&self.stats.relists, 1);
                }
                self.lists += 1;
                (self.on_listed)(Some(self.listed));
                self.shipper().advance(&self.scope.key, &rv);
                if rv.is_empty() {
                    warn!("the list had no resourceVersion; listing again");
                    self.pause(None);
                    return Ok(State::Empty);
                }
                Ok(State::Watching { rv })
            }
        }
    }

    fn watch(&mut self, mut rv: String) -> Result<State, OutputClosed> {
        let started = Instant::now();
        let mut stream = match self.client.watch(
            &self.scope.path,
            self.scope.field_selector.as_deref(),
            &rv,
            WATCH_TIMEOUT_SECS,
        ) {
            Ok(s) => s,
            Err(client::Error::Status {
                code: 410, message, ..
            }) => {
                info!("watch from resourceVersion {rv} expired ({message}); listing again");
                return Ok(State::Empty);
            }
            Err(e) => {
                Stats::add(&self.stats.watch_restarts, 1);
                self.failed("watch events", &e);
                return Ok(State::Watching { rv });
            }
        };
        self.stats.watch_progress();
        if self.lists == 0 {
            // Resumed from a saved resourceVersion, without a list: up all the same.
            (self.on_listed)(None);
        }
        let mut frames = 0u64;
        // LINE_FORMAT=raw ships the object's text as sent.
        let raw_mode = self.shipper().needs_raw();
        let mut buf = std::mem::take(&mut self.line);
        // The time the frames being read arrived: the clock is read when the stream reads.
        let mut now = now_ms();
        // `None`: the stream ended cleanly.
        let next: Option<State> = loop {
            if self.shutdown.is_set() {
                break Some(State::Stopped);
            }
            let mut read = false;
            let line = match stream.next_line(&mut buf, &mut read) {
                Ok(Some(line)) => line,
                Ok(None) => break None,
                Err(e) => {
                    Stats::add(&self.stats.watch_restarts, 1);
                    warn!("watch stream broke after {frames} frames: {e}; watching again from resourceVersion {rv}");
                    self.pause(None);
                    break Some(State::Watching { rv: rv.clone() });
                }
            };
            frames += 1;
            if read {
                now = now_ms();
                self.shipper().tick(now / 1000);
            }
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            let mut frame = scan::Frame::default();
            let parsed = scan::frame_into(line, &mut frame).and_then(|()| {
                if !raw_mode {
                    return Ok(None);
                }
                std::str::from_utf8(frame.raw)
                    .map(Some)
                    .map_err(|e| scan::Error {
                        at: e.valid_up_to(),
                        what: "invalid UTF-8 in the object",
                    })
            });
            let (kind, ev, raw) = match parsed {
                Ok(raw) => (&*frame.kind, &frame.object, raw),
                Err(e) => {
                    Stats::add(&self.stats.malformed, 1);
                    warn!(
                        "skipping a watch frame that does not parse ({e}): {}",
                        head(&String::from_utf8_lossy(line))
                    );
                    continue;
                }
            };
            let frame_rv = ev
                .metadata
                .resource_version
                .as_deref()
                .filter(|v| !v.is_empty());
            match kind {
                "ADDED" | "MODIFIED" => {
                    self.stats.frame(
                        if kind == "ADDED" {
                            FRAME_ADDED
                        } else {
                            FRAME_MODIFIED
                        },
                        now,
                    );
                    // One hold of the Shipper's lock for the event and the resume point.
                    let mut shipper = self.shipper();
                    let offered = shipper.offer_event(ev, raw, &mut rv);
                    if let Err(e) = offered {
                        drop(shipper);
                        drop(frame);
                        self.line = buf;
                        return Err(e);
                    }
                    shipper.advance(&self.scope.key, &rv);
                    continue;
                }
                "DELETED" => {
                    self.stats.frame(FRAME_DELETED, now);
                    if let Some(uid) = ev.metadata.uid.as_deref() {
                        self.shipper().forget(uid);
                    }
                    if let Some(v) = frame_rv {
                        rv.clear();
                        rv.push_str(v);
                    }
                }
                "BOOKMARK" => {
                    self.stats.frame(FRAME_BOOKMARK, now);
                    if let Some(v) = frame_rv {
                        debug!("bookmark at resourceVersion {v}");
                        rv.clear();
                        rv.push_str(v);
                    }
                }
                "ERROR" => {
                    self.stats.frame(FRAME_ERROR, now);
                    let code = ev.code.unwrap_or(0);
                    let reason = ev.reason.as_deref().unwrap_or("").to_string();
                    let message = ev.message.as_deref().unwrap_or("").to_string();
                    if code == 410 || reason == "Expired" || reason == "Gone" {
                        Stats::add(&self.stats.watch_expired, 1);
                        info!("watch from resourceVersion {rv} expired ({message}); listing again");
                        break Some(State::Empty);
                    }
                    warn!(
                        "watch ERROR frame: {code} {reason} {message}; watching again from resourceVersion {rv}"
                    );
                    self.pause(None);
                    break Some(State::Watching { rv: rv.clone() });
                }
                other => {
                    warn!("skipping a watch frame of unknown type {other:?}");
                }
            }
            self.shipper().advance(&self.scope.key, &rv);
        };
        self.line = buf;
        if let Some(state) = next {
            return Ok(state);
        }
        Stats::add(&self.stats.watch_restarts, 1);
        if frames == 0 && started.elapsed() < SHORT_WATCH {
            warn!("the watch ended at once without a frame; waiting before watching again");
            self.pause(None);
        } else {
            debug!("watch ended after {frames} frames; watching again from resourceVersion {rv}");
        }
        Ok(State::Watching { rv })
    }

    fn shipper(&self) -> std::sync::MutexGuard<'_, Shipper> {
        self.shipper.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs a failed call at the level it deserves and waits the backoff.
    fn failed(&mut self, what: &str, e: &client::Error) {
        let retry_after = match e {
            client::Error::Status { code: 401, .. } => {
                warn!("cannot {what}: {e}; reading the credentials again");
                self.client.invalidate_credentials();
                None
            }
            client::Error::Status {
                code: 403, message, ..
            } => {
                let scope = if self.scope.key.is_empty() {
                    "at cluster scope".to_string()
                } else {
                    format!("in namespace {}", self.scope.key)
                };
                error!(
                    "cannot {what}: forbidden: {message}. kube-event needs get, list and watch on \
                     events (API group \"\") {scope}: apply deploy/rbac.yaml or see README.md"
                );
                None
            }
            client::Error::Status {
                code, retry_after, ..
            } if *code == 429 || *code >= 500 => {
                warn!("cannot {what}: {e}; retrying");
                *retry_after
            }
            client::Error::Status { .. } | client::Error::Credentials(_) => {
                error!("cannot {what}: {e}; retrying");
                None
            }
            client::Error::Transport(_) => {
                warn!("cannot {what}: {e}; retrying");
                None
            }
        };
        self.pause(retry_after);
    }

    fn pause(&mut self, retry_after: Option<Duration>) {
        let d = self.backoff.failure(retry_after);
        debug!("waiting {:.1}s before the next call", d.as_secs_f64());
        self.shutdown.sleep(d);
    }
}

/// " in namespace x" for a namespace scope, "" for the whole cluster.
fn scope_note(scope: &Scope) -> String {
    if scope.key.is_empty() {
        String::new()
    } else {
        format!(" in namespace {}", scope.key)
    }
}
