//! PEM material -> ureq's TLS settings, shared by the API server client and the Loki client.

use std::sync::Arc;

use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

/// TLS settings from PEM bytes. `ca_pem`: trust only these roots (else the built-in Mozilla
/// roots). `client`: certificate chain and key (PKCS#1, SEC1 or PKCS#8). Errors name what
/// could not be read; the caller adds which file or kubeconfig field it came from.
pub fn config(
    ca_pem: Option<&[u8]>,
    insecure_skip_verify: bool,
    client: Option<(&[u8], &[u8])>,
) -> Result<TlsConfig, String> {
    let mut b = TlsConfig::builder();
    if let Some(pem) = ca_pem {
        let certs = certificates(pem).map_err(|e| format!("CA bundle: {e}"))?;
        b = b.root_certs(RootCerts::Specific(Arc::new(certs)));
    }
    if insecure_skip_verify {
        b = b.disable_verification(true);
    }
    if let Some((cert_pem, key_pem)) = client {
        let chain = certificates(cert_pem).map_err(|e| format!("client certificate: {e}"))?;
        let key = PrivateKey::from_pem(key_pem).map_err(|_| {
            "client key: no PEM private key found (expected RSA PRIVATE KEY, EC PRIVATE KEY or PRIVATE KEY)"
                .to_string()
        })?;
        b = b.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(b.build())
}

fn certificates(pem: &[u8]) -> Result<Vec<Certificate<'static>>, String> {
    let mut out = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(PemItem::Certificate(c)) => out.push(c),
            Ok(_) => {}
            Err(e) => return Err(format!("invalid PEM: {e}")),
        }
    }
    if out.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(out)
}
