//! The load generator and the Loki sink of `scripts/bench.sh` (issue 6).
//!
//! ```text
//! bench apiserver --mode storm|cold --events N --dir DIR [--token T]
//! bench floor --events N [--runs R]        (or: bench apiserver --floor ...)
//! bench loki [--expect N] [--down-until PATH]
//! bench hotpath --events N [--runs R]
//! bench memory [--runs R]
//! ```
//!
//! `apiserver` plays the API server over HTTPS on 127.0.0.1 (a CA and a server certificate
//! made by rcgen at startup; the CA is written to `DIR/ca.crt`). It renders N realistic
//! events (~1 KB each, with `managedFields`) once, before it prints `READY <port>`:
//!
//! - `storm`: the list is empty (resourceVersion "1"); a watch from resourceVersion RV streams
//!   every frame whose object is newer than RV (the first watch from "1": all N), in 64 KiB
//!   chunks, then keeps the stream open without frames until the client goes away or
//!   `timeoutSeconds` passes.
//! - `cold`: the cluster holds the N events: lists are served in pages of `limit` with
//!   `continue` tokens and one resourceVersion (N + 1); watches are idle streams.
//!
//! It prints one line per request to stdout with the Unix time in nanoseconds:
//! `WATCH <ns> rv=<rv> frames=<n>`, `STREAMED <ns> frames=<n> bytes=<b> secs=<s>`,
//! `LIST <ns> page=<k> items=<n>`.
//!
//! `floor` measures the generator alone: the same server streams the N frames to a plain
//! rustls client in the same process that reads and drops the bytes; prints
//! `FLOOR events=N bytes=B secs=S events_per_sec=E mib_per_sec=M` per run.
//!
//! `hotpath` runs, in this process and without sockets, what kube-event does per event on
//! the same N frames: parse (`scan::frame`), parse and offer to the Shipper (line, hash,
//! memory of shipped occurrences, batch, sealing push bodies of 1 MiB), the pusher's
//! encoding of those bodies as snappy protobuf (`LOKI_COMPRESSION=snappy`), and their gzip
//! (kube-event's `deflate.rs`; and flate2's levels 1 and 6, for comparison). It prints
//! ns/event and heap allocations/event per stage (best of `--runs`); run it under
//! `valgrind --tool=callgrind` for instruction counts.
//!
//! `loki` is a plain-HTTP sink on 127.0.0.1 for `POST /loki/api/v1/push` (snappy protobuf,
//! gzipped JSON or JSON): it answers 204 and counts entries. It prints `READY <port>`, a `PUSH` line per accepted push
//! and, when the count reaches `--expect`, a `DONE` line (with the time of that push). With
//! `--down-until PATH` it answers 503 to every push until PATH exists (Loki down).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const CHUNK: usize = 64 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        usage();
    };
    let opts = Opts::parse(&args[1..]);
    match cmd.as_str() {
        "apiserver" => apiserver(&opts),
        "floor" => floor(&opts),
        "loki" => loki(&opts),
        "hotpath" => hotpath(&opts),
        "memory" => memory(&opts),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bench apiserver --mode storm|cold --events N --dir DIR [--token T]\n       \
         bench floor --events N [--runs R]\n       \
         bench loki [--expect N] [--down-until PATH]\n       \
         bench hotpath --events N [--runs R]\n       \
         bench memory [--runs R]"
    );
    std::process::exit(2)
}

#[derive(Default)]
struct Opts {
    mode: String,
    events: usize,
    dir: Option<PathBuf>,
    token: String,
    runs: usize,
    expect: u64,
    down_until: Option<PathBuf>,
    floor: bool,
}

impl Opts {
    fn parse(args: &[String]) -> Opts {
        let mut o = Opts {
            mode: "storm".into(),
            events: 200_000,
            token: "bench-token".into(),
            runs: 3,
            ..Opts::default()
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().cloned().unwrap_or_else(|| usage());
            match a.as_str() {
                "--mode" => o.mode = val(),
                "--events" => o.events = val().parse().unwrap_or_else(|_| usage()),
                "--dir" => o.dir = Some(PathBuf::from(val())),
                "--token" => o.token = val(),
                "--runs" => o.runs = val().parse().unwrap_or_else(|_| usage()),
                "--expect" => o.expect = val().parse().unwrap_or_else(|_| usage()),
                "--down-until" => o.down_until = Some(PathBuf::from(val())),
                "--floor" => o.floor = true,
                _ => usage(),
            }
        }
        o
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Events

/// splitmix64: deterministic, fast, good enough to vary fields.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// RFC 3339 UTC, seconds precision, as the API server writes `metav1.Time`.
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

fn uuid(rng: &mut Rng, unique: u64) -> String {
    let a = rng.next();
    let b = rng.next();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 50),
        ((b << 24) | (unique & 0xff_ffff)) & 0xffff_ffff_ffff
    )
}

fn hex_suffix(rng: &mut Rng, len: usize) -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len)
        .map(|_| ALPHA[rng.below(ALPHA.len() as u64) as usize] as char)
        .collect()
}

const TEAMS: [&str; 10] = [
    "payments",
    "checkout",
    "search",
    "auth",
    "billing",
    "catalog",
    "shipping",
    "ml-serving",
    "ingest",
    "frontend",
];
const STAGES: [&str; 5] = ["prod", "staging", "dev", "qa", "canary"];
const APPS: [&str; 12] = [
    "api",
    "web",
    "worker",
    "redis",
    "postgres",
    "gateway",
    "scheduler",
    "indexer",
    "cache",
    "exporter",
    "consumer",
    "cron",
];

