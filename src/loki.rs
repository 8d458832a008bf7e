//! Everything that knows Loki: the push request, which answers mean success, retry or
//! rejection, and how a rejected batch can be fixed (protocols.md 5). Only this file knows
//! Loki's status codes and error texts.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use log::{info, warn};

use crate::batch::Format;
use crate::config;

/// What a push answer means.
#[derive(Debug, PartialEq, Eq)]
pub enum Class {
    /// Any 2xx (204 normally; 260 when ingestion is blocked, which Loki counts as accepted).
    Accepted,
    /// Try the same batch again later: 429, 5xx, connection errors, and the answers that mean
    /// kube-event or the proxy in front of Loki is misconfigured (401, 403, 404), which an
    /// operator fixes without the data having to be thrown away.
    Retry,
    /// Loki will never take this batch as it is (400, 413, 422, other 4xx): keep it aside.
    Reject,
}

pub fn classify(status: u16) -> Class {
    match status {
        200..=299 => Class::Accepted,
        401 | 403 | 404 | 408 | 429 => Class::Retry,
        500..=599 => Class::Retry,
        _ => Class::Reject,
    }
}

/// An HTTP client for one Loki push URL, with its tenant and credentials.
pub struct Client {
    agent: ureq::Agent,
    url: String,
    /// `LOKI_COMPRESSION`: how bodies go out (snappy protobuf, gzipped JSON or JSON).
    wire: Encoding,
    tenant: Option<String>,
    basic: Option<String>,
    bearer: Option<BearerFile>,
    /// Made at the first compression after start or idle: ~330 KB of deflate tables.
    zip: Option<Gzip>,
    /// The same for snappy protobuf: snappy's table and the transcoder's buffers.
    proto: Option<crate::proto::Encoder>,
}

/// The gzip encoder, kept from one push to the next: its search's table (32 KiB) would
/// otherwise be allocated and faulted in again for every batch.
#[derive(Default)]
pub struct Gzip {
    deflate: crate::deflate::Encoder,
}

impl Gzip {
    /// `body` as a gzip member (RFC 1952: a 10-byte header, raw deflate, CRC-32 and length),
    /// into `out` (cleared first). A body of typical events shrinks 3.3 times (`deflate.rs`).
    pub fn compress_into(&mut self, body: &[u8], out: &mut Vec<u8>) {
        // No flags, no time, XFL 0, OS 255 (unknown): what flate2's encoder writes.
        const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        out.clear();
        out.extend_from_slice(&HEADER);
        self.deflate.compress(body, out);
        let mut crc = flate2::Crc::new();
        crc.update(body);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        // ISIZE: the length modulo 2^32 (RFC 1952 2.3.1).
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    }
}

/// How a push body is held (in the spool, in memory) and sent (`LOKI_COMPRESSION`): as the
/// JSON text (`none`), gzipped JSON (`gzip`), or snappy protobuf (`snappy`, `proto.rs`). A
/// batch is compressed once, before it is spooled, so the spool is 2-3x smaller and a retry
/// or a drain after an outage compresses nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Gzip,
    Snappy,
}

impl Encoding {
    /// The word in a spool file's header.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Gzip => "gzip",
            Encoding::Snappy => "snappy",
        }
    }

    /// How batches are sealed for this encoding: protobuf for snappy, JSON otherwise.
    pub fn sealed_as(self) -> Format {
        match self {
            Encoding::Snappy => Format::Protobuf,
            Encoding::Json | Encoding::Gzip => Format::Json,
        }
    }

    pub fn from_name(s: &str) -> Option<Encoding> {
        match s {
            "json" => Some(Encoding::Json),
            "gzip" => Some(Encoding::Gzip),
            "snappy" => Some(Encoding::Snappy),
            _ => None,
        }
    }
}

