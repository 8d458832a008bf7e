//! `kube-event.conf` -> `Config`, failing fast with the file, line and key of a bad value.
//!
//! The file is `KEY=VALUE` lines (`#` comments, blank lines, optional quotes, an optional
//! `export ` prefix so the file can also be sourced by a shell). A file whose first non-blank
//! character is `{` is the original Kube-Event `config.json` with the same keys. An environment
//! variable with the name of a key overrides the file, except `KUBECONFIG`, which keeps
//! kubectl's meaning and its own place in the order of cluster-access sources (see `kube`).
//! Relative paths in the file resolve against the file's directory; in the environment, against
//! the current directory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every key this version reads. The sample `kube-event.conf` documents each with its
/// default; a test keeps the two in step.
pub const KEYS: &[&str] = &[
    "LOKI_URL",
    "LOKI_TENANT_ID",
    "LOKI_USERNAME",
    "LOKI_PASSWORD",
    "LOKI_PASSWORD_FILE",
    "LOKI_BEARER_TOKEN_FILE",
    "LOKI_CA_FILE",
    "LOKI_CLIENT_CERT_FILE",
    "LOKI_CLIENT_KEY_FILE",
    "LOKI_INSECURE_SKIP_VERIFY",
    "LABELS",
    "KUBECONFIG",
    "KUBE_CONTEXT",
    "DATA_DIR",
    "PUSH_INTERVAL_SECONDS",
    "BATCH_MAX_BYTES",
    "SPOOL_MAX_BYTES",
    "DEDUP_RETENTION_SECONDS",
    "MAX_LINE_BYTES",
    "ENABLE_DETAILED",
    "LOG_LEVEL",
    "LOG_FILE",
    "LOG_KEEP_DAYS",
    "METRICS_ADDR",
    "HEALTH_STALL_SECONDS",
    "NAMESPACES",
    "EXCLUDE_NAMESPACES",
    "TYPES",
    "REASONS",
    "EXCLUDE_REASONS",
    "KINDS",
    "EXCLUDE_KINDS",
    "COMPONENTS",
    "EXCLUDE_COMPONENTS",
    "MIN_COUNT",
    "DEDUPLICATE",
    "LINE_FORMAT",
    "LABEL_KEYS",
    "JOB",
    "STRUCTURED_METADATA",
    "LOKI_COMPRESSION",
];

/// The event fields `LABEL_KEYS` may turn into stream labels.
pub const LABEL_FIELDS: &[&str] = &["namespace", "kind", "type", "reason", "component", "host"];
/// Fields with many values: fine as labels only in small clusters.
const HIGH_CARDINALITY: &[&str] = &["reason", "host"];
/// Loki's default `max_label_names_per_series`.
const MAX_LABELS: usize = 15;

#[derive(Debug, Clone)]
pub struct Config {
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
    pub loki: Loki,
    /// `LABELS`: static stream labels, in the order given.
    pub labels: Vec<(String, String)>,
    pub kubeconfig: Option<PathBuf>,
    pub kube_context: Option<String>,
    pub data_dir: PathBuf,
    pub push_interval: Duration,
    pub batch_max_bytes: usize,
    /// `SPOOL_MAX_BYTES`: the most the spool may hold; the oldest batches go first.
    pub spool_max_bytes: u64,
    /// `DEDUP_RETENTION_SECONDS`: how long a shipped event is remembered.
    pub dedup_retention_secs: u64,
    /// `MAX_LINE_BYTES`: longer lines have their message cut.
    pub max_line_bytes: usize,
    pub enable_detailed: bool,
    pub log_level: String,
    /// `LOG_FILE`: log here, rotated daily, instead of stderr.
    pub log_file: Option<PathBuf>,
    /// `LOG_KEEP_DAYS`: rotated log files kept.
    pub log_keep_days: u32,
    /// `METRICS_ADDR`: where /metrics, /healthz and /readyz are served; `None` = off.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `HEALTH_STALL_SECONDS`: /healthz fails when the watch made no progress for this long.
    pub health_stall: Duration,
    /// What is shipped: the filter keys.
    pub filters: Filters,
    /// `LINE_FORMAT`: json, logfmt or raw.
    pub line_format: String,
    /// `LABEL_KEYS`: event fields that become stream labels, in order (from `LABEL_FIELDS`).
    pub label_keys: Vec<String>,
    /// `JOB`: the `job` label.
    pub job: String,
    /// `STRUCTURED_METADATA`: send event_uid, object_uid and name as structured metadata.
    pub structured_metadata: bool,
    /// `LOKI_COMPRESSION`: how push bodies go out: `snappy` (protobuf, the default), `gzip`
    /// (gzipped JSON) or `none` (JSON).
    pub compression: crate::loki::Encoding,
    /// Problems worth a warning (unknown keys, repeated keys), logged once logging is set up.
    pub warnings: Vec<String>,
}