/// One event object as a list item (no `kind`/`apiVersion`), with `rv` as its resourceVersion.
/// `i` makes uid and name unique.
fn render_event(rng: &mut Rng, i: usize, rv: u64, now: i64, out: &mut Vec<u8>) {
    let ns = format!(
        "{}-{}",
        TEAMS[rng.below(10) as usize],
        STAGES[rng.below(5) as usize]
    );
    let app = rng.pick(&APPS);
    let node = format!("node-{:02}", rng.below(40));
    let count = 1 + rng.below(50);
    let first = now - 3000 + rng.below(2400) as i64;
    let last = first + (count as i64 - 1) * (10 + rng.below(50) as i64);
    let last = last.min(now);
    let ip = format!(
        "10.{}.{}.{}",
        rng.below(256),
        rng.below(256),
        2 + rng.below(250)
    );
    let rs_hash = hex_suffix(rng, 10);
    let container = app;
    let kind_roll = rng.below(100);
    // (kind, name, apiVersion, fieldPath, reason, type, message, component)
    let (kind, obj_name, api_version, field_path, reason, typ, message, component): (
        &str,
        String,
        &str,
        Option<String>,
        &str,
        &str,
        String,
        &str,
    ) = if kind_roll < 60 {
        let pod = format!("{app}-{rs_hash}-{}", hex_suffix(rng, 5));
        let fp = Some(format!("spec.containers{{{container}}}"));
        let image = format!(
            "registry.example.com/{}/{app}:1.{}.{}",
            ns.split('-').next().unwrap_or("x"),
            rng.below(40),
            rng.below(10)
        );
        match rng.below(7) {
            0 => {
                let m = format!(
                    "Back-off restarting failed container {container} in pod {pod}_{ns}({})",
                    uuid(rng, i as u64)
                );
                ("Pod", pod, "v1", fp, "BackOff", "Warning", m, "kubelet")
            }
            1 => {
                let m = format!(
                    "Successfully pulled image \\\"{image}\\\" in {}.{:03}s ({}.{:03}s including waiting). Image size: {} bytes.",
                    rng.below(9), rng.below(1000), 1 + rng.below(9), rng.below(1000), 10_000_000 + rng.below(400_000_000)
                );
                ("Pod", pod, "v1", fp, "Pulled", "Normal", m, "kubelet")
            }
            2 => {
                let m = format!("Created container: {container}");
                ("Pod", pod, "v1", fp, "Created", "Normal", m, "kubelet")
            }
            3 => {
                let m = format!("Started container {container}");
                ("Pod", pod, "v1", fp, "Started", "Normal", m, "kubelet")
            }
            4 => {
                let m = format!(
                    "Readiness probe failed: Get \\\"http://{ip}:8080/healthz\\\": dial tcp {ip}:8080: connect: connection refused"
                );
                ("Pod", pod, "v1", fp, "Unhealthy", "Warning", m, "kubelet")
            }
            5 => {
                let total = 5 + rng.below(60);
                let m = format!(
                    "0/{total} nodes are available: {} Insufficient cpu, {} Insufficient memory, 3 node(s) had untolerated taint {{node-role.kubernetes.io/control-plane: }}. preemption: 0/{total} nodes are available: 3 Preemption is not helpful for scheduling, {} No preemption victims found for incoming pod.",
                    rng.below(30), rng.below(30), total - 3
                );
                (
                    "Pod",
                    pod,
                    "v1",
                    None,
                    "FailedScheduling",
                    "Warning",
                    m,
                    "default-scheduler",
                )
            }
            _ => {
                let m = format!("Stopping container {container}");
                ("Pod", pod, "v1", fp, "Killing", "Normal", m, "kubelet")
            }
        }
    } else if kind_roll < 70 {
        let m = format!(
            "Scaled {} replica set {app}-{rs_hash} from {} to {}",
            if rng.below(2) == 0 { "up" } else { "down" },
            rng.below(10),
            rng.below(10)
        );
        (
            "Deployment",
            app.to_string(),
            "apps/v1",
            None,
            "ScalingReplicaSet",
            "Normal",
            m,
            "deployment-controller",
        )
    } else if kind_roll < 80 {
        let m = format!("Created pod: {app}-{rs_hash}-{}", hex_suffix(rng, 5));
        (
            "ReplicaSet",
            format!("{app}-{rs_hash}"),
            "apps/v1",
            None,
            "SuccessfulCreate",
            "Normal",
            m,
            "replicaset-controller",
        )
    } else if kind_roll < 90 {
        let job = format!("{app}-migrate-{}", 29_000_000 + rng.below(1_000_000));
        let (reason, m) = if rng.below(2) == 0 {
            (
                "SuccessfulCreate",
                format!("Created pod: {job}-{}", hex_suffix(rng, 5)),
            )
        } else {
            ("Completed", "Job completed".to_string())
        };
        (
            "Job",
            job,
            "batch/v1",
            None,
            reason,
            "Normal",
            m,
            "job-controller",
        )
    } else {
        let (reason, typ, m) = match rng.below(3) {
            0 => (
                "NodeNotReady",
                "Normal",
                format!("Node {node} status is now: NodeNotReady"),
            ),
            1 => (
                "Rebooted",
                "Warning",
                format!(
                    "Node {node} has been rebooted, boot id: {}",
                    uuid(rng, i as u64)
                ),
            ),
            _ => (
                "NodeHasDiskPressure",
                "Normal",
                format!("Node {node} status is now: NodeHasDiskPressure"),
            ),
        };
        (
            "Node",
            node.clone(),
            "v1",
            None,
            reason,
            typ,
            m,
            "node-controller",
        )
    };
    let namespace = if kind == "Node" { "default" } else { &ns };
    let uid = uuid(rng, i as u64);
    let obj_uid = uuid(rng, (i as u64) ^ 0x55_5555);
    let name = format!("{obj_name}.{:016x}", (rng.next() & !0xff_ffff) | i as u64);
    let (host, instance) = if component == "kubelet" {
        (format!(",\"host\":\"{node}\""), node.as_str())
    } else {
        (String::new(), "")
    };
    let manager = if component == "kubelet" {
        "kubelet"
    } else {
        "kube-controller-manager"
    };
    let t_first = rfc3339(first);
    let t_last = rfc3339(last);
    let fp = field_path
        .map(|f| format!(",\"fieldPath\":\"{f}\""))
        .unwrap_or_default();
    let obj_rv = 1_000_000 + rng.below(9_000_000);
    write!(
        out,
        concat!(
            "{{\"metadata\":{{\"name\":\"{name}\",\"namespace\":\"{namespace}\",\"uid\":\"{uid}\",",
            "\"resourceVersion\":\"{rv}\",\"creationTimestamp\":\"{t_first}\",",
            "\"managedFields\":[{{\"manager\":\"{manager}\",\"operation\":\"Update\",\"apiVersion\":\"v1\",",
            "\"time\":\"{t_last}\",\"fieldsType\":\"FieldsV1\",\"fieldsV1\":{{\"f:count\":{{}},",
            "\"f:firstTimestamp\":{{}},\"f:involvedObject\":{{}},\"f:lastTimestamp\":{{}},",
            "\"f:message\":{{}},\"f:reason\":{{}},\"f:reportingComponent\":{{}},",
            "\"f:reportingInstance\":{{}},\"f:source\":{{\"f:component\":{{}},\"f:host\":{{}}}},",
            "\"f:type\":{{}}}}}}]}},",
            "\"involvedObject\":{{\"kind\":\"{kind}\",\"namespace\":\"{namespace}\",\"name\":\"{obj_name}\",",
            "\"uid\":\"{obj_uid}\",\"apiVersion\":\"{api_version}\",\"resourceVersion\":\"{obj_rv}\"{fp}}},",
            "\"reason\":\"{reason}\",\"message\":\"{message}\",",
            "\"source\":{{\"component\":\"{component}\"{host}}},",
            "\"firstTimestamp\":\"{t_first}\",\"lastTimestamp\":\"{t_last}\",\"count\":{count},",
            "\"type\":\"{typ}\",\"eventTime\":null,\"reportingComponent\":\"{component}\",",
            "\"reportingInstance\":\"{instance}\"}}"
        ),
        name = name,
        namespace = namespace,
        uid = uid,
        rv = rv,
        t_first = t_first,
        t_last = t_last,
        manager = manager,
        kind = kind,
        obj_name = obj_name,
        obj_uid = obj_uid,
        api_version = api_version,
        obj_rv = obj_rv,
        fp = fp,
        reason = reason,
        message = message,
        component = component,
        host = host,
        typ = typ,
        count = count,
        instance = instance,
    )
    .expect("write to a Vec");
}