/// The JSON text of a body held as `enc` (a copy unless it is JSON): for re-stamping a
/// rejected batch, for keeping it readable in `rejected/`, and for sending it under another
/// `LOKI_COMPRESSION` than it was spooled with.
pub fn json_text(body: &[u8], enc: Encoding) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    match enc {
        Encoding::Json => Ok(std::borrow::Cow::Borrowed(body)),
        Encoding::Gzip => {
            use std::io::Read;
            let mut out = Vec::with_capacity(body.len() * 4);
            flate2::bufread::GzDecoder::new(body)
                .read_to_end(&mut out)
                .map_err(|e| format!("cannot decompress the gzipped body: {e}"))?;
            Ok(std::borrow::Cow::Owned(out))
        }
        Encoding::Snappy => crate::proto::json_text(body).map(std::borrow::Cow::Owned),
    }
}

struct BearerFile {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
    header: String,
}

#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The result of one push attempt.
pub enum Outcome {
    Accepted {
        status: u16,
    },
    Retry {
        why: String,
        /// `None` when Loki could not be reached.
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
    Reject {
        status: u16,
        body: String,
    },
}

impl Client {
    pub fn new(cfg: &config::Loki) -> Result<Client, Error> {
        let url = cfg
            .url
            .clone()
            .ok_or_else(|| Error("LOKI_URL is not set (it is required unless --stdout)".into()))?;
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| Error(format!("cannot read {}: {e}", p.display())))
        };
        let ca = cfg.ca_file.as_deref().map(read).transpose()?;
        let cert = cfg.client_cert_file.as_deref().map(read).transpose()?;
        let key = cfg.client_key_file.as_deref().map(read).transpose()?;
        let client = cert.as_deref().zip(key.as_deref());
        let tls = crate::tls::config(ca.as_deref(), cfg.insecure_skip_verify, client)
            .map_err(|e| Error(format!("Loki TLS: {e}")))?;
        let agent = crate::http::agent(
            crate::http::agent_config(tls, crate::http::LOKI_BUFFERS)
                .timeout_global(Some(Duration::from_secs(60)))
                .build(),
        );
        let basic = match (&cfg.username, &cfg.password) {
            (Some(u), Some(p)) => Some(format!(
                "Basic {}",
                crate::base64::encode(format!("{u}:{p}").as_bytes())
            )),
            _ => None,
        };
        let mut bearer = cfg.bearer_token_file.as_ref().map(|p| BearerFile {
            path: p.clone(),
            stamp: None,
            header: String::new(),
        });
        if let Some(b) = &mut bearer {
            b.refresh().map_err(Error)?;
        }
        Ok(Client {
            agent,
            url,
            wire: Encoding::Snappy,
            tenant: cfg.tenant_id.clone(),
            basic,
            bearer,
            zip: None,
            proto: None,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Releases the compression state and its buffers (idle).
    pub fn trim(&mut self) {
        self.zip = None;
        self.proto = None;
    }

    /// How push bodies go out (`LOKI_COMPRESSION`; snappy protobuf by default).
    pub fn set_wire(&mut self, wire: Encoding) {
        self.wire = wire;
    }

    /// How new batches are best held: as they go out.
    pub fn encoding(&self) -> Encoding {
        self.wire
    }

    /// Encodes a sealed JSON `body` into `out` as this client sends it (for a batch held as
    /// `self.encoding()`, when that is not JSON). `Err` when the body cannot be transcoded
    /// to protobuf (never for kube-event's own bodies): the batch is then held as JSON.
    pub fn encode_into(&mut self, body: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        match self.wire {
            Encoding::Json => {
                out.clear();
                out.extend_from_slice(body);
                Ok(())
            }
            Encoding::Gzip => {
                self.zip
                    .get_or_insert_with(Gzip::default)
                    .compress_into(body, out);
                Ok(())
            }
            Encoding::Snappy => self
                .proto
                .get_or_insert_with(Default::default)
                .encode_into(body, out)
                .map_err(|e| format!("cannot transcode the JSON body to protobuf: {e}")),
        }
    }

    /// Encodes a sealed `body` (JSON or protobuf, as `format` says) into `out` as this client
    /// sends it, and says how it is then held. A JSON body that cannot be transcoded to
    /// protobuf (never one of kube-event's own) is held as JSON; a protobuf body always can be
    /// compressed.
    pub fn encode_sealed(&mut self, body: &[u8], format: Format, out: &mut Vec<u8>) -> Encoding {
        match format {
            Format::Json => match self.encode_into(body, out) {
                Ok(()) => self.wire,
                Err(e) => {
                    warn!("{e}; the batch goes out as JSON");
                    out.clear();
                    out.extend_from_slice(body);
                    Encoding::Json
                }
            },
            Format::Protobuf => {
                let json = match self.wire {
                    Encoding::Snappy => None,
                    // A queue sealing protobuf for a client that sends JSON: `lib.rs` never
                    // pairs them so (`Encoding::sealed_as`), but it works. (If the body would
                    // not read back as JSON, it goes out as snappy: Loki takes either.)
                    Encoding::Json | Encoding::Gzip => crate::proto::to_json(body).ok(),
                };
                match json {
                    // JSON and gzip never fail.
                    Some(json) => match self.encode_into(&json, out) {
                        Ok(()) => self.wire,
                        Err(_) => {
                            out.clear();
                            out.extend_from_slice(&json);
                            Encoding::Json
                        }
                    },
                    None => {
                        let snappy = self.proto.get_or_insert_with(Default::default);
                        match snappy.compress_into(body, out) {
                            Ok(()) => Encoding::Snappy,
                            Err(e) => {
                                // Over 4 GiB: sent as it is, Loki refuses it, it is kept.
                                warn!("{e}");
                                out.clear();
                                out.extend_from_slice(body);
                                Encoding::Snappy
                            }
                        }
                    }
                }
            }
        }
    }

    /// For `--check`: pushes an empty request, which Loki answers (204, or 422 "at least one
    /// valid stream is required") without storing anything, but only after the tenant and
    /// credentials passed. `Err` carries the answer and its status (`None`: no answer).
    pub fn probe(&mut self) -> Result<String, (String, Option<u16>)> {
        match self.push(br#"{"streams":[]}"#, Encoding::Json) {
            Outcome::Accepted { status } => Ok(format!("accepted an empty push ({status})")),
            Outcome::Reject { status: 422, .. } => {
                Ok("reachable and accepts the credentials (422 for an empty push)".into())
            }
            Outcome::Reject { status, body } => Err((
                format!("answered {status}: {}", shorten(&body, 300)),
                Some(status),
            )),
            Outcome::Retry { why, status, .. } => Err((why, status)),
        }
    }

    /// One push attempt of `body`, held as `enc`. It goes out as `LOKI_COMPRESSION` says,
    /// converted when it was spooled under another setting (or re-stamped, as JSON).
    pub fn push(&mut self, body: &[u8], enc: Encoding) -> Outcome {
        let mut converted = Vec::new();
        let sent = if enc == self.wire {
            enc
        } else {
            match json_text(body, enc).and_then(|text| {
                let mut out = std::mem::take(&mut converted);
                self.encode_into(&text, &mut out)?;
                converted = out;
                Ok(())
            }) {
                Ok(()) => self.wire,
                // It passed the spool's checksum; Loki says what it makes of it as it is.
                Err(e) => {
                    warn!("{e}; pushing it {}", enc.name());
                    enc
                }
            }
        };
        let wire = if sent == enc { body } else { &converted[..] };
        let mut req = self.agent.post(&self.url);
        req = match sent {
            Encoding::Json => req.header("Content-Type", "application/json"),
            Encoding::Gzip => req
                .header("Content-Type", "application/json")
                .header("Content-Encoding", "gzip"),
            Encoding::Snappy => req
                .header("Content-Type", "application/x-protobuf")
                .header("Content-Encoding", "snappy"),
        };
        if let Some(t) = &self.tenant {
            req = req.header("X-Scope-OrgID", t);
        }
        if let Some(b) = &self.basic {
            req = req.header("Authorization", b);
        }
        if let Some(b) = &mut self.bearer {
            if let Err(e) = b.refresh() {
                warn!("{e}; using the token read before");
            }
            req = req.header("Authorization", &b.header);
        }
        let mut resp = match req.send(wire) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    why: format!("cannot reach Loki at {}: {e}", self.url),
                    status: None,
                    retry_after: None,
                }
            }
        };
        let status = resp.status().as_u16();
        let (retry_after, answer) = crate::http::error_answer(&mut resp);
        let answer = answer.trim().to_string();
        match classify(status) {
            Class::Accepted => Outcome::Accepted { status },
            Class::Retry => Outcome::Retry {
                why: format!("Loki answered {status}: {}", shorten(&answer, 300)),
                status: Some(status),
                retry_after,
            },
            Class::Reject => Outcome::Reject {
                status,
                body: answer,
            },
        }
    }
}