/// The filter keys, as given (comma-separated lists; `*` and `?` globs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    pub namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    pub types: Vec<String>,
    pub reasons: Vec<String>,
    pub exclude_reasons: Vec<String>,
    pub kinds: Vec<String>,
    pub exclude_kinds: Vec<String>,
    pub components: Vec<String>,
    pub exclude_components: Vec<String>,
    /// Ship an event only from this repeat on (1: every occurrence).
    pub min_count: i64,
    /// `DEDUPLICATE=1`: ship each event once, on its first occurrence.
    pub deduplicate: bool,
}

#[derive(Clone, Default)]
pub struct Loki {
    /// The push URL; `None` only when the file does not set it (fine with `--stdout`).
    pub url: Option<String>,
    pub tenant_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub bearer_token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
}

impl fmt::Debug for Loki {
    // Hand-written so that a password can never reach a log line through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loki")
            .field("url", &self.url)
            .field("tenant_id", &self.tenant_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("bearer_token_file", &self.bearer_token_file)
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
}

/// A configuration problem: where it is, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// `kube-event.conf:12`, `environment variable LOKI_URL`, or a file path alone.
    pub location: String,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.location, self.message)
        } else {
            write!(f, "{}: {}: {}", self.location, self.key, self.message)
        }
    }
}

impl std::error::Error for Error {}

/// Where a value came from, for error messages and relative paths.
#[derive(Clone)]
struct Origin {
    location: String,
    /// Relative paths resolve against this.
    base: PathBuf,
}

struct Value {
    text: String,
    origin: Origin,
}

