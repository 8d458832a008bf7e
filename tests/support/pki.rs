//! Test PKI for the fakes and for the kubeconfigs tests write: a CA, a server certificate for
//! 127.0.0.1 / ::1 / localhost, kubeadm-like client certificates with an EC (SEC1) and an RSA
//! (PKCS#1) key, and an unrelated CA for verification failures. Also the rustls server configs
//! the fakes terminate TLS with, and kubeconfig text in the shapes client-go and kubeadm write.
//!
//! ring cannot generate RSA keys (rcgen 0.13 returns `KeyGenerationUnavailable`), so the RSA
//! client key is a throwaway 2048-bit key made once with `openssl genrsa -traditional 2048`,
//! embedded both as PKCS#1 (what the product is given) and PKCS#8 (what rcgen signs with).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::util::base64_encode;

/// Throwaway test key (no secret): `openssl genrsa -traditional 2048`.
pub const RSA_KEY_PKCS1_PEM: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEogIBAAKCAQEA3AdCRXagujHUHHDp2+3FUJ5VkaOkK34a2hvNA+bn43kehEUG
kFsmSZyvBkgvxOJ2oAGRBRQd67I/2UN+38cVejDfWf7Wn6AhCJw6S8GcwzAWzOve
gznPlxR09ERN4l3Q8hWLFMJsQ5jvCXvQfidHYo1xUCEui00beM54+wBM0lyKzJnO
xBScGXpp7l3Gvk/0gU8BthzckpjehMhPfRDJgiAR2piAnEQ3u94JeJZn02HhOSjq
hCEyCU61ywTa6JebekcAUUYU6BqP49Yql/wT2EMRcKNIloJWUf5h9p/Y5ricxApG
CDoQNgwxqDCoRUwU8CaFGKToxHReQGTGcd3C6wIDAQABAoIBABCHnRNx345NawV9
+Bu1J7MwSfZoiE9aKHNFTmgiIz6kHUZLlzwmFODH3CBJMQmGB+pqY7YxdjP8Tq6o
UvJF1xe4bzcoHYCde43Vis2hLIE/bh8UA0HxiGZtu4GUVhOQ/78IHkw/dPm5FhAs
1JN9qO++94nRDFmbv9oaDN2yfpL5DCY2p74s7qzmP1YkSSjQbgDKVSd7HHvY/5Bw
qnJ5a4/AGSB5abUCPB45lPhwxgoPgdbc0JJh4S/jT4E0ZR+5nvaqkBC3ognX35XY
7+WuKVxldNAoR2ZjO73qnK4tcmZZeRFMoOjF7Orkp6GCGl9tIelRL0CdeU9ta5PA
xXKCYRUCgYEA9u/Z0jN2jC7H3bcJtYgg5WZdQvphRKv5/zqTiRtQ3sJYY8csUf0l
lr/d0oApW2j8ljNLLe5NLQI/22/5/Jn4sQNS5zZfKraqDCHGDTMSoWSrk/DGkznr
k5E0ZS7JyCKaAAyInfRCqwTuGsWry2o0Ec24HxjgZ6cmOG0axXEJXR8CgYEA5BqV
Mk+j0MA/Quh/Lo7U4duR/4eKnYtlNrk7C9cwQGB9aSbrOUjjWOuwmXLjhXhGrELm
oZ2GrDSN4jTHacC8/EjBDWrjByE/W0tHKlXAjOoMDaaysW1nDFGn+jEYMyVOS+Ao
IqmePTDT6qDPe4TH6+vOEQx+pvjsIsz0GM13lLUCgYADN8Do4k7LKNjl5Lq1qN50
3s6cTtLxqCQL1WGSyc5V+MZaFoBXWSsiOcHUOmNPk6Cm/GggYxiSW5MlcuIZDpCV
DewIo0a+Mb8phU8lYOL/Q2aQ+PQ9euW8+IlsQB3VA85p7b/h/wrXW6sWojjI38tp
5/pcPWC/OQhgd9t/cyeiFQKBgHVe4EpFBGvToDmTXG3efNfCnXs4iTDLm0bvRNyw
21kkzSMgLYUKZkFI9VPf9AanfuYAfp/GaJePazpsIffeft/pp7x5tVvj1a/qKjI0
caGQhKc5kVUOkCmckqyAOo2GsqUEMGK1mICv8TsXh+tsxVo1uZC4Nys/hnHZt/hT
MSbJAoGAEJp4ACMyHNUufhRnT21vycpm9Y7icDVjYsdXnmVspEZFbZcsUJJT5d1y
wAURLVgwOSore4xgXmJev0WVNGXL3KeNj//OMGFR3kfmQUHeRrUsH91nhM414uK8
5LZ4b9sZ2cLHOEzMpYWmbnhuy5/iw3nveQSQbO9buDyMHty8mhc=
-----END RSA PRIVATE KEY-----
";