/// The pre-rendered data the server sends.
struct Data {
    mode: Mode,
    token: String,
    /// storm: the watch frames back to back; cold: the list items back to back.
    bytes: Vec<u8>,
    /// Start of object i in `bytes`, and `bytes.len()` at the end (N + 1 entries).
    offsets: Vec<usize>,
    /// Close a watch after the frames (the floor's client reads to the end).
    close_after_storm: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Storm,
    Cold,
}

impl Data {
    fn render(mode: Mode, n: usize, token: &str) -> Data {
        assert!(n < 1 << 24, "at most 16M events");
        let mut rng = Rng(0x6b75_6265_2d65_7665);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut bytes = Vec::with_capacity(n * 1200);
        let mut offsets = Vec::with_capacity(n + 1);
        let mut obj = Vec::with_capacity(4096);
        for i in 0..n {
            offsets.push(bytes.len());
            obj.clear();
            match mode {
                Mode::Storm => {
                    // Watch frames: resourceVersions 2..=N+1 (the empty list is at 1).
                    render_event(&mut rng, i, i as u64 + 2, now, &mut obj);
                    bytes.extend_from_slice(
                        b"{\"type\":\"ADDED\",\"object\":{\"kind\":\"Event\",\"apiVersion\":\"v1\",",
                    );
                    bytes.extend_from_slice(&obj[1..]);
                    bytes.extend_from_slice(b"}\n");
                }
                Mode::Cold => {
                    // List items: resourceVersions 1..=N, the list at N+1.
                    render_event(&mut rng, i, i as u64 + 1, now, &mut obj);
                    bytes.extend_from_slice(&obj);
                }
            }
        }
        offsets.push(bytes.len());
        Data {
            mode,
            token: token.to_string(),
            bytes,
            offsets,
            close_after_storm: false,
        }
    }

    fn n(&self) -> usize {
        self.offsets.len() - 1
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1, just enough

struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
}

impl Request {
    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one request head (the requests here have no body, or the caller reads it).
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_ascii_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (
            p.to_string(),
            q.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        ),
        None => (target, Vec::new()),
    };
    Ok(Some(Request {
        method,
        path,
        query,
        headers,
    }))
}

fn respond(w: &mut impl Write, status: &str, ctype: &str, body: &[u8]) -> io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    w.write_all(body)?;
    w.flush()
}

