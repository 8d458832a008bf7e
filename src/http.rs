//! What both HTTP clients (API server and Loki) share: their connections' buffer sizes, and
//! what they read from an answer that is not a success.

use std::time::Duration;

use crate::backoff::parse_retry_after;

/// ureq's buffers per connection, for reading and for writing. A TLS connection has two of
/// each (the socket's bytes and the plain text), kept as long as the connection. ureq's 128 KiB
/// defaults made 1.3 MB of the idle process (massif, issue 6); 32 KiB holds any answer's headers
/// (the API server's and Loki's are under 2 KiB) and a read of two TLS records, and writes go
/// out a TLS record (16 KiB) at a time.
pub const INPUT_BUFFER: usize = 32 << 10;
pub const OUTPUT_BUFFER: usize = 16 << 10;

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
