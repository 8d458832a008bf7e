//! How requests to the API server prove who they are: the `Authorization` header, and the
//! caches behind it.
//!
//! It exists apart from `kubeconfig` because the two have different lifetimes: a kubeconfig is
//! read once at startup, while credentials change under a running daemon. Service-account tokens
//! are rotated by the kubelet (protocols.md 3.2, 3.3), exec plugins hand out tokens that
//! expire, and a 401 means "whatever you cached is stale". So `Credentials` owns the caches
//! and the client asks it for a header before every request and calls `invalidate()` after a
//! 401.
//!
//! Client certificates are not here: they live in the TLS configuration
//! (`kubeconfig::TlsMaterial`); `Credentials` only remembers that one is in use, for
//! `describe()`.
//!
//! No token, password, key or header value is ever logged or put into an error; errors name
//! files and commands instead.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// client-go's `NewCachedFileTokenSource` re-reads every minute (protocols.md 3.2).
const TOKEN_FILE_REFRESH: Duration = Duration::from_secs(60);

/// An exec token is used until this long before its `expirationTimestamp`, so that a request
/// started just before expiry does not reach the server with a dead token. The same 10 s
/// leeway client-go's cached token source uses.
const EXEC_EXPIRY_LEEWAY: Duration = Duration::from_secs(10);

/// A plugin that has not answered in 30 s is hung (waiting for a browser or a prompt that a
/// daemon cannot show); it is killed.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a running plugin is polled for exit. Short against the usual ~100 ms a plugin
/// takes; the standard library has no wait-with-timeout.
const EXEC_POLL: Duration = Duration::from_millis(10);

/// A credential is a token, so megabytes of output mean something is wrong.
const EXEC_MAX_STDOUT: u64 = 1 << 20;
const EXEC_MAX_STDERR: u64 = 64 << 10;
/// Lines of plugin stderr quoted in an error.
const EXEC_STDERR_LINES: usize = 5;

/// API versions of `ExecCredential` that are understood; v1alpha1 was removed in 1.24.
pub const EXEC_API_VERSIONS: [&str; 2] = [
    "client.authentication.k8s.io/v1",
    "client.authentication.k8s.io/v1beta1",
];

/// The credentials to present to the API server. `Send + Sync`: share it behind an `Arc`.
pub struct Credentials {
    kind: Kind,
    /// The TLS configuration carries a client certificate (for `describe()` only).
    client_certificate: bool,
}

enum Kind {
    None,
    StaticToken(String),
    TokenFile(TokenFile),
    /// The complete header value; the user name is kept for `describe()`.
    Basic {
        user: String,
        header: String,
    },
    Exec(Exec),
}

impl Credentials {
    /// No `Authorization` header.
    pub fn none() -> Self {
        Self::from_kind(Kind::None)
    }

    /// A bearer token that never changes (kubeconfig `token`).
    pub fn static_token(token: String) -> Self {
        Self::from_kind(Kind::StaticToken(token))
    }

    /// A bearer token read from a file, re-read every 60 s and after `invalidate()`. If a
    /// re-read fails, the last token read is kept (with a warning).
    pub fn token_file(path: PathBuf) -> Self {
        Self::from_kind(Kind::TokenFile(TokenFile::new(path, None)))
    }

    /// kubeconfig `tokenFile` together with `token`. Newer client-go (`rest.Config.BearerTokenFile`
    /// doc, protocols.md 3.4): "the TokenFile will be periodically read and the last
    /// successfully read value takes precedence" over `token`; so `token` is used only while
    /// the file has never been read successfully. (Older client-go and kube-rs prefer `token`;
    /// we follow the newer rule because it is the one that survives token rotation.)
    pub fn token_file_with_fallback(path: PathBuf, token: String) -> Self {
        Self::from_kind(Kind::TokenFile(TokenFile::new(path, Some(token))))
    }

    /// HTTP basic auth (kubeconfig `username`/`password`).
    pub fn basic(user: String, password: String) -> Self {
        let header = format!(
            "Basic {}",
            crate::base64::encode(format!("{user}:{password}").as_bytes())
        );
        Self::from_kind(Kind::Basic { user, header })
    }

    /// A token from an exec credential plugin. Relative commands containing '/' resolve
    /// against `kubeconfig_dir`, the directory of the kubeconfig file that defined the user.
    pub fn exec(spec: ExecSpec, kubeconfig_dir: PathBuf) -> Self {
        Self::from_kind(Kind::Exec(Exec {
            spec,
            dir: kubeconfig_dir,
            timeout: EXEC_TIMEOUT,
            cache: Mutex::new(None),
        }))
    }

    /// Records that the TLS configuration presents a client certificate, so that `describe()`
    /// says so. Does not change the header.
    pub fn with_client_certificate(mut self) -> Self {
        self.client_certificate = true;
        self
    }

    fn from_kind(kind: Kind) -> Self {
        Credentials {
            kind,
            client_certificate: false,
        }
    }

