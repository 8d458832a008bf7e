//! What both HTTP clients (API server and Loki) share: their connections' buffer sizes, how
//! they look hosts up, and what they read from an answer that is not a success.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::backoff::parse_retry_after;

/// ureq's buffers per connection, (reading, writing). A TLS connection has two of each (the
/// socket's bytes and the plain text), kept as long as the connection: ureq's 128 KiB defaults
/// made 1.3 MB of the idle process (massif, issue 6). 64 KiB where the bulk flows (the watch
/// stream and list pages in, push bodies out) and 16 KiB the other way, which holds any
/// answer's headers (the API server's and Loki's are under 2 KiB) and any request's. In a 200k
/// storm, 32 KiB both ways had made 7,300 reads and 2,300 writes of the sockets against 2,000
/// and 450 at 128 KiB (perf stat): ~0.15 us per event of system time.
pub const API_BUFFERS: (usize, usize) = (64 << 10, 16 << 10);
pub const LOKI_BUFFERS: (usize, usize) = (16 << 10, 64 << 10);

/// What both clients' agents share: their TLS settings, answers read whatever their status
/// (the callers classify them), no redirects, 10 s to connect, the buffer sizes (reading,
/// writing) and the user agent. Each client adds its own timeouts.
pub fn agent_config(
    tls: ureq::tls::TlsConfig,
    (input, output): (usize, usize),
) -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(Duration::from_secs(10)))
        .input_buffer_size(input)
        .output_buffer_size(output)
        .user_agent(concat!("kube-event/", env!("CARGO_PKG_VERSION")))
}

/// An agent with `config` that resolves host names through `CachingResolver`.
pub fn agent(config: ureq::config::Config) -> ureq::Agent {
    ureq::Agent::with_parts(
        config,
        DefaultConnector::default(),
        CachingResolver::new(DefaultResolver::default(), RESOLVED_FOR),
    )
}

/// How long a host's addresses are used before they are looked up again.
pub const RESOLVED_FOR: Duration = Duration::from_secs(30);

/// ureq resolves the host before every request, whether a pooled connection will carry it
/// or not, and with a timeout set it does so on a thread of its own: a thread (and, for a
/// name, a DNS query) for every push and every list page. In the benchmark's storm that was
/// 105 threads, ~1 % of the CPU (perf). This keeps the last answer for `ttl`; a connection
/// that has to be made after Loki or the API server moved fails at worst for `ttl`, and is
/// retried as any failure is.
pub struct CachingResolver<R> {
    inner: R,
    ttl: Duration,
    last: Mutex<Option<(String, Instant, ResolvedSocketAddrs)>>,
}

/// ureq's `Resolver` must be `Debug`: the time to live only.
impl<R> std::fmt::Debug for CachingResolver<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingResolver")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<R: Resolver> CachingResolver<R> {
    pub fn new(inner: R, ttl: Duration) -> Self {
        CachingResolver {
            inner,
            ttl,
            last: Mutex::new(None),
        }
    }
}

impl<R: Resolver> Resolver for CachingResolver<R> {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        // Scheme, host and port: never the authority's user and password, if a URL has them.
        let key = format!(
            "{}://{}:{}",
            uri.scheme_str().unwrap_or(""),
            uri.host().unwrap_or(""),
            uri.port_u16().unwrap_or(0)
        );
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, at, addrs)) = &*last {
            if *k == key && at.elapsed() < self.ttl {
                return Ok(addrs.clone());
            }
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        *last = Some((key, Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}

/// `Retry-After` (seconds) and the body as text, at most 64 KiB of it.
pub fn error_answer(resp: &mut ureq::http::Response<ureq::Body>) -> (Option<Duration>, String) {
    let retry_after = parse_retry_after(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
    );
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .lossy_utf8(true)
        .read_to_string()
        .unwrap_or_default();
    (retry_after, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers 10.0.0.n for its n-th lookup.
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    impl Resolver for Counting {
        fn resolve(
            &self,
            uri: &ureq::http::Uri,
            _: &ureq::config::Config,
            _: NextTimeout,
        ) -> Result<ResolvedSocketAddrs, ureq::Error> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            let port = uri.port_u16().unwrap_or(443);
            let mut v = self.empty();
            v.push(std::net::SocketAddr::from(([10, 0, 0, n as u8], port)));
            Ok(v)
        }
    }

    fn lookup(r: &impl Resolver, uri: &str) -> std::net::SocketAddr {
        let timeout = NextTimeout {
            after: Duration::from_secs(5).into(),
            reason: ureq::Timeout::Resolve,
            per_read: None,
            per_write: None,
        };
        let uri: ureq::http::Uri = uri.parse().unwrap();
        r.resolve(&uri, &ureq::config::Config::default(), timeout)
            .unwrap()[0]
    }

    #[test]
    fn resolves_a_host_once_for_its_time_to_live() {
        let r = CachingResolver::new(Counting::default(), Duration::from_secs(3600));
        let loki = lookup(&r, "https://loki:3100/loki/api/v1/push");
        assert_eq!(loki, "10.0.0.1:3100".parse().unwrap());
        // Another path on the same host and port: the same answer, no lookup.
        assert_eq!(lookup(&r, "https://loki:3100/ready"), loki);
        assert_eq!(lookup(&r, "https://user:secret@loki:3100/x"), loki);
        assert_eq!(r.inner.0.load(Ordering::SeqCst), 1);
        assert!(!format!("{r:?}").contains("secret"));
        // Another port, or another scheme, is another lookup.
        assert_eq!(
            lookup(&r, "https://loki:3101/x"),
            "10.0.0.2:3101".parse().unwrap()
        );
        assert_eq!(
            lookup(&r, "http://loki:3101/x"),
            "10.0.0.3:3101".parse().unwrap()
        );
        assert_eq!(r.inner.0.load(Ordering::SeqCst), 3);

        // With no time to live, every request looks the host up again.
        let r = CachingResolver::new(Counting::default(), Duration::ZERO);
        lookup(&r, "https://loki:3100/a");
        assert_eq!(
            lookup(&r, "https://loki:3100/a"),
            "10.0.0.2:3100".parse().unwrap()
        );
    }
}
