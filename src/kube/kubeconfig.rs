//! Where the API server is and how to reach it: kubeconfig files and in-cluster service
//! accounts turned into one `Access`.
//!
//! It exists so that everything a user can get wrong about cluster access fails at startup,
//! with the file and the key to fix: certificates and keys are decoded and parsed here, token
//! files are read once here, and whatever this daemon does not implement (`auth-provider`,
//! `proxy-url`, impersonation) is refused here rather than silently ignored.
//!
//! `resolve` is a pure function of `Inputs` (paths and environment values passed in), so tests
//! need no real environment or home directory. The rules follow client-go (protocols.md 3.1,
//! 3.4, 3.5): first source that applies wins; several `KUBECONFIG` files merge first-wins per
//! named entry; relative paths resolve against the directory of the file that defined the
//! entry; `-data` fields win over paths.
//!
//! The kubeconfig is read as a YAML tree (yaml-rust2) rather than through serde: merging is
//! per named entry and error messages need the key path, both easier on the tree.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

use super::auth::{self, Credentials, ExecCluster, ExecSpec};

/// Where a pod's service account is mounted (client-go `rest.InClusterConfig`).
pub const SERVICEACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// kubeadm's admin kubeconfig on a control-plane node (protocols.md 3.6).
pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";

/// Where the inputs come from; a pure function of these, so tests need no real env/home.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The KUBECONFIG key of kube-event.conf (already absolute).
    pub kubeconfig_key: Option<&'a Path>,
    /// The KUBE_CONTEXT key: overrides `current-context`.
    pub context: Option<&'a str>,
    /// env KUBERNETES_SERVICE_HOST
    pub service_host: Option<&'a str>,
    /// env KUBERNETES_SERVICE_PORT
    pub service_port: Option<&'a str>,
    /// env KUBECONFIG (':'-separated list)
    pub kubeconfig_env: Option<&'a str>,
    /// $HOME
    pub home: Option<&'a Path>,
    /// Normally `SERVICEACCOUNT_DIR`.
    pub serviceaccount_dir: &'a Path,
    /// Normally `ADMIN_CONF`.
    pub admin_conf: &'a Path,
}

/// The environment variables `resolve` looks at, read once.
struct Env {
    service_host: Option<String>,
    service_port: Option<String>,
    kubeconfig: Option<String>,
    home: Option<PathBuf>,
}

impl Env {
    /// Values that are not UTF-8 count as unset (HOME is taken as a path).
    fn read() -> Env {
        let var = |name: &str| std::env::var(name).ok();
        Env {
            service_host: var("KUBERNETES_SERVICE_HOST"),
            service_port: var("KUBERNETES_SERVICE_PORT"),
            kubeconfig: var("KUBECONFIG"),
            home: std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from),
        }
    }

    fn inputs<'a>(
        &'a self,
        kubeconfig_key: Option<&'a Path>,
        context: Option<&'a str>,
    ) -> Inputs<'a> {
        Inputs {
            kubeconfig_key,
            context,
            service_host: self.service_host.as_deref(),
            service_port: self.service_port.as_deref(),
            kubeconfig_env: self.kubeconfig.as_deref(),
            home: self.home.as_deref(),
            serviceaccount_dir: Path::new(SERVICEACCOUNT_DIR),
            admin_conf: Path::new(ADMIN_CONF),
        }
    }
}

/// `resolve` with the real environment (KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT,
/// KUBECONFIG, HOME) and the standard paths `SERVICEACCOUNT_DIR` and `ADMIN_CONF`.
pub fn resolve_from_env(
    kubeconfig_key: Option<&Path>,
    context: Option<&str>,
) -> Result<Access, Error> {
    let env = Env::read();
    resolve(&env.inputs(kubeconfig_key, context))
}

/// Everything needed to talk to the API server.
#[derive(Debug)]
pub struct Access {
    /// e.g. "https://10.0.0.1:6443", no trailing '/' (may carry a path prefix, as behind
    /// Rancher).
    pub server: String,
    pub tls: TlsMaterial,
    pub credentials: Credentials,
    /// e.g. "kubeconfig /root/.kube/config, context kubernetes-admin@kubernetes" or
    /// "in-cluster service account (/var/run/secrets/...)".
    pub source: String,
    /// The kubeconfig user name, or "service account in namespace <ns or ?>".
    pub user: String,
}

/// TLS settings, already decoded and checked to parse.
#[derive(Clone, Default, PartialEq)]
pub struct TlsMaterial {
    /// PEM bundle; None = system/webpki roots.
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_skip_verify: bool,
    pub client_cert_pem: Option<Vec<u8>>,
    /// PKCS#1 "RSA PRIVATE KEY", SEC1 "EC PRIVATE KEY" or PKCS#8 "PRIVATE KEY".
    pub client_key_pem: Option<Vec<u8>>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Sizes only: the key is a secret, and the rest is noise in a log.
        let len = |v: &Option<Vec<u8>>| v.as_ref().map(|v| format!("{} bytes", v.len()));
        f.debug_struct("TlsMaterial")
            .field("ca_pem", &len(&self.ca_pem))
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("client_cert_pem", &len(&self.client_cert_pem))
            .field(
                "client_key_pem",
                &self.client_key_pem.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Resolves cluster access from the first source that applies:
/// 1. the KUBECONFIG key of kube-event.conf (the file must exist);
/// 2. in-cluster, when KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are both set;
/// 3. the KUBECONFIG environment variable's files, merged;
/// 4. `$HOME/.kube/config` if it exists;
/// 5. `admin_conf` if it exists.
pub fn resolve(inputs: &Inputs) -> Result<Access, Error> {
    let mut tried = Vec::new();

    if let Some(path) = inputs.kubeconfig_key {
        let file = load(path, true)?.expect("load(_, true) returns a file or an error");
        return from_kubeconfig(&[file], inputs.context);
    }
    tried.push("KUBECONFIG key in kube-event.conf: not set".to_string());

    let host = inputs.service_host.filter(|h| !h.is_empty());
    let port = inputs.service_port.filter(|p| !p.is_empty());
    match (host, port) {
        (Some(host), Some(port)) => {
            if let Some(context) = inputs.context {
                log::warn!("KUBE_CONTEXT {context:?} is ignored: running in-cluster");
            }
            return in_cluster(host, port, inputs.serviceaccount_dir);
        }
        (None, None) => tried.push(
            "in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT not set".to_string(),
        ),
        (None, Some(_)) => tried.push("in-cluster: KUBERNETES_SERVICE_HOST not set".to_string()),
        (Some(_), None) => tried.push("in-cluster: KUBERNETES_SERVICE_PORT not set".to_string()),
    }

    // client-go semantics: empty names and missing files are skipped, unreadable files are
    // errors. If KUBECONFIG names files but none exists we stop with an error rather than
    // fall back to $HOME or admin.conf: kubectl does not fall back either, and silently
    // picking up admin credentials the operator did not point at would be worse than failing.
    let env_paths: Vec<&str> = inputs
        .kubeconfig_env
        .unwrap_or("")
        .split(':')
        .filter(|p| !p.is_empty())
        .collect();
    if !env_paths.is_empty() {
        let mut files = Vec::new();
        for path in &env_paths {
            if let Some(file) = load(Path::new(path), false)? {
                files.push(file);
            }
        }
        if files.is_empty() {
            return Err(Error::KubeconfigEnvMissing {
                value: inputs.kubeconfig_env.unwrap_or("").to_string(),
            });
        }
        return from_kubeconfig(&files, inputs.context);
    }
    tried.push("KUBECONFIG environment variable: not set".to_string());

    match inputs.home {
        Some(home) => {
            let path = home.join(".kube").join("config");
            if let Some(file) = load(&path, false)? {
                return from_kubeconfig(&[file], inputs.context);
            }
            tried.push(format!("{}: does not exist", path.display()));
        }
        None => tried.push("$HOME/.kube/config: HOME not set".to_string()),
    }

    if let Some(file) = load(inputs.admin_conf, false)? {
        return from_kubeconfig(&[file], inputs.context);
    }
    tried.push(format!("{}: does not exist", inputs.admin_conf.display()));

    Err(Error::NotConfigured { tried })
}

// ---------------------------------------------------------------------------------------------
// In-cluster

fn in_cluster(host: &str, port: &str, dir: &Path) -> Result<Access, Error> {
    // net.JoinHostPort: an IPv6 literal gets brackets.
    let server = if host.contains(':') && !host.starts_with('[') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    };

    let ca_path = dir.join("ca.crt");
    let ca = std::fs::read(&ca_path).map_err(|source| Error::InClusterFailed {
        path: ca_path.clone(),
        source,
    })?;
    check_certificates(&ca).map_err(|reason| Error::Invalid {
        path: ca_path.clone(),
        key: String::new(),
        reason,
    })?;

    // client-go reads the token at startup too (and fails without it); afterwards it is
    // re-read, because the kubelet rotates it.
    let token_path = dir.join("token");
    let credentials = Credentials::token_file(token_path);
    credentials
        .authorization()
        .map_err(|source| Error::CredentialsFailed {
            origin: "in-cluster service account".to_string(),
            source,
        })?;

    let namespace = std::fs::read_to_string(dir.join("namespace"))
        .ok()
        .map(|ns| ns.trim().to_string())
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "?".to_string());