    /// The Authorization header value to send now ("Bearer …" / "Basic …"), or None.
    ///
    /// May read a file or run an exec plugin (at most `EXEC_TIMEOUT`); concurrent callers
    /// wait for the one doing so instead of starting their own.
    pub fn authorization(&self) -> Result<Option<String>, Error> {
        match &self.kind {
            Kind::None => Ok(None),
            Kind::StaticToken(token) => {
                check_token(token).map_err(|reason| Error::TokenInvalid {
                    source: "static token".to_string(),
                    reason,
                })?;
                Ok(Some(bearer(token)))
            }
            Kind::TokenFile(file) => file.token().map(|t| Some(bearer(&t))),
            Kind::Basic { header, .. } => Ok(Some(header.clone())),
            Kind::Exec(exec) => exec.token().map(|t| Some(bearer(&t))),
        }
    }

    /// After a 401: forget cached tokens so the next authorization() re-reads the file /
    /// re-runs the plugin.
    pub fn invalidate(&self) {
        match &self.kind {
            Kind::TokenFile(file) => file.invalidate(),
            Kind::Exec(exec) => {
                if let Some(cached) = lock(&exec.cache).as_mut() {
                    cached.stale = true;
                }
            }
            Kind::None | Kind::StaticToken(_) | Kind::Basic { .. } => {}
        }
    }

    /// For the startup log line, never the secret: "token file /path", "static token",
    /// "client certificate", "exec plugin aws-iam-authenticator", "none".
    pub fn describe(&self) -> String {
        let base = match &self.kind {
            Kind::None if self.client_certificate => return "client certificate".to_string(),
            Kind::None => return "none".to_string(),
            Kind::StaticToken(_) => "static token".to_string(),
            Kind::TokenFile(file) if file.fallback.is_some() => format!(
                "token file {} (static token until it can be read)",
                file.path.display()
            ),
            Kind::TokenFile(file) => format!("token file {}", file.path.display()),
            Kind::Basic { user, .. } => format!("basic auth as {user}"),
            Kind::Exec(exec) => format!("exec plugin {}", exec.spec.command),
        };
        if self.client_certificate {
            format!("{base} and client certificate")
        } else {
            base
        }
    }

    /// Test hook: pretend `by` has passed since the token file was last read.
    #[cfg(test)]
    fn age_token_file(&self, by: Duration) {
        if let Kind::TokenFile(file) = &self.kind {
            if let Some(cached) = lock(&file.cache).as_mut() {
                cached.read_at = cached.read_at.checked_sub(by).expect("instant underflow");
            }
        }
    }

    /// Test hook: a shorter plugin timeout.
    #[cfg(test)]
    fn set_exec_timeout(&mut self, timeout: Duration) {
        if let Kind::Exec(exec) = &mut self.kind {
            exec.timeout = timeout;
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret: the same text as the startup log line.
        write!(f, "Credentials({})", self.describe())
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A token must be sendable as a header value: visible ASCII, no spaces. The reason never
/// quotes the token.
fn check_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        Err("is empty")
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        Err("contains characters that cannot be sent in an HTTP header")
    } else {
        Ok(())
    }
}

/// A poisoned lock only means another thread panicked while holding it; the cache inside is
/// still a consistent value (every write is a single assignment).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Token file

struct TokenFile {
    path: PathBuf,
    /// kubeconfig `token` given with `tokenFile`: used until the file is read once.
    fallback: Option<String>,
    refresh: Duration,
    cache: Mutex<Option<CachedToken>>,
}

struct CachedToken {
    /// The last token read successfully (kept when a re-read fails), or the kubeconfig
    /// `token` while the file has never been readable.
    token: String,
    /// Whether `token` came from the file (and so takes precedence over the fallback).
    from_file: bool,
    /// When the file was last tried (successfully or not): the next read is due `refresh`
    /// later, so an unreadable file is retried (and warned about) once a minute, not on
    /// every request.
    read_at: Instant,
    /// Set by `invalidate()`: re-read on the next call.
    stale: bool,
}

impl TokenFile {
    fn new(path: PathBuf, fallback: Option<String>) -> Self {
        TokenFile {
            path,
            fallback,
            refresh: TOKEN_FILE_REFRESH,
            cache: Mutex::new(None),
        }
    }

    fn invalidate(&self) {
        if let Some(cached) = lock(&self.cache).as_mut() {
            cached.stale = true;
        }
    }

