//! kube-event: watches every Kubernetes Event and ships each occurrence to Grafana Loki,
//! once, with the time it happened.
//!
//! Three threads: the watcher lists and watches `/api/v1/events` (`watcher`, `kube`), decides
//! which objects show a new occurrence (`ship`) and appends their lines to the queue of
//! batches (`loki::Queue`); the pusher sends sealed batches to Loki (`loki`); the main thread
//! handles signals and the shutdown. See ARCHITECTURE.md.
//!
//! Log levels: `error` = data lost or kube-event cannot work (a rejected batch, a permission
//! missing); `warn` = a retry, a skipped frame, a configuration oddity; `info` = lifecycle
//! (started, listed N events, relisted, shut down); `debug` = state transitions and pushes;
//! `trace` = wire detail. No level ever logs a token, password, key or Authorization header.

pub mod backoff;
pub mod base64;
pub mod batch;
pub mod check;
pub mod config;
pub mod deflate;
pub mod event;
pub mod filter;
pub mod format;
pub mod hash;
pub mod http;
pub mod kube;
pub mod logfile;
pub mod loki;
pub mod lz;
pub mod mem;
pub mod metrics;
pub mod notify;
pub mod proto;
pub mod pusher;
pub mod queue;
pub mod scan;
pub mod ship;
pub mod shutdown;
pub mod snappy;
pub mod spool;
pub mod stats;
pub mod table;
#[cfg(test)]
mod testutil;
pub mod time;
pub mod tls;
pub mod watcher;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::config::Config;
use crate::ship::{Output, Shipper};
use crate::shutdown::Shutdown;
use crate::stats::Stats;

/// How long the final push may take after SIGTERM/SIGINT.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A failure that ends the program, with the exit code it maps to.
#[derive(Debug)]
pub enum Error {
    /// Usage or configuration: exit 2.
    Config(String),
    /// Something failed at run time: exit 1.
    Runtime(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(m) | Error::Runtime(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => 2,
            Error::Runtime(_) => 1,
        }
    }
}

/// What the main thread hears about.
enum Msg {
    Signal(i32),
    WatcherStopped(Result<(), String>),
    PusherStopped,
}