// ---------------------------------------------------------------------------------------------
// The API server

struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn make_pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kube-event-bench-ca");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let mut leaf = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kube-apiserver");
    leaf.distinguished_name = dn;
    leaf.subject_alt_names = vec![
        SanType::IpAddress(Ipv4Addr::LOCALHOST.into()),
        SanType::DnsName("localhost".try_into().expect("dns name")),
    ];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("server key");
    let cert = leaf
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("server cert");
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key");
    // The kube-apiserver is Go, whose crypto/tls picks the cipher suite itself (since Go 1.17,
    // ignoring the client's order): AES-128-GCM first on a CPU with AES instructions ("AES-128
    // comes before AES-256", go.dev/blog/tls-cipher-suites). rustls servers follow the client's
    // order, and rustls clients offer AES-256-GCM first, which made the benchmark decrypt the
    // watch stream with AES-256 (40 % more AES rounds) where a real cluster uses AES-128.
    let mut go_order = rustls::crypto::ring::default_provider();
    go_order.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        _ => 2,
    });
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(go_order))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server cert and key");
    server.ignore_client_order = true;
    Pki {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}

fn apiserver(o: &Opts) {
    if o.floor {
        return floor(o);
    }
    let mode = match o.mode.as_str() {
        "storm" => Mode::Storm,
        "cold" => Mode::Cold,
        _ => usage(),
    };
    let dir = o.dir.clone().unwrap_or_else(|| usage());
    let pki = make_pki();
    std::fs::create_dir_all(&dir).expect("create --dir");
    std::fs::write(dir.join("ca.crt"), &pki.ca_pem).expect("write ca.crt");
    let t = Instant::now();
    let data = Arc::new(Data::render(mode, o.events, &o.token));
    eprintln!(
        "rendered {} events, {} bytes ({} bytes/event) in {:.2}s",
        data.n(),
        data.bytes.len(),
        data.bytes.len() / data.n().max(1),
        t.elapsed().as_secs_f64()
    );
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    println!("READY {port}");
    serve_api(listener, pki.server, data);
}

fn serve_api(listener: TcpListener, tls: Arc<rustls::ServerConfig>, data: Arc<Data>) {
    for tcp in listener.incoming() {
        let Ok(tcp) = tcp else { continue };
        let tls = tls.clone();
        let data = data.clone();
        std::thread::spawn(move || {
            let _ = tcp.set_nodelay(true);
            let Ok(conn) = rustls::ServerConnection::new(tls) else {
                return;
            };
            let stream = rustls::StreamOwned::new(conn, tcp);
            if let Err(e) = api_connection(stream, &data) {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::UnexpectedEof
                ) {
                    eprintln!("apiserver connection: {e}");
                }
            }
        });
    }
}

type TlsStream = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

fn api_connection(stream: TlsStream, data: &Data) -> io::Result<()> {
    let mut r = BufReader::with_capacity(16 * 1024, stream);
    loop {
        let Some(req) = read_head(&mut r)? else {
            return Ok(());
        };
        let authorized = req
            .header("authorization")
            .is_some_and(|a| a.strip_prefix("Bearer ") == Some(data.token.as_str()));
        let s = r.get_mut();
        if !authorized {
            respond(
                s,
                "401 Unauthorized",
                "application/json",
                br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#,
            )?;
            continue;
        }
        if req.method != "GET" || req.path != "/api/v1/events" {
            respond(s, "404 Not Found", "text/plain", b"404 page not found\n")?;
            continue;
        }
        if req.query("watch").is_some_and(|w| w == "1" || w == "true") {
            if !watch(&mut r, &req, data)? {
                return Ok(());
            }
        } else {
            list(s, &req, data)?;
        }
    }
}

fn list(s: &mut TlsStream, req: &Request, data: &Data) -> io::Result<()> {
    let n = data.n();
    let mut limit = n.max(1);
    let (list_rv, items) = match data.mode {
        Mode::Storm => ("1".to_string(), 0..0),
        Mode::Cold => {
            if let Some(l) = req
                .query("limit")
                .and_then(|l| l.parse::<usize>().ok())
                .filter(|&l| l > 0)
            {
                limit = l;
            }
            let start: usize = req
                .query("continue")
                .and_then(|c| c.strip_prefix("bench-"))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0)
                .min(n);
            ((n + 1).to_string(), start..(start + limit).min(n))
        }
    };
    let mut body =
        Vec::with_capacity(256 + data.offsets[items.end] - data.offsets[items.start] + items.len());
    write!(
        body,
        "{{\"kind\":\"EventList\",\"apiVersion\":\"v1\",\"metadata\":{{\"resourceVersion\":\"{list_rv}\""
    )?;
    if items.end < n && data.mode == Mode::Cold {
        write!(body, ",\"continue\":\"bench-{}\"", items.end)?;
    }
    body.extend_from_slice(b"},\"items\":[");
    for i in items.clone() {
        if i > items.start {
            body.push(b',');
        }
        body.extend_from_slice(&data.bytes[data.offsets[i]..data.offsets[i + 1]]);
    }
    body.extend_from_slice(b"]}");
    println!(
        "LIST {} page={} items={}",
        now_ns(),
        items.start / limit,
        items.len()
    );
    respond(s, "200 OK", "application/json", &body)
}

