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
    /// One agent for lists and watches, so the watch that follows a list goes out on the
    /// list's connection, and no idle connection keeps its buffers.
    agent: ureq::Agent,
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

/// A watch response body, read line by line.
pub struct WatchStream<R = BodyReader<'static>> {
    reader: BufReader<R>,
    /// The length of the line last handed out from the reader's buffer, consumed at the next
    /// call.
    lent: usize,
}

impl<R: std::io::Read> WatchStream<R> {
    pub fn new(body: R) -> Self {
        WatchStream {
            reader: BufReader::with_capacity(64 * 1024, body),
            lent: 0,
        }
    }

    /// The next frame line, with its newline (none on a last line without one). It is read in
    /// place from the reader's buffer when it is there whole, which is nearly always (64 KiB
    /// of ~1 KB frames); only a line that spans two reads is gathered in `spill`. `Ok(None)`:
    /// the stream ended. `read` is set when the call read from the body rather than only
    /// from the reader's buffer: the watcher reads the clock then, not for every frame.
    pub fn next_line<'s>(
        &'s mut self,
        spill: &'s mut Vec<u8>,
        read: &mut bool,
    ) -> std::io::Result<Option<&'s [u8]>> {
        self.reader.consume(std::mem::take(&mut self.lent));
        spill.clear();
        loop {
            *read |= self.reader.buffer().is_empty();
            let (newline, len) = {
                let avail = self.reader.fill_buf()?;
                (find_newline(avail), avail.len())
            };
            if len == 0 {
                return Ok((!spill.is_empty()).then_some(&spill[..]));
            }
            match newline {
                Some(n) if spill.is_empty() => {
                    self.lent = n + 1;
                    return Ok(Some(&self.reader.buffer()[..=n]));
                }
                Some(n) => {
                    spill.extend_from_slice(&self.reader.buffer()[..=n]);
                    self.reader.consume(n + 1);
                    return Ok(Some(&spill[..]));
                }
                None => {
                    spill.extend_from_slice(self.reader.buffer());
                    self.reader.consume(len);
                }
            }
        }
    }
}

/// The index of the first `\n` in `b`. With SSE2 on x86_64 (every such CPU has it), 64
/// bytes a step and then 16: std's `read_until` searched with its generic `memchr`, ~1,600
/// instructions per 1.2 KB frame, 4 % of the process in the storm (callgrind); `next_line`
/// cost ~455 with 16 bytes a step, ~125 with 64.
fn find_newline(b: &[u8]) -> Option<usize> {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        };
        let mut i = 0;
        // SAFETY: SSE2 is enabled in this build (the cfg above); each load reads the 16 bytes
        // at `i + k` with `i + k + 16 <= b.len()`.
        unsafe {
            let newline = _mm_set1_epi8(b'\n' as i8);
            let at = |k: usize| _mm_cmpeq_epi8(_mm_loadu_si128(b.as_ptr().add(k).cast()), newline);
            while i + 64 <= b.len() {
                let any = _mm_or_si128(
                    _mm_or_si128(at(i), at(i + 16)),
                    _mm_or_si128(at(i + 32), at(i + 48)),
                );
                if _mm_movemask_epi8(any) != 0 {
                    break;
                }
                i += 64;
            }
            while i + 16 <= b.len() {
                let v = _mm_loadu_si128(b.as_ptr().add(i).cast());
                let hits = _mm_movemask_epi8(_mm_cmpeq_epi8(v, newline));
                if hits != 0 {
                    return Some(i + hits.trailing_zeros() as usize);
                }
                i += 16;
            }
        }
        b[i..].iter().position(|&c| c == b'\n').map(|n| i + n)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    b.iter().position(|&c| c == b'\n')
}