/// Runs kube-event until SIGTERM/SIGINT (or, with `--stdout`, until standard output closes).
pub fn run(config: Config, stdout: bool) -> Result<(), Error> {
    let access = kube::kubeconfig::resolve_from_env(
        config.kubeconfig.as_deref(),
        config.kube_context.as_deref(),
    )
    .map_err(|e| Error::Config(format!("cluster access: {e}")))?;
    info!(
        "cluster access: {}; server {}; user {} ({})",
        access.source,
        access.server,
        access.user,
        access.credentials.describe()
    );
    let kube = Arc::new(
        kube::client::Client::new(access)
            .map_err(|e| Error::Config(format!("cluster access: {e}")))?,
    );
    let fields = config
        .label_keys
        .iter()
        .filter_map(|k| event::Field::parse(k))
        .collect();
    let format: format::LineFormat = config.line_format.parse().map_err(Error::Config)?;
    let filter = filter::Filter::new(config.filters.clone());

    let stats = Arc::new(Stats::default());
    let shutdown = Shutdown::new();
    let (tx, rx) = mpsc::channel::<Msg>();

    // Signals first, so that a SIGTERM during startup is not lost.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| Error::Runtime(format!("cannot install signal handlers: {e}")))?;
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if tx.send(Msg::Signal(sig)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Runtime(format!("cannot start a thread: {e}")))?;
    }

    let scopes = scopes(&kube, &filter);
    let settings = ship::Settings {
        detailed: config.enable_detailed,
        retention_secs: config.dedup_retention_secs,
        max_line_bytes: config.max_line_bytes,
        filter,
        fields,
        format,
        structured_metadata: config.structured_metadata,
    };
    let (shipper, queue, rv) = if stdout {
        let shipper = Shipper::new(Output::Stdout, stats.clone(), settings, Default::default());
        (shipper, None, String::new())
    } else {
        let (store, recovered) = spool::Store::open(&config.data_dir, config.dedup_retention_secs)
            .map_err(|e| Error::Config(e.to_string()))?;
        let mut client =
            loki::Client::new(&config.loki).map_err(|e| Error::Config(e.to_string()))?;
        client.set_wire(config.compression);
        let rv = recovered.rv.unwrap_or_default();
        let spooled: usize = recovered.batches.iter().map(|b| b.entries).sum();
        if rv.is_empty() && recovered.batches.is_empty() {
            info!("DATA_DIR {}: nothing to resume", config.data_dir.display());
        } else {
            info!(
                "DATA_DIR {}: resuming from resourceVersion {rv:?}; {} batches ({spooled} entries) \
                 in the spool; {} events remembered",
                config.data_dir.display(),
                recovered.batches.len(),
                recovered.memory.lock().map(|m| m.len()).unwrap_or(0)
            );
        }
        info!(
            "pushing to {} every {}s or at {} bytes",
            client.url(),
            config.push_interval.as_secs(),
            config.batch_max_bytes
        );
        let schema = batch::Schema {
            job: config.job.clone(),
            static_labels: config.labels.clone(),
            keys: config.label_keys.clone(),
            // Sealed as they go out: protobuf for snappy, which the pusher then only compresses.
            format: config.compression.sealed_as(),
        };
        let queue = Arc::new(queue::Queue::new(
            config.push_interval,
            config.batch_max_bytes,
            schema,
            rv.clone(),
        ));
        let pusher = pusher::Pusher::new(
            queue.clone(),
            client,
            store,
            stats.clone(),
            config.spool_max_bytes,
            recovered.batches,
            rv.clone(),
        );
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("pusher".into())
            .spawn(move || {
                pusher.run();
                let _ = tx.send(Msg::PusherStopped);
            })
            .map_err(|e| Error::Runtime(format!("cannot start a thread: {e}")))?;
        let shipper = Shipper::new(
            Output::Loki(queue.clone()),
            stats.clone(),
            settings,
            recovered.memory,
        );
        (shipper, Some(queue), rv)
    };
    let shipper = Arc::new(std::sync::Mutex::new(shipper));

    if let Some(addr) = config.metrics_addr {
        let bound = metrics::serve(addr, stats.clone(), config.health_stall)
            .map_err(|e| Error::Config(format!("METRICS_ADDR {addr}: cannot listen: {e}")))?;
        info!("serving /metrics, /healthz and /readyz on http://{bound}");
    }

    // Ready once every scope has listed once.
    let unlisted = Arc::new(std::sync::atomic::AtomicUsize::new(scopes.len()));
    let resume = queue::decode_resume(&rv);
    for scope in scopes {
        let start = match resume.get(&scope.key) {
            Some(rv) if !rv.is_empty() => watcher::State::Watching { rv: rv.clone() },
            _ => watcher::State::Empty,
        };
        let mut first_list = true;
        let (listed_stats, unlisted) = (stats.clone(), unlisted.clone());
        let on_listed: watcher::OnListed = Box::new(move |n| {
            if std::mem::take(&mut first_list)
                && unlisted.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1
            {
                listed_stats
                    .listed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                match n {
                    Some(n) => info!("first list done ({n} events); kube-event is up"),
                    None => info!("watch resumed; kube-event is up"),
                }
                notify::notify("READY=1");
            }
        });
        let name = if scope.key.is_empty() {
            "watcher".to_string()
        } else {
            format!("watcher-{}", scope.key)
        };
        let w = watcher::Watcher::new(
            kube.clone(),
            scope,
            shipper.clone(),
            shutdown.clone(),
            stats.clone(),
            on_listed,
        );
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let r = w
                    .run(start)
                    .map_err(|e| format!("standard output closed: {}", e.0));
                let _ = tx.send(Msg::WatcherStopped(r));
            })
            .map_err(|e| Error::Runtime(format!("cannot start a thread: {e}")))?;
    }
    drop(tx);

    // Wait for the first reason to stop.
    let reason = match rx.recv() {
        Ok(Msg::Signal(sig)) => format!("signal {}", signal_name(sig)),
        Ok(Msg::WatcherStopped(Ok(()))) => "watcher stopped".to_string(),
        Ok(Msg::WatcherStopped(Err(e))) => {
            if stdout {
                // `kube-event --stdout | head`: the reader is done, so are we.
                info!("{e}; stopping");
                return Ok(());
            }
            e
        }
        Ok(Msg::PusherStopped) => {
            return Err(Error::Runtime("the pusher stopped unexpectedly".into()));
        }
        Err(_) => return Err(Error::Runtime("all threads stopped".into())),
    };
    shutdown.trigger();
    notify::notify("STOPPING=1");
    let Some(queue) = queue else {
        info!("{reason}: stopping");
        return Ok(());
    };
    info!(
        "{reason}: stopping; pushing what is queued (at most {}s)",
        SHUTDOWN_GRACE.as_secs()
    );
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    queue.close(deadline);
    loop {
        // A little past the deadline: the pusher gives up at the deadline itself, unless it is
        // stuck inside a push that has not timed out yet.
        let left = (deadline + Duration::from_secs(1)).saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Msg::PusherStopped) => break,
            Ok(Msg::Signal(sig)) => {
                error!(
                    "second signal ({}): exiting at once; what is in the spool is pushed at the \
                     next start, the {} entries not yet in it are lost",
                    signal_name(sig),
                    queue.pending()
                );
                return Err(Error::Runtime("stopped by a second signal".into()));
            }
            Ok(Msg::WatcherStopped(_)) => {}
            Err(_) => {
                // The pusher is stuck in a push that has not timed out. Stopping was asked
                // for and is what happens: exit 0, saying what was not pushed.
                let left = queue.pending();
                Stats::add(&stats.abandoned, left as u64);
                error!(
                    "the final push did not finish in time; {left} queued entries and the batch in flight were not pushed"
                );
                break;
            }
        }
    }
    let s = &stats;
    info!(
        "shut down: received {}, shipped {}, filtered {}, unchanged {}, malformed {}, pushed {}, rejected {}, \
         left in the spool {}, dropped (spool full) {}, lost {}",
        Stats::get(&s.received),
        Stats::get(&s.shipped),
        Stats::get(&s.filtered),
        Stats::get(&s.unchanged),
        Stats::get(&s.malformed),
        Stats::get(&s.pushed),
        Stats::get(&s.rejected),
        Stats::get(&s.left_in_spool),
        Stats::get(&s.dropped_spool_full),
        Stats::get(&s.abandoned)
    );
    if Stats::get(&s.abandoned) > 0 {
        warn!("some entries were not pushed before the deadline");
    }
    Ok(())
}

/// What to watch: the scope the filters allow (the whole cluster, or the one namespace of
/// `NAMESPACES`), or, when `NAMESPACES` names plain namespaces and listing across the cluster
/// is forbidden, each of those namespaces on its own (for users with namespace-scoped RBAC).
fn scopes(kube: &kube::client::Client, filter: &filter::Filter) -> Vec<filter::Scope> {
    let main = filter.scope();
    if !main.key.is_empty() {
        return vec![main];
    }
    let Some(namespaces) = filter.namespace_scopes() else {
        return vec![main];
    };
    match kube.list_first(&main.path) {
        Err(kube::client::Error::Status {
            code: 403, message, ..
        }) => {
            let names: Vec<&str> = namespaces.iter().map(|s| s.key.as_str()).collect();
            info!(
                "listing events across the cluster is forbidden ({message}); watching the \
                 namespaces of NAMESPACES one by one: {}",
                names.join(", ")
            );
            namespaces
        }
        // Allowed, or another failure the watcher will report and retry.
        _ => vec![main],
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGINT => "SIGINT",
        _ => "signal",
    }
}