impl BearerFile {
    /// Re-reads the token file when its modification time or size changed.
    fn refresh(&mut self) -> Result<(), String> {
        let meta = std::fs::metadata(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        if self.stamp == Some(stamp) {
            return Ok(());
        }
        let token = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(format!("{} is empty", self.path.display()));
        }
        if self.stamp.is_some() {
            info!("re-read the Loki bearer token from {}", self.path.display());
        }
        self.header = format!("Bearer {token}");
        self.stamp = Some(stamp);
        Ok(())
    }
}

pub fn shorten(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The "oldest acceptable timestamp" in Loki's answer to an entry that is too far behind
/// its stream (out-of-order window) or too old (`reject_old_samples_max_age`), as Unix ns.
pub fn oldest_acceptable(answer: &str) -> Option<i64> {
    const KEY: &str = "oldest acceptable timestamp is: ";
    let at = answer.find(KEY)? + KEY.len();
    let rest = &answer[at..];
    let end = rest
        .find(|c: char| c == '\'' || c == ',' || c.is_whitespace())
        .unwrap_or(rest.len());
    crate::time::parse_rfc3339_nanos(&rest[..end])
}

/// Re-stamps every entry of `body` older than `oldest` to `oldest` (the line keeps the real
/// time in its `time` field) and re-sorts each stream. Returns the new body and how many
/// entries moved, or `None` when none did (then re-stamping cannot help).
pub fn restamp(body: &[u8], oldest: i64) -> Option<(Vec<u8>, usize)> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut moved = 0;
    for stream in v.get_mut("streams")?.as_array_mut()? {
        let Some(values) = stream.get_mut("values").and_then(|v| v.as_array_mut()) else {
            continue;
        };
        for entry in values.iter_mut() {
            let Some(ts) = entry.get(0).and_then(|t| t.as_str()?.parse::<i64>().ok()) else {
                continue;
            };
            if ts < oldest {
                entry[0] = serde_json::Value::String(oldest.to_string());
                moved += 1;
            }
        }
        values.sort_by_key(|e| e.get(0).and_then(|t| t.as_str()?.parse::<i64>().ok()));
    }
    if moved == 0 {
        return None;
    }
    Some((serde_json::to_vec(&v).ok()?, moved))
}