/// Serves one watch. `Ok(false)`: the connection is done.
fn watch(r: &mut BufReader<TlsStream>, req: &Request, data: &Data) -> io::Result<bool> {
    let t0 = Instant::now();
    let rv = req.query("resourceVersion").unwrap_or("");
    // Storm frame i carries resourceVersion i + 2: a watch from RV gets the frames after it.
    let from = match data.mode {
        Mode::Storm => rv
            .parse::<usize>()
            .map(|v| v.saturating_sub(1))
            .unwrap_or(0)
            .min(data.n()),
        Mode::Cold => data.n(),
    };
    println!("WATCH {} rv={rv} frames={}", now_ns(), data.n() - from);
    let s = r.get_mut();
    s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    s.flush()?;
    let frames = &data.bytes[data.offsets[from]..];
    if !frames.is_empty() {
        let mut chunk = Vec::with_capacity(CHUNK + 16);
        for piece in frames.chunks(CHUNK) {
            chunk.clear();
            write!(chunk, "{:x}\r\n", piece.len())?;
            chunk.extend_from_slice(piece);
            chunk.extend_from_slice(b"\r\n");
            s.write_all(&chunk)?;
        }
        s.flush()?;
        println!(
            "STREAMED {} frames={} bytes={} secs={:.3}",
            now_ns(),
            data.n() - from,
            frames.len(),
            t0.elapsed().as_secs_f64()
        );
    }
    if data.close_after_storm {
        s.write_all(b"0\r\n\r\n")?;
        s.flush()?;
        s.conn.send_close_notify();
        s.flush()?;
        return Ok(false);
    }
    // Idle: no more frames until the client goes away or timeoutSeconds passes.
    let timeout = req
        .query("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800)
        .max(1);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let s = r.get_mut();
            s.write_all(b"0\r\n\r\n")?;
            s.flush()?;
            return Ok(true);
        }
        r.get_ref().sock.set_read_timeout(Some(left))?;
        match r.get_mut().read(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(_) => {} // a client does not send on a watch connection; ignore
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Ok(false),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The floor: the generator streaming to a client that drops the bytes

fn floor(o: &Opts) {
    let pki = make_pki();
    let t = Instant::now();
    let mut data = Data::render(Mode::Storm, o.events, &o.token);
    data.close_after_storm = true;
    let data = Arc::new(data);
    eprintln!(
        "rendered {} events, {} bytes in {:.2}s",
        data.n(),
        data.bytes.len(),
        t.elapsed().as_secs_f64()
    );
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let addr = listener.local_addr().expect("local addr");
    {
        let tls = pki.server.clone();
        let data = data.clone();
        std::thread::spawn(move || serve_api(listener, tls, data));
    }
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).expect("CA pem"))
        .expect("CA into roots");
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let mut best = 0f64;
    for _ in 0..o.runs.max(1) {
        let (bytes, secs) = floor_run(addr, &client, &o.token).expect("floor run");
        let eps = data.n() as f64 / secs;
        best = best.max(eps);
        println!(
            "FLOOR events={} bytes={bytes} secs={secs:.3} events_per_sec={eps:.0} mib_per_sec={:.0}",
            data.n(),
            bytes as f64 / secs / (1 << 20) as f64
        );
    }
    println!("FLOOR_BEST events_per_sec={best:.0}");
}

fn floor_run(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    token: &str,
) -> io::Result<(u64, f64)> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let conn = rustls::ClientConnection::new(client.clone(), name).map_err(io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    // The handshake is not part of the floor.
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    let t = Instant::now();
    write!(
        s,
        "GET /api/v1/events?watch=1&resourceVersion=1&timeoutSeconds=290 HTTP/1.1\r\n\
         Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
    )?;
    s.flush()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
    }
    Ok((total, t.elapsed().as_secs_f64()))
}

// ---------------------------------------------------------------------------------------------
// The Loki sink

#[derive(serde::Deserialize)]
struct Push {
    streams: Vec<PushStream>,
}

#[derive(serde::Deserialize)]
struct PushStream {
    values: Vec<serde::de::IgnoredAny>,
}

#[derive(Default)]
struct SinkState {
    entries: u64,
    pushes: u64,
    compressed: u64,
    uncompressed: u64,
    done: bool,
}

struct Sink {
    state: Mutex<SinkState>,
    expect: u64,
    down_until: Option<PathBuf>,
    refused: AtomicU64,
}

impl Sink {
    /// Counts a push of `n` entries (`compressed` bytes on the wire, `uncompressed` decoded)
    /// and prints its `PUSH` line, and `DONE` at the N-th entry.
    fn accepted(&self, n: u64, compressed: usize, uncompressed: usize) {
        let at = now_ns();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.entries += n;
        st.pushes += 1;
        st.compressed += compressed as u64;
        st.uncompressed += uncompressed as u64;
        println!(
            "PUSH {at} entries={} pushes={} compressed={} uncompressed={} this={n}",
            st.entries, st.pushes, st.compressed, st.uncompressed
        );
        if self.expect > 0 && !st.done && st.entries >= self.expect {
            st.done = true;
            println!(
                "DONE {at} entries={} pushes={} compressed={} uncompressed={}",
                st.entries, st.pushes, st.compressed, st.uncompressed
            );
        }
    }
}

fn loki(o: &Opts) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let sink = Arc::new(Sink {
        state: Mutex::new(SinkState::default()),
        expect: o.expect,
        down_until: o.down_until.clone(),
        refused: AtomicU64::new(0),
    });
    println!("READY {port}");
    for tcp in listener.incoming() {
        let Ok(tcp) = tcp else { continue };
        let sink = sink.clone();
        std::thread::spawn(move || {
            let _ = tcp.set_nodelay(true);
            if let Err(e) = sink_connection(tcp, &sink) {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) {
                    eprintln!("loki connection: {e}");
                }
            }
        });
    }
}