/// The same key as `RSA_KEY_PKCS1_PEM`, converted with `openssl pkcs8 -topk8 -nocrypt`.
pub const RSA_KEY_PKCS8_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDcB0JFdqC6MdQc
cOnb7cVQnlWRo6QrfhraG80D5ufjeR6ERQaQWyZJnK8GSC/E4nagAZEFFB3rsj/Z
Q37fxxV6MN9Z/tafoCEInDpLwZzDMBbM696DOc+XFHT0RE3iXdDyFYsUwmxDmO8J
e9B+J0dijXFQIS6LTRt4znj7AEzSXIrMmc7EFJwZemnuXca+T/SBTwG2HNySmN6E
yE99EMmCIBHamICcRDe73gl4lmfTYeE5KOqEITIJTrXLBNrol5t6RwBRRhToGo/j
1iqX/BPYQxFwo0iWglZR/mH2n9jmuJzECkYIOhA2DDGoMKhFTBTwJoUYpOjEdF5A
ZMZx3cLrAgMBAAECggEAEIedE3Hfjk1rBX34G7UnszBJ9miIT1ooc0VOaCIjPqQd
RkuXPCYU4MfcIEkxCYYH6mpjtjF2M/xOrqhS8kXXF7hvNygdgJ17jdWKzaEsgT9u
HxQDQfGIZm27gZRWE5D/vwgeTD90+bkWECzUk32o7773idEMWZu/2hoM3bJ+kvkM
JjanvizurOY/ViRJKNBuAMpVJ3sce9j/kHCqcnlrj8AZIHlptQI8HjmU+HDGCg+B
1tzQkmHhL+NPgTRlH7me9qqQELeiCdffldjv5a4pXGV00ChHZmM7veqcri1yZll5
EUyg6MXs6uSnoYIaX20h6VEvQJ15T21rk8DFcoJhFQKBgQD279nSM3aMLsfdtwm1
iCDlZl1C+mFEq/n/OpOJG1DewlhjxyxR/SWWv93SgClbaPyWM0st7k0tAj/bb/n8
mfixA1LnNl8qtqoMIcYNMxKhZKuT8MaTOeuTkTRlLsnIIpoADIid9EKrBO4axavL
ajQRzbgfGOBnpyY4bRrFcQldHwKBgQDkGpUyT6PQwD9C6H8ujtTh25H/h4qdi2U2
uTsL1zBAYH1pJus5SONY67CZcuOFeEasQuahnYasNI3iNMdpwLz8SMENauMHIT9b
S0cqVcCM6gwNprKxbWcMUaf6MRgzJU5L4CgiqZ49MNPqoM97hMfr684RDH6m+Owi
zPQYzXeUtQKBgAM3wOjiTsso2OXkurWo3nTezpxO0vGoJAvVYZLJzlX4xloWgFdZ
KyI5wdQ6Y0+ToKb8aCBjGJJbkyVy4hkOkJUN7AijRr4xvymFTyVg4v9DZpD49D16
5bz4iWxAHdUDzmntv+H/CtdbqxaiOMjfy2nn+lw9YL85CGB3239zJ6IVAoGAdV7g
SkUEa9OgOZNcbd5818KdeziJMMubRu9E3LDbWSTNIyAthQpmQUj1U9/0Bqd+5gB+
n8Zol49rOmwh995+3+mnvHm1W+PVr+oqMjRxoZCEpzmRVQ6QKZySrIA6jYaypQQw
YrWYgK/xOxeH62zFWjW5kLg3Kz+Gcdm3+FMxJskCgYAQmngAIzIc1S5+FGdPbW/J
ymb1juJwNWNix1eeZWykRkVtlyxQklPl3XLABREtWDA5Kit7jGBeYl6/RZU0Zcvc
p42P/84wYVHeR+ZBQd5GtSwf3WeEzjXi4rzktnhv2xnZwsc4TMylhaZueG7Ln+LD
ee95BJBs71u4PIwe3LyaFw==
-----END PRIVATE KEY-----
";