    fn token(&self) -> Result<String, Error> {
        let mut cache = lock(&self.cache);
        if let Some(cached) = cache.as_ref() {
            if !cached.stale && cached.read_at.elapsed() < self.refresh {
                return Ok(cached.token.clone());
            }
        }
        match self.read() {
            Ok(token) => {
                *cache = Some(CachedToken {
                    token: token.clone(),
                    from_file: true,
                    read_at: Instant::now(),
                    stale: false,
                });
                Ok(token)
            }
            Err(err) => {
                if let Some(cached) = cache.as_mut().filter(|c| c.from_file) {
                    log::warn!("{err}; keeping the last token read from it");
                    cached.read_at = Instant::now();
                    cached.stale = false;
                    return Ok(cached.token.clone());
                }
                let Some(token) = &self.fallback else {
                    return Err(err);
                };
                log::warn!("{err}; using the kubeconfig token instead");
                check_token(token).map_err(|reason| Error::TokenInvalid {
                    source: "static token".to_string(),
                    reason,
                })?;
                *cache = Some(CachedToken {
                    token: token.clone(),
                    from_file: false,
                    read_at: Instant::now(),
                    stale: false,
                });
                Ok(token.clone())
            }
        }
    }

    fn read(&self) -> Result<String, Error> {
        let raw = std::fs::read_to_string(&self.path).map_err(|source| Error::TokenFileRead {
            path: self.path.clone(),
            source,
        })?;
        // client-go trims surrounding whitespace (a trailing newline is common).
        let token = raw.trim();
        check_token(token).map_err(|reason| Error::TokenInvalid {
            source: format!("token file {}", self.path.display()),
            reason,
        })?;
        Ok(token.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Exec plugins

/// A kubeconfig `users[].user.exec` section, already validated by `kubeconfig`.
#[derive(Clone, PartialEq)]
pub struct ExecSpec {
    /// `client.authentication.k8s.io/v1` or `.../v1beta1`; the plugin must answer with the same.
    pub api_version: String,
    pub command: String,
    pub args: Vec<String>,
    /// Added to the daemon's own environment (which the plugin inherits, as with client-go).
    pub env: Vec<(String, String)>,
    /// Shown when the command is not found.
    pub install_hint: Option<String>,
    /// Set when the kubeconfig says `provideClusterInfo: true`: passed to the plugin in
    /// `KUBERNETES_EXEC_INFO` as `spec.cluster`.
    pub cluster: Option<ExecCluster>,
}

/// The cluster as an exec plugin sees it with `provideClusterInfo: true`.
#[derive(Clone, PartialEq)]
pub struct ExecCluster {
    pub server: String,
    pub certificate_authority_data: Option<Vec<u8>>,
    pub insecure_skip_tls_verify: bool,
}

impl fmt::Debug for ExecSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // args and env values may hold secrets (a --token flag, an API key): names only.
        f.debug_struct("ExecSpec")
            .field("api_version", &self.api_version)
            .field("command", &self.command)
            .field("args", &format_args!("[{} args]", self.args.len()))
            .field(
                "env",
                &self.env.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

struct Exec {
    spec: ExecSpec,
    dir: PathBuf,
    timeout: Duration,
    cache: Mutex<Option<ExecToken>>,
}

struct ExecToken {
    token: String,
    /// Set by `invalidate()`. The token is kept only to scrub it from plugin error output.
    stale: bool,
    /// None: valid until `invalidate()`.
    expires: Option<SystemTime>,
}

impl Exec {
    fn token(&self) -> Result<String, Error> {
        // Held while the plugin runs, so that concurrent callers reuse its result.
        let mut cache = lock(&self.cache);
        if let Some(cached) = cache.as_ref() {
            let fresh = !cached.stale
                && match cached.expires {
                    None => true,
                    Some(expires) => SystemTime::now() + EXEC_EXPIRY_LEEWAY < expires,
                };
            if fresh {
                return Ok(cached.token.clone());
            }
        }
        let previous = cache.as_ref().map(|c| c.token.as_str());
        let fresh = self.run(previous)?;
        let token = fresh.token.clone();
        *cache = Some(fresh);
        Ok(token)
    }

    /// The program to start: relative paths with a '/' are relative to the kubeconfig's
    /// directory (client-go `exec.go`); bare names are looked up in PATH by `Command`.
    fn program(&self) -> PathBuf {
        let command = Path::new(&self.spec.command);
        if command.is_relative() && self.spec.command.contains('/') {
            self.dir.join(command)
        } else {
            command.to_path_buf()
        }
    }

    fn exec_info(&self) -> String {
        let mut spec = serde_json::json!({ "interactive": false });
        if let Some(cluster) = &self.spec.cluster {
            let mut c = serde_json::json!({ "server": cluster.server });
            if let Some(ca) = &cluster.certificate_authority_data {
                c["certificate-authority-data"] = crate::base64::encode(ca).into();
            }
            if cluster.insecure_skip_tls_verify {
                c["insecure-skip-tls-verify"] = true.into();
            }
            spec["cluster"] = c;
        }
        serde_json::json!({
            "apiVersion": self.spec.api_version,
            "kind": "ExecCredential",
            "spec": spec,
        })
        .to_string()
    }

    /// Runs the plugin once. `previous` is the last token handed out, scrubbed from quoted
    /// stderr in case a plugin echoes it.
    fn run(&self, previous: Option<&str>) -> Result<ExecToken, Error> {
        let command = self.spec.command.clone();
        let started = Instant::now();
        let mut cmd = Command::new(self.program());
        cmd.args(&self.spec.args)
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .env("KUBERNETES_EXEC_INFO", self.exec_info())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn(&mut cmd).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                Error::ExecNotFound {
                    command: command.clone(),
                    install_hint: self.spec.install_hint.clone(),
                }
            } else {
                Error::ExecStartFailed {
                    command: command.clone(),
                    source,
                }
            }
        })?;

        // Both pipes are drained on their own threads so that a chatty plugin cannot block
        // on a full pipe while we wait for it to exit.
        let stdout = read_in_background(child.stdout.take(), EXEC_MAX_STDOUT);
        let stderr = read_in_background(child.stderr.take(), EXEC_MAX_STDERR);

        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() >= self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::ExecTimedOut {
                        command,
                        after: self.timeout,
                    });
                }
                Ok(None) => thread::sleep(EXEC_POLL),
                Err(source) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::ExecStartFailed { command, source });
                }
            }
        };

        // The plugin has exited; its pipes close unless it left a child holding them, so the
        // wait for the output is bounded too.
        let grace = self
            .timeout
            .saturating_sub(started.elapsed())
            .max(EXEC_POLL * 10);
        let stdout = stdout.recv_timeout(grace).unwrap_or_default();
        let stderr = stderr.recv_timeout(EXEC_POLL * 10).unwrap_or_default();

        if !status.success() {
            return Err(Error::ExecFailed {
                command,
                status: describe_status(status),
                stderr: stderr_excerpt(&stderr, previous),
            });
        }
        parse_exec_credential(&self.spec.api_version, &stdout)
            .map_err(|reason| Error::ExecOutputInvalid { command, reason })
    }
}

