//! The smallest HTTP/1.1 server the fakes need, over real sockets and optionally real TLS.
//!
//! One thread accepts, one thread per connection serves exactly one request and then closes
//! (every response says `Connection: close`), so client connection pooling never matters.
//! Responses are either whole (`Content-Length`) or streamed as `Transfer-Encoding: chunked`
//! for watches. The server can "go away" (stop listening and cut every open connection, so new
//! connections are refused) and "come back" on the same port.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::pki::cert_subject_cn;
use super::util::parse_query;

/// A parsed request.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The request target as sent (`/path?query`).
    pub target: String,
    pub path: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// Headers with lowercased names, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Subject CN of the verified client certificate, when one was presented.
    pub peer_cn: Option<String>,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first query parameter named `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A whole response.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A body with the given content type.
    pub fn with_body(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status)
            .header("Content-Type", content_type)
            .body(body)
    }

    /// What Go's `http.Error` writes: the text plus a newline, as text/plain.
    pub fn go_error(status: u16, text: &str) -> Response {
        Response::with_body(status, "text/plain; charset=utf-8", format!("{text}\n"))
            .header("X-Content-Type-Options", "nosniff")
    }

    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }
}

/// The standard reason phrase of a status code.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        260 => "",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Stream {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(data),
            Stream::Tls(s) => s.write_all(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }

    /// Ends the connection politely: TLS close_notify, then FIN.
    fn close(&mut self) {
        match self {
            Stream::Plain(s) => {
                let _ = s.flush();
                let _ = s.shutdown(Shutdown::Write);
            }
            Stream::Tls(s) => {
                s.conn.send_close_notify();
                let _ = s.flush();
                let _ = s.sock.shutdown(Shutdown::Write);
            }
        }
    }
}

/// The server side of one connection, handed to the handler with the request.
pub struct Conn {
    stream: Stream,
    tcp: TcpStream,
    started: bool,
}

impl Conn {
    /// Sends a whole response (`Content-Length`, `Connection: close`).
    pub fn respond(&mut self, resp: Response) -> io::Result<()> {
        assert!(!self.started, "response already started");
        self.started = true;
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n",
            resp.status,
            reason_phrase(resp.status)
        );
        for (k, v) in &resp.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if resp.status != 204 && resp.status >= 200 {
            head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&resp.body);
        self.stream.write_all(&bytes)?;
        self.stream.flush()
    }

    /// Sends the head of a `Transfer-Encoding: chunked` response.
    pub fn start_chunked(&mut self, status: u16, headers: &[(&str, &str)]) -> io::Result<()> {
        assert!(!self.started, "response already started");
        self.started = true;
        let mut head = format!("HTTP/1.1 {} {}\r\n", status, reason_phrase(status));
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
        self.stream.write_all(head.as_bytes())?;
        self.stream.flush()
    }

    /// Sends `data` as one chunk and flushes it.
    pub fn send_chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut bytes = format!("{:x}\r\n", data.len()).into_bytes();
        bytes.extend_from_slice(data);
        bytes.extend_from_slice(b"\r\n");
        self.stream.write_all(&bytes)?;
        self.stream.flush()
    }

    /// Ends a chunked body cleanly (the zero-length chunk).
    pub fn finish_chunked(&mut self) -> io::Result<()> {
        self.stream.write_all(b"0\r\n\r\n")?;
        self.stream.flush()
    }

    /// True when the client has closed its side (or sent anything, which a client waiting on
    /// a response never does). Cheap; used by long-lived watches to notice a gone client.
    pub fn peer_closed(&self) -> bool {
        if self
            .tcp
            .set_read_timeout(Some(Duration::from_millis(1)))
            .is_err()
        {
            return true;
        }
        let mut buf = [0u8; 1];
        match self.tcp.peek(&mut buf) {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ),
        }
    }
}

/// What serves requests. Called on the connection's own thread.
pub type Handler = Arc<dyn Fn(&Request, &mut Conn) + Send + Sync>;

struct Inner {
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Handler,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    stopped: AtomicBool,
}

struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A running server. Stops on `stop()` or Drop.
pub struct HttpServer {
    inner: Arc<Inner>,
    acceptor: Mutex<Option<Acceptor>>,
}

/// How long a connection may sit without sending its request.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `come_back` keeps trying to rebind the port.
const REBIND_DEADLINE: Duration = Duration::from_secs(10);

impl HttpServer {
    /// Binds 127.0.0.1:0 and starts serving.
    pub fn start(tls: Option<Arc<rustls::ServerConfig>>, handler: Handler) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let inner = Arc::new(Inner {
            addr,
            tls,
            handler,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let server = HttpServer {
            inner,
            acceptor: Mutex::new(None),
        };
        server.spawn_acceptor(listener);
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    pub fn port(&self) -> u16 {
        self.inner.addr.port()
    }

    fn spawn_acceptor(&self, listener: TcpListener) {
        let stop = Arc::new(AtomicBool::new(false));
        let inner = self.inner.clone();
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fake-accept-{}", self.inner.addr.port()))
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(tcp) = conn else { continue };
                    let inner = inner.clone();
                    let _ = std::thread::Builder::new()
                        .name("fake-conn".into())
                        .spawn(move || serve_connection(&inner, tcp));
                }
                // The listener is dropped here: new connections are refused from now on.
            })
            .expect("spawn accept thread");
        *self.acceptor.lock().unwrap_or_else(|e| e.into_inner()) = Some(Acceptor { stop, thread });
    }

    /// Stops accepting (the port refuses connections) and cuts every open connection.
    pub fn go_away(&self) {
        let acceptor = self
            .acceptor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(acceptor) = acceptor {
            acceptor.stop.store(true, Ordering::SeqCst);
            // Wake the blocking accept(); the acceptor sees the flag and drops the listener.
            let _ = TcpStream::connect_timeout(&self.inner.addr, Duration::from_secs(2));
            let _ = acceptor.thread.join();
        }
        let conns: Vec<TcpStream> = self
            .inner
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, s)| s)
            .collect();
        for c in conns {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Listens again on the same port (after `go_away`). std sets SO_REUSEADDR on Unix, so
    /// TIME_WAIT does not block the bind; a retry loop covers anything transient.
    pub fn come_back(&self) {
        if self.inner.stopped.load(Ordering::SeqCst) {
            panic!("come_back after stop");
        }
        if self
            .acceptor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return;
        }
        let deadline = Instant::now() + REBIND_DEADLINE;
        let listener = loop {
            match TcpListener::bind(self.inner.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    // A retry pause for the OS to free the port, not a synchronization sleep.
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!(
                    "could not rebind {} within {REBIND_DEADLINE:?}: {e}",
                    self.inner.addr
                ),
            }
        };
        self.spawn_acceptor(listener);
    }

    /// Stops for good: refuses connections and cuts the open ones.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.go_away();
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_connection(inner: &Arc<Inner>, tcp: TcpStream) {
    if inner.stopped.load(Ordering::SeqCst) {
        return;
    }
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_read_timeout(Some(READ_TIMEOUT));
    let Ok(registered) = tcp.try_clone() else {
        return;
    };
    let id = inner.next_conn.fetch_add(1, Ordering::SeqCst);
    inner
        .conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, registered);
    let Ok(peek) = tcp.try_clone() else { return };
    match &inner.tls {
        Some(cfg) => {
            let Ok(server) = rustls::ServerConnection::new(cfg.clone()) else {
                return;
            };
            let mut tls = rustls::StreamOwned::new(server, tcp);
            if let Some(mut req) = read_request(&mut tls) {
                req.peer_cn = tls
                    .conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| cert_subject_cn(c.as_ref()));
                let mut conn = Conn {
                    stream: Stream::Tls(Box::new(tls)),
                    tcp: peek,
                    started: false,
                };
                (inner.handler)(&req, &mut conn);
                conn.stream.close();
            }
        }
        None => {
            let mut plain = tcp;
            if let Some(req) = read_request(&mut plain) {
                let mut conn = Conn {
                    stream: Stream::Plain(plain),
                    tcp: peek,
                    started: false,
                };
                (inner.handler)(&req, &mut conn);
                conn.stream.close();
            }
        }
    }
    inner
        .conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Reads one request (head and `Content-Length` or chunked body). `None` on any error,
/// including a failed TLS handshake.
fn read_request(stream: &mut impl Read) -> Option<Request> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end - 4]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), parse_query(q)),
        None => (target.clone(), Vec::new()),
    };
    let mut rest = buf[head_end..].to_vec();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        read_chunked_body(stream, rest)?
    } else {
        let len: usize = get("content-length")
            .map(|v| v.parse().ok())
            .unwrap_or(Some(0))?;
        while rest.len() < len {
            let n = stream.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    };
    Some(Request {
        method,
        target,
        path,
        query,
        headers,
        body,
        peer_cn: None,
    })
}

fn read_chunked_body(stream: &mut impl Read, mut buf: Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut fill = |buf: &mut Vec<u8>| -> Option<()> {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        Some(())
    };
    loop {
        let line_end = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            fill(&mut buf)?;
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        if size == 0 {
            return Some(body);
        }
        while buf.len() < size + 2 {
            fill(&mut buf)?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}