/// Which file to read: `--config PATH`, else `$KUBE_EVENT_CONFIG`, else `./kube-event.conf`,
/// else `/etc/kube-event/kube-event.conf`. `Ok(None)`: none of the defaults exists (the
/// environment alone may be enough). A file named explicitly must exist.
pub fn locate(
    cli: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<PathBuf>, Error> {
    let explicit = cli.map(|p| (p.to_path_buf(), "--config")).or_else(|| {
        env("KUBE_EVENT_CONFIG")
            .filter(|v| !v.is_empty())
            .map(|v| (PathBuf::from(v), "KUBE_EVENT_CONFIG"))
    });
    if let Some((path, how)) = explicit {
        if !path.is_file() {
            return Err(Error {
                location: path.display().to_string(),
                key: String::new(),
                message: format!("config file named by {how} does not exist or is not a file"),
            });
        }
        return Ok(Some(path));
    }
    for p in ["kube-event.conf", "/etc/kube-event/kube-event.conf"] {
        if Path::new(p).is_file() {
            return Ok(Some(PathBuf::from(p)));
        }
    }
    Ok(None)
}

/// Reads `file` (if any), applies environment overrides, validates every value.
pub fn load(file: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Error> {
    let mut values: Vec<(String, Value)> = Vec::new();
    let mut warnings = Vec::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| Error {
            location: path.display().to_string(),
            key: String::new(),
            message: format!("cannot read config file: {e}"),
        })?;
        let base = base_dir(path);
        let name = path.display().to_string();
        let entries = if text.trim_start().starts_with('{') {
            parse_json(&text, &name)?
        } else {
            parse_lines(&text, &name)?
        };
        for (key, line, text) in entries {
            let origin = Origin {
                location: format!("{name}:{line}"),
                base: base.clone(),
            };
            if !KEYS.contains(&key.as_str()) {
                warnings.push(format!("{name}:{line}: unknown key {key} (ignored)"));
                continue;
            }
            if let Some(prev) = values.iter_mut().find(|(k, _)| *k == key) {
                warnings.push(format!(
                    "{name}:{line}: {key} is set again (the earlier value at {} is ignored)",
                    prev.1.origin.location
                ));
                prev.1 = Value { text, origin };
            } else {
                values.push((key, Value { text, origin }));
            }
        }
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    for key in KEYS {
        if *key == "KUBECONFIG" {
            continue;
        }
        if let Some(text) = env(key) {
            let v = Value {
                text,
                origin: Origin {
                    location: format!("environment variable {key}"),
                    base: cwd.clone(),
                },
            };
            match values.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = v,
                None => values.push((key.to_string(), v)),
            }
        }
    }
    let get = |key: &str| values.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let file_default = Origin {
        location: file
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "defaults".into()),
        base: file.map(base_dir).unwrap_or_else(|| cwd.clone()),
    };

    let string = |key: &str| get(key).map(|v| v.text.clone()).filter(|s| !s.is_empty());
    let path = |key: &str| {
        get(key)
            .filter(|v| !v.text.is_empty())
            .map(|v| v.origin.base.join(&v.text))
    };
    let err = |key: &str, message: String| {
        let location = get(key)
            .map(|v| v.origin.location.clone())
            .unwrap_or_else(|| file_default.location.clone());
        Error {
            location,
            key: key.to_string(),
            message,
        }
    };
    let boolean = |key: &str| -> Result<bool, Error> {
        match get(key).map(|v| v.text.to_ascii_lowercase()) {
            None => Ok(false),
            Some(t) => match t.as_str() {
                "" | "false" | "0" | "no" | "off" => Ok(false),
                "true" | "1" | "yes" | "on" => Ok(true),
                _ => Err(err(
                    key,
                    format!("expected true or false, got {:?}", get(key).unwrap().text),
                )),
            },
        }
    };
    let number = |key: &str, default: u64, min: u64, max: u64, what: &str| -> Result<u64, Error> {
        let Some(v) = get(key).filter(|v| !v.text.is_empty()) else {
            return Ok(default);
        };
        let n: u64 = v
            .text
            .parse()
            .map_err(|_| err(key, format!("expected {what}, got {:?}", v.text)))?;
        if n < min || n > max {
            return Err(err(
                key,
                format!("must be between {min} and {max}, got {n}"),
            ));
        }
        Ok(n)
    };

    let url = match string("LOKI_URL") {
        None => None,
        Some(u) => Some(push_url(&u).map_err(|m| err("LOKI_URL", m))?),
    };
    let password = match (string("LOKI_PASSWORD"), path("LOKI_PASSWORD_FILE")) {
        (Some(_), Some(_)) => {
            return Err(err(
                "LOKI_PASSWORD_FILE",
                "set LOKI_PASSWORD or LOKI_PASSWORD_FILE, not both".into(),
            ))
        }
        (Some(p), None) => Some(p),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(&f).map_err(|e| {
                err(
                    "LOKI_PASSWORD_FILE",
                    format!("cannot read {}: {e}", f.display()),
                )
            })?;
            Some(text.trim_end_matches(['\r', '\n']).to_string())
        }
        (None, None) => None,
    };
    let username = string("LOKI_USERNAME");
    if password.is_some() && username.is_none() {
        let key = if get("LOKI_PASSWORD").is_some_and(|v| !v.text.is_empty()) {
            "LOKI_PASSWORD"
        } else {
            "LOKI_PASSWORD_FILE"
        };
        return Err(err(key, "a Loki password needs LOKI_USERNAME too".into()));
    }
    if password.is_some() && string("LOKI_BEARER_TOKEN_FILE").is_some() {
        return Err(err(
            "LOKI_BEARER_TOKEN_FILE",
            "basic auth and a bearer token both set; choose one".into(),
        ));
    }
    for key in [
        "LOKI_BEARER_TOKEN_FILE",
        "LOKI_CA_FILE",
        "LOKI_CLIENT_CERT_FILE",
        "LOKI_CLIENT_KEY_FILE",
    ] {
        if let Some(p) = path(key) {
            if !p.is_file() {
                return Err(err(
                    key,
                    format!("{} does not exist or is not a file", p.display()),
                ));
            }
        }
    }
    let client_cert_file = path("LOKI_CLIENT_CERT_FILE");
    let client_key_file = path("LOKI_CLIENT_KEY_FILE");
    if client_cert_file.is_some() != client_key_file.is_some() {
        let key = if client_cert_file.is_some() {
            "LOKI_CLIENT_KEY_FILE"
        } else {
            "LOKI_CLIENT_CERT_FILE"
        };
        return Err(err(
            key,
            "LOKI_CLIENT_CERT_FILE and LOKI_CLIENT_KEY_FILE go together".into(),
        ));
    }
    let loki = Loki {
        url,
        tenant_id: string("LOKI_TENANT_ID"),
        username,
        password,
        bearer_token_file: path("LOKI_BEARER_TOKEN_FILE"),
        ca_file: path("LOKI_CA_FILE"),
        client_cert_file,
        client_key_file,
        insecure_skip_verify: boolean("LOKI_INSECURE_SKIP_VERIFY")?,
    };
    if let Some(t) = &loki.tenant_id {
        if t.contains(':') || t.len() > 150 {
            return Err(err(
                "LOKI_TENANT_ID",
                "a Loki tenant ID has no ':' and at most 150 bytes".into(),
            ));
        }
    }

    let label_keys: Vec<String> = match get("LABEL_KEYS") {
        None => vec!["namespace".into(), "kind".into(), "type".into()],
        Some(v) => {
            let keys = list(&v.text);
            for k in &keys {
                if !LABEL_FIELDS.contains(&k.as_str()) {
                    return Err(err(
                        "LABEL_KEYS",
                        format!(
                            "unknown field {k:?}; choose from {}",
                            LABEL_FIELDS.join(", ")
                        ),
                    ));
                }
                if keys.iter().filter(|x| *x == k).count() > 1 {
                    return Err(err("LABEL_KEYS", format!("{k:?} is given twice")));
                }
                if HIGH_CARDINALITY.contains(&k.as_str()) {
                    warnings.push(format!(
                        "{}: LABEL_KEYS: {k:?} has many values: every value is a Loki stream; \
                         prefer filtering on it in the line (| json)",
                        v.origin.location
                    ));
                }
            }
            keys
        }
    };
    let job = string("JOB").unwrap_or_else(|| "kube-event".into());
    let labels = match get("LABELS") {
        None => Vec::new(),
        Some(v) => parse_labels(&v.text, &label_keys).map_err(|m| err("LABELS", m))?,
    };
    let line_format = string("LINE_FORMAT")
        .unwrap_or_else(|| "json".into())
        .to_ascii_lowercase();
    if !["json", "logfmt", "raw"].contains(&line_format.as_str()) {
        return Err(err(
            "LINE_FORMAT",
            format!(
                "expected json, logfmt or raw, got {:?}",
                get("LINE_FORMAT").unwrap().text
            ),
        ));
    }
    let compression = match string("LOKI_COMPRESSION")
        .map(|c| c.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("snappy") => crate::loki::Encoding::Snappy,
        Some("gzip") => crate::loki::Encoding::Gzip,
        Some("none") => crate::loki::Encoding::Json,
        Some(_) => {
            return Err(err(
                "LOKI_COMPRESSION",
                format!(
                    "expected snappy, gzip or none, got {:?}",
                    get("LOKI_COMPRESSION").unwrap().text
                ),
            ))
        }
    };
    let lst = |key: &str| get(key).map(|v| list(&v.text)).unwrap_or_default();
    let filters = Filters {
        namespaces: lst("NAMESPACES"),
        exclude_namespaces: lst("EXCLUDE_NAMESPACES"),
        types: lst("TYPES"),
        reasons: lst("REASONS"),
        exclude_reasons: lst("EXCLUDE_REASONS"),
        kinds: lst("KINDS"),
        exclude_kinds: lst("EXCLUDE_KINDS"),
        components: lst("COMPONENTS"),
        exclude_components: lst("EXCLUDE_COMPONENTS"),
        min_count: number("MIN_COUNT", 1, 1, 1 << 40, "a whole number")? as i64,
        deduplicate: match string("DEDUPLICATE").as_deref() {
            None | Some("0") => false,
            Some("1") => true,
            Some(other) => {
                // The original tool's values are 0 and 1; accept booleans too.
                match other.to_ascii_lowercase().as_str() {
                    "false" | "no" | "off" => false,
                    "true" | "yes" | "on" => true,
                    _ => {
                        return Err(err(
                            "DEDUPLICATE",
                            format!("expected 0 (every occurrence) or 1 (first occurrence only), got {other:?}"),
                        ))
                    }
                }
            }
        },
    };
    let log_level = string("LOG_LEVEL")
        .unwrap_or_else(|| "info".into())
        .to_ascii_lowercase();
    if !["error", "warn", "info", "debug", "trace", "off"].contains(&log_level.as_str()) {
        return Err(err(
            "LOG_LEVEL",
            format!(
                "expected error, warn, info, debug or trace, got {:?}",
                get("LOG_LEVEL").unwrap().text
            ),
        ));
    }

    Ok(Config {
        file: file.map(Path::to_path_buf),
        loki,
        labels,
        kubeconfig: path("KUBECONFIG"),
        kube_context: string("KUBE_CONTEXT"),
        data_dir: path("DATA_DIR").unwrap_or_else(|| file_default.base.join("data")),
        push_interval: Duration::from_secs(number(
            "PUSH_INTERVAL_SECONDS",
            5,
            1,
            3600,
            "a whole number of seconds",
        )?),
        batch_max_bytes: number(
            "BATCH_MAX_BYTES",
            1 << 20,
            1024,
            100 << 20,
            "a whole number of bytes",
        )? as usize,
        spool_max_bytes: number(
            "SPOOL_MAX_BYTES",
            512 << 20,
            1024,
            1 << 40,
            "a whole number of bytes",
        )?,
        dedup_retention_secs: number(
            "DEDUP_RETENTION_SECONDS",
            7200,
            60,
            30 * 86_400,
            "a whole number of seconds",
        )?,
        max_line_bytes: number(
            "MAX_LINE_BYTES",
            256 << 10,
            1024,
            100 << 20,
            "a whole number of bytes",
        )? as usize,
        enable_detailed: boolean("ENABLE_DETAILED")?,
        log_level,
        log_file: path("LOG_FILE"),
        log_keep_days: number("LOG_KEEP_DAYS", 7, 1, 3650, "a whole number of days")? as u32,
        metrics_addr: match string("METRICS_ADDR") {
            None => None,
            Some(a) => Some(a.parse().map_err(|_| {
                err(
                    "METRICS_ADDR",
                    format!("expected an address and port such as 0.0.0.0:9102, got {a:?}"),
                )
            })?),
        },
        filters,
        line_format,
        label_keys,
        job,
        structured_metadata: boolean("STRUCTURED_METADATA")?,
        compression,
        health_stall: Duration::from_secs(number(
            "HEALTH_STALL_SECONDS",
            600,
            5,
            86_400,
            "a whole number of seconds",
        )?),
        warnings,
    })
}