/// `cmd.spawn()`, retried briefly on ETXTBSY ("text file busy"). That error is transient: the
/// executable is still open for writing somewhere, because it is being installed, or because
/// another thread of this process forked while holding it open and the child has not reached
/// its exec yet (rust-lang/rust#114554; it made the exec tests here flaky).
fn spawn(cmd: &mut Command) -> io::Result<std::process::Child> {
    const ETXTBSY: i32 = 26; // Linux, macOS and the BSDs agree
    let mut attempt = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && attempt < 5 => {
                attempt += 1;
                thread::sleep(EXEC_POLL * attempt);
            }
            result => return result,
        }
    }
}

/// Reads up to `limit` bytes from `pipe` on a new thread; the result arrives on the channel.
fn read_in_background<R: Read + Send + 'static>(
    pipe: Option<R>,
    limit: u64,
) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(pipe) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let mut limited = pipe.take(limit);
            let _ = limited.read_to_end(&mut buf);
            // Keep draining past the limit so the plugin does not block on a full pipe.
            let _ = io::copy(&mut limited.into_inner(), &mut io::sink());
            let _ = tx.send(buf);
        });
    }
    rx
}

fn describe_status(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => format!("{status}"),
    }
}

/// The first lines of stderr, for an error message, with `previous` (a token) blanked out.
fn stderr_excerpt(stderr: &[u8], previous: Option<&str>) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut lines: Vec<String> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .take(EXEC_STDERR_LINES)
        .map(|l| {
            let mut line: String = l.chars().take(300).collect();
            if let Some(token) = previous.filter(|t| !t.is_empty()) {
                line = line.replace(token, "<redacted>");
            }
            line
        })
        .collect();
    if lines.is_empty() {
        lines.push("(nothing on stderr)".to_string());
    }
    lines.join(" | ")
}

