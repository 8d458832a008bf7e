//! What both HTTP clients (API server and Loki) read from an answer that is not a success.

use std::time::Duration;

use crate::backoff::parse_retry_after;

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