/// The folder relative paths in `file` resolve against, absolute when it can be.
fn base_dir(file: &Path) -> PathBuf {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// `KEY=VALUE` lines -> (key, line number, value).
fn parse_lines(text: &str, name: &str) -> Result<Vec<(String, usize, String)>, Error> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let bad = |message: String| Error {
            location: format!("{name}:{line_no}"),
            key: String::new(),
            message,
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(bad(format!("expected KEY=VALUE, got {:?}", truncate(line))));
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(bad(format!("expected KEY=VALUE, got {:?}", truncate(line))));
        }
        let value = unquote(value.trim()).map_err(|m| Error {
            location: format!("{name}:{line_no}"),
            key: key.to_string(),
            message: m,
        })?;
        out.push((key.to_string(), line_no, value));
    }
    Ok(out)
}

/// `"v"` and `'v'` lose their quotes; an unquoted value ends at ` #` (a trailing comment).
fn unquote(v: &str) -> Result<String, String> {
    for q in ['"', '\''] {
        if let Some(rest) = v.strip_prefix(q) {
            let Some(end) = rest.find(q) else {
                return Err(format!("missing closing {q} quote"));
            };
            let after = rest[end + 1..].trim();
            if !after.is_empty() && !after.starts_with('#') {
                return Err(format!(
                    "unexpected text after the closing quote: {:?}",
                    truncate(after)
                ));
            }
            return Ok(rest[..end].to_string());
        }
    }
    let v = match v.find(" #").or_else(|| v.find("\t#")) {
        Some(i) => v[..i].trim_end(),
        None => v,
    };
    Ok(v.to_string())
}

