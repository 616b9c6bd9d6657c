//! Revoking certificates the hub's own CA issued: the CA keeps a list of what it revoked
//! (`revoked.txt` beside `ca.crt`: one line per certificate, its serial in hex, when, and its
//! name) and the revocation list made from it (`ca.crl`, PEM, signed by the CA). The API and the
//! MQTT device listener read `ca.crl` whenever they load their TLS configuration (at start and on
//! SIGHUP) while they trust the hub's own CA.
//!
//! Invariants: a certificate once revoked stays revoked (the list only grows; revoking again
//! changes nothing); `ca.crl` is written whole (a new file renamed over the old), and its number
//! grows with each list, so a verifier never sees a half-written or older list as newer.

use std::path::{Path, PathBuf};

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber,
};

use super::AuthError;
use crate::files;

/// How long a list is valid: a verifier may refuse an expired one, and the hub makes a new one
/// only when something is revoked.
const CRL_VALID_DAYS: i64 = 3650;
/// Most certificates one CA's list holds (each is a line and an entry to check).
pub const MAX_REVOKED: usize = 100_000;

/// The revocation list of the CA in `tls_dir`, if it has one.
pub fn crl_path(tls_dir: &Path) -> PathBuf {
    tls_dir.join("ca.crl")
}

fn list_path(tls_dir: &Path) -> PathBuf {
    tls_dir.join("revoked.txt")
}

/// What revoking did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The certificate's serial, hex.
    pub serial: String,
    /// Whether it was revoked before already (nothing changed then).
    pub already: bool,
    /// The revocation list written.
    pub crl: PathBuf,
}

/// Revokes the certificate `cert_pem` (named `name` in the list) with the CA in `tls_dir`
/// (`ca.crt`, `ca.key`), and writes the CA's revocation list again. Refuses a certificate the
/// CA did not issue.
pub fn revoke(tls_dir: &Path, cert_pem: &str, name: &str, now: i64) -> Result<Revoked, AuthError> {
    let ca_pem = std::fs::read_to_string(tls_dir.join("ca.crt"))?;
    let ca_key = std::fs::read_to_string(tls_dir.join("ca.key"))?;
    let serial = serial_of(cert_pem, &ca_pem, now)?;
    let mut list = read_list(tls_dir)?;
    let already = list.iter().any(|entry| entry.serial == serial);
    if !already {
        if list.len() >= MAX_REVOKED {
            return Err(AuthError::Pki(format!(
                "the CA's revocation list is full ({MAX_REVOKED} certificates)"
            )));
        }
        list.push(Entry {
            serial: serial.clone(),
            at: now,
            name: name.to_owned(),
        });
        let text: String = list
            .iter()
            .map(|e| format!("{} {} {}\n", e.serial, e.at, e.name))
            .collect();
        files::write_private(&list_path(tls_dir), text.as_bytes())?;
    }
    let crl = crl_path(tls_dir);
    if !already || !crl.exists() {
        let pem = sign_list(&ca_pem, &ca_key, &list, now)?;
        files::write_private(&crl, pem.as_bytes())?;
    }
    Ok(Revoked {
        serial,
        already,
        crl,
    })
}

/// Revokes the certificate `hub certs` issued to `name` (`NAME.crt` in `issued_dir`, the CA in
/// `tls_dir`) and moves it and its key aside (`NAME.crt.revoked`, `NAME.key.revoked`), so the
/// name can be issued a new one. `None` when there is no such certificate; with it, where the
/// certificate went.
pub fn revoke_issued(
    tls_dir: &Path,
    issued_dir: &Path,
    name: &str,
    now: i64,
) -> Result<Option<(Revoked, PathBuf)>, AuthError> {
    let cert_path = issued_dir.join(format!("{name}.crt"));
    let pem = match std::fs::read_to_string(&cert_path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let revoked = revoke(tls_dir, &pem, name, now)?;
    for file in [format!("{name}.key"), format!("{name}.crt")] {
        let from = issued_dir.join(&file);
        if from.exists() {
            std::fs::rename(&from, issued_dir.join(format!("{file}.revoked")))?;
        }
    }
    Ok(Some((
        revoked,
        issued_dir.join(format!("{name}.crt.revoked")),
    )))
}

/// One revoked certificate.
struct Entry {
    serial: String,
    at: i64,
    name: String,
}

fn read_list(tls_dir: &Path) -> Result<Vec<Entry>, AuthError> {
    let text = match std::fs::read_to_string(list_path(tls_dir)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut parts = line.splitn(3, ' ');
            let serial = parts.next().unwrap_or_default();
            let at = parts.next().and_then(|t| t.parse().ok());
            match (hex_bytes(serial), at) {
                (Some(_), Some(at)) => Ok(Entry {
                    serial: serial.to_owned(),
                    at,
                    name: parts.next().unwrap_or_default().to_owned(),
                }),
                _ => Err(AuthError::Pki(format!(
                    "{}: a line is not `SERIAL UNIX_TIME NAME`: {line:?}",
                    list_path(tls_dir).display()
                ))),
            }
        })
        .collect()
}

