//! First-run TLS material: a development CA, a server certificate for this machine and an admin
//! client certificate, all written as PEM under `<data.dir>/tls/` with private files at mode 0600.
//!
//! This is for a hub that was started without configuration. A deployment with its own PKI points
//! `api.tls_cert`, `api.tls_key` and `api.client_ca` at its files instead.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use super::AuthError;
use crate::files;

/// The subject (CN) of the first-run admin client certificate.
pub const ADMIN_CLIENT_NAME: &str = "admin";

/// Paths of the first-run TLS material.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificate.
    pub ca_cert: PathBuf,
    /// CA private key.
    pub ca_key: PathBuf,
    /// Server certificate.
    pub server_cert: PathBuf,
    /// Server private key.
    pub server_key: PathBuf,
    /// Admin client certificate.
    pub admin_cert: PathBuf,
    /// Admin client private key.
    pub admin_key: PathBuf,
}

impl TlsFiles {
    /// The files in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        TlsFiles {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
        }
    }

    fn all(&self) -> [&Path; 6] {
        [
            &self.ca_cert,
            &self.ca_key,
            &self.server_cert,
            &self.server_key,
            &self.admin_cert,
            &self.admin_key,
        ]
    }
}

fn pki_err(what: &str) -> impl FnOnce(rcgen::Error) -> AuthError + '_ {
    move |e| AuthError::Pki(format!("{what}: {e}"))
}

/// Makes the TLS material in `dir` unless it is all there already. Returns whether it was made.
/// A partial set (a crash half-way through a first run) is made again whole.
pub fn ensure(dir: &Path) -> Result<(TlsFiles, bool), AuthError> {
    let files = TlsFiles::in_dir(dir);
    if files.all().iter().all(|p| p.exists()) {
        return Ok((files, false));
    }
    files::create_private_dir(dir)?;
    let now = OffsetDateTime::now_utc();

    let ca_key = KeyPair::generate().map_err(pki_err("CA key"))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(pki_err("CA"))?;
    ca.distinguished_name
        .push(DnType::CommonName, "hub development CA");
    ca.distinguished_name
        .push(DnType::OrganizationName, "edge hub");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - Duration::hours(1);
    ca.not_after = now + Duration::days(3650);
    let ca_cert = ca.self_signed(&ca_key).map_err(pki_err("CA"))?;
    let issuer = Issuer::new(ca, ca_key);

    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Some(host) = host_name().filter(|h| h != "localhost") {
        names.push(host);
    }
    let (server_cert, server_key) = issue_leaf(
        &issuer,
        "hub",
        names,
        ExtendedKeyUsagePurpose::ServerAuth,
        LEAF_DAYS,
    )?;
    let (admin_cert, admin_key) = issue_leaf(
        &issuer,
        ADMIN_CLIENT_NAME,
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
        LEAF_DAYS,
    )?;

    // Keys first, certificates after, the CA certificate last: `ensure` looks for all six.
    files::write_private(&files.ca_key, issuer.key().serialize_pem().as_bytes())?;
    files::write_private(&files.server_key, server_key.serialize_pem().as_bytes())?;
    files::write_private(&files.admin_key, admin_key.serialize_pem().as_bytes())?;
    files::write_private(&files.server_cert, server_cert.pem().as_bytes())?;
    files::write_private(&files.admin_cert, admin_cert.pem().as_bytes())?;
    files::write_private(&files.ca_cert, ca_cert.pem().as_bytes())?;
    Ok((files, true))
}

/// How long the first-run server and admin certificates are valid.
const LEAF_DAYS: i64 = 825;
/// Longest validity `hub certs` gives.
pub const MAX_ISSUE_DAYS: u32 = 3650;

/// A client (or device) certificate and its new key, as PEM.
#[derive(Debug)]
pub struct IssuedCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key: a secret.
    pub key_pem: String,
}

/// Issues a certificate for client authentication to `name` (its CN and a DNS SAN), valid for
/// `days`, signed by the CA in `ca_cert` and `ca_key` (PEM). The caller checks `name`.
pub fn issue_client(
    ca_cert: &Path,
    ca_key: &Path,
    name: &str,
    days: u32,
) -> Result<IssuedCert, AuthError> {
    if days == 0 || days > MAX_ISSUE_DAYS {
        return Err(AuthError::Pki(format!(
            "validity: 1 to {MAX_ISSUE_DAYS} days"
        )));
    }
    let key_pem = std::fs::read_to_string(ca_key)?;
    let cert_pem = std::fs::read_to_string(ca_cert)?;
    let key = KeyPair::from_pem(&key_pem).map_err(pki_err("CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(pki_err("CA certificate"))?;
    let (cert, key) = issue_leaf(
        &issuer,
        name,
        vec![name.to_owned()],
        ExtendedKeyUsagePurpose::ClientAuth,
        i64::from(days),
    )?;
    Ok(IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate for `common_name` (and `names` as SANs) for `purpose`, signed by `issuer`, valid
/// from an hour ago for `days`, with a new key.
fn issue_leaf(
    issuer: &Issuer<'_, KeyPair>,
    common_name: &str,
    names: Vec<String>,
    purpose: ExtendedKeyUsagePurpose,
    days: i64,
) -> Result<(rcgen::Certificate, KeyPair), AuthError> {
    let key = KeyPair::generate().map_err(pki_err(common_name))?;
    let mut params = CertificateParams::new(names).map_err(pki_err(common_name))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![purpose];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(pki_err(common_name))?;
    Ok((cert, key))
}

fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    valid.then(|| name.to_owned())
}