#[derive(serde::Deserialize)]
struct ExecCredential {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
    status: Option<ExecStatus>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecStatus {
    token: Option<String>,
    expiration_timestamp: Option<String>,
    client_certificate_data: Option<String>,
    client_key_data: Option<String>,
}

/// Parses a plugin's stdout. Errors never quote the output: it holds the credential.
fn parse_exec_credential(api_version: &str, stdout: &[u8]) -> Result<ExecToken, String> {
    let cred: ExecCredential = serde_json::from_slice(stdout).map_err(|e| {
        // serde_json's message can quote the input ("invalid type: string \"...\""), so only
        // the category and position are kept.
        let what = match e.classify() {
            serde_json::error::Category::Eof if stdout.is_empty() => {
                return "printed nothing on stdout".to_string();
            }
            serde_json::error::Category::Eof => "truncated JSON",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "JSON of the wrong shape",
            serde_json::error::Category::Io => "unreadable",
        };
        format!(
            "stdout is {what} (line {} column {}), expected an ExecCredential",
            e.line(),
            e.column()
        )
    })?;
    if cred.kind.as_deref() != Some("ExecCredential") {
        return Err(format!(
            "kind is {:?}, expected \"ExecCredential\"",
            cred.kind.unwrap_or_default()
        ));
    }
    if cred.api_version.as_deref() != Some(api_version) {
        return Err(format!(
            "apiVersion is {:?}, but the kubeconfig asked for {api_version:?}",
            cred.api_version.unwrap_or_default()
        ));
    }
    let status = cred.status.ok_or("no status")?;
    let has_cert = status.client_certificate_data.is_some() || status.client_key_data.is_some();
    let token = match status.token {
        Some(token) if !token.is_empty() => token,
        _ if has_cert => {
            return Err(
                "it returned a client certificate (status.clientCertificateData), which \
                 is not supported; only tokens are"
                    .to_string(),
            )
        }
        _ => return Err("status.token is missing or empty".to_string()),
    };
    if has_cert {
        // client-go would use both; we can only present the token.
        log::warn!(
            "exec plugin returned a client certificate as well as a token; using the token only"
        );
    }
    check_token(&token).map_err(|reason| format!("status.token {reason}"))?;
    let expires =
        match status.expiration_timestamp {
            None => None,
            Some(ts) => Some(parse_rfc3339(&ts).ok_or_else(|| {
                format!("status.expirationTimestamp {ts:?} is not an RFC 3339 time")
            })?),
        };
    Ok(ExecToken {
        token,
        stale: false,
        expires,
    })
}

/// `expirationTimestamp` as a `SystemTime` (crate::time parses RFC 3339).
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let (secs, nanos) = crate::time::parse_rfc3339(s)?;
    UNIX_EPOCH.checked_add(Duration::new(u64::try_from(secs).ok()?, nanos))
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Getting a credential failed. Never carries the credential itself.
///
/// `Display` is the whole story in one line, cause included (callers format errors with `{}`
/// into strings), so `source()` returns None rather than repeating it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The token file could not be read, and no earlier token or kubeconfig token exists.
    TokenFileRead { path: PathBuf, source: io::Error },
    /// A token that cannot be used (empty, or not sendable in a header). `source` says where
    /// it came from ("token file /x", "static token").
    TokenInvalid {
        source: String,
        reason: &'static str,
    },
    /// The exec plugin's command does not exist.
    ExecNotFound {
        command: String,
        install_hint: Option<String>,
    },
    /// The exec plugin could not be started or waited for.
    ExecStartFailed { command: String, source: io::Error },
    /// The exec plugin ran longer than the timeout and was killed.
    ExecTimedOut { command: String, after: Duration },
    /// The exec plugin exited unsuccessfully; `stderr` is its first lines.
    ExecFailed {
        command: String,
        status: String,
        stderr: String,
    },
    /// The exec plugin succeeded but its output is not a usable `ExecCredential`.
    ExecOutputInvalid { command: String, reason: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TokenFileRead { path, source } => {
                write!(f, "token file {}: cannot read: {source}", path.display())
            }
            Error::TokenInvalid { source, reason } => write!(f, "{source}: token {reason}"),
            Error::ExecNotFound {
                command,
                install_hint,
            } => {
                write!(f, "exec plugin {command:?} not found")?;
                match install_hint {
                    Some(hint) => write!(f, ": {}", hint.trim()),
                    None => Ok(()),
                }
            }
            Error::ExecStartFailed { command, source } => {
                write!(f, "exec plugin {command:?}: cannot run: {source}")
            }
            Error::ExecTimedOut { command, after } => write!(
                f,
                "exec plugin {command:?} did not finish within {} s and was killed",
                after.as_secs_f64()
            ),
            Error::ExecFailed {
                command,
                status,
                stderr,
            } => write!(f, "exec plugin {command:?} failed ({status}): {stderr}"),
            Error::ExecOutputInvalid { command, reason } => {
                write!(f, "exec plugin {command:?}: {reason}")
            }
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn write_script(path: &Path, body: &str) {
        fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A plugin that appends a line to `calls` each time it runs and prints a credential.
    /// `status` is the JSON of the status object.
    fn counting_plugin(dir: &Path, api_version: &str, status: &str) -> PathBuf {
        let script = dir.join("plugin.sh");
        let calls = dir.join("calls");
        write_script(
            &script,
            &format!(
                "echo run >> '{}'\ncat <<EOF\n{{\"apiVersion\":\"{api_version}\",\"kind\":\"ExecCredential\",\"status\":{status}}}\nEOF\n",
                calls.display()
            ),
        );
        script
    }

    fn calls(dir: &Path) -> usize {
        fs::read_to_string(dir.join("calls"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn spec(api_version: &str, command: &str) -> ExecSpec {
        ExecSpec {
            api_version: api_version.to_string(),
            command: command.to_string(),
            args: vec![],
            env: vec![],
            install_hint: None,
            cluster: None,
        }
    }

    fn header(c: &Credentials) -> Option<String> {
        c.authorization().unwrap()
    }

    #[test]
    fn simple_kinds_and_descriptions() {
        let cases: Vec<(Credentials, Option<&str>, &str)> = vec![
            (Credentials::none(), None, "none"),
            (
                Credentials::none().with_client_certificate(),
                None,
                "client certificate",
            ),
            (
                Credentials::static_token("abc".into()),
                Some("Bearer abc"),
                "static token",
            ),
            (
                Credentials::static_token("abc".into()).with_client_certificate(),
                Some("Bearer abc"),
                "static token and client certificate",
            ),
            // RFC 7617 section 2 example.
            (
                Credentials::basic("Aladdin".into(), "open sesame".into()),
                Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
                "basic auth as Aladdin",
            ),
            (
                Credentials::token_file("/x/token".into()),
                None,
                "token file /x/token",
            ),
            (
                Credentials::exec(
                    spec(EXEC_API_VERSIONS[0], "aws-iam-authenticator"),
                    "/".into(),
                ),
                None,
                "exec plugin aws-iam-authenticator",
            ),
        ];
        for (creds, want_header, want_description) in cases {
            assert_eq!(creds.describe(), want_description);
            assert_eq!(
                format!("{creds:?}"),
                format!("Credentials({want_description})")
            );
            if want_header.is_some() || want_description == "none" {
                assert_eq!(header(&creds).as_deref(), want_header, "{want_description}");
            }
        }
    }

    #[test]
    fn bad_static_tokens_are_errors_that_do_not_quote_them() {
        for token in ["", "abc def", "abc\r\nX-Evil: 1"] {
            let err = Credentials::static_token(token.into())
                .authorization()
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("static token: token "), "{err}");
            assert!(token.is_empty() || !err.contains(token), "{err}");
        }
    }

    #[test]
    fn token_file_is_cached_then_reread_after_invalidate_and_after_60_s() {
        let dir = TempDir::new("tokenfile");
        let path = dir.dir().join("token");
        fs::write(&path, "one\n").unwrap();
        let creds = Credentials::token_file(path.clone());
        assert_eq!(header(&creds).as_deref(), Some("Bearer one"));

        fs::write(&path, "two").unwrap();
        assert_eq!(header(&creds).as_deref(), Some("Bearer one"), "cached");
        creds.age_token_file(Duration::from_secs(59));
        assert_eq!(header(&creds).as_deref(), Some("Bearer one"), "59 s");
        creds.age_token_file(Duration::from_secs(2));
        assert_eq!(header(&creds).as_deref(), Some("Bearer two"), "61 s");

        fs::write(&path, "  three \n").unwrap();
        assert_eq!(header(&creds).as_deref(), Some("Bearer two"), "cached");
        creds.invalidate();
        assert_eq!(header(&creds).as_deref(), Some("Bearer three"), "after 401");
    }

    #[test]
    fn token_file_keeps_the_last_good_token_when_the_file_vanishes() {
        let dir = TempDir::new("vanish");
        let path = dir.dir().join("token");
        fs::write(&path, "good").unwrap();
        let creds = Credentials::token_file(path.clone());
        assert_eq!(header(&creds).as_deref(), Some("Bearer good"));

        fs::remove_file(&path).unwrap();
        creds.age_token_file(Duration::from_secs(61));
        assert_eq!(header(&creds).as_deref(), Some("Bearer good"), "after 60 s");
        creds.invalidate();
        assert_eq!(header(&creds).as_deref(), Some("Bearer good"), "after 401");
        fs::write(&path, "").unwrap();
        creds.invalidate();
        assert_eq!(header(&creds).as_deref(), Some("Bearer good"), "empty file");

        fs::write(&path, "back").unwrap();
        creds.invalidate();
        assert_eq!(header(&creds).as_deref(), Some("Bearer back"));
    }

    #[test]
    fn token_file_errors_when_never_readable() {
        let dir = TempDir::new("missing");
        let path = dir.dir().join("token");
        let err = Credentials::token_file(path.clone())
            .authorization()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "token file {}: cannot read: No such file or directory (os error 2)",
                path.display()
            )
        );

        fs::write(&path, "\n").unwrap();
        let err = Credentials::token_file(path.clone())
            .authorization()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("token file {}: token is empty", path.display())
        );
    }

    #[test]
    fn token_file_wins_over_token_and_token_is_the_fallback() {
        let dir = TempDir::new("fallback");
        let path = dir.dir().join("token");
        let creds = Credentials::token_file_with_fallback(path.clone(), "static".into());
        assert_eq!(
            header(&creds).as_deref(),
            Some("Bearer static"),
            "no file yet"
        );
        fs::write(&path, "from-file").unwrap();
        assert_eq!(
            header(&creds).as_deref(),
            Some("Bearer static"),
            "the failed read is not retried on every request"
        );
        creds.age_token_file(Duration::from_secs(61));
        assert_eq!(header(&creds).as_deref(), Some("Bearer from-file"));
        fs::remove_file(&path).unwrap();
        creds.invalidate();
        assert_eq!(
            header(&creds).as_deref(),
            Some("Bearer from-file"),
            "last read value wins over the static token"
        );
    }

    #[test]
    fn exec_plugin_v1_and_v1beta1() {
        for api_version in EXEC_API_VERSIONS {
            let dir = TempDir::new("exec");
            let script = dir.dir().join("plugin.sh");
            // Echo back what the plugin was given, to check args, env and KUBERNETES_EXEC_INFO.
            write_script(
                &script,
                &format!(
                    "read -r line || true\n\
                     printf '%s\\n' \"$1 $2\" \"$EXTRA\" \"$KUBERNETES_EXEC_INFO\" \"stdin=$line\" > '{}'\n\
                     cat <<EOF\n{{\"apiVersion\":\"{api_version}\",\"kind\":\"ExecCredential\",\
                     \"status\":{{\"token\":\"tok-{api_version}\"}}}}\nEOF\n",
                    dir.dir().join("seen").display()
                ),
            );
            let mut spec = spec(api_version, "./plugin.sh");
            spec.args = vec!["get-token".into(), "--x".into()];
            spec.env = vec![("EXTRA".into(), "extra value".into())];
            let creds = Credentials::exec(spec, dir.dir().to_path_buf());
            assert_eq!(
                header(&creds),
                Some(format!("Bearer tok-{api_version}")),
                "{api_version}"
            );
            let seen = fs::read_to_string(dir.dir().join("seen")).unwrap();
            let want = format!(
                "get-token --x\nextra value\n\
                 {{\"apiVersion\":\"{api_version}\",\"kind\":\"ExecCredential\",\"spec\":{{\"interactive\":false}}}}\n\
                 stdin=\n"
            );
            assert_eq!(seen, want);
        }
    }

    #[test]
    fn exec_plugin_gets_cluster_info_when_asked() {
        let dir = TempDir::new("clusterinfo");
        let script = dir.dir().join("plugin.sh");
        write_script(
            &script,
            &format!(
                "printf '%s' \"$KUBERNETES_EXEC_INFO\" > '{}'\n\
                 echo '{{\"apiVersion\":\"{}\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"t\"}}}}'\n",
                dir.dir().join("seen").display(),
                EXEC_API_VERSIONS[0]
            ),
        );
        let mut spec = spec(EXEC_API_VERSIONS[0], script.to_str().unwrap());
        spec.cluster = Some(ExecCluster {
            server: "https://k:6443".into(),
            certificate_authority_data: Some(b"PEM".to_vec()),
            insecure_skip_tls_verify: false,
        });
        let creds = Credentials::exec(spec, "/nonexistent".into());
        assert_eq!(header(&creds).as_deref(), Some("Bearer t"));
        let seen: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.dir().join("seen")).unwrap()).unwrap();
        assert_eq!(
            seen["spec"],
            serde_json::json!({"interactive": false, "cluster": {
                "server": "https://k:6443", "certificate-authority-data": "UEVN"}})
        );
    }

    #[test]
    fn exec_token_is_cached_until_shortly_before_expiry() {
        let v1 = EXEC_API_VERSIONS[0];
        // (status, invocations after two authorization() calls, after invalidate + one more)
        let cases = [
            (r#"{"token":"t"}"#, 1, 2),
            (
                r#"{"token":"t","expirationTimestamp":"2999-01-01T00:00:00Z"}"#,
                1,
                2,
            ),
            (
                r#"{"token":"t","expirationTimestamp":"2020-01-01T00:00:00Z"}"#,
                2,
                3,
            ),
        ];
        for (status, after_two, after_invalidate) in cases {
            let dir = TempDir::new("expiry");
            let script = counting_plugin(dir.dir(), v1, status);
            let creds = Credentials::exec(spec(v1, script.to_str().unwrap()), "/".into());
            assert_eq!(header(&creds).as_deref(), Some("Bearer t"));
            assert_eq!(header(&creds).as_deref(), Some("Bearer t"));
            assert_eq!(calls(dir.dir()), after_two, "{status}");
            creds.invalidate();
            assert_eq!(header(&creds).as_deref(), Some("Bearer t"));
            assert_eq!(calls(dir.dir()), after_invalidate, "{status}");
        }

        // Within the leeway of expiry counts as expired.
        let dir = TempDir::new("leeway");
        let soon = SystemTime::now() + Duration::from_secs(5);
        let secs = soon.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let ts = format_rfc3339(secs);
        let script = counting_plugin(
            dir.dir(),
            v1,
            &format!(r#"{{"token":"t","expirationTimestamp":"{ts}"}}"#),
        );
        let creds = Credentials::exec(spec(v1, script.to_str().unwrap()), "/".into());
        header(&creds);
        header(&creds);
        assert_eq!(calls(dir.dir()), 2);
    }

    /// Test helper: seconds since the epoch -> "YYYY-MM-DDTHH:MM:SSZ".
    fn format_rfc3339(secs: i64) -> String {
        let mut s = String::new();
        crate::time::format_rfc3339(secs * 1_000_000_000, &mut s);
        s
    }

    #[test]
    fn exec_plugin_failures() {
        let v1 = EXEC_API_VERSIONS[0];
        let v1beta1 = EXEC_API_VERSIONS[1];
        let cred = |api: &str, status: &str| {
            format!("cat <<EOF\n{{\"apiVersion\":\"{api}\",\"kind\":\"ExecCredential\",\"status\":{status}}}\nEOF\n")
        };
        // (script body, expected error after `exec plugin "<path>"`)
        let cases: Vec<(String, &str)> = vec![
            (
                "echo 'error: could not get token: expired' >&2\necho line2 >&2\necho secret-stdout\nexit 3\n".into(),
                " failed (exit status 3): error: could not get token: expired | line2",
            ),
            ("exit 1\n".into(), " failed (exit status 1): (nothing on stderr)"),
            ("kill -9 $$\n".into(), " failed (signal: 9 (SIGKILL)): (nothing on stderr)"),
            ("echo '{\"token\": 12345678' \n".into(), ": stdout is truncated JSON (line 2 column 0), expected an ExecCredential"),
            ("echo 'tok-secret'\n".into(), ": stdout is not JSON (line 1 column 2), expected an ExecCredential"),
            ("true\n".into(), ": printed nothing on stdout"),
            (cred(v1beta1, r#"{"token":"t"}"#), ": apiVersion is \"client.authentication.k8s.io/v1beta1\", but the kubeconfig asked for \"client.authentication.k8s.io/v1\""),
            (cred(v1, r#"{"clientCertificateData":"x","clientKeyData":"y"}"#), ": it returned a client certificate (status.clientCertificateData), which is not supported; only tokens are"),
            (cred(v1, r#"{"token":""}"#), ": status.token is missing or empty"),
            (cred(v1, r#"{"token":"t","expirationTimestamp":"tomorrow"}"#), ": status.expirationTimestamp \"tomorrow\" is not an RFC 3339 time"),
            (cred(v1, r#"{"token":["secret-in-array"]}"#), ": stdout is JSON of the wrong shape (line 1 column 90), expected an ExecCredential"),
        ];
        for (body, want) in cases {
            let dir = TempDir::new("fail");
            let script = dir.dir().join("plugin.sh");
            write_script(&script, &body);
            let creds = Credentials::exec(spec(v1, script.to_str().unwrap()), "/".into());
            let err = creds.authorization().unwrap_err().to_string();
            assert_eq!(
                err,
                format!("exec plugin {:?}{want}", script.to_str().unwrap()),
                "{body}"
            );
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn exec_plugin_stderr_is_scrubbed_of_the_previous_token() {
        let v1 = EXEC_API_VERSIONS[0];
        let dir = TempDir::new("scrub");
        let script = dir.dir().join("plugin.sh");
        let marker = dir.dir().join("ran");
        // First run succeeds with token "s3cr3t"; the second fails and echoes it on stderr.
        write_script(
            &script,
            &format!(
                "if [ -e '{m}' ]; then echo 'old token s3cr3t rejected' >&2; exit 1; fi\n\
                 touch '{m}'\n\
                 echo '{{\"apiVersion\":\"{v1}\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"s3cr3t\"}}}}'\n",
                m = marker.display()
            ),
        );
        let creds = Credentials::exec(spec(v1, script.to_str().unwrap()), "/".into());
        assert_eq!(header(&creds).as_deref(), Some("Bearer s3cr3t"));
        creds.invalidate();
        let err = creds.authorization().unwrap_err().to_string();
        assert!(err.ends_with("old token <redacted> rejected"), "{err}");
    }

    #[test]
    fn exec_plugin_not_found_shows_the_install_hint() {
        let mut s = spec(EXEC_API_VERSIONS[1], "kube-event-no-such-plugin");
        s.install_hint = Some("install it with: brew install something\n".into());
        let err = Credentials::exec(s, "/".into())
            .authorization()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "exec plugin \"kube-event-no-such-plugin\" not found: install it with: brew install something"
        );

        // Relative paths with a '/' resolve against the kubeconfig directory, not the cwd.
        let dir = TempDir::new("relative");
        let err = Credentials::exec(spec(EXEC_API_VERSIONS[0], "bin/p"), dir.dir().into())
            .authorization()
            .unwrap_err();
        assert_eq!(err.to_string(), "exec plugin \"bin/p\" not found");
    }

    #[test]
    fn exec_plugin_that_hangs_is_killed() {
        let dir = TempDir::new("hang");
        let script = dir.dir().join("plugin.sh");
        write_script(&script, "exec sleep 30\n");
        let mut creds = Credentials::exec(
            spec(EXEC_API_VERSIONS[0], script.to_str().unwrap()),
            "/".into(),
        );
        creds.set_exec_timeout(Duration::from_millis(300));
        let started = Instant::now();
        let err = creds.authorization().unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            err.to_string(),
            format!(
                "exec plugin {:?} did not finish within 0.3 s and was killed",
                script.to_str().unwrap()
            )
        );
    }

    #[test]
    fn credentials_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Credentials>();
    }
}