/// The serial (hex) of `cert_pem`, which the CA `ca_pem` must have issued (its signature is
/// checked, not only the names: two hubs' CAs may carry the same name).
fn serial_of(cert_pem: &str, ca_pem: &str, now: i64) -> Result<String, AuthError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};
    let bad = |what: &str, e: &dyn std::fmt::Debug| AuthError::Pki(format!("{what}: {e:?}"));
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| bad("the certificate", &e))?;
    let ca_der =
        CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| bad("the CA", &e))?;
    let anchor = webpki::anchor_from_trusted_cert(&ca_der).map_err(|e| bad("the CA", &e))?;
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| bad("the certificate", &e))?;
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now).unwrap_or(0),
    ));
    cert.verify_for_usage(
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all,
        &[anchor],
        &[],
        at,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| {
        AuthError::Pki(format!(
            "the certificate was not issued by this hub's CA, or is not valid now: {e}"
        ))
    })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| AuthError::Pki(format!("the certificate: {e}")))?;
    let serial = parsed.raw_serial();
    Ok(serial.iter().map(|b| format!("{b:02x}")).collect())
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The CA's list of `revoked`, signed, as PEM.
fn sign_list(ca_pem: &str, ca_key: &str, revoked: &[Entry], now: i64) -> Result<String, AuthError> {
    let key = KeyPair::from_pem(ca_key).map_err(|e| AuthError::Pki(format!("CA key: {e}")))?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, key)
        .map_err(|e| AuthError::Pki(format!("CA certificate: {e}")))?;
    let time = |at: i64| {
        time::OffsetDateTime::from_unix_timestamp(at)
            .map_err(|e| AuthError::Pki(format!("a time: {e}")))
    };
    let this_update = time(now)?;
    let revoked_certs = revoked
        .iter()
        .map(|e| {
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&hex_bytes(&e.serial).unwrap_or_default()),
                revocation_time: time(e.at)?,
                reason_code: None,
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, AuthError>>()?;
    let params = CertificateRevocationListParams {
        this_update,
        next_update: this_update + time::Duration::days(CRL_VALID_DAYS),
        // Grows with each list written: the time, in seconds.
        crl_number: SerialNumber::from_slice(&now.max(1).to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&issuer)
        .map_err(|e| AuthError::Pki(format!("the revocation list: {e}")))?;
    crl.pem()
        .map_err(|e| AuthError::Pki(format!("the revocation list: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::pki::{self, Role};

    #[test]
    fn a_revoked_certificate_is_listed_once_and_a_foreign_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (made, _) = pki::ensure(dir.path()).unwrap();
        let issued =
            pki::issue_client(&made.ca_cert, &made.ca_key, "dev-1", 30, Role::Device).unwrap();
        let now = (crate::clock::now_ms() / 1000) as i64;
        let first = revoke(dir.path(), &issued.cert_pem, "dev-1", now).unwrap();
        assert!(!first.already);
        let crl = std::fs::read_to_string(&first.crl).unwrap();
        assert!(crl.starts_with("-----BEGIN X509 CRL-----"), "{crl}");
        let again = revoke(dir.path(), &issued.cert_pem, "dev-1", now + 100).unwrap();
        assert!(again.already);
        assert_eq!(again.serial, first.serial);
        let list = std::fs::read_to_string(dir.path().join("revoked.txt")).unwrap();
        assert_eq!(list.lines().count(), 1, "{list}");

        // A certificate of another CA is refused, and the list stays as it was.
        let other = tempfile::tempdir().unwrap();
        let (other_ca, _) = pki::ensure(other.path()).unwrap();
        let foreign = pki::issue_client(
            &other_ca.ca_cert,
            &other_ca.ca_key,
            "dev-1",
            30,
            Role::Device,
        )
        .unwrap();
        let refused = revoke(dir.path(), &foreign.cert_pem, "dev-1", now + 200);
        assert!(refused.is_err(), "{refused:?}");
        let list = std::fs::read_to_string(dir.path().join("revoked.txt")).unwrap();
        assert_eq!(list.lines().count(), 1, "{list}");
    }
}