/// The original Kube-Event `config.json`: an object of the same keys; strings, numbers and
/// booleans. Line numbers are those of the key's first mention.
fn parse_json(text: &str, name: &str) -> Result<Vec<(String, usize, String)>, Error> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| Error {
            location: format!("{name}:{}", e.line()),
            key: String::new(),
            message: format!("invalid JSON: {e}"),
        })?;
    let mut out = Vec::new();
    for (key, value) in map {
        let line = text
            .find(&format!("\"{key}\""))
            .map(|at| text[..at].matches('\n').count() + 1)
            .unwrap_or(1);
        let text = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Null => String::new(),
            other => {
                return Err(Error {
                    location: format!("{name}:{line}"),
                    key,
                    message: format!("expected a string, number or boolean, got {other}"),
                })
            }
        };
        out.push((key, line, text));
    }
    out.sort_by_key(|(_, line, _)| *line);
    Ok(out)
}

/// `https://loki:3100` -> `https://loki:3100/loki/api/v1/push`; a URL with a path is kept.
fn push_url(u: &str) -> Result<String, String> {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .ok_or_else(|| format!("expected an http:// or https:// URL, got {:?}", truncate(u)))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(format!("no host in {:?}", truncate(u)));
    }
    if authority.contains('@') {
        return Err(
            "credentials in the URL are not accepted; use LOKI_USERNAME and LOKI_PASSWORD".into(),
        );
    }
    if path.is_empty() || path == "/" {
        let scheme = &u[..u.len() - rest.len()];
        return Ok(format!("{scheme}{authority}/loki/api/v1/push"));
    }
    Ok(u.to_string())
}

