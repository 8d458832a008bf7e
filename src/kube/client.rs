//! The two calls kube-event makes to the API server: a page of a list, and a watch stream.
//! Status codes are classified here (`Error`), and the state machine in `watcher.rs` decides
//! what to do about them.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use ureq::BodyReader;

use super::auth::Credentials;
use super::kubeconfig::Access;
use crate::event::Status;

/// 290 s: servers refuse watch timeouts >= 295 s (kube-rs watcher.rs, kubernetes#6513).
pub const WATCH_TIMEOUT_SECS: u64 = 290;
/// The read budget of a watch body: the server ends it after `WATCH_TIMEOUT_SECS`, so a
/// stream still silent well after that is a dead connection (kube-rs: server timeout + 5 s).
const WATCH_BODY_SLACK: Duration = Duration::from_secs(30);
/// 500 per page, as client-go and kube-rs.
pub const PAGE_SIZE: u32 = 500;

pub struct Client {
    list_agent: ureq::Agent,
    watch_agent: ureq::Agent,
    server: String,
    credentials: Credentials,
}

/// Why a call failed, as the watcher needs to know it.
#[derive(Debug)]
pub enum Error {
    /// No answer: DNS, connect, TLS, reset, timeout. Back off and retry.
    Transport(String),
    /// An HTTP error status, with the Status object's reason and message when there was one.
    Status {
        code: u16,
        reason: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The credentials could not be produced (token file unreadable, exec plugin failed).
    Credentials(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Transport(e) => write!(f, "{e}"),
            Error::Status {
                code,
                reason,
                message,
                ..
            } => {
                write!(f, "HTTP {code}")?;
                if !reason.is_empty() {
                    write!(f, " {reason}")?;
                }
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            Error::Credentials(e) => write!(f, "credentials: {e}"),
        }
    }
}

/// A watch response body, read line by line into a caller-owned buffer.
pub struct WatchStream {
    reader: BufReader<BodyReader<'static>>,
}

impl WatchStream {
    /// Reads the next frame line into `buf` (cleared first). `Ok(false)`: the stream ended.
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<bool> {
        buf.clear();
        let n = self.reader.read_until(b'\n', buf)?;
        Ok(n > 0)
    }
}

impl Client {
    pub fn new(access: Access) -> Result<Client, String> {
        let t = &access.tls;
        let client = t
            .client_cert_pem
            .as_deref()
            .zip(t.client_key_pem.as_deref());
        let tls = crate::tls::config(t.ca_pem.as_deref(), t.insecure_skip_verify, client)?;
        let base = || {
            ureq::Agent::config_builder()
                .tls_config(tls.clone())
                .http_status_as_error(false)
                .max_redirects(0)
                .timeout_connect(Some(Duration::from_secs(10)))
                .timeout_recv_response(Some(Duration::from_secs(60)))
                .user_agent(concat!("kube-event/", env!("CARGO_PKG_VERSION")))
        };
        let list_agent = base()
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let watch_agent = base()
            .timeout_recv_body(Some(
                Duration::from_secs(WATCH_TIMEOUT_SECS) + WATCH_BODY_SLACK,
            ))
            .build()
            .into();
        Ok(Client {
            list_agent,
            watch_agent,
            server: access.server.trim_end_matches('/').to_string(),
            credentials: access.credentials,
        })
    }

    /// After a 401: the next call re-reads the token file or re-runs the exec plugin.
    pub fn invalidate_credentials(&self) {
        self.credentials.invalidate();
    }

    /// One page of `GET path?limit=…[&continue=…]`: the raw JSON body.
    pub fn list_page(
        &self,
        path: &str,
        selector: Option<&str>,
        continue_token: Option<&str>,
        body: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let mut url = format!("{}{path}?limit={PAGE_SIZE}", self.server);
        if let Some(f) = selector {
            url.push_str("&fieldSelector=");
            percent_encode(f, &mut url);
        }
        if let Some(c) = continue_token {
            url.push_str("&continue=");
            percent_encode(c, &mut url);
        }
        let mut resp = self.get(&self.list_agent, &url)?;
        // Into the caller's buffer, reused page after page (a fresh ~600 KB buffer per page
        // was a new mapping to fault in, in the static binary).
        body.clear();
        std::io::Read::read_to_end(
            &mut resp.body_mut().with_config().limit(512 << 20).reader(),
            body,
        )
        .map(|_| ())
        .map_err(|e| Error::Transport(format!("reading the list from {url}: {e}")))
    }

    /// For `--check`: one list item at most. Returns how many came and the resourceVersion.
    pub fn list_first(&self, path: &str) -> Result<(usize, String), Error> {
        let url = format!("{}{path}?limit=1", self.server);
        let mut resp = self.get(&self.list_agent, &url)?;
        let body = resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_vec()
            .map_err(|e| Error::Transport(format!("reading the list: {e}")))?;
        let list = crate::scan::list(&body)
            .map_err(|e| Error::Transport(format!("the list does not parse: {e}")))?;
        let rv = list
            .resource_version
            .map(|t| t.into_owned())
            .unwrap_or_default();
        Ok((list.items.len(), rv))
    }

    /// `GET path?watch=1&resourceVersion=rv&allowWatchBookmarks=true&timeoutSeconds=…`.
    pub fn watch(
        &self,
        path: &str,
        selector: Option<&str>,
        rv: &str,
        timeout_secs: u64,
    ) -> Result<WatchStream, Error> {
        let mut url = format!(
            "{}{path}?watch=1&allowWatchBookmarks=true&timeoutSeconds={timeout_secs}&resourceVersion=",
            self.server
        );
        percent_encode(rv, &mut url);
        if let Some(f) = selector {
            url.push_str("&fieldSelector=");
            percent_encode(f, &mut url);
        }
        let resp = self.get(&self.watch_agent, &url)?;
        Ok(WatchStream {
            reader: BufReader::with_capacity(64 * 1024, resp.into_body().into_reader()),
        })
    }

    fn get(
        &self,
        agent: &ureq::Agent,
        url: &str,
    ) -> Result<ureq::http::Response<ureq::Body>, Error> {
        let mut req = agent.get(url).header("Accept", "application/json");
        let auth = self
            .credentials
            .authorization()
            .map_err(|e| Error::Credentials(e.to_string()))?;
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let mut resp = req
            .call()
            .map_err(|e| Error::Transport(format!("{}: {e}", redact_query(url))))?;
        let code = resp.status().as_u16();
        if (200..300).contains(&code) {
            return Ok(resp);
        }
        let (retry_after, body) = crate::http::error_answer(&mut resp);
        // Most errors carry a Status object; a 429 has plain text (protocols.md 4.1).
        let status: Status = serde_json::from_str(&body).unwrap_or_else(|_| Status {
            code,
            reason: String::new(),
            message: body.trim().chars().take(300).collect(),
        });
        Err(Error::Status {
            code,
            reason: status.reason,
            message: status.message,
            retry_after,
        })
    }
}

fn redact_query(url: &str) -> &str {
    // Continue tokens and resourceVersions are noise in an error message.
    url.split('?').next().unwrap_or(url)
}

fn percent_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_encoding_keeps_unreserved_characters() {
        let mut s = String::new();
        super::percent_encode("eyJ2Ijoi+/=a-b_c.d~", &mut s);
        assert_eq!(s, "eyJ2Ijoi%2B%2F%3Da-b_c.d~");
    }
}