#[cfg(test)]
mod tests {

    #[test]
    fn one_gzip_state_compresses_body_after_body() {
        use std::io::Read;
        let mut z = Gzip::default();
        let big: String = (0..200_000)
            .map(|i| format!("[\"{i}\",\"line {}\"],", i * 7919 % 1000))
            .collect();
        // Incompressible bytes make the output outgrow its first reservation.
        let noise = crate::testutil::Rng(0x9e37_79b9_7f4a_7c15).bytes(300_000);
        for body in [
            br#"{"streams":[]}"#.as_slice(),
            big.as_bytes(),
            b"",
            &noise,
            br#"{"streams":[]}"#.as_slice(),
        ] {
            let mut wire = Vec::new();
            z.compress_into(body, &mut wire);
            assert_eq!(&wire[..2], &[0x1f, 0x8b]);
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&wire[..])
                .read_to_end(&mut back)
                .expect("a valid gzip member");
            assert_eq!(back, body);
            // Into a used buffer, and read back as JSON text.
            let mut out = b"left over".to_vec();
            z.compress_into(body, &mut out);
            assert_eq!(out, wire);
            assert_eq!(&*json_text(&out, Encoding::Gzip).unwrap(), body);
            assert_eq!(&*json_text(body, Encoding::Json).unwrap(), body);
        }
        // A damaged member is an error, not a crash or a short body.
        let mut wire = Vec::new();
        z.compress_into(big.as_bytes(), &mut wire);
        let err = json_text(&wire[..wire.len() / 2], Encoding::Gzip).unwrap_err();
        assert!(err.contains("cannot decompress"), "{err}");
        let mut flipped = wire.clone();
        let last = flipped.len() - 5;
        flipped[last] ^= 0xff;
        assert!(json_text(&flipped, Encoding::Gzip).is_err());
        for e in [Encoding::Json, Encoding::Gzip, Encoding::Snappy] {
            assert_eq!(Encoding::from_name(e.name()), Some(e));
        }
    }
    use super::*;

    #[test]
    fn status_classes() {
        let cases = [
            (204, Class::Accepted),
            (200, Class::Accepted),
            (260, Class::Accepted),
            (400, Class::Reject),
            (413, Class::Reject),
            (422, Class::Reject),
            (401, Class::Retry),
            (403, Class::Retry),
            (404, Class::Retry),
            (429, Class::Retry),
            (500, Class::Retry),
            (503, Class::Retry),
            (301, Class::Reject),
        ];
        for (status, class) in cases {
            assert_eq!(classify(status), class, "{status}");
        }
    }

    #[test]
    fn finds_the_oldest_acceptable_timestamp_in_both_answers() {
        let behind = "entry with timestamp 2026-11-25 17:35:05.29176448 +0000 UTC ignored, reason: 'entry too far behind, entry timestamp is: 2026-11-25T17:35:05Z, oldest acceptable timestamp is: 2026-11-25T18:35:04Z',\nuser 'fake', total ignored: 1 out of 1 for stream: {case=\"ooo\"}";
        let too_old = "entry for stream '{case=\"tooold\"}' has timestamp too old: 2026-11-17T19:35:05Z, oldest acceptable timestamp is: 2026-11-18T19:35:05Z";
        assert_eq!(
            oldest_acceptable(behind),
            crate::time::parse_rfc3339_nanos("2026-11-25T18:35:04Z")
        );
        assert_eq!(
            oldest_acceptable(too_old),
            crate::time::parse_rfc3339_nanos("2026-11-18T19:35:05Z")
        );
        assert_eq!(
            oldest_acceptable("max entry size '262144' bytes exceeded"),
            None
        );
    }

    #[test]
    fn restamps_only_entries_older_than_the_cutoff() {
        let body = br#"{"streams":[{"stream":{"job":"kube-event"},"values":[["5","old"],["20","new"],["7","older"]]}]}"#;
        let (fixed, moved) = restamp(body, 10).unwrap();
        assert_eq!(moved, 2);
        let v: serde_json::Value = serde_json::from_slice(&fixed).unwrap();
        assert_eq!(
            v["streams"][0]["values"],
            serde_json::json!([["10", "old"], ["10", "older"], ["20", "new"]])
        );
        assert!(restamp(body, 1).is_none());
    }
}
