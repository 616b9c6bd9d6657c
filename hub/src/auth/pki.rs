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
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

use super::AuthError;
use crate::files;

/// The subject (CN) of the first-run admin client certificate.
pub const ADMIN_CLIENT_NAME: &str = "admin";

/// What a certificate of the hub's CA is for, written in its subject's organizational unit
/// (OU). Devices and API clients share the hub's CA, so the subject name alone cannot tell a
/// device `admin` from the API's `admin`: the API takes identities only from [`Role::Client`]
/// certificates (see `clients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An API client (`hub certs issue-client`, the first-run admin).
    Client,
    /// A device (`hub certs issue-device`).
    Device,
}

impl Role {
    /// The OU that marks it.
    pub fn unit(self) -> &'static str {
        match self {
            Role::Client => "hub api client",
            Role::Device => "hub device",
        }
    }
}

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
        renew_unmarked_admin(&files)?;
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
    let (server_cert, server_key) = issue_leaf(&issuer, "hub", names, None, LEAF_DAYS)?;
    let (admin_cert, admin_key) = issue_leaf(
        &issuer,
        ADMIN_CLIENT_NAME,
        Vec::new(),
        Some(Role::Client),
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

/// A first-run admin certificate made before certificates carried their [`Role`] is made again
/// (same CA, same name, a new key), so the admin keeps an API identity: the API no longer
/// trusts an unmarked certificate of the hub's CA, which may be a device's.
fn renew_unmarked_admin(files: &TlsFiles) -> Result<(), AuthError> {
    let pem = std::fs::read(&files.admin_cert)?;
    let marked = CertificateDer::pem_slice_iter(&pem)
        .next()
        .and_then(Result::ok)
        .is_some_and(|der| super::clients::role(der.as_ref()) == Some(Role::Client));
    if marked {
        return Ok(());
    }
    let issued = issue_client(
        &files.ca_cert,
        &files.ca_key,
        ADMIN_CLIENT_NAME,
        u32::try_from(LEAF_DAYS).unwrap_or(MAX_ISSUE_DAYS),
        Role::Client,
    )?;
    files::write_private(&files.admin_key, issued.key_pem.as_bytes())?;
    files::write_private(&files.admin_cert, issued.cert_pem.as_bytes())?;
    tracing::warn!(
        path = %files.admin_cert.display(),
        "the first-run admin certificate was made again with its API client mark; give clients the new one"
    );
    Ok(())
}

/// Issues a certificate for client authentication to `name` (its CN and a DNS SAN), valid for
/// `days`, signed by the CA in `ca_cert` and `ca_key` (PEM), marked with `role`. The caller
/// checks `name`.
pub fn issue_client(
    ca_cert: &Path,
    ca_key: &Path,
    name: &str,
    days: u32,
    role: Role,
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
        Some(role),
        i64::from(days),
    )?;
    Ok(IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate for `common_name` (and `names` as SANs), signed by `issuer`, valid from an hour
/// ago for `days`, with a new key: for client authentication marked with `role`, or for a
/// server when `role` is `None`.
fn issue_leaf(
    issuer: &Issuer<'_, KeyPair>,
    common_name: &str,
    names: Vec<String>,
    role: Option<Role>,
    days: i64,
) -> Result<(rcgen::Certificate, KeyPair), AuthError> {
    let key = KeyPair::generate().map_err(pki_err(common_name))?;
    let mut params = CertificateParams::new(names).map_err(pki_err(common_name))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let purpose = match role {
        Some(role) => {
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, role.unit());
            ExtendedKeyUsagePurpose::ClientAuth
        }
        None => ExtendedKeyUsagePurpose::ServerAuth,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn role_of(path: &Path) -> Option<Role> {
        let pem = std::fs::read(path).unwrap();
        let der = CertificateDer::pem_slice_iter(&pem)
            .next()
            .unwrap()
            .unwrap();
        super::super::clients::role(der.as_ref())
    }

    #[test]
    fn certificates_carry_their_role_and_an_unmarked_admin_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let (files, made) = ensure(dir.path()).unwrap();
        assert!(made);
        assert_eq!(role_of(&files.admin_cert), Some(Role::Client));
        for role in [Role::Client, Role::Device] {
            let issued = issue_client(&files.ca_cert, &files.ca_key, "x", 1, role).unwrap();
            let path = dir.path().join("x.crt");
            std::fs::write(&path, issued.cert_pem).unwrap();
            assert_eq!(role_of(&path), Some(role));
        }
        // An admin certificate of a hub from before the marks: made again, marked, at start.
        let key = KeyPair::from_pem(&std::fs::read_to_string(&files.ca_key).unwrap()).unwrap();
        let ca = std::fs::read_to_string(&files.ca_cert).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&ca, key).unwrap();
        let (old, _) = issue_leaf(&issuer, ADMIN_CLIENT_NAME, Vec::new(), None, 30).unwrap();
        std::fs::write(&files.admin_cert, old.pem()).unwrap();
        assert_eq!(role_of(&files.admin_cert), None);
        let (files, made) = ensure(dir.path()).unwrap();
        assert!(!made);
        assert_eq!(role_of(&files.admin_cert), Some(Role::Client));
        // Marked already: left alone.
        let before = std::fs::read(&files.admin_cert).unwrap();
        ensure(dir.path()).unwrap();
        assert_eq!(std::fs::read(&files.admin_cert).unwrap(), before);
    }
}