    Ok(Access {
        server,
        tls: TlsMaterial {
            ca_pem: Some(ca),
            ..TlsMaterial::default()
        },
        credentials,
        source: format!("in-cluster service account ({})", dir.display()),
        user: format!("service account in namespace {namespace}"),
    })
}

// ---------------------------------------------------------------------------------------------
// kubeconfig files

/// One parsed kubeconfig file.
struct File {
    path: PathBuf,
    /// Relative paths in this file's entries resolve against this directory.
    dir: PathBuf,
    root: Yaml,
}

/// Reads and parses `path`; `Ok(None)` if it does not exist, unless it `must_exist`.
fn load(path: &Path, must_exist: bool) -> Result<Option<File>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !must_exist => return Ok(None),
        Err(source) => {
            return Err(Error::ReadFailed {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let docs = YamlLoader::load_from_str(&text).map_err(|source| Error::ParseFailed {
        path: path.to_path_buf(),
        source,
    })?;
    // An empty file is an empty config, as in client-go.
    let root = docs.into_iter().next().unwrap_or(Yaml::Null);
    if !matches!(root, Yaml::Hash(_) | Yaml::Null) {
        return Err(Error::Invalid {
            path: path.to_path_buf(),
            key: String::new(),
            reason: "not a kubeconfig: the top level is not a mapping".to_string(),
        });
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Ok(Some(File {
        path: path.to_path_buf(),
        dir,
        root,
    }))
}

/// A named cluster, user or context, with the file that defined it.
struct Named<'a> {
    name: &'a str,
    body: &'a Yaml,
    file: &'a File,
}

/// The files merged as client-go does: "the first file to set a particular map key wins and
/// map key's value is never changed" (loader.go). A named entry is taken whole from the first
/// file that defines it; `current-context` from the first file that sets it.
struct Merged<'a> {
    clusters: Vec<Named<'a>>,
    users: Vec<Named<'a>>,
    contexts: Vec<Named<'a>>,
    current_context: Option<&'a str>,
}

impl<'a> Merged<'a> {
    fn new(files: &'a [File]) -> Result<Self, Error> {
        Ok(Merged {
            clusters: merge(files, "clusters", "cluster")?,
            users: merge(files, "users", "user")?,
            contexts: merge(files, "contexts", "context")?,
            current_context: files
                .iter()
                .filter_map(|f| f.root["current-context"].as_str())
                .find(|c| !c.is_empty()),
        })
    }
}

fn merge<'a>(files: &'a [File], list: &str, inner: &str) -> Result<Vec<Named<'a>>, Error> {
    let mut merged: Vec<Named<'a>> = Vec::new();
    for file in files {
        let items = match &file.root[list] {
            Yaml::Array(items) => items.as_slice(),
            Yaml::Null | Yaml::BadValue => &[],
            _ => return Err(file.invalid(list, "expected a list")),
        };
        let first_of_this_file = merged.len();
        for (i, item) in items.iter().enumerate() {
            let name = match &item["name"] {
                Yaml::String(name) if !name.is_empty() => name.as_str(),
                _ => return Err(file.invalid(&format!("{list}[{i}].name"), "missing")),
            };
            // Within one file a repeated name is an error (client-go's conversion refuses
            // it); across files the first one wins.
            if merged[first_of_this_file..].iter().any(|n| n.name == name) {
                return Err(file.invalid(list, &format!("duplicate name {name:?}")));
            }
            if merged[..first_of_this_file].iter().any(|n| n.name == name) {
                continue;
            }
            merged.push(Named {
                name,
                body: &item[inner],
                file,
            });
        }
    }
    Ok(merged)
}

fn names(entries: &[Named]) -> String {
    if entries.is_empty() {
        return "none defined".to_string();
    }
    entries
        .iter()
        .map(|n| n.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn find<'a, 'b>(entries: &'b [Named<'a>], name: &str) -> Option<&'b Named<'a>> {
    entries.iter().find(|n| n.name == name)
}

fn from_kubeconfig(files: &[File], context_override: Option<&str>) -> Result<Access, Error> {
    let merged = Merged::new(files)?;
    let file_list = files
        .iter()
        .map(|f| f.path.display().to_string())
        .collect::<Vec<_>>()
        .join(":");

    let context_name = context_override
        .filter(|c| !c.is_empty())
        .or(merged.current_context)
        .ok_or_else(|| Error::NoContext {
            files: file_list.clone(),
        })?;
    let context = find(&merged.contexts, context_name).ok_or_else(|| Error::ContextNotFound {
        files: file_list.clone(),
        name: context_name.to_string(),
        available: names(&merged.contexts),
    })?;
    let ctx = Entry::new(context, "contexts");
    let cluster_name = ctx
        .string("cluster")?
        .ok_or_else(|| ctx.invalid("cluster", "missing"))?;
    let user_name = ctx.string("user")?;

    let cluster = find(&merged.clusters, cluster_name).ok_or_else(|| Error::NotDefined {
        file: context.file.path.clone(),
        context: context_name.to_string(),
        what: "cluster",
        name: cluster_name.to_string(),
        available: names(&merged.clusters),
    })?;
    let cluster = Entry::new(cluster, "clusters");
    let (server, mut tls, exec_cluster) = parse_cluster(&cluster)?;

    let (credentials, user_description) = match user_name {
        // A context without a user: anonymous, as in client-go.
        None => (Credentials::none(), "(no user)".to_string()),
        Some(user_name) => {
            let user = find(&merged.users, user_name).ok_or_else(|| Error::NotDefined {
                file: context.file.path.clone(),
                context: context_name.to_string(),
                what: "user",
                name: user_name.to_string(),
                available: names(&merged.users),
            })?;
            let user = Entry::new(user, "users");
            let credentials = parse_user(&user, &mut tls, exec_cluster)?;
            (credentials, user_name.to_string())
        }
    };

    Ok(Access {
        server,
        tls,
        credentials,
        source: format!("kubeconfig {file_list}, context {context_name}"),
        user: user_description,
    })
}

/// One named entry being read, for error messages naming `list[name].key`.
struct Entry<'a> {
    name: &'a str,
    list: &'static str,
    body: &'a Yaml,
    file: &'a File,
}

impl<'a> Entry<'a> {
    fn new(named: &Named<'a>, list: &'static str) -> Self {
        Entry {
            name: named.name,
            list,
            body: named.body,
            file: named.file,
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}[{}].{key}", self.list, self.name)
    }

    fn invalid(&self, key: &str, reason: &str) -> Error {
        self.file.invalid(&self.key(key), reason)
    }

    fn unsupported(&self, key: &str, reason: String) -> Error {
        Error::Unsupported {
            path: self.file.path.clone(),
            key: self.key(key),
            reason,
        }
    }

    /// Whether `key` is present with a non-empty value.
    fn has(&self, key: &str) -> bool {
        match &self.body[key] {
            Yaml::Null | Yaml::BadValue => false,
            Yaml::String(s) => !s.is_empty(),
            Yaml::Array(a) => !a.is_empty(),
            Yaml::Hash(h) => !h.is_empty(),
            _ => true,
        }
    }