/// A comma-separated list, items trimmed, empty ones left out.
fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// `cluster=prod,region=eu-1` -> pairs, checked against Loki's label rules and the labels
/// kube-event sets itself (`job` and `label_keys`).
fn parse_labels(text: &str, label_keys: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!(
                "expected name=value pairs separated by commas, got {:?}",
                truncate(part)
            ));
        };
        let (k, v) = (k.trim(), v.trim());
        let v = v.trim_matches('"');
        let valid_name = k
            .bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
        if k.is_empty() || !valid_name || k.starts_with("__") {
            return Err(format!(
                "{k:?} is not a valid Loki label name (letters, digits and _, not starting with a digit or __)"
            ));
        }
        if k == "job" || label_keys.iter().any(|l| l == k) {
            return Err(format!(
                "{k:?} is set by kube-event itself and cannot be a static label"
            ));
        }
        if out.iter().any(|(n, _)| n == k) {
            return Err(format!("label {k:?} is given twice"));
        }
        if v.is_empty() {
            return Err(format!("label {k:?} has an empty value"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    let own = 1 + label_keys.len();
    if out.len() + own > MAX_LABELS {
        return Err(format!(
            "{} static labels plus kube-event's {own} (job and LABEL_KEYS) exceed Loki's default \
             limit of {MAX_LABELS} labels per stream",
            out.len()
        ));
    }
    Ok(out)
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    /// Writes `text` as kube-event.conf in a fresh directory, removed when the first value
    /// of the pair is dropped.
    fn temp_conf(name: &str, text: &str) -> (TempDir, PathBuf) {
        let dir = TempDir::new(&format!("config-{name}"));
        let p = dir.write("kube-event.conf", text);
        (dir, p)
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_without_a_file() {
        let c = load(None, &no_env).unwrap();
        assert_eq!(c.loki.url, None);
        assert_eq!(c.push_interval, Duration::from_secs(5));
        assert_eq!(c.batch_max_bytes, 1_048_576);
        assert!(!c.enable_detailed);
        assert_eq!(c.log_level, "info");
        assert!(c.data_dir.ends_with("data"));
        assert_eq!(c.spool_max_bytes, 536_870_912);
        assert_eq!(c.dedup_retention_secs, 7200);
        assert_eq!(c.max_line_bytes, 262_144);
    }

    #[test]
    fn reads_lines_quotes_comments_and_resolves_paths_against_the_file() {
        let (_dir, p) = temp_conf(
            "lines",
            "# comment\n\nLOKI_URL = \"http://loki:3100\"\nexport LABELS='cluster=prod, region=eu-1'\n\
             PUSH_INTERVAL_SECONDS=7   # seconds\nDATA_DIR=state\nENABLE_DETAILED=yes\nLOKI_TENANT_ID=a#b\n",
        );
        let c = load(Some(&p), &no_env).unwrap();
        assert_eq!(
            c.loki.url.as_deref(),
            Some("http://loki:3100/loki/api/v1/push")
        );
        assert_eq!(
            c.labels,
            vec![
                ("cluster".into(), "prod".into()),
                ("region".into(), "eu-1".into())
            ]
        );
        assert_eq!(c.push_interval, Duration::from_secs(7));
        let dir = std::fs::canonicalize(p.parent().unwrap()).unwrap();
        assert_eq!(c.data_dir, dir.join("state"));
        assert!(c.enable_detailed);
        assert_eq!(c.loki.tenant_id.as_deref(), Some("a#b"));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        let cases = [
            (
                "PUSH_INTERVAL_SECONDS=abc",
                "PUSH_INTERVAL_SECONDS: expected a whole number of seconds, got \"abc\"",
            ),
            (
                "PUSH_INTERVAL_SECONDS=0",
                "PUSH_INTERVAL_SECONDS: must be between 1 and 3600, got 0",
            ),
            (
                "BATCH_MAX_BYTES=-1",
                "BATCH_MAX_BYTES: expected a whole number of bytes, got \"-1\"",
            ),
            (
                "ENABLE_DETAILED=maybe",
                "ENABLE_DETAILED: expected true or false, got \"maybe\"",
            ),
            (
                "LOKI_URL=loki:3100",
                "LOKI_URL: expected an http:// or https:// URL, got \"loki:3100\"",
            ),
            (
                "LOKI_URL=https://u:p@loki",
                "LOKI_URL: credentials in the URL are not accepted",
            ),
            (
                "LABELS=job=x",
                "LABELS: \"job\" is set by kube-event itself",
            ),
            (
                "LABELS=bad-name=x",
                "LABELS: \"bad-name\" is not a valid Loki label name",
            ),
            ("LABELS=a=1,a=2", "LABELS: label \"a\" is given twice"),
            (
                "LOG_LEVEL=loud",
                "LOG_LEVEL: expected error, warn, info, debug or trace",
            ),
            (
                "LOKI_CA_FILE=/nonexistent/ca.pem",
                "LOKI_CA_FILE: /nonexistent/ca.pem does not exist",
            ),
            (
                "LOKI_PASSWORD=x",
                "LOKI_PASSWORD: a Loki password needs LOKI_USERNAME too",
            ),
            ("LOKI_URL=\"http://x", "LOKI_URL: missing closing \" quote"),
            ("just words", "expected KEY=VALUE, got \"just words\""),
        ];
        for (i, (line, want)) in cases.iter().enumerate() {
            let (_dir, p) = temp_conf(&format!("bad{i}"), &format!("# header\n\n{line}\n"));
            let e = load(Some(&p), &no_env).unwrap_err().to_string();
            let prefix = format!("{}:3: ", p.display());
            assert!(e.starts_with(&prefix), "{line}: {e}");
            assert!(e[prefix.len()..].starts_with(want), "{line}: {e}");
        }
    }

    #[test]
    fn unknown_and_repeated_keys_warn_with_file_and_line() {
        let (_dir, p) = temp_conf("warn", "LOKI_URLL=x\nLOG_LEVEL=debug\nLOG_LEVEL=warn\n");
        let c = load(Some(&p), &no_env).unwrap();
        assert_eq!(c.log_level, "warn");
        assert_eq!(c.warnings.len(), 2);
        assert!(
            c.warnings[0].ends_with(":1: unknown key LOKI_URLL (ignored)"),
            "{:?}",
            c.warnings
        );
        assert!(
            c.warnings[1].contains(":3: LOG_LEVEL is set again"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn environment_overrides_the_file_but_not_kubeconfig() {
        let (_dir, p) = temp_conf("env", "PUSH_INTERVAL_SECONDS=7\nKUBECONFIG=kc.yaml\n");
        let env = |k: &str| match k {
            "PUSH_INTERVAL_SECONDS" => Some("9".to_string()),
            "KUBECONFIG" => Some("/elsewhere".to_string()),
            "BATCH_MAX_BYTES" => Some("x".to_string()),
            _ => None,
        };
        let e = load(Some(&p), &env).unwrap_err().to_string();
        assert_eq!(
            e,
            "environment variable BATCH_MAX_BYTES: BATCH_MAX_BYTES: expected a whole number of bytes, got \"x\""
        );
        let env = |k: &str| (k == "PUSH_INTERVAL_SECONDS").then(|| "9".to_string());
        let c = load(Some(&p), &env).unwrap();
        assert_eq!(c.push_interval, Duration::from_secs(9));
        assert!(c.kubeconfig.unwrap().ends_with("kc.yaml"));
    }

    #[test]
    fn legacy_config_json_is_read_with_its_types() {
        let (_dir, p) = temp_conf(
            "json",
            "{\n  \"LOKI_URL\": \"http://loki:3100/\",\n  \"PUSH_INTERVAL_SECONDS\": 3,\n  \"ENABLE_DETAILED\": true,\n  \"NOPE\": 1\n}\n",
        );
        let c = load(Some(&p), &no_env).unwrap();
        assert_eq!(
            c.loki.url.as_deref(),
            Some("http://loki:3100/loki/api/v1/push")
        );
        assert_eq!(c.push_interval, Duration::from_secs(3));
        assert!(c.enable_detailed);
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0].ends_with(":5: unknown key NOPE (ignored)"),
            "{:?}",
            c.warnings
        );
        let (_dir, p) = temp_conf("json-bad", "{\n  \"BATCH_MAX_BYTES\": \"big\"\n}\n");
        let e = load(Some(&p), &no_env).unwrap_err().to_string();
        assert!(
            e.ends_with(":2: BATCH_MAX_BYTES: expected a whole number of bytes, got \"big\""),
            "{e}"
        );
    }

    #[test]
    fn push_url_adds_the_path_only_when_missing() {
        assert_eq!(
            push_url("http://l:3100").unwrap(),
            "http://l:3100/loki/api/v1/push"
        );
        assert_eq!(
            push_url("https://l/").unwrap(),
            "https://l/loki/api/v1/push"
        );
        assert_eq!(
            push_url("https://l/custom/push").unwrap(),
            "https://l/custom/push"
        );
    }

    #[test]
    fn sample_conf_documents_every_key() {
        let sample = include_str!("../kube-event.conf");
        for key in KEYS {
            assert!(
                sample
                    .lines()
                    .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key}="))),
                "kube-event.conf does not document {key}"
            );
        }
        let (_dir, p) = temp_conf("sample", sample);
        load(Some(&p), &no_env).unwrap();
    }
}
