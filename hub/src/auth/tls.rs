//! The API's TLS: rustls with the ring provider, TLS 1.2 and 1.3 only, client certificates checked
//! against the client CA when the policy asks for them.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use super::AuthError;
use crate::config::ClientAuth;

/// Where the server's TLS material is.
#[derive(Debug, Clone)]
pub struct TlsPaths<'a> {
    /// Certificate chain (PEM).
    pub cert: &'a Path,
    /// Private key (PEM).
    pub key: &'a Path,
    /// CA of client certificates (PEM).
    pub client_ca: &'a Path,
    /// Certificate revocation lists of the client CA (PEM), any number.
    pub crls: &'a [std::path::PathBuf],
}

/// Warned about when a certificate expires sooner than this.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// Logs a warning for each certificate of `path` that expires within [`EXPIRY_WARNING`] (an
/// error once it has expired); the earliest expiry, unix seconds.
pub fn check_expiry(path: &Path, what: &str) -> Option<i64> {
    let certs = read_certs(path).ok()?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let earliest = certs
        .iter()
        .filter_map(|c| super::clients::not_after(c.as_ref()))
        .min()?;
    let days_left = (earliest - now) / 86_400;
    if earliest <= now {
        tracing::error!(path = %path.display(), what, "a certificate has expired: replace it and send SIGHUP");
    } else if earliest - now < EXPIRY_WARNING.as_secs() as i64 {
        tracing::warn!(path = %path.display(), what, days_left, "a certificate expires soon: replace it and send SIGHUP");
    }
    Some(earliest)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, AuthError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| AuthError::Tls(format!("{}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| AuthError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(AuthError::Tls(format!(
            "{}: no certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// The system's CA bundle (Debian and Raspberry Pi OS), used when no CA file is configured.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Builds a client configuration (for an external MQTT broker, or a cloud endpoint): server
/// certificates checked against `ca` (or the system bundle), and an optional client certificate.
pub fn client_config(
    ca: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, AuthError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = ca.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| AuthError::Tls(format!("{}: {e}", ca.display())))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| AuthError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let certs = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| AuthError::Tls(format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| AuthError::Tls(format!("client certificate: {e}")))
        }
    }
}

/// Builds the server configuration for the API listener.
pub fn server_config(
    paths: &TlsPaths<'_>,
    client_auth: ClientAuth,
) -> Result<rustls::ServerConfig, AuthError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(paths.cert)?;
    let key = PrivateKeyDer::from_pem_file(paths.key)
        .map_err(|e| AuthError::Tls(format!("{}: {e}", paths.key.display())))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| AuthError::Tls(e.to_string()))?;
    let builder = match client_auth {
        ClientAuth::Off => builder.with_no_client_auth(),
        ClientAuth::Optional | ClientAuth::Required => {
            let mut roots = RootCertStore::empty();
            for ca in read_certs(paths.client_ca)? {
                roots
                    .add(ca)
                    .map_err(|e| AuthError::Tls(format!("client CA: {e}")))?;
            }
            let mut crls = Vec::new();
            for path in paths.crls {
                let found: Vec<_> = CertificateRevocationListDer::pem_file_iter(path)
                    .map_err(|e| AuthError::Tls(format!("{}: {e}", path.display())))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| AuthError::Tls(format!("{}: {e}", path.display())))?;
                if found.is_empty() {
                    return Err(AuthError::Tls(format!(
                        "{}: no CRL in the file",
                        path.display()
                    )));
                }
                crls.extend(found);
            }
            // Revocation is checked where a CRL of the issuer is given; a chain whose issuer has
            // none is not refused for that alone (a CRL of another CA must not lock everyone out).
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .with_crls(crls)
                .allow_unknown_revocation_status();
            let verifier = if client_auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| AuthError::Tls(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| AuthError::Tls(format!("server key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