    /// A string value; absent, null and "" are None. Numbers and booleans are refused rather
    /// than converted: `password: 0123` would otherwise turn into "123".
    fn string(&self, key: &str) -> Result<Option<&'a str>, Error> {
        match &self.body[key] {
            Yaml::Null | Yaml::BadValue => Ok(None),
            Yaml::String(s) if s.is_empty() => Ok(None),
            Yaml::String(s) => Ok(Some(s)),
            _ => Err(self.invalid(key, "expected a string (quote the value)")),
        }
    }

    fn bool(&self, key: &str) -> Result<bool, Error> {
        match &self.body[key] {
            Yaml::Null | Yaml::BadValue => Ok(false),
            Yaml::Boolean(b) => Ok(*b),
            _ => Err(self.invalid(key, "expected true or false")),
        }
    }

    /// A path value, resolved against the directory of the file that defined the entry.
    fn path(&self, key: &str) -> Result<Option<PathBuf>, Error> {
        Ok(self.string(key)?.map(|p| self.file.dir.join(p)))
    }

    /// `<key>-data` (base64) if set, else the file named by `<key>`.
    fn data_or_file(&self, key: &str) -> Result<Option<(Vec<u8>, String)>, Error> {
        let data_key = format!("{key}-data");
        if let Some(data) = self.string(&data_key)? {
            let bytes =
                crate::base64::decode(data).map_err(|e| self.invalid(&data_key, &e.to_string()))?;
            return Ok(Some((bytes, data_key)));
        }
        match self.path(key)? {
            None => Ok(None),
            Some(path) => {
                let bytes = std::fs::read(&path).map_err(|source| Error::ReferencedFileFailed {
                    kubeconfig: self.file.path.clone(),
                    key: self.key(key),
                    file: path.clone(),
                    source,
                })?;
                Ok(Some((bytes, key.to_string())))
            }
        }
    }
}

