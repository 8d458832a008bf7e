//! What both HTTP clients (API server and Loki) share: their connections' buffer sizes, and
//! what they read from an answer that is not a success.

use std::time::Duration;

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