/// Common name of the EC client certificate (kubeadm's admin.conf user).
pub const CLIENT_EC_CN: &str = "kubernetes-admin";
/// Common name of the RSA client certificate (distinct so tests can tell them apart).
pub const CLIENT_RSA_CN: &str = "kubernetes-admin-rsa";
/// Organization of both client certificates (kubeadm >= 1.29).
pub const CLIENT_ORG: &str = "kubeadm:cluster-admins";

/// Everything a test needs to talk TLS with the fakes, as PEM text.
pub struct TestPki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    /// PKCS#8 ("PRIVATE KEY").
    pub server_key_pem: String,
    pub client_ec_cert_pem: String,
    /// SEC1 ("EC PRIVATE KEY"), with the curve parameters, as kubeadm writes it.
    pub client_ec_key_pem: String,
    /// The same EC key as PKCS#8 ("PRIVATE KEY").
    pub client_ec_key_pkcs8_pem: String,
    pub client_rsa_cert_pem: String,
    /// PKCS#1 ("RSA PRIVATE KEY").
    pub client_rsa_key_pem: String,
    /// An unrelated CA: trusting it must make verification of the fakes fail.
    pub other_ca_pem: String,
    /// A client certificate (CN=intruder) signed by `other_ca_pem`; the fakes refuse it.
    pub foreign_client_cert_pem: String,
    /// PKCS#8 key of `foreign_client_cert_pem`.
    pub foreign_client_key_pem: String,
}

/// Paths of the PEM files written by [`TestPki::write_to`].
#[derive(Clone, Debug)]
pub struct PkiFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_ec_cert: PathBuf,
    pub client_ec_key: PathBuf,
    pub client_ec_key_pkcs8: PathBuf,
    pub client_rsa_cert: PathBuf,
    pub client_rsa_key: PathBuf,
    pub other_ca: PathBuf,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    params
}

fn leaf_params(cn: &str, org: Option<&str>, eku: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(org) = org {
        dn.push(DnType::OrganizationName, org);
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![eku];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    params
}

impl TestPki {
    /// Generates a fresh PKI (EC P-256 keys; the embedded RSA key for the RSA client).
    pub fn new() -> TestPki {
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = ca_params("kube-event-test-ca")
            .self_signed(&ca_key)
            .expect("CA cert");

        let server_key = KeyPair::generate().expect("server key");
        let mut server = leaf_params("kube-apiserver", None, ExtendedKeyUsagePurpose::ServerAuth);
        server.subject_alt_names = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            SanType::DnsName("localhost".try_into().expect("dns name")),
        ];
        let server = server
            .signed_by(&server_key, &ca, &ca_key)
            .expect("server cert");

        let ec_key = KeyPair::generate().expect("client EC key");
        let ec_cert = leaf_params(
            CLIENT_EC_CN,
            Some(CLIENT_ORG),
            ExtendedKeyUsagePurpose::ClientAuth,
        )
        .signed_by(&ec_key, &ca, &ca_key)
        .expect("client EC cert");

        let rsa_key = KeyPair::from_pem(RSA_KEY_PKCS8_PEM).expect("embedded RSA key");
        let rsa_cert = leaf_params(
            CLIENT_RSA_CN,
            Some(CLIENT_ORG),
            ExtendedKeyUsagePurpose::ClientAuth,
        )
        .signed_by(&rsa_key, &ca, &ca_key)
        .expect("client RSA cert");

        let other_key = KeyPair::generate().expect("other CA key");
        let other = ca_params("unrelated-ca")
            .self_signed(&other_key)
            .expect("other CA cert");
        let foreign_key = KeyPair::generate().expect("foreign client key");
        let foreign = leaf_params("intruder", None, ExtendedKeyUsagePurpose::ClientAuth)
            .signed_by(&foreign_key, &other, &other_key)
            .expect("foreign client cert");

        TestPki {
            ca_pem: ca.pem(),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_ec_cert_pem: ec_cert.pem(),
            client_ec_key_pem: sec1_pem_from_pkcs8(ec_key.serialized_der()),
            client_ec_key_pkcs8_pem: ec_key.serialize_pem(),
            client_rsa_cert_pem: rsa_cert.pem(),
            client_rsa_key_pem: RSA_KEY_PKCS1_PEM.to_string(),
            other_ca_pem: other.pem(),
            foreign_client_cert_pem: foreign.pem(),
            foreign_client_key_pem: foreign_key.serialize_pem(),
        }
    }

    /// A rustls server config presenting the server certificate. With `client_auth`, a client
    /// certificate signed by the CA is required (the handshake fails without one).
    pub fn server_config(&self, client_auth: bool) -> Arc<rustls::ServerConfig> {
        self.build_server_config(if client_auth {
            ClientAuthMode::Required
        } else {
            ClientAuthMode::Off
        })
    }

    /// Like the real apiserver: a client certificate is verified against the CA if one is
    /// presented (a bad one fails the handshake), but none is also fine at the TLS level.
    pub fn server_config_optional_client_auth(&self) -> Arc<rustls::ServerConfig> {
        self.build_server_config(ClientAuthMode::Optional)
    }

    fn build_server_config(&self, mode: ClientAuthMode) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = vec![cert_der(&self.server_cert_pem)];
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes()).expect("key");
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match mode {
            ClientAuthMode::Off => builder.with_no_client_auth(),
            ClientAuthMode::Required | ClientAuthMode::Optional => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(cert_der(&self.ca_pem))
                    .expect("CA into root store");
                let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                );
                if mode == ClientAuthMode::Optional {
                    verifier = verifier.allow_unauthenticated();
                }
                builder.with_client_cert_verifier(verifier.build().expect("client verifier"))
            }
        };
        let config = builder
            .with_single_cert(chain, key)
            .expect("server cert and key");
        Arc::new(config)
    }

    /// Writes every PEM to `dir` (ca.crt, apiserver.crt/.key, client-ec.crt/.key,
    /// client-ec-pkcs8.key, client-rsa.crt/.key, other-ca.crt).
    pub fn write_to(&self, dir: &Path) -> PkiFiles {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
            path
        };
        PkiFiles {
            ca: write("ca.crt", &self.ca_pem),
            server_cert: write("apiserver.crt", &self.server_cert_pem),
            server_key: write("apiserver.key", &self.server_key_pem),
            client_ec_cert: write("client-ec.crt", &self.client_ec_cert_pem),
            client_ec_key: write("client-ec.key", &self.client_ec_key_pem),
            client_ec_key_pkcs8: write("client-ec-pkcs8.key", &self.client_ec_key_pkcs8_pem),
            client_rsa_cert: write("client-rsa.crt", &self.client_rsa_cert_pem),
            client_rsa_key: write("client-rsa.key", &self.client_rsa_key_pem),
            other_ca: write("other-ca.crt", &self.other_ca_pem),
        }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientAuthMode {
    Off,
    Required,
    Optional,
}