impl File {
    fn invalid(&self, key: &str, reason: &str) -> Error {
        Error::Invalid {
            path: self.path.clone(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// `clusters[].cluster` -> server URL, CA and insecure flag, and what an exec plugin with
/// `provideClusterInfo` is told.
fn parse_cluster(cluster: &Entry) -> Result<(String, TlsMaterial, ExecCluster), Error> {
    if cluster.has("proxy-url") {
        return Err(cluster.unsupported(
            "proxy-url",
            "proxy-url is not supported; reach the API server directly".to_string(),
        ));
    }
    let server = cluster
        .string("server")?
        .ok_or_else(|| cluster.invalid("server", "missing"))?;
    let server = normalize_server(server).map_err(|reason| cluster.invalid("server", reason))?;

    let ca_pem = match cluster.data_or_file("certificate-authority")? {
        None => None,
        Some((pem, key)) => {
            check_certificates(&pem).map_err(|reason| cluster.invalid(&key, &reason))?;
            Some(pem)
        }
    };
    let insecure = cluster.bool("insecure-skip-tls-verify")?;
    if insecure && ca_pem.is_some() {
        // client-go refuses the same combination (transport: "specifying a root certificates
        // file with the insecure flag is not allowed").
        return Err(cluster.invalid(
            "insecure-skip-tls-verify",
            "cannot be combined with certificate-authority(-data); remove one of them",
        ));
    }

    // ureq (3.5) verifies the certificate against the host in the URL and cannot be told
    // another name. Refusing would break kubeconfigs where the certificate covers both names
    // (tls-server-name is often set defensively), so we warn and carry on: if the
    // certificate does not cover the URL's host, the TLS error follows right after this line.
    if let Some(name) = cluster.string("tls-server-name")? {
        let host = server_host(&server);
        if !insecure && !name.eq_ignore_ascii_case(host) {
            log::warn!(
                "{}: {}: tls-server-name {name:?} is not supported and is ignored; \
                 the server certificate must be valid for {host:?}",
                cluster.file.path.display(),
                cluster.key("tls-server-name"),
            );
        }
    }

    let exec_cluster = ExecCluster {
        server: server.clone(),
        certificate_authority_data: ca_pem.clone(),
        insecure_skip_tls_verify: insecure,
    };
    let tls = TlsMaterial {
        ca_pem,
        insecure_skip_verify: insecure,
        client_cert_pem: None,
        client_key_pem: None,
    };
    Ok((server, tls, exec_cluster))
}

/// "https://h:6443/" -> "https://h:6443"; a bare "h:6443" means https, as in client-go.
fn normalize_server(server: &str) -> Result<String, &'static str> {
    let server = server.trim();
    let (scheme, rest) = match server.split_once("://") {
        Some((scheme @ ("https" | "http"), rest)) => (scheme, rest),
        Some(_) => return Err("only https:// and http:// URLs are supported"),
        None => ("https", server),
    };
    let normalized = format!("{scheme}://{}", rest.trim_end_matches('/'));
    if server_host(&normalized).is_empty() {
        return Err("no host in the URL");
    }
    Ok(normalized)
}

/// The host of a normalized server URL, without port or brackets.
fn server_host(server: &str) -> &str {
    let rest = server.split_once("://").map_or(server, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    authority.split(':').next().unwrap_or("")
}

/// `users[].user` -> credentials; client certificate and key go into `tls`.
fn parse_user(
    user: &Entry,
    tls: &mut TlsMaterial,
    exec_cluster: ExecCluster,
) -> Result<Credentials, Error> {
    if user.has("auth-provider") {
        let name = user.body["auth-provider"]["name"].as_str().unwrap_or("?");
        return Err(user.unsupported(
            "auth-provider",
            format!("auth-provider '{name}' is not supported; use an exec credential plugin"),
        ));
    }
    for key in ["as", "as-uid", "as-groups", "as-user-extra"] {
        if user.has(key) {
            return Err(user.unsupported(
                key,
                "impersonation (as, as-groups, as-uid, as-user-extra) is not supported".to_string(),
            ));
        }
    }

    // Client certificate: both halves or neither, each checked to parse.
    let cert = user.data_or_file("client-certificate")?;
    let key = user.data_or_file("client-key")?;
    let has_client_cert = match (cert, key) {
        (None, None) => false,
        (Some(_), None) => {
            return Err(user.invalid("client-certificate", "given without client-key(-data)"))
        }
        (None, Some(_)) => {
            return Err(user.invalid("client-key", "given without client-certificate(-data)"))
        }
        (Some((cert, cert_key)), Some((key, key_key))) => {
            check_certificates(&cert).map_err(|reason| user.invalid(&cert_key, &reason))?;
            check_private_key(&key).map_err(|reason| user.invalid(&key_key, reason))?;
            tls.client_cert_pem = Some(cert);
            tls.client_key_pem = Some(key);
            true
        }
    };

    let token = user.string("token")?;
    let token_file = user.path("tokenFile")?;
    let username = user.string("username")?;
    let password = user.string("password")?;
    let exec = user.has("exec");

    // client-go's validation allows one of these (plus a client certificate).
    let mut methods = Vec::new();
    if token.is_some() || token_file.is_some() {
        methods.push("token");
    }
    if username.is_some() || password.is_some() {
        methods.push("username/password");
    }
    if exec {
        methods.push("exec");
    }
    if methods.len() > 1 {
        return Err(user.invalid(
            "",
            &format!(
                "more than one authentication method ({}); only one is allowed",
                methods.join(", ")
            ),
        ));
    }

    let credentials = if exec {
        let spec = parse_exec(user, exec_cluster)?;
        Credentials::exec(spec, user.file.dir.clone())
    } else if let Some(path) = token_file {
        // tokenFile wins over token; see Credentials::token_file_with_fallback.
        let credentials = match token {
            Some(token) => Credentials::token_file_with_fallback(path, token.to_string()),
            None => Credentials::token_file(path),
        };
        // Read once now so that a wrong path fails at startup.
        credentials
            .authorization()
            .map_err(|source| Error::CredentialsFailed {
                origin: format!("{}: {}", user.file.path.display(), user.key("tokenFile")),
                source,
            })?;
        credentials
    } else if let Some(token) = token {
        Credentials::static_token(token.to_string())
    } else if username.is_some() || password.is_some() {
        match (username, password) {
            (Some(u), Some(p)) => Credentials::basic(u.to_string(), p.to_string()),
            (Some(_), None) => return Err(user.invalid("username", "given without password")),
            _ => return Err(user.invalid("password", "given without username")),
        }
    } else {
        Credentials::none()
    };

    Ok(if has_client_cert {
        credentials.with_client_certificate()
    } else {
        credentials
    })
}

/// `users[].user.exec` -> `ExecSpec`.
fn parse_exec(user: &Entry, exec_cluster: ExecCluster) -> Result<ExecSpec, Error> {
    let exec = Entry {
        name: user.name,
        list: "users",
        body: &user.body["exec"],
        file: user.file,
    };
    // Keys read as "users[u].exec.<key>".
    let key = |k: &str| format!("exec.{k}");
    let invalid = |k: &str, reason: &str| user.invalid(&key(k), reason);

    let api_version = exec
        .string("apiVersion")
        .map_err(|_| invalid("apiVersion", "expected a string"))?
        .ok_or_else(|| invalid("apiVersion", "missing"))?;
    if !auth::EXEC_API_VERSIONS.contains(&api_version) {
        return Err(user.unsupported(
            &key("apiVersion"),
            format!(
                "exec apiVersion {api_version:?} is not supported (use {})",
                auth::EXEC_API_VERSIONS.join(" or ")
            ),
        ));
    }
    let command = exec
        .string("command")
        .map_err(|_| invalid("command", "expected a string"))?
        .ok_or_else(|| invalid("command", "missing"))?;

    let args = match &exec.body["args"] {
        Yaml::Null | Yaml::BadValue => Vec::new(),
        Yaml::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, a)| match a {
                Yaml::String(s) => Ok(s.clone()),
                _ => Err(invalid(&format!("args[{i}]"), "expected a string")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(invalid("args", "expected a list of strings")),
    };

    let env = match &exec.body["env"] {
        Yaml::Null | Yaml::BadValue => Vec::new(),
        Yaml::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, e)| match (&e["name"], &e["value"]) {
                (Yaml::String(name), Yaml::String(value)) if !name.is_empty() => {
                    Ok((name.clone(), value.clone()))
                }
                _ => Err(invalid(
                    &format!("env[{i}]"),
                    "expected name and value strings",
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(invalid("env", "expected a list of {name, value}")),
    };

    // A daemon has no terminal: a plugin that insists on one cannot work.
    if exec.body["interactiveMode"].as_str() == Some("Always") {
        return Err(user.unsupported(
            &key("interactiveMode"),
            "interactiveMode Always is not supported: kube-event runs without a terminal"
                .to_string(),
        ));
    }

    let install_hint = exec
        .string("installHint")
        .map_err(|_| invalid("installHint", "expected a string"))?
        .map(str::to_string);
    let provide_cluster_info = exec
        .bool("provideClusterInfo")
        .map_err(|_| invalid("provideClusterInfo", "expected true or false"))?;

    Ok(ExecSpec {
        api_version: api_version.to_string(),
        command: command.to_string(),
        args,
        env,
        install_hint,
        cluster: provide_cluster_info.then_some(exec_cluster),
    })
}

// ---------------------------------------------------------------------------------------------
// Certificate and key checks: parse now, fail at startup with the file named.

/// At least one certificate, and every PEM item well-formed. Certificates are public, so the
/// parser's message may be quoted.
fn check_certificates(pem: &[u8]) -> Result<(), String> {
    let mut count = 0;
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => {
                if !is_der_sequence(cert.der()) {
                    return Err(format!(
                        "certificate {} is not valid DER (truncated or corrupted)",
                        count + 1
                    ));
                }
                count += 1;
            }
            Ok(_) => {}
            Err(e) => return Err(format!("not a valid PEM certificate bundle: {e}")),
        }
    }
    if count == 0 {
        return Err("no PEM certificate found (expected -----BEGIN CERTIFICATE-----)".to_string());
    }
    Ok(())
}

/// A private key ureq can load. The parser's own message is not quoted: it may contain
/// bytes of the key.
fn check_private_key(pem: &[u8]) -> Result<(), &'static str> {
    if contains(pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err("encrypted private keys are not supported");
    }
    match ureq::tls::PrivateKey::from_pem(pem) {
        Ok(key) if is_der_sequence(key.der()) => Ok(()),
        Ok(_) => Err("the private key is not valid DER (truncated or corrupted)"),
        Err(ureq::Error::Tls(_)) => Err(
            "no private key found (expected PEM RSA PRIVATE KEY, EC PRIVATE KEY or PRIVATE KEY)",
        ),
        Err(_) => Err("not a valid PEM private key"),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether `der` is exactly one DER SEQUENCE (what certificates and all three key formats
/// are). Catches garbage that is valid base64 inside a PEM block; the TLS library does the
/// real parse when connecting.
fn is_der_sequence(der: &[u8]) -> bool {
    let [0x30, first, rest @ ..] = der else {
        return false;
    };
    let (len, rest) = if first & 0x80 == 0 {
        (usize::from(*first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return false;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    len == rest.len()
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Cluster access could not be resolved. `Display` names the file and key to fix and includes
/// the cause (callers format errors with `{}` into strings), so `source()` returns None rather
/// than repeating it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// No source applied; `tried` lists each with why it did not.
    NotConfigured { tried: Vec<String> },
    /// The KUBECONFIG environment variable names files, none of which exists.
    KubeconfigEnvMissing { value: String },
    /// A kubeconfig file exists but cannot be read (or, for the KUBECONFIG key, does not exist).
    ReadFailed { path: PathBuf, source: io::Error },
    /// A kubeconfig file is not YAML.
    ParseFailed {
        path: PathBuf,
        source: yaml_rust2::ScanError,
    },
    /// A file named by a kubeconfig key (certificate, key) cannot be read.
    ReferencedFileFailed {
        kubeconfig: PathBuf,
        key: String,
        file: PathBuf,
        source: io::Error,
    },
    /// Neither `current-context` nor the KUBE_CONTEXT key says which context to use.
    NoContext { files: String },
    /// The context to use is not defined in the files.
    ContextNotFound {
        files: String,
        name: String,
        available: String,
    },
    /// The context names a cluster or user (`what`) that is not defined.
    NotDefined {
        file: PathBuf,
        context: String,
        what: &'static str,
        name: String,
        available: String,
    },
    /// A value is wrong: type, base64, PEM, a missing companion key. `key` may be empty when
    /// the whole file is meant.
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// The kubeconfig asks for something this daemon does not implement.
    Unsupported {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// A service-account file (`ca.crt`) cannot be read.
    InClusterFailed { path: PathBuf, source: io::Error },
    /// The token could not be read at startup. `origin` is where it was configured.
    CredentialsFailed { origin: String, source: auth::Error },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotConfigured { tried } => write!(
                f,
                "no Kubernetes API access configured; tried: {}",
                tried.join("; ")
            ),
            Error::KubeconfigEnvMissing { value } => write!(
                f,
                "environment variable KUBECONFIG={value:?} names no existing file"
            ),
            Error::ReadFailed { path, source } => {
                write!(f, "kubeconfig {}: cannot read: {source}", path.display())
            }
            Error::ParseFailed { path, source } => {
                write!(f, "kubeconfig {}: not valid YAML: {source}", path.display())
            }
            Error::ReferencedFileFailed {
                kubeconfig,
                key,
                file,
                source,
            } => write!(
                f,
                "{}: {key}: cannot read {}: {source}",
                kubeconfig.display(),
                file.display()
            ),
            Error::NoContext { files } => write!(
                f,
                "kubeconfig {files}: no current-context set and no KUBE_CONTEXT given"
            ),
            Error::ContextNotFound {
                files,
                name,
                available,
            } => write!(
                f,
                "kubeconfig {files}: context {name:?} not found (contexts: {available})"
            ),
            Error::NotDefined {
                file,
                context,
                what,
                name,
                available,
            } => write!(
                f,
                "kubeconfig {}: context {context:?} uses {what} {name:?}, which is not defined \
                 ({what}s: {available})",
                file.display()
            ),
            Error::Invalid { path, key, reason } | Error::Unsupported { path, key, reason } => {
                write!(f, "{}: ", path.display())?;
                if !key.is_empty() {
                    write!(f, "{}: ", key.trim_end_matches('.'))?;
                }
                write!(f, "{reason}")
            }
            Error::InClusterFailed { path, source } => write!(
                f,
                "in-cluster service account: cannot read {}: {source}",
                path.display()
            ),
            Error::CredentialsFailed { origin, source } => write!(f, "{origin}: {source}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::fs;

    // Throwaway test keys, generated once with openssl for these tests only.
    /// `openssl genrsa -traditional 2048` (PKCS#1)
    const RSA_PKCS1_KEY: &str = r"-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAxj8739ajy6TcEyDj9IKOmzFTj1V84vVNTv1kkN4Ues5k/aDM
3fglncA/JvLXivSzAqyLE4t9ovhJJnahu7mHFMhIy16bWaUmEMHY3jVqfqUdD6Cb
kIBpYAukfYEo6JaFmT6S5qpwLjyrkaspXtBfRTA4gwKGp4YhjLAG+dUCz4EoszA0
RE7akreIkZTCBadX+64X+h5QbiKzo3rqwtpvMCWLGVV/t2HMSh0kDAq04rCnIOlM
/sxkbKifnjLV2qTrWqbSMQRhVfSyrd4h1J2fTC4guKCzbBnNwD90mofqw/7Q+OBO
9X55IVagxRNFByXxQwHOe8DI2RogTXgi7IB/SwIDAQABAoIBABjNnYieWqTmbfBo
u4yCbyQkkj9LI1Jj/XWmB1iGqIpK22DOJwOYgeBQRrZxSJ1miyUJAGeEGsZyiPhq
fEa36hokCtOC9S3Ml0webKs0hKvurYmgfwYfws9U9ZIMQFmFR5bKOOfqKBno1lBl
2Um3CUxnQZLGlKFOC1GGToEgcPcUCYxwRWoxYKxARbHEQcWrEbrhXbEWJ7ath+Ma
D5PzPryHsy885212K29YUg4HbnMHXgiWqeXxiHNSXeCBFQK775qJB8DBYedbgRKt
vXY+D8jNihaSHLoRGOMJmGRYMHXd/rRqMLmU/zozYX+uTFp9WnmXqMLSh6yilgTC
5wQDIAkCgYEA/LopRhgg6iPQFp7b7c/iwtmoQ6TrrYi3BHWOIkQKLuoQtFiOvKj0
VEyOGtKFlAfjste2wwP2+hahXukDU+tucXtiMghlD5GoB366KKrL8sSqX8AQX6Pl
iuDMueE+TZ67BOhzCdheRV5dGG4TDtl2uP2weXc25ebuoo7MmTB1+2MCgYEAyNB1
4Vd5c88VV6CUeGvhKz8+NoqPWsOppCNzp3J4j1VZxOF2ZJGl75VpZtjH6WAfLIRf
F6TGIsP28vBx8j5cWkrmU/Qyhf4j2U7eCG5haqALagwOJ+kN+DfeJhyZr/BoiuBt
W/mWwYAsUtcL0y6VWp2ziyv+T69dEOVnF4971PkCgYBR7RNGKro4zKU/P/4xiGuN
GLvoOcVAuwoBQw5xYzcd4DjMDc0vsWGLFkoWvdoZk7knl7AiZd2hUsa7GrQ+dxqV
ZRb++yOvuVsMGvPEDSISL9i/M2bbaikWLSuQskjdJrCfta7dKSveNunc6on5DVvk
OjEEHzZHruX7Ammm20PT2wKBgHQbM0zqyqoO3YQgsDdACJx8oHfgfSo5XugsJz51
jQcyjgirY0yaeZqghKSWSl/A18Vhc6mz92s6apnkM72gGL2L+MgptNyMKCYI14+A
YorHplHWToj80rrlcmgOuT1kfs1tHU3EbUnL1dS/yXJ8yJXwAFNDSHLCLckLGiQh
LbPhAoGBAJ5z5hreOe0mNT7rGn9SFQjICyXbKyOzVoukubT+nL2VbpwQQr//gLt3
XVtI8JlYXsV+im+kPAOO6EJ6+2jYr4s582kV75r5oITQs6CvU39zdL5jLD+rUrjn
TbQ0Xw3sHAWIj+P8h2IzqSyv2du7PrBNtw0Qh0n6Cgl4ZrrqKzXf
-----END RSA PRIVATE KEY-----
";
    /// `openssl ecparam -genkey -name prime256v1 -noout` (SEC1)
    const EC_SEC1_KEY: &str = r"-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIIB3b5sVxA6HApb3UzxfblYvWX/X2gdXZdU3kYjKpLF/oAoGCCqGSM49
AwEHoUQDQgAENtVVVhijFgE+YPN/Yz7KbDjhrYZUnsGhv2n35DJxeiDzUdAZonQt
PaFMgJilw7u5dXa+6WesqJAbukbP0PoxIA==
-----END EC PRIVATE KEY-----
";
    /// `openssl genpkey -algorithm ed25519` (PKCS#8)
    const ED25519_PKCS8_KEY: &str = r"-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIApmupyvRuWRYDISgDrU5iVfsa2ANEuw9+yshMOHaIhx
-----END PRIVATE KEY-----
";
    /// `openssl req -x509 -new -key <EC_SEC1_KEY> -subj /CN=kube-event-test -days 36500`
    const CERT: &str = r"-----BEGIN CERTIFICATE-----
MIIBjDCCATGgAwIBAgIUG/PzLP8xu83gjZrpFHe5ZSAX9AAwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPa3ViZS1ldmVudC10ZXN0MCAXDTI2MTEyNTE5NTkyMVoYDzIx
MjYxMTAxMTk1OTIxWjAaMRgwFgYDVQQDDA9rdWJlLWV2ZW50LXRlc3QwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAAQ21VVWGKMWAT5g839jPspsOOGthlSewaG/affk
MnF6IPNR0BmidC09oUyAmKXDu7l1dr7pZ6yokBu6Rs/Q+jEgo1MwUTAdBgNVHQ4E
FgQUlZu9KTl78CZ3wiYyAEQMygbS9LIwHwYDVR0jBBgwFoAUlZu9KTl78CZ3wiYy
AEQMygbS9LIwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEAk92F
kYyyI+75b547YqIe4yAKNglqN61AgaECesNKBB0CIQDt5IrMbdo+MFD8sKwp/LTa
MMfIo+q2OWEolcAcxOYF2w==
-----END CERTIFICATE-----
";

    /// Inputs with nothing set; service account dir and admin.conf inside `dir` (absent).
    fn empty_inputs<'a>(sa: &'a Path, admin: &'a Path) -> Inputs<'a> {
        Inputs {
            kubeconfig_key: None,
            context: None,
            service_host: None,
            service_port: None,
            kubeconfig_env: None,
            home: None,
            serviceaccount_dir: sa,
            admin_conf: admin,
        }
    }

    fn resolve_file(path: &Path, context: Option<&str>) -> Result<Access, Error> {
        let nowhere = Path::new("/nonexistent/kube-event");
        let mut inputs = empty_inputs(nowhere, nowhere);
        inputs.kubeconfig_key = Some(path);
        inputs.context = context;
        resolve(&inputs)
    }

    /// A minimal kubeconfig: cluster `c` at `server`, user `u` with `user` (YAML body lines,
    /// already indented by 4), context `ctx` current.
    fn kubeconfig(server: &str, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n\
             users:\n- name: u\n  user:\n{user}\ncontexts:\n- name: ctx\n  context:\n    cluster: c\n    user: u\n\
             current-context: ctx\n"
        )
    }

    fn b64(s: &str) -> String {
        crate::base64::encode(s.as_bytes())
    }

    #[test]
    fn test_keys_parse_in_all_three_formats() {
        for (name, key) in [
            ("PKCS#1", RSA_PKCS1_KEY),
            ("SEC1", EC_SEC1_KEY),
            ("PKCS#8", ED25519_PKCS8_KEY),
        ] {
            assert_eq!(check_private_key(key.as_bytes()), Ok(()), "{name}");
        }
        // KeyKind is not exported by ureq; its Debug form is enough here.
        let kinds: Vec<String> = [RSA_PKCS1_KEY, EC_SEC1_KEY, ED25519_PKCS8_KEY]
            .iter()
            .map(|k| {
                format!(
                    "{:?}",
                    ureq::tls::PrivateKey::from_pem(k.as_bytes())
                        .unwrap()
                        .kind()
                )
            })
            .collect();
        assert_eq!(kinds, ["Pkcs1", "Sec1", "Pkcs8"]);
        assert_eq!(check_certificates(CERT.as_bytes()), Ok(()));
        let bundle = format!("{CERT}\n{CERT}");
        assert_eq!(check_certificates(bundle.as_bytes()), Ok(()));
    }

    #[test]
    fn bad_keys_and_certificates_are_refused() {
        // A key whose base64 is fine but whose DER is cut short.
        let truncated = {
            let body: String = EC_SEC1_KEY.lines().skip(1).take(2).collect();
            format!("-----BEGIN EC PRIVATE KEY-----\n{body}\n-----END EC PRIVATE KEY-----\n")
        };
        let key_cases: &[(&str, &str)] = &[
            (CERT, "no private key found (expected PEM RSA PRIVATE KEY, EC PRIVATE KEY or PRIVATE KEY)"),
            ("not pem", "no private key found (expected PEM RSA PRIVATE KEY, EC PRIVATE KEY or PRIVATE KEY)"),
            ("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMC4=\n-----END ENCRYPTED PRIVATE KEY-----\n", "encrypted private keys are not supported"),
            ("-----BEGIN PRIVATE KEY-----\nMC4CAQAw!!!\n-----END PRIVATE KEY-----\n", "not a valid PEM private key"),
            ("-----BEGIN PRIVATE KEY-----\nMC4CAQAw\n", "not a valid PEM private key"),
            (&truncated, "the private key is not valid DER (truncated or corrupted)"),
        ];
        for (pem, want) in key_cases {
            assert_eq!(check_private_key(pem.as_bytes()), Err(*want), "{pem}");
        }
        let cert_cases: &[(&str, &str)] = &[
            (
                EC_SEC1_KEY,
                "no PEM certificate found (expected -----BEGIN CERTIFICATE-----)",
            ),
            (
                "",
                "no PEM certificate found (expected -----BEGIN CERTIFICATE-----)",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "certificate 1 is not valid DER (truncated or corrupted)",
            ),
        ];
        for (pem, want) in cert_cases {
            assert_eq!(
                check_certificates(pem.as_bytes()),
                Err(want.to_string()),
                "{pem}"
            );
        }
    }

    #[test]
    fn client_certificate_kubeconfig_like_kubeadm_admin_conf() {
        for key in [RSA_PKCS1_KEY, EC_SEC1_KEY, ED25519_PKCS8_KEY] {
            let dir = TempDir::new("admin");
            let path = dir.write(
                "admin.conf",
                &kubeconfig(
                    "https://10.0.0.1:6443/",
                    &format!(
                        "    client-certificate-data: {}\n    client-key-data: {}",
                        b64(CERT),
                        b64(key)
                    ),
                )
                .replace(
                    "    server:",
                    &format!("    certificate-authority-data: {}\n    server:", b64(CERT)),
                ),
            );
            let access = resolve_file(&path, None).unwrap();
            assert_eq!(access.server, "https://10.0.0.1:6443");
            assert_eq!(access.tls.ca_pem.as_deref(), Some(CERT.as_bytes()));
            assert_eq!(access.tls.client_cert_pem.as_deref(), Some(CERT.as_bytes()));
            assert_eq!(access.tls.client_key_pem.as_deref(), Some(key.as_bytes()));
            assert!(!access.tls.insecure_skip_verify);
            assert_eq!(access.credentials.describe(), "client certificate");
            assert_eq!(access.credentials.authorization().unwrap(), None);
            assert_eq!(access.user, "u");
            assert_eq!(
                access.source,
                format!("kubeconfig {}, context ctx", path.display())
            );
            let debug = format!("{access:?}");
            assert!(
                debug.contains("client_key_pem: Some(\"<redacted>\")"),
                "{debug}"
            );
            assert!(!debug.contains("PRIVATE"), "{debug}");
        }
    }

    #[test]
    fn merge_is_first_wins_over_two_files() {
        let dir = TempDir::new("merge");
        let first = dir.write(
            "a/config",
            "clusters:\n- name: shared\n  cluster:\n    server: https://first:6443\n\
             users:\n- name: shared-user\n  user:\n    token: first-token\n\
             contexts:\n- name: ctx\n  context:\n    cluster: shared\n    user: shared-user\n",
        );
        let second = dir.write(
            "b/config",
            "clusters:\n- name: shared\n  cluster:\n    server: https://second:6443\n    insecure-skip-tls-verify: true\n\
             - name: only-second\n  cluster:\n    server: https://only-second\n\
             users:\n- name: shared-user\n  user:\n    token: second-token\n\
             contexts:\n- name: ctx\n  context:\n    cluster: only-second\n    user: shared-user\n\
             - name: other\n  context:\n    cluster: only-second\n    user: shared-user\n\
             current-context: ctx\n",
        );
        let third = dir.write("c/config", "current-context: other\n");
        let env = format!(
            "{}::{}:{}:{}",
            dir.join("missing").display(),
            first.display(),
            second.display(),
            third.display()
        );
        let nowhere = dir.join("nowhere");
        let mut inputs = empty_inputs(&nowhere, &nowhere);
        inputs.kubeconfig_env = Some(&env);

        // current-context comes from the second file (the first sets none), the context
        // "ctx" from the first file, and the cluster "shared" whole from the first file (so
        // not insecure).
        let access = resolve(&inputs).unwrap();
        assert_eq!(access.server, "https://first:6443");
        assert!(!access.tls.insecure_skip_verify);
        assert_eq!(
            access.credentials.authorization().unwrap().as_deref(),
            Some("Bearer first-token")
        );
        assert_eq!(
            access.source,
            format!(
                "kubeconfig {}:{}:{}, context ctx",
                first.display(),
                second.display(),
                third.display()
            )
        );

        // A context only the second file defines, via the override.
        inputs.context = Some("other");
        let access = resolve(&inputs).unwrap();
        assert_eq!(access.server, "https://only-second");
        assert_eq!(
            access.credentials.authorization().unwrap().as_deref(),
            Some("Bearer first-token"),
            "user shared-user is the first file's"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_defining_files_directory() {
        let dir = TempDir::new("relative");
        dir.write("conf/pki/ca.crt", CERT);
        dir.write("conf/pki/client.crt", CERT);
        dir.write("conf/pki/client.key", EC_SEC1_KEY);
        dir.write("users/tok", "file-token\n");
        let clusters = dir.write(
            "conf/clusters.yaml",
            "clusters:\n- name: c\n  cluster:\n    server: https://k\n    certificate-authority: pki/ca.crt\n\
             contexts:\n- name: ctx\n  context:\n    cluster: c\n    user: u\n\
             current-context: ctx\n",
        );
        let users = dir.write(
            "users/users.yaml",
            "users:\n- name: u\n  user:\n    client-certificate: ../conf/pki/client.crt\n    \
             client-key: ../conf/pki/client.key\n    tokenFile: tok\n",
        );
        let env = format!("{}:{}", clusters.display(), users.display());
        let nowhere = dir.join("nowhere");
        let mut inputs = empty_inputs(&nowhere, &nowhere);
        inputs.kubeconfig_env = Some(&env);
        let access = resolve(&inputs).unwrap();
        assert_eq!(access.tls.ca_pem.as_deref(), Some(CERT.as_bytes()));
        assert_eq!(
            access.tls.client_key_pem.as_deref(),
            Some(EC_SEC1_KEY.as_bytes())
        );
        assert_eq!(
            access.credentials.authorization().unwrap().as_deref(),
            Some("Bearer file-token")
        );
        assert_eq!(
            access.credentials.describe(),
            format!(
                "token file {} and client certificate",
                dir.join("users/tok").display()
            )
        );
    }

    #[test]
    fn data_fields_win_over_paths() {
        let dir = TempDir::new("data");
        let path = dir.write(
            "config",
            &kubeconfig(
                "https://k",
                &format!(
                    "    client-certificate: /nonexistent/cert\n    client-certificate-data: {}\n    \
                     client-key: /nonexistent/key\n    client-key-data: {}",
                    b64(CERT),
                    b64(RSA_PKCS1_KEY)
                ),
            )
            .replace(
                "    server:",
                &format!(
                    "    certificate-authority: /nonexistent/ca\n    certificate-authority-data: {}\n    server:",
                    b64(CERT)
                ),
            ),
        );
        let access = resolve_file(&path, None).unwrap();
        assert_eq!(access.tls.ca_pem.as_deref(), Some(CERT.as_bytes()));
        assert_eq!(access.tls.client_cert_pem.as_deref(), Some(CERT.as_bytes()));
        assert_eq!(
            access.tls.client_key_pem.as_deref(),
            Some(RSA_PKCS1_KEY.as_bytes())
        );
    }

    #[test]
    fn context_override_and_context_errors() {
        let dir = TempDir::new("contexts");
        let path = dir.write(
            "config",
            "clusters:\n- name: c1\n  cluster:\n    server: https://one\n- name: c2\n  cluster:\n    server: https://two\n\
             users:\n- name: u\n  user: {}\n\
             contexts:\n- name: a\n  context:\n    cluster: c1\n    user: u\n\
             - name: b\n  context:\n    cluster: c2\n\
             - name: bad-cluster\n  context:\n    cluster: nope\n    user: u\n\
             - name: bad-user\n  context:\n    cluster: c1\n    user: nobody\n\
             current-context: a\n",
        );
        assert_eq!(resolve_file(&path, None).unwrap().server, "https://one");
        let b = resolve_file(&path, Some("b")).unwrap();
        assert_eq!(b.server, "https://two");
        assert_eq!(b.user, "(no user)");
        assert_eq!(b.credentials.describe(), "none");
        assert_eq!(
            b.source,
            format!("kubeconfig {}, context b", path.display())
        );

        let p = path.display();
        let cases = [
            (
                "foo",
                format!(
                    "kubeconfig {p}: context \"foo\" not found (contexts: a, b, bad-cluster, bad-user)"
                ),
            ),
            (
                "bad-cluster",
                format!(
                    "kubeconfig {p}: context \"bad-cluster\" uses cluster \"nope\", which is not \
                     defined (clusters: c1, c2)"
                ),
            ),
            (
                "bad-user",
                format!(
                    "kubeconfig {p}: context \"bad-user\" uses user \"nobody\", which is not \
                     defined (users: u)"
                ),
            ),
        ];
        for (context, want) in cases {
            let err = resolve_file(&path, Some(context)).unwrap_err();
            assert_eq!(err.to_string(), want);
        }

        let empty = dir.write("empty", "");
        assert_eq!(
            resolve_file(&empty, None).unwrap_err().to_string(),
            format!(
                "kubeconfig {}: no current-context set and no KUBE_CONTEXT given",
                empty.display()
            )
        );
        assert_eq!(
            resolve_file(&empty, Some("x")).unwrap_err().to_string(),
            format!(
                "kubeconfig {}: context \"x\" not found (contexts: none defined)",
                empty.display()
            )
        );
    }

    #[test]
    fn in_cluster_service_account() {
        let dir = TempDir::new("incluster");
        dir.write("sa/ca.crt", CERT);
        dir.write("sa/token", "sa-token\n");
        let sa = dir.join("sa");
        let nowhere = dir.join("nowhere");
        let cases = [
            ("10.96.0.1", "https://10.96.0.1:443"),
            ("fd00::1", "https://[fd00::1]:443"),
            ("[fd00::1]", "https://[fd00::1]:443"),
            (
                "kubernetes.default.svc",
                "https://kubernetes.default.svc:443",
            ),
        ];
        for (host, want) in cases {
            let mut inputs = empty_inputs(&sa, &nowhere);
            inputs.service_host = Some(host);
            inputs.service_port = Some("443");
            let access = resolve(&inputs).unwrap();
            assert_eq!(access.server, want);
            assert_eq!(access.tls.ca_pem.as_deref(), Some(CERT.as_bytes()));
            assert_eq!(
                access.credentials.authorization().unwrap().as_deref(),
                Some("Bearer sa-token")
            );
            assert_eq!(
                access.source,
                format!("in-cluster service account ({})", sa.display())
            );
            assert_eq!(access.user, "service account in namespace ?");
        }

        dir.write("sa/namespace", "monitoring\n");
        let mut inputs = empty_inputs(&sa, &nowhere);
        inputs.service_host = Some("10.96.0.1");
        inputs.service_port = Some("443");
        assert_eq!(
            resolve(&inputs).unwrap().user,
            "service account in namespace monitoring"
        );

        fs::remove_file(dir.join("sa/token")).unwrap();
        let err = resolve(&inputs).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "in-cluster service account: token file {}: cannot read: No such file or \
                 directory (os error 2)",
                dir.join("sa/token").display()
            )
        );
        fs::remove_file(dir.join("sa/ca.crt")).unwrap();
        let err = resolve(&inputs).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "in-cluster service account: cannot read {}: No such file or directory (os error 2)",
                dir.join("sa/ca.crt").display()
            )
        );
    }

    #[test]
    fn sources_are_tried_in_order() {
        let dir = TempDir::new("order");
        dir.write("sa/ca.crt", CERT);
        dir.write("sa/token", "t");
        let key = dir.write("key.conf", &kubeconfig("https://from-key", "    token: t"));
        let env = dir.write("env.conf", &kubeconfig("https://from-env", "    token: t"));
        dir.write(
            "home/.kube/config",
            &kubeconfig("https://from-home", "    token: t"),
        );
        let admin = dir.write(
            "admin.conf",
            &kubeconfig("https://from-admin", "    token: t"),
        );
        let sa = dir.join("sa");
        let home = dir.join("home");
        let env = env.to_str().unwrap().to_string();
        let no_home = dir.join("no-home");
        let no_admin = dir.join("no-admin.conf");

        // (key, in-cluster, env, home, admin) -> server
        type Case<'a> = (bool, bool, bool, bool, bool, &'a str);
        let cases: &[Case] = &[
            (true, true, true, true, true, "https://from-key"),
            (false, true, true, true, true, "https://10.0.0.1:6443"),
            (false, false, true, true, true, "https://from-env"),
            (false, false, false, true, true, "https://from-home"),
            (false, false, false, false, true, "https://from-admin"),
        ];
        for &(k, ic, e, h, a, want) in cases {
            let inputs = Inputs {
                kubeconfig_key: k.then_some(key.as_path()),
                context: None,
                service_host: ic.then_some("10.0.0.1"),
                service_port: ic.then_some("6443"),
                kubeconfig_env: e.then_some(env.as_str()),
                home: Some(if h { home.as_path() } else { no_home.as_path() }),
                serviceaccount_dir: &sa,
                admin_conf: if a { &admin } else { &no_admin },
            };
            assert_eq!(
                resolve(&inputs).unwrap().server,
                want,
                "{k} {ic} {e} {h} {a}"
            );
        }

        // Only one of the two service variables: not in-cluster.
        let mut inputs = empty_inputs(&sa, &no_admin);
        inputs.service_host = Some("10.0.0.1");
        inputs.service_port = Some("");
        let err = resolve(&inputs).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no Kubernetes API access configured; tried: KUBECONFIG key in kube-event.conf: \
                 not set; in-cluster: KUBERNETES_SERVICE_PORT not set; KUBECONFIG environment \
                 variable: not set; $HOME/.kube/config: HOME not set; {}: does not exist",
                no_admin.display()
            )
        );
        inputs.home = Some(&no_home);
        inputs.service_host = None;
        let err = resolve(&inputs).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT not set; \
                 KUBECONFIG environment variable: not set; {}/.kube/config: does not exist;",
                no_home.display()
            )),
            "{err}"
        );

        // KUBECONFIG naming only missing files is an error, not a fall-back to $HOME.
        let missing = format!("{}:", dir.join("missing").display());
        inputs.home = Some(&home);
        inputs.kubeconfig_env = Some(&missing);
        assert_eq!(
            resolve(&inputs).unwrap_err().to_string(),
            format!("environment variable KUBECONFIG={missing:?} names no existing file")
        );
        // ... and an unreadable one is an error too (a directory here).
        let unreadable = format!("{}:{env}", dir.join("sa").display());
        inputs.kubeconfig_env = Some(&unreadable);
        let err = resolve(&inputs).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "kubeconfig {}: cannot read: Is a directory",
                dir.join("sa").display()
            )),
            "{}",
            err.to_string()
        );

        // The KUBECONFIG key must exist.
        let gone = dir.join("gone.conf");
        let mut inputs = empty_inputs(&sa, &admin);
        inputs.kubeconfig_key = Some(&gone);
        assert_eq!(
            resolve(&inputs).unwrap_err().to_string(),
            format!(
                "kubeconfig {}: cannot read: No such file or directory (os error 2)",
                gone.display()
            )
        );
    }