impl Client {
    pub fn new(access: Access) -> Result<Client, String> {
        let t = &access.tls;
        let client = t
            .client_cert_pem
            .as_deref()
            .zip(t.client_key_pem.as_deref());
        let tls = crate::tls::config(t.ca_pem.as_deref(), t.insecure_skip_verify, client)?;
        let agent = crate::http::agent(
            crate::http::agent_config(tls, crate::http::API_BUFFERS)
                .timeout_recv_response(Some(Duration::from_secs(60)))
                // No `Accept-Encoding: gzip` (ureq's default): an API server gzips a list
                // page over 128 KiB for a client that accepts it, and kube-event runs next
                // to it, where that costs the server its compression and kube-event its
                // inflation (~1.2 KB of JSON an event) and saves nothing. The control plane's
                // own components turn it off for the same reason (kubernetes#80919); a
                // kubeconfig's `disable-compression` is so always true here.
                .accept_encoding("")
                .build(),
        );
        Ok(Client {
            agent,
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
        let mut resp = self.get(&url, Call::List)?;
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
        let mut resp = self.get(&url, Call::List)?;
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
        let resp = self.get(&url, Call::Watch)?;
        Ok(WatchStream::new(resp.into_body().into_reader()))
    }

    fn get(&self, url: &str, call: Call) -> Result<ureq::http::Response<ureq::Body>, Error> {
        let req = self.agent.get(url).config();
        let req = match call {
            Call::List => req.timeout_global(Some(Duration::from_secs(120))),
            Call::Watch => req.timeout_recv_body(Some(
                Duration::from_secs(WATCH_TIMEOUT_SECS) + WATCH_BODY_SLACK,
            )),
        };
        let mut req = req.build().header("Accept", "application/json");
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

/// Which timeouts a request gets.
#[derive(Clone, Copy)]
enum Call {
    /// A list page (or `--check`'s one item): 120 s for the whole exchange.
    List,
    /// A watch: its body may last `timeoutSeconds` plus some slack.
    Watch,
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
    use super::{find_newline, WatchStream};

    /// Hands out its bytes in reads of the sizes given, round and round.
    struct Chunked<'a> {
        data: &'a [u8],
        sizes: &'a [usize],
        n: usize,
    }

    impl std::io::Read for Chunked<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let want = self.sizes[self.n % self.sizes.len()].min(buf.len());
            self.n += 1;
            let k = want.min(self.data.len());
            buf[..k].copy_from_slice(&self.data[..k]);
            self.data = &self.data[k..];
            Ok(k)
        }
    }

    #[test]
    fn watch_lines_come_out_whole_however_the_body_is_cut() {
        let long = "L".repeat(200_000);
        let mut body = String::new();
        for i in 0..300 {
            body.push_str(&format!("{{\"type\":\"ADDED\",\"n\":{i}}}\n"));
            if i % 50 == 7 {
                body.push('\n');
                body.push_str(&long);
                body.push('\n');
            }
        }
        body.push_str("last line without a newline");
        let want: Vec<&str> = body.split_inclusive('\n').collect();
        let sizes: [&[usize]; 4] = [&[1 << 20], &[1], &[7, 3, 1000, 65536, 13], &[65536]];
        for sizes in sizes {
            let mut stream = WatchStream::new(Chunked {
                data: body.as_bytes(),
                sizes,
                n: 0,
            });
            let mut spill = Vec::new();
            let mut got = Vec::new();
            while let Some(line) = stream.next_line(&mut spill, &mut false).unwrap() {
                got.push(String::from_utf8(line.to_vec()).unwrap());
            }
            assert_eq!(got, want, "reads of {sizes:?}");
            assert!(stream.next_line(&mut spill, &mut false).unwrap().is_none());
        }
    }

    /// `read` says exactly whether a call read from the body: the watcher stamps frames with
    /// the clock it reads then.
    #[test]
    fn next_line_says_when_it_read_from_the_body() {
        struct Counted<'a>(Chunked<'a>, std::rc::Rc<std::cell::Cell<usize>>);
        impl std::io::Read for Counted<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.1.set(self.1.get() + 1);
                self.0.read(buf)
            }
        }
        let mut body = String::new();
        for i in 0..2000 {
            body.push_str(&format!("{{\"type\":\"ADDED\",\"n\":{i}}}\n"));
        }
        for sizes in [&[1usize << 20][..], &[1], &[7, 3, 1000, 65536, 13]] {
            let reads = std::rc::Rc::new(std::cell::Cell::new(0));
            let chunked = Chunked {
                data: body.as_bytes(),
                sizes,
                n: 0,
            };
            let mut stream = WatchStream::new(Counted(chunked, reads.clone()));
            let mut spill = Vec::new();
            let (mut lines, mut flagged) = (0, 0);
            loop {
                let before = reads.get();
                let mut read = false;
                let more = stream.next_line(&mut spill, &mut read).unwrap().is_some();
                assert_eq!(read, reads.get() != before, "sizes {sizes:?}, line {lines}");
                flagged += usize::from(read);
                if !more {
                    break;
                }
                lines += 1;
            }
            assert_eq!(lines, 2000);
            assert!(flagged >= 2 && flagged <= reads.get(), "sizes {sizes:?}");
        }
    }

    #[test]
    fn find_newline_agrees_with_a_plain_search() {
        for len in 0..200 {
            let mut b = vec![b'x'; len];
            assert_eq!(find_newline(&b), None);
            for at in 0..len {
                b[at] = b'\n';
                assert_eq!(find_newline(&b), Some(at), "len {len}");
                // A second newline after it changes nothing.
                if at + 3 < len {
                    b[at + 3] = b'\n';
                    assert_eq!(find_newline(&b), Some(at));
                    b[at + 3] = b'x';
                }
                b[at] = b'x';
            }
        }
    }

    #[test]
    fn percent_encoding_keeps_unreserved_characters() {
        let mut s = String::new();
        super::percent_encode("eyJ2Ijoi+/=a-b_c.d~", &mut s);
        assert_eq!(s, "eyJ2Ijoi%2B%2F%3Da-b_c.d~");
    }
}