fn cert_der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("certificate PEM")
}

// ---- kubeconfig text ----

/// How a kubeconfig's cluster says which CA to trust.
#[derive(Clone, Copy, Debug)]
pub enum CaRef<'a> {
    /// `certificate-authority-data:` base64 of this PEM.
    Data(&'a str),
    /// `certificate-authority:` this path.
    Path(&'a Path),
    /// `insecure-skip-tls-verify: true`.
    InsecureSkipVerify,
    /// Nothing: the client's default roots.
    None,
}

/// How a kubeconfig's user authenticates.
#[derive(Clone, Copy, Debug)]
pub enum UserAuth<'a> {
    Token(&'a str),
    TokenFile(&'a Path),
    /// `token:` and `tokenFile:` both set.
    TokenAndFile(&'a str, &'a Path),
    /// `client-certificate-data` / `client-key-data` (base64 of the PEMs).
    CertData {
        cert_pem: &'a str,
        key_pem: &'a str,
    },
    /// `client-certificate` / `client-key` paths.
    CertPaths {
        cert: &'a Path,
        key: &'a Path,
    },
    /// No credentials.
    None,
}

/// A YAML scalar: JSON strings are valid YAML double-quoted scalars.
fn yq(text: &str) -> String {
    serde_json::to_string(text).expect("string to JSON")
}

fn yp(path: &Path) -> String {
    yq(&path.to_string_lossy())
}

/// A kubeadm-shaped kubeconfig: cluster `kubernetes`, user `kubernetes-admin`, context
/// `kubernetes-admin@kubernetes` (current).
pub fn kubeconfig_yaml(server_url: &str, ca: CaRef, user: UserAuth) -> String {
    let mut out = String::new();
    out.push_str("apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n");
    match ca {
        CaRef::Data(pem) => out.push_str(&format!(
            "    certificate-authority-data: {}\n",
            base64_encode(pem.as_bytes())
        )),
        CaRef::Path(p) => out.push_str(&format!("    certificate-authority: {}\n", yp(p))),
        CaRef::InsecureSkipVerify => out.push_str("    insecure-skip-tls-verify: true\n"),
        CaRef::None => {}
    }
    out.push_str(&format!(
        "    server: {}\n  name: kubernetes\n",
        yq(server_url)
    ));
    out.push_str(
        "contexts:\n- context:\n    cluster: kubernetes\n    user: kubernetes-admin\n  \
         name: kubernetes-admin@kubernetes\ncurrent-context: kubernetes-admin@kubernetes\n\
         preferences: {}\nusers:\n- name: kubernetes-admin\n  user:",
    );
    match user {
        UserAuth::Token(t) => out.push_str(&format!("\n    token: {}\n", yq(t))),
        UserAuth::TokenFile(p) => out.push_str(&format!("\n    tokenFile: {}\n", yp(p))),
        UserAuth::TokenAndFile(t, p) => out.push_str(&format!(
            "\n    token: {}\n    tokenFile: {}\n",
            yq(t),
            yp(p)
        )),
        UserAuth::CertData { cert_pem, key_pem } => out.push_str(&format!(
            "\n    client-certificate-data: {}\n    client-key-data: {}\n",
            base64_encode(cert_pem.as_bytes()),
            base64_encode(key_pem.as_bytes())
        )),
        UserAuth::CertPaths { cert, key } => out.push_str(&format!(
            "\n    client-certificate: {}\n    client-key: {}\n",
            yp(cert),
            yp(key)
        )),
        UserAuth::None => out.push_str(" {}\n"),
    }
    out
}

// ---- a little DER, enough for SEC1 keys and certificate subjects ----

/// One DER element: tag, the content bytes, and the whole encoding.
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    raw: &'a [u8],
}

/// Reads the first DER element of `data`; returns it and the rest.
fn der_next(data: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let tag = *data.first()?;
    let first = *data.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*data.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    if end > data.len() {
        return None;
    }
    Some((
        Tlv {
            tag,
            content: &data[header..end],
            raw: &data[..end],
        },
        &data[end..],
    ))
}

fn der_children(content: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    let mut rest = content;
    while !rest.is_empty() {
        let (tlv, r) = der_next(rest)?;
        out.push(tlv);
        rest = r;
    }
    Some(out)
}

fn der_encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// PEM-armours DER with 64-column base64 lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Converts a PKCS#8 EC key (as ring writes it: the inner ECPrivateKey has no curve
/// parameters) into SEC1 with the named curve in `[0]`, as OpenSSL and Go write it.
fn sec1_pem_from_pkcs8(pkcs8: &[u8]) -> String {
    let convert = || -> Option<Vec<u8>> {
        let (outer, _) = der_next(pkcs8)?;
        let fields = der_children(outer.content)?;
        // PrivateKeyInfo: version, AlgorithmIdentifier { ecPublicKey, namedCurve }, key.
        let alg = der_children(fields.get(1)?.content)?;
        let curve_oid = alg.get(1)?.raw;
        let (inner, _) = der_next(fields.get(2)?.content)?;
        let parts = der_children(inner.content)?;
        let mut body = Vec::new();
        body.extend_from_slice(parts.first()?.raw); // version 1
        body.extend_from_slice(parts.get(1)?.raw); // privateKey
        if !parts.iter().any(|p| p.tag == 0xa0) {
            body.extend_from_slice(&der_encode(0xa0, curve_oid));
        }
        for p in parts.iter().skip(2) {
            body.extend_from_slice(p.raw);
        }
        Some(der_encode(0x30, &body))
    };
    let der = convert().expect("rcgen's PKCS#8 EC key has the expected shape");
    pem_encode("EC PRIVATE KEY", &der)
}

/// The subject common name (OID 2.5.4.3) of a DER certificate.
pub fn cert_subject_cn(der: &[u8]) -> Option<String> {
    let (cert, _) = der_next(der)?;
    let (tbs, _) = der_next(cert.content)?;
    let fields = der_children(tbs.content)?;
    // [0] version is optional; then serial, signature, issuer, validity, subject.
    let skip = usize::from(fields.first()?.tag == 0xa0);
    let subject = fields.get(skip + 4)?;
    for rdn in der_children(subject.content)? {
        for atv in der_children(rdn.content)? {
            let parts = der_children(atv.content)?;
            if parts.first()?.content == [0x55, 0x04, 0x03] {
                return String::from_utf8(parts.get(1)?.content.to_vec()).ok();
            }
        }
    }
    None
}