    #[test]
    fn unsupported_and_invalid_settings_name_file_and_key() {
        let dir = TempDir::new("invalid");
        let cluster_extra = |extra: &str| {
            kubeconfig("https://k", "    token: t").replace(
                "    server: https://k\n",
                &format!("    server: https://k\n{extra}\n"),
            )
        };
        let cases: Vec<(String, &str)> = vec![
            (
                kubeconfig("https://k", "    auth-provider:\n      name: gcp\n      config: {}"),
                "users[u].auth-provider: auth-provider 'gcp' is not supported; use an exec credential plugin",
            ),
            (
                kubeconfig("https://k", "    token: t\n    as: admin"),
                "users[u].as: impersonation (as, as-groups, as-uid, as-user-extra) is not supported",
            ),
            (
                kubeconfig("https://k", "    token: t\n    as-groups: [system:masters]"),
                "users[u].as-groups: impersonation (as, as-groups, as-uid, as-user-extra) is not supported",
            ),
            (
                cluster_extra("    proxy-url: http://proxy:3128"),
                "clusters[c].proxy-url: proxy-url is not supported; reach the API server directly",
            ),
            (
                kubeconfig("https://k", "    client-key-data: QUJD!EVG"),
                "users[u].client-key-data: invalid base64 at byte 4",
            ),
            (
                kubeconfig("https://k", &format!("    client-certificate-data: {}", b64(CERT))),
                "users[u].client-certificate: given without client-key(-data)",
            ),
            (
                kubeconfig("https://k", &format!("    client-certificate-data: {}\n    client-key-data: {}", b64(CERT), b64(CERT))),
                "users[u].client-key-data: no private key found (expected PEM RSA PRIVATE KEY, EC PRIVATE KEY or PRIVATE KEY)",
            ),
            (
                kubeconfig("https://k", "    token: t\n    username: a\n    password: b"),
                "users[u]: more than one authentication method (token, username/password); only one is allowed",
            ),
            (
                kubeconfig("https://k", "    username: a"),
                "users[u].username: given without password",
            ),
            (
                kubeconfig("https://k", "    username: a\n    password: 0123"),
                "users[u].password: expected a string (quote the value)",
            ),
            (
                cluster_extra(&format!("    insecure-skip-tls-verify: true\n    certificate-authority-data: {}", b64(CERT))),
                "clusters[c].insecure-skip-tls-verify: cannot be combined with certificate-authority(-data); remove one of them",
            ),
            (
                cluster_extra("    insecure-skip-tls-verify: yes please"),
                "clusters[c].insecure-skip-tls-verify: expected true or false",
            ),
            (
                cluster_extra(&format!("    certificate-authority-data: {}", b64("junk"))),
                "clusters[c].certificate-authority-data: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)",
            ),
            (
                kubeconfig("ftp://k", "    token: t"),
                "clusters[c].server: only https:// and http:// URLs are supported",
            ),
            (
                kubeconfig("https://k", "    exec:\n      apiVersion: client.authentication.k8s.io/v1alpha1\n      command: x"),
                "users[u].exec.apiVersion: exec apiVersion \"client.authentication.k8s.io/v1alpha1\" is not supported (use client.authentication.k8s.io/v1 or client.authentication.k8s.io/v1beta1)",
            ),
            (
                kubeconfig("https://k", "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: x\n      interactiveMode: Always"),
                "users[u].exec.interactiveMode: interactiveMode Always is not supported: kube-event runs without a terminal",
            ),
            (
                kubeconfig("https://k", "    exec:\n      apiVersion: client.authentication.k8s.io/v1"),
                "users[u].exec.command: missing",
            ),
            (
                kubeconfig("https://k", "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: x\n      env:\n      - name: A"),
                "users[u].exec.env[0]: expected name and value strings",
            ),
            (
                kubeconfig("https://k", "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: x\n    token: t"),
                "users[u]: more than one authentication method (token, exec); only one is allowed",
            ),
            (
                "clusters:\n- name: c\n  cluster: {server: https://a}\n- name: c\n  cluster: {server: https://b}\n".to_string(),
                "clusters: duplicate name \"c\"",
            ),
            (
                "clusters:\n- cluster: {server: https://a}\n".to_string(),
                "clusters[0].name: missing",
            ),
            ("users: {}\n".to_string(), "users: expected a list"),
            ("- a\n- b\n".to_string(), "not a kubeconfig: the top level is not a mapping"),
        ];
        for (yaml, want) in cases {
            let path = dir.write("config", &yaml);
            let err = resolve_file(&path, None).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("{}: {want}", path.display()),
                "{yaml}"
            );
        }