fn sink_connection(tcp: TcpStream, sink: &Sink) -> io::Result<()> {
    let mut w = tcp.try_clone()?;
    let mut r = BufReader::with_capacity(256 * 1024, tcp);
    let mut body = Vec::new();
    let mut plain = Vec::new();
    loop {
        let Some(req) = read_head(&mut r)? else {
            return Ok(());
        };
        body.clear();
        if req
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            read_chunked(&mut r, &mut body)?;
        } else {
            let len: usize = req
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            body.resize(len, 0);
            r.read_exact(&mut body)?;
        }
        if req.method != "POST" || req.path != "/loki/api/v1/push" {
            respond(
                &mut w,
                "404 Not Found",
                "text/plain",
                b"404 page not found\n",
            )?;
            continue;
        }
        if let Some(p) = &sink.down_until {
            if !p.exists() {
                if sink.refused.fetch_add(1, Ordering::Relaxed) == 0 {
                    println!("REFUSED {} (down until {})", now_ns(), p.display());
                }
                respond(
                    &mut w,
                    "503 Service Unavailable",
                    "text/plain",
                    b"Ingester not ready\n",
                )?;
                continue;
            }
        }
        let json_body = req
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json"));
        if !json_body {
            // Snappy protobuf (LOKI_COMPRESSION=snappy), as Loki reads it.
            let counted = snap::raw::Decoder::new()
                .decompress_vec(&body)
                .map_err(|e| format!("snappy: {e}"))
                .and_then(|raw| Ok((protobuf_entries(&raw)?, raw.len())));
            let (n, raw_len) = match counted {
                Ok(c) => c,
                Err(e) => {
                    respond(
                        &mut w,
                        "400 Bad Request",
                        "text/plain",
                        format!("{e}\n").as_bytes(),
                    )?;
                    continue;
                }
            };
            sink.accepted(n, body.len(), raw_len);
            w.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")?;
            w.flush()?;
            continue;
        }
        let gz = req
            .header("content-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
        let json: &[u8] = if gz {
            plain.clear();
            if let Err(e) = flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut plain) {
                respond(
                    &mut w,
                    "400 Bad Request",
                    "text/plain",
                    format!("gzip: {e}\n").as_bytes(),
                )?;
                continue;
            }
            &plain
        } else {
            &body
        };
        let push: Push = match serde_json::from_slice(json) {
            Ok(p) => p,
            Err(e) => {
                respond(
                    &mut w,
                    "400 Bad Request",
                    "text/plain",
                    format!("json: {e}\n").as_bytes(),
                )?;
                continue;
            }
        };
        let n: u64 = push.streams.iter().map(|s| s.values.len() as u64).sum();
        sink.accepted(n, body.len(), json.len());
        w.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")?;
        w.flush()?;
    }
}

/// The entries of a protobuf `PushRequest` (streams = 1, a stream's entries = 2), counted
/// without decoding them.
fn protobuf_entries(mut b: &[u8]) -> Result<u64, String> {
    fn varint(b: &mut &[u8]) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&c, rest) = b.split_first().ok_or("protobuf: cut varint")?;
            *b = rest;
            v |= u64::from(c & 0x7f) << shift;
            if c < 0x80 {
                return Ok(v);
            }
        }
        Err("protobuf: long varint".into())
    }
    fn field<'a>(b: &mut &'a [u8]) -> Result<(u64, &'a [u8]), String> {
        let key = varint(b)?;
        if key & 7 != 2 {
            return Err(format!("protobuf: unexpected wire type {}", key & 7));
        }
        let n = varint(b)? as usize;
        if n > b.len() {
            return Err("protobuf: cut field".into());
        }
        let (v, rest) = b.split_at(n);
        *b = rest;
        Ok((key >> 3, v))
    }
    let mut n = 0;
    while !b.is_empty() {
        let (f, mut stream) = field(&mut b)?;
        if f != 1 {
            continue;
        }
        while !stream.is_empty() {
            let (f, _) = field(&mut stream)?;
            n += u64::from(f == 2);
        }
    }
    Ok(n)
}

fn read_chunked(r: &mut impl BufRead, out: &mut Vec<u8>) -> io::Result<()> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad chunk");
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let size = line.trim().split(';').next().unwrap_or("");
        let n = usize::from_str_radix(size, 16).map_err(|_| bad())?;
        if n == 0 {
            // Trailers until the empty line.
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(());
                }
            }
        }
        let at = out.len();
        out.resize(at + n, 0);
        r.read_exact(&mut out[at..])?;
        line.clear();
        r.read_line(&mut line)?;
    }
}

// ---------------------------------------------------------------------------------------------
// hotpath: the per-event work in one thread, no sockets

/// Counts heap allocations while `COUNTING` is set (only `hotpath` sets it).
struct CountingAlloc;

static COUNTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { std::alloc::System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Runs `f` `runs` times; the fastest run's (ns, allocations).
fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (u128, u64, T) {
    let mut best: Option<(u128, u64, T)> = None;
    for _ in 0..runs.max(1) {
        ALLOCS.store(0, Ordering::Relaxed);
        COUNTING.store(true, Ordering::Relaxed);
        let t = Instant::now();
        let out = f();
        let ns = t.elapsed().as_nanos();
        COUNTING.store(false, Ordering::Relaxed);
        let allocs = ALLOCS.load(Ordering::Relaxed);
        if best.as_ref().is_none_or(|b| ns < b.0) {
            best = Some((ns, allocs, out));
        }
    }
    best.expect("one run")
}

/// The work whose time is waiting for memory, which instruction counts do not see: sealing a
/// batch whose arena the cache no longer holds (as in a storm, where a 1 MB arena outgrows
/// the watcher's L2 before it is sealed), and the checksums of a spooled body. Best of
/// `runs`, each the mean of many.
fn memory(o: &Opts) {
    use kube_event::batch::{Batch, Format, Line, Schema};
    use kube_event::event::Labels;
    let schema = Schema {
        job: "kube-event".into(),
        static_labels: vec![],
        keys: vec!["namespace".into(), "kind".into(), "type".into()],
        format: Format::Protobuf,
    };
    let kinds = ["Pod", "Node", "Deployment", "ReplicaSet", "Job"];
    let types = ["Normal", "Warning"];
    let namespaces: Vec<String> = (0..50).map(|i| format!("namespace-{i}")).collect();
    let mut batch = Batch::new(Format::Protobuf);
    let mut evict = vec![0u8; 32 << 20];
    let mut body = Vec::new();
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let (entries, rounds) = (2_000, 50);
    let mut best = f64::MAX;
    for _ in 0..o.runs.max(1) {
        let mut total = 0.0;
        for round in 0..rounds {
            for i in 0..entries {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let ns = &namespaces[(x >> 8) as usize % namespaces.len()];
                let kind = kinds[(x >> 20) as usize % kinds.len()];
                let type_ = types[(x >> 30) as usize % types.len()];
                // ~520 bytes, as the storm's lines.
                let line = format!(
                    "{{\"time\":\"2026-11-26T10:{:02}:{:02}Z\",\"type\":\"{type_}\",\"reason\":\"BackOff\",\
                     \"namespace\":\"{ns}\",\"kind\":\"{kind}\",\"name\":\"app-{:x}\",\"message\":\
                     \"Back-off restarting failed container app in pod app-{:x}_{ns}({:016x}) {}\",\
                     \"count\":{i},\"first_seen\":\"2026-11-26T09:00:00Z\",\"component\":\"kubelet\",\
                     \"host\":\"node-{}\",\"event_uid\":\"{:016x}-{:016x}\",\"event_name\":\"app-{:x}.{:x}\",\
                     \"object_uid\":\"{:016x}-{:016x}\"}}",
                    i / 60 % 60,
                    i % 60,
                    x & 0xffff,
                    x >> 40,
                    x.rotate_left(7),
                    "x".repeat(100),
                    x % 7,
                    x,
                    x.rotate_left(17),
                    x >> 30,
                    x & 0xffff_ffff,
                    x.rotate_left(29),
                    x.rotate_left(41),
                );
                let labels = Labels {
                    values: [ns.as_str(), kind, type_, "", "", ""],
                    len: 3,
                };
                let nanos = 1_700_000_000_000_000_000 + (round * entries + i) as i64 * 1_000;
                batch.push(labels, nanos, Line::Plain(&line), None);
            }
            for b in evict.iter_mut().step_by(64) {
                *b = b.wrapping_add(1);
            }
            let t = Instant::now();
            let sealed = batch.seal(&schema, std::mem::take(&mut body));
            total += t.elapsed().as_secs_f64();
            body = sealed.body;
        }
        best = best.min(total / (rounds * entries) as f64);
    }
    std::hint::black_box(&evict);
    println!(
        "seal, cold:    {:>8.0} ns/entry ({entries} entries, {} bytes of protobuf)",
        best * 1e9,
        body.len()
    );
    for (name, f) in [
        (
            "hash64",
            (|b: &[u8]| kube_event::hash::hash64(0, b)) as fn(&[u8]) -> u64,
        ),
        ("fingerprint", kube_event::hash::fingerprint),
    ] {
        let mut best = f64::MAX;
        for _ in 0..o.runs.max(1) {
            let t = Instant::now();
            for _ in 0..50 {
                std::hint::black_box(f(std::hint::black_box(&body)));
            }
            best = best.min(t.elapsed().as_secs_f64() / 50.0);
        }
        println!("{name:<14} {:>8.1} us per {} bytes", best * 1e6, body.len());
    }
}

fn hotpath(o: &Opts) {
    let data = Data::render(Mode::Storm, o.events, &o.token);
    let n = data.n();
    let frames: Vec<&[u8]> = (0..n)
        .map(|i| &data.bytes[data.offsets[i]..data.offsets[i + 1] - 1])
        .collect();
    let report = |stage: &str, ns: u128, allocs: u64, extra: String| {
        println!(
            "{stage:<14} {:>8.0} ns/event {:>6.2} allocs/event {extra}",
            ns as f64 / n as f64,
            allocs as f64 / n as f64
        );
    };
    println!(
        "hotpath: {n} frames, {} bytes ({} bytes/frame), best of {} runs",
        data.bytes.len(),
        data.bytes.len() / n.max(1),
        o.runs
    );
    let (ns, allocs, added) = best_of(o.runs, || stage_parse(&frames));
    assert_eq!(added, n);
    report("parse", ns, allocs, String::new());
    // LOKI_COMPRESSION=snappy (the default): batches sealed as protobuf, then compressed.
    let (ns, allocs, protos) = best_of(o.runs, || stage_offer_protobuf(&frames));
    let proto: usize = protos.iter().map(Vec::len).sum();
    report(
        "parse+offer pb",
        ns,
        allocs,
        format!("({} protobuf bodies, {proto} bytes)", protos.len()),
    );
    let (ns, allocs, wire) = best_of(o.runs, || stage_snappy(&protos));
    report(
        "snappy",
        ns,
        allocs,
        format!("({wire} bytes, {:.1}x)", proto as f64 / wire.max(1) as f64),
    );
    // LOKI_COMPRESSION=gzip or none: batches sealed as JSON (then gzipped).
    let (ns, allocs, bodies) = best_of(o.runs, || stage_offer(&frames));
    let raw: usize = bodies.iter().map(Vec::len).sum();
    report(
        "parse+offer",
        ns,
        allocs,
        format!("({} JSON bodies, {raw} bytes)", bodies.len()),
    );
    // kube-event's own encoder (`deflate.rs`), then flate2's (miniz_oxide) for comparison.
    let gzips: [(&str, Option<u32>); 3] = [
        ("gzip", None),
        ("flate2 level 1", Some(1)),
        ("flate2 level 6", Some(6)),
    ];
    for (name, level) in gzips {
        let (ns, allocs, zipped) = best_of(o.runs, || match level {
            None => stage_gzip(&bodies),
            Some(level) => stage_flate2(&bodies, level),
        });
        report(
            name,
            ns,
            allocs,
            format!(
                "({zipped} bytes, {:.1}x)",
                raw as f64 / zipped.max(1) as f64
            ),
        );
    }
}

// The stages are functions of their own so that callgrind's inclusive costs name them.

/// What the watcher does to a frame before it knows whether it ships it.
#[inline(never)]
fn stage_parse(frames: &[&[u8]]) -> usize {
    let mut added = 0usize;
    for f in frames {
        let frame = kube_event::scan::frame(f).expect("a frame");
        added += usize::from(&*frame.kind == "ADDED");
        std::hint::black_box(&frame);
    }
    added
}

/// The watcher's whole per-frame work (as `watcher.rs` does it), with the JSON push bodies
/// the queue seals (1 MiB each, as BATCH_MAX_BYTES by default).
#[inline(never)]
fn stage_offer(frames: &[&[u8]]) -> Vec<Vec<u8>> {
    offer(frames, kube_event::batch::Format::Json)
}

/// The same, with batches sealed as protobuf (`LOKI_COMPRESSION=snappy`).
#[inline(never)]
fn stage_offer_protobuf(frames: &[&[u8]]) -> Vec<Vec<u8>> {
    offer(frames, kube_event::batch::Format::Protobuf)
}

fn offer(frames: &[&[u8]], format: kube_event::batch::Format) -> Vec<Vec<u8>> {
    use kube_event::queue::Queue;
    use kube_event::ship::{Output, Settings, Shipper};

    let schema = kube_event::batch::Schema {
        job: "kube-event".into(),
        static_labels: vec![("cluster".into(), "bench".into())],
        keys: vec!["namespace".into(), "kind".into(), "type".into()],
        format,
    };
    let q = Arc::new(Queue::new(
        Duration::from_secs(3600),
        1 << 20,
        schema,
        String::new(),
    ));
    let settings = Settings::default();
    let stats = Arc::new(kube_event::stats::Stats::default());
    let mut shipper = Shipper::new(Output::Loki(q.clone()), stats, settings, Default::default());
    let mut rv = String::new();
    let mut bodies: Vec<Vec<u8>> = Vec::with_capacity(frames.len() / 500 + 2);
    for (i, f) in frames.iter().enumerate() {
        let frame = kube_event::scan::frame(f).expect("a frame");
        shipper
            .offer_event(&frame.object, None, &mut rv)
            .expect("no stdout");
        shipper.advance("", &rv);
        if i % 1024 == 1023 {
            bodies.extend(q.take().sealed.into_iter().map(|(b, _)| b.body));
        }
    }
    q.close(Instant::now());
    bodies.extend(q.take().sealed.into_iter().map(|(b, _)| b.body));
    bodies
}

/// The pusher's compression of protobuf bodies with `LOKI_COMPRESSION=snappy` (the
/// default), with one reused encoder as the pusher keeps; returns the compressed size.
#[inline(never)]
fn stage_snappy(bodies: &[Vec<u8>]) -> usize {
    let mut e = kube_event::proto::Encoder::default();
    let mut wire = Vec::new();
    bodies
        .iter()
        .map(|b| {
            e.compress_into(b, &mut wire).expect("a body under 4 GiB");
            wire.len()
        })
        .sum()
}

/// The pusher's compression of the bodies (one reused gzip state, as the pusher keeps);
/// returns the compressed size.
#[inline(never)]
fn stage_gzip(bodies: &[Vec<u8>]) -> usize {
    let mut z = kube_event::loki::Gzip::default();
    let mut out = Vec::new();
    bodies
        .iter()
        .map(|b| {
            z.compress_into(b, &mut out);
            out.len()
        })
        .sum()
}

/// The same bodies deflated by flate2 at `level` (one reused state; no gzip framing).
#[inline(never)]
fn stage_flate2(bodies: &[Vec<u8>], level: u32) -> usize {
    let mut z = flate2::Compress::new(flate2::Compression::new(level), false);
    let mut out = Vec::new();
    bodies
        .iter()
        .map(|b| {
            z.reset();
            out.clear();
            out.reserve(b.len() / 2 + 64);
            loop {
                let done = z.total_in() as usize;
                match z.compress_vec(&b[done..], &mut out, flate2::FlushCompress::Finish) {
                    Ok(flate2::Status::StreamEnd) => break,
                    Ok(_) => out.reserve(out.capacity().max(4096)),
                    Err(e) => panic!("deflate in memory: {e}"),
                }
            }
            out.len()
        })
        .sum()
}