        let path = dir.write("config", "clusters: [\n");
        let err = resolve_file(&path, None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("kubeconfig {}: not valid YAML: ", path.display())),
            "{}",
            err.to_string()
        );

        let path = dir.write(
            "config",
            &kubeconfig(
                "https://k",
                "    client-certificate: missing.crt\n    client-key: missing.key",
            ),
        );
        assert_eq!(
            resolve_file(&path, None).unwrap_err().to_string(),
            format!(
                "{}: users[u].client-certificate: cannot read {}: No such file or directory (os error 2)",
                path.display(),
                dir.join("missing.crt").display()
            )
        );

        let path = dir.write(
            "config",
            &kubeconfig("https://k", "    tokenFile: missing-token"),
        );
        assert_eq!(
            resolve_file(&path, None).unwrap_err().to_string(),
            format!(
                "{}: users[u].tokenFile: token file {}: cannot read: No such file or directory (os error 2)",
                path.display(),
                dir.join("missing-token").display()
            )
        );
    }

    #[test]
    fn token_file_with_token_falls_back_and_tls_server_name_only_warns() {
        let dir = TempDir::new("fallback");
        let path = dir.write(
            "config",
            &kubeconfig(
                "https://10.0.0.1:6443",
                "    token: static\n    tokenFile: missing",
            )
            .replace(
                "    server:",
                "    tls-server-name: kubernetes\n    server:",
            ),
        );
        let access = resolve_file(&path, None).unwrap();
        assert_eq!(
            access.credentials.authorization().unwrap().as_deref(),
            Some("Bearer static")
        );
        dir.write("missing", "from-file");
        access.credentials.invalidate(); // as after a 401
        assert_eq!(
            access.credentials.authorization().unwrap().as_deref(),
            Some("Bearer from-file")
        );
    }

    #[test]
    fn exec_section_becomes_an_exec_spec() {
        let dir = TempDir::new("exec");
        let script = dir.write(
            "bin/plugin",
            "#!/bin/sh\necho \"{\\\"apiVersion\\\":\\\"client.authentication.k8s.io/v1beta1\\\",\\\"kind\\\":\\\"ExecCredential\\\",\\\"status\\\":{\\\"token\\\":\\\"$TOKEN_VALUE-$1\\\"}}\"\n",
        );
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.write(
            "config",
            &kubeconfig(
                "https://k",
                "    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      command: ./bin/plugin\n      \
                 args: [arg]\n      env:\n      - name: TOKEN_VALUE\n        value: from-env\n      \
                 installHint: get it\n      provideClusterInfo: true\n      interactiveMode: IfAvailable",
            ),
        );
        let access = resolve_file(&path, None).unwrap();
        assert_eq!(access.credentials.describe(), "exec plugin ./bin/plugin");
        assert_eq!(
            access.credentials.authorization().unwrap().as_deref(),
            Some("Bearer from-env-arg")
        );
    }

    #[test]
    fn resolve_from_env_passes_key_and_context_through() {
        // With the KUBECONFIG key set, the real environment cannot change the outcome.
        let dir = TempDir::new("fromenv");
        let path = dir.write(
            "config",
            &kubeconfig("https://k", "    token: t")
                .replace("current-context: ctx", "current-context: nope"),
        );
        let access = resolve_from_env(Some(&path), Some("ctx")).unwrap();
        assert_eq!(access.server, "https://k");
        assert_eq!(
            access.source,
            format!("kubeconfig {}, context ctx", path.display())
        );
    }

    #[test]
    fn server_urls_are_normalized() {
        let cases: &[(&str, Result<&str, &str>, &str)] = &[
            ("https://k:6443/", Ok("https://k:6443"), "k"),
            ("https://k:6443", Ok("https://k:6443"), "k"),
            (
                "http://127.0.0.1:8080",
                Ok("http://127.0.0.1:8080"),
                "127.0.0.1",
            ),
            ("k.example:6443", Ok("https://k.example:6443"), "k.example"),
            ("https://[::1]:6443", Ok("https://[::1]:6443"), "::1"),
            (
                "https://rancher/k8s/clusters/c-1/",
                Ok("https://rancher/k8s/clusters/c-1"),
                "rancher",
            ),
            ("https://", Err("no host in the URL"), ""),
            (
                "unix:///run/k.sock",
                Err("only https:// and http:// URLs are supported"),
                "",
            ),
        ];
        for (input, want, host) in cases {
            let got = normalize_server(input);
            assert_eq!(got.as_deref(), want.as_deref(), "{input}");
            if let Ok(server) = got {
                assert_eq!(server_host(&server), *host, "{input}");
            }
        }
    }

    #[test]
    fn der_sequence_check() {
        let cases: &[(&[u8], bool)] = &[
            (&[0x30, 0x00], true),
            (&[0x30, 0x02, 1, 2], true),
            (&[0x30, 0x81, 0x02, 1, 2], true),
            (&[0x30, 0x03, 1, 2], false),
            (&[0x30, 0x02, 1, 2, 3], false),
            (&[0x31, 0x00], false),
            (&[0x30, 0x80], false),
            (&[0x30], false),
            (&[], false),
        ];
        for (der, want) in cases {
            assert_eq!(is_der_sequence(der), *want, "{der:?}");
        }
    }
}
